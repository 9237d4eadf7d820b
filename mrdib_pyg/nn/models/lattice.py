r"""LATTICE: a learned item–item graph over projected modality features, blended with
frozen kNN graphs, on top of a LightGCN user–item view."""
from typing import Dict, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mrdib_pyg.data.derived import GraphSpec, ItemKNN, UserItemGraph
from mrdib_pyg.data.sampling import BPRBatch
from mrdib_pyg.nn.conv.learned_item_graph import LearnedItemGraph, propagate
from mrdib_pyg.nn.conv.lg_propagation import LGPropagation
from mrdib_pyg.nn.conv.sparse_op import SparseOperator
from mrdib_pyg.nn.loss import l2_loss
from mrdib_pyg.nn.models.base import MultimodalRecommender
from mrdib_pyg.nn.models.registry import register_model
from mrdib_pyg.nn.output import ModalityOutput, RecOutput

CF_MODELS = ('lightgcn', 'mf')


@register_model('lattice', 'LATTICE: learned item graph of projected features blended with '
                           'frozen kNN graphs + LightGCN on D^-1(A+I) (MMRec LATTICE)')
class LATTICE(MultimodalRecommender):
    r"""LATTICE from `"Mining Latent Structures for Multimedia Recommendation"
    <https://arxiv.org/abs/2104.09036>`_ (ACM MM 2021), as MMRec trains it.

    **Item–item view.** Every modality's raw features :math:`\mathbf{f}^m` are projected,
    :math:`\mathbf{x}^m = W_m \mathbf{f}^m + b_m`, and
    :class:`~mrdib_pyg.nn.conv.learned_item_graph.LearnedItemGraph` builds from them the
    item graph

    .. math::
        S = (1-\lambda)\, D^{-1/2}\Big(\sum_m \alpha_m A^m\Big) D^{-1/2}
        + \lambda \sum_m \alpha_m O_m, \qquad
        \boldsymbol{\alpha} = \operatorname{softmax}(\mathbf{w}),

    with :math:`A^m` the weighted cosine top-:math:`k` graph of :math:`\mathbf{x}^m`
    (learned, not normalised per modality), :math:`O_m` the frozen one of the raw
    :math:`\mathbf{f}^m`, sym-normalised with its row sums
    (:class:`~mrdib_pyg.data.derived.ItemKNN`, built once), and :math:`\lambda` =
    :obj:`lambda_coeff`. It propagates the item ID embeddings,
    :math:`\mathbf{h} = S^{L_m}\mathbf{E}_I`.

    **When S is rebuilt** (MMRec's ``build_item_graph`` flag): in training, on the first
    :meth:`forward` after :meth:`pre_epoch` (and on the very first one), with gradients to
    :math:`W_m, b_m, \mathbf{f}^m, \mathbf{w}`; the following training forwards of the epoch
    reuse that graph *detached* (a frozen CSR operator), so only
    :math:`\mathbf{E}_I` learns through it. Only a forward with gradients enabled (a
    training step, MMRec's ``calculate_loss``) clears the flag; a training-mode forward
    under :func:`torch.no_grad` rebuilds too but leaves the rebuild to the next step. In
    evaluation every :meth:`forward` rebuilds it (once per evaluation here, as
    :meth:`score` caches the tables), and, as in MMRec, the graph it builds is the one a
    training forward reuses if no :meth:`pre_epoch` comes between.

    **User–item view.** LightGCN-mean over :math:`L` = :obj:`n_ui_layers` layers of the
    *row*-normalised adjacency with self-loops :math:`\hat{A} = D^{-1}(A + I)`
    (:class:`~mrdib_pyg.data.derived.UserItemGraph` with :obj:`norm='row',
    self_loops=True`):

    .. math::
        [\mathbf{u}_g; \mathbf{i}_g] = \frac{1}{L+1}\sum_{l=0}^{L} \hat{A}^{l}
        [\mathbf{E}_U; \mathbf{E}_I], \qquad
        \mathbf{u} = \mathbf{u}_g, \quad
        \mathbf{i} = \mathbf{i}_g + \frac{\mathbf{h}}{\|\mathbf{h}\|_2},

    and :math:`\hat{y}_{ui} = \mathbf{u}^\top\mathbf{i}`. :obj:`cf_model='mf'` (MMRec's
    ``mf``) skips the user–item view: :math:`\mathbf{u} = \mathbf{E}_U`,
    :math:`\mathbf{i} = \mathbf{E}_I + \mathbf{h}/\|\mathbf{h}\|`.

    **Loss** on a batch :math:`(u, i^+, i^-)`:

    .. math::
        \mathcal{L} = -\overline{\log\sigma(\hat{y}_{ui^+} - \hat{y}_{ui^-})}
        + \gamma\, \frac{\|\mathbf{u}_u\|^2 + \|\mathbf{i}_{i^+}\|^2
        + \|\mathbf{i}_{i^-}\|^2}{2B}

    on the final rows, :math:`\gamma` = :obj:`reg_weight` and :math:`B` the batch size
    (MMRec: its configured :obj:`train_batch_size`; :obj:`reg_batch_size`).

    **Per-modality outputs** (for plug-ins such as MRdIB): :obj:`ModalityOutput(item=x^m)`,
    the projected features :math:`W_m\mathbf{f}^m + b_m` of each modality, paired with the
    final user table :math:`\mathbf{u}`. They are the only per-modality representations
    LATTICE computes: the modalities are mixed by :math:`\boldsymbol{\alpha}` *before* the
    normalisation, so no per-modality propagated item table exists in the model. They are
    computed on every forward, as in MMRec (which projects on every batch).
    :obj:`RecOutput.extras['item_graph_out']` holds :math:`\mathbf{h}`.

    MMRec's defaults (``LATTICE.yaml``, first value of each grid): embedding 64,
    feat_embed_dim 64, weight_size [64, 64] (so :obj:`n_ui_layers=2`; only its length is
    used by the ``lightgcn`` variant), n_layers 1, knn_k 10, lambda_coeff 0.9,
    reg_weight 0.0 (grid 0, 1e-5, 1e-4, 1e-3), cf_model lightgcn; Adam lr 1e-4 (grid 1e-4,
    5e-4, 1e-3, 5e-3) decayed by :math:`0.96^{\text{epoch}/50}` (:attr:`train_defaults`).
    Xavier-uniform ID embeddings, PyTorch's default :obj:`Linear` init, :math:`\mathbf{w}`
    initialised to 0.5 each. As in MMRec the raw features are *trained* (MMRec's
    ``nn.Embedding.from_pretrained(..., freeze=False)``; they receive gradients through the
    graph rebuilds), unless :obj:`freeze_features=True`; the frozen graphs :math:`O_m` stay
    those of the initial features, as in MMRec.

    Differences from MMRec, on purpose (none changes the numbers of the default model,
    except as noted; ``benchmarks/equivalence/lattice.py`` checks graphs, tables, losses,
    gradients and Adam steps across rebuilds against MMRec's class):

    * **Sparse item graph.** MMRec builds :math:`S` as dense :math:`I \times I` matrices
      (similarities, top-k, Laplacian by two dense :math:`I^3` products) on every rebuild
      and multiplies it densely on every batch; here it is :math:`O(Ik)` edges with
      gradient-carrying weights (gather/scatter) on a rebuild and a frozen CSR operator
      between rebuilds. Equal to float precision; exact ties in the top-k may pick another,
      equally similar neighbour.
    * **No NaN.** An item whose learned mixed degree is not positive is isolated (MMRec:
      NaN), all-zero feature rows have cosine 0 (MMRec: NaN), :obj:`knn_k` above the item
      count is lowered with a warning (MMRec fails).
    * **Any set of modalities.** MMRec hard-codes image and text (weights
      :math:`[\alpha_\text{image}, \alpha_\text{text}]`); here :math:`\mathbf{w}` has one
      entry per modality in :attr:`modalities` order (text first), all initialised to 0.5,
      which for two modalities is MMRec's initial state. With one modality
      :math:`\alpha = 1`, MMRec's single-modality graph.
    * **L2 divisor.** By default the L2 term divides by the batch's size; MMRec divides by
      :obj:`train_batch_size`, which differs on the last, smaller batch of an epoch (only
      with :obj:`reg_weight > 0`; MMRec's default is 0). Set :obj:`reg_batch_size` to
      MMRec's batch size for its numbers.
    * :obj:`cf_model='ngcf'` (not MMRec's default, not in its grid) is not implemented;
      ``mess_dropout`` (used only by it) is left out.

    Args:
        num_users (int), num_items (int): table sizes.
        features (dict): modality name :math:`\rightarrow` :obj:`[I, F_m]` raw features.
        adj (Tensor): :obj:`[U+I, U+I]` row-normalised user–item adjacency with self-loops
            (sparse).
        item_graphs (dict): modality :math:`\rightarrow` :obj:`[I, I]` frozen normalised
            kNN graph :math:`O_m` of the raw features (sparse).
        embedding_dim (int, optional): :math:`d`. (default: :obj:`64`)
        feat_embed_dim (int, optional): width of :math:`W_m`. (default: :obj:`64`)
        n_ui_layers (int, optional): :math:`L`, MMRec's ``len(weight_size)``.
            (default: :obj:`2`)
        n_layers (int, optional): item–item layers :math:`L_m`. (default: :obj:`1`)
        knn_k (int, optional): :math:`k` of the learned and frozen graphs.
            (default: :obj:`10`)
        lambda_coeff (float, optional): :math:`\lambda`. (default: :obj:`0.9`)
        reg_weight (float, optional): :math:`\gamma`. (default: :obj:`0.0`)
        cf_model (str, optional): :obj:`'lightgcn'` or :obj:`'mf'`.
            (default: :obj:`'lightgcn'`)
        freeze_features (bool, optional): keep the raw features fixed instead of training
            them. (default: :obj:`False`)
        reg_batch_size (int, optional): divide the L2 term by this instead of the batch's
            size (MMRec: its ``train_batch_size``). (default: :obj:`None`)
        chunk_size (int, optional): rows per chunk of the top-k search. (default:
            :obj:`1024`)
        order (list, optional): modality order (default: MMRec's, text first).
        backend (str, optional): sparse backend of
            :class:`~mrdib_pyg.nn.conv.SparseOperator`. (default: :obj:`'csr'`)
    """
    train_defaults = {'lr': 1e-4, 'lr_decay': 0.96, 'lr_decay_step': 50}

    def __init__(self, num_users: int, num_items: int, features: Mapping[str, Tensor],
                 adj: Tensor, item_graphs: Mapping[str, Tensor], embedding_dim: int = 64,
                 feat_embed_dim: int = 64, n_ui_layers: int = 2, n_layers: int = 1,
                 knn_k: int = 10, lambda_coeff: float = 0.9, reg_weight: float = 0.0,
                 cf_model: str = 'lightgcn', freeze_features: bool = False,
                 reg_batch_size: Optional[int] = None, chunk_size: int = 1024,
                 order: Optional[Sequence[str]] = None, backend: str = 'csr'):
        super().__init__(num_users, num_items, features, order)
        name = self.__class__.__name__
        n = num_users + num_items
        shapes = {'adj': (adj, (n, n))}
        shapes.update(self.item_graph_shapes(item_graphs))
        self.check_graph_shapes(shapes)
        if cf_model not in CF_MODELS:
            raise ValueError(f"'{name}' got cf_model '{cf_model}' (expected one of "
                             f"{CF_MODELS}; MMRec's 'ngcf' is not implemented)")
        if reg_weight < 0:
            raise ValueError(f"'{name}' needs reg_weight >= 0 (got {reg_weight})")
        if reg_batch_size is not None and reg_batch_size < 1:
            raise ValueError(f"'{name}' needs reg_batch_size >= 1 or None "
                             f"(got {reg_batch_size})")
        if embedding_dim < 1 or feat_embed_dim < 1:
            raise ValueError(f"'{name}' needs positive widths (got embedding_dim="
                             f"{embedding_dim}, feat_embed_dim={feat_embed_dim})")
        self.embedding_dim = embedding_dim
        self.feat_embed_dim = feat_embed_dim
        self.knn_k = knn_k
        self.reg_weight = float(reg_weight)
        self.cf_model = cf_model
        self.freeze_features = bool(freeze_features)
        self.reg_batch_size = reg_batch_size
        self.backend = backend

        self.user_emb = nn.Parameter(torch.empty(num_users, embedding_dim))
        self.item_emb = nn.Parameter(torch.empty(num_items, embedding_dim))
        if not self.freeze_features:  # MMRec trains them (from_pretrained, freeze=False)
            self.make_features_trainable()
        self.trs = nn.ModuleDict({m: nn.Linear(self.feature_dims[m], feat_embed_dim)
                                  for m in self.modalities})
        self.item_graph = LearnedItemGraph({m: item_graphs[m] for m in self.modalities},
                                           k=knn_k, lambda_coeff=lambda_coeff,
                                           chunk_size=chunk_size, backend=backend)
        self.ui_graph = SparseOperator(adj, symmetric=False, backend=backend)
        self.ui_propagation = LGPropagation(n_ui_layers, combine='mean')
        self.n_layers = int(n_layers)
        if self.n_layers < 0:
            raise ValueError(f"'{name}' needs n_layers >= 0 (got {n_layers})")
        #: The detached item graph reused between rebuilds (MMRec's ``item_adj.detach()``).
        self.frozen_item_graph: Optional[SparseOperator] = None
        #: MMRec's ``build_item_graph``: the next training forward rebuilds the graph.
        self.build_item_graph = True
        self.reset_parameters()

    # -- graphs -------------------------------------------------------------------------
    @classmethod
    def graph_specs(cls, knn_k: int = 10, modalities: Sequence[str] = ('text', 'image'),
                    **kwargs) -> Dict[str, GraphSpec]:
        r"""The row-normalised user–item adjacency with self-loops (:obj:`adj`, MMRec's
        :math:`D^{-1}(A+I)`) and one frozen weighted cosine kNN graph per modality, passed
        together as :obj:`item_graphs` (MMRec's ``image_adj_10.pt`` / ``text_adj_10.pt``)."""
        return {'adj': UserItemGraph(norm='row', self_loops=True),
                'item_graphs': {m: ItemKNN(m, k=knn_k, weighted=True, loop=True, norm='sym')
                                for m in modalities}}

    # -- model --------------------------------------------------------------------------
    def reset_parameters(self) -> None:
        nn.init.xavier_uniform_(self.user_emb)
        nn.init.xavier_uniform_(self.item_emb)
        self.reset_feature_tables()
        for lin in self.trs.values():
            lin.reset_parameters()
        self.item_graph.reset_parameters()
        self.frozen_item_graph = None
        self.build_item_graph = True

    def pre_epoch(self, epoch: int) -> None:
        r"""Marks the item graph for a rebuild on the next training forward (MMRec's
        ``pre_epoch_processing``)."""
        self.build_item_graph = True

    def item_propagation(self, modalities: Mapping[str, ModalityOutput]) -> Tensor:
        r""":math:`\mathbf{h} = S^{L_m}\mathbf{E}_I`, rebuilding :math:`S` from the
        projections in :obj:`modalities` or reusing the frozen one as described in the class
        docs (only a rebuild reads the projections)."""
        rebuild = (not self.training or self.build_item_graph
                   or self.frozen_item_graph is None)
        h = self.item_emb
        if not rebuild:
            for _ in range(self.n_layers):
                h = self.frozen_item_graph(h)
            return h
        edge_index, edge_weight = self.item_graph({m: mo.item for m, mo in modalities.items()})
        self.frozen_item_graph = self.item_graph.operator(edge_index, edge_weight)
        if self.training and torch.is_grad_enabled():
            # Only a training step consumes the flag (MMRec's calculate_loss); a no-grad
            # look at the tables in training mode must not cost the epoch its rebuild.
            self.build_item_graph = False
        if not torch.is_grad_enabled():  # evaluation: the CSR operator is faster
            for _ in range(self.n_layers):
                h = self.frozen_item_graph(h)
            return h
        for _ in range(self.n_layers):
            h = propagate(h, edge_index, edge_weight)
        return h

    def forward_batch(self, batch: BPRBatch) -> Tuple[RecOutput, BPRBatch]:
        r""":meth:`forward`'s tables, the item table restricted to the batch's distinct items
        and their projections only (:meth:`forward_with_batch_projections`)."""
        return self.forward_with_batch_projections(batch)

    def forward(self) -> RecOutput:
        # read by a graph rebuild (once an epoch in training) or a plug-in
        modalities = self.lazy_projections()
        h = self.item_propagation(modalities)
        if self.cf_model == 'lightgcn':
            x = torch.cat([self.user_emb, self.item_emb], dim=0)
            user, item = self.ui_propagation(x, self.ui_graph).split(
                [self.num_users, self.num_items])
        else:
            user, item = self.user_emb, self.item_emb
        return RecOutput(
            user=user, item=item + F.normalize(h, p=2., dim=1),
            modalities=modalities,
            extras={'item_graph_out': h})

    # -- loss ---------------------------------------------------------------------------
    def regularizer(self, out: RecOutput, batch: BPRBatch) -> Tensor:
        r""":math:`\gamma` times half the squared norm of the batch's final user, positive
        and negative rows, over the batch size (or :obj:`reg_batch_size`)."""
        if self.reg_weight == 0:
            return out.user.new_zeros(())
        rows = batch.rows(out.user, out.item)
        size = self.reg_batch_size or batch.users.numel()
        return self.reg_weight * l2_loss(rows, size)

    def loss(self, out: RecOutput, batch: BPRBatch) -> Tensor:
        u, pos, neg = batch.rows(out.user, out.item)
        pos, neg = (u * pos).sum(-1), (u * neg).sum(-1)
        # LATTICE's own BPR is logsigmoid (not the shared bpr_loss's log(1e-10 + sigmoid)).
        return -F.logsigmoid(pos - neg).mean() + self.regularizer(out, batch)

    def extra_repr(self) -> str:
        return (f'{super().extra_repr()}, embedding_dim={self.embedding_dim}, '
                f'feat_embed_dim={self.feat_embed_dim}, cf_model={self.cf_model!r}, '
                f'n_ui_layers={self.ui_propagation.num_layers}, n_layers={self.n_layers}, '
                f'knn_k={self.knn_k}, lambda_coeff={self.item_graph.lambda_coeff}, '
                f'reg_weight={self.reg_weight}, freeze_features={self.freeze_features}')
