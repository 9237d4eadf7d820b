r"""BPR mini-batches with MMRec's negative sampling, vectorised."""
from typing import Any, Dict, Iterator, NamedTuple, Tuple

import torch
from torch import Tensor


class BPRBatch(NamedTuple):
    r"""A batch of BPR triples: user :math:`u` prefers the observed item :obj:`pos` over the
    sampled item :obj:`neg`. All three are :obj:`[B]` long tensors of global ids."""
    users: Tensor
    pos: Tensor
    neg: Tensor

    def to(self, device) -> 'BPRBatch':
        return BPRBatch(*(t.to(device, non_blocking=True) for t in self))

    def rows(self, user: Tensor, item: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        r"""The batch's rows of a user and an item table, :obj:`([B, *], [B, *], [B, *])`
        for (users, positives, negatives). :meth:`~torch.Tensor.index_select`: the same
        values as :obj:`user[batch.users]`, with a faster forward and backward on a CPU."""
        return (user.index_select(0, self.users), item.index_select(0, self.pos),
                item.index_select(0, self.neg))

    def reindex_items(self) -> Tuple[Tensor, 'BPRBatch']:
        r"""The distinct items of :obj:`pos` :math:`\cup` :obj:`neg` (sorted) and the batch
        with its items replaced by their rows in that list: for a backbone that computes
        item rows for the batch's items only (:meth:`Recommender.forward_batch
        <mrdib_pyg.nn.models.Recommender.forward_batch>`)."""
        items, inverse = torch.unique(torch.cat([self.pos, self.neg]), return_inverse=True)
        B = self.pos.numel()
        return items, BPRBatch(self.users, inverse[:B], inverse[B:])


class BPRSampler:
    r"""Iterates over the training interactions in shuffled mini-batches of
    (user, positive, negative) triples, one epoch per :obj:`iter()`.

    Negatives follow MMRec's ``TrainDataLoader``: one per positive, drawn uniformly from the
    items that occur in training, and redrawn while the user has it in training. MMRec
    redraws per row in a Python loop; we redraw all collisions of a batch at once, which
    gives the same distribution.

    All randomness comes from the sampler's own :obj:`generator`, so :meth:`state_dict` after
    an epoch and :meth:`load_state_dict` in a fresh sampler make it draw exactly the batches
    the first one would have drawn next (a resumed run continues the same stream).

    For distributed training, :obj:`rank`/:obj:`world_size` give each process a disjoint
    share of every *global* batch: every rank draws the whole epoch exactly as a 1-process
    sampler with the same :obj:`seed` and :obj:`batch_size` would (the same permutation and
    the same negatives, all from the shared generator, which therefore stays identical on all
    ranks), and yields only the rows :obj:`rank::world_size` of each global batch. So
    :obj:`batch_size` is the GLOBAL batch size (it need not be divisible by
    :obj:`world_size`: the shares then differ by one row, which a count-weighted gradient
    average accounts for), the union of the ranks' batches is the 1-process batch, and every
    rank has the same number of batches. A final global batch with fewer than
    :obj:`world_size` rows (at most :obj:`world_size - 1` triples per epoch) would leave a
    rank empty and is skipped on every rank when :obj:`world_size > 1`.

    Args:
        edge_index (Tensor): :obj:`[2, E]` (user, item) training pairs (deduplicated).
        num_users (int), num_items (int): id ranges.
        batch_size (int, optional): (default: :obj:`2048`, MMRec's)
        seed (int, optional): seed of the sampler's own generator. (default: :obj:`0`)
        rank (int, optional), world_size (int, optional): distributed share (see above).
    """

    def __init__(self, edge_index: Tensor, num_users: int, num_items: int,
                 batch_size: int = 2048, seed: int = 0, rank: int = 0, world_size: int = 1,
                 drop_last: bool = False):
        if batch_size < 1:
            raise ValueError(f"'{self.__class__.__name__}' needs batch_size >= 1 "
                             f"(got {batch_size})")
        self.users, self.items = edge_index[0].long().cpu(), edge_index[1].long().cpu()
        self.num_users, self.num_items = num_users, num_items
        self.batch_size = batch_size
        if not 0 <= rank < world_size:
            raise ValueError(f"'{self.__class__.__name__}' needs 0 <= rank < world_size "
                             f"(got rank={rank}, world_size={world_size})")
        self.rank, self.world_size = rank, world_size
        self.drop_last = drop_last
        self.generator = torch.Generator().manual_seed(seed)
        self.candidates = torch.unique(self.items)  # items seen in training
        # Sorted (user * I + item) keys make "does u have i?" a binary search.
        self.keys = torch.unique(self.users * num_items + self.items)
        if self.candidates.numel() == 0:
            raise ValueError(f"'{self.__class__.__name__}' got no training interactions")

    def has_interaction(self, users: Tensor, items: Tensor) -> Tensor:
        q = users * self.num_items + items
        pos = torch.searchsorted(self.keys, q).clamp_(max=self.keys.numel() - 1)
        return self.keys[pos] == q

    def sample_negatives(self, users: Tensor) -> Tensor:
        draw = lambda n: self.candidates[torch.randint(  # noqa: E731
            self.candidates.numel(), (n, ), generator=self.generator)]
        neg = draw(users.numel())
        bad = self.has_interaction(users, neg)
        for _ in range(1000):  # a user who rated every candidate would loop forever
            if not bool(bad.any()):
                return neg
            idx = bad.nonzero().view(-1)
            neg[idx] = draw(idx.numel())
            bad[idx] = self.has_interaction(users[idx], neg[idx])
        raise RuntimeError(f"'{self.__class__.__name__}' could not find negatives for users "
                           f"{users[bad].unique().tolist()[:10]}: they interacted with "
                           f"(nearly) every training item")

    def state_dict(self) -> Dict[str, Any]:
        r"""The generator's state (taken between epochs: an epoch in progress is not saved)."""
        return {'generator': self.generator.get_state(),
                'num_interactions': int(self.users.numel())}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        n = state.get('num_interactions')
        if n is not None and int(n) != self.users.numel():
            raise ValueError(f"'{self.__class__.__name__}': the saved state is of a sampler over "
                             f"{n} training interactions, this one has {self.users.numel()}")
        self.generator.set_state(state['generator'])

    def _epoch_rows(self) -> Tensor:
        return torch.randperm(self.users.numel(), generator=self.generator)

    def __len__(self) -> int:
        n = self.users.numel()
        if self.drop_last:
            return n // self.batch_size
        full, tail = divmod(n, self.batch_size)
        return full + (tail >= self.world_size if self.world_size > 1 else tail > 0)

    def __iter__(self) -> Iterator[BPRBatch]:
        rows = self._epoch_rows()
        for start in range(0, rows.numel(), self.batch_size):
            idx = rows[start:start + self.batch_size]
            if self.drop_last and idx.numel() < self.batch_size:
                break
            if idx.numel() < self.world_size:  # a rank would get nothing (see the class)
                break
            users = self.users[idx]
            neg = self.sample_negatives(users)  # the whole global batch's: same on all ranks
            if self.world_size > 1:
                share = slice(self.rank, None, self.world_size)
                users, idx, neg = users[share], idx[share], neg[share]
            yield BPRBatch(users, self.items[idx], neg)
