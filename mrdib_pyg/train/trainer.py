r"""The training loop: BPR batches -> backbone (+ MRdIB) -> Adam, early stopping on
validation, test at the best validation epoch, checkpoint and a JSON record."""
import json
import math
import os
import random
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import numpy as np
import torch
from torch_geometric.data import HeteroData
from tqdm.auto import tqdm

from mrdib_pyg.data.sampling import BPRSampler
from mrdib_pyg.data.schema import ITEM, RATES, USER, modality_names
from mrdib_pyg.evaluate import FullRankEvaluator
from mrdib_pyg.nn.models import MODELS, Recommender
from mrdib_pyg.nn.mrdib import MRdIB
from mrdib_pyg.train.config import TrainConfig
from mrdib_pyg.train.plugins import TrainingPlugin, as_plugins


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


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


def load_data(cfg: TrainConfig) -> HeteroData:
    r"""The dataset named by :obj:`cfg` as one :class:`HeteroData`."""
    if cfg.dataset == 'synthetic':
        from mrdib_pyg.data.synthetic import SyntheticMM
        data = SyntheticMM(**cfg.dataset_args)[0]
    else:
        from mrdib_pyg.data.amazon_mm import AmazonMM
        data = AmazonMM(cfg.root, cfg.dataset, fill_missing=cfg.fill_missing,
                        **cfg.dataset_args)[0]
    if cfg.generated_features and not modality_names(data):
        from mrdib_pyg.data.synthetic import attach_generated_features
        data = attach_generated_features(data, seed=cfg.seed)
    return data


def has_generated_features(data: HeteroData) -> bool:
    r"""Whether :obj:`data` carries features generated for a real interaction graph
    (:func:`~mrdib_pyg.data.attach_generated_features`), which every report must state.
    Synthetic datasets are synthetic throughout and are not flagged."""
    return str(getattr(data, 'feature_source', '')).startswith('generated')


def build_model(cfg: TrainConfig, data: HeteroData) -> Recommender:
    if cfg.model not in MODELS:
        raise KeyError(f"Unknown model '{cfg.model}' (available: {', '.join(MODELS)})")
    cls = MODELS[cfg.model]
    kwargs = dict(cfg.model_args)
    if cls.multimodal:
        if not modality_names(data):
            raise ValueError(f"Model '{cfg.model}' needs modality features, but dataset "
                             f"'{cfg.dataset}' has none; pass --generated-features to "
                             f"attach generated ones (say so when reporting results)")
        kwargs.setdefault('fill_missing', cfg.fill_missing)
    return cls.from_data(data, **kwargs)


def build_mrdib(cfg: TrainConfig, model: Recommender) -> MRdIB:
    r"""An :class:`MRdIB` sized from one forward pass of :obj:`model`, with every MRdIB
    option of :obj:`cfg`."""
    with torch.no_grad():
        out = model()
    return MRdIB.from_output(
        out, ablation=cfg.ablation, latent_dim=cfg.latent_dim, alpha1=cfg.alpha1,
        alpha2=cfg.alpha2, alpha3=cfg.alpha3, critic_hidden=cfg.critic_hidden,
        fusion_hidden=cfg.fusion_hidden, encoder_hidden=cfg.encoder_hidden,
        ema_decay=cfg.ema_decay, input_norm=cfg.input_norm, logvar_bound=cfg.logvar_bound,
        redundant_floor=cfg.redundant_floor)


