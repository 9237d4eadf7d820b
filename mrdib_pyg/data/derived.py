r"""Derived graphs a backbone *declares* and the data layer builds once.

A backbone never builds a graph in its constructor (MMRec's models all do, and cache it
under a name that ignores most of its parameters). Instead it lists what it needs as
:class:`GraphSpec` objects in :meth:`~mrdib_pyg.nn.models.Recommender.graph_specs`, keyed
by the constructor argument that receives each graph, and
:meth:`~mrdib_pyg.nn.models.Recommender.from_data` calls :func:`build_graphs`, which builds
every spec from the :class:`~torch_geometric.data.HeteroData` (training edges only) and,
given a folder (a dataset's ``processed/``), caches it there with
:func:`~mrdib_pyg.data.graphs.cached_graph`: the file name holds every parameter of the
spec and a fingerprint of its inputs, so two specs or two datasets never share a file and
a changed input never reads a stale one.

The specs:

* :class:`UserItemGraph` -- the normalised bipartite user–item adjacency (LightGCN, FREEDOM,
  MGCN, ...), or its user->item block :math:`\hat{R}` (MGCN's user modal embeddings);
* :class:`TrainingEdges` -- the raw training pairs (FREEDOM's per-epoch pruning, MMGCN's
  message passing);
* :class:`ItemKNN` -- one modality's cosine :math:`k`-NN item graph, normalised
  (MGCN, LATTICE);
* :class:`MixedItemKNN` -- a weighted sum of per-modality kNN graphs (FREEDOM);
* :class:`UserCoInteraction` -- the user–user co-interaction counts, top-:math:`k` per user
  (DualGNN's user graph).

Each spec is a frozen dataclass: equal parameters mean the same graph.
"""
import dataclasses
import warnings
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch
from torch import Tensor
from torch_geometric.data import HeteroData
from torch_geometric.utils import coalesce

from mrdib_pyg.data.graphs import (cached_graph, csr_from_parts, item_knn_graph, row_norm_adj,
                                   sym_norm_adj, tensor_fingerprint, to_csr,
                                   user_cooccurrence_graph)
from mrdib_pyg.data.schema import ITEM, RATES, USER, item_features, modality_names

__all__ = ['GraphSpec', 'UserItemGraph', 'TrainingEdges', 'ItemKNN',
           'MixedItemKNN', 'UserCoInteraction', 'build_graphs', 'csr_from_parts']

NORMS = ('sym', 'row', 'none')


def _normalise(edge_index: Tensor, weight: Tensor, n: int, norm: str) -> Tensor:
    if norm == 'sym':
        return sym_norm_adj(edge_index, weight, n)
    if norm == 'row':
        return row_norm_adj(edge_index, weight, n)
    return csr_from_parts(edge_index, weight.float(), (n, n))


def _parts(adj: Tensor) -> Tuple[Tensor, Tensor, Tuple[int, int]]:
    # Cached as plain tensors: they load with weights_only=True on every torch version.
    coo = adj.to_sparse_coo().coalesce()
    return coo.indices(), coo.values(), tuple(coo.shape)


