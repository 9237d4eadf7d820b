r"""GRCN: modality routing refines the user–item graph an id graph network runs on."""
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from mrdib_pyg.data.derived import TrainingEdges
from mrdib_pyg.data.sampling import BPRBatch
from mrdib_pyg.nn.conv.edge_weighted_gcn import EdgeWeightedGCN
from mrdib_pyg.nn.conv.graph_refiner import BipartiteEdges, GraphRefiner, RefinedGraph
from mrdib_pyg.nn.loss import interleaved_id_reg
from mrdib_pyg.nn.models.base import MultimodalRecommender
from mrdib_pyg.nn.models.registry import register_model
from mrdib_pyg.nn.output import ModalityOutput, RecOutput


def grcn_modality_order(names: Sequence[str]) -> List[str]:
    r"""MMRec GRCN's order: image, then text (its representation is
    :math:`[\text{id} \,\|\, \text{image} \,\|\, \text{text}]` and its confidence columns
    are image, text); other modalities follow in the given order."""
    head = [n for n in ('image', 'text') if n in names]
    return head + [n for n in names if n not in head]


@register_model('grcn', 'GRCN: modality routing refines and prunes the user-item graph of '
                        'an id GCN; [id || modalities] tables (MMRec GRCN)')
class GRCN(MultimodalRecommender):
    r"""GRCN from `"Graph-Refined Convolutional Network for Multimedia Recommendation with
    Implicit Feedback" <https://arxiv.org/abs/2008.01388>`_ (Wei et al., ACM MM 2020), as
    MMRec's ``models/grcn.py`` trains it.

    Every modality :math:`m` runs a :class:`~mrdib_pyg.nn.conv.graph_refiner.RoutingConv`
    over the training edges (a normalised user preference :math:`\mathbf{p}_{m,u}` and
    projected item features :math:`\mathbf{f}_{m,i}`; attention
    :math:`\alpha_{m}` on every edge, in each direction), giving its tables
    :math:`(\mathbf{H}^u_m, \mathbf{H}^i_m)`. The
    :class:`~mrdib_pyg.nn.conv.graph_refiner.GraphRefiner` fuses the attention with a
    learned per-node, per-modality confidence :math:`\mathbf{C}` into one pruned graph,

    .. math::
        w_{i \to u} = \operatorname{ReLU}\big(\max_m \alpha^{\to u}_{m,ui}\, c_{i,m}\big),
        \qquad
        w_{u \to i} = \operatorname{ReLU}\big(\max_m \alpha^{\to i}_{m,ui}\, c_{u,m}\big),

    on which the :class:`~mrdib_pyg.nn.conv.edge_weighted_gcn.EdgeWeightedGCN` propagates
    the normalised id embedding :math:`\mathbf{E}` (two weighted-sum layers,
    :math:`\mathbf{Z} = \mathbf{h}^{(0)} + \mathbf{h}^{(1)} + \mathbf{h}^{(2)}`). The tables
    are the concatenations

    .. math::
        \mathbf{u} = [\mathbf{Z}_u \,\|\, \mathbf{H}^u_{\text{image}} \,\|\,
        \mathbf{H}^u_{\text{text}}], \qquad
        \mathbf{i} = [\mathbf{Z}_i \,\|\, \mathbf{H}^i_{\text{image}} \,\|\,
        \mathbf{H}^i_{\text{text}}], \qquad \hat{y}_{ui} = \mathbf{u}^\top \mathbf{i}

    (:math:`64 + 64 + 64 = 192` wide with MMRec's sizes). Loss (MMRec's, on the batch):

    .. math::
        \mathcal{L} = -\frac{1}{B}\sum_b \log \sigma(s^+_b - s^-_b)
        + \lambda \Big(\operatorname{mean}(\mathbf{E}[u]^2)
        + \tfrac{1}{2}\operatorname{mean}(\mathbf{E}[i^+]^2)
        + \tfrac{1}{2}\operatorname{mean}(\mathbf{E}[i^-]^2)
        + \sum_m \operatorname{mean}(\mathbf{P}_m[u]^2)
        + \sum_{m \in \text{reg\_preferences}} \operatorname{mean}(\mathbf{P}_m^2)\Big)

    on the raw (not normalised) id embedding :math:`\mathbf{E}` and preferences
    :math:`\mathbf{P}_m`. MMRec writes the id term over the interleaved
    :math:`[u, u]`/:math:`[i^+, i^-]` rows (the same number) and adds the *whole* image
    preference matrix once more; it computes a confidence penalty but never adds it (nor do
    we).

    Per-modality outputs (for plug-ins): each modality's :obj:`ModalityOutput(item=[I, C],
    user=[U, C])` from its routing network, before the concatenation. No replace mode
    (:attr:`supports_replace` is off).

    **Computation.** The training edges are one
    :class:`~mrdib_pyg.nn.conv.graph_refiner.BipartiteEdges` (CSR views of both
    directions built once); every message passing is a sparse product whose values are the
    learned edge weights, with a custom backward for the weights; an edge's score
    :math:`\langle \mathbf{p}_u, \mathbf{f}_i \rangle` is computed once for both directions
    (MMRec computes it per direction), and MMRec's no-op routing rounds are skipped.
    Nothing is random: MMRec's edge dropout is hard-coded to :math:`p = 0`.

    **MMRec's defaults** (``configs/model/GRCN.yaml``, first grid values):
    :obj:`embedding_size: 64` (id), :obj:`latent_embedding: 64` (modalities),
    :obj:`n_layers: 3` routing rounds, :obj:`reg_weight` :math:`0.1`, learning rate
    :math:`1` (:attr:`train_defaults`; no decay). Hard-coded there and here: 2 id layers,
    sum aggregation, no activations, :math:`\ell_2`-normalised inputs, confidence fusion
    with pruning, concatenation.

    **Deliberate differences from MMRec**, each selectable:

    * MMRec's routing never changes the preference (a bug): its ``GATConv`` aggregates at
      the *items* (PyG's source-to-target flow on :math:`(u, i)` edges) and the user rows it
      adds are zero. We run the routing of the paper (users gather their items) by default;
      :obj:`route_to_users=False` gives MMRec's identity routing (and its numbers).
    * MMRec ranks (``full_sort_predict``) with the tables of the **last training batch**,
      computed before that batch's optimiser step; we recompute them in evaluation mode
      (the base class's cached :meth:`score`); MMRec's is
      :obj:`score_last_train_forward=True`.
    * MMRec's BPR here is :math:`-\operatorname{mean}\log\sigma(\cdot)` without the
      :math:`10^{-10}` of its shared ``BPRLoss``; we use the shared
      :func:`~mrdib_pyg.nn.loss.bpr_loss` (equal unless :math:`\sigma < 10^{-6}`, where
      MMRec's heads to :math:`+\infty`).
    * Any device: MMRec hard-codes ``.cuda()`` in its loss, so it runs on a GPU only.
    * Any set of modalities: MMRec's GRCN fails without image features (a typo leaves the
      text-only representation unset) and regularises the image preference matrix as a
      whole by name (:obj:`reg_preferences`).
    * The graph counts a duplicated training pair once (the data layer drops duplicates;
      MMRec's softmax and sums would count it twice; MMRec's datasets have none).

    MMRec's exact training and ranking: :obj:`score_last_train_forward=True` (with the
    other defaults).

    Args:
        num_users (int), num_items (int): table sizes.
        features (dict): modality name :math:`\rightarrow` :obj:`[I, d_m]` features.
        edge_index (Tensor): :obj:`[2, E]` (user, item) training pairs, from
            :meth:`graph_specs`.
        embedding_dim (int, optional): width of the id embedding. (default: :obj:`64`)
        latent_dim (int, optional): width :math:`C` of every modality's preference and
            projection. (default: :obj:`64`)
        num_routing (int, optional): routing rounds (MMRec's :obj:`n_layers`).
            (default: :obj:`3`)
        id_layers (int, optional): layers of the id network. (default: :obj:`2`)
        reg_weight (float, optional): :math:`\lambda`. (default: :obj:`0.1`)
        route_to_users (bool, optional): the paper's routing (:obj:`True`) or MMRec's
            no-op (:obj:`False`). (default: :obj:`True`)
        reg_preferences (tuple, optional): modalities whose whole preference matrix enters
            the regulariser. (default: :obj:`('image',)`, MMRec's)
        score_last_train_forward (bool, optional): rank with the last training forward's
            tables, as MMRec. (default: :obj:`False`)
        order (list, optional): modality order of the concatenation and the confidence
            columns (default: MMRec GRCN's, image first).
    """
    train_defaults = {'lr': 1.0}

    def __init__(self, num_users: int, num_items: int, features: Dict[str, Tensor],
                 edge_index: Tensor, embedding_dim: int = 64, latent_dim: int = 64,
                 num_routing: int = 3, id_layers: int = 2, reg_weight: float = 0.1,
                 route_to_users: bool = True, reg_preferences: Tuple[str, ...] = ('image', ),
                 score_last_train_forward: bool = False,
                 order: Optional[Sequence[str]] = None):
        if order is None:
            order = grcn_modality_order(list(features))
        super().__init__(num_users, num_items, features, order)
        if edge_index.dim() != 2 or edge_index.size(0) != 2:
            raise ValueError(f"'{self.__class__.__name__}' needs a [2, E] (user, item) "
                             f"edge_index (got shape {tuple(edge_index.shape)})")
        self.embedding_dim = embedding_dim
        self.latent_dim = latent_dim
        self.reg_weight = reg_weight
        self.reg_preferences = tuple(reg_preferences)
        self.score_last_train_forward = score_last_train_forward
        self.edges = BipartiteEdges(edge_index, self.num_users, self.num_items)
        self.id_embedding = nn.Parameter(torch.empty(self.num_users + self.num_items,
                                                     embedding_dim))
        self.refiner = GraphRefiner(self.num_users, self.num_items,
                                    {m: self.feature_dims[m] for m in self.modalities},
                                    latent_dim, num_routing, route_to_users)
        self.id_gcn = EdgeWeightedGCN(id_layers)
        self.reset_parameters()

    @classmethod
    def graph_specs(cls, **kwargs):
        return {'edge_index': TrainingEdges()}

    def reset_parameters(self) -> None:
        with torch.no_grad():
            nn.init.xavier_normal_(self.id_embedding)
        self.refiner.reset_parameters()
        self._last_train = None

    def preference(self, modality: str) -> Tensor:
        r"""The raw :obj:`[U, C]` preference matrix :math:`\mathbf{P}_m` of :obj:`modality`."""
        return self.refiner.convs[modality].preference

    def refine(self) -> RefinedGraph:
        r"""Every modality's routing output and the refined edge weights."""
        return self.refiner({m: self.feature(m) for m in self.modalities}, self.edges)

    def forward(self) -> RecOutput:
        graph = self.refine()
        ids = self.id_embedding.split([self.num_users, self.num_items])
        id_user, id_item = self.id_gcn(ids, self.edges, graph.to_user, graph.to_item)
        reps = graph.modalities
        user = torch.cat([id_user] + [reps[m].user for m in self.modalities], dim=1)
        item = torch.cat([id_item] + [reps[m].item for m in self.modalities], dim=1)
        out = RecOutput(user=user, item=item, modalities={
            m: ModalityOutput(item=reps[m].item, user=reps[m].user) for m in self.modalities})
        return self.remember_training_tables(out)


    def regularizer(self, out: RecOutput, batch: BPRBatch) -> Tensor:
        reg = interleaved_id_reg(self.id_embedding, self.num_users, batch.users, batch.pos,
                                 batch.neg)
        for m in self.modalities:
            reg = reg + self.preference(m).index_select(0, batch.users).pow(2).mean()
        for m in self.reg_preferences:
            if m in self.refiner.convs:
                reg = reg + self.preference(m).pow(2).mean()
        return self.reg_weight * reg

    def extra_repr(self) -> str:
        return (f'{super().extra_repr()}, embedding_dim={self.embedding_dim}, '
                f'latent_dim={self.latent_dim}, num_edges={self.edges.num_edges}')
