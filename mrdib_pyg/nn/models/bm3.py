r"""BM3: LightGCN tables and projected modality features trained by negative-free
bootstrap alignment."""
from typing import Mapping, Optional, Sequence

import torch
from torch import Tensor, nn

from mrdib_pyg.data.derived import UserItemGraph
from mrdib_pyg.data.sampling import BPRBatch
from mrdib_pyg.nn.conv.latent_dropout import BootstrapTerms, LatentBootstrap
from mrdib_pyg.nn.conv.lg_propagation import LGPropagation
from mrdib_pyg.nn.conv.row_sparse_linear import RowSparseLinear
from mrdib_pyg.nn.conv.sparse_op import SparseOperator
from mrdib_pyg.nn.loss import emb_loss
from mrdib_pyg.nn.models.base import MultimodalRecommender
from mrdib_pyg.nn.models.registry import register_model
from mrdib_pyg.nn.output import RecOutput


@register_model('bm3', 'BM3: LightGCN + projected modality features, negative-free '
                       'bootstrap alignment with dropout targets (MMRec BM3)')
class BM3(MultimodalRecommender):
    r"""BM3 from `"Bootstrap Latent Representations for Multi-modal Recommendation"
    <https://arxiv.org/abs/2207.05969>`_, as MMRec trains it.

    **Encoder.** LightGCN-mean over :math:`L` layers of the symmetric-normalised user–item
    graph :math:`\hat{A}` (:class:`~mrdib_pyg.data.derived.UserItemGraph`), with an item
    residual on the ID embedding, and one linear projection per modality of the raw
    features:

    .. math::
        [\mathbf{u}_g; \mathbf{i}_g] = \frac{1}{L+1}\sum_{l=0}^{L} \hat{A}^{l}
        [\mathbf{E}_{\text{user}}; \mathbf{E}_{\text{item}}], \qquad
        \mathbf{u} = \mathbf{u}_g,\quad \mathbf{i} = \mathbf{i}_g + \mathbf{E}_{\text{item}},
        \qquad \mathbf{x}^m = W_m \mathbf{f}^m + \mathbf{b}_m .

    **Score.** Through the shared predictor :math:`P` (:math:`d \rightarrow d` linear):
    :math:`\hat{y}_{ui} = (P\mathbf{u})^\top (P\mathbf{i})` (MMRec's ``full_sort_predict``),
    so :attr:`RecOutput.user` / :attr:`RecOutput.item` are :math:`P\mathbf{u}` and
    :math:`P\mathbf{i}`; the online tables :math:`\mathbf{u}, \mathbf{i}` are in
    :attr:`RecOutput.extras` (``'user_online'``, ``'item_online'``).

    **Loss** (negative-free: the batch's :obj:`neg` is ignored; MMRec's loader gives BM3
    only (user, positive) pairs, ``use_neg_sampling: False``). With target views
    :math:`\tilde{\cdot} = \operatorname{drop}_p(\operatorname{sg}(\cdot))` drawn on the
    full tables and :math:`\mathcal{L}(\mathbf{h}, \mathbf{z}) = 1 - \overline{\cos}`
    (:class:`~mrdib_pyg.nn.conv.latent_dropout.LatentBootstrap`):

    .. math::
        \mathcal{L} = \mathcal{L}(P\mathbf{u}, \tilde{\mathbf{i}})
        + \mathcal{L}(P\mathbf{i}, \tilde{\mathbf{u}})
        + \lambda_{\text{reg}} \frac{\lVert\mathbf{U}\rVert_F + \lVert\mathbf{I}\rVert_F}{I}
        + \lambda_{\text{cl}} \sum_m \big(\mathcal{L}(P\mathbf{x}^m, \tilde{\mathbf{i}})
        + \mathcal{L}(P\mathbf{x}^m, \tilde{\mathbf{x}}^m)\big)

    on the batch rows, where the regulariser is MMRec's ``EmbLoss`` on the *full* online
    tables :math:`\mathbf{U} = [\mathbf{u}]`, :math:`\mathbf{I} = [\mathbf{i}]` (plain,
    not squared, Frobenius norms, divided by the row count of the last one, i.e. the item
    count, not the batch size). As in MMRec the raw features :math:`\mathbf{f}^m` are
    *trained* (``nn.Embedding.from_pretrained(..., freeze=False)``): trained copies
    initialised from the features (:attr:`feature_emb`), unless :obj:`freeze_features=True`.

    **Per-modality outputs** (for plug-ins such as MRdIB): modality :math:`m`'s item table
    is its projection :math:`\mathbf{x}^m` (the online modality view, :math:`[I, d]`),
    paired with the ranking user table :math:`P\mathbf{u}` (:attr:`ModalityOutput.user` is
    :obj:`None`): :math:`P\mathbf{u}` and :math:`P\mathbf{x}^m` are both pulled towards the
    item targets, so the user table lives in the space the modality view is aligned with.

    MMRec's defaults (``BM3.yaml``; grids take their first value): embedding 64,
    n_layers 1 (grid 1, 2), dropout 0.3 (grid 0.3, 0.5), reg_weight 0.1 (grid 0.1, 0.01),
    cl_weight 2.0; Adam lr 1e-3 without decay (``overall.yaml``; BM3.yaml sets neither).
    enoche/BM3's README gives the best Baby setting as 1 layer, dropout 0.5,
    reg_weight 0.1 (Sports: 1, 0.5, 0.01; Elec: 2, 0.3, 0.1). Initialisation as MMRec:
    Xavier-uniform ID embeddings; Xavier-normal weights of :math:`P` and :math:`W_m`
    (PyTorch's default bias init). ``feat_embed_dim`` in the yaml is not read by MMRec's
    BM3 (the projections have width ``embedding_size``), so it is not an argument here.

    Deliberate differences from MMRec (none changes the loss, its gradients or, with the
    same random state, the dropout masks):

    * the user–item graph is a CSR :class:`~mrdib_pyg.nn.conv.SparseOperator` with a
      precomputed backward (MMRec: a COO :func:`torch.sparse.mm`); MMRec adds
      :math:`10^{-7}` to the degrees before :math:`D^{-1/2}`, which only changes values at
      the :math:`10^{-7}` relative level;
    * the predictor is applied to the batch rows in the loss (MMRec applies it to the full
      tables and then indexes: the same rows), and the projections :math:`W_m` are
      :class:`~mrdib_pyg.nn.conv.RowSparseLinear`: the backward pass through the
      :math:`I \times d_m` features costs only the rows a step reads (the batch's
      positives, and the negatives too when a plug-in such as MRdIB reads them) instead of
      all :math:`I` (same values; gradients to float rounding). The target views are
      drawn on the full tables exactly as MMRec does (same :func:`F.dropout` calls, same
      order: user, item, text, image), so a seeded run draws MMRec's masks;
    * the loss is a 0-d tensor (MMRec's ``EmbLoss`` makes it shape :obj:`[1]`);
    * modalities other than image and text are supported (each gets its projection and
      its two alignment terms; terms are summed in :attr:`modalities` order, MMRec's text
      then image);
    * :obj:`dropout` must lie in :math:`[0, 1)` (MMRec accepts 1, which zeroes every
      target and leaves the alignment loss constant).

    Args:
        num_users (int), num_items (int): table sizes.
        features (dict): modality name :math:`\rightarrow` :obj:`[I, d_m]` raw features.
        adj (Tensor): :obj:`[(U+I), (U+I)]` symmetric-normalised user–item adjacency
            (:class:`~mrdib_pyg.data.derived.UserItemGraph`).
        embedding_dim (int, optional): :math:`d` (also the projection and predictor
            width). (default: :obj:`64`)
        n_layers (int, optional): :math:`L`. (default: :obj:`1`)
        dropout (float, optional): target dropout :math:`p`. (default: :obj:`0.3`)
        reg_weight (float, optional): :math:`\lambda_{\text{reg}}`. (default: :obj:`0.1`)
        cl_weight (float, optional): :math:`\lambda_{\text{cl}}`. (default: :obj:`2.0`)
        freeze_features (bool, optional): keep the raw features fixed (MMRec trains them).
            (default: :obj:`False`)
        backend (str, optional): sparse backend of
            :class:`~mrdib_pyg.nn.conv.SparseOperator`. (default: :obj:`'csr'`)
        order (list, optional): modality order (default: MMRec's, text first).
    """

    def __init__(self, num_users: int, num_items: int, features: Mapping[str, Tensor],
                 adj: Tensor, embedding_dim: int = 64, n_layers: int = 1,
                 dropout: float = 0.3, reg_weight: float = 0.1, cl_weight: float = 2.0,
                 freeze_features: bool = False, backend: str = 'csr',
                 order: Optional[Sequence[str]] = None):
        super().__init__(num_users, num_items, features, order)
        name = self.__class__.__name__
        if embedding_dim < 1:
            raise ValueError(f"'{name}' needs embedding_dim >= 1 (got {embedding_dim})")
        if n_layers < 0:
            raise ValueError(f"'{name}' needs n_layers >= 0 (got {n_layers})")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"'{name}' needs 0 <= dropout < 1 (got {dropout})")
        if reg_weight < 0:
            raise ValueError(f"'{name}' needs reg_weight >= 0 (got {reg_weight})")
        if cl_weight < 0:
            raise ValueError(f"'{name}' needs cl_weight >= 0 (got {cl_weight})")
        n = num_users + num_items
        self.check_graph_shapes({'adj': (adj, (n, n))})
        self.embedding_dim = int(embedding_dim)
        self.n_layers = int(n_layers)
        self.dropout = float(dropout)
        self.reg_weight = float(reg_weight)
        self.cl_weight = float(cl_weight)
        self.freeze_features = bool(freeze_features)

        self.user_emb = nn.Parameter(torch.empty(num_users, embedding_dim))
        self.item_emb = nn.Parameter(torch.empty(num_items, embedding_dim))
        # The full projections feed the target views; a step's gradient reaches only the
        # rows it reads (BM3's positives, and a plug-in's negatives), so the backward pass
        # through the [I, d_m] features is restricted to those rows.
        self.trs = nn.ModuleDict({m: RowSparseLinear(self.feature_dims[m], embedding_dim)
                                  for m in self.modalities})
        if not self.freeze_features:
            self.make_features_trainable()
        self.graph = SparseOperator(adj, symmetric=True, backend=backend)
        self.propagation = LGPropagation(n_layers, combine='mean')
        self.bootstrap = LatentBootstrap(embedding_dim, dropout=dropout)
        self.reset_parameters()

    @classmethod
    def graph_specs(cls, modalities: Sequence[str] = (), **kwargs):
        return {'adj': UserItemGraph(norm='sym')}

    def reset_parameters(self) -> None:
        nn.init.xavier_uniform_(self.user_emb)
        nn.init.xavier_uniform_(self.item_emb)
        self.reset_feature_tables()
        self.bootstrap.reset_parameters()
        for lin in self.trs.values():
            lin.reset_parameters()
            nn.init.xavier_normal_(lin.weight)

    # -- forward ----------------------------------------------------------------------
    def online(self):
        r"""The online tables :math:`(\mathbf{u}, \mathbf{i})`, :obj:`[U, d]` and
        :obj:`[I, d]` (before the predictor)."""
        x = torch.cat([self.user_emb, self.item_emb], dim=0)
        user, item = self.propagation(x, self.graph).split([self.num_users, self.num_items])
        return user, item + self.item_emb

    def forward(self) -> RecOutput:
        user, item = self.online()
        # read by the alignment terms and plug-ins in training, by nothing when ranking
        modalities = self.lazy_projections()
        return RecOutput(user=self.bootstrap.predict(user), item=self.bootstrap.predict(item),
                         modalities=modalities,
                         extras={'user_online': user, 'item_online': item})

    # -- training ---------------------------------------------------------------------
    def alignment_terms(self, out: RecOutput, batch: BPRBatch) -> BootstrapTerms:
        r"""The bootstrap alignment terms of :obj:`batch`'s (user, positive) pairs (draws
        the target dropout masks)."""
        return self.bootstrap(out.extras['user_online'], out.extras['item_online'],
                              batch.users, batch.pos,
                              {m: out.modalities[m].item for m in self.modalities})

    def regularizer(self, out: RecOutput, batch: BPRBatch) -> Tensor:
        r""":math:`\lambda_{\text{reg}}` times MMRec's ``EmbLoss`` of the full online
        tables: :math:`(\lVert\mathbf{U}\rVert_F + \lVert\mathbf{I}\rVert_F) / I`."""
        user, item = out.extras['user_online'], out.extras['item_online']
        return self.reg_weight * emb_loss([user, item], item.size(0))

    def loss(self, out: RecOutput, batch: BPRBatch) -> Tensor:
        r"""BM3's loss on :obj:`batch` (see the class docstring); :obj:`batch.neg` is not
        used (negative-free)."""
        terms = self.alignment_terms(out, batch)
        return (terms.interaction() + self.regularizer(out, batch)
                + self.cl_weight * terms.modality())

    def extra_repr(self) -> str:
        return (f'{super().extra_repr()}, embedding_dim={self.embedding_dim}, '
                f'n_layers={self.n_layers}, dropout={self.dropout}, '
                f'reg_weight={self.reg_weight}, cl_weight={self.cl_weight}, '
                f'freeze_features={self.freeze_features}')
