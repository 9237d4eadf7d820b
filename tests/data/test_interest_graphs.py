import pytest
import torch

from mrdib_pyg.data.derived import build_graphs
from mrdib_pyg.data.interest_graphs import (AttractivenessGraph, InterestItemGraph,
                                            attractiveness_edges, floored_sym_norm,
                                            interest_pairs, pair_cosine)
from mrdib_pyg.data.schema import build_heterodata

U, I = 14, 11


def make_data(seed=0, num_users=U, num_items=I, signed_image=False):
    g = torch.Generator().manual_seed(seed)
    ei = torch.unique(torch.stack([torch.randint(num_users, (50, ), generator=g),
                                   torch.randint(num_items, (50, ), generator=g)]), dim=1)
    image = torch.randn(num_items, 9, generator=g)
    # shifted text features: a few negative cosines (floored), but no negative degree,
    # where SOIL's D^-1/2 is NaN
    feats = {'image': image if signed_image else image.abs(),
             'text': torch.randn(num_items, 5, generator=g) + 0.8}
    return build_heterodata(num_users, num_items, ei, ei[:, :3], ei[:, 3:6], feats)


@pytest.fixture
def data():
    return make_data()


# -- dense references transcribed from TL-UESTC/SOIL models/soil.py + utils/utils.py ------
def sim(x):
    xn = x / x.norm(dim=-1, keepdim=True)
    return xn @ xn.t()


def history(data):
    ei = data['user', 'rates', 'item'].edge_index
    return {u: ei[1, ei[0] == u] for u in range(data['user'].num_nodes)
            if bool((ei[0] == u).any())}


def laplacian(A, num_nodes=None):
    r"""get_sparse_laplacian(sym) on the non-zeros of A: row-sum degree indexed by both
    ends, weights <= 1e-7 floored."""
    idx = A.nonzero().t()
    w = A[idx[0], idx[1]]
    deg = torch.zeros(num_nodes or A.size(0)).index_add_(0, idx[0], w)
    d = deg.pow(-0.5)
    d[torch.isinf(d)] = 0.
    w = d[idx[0]] * w * d[idx[1]]
    w = torch.where(w <= 1e-7, torch.full_like(w, 1e-7), w)
    out = torch.zeros_like(A)
    out[idx[0], idx[1]] = w
    return out


def soil_attractive(data, knn_a):
    nu, ni = data['user'].num_nodes, data['item'].num_nodes
    sa = sim(data['image'].x) * sim(data['text'].x)
    full, R = torch.zeros(nu + ni, nu + ni), torch.zeros(nu, ni)
    for u, items in history(data).items():
        k_num = knn_a + items.numel()
        val, ind = sa[items].topk(k_num, dim=-1)
        kval, kind = val.flatten().topk(k_num)
        ind = ind.flatten()[kind]
        full.index_put_((torch.full_like(ind, u), nu + ind), kval, accumulate=True)
        full.index_put_((nu + ind, torch.full_like(ind, u)), kval, accumulate=True)
        R.index_put_((torch.full_like(ind, u), ind), kval, accumulate=True)
    return full, R


def soil_interest(data, knn_i):
    si, st = sim(data['image'].x), sim(data['text'].x)
    out = {'image': torch.zeros_like(si), 'text': torch.zeros_like(st)}
    for items in history(data).values():
        cols = torch.cat([si[items].sum(0).topk(knn_i)[1],
                          st[items].sum(0).topk(knn_i)[1]]).unique()
        out['image'][items[:, None], cols] += si[items[:, None], cols]
        out['text'][items[:, None], cols] += st[items[:, None], cols]
    return out, {'image': si, 'text': st}


def soil_knn(s, k):
    val, ind = s.topk(k, dim=-1)
    return laplacian(torch.zeros_like(s).scatter_(-1, ind, val))


