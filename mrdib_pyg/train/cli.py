r"""``mrdib-train``: the command line over :func:`mrdib_pyg.train.build.run`.

Every :class:`~mrdib_pyg.train.config.TrainConfig` field is an option. Precedence:
defaults < the model's training defaults < the dataset preset < ``--config file.yaml`` <
command-line flags (:meth:`TrainConfig.preset`). The model list in ``--help`` is generated
from the model registry (:mod:`mrdib_pyg.nn.models.registry`). ``--model-arg k=v`` and
``--dataset-arg k=v`` pass constructor arguments (values parsed as YAML scalars).

``--resume DIR`` continues a run from the ``last.pt`` its ``--out-dir`` holds (written after
every epoch), with the options stored there.
"""
import argparse
import dataclasses
import json
import os
import sys
import traceback
import typing
import warnings
from contextlib import contextmanager
from typing import Any, Dict, Iterator, List, Optional

from mrdib_pyg.train.config import MRDIB_KEYS, MRdIBOptions, TrainConfig, parse_value

HELP = {
    'dataset': "'synthetic' (embedded default, no download) or any AmazonMM name "
               "(baby, sports, clothing, or your own folder under --root)",
    'root': 'data root: raw files in ROOT/NAME/raw/',
    'generated_features': 'attach generated features of the real shapes (4096/384) when the '
                          'dataset has none; results must then be reported as such',
    'fill_missing': "features of items lacking a modality: keep, zero or mean (MMRec)",
    'mrdib': 'train with the MRdIB plug-in (needs a multimodal backbone)',
    'ablation': 'full, wo_mib, wo_redundant, wo_unique, mib_only',
    'input_norm': "MRdIB encoders' input conditioning: scale (default: divide by the first "
                  "batch's RMS), layer (LayerNorm per row) or none",
    'logvar_bound': "bound L of the encoders' log-variance, in (-L, L); none: unbounded",
    'redundant_floor': 'encoders minimise max(DV, floor) per modality pair; none: plain DV',
    'critic_steps': 'MINE critic steps per main step',
    'critic_warmup': 'batches before the redundant term reaches the encoders',
    'mi_probe_every': 'every N epochs, estimate I(z_a; z_b) with a fresh critic on held-out '
                      'items beside the training critic (0: off)',
    'replace': 'MRdIB replace mode (extension): fusion reads the encoder means',
    'user_grad': "MRdIB heads' gradient reaches the backbone's user tables (--no-user-grad "
                 "detaches them: MRdIB then shapes only the item-side modality tables)",
    'item_grad': "scale in [0, 1] of MRdIB's gradient into the backbone's modality item "
                 "representations (1: the paper's; 0: MRdIB cannot change the backbone)",
    'synergy_weight': "weight of the fused (synergy) head's BPR in MRdIB's loss (1: the "
                      "paper's)",
    'out_dir': 'write results.json, best.pt (best validation epoch) and last.pt (after every '
               'epoch, for --resume) here',
    'device': "'auto', 'cpu', 'cuda', 'cuda:1', ...",
    'progress': 'show progress: bars on a terminal, one line per epoch when stderr is a file '
                'or a pipe (--no-progress: nothing)',
    'encoder_hidden': "hidden width of each MRdIB encoder; none: one Linear layer",
    'fusion_hidden': "hidden width of MRdIB's fusion MLP; none: latent_dim",
    'keep_freed_memory': "glibc: reuse large freed blocks instead of returning them to the "
                         "system each step (faster on CPU; --no-keep-freed-memory: glibc's "
                         "defaults)",
}


def _parse_kv(items: List[str], flag: str) -> Dict[str, Any]:
    out = {}
    for item in items or []:
        key, eq, value = item.partition('=')
        if not eq or not key.strip():
            raise ValueError(f"{flag} expects KEY=VALUE (got '{item}')")
        try:
            out[key.strip()] = parse_value(value)
        except Exception as e:  # yaml's errors: an unclosed [ or {, a stray tab, ...
            problem = getattr(e, 'problem', None) or type(e).__name__
            raise ValueError(f"{flag} {item}: cannot read the value ({problem})") from None
    return out


