r"""Pictures of runs and datasets, written as PNG files with matplotlib.

* :func:`plot_training` -- one run's curves from its ``results.json``: every loss term
  per epoch, the validation metrics per epoch, the best epoch marked
  (``mrdib-train --plot`` writes it as ``curves.png`` beside ``results.json``);
* :func:`plot_comparison` -- several runs side by side: one bar per setting (the runs
  that share a label, e.g. seeds of one model), its mean and the seed spread;
* :func:`plot_dataset` -- an :class:`~torch_geometric.data.HeteroData`'s user and item
  degree distributions and each modality's feature statistics.

The command ``mrdib-plot`` calls them::

    mrdib-plot curves runs/vbpr/results.json -o vbpr.png
    mrdib-plot compare runs/*/results.json -o compare.png --metric Recall@20
    mrdib-plot dataset --dataset baby --root data -o baby.png

matplotlib is an optional dependency (``pip install "mrdib-pyg[plot]"``); the functions
raise :class:`ImportError` saying so when it is missing. They use matplotlib's
object-oriented API (no global figure state, no display needed).
"""
import argparse
import json
import math
import os
import statistics
import sys
from collections import OrderedDict
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import torch

__all__ = ['plot_training', 'plot_comparison', 'plot_dataset', 'run_label', 'load_result']

Result = Union[str, os.PathLike, Mapping[str, Any]]


