r"""``mrdib-search``: budgeted hyper-parameter search, selected on validation only.

A *search space* maps option names to grids of values: any
:class:`~mrdib_pyg.train.config.TrainConfig` field (``lr``, ``alpha1``, ...) or a backbone
constructor argument written ``model_args.NAME`` (``model_args.reg_weight``). The default
space is MRdIB's three weights over the paper's grid ``{1e-4, 1e-3, 5e-3, 1e-2, 5e-2}``
(and turns MRdIB on). Searching all :math:`5^3 = 125` combinations at full budget is too
much for a CPU, so two budgeted methods are offered:

* ``coordinate`` (default): start from the base configuration's values (e.g. the paper's
  ``alpha1=0.005, alpha2=0.05, alpha3=0.005``; a ``model_args`` value the base does not set
  starts at its grid's first value), then for each option in turn try every value of its
  grid with the other options fixed at the best so far, and keep the best; repeat for
  ``rounds`` rounds (stopping early when a round changes nothing). A setting already
  evaluated is never rerun, so 3 grids of 5 values cost :math:`5 + 4 + 4 = 13` full runs in
  one round when the base values lie on the grids.
* ``halving``: successive halving over the full grid (or a seeded random sample of
  ``max_configs`` of its configurations). Every configuration is trained for
  ``min_epochs`` epochs; the best ``1/eta`` are kept, the epoch budget is multiplied by
  ``eta`` (capped at ``cfg.epochs``), and so on until one configuration remains or the
  budget reaches ``cfg.epochs``. Each rung trains from scratch. 125 configurations with
  ``eta=3``, 5 minimum epochs: 125 x 5 + 41 x 15 + 13 x 45 + 4 x 135 epochs, then the
  winner once at full budget.

**Validation only.** Every decision compares the mean over seeds of the validation metric
``cfg.valid_metric`` at each run's best validation epoch (``TrainResult.best_valid``). Ties:
the coordinate search keeps the incumbent (a value replaces it only by scoring higher) and
otherwise takes the first tied value in grid order; successive halving keeps grid order.
The test metrics the trainer computes for every run are never printed, written or
compared: trial records drop them. Once the setting is selected, it is trained once more
at the full budget (``cfg.epochs``) for each seed, or its full-budget trial is reused when
it ran in this process, and *its* test metrics are the only test numbers reported
(``selected.json``, ``summary.md``, the console).

**Outputs** in the search folder: ``trials.csv`` (one row per run: trial id, stage, seed,
epoch budget, options, best epoch, validation metrics at the best epoch, seconds; rewritten
atomically after every run), ``search.json`` (base configuration, space and method),
``summary.md`` (trials sorted by budget and validation, the selected setting, its test metrics),
``selected.json`` and a plot (``coordinate.png``: validation metric against each option's
values; ``halving.png``: validation metric per rung).

**Resuming.** Runs are keyed by their options, epoch budget and seed. Restarted on the same
folder, a search reads ``trials.csv`` back and reruns only what is missing (a run killed
midway left no row and is rerun). A folder holding a different search (other base
configuration, space or method) is refused. (``mrdib-train``'s ``--resume`` and
``--plot`` are refused here for that reason; ``--json`` prints ``selected.json`` on stdout,
the progress lines then going to stderr.)

Example::

    mrdib-search --model vbpr --mrdib --epochs 200 --no-progress \
        --space alpha1=1e-4,1e-3,5e-3 --space model_args.reg_weight=1e-4,1e-3 \
        --method coordinate --search-out runs/search-vbpr
"""
import argparse
import copy
import csv
import dataclasses
import io
import itertools
import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence

from mrdib_pyg.data.cache import atomic_write
from mrdib_pyg.train.config import MRdIBOptions, TrainConfig, option_name, parse_value

PAPER_GRID = [1e-4, 1e-3, 5e-3, 1e-2, 5e-2]
METHODS = ('coordinate', 'halving')
# Options a search cannot vary: seeds, budget and output are the search's own settings.
_RESERVED = ('seed', 'epochs', 'out_dir', 'progress', 'valid_metric')
# Fields that do not change a run's outcome, left out when comparing two searches.
_IGNORED = ('seed', 'out_dir', 'progress')


