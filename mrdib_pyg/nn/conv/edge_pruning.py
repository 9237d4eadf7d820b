r"""Degree-sensitive edge pruning of a bipartite graph, redrawn every epoch."""
from typing import Optional, Tuple

import torch
from torch import Tensor, nn

from mrdib_pyg.data.graphs import csr_from_parts

__all__ = ['DegreeSensitiveEdgePruning', 'bipartite_degree_weights', 'bipartite_sym_norm']


def bipartite_degree_weights(edge_index: Tensor, num_users: int,
                             num_items: int) -> Tensor:
    r"""The symmetric normalisation of every edge of a bipartite graph,

    .. math::
        w_{ui} = \frac{1}{\sqrt{(d_u + \epsilon)(d_i + \epsilon)}}, \qquad
        \epsilon = 10^{-7},

    with :math:`d_u` and :math:`d_i` counted over :obj:`edge_index` (a duplicated pair counts
    twice). It is computed in the order MMRec computes it (the degree, then
    :math:`\epsilon` added in :obj:`float32`, then the product), so the values are
    bit-identical to MMRec's ``_normalize_adj_m`` and a :func:`torch.multinomial` draw over
    them consumes the random stream the same way.

    Args:
        edge_index (Tensor): :obj:`[2, E]` (user, item) pairs, items numbered from 0.
        num_users (int), num_items (int): the sizes :math:`U` and :math:`I` of the two sides.

    Returns:
        :obj:`[E]` float weights, one per column of :obj:`edge_index`.
    """
    row, col = edge_index
    deg_u = torch.bincount(row, minlength=num_users)
    deg_i = torch.bincount(col, minlength=num_items)
    # long + python float gives torch's default float dtype, as MMRec's 1e-7 + sparse.sum
    return (deg_u + 1e-7).pow(-0.5)[row] * (deg_i + 1e-7).pow(-0.5)[col]


def bipartite_sym_norm(edge_index: Tensor, num_users: int, num_items: int,
                       weight: Optional[Tensor] = None) -> Tensor:
    r"""The :math:`(U+I) \times (U+I)` symmetric adjacency of a bipartite graph, users first
    and items offset by :math:`U`,

    .. math::
        \hat{A} = \begin{pmatrix} 0 & \hat{R} \\ \hat{R}^\top & 0 \end{pmatrix}, \qquad
        \hat{R}_{ui} = w_{ui}

    with :math:`w` the given :obj:`weight` or :func:`bipartite_degree_weights` of
    :obj:`edge_index` itself. Duplicated pairs are summed.

    Returns:
        A :obj:`torch.sparse_csr` tensor, ready for
        :class:`~mrdib_pyg.nn.conv.SparseOperator` with :obj:`symmetric=True`.
    """
    if weight is None:
        weight = bipartite_degree_weights(edge_index, num_users, num_items)
    n = num_users + num_items
    row, col = edge_index[0], edge_index[1] + num_users
    index = torch.stack([torch.cat([row, col]), torch.cat([col, row])])
    return csr_from_parts(index, torch.cat([weight, weight]), (n, n))


