r"""SOIL's second-order graphs: the "attractiveness" user–item graph :math:`R^a` and the
per-modality interest-aware item–item graph, built from the training edges only.

From `"Contrastive Second-Order Interest Learning for Multimodal Recommendation"
<https://doi.org/10.1145/3664647.3681207>`_ (Su et al., ACM MM 2024; code TL-UESTC/SOIL,
``models/soil.py``). Both are declared by a backbone as
:class:`~mrdib_pyg.data.derived.GraphSpec` objects (:class:`AttractivenessGraph`,
:class:`InterestItemGraph`) and built once by :func:`~mrdib_pyg.data.derived.build_graphs`,
cached under a name that holds every parameter and a fingerprint of the edges and features.

SOIL's code builds them from dense :math:`I \times I` similarity matrices (four of them at a
time, 2.1 GB each on Clothing) with a Python loop over users. Here nothing of size
:math:`I \times I` or :math:`U \times I` is ever held: similarity rows are computed from the
normalised features a chunk of items at a time, the per-user selections are vectorised
(segmented sorts, running top-:math:`k` merges), and the result is a sparse edge list.
The selected edges and weights are SOIL's (up to float rounding and the order of exact
ties); ``benchmarks/equivalence/soil.py`` checks them against SOIL's own construction.

The plain functions (:func:`attractiveness_edges`, :func:`interest_pairs`,
:func:`floored_sym_norm`) work on tensors and can be used without a
:class:`~torch_geometric.data.HeteroData`.
"""
import warnings
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch_geometric.data import HeteroData
from torch_geometric.utils import coalesce

from mrdib_pyg.data.derived import GraphSpec
from mrdib_pyg.data.graphs import csr_from_parts, csr_tensor, item_knn_graph, sym_norm_adj
from mrdib_pyg.data.schema import ITEM, RATES, USER, item_features, modality_names

__all__ = ['attractiveness_edges', 'interest_pairs', 'pair_cosine', 'floored_sym_norm',
           'quirk_block_norm',
           'AttractivenessGraph', 'InterestItemGraph']

#: SOIL's floor on every normalised weight (``get_sparse_laplacian`` in its ``utils``).
SOIL_FLOOR = 1e-7


# ---------------------------------------------------------------------------
# Tensor functions
# ---------------------------------------------------------------------------
def _training_pairs(edge_index: Tensor, num_users: int, num_items: int,
                    name: str) -> Tensor:
    ei = edge_index.long()
    if ei.dim() != 2 or ei.size(0) != 2:
        raise ValueError(f"'{name}' expects a [2, E] (user, item) index "
                         f"(got shape {tuple(ei.shape)})")
    if ei.numel() > 0 and (int(ei.min()) < 0 or int(ei[0].max()) >= num_users
                           or int(ei[1].max()) >= num_items):
        raise ValueError(f"'{name}' got ids beyond num_users={num_users} / "
                         f"num_items={num_items}")
    # Unique pairs sorted by user: a user's history is a set, as in SOIL.
    return coalesce(ei, num_nodes=max(num_users, num_items))


def _normalised(features: Sequence[Tensor], num_items: int, name: str) -> List[Tensor]:
    if not features:
        raise ValueError(f"'{name}' needs at least one modality's features")
    out = []
    for x in features:
        if x.dim() != 2 or x.size(0) != num_items:
            raise ValueError(f"'{name}' needs [{num_items}, d] features "
                             f"(got shape {tuple(x.shape)})")
        # An all-zero row gets similarity 0 to every item (SOIL's division gives NaN).
        out.append(F.normalize(x.float(), p=2., dim=-1))
    return out


def _segment_rank(key: Tensor, value: Tensor, tie: Tensor,
                  num_keys: int) -> Tuple[Tensor, Tensor]:
    r"""A permutation sorting by :obj:`key`, then by descending :obj:`value`, then by
    :obj:`tie`, and the rank of every sorted entry inside its key's segment (0 = largest
    value)."""
    perm = torch.argsort(tie, stable=True)
    perm = perm[torch.argsort(value[perm], descending=True, stable=True)]
    perm = perm[torch.argsort(key[perm], stable=True)]
    sorted_key = key[perm]
    ptr = torch.zeros(num_keys + 1, dtype=torch.long, device=key.device)
    ptr[1:] = torch.cumsum(torch.bincount(sorted_key, minlength=num_keys), 0)
    rank = torch.arange(perm.numel(), device=key.device) - ptr[sorted_key]
    return perm, rank


