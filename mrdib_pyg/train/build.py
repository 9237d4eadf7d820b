r"""Building a run from its options: the data, the backbone with its declared graphs,
the plug-ins, the :class:`~mrdib_pyg.train.trainer.Trainer`; and :func:`run`, which does it
all and writes ``results.json``. The training loop itself is in
:mod:`mrdib_pyg.train.trainer`."""
import glob
import os
import warnings
from typing import Optional

import torch
from torch_geometric.data import HeteroData

from mrdib_pyg.data.cache import atomic_write
from mrdib_pyg.data.schema import modality_names
from mrdib_pyg.data.synthetic import has_generated_features
from mrdib_pyg.nn.models import MODELS, Recommender
from mrdib_pyg.nn.mrdib import MRdIB
from mrdib_pyg.train import distributed as dist_utils
from mrdib_pyg.train.allocator import keep_freed_memory
from mrdib_pyg.train.config import MRdIBOptions, TrainConfig, check_kwargs
from mrdib_pyg.train.trainer import (Trainer, TrainResult, _write_json, check_checkpoint_options,
                                     checkpoint_finished, read_checkpoint, resolve_device,
                                     result_from_checkpoint, seed_everything)


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


def graph_cache_dir(cfg: TrainConfig) -> Optional[str]:
    r"""Where derived graphs are cached: the dataset's ``processed/`` folder (the embedded
    synthetic dataset is rebuilt in memory, so its graphs are too)."""
    if cfg.dataset == 'synthetic':
        return None
    folder = os.path.join(cfg.root, cfg.dataset, 'processed')
    return folder if os.path.isdir(folder) else None


def build_model(cfg: TrainConfig, data: HeteroData) -> Recommender:
    r"""The backbone :obj:`cfg.model` for :obj:`data` (its declared graphs built, or read
    from the dataset's cache), with :obj:`cfg.model_args`."""
    if cfg.model not in MODELS:
        raise KeyError(f"Unknown model '{cfg.model}' (available: {', '.join(sorted(MODELS))})")
    cls = MODELS[cfg.model]
    if cls.multimodal and not modality_names(data):
        raise ValueError(f"Model '{cfg.model}' needs modality features, but dataset "
                         f"'{cfg.dataset}' has none; pass --generated-features to "
                         f"attach generated ones (say so when reporting results)")
    extra = {'fill_missing': cfg.fill_missing} if cls.multimodal else {}
    return cls.from_data(data, cache_dir=graph_cache_dir(cfg), **extra, **cfg.model_args)


def build_mrdib(cfg: TrainConfig, model: Recommender) -> MRdIB:
    r"""An :class:`MRdIB` sized from one forward pass of :obj:`model`, with every MRdIB
    option of :obj:`cfg`."""
    with torch.no_grad():
        out = model()
    o = cfg.mrdib if cfg.mrdib is not None else MRdIBOptions()
    return MRdIB.from_output(
        out, ablation=o.ablation, latent_dim=o.latent_dim, alpha1=o.alpha1,
        alpha2=o.alpha2, alpha3=o.alpha3, critic_hidden=o.critic_hidden,
        fusion_hidden=o.fusion_hidden, encoder_hidden=o.encoder_hidden,
        ema_decay=o.ema_decay, input_norm=o.input_norm, logvar_bound=o.logvar_bound,
        redundant_floor=o.redundant_floor, user_grad=o.user_grad,
        item_grad=o.item_grad, synergy_weight=o.synergy_weight)


def enable_replace_mode(model: Recommender, mrdib: MRdIB) -> None:
    r"""Route the backbone's fusion through MRdIB's posterior means (the spec's optional
    "replace" extension). Needs the backbone's documented :attr:`modality_hook` (:attr:`supports_replace`), and
    :math:`\mu_m` as wide as the representation it replaces."""
    if not getattr(model, 'supports_replace', False):
        raise ValueError(f"Replace mode needs a backbone that fuses its modality "
                         f"representations through MultimodalRecommender.apply_modality_hook "
                         f"(supports_replace=True; {model.__class__.__name__} does not); "
                         f"plug-in mode needs none")
    wrong = {m: d for m, d in mrdib.modality_dims.items() if d != mrdib.latent_dim}
    if wrong:
        raise ValueError(f"Replace mode puts MRdIB's means (latent_dim={mrdib.latent_dim}) in "
                         f"place of the backbone's modality representations, whose widths "
                         f"are {wrong}: set latent_dim to match")

    model.modality_hook = mrdib.encode_items


