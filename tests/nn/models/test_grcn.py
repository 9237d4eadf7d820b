import pytest
import torch
import torch.nn.functional as F

from mrdib_pyg.nn.models.grcn import GRCN
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
    return GRCN.from_data(data, **kwargs)


def mmrec_reference(model, data):
    r"""MMRec's GRCN.forward written out with dense [U, I] matrices: per modality
    p = normalize(P), f = normalize(lrelu(W x + b)) (routing leaves p unchanged), S = p f^T on
    the training pairs, attention = softmax of S over each user's row / each item's column,
    h = [p + A_u f ; f + A_i^T p]; edge weights relu(max_m att * confidence of the sending
    node); id network x + Ax + A^2 x on normalize(E); tables [id | image | text]."""
    ei = data['user', 'rates', 'item'].edge_index
    mask = torch.zeros(U, I, dtype=torch.bool)
    mask[ei[0], ei[1]] = True
    conf = model.refiner.confidence
    reps, w_user, w_item = [], [], []
    for k, m in enumerate(('image', 'text')):
        conv = model.refiner.convs[m]
        p = F.normalize(conv.preference)
        f = F.normalize(F.leaky_relu(conv.projection(data[m].x), 0.01))
        S = (p @ f.t()).masked_fill(~mask, float('-inf'))
        att_u = torch.softmax(S, dim=1).nan_to_num(0.)  # over each user's items
        att_i = torch.softmax(S, dim=0).nan_to_num(0.)  # over each item's users
        reps.append(torch.cat([p + att_u @ f, f + att_i.t() @ p]))
        w_user.append(att_u * conf[U:, k].view(1, I))   # the item sends to the user
        w_item.append(att_i * conf[:U, k].view(U, 1))   # the user sends to the item
    Wu = torch.maximum(*w_user).clamp_min(0) * mask
    Wi = torch.maximum(*w_item).clamp_min(0) * mask
    A = torch.zeros(U + I, U + I)
    A[:U, U:] = Wu
    A[U:, :U] = Wi.t()
    x = F.normalize(model.id_embedding)
    h1 = A @ x
    ids = x + h1 + A @ h1
    return torch.cat([ids] + reps, dim=1)


def test_forward_equals_mmrec_formulas(data):
    model = make(data, route_to_users=False)  # MMRec's identity routing
    out = model()
    ref = mmrec_reference(model, data)
    assert out.user.shape == (U, 192) and out.item.shape == (I, 192)
    assert torch.allclose(torch.cat([out.user, out.item]), ref, atol=1e-6)


def test_forward_backward_and_score(data):
    model = make(data)
    out = model()
    loss = model.loss(out, batch())
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    model.eval()
    users = torch.tensor([0, 5, U - 1])
    s = model.score(users)
    assert s.shape == (3, I)
    assert torch.allclose(s, out.user[users].detach() @ out.item.detach().t(), atol=1e-5)


def test_deterministic_by_seed(data):
    a, b, c = make(data, seed=3)(), make(data, seed=3)(), make(data, seed=4)()
    assert torch.equal(a.user, b.user) and torch.equal(a.item, b.item)
    assert not torch.equal(a.user, c.user)


def test_modalities_and_concatenation(data):
    model = make(data)
    assert model.modalities == ['image', 'text']  # MMRec GRCN's [id | image | text]
    out = model()
    assert sorted(out.modalities) == ['image', 'text']
    for mo in out.modalities.values():
        assert mo.item.shape == (I, 64) and mo.user.shape == (U, 64)
    assert torch.equal(out.user[:, 64:128], out.modalities['image'].user)
    assert torch.equal(out.item[:, 128:], out.modalities['text'].item)


def test_mrdib_attaches_without_touching_the_backbone(data):
    model = make(data)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = model()
    res = MRdIB.from_output(out)(out, batch())
    assert torch.isfinite(res.loss)
    res.loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    after = model.state_dict()
    assert sorted(after) == sorted(before)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_loss_is_mmrec_bpr_plus_regulariser(data):
    model = make(data, reg_weight=0.5)
    out, b = model(), batch()
    u, p, n = out.user[b.users], out.item[b.pos], out.item[b.neg]
    bpr = -torch.log(torch.sigmoid((u * p).sum(1) - (u * n).sum(1))).mean()
    # MMRec: users repeated twice against the interleaved (pos, neg) rows; the batch users'
    # preferences of every modality; the whole image preference matrix once more.
    e = model.id_embedding
    users = b.users.repeat_interleave(2)
    items = torch.stack([b.pos, b.neg]).t().reshape(-1) + U
    pv, pt = model.preference('image'), model.preference('text')
    reg = ((e[users] ** 2 + e[items] ** 2).mean() + (pv ** 2).mean()
           + (pv[users] ** 2).mean() + (pt[users] ** 2).mean())
    assert torch.allclose(model.regularizer(out, b), 0.5 * reg, atol=1e-7)
    assert torch.allclose(model.loss(out, b), bpr + 0.5 * reg, atol=1e-6)
    none = make(data, reg_weight=0.5, reg_preferences=())
    assert none.regularizer(out, b) < model.regularizer(out, b)


def test_refined_graph_prunes_and_feeds_the_id_network(data):
    model = make(data)
    g = model.refine()
    w = torch.cat([g.to_user, g.to_item])
    assert (w >= 0).all() and (w == 0).any()
    with torch.no_grad():  # every message pruned: the id network returns its input
        model.refiner.confidence.fill_(-1.)
    out = model()
    assert torch.allclose(out.user[:, :64], F.normalize(model.id_embedding[:U]))


def test_routing_default_is_the_papers_and_mmrec_identity_selectable(data):
    mmrec = make(data, route_to_users=False)
    paper = make(data)
    paper.load_state_dict(mmrec.state_dict())
    conv = mmrec.refiner.convs['text']
    pref, items = conv.inputs(mmrec.feature('text'))
    assert torch.equal(conv.route(pref, items, mmrec.edges), pref)
    assert not torch.allclose(paper().user, mmrec().user)


def test_defaults_and_registry(data):
    assert MODELS['grcn'] is GRCN
    assert GRCN.train_defaults == {'lr': 1.0}  # the first value of MMRec's lr grid
    d = model_defaults('grcn')
    assert d['embedding_dim'] == 64 and d['latent_dim'] == 64 and d['num_routing'] == 3
    assert d['reg_weight'] == 0.1 and d['id_layers'] == 2
    assert d['route_to_users'] is True and d['reg_preferences'] == ('image', )
    assert 'grcn' in repr(make(data)).lower()


def test_single_modality_other_sizes_and_bad_graphs(data):
    edge_index = GRCN.graph_specs()['edge_index'].build(data, 'keep')
    text_only = GRCN(U, I, {'text': data['text'].x}, edge_index, embedding_dim=8,
                     latent_dim=4)
    out = text_only()
    assert list(out.modalities) == ['text'] and out.user.shape == (U, 12)
    assert text_only.refiner.confidence.shape == (U + I, 1)
    with pytest.raises(ValueError, match=r'\[2, E\]'):
        GRCN(U, I, {'text': data['text'].x}, edge_index.t())
    with pytest.raises(ValueError, match='outside'):
        GRCN(U - 5, I, {'text': data['text'].x}, edge_index)
