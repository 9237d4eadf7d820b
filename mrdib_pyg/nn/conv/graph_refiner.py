r"""GRCN's graph refiner: the user–item edges as one fixed structure with learnable
per-edge weights (:class:`BipartiteEdges`), one modality's routing network
(:class:`RoutingConv`) and the confidence-weighted, pruned fusion of the modalities'
attention into one refined graph (:class:`GraphRefiner`)."""
from typing import Dict, List, Mapping, NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.utils import softmax

from mrdib_pyg.data.graphs import csr_tensor

PairTensor = Tuple[Tensor, Tensor]


def _sampled_dot(crow: Tensor, col: Tensor, a: Tensor, b: Tensor) -> Tensor:
    r""":math:`\langle \mathbf{a}_r, \mathbf{b}_c \rangle` for every entry :math:`(r, c)` of a
    CSR pattern, in its order (a sampled product: no :obj:`[E, F]` gathers, which measured
    20x slower on one CPU thread at 200k edges)."""
    pattern = csr_tensor(crow, col, a.new_zeros(col.numel()), (a.size(0), b.size(0)))
    return torch.sparse.sampled_addmm(pattern, a, b.t(), beta=0.0).values()


class _WeightedMatmul(torch.autograd.Function):
    r""":math:`Y = A(\mathbf{v}) X` for a fixed CSR pattern with learnable values
    :math:`\mathbf{v}`: :math:`\partial X = A^\top \partial Y` (the transposed pattern is
    precomputed, its values a permutation of :math:`\mathbf{v}`) and
    :math:`\partial v_e = \langle \partial Y_{r(e)}, X_{c(e)} \rangle`."""

    @staticmethod
    def forward(ctx, values: Tensor, x: Tensor, crow: Tensor, col: Tensor,
                crow_t: Tensor, col_t: Tensor, perm_t: Tensor) -> Tensor:
        shape = (crow.numel() - 1, crow_t.numel() - 1)
        ctx.save_for_backward(values, x, crow, col, crow_t, col_t, perm_t)
        return csr_tensor(crow, col, values, shape) @ x

    @staticmethod
    def backward(ctx, grad: Tensor):
        values, x, crow, col, crow_t, col_t, perm_t = ctx.saved_tensors
        grad_values = grad_x = None
        if ctx.needs_input_grad[0]:
            grad_values = _sampled_dot(crow, col, grad.contiguous(), x)
        if ctx.needs_input_grad[1]:
            shape = (crow_t.numel() - 1, grad.size(0))
            grad_x = csr_tensor(crow_t, col_t, values.index_select(0, perm_t), shape) @ grad
        return grad_values, grad_x, None, None, None, None, None


class _EdgeDot(torch.autograd.Function):
    r""":math:`s_e = \langle \mathbf{a}_{u(e)}, \mathbf{b}_{i(e)} \rangle` for every edge, with
    the backward as two sparse products (:math:`\partial\mathbf{a} = S\,\mathbf{b}`,
    :math:`\partial\mathbf{b} = S^\top \mathbf{a}`, :math:`S` the pattern holding
    :math:`\partial s`) instead of two scatter-adds over the edges."""

    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor, crow: Tensor, col: Tensor,
                crow_t: Tensor, col_t: Tensor, perm_t: Tensor) -> Tensor:
        ctx.save_for_backward(a, b, crow, col, crow_t, col_t, perm_t)
        return _sampled_dot(crow, col, a, b)

    @staticmethod
    def backward(ctx, grad: Tensor):
        a, b, crow, col, crow_t, col_t, perm_t = ctx.saved_tensors
        grad_a = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_a = csr_tensor(crow, col, grad, (a.size(0), b.size(0))) @ b
        if ctx.needs_input_grad[1]:
            grad_b = csr_tensor(crow_t, col_t, grad.index_select(0, perm_t),
                          (b.size(0), a.size(0))) @ a
        return grad_a, grad_b, None, None, None, None, None


