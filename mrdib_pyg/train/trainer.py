r"""The training loop: BPR batches -> backbone (+ plug-ins) -> Adam (with MMRec's
per-epoch learning-rate decay), early stopping on validation, test at the best validation
epoch, checkpoints (``best.pt``, and ``last.pt`` after every epoch for resuming) and a JSON
record. Building a run from its options is :mod:`mrdib_pyg.train.build`."""
import dataclasses
import json
import math
import os
import random
import sys
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import numpy as np
import torch
from torch_geometric.data import HeteroData
from tqdm.auto import tqdm

from mrdib_pyg.data.cache import atomic_write
from mrdib_pyg.data.sampling import BPRSampler
from mrdib_pyg.data.schema import ITEM, RATES, USER, modality_names, split_name
from mrdib_pyg.data.synthetic import has_generated_features
from mrdib_pyg.evaluate import FullRankEvaluator
from mrdib_pyg.nn.models import Recommender
from mrdib_pyg.train import distributed as dist_utils
from mrdib_pyg.train.config import MRDIB_KEYS, TrainConfig, option_name
from mrdib_pyg.train.plugins import TrainingPlugin, as_plugins


#: The checkpoint :meth:`Trainer.fit` writes after every epoch when ``out_dir`` is set.
LAST = 'last.pt'
#: Options a resumed run may change (they change neither the data, the model nor the random
#: streams; a different device changes the arithmetic, so the numbers then differ slightly).
RESUMABLE = ('epochs', 'progress', 'device')
#: What a ``last.pt`` holds (besides the plug-ins' states).
_CHECKPOINT_KEYS = ('format', 'epoch', 'config', 'model', 'optimizer', 'plugins', 'sampler',
                    'rng', 'early_stopping', 'best_valid', 'test_at_best', 'history',
                    'train_seconds', 'eval_seconds', 'info')


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> Dict[str, Any]:
    r"""The global random states (Python, NumPy, torch CPU, and CUDA once it is in use), as
    tensors and plain values (a checkpoint with them loads with ``weights_only=True``)."""
    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state = {'python': random.getstate(), 'torch': torch.get_rng_state(),
             'numpy': (name, torch.from_numpy(keys.astype(np.int64)), int(pos),
                       int(has_gauss), float(cached))}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    r"""Restore :func:`rng_state`'s states (CUDA's only where this machine has as many GPUs)."""
    version, internal, gauss = state['python']
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state['numpy']
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state['torch'])
    cuda = state.get('cuda')
    if cuda and torch.cuda.is_available() and torch.cuda.device_count() == len(cuda):
        torch.cuda.set_rng_state_all(cuda)


def _write_json(path: str, obj: Any) -> None:
    with open(path, 'w') as f:
        json.dump(obj, f, indent=1)


def _atomic_save(obj: Any, path: str) -> None:
    r""":func:`torch.save` through :func:`~mrdib_pyg.data.cache.atomic_write`: a kill at any
    moment leaves either the old file or the new one, never half of one."""
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def _same(a: Any, b: Any) -> bool:
    r"""Equal as options (a tuple equals the list of the same values)."""
    return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)


def read_checkpoint(path: str) -> Dict[str, Any]:
    r"""The ``last.pt`` checkpoint at :obj:`path` (the file, or the run's folder holding it),
    on the CPU, raising :class:`ValueError` with the reason if it is missing, damaged or not
    such a checkpoint. It loads with ``weights_only=True``: reading it never runs code."""
    file = os.path.join(path, LAST) if os.path.isdir(path) else path
    if not os.path.exists(file):
        where = (f"'{path}' holds no {LAST}" if os.path.isdir(path)
                 else f"'{path}' does not exist")
        raise ValueError(f"cannot resume: {where} (a run writes {LAST} into its --out-dir "
                         f"after every epoch)")
    try:
        state = torch.load(file, map_location='cpu', weights_only=True)
    except Exception as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0].split('. ')[0]
        raise ValueError(f"cannot resume from '{file}': the file is damaged or truncated "
                         f"({reason}); a killed run never leaves it so (it is replaced "
                         f"atomically): was it copied incompletely? Copy it again, or start "
                         f"the run afresh") from None
    missing = ([k for k in _CHECKPOINT_KEYS if k not in state] if isinstance(state, dict)
               else list(_CHECKPOINT_KEYS))
    if missing:
        raise ValueError(f"cannot resume from '{file}': it is not a {LAST} checkpoint of "
                         f"mrdib-train (it lacks {', '.join(missing)}); best.pt holds only "
                         f"the best weights")
    return state


