import pytest
import torch

from mrdib_pyg.data.adjacency import bipartite_adjacency
from mrdib_pyg.nn.conv import LGPropagation, SparseOperator, has_torch_sparse


def random_graph(num_users=30, num_items=20, num_edges=150, seed=0):
    g = torch.Generator().manual_seed(seed)
    ei = torch.stack([torch.randint(num_users, (num_edges, ), generator=g),
                      torch.randint(num_items, (num_edges, ), generator=g)])
    return ei, num_users, num_items


def dense_adjacency(ei, U, I):
    A = torch.zeros(U + I, U + I)
    A[ei[0], ei[1] + U] = 1.  # duplicates collapse to one edge
    A[ei[1] + U, ei[0]] = 1.
    d = A.sum(1)
    dinv = (d + 1e-7).pow(-0.5)
    return dinv[:, None] * A * dinv[None, :]


def test_bipartite_adjacency_matches_dense_formula_and_dedupes():
    ei, U, I = random_graph()
    ei = torch.cat([ei, ei[:, :10]], dim=1)  # duplicated interactions count once
    adj = bipartite_adjacency(ei, U, I)
    assert adj.layout == torch.sparse_csr
    assert torch.allclose(adj.to_dense(), dense_adjacency(ei, U, I), atol=1e-6)


def test_bipartite_adjacency_rejects_out_of_range():
    with pytest.raises(ValueError, match='out of range'):
        bipartite_adjacency(torch.tensor([[0], [5]]), 3, 5)


BACKENDS = ['csr', 'coo'] + (['torch_sparse'] if has_torch_sparse() else [])


@pytest.mark.parametrize('backend', BACKENDS)
@pytest.mark.parametrize('symmetric', [True, False])
def test_operator_forward_and_backward_equal_dense(backend, symmetric):
    ei, U, I = random_graph()
    adj = bipartite_adjacency(ei, U, I)
    if not symmetric:  # a row-normalised (non-symmetric) operator
        dense = adj.to_dense() + torch.eye(U + I) * 0.5
        dense = dense / dense.sum(1, keepdim=True)
        adj = dense.to_sparse_csr()
    dense = adj.to_dense()
    op = SparseOperator(adj, symmetric=symmetric, backend=backend)
    x = torch.randn(U + I, 8, requires_grad=True)
    w = torch.randn(U + I, 8)
    (op(op(x)) * w).sum().backward()
    x2 = x.detach().clone().requires_grad_()
    (dense @ (dense @ x2) * w).sum().backward()
    assert torch.allclose(op(x), dense @ x, atol=1e-5)
    assert torch.allclose(x.grad, x2.grad, atol=1e-5)


@pytest.mark.skipif(not has_torch_sparse(), reason='torch-sparse not installed')
def test_torch_sparse_and_csr_backends_agree_on_lightgcn():
    from mrdib_pyg.nn.models import LightGCN
    ei, U, I = random_graph(seed=3)
    adj = bipartite_adjacency(ei, U, I)
    torch.manual_seed(0)
    a = LightGCN(U, I, adj, backend='csr')
    b = LightGCN(U, I, adj, backend='torch_sparse')
    b.load_state_dict(a.state_dict())
    oa, ob = a(), b()
    assert torch.allclose(oa.user, ob.user, atol=1e-6)
    assert torch.allclose(oa.item, ob.item, atol=1e-6)


def test_operator_rejects_bad_arguments():
    adj = torch.eye(3).to_sparse_csr()
    with pytest.raises(ValueError, match='unknown backend'):
        SparseOperator(adj, backend='dense')
    with pytest.raises(ValueError, match='non-square'):
        SparseOperator(torch.ones(2, 3).to_sparse_csr(), symmetric=True)


def test_operator_is_not_in_state_dict_and_moves_with_module():
    op = SparseOperator(torch.eye(3).to_sparse_csr(), symmetric=True)
    assert len(op.state_dict()) == 0
    op = op.to(torch.float64)
    assert op(torch.ones(3, 1, dtype=torch.float64)).dtype == torch.float64


@pytest.mark.parametrize('combine', ['mean', 'sum', 'last'])
def test_lg_propagation_combinations(combine):
    ei, U, I = random_graph()
    adj = bipartite_adjacency(ei, U, I)
    dense = adj.to_dense()
    x = torch.randn(U + I, 4)
    layers = [x, dense @ x, dense @ dense @ x]
    expected = {'mean': sum(layers) / 3, 'sum': sum(layers), 'last': layers[-1]}[combine]
    out = LGPropagation(2, combine)(x, SparseOperator(adj, symmetric=True))
    assert torch.allclose(out, expected, atol=1e-5)


def test_lg_propagation_validates():
    with pytest.raises(ValueError, match='num_layers'):
        LGPropagation(-1)
    with pytest.raises(ValueError, match='combine'):
        LGPropagation(1, combine='max')
