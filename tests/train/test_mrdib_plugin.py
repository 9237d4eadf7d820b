r"""MRdIB plugs into backbones through RecOutput alone, and never runs at prediction time."""
import pytest
import torch
from torch import nn

from mrdib_pyg.data.synthetic import SyntheticMM
from mrdib_pyg.nn.models import LightGCN, Recommender, VBPR
from mrdib_pyg.nn.mrdib import MRdIB
from mrdib_pyg.nn.output import BPRBatch, ModalityOutput, RecOutput
from mrdib_pyg.train.config import TrainConfig
from mrdib_pyg.train import Trainer, build_mrdib, build_trainer, run

SMALL = dict(num_users=100, num_items=60, image_dim=24, text_dim=12,
             interactions_per_user=(5, 10), seed=2)


@pytest.fixture(scope='module')
def data():
    return SyntheticMM(**SMALL)[0]


def cfg(**kw):
    base = dict(epochs=2, batch_size=128, progress=False, device='cpu', seed=0, mrdib=True)
    base.update(kw)
    return TrainConfig().update(base)


class TwoTowerMM(Recommender):
    """A backbone written here, knowing nothing of MRdIB: per-modality MLP towers whose sum
    is the item table, and one user table."""
    multimodal = True

    def __init__(self, data, dim=16):
        super().__init__(data['user'].num_nodes, data['item'].num_nodes)
        self.register_buffer('img', data['image'].x, persistent=False)
        self.register_buffer('txt', data['text'].x, persistent=False)
        self.img_tower = nn.Sequential(nn.Linear(self.img.size(1), dim), nn.Tanh())
        self.txt_tower = nn.Sequential(nn.Linear(self.txt.size(1), dim), nn.Tanh())
        self.user = nn.Embedding(self.num_users, dim)

    def forward(self):
        v, t = self.img_tower(self.img), self.txt_tower(self.txt)
        return RecOutput(user=self.user.weight, item=v + t,
                         modalities={'image': ModalityOutput(v), 'text': ModalityOutput(t)})


def test_custom_backbone_trains_with_mrdib_unchanged(data):
    model = TwoTowerMM(data)
    c = cfg(latent_dim=8)
    mrdib = build_mrdib(c, model)
    result = Trainer(model, data, c, mrdib).fit()
    losses = result.history[0]['loss']
    assert {'synergy', 'kl', 'unique', 'redundant', 'mrdib', 'backbone'} <= set(losses)
    assert all(torch.isfinite(torch.tensor(v)) for v in losses.values())


def test_mrdib_changes_backbone_gradients(data):
    torch.manual_seed(0)
    model = VBPR.from_data(data)
    mrdib = MRdIB.from_output(model())
    batch = BPRBatch(torch.arange(32), torch.arange(32) % 60, (torch.arange(32) + 7) % 60)

    def grads(with_mrdib):
        model.zero_grad()
        out = model()
        loss = model.loss(out, batch)
        if with_mrdib:
            torch.manual_seed(1)
            loss = loss + mrdib(out, batch).loss
        loss.backward()
        return model.item_linear.weight.grad.clone()

    bare, plugged = grads(False), grads(True)
    assert not torch.allclose(bare, plugged)


def test_evaluation_never_calls_mrdib_and_scores_are_identical(data):
    torch.manual_seed(0)
    c = cfg(model='vbpr')
    model = VBPR.from_data(data)
    mrdib = build_mrdib(c, model)
    trainer = Trainer(model, data, c, mrdib)
    trainer.train_epoch(0)  # MRdIB has shaped the weights

    def forbid(*_):
        raise AssertionError('MRdIB ran during evaluation')

    handles = [m.register_forward_pre_hook(forbid) for m in mrdib.modules()]
    with_plugin = trainer.evaluate('test')
    users = torch.arange(data['user'].num_nodes)
    scores = trainer.model.score(users)
    for h in handles:
        h.remove()
    # The same weights in a backbone that never saw MRdIB score identically.
    bare = VBPR.from_data(data)
    bare.load_state_dict(model.state_dict())
    bare_trainer = Trainer(bare, data, cfg(model='vbpr', mrdib=False))
    assert bare_trainer.evaluate('test') == with_plugin
    assert torch.equal(bare.eval().score(users), scores)


def test_id_only_backbone_is_refused_with_a_clear_message(data):
    with pytest.raises(ValueError, match='per-modality outputs'):
        run(cfg(model='lightgcn'), data=data)


@pytest.mark.parametrize('ablation', ['full', 'wo_mib', 'wo_redundant', 'wo_unique',
                                      'mib_only'])
def test_ablations_run_through_the_trainer(data, ablation):
    c = cfg(model='vbpr', ablation=ablation, epochs=1)
    model = VBPR.from_data(data)
    trainer = Trainer(model, data, c, build_mrdib(c, model))
    plugin, = trainer.plugins
    assert (plugin.critic_optimizer is None) == (ablation in ('wo_redundant', 'mib_only'))
    losses = trainer.train_epoch(0)
    assert ('redundant' in losses) == (ablation not in ('wo_redundant', 'mib_only'))
    assert ('unique' in losses) == (ablation not in ('wo_unique', 'mib_only'))
    assert ('kl' in losses) == (ablation != 'wo_mib')


