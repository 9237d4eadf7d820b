import pytest
import torch
import torch.nn.functional as F

from mrdib_pyg.data.derived import ItemKNN, UserItemGraph
from mrdib_pyg.nn.models.lattice import LATTICE
from mrdib_pyg.nn.models.registry import MODELS, model_defaults
from mrdib_pyg.nn.mrdib import MRdIB
from tests.nn.models.tiny import I11, U11, batch_of_four, graph_with_untrained_item

U, I, K = U11, I11, 4
GRAPH_PARAMS = {'feature_emb.image', 'feature_emb.text', 'trs.text.weight', 'trs.text.bias',
                'trs.image.weight', 'trs.image.bias', 'item_graph.modal_weight'}


def make_data(modalities=('image', 'text'), seed=0):
    return graph_with_untrained_item(modalities, seed)


@pytest.fixture
def data():
    return make_data()


def batch():
    return batch_of_four()


def build(data, seed=0, **kwargs):
    torch.manual_seed(seed)
    model = LATTICE.from_data(data, **{'knn_k': K, **kwargs})
    with torch.no_grad():  # unequal modality shares, so a swapped order shows
        model.item_graph.modal_weight.copy_(torch.tensor([0.3, 0.8]))
    return model


def grads_of(model):
    return {n for n, p in model.named_parameters()
            if p.grad is not None and p.grad.abs().sum() > 0}


# -- dense references written from MMRec's lattice.py -------------------------------------
def dense_ui(data):
    r"""MMRec's get_adj_mat: D^-1 (A + I), degrees counting the self-loop."""
    ei = data['user', 'rates', 'item'].edge_index
    A = torch.zeros(U + I, U + I)
    A[ei[0], ei[1] + U] = 1.
    A[ei[1] + U, ei[0]] = 1.
    A = A + torch.eye(U + I)
    return A / A.sum(1, keepdim=True)


def dense_knn(x, k=K):
    xn = x.div(x.norm(dim=-1, keepdim=True))
    val, ind = (xn @ xn.t()).topk(k, dim=-1)
    return torch.zeros(I, I).scatter_(-1, ind, val)


def laplacian(adj):
    d = adj.sum(-1).pow(-0.5)
    d[torch.isinf(d)] = 0.
    return d[:, None] * adj * d[None, :]


def mmrec_forward(model, data, lam=0.9):
    r"""MMRec's LATTICE.forward(build_item_graph=True), cf_model 'lightgcn', two modalities
    (its modal_weight is [image, text]), dense."""
    feats = {m: model.trs[m](model.modality_features(m)) for m in ('image', 'text')}
    w = torch.softmax(model.item_graph.modal_weight[[model.modalities.index('image'),
                                                     model.modalities.index('text')]], 0)
    learned = w[0] * dense_knn(feats['image']) + w[1] * dense_knn(feats['text'])
    original = (w[0] * laplacian(dense_knn(data['image'].x))
                + w[1] * laplacian(dense_knn(data['text'].x)))
    item_adj = (1 - lam) * laplacian(learned) + lam * original
    h = item_adj @ model.item_emb
    adj = dense_ui(data)
    layers = [torch.cat([model.user_emb, model.item_emb])]
    for _ in range(2):
        layers.append(adj @ layers[-1])
    u, i = torch.stack(layers, 1).mean(1).split([U, I])
    return u, i + F.normalize(h, p=2, dim=1), item_adj


# -- contract ----------------------------------------------------------------------------
def test_forward_backward_reaches_every_parameter(data):
    model = build(data)
    out = model()
    assert out.user.shape == (U, 64) and out.item.shape == (I, 64)
    loss = model.loss(out, batch())
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    assert grads_of(model) == {n for n, _ in model.named_parameters()}
    assert GRAPH_PARAMS | {'user_emb', 'item_emb'} == {n for n, _ in model.named_parameters()}


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


def test_every_modality_is_exposed_as_its_projected_features(data):
    model = build(data, feat_embed_dim=24)
    out = model()
    assert model.modalities == ['text', 'image']  # MMRec's order
    assert sorted(out.modalities) == ['image', 'text']
    for m, mo in out.modalities.items():
        assert mo.item.shape == (I, 24) and mo.user is None
        assert out.modality_user_table(m) is out.user
        assert torch.allclose(mo.item, model.trs[m](data[m].x), atol=1e-6)


