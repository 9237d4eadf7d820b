r"""Issue 2's measurement: LightGCN and VBPR on the real Amazon Baby interactions
(``../shared/data/amazon-baby``) with GENERATED features of the real shapes for VBPR.

Reports test Recall@20 / NDCG@20 at the best validation epoch (early stopping on validation
Recall@20, patience 20, within --epochs), and the median seconds per training epoch and per
evaluation pass (one validation pass over all 19,445 users).

    python benchmarks/bench_baseline.py --epochs 1000
"""
import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import load_baby, machine, print_table, write_json  # noqa: E402

from mrdib_pyg.train.config import TrainConfig  # noqa: E402
from mrdib_pyg.train import run  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--models', nargs='+', default=['lightgcn', 'vbpr'])
    p.add_argument('--epochs', type=int, default=1000)
    p.add_argument('--patience', type=int, default=20)
    p.add_argument('--seed', type=int, default=999)
    p.add_argument('--device', default='auto')
    p.add_argument('--threads', type=int, default=None, help='torch threads (default: torch)')
    p.add_argument('--out', default='baseline_baby.json')
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    data = load_baby()
    rows = []
    for model in args.models:
        cfg = TrainConfig().update(dict(dataset='baby-shared', model=model, epochs=args.epochs,
                                        patience=args.patience, seed=args.seed,
                                        device=args.device, progress=False))
        res = run(cfg, data=data)
        rows.append({'model': model, 'best_epoch': res.best_epoch,
                     'epochs_run': res.timings['epochs_run'],
                     'test_Recall@20': res.test_at_best['Recall@20'],
                     'test_NDCG@20': res.test_at_best['NDCG@20'],
                     'valid_Recall@20': res.best_valid['Recall@20'],
                     'train_s_per_epoch_median': res.timings['train_epoch_median_s'],
                     'eval_s_per_pass_median': res.timings['eval_pass_median_s'],
                     'test_at_best': res.test_at_best})
        print_table(rows[-1:], [k for k in rows[-1] if k != 'test_at_best'])
    print('\nAmazon Baby (../shared/data/amazon-baby), GENERATED features (SVD of training '
          'interactions mapped to 4096/384 dims) — not the real image/text features')
    print_table(rows, [k for k in rows[0] if k != 'test_at_best'])
    write_json(args.out, {'dataset': 'amazon-baby (shared split), generated features',
                          'machine': machine(), 'args': vars(args), 'rows': rows})


if __name__ == '__main__':
    main()
