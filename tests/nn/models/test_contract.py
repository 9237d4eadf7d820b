r"""The acceptance test of a backbone: every registered model, through the same steps.

A new backbone registered with :func:`~mrdib_pyg.nn.models.register_model` is picked up
here without any change to this file."""
import pytest
import torch

from mrdib_pyg.data import BPRBatch, SyntheticMM
from mrdib_pyg.data.schema import ITEM, RATES, USER, build_heterodata
from mrdib_pyg.evaluate import FullRankEvaluator
from mrdib_pyg.nn.models import MODELS, MultimodalRecommender
from mrdib_pyg.nn.mrdib import MRdIB
from mrdib_pyg.train import TrainConfig, Trainer, build_model, seed_everything


@pytest.fixture(scope='module')
def tiny():
    return SyntheticMM(num_users=40, num_items=30, image_dim=24, text_dim=12,
                       interactions_per_user=(4, 8), seed=3)[0]


@pytest.fixture(scope='module')
def small():
    # Sharp preferences and a weak popularity term: a model must learn them to beat
    # popularity (which reaches test Recall@20 0.18 here).
    return SyntheticMM(num_users=400, num_items=300, interactions_per_user=(10, 20),
                       temperature=0.25, popularity=0.2, seed=1)[0]


def make(name, data, seed=0):
    seed_everything(seed)
    return build_model(TrainConfig(model=name, dataset='synthetic'), data)


def batch(data, n=16):
    g = torch.Generator().manual_seed(0)
    ei = data[RATES].edge_index
    pick = torch.randint(ei.size(1), (n, ), generator=g)
    neg = torch.randint(data[ITEM].num_nodes, (n, ), generator=g)
    return BPRBatch(ei[0, pick], ei[1, pick], neg)


@pytest.mark.parametrize('name', sorted(MODELS))
def test_forward_backward_and_score(tiny, name):
    model = make(name, tiny)
    model.pre_epoch(0)
    out = model()
    U, I = tiny[USER].num_nodes, tiny[ITEM].num_nodes
    assert out.user.shape[0] == U and out.item.shape[0] == I
    assert out.user.size(1) == out.item.size(1)
    loss = model.loss(out, batch(tiny))
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and any(p.grad is not None and p.grad.abs().sum() > 0 for p in trainable)
    model.eval()
    users = torch.tensor([0, 3, U - 1])
    scores = model.score(users)
    assert scores.shape == (3, I) and torch.isfinite(scores).all()
    eval_out = model.embeddings()
    assert torch.allclose(scores, eval_out.user[users] @ eval_out.item.t(), atol=1e-5)
    assert name in repr(model).lower() or model.__class__.__name__.lower() in repr(model).lower()


@pytest.mark.parametrize('name', sorted(MODELS))
def test_deterministic_by_seed(tiny, name):
    a, b = make(name, tiny, seed=5), make(name, tiny, seed=5)
    for m in (a, b):
        m.pre_epoch(0)
    oa, ob = a(), b()
    assert torch.equal(oa.user, ob.user) and torch.equal(oa.item, ob.item)
    c = make(name, tiny, seed=6)
    c.pre_epoch(0)
    assert not torch.equal(c().user, oa.user)


@pytest.mark.parametrize('name', sorted(MODELS))
def test_modalities_and_mrdib_attach_without_touching_the_backbone(tiny, name):
    model = make(name, tiny)
    out = model()
    if not model.multimodal:
        assert not out.modalities
        with pytest.raises(ValueError):
            MRdIB.from_output(out)
        return
    assert isinstance(model, MultimodalRecommender)
    assert sorted(out.modalities) == sorted(model.modalities)
    for m, mo in out.modalities.items():
        assert mo.item.shape[0] == tiny[ITEM].num_nodes
        assert out.modality_user_table(m).shape[0] == tiny[USER].num_nodes
    before = {k: v.clone() for k, v in model.state_dict().items()}
    mrdib = MRdIB.from_output(out)
    res = mrdib(out, batch(tiny))
    assert torch.isfinite(res.loss)
    (model.loss(out, batch(tiny)) + res.loss).backward()
    # MRdIB's gradient reaches the backbone through the modality tables, and attaching it
    # changed nothing in the backbone.
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    after = model.state_dict()
    assert sorted(after) == sorted(before)
    assert all(torch.equal(before[k], after[k]) for k in before)


def with_modalities(data, dims):
    r""":obj:`data`'s users, items and splits with other modalities: :obj:`dims` maps each
    modality name to its width (image-like ones non-negative, as CNN features)."""
    g = torch.Generator().manual_seed(1)
    feats = {m: torch.randn(data[ITEM].num_nodes, d, generator=g) for m, d in dims.items()}
    feats = {m: x.abs() if m == 'image' else x for m, x in feats.items()}
    splits = [data[RATES].edge_index] + [data[RATES][f'{s}_edge_index'] for s in ('val', 'test')]
    return build_heterodata(data[USER].num_nodes, data[ITEM].num_nodes, *splits, feats)