def resume_config(path: str, changes: Optional[Dict[str, Any]] = None) -> TrainConfig:
    r"""The options of the run whose checkpoint is :obj:`path` (its folder or its
    ``last.pt``), with its folder as :obj:`out_dir`.

    :obj:`changes` are options given again for the resumed run: those equal to the stored
    ones are accepted, :data:`RESUMABLE` ones (``epochs``, ``progress``, ``device``) are
    applied, and any other difference raises :class:`ValueError` (a resumed run with other
    options would be neither the old run nor a new one). ``model_args``/``dataset_args``
    are merged into the stored ones first."""
    state = read_checkpoint(path)
    folder = path if os.path.isdir(path) else (os.path.dirname(path) or '.')
    cfg = TrainConfig().update(state['config'], source=f"the checkpoint in '{folder}'")
    conflicts = []
    changes = dict(changes or {})
    flat = {k: changes.pop(k) for k in MRDIB_KEYS if k in changes}
    if flat or 'mrdib' in changes:  # compare the whole MRdIB section
        section = changes.pop('mrdib', True if cfg.mrdib is not None else None)
        trial = TrainConfig().update({'mrdib': section}, source='the resumed options')
        trial.update({'mrdib': cfg.mrdib} if trial.mrdib is not None and cfg.mrdib is not None
                     and section is True else {}, source='the checkpoint')
        changes['mrdib'] = trial.update(flat, source='the resumed options').to_dict()['mrdib']
    for key, value in changes.items():
        if key == 'out_dir':
            if value and os.path.realpath(value) != os.path.realpath(folder):
                conflicts.append(f"{option_name(key)} '{value}' (a resumed run writes into "
                                 f"its own folder '{folder}')")
            continue
        if key in ('model_args', 'dataset_args') and isinstance(value, dict):
            value = {**getattr(cfg, key), **value}
        new = getattr(TrainConfig().update({key: value}, source='the resumed options'), key)
        if _same(new, getattr(cfg, key)):
            continue
        if key in RESUMABLE:
            setattr(cfg, key, new)
        else:
            conflicts.append(f'{option_name(key)} {_show(new, key)} (the run used '
                             f'{_show(getattr(cfg, key), key)})')
    if conflicts:
        allowed = ', '.join(option_name(k) for k in RESUMABLE)
        raise ValueError(f"cannot resume '{folder}' with other options: "
                         f"{'; '.join(conflicts)}. A resumed run keeps the options it started "
                         f"with (only {allowed} may change); start a new run in another "
                         f"--out-dir to change them")
    stored = cfg.out_dir
    if not (stored and os.path.realpath(stored) == os.path.realpath(folder)):
        cfg.out_dir = folder  # the folder was moved, or is named by another path
    return cfg


def _show(value: Any, key: str = '') -> str:
    r"""An option's value in a message (the MRdIB section: False when off, True when on with
    its default options, else its options)."""
    if key == 'mrdib' and value is None:
        return 'False'
    if dataclasses.is_dataclass(value):
        return 'True' if value == type(value)() else repr(dataclasses.asdict(value))
    return repr(value)


def check_checkpoint_options(state: Dict[str, Any], cfg: TrainConfig) -> None:
    r"""Raise :class:`ValueError` if :obj:`cfg` differs from the checkpoint's options in
    more than the :data:`RESUMABLE` ones and :obj:`out_dir` (options newer than the
    checkpoint are left out: it was written without them)."""
    # Read the stored options as options (older checkpoints hold MRdIB's flat).
    stored = TrainConfig().update(state['config'], source='the checkpoint').to_dict()
    stored = {k: v for k, v in stored.items() if k in state['config'] or k == 'mrdib'}
    mine = cfg.to_dict()
    differ = [k for k in mine if k in stored and k not in RESUMABLE + ('out_dir', )
              and not _same(stored[k], mine[k])]
    if differ:
        raise ValueError('the checkpoint was written with other options: '
                         + '; '.join(f'{option_name(k)} {stored[k]!r} there, '
                                     f'{mine[k]!r} here' for k in differ)
                         + ' (resume_config gives the options to resume with)')


