r"""Side by side with MMRec's own code, on the same MMRec-format folder, in the same run.

For each backbone, with ONE hyper-parameter set (MMRec's first grid value, listed in
:data:`SETTINGS` and written into the JSON):

* ``--mode speed``: ours and MMRec's trained for ``--epochs`` epochs each, alternating
  (ours, MMRec, ours, MMRec ... ``--repeats`` times), each in a fresh process pinned to
  ``--threads`` threads; median seconds per training epoch and per evaluation pass
  (one validation pass over all users), their ratio, and each process's peak resident
  memory (``/usr/bin/time``'s maximum RSS, imports included);
* ``--mode accuracy``: both trained to early stopping (patience 20 on validation
  Recall@20) within ``--max-epochs``, for each of ``--seeds``; test Recall@20 / NDCG@20 at
  the best validation epoch, and the relative difference of the means. ``--side ours`` or
  ``--side mmrec`` runs one side only, so that the two sides can run in two processes on
  two cores (each writes its own ``--out``).

MMRec runs from a copy built by ``../shared/tools/mmrec/setup.sh`` (default
``/tmp/mmrec/src`` with the venv ``/tmp/mmvenv``), through ``mmrec_fit_curve.py`` (that
folder's ``fit.py`` plus the validation curve of every epoch) and its ``time_epochs.py``; ours through ``python -m mrdib_pyg.train`` on the same folder read as
``AmazonMM(root, name)``.

    python ../shared/tools/mmrec/make_baby_mmrec_format.py ../shared/data/amazon-baby \
        /tmp/mm/baby/raw --seed 0
    bash ../shared/tools/mmrec/setup.sh MMREC_GIT_DIR /tmp/mm/baby/raw
    python benchmarks/bench_mmrec.py --mode speed --models lightgcn vbpr freedom mgcn mmgcn
    python benchmarks/bench_mmrec.py --mode speed --models dualgnn lattice grcn bm3 lgmrec soil
    python benchmarks/bench_mmrec.py --mode accuracy --models freedom --max-epochs 40
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
TOOLS = REPO.parent / 'shared' / 'tools' / 'mmrec'

#: ours: (model name, --model-arg pairs, extra flags); MMRec: (model, key=value pairs).
#: One hyper-parameter set per model: MMRec's first grid value (LightGCN/VBPR: design.md's
#: defaults, which are in MMRec's grids).
SETTINGS = {
    'lightgcn': (('lightgcn', ['num_layers=2', 'reg_weight=0.0001'], []),
                 ('LightGCN', ['n_layers=2', 'reg_weight=0.0001'])),
    'vbpr': (('vbpr', ['reg_weight=0.001'], []), ('VBPR', ['reg_weight=0.001'])),
    'freedom': (('freedom', ['dropout=0.8', 'reg_weight=0.0'], []),
                ('FREEDOM', ['dropout=0.8', 'reg_weight=0.0'])),
    'mgcn': (('mgcn', ['cl_loss=0.001'], []), ('MGCN', ['cl_loss=0.001'])),
    'mmgcn': (('mmgcn', ['reg_weight=0.0'], ['--lr', '0.0001']),
              ('MMGCN', ['reg_weight=0', 'learning_rate=0.0001'])),
    'dualgnn': (('dualgnn', ['reg_weight=0.1'], ['--lr', '0.1']),
                ('DualGNN', ['aggr_mode=add', 'reg_weight=0.1', 'learning_rate=0.1'])),
    'lattice': (('lattice', ['reg_weight=0.0'], ['--lr', '0.0001']),
                ('LATTICE', ['reg_weight=0.0', 'learning_rate=0.0001'])),
    'grcn': (('grcn', ['reg_weight=0.1'], ['--lr', '1.0']),
             ('GRCN', ['reg_weight=0.1', 'learning_rate=1'])),
    'bm3': (('bm3', ['n_layers=1', 'dropout=0.3', 'reg_weight=0.1'], []),
            ('BM3', ['n_layers=1', 'dropout=0.3', 'reg_weight=0.1'])),
    'lgmrec': (('lgmrec', [], []),
               ('LGMRec', ['n_ui_layers=2', 'n_mm_layers=2', 'n_hyper_layer=1', 'hyper_num=4',
                           'keep_rate=0.5', 'alpha=0.3', 'cl_weight=0.0001',
                           'reg_weight=0.000001'])),
    # Ranking as MMRec's DualGNN, GRCN and MMGCN do: with the last training batch's tables (no
    # forward pass at evaluation); the reference side is the same run as above.
    'dualgnn-lastfwd': (('dualgnn', ['reg_weight=0.1', 'score_last_train_forward=True'],
                         ['--lr', '0.1']),
                        ('DualGNN', ['aggr_mode=add', 'reg_weight=0.1', 'learning_rate=0.1'])),
    'grcn-lastfwd': (('grcn', ['reg_weight=0.1', 'score_last_train_forward=True'],
                      ['--lr', '1.0']),
                     ('GRCN', ['reg_weight=0.1', 'learning_rate=1'])),
    # MMRec's GRCN exactly: its ranking and its no-op routing (our default routes to users).
    'grcn-mmrec': (('grcn', ['reg_weight=0.1', 'score_last_train_forward=True',
                             'route_to_users=False'], ['--lr', '1.0']),
                   ('GRCN', ['reg_weight=0.1', 'learning_rate=1'])),
    'mmgcn-lastfwd': (('mmgcn', ['reg_weight=0.0', 'score_last_train_forward=True'],
                       ['--lr', '0.0001']),
                      ('MMGCN', ['reg_weight=0', 'learning_rate=0.0001'])),
    # SOIL is not in MMRec: its authors' models/soil.py (+ utils, yaml) copied into the
    # MMRec copy (benchmarks/equivalence/soil.py does it); knn_i/knn_a: its Baby values.
    'soil': (('soil', ['cl_loss=0.001', 'cl_loss2=0.001'], []),
             ('SOIL', ['cl_loss=0.001', 'cl_loss2=0.001', 'knn_i=10', 'knn_a=2'])),
}


def write_user_graph_dict(folder: str, name: str) -> None:
    r"""MMRec's DualGNN reads ``user_graph_dict.npy`` (per user: the ids and counts of
    the <= 200 users sharing most training items, by ``torch.topk``), which MMRec's
    ``preprocessing/dualgnn-gen-u-u-matrix.py`` writes with a dense U x U matrix and a
    Python loop over U^2/2 user pairs (hours on Baby). Written here with the same content
    from sparse counts (ties at the 200th place may pick other users)."""
    import numpy as np
    import pandas as pd
    import scipy.sparse as sp
    path = os.path.join(folder, 'user_graph_dict.npy')
    if os.path.exists(path):
        return
    df = pd.read_csv(os.path.join(folder, f'{name}.inter'), sep='\t')
    num_users = int(df['userID'].nunique())
    tr = df[df['x_label'] == 0]
    r = sp.csr_matrix((np.ones(len(tr), dtype=np.float32), (tr['userID'], tr['itemID'])),
                      shape=(num_users, int(df['itemID'].max()) + 1))
    r.data[:] = 1.0
    c = (r @ r.T).tocsr()
    c.setdiag(0)
    c.eliminate_zeros()
    graph = {}
    for u in range(num_users):
        lo, hi = c.indptr[u], c.indptr[u + 1]
        cols, vals = c.indices[lo:hi], c.data[lo:hi]
        order = np.lexsort((cols, -vals))[:200]
        graph[u] = [cols[order].tolist(), vals[order].astype(float).tolist()]
    np.save(path, graph, allow_pickle=True)
    print(f'wrote {path} ({num_users} users)', flush=True)


def timed(cmd, cwd, env):
    r"""Run :obj:`cmd`; returns (stdout, wall seconds, peak RSS in MiB)."""
    with tempfile.NamedTemporaryFile('r', suffix='.rss') as f:
        t0 = time.perf_counter()
        proc = subprocess.run(['/usr/bin/time', '-f', '%M', '-o', f.name] + cmd, cwd=cwd,
                              env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
        rss = int(f.read().strip().splitlines()[-1]) / 1024
    return proc.stdout, wall, rss


def env_for(threads, pythonpath=None):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    if pythonpath:
        env['PYTHONPATH'] = pythonpath
    return env


def ours(args, model, epochs, seed, patience, out_dir):
    name, margs, flags = SETTINGS[model][0]
    cmd = [sys.executable, '-m', 'mrdib_pyg.train', '--dataset', args.name, '--root',
           args.root, '--model', name, '--epochs', str(epochs), '--patience', str(patience),
           '--seed', str(seed), '--out-dir', out_dir, '--no-progress', '--device', 'cpu']
    if args.backend and model != 'vbpr':  # VBPR propagates nothing
        margs = margs + [f'backend={args.backend}']
    cmd += [x for kv in margs for x in ('--model-arg', kv)] + flags
    _, wall, rss = timed(cmd, str(REPO), env_for(args.threads))
    with open(os.path.join(out_dir, 'results.json')) as f:
        res = json.load(f)
    hist = res['history']
    return {'train_s': [h['train_seconds'] for h in hist],
            'eval_s': [h['eval_seconds'] for h in hist],
            'best_epoch': res['best_epoch'], 'epochs_run': len(hist),
            'test': {k: res['test_at_best'][k] for k in ('Recall@20', 'NDCG@20')},
            'valid': {k: res['best_valid'][k] for k in ('Recall@20', 'NDCG@20')},
            'valid_curve': [{k: round(h['valid'][k], 5) for k in ('Recall@20', 'NDCG@20')}
                            for h in hist],
            'wall_s': wall, 'peak_rss_mib': rss}


#: Imported by MMRec's processes (``sitecustomize`` on their path): GRCN calls ``.cuda()``
#: in its constructor and loss whatever the configured device, which fails on a machine
#: without a GPU; on such a machine this makes ``.cuda()`` a no-op. MMRec's models are
#: otherwise run as they are.
#: DualGNN creates ``result_embed = nn.Parameter(...).to(device)``: on a GPU ``.to`` returns a
#: plain tensor, on the CPU the Parameter itself, which its forward then cannot overwrite
#: with a tensor; the shim lets that assignment replace the parameter, as on a GPU.
CPU_SHIM = """import torch
if not torch.cuda.is_available():
    torch.Tensor.cuda = lambda self, *a, **k: self
    torch.nn.Module.cuda = lambda self, *a, **k: self
    _setattr = torch.nn.Module.__setattr__

    def _as_on_gpu(self, name, value):
        params = self.__dict__.get('_parameters')
        if (params is not None and name in params and isinstance(value, torch.Tensor)
                and not isinstance(value, torch.nn.Parameter)):
            del params[name]
        _setattr(self, name, value)
    torch.nn.Module.__setattr__ = _as_on_gpu
