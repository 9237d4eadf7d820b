r"""Where one training step of a backbone spends its time: forward, loss, backward and the
optimiser step (medians over ``--steps`` steps of 2,048 BPR triples), then the operators
with the most self time and their input shapes (``torch.profiler``), on any MMRec-format
folder read by :class:`~mrdib_pyg.data.AmazonMM` (e.g. the shared Baby split with
generated features written by the side-by-side tool).

    python benchmarks/bench_step_profile.py --model mgcn --root /tmp/mm --name baby
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, print_table, write_json  # noqa: E402

from mrdib_pyg.data import AmazonMM, BPRBatch  # noqa: E402
from mrdib_pyg.data.schema import ITEM, RATES  # noqa: E402
from mrdib_pyg.train import TrainConfig, build_model, seed_everything  # noqa: E402
from mrdib_pyg.train.trainer import make_adam  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--model', default='mgcn')
    p.add_argument('--root', required=True, help='data root: ROOT/NAME/raw in MMRec format')
    p.add_argument('--name', default='baby')
    p.add_argument('--steps', type=int, default=10)
    p.add_argument('--batch-size', type=int, default=2048)
    p.add_argument('--threads', type=int, default=1)
    p.add_argument('--top', type=int, default=15)
    p.add_argument('--out', default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    data = AmazonMM(args.root, args.name)[0]
    cfg = TrainConfig.preset(args.model, args.name).update(
        dict(model=args.model, dataset=args.name, root=args.root))
    seed_everything(0)
    model = build_model(cfg, data)
    model.pre_epoch(0)
    opt = make_adam([q for q in model.parameters() if q.requires_grad], cfg.lr, 0.0)
    edges = data[RATES].edge_index
    g = torch.Generator().manual_seed(0)

    def step():
        pick = torch.randint(edges.size(1), (args.batch_size, ), generator=g)
        batch = BPRBatch(edges[0, pick], edges[1, pick],
                         torch.randint(data[ITEM].num_nodes, (args.batch_size, ), generator=g))
        t = [time.perf_counter()]
        out, batch = model.forward_batch(batch)
        t.append(time.perf_counter())
        loss = model.loss(out, batch)
        t.append(time.perf_counter())
        opt.zero_grad()
        loss.backward()
        t.append(time.perf_counter())
        opt.step()
        t.append(time.perf_counter())
        return [1e3 * (b - a) for a, b in zip(t, t[1:])]

    for _ in range(2):  # warm-up
        step()
    parts = [step() for _ in range(args.steps)]
    names = ('forward', 'loss', 'backward', 'optimiser step')
    medians = {n: statistics.median(p[i] for p in parts) for i, n in enumerate(names)}
    medians['total'] = statistics.median(sum(p) for p in parts)
    print(f'{args.model} on {args.name}, {args.threads} thread(s), median ms per step of '
          f'{args.batch_size} triples over {args.steps} steps:')
    print_table([{k: f'{v:.1f}' for k, v in medians.items()}], list(medians))
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(3):
            step()
    rows = []
    for e in sorted(prof.key_averages(group_by_input_shape=True),
                    key=lambda e: -e.self_cpu_time_total)[:args.top]:
        rows.append({'op': e.key, 'ms per step': round(e.self_cpu_time_total / 3e3, 1),
                     'calls per step': e.count // 3, 'input shapes': str(e.input_shapes)[:70]})
    print('\noperators by self time (ms per step, mean of 3 profiled steps):')
    print_table(rows, ['op', 'ms per step', 'calls per step', 'input shapes'])
    out = args.out or f'step_profile_{args.model}.json'
    write_json(out, dict(args=vars(args), machine=machine(), median_ms=medians, top_ops=rows))


if __name__ == '__main__':
    main()
