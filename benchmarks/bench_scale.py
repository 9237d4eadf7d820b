r"""Issue 11's measurement: does a Clothing-sized dataset fit in 8 GiB? On a GENERATED
MMRec-format folder of Amazon Clothing's shape (39,387 users, 23,033 items, 278,677
interactions, 4096-d image / 384-d text features), each step runs in its own fresh
subprocess and reports its peak resident memory (``ru_maxrss`` of that process, which
includes the Python/PyTorch import) and its wall time:

* ``process``: :class:`AmazonMM` from the raw files (``force_reload=True``);
* ``load``: :class:`AmazonMM` from the processed file (fingerprint check included);
* ``graphs``: the normalised bipartite adjacency, a 10-NN cosine item graph per modality
  and the user-user co-occurrence graph (top-200), as :mod:`mrdib_pyg.data.graphs` builds
  them (no cache);
* ``bprmf``, ``lightgcn``, ``vbpr``, ``freedom``, ``mgcn``, ``mmgcn``, ``dualgnn``,
  ``lattice``, ``grcn``, ``bm3``, ``lgmrec``, ``soil`` and each multimodal one
  ``+mrdib``: :func:`build_trainer` (the model's preset) on the processed
  dataset (batch size 2048), :meth:`Trainer.train_epoch` over the first ``--batches``
  batches of the trainer's own sampler (the per-batch work is the trainer's), and one full
  validation pass (:meth:`Trainer.evaluate`).

The interactions and features are GENERATED (seeded): item popularity is lognormal, every
user has >= 5 interactions (5-core-like), each user's items are split about 70/15/15 into
train/valid/test with >= 1 of each; image features are the ReLU of a low-rank Gaussian
cluster mixture with heavy-tailed (lognormal) row scales, text features a low-rank
Gaussian mixture with unit rows. Nothing here is real Clothing data.

    OMP_NUM_THREADS=1 python benchmarks/bench_scale.py --quick --out scale_quick.json
    OMP_NUM_THREADS=1 timeout 2400 python benchmarks/bench_scale.py

The parent process imports neither NumPy nor PyTorch until every step has run, so a child's
``ru_maxrss`` (which Linux carries across ``execve``) is the child's own.
"""
import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
GIB = 1024 ** 3
LIMIT_GIB = 8.0

#: Amazon Clothing after MMRec's preprocessing (mrdib_pyg.data.amazon_mm.KNOWN_COUNTS).
FULL_SHAPE = dict(users=39387, items=23033, interactions=278677, image_dim=4096, text_dim=384)
QUICK_SHAPE = dict(users=3939, items=2303, interactions=27868, image_dim=4096, text_dim=384)
BACKBONES = ('bprmf', 'lightgcn', 'vbpr', 'vbpr+mrdib', 'freedom', 'freedom+mrdib', 'mgcn',
             'mgcn+mrdib', 'mmgcn', 'mmgcn+mrdib', 'dualgnn', 'dualgnn+mrdib', 'lattice',
             'lattice+mrdib', 'grcn', 'grcn+mrdib', 'bm3', 'bm3+mrdib', 'lgmrec',
             'lgmrec+mrdib', 'soil', 'soil+mrdib')
STEPS = ('process', 'load', 'graphs') + BACKBONES
RESULT = 'RESULT_JSON '


