r"""The model registry: name -> backbone class, as the trainer and command line know them.

A backbone joins with :func:`register_model`; its per-model defaults are its constructor's
defaults (MMRec's ``configs/model/<Model>.yaml`` single values, or the first value of a
grid) plus :attr:`~mrdib_pyg.nn.models.Recommender.train_defaults` for training options.
:func:`model_defaults` and :func:`describe_models` read them, so the command line's help is
generated from the registry, not written by hand.
"""
import inspect
from typing import Any, Callable, Dict, Type

#: Name -> backbone class.
MODELS: Dict[str, Type] = {}


def register_model(name: str, summary: str = '') -> Callable[[Type], Type]:
    r"""Class decorator adding a backbone to :data:`MODELS` under :obj:`name`, with a
    one-line :obj:`summary` for the command line's help."""
    def add(cls: Type) -> Type:
        if name in MODELS and MODELS[name] is not cls:
            raise ValueError(f"model name '{name}' is already registered for "
                             f"{MODELS[name].__name__}")
        MODELS[name] = cls
        cls.model_name = name
        cls.summary = summary or cls.__name__
        return cls
    return add


def model_defaults(name: str) -> Dict[str, Any]:
    r"""The constructor arguments of model :obj:`name` that have defaults (graphs and
    feature tables excluded), as they are."""
    cls = MODELS[name]
    out = {}
    for p in inspect.signature(cls.__init__).parameters.values():
        if p.name == 'self' or p.default is inspect.Parameter.empty or p.default is None:
            continue
        if isinstance(p.default, (bool, int, float, str, tuple)):
            out[p.name] = p.default
    return out


def describe_models() -> str:
    r"""One line per registered model: name, summary and defaults (for ``--help``)."""
    lines = []
    for name in sorted(MODELS):
        cls = MODELS[name]
        summary = getattr(cls, 'summary', cls.__name__)
        kind = 'multimodal' if getattr(cls, 'multimodal', False) else 'ID-only'
        defaults = dict(model_defaults(name), **getattr(cls, 'train_defaults', {}))
        args = ', '.join(f'{k}={v}' for k, v in defaults.items())
        lines.append(f'{name} ({kind}): {summary} [{args}]')
    return '\n'.join(lines)
