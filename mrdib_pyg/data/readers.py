r"""Readers and validators for the raw files of multimodal recommendation datasets.

Two interaction formats are understood (see ``datasets/README.md``):

* **MMRec**: one tab-separated ``<name>.inter`` file with the columns
  :obj:`userID`, :obj:`itemID` and :obj:`x_label` (0/1/2 = train/valid/test).
* **LATTICE JSON**: ``train.json``, ``val.json`` and ``test.json`` mapping a user id
  (string) to a list of item ids, plus optional ``user2id.json`` / ``item2id.json``.

Both may come with ``<modality>_feat.npy`` feature matrices (one row per item) and
``<modality>_missing.txt`` lists of items lacking that modality.

Every reader validates what it reads and raises :class:`DatasetFormatError` (a
:class:`ValueError`) naming the file, the line/row/field where there is one, and what is
wrong. Nothing here writes to disk.
"""
import json
import os
import os.path as osp
import re
import warnings
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import Tensor

MMREC = 'mmrec'
JSON = 'json'
SPLIT_FILES = ('train.json', 'val.json', 'test.json')
SPLIT_NAMES = ('train', 'val', 'test')
INTER_COLUMNS = ('userID', 'itemID', 'x_label')
FEAT_SUFFIX = '_feat.npy'
MISSING_SUFFIX = '_missing.txt'

_INT = re.compile(r'[+-]?\d+')


class DatasetFormatError(ValueError):
    r"""A raw dataset file is malformed or inconsistent with the others."""


def _fail(path: str, what: str) -> DatasetFormatError:
    return DatasetFormatError(f"'{path}': {what}")


# Format detection ############################################################


def find_inter_file(folder: str, name: str) -> Optional[str]:
    r"""The MMRec interaction file of :obj:`folder`: ``<name>.inter`` if present, else
    the single ``*.inter`` file, else :obj:`None`.

    Raises:
        DatasetFormatError: if ``<name>.inter`` is absent and several ``*.inter`` exist.
    """
    if not osp.isdir(folder):
        return None
    own = osp.join(folder, f'{name}.inter')
    if osp.isfile(own):
        return own
    found = sorted(f for f in os.listdir(folder) if f.endswith('.inter'))
    if len(found) > 1:
        raise _fail(folder, f"found several .inter files {found} and none named "
                    f"'{name}.inter'; keep one or rename the one to use")
    return osp.join(folder, found[0]) if found else None


def detect_format(folder: str, name: str) -> Tuple[Optional[str], List[str]]:
    r"""Detect the interaction format of the raw :obj:`folder`.

    Returns:
        :obj:`(format, files)`: :obj:`('mmrec', ['<x>.inter'])`,
        :obj:`('json', ['train.json', 'val.json', 'test.json'])` (as soon as one of them
        exists, so that the missing ones are reported), or :obj:`(None, [])`.
    """
    inter = find_inter_file(folder, name)
    has_json = osp.isdir(folder) and any(
        osp.isfile(osp.join(folder, f)) for f in SPLIT_FILES)
    if inter is not None:
        if has_json:
            warnings.warn(f"'{folder}' holds both '{osp.basename(inter)}' and JSON split "
                          f"files; using the MMRec file", stacklevel=2)
        return MMREC, [osp.basename(inter)]
    if has_json:
        return JSON, list(SPLIT_FILES)
    return None, []


def find_feature_files(folder: str) -> Dict[str, str]:
    r"""Map each modality name to its ``<modality>_feat.npy`` path, sorted by name."""
    if not osp.isdir(folder):
        return {}
    out = {}
    for f in sorted(os.listdir(folder)):
        if f.endswith(FEAT_SUFFIX) and len(f) > len(FEAT_SUFFIX):
            out[f[:-len(FEAT_SUFFIX)]] = osp.join(folder, f)
    return out


# Interactions ################################################################


