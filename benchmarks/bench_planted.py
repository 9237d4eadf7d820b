r"""Issue 3's planted-factor experiment: a backbone (VBPR by default, ``--model``) with and
without MRdIB (and its ablations) on SyntheticMM, whose image and text features carry known
shared, unique and synergistic factors plus nuisance noise.

For every (variant, seed) run, trained by the library's :class:`Trainer` with early stopping on
validation Recall@20, the script records at the best validation epoch:

* test Recall@20 / NDCG@20;
* held-out linear-probe R^2 (``mrdib_pyg.analysis.linear_probe_r2``; probes fitted on 70 % of the
  items, scored on the other 30 %) of each planted factor group from
  (a) the backbone's per-modality representation x_m = W_m f_m (``out.modalities[m].item``),
  for the bare run and for the MRdIB-trained backbone, and
  (b) MRdIB's z_m (posterior means, ``MRdIB.encode``) — the same modality with vs without MRdIB;
* probe R^2 of every group from the item table the backbone RANKS with (``out.item``): on a
  backbone whose scorer is not additive (e.g. MGCN's attention fusion) this is where a
  synergy effect of MRdIB would show;
* for MRdIB runs, the synergy product a*b probed from MRdIB's fused head
  ``fusion([mu_v || mu_t])`` against from ``[mu_v || mu_t]`` itself (does the non-linear head
  carry what no linear map of the two posteriors does?);
* I(x_v; x_t) and, for MRdIB runs, I(z_v; z_t), each estimated by a FRESH MINE critic trained on
  the frozen representations of the 70 % probe-training items and evaluated on the 30 % held-out
  items (``mrdib_pyg.analysis.estimate_mi``), never by MRdIB's training critic.

The dataset is fixed (its own seed, ``--data-seed``); the run seeds vary the model
initialisation, the BPR sampling and the encoders' noise. Alphas are the paper's defaults
(alpha1=0.005, alpha2=0.05, alpha3=0.005) unless given; nothing is chosen on test.
Writes ``benchmarks/results/planted.json`` (every per-seed number, config, machine) and
``benchmarks/results/planted_tsne.png`` (t-SNE of the modality representations of the first
seed, bare vs MRdIB).

    python benchmarks/bench_planted.py            # full measurement (~20 min on 1 CPU thread)
    python benchmarks/bench_planted.py --quick    # smoke run, ~1 min
"""
import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, machine, write_json  # noqa: E402

from mrdib_pyg.analysis import estimate_mi, linear_probe_r2, split_rows, tsne_2d  # noqa: E402
from mrdib_pyg.data.synthetic import SyntheticMM  # noqa: E402
from mrdib_pyg.train.config import TrainConfig  # noqa: E402
from mrdib_pyg.train import (  # noqa: E402
    Trainer,
    build_model,
    build_mrdib,
    seed_everything,
)

VARIANTS = ['bare', 'full', 'wo_mib', 'wo_redundant', 'wo_unique', 'mib_only']
GROUPS = ['shared', 'image_unique', 'text_unique', 'synergy', 'synergy_part', 'nuisance']


def probe_targets(data, m: str) -> Dict[str, torch.Tensor]:
    r"""The planted factor groups probed from modality :obj:`m`'s representation.
    ``synergy`` is the product a*b (needs both modalities); ``synergy_part`` is the modality's
    own half (a for image, b for text); ``nuisance`` is the modality's own nuisance."""
    item = data['item']
    return {'shared': item.shared_factors, 'image_unique': item.image_factors,
            'text_unique': item.text_factors, 'synergy': item.synergy_factors,
            'synergy_part': item.synergy_image if m == 'image' else item.synergy_text,
            'nuisance': data[m].nuisance}


def probe_all(reps: Dict[str, torch.Tensor], data, tr, te, ridge: float) -> Dict[str, Dict]:
    res = {}
    for m, x in reps.items():
        res[m] = {g: float(linear_probe_r2(x, y, tr, te, ridge=ridge).mean())
                  for g, y in probe_targets(data, m).items()}
    return res


