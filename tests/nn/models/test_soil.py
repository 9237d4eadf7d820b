import pytest
import torch
import torch.nn.functional as F

from mrdib_pyg.data.derived import UserItemGraph, build_graphs
from mrdib_pyg.data.interest_graphs import AttractivenessGraph, InterestItemGraph
from mrdib_pyg.nn.models.registry import MODELS, model_defaults
from mrdib_pyg.nn.models.soil import SOIL
from mrdib_pyg.nn.mrdib import MRdIB
from tests.nn.models.tiny import (I11, U11, assert_every_parameter_trained, batch_of_four,
                                   dense_infonce, graph_with_untrained_item)

U, I = U11, I11


def make_data(modalities=('image', 'text'), seed=0):
    return graph_with_untrained_item(modalities, seed, text_shift=1.)


@pytest.fixture
def data():
    return make_data()


def batch():
    return batch_of_four()


def build(data, seed=0, **kwargs):
    torch.manual_seed(seed)
    return SOIL.from_data(data, **kwargs)


def dense_graphs(data, knn_a=2, knn_i=10, knn_k=10, quirk=False):
    g = build_graphs(data, {
        'adj': UserItemGraph(), 'R': UserItemGraph(block='user_item'),
        'Aa': AttractivenessGraph(k=knn_a),
        'Ra': AttractivenessGraph(k=knn_a, block='user_item', degree_quirk=quirk),
        'G': {m: InterestItemGraph(m, k=knn_i, knn_k=knn_k) for m in ('image', 'text')}})
    out = {k: v.to_dense() for k, v in g.items() if k != 'G'}
    out['G'] = {m: v.to_dense() for m, v in g['G'].items()}
    return out


def soil_forward(model, data, graphs):
    r"""SOIL's forward (models/soil.py, image and text) with dense matrices."""
    adj = graphs['adj'] + graphs['Aa'] / 2
    R = graphs['R'] + graphs['Ra'] / 2
    ego = torch.cat([model.user_emb, model.item_emb])
    layers = [ego]
    for _ in range(2):
        layers.append(adj @ layers[-1])
    content = torch.stack(layers, 1).mean(1)
    views = {}
    for m in ('image', 'text'):
        pur = model.purifiers[m]
        item = model.item_emb * torch.sigmoid(pur.gate(pur.proj(data[m].x)))
        item = graphs['G'][m] @ item
        views[m] = torch.cat([R @ item, item])
    q = model.fuser.query
    w = torch.softmax(torch.cat([q(views['image']), q(views['text'])], -1), -1)
    common = w[:, :1] * views['image'] + w[:, 1:] * views['text']
    side = (views['image'] + views['text'] - common) / 3
    final = content + side
    return final[:U], final[U:], side, content


# -- contract ----------------------------------------------------------------------------
def test_forward_backward_reaches_every_parameter(data):
    model = build(data)
    assert_every_parameter_trained(model, batch())


def test_score_is_the_eval_forward_dot_product(data):
    model = build(data)
    model.eval()
    users = torch.tensor([0, 4, U - 1])
    scores = model.score(users)
    out = model.embeddings()
    assert scores.shape == (3, I)
    assert torch.allclose(scores, out.user[users] @ out.item.t(), atol=1e-6)


def test_deterministic_by_seed(data):
    a, b, c = build(data, seed=3)(), build(data, seed=3)(), build(data, seed=4)()
    assert torch.equal(a.user, b.user) and torch.equal(a.item, b.item)
    assert not torch.equal(a.user, c.user)


def test_every_modality_is_exposed_with_its_user_table(data):
    model = build(data)
    out = model()
    assert model.modalities == ['text', 'image']
    assert sorted(out.modalities) == ['image', 'text']
    g = dense_graphs(data)
    R = g['R'] + g['Ra'] / 2  # the augmented readout
    for m, mo in out.modalities.items():
        assert mo.item.shape == (I, 64) and mo.user.shape == (U, 64)
        assert out.modality_user_table(m) is mo.user
        assert torch.allclose(mo.user, R @ mo.item, atol=1e-6)


def test_mrdib_attaches_without_touching_the_backbone(data):
    model = build(data)
    out = model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = MRdIB.from_output(out)(out, batch())
    assert torch.isfinite(res.loss)
    res.loss.backward()
    assert model.item_emb.grad is not None and model.item_emb.grad.abs().sum() > 0
    assert model.purifiers['image'].proj.weight.grad.abs().sum() > 0
    after = model.state_dict()
    assert sorted(after) == sorted(before)
    assert all(torch.equal(before[k], after[k]) for k in before)


# -- SOIL semantics ----------------------------------------------------------------------
def test_declared_graphs_and_augmented_operators(data):
    specs = SOIL.graph_specs(knn_k=7, knn_i=4, knn_a=3, modalities=['image', 'text'])
    assert specs['adj'] == UserItemGraph(norm='sym')
    assert specs['attractive'] == AttractivenessGraph(k=3)
    assert specs['attractive_user_item'] == AttractivenessGraph(k=3, block='user_item')
    assert specs['item_graphs']['text'] == InterestItemGraph('text', k=4, knn_k=7)
    quirk = SOIL.graph_specs(soil_degree_quirk=True, modalities=['image'])
    assert quirk['attractive_user_item'].degree_quirk
    model = build(data)
    g = dense_graphs(data)
    assert torch.allclose(model.ui_graph.to_dense(), g['adj'] + g['Aa'] / 2, atol=1e-7)
    assert torch.allclose(model.user_item.to_dense(), g['R'] + g['Ra'] / 2, atol=1e-7)
    for m in ('image', 'text'):
        assert torch.equal(model.item_graphs[m].to_dense(), g['G'][m])