class BipartiteEdges(nn.Module):
    r"""The (user, item) pairs of a bipartite graph as one fixed structure whose edges
    carry per-call weights, possibly learned: the message passing of
    :class:`RoutingConv`, :class:`GraphRefiner` and
    :class:`~mrdib_pyg.nn.conv.edge_weighted_gcn.EdgeWeightedGCN`.

    The pairs are kept sorted by (user, item) (the *edge order* of every per-edge tensor
    these layers take and return), with both CSR views precomputed, so that

    .. math::
        \texttt{to\_users}(\mathbf{X}, \mathbf{w})_u = \sum_{e = (u, i)} w_e\, \mathbf{x}_i,
        \qquad
        \texttt{to\_items}(\mathbf{X}, \mathbf{w})_i = \sum_{e = (u, i)} w_e\, \mathbf{x}_u

    are sparse products with gradients for both :math:`\mathbf{X}` and :math:`\mathbf{w}`
    (PyG's :obj:`aggr='add'` message passing with a per-edge weight, on each direction of
    the undirected graph), and :meth:`dot` gives :math:`\langle \mathbf{a}_u,
    \mathbf{b}_i\rangle` per edge. Nothing loops over nodes or edges in Python. A pair
    given twice stays twice (a multigraph, as PyG's message passing sees it).

    Args:
        edge_index (Tensor): :obj:`[2, E]` (user, item) pairs, items numbered from 0.
        num_users (int), num_items (int): node counts :math:`U`, :math:`I`.

    Shapes:
        - **input:** :obj:`edge_index` :math:`(2, E)`
        - **to_users:** :math:`(I, F), (E) \rightarrow (U, F)`; **to_items:**
          :math:`(U, F), (E) \rightarrow (I, F)`; **dot:** :math:`(U, F), (I, F)
          \rightarrow (E)`
    """

    def __init__(self, edge_index: Tensor, num_users: int, num_items: int):
        super().__init__()
        name = self.__class__.__name__
        if edge_index.dim() != 2 or edge_index.size(0) != 2:
            raise ValueError(f"'{name}' needs a [2, E] (user, item) edge_index "
                             f"(got shape {tuple(edge_index.shape)})")
        user, item = edge_index.long().cpu()
        if user.numel() and (int(user.min()) < 0 or int(user.max()) >= num_users
                             or int(item.min()) < 0 or int(item.max()) >= num_items):
            raise ValueError(f"'{name}': edge_index has ids outside [0, {num_users}) x "
                             f"[0, {num_items}) (users, items numbered from 0)")
        self.num_users, self.num_items = int(num_users), int(num_items)
        order = torch.sort(user * num_items + item, stable=True).indices
        user, item = user[order], item[order]
        by_item = torch.sort(item, stable=True).indices  # item-major position -> edge
        inverse = torch.empty_like(by_item)
        inverse[by_item] = torch.arange(by_item.numel())  # edge -> item-major position

        def crow(index: Tensor, n: int) -> Tensor:
            return torch.cat([index.new_zeros(1),
                              torch.bincount(index, minlength=n).cumsum(0)])

        buffers = {
            'user': user, 'item': item,
            'crow_user': crow(user, num_users), 'crow_item': crow(item, num_items),
            'user_by_item': user[by_item],
            'by_item': by_item, 'inverse': inverse,
        }
        for key, value in buffers.items():
            self.register_buffer(key, value, persistent=False)

    @property
    def num_edges(self) -> int:
        return self.user.numel()

    @property
    def edge_index(self) -> Tensor:
        r"""The :obj:`[2, E]` (user, item) pairs in edge order."""
        return torch.stack([self.user, self.item])

    def _check(self, x: Tensor, rows: int, weight: Optional[Tensor], what: str) -> None:
        if x.dim() != 2 or x.size(0) != rows:
            raise ValueError(f"'{self.__class__.__name__}.{what}' expects {rows} rows "
                             f"(got shape {tuple(x.shape)})")
        if weight is not None and tuple(weight.shape) != (self.num_edges, ):
            raise ValueError(f"'{self.__class__.__name__}.{what}' expects one weight per "
                             f"edge, [{self.num_edges}] (got {tuple(weight.shape)})")

    def to_users(self, x_item: Tensor, weight: Optional[Tensor] = None) -> Tensor:
        r""":math:`\sum_{e=(u,i)} w_e\, \mathbf{x}_i` for every user (plain sum if
        :obj:`weight` is :obj:`None`)."""
        self._check(x_item, self.num_items, weight, 'to_users')
        if weight is None:
            weight = x_item.new_ones(self.num_edges)
        return _WeightedMatmul.apply(weight, x_item, self.crow_user, self.item,
                                     self.crow_item, self.user_by_item, self.by_item)

    def to_items(self, x_user: Tensor, weight: Optional[Tensor] = None) -> Tensor:
        r""":math:`\sum_{e=(u,i)} w_e\, \mathbf{x}_u` for every item (plain sum if
        :obj:`weight` is :obj:`None`)."""
        self._check(x_user, self.num_users, weight, 'to_items')
        if weight is None:
            weight = x_user.new_ones(self.num_edges)
        return _WeightedMatmul.apply(weight.index_select(0, self.by_item), x_user,
                                     self.crow_item, self.user_by_item,
                                     self.crow_user, self.item, self.inverse)

    def dot(self, x_user: Tensor, x_item: Tensor) -> Tensor:
        r""":math:`\langle \mathbf{x}_u, \mathbf{x}_i \rangle` for every edge, in edge order."""
        self._check(x_user, self.num_users, None, 'dot')
        self._check(x_item, self.num_items, None, 'dot')
        return _EdgeDot.apply(x_user, x_item, self.crow_user, self.item,
                              self.crow_item, self.user_by_item, self.by_item)

    def softmax_per_user(self, score: Tensor) -> Tensor:
        r"""Softmax of per-edge :obj:`score` over each user's edges (PyG's
        :func:`~torch_geometric.utils.softmax`)."""
        return softmax(score, self.user, num_nodes=self.num_users)

    def softmax_per_item(self, score: Tensor) -> Tensor:
        r"""Softmax of per-edge :obj:`score` over each item's edges."""
        return softmax(score, self.item, num_nodes=self.num_items)

    def extra_repr(self) -> str:
        return (f'num_users={self.num_users}, num_items={self.num_items}, '
                f'num_edges={self.num_edges}')


