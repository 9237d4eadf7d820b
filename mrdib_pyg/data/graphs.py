r"""Derived graphs: item-item kNN graphs over modality features, their
normalisations, the user-user co-interaction graph of DualGNN, and an on-disk
cache for all of them.

Everything here is a plain function of tensors; the :class:`BaseTransform`
wrappers at the end only read inputs from / write outputs to a
:class:`~torch_geometric.data.HeteroData` following :mod:`mrdib_pyg.data.schema`.
Derived graphs are built once (and cached with :func:`cached_graph`), never
per batch.

.. note::
    :func:`torch_geometric.nn.knn_graph` needs :obj:`pyg-lib>=0.6`, which is not
    a dependency here; :func:`item_knn_graph` is a chunked pure-PyTorch cosine
    top-:math:`k` that never materialises the :math:`I \times I` similarity
    matrix (Clothing has 23,033 items).
"""
import contextlib
import glob
import hashlib
import json
import os
import re
import warnings
from typing import Any, Callable, Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch_geometric.data import HeteroData
from torch_geometric.transforms import BaseTransform

from mrdib_pyg.data.cache import file_sha1, temp_beside
from mrdib_pyg.data.schema import ITEM, RATES, USER, item_features

__all__ = [
    'csr_tensor',
    'quiet_sparse_beta',
    'csr_from_parts',
    'to_csr',
    'item_knn_graph',
    'sym_norm_adj',
    'row_norm_adj',
    'topk_per_row',
    'user_cooccurrence_graph',
    'tensor_fingerprint',
    'param_slug',
    'cached_graph',
    'ItemKNNGraph',
    'UserCooccurrenceGraph',
]


# ---------------------------------------------------------------------------
# Sparse CSR constructors (every CSR matrix of the package is made here)
# ---------------------------------------------------------------------------

_CSR_BETA_SEEN = False  # torch has issued its one-time warning (silenced) in this process


@contextlib.contextmanager
def quiet_sparse_beta():
    r"""Silences torch's one-time "Sparse CSR tensor support is in beta" warning, which
    says nothing a user can act on (every CSR construction and CSR product here runs in
    this context, so the first one in a process does not print it).

    torch issues that warning once per process, so after the first CSR tensor made here
    this is a no-op: entering :class:`warnings.catch_warnings` on every training step would
    reset Python's record of shown warnings, and a user's own once-per-location warnings
    would then print on every step."""
    if _CSR_BETA_SEEN:
        yield
        return
    with warnings.catch_warnings():
        warnings.filterwarnings('ignore', message='.*Sparse CSR tensor support')
        yield


def _made_csr(csr: Tensor) -> Tensor:
    r"""Records that a CSR tensor exists (so torch's one-time warning has been issued)."""
    global _CSR_BETA_SEEN
    _CSR_BETA_SEEN = True
    return csr


def csr_tensor(crow: Tensor, col: Tensor, values: Tensor, shape) -> Tensor:
    r""":func:`torch.sparse_csr_tensor` without the invariant check (callers build valid
    patterns) and without torch's beta warning."""
    with quiet_sparse_beta():
        return _made_csr(torch.sparse_csr_tensor(crow, col, values, tuple(shape),
                                                 check_invariants=False))


def csr_from_parts(indices: Tensor, values: Tensor, shape) -> Tensor:
    r"""A CSR matrix from COO :obj:`indices`/:obj:`values`, duplicated pairs summed (how
    graphs are built and cached)."""
    with quiet_sparse_beta():
        coo = torch.sparse_coo_tensor(indices, values, tuple(shape), check_invariants=False)
        return _made_csr(coo.coalesce().to_sparse_csr())


def to_csr(adj: Tensor) -> Tensor:
    r""":obj:`adj` (any sparse layout) as CSR, without torch's beta warning."""
    if adj.layout == torch.sparse_csr:
        return adj
    with quiet_sparse_beta():
        return _made_csr(adj.to_sparse_csr())


# ---------------------------------------------------------------------------
# Item-item kNN graphs
# ---------------------------------------------------------------------------