def read_inter(path: str) -> Dict[str, Tensor]:
    r"""Read an MMRec ``.inter`` file.

    Args:
        path (str): the tab-separated file, with a header naming at least
            :obj:`userID`, :obj:`itemID` and :obj:`x_label` (other columns are ignored).

    Returns:
        dict: :obj:`'train'`, :obj:`'val'`, :obj:`'test'` :math:`\rightarrow`
        :obj:`[2, E]` long (user, item) pairs, in file order, duplicates included.
    """
    import pandas as pd  # heavy, only needed for this format

    try:
        with open(path, encoding='utf-8') as f:
            header = f.readline().rstrip('\r\n')
    except (OSError, UnicodeDecodeError) as e:
        raise _fail(path, f"cannot read the file ({e})") from e
    if header.strip() == '':
        raise _fail(path, "line 1: empty file or empty header; expected a tab-separated "
                    f"header with the columns {list(INTER_COLUMNS)}")
    if '\t' not in header and ',' in header:
        raise _fail(path, "line 1: the header has commas but no tab; expected "
                    "tab-separated columns (MMRec's .inter format)")
    columns = [c.strip() for c in header.split('\t')]
    for col in INTER_COLUMNS:
        if col not in columns:
            hint = (' (the header line seems to be missing)'
                    if all(_INT.fullmatch(c) for c in columns) else '')
            raise _fail(path, f"missing column '{col}'; columns found: {columns}{hint}")
    try:
        with warnings.catch_warnings():
            # a row with extra fields would otherwise be shifted or cut silently
            warnings.simplefilter('error', pd.errors.ParserWarning)
            df = pd.read_csv(path, sep='\t', dtype=str, keep_default_na=False,
                             index_col=False)
    except Exception as e:  # pandas raises ParserError, ParserWarning, ...
        raise _fail(path, f"cannot parse as tab-separated values{_bad_line(path)} "
                    f"({type(e).__name__}: {e})") from e

    values = {}
    for col in INTER_COLUMNS:
        s = df[col].fillna('').astype(str).str.strip()
        bad = ~s.str.fullmatch(_INT.pattern)
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise _fail(path, f"line {row + 2}, column '{col}': {s.iloc[row]!r} is not "
                        f"an integer")
        v = s.astype(np.int64).to_numpy()
        if (v < 0).any():
            row = int(np.flatnonzero(v < 0)[0])
            raise _fail(path, f"line {row + 2}, column '{col}': negative id {v[row]}")
        values[col] = v

    label = values['x_label']
    bad = ~np.isin(label, (0, 1, 2))
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise _fail(path, f"line {row + 2}, column 'x_label': {label[row]} is not one of "
                    f"0 (train), 1 (valid), 2 (test)")

    pairs = torch.tensor(np.stack([values['userID'], values['itemID']]), dtype=torch.long)
    label = torch.tensor(label)
    return {s: pairs[:, label == i] for i, s in enumerate(SPLIT_NAMES)}


def _bad_line(path: str) -> str:
    # Locate the first row whose field count differs from the header's, for the message.
    try:
        with open(path, encoding='utf-8') as f:
            width = f.readline().count('\t')
            for i, line in enumerate(f):
                n = line.rstrip('\r\n').count('\t')
                if line.strip() and n != width:
                    return f" at line {i + 2}: {width + 1} fields expected, {n + 1} found"
    except (OSError, UnicodeDecodeError):
        pass
    return ''


def _load_json(path: str) -> object:
    try:
        with open(path, encoding='utf-8') as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise _fail(path, f"malformed JSON at line {e.lineno}, column {e.colno}: "
                    f"{e.msg}") from e
    except (OSError, UnicodeDecodeError) as e:
        raise _fail(path, f"cannot read the file ({e})") from e