def require_matplotlib() -> None:
    r"""Raises :class:`ImportError`, saying how to install it, when matplotlib is missing
    (commands call it before long work whose end is a plot)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as e:
        raise ImportError("plotting needs matplotlib: pip install 'mrdib-pyg[plot]' "
                          "(or pip install matplotlib)") from e


def _figure(**kwargs):
    require_matplotlib()
    from matplotlib.figure import Figure
    return Figure(layout='constrained', **kwargs)


def _save(fig, path: str) -> str:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = f'{path}.tmp.png'
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, path)  # never a half-written picture under the final name
    return path


def load_result(result: Result) -> Dict[str, Any]:
    r"""A run's result dictionary, from a ``results.json`` path (or its folder) or as
    given. Raises :class:`ValueError` naming the file if it is not a training result."""
    if isinstance(result, Mapping):
        res, where = dict(result), 'the result'
    else:
        where = os.fspath(result)
        if os.path.isdir(where):
            where = os.path.join(where, 'results.json')
        try:
            with open(where) as f:
                res = json.load(f)
        except FileNotFoundError:
            raise FileNotFoundError(f"no training result at '{where}' (mrdib-train writes "
                                    f"results.json into its --out-dir)") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"'{where}' is not JSON: {e}") from None
    if not isinstance(res, Mapping) or not isinstance(res.get('history'), list):
        raise ValueError(f"'{where}' is not a training result: it has no 'history' list "
                         f"(expected the results.json that mrdib-train writes)")
    return dict(res)


def run_label(result: Mapping[str, Any]) -> str:
    r"""A short label of a run's setting: its model, plus ``+MRdIB`` when the plug-in
    was on (seeds of one setting share the label)."""
    cfg = result.get('config', {}) or {}
    label = str(cfg.get('model', 'run'))
    if cfg.get('mrdib'):
        label += '+MRdIB'
    return label


def _finite(xs):
    return [x if isinstance(x, (int, float)) and math.isfinite(x) else float('nan')
            for x in xs]


def plot_training(result: Result, path: str, metrics: Optional[Sequence[str]] = None,
                  title: Optional[str] = None) -> str:
    r"""Write one run's training curves to :obj:`path` (PNG) and return the path.

    Left: every loss term logged per epoch (the backbone's, MRdIB's terms, the total),
    on a symmetric-log scale because some terms (e.g. MRdIB's redundancy bound) are
    negative. Right: the validation metrics per epoch. A dashed line marks the best
    validation epoch and a star the test value there.

    Args:
        result: the ``results.json`` path, its folder, or the loaded dictionary.
        path (str): the PNG to write.
        metrics (list, optional): validation metrics to draw (default: every Recall@K
            and NDCG@K logged).
        title (str, optional): figure title (default: the run's label).
    """
    res = load_result(result)
    hist = res['history']
    if not hist:
        raise ValueError('the run has no epochs to plot (empty history)')
    epochs = [h.get('epoch', n) for n, h in enumerate(hist)]
    terms = list(OrderedDict.fromkeys(k for h in hist for k in (h.get('loss') or {})))
    valid_keys = list(OrderedDict.fromkeys(k for h in hist for k in (h.get('valid') or {})))
    if metrics is None:
        metrics = [k for k in valid_keys if k.split('@')[0] in ('Recall', 'NDCG')]
    else:
        missing = [m for m in metrics if m not in valid_keys]
        if missing:
            raise ValueError(f'metrics {missing} were not logged; the run has {valid_keys}')
    best = res.get('best_epoch')
    fig = _figure(figsize=(11, 4))
    ax_loss, ax_valid = fig.subplots(1, 2)
    for term in terms:
        ys = _finite([(h.get('loss') or {}).get(term, float('nan')) for h in hist])
        ax_loss.plot(epochs, ys, label=term, lw=2.2 if term == 'loss' else 1.2)
    ax_loss.set_yscale('symlog', linthresh=1e-3)
    ax_loss.set_xlabel('epoch')
    ax_loss.set_ylabel('mean over the epoch')
    ax_loss.set_title('loss terms')
    if terms:
        ax_loss.legend(fontsize='small', ncol=2)
    for m in metrics:
        ys = _finite([(h.get('valid') or {}).get(m, float('nan')) for h in hist])
        line, = ax_valid.plot(epochs, ys, label=f'valid {m}')
        test = (res.get('test_at_best') or {}).get(m)
        if best is not None and test is not None:
            ax_valid.plot([best], [test], '*', ms=11, color=line.get_color(),
                          label=f'test {m} = {test:.4f}')
    ax_valid.set_xlabel('epoch')
    ax_valid.set_title('validation metrics')
    for ax in (ax_loss, ax_valid):
        if best is not None:
            ax.axvline(best, ls='--', color='grey', lw=1)
    if metrics:
        ax_valid.legend(fontsize='small')
    suffix = f' (best epoch {best})' if best is not None else ''
    fig.suptitle((title or run_label(res)) + suffix)
    return _save(fig, path)


def plot_comparison(results: Sequence[Result], path: str, metric: str = 'Recall@20',
                    split: str = 'test', labels: Optional[Sequence[str]] = None,
                    title: Optional[str] = None) -> str:
    r"""Write a bar chart comparing runs to :obj:`path` and return the path.

    Runs with the same label (:func:`run_label`, or :obj:`labels`) are seeds of one
    setting: the bar is their mean, the error bar their standard deviation (none for a
    single run), and each run is a dot.

    Args:
        results: ``results.json`` paths, folders or loaded dictionaries.
        path (str): the PNG to write.
        metric (str): e.g. :obj:`'Recall@20'`.
        split (str): :obj:`'test'` (the test metrics at the best validation epoch) or
            :obj:`'valid'` (the best validation metrics).
    """
    if split not in ('test', 'valid'):
        raise ValueError(f"split must be 'test' or 'valid' (got '{split}')")
    if not results:
        raise ValueError('no results to compare')
    if labels is not None and len(labels) != len(results):
        raise ValueError(f'{len(labels)} labels for {len(results)} results')
    key = 'test_at_best' if split == 'test' else 'best_valid'
    groups: Dict[str, List[float]] = OrderedDict()
    for n, r in enumerate(results):
        res = load_result(r)
        value = (res.get(key) or {}).get(metric)
        if value is None:
            where = r if not isinstance(r, Mapping) else f'result {n}'
            raise ValueError(f"'{where}' has no {split} {metric} (it has "
                             f"{sorted(res.get(key) or {})})")
        groups.setdefault(labels[n] if labels else run_label(res), []).append(float(value))
    names = list(groups)
    means = [statistics.fmean(v) for v in groups.values()]
    stds = [statistics.stdev(v) if len(v) > 1 else 0.0 for v in groups.values()]
    fig = _figure(figsize=(max(4.0, 1.1 * len(names) + 2), 4))
    ax = fig.subplots()
    xs = list(range(len(names)))
    ax.bar(xs, means, yerr=stds, capsize=4, color='tab:blue', alpha=0.75)
    for x, values in zip(xs, groups.values()):
        ax.plot([x] * len(values), values, 'o', color='black', ms=3)
    for x, m, v in zip(xs, means, groups.values()):
        ax.annotate(f'{m:.4f}\n(n={len(v)})', (x, m), ha='center', va='bottom',
                    fontsize='small', xytext=(0, 4), textcoords='offset points')
    ax.set_xticks(xs, names, rotation=20, ha='right')
    ax.set_ylabel(f'{split} {metric}')
    ax.set_title(title or f'{split} {metric}: mean ± std over seeds')
    return _save(fig, path)


def plot_dataset(data, path: str, title: Optional[str] = None) -> str:
    r"""Write a dataset's degree distributions and feature statistics to :obj:`path`.

    Top: how many users and items have each training degree (log–log). Bottom, per
    modality: the histogram of the items' feature norms (items without that modality's
    features, all-zero rows, counted apart) and each dimension's mean and spread.

    Args:
        data (HeteroData): e.g. :obj:`AmazonMM(root, 'baby')[0]`.
        path (str): the PNG to write.
    """
    from mrdib_pyg.data.schema import ITEM, RATES, USER, modality_names, item_features
    ei = data[RATES].edge_index
    deg_u = torch.bincount(ei[0], minlength=data[USER].num_nodes)
    deg_i = torch.bincount(ei[1], minlength=data[ITEM].num_nodes)
    mods = modality_names(data)
    fig = _figure(figsize=(10, 3.4 * (1 + max(1, len(mods)) / 1.0) / 1.3))
    axes = fig.subplots(1 + max(1, len(mods)), 2, squeeze=False)
    for ax, deg, who in ((axes[0][0], deg_u, 'users'), (axes[0][1], deg_i, 'items')):
        counts = torch.bincount(deg)
        ks = torch.nonzero(counts).flatten()
        ax.loglog(ks.clamp(min=1).tolist(), counts[ks].tolist(), 'o', ms=3)
        ax.set_xlabel('training interactions')
        ax.set_ylabel(f'number of {who}')
        zero = int((deg == 0).sum())
        ax.set_title(f'{who}: {deg.numel()}, mean degree {deg.float().mean():.2f}'
                     + (f', {zero} without training edges' if zero else ''))
    for row, m in enumerate(mods, start=1):
        x = item_features(data, m, 'keep').float()
        norms = x.norm(dim=1)
        present = norms > 0
        ax = axes[row][0]
        ax.hist(norms[present].tolist(), bins=50)
        ax.set_xlabel('feature norm')
        ax.set_ylabel('items')
        ax.set_title(f'{m}: {x.size(1)}-d, {int((~present).sum())} items without features')
        ax = axes[row][1]
        mean, std = x[present].mean(0), x[present].std(0) if present.sum() > 1 else x[0] * 0
        order = torch.argsort(mean)
        dims = list(range(x.size(1)))
        ax.plot(dims, mean[order].tolist(), lw=1, label='mean')
        ax.fill_between(dims, (mean - std)[order].tolist(), (mean + std)[order].tolist(),
                        alpha=0.3, label='± std')
        ax.set_xlabel('dimension (sorted by mean)')
        ax.set_title(f'{m}: per-dimension mean and spread')
        ax.legend(fontsize='small')
    if not mods:
        axes[1][0].set_axis_off()
        axes[1][1].set_axis_off()
        axes[1][0].set_title('no modality features')
    fig.suptitle(title or f'{data[USER].num_nodes} users, {data[ITEM].num_nodes} items, '
                          f'{ei.size(1)} training interactions')
    return _save(fig, path)


def main(argv: Optional[Sequence[str]] = None) -> None:
    r"""``mrdib-plot``: training curves, comparisons and dataset pictures as PNG."""
    p = argparse.ArgumentParser(prog='mrdib-plot', description=main.__doc__)
    sub = p.add_subparsers(dest='what', required=True)
    c = sub.add_parser('curves', help="one run's loss terms and validation metrics")
    c.add_argument('result', help='results.json (or the run folder)')
    c.add_argument('-o', '--out', default=None, help='PNG (default: curves.png beside it)')
    k = sub.add_parser('compare', help='bars of several runs, seeds pooled by label')
    k.add_argument('results', nargs='+')
    k.add_argument('-o', '--out', required=True)
    k.add_argument('--metric', default='Recall@20')
    k.add_argument('--split', default='test', choices=('test', 'valid'))
    d = sub.add_parser('dataset', help="a dataset's degrees and feature statistics")
    d.add_argument('--dataset', required=True)
    d.add_argument('--root', default='data')
    d.add_argument('-o', '--out', required=True)
    args = p.parse_args(argv)
    from mrdib_pyg.train.cli import OTHER_ERRORS, USER_ERRORS, plain_warnings, report_error
    try:
        with plain_warnings('mrdib-plot'):
            require_matplotlib()  # before a dataset is loaded for nothing
            if args.what == 'curves':
                folder = (args.result if os.path.isdir(args.result)
                          else os.path.dirname(args.result))
                out = plot_training(args.result,
                                    args.out or os.path.join(folder, 'curves.png'))
            elif args.what == 'compare':
                out = plot_comparison(args.results, args.out, args.metric, args.split)
            else:
                from mrdib_pyg.train.build import load_data
                from mrdib_pyg.train.config import TrainConfig
                data = load_data(TrainConfig(dataset=args.dataset, root=args.root))
                out = plot_dataset(data, args.out)
    except USER_ERRORS + OTHER_ERRORS as err:
        sys.exit(report_error('mrdib-plot', err))
    print(f'written {out}')


if __name__ == '__main__':  # pragma: no cover
    main()