def default_space() -> Dict[str, List[Any]]:
    r"""MRdIB's three weights, each over the paper's grid."""
    return {name: list(PAPER_GRID) for name in ('alpha1', 'alpha2', 'alpha3')}


def parse_space(items: Sequence[str]) -> Dict[str, List[Any]]:
    r"""``['alpha1=1e-4,1e-3', ...]`` -> ``{'alpha1': [0.0001, 0.001], ...}`` (values parsed
    as YAML scalars by :func:`~mrdib_pyg.train.config.parse_value`).

    Args:
        items (list of str): ``NAME=V1,V2,...`` strings.
    """
    space: Dict[str, List[Any]] = {}
    for item in items:
        name, sep, values = item.partition('=')
        name = name.strip()
        try:
            grid = [parse_value(v.strip()) for v in values.split(',') if v.strip()]
        except Exception as err:  # yaml's errors: an unclosed [, a stray tab, ...
            raise ValueError(f"--space {item}: cannot read a value "
                             f"({getattr(err, 'problem', None) or type(err).__name__})") from None
        if not sep or not name or not grid:
            raise ValueError(f"--space expects NAME=V1,V2,... with at least one value "
                             f"(got '{item}')")
        if name in space:
            raise ValueError(f"--space {name} given twice")
        space[name] = grid
    return space


def check_space(space: Dict[str, List[Any]], base: TrainConfig) -> Dict[str, List[Any]]:
    r"""Validate option names and grids; cast integers to float for float fields (so
    ``1`` and ``1.0`` are one setting). Returns the cleaned space.

    Args:
        space (dict): option name -> list of values.
        base (TrainConfig): the base configuration (for MRdIB-only options).
    """
    if not space:
        raise ValueError('the search space is empty')
    types = {f.name: f.type for f in dataclasses.fields(TrainConfig) if f.name != 'mrdib'}
    types.update({f.name: f.type for f in dataclasses.fields(MRdIBOptions)})  # --alpha1 ...
    clean = {}
    for name, grid in space.items():
        if not isinstance(grid, (list, tuple)) or not grid:
            raise ValueError(f"option '{name}' needs a non-empty list of values")
        if name.startswith('model_args.') and len(name) > len('model_args.'):
            clean[name] = list(grid)
            continue
        if name not in types or name in ('model_args', 'dataset_args'):
            raise ValueError(f"unknown option '{name}' in the search space; use a "
                             f"TrainConfig field ({', '.join(types)}) or model_args.NAME")
        if name in _RESERVED:
            raise ValueError(f"option '{name}' cannot be searched: the search sets it "
                             f"(seeds: --seeds; epochs: the budget)")
        floats = types[name] in (float, Optional[float])
        clean[name] = [float(v) if floats and type(v) is int else v for v in grid]
    if (base.mrdib is None and 'mrdib' not in clean
            and any(a in clean for a in ('alpha1', 'alpha2', 'alpha3'))):
        raise ValueError('the alphas only matter with MRdIB: add --mrdib')
    for name, grid in clean.items():
        try:
            if len({json.dumps(v) for v in grid}) < len(grid):
                raise ValueError(f"option '{name}' lists a value twice: {grid}")
        except TypeError:
            raise ValueError(f"option '{name}': values must be numbers, strings, booleans, "
                             f"null or lists (got {grid})") from None
    return clean


def apply_options(base: TrainConfig, options: Dict[str, Any], **fixed) -> TrainConfig:
    r"""A copy of :obj:`base` with :obj:`options` (and :obj:`fixed` fields) set."""
    cfg = copy.deepcopy(base)
    cfg.model_args = dict(cfg.model_args)
    fields = dict(fixed)
    for name, value in options.items():
        if name.startswith('model_args.'):
            cfg.model_args[name[len('model_args.'):]] = value
        else:
            fields[name] = value
    return cfg.update(fields, source='search space')


def _validate(cfg: TrainConfig) -> None:
    if hasattr(cfg, 'validate'):
        cfg.validate()


