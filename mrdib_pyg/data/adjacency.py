r"""The symmetric-normalised user–item adjacency, built once from training edges."""
import torch
from torch import Tensor
from torch_geometric.data import HeteroData
from torch_geometric.utils import coalesce

from mrdib_pyg.data.graphs import sym_norm_adj
from mrdib_pyg.data.schema import ITEM, RATES, USER


def bipartite_adjacency(edge_index: Tensor, num_users: int, num_items: int) -> Tensor:
    r"""The :math:`(U+I) \times (U+I)` symmetric-normalised bipartite adjacency

    .. math::
        \hat{A} = D^{-1/2} \begin{pmatrix} 0 & R \\ R^\top & 0 \end{pmatrix} D^{-1/2},

    with users first and items offset by :math:`U`, no self-loops, duplicate interactions
    counted once, and isolated nodes left with zero rows (MMRec adds :math:`10^{-7}` to the
    degree for that; on an edge it changes no float32 weight).

    Args:
        edge_index (Tensor): :obj:`[2, E]` (user, item) TRAINING pairs.
        num_users (int), num_items (int): node counts.

    Returns:
        A :obj:`torch.sparse_csr` float tensor.
    """
    if edge_index.numel() and (int(edge_index[0].max()) >= num_users
                               or int(edge_index[1].max()) >= num_items):
        raise ValueError(f"bipartite_adjacency: ids out of range for {num_users} users "
                         f"and {num_items} items")
    n = num_users + num_items
    u, i = edge_index[0].long(), edge_index[1].long() + num_users
    # Deduplicate first: a repeated interaction is one edge, not a weight of 2. MMRec's
    # +1e-7 on the degree changes no edge weight in float32 (every edge has degree >= 1).
    index = coalesce(torch.stack([torch.cat([u, i]), torch.cat([i, u])]), num_nodes=n)
    return sym_norm_adj(index, num_nodes=n)


def adjacency_from_data(data: HeteroData) -> Tensor:
    r""":func:`bipartite_adjacency` of the training edges of :obj:`data` (never val/test)."""
    return bipartite_adjacency(data[RATES].edge_index, data[USER].num_nodes,
                               data[ITEM].num_nodes)
