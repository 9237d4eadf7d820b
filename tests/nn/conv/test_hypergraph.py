import pytest
import torch
import torch.nn.functional as F

from mrdib_pyg.nn.conv.hypergraph import (GlobalHypergraphEmbedding, HGNNConv,
                                          HyperedgeAssignment, assignment_dropout,
                                          gumbel_softmax)
from mrdib_pyg.nn.conv.modality_graph import ModalityGraphEmbedding
from mrdib_pyg.nn.conv.sparse_op import SparseOperator

U, I = 7, 6


def interactions():
    R = torch.zeros(U, I)
    users = torch.tensor([0, 0, 1, 2, 2, 2, 3, 4, 5, 5])
    R[users, torch.tensor([0, 1, 1, 2, 3, 4, 0, 4, 1, 2])] = 1.
    return R  # user 6 and item 5 have no interaction


def sym_adj(R):
    A = torch.zeros(U + I, U + I)
    A[:U, U:], A[U:, :U] = R, R.t()
    d = A.sum(1).pow(-0.5)
    d[torch.isinf(d)] = 0.
    return d[:, None] * A * d[None, :]


# -- random primitives -------------------------------------------------------------------
def test_gumbel_softmax_draws_as_torch_does():
    x = torch.randn(5, 4)
    torch.manual_seed(3)
    ref = F.gumbel_softmax(x, tau=0.2, hard=False, dim=1)
    torch.manual_seed(3)
    assert torch.equal(gumbel_softmax(x, 0.2), ref)
    g = torch.Generator().manual_seed(3)
    assert torch.equal(gumbel_softmax(x, 0.2, g), ref)  # same stream, own generator
    assert torch.allclose(ref.sum(1), torch.ones(5))


def test_assignment_dropout_draws_as_torch_dropout():
    x = torch.rand(40, 4) + 0.1
    torch.manual_seed(5)
    ref = F.dropout(x, p=0.6, training=True)
    torch.manual_seed(5)
    out = assignment_dropout(x, 0.4)
    assert torch.equal(out, ref)
    kept = out != 0
    assert torch.allclose(out[kept], x[kept] / 0.4)
    state = torch.get_rng_state()
    assert assignment_dropout(x, 1.0) is x
    assert torch.equal(torch.get_rng_state(), state)  # keep_rate 1 draws nothing
    assert torch.equal(assignment_dropout(x, 0.0), torch.zeros_like(x))


# -- hyperedge assignment ----------------------------------------------------------------
def test_assignment_user_logits_sum_item_logits_before_the_softmax():
    torch.manual_seed(0)
    layer = HyperedgeAssignment(5, 3, tau=0.5)
    x, R = torch.randn(I, 5), interactions()
    item_l, user_l = layer.logits(x, SparseOperator(R.to_sparse_csr()))
    assert torch.allclose(item_l, x @ layer.weight, atol=1e-6)
    assert torch.allclose(user_l, R @ (x @ layer.weight), atol=1e-6)  # a sum, not a mean
    hi, hu = layer(x, R, noise=False)
    assert torch.allclose(hi, (item_l / 0.5).softmax(1), atol=1e-6)
    assert torch.allclose(hu, (user_l / 0.5).softmax(1), atol=1e-6)
    torch.manual_seed(1)
    ni, nu = layer(x, R)
    torch.manual_seed(1)  # item noise first, then user noise (MMRec's order)
    assert torch.equal(ni, F.gumbel_softmax(item_l, 0.5, dim=1))
    assert torch.equal(nu, F.gumbel_softmax(user_l, 0.5, dim=1))
    assert ni.shape == (I, 3) and nu.shape == (U, 3)
    assert str(layer) == 'HyperedgeAssignment(5, 3, tau=0.5)'


def test_assignment_rejects_bad_inputs():
    with pytest.raises(ValueError, match='num_hyperedges >= 1'):
        HyperedgeAssignment(4, 0)
    with pytest.raises(ValueError, match='tau > 0'):
        HyperedgeAssignment(4, 2, tau=0.)
    with pytest.raises(ValueError, match=r'expects \[I, 4\]'):
        HyperedgeAssignment(4, 2)(torch.randn(I, 5), interactions())