def checkpoint_finished(state: Dict[str, Any], cfg: TrainConfig) -> bool:
    r"""Whether the run of checkpoint :obj:`state` is over under :obj:`cfg`: stopped early,
    or at its last epoch (a larger ``epochs`` continues it)."""
    return (state['early_stopping']['bad_epochs'] > cfg.patience
            or state['epoch'] + 1 >= cfg.epochs)


def result_from_checkpoint(state: Dict[str, Any]) -> 'TrainResult':
    r"""The :class:`TrainResult` of a finished run, as its checkpoint stored it."""
    return TrainResult(dict(state['config']), state['early_stopping']['best_epoch'],
                       state['best_valid'], state['test_at_best'], state['history'],
                       _timings(state['train_seconds'], state['eval_seconds'],
                                len(state['history'])), state['info'])


def _timings(train_times: List[float], eval_times: List[float], epochs_run: int):
    return {'train_epoch_median_s': float(np.median(train_times)),
            'eval_pass_median_s': float(np.median(eval_times)),
            'epochs_run': epochs_run, 'total_s': float(sum(train_times) + sum(eval_times))}


def make_adam(params, lr: float, weight_decay: float) -> torch.optim.Adam:
    r"""Adam (MMRec's learner), fused into one kernel where torch supports it for these
    parameters (CPU and CUDA float tensors): the same update rule, about 9x faster on
    backbones that train their 4096-d features (31.6M parameters on Baby: 0.07 s against
    0.65 s per step, measured here)."""
    params = list(params)
    fused = bool(params) and all(p.is_floating_point() and p.device.type in ('cpu', 'cuda')
                                 for p in params)
    try:
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=fused)
    except (RuntimeError, TypeError):  # an older torch or an unsupported device/dtype
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)


def resolve_device(name: str) -> torch.device:
    r"""The device :obj:`name` (``'auto'``: CUDA if available, else CPU), raising
    :class:`ValueError` if it is malformed or not available on this machine."""
    if name == 'auto':
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"device (--device) '{name}' is not a device name; expected 'auto', "
                         f"'cpu', 'cuda' or 'cuda:N'") from None
    if device.type == 'cuda':
        if not torch.cuda.is_available():
            why = ('this PyTorch build has no CUDA support' if torch.version.cuda is None
                   else 'no CUDA GPU is visible')
            raise ValueError(f"device (--device) '{name}' is not available: {why}; use "
                             f"--device cpu (or auto)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device (--device) '{name}' is not available: this machine has "
                             f"{torch.cuda.device_count()} CUDA device(s), numbered from 0")
    elif device.type == 'mps' and not torch.backends.mps.is_available():
        raise ValueError(f"device (--device) '{name}' is not available on this machine; use "
                         f"--device cpu (or auto)")
    return device


@dataclass
class EarlyStopping:
    r"""MMRec's rule: an epoch improves only if the metric, rounded to 4 decimals, is
    strictly greater; stop at the :obj:`patience` + 1-th consecutive epoch without one."""
    patience: int = 20
    best: float = -math.inf
    best_epoch: int = -1
    bad_epochs: int = 0

    def step(self, value: float, epoch: int) -> bool:
        value = round(value, 4)
        if value > self.best:
            self.best, self.best_epoch, self.bad_epochs = value, epoch, 0
            return True
        self.bad_epochs += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.bad_epochs > self.patience


@dataclass
class TrainResult:
    config: Dict[str, Any]
    best_epoch: int
    best_valid: Dict[str, float]
    test_at_best: Dict[str, float]
    history: List[Dict[str, Any]] = field(default_factory=list)
    timings: Dict[str, float] = field(default_factory=dict)
    info: Dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> Dict[str, Any]:
        return self.__dict__.copy()