def item_knn_graph(
    x: Tensor,
    k: int = 10,
    chunk_size: int = 1024,
    loop: bool = False,
) -> Tuple[Tensor, Tensor]:
    r"""The cosine :math:`k`-nearest-neighbour graph over item features, as
    used for the modality item-item graphs of `LATTICE
    <https://arxiv.org/abs/2104.09036>`_ and `FREEDOM
    <https://arxiv.org/abs/2211.06924>`_.

    .. math::
        s_{ij} = \frac{\mathbf{x}_i^{\top}\mathbf{x}_j}
        {\|\mathbf{x}_i\|\,\|\mathbf{x}_j\|}, \qquad
        \mathcal{N}(i) = \operatorname{top-}k_{j}\, s_{ij}

    The similarity is computed for :obj:`chunk_size` rows at a time, so peak
    memory is :math:`O(\text{chunk\_size} \cdot I)` instead of :math:`O(I^2)`;
    the result is identical to the dense computation. All-zero feature rows
    have similarity :math:`0` to every item.

    Args:
        x (Tensor): item features :math:`[I, d]`.
        k (int): neighbours per item. (default: :obj:`10`)
        chunk_size (int): rows of the similarity matrix computed at once.
            (default: :obj:`1024`)
        loop (bool): if :obj:`False`, an item is never its own neighbour.
            If :obj:`True`, the item itself competes like any other item, as in
            MMRec, where it is (nearly always) one of the :math:`k`.
            (default: :obj:`False`)

    Returns:
        :obj:`(edge_index, weight)`: :obj:`edge_index` :math:`[2, I \cdot k]`
        with row = item and col = neighbour (neighbours of an item in
        descending similarity), and the cosine values :math:`[I \cdot k]`.
        MMRec's models use a binary adjacency: pass
        :obj:`torch.ones_like(weight)` to the normalisations for that.
    """
    if x.dim() != 2:
        raise ValueError(f"'item_knn_graph' expects a 2-D feature matrix "
                         f"(got shape {tuple(x.shape)})")
    num_items = x.size(0)
    max_k = num_items if loop else num_items - 1
    if k < 1 or k > max_k:
        raise ValueError(f"'item_knn_graph' needs 1 <= k <= {max_k} for "
                         f"{num_items} items (got k={k})")
    if chunk_size < 1:
        raise ValueError(f"'item_knn_graph' needs chunk_size >= 1 "
                         f"(got {chunk_size})")
    if not torch.is_floating_point(x):
        x = x.float()
    xn = F.normalize(x, p=2., dim=-1)
    xn_t = xn.t().contiguous()
    cols, vals = [], []
    for start in range(0, num_items, chunk_size):
        end = min(start + chunk_size, num_items)
        sim = xn[start:end] @ xn_t
        if not loop:
            rows = torch.arange(end - start, device=x.device)
            sim[rows, rows + start] = float('-inf')
        val, col = sim.topk(k, dim=-1)
        vals.append(val)
        cols.append(col)
    col = torch.cat(cols).view(-1)
    row = torch.arange(num_items, device=x.device).repeat_interleave(k)
    return torch.stack([row, col]), torch.cat(vals).view(-1)


def _coo(edge_index: Tensor, values: Tensor, size: Tuple[int, int]) -> Tensor:
    # Explicit opt-out of invariant checks: indices are validated by callers
    # (and torch warns when the choice is left implicit).
    return torch.sparse_coo_tensor(edge_index, values, size,
                                   check_invariants=False).coalesce()


def _square_size(edge_index: Tensor, num_nodes: Optional[int]) -> int:
    if num_nodes is None:
        return int(edge_index.max()) + 1 if edge_index.numel() > 0 else 0
    return int(num_nodes)


