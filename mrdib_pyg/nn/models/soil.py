r"""SOIL: MGCN's views on second-order graphs (an attractiveness-augmented user–item graph
and interest-aware item graphs), fused without preference gates, with two InfoNCE pairs."""
from typing import Dict, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mrdib_pyg.data.derived import GraphSpec, UserItemGraph
from mrdib_pyg.data.graphs import csr_from_parts
from mrdib_pyg.data.interest_graphs import AttractivenessGraph, InterestItemGraph
from mrdib_pyg.data.sampling import BPRBatch
from mrdib_pyg.nn.conv import AttentionFuser, LGPropagation, SparseOperator
from mrdib_pyg.nn.conv.modality_purifier import ModalityPurifier
from mrdib_pyg.nn.loss import info_nce
from mrdib_pyg.nn.models.base import MultimodalRecommender
from mrdib_pyg.nn.models.registry import register_model
from mrdib_pyg.nn.output import ModalityOutput, RecOutput


def _add(a: Tensor, b: Tensor, weight: float) -> Tensor:
    r""":math:`A + w B` of two sparse matrices, as a CSR matrix (SOIL's ``torch.add``)."""
    a, b = a.to_sparse_coo().coalesce(), b.to_sparse_coo().coalesce()
    return csr_from_parts(torch.cat([a.indices(), b.indices()], dim=1),
                          torch.cat([a.values(), weight * b.values()]), a.shape)


@register_model('soil', 'SOIL: MGCN without preference gates on second-order graphs '
                '(attractiveness-augmented user-item graph, interest-aware item graphs), '
                'two InfoNCE pairs (TL-UESTC/SOIL)')