# ---------------------------------------------------------------------------------------
# Measurement helpers (children)
# ---------------------------------------------------------------------------------------
def maxrss_bytes() -> int:
    r"""Peak resident set of this process so far (``ru_maxrss`` is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def vm_hwm_bytes() -> int:
    r"""``VmHWM`` of /proc/self/status (this process image's own peak), or -1."""
    try:
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith('VmHWM:'):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return -1


# ---------------------------------------------------------------------------------------
# Generation (a child process)
# ---------------------------------------------------------------------------------------
def generate(raw: Path, name: str, shape: dict, seed: int) -> dict:
    r"""Write ``name.inter``, ``image_feat.npy`` and ``text_feat.npy`` into :obj:`raw`;
    returns the statistics of what was written."""
    import numpy as np
    rng = np.random.default_rng(seed)
    U, I, E = shape['users'], shape['items'], shape['interactions']
    min_deg = 5
    if E < min_deg * U or E < I:
        raise ValueError(f'{E} interactions cannot give {U} users >= {min_deg} each')

    # User degrees: 5 + a heavy-tailed extra (lognormal), scaled to the exact total.
    extra = rng.lognormal(0.0, 1.1, U)
    extra = np.floor(extra / extra.sum() * (E - min_deg * U)).astype(np.int64)
    short = E - min_deg * U - int(extra.sum())
    extra[rng.choice(U, short, replace=False, p=None)] += 1
    deg = min_deg + extra
    max_deg = I // 2
    while (deg > max_deg).any():  # never more than half the catalogue
        over = int((deg - max_deg).clip(min=0).sum())
        deg = np.minimum(deg, max_deg)
        deg[rng.choice(np.flatnonzero(deg < max_deg), over)] += 1
    assert deg.sum() == E

    # Item popularity: lognormal weights (a long tail, no item in most users' lists).
    pop = rng.lognormal(0.0, 1.2, I)
    pop /= pop.sum()
    # One slot per interaction; the first I slots (random users) cover every item once,
    # the rest draw items by popularity. Repeated (user, item) pairs are redrawn.
    users = np.repeat(np.arange(U), deg)
    rng.shuffle(users)
    items = np.empty(E, dtype=np.int64)
    items[:I] = rng.permutation(I)
    items[I:] = rng.choice(I, E - I, p=pop)
    for _ in range(1000):
        keys = users * I + items
        _, first = np.unique(keys, return_index=True)
        dup = np.ones(E, dtype=bool)
        dup[first] = False
        # keep-first: the covering slots (distinct items) come first, never redrawn
        if not dup.any():
            break
        items[dup] = rng.choice(I, int(dup.sum()), p=pop)
    else:
        raise RuntimeError('could not make the interactions unique')
    order = np.lexsort((items, users))
    users, items = users[order], items[order]

    # Per-user split about 70/15/15 (stochastic rounding), >= 1 train, valid and test each.
    start = np.concatenate([[0], np.cumsum(deg)[:-1]])
    n_val = np.maximum(1, np.floor(0.15 * deg + rng.random(U))).astype(np.int64)
    n_test = np.maximum(1, np.floor(0.15 * deg + rng.random(U))).astype(np.int64)
    pos = np.arange(E) - np.repeat(start, deg)  # rank within the user's block ...
    rank = np.empty(E, dtype=np.int64)  # ... made random: a random permutation per user
    perm_keys = np.repeat(np.arange(U), deg) * 2.0 + rng.random(E)
    rank[np.argsort(perm_keys, kind='stable')] = pos
    label = np.zeros(E, dtype=np.int64)
    label[rank < np.repeat(n_val, deg)] = 1
    label[(rank >= np.repeat(n_val, deg)) & (rank < np.repeat(n_val + n_test, deg))] = 2
    assert (deg - n_val - n_test >= 1).all()

    raw.mkdir(parents=True, exist_ok=True)
    with open(raw / f'{name}.inter', 'w') as f:
        f.write('userID\titemID\tx_label\n')
        np.savetxt(f, np.stack([users, items, label], 1), fmt='%d', delimiter='\t')

    # Features: K item clusters in a rank-r latent space, mapped to each modality.
    K, r = 64, 48
    cluster = rng.integers(0, K, I)
    centers = rng.normal(0, 1, (K, r))
    latent = centers[cluster] + 0.6 * rng.normal(0, 1, (I, r))
    chunk = 2048
    d_img, d_txt = shape['image_dim'], shape['text_dim']
    proj = rng.normal(0, 1 / np.sqrt(r), (r, d_img)).astype(np.float32)
    scale = rng.lognormal(0.0, 0.7, I).astype(np.float32)  # heavy-tailed row norms
    img = np.lib.format.open_memmap(raw / 'image_feat.npy', 'w+', np.float32, (I, d_img))
    for s in range(0, I, chunk):
        e = min(s + chunk, I)
        z = latent[s:e].astype(np.float32) @ proj
        z += 0.5 * rng.standard_normal((e - s, d_img), dtype=np.float32) - 0.3
        np.maximum(z, 0, out=z)
        img[s:e] = z * scale[s:e, None]
    img.flush()
    img_zero_frac = float(np.mean(img[:min(I, 4096)] == 0))
    img_norm = np.linalg.norm(img, axis=1)
    del img
    proj = rng.normal(0, 1 / np.sqrt(r), (r, d_txt))
    txt = latent @ proj + 0.5 * rng.normal(0, 1, (I, d_txt))
    txt /= np.linalg.norm(txt, axis=1, keepdims=True)
    np.save(raw / 'text_feat.npy', txt.astype(np.float32))

    item_deg = np.bincount(items, minlength=I)
    train_deg = np.bincount(users[label == 0], minlength=U)
    split = np.bincount(label, minlength=3) / E
    return {
        'GENERATED': True, 'seed': seed, **shape,
        'user_degree': {'min': int(deg.min()), 'median': float(np.median(deg)),
                        'mean': float(deg.mean()), 'max': int(deg.max())},
        'item_degree': {'min': int(item_deg.min()), 'median': float(np.median(item_deg)),
                        'mean': float(item_deg.mean()), 'max': int(item_deg.max()),
                        'top1pct_share': float(np.sort(item_deg)[::-1][:max(1, I // 100)]
                                               .sum() / E)},
        'split_fractions': {'train': float(split[0]), 'valid': float(split[1]),
                            'test': float(split[2])},
        'min_train_per_user': int(train_deg.min()),
        'density': E / (U * I),
        'image_feat': {'shape': [I, d_img], 'zero_fraction_first_rows': img_zero_frac,
                       'row_norm_median': float(np.median(img_norm)),
                       'row_norm_p99_over_median': float(np.percentile(img_norm, 99)
                                                         / np.median(img_norm))},
        'text_feat': {'shape': [I, d_txt], 'unit_rows': True},
        'files_bytes': {p.name: p.stat().st_size for p in sorted(raw.iterdir())},
    }


# ---------------------------------------------------------------------------------------
# The measured steps (children)
# ---------------------------------------------------------------------------------------
class FirstBatches:
    r"""The trainer's own sampler, cut after :obj:`n` batches, timing each batch from the
    request of it to the request of the next one (sampling + the trainer's step)."""

    def __init__(self, sampler, n: int):
        self.sampler, self.n = sampler, min(n, len(sampler))
        self.seconds = []

    def __len__(self):
        return self.n

    def __iter__(self):
        t = time.perf_counter()
        for i, batch in enumerate(self.sampler):
            if i >= self.n:
                break
            yield batch
            now = time.perf_counter()
            self.seconds.append(now - t)
            t = now


def run_step(step: str, root: str, name: str, args) -> dict:
    import torch
    torch.set_num_threads(args.threads)
    import warnings
    from mrdib_pyg.data.amazon_mm import AmazonMM
    out = {'threads': torch.get_num_threads(), 'rss_after_imports_gib': maxrss_bytes() / GIB}
    t0 = time.perf_counter()
    caught = []
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        if step == 'process':
            ds = AmazonMM(root, name, force_reload=True)
            out['dataset'] = repr(ds)
        elif step == 'load':
            ds = AmazonMM(root, name)
            data = ds[0]
            out['dataset'] = repr(ds)
        else:
            data = AmazonMM(root, name)[0]
            out['load_s'] = time.perf_counter() - t0
            if step == 'graphs':
                out.update(build_graphs(data))
            else:
                out.update(train_backbone(step, data, root, name, args))
        caught = [f'{x.category.__name__}: {x.message}' for x in w]
    out['wall_s'] = time.perf_counter() - t0
    out['warnings'] = sorted(set(caught))
    return out


def build_graphs(data) -> dict:
    from mrdib_pyg.data.adjacency import adjacency_from_data
    from mrdib_pyg.data.graphs import item_knn_graph, user_cooccurrence_graph
    from mrdib_pyg.data.schema import ITEM, RATES, USER, item_features, modality_names
    parts = {}
    t = time.perf_counter()
    adj = adjacency_from_data(data)
    parts['bipartite_adjacency'] = {'s': time.perf_counter() - t, 'nnz': int(adj._nnz()),
                                    'peak_rss_so_far_gib': maxrss_bytes() / GIB}
    for m in modality_names(data):
        t = time.perf_counter()
        ei, w = item_knn_graph(item_features(data, m, fill='keep'), k=10)
        parts[f'knn_{m}'] = {'s': time.perf_counter() - t, 'edges': int(ei.size(1)),
                             'peak_rss_so_far_gib': maxrss_bytes() / GIB}
    t = time.perf_counter()
    ei, c = user_cooccurrence_graph(data[RATES].edge_index, data[USER].num_nodes,
                                    data[ITEM].num_nodes)
    parts['user_cooccurrence_top200'] = {'s': time.perf_counter() - t, 'edges': int(ei.size(1)),
                                         'peak_rss_so_far_gib': maxrss_bytes() / GIB}
    return {'parts': parts}


def train_backbone(step: str, data, root: str, name: str, args) -> dict:
    from mrdib_pyg.train.config import TrainConfig, parse_value
    from mrdib_pyg.train import build_trainer
    model, _, plug = step.partition('+')
    cfg = TrainConfig.preset(model, name).update(dict(
        root=root, mrdib=plug == 'mrdib', batch_size=2048, seed=args.seed, device=args.device,
        progress=False, model_args={k: parse_value(v) for k, v in args.model_arg or []})).validate()
    t = time.perf_counter()
    trainer = build_trainer(cfg, data)
    build_s = time.perf_counter() - t
    rss_built = maxrss_bytes() / GIB
    limited = FirstBatches(trainer.sampler, args.batches)
    trainer.sampler = limited
    t = time.perf_counter()
    losses = trainer.train_epoch(0)
    train_s = time.perf_counter() - t
    rss_trained = maxrss_bytes() / GIB
    t = time.perf_counter()
    valid = trainer.evaluate('val')
    eval_s = time.perf_counter() - t
    return {'device': str(trainer.device), 'build_trainer_s': build_s,
            'batches': len(limited.seconds), 'batches_per_epoch': len(limited.sampler),
            's_per_batch_median': statistics.median(limited.seconds),
            's_per_batch_all': limited.seconds, 'train_s': train_s,
            'eval_val_s': eval_s, 'loss': losses, 'valid': valid,
            'peak_rss_after_build_gib': rss_built, 'peak_rss_after_train_gib': rss_trained,
            'parameters': sum(p.numel() for p in trainer.model.parameters())
            + sum(p.numel() for pl in trainer.plugins
                  for p in getattr(pl, 'module', pl).parameters()
                  if hasattr(getattr(pl, 'module', pl), 'parameters'))}


def child(args) -> None:
    r"""``--child STEP``: run one step and print its result as the last line."""
    sys.path.insert(0, str(REPO))
    if args.child == 'generate':
        out = generate(Path(args.root) / args.name / 'raw', args.name,
                       json.loads(args.shape), args.seed)
    else:
        out = run_step(args.child, args.root, args.name, args)
    out['peak_rss_bytes'] = maxrss_bytes()
    out['vm_hwm_bytes'] = vm_hwm_bytes()
    print(RESULT + json.dumps(out), flush=True)


# ---------------------------------------------------------------------------------------
# Parent
# ---------------------------------------------------------------------------------------
def spawn(step: str, args, root: str, name: str, shape: dict) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), '--child', step, '--root', root,
           '--name', name, '--shape', json.dumps(shape), '--seed', str(args.seed),
           '--threads', str(args.threads), '--batches', str(args.batches),
           '--device', args.device]
    if args.model_arg:
        cmd += ['--model-arg'] + [f'{k}={v}' for k, v in args.model_arg]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads),
               MKL_NUM_THREADS=str(args.threads))
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env,
                          timeout=args.step_timeout)
    process_s = time.perf_counter() - t
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT)]
    if proc.returncode != 0 or not lines:
        err = (proc.stderr.strip().splitlines() or ['(no stderr)'])
        # A kill by the OOM killer shows as -9 with no traceback.
        return {'error': f'exit code {proc.returncode}: ' + ' | '.join(err[-3:]),
                'stderr_tail': proc.stderr[-4000:], 'process_s': process_s}
    out = json.loads(lines[-1][len(RESULT):])
    out['process_s'] = process_s
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--root', default=None,
                   help='where the generated dataset goes (default: a temporary folder, '
                        'deleted at the end); an existing generated folder of the same shape '
                        'and seed is reused')
    p.add_argument('--batches', type=int, default=20, help='training batches per backbone')
    p.add_argument('--threads', type=int, default=1, help='torch / OpenMP threads per step')
    p.add_argument('--steps', nargs='+', default=list(STEPS), choices=STEPS)
    p.add_argument('--quick', action='store_true', help='a 10x smaller shape (smoke test)')
    p.add_argument('--model-arg', nargs='*', type=lambda kv: tuple(kv.split('=', 1)),
                   default=None, metavar='KEY=VALUE',
                   help="backbone arguments for every backbone step, e.g. backend=torch_sparse")
    p.add_argument('--seed', type=int, default=999)
    p.add_argument('--device', default='auto')
    p.add_argument('--step-timeout', type=int, default=3600, help='seconds per step')
    p.add_argument('--out', default=None,
                   help='JSON name under benchmarks/results (default: scale_clothing.json, '
                        'or scale_clothing_quick.json with --quick)')
    # internal: one step in a fresh process
    p.add_argument('--child', default=None, help=argparse.SUPPRESS)
    p.add_argument('--name', default=None, help=argparse.SUPPRESS)
    p.add_argument('--shape', default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)

    shape = QUICK_SHAPE if args.quick else FULL_SHAPE
    name = 'clothing-quick' if args.quick else 'clothing'
    out_name = args.out or ('scale_clothing_quick.json' if args.quick else 'scale_clothing.json')
    temp = args.root is None
    root = tempfile.mkdtemp(prefix='bench_scale_') if temp else os.path.abspath(args.root)
    stats_path = Path(root) / name / 'generated.json'
    rows, details = [], {}
    try:
        stats = None
        if stats_path.exists():
            old = json.loads(stats_path.read_text())
            if all(old.get(k) == v for k, v in shape.items()) and old.get('seed') == args.seed:
                stats = old
                print(f'reusing the generated dataset in {Path(root) / name}')
        if stats is None:
            shutil.rmtree(Path(root) / name, ignore_errors=True)
            print(f'generating a Clothing-shaped dataset (GENERATED, seed {args.seed}) in '
                  f'{Path(root) / name} ...', flush=True)
            stats = spawn('generate', args, root, name, shape)
            if 'error' in stats:
                raise RuntimeError(f"generation failed: {stats['error']}")
            stats_path.write_text(json.dumps(stats, indent=1))
            print(f"  generated in {stats['process_s']:.1f} s")
        if 'process' not in args.steps and not (Path(root) / name / 'processed').exists():
            print('processing once (not measured) ...', flush=True)
            spawn('process', args, root, name, shape)

        for step in args.steps:
            print(f'step {step} ...', flush=True)
            res = spawn(step, args, root, name, shape)
            details[step] = res
            if 'error' in res:
                print(f"  FAILED: {res['error']}")
                rows.append({'step': step, 'peak_rss_GiB': None, 'wall_s': None,
                             'within_8GiB': 'FAILED', 'note': res['error'][:120]})
                continue
            peak = res['peak_rss_bytes'] / GIB
            row = {'step': step, 'peak_rss_GiB': peak, 'wall_s': res['wall_s'],
                   'within_8GiB': 'yes' if peak <= LIMIT_GIB else 'NO'}
            if step in BACKBONES:
                row.update(s_per_batch=res['s_per_batch_median'], eval_val_s=res['eval_val_s'],
                           build_s=res['build_trainer_s'])
            rows.append(row)
            print(f"  peak RSS {peak:.3f} GiB (VmHWM {res['vm_hwm_bytes'] / GIB:.3f}), "
                  f"{res['wall_s']:.1f} s" + ''.join(f'\n  warning: {w}'
                                                    for w in res.get('warnings', [])),
                  flush=True)
    finally:
        if temp:
            shutil.rmtree(root, ignore_errors=True)

    # Only now: common imports torch, whose pages would otherwise count in the children.
    sys.path.insert(0, str(HERE))
    from common import machine, print_table, write_json
    print(f"\nClothing-shaped GENERATED data ({shape['users']:,} users, {shape['items']:,} "
          f"items, {shape['interactions']:,} interactions, {shape['image_dim']}/"
          f"{shape['text_dim']}-d features; not the real Amazon Clothing), one fresh process "
          f"per step, {args.threads} thread(s), peak RSS = ru_maxrss of the step's process "
          f"(imports included); training: {args.batches} batches of 2048 + one validation "
          f"pass")
    print_table(rows, ['step', 'peak_rss_GiB', 'wall_s', 'within_8GiB', 's_per_batch',
                       'eval_val_s', 'build_s', 'note'])
    write_json(out_name, {
        'dataset': f"GENERATED Clothing-shaped MMRec folder '{name}' (not real data)",
        'limit_gib': LIMIT_GIB, 'machine': machine(), 'args': vars(args),
        'generated_stats': stats, 'rows': rows, 'details': details})


if __name__ == '__main__':
    main()
