r"""MRdIB's cost: seconds per training epoch and per evaluation pass, VBPR with and without
MRdIB (and replace mode's evaluation cost apart), on the real Amazon Baby interactions with
GENERATED features of the real shapes (4096 image / 384 text).

Epochs of the variants are interleaved (bare, plug-in, replace, bare, ...) so that all see
the same machine load; the table gives medians over --epochs epochs and ratios to the bare
backbone measured in this one run.

    python benchmarks/bench_overhead.py --epochs 5
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import load_baby, machine, print_table, synchronize, write_json  # noqa: E402

from mrdib_pyg.train.config import TrainConfig  # noqa: E402
from mrdib_pyg.train import build_trainer  # noqa: E402


def make(data, model_name, mode, device):
    return build_trainer(TrainConfig().update(dict(
        dataset='baby-shared', model=model_name, progress=False, device=device, seed=0,
        mrdib=mode != 'bare', replace=mode == 'replace')), data)


def main():
    p = argparse.ArgumentParser()
    p.add_argument('--model', default='vbpr')
    p.add_argument('--epochs', type=int, default=5)
    p.add_argument('--threads', type=int, default=None)
    p.add_argument('--device', default='auto')
    p.add_argument('--modes', nargs='+', default=['bare', 'mrdib', 'replace'])
    p.add_argument('--keep-freed-memory', action='store_true',
                   help="raise glibc's mmap/trim thresholds first, as mrdib-train does")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.keep_freed_memory:
        from mrdib_pyg.train.allocator import keep_freed_memory
        print('keep_freed_memory:', keep_freed_memory())
    data = load_baby()
    trainers = {m: make(data, args.model, m, args.device) for m in args.modes}
    train_s = {m: [] for m in args.modes}
    eval_s = {m: [] for m in args.modes}
    for epoch in range(args.epochs):
        for mode, tr in trainers.items():
            synchronize(tr.device)
            t = time.perf_counter()
            tr.train_epoch(epoch)
            synchronize(tr.device)
            train_s[mode].append(time.perf_counter() - t)
            t = time.perf_counter()
            tr.evaluate('val')
            synchronize(tr.device)
            eval_s[mode].append(time.perf_counter() - t)
        print(f'epoch {epoch}: ' + ', '.join(f'{m} {train_s[m][-1]:.2f}s/{eval_s[m][-1]:.2f}s'
                                             for m in args.modes), flush=True)
    rows = []
    base_t, base_e = statistics.median(train_s['bare']), statistics.median(eval_s['bare'])
    for mode in args.modes:
        t, e = statistics.median(train_s[mode]), statistics.median(eval_s[mode])
        rows.append({'variant': mode, 'train_s_per_epoch': t, 'train_vs_bare': t / base_t,
                     'eval_s_per_pass': e, 'eval_vs_bare': e / base_e})
    print(f'\n{args.model} on Amazon Baby (GENERATED features), medians of {args.epochs} '
          f'interleaved epochs, {torch.get_num_threads()} thread(s), {machine()["device"]}')
    print_table(rows, list(rows[0]))
    device = next(iter(trainers.values())).device
    suffix = ('_keepfreed' if args.keep_freed_memory else '') + (
        f'_{device.type}' if device.type != 'cpu' else '')
    write_json(f'overhead_{args.model}_t{torch.get_num_threads()}{suffix}.json', {
        'dataset': 'amazon-baby (shared split), generated features', 'machine': machine(),
        'args': vars(args), 'rows': rows, 'train_s': train_s, 'eval_s': eval_s})


if __name__ == '__main__':
    main()
