r"""Full-ranking evaluation with MMRec's semantics.

For every user :math:`u` with a non-empty held-out set :math:`T_u` in the evaluated split,
all items are scored, the scores of the user's masked items :math:`M_u` (by default the
*training* items only) are set to :math:`-\infty`, and the top-:math:`K_{\max}` items
:math:`r_1, \dots, r_{K_{\max}}` are taken with :func:`torch.topk`. With the hit indicator
:math:`h_j = [r_j \in T_u \setminus M_u]` and :math:`n_u = |T_u|`:

.. math::
    \mathrm{Recall@}K &= \frac{1}{n_u} \sum_{j \le K} h_j \qquad
        \text{(not capped at } K\text{)}

    \mathrm{NDCG@}K &= \frac{\sum_{j \le K} h_j / \log_2(j + 1)}
        {\sum_{j \le \min(n_u, K)} 1 / \log_2(j + 1)}

    \mathrm{Precision@}K &= \frac{1}{K} \sum_{j \le K} h_j

    \mathrm{MAP@}K &= \frac{1}{\min(n_u, K)} \sum_{j \le K} h_j \,
        \frac{\sum_{l \le j} h_l}{j}

each averaged over the users with :math:`n_u \ge 1`, and
:math:`\mathrm{Recall2@}K = \sum_u \sum_{j \le K} h_j \,/\, \sum_u n_u` (total hits over total
held-out items).

What equals MMRec (``src/utils/topk_evaluator.py`` + ``metrics.py``):

* only the training items are masked by default, so validation items are *not* masked at
  test time (and test items not at validation time);
* the evaluated users are those with at least one held-out item; the definitions above are
  MMRec's, and the ranking uses the same :func:`torch.topk` call, so ties are broken as in
  MMRec.

What differs on purpose:

* masked items get :math:`-\infty` instead of MMRec's :math:`-10^{10}`. The rankings are
  identical unless a model scores an item below :math:`-10^{10}`;
* a masked item never counts as a hit. In MMRec it could only do so when :math:`K` exceeds the
  number of unmasked items of a user *and* the held-out item is also a training item;
* metrics are not rounded by default (:obj:`round_to=4` reproduces MMRec's printed values);
* :math:`K` larger than the number of items is allowed: the ranked list is clipped to all
  items, while Precision still divides by the nominal :math:`K` and NDCG/MAP use
  :math:`\min(n_u, K)`;
* training and held-out pairs are deduplicated (MMRec's data never has duplicates);
* a split without any evaluated user gives NaN for every metric, never a 0 that reads as a
  result.

The per-user formulas are PyG's :mod:`torch_geometric.metrics` link-prediction metrics
(:class:`~torch_geometric.metrics.LinkPredRecall`, ...), which agree with MMRec's
definitions; this module adds the batched full sort, the masking, the users' bookkeeping and
Recall2.
"""
import math
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor
from torch_geometric.data import HeteroData
from torch_geometric.metrics import (
    LinkPredMAP,
    LinkPredNDCG,
    LinkPredPrecision,
    LinkPredRecall,
)

from mrdib_pyg.data.schema import ITEM, SPLITS, USER, split_edge_index, split_name

try:  # PyG >= 2.7 shares one relevance computation across metrics.
    from torch_geometric.metrics import LinkPredMetricCollection
except ImportError:  # pragma: no cover - older PyG
    LinkPredMetricCollection = None

#: Metric names this evaluator knows, in output order.
METRICS = ('Recall', 'Recall2', 'NDCG', 'Precision', 'MAP')
DEFAULT_KS = (5, 10, 20, 50)
DEFAULT_METRICS = ('Recall', 'NDCG', 'Precision', 'MAP')

# The per-user formulas are PyG's. They reproduce the golden MMRec numbers to ~6e-8 (PyG
# accumulates in the default float32 dtype, MMRec in float64, so the block size changes the
# last float32 digit of a mean) and cost ~20 ms per block of 4096 users for 16 metrics,
# against ~600 ms for the block's score matrix and top-k on CPU.
# Recall2 (no PyG counterpart) is counted here in int64.
_PYG_METRICS = {
    'Recall': LinkPredRecall,
    'NDCG': LinkPredNDCG,
    'Precision': LinkPredPrecision,
    'MAP': LinkPredMAP,
}


