import pytest
import torch

from mrdib_pyg.nn.conv.user_graph_conv import UserGraphConv

U = 7


def counts():
    r"""User 0: 5 neighbours (ties at 2), user 1: 2, users 2-4: 1 or more, user 5: none,
    user 6: only a self-loop and an explicit zero (both ignored)."""
    C = torch.zeros(U, U)
    C[0, [1, 2, 3, 4, 6]] = torch.tensor([3., 2., 2., 1., 2.])
    C[1, [0, 2]] = torch.tensor([3., 1.])
    C[2, [0, 1, 3]] = torch.tensor([2., 1., 4.])
    C[3, [0, 2]] = torch.tensor([2., 4.])
    C[4, 0] = 1.
    C[6, 0] = 2.
    idx = torch.cat([C.nonzero().t(), torch.tensor([[6, 6], [6, 1]])], dim=1)
    val = torch.cat([C[C != 0], torch.tensor([5., 0.])])
    return torch.sparse_coo_tensor(idx, val, (U, U), check_invariants=True).coalesce()


def mmrec_topk_sample(conv, rand):
    r"""MMRec's ``topk_sample`` written as a loop over users, with the padding's uniform
    numbers given (row by row for the padded users): slot t copies slot floor(r * t) of
    the list as it has grown so far."""
    k, index, weight, row = conv.k, [], [], 0
    for u in range(conv.num_users):
        n = int(conv.num_neighbors[u])
        nb, cnt = conv.neighbors[u, :n].tolist(), conv.counts[u, :n].tolist()
        if n == 0:
            index.append([0] * k)
            weight.append(torch.zeros(k))
            continue
        if n < k:
            for t in range(n, k):
                j = int(rand[row, t] * t)
                nb.append(nb[j])
                cnt.append(cnt[j])
            row += 1
        index.append(nb[:k])
        weight.append(torch.softmax(torch.tensor(cnt[:k]), 0))
    return torch.tensor(index), torch.stack(weight)


def test_candidates_sorted_topk_ties_to_smaller_id():
    conv = UserGraphConv(counts(), k=3)
    assert conv.num_neighbors.tolist() == [3, 2, 3, 2, 1, 0, 1]
    assert conv.neighbors[0].tolist() == [1, 2, 3]  # 3, then the tied 2s: ids 2, 3 (not 6)
    assert conv.counts[0].tolist() == [3., 2., 2.]
    assert conv.neighbors[2].tolist() == [3, 0, 1]
    assert conv.neighbors[6, 0].item() == 0  # the self-loop and the zero are gone


def test_sample_equals_mmrec_loop_with_same_random_numbers():
    conv = UserGraphConv(counts(), k=6)
    index, weight = conv.sample(torch.Generator().manual_seed(3))
    short = ((conv.num_neighbors > 0) & (conv.num_neighbors < 6)).sum()
    rand = torch.rand(int(short), 6, generator=torch.Generator().manual_seed(3))
    ref_index, ref_weight = mmrec_topk_sample(conv, rand)
    has = conv.num_neighbors > 0
    assert torch.equal(index[has], ref_index[has])
    assert torch.allclose(weight, ref_weight)
    assert torch.all(weight[5] == 0)  # no co-interacting user: all-zero weights
    assert torch.allclose(weight[has].sum(1), torch.ones(int(has.sum())))


def test_full_users_are_deterministic_and_padding_reuses_own_neighbours():
    conv = UserGraphConv(counts(), k=3)
    a, wa = conv.sample(torch.Generator().manual_seed(0))
    b, wb = conv.sample(torch.Generator().manual_seed(1))
    for u in (0, 2):  # n >= k: exactly the top k, softmax over their counts
        assert torch.equal(a[u], conv.neighbors[u]) and torch.equal(a[u], b[u])
        assert torch.allclose(wa[u], torch.softmax(conv.counts[u], 0))
    for u in (1, 3, 4):
        n = int(conv.num_neighbors[u])
        assert a[u, :n].tolist() == conv.neighbors[u, :n].tolist()
        assert set(a[u].tolist()) <= set(conv.neighbors[u, :n].tolist())


def test_padding_is_a_polya_urn_not_uniform():
    # Users with 2 neighbours padded to 40: MMRec copies from the GROWING list, so the
    # copies of the first neighbour are uniform on 1..39 (variance 126.7), not
    # 1 + Binomial(38, 1/2) (variance 9.5) as independent draws from the 2 would give.
    n = 600
    users = torch.arange(n).repeat(2)
    adj = torch.sparse_coo_tensor(torch.stack([users, (users + torch.arange(2 * n) // n + 1) % n]),
                                  torch.ones(2 * n), (n, n))
    conv = UserGraphConv(adj, k=40)
    assert torch.all(conv.num_neighbors == 2)
    firsts = (conv.sample_slots(torch.Generator().manual_seed(0)) == 0).sum(1).float()
    assert 17 < firsts.mean() < 23
    assert 90 < firsts.var() < 170


def test_forward_equals_weighted_gather_and_its_gradient():
    conv = UserGraphConv(counts(), k=4)
    conv.resample(torch.Generator().manual_seed(0))
    index, weight = conv.sample(torch.Generator().manual_seed(0))
    x = torch.randn(U, 5, requires_grad=True)
    y = conv(x)
    # MMRec's User_Graph_sample: weight[u] @ x[index[u]]
    ref = torch.bmm(weight.unsqueeze(1), x[index]).squeeze(1)
    assert torch.allclose(y, ref, atol=1e-6)
    assert torch.all(y[5] == 0)
    g = torch.randn(U, 5)
    gx, = torch.autograd.grad(y, x, g)
    gref, = torch.autograd.grad(ref, x, g)
    assert torch.allclose(gx, gref, atol=1e-6)
    dense = conv.weight_matrix()
    assert torch.allclose(dense @ x.detach(), y.detach(), atol=1e-6)


def test_mean_weighting_and_set_sample():
    conv = UserGraphConv(counts(), k=4, weighting='mean')
    _, w = conv.sample()
    assert torch.allclose(w[conv.num_neighbors > 0], torch.full((6, 4), 0.25))
    index = torch.zeros(U, 2, dtype=torch.long)
    index[:, 1] = 3
    weight = torch.tensor([[0.5, 0.5]]).repeat(U, 1)
    conv.set_sample(index, weight)
    x = torch.randn(U, 3)
    assert torch.allclose(conv(x), (0.5 * (x[0] + x[3])).expand(U, 3))
    with pytest.raises(ValueError, match='same shape'):
        conv.set_sample(index, weight[:, :1])


def test_lazy_sample_generator_determinism_and_errors():
    conv = UserGraphConv(counts(), k=8)
    assert conv.op is None
    conv(torch.randn(U, 2))  # draws on first use
    assert conv.op is not None
    s = [conv.sample(torch.Generator().manual_seed(i))[0] for i in (5, 5, 6)]
    assert torch.equal(s[0], s[1]) and not torch.equal(s[0], s[2])
    with pytest.raises(ValueError, match='k >= 1'):
        UserGraphConv(counts(), k=0)
    with pytest.raises(ValueError, match='weighting'):
        UserGraphConv(counts(), weighting='sum')
    with pytest.raises(TypeError, match='sparse'):
        UserGraphConv(torch.eye(U))
    with pytest.raises(ValueError, match='square'):
        UserGraphConv(torch.eye(U, U + 1).to_sparse())
    with pytest.raises(ValueError, match=r'\[7, F\]'):
        conv(torch.randn(U + 1, 2))
    assert 'k=8' in repr(conv)
