r"""1 rank vs 2 ranks (torch.distributed, gloo on CPU) on one machine: seconds per training
epoch and per evaluation pass, and the metrics, for the same global batch.

Each configuration runs as its own ``torchrun --standalone`` job (1 rank: plain
``python -m mrdib_pyg.train``) with one thread per rank, writing ``results.json``; the table
reads the medians from there. On a 2-core machine two ranks can at best halve the epoch, and
only when the work per batch outweighs the all-reduce of the gradients.

    python benchmarks/bench_ddp.py                    # planted-factor SyntheticMM, VBPR
    python benchmarks/bench_ddp.py --mrdib --epochs 5
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, print_table, write_json  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--model', default='vbpr')
    p.add_argument('--users', type=int, default=2000)
    p.add_argument('--items', type=int, default=1000)
    p.add_argument('--epochs', type=int, default=5)
    p.add_argument('--batch-size', type=int, default=2048)
    p.add_argument('--mrdib', action='store_true')
    p.add_argument('--ranks', type=int, nargs='+', default=[1, 2])
    args = p.parse_args()
    rows, raw = [], {}
    env = dict(os.environ, OMP_NUM_THREADS='1')
    for n in args.ranks:
        with tempfile.TemporaryDirectory() as out:
            train = ['--dataset-arg', f'num_users={args.users}', '--dataset-arg',
                     f'num_items={args.items}', '--model', args.model, '--epochs',
                     str(args.epochs), '--patience', str(args.epochs), '--batch-size',
                     str(args.batch_size), '--device', 'cpu', '--no-progress', '--out-dir', out]
            if args.mrdib:
                train.append('--mrdib')
            launcher = ([sys.executable, '-m', 'mrdib_pyg.train'] if n == 1 else
                        [sys.executable, '-m', 'torch.distributed.run', '--standalone',
                         '--nproc_per_node', str(n), '-m', 'mrdib_pyg.train'])
            subprocess.run(launcher + train, env=env, check=True, stdout=subprocess.DEVNULL)
            result = json.loads((Path(out) / 'results.json').read_text())
        raw[n] = result['timings'] | {'test': result['test_at_best'],
                                      'best_epoch': result['best_epoch']}
        rows.append({'ranks': n, 's/epoch': result['timings']['train_epoch_median_s'],
                     's/eval': result['timings']['eval_pass_median_s'],
                     'test R@20': result['test_at_best']['Recall@20']})
    if 1 in raw:
        for r in rows:
            r['speed-up'] = raw[1]['train_epoch_median_s'] / r['s/epoch']
    print_table(rows, list(rows[0]))
    write_json(f"ddp_{args.model}{'_mrdib' if args.mrdib else ''}.json",
               dict(args=vars(args), machine=machine(), rows=rows, runs=raw))


if __name__ == '__main__':
    main()