def test_degree_quirk_is_selectable(data):
    fixed, quirk = build(data), build(data, soil_degree_quirk=True)
    g, gq = dense_graphs(data), dense_graphs(data, quirk=True)
    # by default the readout block is the user->item block of the normalised R^a
    assert torch.allclose(g['Ra'], g['Aa'][:U, U:])
    assert torch.allclose(quirk.user_item.to_dense(), gq['R'] + gq['Ra'] / 2, atol=1e-7)
    assert not torch.allclose(quirk.user_item.to_dense(), fixed.user_item.to_dense(),
                              atol=1e-4)
    assert torch.equal(quirk.ui_graph.to_dense(), fixed.ui_graph.to_dense())
    assert 'soil_degree_quirk=True' in repr(quirk)


def test_forward_equals_soil_dense_transcription(data):
    model = build(data)
    out = model()
    user, item, side, content = soil_forward(model, data, dense_graphs(data))
    assert torch.allclose(out.extras['content'], content, atol=1e-6)
    assert torch.allclose(out.extras['side'], side, atol=1e-6)
    assert torch.allclose(out.user, user, atol=1e-6)
    assert torch.allclose(out.item, item, atol=1e-6)


def test_loss_equals_soil_formula(data):
    model = build(data, cl_loss=0.1, cl_loss2=0.01)
    out = model()
    b = batch()
    u, p, n = out.user[b.users], out.item[b.pos], out.item[b.neg]
    bpr = -F.logsigmoid((u * p).sum(-1) - (u * n).sum(-1)).mean()
    side, content = out.extras['side'], out.extras['content']
    s_u, s_i = side[:U], side[U:]
    c_u, c_i = content[:U], content[U:]
    l_ii = dense_infonce(s_i[b.pos], c_i[b.pos], 0.2) + dense_infonce(s_u[b.users],
                                                                     c_u[b.users], 0.2)
    l_ui = dense_infonce(u, c_i[b.pos], 0.2) + dense_infonce(u, s_i[b.pos], 0.2)
    assert torch.allclose(model.loss(out, b), bpr + 0.1 * l_ii + 0.01 * l_ui, atol=1e-6)
    got_ii, got_ui = model.contrastive_losses(out, b)
    assert torch.allclose(got_ii, l_ii, atol=1e-6) and torch.allclose(got_ui, l_ui, atol=1e-6)
    # no L2 term: with both weights 0 the loss is the BPR term alone
    model.cl_loss = model.cl_loss2 = 0.
    assert torch.allclose(model.loss(out, b), bpr, atol=1e-7)


def test_features_are_frozen_and_graphs_fixed(data):
    model = build(data)
    assert not any('feat' in n for n, _ in model.named_parameters())
    graphs = {m: model.item_graphs[m].to_dense().clone() for m in model.modalities}
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.loss(model(), batch()).backward()
    opt.step()
    model.pre_epoch(1)
    assert torch.equal(model.feature('image'), data['image'].x)
    for m in model.modalities:
        assert torch.equal(model.item_graphs[m].to_dense(), graphs[m])


def test_defaults_are_soil_yaml():
    assert MODELS['soil'] is SOIL
    d = model_defaults('soil')
    assert {k: d[k] for k in ('embedding_dim', 'n_ui_layers', 'n_layers', 'knn_k', 'knn_i',
                              'knn_a', 'cl_loss', 'cl_loss2', 'cl_temperature',
                              'attractive_weight', 'soil_degree_quirk')} == dict(
        embedding_dim=64, n_ui_layers=2, n_layers=1, knn_k=10, knn_i=10, knn_a=2,
        cl_loss=1e-3, cl_loss2=1e-3, cl_temperature=0.2, attractive_weight=0.5,
        soil_degree_quirk=False)
    assert SOIL.train_defaults == {'lr': 1e-3, 'lr_decay': 0.96, 'lr_decay_step': 50}


@pytest.mark.parametrize('modalities', [('image', ), ('image', 'text', 'audio')])
def test_any_number_of_modalities(modalities):
    data = make_data(modalities)
    model = build(data, knn_k=5, knn_i=3)
    out = model()
    assert sorted(out.modalities) == sorted(modalities)
    assert model.fuser.num_modalities == len(modalities)
    model.loss(out, batch()).backward()
    assert torch.isfinite(out.user).all()
    if len(modalities) == 1:  # side = the view / 2
        m = out.modalities['image']
        assert torch.allclose(out.extras['side'], torch.cat([m.user, m.item]) / 2, atol=1e-6)


def test_graphs_can_be_passed_and_are_checked(data):
    model = build(data)
    graphs = {m: model.item_graphs[m].adj for m in model.modalities}
    again = SOIL.from_data(data, item_graphs=graphs)
    assert torch.equal(again.item_graphs['text'].to_dense(), model.item_graphs['text'].to_dense())
    g = build_graphs(data, SOIL.graph_specs(modalities=['image', 'text']))
    feats = {m: data[m].x for m in ('image', 'text')}
    with pytest.raises(ValueError, match='one item graph per modality'):
        SOIL(U, I, feats, g['adj'], g['user_item'], g['attractive'],
             g['attractive_user_item'], {'image': graphs['image']})
    with pytest.raises(ValueError, match='attractive has shape'):
        SOIL(U, I, feats, g['adj'], g['user_item'], g['user_item'],
             g['attractive_user_item'], graphs)
    with pytest.raises(ValueError, match='cl_temperature'):
        SOIL(U, I, feats, g['adj'], g['user_item'], g['attractive'],
             g['attractive_user_item'], graphs, cl_temperature=0)
