import pytest
import torch

from mrdib_pyg.data.schema import build_heterodata
from mrdib_pyg.nn.models import BPRMF, MODELS, VBPR, LightGCN
from mrdib_pyg.nn.output import BPRBatch

from tests.nn.models.tiny import tiny_batch, tiny_graph


@pytest.fixture
def data():
    g = torch.Generator().manual_seed(0)
    U, I = 12, 9
    ei = torch.unique(torch.stack([torch.randint(U, (60, ), generator=g),
                                   torch.randint(I, (60, ), generator=g)]), dim=1)
    feats = {'image': torch.randn(I, 16, generator=g), 'text': torch.randn(I, 6, generator=g)}
    return build_heterodata(U, I, ei, ei[:, :3], ei[:, 3:6], feats)


def batch():
    return BPRBatch(torch.tensor([0, 1, 2]), torch.tensor([0, 1, 2]), torch.tensor([3, 4, 5]))


@pytest.mark.parametrize('name', sorted(MODELS))
def test_backbone_contract(data, name):
    model = MODELS[name].from_data(data)
    out = model()
    assert out.user.size(0) == 12 and out.item.size(0) == 9
    assert out.user.size(1) == out.item.size(1)
    loss = model.loss(out, batch())
    loss.backward()
    assert torch.isfinite(loss)
    # Every backbone trains something (FREEDOM at reg_weight 0 skips its modality terms).
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    model.eval()
    s = model.score(torch.tensor([0, 5]))
    assert s.shape == (2, 9)
    ev = model.embeddings()  # evaluation tables (FREEDOM trains on a pruned graph)
    assert torch.allclose(s, ev.user[[0, 5]] @ ev.item.t(), atol=1e-5)
    assert bool(model.multimodal) == bool(out.modalities)
    assert name.lower() in repr(model).lower()


def test_score_cache_is_dropped_when_training_resumes(data):
    model = LightGCN.from_data(data)
    model.eval()
    before = model.score(torch.tensor([0]))
    with torch.no_grad():
        model.user_emb.add_(1.)
    assert torch.equal(model.score(torch.tensor([0])), before)  # cached in eval
    model.train()
    model.eval()
    assert not torch.allclose(model.score(torch.tensor([0])), before)


def test_vbpr_split_equals_mmrec_single_linear(data):
    torch.manual_seed(0)
    model = VBPR.from_data(data)
    assert model.modalities == ['text', 'image']  # MMRec concatenates text first
    out = model()
    raw = torch.cat([data['text'].x, data['image'].x], dim=-1)
    content = model.item_linear(raw)
    assert torch.allclose(out.item[:, 64:], content, atol=1e-5)
    # Per-modality parts are the weight slices, without the bias.
    parts = out.modalities['text'].item + out.modalities['image'].item
    assert torch.allclose(parts + model.item_linear.bias, content, atol=1e-5)
    assert torch.equal(out.modality_user, model.user_emb[:, 64:])
    assert torch.all(model.item_linear.bias == 0)


def test_vbpr_modality_hook_replaces_fusion_input(data):
    model = VBPR.from_data(data)
    base = model().item
    model.modality_hook = lambda reps: {m: torch.zeros_like(x) for m, x in reps.items()}
    out = model()
    assert torch.allclose(out.item[:, 64:], model.item_linear.bias.expand(9, 64))
    assert torch.equal(out.item[:, :64], base[:, :64])


def test_vbpr_rejects_bad_features():
    with pytest.raises(ValueError, match='one row per item'):
        VBPR(3, 4, {'image': torch.randn(5, 2)})
    with pytest.raises(ValueError, match='at least one'):
        VBPR(3, 4, {})


def test_mmrec_regularisers(data):
    b = batch()
    model = BPRMF.from_data(data, reg_weight=0.5)
    out = model()
    expected = 0.5 * (out.user[b.users].norm() + out.item[b.pos].norm()
                      + out.item[b.neg].norm()) / 3
    assert torch.allclose(model.regularizer(out, b), expected)
    lg = LightGCN.from_data(data, reg_weight=0.5)
    out = lg()
    expected = 0.5 * (lg.user_emb[b.users].norm() + lg.item_emb[b.pos].norm()
                      + lg.item_emb[b.neg].norm()) / 3
    assert torch.allclose(lg.regularizer(out, b), expected)


def test_vbpr_loss_gathers_once_with_the_base_class_value_and_gradients(data):
    from mrdib_pyg.nn.models.base import Recommender
    model = VBPR.from_data(data)
    b = batch()
    grads = []
    for loss_fn in (model.loss, lambda o, bb: Recommender.loss(model, o, bb)):
        model.zero_grad()
        out = model()
        loss = loss_fn(out, b)
        loss.backward()
        grads.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
    assert torch.allclose(grads[0][0], grads[1][0])
    assert all(torch.allclose(x, y, atol=1e-7) for x, y in zip(grads[0][1], grads[1][1]))


@pytest.mark.parametrize('name', ['freedom', 'bm3', 'lattice', 'mgcn'])
def test_trained_feature_copies_and_their_reset(data, name):
    # the four backbones that fine-tune their features, as MMRec, share one mechanism
    model = MODELS[name].from_data(data, reg_weight=1e-3)
    raw = data['image'].x
    assert set(model.feature_emb) == {'image', 'text'}
    assert model.modality_features('image') is model.feature_emb['image']
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    model.loss(model(), batch()).backward()
    opt.step()
    assert not torch.equal(model.modality_features('image'), raw)  # trained
    assert torch.equal(model.feature('image'), raw)  # the raw features stay
    state = model.state_dict()
    model.reset_parameters()
    assert torch.equal(model.modality_features('image'), raw)

    # a checkpoint from before the shared mechanism named the trained table feat_<m>
    old = {(k.replace('feature_emb.', 'feat_') if k.startswith('feature_emb.') else k): v
           for k, v in state.items()}
    model.load_state_dict(old)
    assert torch.equal(model.feature_emb['image'], state['feature_emb.image'])

    frozen = MODELS[name].from_data(data, freeze_features=True)
    assert len(frozen.feature_emb) == 0 and frozen.modality_features('image') is \
        frozen.feature('image')


@pytest.mark.parametrize('name', ['dualgnn', 'grcn', 'mmgcn'])
def test_score_with_last_training_forward(name):
    # the backbones whose MMRec code ranks with the tables of the last training forward
    torch.manual_seed(0)
    model = MODELS[name].from_data(tiny_graph(), score_last_train_forward=True)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    out = model()
    model.loss(out, tiny_batch()).backward()
    opt.step()
    model.eval()
    users = torch.arange(model.num_users)
    # MMRec ranks with the tables of the last training forward, before its step
    assert torch.allclose(model.score(users), out.user[users].detach() @ out.item.detach().t())
    fresh = model.forward()
    assert not torch.allclose(model.score(users), fresh.user @ fresh.item.t())
    model.score_last_train_forward = False
    assert torch.allclose(model.score(users), fresh.user @ fresh.item.t(), atol=1e-5)
