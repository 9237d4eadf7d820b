r"""The one output type every backbone returns (the batch type it is trained on,
:class:`~mrdib_pyg.data.sampling.BPRBatch`, lives with its sampler and is re-exported here).

A backbone's forward pass produces *full tables* (every user, every item), not batch rows:
the trainer indexes the batch, the evaluator scores user blocks against the item table, and
the MRdIB plug-in reads the per-modality parts. Nothing else connects a backbone to MRdIB,
so neither imports the other.
"""
from dataclasses import dataclass, field
from typing import Dict, Optional

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


@dataclass
class RecOutput:
    r"""What a backbone's forward pass returns.

    Args:
        user (Tensor): :obj:`[num_users, d]` final user table, the one the score uses.
        item (Tensor): :obj:`[num_items, d]` final item table; the score is
            :obj:`user @ item.T`.
        modalities (dict): modality name :math:`\rightarrow` :class:`ModalityOutput`. Empty for
            ID-only backbones (BPR-MF, LightGCN), which MRdIB refuses.
        modality_user (Tensor, optional): :obj:`[num_users, d_u]` the user representation that
            pairs with the modality items when a modality has no user table of its own
            (VBPR: the content half of the user vector).
        extras (dict): anything a backbone's own loss needs beyond the tables (e.g. layer-0
            embeddings for the regulariser).
    """
    user: Tensor
    item: Tensor
    modalities: Dict[str, ModalityOutput] = field(default_factory=dict)
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
