import pytest
import torch

from mrdib_pyg.nn.conv.edge_pruning import (DegreeSensitiveEdgePruning, bipartite_degree_weights,
                                            bipartite_sym_norm)
from mrdib_pyg.nn.conv.sparse_op import SparseOperator


def edges(num_users=8, num_items=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    ei = torch.stack([torch.randint(num_users, (40, ), generator=g),
                      torch.randint(num_items, (40, ), generator=g)])
    return torch.unique(ei, dim=1), num_users, num_items


def mmrec_weights(ei, num_users, num_items):
    # MMRec's FREEDOM._normalize_adj_m, written with its sparse ops.
    adj = torch.sparse_coo_tensor(ei, torch.ones_like(ei[0]), (num_users, num_items),
                                  check_invariants=False)
    row_sum = 1e-7 + torch.sparse.sum(adj, -1).to_dense()
    col_sum = 1e-7 + torch.sparse.sum(adj.t(), -1).to_dense()
    return torch.pow(row_sum, -0.5)[ei[0]] * torch.pow(col_sum, -0.5)[ei[1]]


def dense_renormalised(kept, num_users, num_items):
    n = num_users + num_items
    a = torch.zeros(n, n)
    a[kept[0], kept[1] + num_users] = 1.
    a[kept[1] + num_users, kept[0]] = 1.
    d = a.sum(1) + 1e-7
    return a / d.sqrt()[:, None] / d.sqrt()[None, :]


def test_weights_are_mmrec_bits():
    ei, nu, ni = edges()
    w = bipartite_degree_weights(ei, nu, ni)
    assert torch.equal(w, mmrec_weights(ei, nu, ni))
    deg_u, deg_i = torch.bincount(ei[0], minlength=nu), torch.bincount(ei[1], minlength=ni)
    assert torch.allclose(w, (deg_u[ei[0]] * deg_i[ei[1]]).float().rsqrt())


def test_kept_count_is_mmrecs_floor():
    ei = torch.stack([torch.arange(1000) % 50, torch.arange(1000) // 50])
    # MMRec: int(E * (1. - dropout)); 1 - 0.8 is just below 0.2, so 199 and not 200.
    assert DegreeSensitiveEdgePruning(ei, 50, 20, keep_ratio=1. - 0.8).num_keep == 199
    assert DegreeSensitiveEdgePruning(ei, 50, 20, keep_ratio=0.2).num_keep == 200
    assert DegreeSensitiveEdgePruning(ei, 50, 20, keep_ratio=1e-6).num_keep == 1


def test_draw_is_mmrecs_multinomial_on_the_global_stream():
    ei, nu, ni = edges()
    pruning = DegreeSensitiveEdgePruning(ei, nu, ni, keep_ratio=0.3)
    torch.manual_seed(4)
    expected = torch.multinomial(mmrec_weights(ei, nu, ni), int(ei.size(1) * 0.3))
    torch.manual_seed(4)
    assert torch.equal(pruning.sample(), expected)
    assert expected.unique().numel() == expected.numel()  # without replacement
    g = torch.Generator().manual_seed(4)
    assert torch.equal(pruning.sample(generator=g), expected)


def test_output_is_the_renormalised_kept_graph():
    ei, nu, ni = edges()
    pruning = DegreeSensitiveEdgePruning(ei, nu, ni, keep_ratio=0.5)
    torch.manual_seed(1)
    kept, weight = pruning.kept_edges()
    torch.manual_seed(1)
    adj = pruning()
    assert adj.layout == torch.sparse_csr and adj.shape == (nu + ni, nu + ni)
    assert adj._nnz() == 2 * pruning.num_keep
    expected = dense_renormalised(kept, nu, ni)
    assert torch.allclose(adj.to_dense(), expected, atol=1e-6)
    assert torch.equal(adj.to_dense(), adj.to_dense().t())
    assert torch.allclose(bipartite_sym_norm(kept, nu, ni).to_dense(), expected, atol=1e-6)
    # Every kept pair is a training pair.
    train = set(map(tuple, ei.t().tolist()))
    assert set(map(tuple, kept.t().tolist())) <= train
    # Ready for a SparseOperator, backward included.
    x = torch.randn(nu + ni, 3, requires_grad=True)
    op = SparseOperator(adj, symmetric=True)
    op(x).sum().backward()
    assert torch.allclose(x.grad, expected.t() @ torch.ones(nu + ni, 3), atol=1e-5)


def test_seeded_draws_repeat_and_epochs_differ():
    ei, nu, ni = edges()
    pruning = DegreeSensitiveEdgePruning(ei, nu, ni, keep_ratio=0.3)
    torch.manual_seed(0)
    a, b = pruning().to_dense(), pruning().to_dense()
    torch.manual_seed(0)
    assert torch.equal(pruning().to_dense(), a)
    assert not torch.equal(a, b)


def test_keep_all_uses_no_randomness():
    ei, nu, ni = edges()
    pruning = DegreeSensitiveEdgePruning(ei, nu, ni, keep_ratio=1.0)
    state = torch.get_rng_state()
    adj = pruning()
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.allclose(adj.to_dense(), dense_renormalised(ei, nu, ni), atol=1e-6)


def test_edges_of_popular_nodes_are_pruned_first():
    # User 0 rates every item (a hub); users 1..6 rate one item each.
    hub = torch.stack([torch.zeros(6, dtype=torch.long), torch.arange(6)])
    leaves = torch.stack([torch.arange(1, 7), torch.arange(6)])
    ei = torch.cat([hub, leaves], dim=1)
    pruning = DegreeSensitiveEdgePruning(ei, 7, 6, keep_ratio=0.5)
    g = torch.Generator().manual_seed(0)
    counts = torch.zeros(12)
    for _ in range(300):
        counts[pruning.sample(generator=g)] += 1
    assert counts[:6].sum() < 0.6 * counts[6:].sum()


@pytest.mark.parametrize('kwargs, match', [
    (dict(edge_index=torch.zeros(3, 4, dtype=torch.long)), r'\[2, E\]'),
    (dict(edge_index=torch.zeros(2, 0, dtype=torch.long)), 'no edges'),
    (dict(keep_ratio=0.0), 'keep_ratio'),
    (dict(keep_ratio=1.5), 'keep_ratio'),
    (dict(num_items=2), 'beyond'),
])
def test_rejects_bad_input(kwargs, match):
    ei, nu, ni = edges()
    args = dict(edge_index=ei, num_users=nu, num_items=ni, keep_ratio=0.2)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        DegreeSensitiveEdgePruning(**args)


def test_repr():
    ei, nu, ni = edges()
    assert 'keep_ratio=0.2' in repr(DegreeSensitiveEdgePruning(ei, nu, ni, 0.2))