def attractiveness_edges(edge_index: Tensor, num_users: int, num_items: int,
                         features: Sequence[Tensor], k: int = 2,
                         chunk_size: int = 1024) -> Tuple[Tensor, Tensor]:
    r"""SOIL's second-order ("attractiveness") user–item edges (its Eq. 2, as its code
    computes them).

    With :math:`S^m` the cosine similarity of modality :math:`m`'s item features and the
    element-wise product :math:`S^a = \bigodot_m S^m` (SOIL: :math:`S^v \odot S^t`), every
    user :math:`u` with history :math:`\mathcal{I}(u)` keeps the :math:`k_u = k +
    |\mathcal{I}(u)|` largest entries of the block :math:`S^a[\mathcal{I}(u), :]`:

    .. math::
        \{(i_r, j_r)\}_{r=1}^{k_u} = \operatorname{top-}k_u \{ S^a_{ij} :
        i \in \mathcal{I}(u),\ j \in \mathcal{I} \}, \qquad
        R^a_{uj} = \sum_{r:\, j_r = j} S^a_{i_r j}.

    An item's self-similarity is the largest possible (1), so the history items themselves
    are normally among the picks and at most :math:`k` new items join per user. An item
    picked from two history rows gets the sum of both values (SOIL accumulates sparse
    tensors and coalesces them).

    Computed without any :math:`I \times I` matrix: the rows of :math:`S^a` are computed
    :obj:`chunk_size` items at a time and cut to the widest top-:math:`k_u` any of the
    item's users needs; the per-user selection is a segmented sort of those candidates.
    :math:`S^a` is symmetric, so two history items :math:`i, j` of a user offer the same
    value through :math:`(i, j)` and :math:`(j, i)`; when only one fits, the row of the
    larger item id wins (with :math:`i > j`, :math:`j` gets the value). SOIL leaves this to
    float rounding and ``topk``'s tie order; on a CPU its ``topk`` credits the row that
    comes later in the user's Python-set order of items, which is mostly increasing ids
    (the same choice for all but 1 of 300 users in ``benchmarks/equivalence/soil.py``).
    Where :math:`k_u > I` (SOIL's ``topk`` raises) each row offers all :math:`I` items.

    Args:
        edge_index (Tensor): :math:`[2, E]` TRAINING (user, item) pairs (duplicates count
            once).
        num_users (int): :math:`U`.
        num_items (int): :math:`I`.
        features (list of Tensor): the :math:`[I, d_m]` features of the modalities whose
            similarities are multiplied.
        k (int): new items per user, SOIL's :obj:`knn_a`. (default: :obj:`2`)
        chunk_size (int): similarity rows computed at once. (default: :obj:`1024`)

    Returns:
        :obj:`(edge_index, weight)`: unique :math:`[2, E']` (user, item) pairs, sorted, and
        their summed product similarities :math:`[E']`.
    """
    name = 'attractiveness_edges'
    if k < 0:
        raise ValueError(f"'{name}' needs k >= 0 (got {k})")
    if chunk_size < 1:
        raise ValueError(f"'{name}' needs chunk_size >= 1 (got {chunk_size})")
    ei = _training_pairs(edge_index, num_users, num_items, name)
    xs = _normalised(features, num_items, name)
    device = xs[0].device
    ei = ei.to(device)
    users, items = ei[0], ei[1]
    picks = torch.bincount(users, minlength=num_users) + k  # k_u
    width = picks[users].clamp(max=num_items)  # row candidates each edge needs
    need = torch.zeros(num_items, dtype=torch.long, device=device).scatter_reduce(
        0, items, width, reduce='amax', include_self=True)
    # Widest rows first, so every chunk's top-k width fits its rows closely.
    order = torch.argsort(need, descending=True, stable=True)
    order = order[need[order] > 0]
    local = torch.full((num_items, ), -1, dtype=torch.long, device=device)
    cand_u, cand_i, cand_j, cand_v = [], [], [], []
    for start in range(0, order.numel(), chunk_size):
        rows = order[start:start + chunk_size]
        width_max = int(need[rows[0]])
        sim = xs[0][rows] @ xs[0].t()
        for x in xs[1:]:
            sim.mul_(x[rows] @ x.t())
        val, col = sim.topk(width_max, dim=1)  # sorted, largest first
        local[rows] = torch.arange(rows.numel(), device=device)
        sel = local[items] >= 0
        e_user, e_row = users[sel], local[items[sel]]
        keep = (torch.arange(width_max, device=device)[None, :]
                < width[sel][:, None])
        cand_u.append(e_user[:, None].expand(-1, width_max)[keep])
        cand_i.append(items[sel][:, None].expand(-1, width_max)[keep])
        cand_j.append(col[e_row][keep])
        cand_v.append(val[e_row][keep])
        local[rows] = -1
    if not cand_u:
        return (torch.empty(2, 0, dtype=torch.long, device=device),
                torch.empty(0, device=device))
    cu, cj, cv = torch.cat(cand_u), torch.cat(cand_j), torch.cat(cand_v)
    # Exact ties (S^a_ij = S^a_ji for two history items) go to the larger history row.
    perm, rank = _segment_rank(cu, cv, -torch.cat(cand_i), num_users)
    perm = perm[rank < picks[cu[perm]]]
    out_index, out_weight = coalesce(torch.stack([cu[perm], cj[perm]]), cv[perm],
                                     num_nodes=max(num_users, num_items), reduce='sum')
    return out_index, out_weight


