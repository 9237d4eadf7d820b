r"""The one output type every backbone returns (the batch type it is trained on,
:class:`~mrdib_pyg.data.sampling.BPRBatch`, lives with its sampler and is re-exported here).

A backbone's forward pass produces *full tables* (every user, every item), not batch rows:
the trainer indexes the batch, the evaluator scores user blocks against the item table, and
the MRdIB plug-in reads the per-modality parts. Nothing else connects a backbone to MRdIB,
so neither imports the other.
"""
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Mapping, Optional, Sequence

from torch import Tensor

from mrdib_pyg.data.sampling import BPRBatch  # noqa: F401  (re-exported: it lives with its sampler)


@dataclass
class ModalityOutput:
    r"""One modality's representations, as a backbone exposes them to plug-ins.

    Args:
        item (Tensor): :obj:`[num_items, d_m]` item representation of this modality.
        user (Tensor, optional): :obj:`[num_users, d_u]` matching user representation, for
            backbones that have one per modality (MMGCN, DualGNN, MGCN). :obj:`None` means
            "score with :attr:`RecOutput.user`" (or the part of it named by
            :attr:`RecOutput.modality_user`).
    """
    item: Tensor
    user: Optional[Tensor] = None


class LazyModalities(Mapping[str, ModalityOutput]):
    r"""A read-only :obj:`{modality: ModalityOutput}` mapping whose values are computed on
    first read, for :attr:`RecOutput.modalities` tables that only a plug-in or a loss term
    may need (FREEDOM at :obj:`reg_weight=0` without MRdIB projects no 4,096-d features).
    The names are known up front, so iterating, :obj:`len` and :obj:`in` compute nothing.
    A table is computed in the autograd mode of its first read (read first under
    :func:`torch.no_grad`, it carries no graph) and then kept.

    Args:
        names (sequence of str): the modalities, in order.
        compute (callable): :obj:`compute(name)` returns that modality's
            :class:`ModalityOutput`; called at most once per name.
    """
    def __init__(self, names: Sequence[str], compute: Callable[[str], ModalityOutput]):
        self._names = list(names)
        self._compute = compute
        self._values: Dict[str, ModalityOutput] = {}

    def __getitem__(self, name: str) -> ModalityOutput:
        if name not in self._values:
            if name not in self._names:
                raise KeyError(name)
            self._values[name] = self._compute(name)
        return self._values[name]

    def __contains__(self, name) -> bool:  # Mapping's would compute the table
        return name in self._names

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)

    def computed(self) -> List[str]:
        r"""The names whose tables have been computed so far."""
        return [m for m in self._names if m in self._values]

    def __repr__(self) -> str:
        return f'{self.__class__.__name__}({self._names}, computed={self.computed()})'


@dataclass
class RecOutput:
    r"""What a backbone's forward pass returns.

    Args:
        user (Tensor): :obj:`[num_users, d]` final user table, the one the score uses.
        item (Tensor): :obj:`[num_items, d]` final item table; the score is
            :obj:`user @ item.T`.
        modalities (dict): modality name :math:`\rightarrow` :class:`ModalityOutput` (any
            mapping, e.g. a :class:`LazyModalities`). Empty for ID-only backbones (BPR-MF,
            LightGCN), which MRdIB refuses.
        modality_user (Tensor, optional): :obj:`[num_users, d_u]` the user representation that
            pairs with the modality items when a modality has no user table of its own
            (VBPR: the content half of the user vector).
        extras (dict): anything a backbone's own loss needs beyond the tables (e.g. layer-0
            embeddings for the regulariser).
    """
    user: Tensor
    item: Tensor
    modalities: Mapping[str, ModalityOutput] = field(default_factory=dict)
    modality_user: Optional[Tensor] = None
    extras: Dict[str, Tensor] = field(default_factory=dict)

    def modality_user_table(self, name: str) -> Tensor:
        r"""The user table that pairs with modality :obj:`name`'s item table."""
        m = self.modalities[name]
        if m.user is not None:
            return m.user
        if self.modality_user is not None:
            return self.modality_user
        return self.user
