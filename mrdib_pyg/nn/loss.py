r"""Loss functions shared by the backbones and the MRdIB heads (MMRec's definitions)."""
from typing import Sequence

import torch
from torch import Tensor


def bpr_loss(pos_score: Tensor, neg_score: Tensor) -> Tensor:
    r"""Bayesian personalised ranking loss, as MMRec's ``BPRLoss``:

    .. math::
        -\frac{1}{B}\sum_b \log\left(10^{-10} + \sigma(s^+_b - s^-_b)\right)

    The :math:`10^{-10}` is MMRec's (a numerically safer ``logsigmoid`` would change values
    slightly on saturated pairs, so we keep theirs).
    """
    return -torch.log(1e-10 + torch.sigmoid(pos_score - neg_score)).mean()


def emb_loss(embeddings: Sequence[Tensor], batch_size: int) -> Tensor:
    r"""MMRec's ``EmbLoss``: the sum of plain (not squared) Frobenius norms of the given
    tensors, divided by the batch size."""
    return sum(torch.norm(e, p=2) for e in embeddings) / batch_size


def l2_loss(embeddings: Sequence[Tensor], batch_size: int) -> Tensor:
    r"""Half the squared L2 norm divided by the batch size (LATTICE/FREEDOM/MGCN style)."""
    return sum(e.pow(2).sum() for e in embeddings) / (2 * batch_size)