# -- hypergraph convolution --------------------------------------------------------------
@pytest.mark.parametrize('layers', [1, 2])
def test_hgnn_conv_equals_mmrec_hgnn_layer(layers):
    torch.manual_seed(0)
    hi, hu, x = torch.rand(I, 3), torch.rand(U, 3), torch.randn(I, 8)
    conv = HGNNConv(layers, keep_rate=0.5).eval()  # no dropout in evaluation
    user, item = conv(hi, hu, x)
    ref = x
    for _ in range(layers):
        lat = hi.t() @ ref
        ref = hi @ lat
    assert torch.allclose(item, ref, atol=1e-5)
    assert torch.allclose(user, hu @ lat, atol=1e-5)
    conv.train()
    torch.manual_seed(2)
    user_t, item_t = conv(hi, hu, x)
    torch.manual_seed(2)  # the item matrix is dropped first, once for every layer
    di, du = F.dropout(hi, 0.5), F.dropout(hu, 0.5)
    ref = x
    for _ in range(layers):
        lat = di.t() @ ref
        ref = di @ lat
    assert torch.allclose(item_t, ref, atol=1e-5)
    assert torch.allclose(user_t, du @ lat, atol=1e-5)


def test_hgnn_conv_rejects_bad_arguments():
    with pytest.raises(ValueError, match='num_layers >= 1'):
        HGNNConv(0)
    with pytest.raises(ValueError, match='keep_rate'):
        HGNNConv(1, keep_rate=1.5)
    with pytest.raises(ValueError, match=r'\[I, K\] and \[U, K\]'):
        HGNNConv()(torch.rand(I, 3), torch.rand(U, 2), torch.randn(I, 4))


def test_global_hypergraph_embedding_noise_and_gradients():
    torch.manual_seed(0)
    R = SparseOperator(interactions().to_sparse_csr())
    x, emb = torch.randn(I, 5), torch.randn(I, 8, requires_grad=True)
    ghe = GlobalHypergraphEmbedding(5, num_hyperedges=3, num_layers=1, keep_rate=0.5)
    g1, g2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    a, b = ghe(x, emb, R, g1), ghe(x, emb, R, g2)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])  # a generator fixes the draws
    assert a[0].shape == (U, 8) and a[1].shape == (I, 8)
    (a[0].sum() + a[1].pow(2).sum()).backward()
    assert ghe.assignment.weight.grad.abs().sum() > 0 and emb.grad.abs().sum() > 0
    # evaluation: Gumbel noise (MMRec) unless eval_noise=False
    ghe.eval()
    assert not torch.equal(ghe(x, emb, R)[1], ghe(x, emb, R)[1])
    ghe.eval_noise = False
    assert not ghe.draws_noise
    u, i = ghe(x, emb, R)
    hi, hu = ghe.assignment(x, R, noise=False)
    assert torch.allclose(i, hi @ (hi.t() @ emb), atol=1e-5)
    assert torch.allclose(u, hu @ (hi.t() @ emb), atol=1e-5)


# -- modality graph embedding ------------------------------------------------------------
@pytest.mark.parametrize('layers', [0, 2])
def test_modality_graph_embedding_equals_dense_reference(layers):
    torch.manual_seed(0)
    R = interactions()
    deg = R.sum(1, keepdim=True)
    mean = torch.where(deg > 0, R / deg.clamp_min(1), torch.zeros_like(R))
    adj = sym_adj(R)
    layer = ModalityGraphEmbedding(5, 8, num_layers=layers)
    x = torch.randn(I, 5)
    out = layer(x, SparseOperator(mean.to_sparse_csr()),
                SparseOperator(adj.to_sparse_csr(), symmetric=True))
    item = x @ layer.weight
    ref = torch.cat([mean @ item, item])
    for _ in range(layers):
        ref = adj @ ref
    assert out.shape == (U + I, 8)
    assert torch.allclose(out, ref, atol=1e-5)
    if layers == 0:  # a user without items starts at zero
        assert out[U - 1].abs().sum() == 0
    out.pow(2).sum().backward()
    assert layer.weight.grad.abs().sum() > 0


def test_modality_graph_embedding_rejects_bad_inputs():
    with pytest.raises(ValueError, match='positive widths'):
        ModalityGraphEmbedding(0, 8)
    layer = ModalityGraphEmbedding(5, 8, num_layers=1)
    mean = SparseOperator(interactions().to_sparse_csr())
    with pytest.raises(ValueError, match='needs the adjacency'):
        layer(torch.randn(I, 5), mean)
    with pytest.raises(ValueError, match=r'expects \[I, 5\]'):
        layer.initial(torch.randn(I, 4), mean)
    assert str(layer).startswith('ModalityGraphEmbedding(\n  5, 8, num_layers=1')