def _degree_scaled_csr(edge_index: Tensor, edge_weight: Optional[Tensor],
                       num_nodes: Optional[int], power: float) -> Tensor:
    n = _square_size(edge_index, num_nodes)
    if edge_weight is None:
        edge_weight = torch.ones(edge_index.size(1), device=edge_index.device)
    edge_weight = edge_weight.float()
    row, col = edge_index
    deg = torch.zeros(n, device=edge_weight.device).index_add_(
        0, row, edge_weight)
    # Isolated rows keep an all-zero row instead of producing inf/NaN.
    inv = deg.pow(-power)
    inv[deg == 0] = 0.
    if power == 0.5:  # symmetric: D^-1/2 A D^-1/2
        w = inv[row] * edge_weight * inv[col]
    else:  # random walk: D^-1 A
        w = inv[row] * edge_weight
    # Duplicated pairs are summed when coalescing.
    coo = _coo(edge_index, w, (n, n))
    crow = torch.zeros(n + 1, dtype=torch.long, device=w.device)
    crow[1:] = torch.cumsum(torch.bincount(coo.indices()[0], minlength=n), 0)
    return csr_tensor(crow, coo.indices()[1], coo.values(), (n, n))


def sym_norm_adj(
    edge_index: Tensor,
    edge_weight: Optional[Tensor] = None,
    num_nodes: Optional[int] = None,
) -> Tensor:
    r"""The symmetric normalisation used by LATTICE/FREEDOM/MGCN's item-item
    graphs,

    .. math::
        \hat{\mathbf{A}} = \mathbf{D}^{-1/2}\mathbf{A}\mathbf{D}^{-1/2},
        \qquad D_{ii} = \sum_j A_{ij},

    where :math:`A_{ij}` is the weight of edge :math:`(i, j)`. As in MMRec the
    degree is the **row** sum, also for a non-symmetric kNN graph. Rows with
    zero degree stay zero.

    Args:
        edge_index (Tensor): :math:`[2, E]` (row, col) pairs.
        edge_weight (Tensor, optional): :math:`[E]` weights (default: ones).
        num_nodes (int, optional): :math:`N` (default: max index + 1).

    Returns:
        A :obj:`torch.sparse_csr` tensor :math:`[N, N]`.
    """
    return _degree_scaled_csr(edge_index, edge_weight, num_nodes, 0.5)


def row_norm_adj(
    edge_index: Tensor,
    edge_weight: Optional[Tensor] = None,
    num_nodes: Optional[int] = None,
) -> Tensor:
    r"""The random-walk (row) normalisation
    :math:`\hat{\mathbf{A}} = \mathbf{D}^{-1}\mathbf{A}` (MMRec's
    :obj:`'rw'` option; every non-empty row sums to one).

    Args:
        edge_index (Tensor): :math:`[2, E]` (row, col) pairs.
        edge_weight (Tensor, optional): :math:`[E]` weights (default: ones).
        num_nodes (int, optional): :math:`N` (default: max index + 1).

    Returns:
        A :obj:`torch.sparse_csr` tensor :math:`[N, N]`.
    """
    return _degree_scaled_csr(edge_index, edge_weight, num_nodes, 1.0)


# ---------------------------------------------------------------------------
# User-user co-interaction graph (DualGNN)
# ---------------------------------------------------------------------------
def topk_per_row(
    edge_index: Tensor,
    weight: Tensor,
    k: int,
    num_nodes: Optional[int] = None,
) -> Tuple[Tensor, Tensor]:
    r"""Keeps the :obj:`k` heaviest edges of every row (ties: smaller column
    index first), returned sorted by row, then by descending weight.

    DualGNN (`Wang et al., 2021 <https://ieeexplore.ieee.org/document/9662444>`_)
    keeps 200 co-interaction neighbours per user in MMRec's
    :obj:`user_graph_dict.npy` and uses the first 40 of them in training:
    :obj:`topk_per_row(*user_cooccurrence_graph(...), k=40)`.
    """
    if k < 1:
        raise ValueError(f"'topk_per_row' needs k >= 1 (got {k})")
    if edge_index.numel() == 0:
        return edge_index, weight
    n = _square_size(edge_index, num_nodes)
    row, col = edge_index
    # Stable sorts from least to most significant key: col, -weight, row.
    perm = torch.argsort(col, stable=True)
    perm = perm[torch.argsort(-weight[perm], stable=True)]
    perm = perm[torch.argsort(row[perm], stable=True)]
    row_sorted = row[perm]
    ptr = torch.zeros(n + 1, dtype=torch.long, device=row.device)
    ptr[1:] = torch.cumsum(torch.bincount(row_sorted, minlength=n), 0)
    rank = torch.arange(perm.numel(), device=row.device) - ptr[row_sorted]
    perm = perm[rank < k]
    return edge_index[:, perm], weight[perm]


