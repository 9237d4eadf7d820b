r"""MGCN: purified modality views on item–item graphs, fused by attention with preference
gates, on top of a LightGCN behaviour view."""
import warnings
from typing import Dict, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mrdib_pyg.data.derived import GraphSpec, ItemKNN, UserItemGraph
from mrdib_pyg.data.graphs import csr_tensor, to_csr
from mrdib_pyg.data.sampling import BPRBatch
from mrdib_pyg.nn.conv import LGPropagation, SparseOperator
from mrdib_pyg.nn.conv.attention_fuser import AttentionFuser
from mrdib_pyg.nn.conv.modality_purifier import ModalityPurifier
from mrdib_pyg.nn.loss import l2_loss
from mrdib_pyg.nn.loss import info_nce  # noqa: F401  (re-exported: MGCN's InfoNCE)
from mrdib_pyg.nn.models.base import MultimodalRecommender
from mrdib_pyg.nn.models.registry import register_model
from mrdib_pyg.nn.output import ModalityOutput, RecOutput

def _finite_graph(adj: Tensor, modality: str) -> Tensor:
    # D^-1/2 of a negative weighted degree (signed features whose top-k cosines sum below
    # zero) is NaN; such items become isolated, as zero-degree items are.
    adj = to_csr(adj)
    values = adj.values()
    if bool(torch.isfinite(values).all()):
        return adj
    warnings.warn(f"MGCN: the item graph of modality '{modality}' has "
                  f"{int((~torch.isfinite(values)).sum())} non-finite weights (items whose "
                  f"top-k cosine similarities sum to a negative degree); they are set to 0, "
                  f"which isolates those items in this graph", stacklevel=3)
    return csr_tensor(adj.crow_indices(), adj.col_indices(),
                      torch.nan_to_num(values, nan=0., posinf=0., neginf=0.), adj.shape)




@register_model('mgcn', 'MGCN: ID-purified modality views on item kNN graphs, attention '
                'fuser with preference gates, InfoNCE (MMRec MGCN)')
