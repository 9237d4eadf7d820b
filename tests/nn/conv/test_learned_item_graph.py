import pytest
import torch

from mrdib_pyg.data.graphs import item_knn_graph, sym_norm_adj
from mrdib_pyg.nn.conv.learned_item_graph import LearnedItemGraph, propagate
from mrdib_pyg.nn.conv.sparse_op import SparseOperator

I = 14


# -- dense references written from MMRec's lattice.py / utils.py ---------------------------
def mmrec_knn(x, k):
    r"""build_sim + build_knn_neighbourhood: dense weighted top-k of the cosines."""
    xn = x.div(torch.norm(x, p=2, dim=-1, keepdim=True))
    sim = xn @ xn.t()
    val, ind = torch.topk(sim, k, dim=-1)
    return torch.zeros_like(sim).scatter_(-1, ind, val)


def mmrec_laplacian(adj):
    r"""compute_normalized_laplacian: D^-1/2 A D^-1/2 with the row sums, dense."""
    d = torch.pow(adj.sum(-1), -0.5)
    d[torch.isinf(d)] = 0.
    return torch.diagflat(d) @ adj @ torch.diagflat(d)


def mmrec_item_adj(feats, originals, logits, k, lam):
    w = torch.softmax(logits, dim=0)
    learned = sum(w[n] * mmrec_knn(x, k) for n, x in enumerate(feats))
    original = sum(w[n] * o for n, o in enumerate(originals))
    return (1 - lam) * mmrec_laplacian(learned) + lam * original


def frozen_graph(x, k=4):
    ei, w = item_knn_graph(x, k, loop=True)
    return sym_norm_adj(ei, w, x.size(0))


@pytest.fixture
def setup():
    g = torch.Generator().manual_seed(0)
    raw = {'text': torch.randn(I, 7, generator=g), 'image': torch.rand(I, 9, generator=g)}
    proj = {m: torch.randn(I, 5, generator=g) for m in raw}
    originals = {m: frozen_graph(x) for m, x in raw.items()}
    return raw, proj, originals


def make(originals, **kwargs):
    layer = LearnedItemGraph(originals, **{'k': 4, **kwargs})
    with torch.no_grad():
        layer.modal_weight.copy_(torch.tensor([0.3, 0.8]))  # unequal shares
    return layer


def test_equals_mmrec_dense_graph_and_its_gradients(setup):
    _, proj, originals = setup
    layer = make(originals, lambda_coeff=0.9)
    feats = {m: x.clone().requires_grad_() for m, x in proj.items()}
    ei, ew = layer(feats)
    assert ei.shape == (2, 2 * I * 4 * 2) and ew.shape == (2 * I * 4 * 2, )
    S = layer.to_dense(ei, ew)

    ref_feats = [x.clone().requires_grad_() for x in proj.values()]
    logits = layer.modal_weight.detach().clone().requires_grad_()
    ref = mmrec_item_adj(ref_feats, [o.to_dense() for o in originals.values()], logits,
                         4, 0.9)
    assert torch.allclose(S, ref, atol=1e-6)

    target = torch.randn(I, I, generator=torch.Generator().manual_seed(1))
    (S * target).sum().backward()
    (ref * target).sum().backward()
    for n, m in enumerate(proj):
        assert torch.allclose(feats[m].grad, ref_feats[n].grad, atol=1e-5)
    assert torch.allclose(layer.modal_weight.grad, logits.grad, atol=1e-6)
    assert layer.modal_weight.grad.abs().sum() > 0


def test_learned_part_is_the_normalised_mixture(setup):
    _, proj, originals = setup
    layer = make(originals)
    w = layer.mix_weights()
    assert torch.allclose(w, torch.softmax(torch.tensor([0.3, 0.8]), 0))
    ei, ew = layer.learned(proj)
    mixed = sum(w[n] * mmrec_knn(proj[m], 4) for n, m in enumerate(layer.modalities))
    assert torch.allclose(layer.to_dense(ei, ew), mmrec_laplacian(mixed), atol=1e-6)
    # every item is its own most similar item: it keeps itself among its k neighbours
    kei, kw = layer.knn(proj['text'])
    loops = kei[0] == kei[1]
    assert int(loops.sum()) == I and torch.allclose(kw[loops], torch.ones(I))


