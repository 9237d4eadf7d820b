import pytest
import torch
import torch.nn.functional as F

from mrdib_pyg.data.derived import UserItemGraph
from mrdib_pyg.nn.models.lgmrec import LGMRec, table_info_nce
from mrdib_pyg.nn.models.registry import MODELS, model_defaults
from mrdib_pyg.nn.mrdib import MRdIB
from tests.nn.models.tiny import (I11, U11, assert_every_parameter_trained, batch_of_four,
                                   graph_with_untrained_item)

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
    return LGMRec.from_data(data, **kwargs)


# -- dense references written from MMRec's code ------------------------------------------
def dense_r(data):
    ei = data['user', 'rates', 'item'].edge_index
    R = torch.zeros(U, I)
    R[ei[0], ei[1]] = 1.
    return R


def dense_ui(data):
    R = dense_r(data)
    A = torch.zeros(U + I, U + I)
    A[:U, U:], A[U:, :U] = R, R.t()
    d = (A.sum(1) + 1e-7).pow(-0.5)  # MMRec's epsilon
    return d[:, None] * A * d[None, :]


def mmrec_forward(model, data, seed, train=True, n_ui=2, n_mm=2, n_hyper=1):
    r"""MMRec's LGMRec forward with dense matrices on torch's global stream (image 'v'
    before text 't', as MMRec draws)."""
    R, adj = dense_r(data), dense_ui(data)
    inv = 1. / (R.sum(1, keepdim=True) + 1e-7)
    x = {m: data[m].x for m in ('image', 'text')}
    torch.manual_seed(seed)
    hyper = {}
    for m in ('image', 'text'):
        il = x[m] @ model.ghe[m].assignment.weight
        ul = R @ il
        hyper[m] = (F.gumbel_softmax(il, 0.2, dim=1), F.gumbel_softmax(ul, 0.2, dim=1))
    ego = torch.cat([model.user_emb, model.item_emb])
    layers = [ego]
    for _ in range(n_ui):
        layers.append(adj @ layers[-1])
    cge = torch.stack(layers, 1).mean(1)
    mge = {}
    for m in ('image', 'text'):
        item = x[m] @ model.mge[m].weight
        h = torch.cat([(R @ item) * inv, item])
        for _ in range(n_mm):
            h = adj @ h
        mge[m] = h
    local = cge + F.normalize(mge['image']) + F.normalize(mge['text'])
    ghe = {}
    for m in ('image', 'text'):
        hi, hu = hyper[m]
        hi, hu = F.dropout(hi, 0.5, train), F.dropout(hu, 0.5, train)
        ret = cge[U:]
        for _ in range(n_hyper):
            lat = hi.t() @ ret
            ret = hi @ lat
        ghe[m] = (hu @ lat, ret)
    glob = torch.cat(ghe['image']) + torch.cat(ghe['text'])
    final = local + 0.3 * F.normalize(glob)
    return final[:U], final[U:], ghe, mge, cge


def mmrec_ssl(e1, e2, all_e, tau=0.2):
    e1, e2, all_e = F.normalize(e1), F.normalize(e2), F.normalize(all_e)
    pos = torch.exp((e1 * e2).sum(1) / tau)
    ttl = torch.exp(e1 @ all_e.t() / tau).sum(1)
    return -torch.log(pos / ttl).sum()


# -- contract ----------------------------------------------------------------------------
def test_forward_backward_reaches_every_parameter(data):
    model = build(data)
    assert_every_parameter_trained(model, batch())
    assert len(list(model.parameters())) == 6  # ID tables, W_m and W_h per modality
    assert not any(p is model.feature('image') for p in model.parameters())  # frozen


def test_score_is_the_eval_forward_dot_product(data):
    model = build(data)
    model.eval()
    users = torch.tensor([0, 4, U - 1])
    scores = model.score(users)
    out = model.embeddings()
    assert scores.shape == (3, I)
    assert torch.allclose(scores, out.user[users] @ out.item.t(), atol=1e-6)
    assert torch.equal(model.score(users), scores)  # cached: one noise draw per evaluation


def test_deterministic_by_seed_and_fresh_noise_per_forward(data):
    a, b, c = build(data, seed=3), build(data, seed=3), build(data, seed=4)
    oa, ob = a(), b()
    assert torch.equal(a.noise_seed, b.noise_seed)
    assert torch.equal(oa.user, ob.user) and torch.equal(oa.item, ob.item)
    assert not torch.equal(c().user, oa.user)
    # every forward draws new noise from its own stream; the counter is in the state dict
    assert int(a.noise_step) == 1 and not torch.equal(a().user, oa.user)
    state = a.state_dict()
    assert {'noise_seed', 'noise_step'} <= state.keys()
    b.load_state_dict(state)
    assert torch.equal(a().user, b().user)  # a resumed model redraws the same noise
    torch.manual_seed(0)  # ... and nothing on the global stream shifts it
    d = build(data, seed=3)
    torch.rand(100)
    assert torch.equal(d().user, oa.user)


