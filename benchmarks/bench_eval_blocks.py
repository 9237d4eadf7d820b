r"""Seconds per full-ranking evaluation pass against the evaluator's user-block size.

The evaluator scores, masks and ranks the users in blocks of ``eval_batch_size`` users
(MMRec's ``eval_batch_size`` is 4096). The block size changes no metric (each user's row
is scored, masked and ranked alone; ``tests/test_evaluate.py`` checks the metrics across
block sizes, and this script checks them on each backbone, to float32 summation order), only how much memory one block's ``[block, items]`` score matrix takes and
so how fast it is written and read. On a CPU a 4096-user block of Baby's 7,050 items is a
115 MB matrix, allocated afresh and faulted in for every block.

For each backbone (untrained, built as the trainer builds it on the given dataset), one
validation pass per block size, the sizes interleaved for ``--repeats`` rounds in one
process; each pass includes the backbone's forward (its cached tables are dropped first),
as an evaluation after a training epoch does. Medians, and each size's ratio to 4096.

    python benchmarks/bench_eval_blocks.py --root /tmp/mm --name baby \
        --models lightgcn vbpr grcn --sizes 4096 2048 1024 512 256 --repeats 5 --threads 1
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, print_table, write_json  # noqa: E402

from mrdib_pyg.evaluate import FullRankEvaluator  # noqa: E402
from mrdib_pyg.train.build import build_model, load_data  # noqa: E402
from mrdib_pyg.train.config import TrainConfig, parse_value  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--root', required=True, help='AmazonMM root (ROOT/NAME/raw)')
    p.add_argument('--name', default='baby')
    p.add_argument('--models', nargs='+', default=['lightgcn', 'vbpr'])
    p.add_argument('--model-arg', nargs='*', default=[], metavar='KEY=VALUE',
                   help='backbone arguments for every model, e.g. score_last_train_forward=True')
    p.add_argument('--sizes', type=int, nargs='+', default=[4096, 2048, 1024, 512, 256])
    p.add_argument('--repeats', type=int, default=5)
    p.add_argument('--threads', type=int, default=1)
    p.add_argument('--out', default='eval_blocks.json')
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model_args = {k: parse_value(v) for k, v in (kv.split('=', 1) for kv in args.model_arg)}
    data = None
    rows, raw = [], {}
    for name in args.models:
        cfg = TrainConfig.preset(name, args.name).update(
            dict(dataset=args.name, root=args.root, seed=0, device='cpu',
                 model_args=model_args))
        data = load_data(cfg) if data is None else data
        model = build_model(cfg, data).eval()
        evaluators = {b: FullRankEvaluator.from_data(data, 'val', batch_size=b)
                      for b in args.sizes}
        times = {b: [] for b in args.sizes}
        results = {}
        with torch.no_grad():
            for r in range(args.repeats + 1):  # round 0 warms up
                order = args.sizes if r % 2 else args.sizes[::-1]
                for b in order:
                    model.invalidate_cache()
                    t0 = time.perf_counter()
                    results[b] = evaluators[b].evaluate(model.score)
                    if r:
                        times[b].append(time.perf_counter() - t0)
        ref = results[args.sizes[0]]
        # Equal up to float32 summation order: the per-block sums of PyG's metric states
        # are added in another order when the blocks differ.
        same = all(abs(results[b][k] - ref[k]) <= 1e-6 * max(abs(ref[k]), 1e-12)
                   for b in args.sizes for k in ref)
        base = statistics.median(times[4096]) if 4096 in times else None
        for b in args.sizes:
            med = statistics.median(times[b])
            rows.append({'model': name, 'block': b, 'median s': round(med, 3),
                         'vs 4096': round(med / base, 3) if base else '',
                         'metrics equal': same})
        raw[name] = {str(b): times[b] for b in args.sizes}
    print_table(rows, ['model', 'block', 'median s', 'vs 4096', 'metrics equal'])
    write_json(args.out, dict(args=vars(args), machine=machine(), rows=rows, seconds=raw))


if __name__ == '__main__':
    main()
