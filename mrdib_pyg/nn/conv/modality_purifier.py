r"""MGCN's behaviour-guided purifier: item ID embeddings gated by one modality's features."""
import torch
from torch import Tensor, nn


class ModalityPurifier(nn.Module):
    r"""The behaviour-guided purifier of `"Multi-View Graph Convolutional Network for
    Multimedia Recommendation" <https://arxiv.org/abs/2308.03588>`_ (MGCN): a modality's
    features, projected to the embedding width, gate the item ID embeddings element-wise,

    .. math::
        \tilde{\mathbf{e}}^m_i = \mathbf{e}_i \odot
        \sigma\big(\mathbf{W}_2 (\mathbf{W}_1 \mathbf{f}^m_i + \mathbf{b}_1) + \mathbf{b}_2\big),

    so only the feature directions that agree with the collaborative (ID) signal pass.
    :math:`\mathbf{W}_1` is MMRec's ``image_trs`` / ``text_trs`` (:attr:`proj`) and
    :math:`\mathbf{W}_2` its ``gate_v`` / ``gate_t`` (:attr:`gate`); both keep PyTorch's
    default :class:`~torch.nn.Linear` initialisation, as in MMRec. One purifier serves one
    modality; the features may be a fixed buffer or a trained table (MMRec trains them).

    Args:
        in_channels (int): feature width :math:`F_m` (e.g. 4096 for CNN image features).
        channels (int): embedding width :math:`d`.

    Shapes:
        - **input:** ID embeddings :math:`(N, d)`, features :math:`(N, F_m)`
        - **output:** :math:`(N, d)`
    """

    def __init__(self, in_channels: int, channels: int):
        super().__init__()
        if in_channels < 1 or channels < 1:
            raise ValueError(f"'{self.__class__.__name__}' needs positive widths "
                             f"(got in_channels={in_channels}, channels={channels})")
        self.in_channels = in_channels
        self.channels = channels
        self.proj = nn.Linear(in_channels, channels)
        self.gate = nn.Linear(channels, channels)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.proj.reset_parameters()
        self.gate.reset_parameters()

    def gate_values(self, feat: Tensor) -> Tensor:
        r"""The gate :math:`\sigma(\mathbf{W}_2(\mathbf{W}_1 \mathbf{f} + \mathbf{b}_1) +
        \mathbf{b}_2) \in (0, 1)^{N \times d}`."""
        return torch.sigmoid(self.gate(self.proj(feat)))

    def forward(self, x: Tensor, feat: Tensor) -> Tensor:
        if x.dim() != 2 or feat.dim() != 2 or x.size(0) != feat.size(0):
            raise ValueError(f"'{self.__class__.__name__}' needs [N, d] embeddings and "
                             f"[N, F] features with the same N (got {tuple(x.shape)} and "
                             f"{tuple(feat.shape)})")
        return x * self.gate_values(feat)

    def extra_repr(self) -> str:
        return f'{self.in_channels}, {self.channels}'
