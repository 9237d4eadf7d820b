r"""The symmetric-normalised user–item adjacency, built once from training edges."""
import warnings

import torch
from torch import Tensor
from torch_geometric.data import HeteroData
from torch_geometric.utils import coalesce, to_torch_csr_tensor

from mrdib_pyg.data.schema import ITEM, RATES, USER


def bipartite_adjacency(edge_index: Tensor, num_users: int, num_items: int,
                        eps: float = 1e-7) -> Tensor:
    r"""The :math:`(U+I) \times (U+I)` symmetric-normalised bipartite adjacency

    .. math::
        \hat{A} = D^{-1/2} \begin{pmatrix} 0 & R \\ R^\top & 0 \end{pmatrix} D^{-1/2},

    with users first and items offset by :math:`U`, no self-loops, duplicate interactions
    counted once, and :math:`\epsilon = 10^{-7}` added to the degree as in MMRec's LightGCN
    (isolated nodes get zero rows instead of NaN).

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
    index = coalesce(torch.stack([torch.cat([u, i]), torch.cat([i, u])]), num_nodes=n)
    deg = torch.zeros(n).scatter_add_(0, index[0], torch.ones(index.size(1)))
    dinv = (deg + eps).pow(-0.5)
    value = dinv[index[0]] * dinv[index[1]]
    with warnings.catch_warnings():  # torch's "CSR support is in beta" notice, every run
        warnings.filterwarnings('ignore', message='Sparse CSR tensor support is in beta')
        return to_torch_csr_tensor(index, value, size=(n, n), is_coalesced=True)


def adjacency_from_data(data: HeteroData) -> Tensor:
    r""":func:`bipartite_adjacency` of the training edges of :obj:`data` (never val/test)."""
    return bipartite_adjacency(data[RATES].edge_index, data[USER].num_nodes,
                               data[ITEM].num_nodes)
