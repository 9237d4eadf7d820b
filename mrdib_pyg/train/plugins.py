r"""Training plug-ins: what the trainer needs from a training-only add-on such as MRdIB.

The trainer knows only :class:`TrainingPlugin`: the plug-in's parameters for the main
optimiser, its loss on a batch (it may run an auxiliary step of its own first, e.g. a critic
update), per-epoch diagnostics, and its state for checkpoints. A second plug-in needs no
trainer change, only a class here (or anywhere) and an entry in :func:`as_plugin`.
"""
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

import torch
from torch import Tensor
from torch.nn import Parameter

from mrdib_pyg.data.sampling import BPRBatch
from mrdib_pyg.nn.models.base import Recommender
from mrdib_pyg.nn.mrdib import MRdIB
from mrdib_pyg.nn.output import RecOutput


class TrainingPlugin:
    r"""Base class of the trainer's plug-ins (every method has a no-op default).

    Per batch the trainer calls :meth:`training_loss` after the backbone's forward pass and
    adds the returned loss to the backbone's before the main optimiser's step; after every
    epoch, :meth:`epoch_end` returns diagnostics for the history.
    """
    #: Key of the plug-in's logs and checkpoint state.
    name: str = 'plugin'

    def main_parameters(self) -> Iterable[Parameter]:
        r"""Parameters the *main* optimiser updates with the backbone's."""
        return []

    def to(self, device) -> 'TrainingPlugin':
        return self

    def train(self, mode: bool = True) -> 'TrainingPlugin':
        return self

    def training_loss(self, out: RecOutput, batch: BPRBatch) -> Tuple[Tensor, Dict[str, Tensor]]:
        r"""The loss to add on this batch, and named values to log (scalars)."""
        raise NotImplementedError

    def epoch_end(self, epoch: int, model: Recommender) -> Dict[str, float]:
        r"""Diagnostics after epoch :obj:`epoch` (the model is left in evaluation mode)."""
        return {}

    def state_dict(self) -> Dict[str, Any]:
        return {}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        pass

    def describe(self) -> str:
        return self.name