def user_cooccurrence_graph(
    train_edge_index: Tensor,
    num_users: int,
    num_items: int,
    topk: Optional[int] = 200,
    chunk_size: int = 4096,
) -> Tuple[Tensor, Tensor]:
    r"""The user-user co-interaction graph of `DualGNN
    <https://ieeexplore.ieee.org/document/9662444>`_: two users are linked by
    the number of training items they share,

    .. math::
        \mathbf{C} = \mathbf{R}\mathbf{R}^{\top}, \qquad
        C_{uv} = |\mathcal{I}_u \cap \mathcal{I}_v|, \quad u \neq v,

    with :math:`\mathbf{R} \in \{0, 1\}^{U \times I}` the (deduplicated)
    training interactions. :math:`\mathbf{C}` is computed as a sparse product
    for :obj:`chunk_size` users at a time and pruned to :obj:`topk` per user
    before the next chunk, so neither a dense :math:`U \times U` matrix nor the
    full sparse :math:`\mathbf{C}` is ever held.

    Args:
        train_edge_index (Tensor): :math:`[2, E]` TRAINING (user, item) pairs
            (never pass held-out edges: that would leak them).
        num_users (int): :math:`U`.
        num_items (int): :math:`I`.
        topk (int, optional): neighbours kept per user, heaviest first (ties:
            smaller user id first); :obj:`None` keeps all. MMRec's DualGNN
            stores 200. (default: :obj:`200`)
        chunk_size (int): users per sparse product. (default: :obj:`4096`)

    Returns:
        :obj:`(edge_index, count)`: :obj:`edge_index` :math:`[2, E']` (user,
        neighbour), sorted by user then descending count; :obj:`count`
        :math:`[E']` float co-interaction counts. No self loops.
    """
    if topk is not None and topk < 1:
        raise ValueError(f"'user_cooccurrence_graph' needs topk >= 1 or None "
                         f"(got {topk})")
    if chunk_size < 1:
        raise ValueError(f"'user_cooccurrence_graph' needs chunk_size >= 1 "
                         f"(got {chunk_size})")
    ei = train_edge_index.long()
    if ei.numel() > 0 and (int(ei[0].max()) >= num_users
                           or int(ei[1].max()) >= num_items):
        raise ValueError(f"'user_cooccurrence_graph' got ids beyond "
                         f"num_users={num_users} / num_items={num_items}")
    # Binary R: duplicated pairs would otherwise count twice.
    r = _coo(ei, torch.ones(ei.size(1), device=ei.device),
             (num_users, num_items))
    r_t = _coo(r.indices().flip(0), torch.ones_like(r.values()),
               (num_items, num_users))
    rows, cols, vals = [], [], []
    for start in range(0, num_users, chunk_size):
        end = min(start + chunk_size, num_users)
        sel = (ei[0] >= start) & (ei[0] < end)
        if not bool(sel.any()):
            continue
        sub = ei[:, sel].clone()
        sub[0] -= start
        r_c = _coo(sub, torch.ones(sub.size(1), device=ei.device),
                   (end - start, num_items))
        r_c = _coo(r_c.indices(), torch.ones_like(r_c.values()), r_c.size())
        with quiet_sparse_beta():
            c = torch.sparse.mm(r_c, r_t).coalesce()
        (u, v), w = c.indices(), c.values()
        u = u + start
        keep = u != v
        u, v, w = u[keep], v[keep], w[keep]
        if topk is not None:
            (u, v), w = topk_per_row(torch.stack([u, v]), w, topk, num_users)
        rows.append(u)
        cols.append(v)
        vals.append(w)
    if not rows:
        empty = torch.empty(2, 0, dtype=torch.long, device=ei.device)
        return empty, torch.empty(0, device=ei.device)
    edge_index = torch.stack([torch.cat(rows), torch.cat(cols)])
    count = torch.cat(vals)
    if topk is None:  # make the order match the pruned case
        edge_index, count = topk_per_row(edge_index, count, num_users,
                                         num_users)
    return edge_index, count


