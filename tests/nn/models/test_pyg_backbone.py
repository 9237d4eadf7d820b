r"""PyG models that are not ours, plugged in through :class:`PyGBackbone`: PyG's
``to_hetero(GraphSAGE)``, ``GCN`` over the homogeneous graph and ``LightGCN`` with its own
embeddings; bare and with MRdIB."""
import pytest
import torch
from torch_geometric.nn import GCN, GraphSAGE, to_hetero
from torch_geometric.nn.models import LightGCN as PyGLightGCN

from mrdib_pyg.data import SyntheticMM
from mrdib_pyg.data.schema import RATES
from mrdib_pyg.nn.models.pyg_backbone import PyGBackbone
from mrdib_pyg.nn.mrdib import MRdIB
from mrdib_pyg.nn.output import BPRBatch
from mrdib_pyg.train import TrainConfig, Trainer, seed_everything

from tests.nn.models.test_contract import batch, popularity_recall


@pytest.fixture(scope='module')
def tiny():
    return SyntheticMM(num_users=40, num_items=30, image_dim=24, text_dim=12,
                       interactions_per_user=(4, 8), seed=3)[0]


@pytest.fixture(scope='module')
def small():
    return SyntheticMM(num_users=400, num_items=300, interactions_per_user=(10, 20),
                       temperature=0.25, popularity=0.2, seed=1)[0]


def sage(data):
    return PyGBackbone(to_hetero(GraphSAGE((-1, -1), 64, num_layers=2), data.metadata(),
                                 aggr='mean'), data)


def gcn(data):
    return PyGBackbone(GCN(64, 64, num_layers=2), data, mode='homogeneous')


def lightgcn(data):
    enc = PyGLightGCN(PyGBackbone.num_nodes(data), 64, num_layers=2)
    return PyGBackbone(enc, data, mode='homogeneous', id_embeddings=False,
                       call=lambda e, x, ei: e.get_embedding(ei))


BUILDERS = {'sage': sage, 'gcn': gcn, 'lightgcn': lightgcn}


@pytest.mark.parametrize('name', sorted(BUILDERS))
def test_tables_scores_and_mrdib(tiny, name):
    seed_everything(0)
    model = BUILDERS[name](tiny)
    out = model()
    assert out.user.shape == (tiny['user'].num_nodes, 64)
    assert out.item.shape == (tiny['item'].num_nodes, 64)
    assert sorted(out.modalities) == ['image', 'text']
    model.eval()
    users = torch.arange(5)
    assert torch.allclose(model.score(users), out.user[users] @ out.item.t(), atol=1e-6)
    model.train()
    assert not any(isinstance(p, torch.nn.parameter.UninitializedParameter)
                   for p in model.parameters())  # lazy modules materialised
    mrdib = MRdIB.from_output(out)
    res = mrdib(out, batch(tiny))
    assert torch.isfinite(res.loss)
    (model.loss(out, batch(tiny)) + res.loss).backward()
    grads = [p.grad for p in model.encoder.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize('name', sorted(BUILDERS))
def test_seeded_builds_are_equal(tiny, name):
    seed_everything(1)
    a = BUILDERS[name](tiny)()
    seed_everything(1)
    b = BUILDERS[name](tiny)()
    assert torch.equal(a.user, b.user) and torch.equal(a.item, b.item)


@pytest.mark.parametrize('name,mrdib', [('sage', False), ('sage', True), ('gcn', False),
                                        ('gcn', True)])
def test_short_run_beats_popularity(small, name, mrdib):
    cfg = TrainConfig(dataset='synthetic', epochs=20, patience=20, progress=False, lr=1e-2,
                      batch_size=512, seed=0, device='cpu')
    seed_everything(0)
    model = BUILDERS[name](small)
    plugin = MRdIB.from_output(model()) if mrdib else None
    result = Trainer(model, small, cfg, plugin).fit()
    assert result.test_at_best['Recall@20'] > popularity_recall(small), result.test_at_best


def test_only_training_edges_reach_the_encoder(tiny):
    seen = {}

    class Spy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(64, 64)

        def forward(self, x_dict, edge_index_dict):
            seen.update(edge_index_dict)
            return {k: self.lin(v) for k, v in x_dict.items()}
    PyGBackbone(Spy(), tiny)()
    train = {tuple(p) for p in tiny[RATES].edge_index.t().tolist()}
    held = {tuple(p) for p in torch.cat([tiny[RATES].val_edge_index,
                                         tiny[RATES].test_edge_index], 1).t().tolist()}
    got = {tuple(p) for p in seen[RATES].t().tolist()}
    assert got == train and not (got & held)
    rev = {tuple(p) for p in seen[('item', 'rev_rates', 'user')].flip(0).t().tolist()}
    assert rev == train


def test_modality_outputs_can_be_chosen(tiny):
    model = sage(tiny)
    picked = PyGBackbone(model.encoder, tiny, modality_outputs={'image': 'item'})()
    assert torch.equal(picked.modalities['image'].item, picked.item)
    assert not torch.equal(picked.modalities['text'].item, picked.item)
    custom = PyGBackbone(model.encoder, tiny, modality_outputs=lambda out: {
        'image': (out['image'], out['user']), 'text': (out['text'], out['user'])})()
    assert torch.equal(custom.modality_user_table('text'), custom.user)


def test_clear_errors(tiny):
    class NoUser(torch.nn.Module):
        def forward(self, x_dict, edge_index_dict):
            return {'item': x_dict['item']}
    with pytest.raises(KeyError, match="no 'user' table"):
        PyGBackbone(NoUser(), tiny)
    with pytest.raises(ValueError, match="mode must be"):
        PyGBackbone(GCN(64, 64, 1), tiny, mode='bipartite')
    with pytest.raises(ValueError, match='not in the data'):
        PyGBackbone(GCN(64, 64, 1), tiny, mode='homogeneous', modalities=['audio'])
    with pytest.raises(KeyError, match="output 'video'"):
        PyGBackbone(sage(tiny).encoder, tiny, modality_outputs={'image': 'video'})
    with pytest.raises(TypeError, match='one \\[.*, d\\] table'):
        PyGBackbone(GCN(64, 64, 1), tiny, mode='homogeneous',
                    call=lambda e, x, ei: {'user': x})


def test_regularizer_is_mmrecs_emb_loss(tiny):
    model = PyGBackbone(GCN(64, 64, 1), tiny, mode='homogeneous', reg_weight=0.5)
    b = BPRBatch(torch.tensor([0, 1]), torch.tensor([2, 3]), torch.tensor([4, 5]))
    rows = (model.user_emb[b.users], model.item_emb[b.pos], model.item_emb[b.neg])
    expected = 0.5 * sum(r.norm() for r in rows) / 2
    assert torch.allclose(model.regularizer(model(), b), expected)


# -- mini-batch training on sampled subgraphs -----------------------------------------
class Identity(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))

    def forward(self, x_dict, edge_index_dict):
        return {k: v * self.scale for k, v in x_dict.items()}


