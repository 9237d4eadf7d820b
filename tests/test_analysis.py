r"""Tests of the analysis instruments (mrdib_pyg.analysis): each can fail.

MI test setting: d = 2 independent pairs of correlated Gaussians (a_k, b_k) with correlation
rho, true I(A; B) = -0.5 * d * log(1 - rho^2): 0.288 nats for rho = 0.5 and 1.022 nats for
rho = 0.8. 2,000 rows (1,400 critic-training, 600 held-out), 250 critic steps of 256 rows
(Adam, lr 3e-3, width 64). The held-out DV estimate is a lower bound plus finite-sample noise,
so it must land in [true - 0.2, true + 0.15] nats; independent inputs must give
|estimate| < 0.1. Runs on one torch thread (a fixture restores the setting): on a shared
2-core machine, two threads make these small MLP steps ~10x slower.
"""
import math

import pytest
import torch

from mrdib_pyg.analysis import estimate_mi, linear_probe_r2, split_rows, tsne_2d


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


MI_KW = dict(steps=250, hidden=64, lr=3e-3, seed=0)


def _gaussian_pairs(n, d, rho, seed):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, d, generator=g)
    b = rho * a + math.sqrt(1 - rho ** 2) * torch.randn(n, d, generator=g)
    return a, b


def test_split_rows_disjoint_and_complete():
    tr, te = split_rows(100, 0.3, seed=1)
    assert te.numel() == 30 and tr.numel() == 70
    assert torch.equal(torch.cat([tr, te]).sort().values, torch.arange(100))
    tr2, te2 = split_rows(100, 0.3, seed=1)
    assert torch.equal(te, te2)


def test_probe_r2_linear_target_is_one_and_noise_is_zero():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3000, 16, generator=g) * torch.linspace(0.1, 10, 16)  # unequal scales
    linear = x @ torch.randn(16, 3, generator=g) + 5.0
    noise = torch.randn(3000, 2, generator=g)
    tr, te = split_rows(3000, 0.3, seed=0)
    r2 = linear_probe_r2(x, torch.cat([linear, noise], 1), tr, te)
    assert r2.shape == (5, )
    assert (r2[:3] > 0.999).all(), r2
    assert (r2[3:].abs() < 0.05).all(), r2


def test_probe_r2_partial_signal_and_1d_target():
    # y = x_0 + e with var(x_0) = var(e) = 1: the best linear probe has R^2 = 0.5
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4000, 4, generator=g)
    y = x[:, 0] + torch.randn(4000, generator=g)
    tr, te = split_rows(4000, 0.5, seed=0)
    r2 = linear_probe_r2(x, y, tr, te)
    assert r2.shape == (1, )
    assert abs(float(r2) - 0.5) < 0.05


def test_probe_r2_is_scale_free():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(300, 8, generator=g)
    y = x[:, :2] + 0.3 * torch.randn(300, 2, generator=g)
    tr, te = split_rows(300, 0.3, seed=0)
    assert torch.allclose(linear_probe_r2(x, y, tr, te), linear_probe_r2(1e4 * x, y, tr, te),
                          atol=1e-8)


def test_probe_rejects_mismatched_rows():
    with pytest.raises(ValueError):
        linear_probe_r2(torch.randn(10, 2), torch.randn(9, 1), [0, 1], [2, 3])


@pytest.mark.parametrize('rho', [0.5, 0.8])
def test_estimate_mi_correlated_gaussians(rho):
    torch.manual_seed(0)
    d = 2
    a, b = _gaussian_pairs(2000, d, rho, seed=3)
    tr, te = split_rows(2000, 0.3, seed=0)
    truth = -0.5 * d * math.log(1 - rho ** 2)
    est = estimate_mi(a, b, tr, te, **MI_KW)
    assert truth - 0.2 < est < truth + 0.15, (est, truth)


def test_estimate_mi_independent_is_near_zero():
    g = torch.Generator().manual_seed(4)
    a, b = torch.randn(2000, 2, generator=g), torch.randn(2000, 2, generator=g)
    tr, te = split_rows(2000, 0.3, seed=0)
    est = estimate_mi(a, b, tr, te, **MI_KW)
    assert abs(est) < 0.1, est


def test_estimate_mi_orders_dependence():
    a, b_weak = _gaussian_pairs(2000, 2, 0.3, seed=5)
    _, b_strong = _gaussian_pairs(2000, 2, 0.9, seed=5)
    tr, te = split_rows(2000, 0.3, seed=0)
    weak = estimate_mi(a, b_weak, tr, te, **MI_KW)
    strong = estimate_mi(a, b_strong, tr, te, **MI_KW)
    assert strong > weak + 0.5, (weak, strong)


def test_estimate_mi_does_not_touch_global_rng():
    a, b = _gaussian_pairs(200, 2, 0.5, seed=6)
    tr, te = split_rows(200, 0.3, seed=0)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    estimate_mi(a, b, tr, te, steps=5, hidden=8, seed=0)
    assert torch.equal(torch.rand(3), expected)


def test_tsne_2d_shape():
    pytest.importorskip('sklearn')
    x = torch.randn(40, 5)
    kw = dict(max_iter=250) if _has_max_iter() else dict(n_iter=250)
    y = tsne_2d(x, seed=0, n_jobs=1, **kw)
    assert y.shape == (40, 2) and torch.isfinite(y).all()


def _has_max_iter():
    import inspect

    from sklearn.manifold import TSNE
    return 'max_iter' in inspect.signature(TSNE).parameters
