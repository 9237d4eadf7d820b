r"""MRdIB's own cost per training batch, on Baby shapes, apart from any backbone.

A VBPR-like output of the Amazon Baby sizes (19,445 users, 7,050 items, two 64-d modality
tables that require gradients, as the backbone's would) and random BPR batches of 2,048
triples. One measured step is everything MRdIB adds to a batch: its critic step(s) with the
critic optimiser, its loss terms, and their backward pass into the modality tables. The
median over ``--steps`` steps (after ``--warmup``) is reported, with the critic step and the
loss+backward timed apart. ``--profile N`` profiles N more steps and reports how much of the
operators' self time is matrix products (a floor that only fewer FLOPs can lower) and how many
operator calls a step makes.

The script runs on whichever version of the library is importable, so the cost before and
after a change is measured by running it on both checkouts in one session, alternately:

    python benchmarks/bench_mrdib_cost.py --threads 1 --label after
    (cd OLD_CHECKOUT && python /path/to/bench_mrdib_cost.py --threads 1 --label before)
"""
import argparse
import statistics
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import baby_shaped_output, machine, mrdib_step, print_table, write_json  # noqa: E402

from mrdib_pyg.nn.mrdib import MRdIB  # noqa: E402
from mrdib_pyg.nn.output import BPRBatch  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--users', type=int, default=19445)
    p.add_argument('--items', type=int, default=7050)
    p.add_argument('--dim', type=int, default=64)
    p.add_argument('--batch', type=int, default=2048)
    p.add_argument('--steps', type=int, default=40)
    p.add_argument('--warmup', type=int, default=5)
    p.add_argument('--threads', type=int, default=1)
    p.add_argument('--label', default='current')
    p.add_argument('--profile', type=int, default=0, metavar='STEPS',
                   help='also profile this many steps: matrix products vs the rest')
    p.add_argument('--out', default=None, help='JSON file name under benchmarks/results')
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    tables, theta, out = baby_shaped_output(args.users, args.items, args.dim)
    mrdib = MRdIB.from_output(out)
    main_opt = torch.optim.Adam(list(mrdib.main_parameters()), lr=1e-3)
    critic_opt = torch.optim.Adam(mrdib.critic_parameters(), lr=1e-3)
    critic_s, loss_s, total_s = [], [], []

    def step():
        batch = BPRBatch(torch.randint(0, args.users, (args.batch,)),
                         torch.randint(0, args.items, (args.batch,)),
                         torch.randint(0, args.items, (args.batch,)))
        critic, rest = mrdib_step(mrdib, out, batch, main_opt, critic_opt,
                                  (*tables.values(), theta))
        return critic, rest, critic + rest

    for i in range(args.warmup + args.steps):
        times = step()
        if i >= args.warmup:
            critic_s.append(times[0])
            loss_s.append(times[1])
            total_s.append(times[2])
    profiled = None
    if args.profile:
        # the share of matrix products in the operators' self time: the part of a step that
        # only fewer FLOPs (or a faster GEMM) can shorten; the rest is element-wise work and
        # per-operator overhead
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(args.profile):
                step()
        events = prof.key_averages()
        self_us = sum(e.self_cpu_time_total for e in events)
        matmul_us = sum(e.self_cpu_time_total for e in events
                        if e.key in ('aten::mm', 'aten::addmm', 'aten::bmm'))
        profiled = {'steps': args.profile,
                    'matrix products ms / step': 1e-3 * matmul_us / args.profile,
                    'all operators ms / step': 1e-3 * self_us / args.profile,
                    'matrix share': matmul_us / self_us,
                    'operator calls / step': sum(e.count for e in events) / args.profile}
        print_table([profiled], list(profiled))
    row = {'label': args.label, 'threads': args.threads,
           'critic step ms': 1e3 * statistics.median(critic_s),
           'loss+backward ms': 1e3 * statistics.median(loss_s),
           'total ms': 1e3 * statistics.median(total_s)}
    print_table([row], list(row))
    write_json(args.out or f'mrdib_cost_{args.label}_t{args.threads}.json',
               dict(args=vars(args), machine=machine(), result=row,
                    total_ms_all=[1e3 * s for s in total_s], profile=profiled))


if __name__ == '__main__':
    main()