def test_lambda_one_and_zero(setup):
    _, proj, originals = setup
    only_frozen = make(originals, lambda_coeff=1.0)
    w = only_frozen.mix_weights()
    expected = sum(w[n] * originals[m].to_dense() for n, m in enumerate(originals))
    assert torch.allclose(only_frozen.to_dense(*only_frozen(proj)), expected, atol=1e-6)
    only_learned = make(originals, lambda_coeff=0.0)
    assert torch.allclose(only_learned.to_dense(*only_learned(proj)),
                          only_learned.to_dense(*only_learned.learned(proj)), atol=1e-7)


def test_single_modality_is_mmrecs_unweighted_graph(setup):
    _, proj, originals = setup
    layer = LearnedItemGraph({'text': originals['text']}, k=4, lambda_coeff=0.9)
    S = layer.to_dense(*layer({'text': proj['text']}))
    ref = 0.1 * mmrec_laplacian(mmrec_knn(proj['text'], 4)) + 0.9 * originals['text'].to_dense()
    assert torch.allclose(S, ref, atol=1e-6)


def test_propagate_and_frozen_operator(setup):
    _, proj, originals = setup
    layer = make(originals)
    ei, ew = layer(proj)
    S = layer.to_dense(ei, ew).detach()
    x = torch.randn(I, 3, requires_grad=True)
    out = propagate(x, ei, ew)
    assert torch.allclose(out, S @ x, atol=1e-6)
    out.sum().backward()
    assert torch.allclose(x.grad, S.t() @ torch.ones(I, 3), atol=1e-6)
    assert layer.modal_weight.grad is not None  # weights carry gradient
    op = layer.operator(ei, ew)
    assert isinstance(op, SparseOperator) and op.shape == (I, I)
    assert torch.allclose(op.to_dense(), S, atol=1e-6)  # duplicated pairs summed
    y = torch.randn(I, 3, requires_grad=True)
    op(y).pow(2).sum().backward()
    assert torch.allclose(y.grad, 2 * S.t() @ (S @ y.detach()), atol=1e-5)
    assert not op.adj.requires_grad


def test_nonpositive_degree_isolates_the_item_without_nan():
    # item 0's four most similar items all point away from it: its degree is negative
    x = torch.tensor([[1., 0.], [-1., 0.1], [-1., -0.1], [-1., 0.2], [-1., -0.2]])
    original = torch.eye(5).to_sparse_csr()
    layer = LearnedItemGraph({'m': original}, k=5, lambda_coeff=0.0)
    x.requires_grad_()
    ei, ew = layer.learned({'m': x})
    L = layer.to_dense(ei, ew)
    assert torch.isfinite(L).all()
    assert torch.all(L[0] == 0) and torch.all(L[:, 0] == 0)
    L.sum().backward()
    assert torch.isfinite(x.grad).all()


def test_zero_feature_row_has_zero_cosines(setup):
    _, proj, originals = setup
    feats = {m: x.clone() for m, x in proj.items()}
    feats['image'][3] = 0.
    ei, ew = make(originals)(feats)
    assert torch.isfinite(ew).all()


def test_checks_and_clamps(setup):
    _, proj, originals = setup
    with pytest.warns(UserWarning, match='exceeds the 14 items'):
        layer = LearnedItemGraph(originals, k=20)
    assert layer.k == I
    with pytest.raises(ValueError, match='lambda_coeff'):
        LearnedItemGraph(originals, lambda_coeff=1.5)
    with pytest.raises(ValueError, match='one frozen graph per modality'):
        LearnedItemGraph({})
    with pytest.raises(ValueError, match='square frozen graphs'):
        LearnedItemGraph({'a': originals['text'], 'b': torch.eye(3).to_sparse()})
    layer = make(originals)
    with pytest.raises(ValueError, match=r"no features for the modalities \['image'\]"):
        layer({'text': proj['text']})
    with pytest.raises(ValueError, match=r'needs \[14, d\] features'):
        layer({'text': proj['text'][:5], 'image': proj['image']})
    layer.reset_parameters()
    assert torch.equal(layer.modal_weight.detach(), torch.full((2, ), 0.5))
    assert 'k=4' in repr(layer) and 'lambda_coeff=0.9' in repr(layer)


def test_non_finite_frozen_weights_are_zeroed(setup):
    _, proj, originals = setup
    bad = originals['text'].to_dense()
    bad[2, 2] = float('nan')
    with pytest.warns(UserWarning, match='non-finite'):
        layer = LearnedItemGraph({'text': bad.to_sparse_csr()}, k=4)
    _, w = layer.original('text')
    assert torch.isfinite(w).all()
