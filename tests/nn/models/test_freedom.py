import pytest
import torch
import torch.nn.functional as F

from mrdib_pyg.data.derived import MixedItemKNN, TrainingEdges, UserItemGraph
from mrdib_pyg.data.schema import RATES
from mrdib_pyg.nn.models.freedom import FREEDOM, logsigmoid_bpr
from mrdib_pyg.nn.models.registry import MODELS, model_defaults
from mrdib_pyg.nn.mrdib import MRdIB
from mrdib_pyg.nn.output import BPRBatch

from tests.nn.models.tiny import I, U, tiny_graph



@pytest.fixture
def data():
    return tiny_graph()


def batch():
    return BPRBatch(torch.tensor([0, 1, 2, 3]), torch.tensor([0, 1, 2, 4]),
                    torch.tensor([3, 4, 5, 6]))


def make(data, seed=0, **kwargs):
    torch.manual_seed(seed)
    return FREEDOM.from_data(data, knn_k=3, **kwargs)


def lightgcn_mean(adj, x, layers=2):
    xs = [x]
    for _ in range(layers):
        xs.append(adj @ xs[-1])
    return torch.stack(xs).mean(0)


def test_registered_with_mmrec_defaults():
    assert MODELS['freedom'] is FREEDOM
    d = model_defaults('freedom')
    assert {k: d[k] for k in ('embedding_dim', 'feat_embed_dim', 'knn_k', 'mm_image_weight',
                              'n_mm_layers', 'n_ui_layers', 'dropout', 'reg_weight',
                              'freeze_features')} == dict(
        embedding_dim=64, feat_embed_dim=64, knn_k=10, mm_image_weight=0.1, n_mm_layers=1,
        n_ui_layers=2, dropout=0.8, reg_weight=0.0, freeze_features=False)
    assert FREEDOM.train_defaults == {}  # MMRec's lr 1e-3, no decay


def test_declares_its_graphs():
    specs = FREEDOM.graph_specs(modalities=['image', 'text'], knn_k=5, mm_image_weight=0.3)
    assert specs['adj'] == UserItemGraph(norm='sym')
    assert specs['train_edges'] == TrainingEdges()
    assert specs['mm_adj'] == MixedItemKNN(weights=(('image', 0.3), ), k=5, weighted=False,
                                           loop=True, norm='sym')
    assert FREEDOM.graph_specs()['mm_adj'].k == 10


def test_forward_backward_score(data):
    model = make(data)
    model.pre_epoch(0)
    out = model()
    assert out.user.shape == (U, 64) and out.item.shape == (I, 64)
    loss = model.loss(out, batch())
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    assert model.user_emb.grad.abs().sum() > 0 and model.item_emb.grad.abs().sum() > 0
    model.eval()
    users = torch.tensor([0, 5, U - 1])
    s = model.score(users)
    full = model.embeddings()
    assert s.shape == (3, I)
    assert torch.allclose(s, full.user[users] @ full.item.t(), atol=1e-6)
    assert 'freedom' in repr(model).lower()


def test_tables_are_the_two_graphs(data):
    model = make(data)
    mm_adj = model.item_graph.to_dense()
    h = mm_adj @ model.item_emb
    x = torch.cat([model.user_emb, model.item_emb])
    # Evaluation: the full sym-norm graph.
    model.eval()
    out = model()
    e = lightgcn_mean(model.graph.to_dense(), x)
    assert torch.allclose(out.user, e[:U], atol=1e-6)
    assert torch.allclose(out.item, e[U:] + h, atol=1e-6)
    # Training: this epoch's pruned graph, the same item-item term.
    model.train()
    model.pre_epoch(0)
    out = model()
    pruned = model.train_graph.to_dense()
    e = lightgcn_mean(pruned, x)
    assert torch.allclose(out.user, e[:U], atol=1e-6)
    assert torch.allclose(out.item, e[U:] + h, atol=1e-6)
    assert not torch.allclose(pruned, model.graph.to_dense())


def test_frozen_item_graph_mixes_unweighted_knn(data):
    model = make(data, mm_image_weight=0.25)
    s = model.item_graph.to_dense()
    # Every per-modality row holds k entries 1/k (self included), so rows sum to one and
    # an entry is 0.25/k (image only), 0.75/k (text only) or 1/k (both).
    assert torch.allclose(s.sum(1), torch.ones(I))
    k = 3
    values = {round(v, 5) for v in s[s > 0].tolist()}
    assert values <= {round(0.25 / k, 5), round(0.75 / k, 5), round(1 / k, 5)}
    assert torch.all(s.diagonal() > 0)


