import math

import pytest
import torch
import torch.nn.functional as F

from mrdib_pyg.nn.conv import SparseOperator
from mrdib_pyg.nn.conv.mmgcn_conv import (MMGCNConv, MMGCNEncoder, bipartite_blocks,
                                          row_normalize)


def mean_adjacency(U, I, num_edges=40, seed=0):
    r"""Dense :math:`D^{-1}A` of a random undirected user-item graph (users first), as
    PyG's mean aggregation computes it (isolated nodes: zero rows)."""
    g = torch.Generator().manual_seed(seed)
    A = torch.zeros(U + I, U + I)
    u = torch.randint(U, (num_edges, ), generator=g)
    i = torch.randint(I, (num_edges, ), generator=g) + U
    A[u, i] = 1.
    A[i, u] = 1.
    deg = A.sum(1, keepdim=True)
    return torch.where(deg > 0, A / deg.clamp_min(1), A)


def reference_layer(conv, x, A, e):
    r"""MMRec's GCN layer, written out with dense matrices."""
    lrelu = lambda t: F.leaky_relu(t, 0.01)  # noqa: E731
    h = lrelu(A @ (x @ conv.weight))
    x_hat = lrelu(x @ conv.linear.weight.t() + conv.linear.bias) + e
    if conv.concat:
        return lrelu(torch.cat([h, x_hat], 1) @ conv.combine.weight.t() + conv.combine.bias)
    return lrelu(h @ conv.combine.weight.t() + conv.combine.bias + x_hat)


@pytest.mark.parametrize('concat', [True, False])
def test_conv_matches_dense_formula(concat):
    torch.manual_seed(0)
    U, I = 7, 5
    A = mean_adjacency(U, I)
    conv = MMGCNConv(6, 4, concat=concat)
    x, e = torch.randn(U + I, 6), torch.randn(U + I, 4)
    out = conv(x, SparseOperator(A.to_sparse_csr()), e)
    assert out.shape == (U + I, 4)
    assert torch.allclose(out, reference_layer(conv, x, A, e), atol=1e-6)
    # a plain torch.sparse matrix works too
    assert torch.allclose(conv(x, A.to_sparse_csr(), e), out, atol=1e-6)


@pytest.mark.parametrize('U,I', [(9, 4), (4, 9)])  # both product orders
@pytest.mark.parametrize('concat', [True, False])
def test_bipartite_form_equals_square_form_with_gradients(U, I, concat):
    torch.manual_seed(1)
    A = mean_adjacency(U, I, num_edges=25)
    conv = MMGCNConv(5, 3, concat=concat)
    x = torch.randn(U + I, 5, requires_grad=True)
    e = torch.randn(U + I, 3)
    square = conv(x, SparseOperator(A.to_sparse_csr()), e)
    gx_sq, gw_sq = torch.autograd.grad(square.square().sum(), [x, conv.weight])
    blocks = [SparseOperator(b) for b in bipartite_blocks(A.to_sparse_csr(), U)]
    out_u, out_i = conv((x[:U], x[U:]), tuple(blocks), (e[:U], e[U:]))
    pair = torch.cat([out_u, out_i])
    gx, gw = torch.autograd.grad(pair.square().sum(), [x, conv.weight])
    assert torch.allclose(pair, square, atol=1e-6)
    assert torch.allclose(gx, gx_sq, atol=1e-5) and torch.allclose(gw, gw_sq, atol=1e-5)


def test_constant_half_gets_no_gradient():
    U, I = 6, 4
    A = mean_adjacency(U, I)
    conv = MMGCNConv(3, 2)
    x_user = torch.randn(U, 3, requires_grad=True)
    x_item = torch.randn(I, 3)  # raw features: no gradient wanted
    blocks = tuple(SparseOperator(b) for b in bipartite_blocks(A.to_sparse_csr(), U))
    out_u, out_i = conv((x_user, x_item), blocks)
    (out_u.sum() + out_i.sum()).backward()
    assert x_user.grad is not None and x_item.grad is None