def test_every_modality_is_exposed_as_its_local_mge_tables(data):
    model = build(data, order=['image', 'text'], noise_rng='global')
    assert build(data).modalities == ['text', 'image']  # MMRec's order by default
    out = model()
    _, _, _, mge, cge = mmrec_forward(model, data, seed=0)
    assert sorted(out.modalities) == ['image', 'text']
    for m, mo in out.modalities.items():
        assert mo.item.shape == (I, 64) and mo.user.shape == (U, 64)
        assert out.modality_user_table(m) is mo.user
        assert torch.allclose(torch.cat([mo.user, mo.item]), mge[m], atol=1e-5)
    assert torch.allclose(out.extras['cge'], cge, atol=1e-6)


def test_mrdib_attaches_without_touching_the_backbone(data):
    model = build(data)
    out = model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    mrdib = MRdIB.from_output(out)
    res = mrdib(out, batch())
    assert torch.isfinite(res.loss)
    res.loss.backward()
    # the MGE tables are built from the features alone: MRdIB reaches each W_m
    for m in model.modalities:
        assert model.mge[m].weight.grad.abs().sum() > 0
    after = model.state_dict()
    assert sorted(after) == sorted(before)
    assert all(torch.equal(before[k], after[k]) for k in before)


# -- LGMRec semantics --------------------------------------------------------------------
def test_declared_graphs_equal_mmrec_construction(data):
    specs = LGMRec.graph_specs(modalities=['image', 'text'])
    assert specs == {'adj': UserItemGraph(norm='sym'),
                     'user_item': UserItemGraph(norm='none', block='user_item'),
                     'user_mean': UserItemGraph(norm='row', block='user_item')}
    model = build(data)
    R = dense_r(data)
    assert torch.allclose(model.graph.to_dense(), dense_ui(data), atol=1e-6)
    assert torch.equal(model.user_item.to_dense(), R)
    assert torch.allclose(model.user_mean.to_dense(), R / (R.sum(1, keepdim=True) + 1e-7),
                          atol=1e-6)


@pytest.mark.parametrize('train', [True, False])
def test_forward_equals_mmrec_dense_transcription_at_the_same_seed(data, train):
    model = build(data, order=['image', 'text'], noise_rng='global')
    model.train(train)
    torch.manual_seed(7)
    out = model()
    user, item, ghe, _, _ = mmrec_forward(model, data, seed=7, train=train)
    for m in ('image', 'text'):
        assert torch.allclose(out.extras[f'hyper_user/{m}'], ghe[m][0], atol=1e-5)
        assert torch.allclose(out.extras[f'hyper_item/{m}'], ghe[m][1], atol=1e-5)
    assert torch.allclose(out.user, user, atol=1e-5)
    assert torch.allclose(out.item, item, atol=1e-5)


def test_depths_and_cf_model_follow_mmrec(data):
    model = build(data, order=['image', 'text'], noise_rng='global', n_ui_layers=1,
                  n_mm_layers=3, n_hyper_layer=2)
    torch.manual_seed(1)
    out = model()
    user, item, _, _, _ = mmrec_forward(model, data, seed=1, n_ui=1, n_mm=3, n_hyper=2)
    assert torch.allclose(out.user, user, atol=1e-5)
    assert torch.allclose(out.item, item, atol=1e-5)
    mf = build(data, cf_model='mf')
    cge = mf().extras['cge']
    assert torch.equal(cge, torch.cat([mf.user_emb, mf.item_emb]))


def test_loss_equals_mmrec_formula(data):
    model = build(data, cl_weight=0.1, reg_weight=0.01)
    out = model()
    b = batch()
    u, p, n = out.user[b.users], out.item[b.pos], out.item[b.neg]
    bpr = -F.logsigmoid((u * p).sum(-1) - (u * n).sum(-1)).mean()
    x = out.extras
    # MMRec: anchor image, positive and negatives text; users, then positive items
    hcl = (mmrec_ssl(x['hyper_user/image'][b.users], x['hyper_user/text'][b.users],
                     x['hyper_user/text'])
           + mmrec_ssl(x['hyper_item/image'][b.pos], x['hyper_item/text'][b.pos],
                       x['hyper_item/text']))
    reg = (u.norm() + p.norm() + n.norm()) / 4  # plain norms over the batch size
    assert model.cl_pairs == [('image', 'text')]
    assert torch.allclose(model.contrastive_loss(out, b), hcl, rtol=1e-5)
    assert torch.allclose(model.regularizer(out, b), 0.01 * reg, atol=1e-7)
    assert torch.allclose(model.loss(out, b), bpr + 0.1 * hcl + 0.01 * reg, atol=1e-5)
    model.cl_weight = model.reg_weight = 0.
    assert torch.allclose(model.loss(out, b), bpr, atol=1e-7)