def test_pruning_per_epoch(data):
    model = make(data)
    E = data[RATES].edge_index.size(1)
    model.pre_epoch(0)
    a = model.train_graph.to_dense()
    model.pre_epoch(1)
    b = model.train_graph.to_dense()
    assert (a != 0).sum() == 2 * int(E * (1. - 0.8))
    assert not torch.equal(a, b)
    torch.rand(5)  # the global stream does not move the draws
    model.pre_epoch(0)
    assert torch.equal(model.train_graph.to_dense(), a)
    # Kept edges are training edges, re-normalised with their own degrees.
    ub = a[:U, U:]
    train = torch.zeros(U, I)
    train[data[RATES].edge_index[0], data[RATES].edge_index[1]] = 1
    assert torch.all(train[ub > 0] == 1)
    deg_u, deg_i = (ub > 0).sum(1).float(), (ub > 0).sum(0).float()
    r, c = (ub > 0).nonzero().t()
    assert torch.allclose(ub[r, c], (deg_u[r] * deg_i[c]).rsqrt())


def test_resumed_run_redraws_the_same_graphs(data):
    model = make(data, seed=1)
    model.pre_epoch(7)
    expected = model.train_graph.to_dense()
    resumed = make(data, seed=2)
    resumed.load_state_dict(model.state_dict())  # the checkpoint carries pruning_seed
    resumed.pre_epoch(7)
    assert torch.equal(resumed.train_graph.to_dense(), expected)
    assert torch.equal(make(data, pruning_seed=3).pruning_seed, torch.tensor(3))


def test_global_stream_is_mmrecs_draw(data):
    model = make(data, pruning_rng='global')
    torch.manual_seed(5)
    model.pre_epoch(0)
    torch.manual_seed(5)
    kept = model.pruning.edge_index[:, torch.multinomial(model.pruning.prob,
                                                         model.pruning.num_keep)]
    ub = model.train_graph.to_dense()[:U, U:]
    assert sorted(map(tuple, (ub > 0).nonzero().tolist())) == sorted(map(tuple, kept.t().tolist()))


def test_knn_k_above_the_item_count_is_lowered(data):
    with pytest.warns(UserWarning, match='k=10 exceeds'):
        model = FREEDOM.from_data(data)
    assert (model.item_graph.to_dense() > 0).all()


def test_first_training_forward_draws_a_graph(data):
    model = make(data)
    assert model.train_graph is None
    model()
    assert model.train_graph is not None


def test_no_dropout_trains_on_the_full_graph(data):
    model = make(data, dropout=0.0)
    state = torch.get_rng_state()
    model.pre_epoch(0)
    assert torch.equal(torch.get_rng_state(), state)
    train_out = model()
    model.eval()
    eval_out = model()
    assert torch.allclose(train_out.item, eval_out.item)


def test_deterministic_by_seed(data):
    a, b, c = make(data, seed=3), make(data, seed=3), make(data, seed=4)
    for m in (a, b, c):
        m.pre_epoch(0)
    oa, ob, oc = a(), b(), c()
    assert torch.equal(oa.user, ob.user) and torch.equal(oa.item, ob.item)
    assert torch.equal(a.train_graph.to_dense(), b.train_graph.to_dense())
    assert not torch.equal(oa.user, oc.user)
    assert not torch.equal(a.train_graph.to_dense(), c.train_graph.to_dense())


def test_every_modality_is_output(data):
    model = make(data)
    out = model()
    assert model.modalities == ['text', 'image']
    assert list(out.modalities) == ['text', 'image']
    for m, d in (('image', 16), ('text', 6)):
        mo = out.modalities[m]
        assert mo.item.shape == (I, 64) and mo.user is None
        assert out.modality_user_table(m) is out.user  # paired with the final user table
        assert torch.allclose(mo.item, model.trs[m](data[m].x))


