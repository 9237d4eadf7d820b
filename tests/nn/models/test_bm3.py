import pytest
import torch
import torch.nn.functional as F

from mrdib_pyg.data.derived import UserItemGraph
from mrdib_pyg.nn.models.bm3 import BM3
from mrdib_pyg.nn.models.registry import MODELS, model_defaults
from mrdib_pyg.nn.mrdib import MRdIB
from mrdib_pyg.nn.output import BPRBatch

from tests.nn.models.tiny import I, U, tiny_graph



@pytest.fixture
def data():
    return tiny_graph()


def batch(neg=None):
    users, pos = torch.tensor([0, 1, 2, 2, 3]), torch.tensor([0, 1, 2, 4, 0])
    return BPRBatch(users, pos, torch.tensor([3, 4, 5, 6, 7]) if neg is None else neg)


def make(data, seed=0, **kwargs):
    torch.manual_seed(seed)
    return BM3.from_data(data, **kwargs)


def lightgcn_mean(adj, x, layers):
    xs = [x]
    for _ in range(layers):
        xs.append(adj @ xs[-1])
    return torch.stack(xs).mean(0)


def mmrec_loss(model, b, seed):
    r"""MMRec's ``calculate_loss``, written out: full tables, full-table predictor and
    projections, targets by F.dropout under no_grad (user, item, text, image), EmbLoss on
    the full online tables divided by their last row count."""
    torch.manual_seed(seed)
    adj = model.graph.to_dense()
    e = lightgcn_mean(adj, torch.cat([model.user_emb, model.item_emb]), model.n_layers)
    u, i = e[:U], e[U:] + model.item_emb
    feats = {m: model.trs[m](model.modality_features(m)) for m in ('text', 'image')}
    p = model.dropout
    with torch.no_grad():
        ut, it = F.dropout(u.clone(), p), F.dropout(i.clone(), p)
        ft = {m: F.dropout(x.clone(), p) for m, x in feats.items()}
    P = model.bootstrap.predictor
    pu, pi = P(u)[b.users], P(i)[b.pos]
    it_b, ut_b = it[b.pos], ut[b.users]

    def cos(a, c):
        return 1 - F.cosine_similarity(a, c, dim=-1).mean()
    lt = cos(P(feats['text'])[b.pos], it_b)
    ltv = cos(P(feats['text'])[b.pos], ft['text'][b.pos])
    lv = cos(P(feats['image'])[b.pos], it_b)
    lvt = cos(P(feats['image'])[b.pos], ft['image'][b.pos])
    reg = (torch.norm(u) + torch.norm(i)) / I
    return (cos(pu, it_b) + cos(pi, ut_b)) + model.reg_weight * reg \
        + model.cl_weight * (lt + lv + ltv + lvt)


def test_registered_with_mmrec_defaults():
    assert MODELS['bm3'] is BM3
    d = model_defaults('bm3')
    assert {k: d[k] for k in ('embedding_dim', 'n_layers', 'dropout', 'reg_weight',
                              'cl_weight', 'freeze_features')} == dict(
        embedding_dim=64, n_layers=1, dropout=0.3, reg_weight=0.1, cl_weight=2.0,
        freeze_features=False)
    assert BM3.train_defaults == {}  # MMRec's lr 1e-3, no decay
    assert BM3.multimodal


def test_declares_its_graph():
    assert BM3.graph_specs(modalities=['image', 'text']) == {'adj': UserItemGraph(norm='sym')}


def test_forward_backward_score(data):
    model = make(data)
    out = model()
    assert out.user.shape == (U, 64) and out.item.shape == (I, 64)
    loss = model.loss(out, batch())
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    for p in (model.user_emb, model.item_emb, model.bootstrap.predictor.weight,
              model.trs['image'].weight, model.feature_emb['text']):
        assert p.grad is not None and p.grad.abs().sum() > 0
    model.eval()
    users = torch.tensor([0, 5, U - 1])
    s = model.score(users)
    full = model.embeddings()
    assert s.shape == (3, I)
    assert torch.allclose(s, full.user[users] @ full.item.t(), atol=1e-6)
    assert 'bm3' in repr(model).lower()


@pytest.mark.parametrize('layers', [0, 1, 2])
def test_tables_and_score_are_mmrecs(data, layers):
    model = make(data, n_layers=layers)
    out = model()
    e = lightgcn_mean(model.graph.to_dense(), torch.cat([model.user_emb, model.item_emb]),
                      layers)
    u, i = e[:U], e[U:] + model.item_emb  # item residual on the ID embedding
    assert torch.allclose(out.extras['user_online'], u, atol=1e-6)
    assert torch.allclose(out.extras['item_online'], i, atol=1e-6)
    P = model.bootstrap.predictor
    model.eval()
    # full_sort_predict: predictor on both sides.
    assert torch.allclose(model.score(torch.arange(U)), P(u) @ P(i).t(), atol=1e-5)


def wide_batch():
    # Every item: the loss indexes the full projections instead of re-projecting rows.
    users = torch.arange(I) % U
    return BPRBatch(users, torch.arange(I).flip(0), users)


@pytest.mark.parametrize('kwargs', [{}, dict(n_layers=2, dropout=0.5, reg_weight=0.01),
                                    dict(dropout=0.0)])