def test_mrdib_attaches_without_touching_the_backbone(data):
    model = build(data)
    out = model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    mrdib = MRdIB.from_output(out)
    res = mrdib(out, batch())
    assert torch.isfinite(res.loss)
    res.loss.backward()
    assert model.trs['image'].weight.grad.abs().sum() > 0
    assert model.user_emb.grad is not None and model.user_emb.grad.abs().sum() > 0
    after = model.state_dict()
    assert sorted(after) == sorted(before)
    assert all(torch.equal(before[k], after[k]) for k in before)


# -- MMRec's semantics ---------------------------------------------------------------------
def test_declared_graphs_are_mmrecs(data):
    specs = LATTICE.graph_specs(knn_k=7, modalities=['text', 'image'])
    assert specs['adj'] == UserItemGraph(norm='row', self_loops=True)
    assert specs['item_graphs'] == {m: ItemKNN(m, k=7, weighted=True, loop=True, norm='sym')
                                    for m in ('text', 'image')}
    model = build(data)
    assert torch.allclose(model.ui_graph.to_dense(), dense_ui(data), atol=1e-6)
    for m in model.modalities:
        ei, w = model.item_graph.original(m)
        frozen = model.item_graph.to_dense(ei, w)
        assert torch.allclose(frozen, laplacian(dense_knn(data[m].x)), atol=1e-6)


def test_forward_equals_mmrec_dense_forward(data):
    model = build(data)
    with torch.no_grad():  # move the trained features off the frozen graphs' inputs
        model.feature_emb['image'].mul_(1.5)
    out = model()
    u_ref, i_ref, item_adj = mmrec_forward(model, data)
    assert torch.allclose(out.user, u_ref, atol=1e-6)
    assert torch.allclose(out.item, i_ref, atol=1e-6)
    assert torch.allclose(model.frozen_item_graph.to_dense(), item_adj.detach(), atol=1e-6)


def test_rebuild_schedule_follows_mmrecs_flag(data):
    model = build(data)
    model.train()
    model.pre_epoch(0)
    model.loss(model(), batch()).backward()  # first batch: rebuilt with gradient
    assert GRAPH_PARAMS <= grads_of(model)
    stale = model.frozen_item_graph.to_dense().clone()
    with torch.no_grad():
        model.trs['image'].weight.add_(0.5)
    model.zero_grad(set_to_none=True)
    out = model()  # later batch: the detached graph, stale w.r.t. the moved projection
    model.loss(out, batch()).backward()
    assert grads_of(model) == {'user_emb', 'item_emb'}
    assert torch.equal(model.frozen_item_graph.to_dense(), stale)
    model.pre_epoch(1)  # next epoch: rebuilt from the moved projection
    model.zero_grad(set_to_none=True)
    model.loss(model(), batch()).backward()
    assert GRAPH_PARAMS <= grads_of(model)
    assert not torch.allclose(model.frozen_item_graph.to_dense(), stale)
    _, _, item_adj = mmrec_forward(model, data)
    assert torch.allclose(model.frozen_item_graph.to_dense(), item_adj.detach(), atol=1e-6)


def test_a_no_grad_forward_does_not_consume_the_rebuild(data):
    model = build(data)
    model.pre_epoch(0)
    with torch.no_grad():
        model()  # e.g. sizing a plug-in before training
    assert model.build_item_graph
    model.loss(model(), batch()).backward()
    assert GRAPH_PARAMS <= grads_of(model) and not model.build_item_graph


def test_evaluation_rebuilds_and_training_reuses_that_graph(data):
    model = build(data)
    model.train()
    model()  # consumes the flag
    model.eval()
    before = model.score(torch.arange(U)).clone()
    with torch.no_grad():
        model.trs['text'].weight.mul_(-1.)
    model.invalidate_cache()
    after = model.score(torch.arange(U))
    assert not torch.allclose(before, after)  # MMRec's full_sort_predict rebuilds
    eval_graph = model.frozen_item_graph.to_dense().clone()
    model.train()
    out = model()  # no pre_epoch: MMRec reuses the graph its evaluation built
    assert torch.equal(model.frozen_item_graph.to_dense(), eval_graph)
    model.eval()
    assert torch.allclose(out.item, model.embeddings().item, atol=1e-6)