def build_trainer(cfg: TrainConfig, data: HeteroData) -> Trainer:
    r"""Seed, then build the backbone (and MRdIB, in replace mode if asked) and its
    :class:`Trainer`."""
    seed_everything(cfg.seed)
    model = build_model(cfg, data)
    mrdib = None
    if cfg.mrdib is not None:
        mrdib = build_mrdib(cfg, model)
        if cfg.mrdib.replace:
            enable_replace_mode(model, mrdib)
    return Trainer(model, data, cfg, mrdib)


def run(cfg: TrainConfig, data: Optional[HeteroData] = None,
        resume: bool = False) -> TrainResult:
    r"""Load data, build the model (and MRdIB), train, and write ``results.json`` to
    :obj:`cfg.out_dir` when set. Returns the :class:`TrainResult`.

    The options, the device, the output and data folders and the model and dataset
    arguments are checked first, before any data is loaded (:class:`ValueError`).

    With :obj:`resume=True`, continue the run whose ``last.pt`` is in :obj:`cfg.out_dir`
    (:obj:`cfg` as :func:`resume_config` gives it): data, model and plug-ins are rebuilt as
    above, the checkpoint's states loaded (:meth:`Trainer.load_checkpoint`), and training
    goes on from the epoch after it. A run that is already over (stopped early, or at its
    last epoch) is not rebuilt: its stored result is returned (and written) as it is.

    Under ``torchrun`` (``WORLD_SIZE`` > 1) it joins the process group first (and leaves it
    at the end) unless one is already initialised; every rank then returns the same result,
    and only rank 0 writes files (see :class:`Trainer`)."""
    cfg.validate()
    resolve_device(cfg.device)
    if cfg.keep_freed_memory:
        keep_freed_memory()
    joined = not dist_utils.is_initialized() and dist_utils.init_from_env(cfg.device)
    try:
        return _run(cfg, data, resume)
    finally:
        if joined:
            dist_utils.shutdown()


def _run(cfg: TrainConfig, data: Optional[HeteroData], resume: bool) -> TrainResult:
    cfg.check_paths()
    if cfg.model not in MODELS:
        raise ValueError(f"Unknown model '{cfg.model}' (available: {', '.join(MODELS)})")
    model_cls = MODELS[cfg.model]
    check_kwargs(cfg.model_args, [model_cls.from_data, model_cls], f"model '{cfg.model}'",
                 '--model-arg', taken={'fill_missing': '--fill-missing', 'cache_dir': '--root'})
    if data is None and cfg.dataset == 'synthetic':
        from mrdib_pyg.data.synthetic import SyntheticMM
        check_kwargs(cfg.dataset_args, [SyntheticMM], "dataset 'synthetic'", '--dataset-arg')
    elif data is None:
        from mrdib_pyg.data.amazon_mm import AmazonMM
        check_kwargs(cfg.dataset_args, [AmazonMM], f"dataset '{cfg.dataset}'", '--dataset-arg',
                     taken={'root': '--root', 'name': '--dataset',
                            'fill_missing': '--fill-missing'})
    state = None
    if resume:
        if not cfg.out_dir:
            raise ValueError('resume=True needs out_dir: the folder of the run to continue')
        state = read_checkpoint(cfg.out_dir)
        check_checkpoint_options(state, cfg)
        if dist_utils.is_main():
            for partial in glob.glob(os.path.join(glob.escape(cfg.out_dir), '.*.pt.*.tmp')):
                os.remove(partial)  # what a kill during _atomic_save left behind
    if state is not None and checkpoint_finished(state, cfg):
        result = result_from_checkpoint(state)
    else:
        seed_everything(cfg.seed)
        data = load_data(cfg) if data is None else data
        if has_generated_features(data):
            warnings.warn('This dataset carries GENERATED features (not the real image/text '
                          'features); report results as such', stacklevel=2)
        trainer = build_trainer(cfg, data)
        if state is not None:
            trainer.load_checkpoint(state)
        result = trainer.fit()
    if cfg.out_dir and dist_utils.is_main():
        atomic_write(os.path.join(cfg.out_dir, 'results.json'),
                     lambda tmp: _write_json(tmp, result.to_dict()))
    dist_utils.barrier()  # the other ranks return once rank 0's files are written
    return result
