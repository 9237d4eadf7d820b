import math

import pytest
import torch
import torch.nn.functional as F

from mrdib_pyg.data.derived import UserCoInteraction, UserItemGraph
from mrdib_pyg.nn.models.dualgnn import DualGNN
from mrdib_pyg.nn.models.registry import MODELS, model_defaults
from mrdib_pyg.nn.mrdib import MRdIB

from tests.nn.models.tiny import I, U, tiny_batch, tiny_graph



@pytest.fixture
def data():
    return tiny_graph()


def batch():
    return tiny_batch()


def make(data, seed=0, **kwargs):
    torch.manual_seed(seed)
    return DualGNN.from_data(data, **kwargs)


def dense_sym_adjacency(data):
    r"""MMRec's Base_gcn (aggr 'add'): norm = deg^-1/2[row] deg^-1/2[col] on both directions."""
    ei = data['user', 'rates', 'item'].edge_index
    A = torch.zeros(U + I, U + I)
    A[ei[0], U + ei[1]] = 1.
    A[U + ei[1], ei[0]] = 1.
    d = A.sum(1)
    inv = torch.where(d > 0, d.pow(-0.5), torch.zeros_like(d))
    return inv[:, None] * A * inv[None, :]


def reference(model, data, inplace=False):
    r"""MMRec's DualGNN.forward written out densely."""
    A = dense_sym_adjacency(data)
    z = {}
    for m in ('image', 'text'):
        mlp = model.mlp[m]
        h = mlp[2](F.leaky_relu(mlp[0](data[m].x)))
        x = F.normalize(torch.cat([model.preference[m], h]))
        z[m] = x + A @ x + A @ (A @ x)
    item = (z['image'] + z['text'])[U:]
    w = {m: model.modality_weight[:, model.modalities.index(m)][:, None] for m in z}
    v = z['image'] + z['text'] if inplace else z['image']
    user = w['image'] * v[:U] + w['text'] * z['text'][:U]
    user = user + model.user_graph.weight_matrix() @ user
    return user, item, z


@pytest.mark.parametrize('inplace', [False, True])
def test_forward_equals_mmrec_formulas(data, inplace):
    model = make(data, mmrec_inplace_sum=inplace)
    model.pre_epoch(0)
    out = model()
    user, item, z = reference(model, data, inplace)
    assert torch.allclose(out.user, user, atol=1e-5)
    assert torch.allclose(out.item, item, atol=1e-5)
    for m in ('image', 'text'):  # per-modality outputs: unaliased, before fusion
        assert torch.allclose(out.modalities[m].user, z[m][:U], atol=1e-5)
        assert torch.allclose(out.modalities[m].item, z[m][U:], atol=1e-5)


def test_forward_backward_and_score(data):
    model = make(data)
    out = model()
    assert out.user.shape == (U, 64) and out.item.shape == (I, 64)
    loss = model.loss(out, batch())
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    model.eval()
    users = torch.tensor([0, 5, U - 1])
    s = model.score(users)
    assert s.shape == (3, I)
    assert torch.allclose(s, out.user[users].detach() @ out.item.detach().t(), atol=1e-5)


def test_deterministic_by_seed(data):
    a, b, c = make(data, seed=3), make(data, seed=3), make(data, seed=4)
    for m in (a, b, c):
        m.pre_epoch(0)
    oa, ob, oc = a(), b(), c()
    assert torch.equal(oa.user, ob.user) and torch.equal(oa.item, ob.item)
    assert not torch.equal(oa.user, oc.user)


def test_modalities_and_fusion(data):
    model = make(data)
    assert model.modalities == ['text', 'image']
    out = model()
    assert sorted(out.modalities) == ['image', 'text']
    for mo in out.modalities.values():
        assert mo.item.shape == (I, 64) and mo.user.shape == (U, 64)
    assert torch.allclose(out.item, out.modalities['text'].item + out.modalities['image'].item)
    w = model.modality_weight
    assert torch.allclose(w.sum(1), torch.ones(U))  # softmax initialisation
    fused = w[:, :1] * out.modalities['text'].user + w[:, 1:] * out.modalities['image'].user
    assert torch.allclose(out.user, fused + model.user_graph(fused), atol=1e-6)