def test_replace_mode_puts_encoder_means_in_the_prediction_path(data):
    result = run(cfg(model='vbpr', replace=True, latent_dim=64), data=data)
    assert result.test_at_best
    with pytest.raises(ValueError, match='only matters with MRdIB'):
        run(cfg(model='vbpr', mrdib=False, replace=True), data=data)


# -- the adversarial loop, checkpoints and replace mode at trainer level --------------------
def _critic_params(mrdib):
    return [p.detach().clone() for p in mrdib.critic_parameters()]


def test_trainer_runs_the_adversarial_loop(data):
    torch.manual_seed(0)
    c = cfg(model='vbpr', critic_steps=2)
    model = VBPR.from_data(data)
    mrdib = build_mrdib(c, model)
    trainer = Trainer(model, data, c, mrdib)
    plugin, = trainer.plugins
    # the main optimiser holds the backbone and MRdIB's non-critic parameters, never a critic's
    main = {id(p) for g in trainer.optimizer.param_groups for p in g['params']}
    critic = {id(p) for p in mrdib.critic_parameters()}
    assert critic and not (main & critic)
    assert main == {id(p) for p in model.parameters()} | {id(p) for p in
                                                         mrdib.main_parameters()}
    assert {id(p) for g in plugin.critic_optimizer.param_groups for p in g['params']} == critic
    before = _critic_params(mrdib)
    trainer.train_epoch(0)
    assert all(not torch.equal(p, q) for p, q in zip(mrdib.critic_parameters(), before))
    # two critic steps per batch: the moving average was updated twice per batch
    assert int(mrdib.critic(*mrdib.pairs[0]).ema_steps) == 2 * len(trainer.sampler)


def test_critic_only_steps_raise_dv_on_a_fixed_batch(data):
    torch.manual_seed(0)
    c = cfg(model='vbpr', critic_lr=1e-2)
    model = VBPR.from_data(data)
    mrdib = build_mrdib(c, model)
    plugin, = Trainer(model, data, c, mrdib).plugins
    batch = next(iter(Trainer(model, data, c).sampler))
    mrdib.eval()
    with torch.no_grad():
        enc = mrdib.encode_batch(model(), batch)
    z = enc.mine_pairs(detach=True)
    perm = torch.randperm(z['image'].size(0)).roll(1)  # fixed marginal pairs for the check

    def dv():
        with torch.no_grad():
            a, b = mrdib.pairs[0]
            return float(mrdib.critic(a, b).dv(z[a], z[b], perm))

    values = [dv()]
    for _ in range(3):
        for _ in range(10):
            plugin.critic_optimizer.zero_grad()
            mrdib.critic_loss(enc).backward()
            plugin.critic_optimizer.step()
        values.append(dv())
    assert min(values[1:]) > values[0] + 0.05, values


def test_checkpoint_restores_mrdib_with_moving_averages_and_critic_optimizer(data, tmp_path):
    torch.manual_seed(0)
    c = cfg(model='vbpr')
    model = VBPR.from_data(data)
    trainer = Trainer(model, data, c, build_mrdib(c, model))
    trainer.train_epoch(0)
    path = str(tmp_path / 'best.pt')
    trainer.save(path, epoch=0)
    saved, = trainer.plugins

    torch.manual_seed(1)  # a differently initialised pair
    model2 = VBPR.from_data(data)
    trainer2 = Trainer(model2, data, c, build_mrdib(c, model2))
    loaded, = trainer2.plugins
    assert int(loaded.module.critic(*loaded.module.pairs[0]).ema_steps) == 0
    assert trainer2.load_best(path) == 0
    for (k, a), (k2, b) in zip(saved.module.state_dict().items(),
                               loaded.module.state_dict().items()):
        assert k == k2 and torch.equal(a, b), k
    ema = loaded.module.critic(*loaded.module.pairs[0])
    assert int(ema.ema_steps) == len(trainer.sampler) and torch.isfinite(ema.log_ema)
    assert loaded.step == saved.step == len(trainer.sampler)
    s1, s2 = saved.critic_optimizer.state_dict(), loaded.critic_optimizer.state_dict()
    assert s1['state'].keys() == s2['state'].keys()
    assert all(torch.equal(s1['state'][k]['exp_avg'], s2['state'][k]['exp_avg'])
               for k in s1['state'])
    assert torch.equal(model.item_linear.weight, model2.item_linear.weight)


def test_replace_mode_evaluation_runs_the_encoders(data):
    torch.manual_seed(0)
    c = cfg(model='vbpr', replace=True, latent_dim=64)
    trainer = build_trainer(c, data)
    mrdib = trainer.plugins[0].module
    trainer.train_epoch(0)
    calls = []
    handles = [mrdib.encoder(m).register_forward_hook(lambda *_: calls.append(1))
               for m in mrdib.modalities]
    users = torch.arange(data['user'].num_nodes)
    trainer.model.eval()
    scores = trainer.model.score(users).clone()
    assert len(calls) == len(mrdib.modalities)  # the means are in the prediction path
    for h in handles:
        h.remove()
    with torch.no_grad():
        mrdib.encoder('image').net.weight.mul_(-1.0)
    trainer.model.invalidate_cache()
    assert not torch.allclose(trainer.model.score(users), scores)


def test_replace_mode_checks_the_latent_width(data):
    with pytest.raises(ValueError, match='latent_dim'):
        build_trainer(cfg(model='vbpr', replace=True, latent_dim=16), data)
