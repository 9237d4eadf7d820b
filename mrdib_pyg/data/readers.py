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
import errno
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
ID_MAP_FILES = ('user2id.json', 'item2id.json')
#: The interaction formats :func:`detect_format` recognises (name -> the files that make one),
#: in the order they are tried; the command line's help lists them from here.
FORMATS: Dict[str, str] = {
    MMREC: "MMRec: <name>.inter (tab-separated userID, itemID, x_label 0/1/2 = "
           "train/valid/test)",
    JSON: "LATTICE JSON: train.json, val.json, test.json (user id -> item ids), optional "
          "user2id.json / item2id.json",
}
# Without an id map (or, for items, feature files) the counts are max id + 1; see
# read_raw_folder for when a sparse id range is taken for a typo.
SPARSE_SLACK = 1000

_INT = re.compile(r'[+-]?[0-9]+')  # ASCII digits: \d would also take '١' or '５' for ids
INT64_MAX = 2 ** 63 - 1
# Names the HeteroData layout gives to node types and relations (mrdib_pyg.data.schema):
# a modality of that name would be mistaken for them.
RESERVED_MODALITY_NAMES = ('user', 'item', 'rates', 'rev_rates', 'has', 'rev_has')


class DatasetFormatError(ValueError):
    r"""A raw dataset file is malformed or inconsistent with the others."""


def _fail(path: str, what: str) -> DatasetFormatError:
    return DatasetFormatError(f"'{path}': {what}")


def check_is_file(path: str) -> None:
    r"""Raise a :class:`DatasetFormatError` that says what :obj:`path` is (missing, a
    directory, a broken link, a link loop, ...) unless it is a regular file."""
    if osp.isfile(path):
        return
    if osp.isdir(path):
        what = 'is a directory, not a file'
    elif osp.islink(path):
        try:
            os.stat(path)
            what = 'is a symbolic link to something that is not a regular file'
        except OSError as e:
            what = ('is a symbolic link loop' if e.errno == errno.ELOOP else
                    f"is a broken symbolic link (to '{os.readlink(path)}')")
    elif osp.lexists(path):
        what = 'is not a regular file'
    else:
        what = 'is missing'
    raise _fail(path, what)


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


