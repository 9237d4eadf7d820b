import pytest
import torch
from torch import nn

from mrdib_pyg.nn.conv import RowSparseLinear


def pair(in_dim=12, out_dim=5, bias=True, seed=0):
    torch.manual_seed(seed)
    dense = nn.Linear(in_dim, out_dim, bias=bias)
    torch.manual_seed(seed)
    sparse = RowSparseLinear(in_dim, out_dim, bias=bias)
    return dense, sparse


def grads(layer, x, rows, weights):
    x = x.detach().clone().requires_grad_(x.requires_grad)
    y = layer(x)
    loss = (y.index_select(0, rows) * weights).sum() + y[rows[:2]].pow(2).sum()
    params = [x] if x.requires_grad else []
    params += [p for p in layer.parameters()]
    return y, torch.autograd.grad(loss, params)


def test_same_parameters_and_state_dict_keys_as_linear():
    dense, sparse = pair()
    assert torch.equal(dense.weight, sparse.weight) and torch.equal(dense.bias, sparse.bias)
    assert list(dense.state_dict()) == list(sparse.state_dict())


@pytest.mark.parametrize('x_grad', [True, False])
@pytest.mark.parametrize('bias', [True, False])
@pytest.mark.parametrize('rows', [[3, 7, 3, 0], list(range(20))])  # some rows (repeated); all
def test_values_and_gradients_are_linears(x_grad, bias, rows):
    dense, sparse = pair(bias=bias)
    x = torch.randn(20, 12).requires_grad_(x_grad)
    rows = torch.tensor(rows)
    w = torch.randn(len(rows), 5)
    y1, g1 = grads(dense, x, rows, w)
    y2, g2 = grads(sparse, x, rows, w)
    assert torch.equal(y1, y2)
    assert len(g1) == len(g2)
    for a, b in zip(g1, g2):
        assert torch.allclose(a, b, atol=1e-6)


def test_backward_reads_only_the_rows_with_a_gradient():
    # NaN features in rows the loss never reads: the dense backward multiplies them (0 * NaN
    # is NaN in the weight gradient); ours must not touch them.
    dense, sparse = pair()
    x = torch.randn(20, 12)
    x[10:] = float('nan')
    rows = torch.tensor([1, 4, 4, 9])
    for layer, finite in ((dense, False), (sparse, True)):
        xg = x.clone().requires_grad_()
        layer(xg).index_select(0, rows).sum().backward()
        assert bool(torch.isfinite(layer.weight.grad).all()) is finite
    assert torch.isfinite(xg.grad).all() and xg.grad[10:].abs().sum() == 0
    assert xg.grad[[1, 4, 9]].abs().sum() > 0


def test_without_autograd_and_other_shapes_it_is_linear():
    dense, sparse = pair()
    x = torch.randn(2, 3, 12)
    assert torch.equal(dense(x), sparse(x))
    with torch.no_grad():
        assert torch.equal(dense(x[0]), sparse(x[0]))
