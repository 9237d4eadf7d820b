r"""MGCN's behaviour-aware fuser: shared attention plus preference-gated modality parts
(SOIL's: the same attention without the gates)."""
from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor, nn


class AttentionFuser(nn.Module):
    r"""The behaviour-aware fuser of `"Multi-View Graph Convolutional Network for
    Multimedia Recommendation" <https://arxiv.org/abs/2308.03588>`_ (MGCN), for any number
    :math:`M` of modality views :math:`\mathbf{x}^1, \dots, \mathbf{x}^M` of the same nodes
    and a behaviour ("content") view :math:`\mathbf{h}`:

    .. math::
        a^m_n &= \mathbf{q}^\top \tanh(\mathbf{W} \mathbf{x}^m_n + \mathbf{b}), \qquad
        \boldsymbol{\alpha}_n = \operatorname{softmax}_m(a^m_n), \qquad
        \mathbf{c}_n = \sum_m \alpha^m_n \mathbf{x}^m_n

        \mathbf{s}^m_n &= \sigma(\mathbf{W}_m \mathbf{h}_n + \mathbf{b}_m) \odot
        (\mathbf{x}^m_n - \mathbf{c}_n), \qquad
        \mathbf{z}_n = \frac{1}{M + 1}\Big(\sum_m \mathbf{s}^m_n + \mathbf{c}_n\Big)

    The attention (:attr:`query`: :obj:`Linear(d, d)`, :obj:`tanh`,
    :obj:`Linear(d, 1, bias=False)`) is shared by the modalities and gives the common part
    :math:`\mathbf{c}`; each modality's specific part :math:`\mathbf{x}^m - \mathbf{c}` is
    gated by its own preference gate (:attr:`gates`) read from the behaviour view. The
    output :math:`\mathbf{z}` is MGCN's "side" embedding (the model adds it to
    :math:`\mathbf{h}`).

    MMRec hard-codes two modalities (image, text; ``query_common``, ``gate_image_prefer``,
    ``gate_text_prefer``) and divides by 3; for :math:`M = 2` this layer computes the same
    thing, and the result does not depend on the order of the modalities (the softmax and
    the sums are symmetric) as long as the gates follow their views. With :math:`M = 1`
    the specific part is zero and :math:`\mathbf{z} = \mathbf{x}^1 / 2`.

    **Without gates** (:obj:`gates=False`) every gate is one and no behaviour view is read:
    :math:`\mathbf{z}_n = \frac{1}{M+1}\big(\sum_m \mathbf{x}^m_n - (M-1)\,\mathbf{c}_n\big)`,
    the fuser of `"Contrastive Second-Order Interest Learning for Multimodal
    Recommendation" <https://doi.org/10.1145/3664647.3681207>`_ (SOIL, its code's
    ``(image + text - common) / 3``, computed in that order; the paper's Eq. 14 up to the
    :math:`1/3`).

    Args:
        channels (int): embedding width :math:`d`.
        num_modalities (int): :math:`M \ge 1`.
        gates (bool, optional): MGCN's preference gates (:obj:`True`) or none (SOIL).
            (default: :obj:`True`)

    Shapes:
        - **input:** :math:`M` modality views :math:`(N, d)` each (a sequence), behaviour
          view :math:`(N, d)` (ignored, and optional, without gates)
        - **output:** :math:`(N, d)`
    """

    def __init__(self, channels: int, num_modalities: int, gates: bool = True):
        super().__init__()
        if channels < 1 or num_modalities < 1:
            raise ValueError(f"'{self.__class__.__name__}' needs channels >= 1 and "
                             f"num_modalities >= 1 (got {channels}, {num_modalities})")
        self.channels = channels
        self.num_modalities = num_modalities
        self.query = nn.Sequential(nn.Linear(channels, channels), nn.Tanh(),
                                   nn.Linear(channels, 1, bias=False))
        self.gated = bool(gates)
        self.gates = nn.ModuleList(nn.Linear(channels, channels)
                                   for _ in range(num_modalities if gates else 0))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # PyTorch's default Linear initialisation, as MMRec.
        self.query[0].reset_parameters()
        self.query[2].reset_parameters()
        for gate in self.gates:
            gate.reset_parameters()

    def _stack(self, xs: Sequence[Tensor]) -> Tensor:
        if len(xs) != self.num_modalities:
            raise ValueError(f"'{self.__class__.__name__}' was built for "
                             f"{self.num_modalities} modalities (got {len(xs)} views)")
        x = torch.stack(list(xs), dim=0)
        if x.dim() != 3 or x.size(-1) != self.channels:
            raise ValueError(f"'{self.__class__.__name__}' needs [N, {self.channels}] views "
                             f"(got {tuple(xs[0].shape)})")
        return x

    def attention(self, xs: Sequence[Tensor]) -> Tuple[Tensor, Tensor]:
        r"""The attention weights :math:`\boldsymbol{\alpha}` :obj:`[M, N]` (each column
        sums to one) and the common part :math:`\mathbf{c}` :obj:`[N, d]`."""
        x = self._stack(xs)
        # One pass of the shared query over all views.
        alpha = torch.softmax(self.query(x).squeeze(-1), dim=0)
        return alpha, (alpha.unsqueeze(-1) * x).sum(0)

    def forward(self, xs: Sequence[Tensor], h: Optional[Tensor] = None) -> Tensor:
        _, common = self.attention(xs)
        if not self.gated:
            total = xs[0]
            for x in xs[1:]:
                total = total + x
            return (total - (self.num_modalities - 1) * common) / (self.num_modalities + 1)
        if h is None:
            raise ValueError(f"'{self.__class__.__name__}' with gates needs the behaviour "
                             f"view h")
        if h.shape != common.shape:
            raise ValueError(f"'{self.__class__.__name__}' needs a behaviour view of shape "
                             f"{tuple(common.shape)} (got {tuple(h.shape)})")
        out = None
        for x, gate in zip(xs, self.gates):
            part = torch.sigmoid(gate(h)) * (x - common)
            out = part if out is None else out + part
        # MMRec's order of the sum: the specific parts, then the common part.
        return (out + common) / (self.num_modalities + 1)

    def extra_repr(self) -> str:
        return (f'{self.channels}, num_modalities={self.num_modalities}'
                + ('' if self.gated else ', gates=False'))
