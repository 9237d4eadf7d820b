r"""Loss functions shared by the backbones and the MRdIB heads (MMRec's definitions)."""
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def bpr_loss(pos_score: Tensor, neg_score: Tensor, dim: Optional[int] = None) -> Tensor:
    r"""Bayesian personalised ranking loss, as MMRec's ``BPRLoss``:

    .. math::
        -\frac{1}{B}\sum_b \log\left(10^{-10} + \sigma(s^+_b - s^-_b)\right)

    The :math:`10^{-10}` is MMRec's (a numerically safer ``logsigmoid`` would change values
    slightly on saturated pairs, so we keep theirs). The mean runs over every element, or
    over dimension :obj:`dim` only (e.g. :obj:`[B, H]` scores of :math:`H` heads give
    :math:`H` losses).
    """
    loss = -torch.log(1e-10 + torch.sigmoid(pos_score - neg_score))
    return loss.mean() if dim is None else loss.mean(dim)


def emb_loss(embeddings: Sequence[Tensor], batch_size: int) -> Tensor:
    r"""MMRec's ``EmbLoss``: the sum of plain (not squared) Frobenius norms of the given
    tensors, divided by the batch size."""
    return sum(torch.norm(e, p=2) for e in embeddings) / batch_size


def l2_loss(embeddings: Sequence[Tensor], batch_size: int) -> Tensor:
    r"""Half the squared L2 norm divided by the batch size (LATTICE/FREEDOM/MGCN style)."""
    return sum(e.pow(2).sum() for e in embeddings) / (2 * batch_size)


def interleaved_id_reg(id_embedding: Tensor, num_users: int, users: Tensor, pos: Tensor,
                       neg: Tensor) -> Tensor:
    r"""The id-embedding regulariser of MMRec's MMGCN and GRCN on a user-then-item table
    :math:`E` (:obj:`[U + I, d]`): MMRec takes the mean of :math:`E^2` over the interleaved
    :math:`[u, u]` and :math:`[i^+, i^-]` rows, which equals

    .. math::
        \operatorname{mean}(E_u^2) + \tfrac{1}{2}\big(\operatorname{mean}(E_{U+i^+}^2)
        + \operatorname{mean}(E_{U+i^-}^2)\big).
    """
    return (id_embedding.index_select(0, users).pow(2).mean()
            + 0.5 * (id_embedding.index_select(0, num_users + pos).pow(2).mean()
                     + id_embedding.index_select(0, num_users + neg).pow(2).mean()))


def info_nce(view1: Tensor, view2: Tensor, temperature: float) -> Tensor:
    r"""The in-batch InfoNCE loss of MGCN and SOIL (MMRec's ``InfoNCE``): row :math:`n` of
    :obj:`view1` must pick row :math:`n` of :obj:`view2` among all rows of :obj:`view2`,

    .. math::
        \mathcal{L} = -\frac{1}{B}\sum_{n} \log
        \frac{\exp(\hat{\mathbf{a}}_n^\top \hat{\mathbf{b}}_n / \tau)}
             {\sum_{k} \exp(\hat{\mathbf{a}}_n^\top \hat{\mathbf{b}}_k / \tau)},
        \qquad \hat{\mathbf{a}} = \mathbf{a} / \|\mathbf{a}\|

    Computed in the log-sum-exp form of the same value (MMRec takes the log of a ratio of
    exponentials): :math:`\log\sum_k \exp(\cdot)` over the :math:`B \times B` logits minus
    the matched pair's logit, which is a row-wise dot product; :math:`1/\tau` scales the
    :obj:`[B, d]` anchors before the product, so no :math:`B \times B` division, one-hot
    target or gather is computed; as the logits are bounded by :math:`1/\tau`, the
    log-sum-exp needs no max shift for :math:`\tau \ge 0.02` (one exponential pass). Rows
    are used as given: a user drawn twice in a batch is its own negative, as in MMRec.

    Args:
        view1 (Tensor): :obj:`[B, d]` anchors.
        view2 (Tensor): :obj:`[B, d]` positives (row-aligned) and in-batch negatives.
        temperature (float): :math:`\tau`.
    """
    a = F.normalize(view1, dim=1) * (1.0 / temperature)
    b = F.normalize(view2, dim=1)
    logits = a @ b.t()
    if temperature >= 0.02:  # cosine logits lie in [-1/tau, 1/tau]: exp cannot overflow
        log_partition = logits.exp().sum(1).log()
    else:
        log_partition = torch.logsumexp(logits, dim=1)
    return (log_partition - (a * b).sum(-1)).mean()
