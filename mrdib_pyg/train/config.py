r"""Training configuration: a dataclass of the run's options with the MRdIB plug-in's options
in their own section (:class:`MRdIBOptions`, the ``mrdib:`` key), loaded from YAML,
overridden from the command line, and failing loudly on unknown keys (MMRec silently reads
missing keys as None)."""
import collections.abc
import copy
import dataclasses
import inspect
import math
import os
import re
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import yaml


class _Loader(yaml.SafeLoader):
    r"""YAML 1.1 reads ``1e-3`` (no dot) as a string; configs mean a float."""


_Loader.add_implicit_resolver(
    'tag:yaml.org,2002:float',
    re.compile(r'''^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+][0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$''', re.X),
    list('-+0123456789.'))


def parse_value(text: str) -> Any:
    r"""A command-line or YAML scalar as Python (``1e-3`` -> float, ``[1, 2]`` -> list)."""
    return yaml.load(text, Loader=_Loader)


#: Per-dataset defaults the command line layers between the built-in defaults and a
#: ``--config`` file, as MMRec's ``configs/dataset/<name>.yaml``. The embedded synthetic
#: dataset is 10x smaller than Baby: a larger step and smaller batches let it converge in
#: tens of epochs instead of hundreds.
DATASET_PRESETS: Dict[str, Dict[str, Any]] = {
    'synthetic': {'lr': 5e-3, 'batch_size': 1024},
}

#: The accepted values of the string options (as AmazonMM, MRdIB and its encoders define them).
CHOICES: Dict[str, Tuple[str, ...]] = {
    'fill_missing': ('keep', 'mean', 'zero'),
    'ablation': ('full', 'wo_mib', 'wo_redundant', 'wo_unique', 'mib_only'),
    'input_norm': ('scale', 'layer', 'none'),
}
#: The metrics the trainer evaluates; ``valid_metric`` is one of them at a K of ``topk``.
VALID_METRICS = ('Recall', 'NDCG', 'Precision', 'MAP')


def option_name(name: str) -> str:
    r"""How an option reads in messages: its YAML key and its flag, ``latent_dim (--latent-dim)``."""
    flag = {'model_args': '--model-arg', 'dataset_args': '--dataset-arg'}.get(
        name, '--' + name.replace('_', '-'))
    return f'{name} ({flag})'


