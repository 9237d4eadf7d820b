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