def test_mrdib_attaches_without_touching_the_backbone(data):
    model = make(data)
    out = model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    mrdib = MRdIB.from_output(out)
    res = mrdib(out, batch())
    assert torch.isfinite(res.loss)
    res.loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    after = model.state_dict()
    assert sorted(after) == sorted(before)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_loss_is_log2_bpr_plus_regulariser(data):
    model = make(data, reg_weight=0.5)
    out, b = model(), batch()
    u, p, n = out.user[b.users], out.item[b.pos], out.item[b.neg]
    bpr = -torch.log2(torch.sigmoid((u * p).sum(1) - (u * n).sum(1))).mean()
    reg = sum((model.preference[m][b.users] ** 2).mean() for m in ('image', 'text'))
    reg = reg + (model.modality_weight ** 2).mean()
    assert torch.allclose(model.regularizer(out, b), 0.5 * reg, atol=1e-7)
    assert torch.allclose(model.loss(out, b), bpr + 0.5 * reg, atol=1e-6)
    # saturated pairs stay finite (MMRec's log2(sigmoid) would give inf)
    big = out.user.detach() * 1e4
    from mrdib_pyg.nn.output import RecOutput
    assert torch.isfinite(model.loss(RecOutput(user=big, item=out.item.detach()), b))
    assert math.isclose(make(data).reg_weight, 0.1)  # MMRec's first grid value


def test_user_graph_sample_per_epoch(data):
    # k = 10: six users have 10 co-interacting users (deterministic), five fewer (padded),
    # user 6 none (zero row)
    model = make(data, user_topk=10)
    g = model.user_graph
    full, short = g.num_neighbors == 10, (g.num_neighbors > 0) & (g.num_neighbors < 10)
    assert full.sum() == 6 and short.sum() == 5 and g.num_neighbors[6] == 0
    model.pre_epoch(1)
    w1 = g.weight_matrix()
    model.pre_epoch(2)
    w2 = g.weight_matrix()
    model.pre_epoch(1)
    assert torch.equal(g.weight_matrix(), w1)  # epoch e always redraws the same sample
    assert torch.equal(w1[full], w2[full])  # only the padding is random
    assert not torch.equal(w1[short], w2[short])
    assert torch.all(w1[6] == 0)
    # a resumed model (same sampling_seed from the state dict) redraws the same samples
    other = make(data, seed=9, user_topk=10)
    other.load_state_dict(model.state_dict())
    other.pre_epoch(1)
    assert torch.equal(other.user_graph.weight_matrix(), w1)
    # the global stream, as MMRec's draw
    glob = make(data, user_topk=10, sampling_rng='global')
    torch.manual_seed(0)
    glob.pre_epoch(0)
    a = glob.user_graph.weight_matrix()
    torch.manual_seed(0)
    glob.pre_epoch(5)
    assert torch.equal(glob.user_graph.weight_matrix(), a)


def test_forward_before_pre_epoch_draws_epoch_zero(data):
    model = make(data)
    out = model()
    fresh = make(data)
    fresh.pre_epoch(0)
    assert torch.equal(out.user, fresh().user)


def test_defaults_specs_and_registry(data):
    assert MODELS['dualgnn'] is DualGNN
    assert DualGNN.train_defaults == {'lr': 0.1}
    d = model_defaults('dualgnn')
    assert d['embedding_dim'] == 64 and d['hidden_dim'] == 256 and d['num_layers'] == 2
    assert d['user_topk'] == 40 and d['user_weighting'] == 'softmax'
    assert d['reg_weight'] == 0.1 and d['mmrec_inplace_sum'] is False
    specs = DualGNN.graph_specs(modalities=['image', 'text'])
    assert specs == {'adj': UserItemGraph(norm='sym'), 'user_graph': UserCoInteraction(k=40)}
    assert DualGNN.graph_specs(user_topk=7)['user_graph'] == UserCoInteraction(k=7)
    model = make(data)
    assert isinstance(model.mlp['image'][1], torch.nn.LeakyReLU)
    assert model.mlp['image'][0].out_features == 256
    assert torch.allclose(model.graph.to_dense(), dense_sym_adjacency(data), atol=1e-6)
    assert 'dualgnn' in repr(model).lower()


def test_single_modality_and_bad_arguments(data):
    adj = UserItemGraph(norm='sym').build(data, 'keep')
    uu = UserCoInteraction().build(data, 'keep')
    text_only = DualGNN(U, I, {'text': data['text'].x}, adj, uu)
    out = text_only()
    assert list(out.modalities) == ['text']
    u = out.modalities['text'].user
    assert torch.allclose(out.user, u + text_only.user_graph(u), atol=1e-6)
    with pytest.raises(ValueError, match='adj'):
        DualGNN(U, I, {'text': data['text'].x}, uu, uu)
    with pytest.raises(ValueError, match='user_graph'):
        DualGNN(U, I, {'text': data['text'].x}, adj, adj)
    with pytest.raises(ValueError, match='sampling_rng'):
        DualGNN(U, I, {'text': data['text'].x}, adj, uu, sampling_rng='numpy')
    with pytest.raises(ValueError, match='reg_weight'):
        DualGNN(U, I, {'text': data['text'].x}, adj, uu, reg_weight=-1.)