class GraphSpec:
    r"""Base of the graph declarations: a frozen dataclass of parameters plus
    :meth:`build`. :meth:`inputs` names the tensors the graph depends on (their fingerprint
    keys the cache); :attr:`cache` says whether caching is worth a file."""
    #: File-name stem of the cached graph.
    kind: str = 'graph'
    #: Whether :func:`build_graphs` caches it on disk (cheap graphs are rebuilt).
    cache: bool = True

    def params(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    def inputs(self, data: HeteroData, fill: str) -> List[Tensor]:  # pragma: no cover
        raise NotImplementedError

    def build(self, data: HeteroData, fill: str) -> Tensor:  # pragma: no cover
        raise NotImplementedError

    def check(self, data: HeteroData) -> None:
        r"""Raise :class:`ValueError` if :obj:`data` cannot give this graph."""


def _counts(data: HeteroData) -> Tuple[int, int]:
    return data[USER].num_nodes, data[ITEM].num_nodes


@dataclass(frozen=True)
class UserItemGraph(GraphSpec):
    r"""The bipartite adjacency of the training interactions, users first and items offset
    by :math:`U`, duplicates counted once:

    .. math::
        A = \begin{pmatrix} 0 & R \\ R^\top & 0 \end{pmatrix} (+\, I \text{ if self\_loops}),
        \qquad \hat{A} = D^{-1/2} A D^{-1/2}\ (\text{sym}) \text{ or } D^{-1} A\ (\text{row})

    :obj:`block='user_item'` returns the :math:`[U, I]` block :math:`\hat{R}` of the
    normalised matrix instead (MGCN propagates item modal embeddings to users with it).

    Args:
        norm (str): :obj:`'sym'` (LightGCN, FREEDOM, MGCN), :obj:`'row'` (LATTICE, with
            self-loops) or :obj:`'none'`. (default: :obj:`'sym'`)
        self_loops (bool): add :math:`I` before normalising. (default: :obj:`False`)
        block (str): :obj:`'full'` or :obj:`'user_item'`. (default: :obj:`'full'`)
    """
    norm: str = 'sym'
    self_loops: bool = False
    block: str = 'full'
    kind = 'ui_adj'
    cache = False  # a few coalesces: faster to build than to read

    def __post_init__(self):
        if self.norm not in NORMS:
            raise ValueError(f"UserItemGraph: norm must be one of {NORMS} (got '{self.norm}')")
        if self.block not in ('full', 'user_item'):
            raise ValueError(f"UserItemGraph: block must be 'full' or 'user_item' "
                             f"(got '{self.block}')")

    def inputs(self, data, fill):
        return [data[RATES].edge_index]

    def build(self, data, fill):
        num_users, num_items = _counts(data)
        n = num_users + num_items
        ei = data[RATES].edge_index
        u, i = ei[0].long(), ei[1].long() + num_users
        index = torch.stack([torch.cat([u, i]), torch.cat([i, u])])
        if self.self_loops:
            loop = torch.arange(n)
            index = torch.cat([index, torch.stack([loop, loop])], dim=1)
        index = coalesce(index, num_nodes=n)
        adj = _normalise(index, torch.ones(index.size(1)), n, self.norm)
        if self.block == 'user_item':
            coo = adj.to_sparse_coo().coalesce()
            idx, val = coo.indices(), coo.values()
            keep = (idx[0] < num_users) & (idx[1] >= num_users)
            idx = torch.stack([idx[0, keep], idx[1, keep] - num_users])
            adj = csr_from_parts(idx, val[keep], (num_users, num_items))
        return adj


@dataclass(frozen=True)
class TrainingEdges(GraphSpec):
    r"""The deduplicated training pairs as an :obj:`[2, E]` (user, item) index; with
    :obj:`undirected=True`, both directions over one node range (items offset by
    :math:`U`), as PyG message passing on the bipartite graph expects."""
    undirected: bool = False
    kind = 'train_edges'
    cache = False

    def inputs(self, data, fill):
        return [data[RATES].edge_index]

    def build(self, data, fill):
        num_users, num_items = _counts(data)
        ei = coalesce(data[RATES].edge_index.long())
        if not self.undirected:
            return ei
        u, i = ei[0], ei[1] + num_users
        return torch.stack([torch.cat([u, i]), torch.cat([i, u])])


def _knn_parts(x: Tensor, k: int, weighted: bool, loop: bool, norm: str):
    most = x.size(0) if loop else x.size(0) - 1
    if k > most:
        warnings.warn(f"kNN item graph: k={k} exceeds the {most} candidate neighbours of "
                      f"{x.size(0)} items; using k={most}", stacklevel=4)
        k = most
    edge_index, weight = item_knn_graph(x, k, loop=loop)
    if not weighted:
        weight = torch.ones_like(weight)
    return _normalise(edge_index, weight, x.size(0), norm)


@dataclass(frozen=True)
class ItemKNN(GraphSpec):
    r"""The cosine :math:`k`-NN item graph of one modality's **raw** features
    (:func:`~mrdib_pyg.data.graphs.item_knn_graph`), normalised.

    MMRec's choices: the item itself competes for the :math:`k` slots (:obj:`loop=True`);
    MGCN and LATTICE keep the cosine values (:obj:`weighted=True`), FREEDOM uses ones; the
    degree is the row sum (out-degree) on both sides of :math:`D^{-1/2} A D^{-1/2}`.

    Args:
        modality (str): the modality node type.
        k (int): neighbours per item. (default: :obj:`10`)
        weighted (bool): keep cosine values as edge weights. (default: :obj:`True`)
        loop (bool): let an item be its own neighbour. (default: :obj:`True`)
        norm (str): :obj:`'sym'`, :obj:`'row'` or :obj:`'none'`. (default: :obj:`'sym'`)
    """
    modality: str
    k: int = 10
    weighted: bool = True
    loop: bool = True
    norm: str = 'sym'
    kind = 'knn'

    def check(self, data):
        if self.modality not in modality_names(data):
            raise ValueError(f"ItemKNN: the dataset has no modality '{self.modality}' "
                             f"(it has {modality_names(data)})")

    def inputs(self, data, fill):
        return [item_features(data, self.modality, fill)]

    def build(self, data, fill):
        return _knn_parts(item_features(data, self.modality, fill), self.k, self.weighted,
                          self.loop, self.norm)


@dataclass(frozen=True)
class MixedItemKNN(GraphSpec):
    r"""FREEDOM's frozen item–item graph: the weighted sum of per-modality
    :class:`ItemKNN` matrices,

    .. math::
        S = \sum_m w_m\, \hat{A}_m, \qquad \textstyle\sum_m w_m = 1.

    :obj:`weights` gives :math:`w_m` for some modalities; the rest of the unit mass is
    shared equally by the dataset's other modalities (FREEDOM's :obj:`mm_image_weight=0.1`
    over image and text gives 0.1·image + 0.9·text, MMRec's mix; a dataset with one modality
    gets that modality's graph, as MMRec does). Modalities named in :obj:`weights` that the
    dataset lacks are dropped and the remaining weights rescaled to sum to one.

    Args:
        weights (tuple): :obj:`((modality, weight), ...)` pairs.
        k, weighted, loop, norm: as :class:`ItemKNN` (FREEDOM: unweighted, sym).
    """
    weights: Tuple[Tuple[str, float], ...] = (('image', 0.1), )
    k: int = 10
    weighted: bool = False
    loop: bool = True
    norm: str = 'sym'
    kind = 'mixed_knn'

    def mix(self, names: List[str]) -> Dict[str, float]:
        r"""The weight of every modality in :obj:`names` (summing to one)."""
        given = {m: float(w) for m, w in self.weights if m in names}
        if any(w < 0 for w in given.values()):
            raise ValueError(f"MixedItemKNN: weights must be >= 0 (got {self.weights})")
        rest = [m for m in names if m not in given]
        left = 1.0 - sum(given.values())
        if rest and left > 0:
            given.update({m: left / len(rest) for m in rest})
        total = sum(given.values())
        if total <= 0:
            raise ValueError(f"MixedItemKNN: no weight left for the modalities {names} "
                             f"(weights {self.weights})")
        return {m: w / total for m, w in given.items() if w > 0}

    def check(self, data):
        if not modality_names(data):
            raise ValueError('MixedItemKNN: the dataset has no modality features')

    def inputs(self, data, fill):
        return [item_features(data, m, fill) for m in sorted(modality_names(data))]

    def build(self, data, fill):
        total = None
        for m, w in self.mix(modality_names(data)).items():
            adj = _knn_parts(item_features(data, m, fill), self.k, self.weighted, self.loop,
                             self.norm).to_sparse_coo()
            total = w * adj if total is None else total + w * adj
        return to_csr(total.coalesce())


@dataclass(frozen=True)
class UserCoInteraction(GraphSpec):
    r"""DualGNN's user–user graph: the number of training items two users share,

    .. math::
        C = R R^\top \text{ without its diagonal}, \qquad
        C_{uv} = |\mathcal{I}_u \cap \mathcal{I}_v|,

    kept for the :obj:`k` heaviest neighbours of every user (ties: the smaller user id),
    as a :obj:`[U, U]` sparse matrix of float counts (not symmetric once pruned). Built
    sparsely, a chunk of users at a time, by
    :func:`~mrdib_pyg.data.graphs.user_cooccurrence_graph` (never a dense :math:`U \times U`
    matrix) from the deduplicated training pairs, and cached.

    MMRec reads the same counts from ``user_graph_dict.npy`` (written by its
    ``preprocessing/dualgnn-gen-u-u-matrix.py``, which keeps 200 neighbours per user; its
    DualGNN uses the first 40). MMRec orders tied counts as :func:`torch.topk` happens to
    return them, so where a tie straddles the :math:`k`-th place the two may keep different
    (equally weighted) neighbours.

    Args:
        k (int, optional): neighbours kept per user; :obj:`None` keeps all.
            (default: :obj:`40`, DualGNN's)
    """
    k: Optional[int] = 40
    kind = 'user_coint'

    def __post_init__(self):
        if self.k is not None and (isinstance(self.k, bool) or not isinstance(self.k, int)
                                   or self.k < 1):
            raise ValueError(f"UserCoInteraction: k must be a positive int or None "
                             f"(got {self.k!r})")

    def inputs(self, data, fill):
        return [data[RATES].edge_index]

    def build(self, data, fill):
        num_users, num_items = _counts(data)
        edge_index, count = user_cooccurrence_graph(data[RATES].edge_index, num_users,
                                                    num_items, topk=self.k)
        return csr_from_parts(edge_index, count.float(), (num_users, num_users))


def build_graphs(data: HeteroData, specs: Mapping[str, Any],
                 cache_dir: Optional[str] = None, fill: str = 'keep') -> Dict[str, Any]:
    r"""Every graph of :obj:`specs` (argument name -> spec, or -> a dict of specs, e.g. one
    per modality) built from :obj:`data`'s training edges and features, cached in
    :obj:`cache_dir` when given.

    Sparse matrices come back as :obj:`torch.sparse_csr` tensors, edge indices as dense
    long tensors; a dict of specs gives a dict of graphs."""
    out: Dict[str, Any] = {}
    for arg, spec in specs.items():
        if isinstance(spec, Mapping):
            out[arg] = build_graphs(data, spec, cache_dir, fill)
            continue
        if not isinstance(spec, GraphSpec):
            raise TypeError(f"graph '{arg}': expected a GraphSpec (got {type(spec).__name__})")
        spec.check(data)
        if cache_dir is None or not spec.cache:
            out[arg] = spec.build(data, fill)
            continue
        params = {**spec.params(), 'fill': fill}
        parts = cached_graph(cache_dir, spec.kind, params,
                             tensor_fingerprint(*spec.inputs(data, fill)),
                             lambda s=spec: _parts(s.build(data, fill)))
        out[arg] = csr_from_parts(*parts)
    return out