# ---------------------------------------------------------------------------
# On-disk cache
# ---------------------------------------------------------------------------
def tensor_fingerprint(*tensors: Tensor) -> str:
    r"""A SHA-256 hex digest of the dtypes, shapes and values of
    :obj:`tensors`, to key caches on the exact inputs."""
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(f'{t.dtype}{tuple(t.shape)};'.encode())
        # Byte view works for every dtype (bfloat16 has no numpy twin).
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes()
                 if t.numel() > 0 else b'')
    return h.hexdigest()


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (tuple, list)):
        return '-'.join(_fmt(v) for v in value)
    if value is None:
        return 'None'
    return str(value)


def param_slug(params: Dict[str, Any]) -> str:
    r"""A file-name-safe string that encodes every entry of :obj:`params`
    (sorted by key) and ends with a short hash of their exact JSON form, so
    two parameter sets never share a name even if sanitising merged them."""
    slug = '_'.join(re.sub(r'[^A-Za-z0-9_.\-]', '', f'{k}{_fmt(params[k])}')
                    for k in sorted(params))
    exact = json.dumps({k: params[k] for k in sorted(params)}, default=repr)
    digest = hashlib.sha256(exact.encode()).hexdigest()[:8]
    if len(slug) > 180:  # OS limit is 255; the hash still covers the rest
        slug = slug[:180]
    return f'{slug}_{digest}' if slug else digest


def cached_graph(
    cache_dir: str,
    name: str,
    params: Dict[str, Any],
    data_fingerprint: str,
    build_fn: Callable[[], Any],
) -> Any:
    r"""Loads :obj:`name` from :obj:`cache_dir` (typically a dataset's
    :obj:`processed/` folder) or builds it with :obj:`build_fn()` and stores
    it.

    The file name is
    :obj:`{name}__{param_slug(params)}__{fingerprint}__{checksum}.pt`:
    it encodes every parameter and a fingerprint of the inputs (see
    :func:`tensor_fingerprint`), so a cached graph can never be stale: any
    change gives a new file. It ends with the SHA-1 (16 hex digits) of the
    file's own bytes, so a truncated, replaced or bit-flipped file (which
    :func:`torch.load` often reads without complaint) is detected; it is then
    deleted and rebuilt with a warning. Each writer writes its own temporary
    file in the same folder followed by :func:`os.replace`, so a crash never
    leaves a truncated cache and concurrent writers (e.g. DDP ranks) are safe.

    Args:
        cache_dir (str): folder of the cache files (created if missing).
        name (str): what is cached, e.g. :obj:`'knn_image'`.
        params (dict): every parameter the result depends on.
        data_fingerprint (str): fingerprint of the inputs.
        build_fn (callable): builds the result (tensors, or tuples / dicts of
            tensors) when no cache file exists.
    """
    if not re.fullmatch(r'[A-Za-z0-9_.\-]+', name):
        raise ValueError(f"'cached_graph' needs a file-name-safe name "
                         f"(got '{name}')")
    fp = re.sub(r'[^A-Za-z0-9]', '', data_fingerprint)[:16]
    if not fp:
        raise ValueError(f"'cached_graph' needs a non-empty fingerprint "
                         f"(got '{data_fingerprint}')")
    os.makedirs(cache_dir, exist_ok=True)
    stem = os.path.join(cache_dir, f'{name}__{param_slug(params)}__{fp}')
    pattern = glob.escape(stem) + '__' + '[0-9a-f]' * 16 + '.pt'
    for path in sorted(glob.glob(pattern)):
        try:
            if file_sha1(path)[:16] == path[len(stem) + 2:-3]:
                return torch.load(path, weights_only=True)
            problem = ('is corrupted (its content does not match the checksum '
                       'in its name)')
        except Exception as e:  # unreadable, or loads no more
            problem = f'cannot be loaded ({type(e).__name__}: {e})'
        warnings.warn(f"cached graph '{path}' {problem}; rebuilding it",
                      stacklevel=2)
        try:
            os.remove(path)
        except OSError:  # another process got there first
            pass
    out = build_fn()
    tmp = temp_beside(stem)
    try:
        torch.save(out, tmp)
        os.replace(tmp, f'{stem}__{file_sha1(tmp)[:16]}.pt')
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return out


