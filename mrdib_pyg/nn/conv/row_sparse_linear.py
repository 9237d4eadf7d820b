r"""A linear layer over a whole feature table whose backward pass costs only the rows that
receive a gradient."""
import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable
from torch.nn import functional as F


class _RowSparseLinear(torch.autograd.Function):
    r""":math:`Y = XW^\top + b` with a backward over the non-zero rows of
    :math:`\partial L / \partial Y` only."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return F.linear(x, weight, bias)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad
        rows = grad.ne(0).any(dim=1).nonzero().squeeze(1)
        dense = rows.numel() == grad.size(0)
        g = grad if dense else grad.index_select(0, rows)
        grad_x = grad_w = grad_b = None
        if need_x:
            gx = g @ weight
            grad_x = gx if dense else x.new_zeros(x.shape).index_copy_(0, rows, gx)
        if need_w:
            grad_w = g.t() @ (x if dense else x.index_select(0, rows))
        if need_b and ctx.has_bias:
            grad_b = g.sum(0)
        return grad_x, grad_w, grad_b


class RowSparseLinear(nn.Linear):
    r"""An :class:`torch.nn.Linear` for projecting a whole table of item features when each
    training step uses only some rows of the result.

    The forward pass is :class:`~torch.nn.Linear`'s, :math:`\mathbf{Y} = \mathbf{X}
    \mathbf{W}^\top + \mathbf{b}`, and the gradients are the same. The backward pass finds
    the rows of :math:`\partial L / \partial \mathbf{Y}` that are not zero (the items the
    step read) and multiplies only those: the weight gradient
    :math:`\mathbf{G}_R^\top \mathbf{X}_R` and the input gradient :math:`\mathbf{G}_R
    \mathbf{W}` (zero elsewhere) cost :math:`|R|` rows instead of all :math:`N`. This
    helps when :math:`\mathbf{X}` is wide (e.g. 7,050 × 4,096 image features) and the
    full projection is needed anyway (e.g. for a target view), but a batch reads the
    gradient of a few thousand rows. When every row has a gradient, the backward pass is
    the dense one. Inputs other than 2-D tables go through :func:`F.linear` as they are.

    The weight gradient sums the same terms as the dense product, in another order, so it
    matches :class:`~torch.nn.Linear`'s to float rounding. The backward pass is not
    differentiable again (no double backward). Parameters, initialisation and
    :meth:`state_dict` keys are :class:`~torch.nn.Linear`'s.
    """

    def forward(self, x: Tensor) -> Tensor:
        tracked = x.requires_grad or self.weight.requires_grad or (
            self.bias is not None and self.bias.requires_grad)
        if x.dim() != 2 or not (torch.is_grad_enabled() and tracked):
            return F.linear(x, self.weight, self.bias)
        return _RowSparseLinear.apply(x, self.weight, self.bias)
