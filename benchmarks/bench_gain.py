r"""The MRdIB gain table: each backbone, bare vs + MRdIB, over seeds, on planted-factor data
and on Amazon Baby with generated features.

For every (dataset, backbone, variant, seed) the library's trainer runs to early stopping on
validation Recall@20 and the test metrics at the best validation epoch are collected.
Variants: ``bare``; ``paper`` (+ MRdIB at the paper's alphas 0.005 / 0.05 / 0.005); and
``selected`` (+ MRdIB at alphas chosen on VALIDATION by ``mrdib-search``, read from
``--selected FILE`` with a JSON mapping ``"dataset/backbone" -> {"alpha1": .., ...}``; other
MRdIB options the search selected, e.g. ``item_grad``, may sit beside the alphas).
The table reports mean ± std over seeds, the relative gain of the mean over bare, and whether
the gain exceeds the seed spread (|difference of means| > the larger std).

Each run's ``results.json`` is kept under ``--runs-dir``; a run whose file exists is not
repeated, so the script resumes after an interruption and grows as backbones land. A run
interrupted part way, or one that reached a lower ``--epochs`` cap than now asked, is
continued from its last checkpoint (one that stopped early is kept as it is).

    python benchmarks/bench_gain.py --datasets planted --seeds 0 1 2
    python benchmarks/bench_gain.py --datasets baby --baby-root DIR --seeds 999 1 2

``--baby-root DIR`` must hold ``DIR/baby/raw`` in MMRec format (e.g. written by MMRec's
side-by-side tool from the shared Baby split); without it the shared Baby split is loaded with
the library's own generated features (``attach_generated_features``). Either way the features
are GENERATED, and the output says so.
"""
import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, load_baby, machine, print_table, write_json  # noqa: E402

from mrdib_pyg.train.config import TrainConfig  # noqa: E402
from mrdib_pyg.train import run  # noqa: E402
from mrdib_pyg.train.trainer import resume_config  # noqa: E402

PAPER = dict(alpha1=0.005, alpha2=0.05, alpha3=0.005)
METRICS = ('Recall@5', 'NDCG@5', 'Recall@20', 'NDCG@20')
#: dataset -> options of its runs (planted: the planted-factor experiment's setting)
DATASET_OPTIONS = {
    'planted': dict(dataset='synthetic', lr=2e-3, batch_size=2048, epochs=100, patience=10,
                    dataset_args=dict(num_users=2000, num_items=1000, seed=0)),
    'baby': dict(lr=1e-3, batch_size=2048, epochs=100, patience=20),
}


def load(dataset: str, args):
    if dataset == 'planted':
        return None  # the trainer builds SyntheticMM from dataset_args
    if args.baby_root:
        from mrdib_pyg.data import AmazonMM
        return AmazonMM(args.baby_root, 'baby')[0]
    return load_baby()


def check_cached(path: Path, result: dict, variant: str, alphas: dict) -> None:
    r"""A cached run is reused only if it was made with the settings now asked for (a new
    search that changes a selected setting must not be answered by the old runs)."""
    mrdib = result['config'].get('mrdib')
    if variant == 'bare':
        stale = {'mrdib': mrdib} if mrdib is not None else {}
    else:
        stale = {k: (None if mrdib is None else mrdib.get(k), v) for k, v in alphas.items()
                 if mrdib is None or mrdib.get(k) != v}
    if stale:
        raise SystemExit(f'{path.parent}: this cached run was made with other settings '
                         f'(cached, asked: {stale}); delete the folder to rerun it, or give '
                         f'another --runs-dir')