def interest_pairs(edge_index: Tensor, num_users: int, num_items: int,
                   features: Sequence[Tensor], k: int = 10,
                   chunk_size: int = 1024) -> Tuple[Tensor, Tensor]:
    r"""The (history item, interest item) pairs of SOIL's interest-aware item graph (its
    Eqs. 6-8, as its code computes them), with their multiplicity over users.

    For every user :math:`u` and modality :math:`m`, the interest items are the top-:math:`k`
    of the column sums of the user's rows of :math:`S^m`; the union over the modalities is
    :math:`\mathcal{I}^a(u)`:

    .. math::
        \mathcal{I}^m(u) = \operatorname{top-}k_j \sum_{i \in \mathcal{I}(u)} S^m_{ij},
        \qquad \mathcal{I}^a(u) = \bigcup_m \mathcal{I}^m(u), \qquad
        c_{ij} = \big|\{u : i \in \mathcal{I}(u),\ j \in \mathcal{I}^a(u)\}\big|.

    SOIL adds :math:`S^m_{ij}` once per such user, so its graph of modality :math:`m` has
    weight :math:`c_{ij} S^m_{ij}` (see :func:`pair_cosine`): it is directed (rows are
    history items) and the weights accumulate over users.

    The column sums are :math:`R\,S^m` with :math:`R` the binary training matrix, computed
    :obj:`chunk_size` item columns at a time (:math:`S^m[:, C]` from the features, then a
    sparse product) with a running per-user top-:math:`k` merge: no :math:`I \times I` or
    :math:`U \times I` matrix is held.

    Args:
        edge_index (Tensor): :math:`[2, E]` TRAINING (user, item) pairs.
        num_users (int): :math:`U`.
        num_items (int): :math:`I`.
        features (list of Tensor): the :math:`[I, d_m]` features of every modality that
            selects interest items (SOIL: image and text, for both graphs).
        k (int): interest items per user and modality, SOIL's :obj:`knn_i`; at most
            :math:`I`. (default: :obj:`10`)
        chunk_size (int): item columns per block. (default: :obj:`1024`)

    Returns:
        :obj:`(edge_index, count)`: unique :math:`[2, P]` (history item, interest item)
        pairs, sorted, and :math:`c_{ij}` as floats :math:`[P]`.
    """
    name = 'interest_pairs'
    if not 1 <= k <= num_items:
        raise ValueError(f"'{name}' needs 1 <= k <= {num_items} (got {k})")
    if chunk_size < 1:
        raise ValueError(f"'{name}' needs chunk_size >= 1 (got {chunk_size})")
    ei = _training_pairs(edge_index, num_users, num_items, name)
    xs = _normalised(features, num_items, name)
    device = xs[0].device
    ei = ei.to(device)
    r = csr_from_parts(ei, torch.ones(ei.size(1), device=device), (num_users, num_items))
    sets = []
    for x in xs:
        best_v = torch.empty(num_users, 0, device=device)
        best_i = torch.empty(num_users, 0, dtype=torch.long, device=device)
        for start in range(0, num_items, chunk_size):
            end = min(start + chunk_size, num_items)
            colsum = r @ (x @ x[start:end].t())  # (R S)[:, start:end]
            v = torch.cat([best_v, colsum], dim=1)
            ids = torch.cat([best_i, torch.arange(start, end, device=device)
                             .expand(num_users, -1)], dim=1)
            best_v, pos = v.topk(min(k, v.size(1)), dim=1)
            best_i = ids.gather(1, pos)
        sets.append(best_i)
    union, _ = torch.cat(sets, dim=1).sort(dim=1)
    fresh = torch.ones_like(union, dtype=torch.bool)
    fresh[:, 1:] = union[:, 1:] != union[:, :-1]
    users, items = ei
    cols, keep = union[users], fresh[users]
    rows = items[:, None].expand_as(cols)
    pairs = torch.stack([rows[keep], cols[keep]])
    return coalesce(pairs, torch.ones(pairs.size(1), device=device), num_nodes=num_items,
                    reduce='sum')