class _Collection:
    r"""Feeds one batch to several PyG link-prediction metrics (shared relevance if the
    installed PyG has :class:`LinkPredMetricCollection`)."""
    def __init__(self, metrics: Dict[str, torch.nn.Module], device: torch.device):
        self.metrics = {name: m.to(device) for name, m in metrics.items()}
        self.collection = None
        if LinkPredMetricCollection is not None:
            self.collection = LinkPredMetricCollection(dict(self.metrics)).to(device)

    def update(self, pred_index_mat: Tensor, edge_label_index: Tensor) -> None:
        if self.collection is not None:
            self.collection.update(pred_index_mat, edge_label_index)
        else:  # pragma: no cover - older PyG
            for m in self.metrics.values():
                m.update(pred_index_mat, edge_label_index)

    def compute(self) -> Dict[str, float]:
        return {name: float(m.compute()) for name, m in self.metrics.items()}


def _dedup_pairs(edge_index: Tensor, num_users: int, num_items: int,
                 what: str) -> Tuple[Tensor, Tensor]:
    r"""Sorted, deduplicated (user, item) pairs of a :obj:`[2, E]` tensor."""
    if edge_index.dim() != 2 or edge_index.size(0) != 2:
        raise ValueError(f"'FullRankEvaluator' expects '{what}' of shape [2, E] "
                         f"(got {tuple(edge_index.size())})")
    if edge_index.is_floating_point() or edge_index.is_complex():
        raise ValueError(f"'FullRankEvaluator' expects integer ids in '{what}' "
                         f"(got dtype {edge_index.dtype})")
    edge_index = edge_index.detach().to('cpu', torch.long)
    if edge_index.numel() > 0:
        u, i = edge_index
        if int(u.min()) < 0 or int(u.max()) >= num_users:
            raise ValueError(f"'FullRankEvaluator' found a user id in '{what}' outside "
                             f"[0, {num_users}) (min {int(u.min())}, max {int(u.max())})")
        if int(i.min()) < 0 or int(i.max()) >= num_items:
            raise ValueError(f"'FullRankEvaluator' found an item id in '{what}' outside "
                             f"[0, {num_items}) (min {int(i.min())}, max {int(i.max())})")
    key = torch.unique(edge_index[0] * num_items + edge_index[1])  # sorted
    return key // num_items, key % num_items