def _field_parser(f: dataclasses.Field):
    r"""The argparse type of a config field: its own type, or for ``Optional[int]`` /
    ``Optional[float]`` that type with ``none`` meaning :obj:`None`."""
    args = [a for a in typing.get_args(f.type) if a is not type(None)]
    if typing.get_origin(f.type) is typing.Union and len(args) == 1 and args[0] in (int, float):
        kind = args[0]

        def parse(text: str):
            if text.strip().lower() in ('none', 'null'):
                return None
            return kind(text)
        parse.__name__ = f'{kind.__name__} or none'
        return parse
    return f.type if f.type in (int, float, str) else str


def build_parser() -> argparse.ArgumentParser:
    from mrdib_pyg.data.readers import FORMATS
    from mrdib_pyg.nn.models import MODELS, describe_models
    p = argparse.ArgumentParser(
        prog='mrdib-train', formatter_class=argparse.RawDescriptionHelpFormatter,
        description='Train a multimodal recommender (optionally with MRdIB) and report '
                    'full-ranking metrics. With no arguments: VBPR on the embedded '
                    'SyntheticMM dataset.',
        epilog='models (--model NAME; defaults in brackets, change them with '
               '--model-arg KEY=VALUE):\n  ' + describe_models().replace('\n', '\n  ')
               + '\n\ndataset formats (--dataset NAME reads ROOT/NAME/raw/, format detected '
               'from the files; plus <modality>_feat.npy features, one row per item):\n  '
               + '\n  '.join(f'{k}: {v}' for k, v in FORMATS.items()))
    help_text = dict(HELP, model=f"backbone: {', '.join(sorted(MODELS))} (see below)")
    p.add_argument('--config', help='YAML file of options (overridden by flags)')
    p.add_argument('--model-arg', action='append', metavar='KEY=VALUE',
                   help='backbone constructor argument, e.g. num_layers=3 (repeatable)')
    p.add_argument('--dataset-arg', action='append', metavar='KEY=VALUE',
                   help='dataset constructor argument, e.g. num_users=500 (repeatable)')
    p.add_argument('--json', action='store_true', help='print the result as JSON')
    p.add_argument('--plot', nargs='?', const='', default=None, metavar='PNG',
                   help='write the training curves (every loss term, the validation metrics, '
                        'the best epoch marked) to PNG; without a path, curves.png in '
                        '--out-dir (or the current folder). Needs matplotlib')
    p.add_argument('--resume', metavar='DIR',
                   help='continue the run whose --out-dir was DIR (after a kill, a crash or a '
                        'reboot) from its last completed epoch, saved in DIR/last.pt after '
                        'every epoch with the model, the optimisers (MRdIB\'s critic\'s too), '
                        'the random and sampler states, early stopping and the history. The '
                        'run keeps its options: only --epochs (to train longer), --progress '
                        'and --device may differ, any other option given must equal the '
                        'stored one. On the same device (CPU: the same number of threads, '
                        'OMP_NUM_THREADS) the results equal those of an uninterrupted run. A '
                        'finished run (stopped early, or all its epochs done) is reported as '
                        'it is')
    main = [f for f in dataclasses.fields(TrainConfig) if f.name != 'mrdib']
    mrdib_opts = p.add_argument_group('MRdIB plug-in (the mrdib: section of a --config file)')
    mrdib_opts.add_argument('--mrdib', dest='mrdib', action=argparse.BooleanOptionalAction,
                            default=None, help=HELP['mrdib'])
    fields = [(p, f) for f in main] + [(mrdib_opts, f) for f in dataclasses.fields(MRdIBOptions)]
    for group, f in fields:
        if f.name in ('model_args', 'dataset_args'):
            continue
        flag = '--' + f.name.replace('_', '-')
        default = (f.default if f.default is not dataclasses.MISSING
                   else f.default_factory())
        if isinstance(default, bool):
            group.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction,
                               default=None, help=_with_default(help_text.get(f.name), default))
        elif f.name == 'topk':
            group.add_argument(flag, dest=f.name, type=int, nargs='+', default=None,
                               help=f'(default: {list(default)})')
        else:
            group.add_argument(flag, dest=f.name, type=_field_parser(f), default=None,
                               help=_with_default(help_text.get(f.name), default))
    return p


