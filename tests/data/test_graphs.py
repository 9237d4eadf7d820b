import os

import pytest
import torch
import torch.nn.functional as F

from mrdib_pyg.data.graphs import (
    ItemKNNGraph,
    UserCooccurrenceGraph,
    cached_graph,
    item_knn_graph,
    param_slug,
    row_norm_adj,
    sym_norm_adj,
    tensor_fingerprint,
    topk_per_row,
    user_cooccurrence_graph,
)
from mrdib_pyg.data.synthetic import SyntheticMM


def dense_knn(x, k, loop=False):
    xn = F.normalize(x, dim=-1)
    sim = xn @ xn.t()
    if not loop:
        sim.fill_diagonal_(float('-inf'))
    val, col = sim.topk(k, dim=-1)
    return col, val


@pytest.mark.parametrize('chunk_size', [1, 7, 16, 50, 1000])
@pytest.mark.parametrize('loop', [False, True])
def test_item_knn_chunked_equals_dense(chunk_size, loop):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, 12, generator=g, dtype=torch.float64)
    x[3] = 0.  # an all-zero row must not produce NaN
    k = 5
    edge_index, weight = item_knn_graph(x, k=k, chunk_size=chunk_size,
                                        loop=loop)
    col, val = dense_knn(x, k, loop)
    assert edge_index.shape == (2, 50 * k) and weight.shape == (50 * k, )
    assert torch.equal(edge_index[0], torch.arange(50).repeat_interleave(k))
    assert torch.equal(edge_index[1], col.reshape(-1))
    assert torch.allclose(weight, val.reshape(-1))
    assert torch.isfinite(weight).all()
    if not loop:
        assert (edge_index[0] != edge_index[1]).all()


def test_item_knn_loop_and_errors():
    x = torch.randn(20, 4)
    ei, w = item_knn_graph(x, k=3, loop=True)
    # With loops an item is its own most similar neighbour (cosine 1).
    assert torch.equal(ei[1].view(20, 3)[:, 0], torch.arange(20))
    assert torch.allclose(w.view(20, 3)[:, 0], torch.ones(20))
    with pytest.raises(ValueError, match='k=20'):
        item_knn_graph(x, k=20)
    item_knn_graph(x, k=20, loop=True)
    with pytest.raises(ValueError, match='chunk_size'):
        item_knn_graph(x, k=2, chunk_size=0)