def _key(options: Dict[str, Any], epochs: int, seed: Optional[int] = None) -> str:
    k = f'{json.dumps(options, sort_keys=True)}|{epochs}'
    return k if seed is None else f'{k}|{seed}'


def _fmt(value: Any) -> str:
    return f'{value:g}' if isinstance(value, float) else str(value)


def _show(options: Dict[str, Any]) -> str:
    return ' '.join(f'{k}={_fmt(v)}' for k, v in options.items())


def _mean(dicts: List[Dict[str, float]]) -> Dict[str, float]:
    keys = dicts[0].keys() if dicts else []
    return {k: sum(d.get(k, math.nan) for d in dicts) / len(dicts) for k in keys}


def _atomic_write(path: str, text: str) -> None:
    def write(tmp: str) -> None:
        with open(tmp, 'w', newline='') as f:
            f.write(text)
    atomic_write(path, write)


def _train(cfg: TrainConfig, data):
    from mrdib_pyg.train import build  # heavy import; tests replace build.run
    return build.run(cfg, data=data)


@dataclass
class SearchResult:
    r"""What :func:`search` selected.

    Attributes:
        selected (dict): the selected options.
        valid_metric (str): the selection metric.
        valid (dict): validation metrics of the selected setting at full budget (mean over
            seeds).
        test (dict): its test metrics (mean over seeds): the only test numbers of a search.
        trials (list of dict): one record per evaluated setting (stage, options, epoch
            budget, mean validation metrics, seconds), validation only.
        out_dir (str): the search folder.
    """
    selected: Dict[str, Any]
    valid_metric: str
    valid: Dict[str, float]
    test: Dict[str, float]
    trials: List[Dict[str, Any]] = field(default_factory=list)
    out_dir: str = ''