def test_table_info_nce_equals_log_ratio_form():
    torch.manual_seed(0)
    a, b, c = torch.randn(5, 4), torch.randn(5, 4), torch.randn(9, 4)
    assert torch.allclose(table_info_nce(a, b, c, 0.2), mmrec_ssl(a, b, c, 0.2), rtol=1e-5)
    assert torch.allclose(table_info_nce(a, b, c, 0.7), mmrec_ssl(a, b, c, 0.7), rtol=1e-5)


def test_evaluation_noise_is_mmrecs_unless_switched_off(data):
    model = build(data)
    model.eval()
    first = model.embeddings().item
    model.invalidate_cache()
    assert not torch.equal(model.embeddings().item, first)  # MMRec: Gumbel noise in eval
    det = build(data, eval_noise=False)
    det.eval()
    a = det.embeddings().item
    det.invalidate_cache()
    step = int(det.noise_step)
    assert torch.equal(det.embeddings().item, a) and int(det.noise_step) == step
    det.train()
    assert not torch.equal(det().item, a)  # training still draws noise


def test_defaults_are_mmrec_yaml():
    assert MODELS['lgmrec'] is LGMRec
    d = model_defaults('lgmrec')
    assert {k: d[k] for k in ('embedding_dim', 'feat_embed_dim', 'cf_model', 'n_ui_layers',
                              'n_mm_layers', 'n_hyper_layer', 'hyper_num', 'keep_rate',
                              'alpha', 'cl_weight', 'reg_weight', 'tau',
                              'eval_noise')} == dict(
        embedding_dim=64, feat_embed_dim=64, cf_model='lightgcn', n_ui_layers=2,
        n_mm_layers=2, n_hyper_layer=1, hyper_num=4, keep_rate=0.5, alpha=0.3,
        cl_weight=1e-4, reg_weight=1e-6, tau=0.2, eval_noise=True)
    assert LGMRec.train_defaults == {}  # the yaml sets no lr or scheduler


@pytest.mark.parametrize('modalities', [('image', ), ('image', 'text', 'audio')])
def test_any_number_of_modalities(modalities):
    data = make_data(modalities)
    model = build(data)
    out = model()
    assert sorted(out.modalities) == sorted(modalities)
    if len(modalities) == 1:
        assert model.cl_pairs == []
    else:  # every pair of MMRec's order (text, image, audio), the later one as anchor
        assert model.cl_pairs == [('image', 'text'), ('audio', 'text'), ('audio', 'image')]
    loss = model.loss(out, batch())
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(out.user).all()


def test_bad_arguments_are_refused(data):
    model = build(data)
    feats = {m: data[m].x for m in ('image', 'text')}
    adj, R, mean = model.graph.adj, model.user_item.adj, model.user_mean.adj
    with pytest.raises(ValueError, match='feat_embed_dim must equal embedding_dim'):
        LGMRec(U, I, feats, adj, R, mean, feat_embed_dim=32)
    with pytest.raises(ValueError, match="unknown cf_model 'gcn'"):
        LGMRec(U, I, feats, adj, R, mean, cf_model='gcn')
    with pytest.raises(ValueError, match="unknown noise_rng"):
        LGMRec(U, I, feats, adj, R, mean, noise_rng='cuda')
    with pytest.raises(ValueError, match='user_mean has shape'):
        LGMRec(U, I, feats, adj, R, adj)
    with pytest.raises(ValueError, match='keep_rate'):
        LGMRec(U, I, feats, adj, R, mean, keep_rate=2.)
    assert 'lgmrec' in repr(model).lower() and 'hyper_num=4' in repr(model)


@pytest.mark.parametrize('rank', [3, 8])
def test_table_info_nce_fast_paths_keep_values_and_gradients(rank):
    # rank 3 < d = 8 takes the low-rank path, rank 8 the plain one
    torch.manual_seed(0)
    a, p = torch.randn(5, 8, requires_grad=True), torch.randn(5, 8, requires_grad=True)
    h, z = torch.rand(9, rank, requires_grad=True), torch.randn(rank, 8, requires_grad=True)
    c = h @ z
    fast = table_info_nce(a, p, c, 0.2, (h, z))
    grads = torch.autograd.grad(fast, (a, p, h, z))
    ref = mmrec_ssl(a, p, h @ z, 0.2)
    ref_grads = torch.autograd.grad(ref, (a, p, h, z))
    assert torch.allclose(fast, ref, rtol=1e-5)
    for g, r in zip(grads, ref_grads):
        assert torch.allclose(g, r, atol=1e-4, rtol=1e-4)
    loss = table_info_nce(a, p, h @ z, 0.2, (h, z))
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match='backward through the same loss twice'):
        loss.backward()