def item_targets(data) -> Dict[str, torch.Tensor]:
    r"""The planted groups probed from the ranking item table (both modalities' parts)."""
    item = data['item']
    return {'shared': item.shared_factors, 'image_unique': item.image_factors,
            'text_unique': item.text_factors, 'synergy': item.synergy_factors,
            'synergy_parts': torch.cat([item.synergy_image, item.synergy_text], 1),
            'nuisance': torch.cat([data['image'].nuisance, data['text'].nuisance], 1)}


ITEM_GROUPS = ['shared', 'image_unique', 'text_unique', 'synergy', 'synergy_parts', 'nuisance']


def one_run(data, variant: str, seed: int, args, tr, te, keep_reps: bool) -> Dict:
    cfg = TrainConfig.preset(args.model, 'synthetic').update(dict(
        model=args.model, epochs=args.epochs, patience=args.patience, lr=args.lr,
        batch_size=args.batch_size, seed=seed, device=args.device, progress=False,
        mrdib=variant != 'bare', ablation='full' if variant == 'bare' else variant,
        alpha1=args.alpha1, alpha2=args.alpha2, alpha3=args.alpha3))
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        cfg.out_dir = tmp
        seed_everything(cfg.seed)
        model = build_model(cfg, data)
        mrdib = build_mrdib(cfg, model) if cfg.mrdib else None
        trainer = Trainer(model, data, cfg, mrdib)
        result = trainer.fit()
        trainer.load_best(str(Path(tmp) / 'best.pt'))
    train_s = time.perf_counter() - t0
    model.eval()
    if mrdib is not None:
        mrdib.eval()
    with torch.no_grad():
        out = model()
        x = {m: out.modalities[m].item.detach().cpu() for m in ('image', 'text')}
        ranking_items = out.item.detach().cpu()
        z = ({m: v.detach().cpu() for m, v in mrdib.encode(out).items()}
             if mrdib is not None else None)
        # posterior standard deviations: I(z_v; z_t) on samples, what the redundant term sees
        std = ({m: (0.5 * mrdib.encoder(m)(out.modalities[m].item)[1]).exp().cpu()
                if mrdib.samples else torch.zeros_like(z[m]) for m in ('image', 'text')}
               if mrdib is not None else None)
    t1 = time.perf_counter()
    rec = {'variant': variant, 'seed': seed, 'best_epoch': result.best_epoch,
           'epochs_run': result.timings['epochs_run'],
           'train_epoch_median_s': result.timings['train_epoch_median_s'],
           'train_wall_s': train_s,
           'valid_Recall@20': result.best_valid['Recall@20'],
           'test_Recall@20': result.test_at_best['Recall@20'],
           'test_NDCG@20': result.test_at_best['NDCG@20'],
           'test_at_best': result.test_at_best,
           'probe_x': probe_all(x, data, tr, te, args.ridge),
           'probe_item': {g: float(linear_probe_r2(ranking_items, y, tr, te,
                                                   ridge=args.ridge).mean())
                          for g, y in item_targets(data).items()},
           'mi_x': estimate_mi(x['image'], x['text'], tr, te, steps=args.mi_steps,
                               seed=seed)}
    if z is not None:
        rec['probe_z'] = probe_all(z, data, tr, te, args.ridge)
        with torch.no_grad():
            both = torch.cat([z[m] for m in mrdib.modalities], dim=-1)
            fused = mrdib.fusion(both.to(next(mrdib.parameters()).device)).cpu()
        target = data['item'].synergy_factors
        rec['probe_synergy'] = {
            'fused_head': float(linear_probe_r2(fused, target, tr, te, ridge=args.ridge).mean()),
            'concat_mu': float(linear_probe_r2(both, target, tr, te, ridge=args.ridge).mean())}
        rec['mi_z'] = estimate_mi(z['image'], z['text'], tr, te, steps=args.mi_steps,
                                  seed=seed)
        rec['mi_z_samples'] = estimate_mi(z['image'], z['text'], tr, te, steps=args.mi_steps,
                                          seed=seed, std_a=std['image'], std_b=std['text'])
    rec['analysis_wall_s'] = time.perf_counter() - t1
    if keep_reps:
        rec['_reps'] = {'x': x, 'z': z}
    return rec


