import pytest
import torch
import torch.nn.functional as F

from mrdib_pyg.data.derived import ItemKNN, UserItemGraph
from mrdib_pyg.data.schema import build_heterodata
from mrdib_pyg.nn.models.mgcn import MGCN, info_nce
from mrdib_pyg.nn.models.registry import MODELS, model_defaults
from mrdib_pyg.nn.mrdib import MRdIB
from tests.nn.models.tiny import (I11, U11, assert_every_parameter_trained, batch_of_four,
                                   dense_infonce, graph_with_untrained_item)

U, I = U11, I11


def make_data(modalities=('image', 'text'), seed=0):
    return graph_with_untrained_item(modalities, seed)


@pytest.fixture
def data():
    return make_data()


def batch():
    return batch_of_four()


def build(data, seed=0, **kwargs):
    torch.manual_seed(seed)
    return MGCN.from_data(data, **kwargs)


# -- dense references written from MMRec's code ------------------------------------------
def dense_ui(data):
    ei = data['user', 'rates', 'item'].edge_index
    A = torch.zeros(U + I, U + I)
    A[ei[0], ei[1] + U] = 1.
    A[ei[1] + U, ei[0]] = 1.
    d = A.sum(1).pow(-0.5)
    d[torch.isinf(d)] = 0.
    return d[:, None] * A * d[None, :]


def dense_knn(x, k=10):
    xn = x / x.norm(dim=-1, keepdim=True)
    val, idx = (xn @ xn.t()).topk(k, dim=-1)
    A = torch.zeros(I, I).scatter_(-1, idx, val)
    d = A.sum(1).pow(-0.5)  # MMRec: the weighted ROW sums on both sides
    return d[:, None] * A * d[None, :]


def mmrec_forward(model, data):
    r"""MMRec's MGCN forward (two modalities, image and text) with dense matrices."""
    adj = dense_ui(data)
    R = adj[:U, U:]
    ego = torch.cat([model.user_emb, model.item_emb])
    layers = [ego]
    for _ in range(2):
        layers.append(adj @ layers[-1])
    content = torch.stack(layers, 1).mean(1)
    views = {}
    for m in ('image', 'text'):
        pur = model.purifiers[m]
        feats = pur.proj(data[m].x)
        item = model.item_emb * torch.sigmoid(pur.gate(feats))
        item = dense_knn(data[m].x) @ item
        views[m] = torch.cat([R @ item, item])
    q = model.fuser.query
    w = torch.softmax(torch.cat([q(views['image']), q(views['text'])], -1), -1)
    common = w[:, :1] * views['image'] + w[:, 1:] * views['text']
    gate = {m: model.fuser.gates[model.modalities.index(m)] for m in ('image', 'text')}
    sep = {m: torch.sigmoid(gate[m](content)) * (views[m] - common) for m in views}
    side = (sep['image'] + sep['text'] + common) / 3
    final = content + side
    return final[:U], final[U:], side, content


# -- contract ----------------------------------------------------------------------------
def test_forward_backward_reaches_every_parameter(data):
    model = build(data)
    assert_every_parameter_trained(model, batch())
    assert {'feature_emb.image', 'feature_emb.text'} <= dict(model.named_parameters()).keys()


def test_score_is_the_eval_forward_dot_product(data):
    model = build(data)
    model.eval()
    users = torch.tensor([0, 4, U - 1])
    scores = model.score(users)
    out = model.embeddings()
    assert scores.shape == (3, I)
    assert torch.allclose(scores, out.user[users] @ out.item.t(), atol=1e-6)
    with torch.no_grad():
        fresh = model()
    assert torch.allclose(scores, fresh.user[users] @ fresh.item.t(), atol=1e-6)


def test_deterministic_by_seed(data):
    a, b, c = build(data, seed=3)(), build(data, seed=3)(), build(data, seed=4)()
    assert torch.equal(a.user, b.user) and torch.equal(a.item, b.item)
    assert not torch.equal(a.user, c.user)


def test_every_modality_is_exposed_with_its_user_table(data):
    model = build(data)
    out = model()
    assert model.modalities == ['text', 'image']  # MMRec's order
    assert sorted(out.modalities) == ['image', 'text']
    R = dense_ui(data)[:U, U:]
    for m, mo in out.modalities.items():
        assert mo.item.shape == (I, 64) and mo.user.shape == (U, 64)
        assert out.modality_user_table(m) is mo.user
        assert torch.allclose(mo.user, R @ mo.item, atol=1e-6)  # user modal = R^ . item modal


def test_mrdib_attaches_without_touching_the_backbone(data):
    model = build(data)
    out = model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    mrdib = MRdIB.from_output(out)
    res = mrdib(out, batch())
    assert torch.isfinite(res.loss)
    res.loss.backward()
    assert model.item_emb.grad is not None and model.item_emb.grad.abs().sum() > 0
    assert model.purifiers['image'].proj.weight.grad.abs().sum() > 0
    after = model.state_dict()
    assert sorted(after) == sorted(before)
    assert all(torch.equal(before[k], after[k]) for k in before)