class RoutingOutput(NamedTuple):
    r"""What :class:`RoutingConv` returns: the modality's user and item representations and
    the attention of every edge in each direction (edge order of :class:`BipartiteEdges`):
    :obj:`att_user` weights the item :math:`\rightarrow` user messages (a softmax over each
    user's items), :obj:`att_item` the user :math:`\rightarrow` item messages (a softmax
    over each item's users)."""
    user: Tensor
    item: Tensor
    att_user: Tensor
    att_item: Tensor


class RoutingConv(nn.Module):
    r"""One modality's graph network of GRCN, from `"Graph-Refined Convolutional Network
    for Multimedia Recommendation with Implicit Feedback"
    <https://arxiv.org/abs/2008.01388>`_ (Wei et al., ACM MM 2020), as MMRec's
    ``models/grcn.py`` (``CGCN``) computes it.

    The items' features are projected and the users get a learned preference for the
    modality, both :math:`\ell_2`-normalised row-wise:

    .. math::
        \mathbf{f}_i = \operatorname{normalize}\big(\operatorname{LeakyReLU}(\mathbf{W}
        \mathbf{x}_i + \mathbf{b})\big), \qquad
        \mathbf{p}_u = \operatorname{normalize}(\mathbf{P}_u).

    *Routing* (:obj:`num_routing` rounds, paper eq. 2–4) moves every preference towards its
    items, weighted by their agreement:

    .. math::
        \mathbf{p}_u \leftarrow \operatorname{normalize}\Big(\mathbf{p}_u +
        \sum_{i \in \mathcal{N}(u)} \operatorname{softmax}_{i \in \mathcal{N}(u)}
        \big(\langle \mathbf{p}_u, \mathbf{f}_i \rangle\big)\, \mathbf{f}_i\Big).

    **MMRec's routing is the identity** (:obj:`route_to_users=False`): its ``GATConv``
    gets the :math:`(\text{user}, \text{item})` edges with PyG's source-to-target flow, so
    the messages reach the *items* and the user rows it adds to the preference are all
    zero; the rounds only re-normalise :math:`\mathbf{p}_u`. We reproduce that without
    computing the discarded messages. :obj:`route_to_users=True` runs the rounds above.

    Then one attention layer over the undirected graph (GAT-style, without parameters or
    activation), whose weights are returned for :class:`GraphRefiner`:

    .. math::
        s_{ui} &= \langle \mathbf{p}_u, \mathbf{f}_i \rangle, \qquad
        \alpha^{\to u}_{ui} = \operatorname{softmax}_{i \in \mathcal{N}(u)}(s_{ui}), \qquad
        \alpha^{\to i}_{ui} = \operatorname{softmax}_{u \in \mathcal{N}(i)}(s_{ui}) \\
        \mathbf{h}_u &= \mathbf{p}_u + \sum_{i \in \mathcal{N}(u)} \alpha^{\to u}_{ui}\,
        \mathbf{f}_i, \qquad
        \mathbf{h}_i = \mathbf{f}_i + \sum_{u \in \mathcal{N}(i)} \alpha^{\to i}_{ui}\,
        \mathbf{p}_u

    Initialisation as MMRec: Xavier-normal :math:`\mathbf{P}` and :math:`\mathbf{W}`,
    PyTorch's default bias.

    Args:
        num_users (int): :math:`U`, rows of the preference :math:`\mathbf{P}`.
        feature_dim (int): width of the raw item features.
        channels (int, optional): width of :math:`\mathbf{P}` and of the projection.
            (default: :obj:`64`, MMRec's :obj:`latent_embedding`)
        num_routing (int, optional): routing rounds (MMRec's :obj:`n_layers`).
            (default: :obj:`3`)
        route_to_users (bool, optional): run the routing rounds (:obj:`True`) or MMRec's
            identity routing (:obj:`False`). (default: :obj:`True`)
        negative_slope (float, optional): of the leaky ReLU. (default: :obj:`0.01`)

    Shapes:
        - **input:** raw item features :math:`(I, F_{\text{raw}})`, a
          :class:`BipartiteEdges` with :math:`E` edges
        - **output:** :class:`RoutingOutput`: :math:`(U, C)`, :math:`(I, C)`, :math:`(E)`,
          :math:`(E)`
    """

    def __init__(self, num_users: int, feature_dim: int, channels: int = 64,
                 num_routing: int = 3, route_to_users: bool = True,
                 negative_slope: float = 0.01):
        super().__init__()
        name = self.__class__.__name__
        if num_users <= 0 or feature_dim <= 0 or channels <= 0:
            raise ValueError(f"'{name}' needs positive sizes (got num_users={num_users}, "
                             f"feature_dim={feature_dim}, channels={channels})")
        if num_routing < 0:
            raise ValueError(f"'{name}' needs num_routing >= 0 (got {num_routing})")
        self.num_users = int(num_users)
        self.feature_dim = feature_dim
        self.channels = channels
        self.num_routing = num_routing
        self.route_to_users = route_to_users
        self.negative_slope = negative_slope
        self.preference = nn.Parameter(torch.empty(self.num_users, channels))
        self.projection = nn.Linear(feature_dim, channels)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            nn.init.xavier_normal_(self.preference)
        self.projection.reset_parameters()
        nn.init.xavier_normal_(self.projection.weight)

    def inputs(self, features: Tensor) -> PairTensor:
        r"""The normalised preference and projected features, :obj:`([U, C], [I, C])`."""
        if features.dim() != 2 or features.size(1) != self.feature_dim:
            raise ValueError(f"'{self.__class__.__name__}' expects item features of width "
                             f"{self.feature_dim} (got shape {tuple(features.shape)})")
        items = F.leaky_relu(self.projection(features), self.negative_slope)
        return F.normalize(self.preference), F.normalize(items)

    def route(self, pref: Tensor, items: Tensor, edges: BipartiteEdges) -> Tensor:
        r"""The preference after the routing rounds."""
        if not self.route_to_users:
            # MMRec adds all-zero rows and re-normalises a unit vector: the identity.
            return pref
        for _ in range(self.num_routing):
            att = edges.softmax_per_user(edges.dot(pref, items))
            pref = F.normalize(pref + edges.to_users(items, att))
        return pref

    def forward(self, features: Tensor, edges: BipartiteEdges) -> RoutingOutput:
        if edges.num_users != self.num_users:
            raise ValueError(f"'{self.__class__.__name__}' has {self.num_users} users, the "
                             f"edges {edges.num_users}")
        pref, items = self.inputs(features)
        pref = self.route(pref, items, edges)
        score = edges.dot(pref, items)
        att_user = edges.softmax_per_user(score)
        att_item = edges.softmax_per_item(score)
        return RoutingOutput(pref + edges.to_users(items, att_user),
                             items + edges.to_items(pref, att_item), att_user, att_item)

    def extra_repr(self) -> str:
        return (f'num_users={self.num_users}, feature_dim={self.feature_dim}, '
                f'channels={self.channels}, num_routing={self.num_routing}, '
                f'route_to_users={self.route_to_users}')