def _as_id(path: str, where: str, value: object) -> int:
    # bool is an int subclass; JSON 'true' is never an id
    if isinstance(value, int) and not isinstance(value, bool):
        out = value
    elif isinstance(value, str) and _INT.fullmatch(value.strip()):
        out = int(value)
    else:
        raise _fail(path, f"{where}: {value!r} is not an integer id")
    if out < 0:
        raise _fail(path, f"{where}: negative id {out}")
    return out


def read_split_json(path: str) -> Tensor:
    r"""Read one LATTICE-style split file (user id string :math:`\rightarrow` list of
    item ids).

    Returns:
        Tensor: :obj:`[2, E]` long (user, item) pairs, duplicates included.
    """
    obj = _load_json(path)
    if not isinstance(obj, dict):
        raise _fail(path, f"expected a JSON object mapping user ids to lists of item ids, "
                    f"got {type(obj).__name__}")
    users: List[int] = []
    items: List[int] = []
    for key, value in obj.items():
        user = _as_id(path, f"user key {key!r}", key)
        if not isinstance(value, list):
            raise _fail(path, f"user {key!r}: expected a list of item ids, got "
                        f"{type(value).__name__} {value!r:.50}")
        for j, item in enumerate(value):
            if not isinstance(item, int) or isinstance(item, bool):
                raise _fail(path, f"user {key!r}, position {j}: {item!r} is not an "
                            f"integer item id")
            if item < 0:
                raise _fail(path, f"user {key!r}, position {j}: negative item id {item}")
        users.extend([user] * len(value))
        items.extend(value)
    return torch.tensor([users, items], dtype=torch.long).view(2, -1)


def read_id_map(path: str) -> int:
    r"""Read a ``user2id.json`` / ``item2id.json`` map (original id :math:`\rightarrow`
    contiguous id) and return its size, after checking that the ids are
    :obj:`0..size-1`."""
    obj = _load_json(path)
    if not isinstance(obj, dict):
        raise _fail(path, f"expected a JSON object mapping original ids to integer ids, "
                    f"got {type(obj).__name__}")
    size = len(obj)
    for key, value in obj.items():
        idx = _as_id(path, f"key {key!r}", value)
        if idx >= size:
            raise _fail(path, f"key {key!r}: id {idx} is out of range for a map of "
                        f"{size} entries")
    return size


def check_id_range(pairs: Tensor, kind: str, bound: int, path: str,
                   bound_from: str) -> None:
    r"""Raise if a :obj:`kind` ('user' or 'item') id of the :obj:`[2, E]` :obj:`pairs`
    read from :obj:`path` is not below :obj:`bound`, which comes from :obj:`bound_from`."""
    row = 0 if kind == 'user' else 1
    bad = (pairs[row] >= bound).nonzero().view(-1)
    if bad.numel() > 0:
        e = int(bad[0])
        raise _fail(path, f"{kind} id {int(pairs[row, e])} (pair user {int(pairs[0, e])}, "
                    f"item {int(pairs[1, e])}) is out of range: '{bound_from}' has "
                    f"{bound} {kind}s")


# Features ####################################################################


def read_features(path: str) -> Tensor:
    r"""Read a ``<modality>_feat.npy`` matrix and return it as float32.

    Raises:
        DatasetFormatError: if the file is truncated or unreadable, is not a 2-D numeric
            array, or holds NaN/inf (the first bad row is named).
    """
    try:
        x = np.load(path, allow_pickle=False)
    except Exception as e:  # truncated/corrupt files raise ValueError, EOFError, ...
        raise _fail(path, f"cannot read the .npy array ({type(e).__name__}: {e})") from e
    if not isinstance(x, np.ndarray):
        raise _fail(path, f"expected a single array, got {type(x).__name__}")
    if x.ndim != 2:
        raise _fail(path, f"expected a 2-D [num_items, dim] array, got ndim={x.ndim} "
                    f"(shape {tuple(x.shape)})")
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise _fail(path, f"expected a numeric array, got dtype {x.dtype}")
    x = x.astype(np.float32, copy=False)  # MMRec's files are float64 on disk
    finite = np.isfinite(x).all(axis=1)
    if not finite.all():
        row = int(np.flatnonzero(~finite)[0])
        raise _fail(path, f"row {row} (item {row}) holds NaN or inf; "
                    f"{int((~finite).sum())} bad row(s) in total")
    return torch.from_numpy(np.ascontiguousarray(x))


