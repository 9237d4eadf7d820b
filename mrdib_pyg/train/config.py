r"""Training configuration: one flat dataclass, loaded from YAML, overridden from the command
line, and failing loudly on unknown keys (MMRec silently reads missing keys as None)."""
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

import re

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
    weight_decay: float = 0.0
    seed: int = 999
    patience: int = 20
    valid_metric: str = 'Recall@20'
    topk: Tuple[int, ...] = (5, 10, 20, 50)
    eval_batch_size: int = 4096
    device: str = 'auto'
    # MRdIB (mrdib-spec.md; "our choice" settings are all here)
    mrdib: bool = False
    alpha1: float = 0.005
    alpha2: float = 0.05
    alpha3: float = 0.005
    latent_dim: int = 64
    ablation: str = 'full'
    replace: bool = False
    encoder_hidden: Optional[int] = None   # None: one Linear per encoder
    fusion_hidden: Optional[int] = None    # None: latent_dim
    input_norm: str = 'layer'              # encoders' input: 'layer' or 'none'
    logvar_bound: Optional[float] = 6.0    # None: unbounded log-variance
    redundant_floor: Optional[float] = 0.0  # None: encoders descend the plain DV bound
    critic_hidden: int = 128
    critic_lr: float = 1e-3
    critic_steps: int = 1                  # critic steps per main step
    critic_warmup: int = 0                 # batches before the DV term reaches the encoders
    ema_decay: float = 0.99                # MINE's moving average
    mi_probe_every: int = 0                # epochs between fresh-critic MI probes (0: off)
    # output
    out_dir: Optional[str] = None
    progress: bool = True

    @classmethod
    def field_names(cls):
        return [f.name for f in dataclasses.fields(cls)]

    def update(self, values: Dict[str, Any], source: str = 'config') -> 'TrainConfig':
        r"""Set :obj:`values`, raising on unknown keys (naming :obj:`source`)."""
        unknown = sorted(set(values) - set(self.field_names()))
        if unknown:
            raise KeyError(f"Unknown option(s) {unknown} in {source}; valid options: "
                           f"{', '.join(self.field_names())}")
        for key, value in values.items():
            if key == 'topk':
                value = tuple(int(k) for k in value)
            setattr(self, key, value)
        return self

    @staticmethod
    def read_yaml(path: str) -> Dict[str, Any]:
        r"""The option mapping of a YAML file (not yet validated)."""
        with open(path) as f:
            values = yaml.load(f, Loader=_Loader) or {}
        if not isinstance(values, dict):
            raise ValueError(f"{path}: expected a mapping of option: value at the top level")
        return values

    @classmethod
    def from_yaml(cls, path: str) -> 'TrainConfig':
        return cls().update(cls.read_yaml(path), source=path)

    def to_dict(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        d['topk'] = list(self.topk)
        return d