def test_loss_is_mmrecs_bpr_plus_l2(data):
    model = build(data, reg_weight=1e-2)
    out = model()
    b = batch()
    u, p, n = out.user[b.users], out.item[b.pos], out.item[b.neg]
    mf = -F.logsigmoid((u * p).sum(1) - (u * n).sum(1)).mean()
    l2 = (u.pow(2).sum() + p.pow(2).sum() + n.pow(2).sum()) / 2
    assert torch.allclose(model.loss(out, b), mf + 1e-2 * l2 / 4, atol=1e-7)
    model.reg_batch_size = 2048  # MMRec divides by its configured train_batch_size
    assert torch.allclose(model.loss(out, b), mf + 1e-2 * l2 / 2048, atol=1e-7)
    assert torch.equal(build(data).regularizer(out, b), torch.zeros(()))


def test_defaults_are_mmrecs_yaml():
    assert MODELS['lattice'] is LATTICE
    d = model_defaults('lattice')
    assert d['embedding_dim'] == 64 and d['feat_embed_dim'] == 64
    assert d['n_ui_layers'] == 2 and d['n_layers'] == 1 and d['knn_k'] == 10
    assert d['lambda_coeff'] == 0.9 and d['reg_weight'] == 0.0
    assert d['cf_model'] == 'lightgcn' and d['freeze_features'] is False
    assert LATTICE.train_defaults == {'lr': 1e-4, 'lr_decay': 0.96, 'lr_decay_step': 50}


def test_initial_state_is_mmrecs(data):
    torch.manual_seed(0)
    model = LATTICE.from_data(data, knn_k=K)
    assert torch.equal(model.item_graph.modal_weight.detach(), torch.full((2, ), 0.5))
    for m in model.modalities:
        assert torch.equal(model.feature_emb[m].detach(), data[m].x)


def test_mf_variant_freeze_features_and_one_modality(data):
    model = build(data, cf_model='mf', freeze_features=True)
    out = model()
    h = out.extras['item_graph_out']
    assert torch.equal(out.user, model.user_emb)
    assert torch.allclose(out.item, model.item_emb + F.normalize(h, dim=1), atol=1e-7)
    assert len(model.feature_emb) == 0
    model.loss(out, batch()).backward()
    assert model.trs['image'].weight.grad.abs().sum() > 0
    one = LATTICE.from_data(make_data(modalities=('image', )), knn_k=K)
    out = one()
    assert list(out.modalities) == ['image']
    assert torch.allclose(one.item_graph.mix_weights(), torch.ones(1))


def test_rejects_bad_arguments(data):
    with pytest.raises(ValueError, match="cf_model 'ngcf'"):
        build(data, cf_model='ngcf')
    with pytest.raises(ValueError, match='reg_weight'):
        build(data, reg_weight=-1.)
    model = build(data)
    feats = {m: data[m].x for m in ('image', 'text')}
    with pytest.raises(ValueError, match='one item graph per modality'):
        LATTICE(U, I, feats, model.ui_graph.adj, {'image': torch.eye(I).to_sparse()})
    with pytest.raises(ValueError, match='adj has shape'):
        LATTICE(U, I, feats, torch.eye(3).to_sparse(),
                {m: torch.eye(I).to_sparse() for m in feats})
    assert 'lattice' in repr(model).lower() and 'lambda_coeff=0.9' in repr(model)


def test_projections_are_computed_only_by_a_graph_rebuild_or_a_reader(data):
    model = build(data)
    model.pre_epoch(0)
    first = model()  # the epoch's rebuild reads every projection
    assert first.modalities.computed() == ['text', 'image']
    model.loss(first, batch()).backward()
    second = model()  # the frozen graph: bare LATTICE needs no projection
    model.loss(second, batch()).backward()
    assert second.modalities.computed() == []
    assert model.trs['image'].weight.grad is not None
    # a plug-in reading them gets the full table, with gradient
    assert second.modalities['image'].item.shape == (I, model.feat_embed_dim)
    assert second.modalities['image'].item.requires_grad