class FullRankEvaluator:
    r"""Full-ranking top-:math:`K` evaluator with MMRec's semantics (see the module
    docstring for the formulas and the deliberate differences).

    The per-user held-out sets and masks are stored once as CSR-style :obj:`(rowptr, col)`
    tensors over the evaluated users, so each block of :obj:`batch_size` users is masked,
    ranked and scored without a Python loop over users.

    Args:
        num_users (int): number of users :math:`U`.
        num_items (int): number of items :math:`I`.
        train_edge_index (Tensor): :obj:`[2, E]` (user, item) training pairs.
        heldout_edge_index (Tensor): :obj:`[2, E']` (user, item) positives of the evaluated
            split. Only users that appear here are evaluated.
        ks (sequence of int): cut-offs :math:`K`. (default: :obj:`(5, 10, 20, 50)`)
        metrics (sequence of str): any of :obj:`'Recall'`, :obj:`'Recall2'`, :obj:`'NDCG'`,
            :obj:`'Precision'`, :obj:`'MAP'` (case-insensitive).
            (default: :obj:`('Recall', 'NDCG', 'Precision', 'MAP')`)
        batch_size (int): users scored per block. No metric depends on it (each user's
            row is scored, masked and ranked alone); it sets the size of one block's
            :obj:`[batch_size, num_items]` score matrix. MMRec scores 4096 users per block;
            on a CPU a smaller block is faster, because a 4096-user block of Baby's 7,050
            items is a 115 MB matrix allocated and faulted in afresh for every block
            (``benchmarks/bench_eval_blocks.py``). (default: :obj:`1024`)
        mask_edge_index (Tensor, optional): :obj:`[2, E'']` pairs whose scores are set to
            :math:`-\infty` before ranking. (default: :obj:`train_edge_index`)
        round_to (int, optional): round every metric to this many decimals
            (:obj:`4` reproduces MMRec's printed output). (default: :obj:`None`)
    """
    def __init__(
        self,
        num_users: int,
        num_items: int,
        train_edge_index: Tensor,
        heldout_edge_index: Tensor,
        ks: Sequence[int] = DEFAULT_KS,
        metrics: Sequence[str] = DEFAULT_METRICS,
        batch_size: int = 1024,
        mask_edge_index: Optional[Tensor] = None,
        round_to: Optional[int] = None,
    ):
        name = self.__class__.__name__
        self.num_users = int(num_users)
        self.num_items = int(num_items)
        if self.num_users < 1 or self.num_items < 1:
            raise ValueError(f"'{name}' needs at least one user and one item "
                             f"(got num_users={num_users}, num_items={num_items})")
        if isinstance(ks, int):
            ks = (ks, )
        if len(ks) == 0:
            raise ValueError(f"'{name}' needs at least one cut-off K (got {ks!r})")
        for k in ks:
            if isinstance(k, bool) or int(k) != k or k < 1:
                raise ValueError(f"'{name}' expects positive integer cut-offs K (got {k!r})")
        self.ks: List[int] = sorted({int(k) for k in ks})
        if isinstance(metrics, str):
            metrics = (metrics, )
        canonical = {m.lower(): m for m in METRICS}
        chosen = []
        for m in metrics:
            if not isinstance(m, str) or m.lower() not in canonical:
                raise ValueError(f"'{name}' got an unknown metric {m!r} "
                                 f"(expected any of {METRICS})")
            chosen.append(canonical[m.lower()])
        if len(chosen) == 0:
            raise ValueError(f"'{name}' needs at least one metric (got {metrics!r})")
        self.metrics: List[str] = [m for m in METRICS if m in chosen]
        if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
            raise ValueError(f"'{name}' expects a positive integer 'batch_size' "
                             f"(got {batch_size!r})")
        self.batch_size = int(batch_size)
        if round_to is not None and (int(round_to) != round_to or round_to < 0):
            raise ValueError(f"'{name}' expects a non-negative integer 'round_to' "
                             f"(got {round_to!r})")
        self.round_to = None if round_to is None else int(round_to)
        #: Length of the ranked list: max(K), clipped to the number of items.
        self.max_k = min(self.ks[-1], self.num_items)

        if mask_edge_index is None:
            mask_edge_index = train_edge_index
        U, I = self.num_users, self.num_items
        # Validate the training pairs even when another mask is given.
        _dedup_pairs(train_edge_index, U, I, 'train_edge_index')
        ho_user, ho_item = _dedup_pairs(heldout_edge_index, U, I, 'heldout_edge_index')
        mk_user, mk_item = _dedup_pairs(mask_edge_index, U, I, 'mask_edge_index')

        # Evaluated users (sorted) and each user's row among them (-1: not evaluated).
        self.users = torch.unique(ho_user)
        self.user_to_row = torch.full((U, ), -1, dtype=torch.long)
        self.user_to_row[self.users] = torch.arange(self.users.numel())
        n = self.users.numel()

        # CSR of the held-out sets over the evaluated rows (pairs are sorted by user).
        ho_row = self.user_to_row[ho_user]
        self.heldout_count = torch.bincount(ho_row, minlength=n)
        self.heldout_rowptr = torch.cat([ho_row.new_zeros(1), self.heldout_count.cumsum(0)])
        self.heldout_col = ho_item

        # CSR of the masks, restricted to the evaluated rows.
        mk_row = self.user_to_row[mk_user]
        keep = mk_row >= 0
        mk_row, mk_item = mk_row[keep], mk_item[keep]
        self.mask_rowptr = torch.cat(
            [mk_row.new_zeros(1), torch.bincount(mk_row, minlength=n).cumsum(0)])
        self.mask_col = mk_item

    # ---------------------------------------------------------------------------------
    @classmethod
    def from_data(
        cls,
        data: HeteroData,
        split: str = 'test',
        mask: Union[str, Sequence[str]] = ('train', ),
        **kwargs,
    ) -> 'FullRankEvaluator':
        r"""Build the evaluator of :obj:`split` from the heterograph of
        :mod:`mrdib_pyg.data.schema`.

        Args:
            data (HeteroData): the dataset.
            split (str): the evaluated split, :obj:`'val'` (or :obj:`'valid'`) or
                :obj:`'test'`.
                (default: :obj:`'test'`)
            mask (str or sequence of str): splits whose pairs are masked before ranking.
                (default: :obj:`('train',)`, MMRec's choice; :obj:`('train', 'val')`
                masks validation items at test time too)
            **kwargs: forwarded to :class:`FullRankEvaluator`.
        """
        name = cls.__name__
        if isinstance(mask, str):
            mask = (mask, )
        split, mask = split_name(split), tuple(split_name(s) for s in mask)
        for s in (split, ) + mask:
            if s not in SPLITS:
                raise ValueError(f"'{name}' got an unknown split {s!r} (expected one of "
                                 f"{SPLITS})")
        if split in mask:
            raise ValueError(f"'{name}' cannot evaluate split {split!r} while masking it "
                             f"(mask={mask})")
        train = split_edge_index(data, 'train')
        masked = [split_edge_index(data, s) for s in mask]
        mask_edge_index = (torch.cat([m.long().cpu() for m in masked], dim=1)
                           if masked else train.new_empty((2, 0)))
        return cls(data[USER].num_nodes, data[ITEM].num_nodes, train,
                   split_edge_index(data, split), mask_edge_index=mask_edge_index, **kwargs)

    # ---------------------------------------------------------------------------------
    @property
    def num_eval_users(self) -> int:
        r"""Number of evaluated users (those with at least one held-out item)."""
        return self.users.numel()

    def _new_state(self, device: torch.device) -> Tuple[Optional[_Collection], Tensor]:
        pyg = {f'{m}@{k}': _PYG_METRICS[m](k) for m in self.metrics if m in _PYG_METRICS
               for k in self.ks}
        collection = _Collection(pyg, device) if pyg else None
        hits = torch.zeros(len(self.ks), dtype=torch.long, device=device)  # for Recall2
        return collection, hits

    @staticmethod
    def _rows_csr(rowptr: Tensor, col: Tensor, rows: Tensor) -> Tuple[Tensor, Tensor]:
        r"""(local row, col) pairs of the CPU rows :obj:`rows` of a CSR, vectorised."""
        counts = rowptr[rows + 1] - rowptr[rows]
        local = torch.repeat_interleave(torch.arange(rows.numel()), counts)
        offset = torch.arange(local.numel()) - (counts.cumsum(0) - counts)[local]
        return local, col[rowptr[rows][local] + offset]

    @staticmethod
    def _member(local: Tensor, col: Tensor, top: Tensor, width: int) -> Tensor:
        r"""Whether each entry of :obj:`top` :obj:`[B, k]` (ids below :obj:`width`) is one
        of the (local row, col) pairs, by a sorted membership test (CSR pairs come sorted
        by row, then col, so their flat keys are sorted)."""
        if col.numel() == 0:
            return torch.zeros_like(top, dtype=torch.bool)
        keys = local * width + col
        query = torch.arange(top.size(0), device=top.device).view(-1, 1) * width + top
        pos = torch.searchsorted(keys, query).clamp(max=keys.numel() - 1)
        return keys[pos] == query

    def _update(self, collection: Optional[_Collection], hits: Tensor, top: Tensor,
                rows: Tensor, masked_top: Optional[Tensor]) -> None:
        r"""Accumulate one block: :obj:`top` :obj:`[B, k]` ranked items of the evaluated
        rows :obj:`rows` (contiguous or not); :obj:`masked_top` flags masked entries."""
        device = top.device
        # Held-out pairs of these rows, with the LOCAL row in front (PyG's convention).
        local, col = self._rows_csr(self.heldout_rowptr, self.heldout_col, rows)
        label_index = torch.stack([local, col]).to(device)

        if masked_top is not None and bool(masked_top.any()):
            # A masked item can never be a hit: replace it by an id no label can have.
            top = top.masked_fill(masked_top, self.num_items)
        if collection is not None:
            collection.update(top, label_index)
        if 'Recall2' in self.metrics:
            # The sentinel id num_items needs a key stride of num_items + 1.
            rel = self._member(label_index[0], label_index[1], top, self.num_items + 1)
            cum = rel.cumsum(1)  # [B, k]: hits within the first j
            for j, k in enumerate(self.ks):
                hits[j] += cum[:, min(k, top.size(1)) - 1].sum()

    def _finish(self, collection: Optional[_Collection], hits: Tensor,
                total: int) -> Dict[str, float]:
        pyg = collection.compute() if collection is not None else {}
        out: Dict[str, float] = {}
        for m in self.metrics:
            for j, k in enumerate(self.ks):
                key = f'{m}@{k}'
                if self.num_eval_users == 0:  # a mean over nobody: undefined, never 0
                    value = math.nan
                elif m == 'Recall2':
                    value = int(hits[j]) / total if total > 0 else 0.0
                else:
                    value = pyg[key]
                if self.round_to is not None:
                    value = round(value, self.round_to)
                out[key] = value
        return out

    # ---------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(
        self,
        score_fn: Callable[[Tensor], Tensor],
        device: Optional[Union[str, torch.device]] = None,
        clone_scores: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ) -> Dict[str, float]:
        r"""Rank all items for every evaluated user and average the metrics.

        Sharded (:obj:`world_size` > 1, inside an initialised :mod:`torch.distributed`
        process group, every rank calling it): the blocks of :obj:`batch_size` users are
        dealt round-robin to the ranks, each rank scores and ranks its blocks only (the
        expensive part), the ranked lists (:obj:`[users, max(ks)]` item ids, masked entries
        replaced by a sentinel) are gathered with one ``all_reduce``, and every rank
        computes the metrics from all of them in the single-process order: the result is
        EXACTLY the single-process one (the blocks are the same, so are their scores), on
        every rank.

        Args:
            score_fn (callable): maps a :obj:`[B]` long tensor of user ids to a
                :obj:`[B, num_items]` floating score matrix (on any device; masking,
                top-:math:`K` and metrics run on that device).
            device (str or torch.device, optional): device of the user ids given to
                :obj:`score_fn`. (default: CPU)
            clone_scores (bool): the masked scores are written into the tensor that
                :obj:`score_fn` returns, which saves a copy of every block. Set this to
                :obj:`True` when :obj:`score_fn` returns a view of a tensor that must stay
                intact (e.g. a slice of a cached score matrix). (default: :obj:`False`)
            rank (int), world_size (int): this process's share (see above).
                (default: :obj:`0`, :obj:`1`)

        Returns:
            dict: metric name :math:`\rightarrow` value, keys such as :obj:`'Recall@20'`,
            metric-major and by increasing :math:`K`. All NaN when no user has a
            held-out item (a mean over nobody is undefined; MMRec's ``np.mean`` of an
            empty list gives NaN too).
        """
        if world_size > 1:
            return self._evaluate_sharded(score_fn, device, clone_scores, rank, world_size)
        users = self.users if device is None else self.users.to(device)
        collection, hits, state_device = None, None, None
        n = self.num_eval_users
        for start in range(0, n, self.batch_size):
            end = min(start + self.batch_size, n)
            rows, top, masked_top = self._ranked_block(score_fn, users, start, end,
                                                       clone_scores, state_device)
            if state_device is None:
                state_device = top.device
                collection, hits = self._new_state(state_device)
            self._update(collection, hits, top, rows, masked_top)
        if state_device is None:  # nobody to evaluate
            collection, hits = self._new_state(torch.device('cpu'))
        return self._finish(collection, hits, int(self.heldout_count.sum()))

    def _ranked_block(self, score_fn, users: Tensor, start: int, end: int,
                      clone_scores: bool, state_device=None):
        r"""Score, mask and rank the users of rows :obj:`start:end`; returns the rows, the
        top-:math:`K_{\max}` items and the flags of masked entries (or :obj:`None`)."""
        name = self.__class__.__name__
        scores = score_fn(users[start:end])
        if not isinstance(scores, Tensor) or scores.dim() != 2 or \
                scores.size(0) != end - start or scores.size(1) != self.num_items:
            got = tuple(scores.size()) if isinstance(scores, Tensor) else type(scores)
            raise ValueError(f"'{name}' expects 'score_fn' to return scores of shape "
                             f"[{end - start}, {self.num_items}] (got {got})")
        if not scores.is_floating_point():
            raise ValueError(f"'{name}' expects floating-point scores "
                             f"(got dtype {scores.dtype})")
        state_device = scores.device if state_device is None else state_device
        original = scores
        scores = scores.to(state_device)
        rows = torch.arange(start, end)
        local, col = self._rows_csr(self.mask_rowptr, self.mask_col, rows)
        local, col = local.to(state_device), col.to(state_device)
        if clone_scores and scores is original:
            scores = scores.clone()
        scores.index_put_((local, col), scores.new_full((1, ), float('-inf')))
        # MMRec's ranking call, so ties are broken the same way.
        values, top = torch.topk(scores, self.max_k, dim=-1)
        masked_top = None
        if bool(torch.isneginf(values[:, -1]).any()):  # a masked item may be ranked
            masked_top = self._member(local, col, top, self.num_items)
        return rows, top, masked_top

    def _evaluate_sharded(self, score_fn, device, clone_scores: bool, rank: int,
                          world_size: int) -> Dict[str, float]:
        import torch.distributed as dist
        users = self.users if device is None else self.users.to(device)
        n = self.num_eval_users
        starts = list(range(0, n, self.batch_size))
        all_top, state_device = None, None
        for b in range(rank, len(starts), world_size):
            start = starts[b]
            end = min(start + self.batch_size, n)
            rows, top, masked_top = self._ranked_block(score_fn, users, start, end,
                                                       clone_scores, state_device)
            if state_device is None:
                state_device = top.device
                all_top = torch.zeros(n, self.max_k, dtype=torch.long, device=state_device)
            if masked_top is not None:  # what _update does with the flags
                top = top.masked_fill(masked_top, self.num_items)
            all_top[start:end] = top
        # Ranks without a block (or nobody to evaluate) still take part in the collective.
        if state_device is None:
            if dist.get_backend() == 'nccl':
                state_device = torch.device('cuda', torch.cuda.current_device())
            else:
                state_device = torch.device('cpu')
            all_top = torch.zeros(n, self.max_k, dtype=torch.long, device=state_device)
        dist.all_reduce(all_top, op=dist.ReduceOp.SUM)
        collection, hits = self._new_state(state_device)
        for start in starts:
            end = min(start + self.batch_size, n)
            self._update(collection, hits, all_top[start:end], torch.arange(start, end), None)
        return self._finish(collection, hits, int(self.heldout_count.sum()))

    @torch.no_grad()
    def evaluate_topk(self, topk_items: Tensor, users: Tensor) -> Dict[str, float]:
        r"""Metrics of already ranked lists (e.g. from an approximate index).

        Masked items in the lists are never counted as hits; users without held-out items
        are skipped; the average is over the remaining given users.

        Args:
            topk_items (Tensor): :obj:`[N, L]` item ids, best first, :math:`L \ge`
                :obj:`min(max(ks), num_items)`.
            users (Tensor): :obj:`[N]` user ids of the rows, each at most once.

        Returns:
            dict: as :meth:`evaluate`.
        """
        name = self.__class__.__name__
        if topk_items.dim() != 2 or users.dim() != 1 or users.numel() != topk_items.size(0):
            raise ValueError(f"'{name}' expects 'topk_items' [N, L] and 'users' [N] "
                             f"(got {tuple(topk_items.size())} and {tuple(users.size())})")
        if topk_items.size(1) < self.max_k:
            raise ValueError(f"'{name}' needs at least {self.max_k} ranked items per user "
                             f"(got {topk_items.size(1)})")
        device = topk_items.device
        top = topk_items[:, :self.max_k].long()
        if top.numel() > 0 and (int(top.min()) < 0 or int(top.max()) >= self.num_items):
            raise ValueError(f"'{name}' found an item id in 'topk_items' outside "
                             f"[0, {self.num_items})")
        rows = self.user_to_row[users.long().cpu()]
        if torch.unique(users).numel() != users.numel():
            raise ValueError(f"'{name}' expects every user at most once in 'users'")
        keep = rows >= 0
        rows, top = rows[keep], top[keep.to(device)]
        collection, hits = self._new_state(device)
        for start in range(0, rows.numel(), self.batch_size):
            r = rows[start:start + self.batch_size]
            t = top[start:start + self.batch_size]
            local, col = self._rows_csr(self.mask_rowptr, self.mask_col, r)
            masked_top = self._member(local.to(device), col.to(device), t, self.num_items)
            self._update(collection, hits, t, r, masked_top)
        return self._finish(collection, hits, int(self.heldout_count[rows].sum()))

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(num_users={self.num_users}, '
                f'num_items={self.num_items}, evaluated={self.num_eval_users}, '
                f'ks={self.ks}, metrics={self.metrics})')