@pytest.mark.parametrize('dims', [{'text': 7}, {'image': 24, 'text': 12, 'audio': 5}],
                         ids=['text-only', 'three-modalities'])
@pytest.mark.parametrize('name', sorted(MODELS))
def test_any_number_of_modalities_with_any_names(tiny, name, dims):
    # A user's own folder may hold one modality, or a third one under its own name.
    data = with_modalities(tiny, dims)
    model = make(name, data)
    model.pre_epoch(0)
    out = model()
    loss = model.loss(out, batch(data))
    assert torch.isfinite(loss)
    loss.backward()
    model.eval()
    assert torch.isfinite(model.score(torch.tensor([0, 5]))).all()
    if not model.multimodal:
        return
    assert sorted(out.modalities) == sorted(dims)
    model.train()
    out = model()
    if len(dims) == 1:
        with pytest.raises(ValueError, match='at least 2 modalities'):
            MRdIB.from_output(out)
        return
    mrdib = MRdIB.from_output(out)
    assert len(mrdib.pairs) == 3
    res = mrdib(out, batch(data))
    assert torch.isfinite(res.loss) and torch.isfinite(res.terms['redundant'])


def popularity_recall(data, k=20):
    counts = torch.bincount(data[RATES].edge_index[1], minlength=data[ITEM].num_nodes)
    evaluator = FullRankEvaluator.from_data(data, 'test', ks=(k, ))
    return evaluator.evaluate(lambda users: counts.float().expand(len(users), -1).clone(),
                              device=torch.device('cpu'))[f'Recall@{k}']


@pytest.mark.parametrize('name', sorted(MODELS))
def test_short_run_beats_popularity(small, name):
    cfg = TrainConfig.preset(name, 'synthetic').update(dict(
        epochs=20, patience=20, progress=False, lr=1e-2, batch_size=512, seed=0))
    seed_everything(0)
    result = Trainer(build_model(cfg, small), small, cfg).fit()
    pop = popularity_recall(small)
    assert result.test_at_best['Recall@20'] > pop, (name, result.test_at_best, pop)


def _loss_and_grads(model, mrdib, step, seed):
    seed_everything(seed)
    out, b = step(model)
    loss = model.loss(out, b)
    if mrdib is not None:
        loss = loss + mrdib(out, b).loss
    loss.backward()
    params = list(model.parameters()) + (list(mrdib.parameters()) if mrdib is not None else [])
    return loss.detach(), [p.grad for p in params]


@pytest.mark.parametrize('name', sorted(MODELS))
def test_forward_batch_trains_as_the_full_tables(tiny, name):
    # A backbone may compute only the rows a batch needs (VBPR projects the batch's items);
    # its loss, MRdIB's terms on it and every gradient must be those of the full tables.
    def build():  # twice, identically (same parameters and RNG states inside)
        model = make(name, tiny)
        model.pre_epoch(0)
        return model, MRdIB.from_output(model()) if model.multimodal else None

    b = batch(tiny, n=24)
    (model, mrdib), (twin, twin_mrdib) = build(), build()
    full = _loss_and_grads(model, mrdib, lambda m: (m(), b), seed=11)
    part = _loss_and_grads(twin, twin_mrdib, lambda m: m.forward_batch(b), seed=11)
    assert torch.allclose(full[0], part[0], rtol=1e-5, atol=1e-6)
    for g_full, g_part in zip(full[1], part[1]):
        assert (g_full is None) == (g_part is None)
        if g_full is not None:
            assert torch.allclose(g_full, g_part, rtol=1e-4, atol=1e-6)


_FRESH_PROCESS = r'''
import sys, torch
from mrdib_pyg.data import SyntheticMM
from mrdib_pyg.train import TrainConfig, build_model, seed_everything
data = SyntheticMM(num_users=40, num_items=30, image_dim=24, text_dim=12,
                   interactions_per_user=(4, 8), seed=3)[0]
seed_everything(0)
model = build_model(TrainConfig(model=sys.argv[1], dataset='synthetic'), data)
model.pre_epoch(0)
out = model()
sum(t.sum() for t in (out.user, out.item)).backward()
model.eval()
model.score(torch.arange(3))
'''


def test_no_torch_beta_warning_in_a_users_process():
    # torch prints "Sparse CSR tensor support is in beta" once per process, at the first
    # CSR tensor it makes: a user's first run of each model must not show it.
    import subprocess
    import sys
    procs = {name: subprocess.Popen([sys.executable, '-c', _FRESH_PROCESS, name],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for name in sorted(MODELS)}
    leaked = {}
    for name, proc in procs.items():
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"{name}: {err[-2000:]}"
        if 'Sparse CSR tensor support' in err:
            leaked[name] = err
    assert not leaked, f"torch's beta warning printed by: {sorted(leaked)}"