class MGCN(MultimodalRecommender):
    r"""MGCN from `"Multi-View Graph Convolutional Network for Multimedia Recommendation"
    <https://arxiv.org/abs/2308.03588>`_ (ACM MM 2023), as MMRec implements it.

    **Behaviour ("content") view**: LightGCN-mean over :math:`L_{ui}` layers of the
    symmetric-normalised user–item adjacency :math:`\hat{A}` (no self-loops),

    .. math::
        \mathbf{H} = \frac{1}{L_{ui}+1}\sum_{l=0}^{L_{ui}} \hat{A}^l
        \begin{bmatrix}\mathbf{E}_U \\ \mathbf{E}_I\end{bmatrix}.

    **Item–item view** per modality :math:`m`: the item ID embeddings purified by the
    modality (:class:`~mrdib_pyg.nn.conv.modality_purifier.ModalityPurifier`), propagated
    :math:`L` times (no layer mean) on the modality's item graph :math:`S_m` (cosine top-k of
    the **raw** features, the item included, weighted by the cosine values,
    :math:`D^{-1/2} S D^{-1/2}` with :math:`D` the weighted row sums; built once), and
    carried to users by the user→item block :math:`\hat{R}` of :math:`\hat{A}`:

    .. math::
        \mathbf{X}^m_I = S_m^{L}\big(\mathbf{E}_I \odot \sigma(\mathbf{W}^m_2(\mathbf{W}^m_1
        \mathbf{F}_m + \mathbf{b}^m_1) + \mathbf{b}^m_2)\big), \qquad
        \mathbf{X}^m_U = \hat{R}\,\mathbf{X}^m_I.

    **Fusion** (:class:`~mrdib_pyg.nn.conv.attention_fuser.AttentionFuser`, on users and
    items alike): the side embedding :math:`\mathbf{Z}` = the mean of the
    preference-gated modality-specific parts and the attention-weighted common part; the
    final tables are :math:`\mathbf{H} + \mathbf{Z}` and the score is their dot product.

    **Loss** on a batch :math:`(u, i^+, i^-)` of size :math:`B`:

    .. math::
        \mathcal{L} = -\overline{\log\sigma(\hat{y}_{ui^+} - \hat{y}_{ui^-})}
        + \lambda \frac{\|\mathbf{e}_u\|^2 + \|\mathbf{e}_{i^+}\|^2 + \|\mathbf{e}_{i^-}\|^2}{2B}
        + \beta\big[\mathrm{InfoNCE}_\tau(\mathbf{Z}_{i^+}, \mathbf{H}_{i^+})
        + \mathrm{InfoNCE}_\tau(\mathbf{Z}_{u}, \mathbf{H}_{u})\big]

    with the final rows in the L2 term, :math:`\tau = 0.2` and :func:`info_nce`.

    **Per-modality outputs** (for plug-ins such as MRdIB):
    :obj:`ModalityOutput(item=X^m_I, user=X^m_U)`, the purified, propagated item table of
    the modality and the user table MGCN derives from it with :math:`\hat{R}` — the
    representations the fuser reads, before any mixing across modalities.
    :obj:`modality_output='purified'` hands out the purified table *before* the item–item
    propagation instead (:math:`\mathbf{E}_I \odot \sigma(\cdot)`, with
    :math:`\hat{R}` times it as the user side): another attachment point for a plug-in
    (our choice; the model and its scores are the same either way).

    MMRec's defaults (``MGCN.yaml``, first value of the ``cl_loss`` grid): embedding 64,
    :obj:`n_ui_layers=2`, :obj:`n_layers=1`, :obj:`knn_k=10`, :obj:`reg_weight=1e-4`,
    :obj:`cl_loss=1e-3`; Adam lr :math:`10^{-3}` decayed by :math:`0.96^{\text{epoch}/50}`
    (:attr:`train_defaults`). ``lambda_coeff`` in the yaml is never read by MMRec's MGCN
    (the item graphs are used as built) and has no counterpart here.

    Differences from MMRec, on purpose:

    * **Any set of modalities.** MMRec hard-codes image and text (and fails with one); the
      fuser here takes :math:`M` views and divides by :math:`M+1` (MMRec's 3 for two).
    * **Graphs** are declared (:meth:`graph_specs`) and built by the data layer, cached
      under a name holding every parameter and the features' fingerprint; MMRec caches
      ``image_adj_{k}_True.pt`` by :obj:`knn_k` only and reads a stale file after the
      features change.
    * **Degenerate graphs** are repaired where MMRec fails: a :obj:`knn_k` above the item
      count is lowered to it with a warning (MMRec's ``topk`` raises); an item whose top-k
      cosine values sum to a negative degree (signed features) is isolated in that
      modality's graph with a warning, and an all-zero feature row gets zero weights
      (MMRec's :math:`D^{-1/2}` or its division by a zero norm gives NaN and training
      stops). Nothing changes where MMRec's numbers are finite.
    * **L2 term denominator.** MMRec divides by its configured ``train_batch_size`` (2048),
      also on the smaller last batch of an epoch; here by the batch's size. Pass
      :obj:`reg_batch_size=2048` for MMRec's numbers on that batch.
    * **Frozen features** (:obj:`freeze_features=True`) are an option; by default the
      features are trained, as MMRec's ``nn.Embedding.from_pretrained(..., freeze=False)``
      (the item graphs stay those of the raw features either way, as in MMRec).
    * :func:`info_nce` uses the log-sum-exp form (equal to float precision).

    As in MMRec's ``mgcn.py`` (not its shared ``BPRLoss``), the BPR term is
    :math:`-\log\sigma` without the :math:`10^{-10}` of
    :func:`~mrdib_pyg.nn.loss.bpr_loss`. ``benchmarks/equivalence/mgcn.py`` checks graphs,
    tables, losses, gradients and five Adam steps against MMRec's class.

    **Cost.** Every step runs the full forward, as MMRec. On a CPU the projection of the
    4096-d image features (forward, and both products of its backward) and Adam over the
    trained feature tables (31.6M entries on Baby) dominate; :obj:`freeze_features=True`
    drops the feature gradient and its optimiser state. The fixed graphs are wrapped once
    in :class:`~mrdib_pyg.nn.conv.SparseOperator` (CSR, precomputed transposes).

    Args:
        num_users (int), num_items (int): table sizes.
        features (dict): modality name :math:`\rightarrow` :obj:`[I, F_m]` raw features.
        adj (Tensor): :obj:`[U+I, U+I]` sym-normalised user–item adjacency (sparse).
        user_item (Tensor): :obj:`[U, I]` its user→item block :math:`\hat{R}` (sparse).
        item_graphs (dict): modality :math:`\rightarrow` :obj:`[I, I]` normalised item graph
            :math:`S_m` (sparse), one per modality.
        embedding_dim (int, optional): :math:`d`. (default: :obj:`64`)
        n_ui_layers (int, optional): :math:`L_{ui}`. (default: :obj:`2`)
        n_layers (int, optional): item–item layers :math:`L`. (default: :obj:`1`)
        knn_k (int, optional): neighbours of the item graphs (read by :meth:`graph_specs`).
            (default: :obj:`10`)
        reg_weight (float, optional): :math:`\lambda`. (default: :obj:`1e-4`)
        cl_loss (float, optional): :math:`\beta`, MMRec's name. (default: :obj:`1e-3`)
        cl_temperature (float, optional): :math:`\tau`. (default: :obj:`0.2`)
        freeze_features (bool, optional): keep the features fixed instead of training them.
            (default: :obj:`False`)
        reg_batch_size (int, optional): divide the L2 term by this instead of the batch's
            size (MMRec: 2048). (default: :obj:`None`)
        order (list, optional): the modality order (default: MMRec's, text first).
        modality_output (str, optional): the per-modality tables handed to plug-ins,
            :obj:`'propagated'` or :obj:`'purified'` (see above). (default:
            :obj:`'propagated'`)
        backend (str, optional): sparse backend of
            :class:`~mrdib_pyg.nn.conv.SparseOperator`. (default: :obj:`'csr'`)
    """
    train_defaults = {'lr': 1e-3, 'lr_decay': 0.96, 'lr_decay_step': 50}

    def __init__(self, num_users: int, num_items: int, features: Mapping[str, Tensor],
                 adj: Tensor, user_item: Tensor, item_graphs: Mapping[str, Tensor],
                 embedding_dim: int = 64, n_ui_layers: int = 2, n_layers: int = 1,
                 knn_k: int = 10, reg_weight: float = 1e-4, cl_loss: float = 1e-3,
                 cl_temperature: float = 0.2, freeze_features: bool = False,
                 reg_batch_size: Optional[int] = None, order: Optional[Sequence[str]] = None,
                 modality_output: str = 'propagated', backend: str = 'csr'):
        super().__init__(num_users, num_items, features, order)
        name = self.__class__.__name__
        n = num_users + num_items
        shapes = {'adj': (adj, (n, n)), 'user_item': (user_item, (num_users, num_items))}
        shapes.update(self.item_graph_shapes(item_graphs))
        self.check_graph_shapes(shapes)
        if reg_batch_size is not None and reg_batch_size < 1:
            raise ValueError(f"'{name}' needs reg_batch_size >= 1 or None "
                             f"(got {reg_batch_size})")
        if cl_temperature <= 0:
            raise ValueError(f"'{name}' needs cl_temperature > 0 (got {cl_temperature})")
        if modality_output not in ('propagated', 'purified'):
            raise ValueError(f"'{name}' needs modality_output 'propagated' or 'purified' "
                             f"(got {modality_output!r})")
        self.modality_output = modality_output
        self.embedding_dim = embedding_dim
        self.knn_k = knn_k
        self.reg_weight = reg_weight
        self.cl_loss = cl_loss
        self.cl_temperature = cl_temperature
        self.freeze_features = freeze_features
        self.reg_batch_size = reg_batch_size

        self.user_emb = nn.Parameter(torch.empty(num_users, embedding_dim))
        self.item_emb = nn.Parameter(torch.empty(num_items, embedding_dim))
        if not self.freeze_features:  # MMRec trains them (from_pretrained, freeze=False)
            self.make_features_trainable()
        self.purifiers = nn.ModuleDict({m: ModalityPurifier(self.feature_dims[m], embedding_dim)
                                        for m in self.modalities})
        self.fuser = AttentionFuser(embedding_dim, len(self.modalities))

        self.ui_graph = SparseOperator(adj, symmetric=True, backend=backend)
        self.user_item = SparseOperator(user_item, backend=backend)
        self.item_graphs = nn.ModuleDict(
            {m: SparseOperator(_finite_graph(item_graphs[m], m), backend=backend)
             for m in self.modalities})
        self.ui_propagation = LGPropagation(n_ui_layers, combine='mean')
        self.ii_propagation = LGPropagation(n_layers, combine='last')
        self.reset_parameters()

    # -- graphs -------------------------------------------------------------------------
    @classmethod
    def graph_specs(cls, knn_k: int = 10, modalities: Sequence[str] = ('text', 'image'),
                    **kwargs) -> Dict[str, GraphSpec]:
        r"""The user–item adjacency (:obj:`adj`), its user→item block (:obj:`user_item`,
        exactly MMRec's ``R``: the block of the same sym-normalised matrix) and one weighted
        cosine kNN graph per modality, passed together as :obj:`item_graphs`
        (:meth:`from_data` gives the dataset's modalities)."""
        specs: Dict[str, GraphSpec] = {
            'adj': UserItemGraph(norm='sym'),
            'user_item': UserItemGraph(norm='sym', block='user_item'),
        }
        specs['item_graphs'] = {m: ItemKNN(m, k=knn_k, weighted=True, loop=True, norm='sym')
                                for m in modalities}
        return specs

    # -- model --------------------------------------------------------------------------
    def reset_parameters(self) -> None:
        nn.init.xavier_uniform_(self.user_emb)
        nn.init.xavier_uniform_(self.item_emb)
        self.reset_feature_tables()
        for purifier in self.purifiers.values():
            purifier.reset_parameters()
        self.fuser.reset_parameters()

    def forward(self) -> RecOutput:
        x = torch.cat([self.user_emb, self.item_emb], dim=0)
        content = self.ui_propagation(x, self.ui_graph)
        items, users, handed = {}, {}, {}
        for m in self.modalities:
            purified = self.purifiers[m](self.item_emb, self.modality_features(m))
            items[m] = self.ii_propagation(purified, self.item_graphs[m])
            users[m] = self.user_item(items[m])
            handed[m] = (ModalityOutput(item=items[m], user=users[m])
                         if self.modality_output == 'propagated' else
                         ModalityOutput(item=purified, user=self.user_item(purified)))
        side = self.fuser([torch.cat([users[m], items[m]], dim=0) for m in self.modalities],
                          content)
        user, item = (content + side).split([self.num_users, self.num_items])
        return RecOutput(
            user=user, item=item,
            modalities=handed,
            extras={'side': side, 'content': content})

    # -- loss ---------------------------------------------------------------------------
    def regularizer(self, out: RecOutput, batch: BPRBatch) -> Tensor:
        r""":math:`\lambda` times half the squared norm of the batch's final user, positive
        and negative rows, over the batch size (or :obj:`reg_batch_size`)."""
        rows = batch.rows(out.user, out.item)
        return self._l2(rows, batch)

    def _l2(self, rows, batch: BPRBatch) -> Tensor:
        size = self.reg_batch_size or batch.users.numel()
        return self.reg_weight * l2_loss(rows, size)

    def contrastive_loss(self, out: RecOutput, batch: BPRBatch) -> Tensor:
        r"""InfoNCE between the side and content embeddings of the batch's positive items,
        plus the same for its users (unweighted; :meth:`loss` multiplies by
        :obj:`cl_loss`)."""
        side, content = out.extras['side'], out.extras['content']
        items = batch.pos + self.num_users
        return (info_nce(side.index_select(0, items), content.index_select(0, items),
                         self.cl_temperature)
                + info_nce(side.index_select(0, batch.users),
                           content.index_select(0, batch.users), self.cl_temperature))

    def loss(self, out: RecOutput, batch: BPRBatch) -> Tensor:
        u, p, n = batch.rows(out.user, out.item)
        # MGCN's BPR is logsigmoid (not the shared bpr_loss's log(1e-10 + sigmoid)).
        mf = -F.logsigmoid((u * p).sum(-1) - (u * n).sum(-1)).mean()
        loss = mf + self._l2([u, p, n], batch)
        if self.cl_loss:
            loss = loss + self.cl_loss * self.contrastive_loss(out, batch)
        return loss

    def extra_repr(self) -> str:
        return (f'{super().extra_repr()}, embedding_dim={self.embedding_dim}, '
                f'n_ui_layers={self.ui_propagation.num_layers}, '
                f'n_layers={self.ii_propagation.num_layers}, knn_k={self.knn_k}, '
                f'freeze_features={self.freeze_features}')