def _with_default(text: Optional[str], default: Any) -> str:
    r"""A flag's help with its default, unless the text already states it."""
    if text and 'default' in text:
        return text
    if default is None:
        shown = 'none'  # what the flag accepts for it
    elif isinstance(default, bool):
        shown = str(default).lower()
    else:
        shown = default
    return f'{text} (default: {shown})' if text else f'(default: {shown})'


def config_from_args(argv: Optional[List[str]] = None) -> (TrainConfig, argparse.Namespace):
    r"""The :class:`TrainConfig` of the command line :obj:`argv` (not yet validated) and the
    parsed arguments."""
    args = build_parser().parse_args(argv)
    from_file = TrainConfig.read_yaml(args.config) if args.config else {}
    flags = _flags(args)
    dataset = flags.get('dataset', from_file.get('dataset', TrainConfig.dataset))
    model = flags.get('model', from_file.get('model', TrainConfig.model))
    # defaults < model training defaults < dataset preset < --config file < flags
    cfg = (TrainConfig.preset(model, dataset) if isinstance(dataset, str)
           and isinstance(model, str) else TrainConfig())
    cfg.update(from_file, source=args.config)
    cfg.update(flags, source='command line')
    for name in ('model_args', 'dataset_args'):
        if not isinstance(getattr(cfg, name), dict):
            raise ValueError(f"{name} in {args.config} must be a mapping of argument: value "
                             f"(got {getattr(cfg, name)!r})")
    if args.model_arg:
        cfg.model_args = {**cfg.model_args, **_parse_kv(args.model_arg, '--model-arg')}
    if args.dataset_arg:
        cfg.dataset_args = {**cfg.dataset_args, **_parse_kv(args.dataset_arg, '--dataset-arg')}
    return cfg, args


def _flags(args: argparse.Namespace) -> Dict[str, Any]:
    names = set(TrainConfig.field_names()) | set(MRDIB_KEYS)
    return {k: v for k, v in vars(args).items() if k in names and v is not None}


def given_options(args: argparse.Namespace) -> Dict[str, Any]:
    r"""The options the command line sets itself (``--config`` file, flags, ``--model-arg``
    and ``--dataset-arg`` pairs), without defaults or presets: what ``--resume`` checks
    against the stored run."""
    given = dict(TrainConfig.read_yaml(args.config)) if args.config else {}
    given.update(_flags(args))
    for name, items, flag in (('model_args', args.model_arg, '--model-arg'),
                              ('dataset_args', args.dataset_arg, '--dataset-arg')):
        if items:
            given[name] = {**given.get(name, {}), **_parse_kv(items, flag)}
    return given


def format_table(result) -> str:
    r"""A plain-text table of validation (best epoch) and test metrics."""
    keys = list(result.test_at_best)
    names = list(dict.fromkeys(k.split('@')[0] for k in keys))
    ks = sorted({int(k.split('@')[1]) for k in keys})
    lines = [f"{'split':<6}{'metric':<11}" + ''.join(f'{"@" + str(k):>9}' for k in ks)]
    for split, metrics in (('valid', result.best_valid), ('test', result.test_at_best)):
        for name in names:
            lines.append(f'{split:<6}{name:<11}' + ''.join(
                f"{metrics.get(f'{name}@{k}', float('nan')):>9.4f}" for k in ks))
    return '\n'.join(lines)


#: Errors the command line reports in one line (exit status 2) instead of a traceback. The
#: first five carry messages written for users; the others name their type, since they
#: may come from a bug (MRDIB_TRACEBACK=1 shows where).
USER_ERRORS = (ValueError, KeyError, RuntimeError, OSError, ImportError)
OTHER_ERRORS = (TypeError, ArithmeticError, EOFError, AssertionError, LookupError)


def error_message(err: BaseException) -> str:
    r"""One line for :obj:`err`, as the command line prints it."""
    if isinstance(err, KeyError):
        key = err.args[0] if err.args else None
        if isinstance(key, str) and ' ' in key.strip():
            return key  # already a sentence
        frames = traceback.extract_tb(err.__traceback__)
        where = (f' (looked up in {frames[-1].name}(), {os.path.basename(frames[-1].filename)} '
                 f'line {frames[-1].lineno})' if frames else '')
        return f'unknown key {key!r}{where}'
    if isinstance(err, OSError) and err.filename is not None:
        return f"{err.strerror or type(err).__name__}: '{err.filename}'"
    if isinstance(err, USER_ERRORS) or isinstance(err, FloatingPointError):
        return str(err) or type(err).__name__
    return (f"{type(err).__name__}: {str(err) or '(no message)'} (an unexpected error: set "
            f"MRDIB_TRACEBACK=1 to see where, and report it if the input looks right)")