def pair_cosine(x: Tensor, edge_index: Tensor, chunk_size: int = 1024) -> Tensor:
    r"""The cosine similarity :math:`S_{ij}` of the rows of :obj:`x` for every pair
    :math:`(i, j)` of :obj:`edge_index` (sorted by :math:`i`, as :func:`interest_pairs`
    returns them), computed from similarity rows of :obj:`chunk_size` items (the values
    SOIL reads off its dense matrix)."""
    xn = F.normalize(x.float(), p=2., dim=-1)
    row, col = edge_index.to(xn.device)
    out = torch.empty(row.numel(), device=xn.device)
    bounds = torch.searchsorted(row, torch.arange(0, xn.size(0) + chunk_size, chunk_size,
                                                  device=xn.device))
    for c, start in enumerate(range(0, xn.size(0), chunk_size)):
        lo, hi = int(bounds[c]), int(bounds[c + 1])
        if lo == hi:
            continue
        sim = xn[start:start + chunk_size] @ xn.t()
        out[lo:hi] = sim[row[lo:hi] - start, col[lo:hi]]
    return out


def floored_sym_norm(edge_index: Tensor, weight: Tensor, num_nodes: int,
                     floor: Optional[float] = SOIL_FLOOR, what: str = 'graph') -> Tensor:
    r"""SOIL's :math:`D^{-1/2} A D^{-1/2}` (:math:`D` the weighted **row** sums on both
    sides, as :func:`~mrdib_pyg.data.graphs.sym_norm_adj`), then every weight
    :math:`\le` :obj:`floor` (negative cosines included) replaced by :obj:`floor`.

    A node whose row sum is negative (signed features) has no real :math:`D^{-1/2}`: SOIL
    gets NaN and training stops; here its weights are set to 0 (isolating it) with a
    warning. Nothing changes where SOIL's numbers are finite.

    Returns:
        A :obj:`torch.sparse_csr` tensor :math:`[N, N]`.
    """
    adj = sym_norm_adj(edge_index, weight, num_nodes)
    values = adj.values()
    if floor is not None:
        values = torch.where(values <= floor, torch.full_like(values, floor), values)
    bad = ~torch.isfinite(values)
    if bool(bad.any()):
        warnings.warn(f"SOIL {what}: {int(bad.sum())} weights are not finite (nodes whose "
                      f"weighted degree is negative); they are set to 0", stacklevel=2)
        values = torch.where(bad, torch.zeros_like(values), values)
    return csr_tensor(adj.crow_indices(), adj.col_indices(), values, adj.shape)


def quirk_block_norm(edge_index: Tensor, weight: Tensor, num_users: int, num_items: int,
                     floor: Optional[float] = SOIL_FLOOR) -> Tensor:
    r"""SOIL's normalisation of the :math:`[U, I]` block :math:`R^a` (``mm_attractive_adj_R``,
    its ``get_sparse_laplacian`` with :obj:`num_nodes=U`): the degree vector holds the
    users' row sums and is indexed by the **item id** on the column side,
    :math:`w'_{uj} = d_u^{-1/2}\, w_{uj}\, d_{\text{user } j}^{-1/2}`, then floored. Kept
    to reproduce SOIL's numbers (:obj:`AttractivenessGraph(degree_quirk=True)`); needs
    :math:`I \le U`.

    Returns:
        A :obj:`torch.sparse_csr` tensor :math:`[U, I]`.
    """
    if num_items > num_users:
        raise ValueError(f"AttractivenessGraph(degree_quirk=True) indexes the user-degree "
                         f"vector by item id, which needs num_items <= num_users (got "
                         f"{num_items} > {num_users}); SOIL's code fails there too")
    row, col = edge_index
    deg = torch.zeros(num_users, device=weight.device).index_add_(0, row, weight)
    inv = deg.pow(-0.5)
    inv[deg == 0] = 0.
    w = inv[row] * weight * inv[col]
    if floor is not None:
        w = torch.where(w <= floor, torch.full_like(w, floor), w)
    return csr_from_parts(edge_index, w, (num_users, num_items))