# ---------------------------------------------------------------------------
# Transforms
# ---------------------------------------------------------------------------
class ItemKNNGraph(BaseTransform):
    r"""Adds the cosine kNN item graph of :obj:`modality`'s features (see
    :func:`item_knn_graph`) as edge type
    :obj:`('item', f'knn_{modality}', 'item')` with :obj:`edge_index` and
    :obj:`edge_weight` (the cosine values). Items without the modality use
    :obj:`fill` (see :func:`~mrdib_pyg.data.schema.item_features`).

    Args:
        modality (str): modality node type, e.g. :obj:`'image'`.
        k (int): neighbours per item. (default: :obj:`10`)
        chunk_size (int): rows per similarity chunk. (default: :obj:`1024`)
        loop (bool): allow an item to be its own neighbour.
            (default: :obj:`False`)
        fill (str): :obj:`'keep'`, :obj:`'zero'` or :obj:`'mean'`.
            (default: :obj:`'keep'`)
        cache_dir (str, optional): cache the graph there with
            :func:`cached_graph`. (default: :obj:`None`)
    """
    def __init__(self, modality: str, k: int = 10, chunk_size: int = 1024,
                 loop: bool = False, fill: str = 'keep',
                 cache_dir: Optional[str] = None) -> None:
        self.modality = modality
        self.k = k
        self.chunk_size = chunk_size
        self.loop = loop
        self.fill = fill
        self.cache_dir = cache_dir

    def forward(self, data: HeteroData) -> HeteroData:
        x = item_features(data, self.modality, fill=self.fill)

        def build() -> Tuple[Tensor, Tensor]:
            return item_knn_graph(x, self.k, self.chunk_size, self.loop)

        if self.cache_dir is None:
            edge_index, weight = build()
        else:
            params = dict(k=self.k, loop=self.loop, fill=self.fill)
            edge_index, weight = cached_graph(
                self.cache_dir, f'knn_{self.modality}', params,
                tensor_fingerprint(x), build)
        store = data[ITEM, f'knn_{self.modality}', ITEM]
        store.edge_index = edge_index
        store.edge_weight = weight
        return data

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}({self.modality}, k={self.k}, '
                f'loop={self.loop})')


class UserCooccurrenceGraph(BaseTransform):
    r"""Adds the DualGNN user-user graph (see
    :func:`user_cooccurrence_graph`), built from the TRAINING interactions
    only, as edge type :obj:`('user', 'cooccurs', 'user')` with
    :obj:`edge_index` and :obj:`edge_weight` (the counts).

    Args:
        topk (int, optional): neighbours per user. (default: :obj:`200`)
        cache_dir (str, optional): cache the graph there with
            :func:`cached_graph`. (default: :obj:`None`)
    """
    def __init__(self, topk: Optional[int] = 200,
                 cache_dir: Optional[str] = None) -> None:
        self.topk = topk
        self.cache_dir = cache_dir

    def forward(self, data: HeteroData) -> HeteroData:
        train = data[RATES].edge_index
        num_users, num_items = data[USER].num_nodes, data[ITEM].num_nodes

        def build() -> Tuple[Tensor, Tensor]:
            return user_cooccurrence_graph(train, num_users, num_items,
                                           self.topk)

        if self.cache_dir is None:
            edge_index, count = build()
        else:
            params = dict(topk=self.topk, U=num_users, I=num_items)
            edge_index, count = cached_graph(self.cache_dir, 'user_cooc',
                                             params,
                                             tensor_fingerprint(train), build)
        store = data[USER, 'cooccurs', USER]
        store.edge_index = edge_index
        store.edge_weight = count
        return data

    def __repr__(self) -> str:
        return f'{self.__class__.__name__}(topk={self.topk})'