def test_loss_is_mmrec_logsigmoid_bpr_plus_weighted_modality_bpr(data):
    b = batch()
    model = make(data, reg_weight=0.3)
    out = model()
    u = out.user[b.users]

    def bpr(items):
        return -F.logsigmoid((u * items[b.pos]).sum(-1) - (u * items[b.neg]).sum(-1)).mean()

    expected = bpr(out.item) + 0.3 * (bpr(out.modalities['text'].item)
                                      + bpr(out.modalities['image'].item))
    assert torch.allclose(model.loss(out, b), expected)
    # logsigmoid, not log(1e-10 + sigmoid): they part on saturated pairs.
    big = torch.full((2, 1), 40.)
    assert logsigmoid_bpr(big.new_ones(2, 1), -big, big) == pytest.approx(80.0)


def test_features_are_trained_like_mmrec_unless_frozen(data):
    b = batch()
    model = make(data, reg_weight=1e-3)
    names = dict(model.named_parameters())
    assert 'feature_emb.image' in names and 'feature_emb.text' in names
    assert torch.equal(model.modality_features('image'), data['image'].x)
    assert model.modality_features('image').data_ptr() != data['image'].x.data_ptr()  # a copy
    model.loss(model(), b).backward()
    assert model.feature_emb['image'].grad.abs().sum() > 0 and model.trs['text'].weight.grad is not None
    assert 'feature_emb.image' in model.state_dict()

    frozen = make(data, reg_weight=1e-3, freeze_features=True)
    assert len(frozen.feature_emb) == 0
    assert not any('feat' in k for k in frozen.state_dict())
    frozen.loss(frozen(), b).backward()
    assert frozen.trs['image'].weight.grad.abs().sum() > 0


def test_zero_reg_weight_skips_the_modality_terms(data):
    # MMRec adds 0 * (modality BPR): zero gradients, so Adam leaves those parameters as
    # they are. We skip the terms: same training, no backward through the features.
    model = make(data)
    model.loss(model(), batch()).backward()
    assert model.feature_emb['image'].grad is None and model.trs['image'].weight.grad is None


def test_mrdib_attaches_without_touching_the_backbone(data):
    model = make(data)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = model()
    mrdib = MRdIB.from_output(out)
    res = mrdib(out, batch())
    assert torch.isfinite(res.loss)
    (model.loss(out, batch()) + res.loss).backward()
    # MRdIB's gradient reaches the backbone through the modality tables.
    assert model.trs['image'].weight.grad.abs().sum() > 0
    assert model.feature_emb['text'].grad.abs().sum() > 0
    after = model.state_dict()
    assert sorted(after) == sorted(before)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_one_modality(data):
    del data['text']
    del data['item', 'has', 'text']
    del data['text', 'rev_has', 'item']
    model = make(data)
    assert model.modalities == ['image'] and list(model().modalities) == ['image']
    assert torch.allclose(model.item_graph.to_dense().sum(1), torch.ones(I))


@pytest.mark.parametrize('kwargs, match', [
    (dict(feat_embed_dim=32), 'feat_embed_dim must equal embedding_dim'),
    (dict(dropout=1.0), 'dropout'),
    (dict(dropout=-0.1), 'dropout'),
    (dict(reg_weight=-1.0), 'reg_weight'),
    (dict(pruning_rng='numpy'), 'pruning_rng'),
])
def test_rejects_bad_options(data, kwargs, match):
    with pytest.raises(ValueError, match=match):
        make(data, **kwargs)


def test_rejects_graphs_of_the_wrong_size(data):
    with pytest.raises(ValueError, match='mm_adj has shape'):
        FREEDOM.from_data(data, mm_adj=torch.eye(I + 1).to_sparse_csr())


def test_modality_projections_are_computed_only_when_read(data):
    # at reg_weight=0 bare FREEDOM's loss reads no modality table: no feature is projected
    model = make(data)
    out, b = model.forward_batch(batch())
    model.loss(out, b).backward()
    assert out.modalities.computed() == []
    model.eval()
    model.score(torch.tensor([0, 1]))
    assert model.embeddings().modalities.computed() == []
    model.train()
    weighted = make(data, reg_weight=1e-3)
    out, b = weighted.forward_batch(batch())
    weighted.loss(out, b).backward()
    assert out.modalities.computed() == ['text', 'image']
    assert weighted.trs['image'].weight.grad.abs().sum() > 0
    # a plug-in reading them gets the projections of the batch's items, with gradient
    out, b = model.forward_batch(batch())
    assert out.modalities['image'].item.requires_grad
    assert out.modalities['image'].item.size(0) == out.item.size(0)