# -- the raw constructions ----------------------------------------------------------------
def assert_same_picks(got, ref, train):
    r"""Equal up to SOIL's exact ties: S^a is symmetric, so when two history items i, j of
    a user compete for a slot with (i->j) and (j->i), which of the two gets the value
    depends on float rounding and topk's tie order. Tie-invariant: the user's total, the
    new (non-history) items and their values, and the sorted history values."""
    assert torch.allclose(got.sum(1), ref.sum(1), atol=1e-5)
    assert torch.allclose(got[~train], ref[~train], atol=1e-6)
    for u in range(got.size(0)):
        a, b = got[u, train[u]].sort()[0], ref[u, train[u]].sort()[0]
        assert torch.allclose(a, b, atol=1e-6), u


@pytest.mark.parametrize('knn_a', [0, 2, 5])
def test_attractiveness_edges_equal_soil_loop(data, knn_a):
    ei = data['user', 'rates', 'item'].edge_index
    (u, j), w = attractiveness_edges(ei, U, I, [data['image'].x, data['text'].x], knn_a,
                                     chunk_size=4)
    got = torch.zeros(U, I)
    got[u, j] = w
    _, ref = soil_attractive(data, knn_a)
    train = torch.zeros(U, I, dtype=torch.bool)
    train[ei[0], ei[1]] = True
    assert_same_picks(got, ref, train)
    # every training edge is kept (its self-similarity is the maximum), at most knn_a new
    # items per user, duplicates summed above 1
    assert bool((got[train] > 0.99).all())
    assert int(((got > 0) & ~train).sum(1).max()) <= knn_a
    if knn_a == 5:
        assert bool((got > 1.01).any())


def test_attractiveness_needs_no_more_than_the_item_count():
    # a user with every item: k_u = k + I is clamped (SOIL's topk raises)
    ei = torch.stack([torch.zeros(4, dtype=torch.long), torch.arange(4)])
    x = torch.rand(4, 3)
    (u, j), w = attractiveness_edges(ei, 1, 4, [x], k=3)
    assert sorted(j.tolist()) == [0, 1, 2, 3] and bool((w >= 1 - 1e-6).all())


@pytest.mark.parametrize('knn_i', [1, 3])
def test_interest_pairs_and_weights_equal_soil_loop(data, knn_i):
    ei = data['user', 'rates', 'item'].edge_index
    pairs, count = interest_pairs(ei, U, I, [data['image'].x, data['text'].x], knn_i,
                                  chunk_size=3)
    ref, sims = soil_interest(data, knn_i)
    for m in ('image', 'text'):
        got = torch.zeros(I, I)
        got[pairs[0], pairs[1]] = count * pair_cosine(data[m].x, pairs, chunk_size=4)
        assert torch.allclose(got, ref[m], atol=1e-5)
    assert float(count.max()) > 1  # accumulated over users


def test_floored_sym_norm_floors_and_isolates_negative_degrees():
    index = torch.tensor([[0, 0, 1, 2, 2], [0, 1, 1, 0, 2]])
    w = torch.tensor([1.0, -0.5, 0.2, -0.9, 0.1])
    with pytest.warns(UserWarning, match='not finite'):
        adj = floored_sym_norm(index, w, 3).to_dense()
    assert torch.isfinite(adj).all()
    assert adj[0, 1] == pytest.approx(1e-7)  # negative weight floored
    assert bool((adj[2] == 0).all())  # row sum -0.8: no real D^-1/2