@pytest.mark.parametrize('make_batch', [batch, wide_batch])
def test_loss_is_mmrecs_with_the_same_seed(data, kwargs, make_batch):
    model = make(data, **kwargs)
    b = make_batch()
    expected = mmrec_loss(model, b, seed=11)
    torch.manual_seed(11)
    loss = model.loss(model(), b)
    assert torch.allclose(loss, expected, atol=1e-5)
    # ... and so are its gradients (our loss projects only the batch's feature rows).
    grads = torch.autograd.grad(loss, list(model.parameters()))
    ref = torch.autograd.grad(expected, list(model.parameters()))
    for g, r in zip(grads, ref):
        assert torch.allclose(g, r, atol=1e-6)


def test_negatives_are_ignored(data):
    model = make(data)
    out = model()
    torch.manual_seed(0)
    a = model.loss(out, batch())
    torch.manual_seed(0)
    # Out-of-range "negatives" would raise if the loss indexed them.
    b = model.loss(out, batch(neg=torch.full((5, ), 10 ** 9)))
    assert torch.equal(a, b)


def test_regularizer_is_emb_loss_over_the_item_count(data):
    model = make(data, reg_weight=0.5)
    out = model()
    u, i = out.extras['user_online'], out.extras['item_online']
    expected = 0.5 * (u.norm() + i.norm()) / I  # not / batch size
    assert torch.allclose(model.regularizer(out, batch()), expected)


def test_target_dropout_is_drawn_per_call(data):
    model = make(data, dropout=0.5)
    out = model()
    torch.manual_seed(1)
    a = model.loss(out, batch())
    torch.manual_seed(1)
    assert torch.equal(model.loss(out, batch()), a)
    assert not torch.equal(model.loss(out, batch()), a)  # the stream moved on
    # Without dropout the loss is deterministic and draws nothing.
    plain = make(data, dropout=0.0)
    state = torch.get_rng_state()
    plain.loss(plain(), batch())
    assert torch.equal(torch.get_rng_state(), state)


def test_deterministic_by_seed(data):
    a, b, c = make(data, seed=3), make(data, seed=3), make(data, seed=4)
    oa, ob, oc = a(), b(), c()
    assert torch.equal(oa.user, ob.user) and torch.equal(oa.item, ob.item)
    assert not torch.equal(oa.user, oc.user)


def test_every_modality_is_output(data):
    model = make(data)
    out = model()
    assert model.modalities == ['text', 'image']
    assert list(out.modalities) == ['text', 'image']
    for m in ('image', 'text'):
        mo = out.modalities[m]
        assert mo.item.shape == (I, 64) and mo.user is None
        assert out.modality_user_table(m) is out.user  # paired with the ranking users
        assert torch.allclose(mo.item, model.trs[m](data[m].x))


def test_features_are_trained_like_mmrec_unless_frozen(data):
    b = batch()
    model = make(data)
    names = dict(model.named_parameters())
    assert 'feature_emb.image' in names and 'feature_emb.text' in names
    assert torch.equal(model.modality_features('image'), data['image'].x)
    assert model.modality_features('image').data_ptr() != data['image'].x.data_ptr()  # a copy
    model.loss(model(), b).backward()
    grad = model.feature_emb['image'].grad
    assert grad[b.pos].abs().sum() > 0
    others = torch.ones(I, dtype=torch.bool)
    others[b.pos] = False
    assert grad[others].abs().sum() == 0  # only the batch's items have online rows

    frozen = make(data, freeze_features=True)
    assert len(frozen.feature_emb) == 0
    assert not any('feat' in k for k in frozen.state_dict())
    frozen.loss(frozen(), b).backward()
    assert frozen.trs['image'].weight.grad.abs().sum() > 0


def test_mrdib_attaches_without_touching_the_backbone(data):
    model = make(data)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = model()
    mrdib = MRdIB.from_output(out)
    res = mrdib(out, batch())
    assert torch.isfinite(res.loss)
    res.loss.backward()
    # MRdIB's gradient reaches the backbone through the modality and user tables.
    assert model.trs['image'].weight.grad.abs().sum() > 0
    assert model.feature_emb['text'].grad.abs().sum() > 0
    assert model.user_emb.grad.abs().sum() > 0
    after = model.state_dict()
    assert sorted(after) == sorted(before)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_one_modality(data):
    del data['text']
    del data['item', 'has', 'text']
    del data['text', 'rev_has', 'item']
    model = make(data)
    assert model.modalities == ['image'] and list(model().modalities) == ['image']
    loss = model.loss(model(), batch())
    assert torch.isfinite(loss)


@pytest.mark.parametrize('kwargs, match', [
    (dict(dropout=1.0), 'dropout'),
    (dict(dropout=-0.1), 'dropout'),
    (dict(reg_weight=-1.0), 'reg_weight'),
    (dict(cl_weight=-1.0), 'cl_weight'),
    (dict(n_layers=-1), 'n_layers'),
    (dict(embedding_dim=0), 'embedding_dim'),
])
def test_rejects_bad_options(data, kwargs, match):
    with pytest.raises(ValueError, match=match):
        make(data, **kwargs)


def test_rejects_graphs_of_the_wrong_size(data):
    with pytest.raises(ValueError, match='adj has shape'):
        BM3.from_data(data, adj=torch.eye(U + I + 1).to_sparse_csr())


def test_ranking_projects_no_feature_training_does(data):
    model = make(data)
    model.eval()
    model.score(torch.tensor([0, 1]))
    assert model.embeddings().modalities.computed() == []  # ranking uses the ID tables only
    model.train()
    out = model()
    model.loss(out, batch()).backward()  # the alignment terms read both projections
    assert out.modalities.computed() == ['text', 'image']