def test_conv_rejects_string_concat_and_bad_widths():
    # MMRec's `concate = 'False'` is truthy; we refuse strings outright.
    with pytest.raises(TypeError, match="concat"):
        MMGCNConv(4, 3, concat='False')
    with pytest.raises(ValueError, match='positive widths'):
        MMGCNConv(0, 3)
    assert 'MMGCNConv(4, 3, concat=False)' == repr(MMGCNConv(4, 3, concat=False))


def test_bipartite_blocks_round_trip_and_reject_self_loops():
    U, I = 5, 3
    A = mean_adjacency(U, I, num_edges=10)
    to_user, to_item = bipartite_blocks(A.to_sparse_csr(), U)
    assert to_user.layout == torch.sparse_csr and to_user.shape == (U, I)
    assert to_item.shape == (I, U)
    assert torch.equal(to_user.to_dense(), A[:U, U:])
    assert torch.equal(to_item.to_dense(), A[U:, :U])
    with pytest.raises(ValueError, match='bipartite'):
        bipartite_blocks((A + torch.eye(U + I)).to_sparse_csr(), U)
    with pytest.raises(ValueError, match='square'):
        bipartite_blocks(A[:U].to_sparse_csr(), U)


def test_row_normalize_matches_functional_including_zero_rows():
    x = torch.randn(6, 4)
    x[2] = 0.
    a = x.clone().requires_grad_()
    b = x.clone().requires_grad_()
    ya, yb = row_normalize(a), F.normalize(b)
    assert torch.allclose(ya, yb, atol=1e-7)
    g = torch.randn(6, 4)
    ya.backward(g)
    yb.backward(g)
    assert torch.allclose(a.grad, b.grad, rtol=1e-5, atol=1e-6)
    assert torch.equal(row_normalize(x), F.normalize(x))  # no-grad path


def test_encoder_projection_preference_and_init():
    torch.manual_seed(0)
    U = 6
    enc = MMGCNEncoder(U, feature_dim=32, out_channels=8, latent_dim=16)
    assert enc.projection.out_features == 16 and enc.preference.shape == (U, 16)
    assert enc.num_layers == 3
    assert [c.in_channels for c in enc.convs] == [16, 8, 8]
    raw = MMGCNEncoder(U, feature_dim=12, out_channels=8)
    assert raw.projection is None and raw.preference.shape == (U, 12)
    # MMRec re-initialises only the first combiner with Xavier; later ones keep PyTorch's
    # default uniform(+-1/sqrt(fan_in)).
    big = MMGCNEncoder(U, feature_dim=64, out_channels=64)
    bound = 1 / math.sqrt(128)
    assert big.convs[1].combine.weight.abs().max() <= bound
    assert big.convs[0].combine.weight.abs().max() > 1 / math.sqrt(128)
    frozen = MMGCNEncoder(U, 12, 8, trainable_preference=False)
    assert 'preference' in dict(frozen.named_buffers())
    assert 'preference' not in dict(frozen.named_parameters())
    assert 'preference' in frozen.state_dict()


@pytest.mark.parametrize('latent', [None, 8])
def test_encoder_square_and_bipartite_agree(latent):
    torch.manual_seed(0)
    U, I = 7, 5
    A = mean_adjacency(U, I)
    enc = MMGCNEncoder(U, feature_dim=10, out_channels=4, latent_dim=latent)
    feats, e = torch.randn(I, 10), torch.randn(U + I, 4)
    square = enc(feats, SparseOperator(A.to_sparse_csr()), e)
    assert square.shape == (U + I, 4)
    blocks = tuple(SparseOperator(b) for b in bipartite_blocks(A.to_sparse_csr(), U))
    u, i = enc(feats, blocks, e)
    assert torch.allclose(torch.cat([u, i]), square, atol=1e-6)
    # layer 0 input: normalize([preference; projected features])
    x0 = torch.cat(enc.inputs(feats))
    assert torch.allclose(x0.norm(dim=1), torch.ones(U + I), atol=1e-6)
    with pytest.raises(ValueError, match='width 10'):
        enc(torch.randn(I, 9), blocks, e)
    with pytest.raises(ValueError, match='num_layers'):
        MMGCNEncoder(U, 10, 4, num_layers=0)