def mean_std(values: List[float]):
    t = torch.tensor(values, dtype=torch.float64)
    return float(t.mean()), float(t.std(unbiased=True)) if t.numel() > 1 else 0.0


def fmt(values: List[float], digits: int = 4) -> str:
    m, s = mean_std(values)
    return f'{m:.{digits}f}±{s:.{digits}f}'


def print_rows(header: List[str], rows: List[List[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    print('  '.join(h.ljust(w) for h, w in zip(header, widths)))
    for r in rows:
        print('  '.join(c.ljust(w) for c, w in zip(r, widths)))


def summarise(runs: List[Dict], variants: List[str]) -> Dict:
    by = {v: [r for r in runs if r['variant'] == v] for v in variants}
    summary = {}
    print('\n== Ranking (test at best validation epoch) and fresh-critic MI on held-out items '
          '(nats), mean±std over seeds ==')
    rows = []
    for v in variants:
        rs = by[v]
        s = {k: mean_std([r[k] for r in rs]) for k in
             ('test_Recall@20', 'test_NDCG@20', 'valid_Recall@20', 'mi_x', 'best_epoch',
              'train_epoch_median_s')}
        if 'mi_z' in rs[0]:
            s['mi_z'] = mean_std([r['mi_z'] for r in rs])
            s['mi_z_samples'] = mean_std([r['mi_z_samples'] for r in rs])
        summary[v] = s
        rows.append([v, str(len(rs)), fmt([r['test_Recall@20'] for r in rs]),
                     fmt([r['test_NDCG@20'] for r in rs]),
                     fmt([r['valid_Recall@20'] for r in rs]),
                     fmt([r['mi_x'] for r in rs], 3),
                     fmt([r['mi_z'] for r in rs], 3) if 'mi_z' in rs[0] else '-',
                     fmt([r['mi_z_samples'] for r in rs], 3) if 'mi_z' in rs[0] else '-',
                     fmt([r['best_epoch'] for r in rs], 1),
                     fmt([r['train_epoch_median_s'] for r in rs], 2)])
    print_rows(['variant', 'seeds', 'Recall@20', 'NDCG@20', 'valid R@20', 'I(x_v;x_t)',
                'I(mu_v;mu_t)', 'I(z_v;z_t) samples', 'best ep', 's/epoch'], rows)

    if 'bare' in by:
        print('\n== Difference to the bare backbone (Δ of means; "inside spread" when |Δ| <= '
              'std_bare + std_variant) ==')
        rows = []
        for v in variants:
            if v == 'bare':
                continue
            cells = [v]
            for k in ('test_Recall@20', 'test_NDCG@20', 'mi_x'):
                (mb, sb), (mv, sv) = summary['bare'][k], summary[v][k]
                d = mv - mb
                verdict = 'inside spread' if abs(d) <= sb + sv else (
                    'gain' if d > 0 else 'loss')
                if k == 'mi_x':
                    verdict = verdict.replace('gain', 'higher').replace('loss', 'lower')
                cells.append(f'{d:+.4f} ({100 * d / abs(mb) if mb else 0:+.1f}%) {verdict}')
                summary[v][f'delta_{k}'] = {'delta': d, 'verdict': verdict}
            rows.append(cells)
        print_rows(['variant', 'ΔRecall@20', 'ΔNDCG@20', 'ΔI(x_v;x_t)'], rows)

    for m in ('image', 'text'):
        print(f'\n== Held-out linear-probe R² from the {m} representation, mean±std over seeds '
              f'(x = backbone W_m f_m, z = MRdIB posterior mean; nuisance/synergy_part = '
              f'{m}\'s own) ==')
        rows = []
        for v in variants:
            for kind in ('x', 'z'):
                key = f'probe_{kind}'
                if key not in by[v][0]:
                    continue
                rows.append([v, f'{kind}_{m[0]}'] + [
                    fmt([r[key][m][g] for r in by[v]], 3) for g in GROUPS])
                summary[v][f'{key}_{m}'] = {g: mean_std([r[key][m][g] for r in by[v]])
                                            for g in GROUPS}
        print_rows(['variant', 'rep'] + GROUPS, rows)

    print('\n== Held-out linear-probe R² from the item table the backbone ranks with '
          '(out.item), mean±std over seeds ==')
    rows = []
    for v in variants:
        rows.append([v] + [fmt([r['probe_item'][g] for r in by[v]], 3) for g in ITEM_GROUPS])
        summary[v]['probe_item'] = {g: mean_std([r['probe_item'][g] for r in by[v]])
                                    for g in ITEM_GROUPS}
    print_rows(['variant'] + ITEM_GROUPS, rows)
    rows = []
    for v in variants:
        if 'probe_synergy' in by[v][0]:
            rows.append([v] + [fmt([r['probe_synergy'][k] for r in by[v]], 3)
                               for k in ('fused_head', 'concat_mu')])
            summary[v]['probe_synergy'] = {k: mean_std([r['probe_synergy'][k] for r in by[v]])
                                           for k in ('fused_head', 'concat_mu')}
    if rows:
        print('\n== R² of the planted synergy product a*b from MRdIB\'s fused head vs from '
              '[mu_v || mu_t] ==')
        print_rows(['variant', 'fusion([mu_v||mu_t])', '[mu_v||mu_t]'], rows)
    return summary


def tsne_figure(reps_bare, reps_full, path: Path, n_items: int, seed: int = 0,
                model: str = 'VBPR') -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(reps_bare['x']['image'].size(0), generator=g)[:n_items]
    panels = [(f'bare {model}: x_v, x_t', reps_bare['x']),
              (f'{model}+MRdIB backbone: x_v, x_t', reps_full['x']),
              (f'{model}+MRdIB: z_v, z_t (posterior means)', reps_full['z'])]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.8))
    for ax, (title, reps) in zip(axes, panels):
        both = torch.cat([reps['image'][idx], reps['text'][idx]])
        emb = tsne_2d(both, seed=seed)
        n = idx.numel()
        ax.scatter(emb[:n, 0], emb[:n, 1], s=5, alpha=.6, label='image', c='tab:blue')
        ax.scatter(emb[n:, 0], emb[n:, 1], s=5, alpha=.6, label='text', c='tab:orange')
        ax.set_title(title)
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0].legend(markerscale=3)
    fig.suptitle(f't-SNE of per-modality item representations ({n_items} items, run seed '
                 f'{seed})')
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--model', default='vbpr', help='the backbone (default: vbpr)')
    p.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
    p.add_argument('--variants', nargs='+', default=VARIANTS, choices=VARIANTS)
    p.add_argument('--users', type=int, default=2000)
    p.add_argument('--items', type=int, default=1000)
    p.add_argument('--data-seed', type=int, default=0)
    p.add_argument('--epochs', type=int, default=50)
    p.add_argument('--patience', type=int, default=10)
    p.add_argument('--lr', type=float, default=2e-3)
    p.add_argument('--batch-size', type=int, default=2048)
    p.add_argument('--alpha1', type=float, default=0.005)
    p.add_argument('--alpha2', type=float, default=0.05)
    p.add_argument('--alpha3', type=float, default=0.005)
    p.add_argument('--mi-steps', type=int, default=1500)
    p.add_argument('--ridge', type=float, default=1e-2)
    p.add_argument('--tsne-items', type=int, default=500)
    p.add_argument('--threads', type=int, default=1)
    p.add_argument('--device', default='cpu')
    p.add_argument('--out', default='planted.json')
    p.add_argument('--tsne', default='planted_tsne.png')
    p.add_argument('--quick', action='store_true',
                   help='smoke run: 600 users / 300 items, 1 seed, bare + full, 5 epochs')
    args = p.parse_args()
    if args.quick:
        args.users, args.items, args.seeds = 600, 300, [0]
        args.variants = ['bare', 'full']
        args.epochs, args.patience, args.mi_steps, args.tsne_items = 5, 5, 200, 200
        args.out, args.tsne = 'planted_quick.json', 'planted_tsne_quick.png'
    if 'bare' in args.variants:  # bare first: it is the reference
        args.variants = ['bare'] + [v for v in args.variants if v != 'bare']
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    dataset_args = dict(num_users=args.users, num_items=args.items, seed=args.data_seed)
    ds = SyntheticMM(**dataset_args)
    data = ds[0]
    tr, te = split_rows(args.items, 0.3, seed=0)
    print(f'{ds}: {data["user", "rates", "item"].edge_index.size(1)} training interactions; '
          f'probe/MI items: {tr.numel()} fit, {te.numel()} held out', flush=True)
    runs, reps = [], {}
    for seed in args.seeds:
        for v in args.variants:
            keep = seed == args.seeds[0] and v in ('bare', 'full')
            rec = one_run(data, v, seed, args, tr, te, keep)
            if keep:
                reps[v] = rec.pop('_reps')
            runs.append(rec)
            z = f" I(z)={rec['mi_z']:.3f}" if 'mi_z' in rec else ''
            print(f"[{time.perf_counter() - t_start:6.0f}s] seed {seed} {v:13s} best ep "
                  f"{rec['best_epoch']:3d}/{rec['epochs_run']:3d}  test R@20 "
                  f"{rec['test_Recall@20']:.4f} N@20 {rec['test_NDCG@20']:.4f}  "
                  f"I(x)={rec['mi_x']:.3f}{z}  ({rec['train_wall_s']:.0f}s train, "
                  f"{rec['analysis_wall_s']:.0f}s analysis)", flush=True)
    summary = summarise(runs, args.variants)
    if 'bare' in reps and 'full' in reps:
        tsne_figure(reps['bare'], reps['full'], RESULTS / args.tsne, args.tsne_items,
                    seed=args.seeds[0], model=args.model.upper())
        print(f'\nt-SNE figure: {RESULTS / args.tsne}')
    wall = time.perf_counter() - t_start
    payload = {'experiment': f'planted factors, {args.model} vs {args.model}+MRdIB',
               'dataset': {'name': 'SyntheticMM', **{k: (list(v) if isinstance(v, tuple)
                                                         else v)
                                                     for k, v in ds.params.items()},
                           'num_train': int(data['user', 'rates', 'item'].edge_index.size(1))},
               'training': {'model': args.model, 'epochs': args.epochs,
                            'patience': args.patience, 'lr': args.lr,
                            'batch_size': args.batch_size, 'valid_metric': 'Recall@20',
                            'alpha1': args.alpha1, 'alpha2': args.alpha2,
                            'alpha3': args.alpha3, 'seeds': args.seeds,
                            'seeds_vary': 'model init, BPR sampling, encoder noise; the '
                                          'dataset is fixed'},
               'analysis': {'probe_items_fit': tr.numel(), 'probe_items_held_out': te.numel(),
                            'ridge': args.ridge, 'mi_steps': args.mi_steps,
                            'mi_critic': 'fresh MINECritic (width 128), EMA-corrected ascent '
                                         'on fit items, DV on all held-out pairs',
                            'spread_rule': 'inside spread if |Δmean| <= std_a + std_b'},
               'args': vars(args), 'machine': machine(), 'wall_s': wall,
               'summary': summary, 'runs': runs}
    write_json(args.out, payload)
    print(f'\nwrote {RESULTS / args.out}; wall {wall:.0f} s')


if __name__ == '__main__':
    main()