class _Search:
    r"""State of one search: finished runs (from ``trials.csv`` and new), and the
    evaluated settings of this invocation."""

    def __init__(self, base, space, method, out_dir, seeds, data, log):
        self.base, self.space, self.method = base, space, method
        self.out_dir, self.seeds, self.data, self.log = out_dir, seeds, data, log
        self.metric = base.valid_metric
        self.csv_path = os.path.join(out_dir, 'trials.csv')
        self.rows: Dict[str, Dict[str, Any]] = {}   # run key -> record (no test metrics)
        self.evals: Dict[str, Dict[str, Any]] = {}  # setting key -> record (mean of seeds)
        self.visits: List[Dict[str, Any]] = []      # every lookup, for the plots
        # Test metrics of the runs made in this process, read only for the selected setting
        # by final(); never printed or written otherwise.
        self._sealed_test: Dict[str, Dict[str, float]] = {}
        self.reused = self.ran = 0

    # -- the folder ---------------------------------------------------------------------
    def open(self) -> None:
        os.makedirs(self.out_dir, exist_ok=True)
        ignored = lambda d: {k: v for k, v in d.items() if k not in _IGNORED}  # noqa: E731
        spec = json.loads(json.dumps({'base': ignored(self.base.to_dict()),
                                      'space': self.space, 'method': self.method}))
        path = os.path.join(self.out_dir, 'search.json')
        if os.path.exists(path):
            with open(path) as f:
                old = json.load(f)
            diff = [f'base.{k}' for k in sorted(set(old['base']) | set(spec['base']))
                    if old['base'].get(k) != spec['base'].get(k)]
            diff += [k for k in ('space', 'method') if old.get(k) != spec[k]]
            if diff:
                raise ValueError(f"{self.out_dir} holds a different search (differs in "
                                 f"{', '.join(diff)}); use another --search-out folder")
        elif os.path.exists(self.csv_path):
            raise ValueError(f'{self.csv_path} exists without search.json: not a search '
                             f'folder of this command; use another --search-out folder')
        else:
            _atomic_write(path, json.dumps(spec, indent=1) + '\n')
        if os.path.exists(self.csv_path):
            with open(self.csv_path, newline='') as f:
                for row in csv.DictReader(f):
                    rec = {'trial': int(row['trial']), 'stage': row['stage'],
                           'seed': int(row['seed']), 'epochs': int(row['epochs']),
                           'options': json.loads(row['options']), 'status': row['status'],
                           'best_epoch': int(row['best_epoch']),
                           'seconds': float(row['seconds']),
                           'valid': {k[6:]: float(v) for k, v in row.items()
                                     if k.startswith('valid_') and v != ''}}
                    self.rows[_key(rec['options'], rec['epochs'], rec['seed'])] = rec
            self.log(f'{self.csv_path}: {len(self.rows)} finished runs read back; '
                     f'they are reused, not rerun')

    def write_csv(self) -> None:
        metrics = list(dict.fromkeys(m for r in self.rows.values() for m in r['valid']))
        names = list(self.space)
        header = (['trial', 'stage', 'seed', 'epochs', 'options'] + names
                  + ['status', 'best_epoch', 'seconds'] + [f'valid_{m}' for m in metrics])
        lines = [header]
        for r in self.rows.values():
            lines.append([r['trial'], r['stage'], r['seed'], r['epochs'],
                          json.dumps(r['options'], sort_keys=True)]
                         + [_fmt(r['options'].get(n, '')) for n in names]
                         + [r['status'], r['best_epoch'], f"{r['seconds']:.3f}"]
                         + [repr(r['valid'][m]) if m in r['valid'] else '' for m in metrics])
        buf = io.StringIO()
        csv.writer(buf).writerows(lines)
        _atomic_write(self.csv_path, buf.getvalue())

    # -- runs ---------------------------------------------------------------------------
    def run_one(self, options, epochs, seed, stage, trial) -> Dict[str, Any]:
        cfg = apply_options(self.base, options, epochs=epochs, seed=seed, out_dir=None)
        t0 = time.perf_counter()
        try:
            result = _train(cfg, self.data)
            valid, status, best = dict(result.best_valid), 'ok', result.best_epoch
            self._sealed_test[_key(options, epochs, seed)] = dict(result.test_at_best)
            del result  # its test metrics go no further
        except FloatingPointError as err:  # a diverged setting loses, the search goes on
            valid, status, best = {}, f'diverged: {err}', -1
        rec = {'trial': trial, 'stage': stage, 'seed': seed, 'epochs': epochs,
               'options': dict(options), 'status': status, 'best_epoch': best,
               'seconds': time.perf_counter() - t0, 'valid': valid}
        self.rows[_key(options, epochs, seed)] = rec
        self.write_csv()
        self.ran += 1
        return rec

    def evaluate(self, options: Dict[str, Any], epochs: int, stage: str) -> float:
        r"""The mean over seeds of the validation metric of :obj:`options` trained for
        :obj:`epochs` (runs only what has not run yet)."""
        k = _key(options, epochs)
        if k not in self.evals:
            trial, runs, reused = len(self.evals), [], 0
            for seed in self.seeds:
                rec = self.rows.get(_key(options, epochs, seed))
                if rec is None:
                    rec = self.run_one(options, epochs, seed, stage, trial)
                else:
                    reused += 1
                runs.append(rec)
            self.reused += reused
            ok = all(r['status'] == 'ok' and self.metric in r['valid'] for r in runs)
            valid = _mean([r['valid'] for r in runs]) if ok else {}
            ev = {'trial': trial, 'stage': stage, 'options': dict(options), 'epochs': epochs,
                  'seeds': list(self.seeds), 'best_epoch': [r['best_epoch'] for r in runs],
                  'valid': valid, 'score': valid.get(self.metric, -math.inf),
                  'seconds': sum(r['seconds'] for r in runs)}
            self.evals[k] = ev
            seeds = f', {len(runs)} seeds' if len(runs) > 1 else ''
            self.log(f"trial {trial:>3} [{stage}] {_show(options)} | {epochs} epochs{seeds} | "
                     f"valid {self.metric} {ev['score']:.4f} | {ev['seconds']:.1f} s"
                     + (' (reused)' if reused == len(runs) else ''))
        ev = self.evals[k]
        self.visits.append({'stage': stage, 'options': dict(options), 'epochs': epochs,
                            'score': ev['score']})
        return ev['score']

    def final(self, options: Dict[str, Any]) -> Dict[str, Any]:
        r"""Validation and test metrics of the selected setting at full budget."""
        epochs = self.base.epochs
        if not math.isfinite(self.evaluate(options, epochs, 'final')):
            raise RuntimeError(f'the selected setting {_show(options)} diverged at the full '
                               f'budget of {epochs} epochs')
        previous = {}
        path = os.path.join(self.out_dir, 'selected.json')
        if os.path.exists(path):
            with open(path) as f:
                old = json.load(f)
            if old.get('selected') == json.loads(json.dumps(options)) and \
                    old.get('epochs') == epochs:
                previous = old.get('test_per_seed', {})
        tests, runs = {}, []
        for seed in self.seeds:
            key = _key(options, epochs, seed)
            if key in self._sealed_test:
                tests[seed] = self._sealed_test[key]
            elif str(seed) in previous:
                tests[seed] = previous[str(seed)]
            else:  # its trial was read back from trials.csv: train it again for its test
                self.log(f'training the selected setting again (seed {seed}) for its test '
                         f'metrics')
                trial = self.evals[_key(options, epochs)]['trial']
                self.run_one(options, epochs, seed, 'final', trial)
                tests[seed] = self._sealed_test.get(key, {})
            runs.append(self.rows[key])
        return {'valid': _mean([r['valid'] for r in runs]),
                'test': _mean(list(tests.values())),
                'test_per_seed': {str(s): t for s, t in tests.items()},
                'best_epoch_per_seed': {str(r['seed']): r['best_epoch'] for r in runs}}