# -- MGCN semantics ----------------------------------------------------------------------
def test_declared_graphs_equal_mmrec_construction(data):
    specs = MGCN.graph_specs(knn_k=7, modalities=['image', 'text'])
    assert specs['adj'] == UserItemGraph(norm='sym')
    assert specs['user_item'] == UserItemGraph(norm='sym', block='user_item')
    assert specs['item_graphs']['image'] == ItemKNN('image', k=7, weighted=True, loop=True,
                                                norm='sym')
    model = build(data)
    adj = dense_ui(data)
    assert torch.allclose(model.ui_graph.to_dense(), adj, atol=1e-6)
    assert torch.allclose(model.user_item.to_dense(), adj[:U, U:], atol=1e-6)
    assert model.user_item.to_dense()[:, I - 1].abs().sum() == 0  # item without an edge
    for m in ('image', 'text'):
        assert torch.allclose(model.item_graphs[m].to_dense(), dense_knn(data[m].x), atol=1e-6)
    # the item itself is one of its 10 neighbours, weighted by the cosine values
    knn = model.item_graphs['image'].to_dense()
    assert bool((knn.diagonal() > 0).all()) and int((knn > 0).sum(1).max()) == 10


def test_forward_equals_mmrec_dense_transcription(data):
    model = build(data)
    out = model()
    user, item, side, content = mmrec_forward(model, data)
    assert torch.allclose(out.extras['content'], content, atol=1e-6)
    assert torch.allclose(out.extras['side'], side, atol=1e-6)
    assert torch.allclose(out.user, user, atol=1e-6)
    assert torch.allclose(out.item, item, atol=1e-6)


def test_loss_equals_mmrec_formula(data):
    model = build(data, cl_loss=0.1, reg_weight=0.01)
    out = model()
    b = batch()
    u, p, n = out.user[b.users], out.item[b.pos], out.item[b.neg]
    mf = -F.logsigmoid((u * p).sum(-1) - (u * n).sum(-1)).mean()
    reg = 0.01 * 0.5 * (u.pow(2).sum() + p.pow(2).sum() + n.pow(2).sum()) / 4
    side, content = out.extras['side'], out.extras['content']
    cl = (dense_infonce(side[U + b.pos], content[U + b.pos], 0.2)
          + dense_infonce(side[b.users], content[b.users], 0.2))
    assert torch.allclose(model.loss(out, b), mf + reg + 0.1 * cl, atol=1e-6)
    assert torch.allclose(model.regularizer(out, b), reg, atol=1e-7)
    assert torch.allclose(model.contrastive_loss(out, b), cl, atol=1e-6)
    # MMRec divides the L2 term by its configured batch size, also for a smaller batch
    model.reg_batch_size = 2048
    assert torch.allclose(model.regularizer(out, b), reg * 4 / 2048, atol=1e-9)


def test_info_nce_equals_log_ratio_form():
    torch.manual_seed(0)
    a, b = torch.randn(9, 5), torch.randn(9, 5)
    b[3] = b[1]  # duplicated rows stay in-batch negatives
    assert torch.allclose(info_nce(a, b, 0.2), dense_infonce(a, b, 0.2), atol=1e-5)
    assert torch.allclose(info_nce(a, b, 0.5), dense_infonce(a, b, 0.5), atol=1e-5)


@pytest.mark.parametrize('temperature', [0.2, 0.05, 0.01])  # 0.01: the max-shifted branch
def test_info_nce_values_and_gradients_match_mmrec_in_float64(temperature):
    torch.manual_seed(0)
    a = torch.randn(64, 8, dtype=torch.float64, requires_grad=True)
    b = torch.randn(64, 8, dtype=torch.float64, requires_grad=True)
    ours = info_nce(a, b, temperature)
    ref = dense_infonce(a, b, temperature)
    assert torch.allclose(ours, ref, rtol=1e-10)
    g_ours = torch.autograd.grad(ours, (a, b))
    g_ref = torch.autograd.grad(ref, (a, b))
    for x, y in zip(g_ours, g_ref):
        assert torch.allclose(x, y, rtol=1e-8, atol=1e-12)
    # float32, matched rows (cosine 1): exp(1 / tau) must not overflow on any branch
    x = torch.randn(16, 8)
    assert torch.isfinite(info_nce(x, x.clone(), temperature))