def one_run(dataset, data, backbone, variant, seed, alphas, args) -> dict:
    path = Path(args.runs_dir) / dataset / backbone / f'{variant}_s{seed}' / 'results.json'
    result = json.loads(path.read_text()) if path.exists() else None
    if result is not None:
        check_cached(path, result, variant, alphas)
    can_continue = (path.parent / 'last.pt').exists()
    if result is not None and (not args.epochs or result['config']['epochs'] >= args.epochs
                               or not can_continue):  # (without a checkpoint: as it is)
        return result
    if can_continue:
        # an interrupted run, or one capped lower than now asked: continued from its last
        # checkpoint (one that stopped early stays as it is); on one thread this gives
        # exactly an uninterrupted run's result
        changes = {'progress': False, **({'epochs': args.epochs} if args.epochs else {})}
        result = run(resume_config(str(path.parent), changes), data=data,
                     resume=True).to_dict()
        print(f'{dataset}/{backbone}/{variant}/s{seed}: continued from its checkpoint: '
              f'best epoch {result["best_epoch"]}, '
              f'test R@20 {result["test_at_best"]["Recall@20"]:.4f}', flush=True)
        return result
    opts = dict(DATASET_OPTIONS[dataset], model=backbone, seed=seed, progress=False,
                device=args.device, mrdib=variant != 'bare', out_dir=str(path.parent))
    if dataset == 'baby':  # the data object is passed in; the record names what it is
        opts.update(dataset='baby' if args.baby_root else 'baby-shared',
                    root=args.baby_root or str(REPO / 'datasets'))
    if args.epochs:
        opts['epochs'] = args.epochs
    if variant != 'bare':
        opts.update(alphas)
    # The backbone's MMRec training defaults (e.g. MGCN's lr decay), then this table's options.
    result = run(TrainConfig.preset(backbone, 'synthetic').update(opts), data=data).to_dict()
    print(f'{dataset}/{backbone}/{variant}/s{seed}: best epoch {result["best_epoch"]}, '
          f'test R@20 {result["test_at_best"]["Recall@20"]:.4f}', flush=True)
    return result


def summarise(values):
    mean = statistics.fmean(values)
    return mean, statistics.stdev(values) if len(values) > 1 else 0.0


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--datasets', nargs='+', default=['planted'], choices=list(DATASET_OPTIONS))
    p.add_argument('--backbones', nargs='+', default=['vbpr'])
    p.add_argument('--variants', nargs='+', default=['bare', 'paper', 'selected'])
    p.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
    p.add_argument('--selected', default=str(REPO / 'benchmarks' / 'results' /
                                             'selected_alphas.json'))
    p.add_argument('--baby-root', default=None)
    p.add_argument('--runs-dir', default=str(REPO / 'benchmarks' / '.runs' / 'gain'))
    p.add_argument('--threads', type=int, default=1)
    p.add_argument('--device', default='cpu')
    p.add_argument('--epochs', type=int, default=None,
                   help="cap on epochs per run (default: the dataset's, 100)")
    p.add_argument('--out', default='gain.json')
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    selected = json.loads(Path(args.selected).read_text()) if Path(args.selected).exists() \
        else {}
    rows, raw = [], {}
    for dataset in args.datasets:
        data = load(dataset, args)
        for backbone in args.backbones:
            bare = None
            for variant in args.variants:
                key = f'{dataset}/{backbone}'
                if variant == 'selected' and key not in selected:
                    print(f'{key}: no validation-selected alphas in {args.selected}; skipped')
                    continue
                alphas = PAPER if variant == 'paper' else selected.get(key, {})
                results = [one_run(dataset, data, backbone, variant, s, alphas, args)
                           for s in args.seeds]
                stats = {m: summarise([r['test_at_best'][m] for r in results]) for m in METRICS}
                raw[f'{key}/{variant}'] = dict(
                    alphas=alphas if variant != 'bare' else None,
                    best_epochs=[r['best_epoch'] for r in results],
                    test={m: [r['test_at_best'][m] for r in results] for m in METRICS},
                    generated_features=any(r['info'].get('generated_features') or
                                           dataset == 'baby' for r in results))
                row = {'dataset': dataset + (' (generated features)' if dataset == 'baby'
                                             else ''),
                       'backbone': backbone, 'variant': variant,
                       'alphas': '' if variant == 'bare' else
                       '/'.join(f'{alphas[k]:g}' for k in ('alpha1', 'alpha2', 'alpha3'))
                       + ''.join(f', {k}={v:g}' if isinstance(v, float) else f', {k}={v}'
                                 for k, v in alphas.items()
                                 if k not in ('alpha1', 'alpha2', 'alpha3'))}
                for m in METRICS:
                    mean, std = stats[m]
                    row[m] = f'{mean:.4f} ± {std:.4f}'
                if variant == 'bare':
                    bare = stats
                elif bare is not None:
                    for m in ('Recall@5', 'Recall@20'):
                        (mb, sb), (mv, sv) = bare[m], stats[m]
                        gain = (mv - mb) / mb if mb else float('nan')
                        row[f'gain {m}'] = f'{100 * gain:+.1f}%' + (
                            '' if abs(mv - mb) > max(sb, sv) else ' (within spread)')
                rows.append(row)
    columns = ['dataset', 'backbone', 'variant', 'alphas', *METRICS, 'gain Recall@5',
               'gain Recall@20']
    print_table(rows, columns)
    write_json(args.out, dict(args=vars(args), machine=machine(), rows=rows, runs=raw))


if __name__ == '__main__':
    main()