def _coordinate(s: _Search, rounds: int) -> Dict[str, Any]:
    full = s.base.epochs
    best = {}
    for name, grid in s.space.items():
        if name.startswith('model_args.'):
            best[name] = s.base.model_args.get(name[len('model_args.'):], grid[0])
        else:
            best[name] = s.base.option(name)
        if best[name] not in grid:  # a user reading only the grid would not expect it
            flag = (f'--model-arg {name[len("model_args."):]}=VALUE'
                    if name.startswith('model_args.') else option_name(name))
            s.log(f'{name}: the starting value {best[name]!r} (the base configuration\'s) is '
                  f'not in the grid {grid}; it is tried too and can be selected (set {flag} '
                  f'to a grid value to start there)')
    best_score = s.evaluate(best, full, 'start')
    for r in range(1, rounds + 1):
        start = dict(best)
        for name, grid in s.space.items():
            # The incumbent leads, on the grid or off it: a change must improve (a tie is
            # no evidence to move); among new values, the first in grid order wins ties.
            values = [best[name]] + [v for v in grid if v != best[name]]
            scored = [(s.evaluate({**best, name: v}, full, f'round {r}: {name}'), v)
                      for v in values]
            best_score, value = max(scored, key=lambda sv: sv[0])  # first of equals
            best = {**best, name: value}
        if best == start:
            break
    return best