class Trainer:
    r"""Trains a backbone (optionally with MRdIB) as MMRec does.

    Per epoch: :meth:`Recommender.pre_epoch`; for each BPR batch, the tables of
    :meth:`Recommender.forward_batch` (the full tables, or a sampled subgraph's) and one
    step of the main loss
    :math:`\mathcal{L}_{\text{backbone}} + \sum_p \mathcal{L}_p` over the training plug-ins
    :math:`p` (:class:`~mrdib_pyg.train.plugins.TrainingPlugin`; MRdIB's runs its critic
    steps inside, with its own optimiser); the plug-ins' diagnostics after the epoch;
    evaluation on validation every epoch, and on test whenever validation
    improves (the same test number MMRec reports at the best validation epoch, without
    evaluating test on every other epoch). Hyper-parameters are never chosen on test.

    With :obj:`cfg.out_dir` set, :meth:`fit` writes ``best.pt`` (:meth:`save`) whenever
    validation improves, and ``last.pt`` (:meth:`save_checkpoint`) after every epoch, each
    atomically (a temporary file renamed over the old one), so a run killed at any moment,
    even mid-write, leaves the last completed epoch's checkpoint. ``last.pt`` holds all a
    run's state: the epoch, the options, the model, the main optimiser, every plug-in's
    state (MRdIB's includes its critic optimiser, its MINE moving averages and its step
    counter), the sampler's generator, the global random states (Python, NumPy, torch, CUDA),
    early stopping, the best validation/test metrics, the history, the timings and the run
    info. :meth:`load_checkpoint` on a trainer built as the run's was
    (:func:`build_trainer` on the same options and data) restores it all, and :meth:`fit`
    then continues with the next epoch: on the same device (on CPU, with the same number of
    threads) it draws the same batches and reaches exactly the uninterrupted run's numbers.
    ``mrdib-train --resume DIR`` (:func:`run` with :obj:`resume=True`) does this from the
    command line.

    Distributed data parallel (``torchrun --nproc_per_node N -m mrdib_pyg.train ...``;
    :func:`run` joins the process group, see :mod:`mrdib_pyg.train.distributed`): built
    inside an initialised process group of N > 1 ranks, the trainer starts every rank from
    rank 0's weights; :obj:`cfg.batch_size` is the GLOBAL batch, of which each rank trains on
    its share (:class:`~mrdib_pyg.data.BPRSampler`: every rank draws the single-process
    epoch and keeps rows ``rank::N`` of each batch, so the union of the ranks' batches is the
    single-process batch, negatives included). After ``backward`` the gradients of the main
    optimiser's parameters are averaged across ranks, weighted by the ranks' shares
    (:func:`~mrdib_pyg.train.distributed.all_reduce_mean_grads`: for a loss that is a mean
    over the batch this is the global batch's gradient), and so are MRdIB's critic gradients
    in each critic step (:attr:`MRdIBPlugin.grad_sync`); MINE's moving averages stay per
    rank. The logged losses are the same weighted means over ranks. Evaluation is sharded by
    users and gathered (:meth:`FullRankEvaluator.evaluate` with :obj:`rank`/:obj:`world_size`),
    so all ranks get the single-process metrics and take the same early-stopping decisions.
    Only rank 0 shows progress and writes ``best.pt``, ``last.pt`` (and :func:`run`'s
    ``results.json``). Batch-level terms that are not means over triples (MRdIB's DV bound
    over the batch's items, its per-rank moving averages) make a distributed run close to,
    not equal to, the single-process one.

    Args:
        model (Recommender): the backbone.
        data (HeteroData): the dataset (training edges feed the sampler; val/test the
            evaluators).
        cfg (TrainConfig): options.
        plugins: training plug-ins: a :class:`~mrdib_pyg.train.plugins.TrainingPlugin`, an
            :class:`~mrdib_pyg.nn.MRdIB` module (wrapped with :obj:`cfg`'s critic options),
            or a list of them; :obj:`None` trains the bare backbone.
    """

    def __init__(self, model: Recommender, data: HeteroData, cfg: TrainConfig,
                 plugins=None):
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        self.model = model.to(self.device)
        self.plugins: List[TrainingPlugin] = [p.to(self.device)
                                              for p in as_plugins(plugins, cfg)]
        params = list(self.model.parameters())
        for plugin in self.plugins:
            params += list(plugin.main_parameters())
        self.params = params
        self.optimizer = make_adam(params, cfg.lr, cfg.weight_decay)
        # MMRec's LambdaLR: lr * lr_decay ** (epoch / lr_decay_step), stepped after each epoch.
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda epoch: cfg.lr_decay ** (epoch / cfg.lr_decay_step))
        self.rank, self.world_size = dist_utils.rank(), dist_utils.world_size()
        self.is_main = self.rank == 0
        if self.world_size > 1:
            # Start every rank from rank 0's weights (they are equal when seeded alike).
            modules = [self.model] + [getattr(p, 'module', None) for p in self.plugins]
            dist_utils.broadcast_([t for m in modules if isinstance(m, torch.nn.Module)
                                   for t in list(m.parameters()) + list(m.buffers())])
            self.model.invalidate_cache()
            for plugin in self.plugins:
                if hasattr(plugin, 'grad_sync'):
                    plugin.grad_sync = dist_utils.all_reduce_mean_grads
        num_users, num_items = data[USER].num_nodes, data[ITEM].num_nodes
        self.sampler = BPRSampler(data[RATES].edge_index, num_users, num_items,
                                  batch_size=cfg.batch_size, seed=cfg.seed,
                                  rank=self.rank, world_size=self.world_size)
        kw = dict(ks=tuple(cfg.topk), batch_size=cfg.eval_batch_size)
        self.valid_eval = FullRankEvaluator.from_data(data, 'val', **kw)
        self.test_eval = FullRankEvaluator.from_data(data, 'test', **kw)
        # an empty split would report zeros (now NaN) as if they were results
        if self.valid_eval.num_eval_users == 0:
            raise ValueError(
                "the data has no validation interaction to evaluate (the 'val' split is "
                "empty, or holds only users without training items): the trainer picks "
                "the best epoch and stops early on validation. Mark some interactions as "
                "validation (x_label 1 in an MMRec .inter file, or val.json)")
        if self.test_eval.num_eval_users == 0:
            warnings.warn("the data has no test interaction to evaluate (the 'test' split "
                          "is empty, or holds only users without training items): the test "
                          "metrics will be NaN", stacklevel=2)
        self.info = {'num_users': num_users, 'num_items': num_items,
                     'num_train': int(data[RATES].edge_index.size(1)),
                     'modalities': modality_names(data),
                     'generated_features': has_generated_features(data),
                     'feature_source': str(getattr(data, 'feature_source', 'files')),
                     'device': str(self.device)}
        if self.world_size > 1:
            self.info['world_size'] = self.world_size
        self._resumed: Optional[Dict[str, Any]] = None  # set by load_checkpoint, read by fit

    # -- one epoch ----------------------------------------------------------------------
    def train_epoch(self, epoch: int) -> Dict[str, float]:
        self.model.train()
        for plugin in self.plugins:
            plugin.train()
        self.model.pre_epoch(epoch)
        sums: Dict[str, float] = {}
        bar = tqdm(self.sampler, desc=f'epoch {epoch}', leave=False,
                   disable=self._progress() != 'bars')
        for batch in bar:
            out, batch = self.model.forward_batch(batch.to(self.device))
            loss = self.model.loss(out, batch)
            logs = {'backbone': loss.detach()}
            for plugin in self.plugins:
                extra, terms = plugin.training_loss(out, batch)
                loss = loss + extra
                logs.update({k: v.detach() for k, v in terms.items()})
                logs[plugin.name] = extra.detach()
            if not torch.isfinite(loss):
                raise FloatingPointError(f'Loss is {loss.item()} at epoch {epoch}: training '
                                         f'diverged (MMRec stops here too)')
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            weight = 1.0
            if self.world_size > 1:  # this rank's share of the global batch's mean
                share = float(batch.users.numel())
                weight = share / dist_utils.all_reduce_mean_grads(self.params, share)
            self.optimizer.step()
            logs['loss'] = loss.detach()
            for k, v in logs.items():
                sums[k] = sums.get(k, 0.) + float(v) * weight
        if self.world_size > 1 and sums:
            keys = sorted(sums)
            total = dist_utils.all_reduce_sum(
                torch.tensor([sums[k] for k in keys], dtype=torch.float64, device=self.device))
            sums = dict(zip(keys, total.tolist()))
        return {k: v / max(len(self.sampler), 1) for k, v in sums.items()}

    @torch.no_grad()
    def evaluate(self, split: str) -> Dict[str, float]:
        r"""Full-ranking metrics of :obj:`split` (``'val'``, also ``'valid'``, or ``'test'``)
        with the model in evaluation mode."""
        evaluator = {'val': self.valid_eval, 'test': self.test_eval}.get(split_name(split))
        if evaluator is None:  # any other name must not mean 'test'
            raise ValueError(f"Trainer.evaluate: unknown split {split!r} (expected 'val', "
                             f"'valid' or 'test')")
        self.model.eval()
        return evaluator.evaluate(self.model.score, device=self.device, rank=self.rank,
                                  world_size=self.world_size)

    # -- the whole run ------------------------------------------------------------------
    def fit(self) -> TrainResult:
        r"""Train until :obj:`cfg.epochs` or early stopping; after :meth:`load_checkpoint`,
        from the epoch after the checkpoint's, with its history and early-stopping state."""
        cfg = self.cfg
        stopper = EarlyStopping(cfg.patience)
        history, train_times, eval_times = [], [], []
        best_valid, test_at_best = {}, {}
        start = 0
        if self._resumed is not None:
            state, self._resumed = self._resumed, None
            es = state['early_stopping']
            stopper.best, stopper.best_epoch, stopper.bad_epochs = (
                float(es['best']), int(es['best_epoch']), int(es['bad_epochs']))
            history, best_valid, test_at_best = (list(state['history']), state['best_valid'],
                                                 state['test_at_best'])
            train_times, eval_times = list(state['train_seconds']), list(state['eval_seconds'])
            start = state['epoch'] + 1
            if self.is_main:  # said even without progress bars
                done = stopper.should_stop or start >= cfg.epochs
                print(f"resumed after epoch {start - 1}: " +
                      ('the run had finished; reported as it is' if done else
                       f'epochs {start}..{cfg.epochs - 1} to go'), file=sys.stderr)
        ckpt = os.path.join(cfg.out_dir, 'best.pt') if cfg.out_dir else None
        last = os.path.join(cfg.out_dir, LAST) if cfg.out_dir else None
        epochs = range(start, cfg.epochs) if not stopper.should_stop else range(0)
        progress = self._progress()
        bar = tqdm(epochs, desc='training', disable=progress != 'bars', initial=start,
                   total=max(cfg.epochs, start))
        for epoch in bar:
            t0 = time.perf_counter()
            losses = self.train_epoch(epoch)
            train_times.append(time.perf_counter() - t0)
            self.scheduler.step()
            diagnostics = {}
            for plugin in self.plugins:
                diagnostics.update(plugin.epoch_end(epoch, self.model))
            t0 = time.perf_counter()
            valid = self.evaluate('val')
            eval_times.append(time.perf_counter() - t0)
            record = {'epoch': epoch, 'loss': losses, 'valid': valid,
                      'train_seconds': train_times[-1], 'eval_seconds': eval_times[-1]}
            if diagnostics:
                record['diagnostics'] = diagnostics
            if stopper.step(valid[cfg.valid_metric], epoch):
                best_valid, test_at_best = valid, self.evaluate('test')
                record['test'] = test_at_best
                if ckpt and self.is_main:
                    self.save(ckpt, epoch)
            history.append(record)
            if last and self.is_main:
                self.save_checkpoint(last, {
                    'epoch': epoch, 'best_valid': best_valid, 'test_at_best': test_at_best,
                    'early_stopping': {'best': stopper.best, 'best_epoch': stopper.best_epoch,
                                       'bad_epochs': stopper.bad_epochs},
                    'history': history, 'train_seconds': train_times,
                    'eval_seconds': eval_times})
            shown = {'loss': f"{losses.get('loss', float('nan')):.4f}",
                     cfg.valid_metric: f'{valid[cfg.valid_metric]:.4f}',
                     'patience': f'{stopper.bad_epochs}/{stopper.patience}'}
            bar.set_postfix(**shown, best=stopper.best_epoch)
            if progress == 'lines':
                print(f"epoch {epoch}/{cfg.epochs}: loss {shown['loss']}, valid "
                      f"{cfg.valid_metric} {shown[cfg.valid_metric]}, best epoch "
                      f"{stopper.best_epoch} ({shown['patience']} without improvement), "
                      f"{train_times[-1]:.1f} s train + {eval_times[-1]:.1f} s eval",
                      file=sys.stderr, flush=True)
            if stopper.should_stop:
                break
        return TrainResult(cfg.to_dict(), stopper.best_epoch, best_valid, test_at_best,
                           history, _timings(train_times, eval_times, len(history)), self.info)

    def _progress(self) -> str:
        r"""How progress is shown: ``'bars'`` on a terminal, one ``'lines'`` per epoch when
        stderr is a file or a pipe (bars there are hundreds of fragments), or ``'none'``
        (``progress=False``, or not rank 0)."""
        if not (self.cfg.progress and self.is_main):
            return 'none'
        isatty = getattr(sys.stderr, 'isatty', None)
        return 'bars' if isatty is not None and isatty() else 'lines'

    def save(self, path: str, epoch: int) -> None:
        r"""The weights of epoch :obj:`epoch` (model and plug-ins), atomically."""
        state = {'epoch': epoch, 'model': self.model.state_dict(), 'config': self.cfg.to_dict(),
                 'plugins': {p.name: p.state_dict() for p in self.plugins}}
        _atomic_save(state, path)

    def save_checkpoint(self, path: str, progress: Dict[str, Any]) -> None:
        r"""Everything needed to continue after this epoch (see the class docs), atomically.
        :obj:`progress` is :meth:`fit`'s loop state: ``epoch`` (the one just completed),
        ``early_stopping``, ``best_valid``, ``test_at_best``, ``history`` and the
        ``train_seconds``/``eval_seconds`` lists. Call it between epochs: the sampler and
        random states must be those the next epoch starts from."""
        state = dict(progress)
        state.update({'format': 1, 'config': self.cfg.to_dict(),
                      'model': self.model.state_dict(), 'optimizer': self.optimizer.state_dict(),
                      'scheduler': self.scheduler.state_dict(),
                      'plugins': {p.name: p.state_dict() for p in self.plugins},
                      'sampler': self.sampler.state_dict(), 'rng': rng_state(),
                      'info': self.info})
        _atomic_save(state, path)

    def load_checkpoint(self, checkpoint) -> int:
        r"""Restore a :meth:`save_checkpoint` checkpoint (a ``last.pt`` path, its folder, or
        :func:`read_checkpoint`'s result) so that :meth:`fit` continues after its epoch.
        The trainer must be built as the checkpoint's was: options other than
        :data:`RESUMABLE` ones, or plug-ins, that differ raise :class:`ValueError`.
        Restores the global random states too. Returns the checkpoint's epoch."""
        state = read_checkpoint(checkpoint) if isinstance(checkpoint, str) else checkpoint
        check_checkpoint_options(state, self.cfg)
        names = sorted(p.name for p in self.plugins)
        if sorted(state['plugins']) != names:
            raise ValueError(f"the checkpoint holds the plug-ins {sorted(state['plugins'])}, "
                             f"this trainer has {names}")
        self.model.load_state_dict(state['model'])
        self.optimizer.load_state_dict(state['optimizer'])
        if 'scheduler' in state:  # checkpoints before the decay option have none (no decay)
            self.scheduler.load_state_dict(state['scheduler'])
        for plugin in self.plugins:
            plugin.load_state_dict(state['plugins'][plugin.name])
        self.sampler.load_state_dict(state['sampler'])
        self.model.invalidate_cache()
        set_rng_state(state['rng'])  # last: nothing may draw between here and fit()
        self._resumed = state
        return int(state['epoch'])

    def load_best(self, path: str) -> int:
        state = torch.load(path, map_location=self.device, weights_only=False)
        self.model.load_state_dict(state['model'])
        for plugin in self.plugins:
            if plugin.name in state.get('plugins', {}):
                plugin.load_state_dict(state['plugins'][plugin.name])
        self.model.invalidate_cache()
        return state['epoch']
