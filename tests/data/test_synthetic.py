import os

import pytest
import torch

import mrdib_pyg.data.synthetic as synthetic
from mrdib_pyg.data.schema import build_heterodata, split_edge_index
from mrdib_pyg.data.synthetic import (
    SyntheticMM,
    attach_generated_features,
    generate_synthetic,
)

SMALL = dict(num_users=120, num_items=80, interactions_per_user=(3, 20))


@pytest.fixture(scope='module')
def default_data():
    return SyntheticMM()[0]


def tensors(data):
    out = {}
    for store in data.stores:
        for key, value in store.items():
            if isinstance(value, torch.Tensor):
                out[(str(getattr(store, '_key', None)), key)] = value
    return out


def test_determinism_by_seed():
    a, b = tensors(generate_synthetic(**SMALL)), tensors(
        generate_synthetic(**SMALL))
    assert a.keys() == b.keys() and len(a) > 15
    for key in a:
        assert torch.equal(a[key], b[key]), key
    c = tensors(generate_synthetic(**SMALL, seed=1))
    assert not torch.equal(a[('image', 'x')], c[('image', 'x')])
    ei = ("('user', 'rates', 'item')", 'edge_index')
    assert a[ei].shape != c[ei].shape or not torch.equal(a[ei], c[ei])
    # The global RNG is neither used nor advanced.
    torch.manual_seed(123)
    r1 = torch.rand(3)
    torch.manual_seed(123)
    generate_synthetic(**SMALL)
    assert torch.equal(torch.rand(3), r1)


def test_schema_and_shapes(default_data):
    data = default_data
    U, I = data['user'].num_nodes, data['item'].num_nodes
    assert (U, I) == (1000, 500)
    assert data['image'].x.shape == (I, 128) and data['text'].x.shape == (I, 64)
    assert data['image'].x.dtype == torch.float32
    for m in ('image', 'text'):
        assert torch.equal(data['item', 'has', m].edge_index,
                           torch.arange(I).expand(2, -1))
    assert data['item'].shared_factors.shape == (I, 4)
    assert data['item'].image_factors.shape == (I, 4)
    assert data['item'].text_factors.shape == (I, 4)
    assert data['item'].synergy_factors.shape == (I, 2)
    assert data['image'].nuisance.shape == (I, 8)
    assert data['user'].factors.shape == (U, 14)
    assert data.generated_features is True
    total = sum(split_edge_index(data, s).size(1)
                for s in ('train', 'val', 'test'))
    assert 15_000 <= total <= 40_000
    assert torch.equal(data['item', 'rev_rates', 'user'].edge_index,
                       data['user', 'rates', 'item'].edge_index.flip(0))


def per_user_counts(ei, U):
    return torch.bincount(ei[0], minlength=U)