def matches_type(value: Any, hint: Any) -> bool:
    r"""Whether :obj:`value` fits the type hint :obj:`hint` (int, float, str, bool, None,
    Optional/Union, tuples, sequences, dicts; any other hint is left to the callee)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if hint is type(None):
        return value is None
    if origin is typing.Union:
        return any(matches_type(value, a) for a in args)
    if origin in (tuple, list, collections.abc.Sequence):
        if not isinstance(value, (list, tuple)):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(map(matches_type, value, args))
        return all(matches_type(v, args[0]) for v in value) if args else True
    if hint is dict or origin is dict:
        return isinstance(value, dict)
    return True


def describe_type(hint: Any) -> str:
    r"""What a type hint accepts, in words: ``an integer``, ``a list of 2 integers``, ..."""
    plural = {int: 'integers', float: 'numbers', str: 'strings', bool: 'true/false values'}
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union:
        return ' or '.join(describe_type(a) for a in args)
    if origin in (tuple, list, collections.abc.Sequence):
        if origin is tuple and args and args[-1] is not Ellipsis and len(set(args)) == 1:
            return f'a list of {len(args)} {plural.get(args[0], "values")}'
        return f'a list of {plural.get(args[0], "values")}' if args else 'a list'
    return {bool: 'true or false', int: 'an integer', float: 'a number', str: 'a string',
            type(None): 'none', dict: 'a mapping'}.get(origin or hint, str(hint))


def check_kwargs(values: Dict[str, Any], callables: Sequence[Callable], what: str, flag: str,
                 taken: Optional[Dict[str, str]] = None) -> None:
    r"""Raise :class:`ValueError` if :obj:`values` (e.g. ``--model-arg`` pairs) holds an
    argument that none of :obj:`callables` (e.g. a model's ``from_data`` and constructor)
    takes by keyword, or a value of the wrong type for its annotation or default.
    :obj:`taken` maps arguments the caller sets itself to the option that sets them."""
    params: Dict[str, inspect.Parameter] = {}
    open_ended = True
    for fn in callables:
        try:
            sig = inspect.signature(fn, eval_str=True)
        except Exception:  # unresolvable annotations: check the names only
            sig = inspect.signature(fn)
        kinds = {p.kind for p in sig.parameters.values()}
        open_ended &= inspect.Parameter.VAR_KEYWORD in kinds
        for p in sig.parameters.values():
            if p.default is not p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
                params.setdefault(p.name, p)
    for key, value in values.items():
        if taken and key in taken:
            raise ValueError(f"{what}: argument '{key}' is set by {taken[key]}, not {flag}")
        if key not in params:
            if open_ended:
                continue
            listed = sorted(k for k in params if k not in (taken or {}))
            raise ValueError(f"{what} has no argument '{key}' ({flag} {key}=...); its "
                             f"arguments are: {', '.join(listed)}")
        p = params[key]
        hint = p.annotation
        if hint is p.empty:
            hint = type(p.default) if isinstance(p.default, (bool, int, float, str)) else Any
        if not matches_type(value, hint):
            raise ValueError(f"{what}: argument '{key}' expects {describe_type(hint)} "
                             f"(got {value!r})")


def _nearest_existing(path: str) -> str:
    path = os.path.abspath(path)
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    return path


def _check_folder(path: str, name: str, purpose: str) -> None:
    r"""Raise :class:`ValueError` unless :obj:`path` is a folder (or can be created as one)
    that this user can write into."""
    where = _nearest_existing(path)
    if not os.path.isdir(where):
        what = 'is a file' if where == os.path.abspath(path) else f"is inside the file '{where}'"
        raise ValueError(f"{option_name(name)} '{path}' {what}, not a folder ({purpose})")
    if not os.access(where, os.W_OK | os.X_OK):
        raise ValueError(f"{option_name(name)} '{path}' is not writable: permission denied on "
                         f"'{where}' ({purpose})")


def _check_types(options: Any, skip: Sequence[str] = ()) -> None:
    r"""Raise :class:`ValueError`, naming the option, if a field of the dataclass
    :obj:`options` does not fit its type."""
    hints = typing.get_type_hints(type(options))
    for f in dataclasses.fields(options):
        value = getattr(options, f.name)
        if f.name not in skip and not matches_type(value, hints[f.name]):
            raise ValueError(f"{option_name(f.name)} expects {describe_type(hints[f.name])} "
                             f"(got {value!r})")


def _range_check(options: Any) -> Callable[[str, bool, str], None]:
    r"""``check(name, ok, rule)``: raise, naming option :obj:`name` and its value, unless
    :obj:`ok`."""
    def check(name: str, ok: bool, rule: str) -> None:
        if not ok:
            raise ValueError(f"{option_name(name)} must be {rule} "
                             f"(got {getattr(options, name)!r})")
    return check


@dataclass
class MRdIBOptions:
    r"""The MRdIB plug-in's options (mrdib-spec.md; every "our choice" setting is here): the
    ``mrdib:`` section of a configuration. Flags keep their names (``--alpha1``,
    ``--critic-steps``, ...); a flat ``alpha1: ...`` at the top level of an older file or
    checkpoint is read into this section."""
    alpha1: float = 0.005
    alpha2: float = 0.05
    alpha3: float = 0.005
    latent_dim: int = 64
    ablation: str = 'full'
    replace: bool = False
    encoder_hidden: Optional[int] = None   # None: one Linear per encoder
    fusion_hidden: Optional[int] = None    # None: latent_dim
    input_norm: str = 'scale'              # encoders' input: 'scale', 'layer' or 'none'
    logvar_bound: Optional[float] = 6.0    # None: unbounded log-variance
    redundant_floor: Optional[float] = 0.0  # None: encoders descend the plain DV bound
    critic_hidden: int = 128
    critic_lr: float = 1e-3
    critic_steps: int = 1                  # critic steps per main step
    critic_warmup: int = 0                 # batches before the DV term reaches the encoders
    ema_decay: float = 0.99                # MINE's moving average
    mi_probe_every: int = 0                # epochs between fresh-critic MI probes (0: off)
    user_grad: bool = True                 # False: the heads leave the user tables alone
    item_grad: float = 1.0                 # scale of MRdIB's gradient into the modality items
    synergy_weight: float = 1.0            # weight of the fused (synergy) head's BPR

    @classmethod
    def field_names(cls):
        return [f.name for f in dataclasses.fields(cls)]

    def validate(self) -> 'MRdIBOptions':
        r"""Raise :class:`ValueError`, naming the option, for a wrong type or range."""
        _check_types(self)
        check = _range_check(self)

        for name in ('latent_dim', 'critic_hidden'):
            check(name, getattr(self, name) >= 1, 'an integer >= 1')
        for name in ('critic_steps', 'critic_warmup', 'mi_probe_every'):
            check(name, getattr(self, name) >= 0, 'an integer >= 0')
        for name in ('encoder_hidden', 'fusion_hidden'):
            check(name, getattr(self, name) is None or getattr(self, name) >= 1,
                  'an integer >= 1, or none')
        check('critic_lr', math.isfinite(self.critic_lr) and self.critic_lr > 0,
              'a finite number > 0')
        for name in ('alpha1', 'alpha2', 'alpha3', 'synergy_weight'):
            check(name, math.isfinite(getattr(self, name)) and getattr(self, name) >= 0,
                  'a finite number >= 0')
        check('ema_decay', 0 <= self.ema_decay < 1, 'a number in [0, 1)')
        check('item_grad', 0 <= self.item_grad <= 1, 'a number in [0, 1]')
        check('logvar_bound', self.logvar_bound is None or self.logvar_bound > 0,
              'a number > 0, or none')
        check('redundant_floor', self.redundant_floor is None
              or math.isfinite(self.redundant_floor), 'a finite number, or none')
        for name in ('ablation', 'input_norm'):
            check(name, getattr(self, name) in CHOICES[name],
                  f"one of {', '.join(CHOICES[name])}")
        return self


#: The MRdIB options, as flat keys (flags, older files and checkpoints).
MRDIB_KEYS = tuple(f.name for f in dataclasses.fields(MRdIBOptions))


def mrdib_section(value: Any, current: Optional[MRdIBOptions], source: str
                  ) -> Optional[MRdIBOptions]:
    r"""The ``mrdib`` section from a YAML/flag value: :obj:`True` (default options, or the
    current ones), :obj:`False`/:obj:`None` (off), a mapping of options, or
    :class:`MRdIBOptions`."""
    if value is None or value is False:
        return None
    if value is True:
        return current if current is not None else MRdIBOptions()
    if isinstance(value, MRdIBOptions):
        return copy.deepcopy(value)
    if isinstance(value, dict):
        unknown = sorted(str(k) for k in set(value) - set(MRDIB_KEYS))
        if unknown:
            raise KeyError(f"Unknown MRdIB option(s) {unknown} in {source}; valid options: "
                           f"{', '.join(MRDIB_KEYS)}")
        opts = copy.deepcopy(current) if current is not None else MRdIBOptions()
        for k, v in value.items():
            setattr(opts, k, v)
        return opts
    raise ValueError(f"mrdib (--mrdib) in {source} expects true, false or a mapping of MRdIB "
                     f"options (got {value!r})")


@dataclass
class TrainConfig:
    r"""Everything a run depends on; written verbatim into the results JSON.

    Defaults follow MMRec's ``overall.yaml`` (embedding 64, Adam lr 1e-3, batch 2048,
    patience 20 on validation Recall@20, top-K 5/10/20/50) and mrdib-spec.md for MRdIB.
    """
    # data
    dataset: str = 'synthetic'
    root: str = 'datasets'
    dataset_args: Dict[str, Any] = field(default_factory=dict)
    generated_features: bool = False  # attach generated features when a dataset has none
    fill_missing: str = 'keep'
    # model
    model: str = 'vbpr'
    model_args: Dict[str, Any] = field(default_factory=dict)
    # optimisation
    epochs: int = 1000
    batch_size: int = 2048
    lr: float = 1e-3
    lr_decay: float = 1.0          # MMRec's learning_rate_scheduler: lr * lr_decay ** (epoch /
    lr_decay_step: int = 50        # lr_decay_step), e.g. MGCN's [0.96, 50]
    weight_decay: float = 0.0
    seed: int = 999
    patience: int = 20
    valid_metric: str = 'Recall@20'
    topk: Tuple[int, ...] = (5, 10, 20, 50)
    eval_batch_size: int = 1024        # users per evaluation block (MMRec: 4096; see evaluate.py)
    device: str = 'auto'
    # plug-ins: MRdIB's section (None: bare backbone). YAML: ``mrdib: true`` or
    # ``mrdib: {alpha1: 0.01, ...}``; flags: --mrdib --alpha1 0.01 ...
    mrdib: Optional[MRdIBOptions] = None
    # output
    out_dir: Optional[str] = None
    progress: bool = True
    # glibc: keep large freed blocks for reuse instead of unmapping them (train/allocator.py)
    keep_freed_memory: bool = True

    @classmethod
    def preset(cls, model: str = 'vbpr', dataset: str = 'synthetic') -> 'TrainConfig':
        r"""The options for :obj:`model` on :obj:`dataset` before any file or flag: the
        defaults, then the model's MMRec training options
        (:attr:`~mrdib_pyg.nn.models.Recommender.train_defaults`, e.g. MGCN's learning-rate
        decay), then the dataset preset (:data:`DATASET_PRESETS`), as the command line
        layers them under ``--config`` and flags."""
        from mrdib_pyg.nn.models import MODELS  # the registry imports torch: only here
        cfg = cls(model=model, dataset=dataset)
        if model in MODELS:
            cfg.update(dict(getattr(MODELS[model], 'train_defaults', {})),
                       source=f"model '{model}' defaults")
        return cfg.update(DATASET_PRESETS.get(dataset, {}), source=f"dataset '{dataset}' preset")

    @classmethod
    def field_names(cls):
        return [f.name for f in dataclasses.fields(cls)]

    def option(self, name: str) -> Any:
        r"""The value of option :obj:`name`, a field or an MRdIB option (its default while
        MRdIB is off)."""
        if name in MRDIB_KEYS:
            return getattr(self.mrdib if self.mrdib is not None else MRdIBOptions(), name)
        return getattr(self, name)

    def update(self, values: Dict[str, Any], source: str = 'config') -> 'TrainConfig':
        r"""Set :obj:`values`, raising on unknown keys (naming :obj:`source`)."""
        unknown = sorted(str(k) for k in set(values) - set(self.field_names())
                         - set(MRDIB_KEYS))
        if unknown:
            raise KeyError(f"Unknown option(s) {unknown} in {source}; valid options: "
                           f"{', '.join(self.field_names())} (MRdIB's under mrdib: "
                           f"{', '.join(MRDIB_KEYS)})")
        values = dict(values)
        if 'mrdib' in values:
            self.mrdib = mrdib_section(values.pop('mrdib'), self.mrdib, source)
        flat = {k: values.pop(k) for k in MRDIB_KEYS if k in values}
        if flat and self.mrdib is not None:
            self.mrdib = mrdib_section(flat, self.mrdib, source)
        elif flat:  # MRdIB is off: its options must be the defaults (older records hold them)
            changed = {k: v for k, v in flat.items() if not _same_value(
                v, getattr(MRdIBOptions(), k))}
            if changed:
                verb = 'matters' if len(changed) == 1 else 'matter'
                raise ValueError(f"{', '.join(option_name(k) for k in changed)} (in {source}) "
                                 f"only {verb} with MRdIB: add --mrdib (mrdib: true)")
        for key, value in values.items():
            if key == 'topk' and isinstance(value, (list, tuple)):
                value = tuple(value)  # validate() checks the entries
            elif key == 'topk' and isinstance(value, int) and not isinstance(value, bool):
                value = (value, )
            setattr(self, key, value)
        return self

    def validate(self) -> 'TrainConfig':
        r"""Raise :class:`ValueError`, naming the option and its value, if an option has the
        wrong type or a value out of range (a run on such a value would end in a traceback
        or, worse, in silently wrong results). Returns :obj:`self`."""
        if self.mrdib is not None and not isinstance(self.mrdib, MRdIBOptions):
            raise ValueError(f'mrdib (--mrdib) expects MRdIB options (got {self.mrdib!r})')
        _check_types(self, skip=('mrdib', ))
        check = _range_check(self)

        for name in ('epochs', 'batch_size', 'eval_batch_size', 'lr_decay_step'):
            check(name, getattr(self, name) >= 1, 'an integer >= 1')
        check('patience', self.patience >= 0, 'an integer >= 0')
        for name in ('lr', 'lr_decay'):
            check(name, math.isfinite(getattr(self, name)) and getattr(self, name) > 0,
                  'a finite number > 0')
        check('weight_decay', math.isfinite(self.weight_decay) and self.weight_decay >= 0,
              'a finite number >= 0')
        check('seed', 0 <= self.seed < 2 ** 32, 'an integer in [0, 2**32)')
        check('fill_missing', self.fill_missing in CHOICES['fill_missing'],
              f"one of {', '.join(CHOICES['fill_missing'])}")
        for name in ('dataset', 'model', 'device'):
            check(name, bool(getattr(self, name).strip()), 'a non-empty name')
        check('topk', len(self.topk) > 0 and min(self.topk) >= 1,
              'one or more integers >= 1')
        metric, _, k = self.valid_metric.partition('@')
        check('valid_metric', metric in VALID_METRICS and re.fullmatch('[0-9]+', k) is not None
              and int(k) in self.topk,
              f"METRIC@K with METRIC one of {', '.join(VALID_METRICS)} and K one of topk "
              f"{' '.join(map(str, self.topk))}, e.g. Recall@{20 if 20 in self.topk else self.topk[0]}")
        if self.mrdib is not None:
            self.mrdib.validate()
        return self

    def check_paths(self) -> None:
        r"""Raise :class:`ValueError` if :obj:`out_dir` is a file or cannot be written, or if
        :obj:`root` (read by every dataset but the embedded ``synthetic`` one) is a file or
        its processed folder cannot be created: found before training, not after the
        last epoch."""
        if self.out_dir:
            _check_folder(self.out_dir, 'out_dir', 'results.json and best.pt are written there')
        if self.dataset != 'synthetic':
            folder = os.path.join(self.root, self.dataset)
            for path in (self.root, folder):
                if os.path.exists(path) and not os.path.isdir(path):
                    raise ValueError(f"{option_name('root')}: '{path}' is a file, not a folder "
                                     f"(datasets are read from ROOT/NAME/raw/)")
            if os.path.isdir(os.path.join(folder, 'raw')):
                _check_folder(os.path.join(folder, 'processed'), 'root',
                              'the processed dataset is cached in ROOT/NAME/processed/')

    @staticmethod
    def read_yaml(path: str) -> Dict[str, Any]:
        r"""The option mapping of a YAML file (not yet validated)."""
        try:
            with open(path) as f:
                values = yaml.load(f, Loader=_Loader)
        except OSError as e:
            raise ValueError(f"cannot read the config file '{path}': "
                             f"{e.strerror or e}") from e
        except UnicodeDecodeError as e:
            raise ValueError(f"the config file '{path}' is not a text file "
                             f"(byte {e.start}: {e.reason})") from e
        except yaml.YAMLError as e:
            mark = getattr(e, 'problem_mark', None)
            where = f' at line {mark.line + 1}, column {mark.column + 1}' if mark else ''
            problem = getattr(e, 'problem', None) or str(e).splitlines()[0]
            raise ValueError(f"the config file '{path}' is not valid YAML: "
                             f"{problem}{where}") from e
        values = {} if values is None else values
        if not isinstance(values, dict):
            raise ValueError(f"the config file '{path}' must hold a mapping of option: value "
                             f"at the top level (got a {type(values).__name__})")
        return values

    @classmethod
    def from_yaml(cls, path: str) -> 'TrainConfig':
        return cls().update(cls.read_yaml(path), source=path)

    def to_dict(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)  # the mrdib section becomes a mapping (or None)
        d['topk'] = list(self.topk)
        return d


def _same_value(a: Any, b: Any) -> bool:
    return type(a) in (int, float) and type(b) in (int, float) and a == b or a == b