def read_missing(path: str, num_items: int) -> Tensor:
    r"""Read a ``<modality>_missing.txt`` list (one item id per line, blank lines
    ignored) and return the sorted unique item ids."""
    try:
        with open(path, encoding='utf-8') as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise _fail(path, f"cannot read the file ({e})") from e
    ids = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        if not _INT.fullmatch(line.strip()):
            raise _fail(path, f"line {i + 1}: {line.strip()!r} is not an integer item id")
        v = int(line)
        if not 0 <= v < num_items:
            raise _fail(path, f"line {i + 1}: item id {v} is out of range "
                        f"(0..{num_items - 1})")
        ids.append(v)
    return torch.tensor(sorted(set(ids)), dtype=torch.long)


# Split cleaning ##############################################################


def _keys(pairs: Tensor, num_items: int) -> np.ndarray:
    return (pairs[0] * num_items + pairs[1]).numpy()


def clean_splits(splits: Dict[str, Tensor], num_items: int, source: str,
                 strict: bool = False) -> Dict[str, Tensor]:
    r"""Apply MMRec's split hygiene, loudly.

    * duplicates within a split are dropped, with a warning that counts them;
    * a pair both in training and in a held-out split is kept (as MMRec does; the
      held-out copy is masked at evaluation and can never be hit), with a warning that
      counts it, or an error if :obj:`strict`;
    * held-out pairs of users without any training item (cold-start users) are
      dropped, as MMRec's :obj:`filter_out_cod_start_users`, with a warning that counts
      them, or an error if :obj:`strict`.

    Args:
        splits (dict): :obj:`'train'`, :obj:`'val'`, :obj:`'test'` :math:`\rightarrow`
            :obj:`[2, E]` long pairs.
        num_items (int): the number of items (to build pair keys).
        source (str): the file(s) the splits come from, quoted in messages.
        strict (bool): raise instead of warning where MMRec would silently go on.
    """
    out = {}
    for name in SPLIT_NAMES:
        pairs = splits[name]
        _, first = np.unique(_keys(pairs, num_items), return_index=True)
        dup = pairs.size(1) - first.size
        if dup > 0:
            warnings.warn(f"{source}: dropped {dup} duplicated interaction(s) in the "
                          f"'{name}' split", stacklevel=3)
            pairs = pairs[:, torch.from_numpy(np.sort(first))]
        out[name] = pairs

    train = out['train']
    if train.size(1) == 0:
        raise _fail(source, "no training interaction")
    train_keys = _keys(train, num_items)
    overlap = {s: int(np.isin(_keys(out[s], num_items), train_keys).sum())
               for s in ('val', 'test')}
    if sum(overlap.values()) > 0:
        msg = (f"{source}: {overlap['val']} validation and {overlap['test']} test "
               f"interaction(s) also appear in training")
        if strict:
            raise DatasetFormatError(msg + " (strict=True)")
        warnings.warn(msg + "; kept as MMRec does (they are masked at evaluation)",
                      stacklevel=3)

    train_users = np.unique(train[0].numpy())
    cold_users, cold_pairs = set(), 0
    for s in ('val', 'test'):
        cold = ~np.isin(out[s][0].numpy(), train_users)
        if cold.any():
            cold_users.update(out[s][0].numpy()[cold].tolist())
            cold_pairs += int(cold.sum())
            out[s] = out[s][:, torch.from_numpy(~cold)]
    if cold_users:
        msg = (f"{source}: {len(cold_users)} cold-start user(s) have validation/test "
               f"items but no training item ({cold_pairs} held-out interaction(s))")
        if strict:
            raise DatasetFormatError(msg + " (strict=True)")
        warnings.warn(msg + "; dropped from the held-out splits as MMRec's "
                      "filter_out_cod_start_users does", stacklevel=3)
    return out