class DegreeSensitiveEdgePruning(nn.Module):
    r"""The degree-sensitive edge pruning of FREEDOM (`"A Tale of Two Graphs: Freezing and
    Denoising Graph Structures for Multimodal Recommendation"
    <https://arxiv.org/abs/2211.06924>`_, after LayerGCN, `"Layer-refined Graph
    Convolutional Networks for Recommendation" <https://arxiv.org/abs/2207.11088>`_).

    Each call draws :math:`n = \lfloor E \cdot \rho \rfloor` of the :math:`E` training edges
    **without replacement**, edge :math:`(u, i)` with probability proportional to

    .. math::
        p_{ui} \propto \frac{1}{\sqrt{d_u\, d_i}}

    (degrees of the full training graph, so edges between popular nodes are pruned first),
    and returns the kept graph re-normalised with its own degrees :math:`\tilde{d}`:

    .. math::
        \tilde{A}_{u,\,U+i} = \tilde{A}_{U+i,\,u}
        = \frac{1}{\sqrt{(\tilde{d}_u + \epsilon)(\tilde{d}_i + \epsilon)}}
        \quad\text{for every kept } (u, i),\ \epsilon = 10^{-7}.

    The sampling weights are computed once; a call is one :func:`torch.multinomial`, two
    :func:`torch.bincount` and one sort, all vectorised. The draw uses torch's global random
    stream (or :obj:`generator`), as MMRec's ``pre_epoch_processing`` does, so seeding and
    restoring the RNG state reproduce it; given the edges in MMRec's order, the same seed
    keeps exactly MMRec's edges.

    Args:
        edge_index (Tensor): :obj:`[2, E]` training (user, item) pairs, items numbered
            from 0.
        num_users (int), num_items (int): :math:`U` and :math:`I`.
        keep_ratio (float): :math:`\rho \in (0, 1]`; FREEDOM passes :obj:`1 - dropout`
            (MMRec's count is :obj:`int(E * (1. - dropout))`, a floor, computed with that
            very float). At least one edge is kept. (default: :obj:`0.2`)

    Shapes:
        - **input:** none (or a :class:`torch.Generator`)
        - **output:** a :obj:`torch.sparse_csr` matrix :math:`(U+I, U+I)` with
          :math:`2n` entries, symmetric.
    """

    def __init__(self, edge_index: Tensor, num_users: int, num_items: int,
                 keep_ratio: float = 0.2):
        super().__init__()
        name = self.__class__.__name__
        if edge_index.dim() != 2 or edge_index.size(0) != 2:
            raise ValueError(f"'{name}' expects a [2, E] edge index "
                             f"(got shape {tuple(edge_index.shape)})")
        if edge_index.size(1) == 0:
            raise ValueError(f"'{name}' got no edges to prune")
        if not 0.0 < keep_ratio <= 1.0:
            raise ValueError(f"'{name}' needs 0 < keep_ratio <= 1 (got {keep_ratio})")
        edge_index = edge_index.long()
        if int(edge_index.min()) < 0 or int(edge_index[0].max()) >= num_users \
                or int(edge_index[1].max()) >= num_items:
            raise ValueError(f"'{name}' got ids beyond num_users={num_users} / "
                             f"num_items={num_items}")
        self.num_users = int(num_users)
        self.num_items = int(num_items)
        self.keep_ratio = float(keep_ratio)
        self.register_buffer('edge_index', edge_index, persistent=False)
        self.register_buffer('prob', bipartite_degree_weights(edge_index, num_users,
                                                              num_items), persistent=False)

    @property
    def num_edges(self) -> int:
        return self.edge_index.size(1)

    @property
    def num_keep(self) -> int:
        r""":math:`n = \max(1, \lfloor E \cdot \rho \rfloor)`."""
        return max(1, int(self.num_edges * self.keep_ratio))

    def sample(self, generator: Optional[torch.Generator] = None) -> Tensor:
        r"""The positions (columns of :obj:`edge_index`) of the :math:`n` kept edges."""
        if self.num_keep >= self.num_edges:  # nothing to draw: keep all, no RNG used
            return torch.arange(self.num_edges, device=self.edge_index.device)
        return torch.multinomial(self.prob, self.num_keep, replacement=False,
                                 generator=generator)

    def kept_edges(self, generator: Optional[torch.Generator] = None
                   ) -> Tuple[Tensor, Tensor]:
        r"""A fresh draw: the kept :obj:`[2, n]` (user, item) pairs and their re-normalised
        weights :obj:`[n]`."""
        kept = self.edge_index[:, self.sample(generator)]
        return kept, bipartite_degree_weights(kept, self.num_users, self.num_items)

    def forward(self, generator: Optional[torch.Generator] = None) -> Tensor:
        kept, weight = self.kept_edges(generator)
        return bipartite_sym_norm(kept, self.num_users, self.num_items, weight)

    def extra_repr(self) -> str:
        return (f'num_users={self.num_users}, num_items={self.num_items}, '
                f'num_edges={self.num_edges}, keep_ratio={self.keep_ratio}')
