r"""DualGNN's user–user aggregation over a per-epoch sample of co-interaction neighbours."""
from typing import Optional, Tuple

import torch
from torch import Tensor, nn

from mrdib_pyg.data.graphs import csr_tensor, topk_per_row
from mrdib_pyg.nn.conv.sparse_op import SparseOperator

WEIGHTINGS = ('softmax', 'mean')


class UserGraphConv(nn.Module):
    r"""The user–user aggregation of `"DualGNN: Dual Graph Neural Network for Multimedia
    Recommendation" <https://ieeexplore.ieee.org/document/9662444>`_ (Wang et al., IEEE TMM
    2021), as MMRec's ``models/dualgnn.py`` (``topk_sample`` + ``User_Graph_sample``) runs it.

    Every user :math:`u` keeps its :math:`k` heaviest co-interaction neighbours
    :math:`v_1, \dots, v_{n_u}` (:math:`n_u \le k`; counts :math:`c_{uv}`, the number of
    training items :math:`u` and :math:`v` share; ties: the smaller id first). Each epoch
    (:meth:`resample`) a user with :math:`0 < n_u < k` neighbours is padded to :math:`k`
    slots :math:`s_{u,1}, \dots, s_{u,k}` by repeatedly copying a uniformly chosen slot of
    its list *as it grows* (slot :math:`t+1` copies one of slots :math:`1..t`, MMRec's
    ``np.random.randint(0, len(list))`` — a Pólya urn, so the copies of one neighbour are
    Dirichlet–multinomial, not binomial); a user with :math:`n_u \ge k` keeps exactly its
    top :math:`k`. Then

    .. math::
        \mathbf{h}_u = \sum_{t=1}^{k} w_{u,t}\, \mathbf{x}_{s_{u,t}}, \qquad
        w_{u,t} = \frac{\exp(c_{u s_{u,t}})}{\sum_{t'=1}^{k} \exp(c_{u s_{u,t'}})}
        \ (\text{softmax}) \quad\text{or}\quad w_{u,t} = \frac{1}{k}\ (\text{mean}),

    and :math:`\mathbf{h}_u = \mathbf{0}` for a user without co-interacting users (MMRec
    gives such users all-zero weights). The sample is held as a sparse :math:`[U, U]` matrix
    :math:`W` (repeated slots summed) applied by a CSR
    :class:`~mrdib_pyg.nn.conv.SparseOperator` with its transpose precomputed once per
    epoch, so :obj:`forward` is one sparse product; the padding is vectorised over users
    (:math:`k` steps), not a Python loop over them.

    :obj:`adj` is the :obj:`[U, U]` sparse count matrix, e.g. from the graph spec
    :class:`~mrdib_pyg.data.derived.UserCoInteraction` (or
    :func:`~mrdib_pyg.data.graphs.user_cooccurrence_graph`); only its :math:`k` heaviest
    entries per row are used.

    Args:
        adj (Tensor): :obj:`[U, U]` sparse (CSR or COO) co-interaction counts; zero entries
            and self-loops are ignored.
        k (int, optional): sampled neighbours per user. (default: :obj:`40`, MMRec's)
        weighting (str, optional): :obj:`'softmax'` over the counts of the :math:`k` slots
            (MMRec's :obj:`user_aggr_mode`) or :obj:`'mean'`. (default: :obj:`'softmax'`)
        backend (str, optional): of :class:`~mrdib_pyg.nn.conv.SparseOperator`.
            (default: :obj:`'csr'`)

    Shapes:
        - **input:** user features :math:`(U, F)`
        - **output:** :math:`(U, F)`
    """

    def __init__(self, adj: Tensor, k: int = 40, weighting: str = 'softmax',
                 backend: str = 'csr'):
        super().__init__()
        name = self.__class__.__name__
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"'{name}' needs an int k >= 1 (got {k!r})")
        if weighting not in WEIGHTINGS:
            raise ValueError(f"'{name}' got unknown weighting '{weighting}' "
                             f"(expected one of {WEIGHTINGS})")
        if not isinstance(adj, Tensor) or adj.layout not in (torch.sparse_csr,
                                                              torch.sparse_coo):
            raise TypeError(f"'{name}' needs a torch.sparse [U, U] count matrix as adj "
                            f"(got {type(adj).__name__}"
                            f"{'' if not isinstance(adj, Tensor) else ' ' + str(adj.layout)})")
        if adj.dim() != 2 or adj.size(0) != adj.size(1):
            raise ValueError(f"'{name}' needs a square [U, U] matrix (got shape "
                             f"{tuple(adj.shape)})")
        self.num_users = adj.size(0)
        self.k = k
        self.weighting = weighting
        self.backend = backend
        nbr, cnt, deg = self._candidates(adj)
        self.register_buffer('neighbors', nbr, persistent=False)
        self.register_buffer('counts', cnt, persistent=False)
        self.register_buffer('num_neighbors', deg, persistent=False)
        self.op: Optional[SparseOperator] = None

    def _candidates(self, adj: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        coo = adj.to_sparse_coo().coalesce()
        (row, col), val = coo.indices(), coo.values().float()
        keep = (val != 0) & (row != col)
        (row, col), val = topk_per_row(torch.stack([row[keep], col[keep]]), val[keep],
                                       self.k, self.num_users)
        U, k = self.num_users, self.k
        deg = torch.bincount(row, minlength=U)
        ptr = torch.zeros(U + 1, dtype=torch.long, device=row.device)
        ptr[1:] = torch.cumsum(deg, 0)
        pos = torch.arange(row.numel(), device=row.device) - ptr[row]
        nbr = torch.zeros(U, k, dtype=torch.long, device=row.device)
        cnt = torch.zeros(U, k, device=row.device)
        nbr[row, pos] = col
        cnt[row, pos] = val
        return nbr, cnt, deg

    # -- per-epoch sample ----------------------------------------------------------------
    def sample_slots(self, generator: Optional[torch.Generator] = None) -> Tensor:
        r"""The :obj:`[U, k]` positions (into each user's sorted neighbour list) of one
        epoch's slots: :math:`0..n_u-1` followed by the Pólya-urn padding."""
        U, k = self.num_users, self.k
        dev = self.neighbors.device
        slot = torch.arange(k, device=dev).expand(U, k).clone()
        if U == 0 or k == 1:
            return slot
        deg = self.num_neighbors
        short = ((deg > 0) & (deg < k)).nonzero().view(-1)  # only these users are padded
        sub, d = slot[short], deg[short]
        # One uniform per slot; slot t (0-based) of a padded user copies one of slots 0..t-1.
        r = torch.rand(short.numel(), k, generator=generator, device=dev)
        rows = torch.arange(short.numel(), device=dev)
        for t in range(1, k):
            j = (r[:, t] * t).long().clamp_(max=t - 1)
            sub[:, t] = torch.where(d <= t, sub[rows, j], sub[:, t])
        slot[short] = sub
        return slot

    def sample(self, generator: Optional[torch.Generator] = None) -> Tuple[Tensor, Tensor]:
        r"""One epoch's :obj:`(index, weight)`, both :obj:`[U, k]`: the sampled neighbour of
        every slot and its weight :math:`w_{u,t}` (all zero for users without neighbours),
        MMRec's :obj:`(epoch_user_graph, user_weight_matrix)`."""
        slot = self.sample_slots(generator)
        index = self.neighbors.gather(1, slot)
        has = (self.num_neighbors > 0).unsqueeze(1)
        if self.weighting == 'softmax':
            weight = torch.softmax(self.counts.gather(1, slot), dim=1)
        else:
            weight = torch.full_like(self.counts, 1.0 / self.k)
        return index, weight * has

    def set_sample(self, index: Tensor, weight: Tensor) -> None:
        r"""Uses the given :obj:`[U, k']` neighbours and weights (e.g. MMRec's own draw)
        until the next :meth:`resample`: :math:`W_{uv} = \sum_{t: s_{u,t} = v} w_{u,t}`."""
        U = self.num_users
        if index.dim() != 2 or index.shape != weight.shape or index.size(0) != U:
            raise ValueError(f"'{self.__class__.__name__}' needs index and weight of the "
                             f"same shape [{U}, k] (got {tuple(index.shape)} and "
                             f"{tuple(weight.shape)})")
        dev = self.neighbors.device
        index, weight = index.to(dev).long(), weight.to(dev).float()
        # CSR straight from the row-major slots (no global sort): sort each row's k slots
        # by column, then sum the runs of repeated columns.
        index, perm = index.sort(dim=1)
        weight = weight.gather(1, perm)
        first = torch.ones_like(index, dtype=torch.bool)
        first[:, 1:] = index[:, 1:] != index[:, :-1]
        group = torch.cumsum(first.reshape(-1), 0) - 1
        values = torch.zeros(int(first.sum()), device=dev).index_add_(
            0, group, weight.reshape(-1))
        cols = index.reshape(-1)[first.reshape(-1)]
        keep = values != 0  # users without neighbours, and underflowed weights
        per_row = torch.zeros(U, dtype=torch.long, device=dev).index_add_(
            0, torch.arange(U, device=dev).repeat_interleave(first.sum(1)), keep.long())
        crow = torch.zeros(U + 1, dtype=torch.long, device=dev)
        crow[1:] = torch.cumsum(per_row, 0)
        w = csr_tensor(crow, cols[keep], values[keep], (U, U))
        self.op = SparseOperator(w, backend=self.backend)

    def resample(self, generator: Optional[torch.Generator] = None) -> None:
        r"""Draws the next epoch's sample (MMRec's ``pre_epoch_processing``) from
        :obj:`generator` or torch's global stream."""
        self.set_sample(*self.sample(generator))

    def weight_matrix(self) -> Tensor:
        r"""The current sample as a dense :obj:`[U, U]` matrix :math:`W` (for tests)."""
        if self.op is None:
            self.resample()
        return self.op.to_dense()

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 2 or x.size(0) != self.num_users:
            raise ValueError(f"'{self.__class__.__name__}' expects [{self.num_users}, F] "
                             f"user features (got shape {tuple(x.shape)})")
        if self.op is None:  # used before any resample(): draw one
            self.resample()
        return self.op(x)

    def extra_repr(self) -> str:
        return (f'num_users={self.num_users}, k={self.k}, weighting={self.weighting!r}, '
                f'backend={self.backend!r}')
