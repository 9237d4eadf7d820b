r"""Shared helpers of the benchmark scripts (not part of the library)."""
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Dict, List, Tuple

import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_BABY = REPO.parent / 'shared' / 'data' / 'amazon-baby'
RESULTS = REPO / 'benchmarks' / 'results'


def load_baby(root: Path = REPO / 'datasets', generated: bool = True):
    r"""The real Amazon Baby interactions of ``../shared/data/amazon-baby`` (copied under
    :obj:`root`, never written in place) with GENERATED features of the real shapes
    (4096 image / 384 text) when :obj:`generated`. Exits cleanly when the folder is absent."""
    from mrdib_pyg.data import AmazonMM, attach_generated_features
    if not SHARED_BABY.exists():
        print(f'skipped: {SHARED_BABY} is absent')
        sys.exit(0)
    raw = root / 'baby-shared' / 'raw'
    raw.mkdir(parents=True, exist_ok=True)
    for f in SHARED_BABY.glob('*.json'):
        if not (raw / f.name).exists():
            shutil.copy(f, raw / f.name)
    data = AmazonMM(str(root), 'baby-shared')[0]
    if generated:
        data = attach_generated_features(data, seed=0)
    return data


def synchronize(device) -> None:
    r"""Waits for the work queued on :obj:`device` (a no-op on the CPU), so that a wall-clock
    reading after it counts that work."""
    if torch.device(device).type == 'cuda':
        torch.cuda.synchronize(device)


def baby_shaped_output(num_users: int, num_items: int, dim: int = 64):
    r"""A VBPR-like output of the given sizes for benchmarks of MRdIB alone: two
    :obj:`dim`-wide modality tables (text, image) and the content user table they pair with,
    all requiring gradients as a backbone's would (random values; seed first). Returns
    :obj:`(tables, theta, out)`."""
    from mrdib_pyg.nn.output import ModalityOutput, RecOutput
    tables = {m: torch.randn(num_items, dim, requires_grad=True) for m in ('text', 'image')}
    theta = torch.randn(num_users, dim, requires_grad=True)
    out = RecOutput(user=torch.randn(num_users, 2 * dim), item=torch.randn(num_items, 2 * dim),
                    modalities={m: ModalityOutput(t) for m, t in tables.items()},
                    modality_user=theta)
    return tables, theta, out


def mrdib_step(module, out, batch, main_opt, critic_opt, tables,
               device='cpu') -> Tuple[float, float]:
    r"""Everything MRdIB adds to one training batch, timed: its critic step, then its loss
    terms, their backward into :obj:`tables` (the backbone's, whose gradients are reset
    first) and the main optimiser's step. Returns (critic seconds, loss+backward seconds),
    with the queued work of :obj:`device` waited for at each reading.
    Revisions before ``encode_batch`` existed are driven through their own API (the critic
    step encodes the batch again, then ``forward``)."""
    synchronize(device)
    t0 = time.perf_counter()
    critic_opt.zero_grad(set_to_none=True)
    if hasattr(module, 'encode_batch'):  # one encoding, reused (detached) by the critic
        enc = module.encode_batch(out, batch)
        module.critic_loss(enc).backward()
        critic_opt.step()
        synchronize(device)
        t1 = time.perf_counter()
        loss = module.loss_terms(out, batch, enc).loss
    else:
        module.critic_step_loss(out, batch).backward()
        critic_opt.step()
        synchronize(device)
        t1 = time.perf_counter()
        loss = module(out, batch).loss
    main_opt.zero_grad(set_to_none=True)
    for t in tables:
        t.grad = None
    loss.backward()
    main_opt.step()
    synchronize(device)
    return t1 - t0, time.perf_counter() - t1


def machine() -> Dict[str, str]:
    return {'python': platform.python_version(), 'torch': torch.__version__,
            'threads': str(torch.get_num_threads()), 'cpu_count': str(os.cpu_count()),
            'device': 'cuda:' + torch.cuda.get_device_name() if torch.cuda.is_available()
            else 'cpu'}


def print_table(rows: List[Dict], columns: List[str]) -> None:
    widths = [max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in columns]
    print('  '.join(c.ljust(w) for c, w in zip(columns, widths)))
    for r in rows:
        print('  '.join(_fmt(r.get(c)).ljust(w) for c, w in zip(columns, widths)))


def _fmt(v) -> str:
    if isinstance(v, float):
        return f'{v:.4f}'
    return '' if v is None else str(v)


def write_json(name: str, payload: Dict) -> Path:
    r"""Writes :obj:`payload` to :obj:`name` under ``benchmarks/results`` (a name given as
    ``benchmarks/results/X.json`` means the same file; an absolute path is kept). Missing
    folders are made: a long run must never lose its results to the output path."""
    name = Path(name)
    if not name.is_absolute() and name.parts[:2] == ('benchmarks', 'results'):
        name = Path(*name.parts[2:])
    path = RESULTS / name
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, 'w') as f:
        json.dump(payload, f, indent=1)
    print(f'wrote {path.relative_to(REPO) if path.is_relative_to(REPO) else path}')
    return path
