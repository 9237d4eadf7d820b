r"""Shared pieces of the equivalence scripts: a small MMRec-format folder, MMRec's
Config / dataset / loader built on CPU, difference measures and the report.

Run the scripts from MMRec's ``src/`` under MMRec's environment with our package on the
path (each script's docstring gives its command); this module imports MMRec lazily, so it
also imports in our own environment.
"""
import json
import os
from typing import Dict, Iterable, List, Optional, Tuple

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, '..', 'results')


def write_dataset(folder: str, name: str, num_users: int = 300, num_items: int = 200,
                  image_dim: int = 64, text_dim: int = 32, seed: int = 0,
                  nonnegative_image: bool = True) -> None:
    r"""Write ``<name>.inter`` (``userID\titemID\tx_label``; 0/1/2 = train/valid/test),
    ``image_feat.npy`` and ``text_feat.npy`` to :obj:`folder`.

    Every user has 5-16 items (the last two held out), a few popular items skew the
    degrees, every item has at least one training edge, and the features are low rank plus
    noise so that kNN neighbours are meaningful and ties improbable (image features are
    made non-negative, as CNN features are)."""
    rng = np.random.default_rng(seed)
    rows, seen = [], set()
    for u in range(num_users):
        k = int(rng.integers(5, 17))
        items = rng.choice(num_items, size=k, replace=False)
        items = np.unique(np.concatenate([items, rng.choice(10, size=2, replace=False)]))
        rng.shuffle(items)
        labels = [0] * (len(items) - 2) + [1, 2]
        for i, lab in zip(items, labels):
            rows.append((u, int(i), lab))
            seen.add((u, int(i)))
    trained = {i for _, i, lab in rows if lab == 0}
    for i in range(num_items):
        if i not in trained:
            u = int(rng.integers(num_users))
            while (u, i) in seen:
                u = int(rng.integers(num_users))
            rows.append((u, i, 0))
            seen.add((u, i))
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, f'{name}.inter'), 'w') as f:
        f.write('userID\titemID\tx_label\n')
        f.writelines(f'{u}\t{i}\t{lab}\n' for u, i, lab in rows)
    base = rng.normal(size=(num_items, 8))
    img = base @ rng.normal(size=(8, image_dim)) + 0.5 * rng.normal(size=(num_items, image_dim))
    if nonnegative_image:
        img = np.abs(img)
    txt = base @ rng.normal(size=(8, text_dim)) + 0.5 * rng.normal(size=(num_items, text_dim))
    np.save(os.path.join(folder, 'image_feat.npy'), img.astype(np.float32))
    np.save(os.path.join(folder, 'text_feat.npy'), txt.astype(np.float32))


def mmrec_setup(model: str, name: str, data_path: str, batch_size: int = 256,
                overrides: Optional[Dict] = None, shuffle: bool = True):
    r"""MMRec's :obj:`(config, train_loader, (dataset, train, valid, test))` for the folder
    written by :func:`write_dataset`, on CPU, seeded as MMRec seeds (999)."""
    from utils.configurator import Config
    from utils.dataloader import TrainDataLoader
    from utils.dataset import RecDataset
    from utils.utils import init_seed
    over = {  # configs/dataset/baby.yaml's keys, for our dataset
        'USER_ID_FIELD': 'userID', 'ITEM_ID_FIELD': 'itemID', 'TIME_FIELD': 'timestamp',
        'filter_out_cod_start_users': True, 'inter_file_name': f'{name}.inter',
        'vision_feature_file': 'image_feat.npy', 'text_feature_file': 'text_feat.npy',
        'user_graph_dict_file': 'user_graph_dict.npy', 'field_separator': '\t',
        'data_path': data_path.rstrip(os.sep) + os.sep, 'gpu_id': 0, 'use_gpu': False,
        'seed': [999], 'hyper_parameters': ['seed'], 'train_batch_size': batch_size,
    }
    over.update(overrides or {})
    config = Config(model, name, over, False)
    config['device'] = torch.device('cpu')
    ds = RecDataset(config)
    splits = ds.split()
    for d in (ds, *splits):
        str(d)  # MMRec sets inter_num inside __str__, which the loaders read
    loader = TrainDataLoader(config, splits[0], batch_size=batch_size, shuffle=shuffle)
    init_seed(999)
    loader.pretrain_setup()
    return config, loader, (ds, *splits)


def prepare(tmp: str, name: str, **kwargs):
    r"""Write the dataset (:func:`write_dataset` with :obj:`kwargs`) to MMRec's layout
    ``<tmp>/mmrec/<name>/`` and ours ``<tmp>/ours/<name>/raw/``; return MMRec's
    ``data_path`` and our :class:`~torch_geometric.data.HeteroData` (file ids kept on both
    sides: user/item ``k`` is row ``k`` of both models' tables)."""
    import shutil

    from mrdib_pyg.data import AmazonMM
    mm_dir = os.path.join(tmp, 'mmrec', name)
    write_dataset(mm_dir, name, **kwargs)
    shutil.copytree(mm_dir, os.path.join(tmp, 'ours', name, 'raw'))
    return os.path.join(tmp, 'mmrec') + os.sep, AmazonMM(os.path.join(tmp, 'ours'), name)[0]


def maxdiff(a, b) -> float:
    r"""Largest absolute difference of two tensors (dense or sparse), in double; two sparse
    ones are subtracted as sparse (a full-size user-item adjacency has (U + I)^2 entries)."""
    if a.layout != torch.strided and b.layout != torch.strided:
        d = (a.detach().to_sparse_coo().double() - b.detach().to_sparse_coo().double())
        values = d.coalesce().values()
        return float(values.abs().max()) if values.numel() else 0.0
    return float((dense(a).detach().double() - dense(b).detach().double()).abs().max())


def dense(t: torch.Tensor) -> torch.Tensor:
    if t.layout == torch.strided:
        return t
    return t.to_sparse_coo().to_dense() if t.layout != torch.sparse_coo else t.to_dense()


def pattern(sp: torch.Tensor) -> set:
    r"""The set of (row, col) positions of :obj:`sp`'s non-zero entries."""
    coo = sp.to_sparse_coo().coalesce() if sp.layout != torch.sparse_coo else sp.coalesce()
    keep = coo.values() != 0
    return {tuple(p) for p in coo.indices()[:, keep].t().tolist()}


def report(model: str, rows: Iterable[Tuple[str, float, float]],
           extra: Optional[Dict] = None) -> int:
    r"""Print a table of :obj:`(quantity, max abs diff, tolerance)` rows, write
    ``benchmarks/results/equivalence_<model>.json`` and return the exit status (1 if any
    difference exceeds its tolerance)."""
    rows: List[Tuple[str, float, float]] = list(rows)
    width = max(len(q) for q, _, _ in rows)
    print(f"{'quantity'.ljust(width)}  max abs diff  tolerance  ok")
    failed = 0
    for q, d, tol in rows:
        ok = d <= tol
        failed += not ok
        print(f'{q.ljust(width)}  {d:12.3e}  {tol:9.1e}  {"yes" if ok else "NO"}')
    os.makedirs(RESULTS, exist_ok=True)
    out = {'model': model, 'torch': torch.__version__,
           'rows': [{'quantity': q, 'max_abs_diff': d, 'tolerance': tol} for q, d, tol in rows],
           'passed': failed == 0, **(extra or {})}
    with open(os.path.join(RESULTS, f'equivalence_{model}.json'), 'w') as f:
        json.dump(out, f, indent=2)
    return int(failed > 0)