def test_sampled_batch_is_reindexed_into_the_subgraph(tiny):
    pytest.importorskip('torch_sparse')  # or pyg-lib: PyG's sampler needs one
    model = PyGBackbone(Identity(), tiny, num_neighbors=[3, 2])
    g = torch.Generator().manual_seed(0)
    ei = tiny[RATES].edge_index
    pick = torch.randint(ei.size(1), (12, ), generator=g)
    b = BPRBatch(ei[0, pick], ei[1, pick], torch.randint(tiny['item'].num_nodes, (12, ),
                                                         generator=g))
    out, local = model.forward_batch(b)
    assert out.user.size(0) < tiny['user'].num_nodes  # a subgraph, not the full tables
    assert torch.equal(out.user[local.users], model.user_emb[b.users])
    assert torch.equal(out.item[local.pos], model.item_emb[b.pos])
    assert torch.equal(out.item[local.neg], model.item_emb[b.neg])
    for m in ('image', 'text'):  # each batch item's own modality row, aligned to items
        want = model.proj[m](model.feature(m))
        assert out.modalities[m].item.size(0) == out.item.size(0)
        assert torch.allclose(out.modalities[m].item[local.pos], want[b.pos])
        assert torch.allclose(out.modalities[m].item[local.neg], want[b.neg])
    model.eval()  # evaluation always uses the full graph
    full, same = model.forward_batch(b)
    assert full.user.size(0) == tiny['user'].num_nodes and same is b


def test_minibatch_reaches_full_batch_metrics_within_the_seed_spread(small):
    pytest.importorskip('torch_sparse')
    import statistics
    cfg = TrainConfig(dataset='synthetic', epochs=15, patience=15, progress=False, lr=1e-2,
                      batch_size=512, device='cpu')
    scores = {}
    for fanout in (None, [10, 10]):
        for seed in (0, 1, 2):
            seed_everything(seed)
            model = PyGBackbone(to_hetero(GraphSAGE((-1, -1), 32, num_layers=2),
                                          small.metadata(), aggr='mean'), small,
                                num_neighbors=fanout)
            res = Trainer(model, small, cfg.update({'seed': seed})).fit()
            scores.setdefault(str(fanout), []).append(res.test_at_best['Recall@20'])
    full, mini = scores['None'], scores['[10, 10]']
    spread = max(statistics.stdev(full), statistics.stdev(mini))
    gap = abs(statistics.fmean(full) - statistics.fmean(mini))
    assert gap <= 2 * spread + 0.01, scores
    assert min(mini) > popularity_recall(small)


def test_minibatch_without_a_sampling_backend_says_how_to_install(tiny, monkeypatch):
    import torch_geometric.typing as pyg_typing
    monkeypatch.setattr(pyg_typing, 'WITH_PYG_LIB', False)
    monkeypatch.setattr(pyg_typing, 'WITH_TORCH_SPARSE', False)
    with pytest.raises(ImportError, match='pip install pyg-lib -f https://data.pyg.org'):
        PyGBackbone(Identity(), tiny, num_neighbors=[2])
    PyGBackbone(Identity(), tiny)  # full-graph training needs neither


def test_minibatch_options_are_checked(tiny):
    with pytest.raises(ValueError, match="needs mode='hetero'"):
        PyGBackbone(GCN(64, 64, 1), tiny, mode='homogeneous', num_neighbors=[2])
    with pytest.raises(ValueError, match='one fan-out per layer'):
        PyGBackbone(Identity(), tiny, num_neighbors=[0])
