r"""Shared fixtures: tiny raw dataset folders in both formats, written under tmp_path."""
import json
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import pytest

# 4 users, 5 items; every user has train, val and test items, no pair in two splits.
TRAIN = [(0, 0), (0, 1), (1, 1), (1, 2), (2, 3), (3, 4), (3, 0)]
VAL = [(0, 2), (1, 3), (2, 4), (3, 1)]
TEST = [(0, 3), (1, 4), (2, 0), (3, 2)]
NUM_USERS, NUM_ITEMS = 4, 5

Pairs = List[Tuple[int, int]]


def _features(folder: Path, features: Optional[Dict[str, np.ndarray]]) -> None:
    if features is None:  # default: both MMRec modalities, float64 on disk as MMRec's
        rng = np.random.default_rng(0)
        features = {'image': rng.standard_normal((NUM_ITEMS, 8)),
                    'text': rng.standard_normal((NUM_ITEMS, 4))}
    for name, x in features.items():
        np.save(folder / f'{name}_feat.npy', x)


@pytest.fixture
def make_mmrec(tmp_path):
    r"""Write ``<root>/<name>/raw/<name>.inter`` (+ features); returns the root."""
    def make(name: str = 'toy', train: Pairs = TRAIN, val: Pairs = VAL,
             test: Pairs = TEST, features: Optional[Dict[str, np.ndarray]] = None,
             inter_name: Optional[str] = None) -> Path:
        raw = tmp_path / name / 'raw'
        raw.mkdir(parents=True, exist_ok=True)
        lines = ['userID\titemID\trating\ttimestamp\tx_label']
        for label, pairs in enumerate((train, val, test)):
            lines += [f'{u}\t{i}\t5.0\t{1000 + k}\t{label}' for k, (u, i) in enumerate(pairs)]
        (raw / (inter_name or f'{name}.inter')).write_text('\n'.join(lines) + '\n')
        _features(raw, features)
        return tmp_path
    return make


@pytest.fixture
def make_json(tmp_path):
    r"""Write ``<root>/<name>/raw/{train,val,test}.json`` (+ id maps, features)."""
    def make(name: str = 'toy', train: Pairs = TRAIN, val: Pairs = VAL,
             test: Pairs = TEST, features: Optional[Dict[str, np.ndarray]] = None,
             num_users: Optional[int] = None, num_items: Optional[int] = None) -> Path:
        raw = tmp_path / name / 'raw'
        raw.mkdir(parents=True, exist_ok=True)
        for fname, pairs in (('train', train), ('val', val), ('test', test)):
            obj: Dict[str, List[int]] = {}
            for u, i in pairs:
                obj.setdefault(str(u), []).append(i)
            (raw / f'{fname}.json').write_text(json.dumps(obj))
        if num_users is not None:
            (raw / 'user2id.json').write_text(
                json.dumps({f'U{k}': k for k in range(num_users)}))
        if num_items is not None:
            (raw / 'item2id.json').write_text(
                json.dumps({f'I{k}': k for k in range(num_items)}))
        _features(raw, features)
        return tmp_path
    return make