class RefinedGraph(NamedTuple):
    r"""What :class:`GraphRefiner` returns: every modality's :class:`RoutingOutput` and the
    refined weight of every edge in each direction (edge order of :class:`BipartiteEdges`):
    :obj:`to_user` for the item :math:`\rightarrow` user messages, :obj:`to_item` for the
    user :math:`\rightarrow` item messages."""
    modalities: Dict[str, RoutingOutput]
    to_user: Tensor
    to_item: Tensor


class GraphRefiner(nn.Module):
    r"""GRCN's graph refining layer, from `"Graph-Refined Convolutional Network for
    Multimedia Recommendation with Implicit Feedback" <https://arxiv.org/abs/2008.01388>`_
    (Wei et al., ACM MM 2020), as MMRec's ``models/grcn.py`` computes it
    (:obj:`weight_mode='confid'`, :obj:`pruning=True`).

    Each modality :math:`m` runs a :class:`RoutingConv`, whose attention scores every edge
    in both directions. A learned confidence :math:`c_{n,m}` of every node :math:`n` in
    every modality scales the attention of the messages that node *sends*; the refined
    weight of a message is the largest over the modalities, and negative weights are
    pruned:

    .. math::
        w_{i \to u} = \operatorname{ReLU}\Big(\max_m \alpha^{\to u}_{m,ui}\, c_{i,m}\Big),
        \qquad
        w_{u \to i} = \operatorname{ReLU}\Big(\max_m \alpha^{\to i}_{m,ui}\, c_{u,m}\Big).

    The confidence :math:`\mathbf{C} \in \mathbb{R}^{(U+I) \times M}` (users first, one
    column per modality in the order of :obj:`feature_dims`) is Xavier-normal initialised,
    as MMRec's ``model_specific_conf``; its gradient, like the attention's, flows through
    the refined weights. Where several modalities tie for the maximum, the gradient goes to
    one of them (:func:`torch.max`), as in MMRec.

    Args:
        num_users (int), num_items (int): :math:`U`, :math:`I`.
        feature_dims (dict): modality name :math:`\rightarrow` raw feature width, in the
            order of the confidence columns.
        channels (int, optional): of every :class:`RoutingConv`. (default: :obj:`64`)
        num_routing (int, optional), route_to_users (bool, optional): of every
            :class:`RoutingConv`. (default: :obj:`3`, :obj:`False`)
        prune (bool, optional): apply the ReLU. (default: :obj:`True`, MMRec's)

    Shapes:
        - **input:** modality name :math:`\rightarrow` item features :math:`(I, F_m)`, a
          :class:`BipartiteEdges` with :math:`E` edges
        - **output:** :class:`RefinedGraph`: per modality :class:`RoutingOutput`, weights
          :math:`(E)` and :math:`(E)`
    """

    def __init__(self, num_users: int, num_items: int, feature_dims: Mapping[str, int],
                 channels: int = 64, num_routing: int = 3, route_to_users: bool = True,
                 prune: bool = True):
        super().__init__()
        if not feature_dims:
            raise ValueError(f"'{self.__class__.__name__}' needs at least one modality")
        self.num_users, self.num_items = int(num_users), int(num_items)
        self.modalities: List[str] = list(feature_dims)
        self.prune = prune
        self.convs = nn.ModuleDict({
            m: RoutingConv(num_users, d, channels, num_routing, route_to_users)
            for m, d in feature_dims.items()})
        self.confidence = nn.Parameter(
            torch.empty(self.num_users + self.num_items, len(self.modalities)))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for conv in self.convs.values():
            conv.reset_parameters()
        with torch.no_grad():
            nn.init.xavier_normal_(self.confidence)

    def fuse(self, att_user: Tensor, att_item: Tensor, edges: BipartiteEdges) -> PairTensor:
        r"""The refined :obj:`(to_user, to_item)` weights from the :obj:`[E, M]` attention
        of every modality (columns in :attr:`modalities` order)."""
        conf_user = self.confidence[:self.num_users].index_select(0, edges.user)
        conf_item = self.confidence[self.num_users:].index_select(0, edges.item)
        to_user = (att_user * conf_item).max(dim=1).values  # the item sends
        to_item = (att_item * conf_user).max(dim=1).values  # the user sends
        if self.prune:
            to_user, to_item = F.relu(to_user), F.relu(to_item)
        return to_user, to_item

    def forward(self, features: Mapping[str, Tensor], edges: BipartiteEdges) -> RefinedGraph:
        if (edges.num_users, edges.num_items) != (self.num_users, self.num_items):
            raise ValueError(f"'{self.__class__.__name__}' is built for "
                             f"{self.num_users} users and {self.num_items} items, the edges "
                             f"have {edges.num_users} and {edges.num_items}")
        missing = [m for m in self.modalities if m not in features]
        if missing:
            raise ValueError(f"'{self.__class__.__name__}' got no features for {missing}")
        outs = {m: self.convs[m](features[m], edges) for m in self.modalities}
        att_user = torch.stack([outs[m].att_user for m in self.modalities], dim=1)
        att_item = torch.stack([outs[m].att_item for m in self.modalities], dim=1)
        to_user, to_item = self.fuse(att_user, att_item, edges)
        return RefinedGraph(outs, to_user, to_item)

    def extra_repr(self) -> str:
        return f'num_users={self.num_users}, num_items={self.num_items}, prune={self.prune}'