# ---------------------------------------------------------------------------
# Graph specs
# ---------------------------------------------------------------------------
def _clamped(k: int, most: int, what: str) -> int:
    if k > most:
        warnings.warn(f"{what}: k={k} exceeds the {most} items; using k={most}",
                      stacklevel=4)
        return most
    return k


def _check_modalities(data: HeteroData, names: Sequence[str], spec: str) -> None:
    have = modality_names(data)
    if not have:
        raise ValueError(f"{spec}: the dataset has no modality features")
    missing = [m for m in names if m not in have]
    if missing:
        raise ValueError(f"{spec}: the dataset has no modality {missing} (it has {have})")


@dataclass(frozen=True)
class AttractivenessGraph(GraphSpec):
    r"""SOIL's second-order user–item graph :math:`R^a` (:func:`attractiveness_edges`),
    normalised.

    :obj:`block='full'` gives SOIL's ``mm_attractive_adj``: the symmetric
    :math:`(U+I) \times (U+I)` bipartite matrix of :math:`R^a` (items offset by :math:`U`),
    :math:`D^{-1/2} A D^{-1/2}` with :math:`D` its row sums, weights floored at
    :obj:`floor` (:func:`floored_sym_norm`). SOIL adds half of it to the user–item
    adjacency.

    :obj:`block='user_item'` gives the :math:`[U, I]` matrix SOIL adds (halved) to the
    user readout :math:`\hat{R}`. By default it is the user→item block of the full
    normalised matrix, :math:`D_U^{-1/2} R^a D_I^{-1/2}` (as :math:`\hat{R}` is the block of
    the user–item adjacency). SOIL's ``mm_attractive_adj_R`` normalises the block on its
    own with a degree vector of the :math:`U` user row sums that it then also indexes by
    **item id** on the column side, :math:`w_{uj}\, d_u^{-1/2}\, d_{\text{user } j}^{-1/2}`
    (a bug that runs silently because :math:`U > I` on the Amazon datasets);
    :obj:`degree_quirk=True` reproduces it.

    Args:
        k (int): new items per user, SOIL's :obj:`knn_a` (Baby 2, Sports 6, Clothing 3).
            (default: :obj:`2`)
        block (str): :obj:`'full'` or :obj:`'user_item'`. (default: :obj:`'full'`)
        degree_quirk (bool): SOIL's degree indexing of the :obj:`'user_item'` block.
            (default: :obj:`False`)
        modalities (tuple): the modalities whose similarities are multiplied; empty means
            all of the dataset's (SOIL: image and text). (default: :obj:`()`)
        floor (float, optional): SOIL's floor of the normalised weights; :obj:`None`
            keeps them as they are. (default: :obj:`1e-7`)
    """
    k: int = 2
    block: str = 'full'
    degree_quirk: bool = False
    modalities: Tuple[str, ...] = ()
    floor: Optional[float] = SOIL_FLOOR
    kind = 'soil_attractive'

    def __post_init__(self):
        if self.k < 0:
            raise ValueError(f"AttractivenessGraph: k must be >= 0 (got {self.k})")
        if self.block not in ('full', 'user_item'):
            raise ValueError(f"AttractivenessGraph: block must be 'full' or 'user_item' "
                             f"(got '{self.block}')")
        if self.degree_quirk and self.block != 'user_item':
            raise ValueError("AttractivenessGraph: degree_quirk applies to "
                             "block='user_item' only")
        object.__setattr__(self, 'modalities', tuple(self.modalities))

    def _names(self, data: HeteroData) -> List[str]:
        return list(self.modalities) or sorted(modality_names(data))

    def check(self, data):
        _check_modalities(data, self._names(data), 'AttractivenessGraph')

    def inputs(self, data, fill):
        return [data[RATES].edge_index] + [item_features(data, m, fill)
                                           for m in self._names(data)]

    def build(self, data, fill):
        num_users, num_items = data[USER].num_nodes, data[ITEM].num_nodes
        feats = [item_features(data, m, fill) for m in self._names(data)]
        (u, j), w = attractiveness_edges(data[RATES].edge_index, num_users, num_items,
                                         feats, self.k)
        if self.degree_quirk:
            return quirk_block_norm(torch.stack([u, j]), w, num_users, num_items,
                                    self.floor)
        n = num_users + num_items
        index = torch.stack([torch.cat([u, j + num_users]), torch.cat([j + num_users, u])])
        full = floored_sym_norm(index, torch.cat([w, w]), n, self.floor,
                                'attractiveness graph')
        if self.block == 'full':
            return full
        coo = full.to_sparse_coo().coalesce()
        idx, val = coo.indices(), coo.values()
        keep = (idx[0] < num_users) & (idx[1] >= num_users)
        return csr_from_parts(torch.stack([idx[0, keep], idx[1, keep] - num_users]),
                              val[keep], (num_users, num_items))