@pytest.mark.parametrize('seed', [0, 1])
def test_split_rules(seed):
    data = generate_synthetic(**SMALL, seed=seed)
    U, I = 120, 80
    splits = {s: split_edge_index(data, s) for s in ('train', 'val', 'test')}
    keys = {s: (e[0] * I + e[1]) for s, e in splits.items()}
    for s, k in keys.items():
        assert k.unique().numel() == k.numel(), f'duplicates in {s}'
    assert not torch.isin(keys['val'], keys['train']).any()
    assert not torch.isin(keys['test'], keys['train']).any()
    assert not torch.isin(keys['test'], keys['val']).any()
    counts = {s: per_user_counts(e, U) for s, e in splits.items()}
    for s in counts:
        assert (counts[s] >= 1).all(), s
    n = counts['train'] + counts['val'] + counts['test']
    assert (n < 10).any() and (n >= 10).any()  # both MMRec branches occur
    held = torch.where(n < 10, torch.full_like(n, 2), n // 5)
    assert torch.equal(counts['val'], held // 2)
    assert torch.equal(counts['test'], held - held // 2)
    # Every item occurs somewhere.
    items = torch.cat([e[1] for e in splits.values()])
    assert torch.equal(items.unique(), torch.arange(I))
    # Draw range (+1 for the coverage fix-up at most per unseen item).
    assert n.min() >= 3 and n.max() <= 20 + I


def test_every_item_occurs_even_with_few_draws():
    # 30 users x at most 5 draws cannot cover 200 items by sampling alone.
    data = generate_synthetic(num_users=30, num_items=200,
                              interactions_per_user=(3, 5))
    items = torch.cat([split_edge_index(data, s)[1]
                       for s in ('train', 'val', 'test')])
    assert torch.equal(items.unique(), torch.arange(200))


def r2_heldout(x, y):
    """Held-out R^2 of a least-squares probe (first half fit, second half)."""
    n = x.size(0) // 2
    x = torch.cat([x, torch.ones(x.size(0), 1)], 1).double()
    y = y.double()
    w = torch.linalg.lstsq(x[:n], y[:n]).solution
    res = y[n:] - x[n:] @ w
    return (1 - res.pow(2).sum(0) / (y[n:] - y[n:].mean(0)).pow(2).sum(0))


def test_planted_factors_are_recoverable_where_planted():
    data = generate_synthetic(num_items=1000, num_users=100)
    xv, xt = data['image'].x, data['text'].x
    item = data['item']
    assert r2_heldout(xv, item.image_factors).min() > 0.9
    assert r2_heldout(xt, item.image_factors).max() < 0.2
    assert r2_heldout(xt, item.text_factors).min() > 0.9
    assert r2_heldout(xv, item.text_factors).max() < 0.2
    assert r2_heldout(xv, item.shared_factors).min() > 0.9
    assert r2_heldout(xt, item.shared_factors).min() > 0.9
    assert r2_heldout(xv, item.synergy_image).min() > 0.9
    assert r2_heldout(xt, item.synergy_text).min() > 0.9
    # Synergy is invisible to any linear probe, even on both modalities.
    both = torch.cat([xv, xt], 1)
    assert r2_heldout(both, item.synergy_factors).max() < 0.2
    # ... but recoverable from the product of the two probed parts.
    prod = item.synergy_image * item.synergy_text
    assert torch.allclose(prod, item.synergy_factors)
    assert r2_heldout(xv, data['image'].nuisance).min() > 0.9
    assert r2_heldout(xt, data['image'].nuisance).max() < 0.2


def preference_signal(data, f):
    """z-score of (user profile . f) on test positives vs random items."""
    st = data['user', 'rates', 'item']
    U, I = data['user'].num_nodes, data['item'].num_nodes
    r = torch.zeros(U, I)
    r[st.edge_index[0], st.edge_index[1]] = 1.
    prof = (r / r.sum(1, keepdim=True)) @ f
    te = st.test_edge_index
    g = torch.Generator().manual_seed(1)
    neg = torch.randint(0, I, (te.size(1), ), generator=g)
    # Negatives avoid the user's training items, as held-out positives do
    # (else a random item's self-overlap with the profile biases the test).
    for _ in range(50):
        bad = r[te[0], neg] > 0
        if not bad.any():
            break
        neg[bad] = torch.randint(0, I, (int(bad.sum()), ), generator=g)
    pos = (prof[te[0]] * f[te[1]]).sum(1)
    rnd = (prof[te[0]] * f[neg]).sum(1)
    se = ((pos.var() + rnd.var()) / te.size(1)).sqrt()
    return float((pos.mean() - rnd.mean()) / se)


def test_interactions_follow_planted_preference_not_nuisance(default_data):
    data = default_data
    for f in (data['item'].shared_factors, data['item'].image_factors,
              data['item'].text_factors, data['item'].synergy_factors):
        assert preference_signal(data, f) > 8
    for f in (data['image'].nuisance, data['text'].nuisance,
              data['item'].synergy_image, data['item'].synergy_text):
        assert abs(preference_signal(data, f)) < 3.5
    # The oracle affinity ranks held-out items far above popularity.
    orc = (data['user'].factors @ data['item'].preference.t() *
           data.affinity_scale + data['item'].popularity)
    te = data['user', 'rates', 'item'].test_edge_index
    assert orc[te[0], te[1]].mean() > orc.mean() + 0.5 * orc.std()


def test_in_memory_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ds = SyntheticMM(**SMALL, pre_transform=lambda d: setattr(
        d, 'marked', True) or d)
    assert len(ds) == 1 and os.listdir(tmp_path) == []
    assert ds[0].marked is True
    assert 'SyntheticMM(users=120' in repr(ds)


def test_root_cache(tmp_path, monkeypatch):
    ds = SyntheticMM(str(tmp_path), **SMALL)
    folder = tmp_path / 'synthetic' / 'processed'
    files = [f for f in os.listdir(folder) if f.startswith('synthetic_')]
    assert len(files) == 1
    for part in ('U120', 'I80', 'seed0', 'noise0.1', 'n3-20', 'T0.5',
                 'pop0.5', 'nonlin0.0', 'syn2', 'v1'):
        assert part in files[0]
    ref = tensors(generate_synthetic(**SMALL))
    got = tensors(ds[0])
    assert ref.keys() == got.keys()
    assert all(torch.equal(ref[k], got[k]) for k in ref)

    # A second instance loads the cache instead of regenerating.
    def boom(**kwargs):
        raise AssertionError('regenerated')

    monkeypatch.setattr(synthetic, 'generate_synthetic', boom)
    again = SyntheticMM(str(tmp_path), **SMALL)
    assert torch.equal(again[0]['image'].x, ds[0]['image'].x)
    monkeypatch.undo()
    # Any parameter change gives another file.
    SyntheticMM(str(tmp_path), **dict(SMALL, noise=0.2))
    files = [f for f in os.listdir(folder) if f.startswith('synthetic_')]
    assert len(files) == 2


def test_argument_errors():
    with pytest.raises(ValueError, match=r'\(2, 5\)'):
        generate_synthetic(interactions_per_user=(2, 5))
    with pytest.raises(ValueError, match='num_items=10'):
        generate_synthetic(num_items=10, interactions_per_user=(5, 30))
    with pytest.raises(ValueError, match='temperature'):
        generate_synthetic(**SMALL, temperature=0.)


def real_like_graph(seed=0, U=60, I=40):
    g = torch.Generator().manual_seed(seed)
    pairs = torch.randperm(U * I, generator=g)[:600]
    ei = torch.stack([pairs // I, pairs % I])
    return build_heterodata(U, I, ei[:, :400], ei[:, 400:500], ei[:, 500:],
                            {})


def test_generated_features_shapes_and_flags():
    data = real_like_graph()
    out = attach_generated_features(data)
    assert out['image'].x.shape == (40, 4096)
    assert out['text'].x.shape == (40, 384)
    assert torch.isfinite(out['image'].x).all()
    assert torch.isfinite(out['text'].x).all()
    assert out.generated_features is True
    assert torch.equal(out['item', 'has', 'text'].edge_index,
                       torch.arange(40).expand(2, -1))
    assert out['image', 'rev_has', 'item'].edge_index.size(1) == 40
    # Not in place: the input graph is untouched.
    assert 'image' not in data.node_types
    assert getattr(data, 'generated_features', None) is None
    with pytest.raises(ValueError, match="'image'"):
        attach_generated_features(out)
    again = attach_generated_features(out, dims={'image': 8}, overwrite=True)
    assert again['image'].x.shape == (40, 8)
    assert attach_generated_features(data, inplace=True) is data


def test_generated_features_ignore_held_out_edges():
    a = real_like_graph()
    b = real_like_graph()
    g = torch.Generator().manual_seed(5)
    st = b['user', 'rates', 'item']
    st.val_edge_index = torch.randint(0, 40, (2, 77), generator=g)
    st.test_edge_index = torch.randint(0, 40, (2, 33), generator=g)
    fa = attach_generated_features(a, dims={'image': 32, 'text': 16})
    fb = attach_generated_features(b, dims={'image': 32, 'text': 16})
    for m in ('image', 'text'):
        assert torch.equal(fa[m].x, fb[m].x)
    # ... while training edges matter, and so does the seed.
    c = real_like_graph()
    c['user', 'rates', 'item'].edge_index = c['user', 'rates',
                                              'item'].edge_index[:, :300]
    fc = attach_generated_features(c, dims={'image': 32, 'text': 16})
    assert not torch.allclose(fa['image'].x, fc['image'].x)
    fd = attach_generated_features(a, dims={'image': 32, 'text': 16}, seed=1)
    assert not torch.allclose(fa['image'].x, fd['image'].x)


def test_generated_features_are_weakly_informative(default_data):
    data = attach_generated_features(default_data, dims={'image': 256,
                                                         'text': 64},
                                     overwrite=True)
    assert data.feature_source == 'generated:svd-train'
    assert not torch.equal(data['image'].x, default_data['image'].x)
    for m in ('image', 'text'):
        x = torch.nn.functional.normalize(data[m].x, dim=1)
        # Held-out items resemble the user's training items (features are
        # built from the training matrix), but far from perfectly.
        z = preference_signal(data, x)
        assert z > 8
    # Pure noise features carry no such signal.
    g = torch.Generator().manual_seed(0)
    assert abs(preference_signal(data, torch.randn(500, 64, generator=g))) < 3.5