"""


def mmrec_path() -> str:
    shim = Path(tempfile.gettempdir()) / 'mmrec_cpu_shim'
    shim.mkdir(exist_ok=True)
    (shim / 'sitecustomize.py').write_text(CPU_SHIM)
    return f'.{os.pathsep}{shim}'


def mmrec(args, model, epochs, seed, accuracy):
    name, kvs = SETTINGS[model][1]
    py = args.mmrec_python
    if accuracy:  # fit.py's steps, plus the validation curve
        cmd = [py, str(HERE / 'mmrec_fit_curve.py'), name, args.mmrec_dataset,
               f'epochs={epochs}', f'seed_value={seed}'] + kvs
    else:
        cmd = [py, str(TOOLS / 'time_epochs.py'), name, args.mmrec_dataset, str(epochs),
               f'seed_value={seed}'] + kvs
    env = env_for(args.threads, mmrec_path())
    if accuracy:  # each pass's metrics as it ends: a run cut short keeps its curve
        env['MMREC_CURVE_LOG'] = str(Path(tempfile.gettempdir()) /
                                     f'mmrec_curve_{model}_s{seed}_{os.getpid()}.jsonl')
        print(f'MMRec {name} seed {seed}: passes logged to {env["MMREC_CURVE_LOG"]}',
              flush=True)
    out, wall, rss = timed(cmd, args.mmrec_src, env)
    res = json.loads(out.strip().splitlines()[-1])
    res.update(wall_s=wall, peak_rss_mib=rss)
    return res


def med(xs):
    return statistics.median(xs) if xs else float('nan')


def speed(args, save=lambda rows: None):
    rows = []
    for model in args.models:
        o_train, o_eval, m_train, m_eval, o_rss, m_rss = [], [], [], [], [], []
        for r in range(args.repeats):
            with tempfile.TemporaryDirectory() as d:
                o = ours(args, model, args.epochs, 999, 10 ** 6, d)
            o_train += o['train_s']
            o_eval += o['eval_s']
            o_rss.append(o['peak_rss_mib'])
            m = mmrec(args, model, args.epochs, 999, accuracy=False)
            m_train += m['train_s']
            m_eval += m['eval_s']
            m_rss.append(m['peak_rss_mib'])
            print(f'{model} repeat {r}: ours train {med(o["train_s"]):.2f}s eval '
                  f'{med(o["eval_s"]):.2f}s | MMRec train {med(m["train_s"]):.2f}s eval '
                  f'{med(m["eval_s"]):.2f}s', flush=True)
        rows.append({'model': model, 'settings': SETTINGS[model],
                     'ours_train_s': med(o_train), 'mmrec_train_s': med(m_train),
                     'train_ratio': med(o_train) / med(m_train),
                     'ours_eval_s': med(o_eval), 'mmrec_eval_s': med(m_eval),
                     'eval_ratio': med(o_eval) / med(m_eval),
                     'ours_peak_rss_mib': max(o_rss), 'mmrec_peak_rss_mib': max(m_rss),
                     'samples': {'ours_train': o_train, 'mmrec_train': m_train,
                                 'ours_eval': o_eval, 'mmrec_eval': m_eval}})
        save(rows)  # after every model: a later failure keeps what was measured
    header = ('model', 'ours s/epoch', 'MMRec s/epoch', 'ratio', 'ours s/eval',
              'MMRec s/eval', 'ratio', 'ours MiB', 'MMRec MiB')
    print('| ' + ' | '.join(header) + ' |\n|' + '---|' * len(header))
    for r in rows:
        print(f"| {r['model']} | {r['ours_train_s']:.2f} | {r['mmrec_train_s']:.2f} | "
              f"{r['train_ratio']:.2f} | {r['ours_eval_s']:.2f} | {r['mmrec_eval_s']:.2f} | "
              f"{r['eval_ratio']:.2f} | {r['ours_peak_rss_mib']:.0f} | "
              f"{r['mmrec_peak_rss_mib']:.0f} |")
    return rows


def accuracy(args, save=lambda rows: None):
    rows = []
    for model in args.models:
        for seed in args.seeds:
            row = {'model': model, 'seed': seed, 'settings': SETTINGS[model],
                   'max_epochs': args.max_epochs}
            if args.side in ('both', 'ours'):
                with tempfile.TemporaryDirectory() as d:
                    o = ours(args, model, args.max_epochs, seed, 20, d)
                row.update({'ours_test_R20': o['test']['Recall@20'],
                            'ours_test_N20': o['test']['NDCG@20'],
                            'ours_best_epoch': o['best_epoch'], 'ours_epochs_run': o['epochs_run'],
                            'ours_valid_R20_curve': [c['Recall@20'] for c in o['valid_curve']],
                            'ours_wall_s': o['wall_s']})
            if args.side in ('both', 'mmrec'):
                m = mmrec(args, model, args.max_epochs, seed, accuracy=True)
                row.update({'mmrec_test_R20': m['test']['recall@20'],
                            'mmrec_test_N20': m['test']['ndcg@20'],
                            'mmrec_stop_counter': m.get('stop_counter'),
                            'mmrec_best_epoch': m.get('best_epoch'),
                            'mmrec_valid_R20_curve': [c['recall@20']
                                                      for c in m.get('valid_curve', [])],
                            'mmrec_wall_s': m['wall_s']})
            rows.append(row)
            save(rows)
            print(json.dumps(row), flush=True)
    print('| model | seed | ours R@20 | MMRec R@20 | rel. diff | ours N@20 | MMRec N@20 |')
    print('|---|---|---|---|---|---|---|')
    for r in rows:
        o, m = r.get('ours_test_R20'), r.get('mmrec_test_R20')
        rel = f'{(o - m) / m:+.1%}' if o is not None and m is not None else '—'
        cell = lambda k: '—' if r.get(k) is None else f'{r[k]:.4f}'  # noqa: E731
        print(f"| {r['model']} | {r['seed']} | {cell('ours_test_R20')} | "
              f"{cell('mmrec_test_R20')} | {rel} | {cell('ours_test_N20')} | "
              f"{cell('mmrec_test_N20')} |")
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--mode', choices=('speed', 'accuracy'), default='speed')
    p.add_argument('--models', nargs='+', default=list(SETTINGS), choices=list(SETTINGS))
    p.add_argument('--root', default='/tmp/mm', help='our AmazonMM root (ROOT/NAME/raw)')
    p.add_argument('--name', default='baby')
    p.add_argument('--mmrec-src', default='/tmp/mmrec/src')
    p.add_argument('--mmrec-python', default='/tmp/mmvenv/bin/python')
    p.add_argument('--mmrec-dataset', default='baby')
    p.add_argument('--threads', type=int, default=1)
    p.add_argument('--epochs', type=int, default=3, help='speed: epochs per process')
    p.add_argument('--repeats', type=int, default=2, help='speed: alternations')
    p.add_argument('--max-epochs', type=int, default=1000, help='accuracy: epoch cap')
    p.add_argument('--seeds', type=int, nargs='+', default=[999])
    p.add_argument('--side', choices=('both', 'ours', 'mmrec'), default='both',
                   help='accuracy: run one side only (e.g. the two sides in two processes '
                        'on two cores; their rows are merged by model and seed)')
    p.add_argument('--backend', default=None, choices=('csr', 'torch_sparse', 'coo'),
                   help="our sparse backend (default: the models' own, csr)")
    p.add_argument('--out', default=None)
    args = p.parse_args()
    if not Path(args.mmrec_src).is_dir() or not (TOOLS / 'fit.py').exists():
        print(f'skipped: no MMRec copy at {args.mmrec_src} (see the docstring)')
        return
    if any(m.startswith('dualgnn') for m in args.models):
        write_user_graph_dict(os.path.join(args.root, args.name, 'raw'), args.name)
    sys.path.insert(0, str(HERE))
    from common import machine, write_json
    out = args.out or f'mmrec_{args.mode}.json'

    def save(rows):
        write_json(out, {'mode': args.mode, 'machine': machine(), 'args': vars(args),
                         'folder': os.path.join(args.root, args.name, 'raw'),
                         'features': 'generated (make_baby_mmrec_format.py --seed 0)',
                         'rows': rows})
    speed(args, save) if args.mode == 'speed' else accuracy(args, save)


if __name__ == '__main__':
    main()