def _halving(s: _Search, eta: int, min_epochs: int, max_configs: Optional[int]):
    full = s.base.epochs
    configs = [dict(zip(s.space, values)) for values in itertools.product(*s.space.values())]
    if max_configs is not None and max_configs < len(configs):
        keep = sorted(random.Random(s.seeds[0]).sample(range(len(configs)), max_configs))
        configs = [configs[i] for i in keep]
    budget, rung = min(min_epochs, full), 0
    while True:
        scores = [s.evaluate(c, budget, f'rung {rung}') for c in configs]
        order = sorted(range(len(configs)), key=lambda i: -scores[i])  # stable: grid order
        if budget >= full:
            return configs[order[0]]
        configs = [configs[i] for i in sorted(order[:max(1, len(configs) // eta)])]
        if len(configs) == 1:
            return configs[0]
        budget, rung = min(budget * eta, full), rung + 1


def search(base_cfg: TrainConfig, space: Optional[Dict[str, List[Any]]] = None,
           method: str = 'coordinate', out_dir: str = 'search', *, rounds: int = 1,
           eta: int = 3, min_epochs: int = 5, max_configs: Optional[int] = None,
           seeds: Optional[Sequence[int]] = None, data=None, plots: bool = True,
           log: Callable[[str], None] = print) -> SearchResult:
    r"""Search :obj:`space` around :obj:`base_cfg`, select on validation, and report the
    test metrics of the selected setting only (see the module docstring).

    Args:
        base_cfg (TrainConfig): the base configuration; :obj:`epochs` is the full budget,
            :obj:`valid_metric` the selection metric.
        space (dict, optional): option name (a TrainConfig field or ``model_args.NAME``) ->
            list of values. :obj:`None`: MRdIB's alphas over the paper's grid (MRdIB on).
        method (str): ``'coordinate'`` or ``'halving'``.
        out_dir (str): the search folder (resumed when it holds the same search).
        rounds (int): coordinate search: passes over the options.
        eta (int): successive halving: keep the best ``1/eta``, multiply the budget by it.
        min_epochs (int): successive halving: the first rung's epoch budget.
        max_configs (int, optional): successive halving: a seeded random sample of this
            many grid configurations (default: all).
        seeds (list of int, optional): each setting runs once per seed; the mean
            validation metric decides. (default: :obj:`[base_cfg.seed]`)
        data (HeteroData, optional): passed to :func:`~mrdib_pyg.train.build.run` to
            avoid reloading the dataset for every run.
        plots (bool): write the PNG plot (needs matplotlib).
        log (callable): where progress lines go.
    """
    base = copy.deepcopy(base_cfg)
    if base.out_dir:
        log(f'out_dir {base.out_dir} is ignored: the runs of a search write only to {out_dir}')
    if space is None:
        space = default_space()
        if base.mrdib is None:
            log('default space: the MRdIB weights alpha1-3; MRdIB turned on')
            base.mrdib = MRdIBOptions()
    space = check_space(space, base)
    seeds = [int(x) for x in (seeds if seeds else [base.seed])]
    if method not in METHODS:
        raise ValueError(f"unknown method '{method}'; use one of {', '.join(METHODS)}")
    for name, value, low in (('rounds', rounds, 1), ('eta', eta, 2),
                             ('min_epochs', min_epochs, 1), ('epochs', base.epochs, 1),
                             ('max_configs', max_configs or 1, 1)):
        if not isinstance(value, int) or value < low:
            raise ValueError(f'{name} must be an integer >= {low} (got {value})')
    if len(set(seeds)) < len(seeds):
        raise ValueError(f'seeds repeat: {seeds}')
    for seed in seeds:  # every seed and value, before any run (TrainConfig.validate)
        _validate(apply_options(base, {}, seed=seed))
    for name, grid in space.items():
        for value in grid:
            _validate(apply_options(base, {name: value}))

    s = _Search(base, space, method, out_dir, seeds, data, log)
    s.open()
    selected = (_coordinate(s, rounds) if method == 'coordinate'
                else _halving(s, eta, min_epochs, max_configs))
    final = s.final(selected)
    result = SearchResult(selected, s.metric, final['valid'], final['test'],
                          [{k: v for k, v in e.items() if k != 'score'}
                           for e in s.evals.values()], out_dir)
    record = {'method': method, 'valid_metric': s.metric, 'selected': selected,
              'epochs': base.epochs, 'seeds': seeds, **final}
    _atomic_write(os.path.join(out_dir, 'selected.json'),
                  json.dumps(record, indent=1) + '\n')
    _atomic_write(os.path.join(out_dir, 'summary.md'), _summary(s, selected, final))
    if plots:
        _plot(s, selected)
    log(f'{s.ran} runs made, {s.reused} reused from {s.csv_path}')
    log(f'\nselected on validation {s.metric}: {_show(selected)}\nthe selected setting at '
        f'full budget ({base.epochs} epochs, seeds {", ".join(map(str, seeds))}); its test '
        f'metrics are the only ones reported:\n{_table(final)}\n'
        f'summary: {os.path.join(out_dir, "summary.md")}')
    return result


def _table(final: Dict[str, Any]) -> str:
    from mrdib_pyg.train.cli import format_table
    return format_table(argparse.Namespace(best_valid=final['valid'],
                                           test_at_best=final['test']))


def _summary(s: _Search, selected: Dict[str, Any], final: Dict[str, Any]) -> str:
    names, m = list(s.space), s.metric
    evals = sorted(s.evals.values(), key=lambda e: (-e['epochs'], -e['score']))
    lines = [f'# {s.method.capitalize()} search over {", ".join(names)}', '',
             f"Backbone {s.base.model}{' + MRdIB' if s.base.mrdib else ''} on "
             f"'{s.base.dataset}', full budget {s.base.epochs} epochs, seeds "
             f"{', '.join(map(str, s.seeds))}. Every choice is made on validation {m} (mean "
             f"over seeds, at each run's best validation epoch); test metrics are reported "
             f"for the selected setting only.", '',
             f'## Trials, by epoch budget then validation {m}', '',
             '| rank | trial | stage | ' + ' | '.join(names)
             + f' | epochs | best epoch | valid {m} | seconds | selected |',
             '|' + '---|' * (len(names) + 8)]
    chosen = json.loads(json.dumps(selected))
    for rank, e in enumerate(evals, 1):
        lines.append(f"| {rank} | {e['trial']} | {e['stage']} | "
                     + ' | '.join(_fmt(e['options'][n]) for n in names)
                     + f" | {e['epochs']} | {'/'.join(map(str, e['best_epoch']))} | "
                     f"{e['score']:.4f} | {e['seconds']:.1f} | "
                     f"{'yes' if e['options'] == chosen else ''} |")
    lines += ['', '## Selected setting', '', '| option | value |', '|---|---|']
    lines += [f'| {n} | {_fmt(v)} |' for n, v in selected.items()]
    best = '/'.join(map(str, final['best_epoch_per_seed'].values()))
    lines += ['', f'## Selected setting at full budget ({s.base.epochs} epochs, best epoch '
                  f'{best}): validation and test', '', '```',
              _table(final), '```', '']
    return '\n'.join(lines)


def _plot(s: _Search, selected: Dict[str, Any]) -> None:
    try:
        from matplotlib.figure import Figure
    except ImportError:
        s.log("no plot written: matplotlib is not installed (pip install 'mrdib-pyg[plot]'; "
              "--no-plots silences this)")
        return
    names, m = list(s.space), s.metric
    if s.method == 'coordinate':
        fig = Figure(figsize=(4 * len(names), 3.2), layout='constrained')
        for ax, name in zip(fig.subplots(1, len(names), squeeze=False)[0], names):
            stages = dict.fromkeys(v['stage'] for v in s.visits
                                   if v['stage'].endswith(f': {name}'))
            for stage in stages:
                pts = [(v['options'][name], v['score']) for v in s.visits
                       if v['stage'] == stage and math.isfinite(v['score'])]
                xs = [x for x, _ in pts]
                numeric = all(isinstance(x, (int, float)) and not isinstance(x, bool)
                              and x > 0 for x in xs)
                if not numeric:
                    xs = [str(x) for x in xs]
                ax.plot(xs, [y for _, y in pts], 'o-', label=stage.split(':')[0])
                if numeric:
                    ax.set_xscale('log')
            ax.set_title(f'{name} (selected {_fmt(selected[name])})')
            ax.set_xlabel(name)
            ax.set_ylabel(f'valid {m}')
            ax.legend(fontsize='small')
        path = os.path.join(s.out_dir, 'coordinate.png')
    else:
        fig = Figure(figsize=(6, 4), layout='constrained')
        ax = fig.subplots()
        by_setting: Dict[str, List] = {}
        for v in s.visits:
            if math.isfinite(v['score']):
                by_setting.setdefault(json.dumps(v['options'], sort_keys=True), []).append(
                    (v['epochs'], v['score']))
        for opts, pts in by_setting.items():
            win = json.loads(opts) == json.loads(json.dumps(selected))
            ax.plot(*zip(*sorted(set(pts))), 'o-' if win else '.-', color='C3' if win
                    else 'C0', alpha=1 if win else 0.4, label='selected' if win else None)
        ax.set_xscale('log')
        ax.set_xlabel('epoch budget (rung)')
        ax.set_ylabel(f'valid {m}')
        ax.legend()
        path = os.path.join(s.out_dir, 'halving.png')
    fig.savefig(path, dpi=100)
    s.log(f'plot written to {path}')


# -- command line ---------------------------------------------------------------------------
def build_search_parser() -> argparse.ArgumentParser:
    r"""The search's own options (every ``mrdib-train`` option is accepted besides)."""
    p = argparse.ArgumentParser(prog='mrdib-search', add_help=False, allow_abbrev=False)
    g = p.add_argument_group('search (every mrdib-train option sets the base configuration)')
    g.add_argument('--space', action='append', metavar='NAME=V1,V2,...',
                   help='an option and its grid (repeatable); NAME is a TrainConfig field '
                        'or model_args.NAME (default: alpha1-3 over 1e-4,1e-3,5e-3,1e-2,5e-2)')
    g.add_argument('--method', choices=METHODS, default='coordinate')
    g.add_argument('--rounds', type=int, default=1, help='coordinate: passes (default: 1)')
    g.add_argument('--eta', type=int, default=3, help='halving: keep 1/eta (default: 3)')
    g.add_argument('--min-epochs', type=int, default=5,
                   help='halving: first epoch budget (default: 5)')
    g.add_argument('--max-configs', type=int, default=None,
                   help='halving: random sample of the grid (default: all)')
    g.add_argument('--search-out', default='search', metavar='DIR',
                   help='search folder, resumed when rerun (default: ./search)')
    g.add_argument('--seeds', type=int, nargs='+', default=None,
                   help='one run per seed, the mean validation metric decides '
                        '(default: --seed)')
    g.add_argument('--no-plots', action='store_true',
                   help='write no PNG (by default the search plots its trials when '
                        'matplotlib is installed)')
    return p


def main(argv: Optional[List[str]] = None) -> int:
    r"""Entry point of ``mrdib-search``; returns the exit status (2 on input errors)."""
    from mrdib_pyg.train.cli import plain_warnings
    with plain_warnings('mrdib-search'):
        return _main(argv)


def _main(argv: Optional[List[str]] = None) -> int:
    from mrdib_pyg.train import cli
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        if '-h' in argv or '--help' in argv:
            full = argparse.ArgumentParser(
                prog='mrdib-search', parents=[cli.build_parser(), build_search_parser()],
                conflict_handler='resolve', description=__doc__.split('\n')[0])
            full.print_help()
            return 0
        args, rest = build_search_parser().parse_known_args(argv)
        train_parser = cli.build_parser()
        train_parser.prog = 'mrdib-search'
        train_parser.parse_args(rest)  # argument errors name this command
        cfg, train_args = cli.config_from_args(rest)
        # mrdib-train options that mean something else here: refused, not ignored
        if train_args.resume is not None:
            raise ValueError('--resume is an mrdib-train option: a search resumes by itself '
                             'when the same command is run again (the finished trials in '
                             '--search-out are reused)')
        if cfg.out_dir:
            raise ValueError('--out-dir is an mrdib-train option: the search writes every '
                             "trial's run, its tables and its plots into --search-out DIR")
        if train_args.plot is not None:
            raise ValueError('--plot is an mrdib-train option: the search writes its own plot '
                             'into --search-out (--no-plots: none)')
        space = parse_space(args.space) if args.space else None
        # --json: the selected setting and its metrics on stdout, the progress lines on stderr
        log = (lambda line: print(line, file=sys.stderr)) if train_args.json else print
        result = search(cfg, space, args.method, args.search_out, rounds=args.rounds,
                        eta=args.eta, min_epochs=args.min_epochs, max_configs=args.max_configs,
                        seeds=args.seeds, plots=not args.no_plots, log=log)
        if train_args.json:
            with open(os.path.join(result.out_dir, 'selected.json')) as f:
                json.dump(json.load(f), sys.stdout, indent=1)
            print()
    except SystemExit as err:  # argparse has printed its message
        return err.code if isinstance(err.code, int) else 2
    except cli.USER_ERRORS + cli.OTHER_ERRORS as err:  # one line, as mrdib-train
        return cli.report_error('mrdib-search', err)
    return 0


if __name__ == '__main__':  # pragma: no cover
    sys.exit(main())
