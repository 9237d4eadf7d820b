r"""Why MRdIB lowers the GNN backbones, and which remedy helps: each (backbone, variant, seed)
on the planted-factor data, with the whole validation curve and every logged term kept.

Variants (MRdIB options over the paper's alphas 0.005 / 0.05 / 0.005):

* ``bare``: no MRdIB; ``paper``: MRdIB as the paper has it;
* ``wo_mib``, ``mib_only``: the paper's ablations (which term does the damage);
* ``no_user_grad``: the heads leave the backbone's user tables alone;
* ``item_grad_0.1``, ``item_grad_0``: MRdIB's gradient into the modality item tables scaled
  by 0.1 / cut (0 with ``no_user_grad`` is a backbone MRdIB cannot touch: a control);
* ``latent_16``: a narrower latent (the paper's "latent width" question);
* ``selected_mgcn``: the setting ``mrdib-search`` selected on validation for planted MGCN;
* ``attach_purified``: MRdIB on MGCN's purified modality tables before the item–item
  propagation (``modality_output='purified'``), the paper's alphas;
* ``synergy_0.1``, ``synergy_0``: the fused head's BPR weighted 0.1 / 0 in MRdIB's loss
  (``synergy_weight``; the paper has no weight there);
* ``input_layer``: the encoders' inputs standardised per row (``input_norm='layer'``), so
  the KL gains nothing from shrinking the backbone's modality tables.

Runs go to ``--runs-dir`` (a finished run is not repeated: the script resumes) and the summary
(best epoch, test Recall@20/NDCG@20 at the best validation epoch, validation Recall@20 per
epoch) to ``benchmarks/results/<--out>``.

    python benchmarks/bench_remedies.py --backbones mgcn --variants bare paper wo_mib \
        --seeds 0 --epochs 30 --patience 30
"""
import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, machine, print_table, write_json  # noqa: E402
from bench_gain import DATASET_OPTIONS, PAPER  # noqa: E402

from mrdib_pyg.train import run  # noqa: E402
from mrdib_pyg.train.config import TrainConfig  # noqa: E402

#: variant -> MRdIB options over the paper's alphas (None: the bare backbone)
VARIANTS = {
    'bare': None,
    'paper': {},
    'wo_mib': dict(ablation='wo_mib'),
    'mib_only': dict(ablation='mib_only'),
    'no_user_grad': dict(user_grad=False),
    'item_grad_0.1': dict(item_grad=0.1),
    'item_grad_0.1_no_user_grad': dict(item_grad=0.1, user_grad=False),
    'item_grad_0': dict(item_grad=0.0),
    'item_grad_0_no_user_grad': dict(item_grad=0.0, user_grad=False),
    'latent_16': dict(latent_dim=16),
    # what mrdib-search selected on validation for planted MGCN (same 30-epoch protocol)
    'selected_mgcn': dict(alpha1=0.01, alpha2=1e-4, alpha3=0.01, item_grad=0.1),
    # another attachment point: MGCN's purified tables before the item-item propagation
    'attach_purified': dict(model_args=dict(modality_output='purified')),
    # a weight on the fused head's BPR, which no alpha scales (the paper's is 1)
    'synergy_0.1': dict(synergy_weight=0.1),
    'synergy_0': dict(synergy_weight=0.0),
    # encoder inputs standardised per row: the KL cannot lower itself by shrinking x_m
    'input_layer': dict(input_norm='layer'),
}


def one_run(backbone: str, variant: str, seed: int, args) -> dict:
    path = Path(args.runs_dir) / backbone / f'{variant}_s{seed}' / 'results.json'
    if path.exists():
        return json.loads(path.read_text())
    opts = dict(DATASET_OPTIONS['planted'], model=backbone, seed=seed, progress=False,
                device=args.device, epochs=args.epochs, patience=args.patience,
                out_dir=str(path.parent))
    mrdib = None if VARIANTS[variant] is None else dict(VARIANTS[variant])
    if mrdib is not None:
        if 'model_args' in mrdib:
            opts['model_args'] = mrdib.pop('model_args')
        opts['mrdib'] = dict(PAPER, **mrdib)
    result = run(TrainConfig.preset(backbone, 'synthetic').update(opts)).to_dict()
    print(f'{backbone}/{variant}/s{seed}: best epoch {result["best_epoch"]}, '
          f'test R@20 {result["test_at_best"]["Recall@20"]:.4f}', flush=True)
    return result


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--backbones', nargs='+', default=['mgcn'])
    p.add_argument('--variants', nargs='+', default=['bare', 'paper'], choices=list(VARIANTS))
    p.add_argument('--seeds', type=int, nargs='+', default=[0])
    p.add_argument('--epochs', type=int, default=30)
    p.add_argument('--patience', type=int, default=30,
                   help='early-stopping patience (default 30: the whole curve is kept)')
    p.add_argument('--runs-dir', default=str(REPO / 'benchmarks' / '.runs' / 'remedies'))
    p.add_argument('--threads', type=int, default=1)
    p.add_argument('--device', default='cpu')
    p.add_argument('--out', default='remedies.json')
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rows, raw = [], {}
    for backbone in args.backbones:
        for variant in args.variants:
            results = [one_run(backbone, variant, s, args) for s in args.seeds]
            r20 = [r['test_at_best']['Recall@20'] for r in results]
            n20 = [r['test_at_best']['NDCG@20'] for r in results]
            curves = [[h['valid']['Recall@20'] for h in r['history']] for r in results]
            raw[f'{backbone}/{variant}'] = dict(
                options=VARIANTS[variant], seeds=args.seeds,
                best_epochs=[r['best_epoch'] for r in results], test_recall20=r20,
                test_ndcg20=n20, valid_recall20_curves=curves,
                last_epoch_terms=[r['history'][-1]['loss'] for r in results])
            sd = statistics.stdev(r20) if len(r20) > 1 else 0.0
            rows.append({'backbone': backbone, 'variant': variant,
                         'best epochs': ','.join(str(r['best_epoch']) for r in results),
                         'test R@20': f'{statistics.fmean(r20):.4f} ± {sd:.4f}',
                         'valid R@20 at epochs 5/10/20/last': ' / '.join(
                             f'{statistics.fmean(c[min(e, len(c) - 1)] for c in curves):.4f}'
                             for e in (5, 10, 20, 10 ** 6))})
    print_table(rows, ['backbone', 'variant', 'best epochs', 'test R@20',
                       'valid R@20 at epochs 5/10/20/last'])
    write_json(args.out, dict(args=vars(args), machine=machine(), rows=rows, runs=raw))


if __name__ == '__main__':
    main()