def report_error(prog: str, err: BaseException) -> int:
    r"""Prints :obj:`err` as one line, ``prog: error: message``, and returns the exit
    status 2; every command reports its errors this way. With ``MRDIB_TRACEBACK=1`` the
    error is raised again instead (its traceback shows where it came from)."""
    if os.environ.get('MRDIB_TRACEBACK', '') not in ('', '0'):
        raise err
    print(f'{prog}: error: {error_message(err)}', file=sys.stderr)
    return 2


@contextmanager
def plain_warnings(prog: str) -> Iterator[None]:
    r"""Show the library's warnings as one line, ``prog: warning: message``, without the
    source line of the library that raised them (which means nothing to a command-line
    user); other warning categories keep Python's format."""
    python_format = warnings.formatwarning

    def one_line(message, category, *args, **kwargs):
        if issubclass(category, UserWarning):
            return f'{prog}: warning: {message}\n'
        return python_format(message, category, *args, **kwargs)

    warnings.formatwarning = one_line
    try:
        yield
    finally:
        warnings.formatwarning = python_format


def main(argv: Optional[List[str]] = None) -> int:
    with plain_warnings('mrdib-train'):
        return _main(argv)


def _main(argv: Optional[List[str]] = None) -> int:
    try:
        cfg, args = config_from_args(argv)
        if args.resume is not None:  # the stored options, and only those allowed to change
            from mrdib_pyg.train.trainer import resume_config
            cfg = resume_config(args.resume, given_options(args))
        cfg.validate()  # before the heavy imports and any data is loaded
        if args.plot is not None:  # not after a long run whose last step would fail
            from mrdib_pyg.plot import require_matplotlib
            require_matplotlib()
        from mrdib_pyg.train.build import run
        result = run(cfg, resume=True) if args.resume is not None else run(cfg)
    except USER_ERRORS + OTHER_ERRORS as err:
        # Input and configuration errors carry their own explanation; a traceback of the
        # library's internals would only bury it (MRDIB_TRACEBACK=1 shows it anyway).
        return report_error('mrdib-train', err)
    if int(os.environ.get('RANK', '0') or 0) != 0:
        return 0  # under torchrun only rank 0 prints the result
    _print_result(cfg, args, result)
    if args.plot is not None:  # last: a failed plot must not hide the results
        try:
            from mrdib_pyg.plot import plot_training
            png = args.plot or os.path.join(cfg.out_dir or '.', 'curves.png')
            print(f'curves written to {plot_training(result.to_dict(), png)}', file=sys.stderr)
        except (ImportError, OSError, ValueError) as err:
            print(f'mrdib-train: error: no plot written: {error_message(err)}', file=sys.stderr)
            return 2
    return 0


def _print_result(cfg, args, result) -> None:
    if args.json:
        json.dump(result.to_dict(), sys.stdout, indent=1)
        print()
        return
    info = result.info
    o = cfg.mrdib
    mode = f" + MRdIB ({o.ablation}{', replace' if o.replace else ''})" if o is not None else ''
    print(f"\n{cfg.model}{mode} on '{cfg.dataset}': {info['num_users']} users, "
          f"{info['num_items']} items, {info['num_train']} training interactions"
          + (', GENERATED features' if info['generated_features'] else ''))
    if info.get('modalities'):
        print(f"modalities: {', '.join(info['modalities'])}")
    print(f"Adam lr {cfg.lr:g}, batch {cfg.batch_size}, seed {cfg.seed}; early stopping on "
          f"validation {cfg.valid_metric} (patience {cfg.patience})")
    print(f"best epoch {result.best_epoch} of {result.timings['epochs_run']} run; "
          f"median {result.timings['train_epoch_median_s']:.2f} s/epoch train, "
          f"{result.timings['eval_pass_median_s']:.2f} s/eval pass ({info['device']})")
    print(format_table(result))
    if cfg.out_dir:
        print(f'results written to {cfg.out_dir}/results.json')


if __name__ == '__main__':  # pragma: no cover
    sys.exit(main())