def _model_device(model) -> torch.device:
    for t in getattr(model, 'parameters', lambda: iter(()))():
        return t.device
    for t in getattr(model, 'buffers', lambda: iter(()))():
        return t.device
    return torch.device('cpu')


@torch.no_grad()
def evaluate(
    model,
    data: HeteroData,
    split: str = 'test',
    ks: Sequence[int] = DEFAULT_KS,
    batch_size: int = 1024,
    device: Optional[Union[str, torch.device]] = None,
    **kwargs,
) -> Dict[str, float]:
    r"""Full-ranking evaluation of :obj:`model` on :obj:`split` of :obj:`data`.

    Puts the model in evaluation mode, ranks with :meth:`model.score` and restores the
    previous mode afterwards.

    Args:
        model: an object with :meth:`score` (:obj:`[B]` user ids :math:`\rightarrow`
            :obj:`[B, num_items]` scores), :meth:`eval` and :obj:`training` (e.g. a
            :class:`~mrdib_pyg.nn.models.base.Recommender`).
        data (HeteroData): the dataset.
        split (str): :obj:`'val'` or :obj:`'test'`. (default: :obj:`'test'`)
        ks (sequence of int): cut-offs. (default: :obj:`(5, 10, 20, 50)`)
        batch_size (int): users per block (:class:`FullRankEvaluator`).
            (default: :obj:`1024`)
        device (str or torch.device, optional): device of the user ids passed to
            :meth:`score`. (default: the device of the model's first parameter or buffer)
        **kwargs: forwarded to :meth:`FullRankEvaluator.from_data` (e.g. :obj:`mask`,
            :obj:`metrics`, :obj:`round_to`).

    Returns:
        dict: as :meth:`FullRankEvaluator.evaluate`.
    """
    evaluator = FullRankEvaluator.from_data(data, split=split, ks=ks, batch_size=batch_size,
                                            **kwargs)
    if device is None:
        device = _model_device(model)
    was_training = bool(getattr(model, 'training', False))
    model.eval()
    try:
        return evaluator.evaluate(model.score, device=device)
    finally:
        if was_training and hasattr(model, 'train'):
            model.train()