def random_graph(n=12, e=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    ei = torch.randint(0, n - 1, (2, e), generator=g)  # node n-1 isolated
    ei = torch.cat([ei, ei[:, :3]], 1)  # duplicated pairs are summed
    w = torch.rand(ei.size(1), generator=g) + 0.1
    return ei, w, n


def dense_adj(ei, w, n):
    a = torch.zeros(n, n)
    a.index_put_((ei[0], ei[1]), w, accumulate=True)
    return a


def test_sym_norm_against_dense():
    ei, w, n = random_graph()
    out = sym_norm_adj(ei, w, num_nodes=n)
    assert out.layout == torch.sparse_csr and out.shape == (n, n)
    a = dense_adj(ei, w, n)
    d = a.sum(1)
    dinv = torch.where(d > 0, d.pow(-0.5), torch.zeros_like(d))
    assert torch.allclose(out.to_dense(), dinv[:, None] * a * dinv[None, :],
                          atol=1e-6)
    # Unweighted default equals weights of one.
    assert torch.allclose(sym_norm_adj(ei, None, n).to_dense(),
                          sym_norm_adj(ei, torch.ones(ei.size(1)),
                                       n).to_dense())


def test_row_norm_against_dense():
    ei, w, n = random_graph(seed=1)
    out = row_norm_adj(ei, w, num_nodes=n)
    assert out.layout == torch.sparse_csr
    a = dense_adj(ei, w, n)
    d = a.sum(1, keepdim=True)
    expected = torch.where(d > 0, a / d.clamp(min=1e-12), torch.zeros_like(a))
    assert torch.allclose(out.to_dense(), expected, atol=1e-6)
    rows = out.to_dense().sum(1)
    assert torch.allclose(rows[d.view(-1) > 0], torch.ones(1))
    assert rows[n - 1] == 0


def test_topk_per_row_against_naive():
    g = torch.Generator().manual_seed(2)
    n = 15
    ei = torch.randint(0, n, (2, 200), generator=g)
    ei = torch.unique(ei, dim=1)
    w = torch.randint(1, 4, (ei.size(1), ), generator=g).float()  # ties
    out_ei, out_w = topk_per_row(ei, w, k=3, num_nodes=n)
    for r in range(n):
        m = ei[0] == r
        cols, ws = ei[1, m], w[m]
        order = sorted(range(cols.numel()),
                       key=lambda j: (-ws[j].item(), cols[j].item()))[:3]
        got = out_ei[0] == r
        assert out_ei[1, got].tolist() == [cols[j].item() for j in order]
        assert out_w[got].tolist() == [ws[j].item() for j in order]


def naive_cooccurrence(train, num_users, num_items):
    r = torch.zeros(num_users, num_items)
    r[train[0], train[1]] = 1.
    c = r @ r.t()
    c.fill_diagonal_(0.)
    return c


@pytest.mark.parametrize('chunk_size', [1, 3, 4096])
def test_user_cooccurrence_against_dense(chunk_size):
    g = torch.Generator().manual_seed(3)
    U, I = 17, 9
    train = torch.stack([torch.randint(0, U - 1, (60, ), generator=g),
                         torch.randint(0, I, (60, ), generator=g)])
    train = torch.cat([train, train[:, :5]], 1)  # duplicates count once
    c = naive_cooccurrence(train, U, I)
    ei, cnt = user_cooccurrence_graph(train, U, I, topk=None,
                                      chunk_size=chunk_size)
    assert (ei[0] != ei[1]).all()
    got = torch.zeros(U, U)
    got[ei[0], ei[1]] = cnt
    assert torch.equal(got, c)
    assert ei.size(1) == int((c > 0).sum())
    assert not (ei[0] == U - 1).any()  # user without items has no edges

    ei3, cnt3 = user_cooccurrence_graph(train, U, I, topk=3,
                                        chunk_size=chunk_size)
    for u in range(U):
        m = ei3[0] == u
        row = c[u]
        assert int(m.sum()) == min(3, int((row > 0).sum()))
        # the kept counts are the 3 largest of the row, in descending order
        assert cnt3[m].tolist() == row.sort(descending=True).values[
            :int(m.sum())].tolist()
    # topk is a prefix of the full, equally ordered list
    assert torch.equal(topk_per_row(ei, cnt, 3, U)[0], ei3)


def test_user_cooccurrence_errors():
    train = torch.tensor([[0, 5], [0, 1]])
    with pytest.raises(ValueError, match='num_users=3'):
        user_cooccurrence_graph(train, 3, 2)
    with pytest.raises(ValueError, match='topk'):
        user_cooccurrence_graph(train, 6, 2, topk=0)


def test_cached_graph_reuses_and_keys_on_params(tmp_path):
    calls = []

    def build():
        calls.append(1)
        return torch.arange(5), {'w': torch.ones(3)}

    x = torch.randn(4, 3)
    fp = tensor_fingerprint(x)
    out1 = cached_graph(str(tmp_path), 'knn_image', {'k': 10}, fp, build)
    out2 = cached_graph(str(tmp_path), 'knn_image', {'k': 10}, fp, build)
    assert len(calls) == 1
    assert torch.equal(out1[0], out2[0])
    assert torch.equal(out1[1]['w'], out2[1]['w'])
    files = sorted(os.listdir(tmp_path))
    assert len(files) == 1 and 'k10' in files[0]

    cached_graph(str(tmp_path), 'knn_image', {'k': 11}, fp, build)
    assert len(calls) == 2
    cached_graph(str(tmp_path), 'knn_image', {'k': 10},
                 tensor_fingerprint(x + 1), build)
    assert len(calls) == 3
    files = os.listdir(tmp_path)
    assert len(set(files)) == 3
    assert not [f for f in files if f.endswith('.tmp')]


def test_cached_graph_atomic_on_failure(tmp_path):
    def fails():
        raise RuntimeError('boom')

    with pytest.raises(RuntimeError):
        cached_graph(str(tmp_path), 'g', {'a': 1}, 'abc', fails)
    assert os.listdir(tmp_path) == []
    with pytest.raises(ValueError, match='bad/name'):
        cached_graph(str(tmp_path), 'bad/name', {}, 'abc', lambda: 1)


def test_param_slug_and_fingerprint():
    a = param_slug({'k': 10, 'loop': False, 'range': (1, 2), 'x': 0.1})
    assert 'k10' in a and 'loop0' in a and 'range1-2' in a and 'x0.1' in a
    assert param_slug({'x': 0.1, 'k': 10, 'loop': False,
                       'range': (1, 2)}) == a  # key order is irrelevant
    assert param_slug({'k': 10, 'loop': True, 'range': (1, 2),
                       'x': 0.1}) != a
    # Sanitising would merge these; the hash keeps them apart.
    assert param_slug({'p': 'a/b'}) != param_slug({'p': 'ab'})
    t = torch.arange(6.)
    assert tensor_fingerprint(t) == tensor_fingerprint(t.clone())
    assert tensor_fingerprint(t) != tensor_fingerprint(t.view(2, 3))
    assert tensor_fingerprint(t) != tensor_fingerprint(t.double())


def test_transforms_on_synthetic(tmp_path):
    data = SyntheticMM(num_users=60, num_items=40,
                       interactions_per_user=(5, 10))[0]
    out = ItemKNNGraph('image', k=4, cache_dir=str(tmp_path))(data)
    ei, w = item_knn_graph(data['image'].x, k=4)
    store = out['item', 'knn_image', 'item']
    assert torch.equal(store.edge_index, ei)
    assert torch.allclose(store.edge_weight, w)
    out = UserCooccurrenceGraph(topk=5, cache_dir=str(tmp_path))(data)
    store = out['user', 'cooccurs', 'user']
    ei, cnt = user_cooccurrence_graph(data['user', 'rates', 'item'].edge_index,
                                      60, 40, topk=5)
    assert torch.equal(store.edge_index, ei)
    assert torch.equal(store.edge_weight, cnt)
    assert len(os.listdir(tmp_path)) == 2
    assert 'ItemKNNGraph(image, k=4' in str(ItemKNNGraph('image', k=4))
