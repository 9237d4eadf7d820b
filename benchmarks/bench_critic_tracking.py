r"""Does MRdIB's training critic keep up? Issue 7's tracking experiment.

On planted-factor data (SyntheticMM: image and text share known factors, so I(z_v; z_t) is
far from zero unless the redundant term removes it), VBPR + MRdIB is trained for a fixed
number of epochs (no early stopping) under several critic settings. After every
``--probe-every`` epochs the trainer's probe (``MRdIBPlugin.epoch_end``) trains a FRESH
critic on half of the items and evaluates it on the other half
(``mi_fresh``; on one posterior sample per item, the distribution the training critic sees),
beside the training critic's value on the same held-out samples (``mi_critic``). A critic that keeps up reads close to the fresh one; a lagging critic reads
far below it, and the encoders then descend a wrong gradient. A run with the redundant term
off (``wo_redundant``) shows how much the term lowers I(z_v; z_t).

Writes ``benchmarks/results/critic_tracking.json`` and ``docs/critic_tracking.png``.

    python benchmarks/bench_critic_tracking.py            # ~10 min on 1 thread
    python benchmarks/bench_critic_tracking.py --quick    # smoke run
"""
import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, machine, print_table, write_json  # noqa: E402

from mrdib_pyg.data.synthetic import SyntheticMM  # noqa: E402
from mrdib_pyg.train.config import TrainConfig  # noqa: E402
from mrdib_pyg.train import build_trainer  # noqa: E402

#: name -> (ablation, critic_steps, critic_lr, critic_warmup)
SETTINGS = {
    'critic 1 step, lr 1e-3 (default)': ('full', 1, 1e-3, 0),
    'critic 5 steps, lr 1e-3': ('full', 5, 1e-3, 0),
    'critic 5 steps, lr 5e-3, warm-up 50': ('full', 5, 5e-3, 50),
    'no redundant term': ('wo_redundant', 5, 5e-3, 50),
}


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--users', type=int, default=2000)
    p.add_argument('--items', type=int, default=1000)
    p.add_argument('--epochs', type=int, default=30)
    p.add_argument('--probe-every', type=int, default=3)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--threads', type=int, default=1)
    p.add_argument('--settings', nargs='+', default=list(SETTINGS), choices=list(SETTINGS))
    p.add_argument('--quick', action='store_true')
    args = p.parse_args()
    if args.quick:
        args.users, args.items, args.epochs, args.probe_every = 400, 200, 4, 2
    torch.set_num_threads(args.threads)
    data = SyntheticMM(num_users=args.users, num_items=args.items, seed=0)[0]
    runs = {}
    for name in args.settings:
        ablation, steps, lr, warmup = SETTINGS[name]
        cfg = TrainConfig().update(dict(
            model='vbpr', mrdib=True, ablation=ablation, critic_steps=steps, critic_lr=lr,
            critic_warmup=warmup, epochs=args.epochs, patience=args.epochs, lr=2e-3,
            seed=args.seed, device='cpu', progress=False, mi_probe_every=args.probe_every))
        t0 = time.perf_counter()
        result = build_trainer(cfg, data).fit()
        probes = [dict(epoch=h['epoch'], **h['diagnostics']) for h in result.history
                  if 'diagnostics' in h]
        runs[name] = dict(config=cfg.to_dict(), probes=probes, seconds=time.perf_counter() - t0,
                          test_recall20=result.test_at_best.get('Recall@20'),
                          best_epoch=result.best_epoch)
        last = probes[-1]
        print(f"{name}: final I_fresh {last['mi_fresh']:.3f}, critic "
              f"{last.get('mi_critic', float('nan')):.3f} "
              f"({runs[name]['seconds']:.0f} s)", flush=True)

    rows = []
    for name, run in runs.items():
        gaps = [p['mi_fresh'] - p['mi_critic'] for p in run['probes'] if 'mi_critic' in p]
        rows.append({'setting': name, 'final I(mu) fresh': run['probes'][-1]['mi_fresh_mu'],
                     'final I fresh': run['probes'][-1]['mi_fresh'],
                     'final I critic': run['probes'][-1].get('mi_critic'),
                     'mean gap fresh-critic': sum(gaps) / len(gaps) if gaps else None,
                     'test R@20': run['test_recall20']})
    print_table(rows, list(rows[0]))
    write_json('critic_tracking.json', dict(args=vars(args), machine=machine(), runs=runs,
                                            table=rows))
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except ImportError:
        print('matplotlib missing: no plot')
        return
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for k, (name, run) in enumerate(runs.items()):
        color = f'C{k}'
        ep = [p['epoch'] for p in run['probes']]
        ax.plot(ep, [p['mi_fresh'] for p in run['probes']], '-o', color=color,
                label=f'{name}: fresh critic')
        if 'mi_critic' in run['probes'][0]:
            ax.plot(ep, [p['mi_critic'] for p in run['probes']], '--x', color=color,
                    label=f'{name}: training critic')
    ax.set_xlabel('epoch')
    ax.set_ylabel('I(z_v; z_t) estimate, nats (held-out items)')
    ax.set_title('MRdIB critic tracking on planted-factor data (VBPR)')
    ax.legend(fontsize=7)
    fig.tight_layout()
    out = REPO / 'docs' / 'critic_tracking.png'
    fig.savefig(out, dpi=110)
    print(f'wrote {out.relative_to(REPO)}')


if __name__ == '__main__':
    main()
