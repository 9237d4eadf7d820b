r"""The small base class every backbone derives from."""
from typing import Optional

import torch
from torch import Tensor, nn

from mrdib_pyg.nn.loss import bpr_loss
from mrdib_pyg.nn.output import BPRBatch, RecOutput


class Recommender(nn.Module):
    r"""Base class of the backbones.

    A backbone owns the (non-learned) graphs and features it needs as non-persistent
    buffers, so :meth:`forward` takes no input and :obj:`model.to(device)` moves everything.
    Subclasses implement:

    * :meth:`forward` :math:`\rightarrow` :class:`~mrdib_pyg.nn.output.RecOutput` (full tables);
    * :meth:`loss` — the backbone's own training loss on a :class:`BPRBatch`
      (the default is BPR on the final tables plus :meth:`regularizer`);
    * optionally :meth:`pre_epoch` (edge dropout, graph resampling, as MMRec's
      ``pre_epoch_processing``).

    :meth:`score` returns a :obj:`[len(users), num_items]` score matrix. In evaluation mode
    it computes the tables once and caches them until the module goes back to training
    mode or its parameters change through :meth:`invalidate_cache`; it never rebuilds a
    graph.
    """
    #: Whether the backbone exposes per-modality outputs (MRdIB refuses those that don't).
    multimodal: bool = False

    def __init__(self, num_users: int, num_items: int):
        super().__init__()
        self.num_users = int(num_users)
        self.num_items = int(num_items)
        self._cache: Optional[RecOutput] = None

    # -- training ---------------------------------------------------------------------
    def forward(self) -> RecOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def pre_epoch(self, epoch: int) -> None:
        r"""Hook called by the trainer before every epoch (no-op by default)."""

    def regularizer(self, out: RecOutput, batch: BPRBatch) -> Tensor:
        r"""Regularisation term of :meth:`loss` (zero by default)."""
        return out.user.new_zeros(())

    def loss(self, out: RecOutput, batch: BPRBatch) -> Tensor:
        r"""The backbone's own loss: BPR on the final tables plus :meth:`regularizer`."""
        u = out.user[batch.users]
        pos = (u * out.item[batch.pos]).sum(-1)
        neg = (u * out.item[batch.neg]).sum(-1)
        return bpr_loss(pos, neg) + self.regularizer(out, batch)

    # -- inference --------------------------------------------------------------------
    def train(self, mode: bool = True):
        self._cache = None
        return super().train(mode)

    def invalidate_cache(self) -> None:
        self._cache = None

    @torch.no_grad()
    def embeddings(self) -> RecOutput:
        r"""The tables used for ranking (cached in evaluation mode)."""
        if self.training:
            return self.forward()
        if self._cache is None:
            self._cache = self.forward()
        return self._cache

    @torch.no_grad()
    def score(self, users: Tensor) -> Tensor:
        r"""Scores of :obj:`users` against every item, :obj:`[len(users), num_items]`."""
        out = self.embeddings()
        return out.user[users] @ out.item.t()

    def extra_repr(self) -> str:
        return f'num_users={self.num_users}, num_items={self.num_items}'