class SOIL(MultimodalRecommender):
    r"""SOIL from `"Contrastive Second-Order Interest Learning for Multimodal
    Recommendation" <https://doi.org/10.1145/3664647.3681207>`_ (Su et al., ACM MM 2024),
    as its authors' code (TL-UESTC/SOIL ``models/soil.py``, an MMRec model) computes it.

    **Graphs** (built once from the training edges, declared in :meth:`graph_specs`):
    the sym-normalised user–item adjacency :math:`\hat{A}` and its user→item block
    :math:`\hat{R}`; the second-order user–item graph :math:`R^a`
    (:class:`~mrdib_pyg.data.interest_graphs.AttractivenessGraph`: per user, the top
    :math:`k_a + |\mathcal{I}(u)|` entries of the product similarity
    :math:`S^v \odot S^t` over the user's history rows) normalised as a bipartite matrix
    :math:`\hat{A}^a` and as its block :math:`\hat{R}^a`; and per modality :math:`m` the
    item operator :math:`G^m` (:class:`~mrdib_pyg.data.interest_graphs.InterestItemGraph`:
    the normalised interest-aware graph plus the normalised :math:`k`-NN graph). The
    augmented operators are

    .. math::
        \tilde{A} = \hat{A} + w_a \hat{A}^a, \qquad \tilde{R} = \hat{R} + w_a \hat{R}^a,
        \qquad w_a = \tfrac{1}{2}.

    **Behaviour ("content") view**: LightGCN-mean over :math:`L_{ui}` layers of
    :math:`\tilde{A}`,
    :math:`\mathbf{H} = \frac{1}{L_{ui}+1}\sum_{l=0}^{L_{ui}} \tilde{A}^l [\mathbf{E}_U;
    \mathbf{E}_I]`.

    **Interest view** per modality: the item ID embeddings purified by the modality's
    (frozen) features (:class:`~mrdib_pyg.nn.conv.modality_purifier.ModalityPurifier`),
    propagated :math:`L` times on :math:`G^m` (last layer), read out to users by
    :math:`\tilde{R}`:

    .. math::
        \mathbf{X}^m_I = (G^m)^{L}\big(\mathbf{E}_I \odot \sigma(\mathbf{W}^m_2
        (\mathbf{W}^m_1 \mathbf{F}_m + \mathbf{b}^m_1) + \mathbf{b}^m_2)\big), \qquad
        \mathbf{X}^m_U = \tilde{R}\,\mathbf{X}^m_I.

    **Fusion** (:class:`~mrdib_pyg.nn.conv.attention_fuser.AttentionFuser` with :obj:`gates=False`): shared
    attention gives the common part :math:`\mathbf{c}`, the side embedding is
    :math:`\mathbf{Z} = (\sum_m \mathbf{X}^m - (M-1)\mathbf{c})/(M+1)` (SOIL:
    :math:`(\mathbf{X}^v + \mathbf{X}^t - \mathbf{c})/3`), and the final tables are
    :math:`\mathbf{H} + \mathbf{Z}`; the score is their dot product.

    **Loss** on a batch :math:`(u, i^+, i^-)`, with :func:`~mrdib_pyg.nn.models.mgcn.info_nce`
    at :math:`\tau = 0.2` and :math:`\mathbf{e}` the final rows:

    .. math::
        \mathcal{L} = -\overline{\log\sigma(\hat{y}_{ui^+} - \hat{y}_{ui^-})}
        + \lambda_{ii}\big[\mathrm{InfoNCE}(\mathbf{Z}_{i^+}, \mathbf{H}_{i^+})
        + \mathrm{InfoNCE}(\mathbf{Z}_{u}, \mathbf{H}_{u})\big]
        + \lambda_{ui}\big[\mathrm{InfoNCE}(\mathbf{e}_{u}, \mathbf{H}_{i^+})
        + \mathrm{InfoNCE}(\mathbf{e}_{u}, \mathbf{Z}_{i^+})\big]

    (:math:`\lambda_{ii}` = SOIL's ``cl_loss``, :math:`\lambda_{ui}` = ``cl_loss2``). There
    is no L2 term: SOIL reads ``reg_weight`` and ``lambda_coeff`` but never uses them.

    **Per-modality outputs** (for plug-ins such as MRdIB):
    :obj:`ModalityOutput(item=X^m_I, user=X^m_U)`, SOIL's ``image_embeds`` /
    ``text_embeds`` before fusion (the representations the MRdIB paper's t-SNE shows).

    SOIL's defaults (``configs/model/SOIL.yaml``, first value of each grid, and
    ``configs/dataset/baby.yaml``): embedding 64, :obj:`n_ui_layers=2`, :obj:`n_layers=1`,
    :obj:`knn_k=10`, :obj:`cl_loss=1e-3`, :obj:`cl_loss2=1e-3`, :obj:`knn_i=10`,
    :obj:`knn_a=2` (Baby; Sports 5 / 6, Clothing 5 / 3); :math:`\tau = 0.2` (hard-coded);
    Adam lr :math:`10^{-3}` decayed by :math:`0.96^{\text{epoch}/50}`
    (:attr:`train_defaults`). Its logs select ``cl_loss=cl_loss2=0.01`` on Baby.

    Differences from SOIL's code, on purpose:

    * **The user readout's second-order block is normalised with the right degrees.**
      SOIL normalises :math:`R^a` for :math:`\tilde{R}` with a vector of user degrees that
      it also indexes by item id. Here :math:`\hat{R}^a` is the user→item block of
      :math:`\hat{A}^a`, i.e. :math:`D_U^{-1/2} R^a D_I^{-1/2}`, as :math:`\hat{R}` is the
      block of :math:`\hat{A}`. :obj:`soil_degree_quirk=True` gives SOIL's matrix (and
      its numbers; it needs :math:`I \le U`, as SOIL's code does).
    * **Any set of modalities.** SOIL hard-codes image and text. Here :math:`R^a` uses the
      product of every modality's similarity, the interest items are the union over every
      modality, and the fuser divides by :math:`M+1` (SOIL's 3 for two).
    * **Graph construction** is sparse and chunked (no :math:`I \times I` matrix, no
      per-user Python loop) and cached under a name holding every parameter and the
      inputs' fingerprint (SOIL caches ``image_interest_{knn_k}_{knn_i}.pt`` and
      ``mm_attractive_{knn_a}.pt`` and reads a stale file after the data change). Same
      edges and weights up to float rounding and the resolution of exact ties: when two
      history items of a user compete for a second-order slot through the symmetric
      :math:`S^a_{ij} = S^a_{ji}`, which of the two receives the value depends on rounding
      and ``topk``'s tie order in SOIL too.
    * **Degenerate inputs** are repaired where SOIL fails: a :obj:`knn_i`/:obj:`knn_k`
      above the item count is lowered with a warning, and :math:`k_a + |\mathcal{I}(u)|`
      is capped at :math:`I` per history row (SOIL's ``topk`` raises); an all-zero feature
      row has similarity 0 (SOIL: NaN), and weights of nodes with a negative weighted
      degree are set to 0 with a warning (SOIL: NaN). Nothing changes where SOIL's
      numbers are finite.
    * :obj:`cl_temperature` and :obj:`attractive_weight` are arguments (SOIL hard-codes
      0.2 and :math:`\tfrac{1}{2}`); :func:`~mrdib_pyg.nn.models.mgcn.info_nce` uses the
      log-sum-exp form (equal to float precision).

    As in SOIL the features are frozen (``nn.Embedding.from_pretrained(..., freeze=True)``;
    MGCN trains them) and nothing is redrawn per epoch. ``benchmarks/equivalence/soil.py``
    checks the graphs, tables, loss and gradients against SOIL's own class.

    **Cost.** Every step runs the full forward, as SOIL. The fixed operators are summed
    once and wrapped in :class:`~mrdib_pyg.nn.conv.SparseOperator` (CSR, precomputed
    transposes); with frozen features the projection's backward needs no feature gradient.

    Args:
        num_users (int), num_items (int): table sizes.
        features (dict): modality name :math:`\rightarrow` :obj:`[I, F_m]` raw features.
        adj (Tensor): :obj:`[U+I, U+I]` sym-normalised user–item adjacency :math:`\hat{A}`.
        user_item (Tensor): :obj:`[U, I]` its user→item block :math:`\hat{R}`.
        attractive (Tensor): :obj:`[U+I, U+I]` normalised second-order graph
            :math:`\hat{A}^a`.
        attractive_user_item (Tensor): :obj:`[U, I]` its user-readout block
            :math:`\hat{R}^a`.
        item_graphs (dict): modality :math:`\rightarrow` :obj:`[I, I]` item operator
            :math:`G^m`, one per modality.
        embedding_dim (int, optional): :math:`d`. (default: :obj:`64`)
        n_ui_layers (int, optional): :math:`L_{ui}`. (default: :obj:`2`)
        n_layers (int, optional): item–item layers :math:`L`. (default: :obj:`1`)
        knn_k (int, optional): neighbours of the similarity graphs (read by
            :meth:`graph_specs`). (default: :obj:`10`)
        knn_i (int, optional): interest items per user and modality. (default: :obj:`10`)
        knn_a (int, optional): second-order items per user. (default: :obj:`2`)
        cl_loss (float, optional): :math:`\lambda_{ii}`. (default: :obj:`1e-3`)
        cl_loss2 (float, optional): :math:`\lambda_{ui}`. (default: :obj:`1e-3`)
        cl_temperature (float, optional): :math:`\tau`. (default: :obj:`0.2`)
        attractive_weight (float, optional): :math:`w_a`. (default: :obj:`0.5`)
        soil_degree_quirk (bool, optional): SOIL's degree indexing of :math:`\hat{R}^a`
            (read by :meth:`graph_specs`). (default: :obj:`False`)
        order (list, optional): the modality order (default: MMRec's, text first).
        backend (str, optional): sparse backend of
            :class:`~mrdib_pyg.nn.conv.SparseOperator`. (default: :obj:`'csr'`)
    """
    train_defaults = {'lr': 1e-3, 'lr_decay': 0.96, 'lr_decay_step': 50}

    def __init__(self, num_users: int, num_items: int, features: Mapping[str, Tensor],
                 adj: Tensor, user_item: Tensor, attractive: Tensor,
                 attractive_user_item: Tensor, item_graphs: Mapping[str, Tensor],
                 embedding_dim: int = 64, n_ui_layers: int = 2, n_layers: int = 1,
                 knn_k: int = 10, knn_i: int = 10, knn_a: int = 2, cl_loss: float = 1e-3,
                 cl_loss2: float = 1e-3, cl_temperature: float = 0.2,
                 attractive_weight: float = 0.5, soil_degree_quirk: bool = False,
                 order: Optional[Sequence[str]] = None, backend: str = 'csr'):
        super().__init__(num_users, num_items, features, order)
        name = self.__class__.__name__
        n = num_users + num_items
        shapes = {'adj': (adj, (n, n)), 'user_item': (user_item, (num_users, num_items)),
                  'attractive': (attractive, (n, n)),
                  'attractive_user_item': (attractive_user_item, (num_users, num_items))}
        shapes.update(self.item_graph_shapes(item_graphs))
        self.check_graph_shapes(shapes)
        if cl_temperature <= 0:
            raise ValueError(f"'{name}' needs cl_temperature > 0 (got {cl_temperature})")
        self.embedding_dim = embedding_dim
        self.knn_k, self.knn_i, self.knn_a = knn_k, knn_i, knn_a
        self.cl_loss = cl_loss
        self.cl_loss2 = cl_loss2
        self.cl_temperature = cl_temperature
        self.attractive_weight = attractive_weight
        self.soil_degree_quirk = soil_degree_quirk

        self.user_emb = nn.Parameter(torch.empty(num_users, embedding_dim))
        self.item_emb = nn.Parameter(torch.empty(num_items, embedding_dim))
        self.purifiers = nn.ModuleDict({m: ModalityPurifier(self.feature_dims[m], embedding_dim)
                                        for m in self.modalities})
        self.fuser = AttentionFuser(embedding_dim, len(self.modalities), gates=False)

        # The augmented operators are fixed: summed once here, never per batch.
        self.ui_graph = SparseOperator(_add(adj, attractive, attractive_weight),
                                       symmetric=True, backend=backend)
        self.user_item = SparseOperator(_add(user_item, attractive_user_item,
                                             attractive_weight), backend=backend)
        self.item_graphs = nn.ModuleDict({m: SparseOperator(item_graphs[m], backend=backend)
                                          for m in self.modalities})
        self.ui_propagation = LGPropagation(n_ui_layers, combine='mean')
        self.ii_propagation = LGPropagation(n_layers, combine='last')
        self.reset_parameters()

    # -- graphs -------------------------------------------------------------------------
    @classmethod
    def graph_specs(cls, knn_k: int = 10, knn_i: int = 10, knn_a: int = 2,
                    soil_degree_quirk: bool = False,
                    modalities: Sequence[str] = ('text', 'image'),
                    **kwargs) -> Dict[str, GraphSpec]:
        r"""The user–item adjacency and its user→item block (as MGCN), the second-order
        graph :math:`R^a` normalised as a bipartite matrix and as its user-readout block
        (SOIL's degree quirk with :obj:`soil_degree_quirk=True`), and one item operator per
        modality (interest-aware graph with :obj:`knn_i`, plus the :obj:`knn_k`-NN graph),
        passed together as :obj:`item_graphs`."""
        return {
            'adj': UserItemGraph(norm='sym'),
            'user_item': UserItemGraph(norm='sym', block='user_item'),
            'attractive': AttractivenessGraph(k=knn_a),
            'attractive_user_item': AttractivenessGraph(k=knn_a, block='user_item',
                                                        degree_quirk=soil_degree_quirk),
            'item_graphs': {m: InterestItemGraph(m, k=knn_i, knn_k=knn_k)
                            for m in modalities},
        }

    # -- model --------------------------------------------------------------------------
    def reset_parameters(self) -> None:
        nn.init.xavier_uniform_(self.user_emb)
        nn.init.xavier_uniform_(self.item_emb)
        for purifier in self.purifiers.values():
            purifier.reset_parameters()
        self.fuser.reset_parameters()

    def forward(self) -> RecOutput:
        x = torch.cat([self.user_emb, self.item_emb], dim=0)
        content = self.ui_propagation(x, self.ui_graph)
        items, users = {}, {}
        for m in self.modalities:
            purified = self.purifiers[m](self.item_emb, self.feature(m))
            items[m] = self.ii_propagation(purified, self.item_graphs[m])
            users[m] = self.user_item(items[m])
        side = self.fuser([torch.cat([users[m], items[m]], dim=0) for m in self.modalities])
        user, item = (content + side).split([self.num_users, self.num_items])
        return RecOutput(
            user=user, item=item,
            modalities={m: ModalityOutput(item=items[m], user=users[m])
                        for m in self.modalities},
            extras={'side': side, 'content': content})

    # -- loss ---------------------------------------------------------------------------
    def contrastive_losses(self, out: RecOutput, batch: BPRBatch) -> Tuple[Tensor, Tensor]:
        r"""The two unweighted InfoNCE pairs :math:`(\mathcal{L}_{ii}, \mathcal{L}_{ui})`:
        side vs content views of the positive items and of the users, and the final user
        rows vs the positive items' content and side rows."""
        side, content = out.extras['side'], out.extras['content']
        items, t = batch.pos + self.num_users, self.cl_temperature
        user = out.user.index_select(0, batch.users)
        side_i, content_i = side.index_select(0, items), content.index_select(0, items)
        l_ii = (info_nce(side_i, content_i, t)
                + info_nce(side.index_select(0, batch.users),
                           content.index_select(0, batch.users), t))
        l_ui = info_nce(user, content_i, t) + info_nce(user, side_i, t)
        return l_ii, l_ui

    def loss(self, out: RecOutput, batch: BPRBatch) -> Tensor:
        u, p, n = batch.rows(out.user, out.item)
        # SOIL's BPR is logsigmoid (not the shared bpr_loss's log(1e-10 + sigmoid)).
        loss = -F.logsigmoid((u * p).sum(-1) - (u * n).sum(-1)).mean()
        if self.cl_loss or self.cl_loss2:
            l_ii, l_ui = self.contrastive_losses(out, batch)
            loss = loss + self.cl_loss * l_ii + self.cl_loss2 * l_ui
        return loss

    def extra_repr(self) -> str:
        return (f'{super().extra_repr()}, embedding_dim={self.embedding_dim}, '
                f'n_ui_layers={self.ui_propagation.num_layers}, '
                f'n_layers={self.ii_propagation.num_layers}, knn_k={self.knn_k}, '
                f'knn_i={self.knn_i}, knn_a={self.knn_a}, '
                f'soil_degree_quirk={self.soil_degree_quirk}')