# A whole raw folder ##########################################################


@dataclass
class RawParts:
    r"""Everything read and validated from one raw folder, ready for
    :func:`~mrdib_pyg.data.schema.build_heterodata`."""
    format: str
    num_users: int
    num_items: int
    splits: Dict[str, Tensor]
    features: Dict[str, Tensor] = field(default_factory=dict)
    missing: Dict[str, Tensor] = field(default_factory=dict)


def read_raw_folder(folder: str, name: str, strict: bool = False) -> RawParts:
    r"""Read, validate and clean every file of a raw dataset folder.

    :obj:`num_users` / :obj:`num_items` are max id + 1 over all splits (as MMRec), or the
    size of ``user2id.json`` / ``item2id.json`` when present (ids beyond it are errors).
    :obj:`num_items` must equal the row count of every feature file.

    Args:
        folder (str): the raw folder.
        name (str): the dataset name (selects ``<name>.inter``).
        strict (bool): see :func:`clean_splits`.
    """
    fmt, files = detect_format(folder, name)
    if fmt is None:
        raise _fail(folder, "no '<name>.inter' file nor train/val/test.json found")
    missing_files = [f for f in files if not osp.isfile(osp.join(folder, f))]
    if missing_files:
        raise _fail(folder, f"missing file(s) {missing_files}")

    bounds: Dict[str, Tuple[int, str]] = {}  # kind -> (size, id map file)
    if fmt == MMREC:
        source = osp.join(folder, files[0])
        splits = read_inter(source)
        sources = {s: source for s in SPLIT_NAMES}
    else:
        source = f"'{folder}' (train/val/test.json)"
        sources = {s: osp.join(folder, f) for s, f in zip(SPLIT_NAMES, SPLIT_FILES)}
        splits = {s: read_split_json(p) for s, p in sources.items()}
        for kind in ('user', 'item'):
            p = osp.join(folder, f'{kind}2id.json')
            if osp.isfile(p):
                bounds[kind] = (read_id_map(p), p)

    all_pairs = torch.cat([splits[s] for s in SPLIT_NAMES], dim=1)
    sizes = {}
    for row, kind in enumerate(('user', 'item')):
        if kind in bounds:
            for s in SPLIT_NAMES:
                check_id_range(splits[s], kind, bounds[kind][0], sources[s],
                               bounds[kind][1])
            sizes[kind] = bounds[kind][0]
        else:  # MMRec: max id + 1 over all splits
            sizes[kind] = int(all_pairs[row].max()) + 1 if all_pairs.numel() else 0
    num_users, num_items = sizes['user'], sizes['item']

    features = {}
    for modality, path in find_feature_files(folder).items():
        x = read_features(path)
        if x.size(0) != num_items:
            bound = (f"'{bounds['item'][1]}' gives" if 'item' in bounds else
                     "the interactions give (max item id + 1)")
            raise _fail(path, f"{x.size(0)} feature rows but {bound} {num_items} items; "
                        f"expected one row per item")
        features[modality] = x

    missing = {}
    for f in sorted(os.listdir(folder)):
        if f.endswith(MISSING_SUFFIX) and len(f) > len(MISSING_SUFFIX):
            modality = f[:-len(MISSING_SUFFIX)]
            path = osp.join(folder, f)
            if modality not in features:
                warnings.warn(f"'{path}' is ignored: there is no '{modality}{FEAT_SUFFIX}'",
                              stacklevel=2)
                continue
            missing[modality] = read_missing(path, num_items)

    splits = clean_splits(splits, num_items, source, strict=strict)
    return RawParts(fmt, num_users, num_items, splits, features, missing)
