r"""Parameter-free multi-layer propagation with a layer-combination readout."""
from typing import List

import torch
from torch import Tensor, nn

from mrdib_pyg.nn.conv.sparse_op import SparseOperator


class LGPropagation(nn.Module):
    r"""The propagation of `"LightGCN: Simplifying and Powering Graph Convolution Network for
    Recommendation" <https://arxiv.org/abs/2002.02126>`_ over a precomputed normalised
    matrix :math:`\hat{A}`:

    .. math::
        \mathbf{X}^{(l+1)} = \hat{A}\, \mathbf{X}^{(l)}, \qquad
        \mathbf{X}_{\text{out}} = \operatorname{combine}\big(\mathbf{X}^{(0)}, \dots,
        \mathbf{X}^{(L)}\big)

    with :obj:`combine` the mean (LightGCN, FREEDOM, MGCN), the sum, or the last layer.
    Unlike PyG's :class:`~torch_geometric.nn.conv.LGConv` it never re-normalises per call:
    the same layer serves the user–item graph (LightGCN), item–item kNN graphs (FREEDOM,
    MGCN) and any other fixed operator.

    Args:
        num_layers (int): number of propagation steps :math:`L \ge 0`.
        combine (str, optional): :obj:`'mean'`, :obj:`'sum'` or :obj:`'last'`.
            (default: :obj:`'mean'`)

    Shapes:
        - **input:** node features :math:`(N, F)`, a :class:`SparseOperator` of shape
          :math:`(N, N)`
        - **output:** :math:`(N, F)`
    """

    def __init__(self, num_layers: int, combine: str = 'mean'):
        super().__init__()
        if num_layers < 0:
            raise ValueError(f"'{self.__class__.__name__}' needs num_layers >= 0 "
                             f"(got {num_layers})")
        if combine not in ('mean', 'sum', 'last'):
            raise ValueError(f"'{self.__class__.__name__}' got unknown combine "
                             f"'{combine}' (expected 'mean', 'sum' or 'last')")
        self.num_layers = num_layers
        self.combine = combine

    def layers(self, x: Tensor, op: SparseOperator) -> List[Tensor]:
        r"""All layer outputs :math:`[\mathbf{X}^{(0)}, \dots, \mathbf{X}^{(L)}]`."""
        out = [x]
        for _ in range(self.num_layers):
            out.append(op(out[-1]))
        return out

    def forward(self, x: Tensor, op: SparseOperator) -> Tensor:
        xs = self.layers(x, op)
        if self.combine == 'last':
            return xs[-1]
        stacked = torch.stack(xs, dim=0)
        return stacked.mean(0) if self.combine == 'mean' else stacked.sum(0)

    def extra_repr(self) -> str:
        return f'num_layers={self.num_layers}, combine={self.combine!r}'