class MRdIBPlugin(TrainingPlugin):
    r"""Trains an :class:`~mrdib_pyg.nn.mrdib.MRdIB` module beside a backbone.

    Per batch: the batch's items are encoded once (:meth:`MRdIB.encode_batch`); the critics
    take :obj:`critic_steps` Adam steps ascending the Donsker–Varadhan bound on the *detached*
    samples (their own optimiser, never the main one); then the MRdIB loss is computed with
    the updated critics. During the first :obj:`critic_warmup` batches the redundant term is
    left out of the encoders' loss (the critics train, the encoders do not yet follow them).

    Every :obj:`mi_probe_every` epochs (0: never) a *fresh* critic is trained on one sample
    :math:`z_m \sim q(z_m|x_m)` of a random half of (at most :obj:`mi_probe_items`) items and
    evaluated on the other half (:func:`~mrdib_pyg.analysis.estimate_mi`): :obj:`mi_fresh`,
    an estimate of the :math:`I(z_a; z_b)` the redundant term targets. Beside it:
    :obj:`mi_critic`, the training critic's DV value on the same held-out samples (with the
    redundant term on), and :obj:`mi_fresh_mu`, the fresh estimate on the posterior means
    (:math:`I(\mu_a; \mu_b)`, without the sampling noise). A
    training critic far below the fresh one is lagging, and the encoders then follow a wrong
    gradient.

    Distributed training: the trainer sets :attr:`grad_sync` (a callable
    ``grad_sync(params, weight)``, :func:`~mrdib_pyg.train.distributed.all_reduce_mean_grads`)
    so that in every critic step the critics' gradients are averaged across ranks (weighted by
    each rank's share of the batch) before the critic optimiser's step: the critics stay
    identical on all ranks. MINE's moving averages (MRdIB's EMA buffers of the critic's
    denominator) stay *per rank*: each is updated from the rank's own share of the batch, so
    they may differ slightly between ranks (the checkpoints hold rank 0's).

    Args:
        module (MRdIB): the plug-in module.
        critic_lr (float, optional): the critics' Adam learning rate. (default: :obj:`1e-3`)
        critic_steps (int, optional): critic steps per main step. (default: :obj:`1`)
        critic_warmup (int, optional): batches before the redundant term reaches the
            encoders. (default: :obj:`0`)
        mi_probe_every (int, optional): epochs between fresh-critic probes. (default: :obj:`0`)
        mi_probe_steps (int, optional): steps of the fresh critic. (default: :obj:`300`)
        mi_probe_items (int, optional): items used by a probe. (default: :obj:`2048`)
        seed (int, optional): seeds the probes' item split and fresh critics. (default: :obj:`0`)
    """
    name = 'mrdib'

    def __init__(self, module: MRdIB, critic_lr: float = 1e-3, critic_steps: int = 1,
                 critic_warmup: int = 0, mi_probe_every: int = 0, mi_probe_steps: int = 300,
                 mi_probe_items: int = 2048, seed: int = 0):
        for key, value in (('critic_steps', critic_steps), ('critic_warmup', critic_warmup),
                           ('mi_probe_every', mi_probe_every)):
            if int(value) < 0:
                raise ValueError(f"{self.__class__.__name__}: {key} must be >= 0, got {value}")
        if not critic_lr > 0:
            raise ValueError(f"{self.__class__.__name__}: critic_lr must be > 0, got {critic_lr}")
        self.module = module
        self.critic_steps, self.critic_warmup = int(critic_steps), int(critic_warmup)
        self.mi_probe_every, self.mi_probe_steps = int(mi_probe_every), int(mi_probe_steps)
        self.mi_probe_items, self.seed = int(mi_probe_items), int(seed)
        critic = list(module.critic_parameters())
        self.critic_optimizer = (torch.optim.Adam(critic, lr=critic_lr)
                                 if critic and module.computes_redundant
                                 and self.critic_steps > 0 else None)
        self.step = 0
        #: Set by a distributed trainer: ``grad_sync(params, weight)`` averages the critic
        #: gradients across ranks (:obj:`None`: a single process).
        self.grad_sync: Optional[Callable[[List[Parameter], float], Any]] = None

    def main_parameters(self) -> Iterable[Parameter]:
        return self.module.main_parameters()

    def to(self, device) -> 'MRdIBPlugin':
        self.module.to(device)  # in place: the critic optimiser keeps the same parameters
        return self

    def train(self, mode: bool = True) -> 'MRdIBPlugin':
        self.module.train(mode)
        return self

    def training_loss(self, out: RecOutput, batch: BPRBatch) -> Tuple[Tensor, Dict[str, Tensor]]:
        mrdib = self.module
        enc = mrdib.encode_batch(out, batch)
        if self.critic_optimizer is not None:
            critic = [p for g in self.critic_optimizer.param_groups for p in g['params']]
            for _ in range(self.critic_steps):
                self.critic_optimizer.zero_grad(set_to_none=True)
                mrdib.critic_loss(enc).backward()
                if self.grad_sync is not None:
                    self.grad_sync(critic, float(batch.users.numel()))
                self.critic_optimizer.step()
        res = mrdib.loss_terms(out, batch, enc, redundant=self.step >= self.critic_warmup)
        self.step += 1
        return res.loss, res.terms

    @torch.no_grad()
    def epoch_end(self, epoch: int, model: Recommender) -> Dict[str, float]:
        mrdib = self.module
        if not (self.mi_probe_every and (epoch + 1) % self.mi_probe_every == 0):
            return {}
        from mrdib_pyg.analysis import all_pairs_dv, estimate_mi
        model.eval()
        mrdib.eval()
        out = model.embeddings()
        gen = torch.Generator().manual_seed(self.seed + epoch)
        mu, std = {}, {}
        for m in mrdib.modalities:
            mu[m], logvar = mrdib.encoder(m)(out.modalities[m].item)
            std[m] = (0.5 * logvar).exp() if mrdib.samples else torch.zeros_like(mu[m])
        n = mu[mrdib.modalities[0]].size(0)
        rows = torch.randperm(n, generator=gen)[:min(n, self.mi_probe_items)]
        tr, te = rows[:rows.numel() // 2], rows[rows.numel() // 2:]
        logs = {'mi_fresh': 0.0, 'mi_fresh_mu': 0.0, 'mi_critic': 0.0}
        for a, b in mrdib.pairs:
            with torch.enable_grad():
                logs['mi_fresh'] += estimate_mi(mu[a], mu[b], tr, te, steps=self.mi_probe_steps,
                                                seed=self.seed + epoch, std_a=std[a],
                                                std_b=std[b])
                logs['mi_fresh_mu'] += estimate_mi(mu[a], mu[b], tr, te,
                                                   steps=self.mi_probe_steps,
                                                   seed=self.seed + epoch)
            idx = te.to(mu[a].device)  # the training critic on one draw of the same rows
            za = mu[a][idx] + std[a][idx] * torch.randn(mu[a][idx].shape, generator=gen).to(mu[a])
            zb = mu[b][idx] + std[b][idx] * torch.randn(mu[b][idx].shape, generator=gen).to(mu[b])
            logs['mi_critic'] += all_pairs_dv(mrdib.critic(a, b), za, zb)
        mrdib.train()
        if not mrdib.computes_redundant:  # no training critic to compare
            del logs['mi_critic']
        return logs

    def state_dict(self) -> Dict[str, Any]:
        state = {'module': self.module.state_dict(), 'step': self.step}
        if self.critic_optimizer is not None:
            state['critic_optimizer'] = self.critic_optimizer.state_dict()
        return state

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.module.load_state_dict(state['module'])
        self.step = int(state.get('step', 0))
        if self.critic_optimizer is not None and 'critic_optimizer' in state:
            self.critic_optimizer.load_state_dict(state['critic_optimizer'])

    def describe(self) -> str:
        return f"MRdIB (terms: {', '.join(self.module.active_terms)})"


def mrdib_plugin_options(cfg) -> Dict[str, Any]:
    r"""The :class:`MRdIBPlugin` options of a :class:`~mrdib_pyg.train.config.TrainConfig`."""
    from mrdib_pyg.train.config import MRdIBOptions
    o = cfg.mrdib if getattr(cfg, 'mrdib', None) is not None else MRdIBOptions()
    return dict(critic_lr=o.critic_lr, critic_steps=o.critic_steps,
                critic_warmup=o.critic_warmup, mi_probe_every=o.mi_probe_every,
                seed=cfg.seed)


def as_plugins(objs, cfg) -> List[TrainingPlugin]:
    r"""Training plug-ins from :obj:`objs` (a plug-in, a module with a known plug-in class,
    a list of them, or :obj:`None`)."""
    if objs is None:
        return []
    if not isinstance(objs, (list, tuple)):
        objs = [objs]
    out = []
    for obj in objs:
        if isinstance(obj, TrainingPlugin):
            out.append(obj)
        elif isinstance(obj, MRdIB):
            out.append(MRdIBPlugin(obj, **mrdib_plugin_options(cfg)))
        else:
            raise TypeError(f'Not a training plug-in: {type(obj).__name__} (expected a '
                            f'TrainingPlugin or an MRdIB module)')
    names = [p.name for p in out]
    if len(set(names)) != len(names):
        raise ValueError(f'Two plug-ins share a name: {names}')
    return out
