r"""Every backbone on one device, bare and with MRdIB (ID-only backbones bare; VBPR in replace
mode too), for a few epochs, in one process: exit status, seconds and test Recall@20 of each,
and whether the metric is finite and positive. A check that the whole zoo runs on a device
(e.g. a GPU), not a speed or accuracy benchmark.

    python benchmarks/device_smoke.py --device cuda --epochs 3
    python benchmarks/device_smoke.py --device cuda --epochs 1 -- --dataset baby --root DIR \
        --generated-features

Options after ``--`` go to every ``mrdib-train`` call.
"""
import argparse
import contextlib
import io
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, print_table, write_json  # noqa: E402

from mrdib_pyg.train.cli import main as train_main  # noqa: E402

MODELS = ('bprmf', 'lightgcn', 'vbpr', 'mmgcn', 'grcn', 'dualgnn', 'lattice', 'bm3', 'freedom',
          'mgcn', 'lgmrec', 'soil')
ID_ONLY = ('bprmf', 'lightgcn')  # MRdIB needs per-modality outputs


def variants(model):
    if model in ID_ONLY:
        return [[]]
    return [[], ['--mrdib']] + ([['--mrdib', '--replace']] if model == 'vbpr' else [])


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--device', default='cpu')
    p.add_argument('--epochs', type=int, default=3)
    p.add_argument('--models', nargs='+', default=list(MODELS))
    p.add_argument('--out', default=None)
    args, train_args = p.parse_known_args()
    train_args = [a for a in train_args if a != '--']
    rows = []
    for model in args.models:
        for extra in variants(model):
            buf, t = io.StringIO(), time.perf_counter()
            with contextlib.redirect_stdout(buf):
                rc = train_main(['--model', model, '--epochs', str(args.epochs), '--device',
                                 args.device, '--no-progress', '--json'] + train_args + extra)
            seconds = time.perf_counter() - t
            try:
                r20 = json.loads(buf.getvalue())['test_at_best']['Recall@20']
            except (ValueError, KeyError):
                r20 = float('nan')
            rows.append({'model': model, 'variant': ' '.join(extra) or 'bare', 'rc': rc,
                         'seconds': seconds, 'test Recall@20': r20,
                         'ok': rc == 0 and math.isfinite(r20) and r20 > 0})
            print(f"{model} {rows[-1]['variant']}: rc {rc}, {seconds:.1f} s, "
                  f"R@20 {r20:.4f}", flush=True)
    print_table(rows, list(rows[0]))
    print('all ok' if all(r['ok'] for r in rows) else 'FAILURES')
    write_json(args.out or f'device_smoke_{args.device.replace(":", "")}.json',
               dict(args=vars(args), train_args=train_args, machine=machine(), rows=rows))
    return 0 if all(r['ok'] for r in rows) else 1


if __name__ == '__main__':
    sys.exit(main())