def enable_replace_mode(model: Recommender, mrdib: MRdIB) -> None:
    r"""Route the backbone's fusion through MRdIB's posterior means (the spec's optional
    "replace" extension). Needs the backbone's documented :attr:`modality_hook`, and
    :math:`\mu_m` as wide as the representation it replaces."""
    if not hasattr(model, 'modality_hook'):
        raise ValueError(f"Replace mode needs a backbone with a 'modality_hook' "
                         f"(got {model.__class__.__name__}); plug-in mode needs none")
    wrong = {m: d for m, d in mrdib.modality_dims.items() if d != mrdib.latent_dim}
    if wrong:
        raise ValueError(f"Replace mode puts MRdIB's means (latent_dim={mrdib.latent_dim}) in "
                         f"place of the backbone's modality representations, whose widths "
                         f"are {wrong}: set latent_dim to match")

    model.modality_hook = mrdib.encode_items


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

    Per epoch: :meth:`Recommender.pre_epoch`; for each BPR batch, one step of the main loss
    :math:`\mathcal{L}_{\text{backbone}} + \sum_p \mathcal{L}_p` over the training plug-ins
    :math:`p` (:class:`~mrdib_pyg.train.plugins.TrainingPlugin`; MRdIB's runs its critic
    steps inside, with its own optimiser); the plug-ins' diagnostics after the epoch;
    evaluation on validation every epoch, and on test whenever validation
    improves (the same test number MMRec reports at the best validation epoch, without
    evaluating test on every other epoch). Hyper-parameters are never chosen on test.

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
        self.optimizer = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        num_users, num_items = data[USER].num_nodes, data[ITEM].num_nodes
        self.sampler = BPRSampler(data[RATES].edge_index, num_users, num_items,
                                  batch_size=cfg.batch_size, seed=cfg.seed)
        kw = dict(ks=tuple(cfg.topk), batch_size=cfg.eval_batch_size)
        self.valid_eval = FullRankEvaluator.from_data(data, 'val', **kw)
        self.test_eval = FullRankEvaluator.from_data(data, 'test', **kw)
        self.info = {'num_users': num_users, 'num_items': num_items,
                     'num_train': int(data[RATES].edge_index.size(1)),
                     'modalities': modality_names(data),
                     'generated_features': has_generated_features(data),
                     'feature_source': str(getattr(data, 'feature_source', 'files')),
                     'device': str(self.device)}

    # -- one epoch ----------------------------------------------------------------------
    def train_epoch(self, epoch: int) -> Dict[str, float]:
        self.model.train()
        for plugin in self.plugins:
            plugin.train()
        self.model.pre_epoch(epoch)
        sums: Dict[str, float] = {}
        bar = tqdm(self.sampler, desc=f'epoch {epoch}', leave=False,
                   disable=not self.cfg.progress)
        for batch in bar:
            batch = batch.to(self.device)
            out = self.model()
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
            self.optimizer.step()
            logs['loss'] = loss.detach()
            for k, v in logs.items():
                sums[k] = sums.get(k, 0.) + float(v)
        return {k: v / max(len(self.sampler), 1) for k, v in sums.items()}

    @torch.no_grad()
    def evaluate(self, split: str) -> Dict[str, float]:
        self.model.eval()
        evaluator = self.valid_eval if split == 'val' else self.test_eval
        return evaluator.evaluate(self.model.score, device=self.device)

    # -- the whole run ------------------------------------------------------------------
    def fit(self) -> TrainResult:
        cfg = self.cfg
        stopper = EarlyStopping(cfg.patience)
        history, train_times, eval_times = [], [], []
        best_valid, test_at_best = {}, {}
        ckpt = os.path.join(cfg.out_dir, 'best.pt') if cfg.out_dir else None
        bar = tqdm(range(cfg.epochs), desc='training', disable=not cfg.progress)
        for epoch in bar:
            t0 = time.perf_counter()
            losses = self.train_epoch(epoch)
            train_times.append(time.perf_counter() - t0)
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
                if ckpt:
                    self.save(ckpt, epoch)
            history.append(record)
            bar.set_postfix(loss=f"{losses.get('loss', float('nan')):.4f}",
                            **{cfg.valid_metric: f'{valid[cfg.valid_metric]:.4f}'},
                            best=stopper.best_epoch)
            if stopper.should_stop:
                break
        timings = {'train_epoch_median_s': float(np.median(train_times)),
                   'eval_pass_median_s': float(np.median(eval_times)),
                   'epochs_run': len(history), 'total_s': float(sum(train_times)
                                                                  + sum(eval_times))}
        return TrainResult(cfg.to_dict(), stopper.best_epoch, best_valid, test_at_best,
                           history, timings, self.info)

    def save(self, path: str, epoch: int) -> None:
        os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
        state = {'epoch': epoch, 'model': self.model.state_dict(), 'config': self.cfg.to_dict(),
                 'plugins': {p.name: p.state_dict() for p in self.plugins}}
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or '.', suffix='.tmp')
        os.close(fd)
        try:
            torch.save(state, tmp)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)

    def load_best(self, path: str) -> int:
        state = torch.load(path, map_location=self.device, weights_only=False)
        self.model.load_state_dict(state['model'])
        for plugin in self.plugins:
            if plugin.name in state.get('plugins', {}):
                plugin.load_state_dict(state['plugins'][plugin.name])
        self.model.invalidate_cache()
        return state['epoch']


def build_trainer(cfg: TrainConfig, data: HeteroData) -> Trainer:
    r"""Seed, then build the backbone (and MRdIB, in replace mode if asked) and its
    :class:`Trainer`."""
    seed_everything(cfg.seed)
    model = build_model(cfg, data)
    mrdib = None
    if cfg.mrdib:
        mrdib = build_mrdib(cfg, model)
        if cfg.replace:
            enable_replace_mode(model, mrdib)
    elif cfg.replace:
        raise ValueError('replace=True needs mrdib=True')
    return Trainer(model, data, cfg, mrdib)


def run(cfg: TrainConfig, data: Optional[HeteroData] = None) -> TrainResult:
    r"""Load data, build the model (and MRdIB), train, and write ``results.json`` to
    :obj:`cfg.out_dir` when set. Returns the :class:`TrainResult`.

    The options, the device, the output and data folders and the model and dataset
    arguments are checked first, before any data is loaded (:class:`ValueError`)."""
    from mrdib_pyg.train.config import check_kwargs
    cfg.validate()
    resolve_device(cfg.device)
    cfg.check_paths()
    if cfg.model not in MODELS:
        raise ValueError(f"Unknown model '{cfg.model}' (available: {', '.join(MODELS)})")
    model_cls = MODELS[cfg.model]
    check_kwargs(cfg.model_args, [model_cls.from_data, model_cls], f"model '{cfg.model}'",
                 '--model-arg')
    if data is None and cfg.dataset == 'synthetic':
        from mrdib_pyg.data.synthetic import SyntheticMM
        check_kwargs(cfg.dataset_args, [SyntheticMM], "dataset 'synthetic'", '--dataset-arg')
    elif data is None:
        from mrdib_pyg.data.amazon_mm import AmazonMM
        check_kwargs(cfg.dataset_args, [AmazonMM], f"dataset '{cfg.dataset}'", '--dataset-arg',
                     taken={'root': '--root', 'name': '--dataset',
                            'fill_missing': '--fill-missing'})
    seed_everything(cfg.seed)
    data = load_data(cfg) if data is None else data
    if has_generated_features(data):
        warnings.warn('This dataset carries GENERATED features (not the real image/text '
                      'features); report results as such', stacklevel=2)
    result = build_trainer(cfg, data).fit()
    if cfg.out_dir:
        os.makedirs(cfg.out_dir, exist_ok=True)
        path = os.path.join(cfg.out_dir, 'results.json')
        with open(path + '.tmp', 'w') as f:
            json.dump(result.to_dict(), f, indent=1)
        os.replace(path + '.tmp', path)
    return result
