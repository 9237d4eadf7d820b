r"""LGMRec's local modality graph embedding: projected item features and their per-user
means, propagated on the user–item graph."""
from typing import Optional

import torch
from torch import Tensor, nn

from mrdib_pyg.nn.conv.lg_propagation import LGPropagation
from mrdib_pyg.nn.conv.sparse_op import SparseOperator

__all__ = ['ModalityGraphEmbedding']


class ModalityGraphEmbedding(nn.Module):
    r"""The modality graph embedding (MGE) of `"LGMRec: Local and Global Graph Learning for
    Multimodal Recommendation" <https://arxiv.org/abs/2312.16400>`_ (AAAI 2024) for one
    modality: items start from their fixed raw features projected by a learned matrix,
    users from the mean of their items' projections, and both are propagated :math:`L`
    times on the symmetric-normalised user–item adjacency :math:`\hat{A}` (the last layer
    is kept, no layer mean):

    .. math::
        \mathbf{I}^{(0)} = \mathbf{F}_m \mathbf{W}_m, \qquad
        \mathbf{U}^{(0)} = \mathbf{D}_U^{-1} \mathbf{R}\, \mathbf{I}^{(0)}, \qquad
        \begin{bmatrix}\mathbf{U}^m \\ \mathbf{I}^m\end{bmatrix} = \hat{A}^{L}
        \begin{bmatrix}\mathbf{U}^{(0)} \\ \mathbf{I}^{(0)}\end{bmatrix}

    with :math:`\mathbf{D}_U^{-1}\mathbf{R}` the row-normalised user→item matrix (declare
    it as ``UserItemGraph(norm='row', block='user_item')``; MMRec multiplies the raw sum by
    :math:`1/(d_u + 10^{-7})`, equal to float precision). :math:`\mathbf{W}_m` is MMRec's
    ``item_image_trs`` / ``item_text_trs`` (:math:`[F_m, d]`, no bias, Xavier-uniform).

    Args:
        in_channels (int): raw feature width :math:`F_m`.
        channels (int): embedding width :math:`d`.
        num_layers (int, optional): :math:`L \ge 0` (MMRec's ``n_mm_layers``).
            (default: :obj:`2`)

    Shapes:
        - **input:** features :math:`(I, F_m)`, :math:`\mathbf{D}_U^{-1}\mathbf{R}`
          :math:`(U, I)` and :math:`\hat{A}` :math:`(U+I, U+I)` as
          :class:`~mrdib_pyg.nn.conv.SparseOperator`
        - **output:** :math:`(U+I, d)`, users first
    """

    def __init__(self, in_channels: int, channels: int, num_layers: int = 2):
        super().__init__()
        if in_channels < 1 or channels < 1:
            raise ValueError(f"'{self.__class__.__name__}' needs positive widths "
                             f"(got in_channels={in_channels}, channels={channels})")
        self.in_channels = in_channels
        self.channels = channels
        self.propagation = LGPropagation(num_layers, combine='last')
        self.weight = nn.Parameter(torch.empty(in_channels, channels))
        self.reset_parameters()

    @property
    def num_layers(self) -> int:
        return self.propagation.num_layers

    def reset_parameters(self) -> None:
        nn.init.xavier_uniform_(self.weight)

    def initial(self, x: Tensor, user_mean: SparseOperator) -> Tensor:
        r"""The layer-0 table :math:`[\mathbf{U}^{(0)}; \mathbf{I}^{(0)}]`, :obj:`[U+I, d]`
        (a model that propagates several tables on the same :math:`\hat{A}` concatenates
        these and propagates once)."""
        if x.dim() != 2 or x.size(1) != self.in_channels:
            raise ValueError(f"'{self.__class__.__name__}' expects [I, {self.in_channels}] "
                             f"features (got {tuple(x.shape)})")
        item = x @ self.weight
        return torch.cat([user_mean(item), item], dim=0)

    def forward(self, x: Tensor, user_mean: SparseOperator,
                adj: Optional[SparseOperator] = None) -> Tensor:
        h = self.initial(x, user_mean)
        if adj is None:
            if self.num_layers > 0:
                raise ValueError(f"'{self.__class__.__name__}' with num_layers="
                                 f"{self.num_layers} needs the adjacency")
            return h
        return self.propagation(h, adj)

    def extra_repr(self) -> str:
        return f'{self.in_channels}, {self.channels}, num_layers={self.num_layers}'
