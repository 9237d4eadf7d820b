r"""A/B: MRdIB's own cost per training batch, older revisions against this one, interleaved
step by step in one process on the same tensors (Baby shapes: 19,445 users, 7,050 items, two
64-d modality tables with gradients, 2,048-triple batches; one thread, or ``--device cuda``). One step is everything
MRdIB adds to a batch: its critic step, its loss terms, their backward into the tables and
both optimiser steps. Medians over ``--steps`` steps each; the order of the versions rotates
every step, so machine load affects all alike, and the ratios are measured in one run.

An older revision is imported as a renamed package, e.g. for commit 89f3f67:

    mkdir -p /tmp/oldpkg && git archive 89f3f67 mrdib_pyg | tar -x -C /tmp/oldpkg
    mv /tmp/oldpkg/mrdib_pyg /tmp/oldpkg/mrdib_pyg_old
    grep -rl mrdib_pyg /tmp/oldpkg/mrdib_pyg_old | xargs sed -i 's/mrdib_pyg\b/mrdib_pyg_old/g'
    python benchmarks/bench_mrdib_cost_ab.py --version filing=/tmp/oldpkg:mrdib_pyg_old \
        --out mrdib_cost_ab.json

Several ``--version LABEL=DIR:PACKAGE`` may be given; the checkout's own ``mrdib_pyg`` is
always measured, as ``current``.
"""
import argparse
import importlib
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, mrdib_step, print_table, write_json  # noqa: E402


def load(package: str):
    mrdib = importlib.import_module(f'{package}.nn.mrdib')
    output = importlib.import_module(f'{package}.nn.output')
    return mrdib.MRdIB, output.BPRBatch, output.ModalityOutput, output.RecOutput


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--version', action='append', default=[], metavar='LABEL=DIR:PACKAGE')
    p.add_argument('--steps', type=int, default=55)
    p.add_argument('--warmup', type=int, default=5)
    p.add_argument('--threads', type=int, default=1)
    p.add_argument('--device', default='cpu', help="'cuda' times the step on the GPU")
    p.add_argument('--out', default='mrdib_cost_ab.json')
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    versions = {'current': load('mrdib_pyg')}
    for spec in args.version:
        label, _, where = spec.partition('=')
        folder, _, package = where.rpartition(':')
        sys.path.insert(0, folder)
        versions[label] = load(package)

    torch.manual_seed(0)
    U, I, d, B = 19445, 7050, 64, 2048
    tables = {m: torch.randn(I, d, device=dev, requires_grad=True) for m in ('text', 'image')}
    theta = torch.randn(U, d, device=dev, requires_grad=True)
    runs = {}
    for label, (MRdIB, Batch, MO, RO) in versions.items():
        out = RO(user=torch.randn(U, 2 * d, device=dev), item=torch.randn(I, 2 * d, device=dev),
                 modalities={m: MO(t) for m, t in tables.items()}, modality_user=theta)
        module = MRdIB.from_output(out).to(dev)
        runs[label] = dict(module=module, out=out, Batch=Batch,
                           main=torch.optim.Adam(list(module.main_parameters()), lr=1e-3),
                           critic=torch.optim.Adam(module.critic_parameters(), lr=1e-3))

    def step(run, users, pos, neg):
        return sum(mrdib_step(run['module'], run['out'], run['Batch'](users, pos, neg),
                              run['main'], run['critic'], (*tables.values(), theta), dev))

    labels = list(runs)
    times = {label: [] for label in labels}
    for i in range(args.warmup + args.steps):
        batch = tuple(torch.randint(0, n, (B,), device=dev) for n in (U, I, I))
        k = i % len(labels)
        for label in labels[k:] + labels[:k]:
            t = step(runs[label], *batch)
            if i >= args.warmup:
                times[label].append(t)
    med = {label: 1e3 * statistics.median(v) for label, v in times.items()}
    rows = [{'version': label, 'median ms': med[label],
             'current / version': med['current'] / med[label]} for label in labels]
    print_table(rows, list(rows[0]))
    write_json(args.out, dict(args=vars(args), machine=machine(), median_ms=med,
                              ratio_current_over={k: med['current'] / v for k, v in med.items()},
                              steps=args.steps, threads=args.threads, times_ms={
                                  k: [1e3 * t for t in v] for k, v in times.items()}))


if __name__ == '__main__':
    main()