# -- the specs ----------------------------------------------------------------------------
def test_attractiveness_graph_full_and_blocks(data):
    ei = data['user', 'rates', 'item'].edge_index
    (u, j), w = attractiveness_edges(ei, U, I, [data['image'].x, data['text'].x], 2)
    R = torch.zeros(U, I)
    R[u, j] = w
    A = torch.zeros(U + I, U + I)
    A[:U, U:], A[U:, :U] = R, R.t()
    g = build_graphs(data, {
        'full': AttractivenessGraph(k=2),
        'block': AttractivenessGraph(k=2, block='user_item'),
        'quirk': AttractivenessGraph(k=2, block='user_item', degree_quirk=True)})
    full = g['full'].to_dense()
    assert torch.allclose(full, laplacian(A), atol=1e-7)
    assert torch.allclose(full, full.t(), atol=1e-7)
    # the fixed block is the user->item block of the full normalised matrix
    assert torch.allclose(g['block'].to_dense(), full[:U, U:])
    # SOIL's mm_attractive_adj_R: num_nodes=U, the item column indexes the user degrees
    assert torch.allclose(g['quirk'].to_dense(), laplacian(R, num_nodes=U), atol=1e-7)
    assert not torch.allclose(g['quirk'].to_dense(), g['block'].to_dense(), atol=1e-3)


def test_degree_quirk_needs_fewer_items_than_users():
    data = make_data(num_users=6, num_items=9)
    with pytest.raises(ValueError, match='num_items <= num_users'):
        build_graphs(data, {'q': AttractivenessGraph(block='user_item', degree_quirk=True)})
    with pytest.raises(ValueError, match="block='user_item' only"):
        AttractivenessGraph(degree_quirk=True)


@pytest.mark.parametrize('knn_k', [0, 4])
def test_interest_item_graph_equals_soil(data, knn_k):
    ref, sims = soil_interest(data, 3)
    assert bool((ref['text'] < 0).any())  # floored below
    for m in ('image', 'text'):
        got = build_graphs(data, {'g': InterestItemGraph(m, k=3, knn_k=knn_k)})['g']
        want = laplacian(ref[m])
        if knn_k:  # SOIL: torch.add of the two normalised sparse matrices
            want = want + soil_knn(sims[m], knn_k)
        assert got.layout == torch.sparse_csr and torch.isfinite(want).all()
        assert torch.allclose(got.to_dense(), want, atol=1e-6)


def test_interest_graph_is_directed_and_uses_every_modality(data):
    both = build_graphs(data, {'g': InterestItemGraph('image', k=2, knn_k=0)})['g'].to_dense()
    alone = build_graphs(data, {'g': InterestItemGraph('image', k=2, knn_k=0,
                                                       interest_modalities=('image', ))}
                         )['g'].to_dense()
    assert not torch.equal(both > 0, alone > 0)
    assert not torch.equal(both > 0, (both > 0).t())


def test_specs_cache_by_parameters(data, tmp_path):
    specs = {'a': AttractivenessGraph(k=1), 'i': InterestItemGraph('text', k=2, knn_k=3)}
    first = build_graphs(data, specs, cache_dir=str(tmp_path))
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) == 2 and any(f.startswith('soil_attractive') for f in files)
    again = build_graphs(data, specs, cache_dir=str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == files
    for k in specs:
        assert torch.equal(first[k].to_dense(), again[k].to_dense())
    build_graphs(data, {'a': AttractivenessGraph(k=2)}, cache_dir=str(tmp_path))
    assert len(list(tmp_path.iterdir())) == 3


def test_spec_errors_and_clamping(data):
    with pytest.raises(ValueError, match='no modality'):
        build_graphs(data, {'g': InterestItemGraph('audio')})
    with pytest.raises(ValueError, match='k must be >= 0'):
        AttractivenessGraph(k=-1)
    with pytest.warns(UserWarning, match='k=30 exceeds the 11 items'):
        g = build_graphs(data, {'g': InterestItemGraph('image', k=30, knn_k=0)})['g']
    assert g.shape == (I, I)


def test_signed_features_stay_finite():
    data = make_data(signed_image=True, seed=2)
    with pytest.warns(UserWarning, match='not finite'):  # SOIL: NaN
        g = build_graphs(data, {'a': AttractivenessGraph(k=3),
                                'i': InterestItemGraph('image', k=4, knn_k=I)})
    for adj in g.values():
        assert torch.isfinite(adj.values()).all()
        assert float(adj.values().min()) >= 0  # negative cosines floored (or isolated)