def raw_files(folder: str) -> List[str]:
    r"""The paths of every file in :obj:`folder` that the readers may read (``*.inter``,
    the JSON splits and id maps, ``*_feat.npy``, ``*_missing.txt``), sorted: what a
    processed dataset depends on."""
    if not osp.isdir(folder):
        return []
    return [osp.join(folder, f) for f in sorted(os.listdir(folder))
            if (f.endswith(('.inter', FEAT_SUFFIX, MISSING_SUFFIX))
                or f in SPLIT_FILES + ID_MAP_FILES) and osp.isfile(osp.join(folder, f))]


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
            :obj:`userID`, :obj:`itemID` and :obj:`x_label` (other columns are ignored;
            a UTF-8 byte order mark and spaces around the names are accepted, as pandas
            accepts them).

    Returns:
        dict: :obj:`'train'`, :obj:`'val'`, :obj:`'test'` :math:`\rightarrow`
        :obj:`[2, E]` long (user, item) pairs, in file order, duplicates included.
    """
    import csv

    import pandas as pd  # heavy, only needed for this format

    try:
        with open(path, encoding='utf-8-sig') as f:
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
        if columns.count(col) > 1:
            raise _fail(path, f"line 1: column '{col}' appears {columns.count(col)} times")
    try:
        with warnings.catch_warnings():
            # a row with extra fields would otherwise be shifted or cut silently
            warnings.simplefilter('error', pd.errors.ParserWarning)
            # No quoting: a '"' opening a field would swallow the rows up to the next one.
            df = pd.read_csv(path, sep='\t', dtype=str, keep_default_na=False,
                             index_col=False, encoding='utf-8-sig',
                             quoting=csv.QUOTE_NONE)
    except Exception as e:  # pandas raises ParserError, ParserWarning, ...
        where = _bad_line(path)  # names the line and its field count: pandas' text repeats it
        raise _fail(path, f"cannot parse as tab-separated values{where}" +
                    ('' if where else f" ({type(e).__name__}: {str(e).strip()})")) from e
    if len(df) == 0:
        raise _fail(path, "no interactions: the file holds a header line and no data row")
    df.columns = [str(c).strip() for c in df.columns]
    # pandas pads a row with fewer fields with '': say so before a padded column's empty
    # value is reported as a bad id, and before a missing field shifts the next ones
    # silently when the padded column is not one of ours.
    short = _bad_line(path)
    if short:
        raise _fail(path, f"cannot parse as tab-separated values{short}")

    values = {}
    for col in INTER_COLUMNS:
        s = df[col].fillna('').astype(str).str.strip()
        bad = ~s.str.fullmatch(_INT.pattern)
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise _fail(path, f"line {row + 2}, column '{col}': {s.iloc[row]!r} is not "
                        f"an integer")
        try:
            v = s.astype(np.int64).to_numpy()
        except OverflowError as e:
            big = s.map(lambda t: abs(int(t)) > INT64_MAX).to_numpy(dtype=bool)
            row = int(np.flatnonzero(big)[0])
            raise _fail(path, f"line {row + 2}, column '{col}': {s.iloc[row]!r} does not "
                        f"fit in a 64-bit integer") from e
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


def _feature_rows_error(paths: Dict[str, str], counts: Dict[str, int], maps: dict,
                        pairs: Tensor) -> 'DatasetFormatError':
    # Feature files that disagree on the item count: name the one(s) that also disagree
    # with the interactions, not whichever was read second.
    if 'item' in maps:
        items, given = maps['item'][0], f"'{osp.basename(maps['item'][1])}' gives"
    else:
        items, given = int(pairs[1].max()) + 1, 'the interactions give (max item id + 1)'
    odd = [m for m, n in counts.items() if n != items] or list(counts)
    listing = ', '.join(f"'{osp.basename(paths[m])}' {n}" for m, n in counts.items())
    return _fail(paths[odd[0]], f"the feature files disagree on the number of rows "
                 f"({listing}); {given} {items} items, and every feature file needs one row "
                 f"per item")


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
    def unique_keys(pairs: List[Tuple[str, object]]) -> dict:
        # json.load keeps only the last value of a repeated key: a user's items would be
        # dropped without a word.
        out: dict = {}
        for key, value in pairs:
            if key in out:
                raise _fail(path, f"key {key!r} appears twice in one object (only its "
                            f"last value would be kept)")
            out[key] = value
        return out

    try:
        with open(path, encoding='utf-8') as f:
            return json.load(f, object_pairs_hook=unique_keys)
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
    if out > INT64_MAX:
        raise _fail(path, f"{where}: id {out} does not fit in a 64-bit integer")
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
            if item > INT64_MAX:
                raise _fail(path, f"user {key!r}, position {j}: item id {item} does not "
                            f"fit in a 64-bit integer")
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
    owner: Dict[int, str] = {}
    for key, value in obj.items():
        idx = _as_id(path, f"key {key!r}", value)
        if idx >= size:
            raise _fail(path, f"key {key!r}: id {idx} is out of range for a map of "
                        f"{size} entries")
        if idx in owner:
            raise _fail(path, f"keys {owner[idx]!r} and {key!r} both map to id {idx}; "
                        f"ids must be 0..{size - 1}, each used once")
        owner[idx] = key
    return size


def _locate(path: str, row: int, value: int) -> str:
    # Where user (row 0) or item (row 1) id `value` first occurs in an interaction file:
    # 'line 17: ' for a .inter file, "user '3', position 1: " for a JSON split.
    try:
        if path.endswith('.json'):
            for key, items in _load_json(path).items():  # type: ignore[union-attr]
                if row == 0 and int(key) == value:
                    return f"user {key!r}: "
                if row == 1 and value in items:
                    return f"user {key!r}, position {items.index(value)}: "
        else:
            with open(path, encoding='utf-8-sig') as f:
                header = [c.strip() for c in f.readline().split('\t')]
                col = header.index(INTER_COLUMNS[row])
                for i, line in enumerate(f, start=2):
                    cells = line.split('\t')
                    if (len(cells) > col and _INT.fullmatch(cells[col].strip())
                            and int(cells[col]) == value):
                        return f"line {i}: "
    except (OSError, ValueError, AttributeError, TypeError):
        pass
    return ''


def _id_error(splits: Dict[str, Tensor], sources: Dict[str, str], row: int, value: int,
              what: str) -> DatasetFormatError:
    # Name the interaction file (and line or key) holding `value`, then `what` is wrong.
    split = next(s for s in SPLIT_NAMES if bool((splits[s][row] == value).any()))
    path = sources[split]
    kind = ('user', 'item')[row]
    return _fail(path, f"{_locate(path, row, value)}{kind} id {value} {what}")


# Features ####################################################################


def read_features(path: str) -> Tensor:
    r"""Read a ``<modality>_feat.npy`` matrix and return it as float32.

    Raises:
        DatasetFormatError: if the file is truncated or unreadable, is not a 2-D numeric
            array with at least one column, or holds NaN/inf (the first bad row is
            named).
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
    if x.shape[1] == 0:
        raise _fail(path, f"shape {tuple(x.shape)}: the features have no column; "
                    f"expected [num_items, dim] with dim >= 1")
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise _fail(path, f"expected a numeric array, got dtype {x.dtype}")
    finite, what = np.isfinite(x).all(axis=1), 'holds NaN or inf'
    if finite.all():  # a finite float64 may still overflow float32
        with np.errstate(over='ignore'):
            x = x.astype(np.float32, copy=False)  # MMRec's files are float64 on disk
        finite, what = np.isfinite(x).all(axis=1), 'holds a value beyond the float32 range'
    if not finite.all():
        row = int(np.flatnonzero(~finite)[0])
        raise _fail(path, f"row {row} (item {row}) {what}; "
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

    held_items = np.unique(np.concatenate([out[s][1].numpy() for s in ('val', 'test')]))
    cold_items = int((~np.isin(held_items, np.unique(train[1].numpy()))).sum())
    if cold_items:
        warnings.warn(f"{source}: {cold_items} item(s) appear in validation/test but never "
                      f"in training (cold-start items); kept, as MMRec does: only their "
                      f"features describe them", stacklevel=3)
    for s, label in (('val', 'validation'), ('test', 'test')):
        if out[s].size(1) == 0:  # its metrics would be a mean over nobody
            warnings.warn(f"{source}: the {label} split is empty: its metrics are undefined "
                          f"(NaN), and mrdib-train, which selects epochs on validation, needs "
                          f"validation interactions", stacklevel=3)
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


def read_raw_folder(folder: str, name: str, strict: bool = False,
                    allow_sparse_ids: bool = False) -> RawParts:
    r"""Read, validate and clean every file of a raw dataset folder.

    :obj:`num_users` / :obj:`num_items` are max id + 1 over all splits (as MMRec), or the
    size of ``user2id.json`` / ``item2id.json`` when present (ids beyond it are errors).
    :obj:`num_items` must equal the row count of every feature file; an item id beyond
    the feature rows is reported against the interaction file that holds it.

    Without an id map (and, for items, without feature files) nothing bounds the ids, so
    one mistyped id would silently define the count. Unless :obj:`allow_sparse_ids`, the
    largest id is therefore an error (naming its file and line or key) when
    max id + 1 > 2 :math:`\times` (number of distinct ids) + :obj:`SPARSE_SLACK` (1000):
    more than half of the id range and over a thousand ids unused.

    Args:
        folder (str): the raw folder.
        name (str): the dataset name (selects ``<name>.inter``).
        strict (bool): see :func:`clean_splits`.
        allow_sparse_ids (bool): accept id spaces with large unused ranges.
    """
    fmt, files = detect_format(folder, name)
    if fmt is None:
        raise _fail(folder, "no '<name>.inter' file nor train/val/test.json found")
    for f in files:
        if osp.lexists(osp.join(folder, f)):
            check_is_file(osp.join(folder, f))  # a directory, a link loop, ...
    missing_files = [f for f in files if not osp.lexists(osp.join(folder, f))]
    if missing_files:
        raise _fail(folder, f"missing file(s) {missing_files}")

    maps: Dict[str, Tuple[int, str]] = {}  # kind -> (size, id map file)
    if fmt == MMREC:
        source = osp.join(folder, files[0])
        splits = read_inter(source)
        sources = {s: source for s in SPLIT_NAMES}
    else:
        source = f"'{folder}' (train/val/test.json)"
        sources = {s: osp.join(folder, f) for s, f in zip(SPLIT_NAMES, SPLIT_FILES)}
        splits = {s: read_split_json(p) for s, p in sources.items()}
        for kind, f in zip(('user', 'item'), ID_MAP_FILES):
            p = osp.join(folder, f)
            if osp.isfile(p):
                maps[kind] = (read_id_map(p), p)
    if splits['train'].size(1) == 0:
        raise _fail(sources['train'], "no training interaction" +
                    (" (no row with x_label 0)" if fmt == MMREC else ""))

    feature_paths = find_feature_files(folder)
    for m, p in feature_paths.items():
        if m in RESERVED_MODALITY_NAMES:
            raise _fail(p, f"'{m}' is a reserved name (node types and relations of the "
                        f"graph: {list(RESERVED_MODALITY_NAMES)}); rename the modality")
    features = {m: read_features(p) for m, p in feature_paths.items()}
    first = next(iter(feature_paths.values()), '')
    all_pairs = torch.cat([splits[s] for s in SPLIT_NAMES], dim=1)
    counts = {m: x.size(0) for m, x in features.items()}
    if len(set(counts.values())) > 1:
        raise _feature_rows_error(feature_paths, counts, maps, all_pairs)
    rows = next(iter(counts.values()), None)  # the row count of every feature file

    sizes = {}
    for row, kind in enumerate(('user', 'item')):
        ids = all_pairs[row]
        top = int(ids.max())
        if kind in maps:
            bound: Optional[Tuple[int, str]] = (
                maps[kind][0], f"'{maps[kind][1]}' has {maps[kind][0]} {kind}s")
        elif kind == 'item' and rows is not None:
            bound = (rows, f"the feature files have {rows} rows (one per item)")
        else:
            bound = None
        if bound is not None and top >= bound[0]:
            raise _id_error(splits, sources, row, top, f"is out of range: {bound[1]}")
        if bound is None and not allow_sparse_ids:
            distinct = ids.unique().numel()
            if top + 1 > 2 * distinct + SPARSE_SLACK:
                raise _id_error(splits, sources, row, top,
                                f"would make {top + 1} {kind}s although only {distinct} "
                                f"distinct {kind} ids occur (a mistyped id?); pass "
                                f"allow_sparse_ids=True if your ids are genuinely sparse")
        sizes[kind] = maps[kind][0] if kind in maps else top + 1  # MMRec: max id + 1
    num_users, num_items = sizes['user'], sizes['item']

    if rows is not None and rows != num_items:
        bound_from = (f"'{maps['item'][1]}' gives" if 'item' in maps else
                      "the interactions give (max item id + 1)")
        hint = ''
        if rows > num_items and 'item' not in maps:
            hint = (f" (items {num_items}..{rows - 1} occur in no split; the item count is "
                    f"the largest item id + 1, as in MMRec, so drop those feature rows or "
                    f"give each of those items an interaction)")
        raise _fail(first, f"{rows} feature rows but {bound_from} {num_items} items; "
                    f"expected one row per item{hint}")

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
