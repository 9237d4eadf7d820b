import pytest
import torch
import torch.nn.functional as F

from mrdib_pyg.nn.models.mmgcn import MMGCN
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
    return MMGCN.from_data(data, **kwargs)


def dense_mean_adjacency(data):
    r"""PyG's mean aggregation over the undirected training graph, one node at a time."""
    ei = data['user', 'rates', 'item'].edge_index
    nbrs = {n: set() for n in range(U + I)}
    for u, i in ei.t().tolist():
        nbrs[u].add(U + i)
        nbrs[U + i].add(u)
    A = torch.zeros(U + I, U + I)
    for n, s in nbrs.items():
        for j in s:
            A[n, j] = 1. / len(s)
    return A


def mmrec_reference(model, data):
    r"""MMRec's MMGCN.forward written out densely: per modality
    x = normalize([pref; MLP(feat) or feat]); 3 x (h = lrelu(A x W), x_hat = lrelu(lin(x)) +
    id, x = lrelu(g([h, x_hat])) or lrelu(g(h) + x_hat)); mean over modalities."""
    lrelu = lambda t: F.leaky_relu(t, 0.01)  # noqa: E731
    A, e = dense_mean_adjacency(data), model.id_embedding
    reps = []
    for m in ('image', 'text'):
        enc = model.encoders[m]
        feat = data[m].x
        x = enc.projection(feat) if enc.projection is not None else feat
        x = F.normalize(torch.cat([enc.preference, x]))
        for conv in enc.convs:
            h = lrelu(A @ x @ conv.weight)
            x_hat = lrelu(conv.linear(x)) + e
            x = (lrelu(conv.combine(torch.cat([h, x_hat], 1))) if conv.concat
                 else lrelu(conv.combine(h) + x_hat))
        reps.append(x)
    return (reps[0] + reps[1]) / 2


@pytest.mark.parametrize('concat', [True, False])
def test_forward_equals_mmrec_formulas(data, concat):
    model = make(data, concat=concat)
    out = model()
    ref = mmrec_reference(model, data)
    assert torch.allclose(torch.cat([out.user, out.item]), ref, atol=1e-6)


def test_forward_backward_and_score(data):
    model = make(data, reg_weight=0.1)
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
    a, b, c = make(data, seed=3)(), make(data, seed=3)(), make(data, seed=4)()
    assert torch.equal(a.user, b.user) and torch.equal(a.item, b.item)
    assert not torch.equal(a.user, c.user)


def test_modalities_and_fusion(data):
    model = make(data)
    assert model.modalities == ['text', 'image']
    out = model()
    assert sorted(out.modalities) == ['image', 'text']
    for mo in out.modalities.values():
        assert mo.item.shape == (I, 64) and mo.user.shape == (U, 64)
    mean_user = (out.modalities['text'].user + out.modalities['image'].user) / 2
    mean_item = (out.modalities['text'].item + out.modalities['image'].item) / 2
    assert torch.allclose(out.user, mean_user) and torch.allclose(out.item, mean_item)


def test_mrdib_attaches_without_touching_the_backbone(data):
    model = make(data)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = model()
    mrdib = MRdIB.from_output(out)
    res = mrdib(out, batch())
    assert torch.isfinite(res.loss)
    res.loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    after = model.state_dict()
    assert sorted(after) == sorted(before)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_aggregation_is_neighbour_mean(data):
    model = make(data)
    A = dense_mean_adjacency(data)
    assert torch.allclose(model.to_user.to_dense(), A[:U, U:])
    assert torch.allclose(model.to_item.to_dense(), A[U:, :U])


def test_loss_is_mmrec_bpr_plus_regulariser(data):
    model = make(data, reg_weight=0.5)
    out, b = model(), batch()
    u, p, n = out.user[b.users], out.item[b.pos], out.item[b.neg]
    bpr = -torch.log(torch.sigmoid((u * p).sum(1) - (u * n).sum(1))).mean()
    # MMRec: users repeated twice against the interleaved (pos, neg) rows, plus the whole
    # image preference matrix (the text preference is not regularised).
    e = model.id_embedding
    users = b.users.repeat_interleave(2)
    items = torch.stack([b.pos, b.neg]).t().reshape(-1) + U
    reg = (e[users] ** 2 + e[items] ** 2).mean() + (model.encoders['image'].preference ** 2).mean()
    assert torch.allclose(model.regularizer(out, b), 0.5 * reg, atol=1e-7)
    assert torch.allclose(model.loss(out, b), bpr + 0.5 * reg, atol=1e-6)
    # default reg_weight: MMRec's first grid value
    assert make(data).regularizer(out, b).item() == 0.0


def test_mmrec_frozen_embeddings(data):
    model = make(data, trainable_embeddings=False)
    names = dict(model.named_parameters())
    assert 'id_embedding' not in names
    assert not any(n.endswith('preference') for n in names)
    assert 'id_embedding' in model.state_dict()  # frozen draw kept in checkpoints
    frozen = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.loss(model(), batch()).backward()
    opt.step()
    now = model.state_dict()
    assert torch.equal(now['id_embedding'], frozen['id_embedding'])
    assert torch.equal(now['encoders.text.preference'], frozen['encoders.text.preference'])
    assert not torch.equal(now['encoders.image.projection.weight'],
                           frozen['encoders.image.projection.weight'])
    trainable = make(data)
    assert 'id_embedding' in dict(trainable.named_parameters())


def test_defaults_projections_and_registry(data):
    assert MODELS['mmgcn'] is MMGCN
    assert MMGCN.train_defaults == {'lr': 1e-4}
    d = model_defaults('mmgcn')
    assert d['embedding_dim'] == 64 and d['num_layers'] == 3 and d['reg_weight'] == 0.0
    assert d['concat'] is True and d['projections'] == (('image', 256), )
    model = make(data)
    assert model.encoders['image'].projection.out_features == 256
    assert model.encoders['text'].projection is None  # text goes in raw
    assert all(len(e.convs) == 3 for e in model.encoders.values())
    other = make(data, projections=(('text', 4), ('audio', 8)))  # absent names ignored
    assert other.encoders['text'].projection.out_features == 4
    assert other.encoders['image'].projection is None
    assert 'mmgcn' in repr(model).lower()


def test_single_modality_and_bad_graphs(data):
    text_only = MMGCN(U, I, {'text': data['text'].x},
                      MMGCN.graph_specs()['adj'].build(data, 'keep'))
    out = text_only()
    assert list(out.modalities) == ['text']
    assert torch.allclose(out.user, out.modalities['text'].user)
    with pytest.raises(ValueError, match=r'\[21, 21\]'):
        MMGCN(U, I, {'text': data['text'].x}, torch.eye(U).to_sparse_csr())
    with pytest.raises(ValueError, match='bipartite'):
        MMGCN(U, I, {'text': data['text'].x}, torch.eye(U + I).to_sparse_csr())