@dataclass(frozen=True)
class InterestItemGraph(GraphSpec):
    r"""SOIL's item–item operator of one modality :math:`m`: its interest-aware graph plus
    its similarity kNN graph, each normalised on its own (:func:`floored_sym_norm`),

    .. math::
        G^m = \operatorname{norm}\big(\hat{S}^m\big) + \operatorname{norm}\big(\tilde{S}^m
        \big), \qquad \hat{S}^m_{ij} = c_{ij}\, S^m_{ij},

    with :math:`c_{ij}` the multiplicities of :func:`interest_pairs` (the interest items
    are chosen from every modality of :obj:`interest_modalities`) and :math:`\tilde{S}^m`
    the top-:obj:`knn_k` cosine neighbours of each item, itself included, weighted by the
    cosine values (MGCN's graph). Pairs whose weight is exactly zero are dropped (SOIL
    keeps the non-zero entries of its dense matrix). :obj:`knn_k=0` gives the interest
    graph alone (the "IA without similarity graph" of SOIL's ablation).

    Args:
        modality (str): :math:`m`, whose cosine values weight the graph.
        k (int): interest items per user and modality, SOIL's :obj:`knn_i` (Baby 10, Sports
            and Clothing 5); at most :math:`I` (lowered with a warning). (default: :obj:`10`)
        knn_k (int): neighbours of the similarity graph, 0 for none. (default: :obj:`10`)
        interest_modalities (tuple): the modalities that select interest items; empty means
            all of the dataset's (SOIL). (default: :obj:`()`)
        floor (float, optional): SOIL's floor of the normalised weights. (default:
            :obj:`1e-7`)
    """
    modality: str
    k: int = 10
    knn_k: int = 10
    interest_modalities: Tuple[str, ...] = ()
    floor: Optional[float] = SOIL_FLOOR
    kind = 'soil_interest'

    def __post_init__(self):
        if self.k < 1 or self.knn_k < 0:
            raise ValueError(f"InterestItemGraph: needs k >= 1 and knn_k >= 0 (got "
                             f"k={self.k}, knn_k={self.knn_k})")
        object.__setattr__(self, 'interest_modalities', tuple(self.interest_modalities))

    def _names(self, data: HeteroData) -> List[str]:
        return list(self.interest_modalities) or sorted(modality_names(data))

    def check(self, data):
        _check_modalities(data, sorted({self.modality, *self._names(data)}),
                          'InterestItemGraph')

    def inputs(self, data, fill):
        names = sorted({self.modality, *self._names(data)})
        return [data[RATES].edge_index] + [item_features(data, m, fill) for m in names]

    def build(self, data, fill):
        num_users, num_items = data[USER].num_nodes, data[ITEM].num_nodes
        k = _clamped(self.k, num_items, 'InterestItemGraph (knn_i)')
        feats = [item_features(data, m, fill) for m in self._names(data)]
        pairs, count = interest_pairs(data[RATES].edge_index, num_users, num_items, feats, k)
        x = item_features(data, self.modality, fill)
        weight = count * pair_cosine(x, pairs)
        nonzero = weight != 0
        graph = floored_sym_norm(pairs[:, nonzero], weight[nonzero], num_items, self.floor,
                                 f"interest graph of '{self.modality}'")
        if self.knn_k == 0:
            return graph
        knn_k = _clamped(self.knn_k, num_items, 'InterestItemGraph (knn_k)')
        knn = floored_sym_norm(*item_knn_graph(x, knn_k, loop=True), num_items, self.floor,
                               f"kNN graph of '{self.modality}'")
        a, b = graph.to_sparse_coo().coalesce(), knn.to_sparse_coo().coalesce()
        return csr_from_parts(torch.cat([a.indices(), b.indices()], 1),
                              torch.cat([a.values(), b.values()]), (num_items, num_items))