def test_features_are_trained_by_default_and_can_be_frozen(data):
    model = build(data)
    graphs = {m: model.item_graphs[m].to_dense().clone() for m in model.modalities}
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.loss(model(), batch()).backward()
    opt.step()
    assert not torch.equal(model.feature_emb['image'], data['image'].x)
    assert torch.equal(model.feature('image'), data['image'].x)  # raw buffer untouched
    for m in model.modalities:  # the item graphs stay those of the raw features
        assert torch.equal(model.item_graphs[m].to_dense(), graphs[m])
    frozen = build(data, freeze_features=True)
    assert len(frozen.feature_emb) == 0
    assert frozen.modality_features('image') is frozen.feature('image')
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params - sum(p.numel() for p in frozen.parameters()) == I * (16 + 6)
    frozen.loss(frozen(), batch()).backward()
    assert torch.equal(frozen.feature('image'), data['image'].x)


def test_defaults_are_mmrec_yaml():
    assert MODELS['mgcn'] is MGCN
    d = model_defaults('mgcn')
    assert {k: d[k] for k in ('embedding_dim', 'n_ui_layers', 'n_layers', 'knn_k',
                              'reg_weight', 'cl_loss', 'cl_temperature',
                              'freeze_features')} == dict(
        embedding_dim=64, n_ui_layers=2, n_layers=1, knn_k=10, reg_weight=1e-4,
        cl_loss=1e-3, cl_temperature=0.2, freeze_features=False)
    assert MGCN.train_defaults == {'lr': 1e-3, 'lr_decay': 0.96, 'lr_decay_step': 50}


@pytest.mark.parametrize('modalities', [('image', ), ('image', 'text', 'audio')])
def test_any_number_of_modalities(modalities):
    data = make_data(modalities)
    model = build(data, knn_k=5)
    out = model()
    assert sorted(out.modalities) == sorted(modalities)
    assert model.fuser.num_modalities == len(modalities)
    model.loss(out, batch()).backward()
    assert torch.isfinite(out.user).all()
    if len(modalities) == 1:  # no specific part: side = common / 2 = the view / 2
        m = out.modalities['image']
        side = out.extras['side']
        assert torch.allclose(side, torch.cat([m.user, m.item]) / 2, atol=1e-6)


def test_graphs_can_be_passed_and_are_checked(data):
    model = build(data)
    graphs = {m: model.item_graphs[m].adj for m in model.modalities}
    again = MGCN.from_data(data, item_graphs=graphs)
    assert torch.equal(again.item_graphs['text'].to_dense(), model.item_graphs['text'].to_dense())
    feats = {m: data[m].x for m in ('image', 'text')}
    adj, ui = model.ui_graph.adj, model.user_item.adj
    with pytest.raises(ValueError, match='one item graph per modality'):
        MGCN(U, I, feats, adj, ui, {'image': graphs['image']})
    with pytest.raises(ValueError, match='user_item has shape'):
        MGCN(U, I, feats, adj, adj, graphs)
    with pytest.raises(ValueError, match='reg_batch_size'):
        MGCN(U, I, feats, adj, ui, graphs, reg_batch_size=0)
    assert 'mgcn' in repr(model).lower() and 'knn_k=10' in repr(model)


def test_knn_k_beyond_the_item_count_is_clamped_with_a_warning(data):
    with pytest.warns(UserWarning, match='k=20 exceeds the 11 candidate'):
        model = build(data, knn_k=20)
    assert int((model.item_graphs['image'].to_dense() > 0).sum(1).min()) == I


def test_negative_knn_degree_isolates_the_item_instead_of_nan():
    # signed features and k = all items: some rows of cosine values sum below zero, whose
    # D^-1/2 is NaN in MMRec
    g = torch.Generator().manual_seed(0)
    feats = {'image': torch.randn(I, 3, generator=g), 'text': torch.randn(I, 3, generator=g)}
    ei = torch.stack([torch.arange(U) % I, (torch.arange(U) * 7) % I])
    data = build_heterodata(U, I, ei, ei[:, :2], ei[:, 2:4], feats)
    with pytest.warns(UserWarning, match='non-finite weights'):
        model = build(data, knn_k=I)
    out = model()
    assert torch.isfinite(out.user).all() and torch.isfinite(out.item).all()
    assert torch.isfinite(model.loss(out, batch()))


def test_modality_output_purified_moves_only_the_attachment_point(data):
    a, b = build(data), build(data, modality_output='purified')
    oa, ob = a(), b()
    assert torch.equal(oa.user, ob.user) and torch.equal(oa.item, ob.item)  # same model
    for m in a.modalities:
        purified = b.purifiers[m](b.item_emb, b.modality_features(m))
        assert torch.allclose(ob.modalities[m].item, purified)
        assert torch.allclose(ob.modalities[m].user, b.user_item(purified))
        assert not torch.allclose(ob.modalities[m].item, oa.modalities[m].item)
    with pytest.raises(ValueError, match='modality_output'):
        build(data, modality_output='raw')
