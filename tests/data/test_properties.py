r"""Property-based tests (hypothesis) of the two raw formats :class:`AmazonMM` reads.

Issue 11, section 4: "any generated valid folder loads to the same ``HeteroData`` it
encodes; any single corruption gives a clear error, never a silent change."

* :func:`abstract_datasets` draws a small dataset (users, items, the train/val/test pairs,
  feature matrices, ``<modality>_missing.txt`` lists) and :func:`mmrec_folders` /
  :func:`json_folders` write it in either format, varying everything the format leaves
  free (row/key/list order, column order, extra columns with arbitrary text, CRLF, a BOM,
  spaced header names, id maps, indentation, ...).
* :func:`test_valid_folder_loads_what_it_encodes`: both encodings load to exactly the
  encoded counts, pairs, features and ``has`` edges, and to the same ``HeteroData``.
* :func:`test_single_corruption_is_a_clear_error`: one corruption from :data:`CORRUPTIONS`
  (each entry a parametrized case, hypothesis drawing the dataset, the format and the
  corruption's details: which row, which bad token, where to cut, ...) applied to a valid
  folder: loading raises an error naming the file (or, for the one case the library
  documents as accepted, warns and loads the uncorrupted content).
* :func:`test_documented_changes`: duplicates, pairs in training and a held-out split and
  cold-start users are changed as ``docs/design.md`` ("Decisions") says, with warnings
  that state the counts, and ``strict=True`` raises where documented.

Examples under the default profile ``mrdib-ci``: 120 (valid folders), 15 for each of the
44 corruptions (660 in all), 50 (documented changes): about 35 s on two busy cores.
``MRDIB_HYPOTHESIS_PROFILE=mrdib-thorough`` runs ten times as many. No example database is
written (``database=None``). Each example writes a fresh folder
(``tempfile.TemporaryDirectory``: pytest's ``tmp_path`` is shared between the examples of
one test).
"""
import io
import json
import os
import re
import string
import tempfile
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple, Union

import numpy as np
import pytest
import torch

from hypothesis import HealthCheck, Phase, assume, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from mrdib_pyg.data import AmazonMM
from mrdib_pyg.data.amazon_mm import KNOWN_COUNTS
from mrdib_pyg.data.readers import DatasetFormatError
from mrdib_pyg.data.schema import ITEM, RATES, REV_RATES, USER

# Profiles #####################################################################

settings.register_profile(
    'mrdib-ci', deadline=None, database=None, print_blob=True,
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile('mrdib-thorough', parent=settings.get_profile('mrdib-ci'))
PROFILE = os.environ.get('MRDIB_HYPOTHESIS_PROFILE', 'mrdib-ci')
SCALE = {'mrdib-ci': 1, 'mrdib-thorough': 10}.get(PROFILE, 1)


def examples(n: int) -> settings:
    return settings(settings.get_profile(PROFILE), max_examples=n * SCALE)


# The abstract dataset #########################################################

Pair = Tuple[int, int]
SPLITS = ('train', 'val', 'test')
INTER_COLUMNS = ('userID', 'itemID', 'x_label')
SPLIT_FILES = ('train.json', 'val.json', 'test.json')
# Names the HeteroData layout uses for node types and relations: never modality names.
RESERVED = ('user', 'item', 'rates', 'rev_rates', 'has', 'rev_has')

NAME_CHARS = string.ascii_letters + string.digits + '_-.'
names = st.text(NAME_CHARS, min_size=1, max_size=6).filter(lambda s: s not in ('.', '..'))
dataset_names = names.filter(lambda s: s.lower() not in KNOWN_COUNTS)
modality_names = names.filter(lambda s: s not in RESERVED)

FEATURE_DTYPES = (np.float32, np.float64, np.float16, np.int64, np.int32, np.uint8)


def finite_elements(dtype) -> st.SearchStrategy:
    dtype = np.dtype(dtype)
    if dtype == np.float64:  # within float32's range: stored as float32
        return hnp.from_dtype(dtype, allow_nan=False, allow_infinity=False,
                              min_value=-1e30, max_value=1e30)
    if dtype.kind == 'f':  # bounded: no draw rejected for overflowing the width
        bound = float(np.finfo(dtype).max)
        return st.floats(-bound, bound, width=8 * dtype.itemsize)
    return hnp.from_dtype(dtype)


@dataclass(eq=False)
class Abstract:
    r"""What a folder encodes: the HeteroData that loading it must give."""
    num_users: int
    num_items: int
    splits: Dict[str, List[Pair]]  # sorted, no duplicate, none both in train and held out
    features: Dict[str, np.ndarray] = field(default_factory=dict)  # as stored on disk
    missing: Dict[str, List[int]] = field(default_factory=dict)  # sorted unique ids

    def pairs(self) -> List[Pair]:
        return [p for s in SPLITS for p in self.splits[s]]

    @property
    def dense_users(self) -> bool:  # max user id + 1 == num_users: no id map needed
        return any(u == self.num_users - 1 for u, _ in self.pairs())

    @property
    def dense_items(self) -> bool:
        return any(i == self.num_items - 1 for _, i in self.pairs())


trailing = st.sampled_from([0, 0, 0, 1, 2])  # ids after the last one used


@st.composite
def abstract_datasets(draw, dense: bool = False, min_modalities: int = 0) -> Abstract:
    r"""A small valid dataset: every user with a held-out item also has a training item
    (no cold start), no duplicate, no pair in training and a held-out split (a pair may be
    in both validation and test), finite features of widths 1-3."""
    core_users = draw(st.integers(1, 5), label='users with ids <= the last active one')
    core_items = draw(st.integers(1, 6), label='item id range drawn')
    role = st.sampled_from(['', '', 't', 't', 'v', 'x', 'vx'])  # none/train/val/test/both
    splits: Dict[str, List[Pair]] = {s: [] for s in SPLITS}
    for u in range(core_users):
        if u < core_users - 1 and not draw(st.booleans(), label=f'user {u} active'):
            continue  # a user without any interaction
        roles = draw(st.lists(role, min_size=core_items, max_size=core_items),
                     label=f'roles of user {u}')
        if 't' not in roles:
            roles[draw(st.integers(0, core_items - 1))] = 't'
        for i, r in enumerate(roles):
            for code, s in (('t', 'train'), ('v', 'val'), ('x', 'test')):
                if code in r:
                    splits[s].append((u, i))
    top_item = max(i for s in SPLITS for _, i in splits[s])
    num_users = core_users + (0 if dense else draw(trailing, label='trailing users'))
    num_items = top_item + 1 + (0 if dense else draw(trailing, label='trailing items'))

    features, missing = {}, {}
    modalities = st.lists(modality_names, unique=True, min_size=min_modalities, max_size=3)
    for m in draw(modalities, label='modalities'):
        dtype = draw(st.sampled_from(FEATURE_DTYPES))
        dim = draw(st.integers(1, 3))
        features[m] = draw(hnp.arrays(dtype, (num_items, dim),
                                      elements=finite_elements(dtype)), label=f'{m} x')
        if draw(st.booleans(), label=f'{m} has a missing list'):
            missing[m] = sorted(draw(st.sets(st.integers(0, num_items - 1))))
    return Abstract(num_users, num_items, {s: sorted(p) for s, p in splits.items()},
                    features, missing)


# Writing a folder #############################################################

DIR = object()  # a folder where a file should be
Content = Union[bytes, np.ndarray, object]


@dataclass
class Folder:
    name: str  # the dataset name: files go to <root>/<name>/raw/
    fmt: str  # 'mmrec' or 'json'
    files: Dict[str, Content]

    def write(self, root: str) -> Path:
        raw = Path(root) / self.name / 'raw'
        raw.mkdir(parents=True)
        for fname, content in self.files.items():
            if content is DIR:
                (raw / fname).mkdir()
            elif isinstance(content, np.ndarray):
                with open(raw / fname, 'wb') as f:
                    np.save(f, content)
            else:
                (raw / fname).write_bytes(content)  # type: ignore[arg-type]
        return raw

    def with_file(self, fname: str, content: Optional[Content]) -> 'Folder':
        files = dict(self.files)
        if content is None:
            del files[fname]
        else:
            files[fname] = content
        return replace(self, files=files)

    @property
    def inter(self) -> str:
        return next(f for f in self.files if f.endswith('.inter'))

    @property
    def interaction_files(self) -> Tuple[str, ...]:
        return (self.inter,) if self.fmt == 'mmrec' else SPLIT_FILES

    @property
    def feature_files(self) -> List[str]:
        return sorted(f for f, c in self.files.items()
                      if f.endswith('_feat.npy') and isinstance(c, np.ndarray))


@st.composite
def feature_files(draw, ab: Abstract) -> Dict[str, Content]:
    files: Dict[str, Content] = {f'{m}_feat.npy': x for m, x in ab.features.items()}
    for m, ids in ab.missing.items():
        lines = [str(i) for i in ids] + draw(st.lists(st.sampled_from(ids), max_size=2)
                                              if ids else st.just([]))  # repeats
        lines = draw(st.permutations(lines))
        pad = draw(st.sampled_from(['', ' ']))
        lines = [f'{pad}{line}{pad}' for line in lines]
        if draw(st.booleans(), label='blank line in missing list'):
            lines.insert(draw(st.integers(0, len(lines))), '')
        nl = draw(st.sampled_from(['\n', '\r\n']))
        files[f'{m}_missing.txt'] = (nl.join(lines) + nl * draw(st.booleans())).encode()
    return files


EXTRA_COLUMNS = ('rating', 'timestamp', 'review')
# Anything but a tab or a line break (control characters excluded), quotes included.
extra_text = st.text(
    st.one_of(st.sampled_from('"\'#,;. \\5aZ'),
              st.characters(codec='utf-8', exclude_categories=('Cs', 'Cc'))),
    max_size=4)


@st.composite
def mmrec_folders(draw, ab: Abstract, name: str) -> Folder:
    r"""``<name>.inter`` (or another single ``*.inter``) encoding :obj:`ab`, plus the
    feature files. :obj:`ab` must be dense (MMRec's counts are max id + 1)."""
    assert ab.dense_users and ab.dense_items
    inter = draw(st.one_of(st.just(f'{name}.inter'), names.map(lambda s: s + '.inter')),
                 label='inter file')
    extra = draw(st.lists(st.sampled_from(EXTRA_COLUMNS), unique=True, max_size=2))
    cols = draw(st.permutations(INTER_COLUMNS + tuple(extra)), label='columns')
    spaced = draw(st.booleans(), label='spaces around header names')
    rows = [(u, i, k) for k, s in enumerate(SPLITS) for u, i in ab.splits[s]]
    lines = ['\t'.join(f' {c} ' if spaced else c for c in cols)]
    for u, i, k in draw(st.permutations(rows), label='row order'):
        cells = {'userID': str(u), 'itemID': str(i), 'x_label': str(k)}
        for c in extra:
            cells[c] = draw(extra_text)
        lines.append('\t'.join(cells[c] for c in cols))
    nl = draw(st.sampled_from(['\n', '\r\n']), label='newline')
    text = nl.join(lines) + (nl if draw(st.booleans(), label='final newline') else '')
    if draw(st.booleans(), label='BOM'):
        text = '\ufeff' + text
    return Folder(name, 'mmrec', {inter: text.encode('utf-8'),
                                  **draw(feature_files(ab))})


def id_map(prefix: str, size: int, order: List[int]) -> Dict[str, int]:
    return {f'{prefix}{k}': k for k in order} if size else {}


@st.composite
def json_folders(draw, ab: Abstract, name: str) -> Folder:
    r"""``train/val/test.json`` (+ ``user2id.json`` / ``item2id.json`` where the counts
    are not max id + 1, or by choice) encoding :obj:`ab`, plus the feature files."""
    indent = draw(st.sampled_from([None, 0, 1, 2, '\t']), label='indent')
    files: Dict[str, Content] = {}
    for s, fname in zip(SPLITS, SPLIT_FILES):
        by_user: Dict[int, List[int]] = {}
        for u, i in ab.splits[s]:
            by_user.setdefault(u, []).append(i)
        for u in draw(st.sets(st.integers(0, ab.num_users - 1), max_size=2),
                      label=f'{fname}: users listed with no item'):
            by_user.setdefault(u, [])
        keys = draw(st.permutations(sorted(by_user)), label=f'{fname} key order')
        obj = {str(u): draw(st.permutations(by_user[u])) for u in keys}
        text = json.dumps(obj, indent=indent) + draw(st.sampled_from(['', '\n']))
        files[fname] = text.encode()
    for kind, size, dense in (('user', ab.num_users, ab.dense_users),
                              ('item', ab.num_items, ab.dense_items)):
        if not dense or draw(st.booleans(), label=f'{kind}2id.json'):
            order = draw(st.permutations(range(size)))
            files[f'{kind}2id.json'] = json.dumps(id_map(kind[0], size, order)).encode()
    return Folder(name, 'json', {**files, **draw(feature_files(ab))})


# Loading and comparing ########################################################


def load(folder: Folder, **kwargs) -> Tuple[object, List[str]]:
    r"""Write :obj:`folder` under a fresh root and return (``AmazonMM(...)[0]``, the
    warning messages)."""
    with tempfile.TemporaryDirectory() as root, warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        folder.write(root)
        data = AmazonMM(root, folder.name, **kwargs)[0]
    # PyG itself warns about type names with '__' (a drawn modality name may have one).
    return data, [str(x.message) for x in w if 'single underscores' not in str(x.message)]


def edge_list(edge_index: torch.Tensor) -> List[Pair]:
    assert edge_index.dtype == torch.long and edge_index.dim() == 2
    assert edge_index.size(0) == 2
    return sorted(map(tuple, edge_index.t().tolist()))


def canonical(data) -> dict:
    r"""Everything a HeteroData holds, order-free for edges (a multiset: sorted list)."""
    out = {}
    for key in data.node_types + data.edge_types:
        store = {}
        for attr, value in data[key].items():
            if isinstance(value, torch.Tensor) and attr.endswith('edge_index'):
                store[attr] = ('edges', edge_list(value))
            elif isinstance(value, torch.Tensor):
                store[attr] = (str(value.dtype), tuple(value.shape), value.tolist())
            else:
                store[attr] = value
        out[key] = store
    return out


def assert_encodes(data, ab: Abstract) -> None:
    r""":obj:`data` is exactly the HeteroData :obj:`ab` describes."""
    mods = set(ab.features)
    assert set(data.node_types) == {USER, ITEM} | mods
    assert set(data.edge_types) == ({RATES, REV_RATES} | {(ITEM, 'has', m) for m in mods}
                                    | {(m, 'rev_has', ITEM) for m in mods})
    assert data[USER].num_nodes == ab.num_users
    assert data[ITEM].num_nodes == ab.num_items
    store = data[RATES]
    assert set(store.keys()) == {'edge_index', 'val_edge_index', 'test_edge_index'}
    assert edge_list(store.edge_index) == ab.splits['train']
    assert edge_list(store.val_edge_index) == ab.splits['val']
    assert edge_list(store.test_edge_index) == ab.splits['test']
    assert torch.equal(data[REV_RATES].edge_index, store.edge_index.flip(0))
    for m, x in ab.features.items():
        got = data[m].x
        assert got.dtype == torch.float32 and tuple(got.shape) == x.shape
        assert np.array_equal(got.numpy(), x.astype(np.float32))
        assert data[m].num_nodes == ab.num_items
        kept = [i for i in range(ab.num_items) if i not in set(ab.missing.get(m, []))]
        assert data[ITEM, 'has', m].edge_index.tolist() == [kept, kept]
        assert data[m, 'rev_has', ITEM].edge_index.tolist() == [kept, kept]


def unexpected_warnings(messages: List[str], ab: Abstract) -> List[str]:
    allowed = [] if ab.features else ['holds interactions only']
    # reported, not errors: an empty held-out split, held-out items never trained on
    allowed += [f'the {label} split is empty' for s, label in (('val', 'validation'),
                                                               ('test', 'test'))
                if not ab.splits[s]]
    trained = {i for _, i in ab.splits['train']}
    if any(i not in trained for s in ('val', 'test') for _, i in ab.splits[s]):
        allowed.append('never in training (cold-start items)')
    if any('__' in m for m in ab.features):  # PyG's own, once per process
        allowed.append("in the 'HeteroData' object that contain double underscores")
    return [m for m in messages if not any(a in m for a in allowed)]


# 1. Valid folders load to what they encode ####################################


@examples(120)
@given(st.data())
def test_valid_folder_loads_what_it_encodes(data):
    ab = data.draw(abstract_datasets(), label='dataset')
    name = data.draw(dataset_names, label='name')
    loaded = {}
    if ab.dense_users and ab.dense_items:
        loaded['mmrec'] = load(data.draw(mmrec_folders(ab, name), label='MMRec folder'))
    loaded['json'] = load(data.draw(json_folders(ab, name), label='JSON folder'))
    event(f"formats: {'+'.join(loaded)}")
    for fmt, (got, messages) in loaded.items():
        assert_encodes(got, ab)
        assert not unexpected_warnings(messages, ab), (fmt, messages)
    if len(loaded) == 2:
        assert canonical(loaded['mmrec'][0]) == canonical(loaded['json'][0])


# 2. One corruption: a clear error, never a silent change ######################


@dataclass
class Expect:
    r"""What loading the corrupted folder must do.

    By default: raise one of :obj:`exc` whose message contains one of :obj:`names` (and
    matches :obj:`match` if given). With :obj:`accepted`: load without error, warn with a
    message matching :obj:`accepted`, and give exactly the uncorrupted content."""
    names: Tuple[str, ...]
    exc: Tuple[type, ...] = (DatasetFormatError,)
    match: Optional[str] = None
    accepted: Optional[str] = None


@dataclass
class Corruption:
    name: str
    formats: Tuple[str, ...]
    apply: Callable[[st.DataObject, Folder, Abstract], Tuple[Folder, Expect]]
    applies: Callable[[Folder, Abstract], bool] = lambda folder, ab: True


CORRUPTIONS: List[Corruption] = []


def corruption(formats: Tuple[str, ...], applies=None):
    def register(fn):
        CORRUPTIONS.append(Corruption(fn.__name__, formats, fn,
                                      applies or (lambda folder, ab: True)))
        return fn
    return register


BOTH = ('mmrec', 'json')


def npy_bytes(x: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, x)
    return buf.getvalue()


def insert_bad_byte(d, content: bytes) -> bytes:
    at = d.draw(st.integers(0, len(content)), label='position of the bad byte')
    bad = d.draw(st.sampled_from([b'\xff', b'\xc3', b'\x80']), label='bad byte')
    return content[:at] + bad + content[at:]


# .inter -------------------------------------------------------------------------

@dataclass
class Inter:
    fname: str
    bom: bool
    nl: str
    final: bool
    header: List[str]
    rows: List[List[str]]

    @classmethod
    def parse(cls, folder: Folder) -> 'Inter':
        fname = folder.inter
        text = folder.files[fname].decode('utf-8')  # type: ignore[union-attr]
        bom = text.startswith('\ufeff')
        text = text[bom:]
        nl = '\r\n' if '\r\n' in text else '\n'
        final = text.endswith(nl)
        lines = (text[:-len(nl)] if final else text).split(nl)
        return cls(fname, bom, nl, final, lines[0].split('\t'),
                   [line.split('\t') for line in lines[1:]])

    def col(self, name: str) -> int:
        return [c.strip() for c in self.header].index(name)

    def text(self, header: bool = True, sep: str = '\t') -> str:
        lines = [sep.join(r) for r in ([self.header] if header else []) + self.rows]
        return ('\ufeff' if self.bom else '') + self.nl.join(lines) + self.nl * self.final

    def folder(self, folder: Folder, **kwargs) -> Folder:
        return folder.with_file(self.fname, self.text(**kwargs).encode('utf-8'))


BAD_IDS = ['abc', '', ' ', '1.5', '2.0', '1e3', '0x1', 'NaN', 'nan', 'None', 'null', 'inf',
           '-1', '-7', '\u0661', '\uff15', '\u00b2', '1_000', '1 2', '--1', '+-1', '"1"',
           "'1'", '9' * 20, '-' + '9' * 20, str(2 ** 63), str(2 ** 64)]
BAD_LABELS = ['3', '-1', '4', '10', 'a', '', ' ', '0.0', '1.0', 'train', '\u0660', '9' * 20]


@corruption(('mmrec',))
def inter_bad_id(d, folder, ab):
    t = Inter.parse(folder)
    row = d.draw(st.integers(0, len(t.rows) - 1), label='row')
    col = t.col(d.draw(st.sampled_from(['userID', 'itemID']), label='column'))
    t.rows[row][col] = d.draw(st.sampled_from(BAD_IDS), label='bad id')
    return t.folder(folder), Expect((t.fname,))


@corruption(('mmrec',))
def inter_bad_label(d, folder, ab):
    t = Inter.parse(folder)
    row = d.draw(st.integers(0, len(t.rows) - 1), label='row')
    t.rows[row][t.col('x_label')] = d.draw(st.sampled_from(BAD_LABELS), label='bad label')
    return t.folder(folder), Expect((t.fname,))


@corruption(('mmrec',))
def inter_missing_column(d, folder, ab):
    t = Inter.parse(folder)
    col = t.col(d.draw(st.sampled_from(INTER_COLUMNS), label='column'))
    for r in [t.header] + t.rows:
        del r[col]
    return t.folder(folder), Expect((t.fname,), match='missing column')


@corruption(('mmrec',))
def inter_no_header(d, folder, ab):
    t = Inter.parse(folder)
    return t.folder(folder, header=False), Expect((t.fname,))


@corruption(('mmrec',))
def inter_wrong_separator(d, folder, ab):
    t = Inter.parse(folder)
    sep = d.draw(st.sampled_from([',', ' ', ';', '|', '  ']), label='separator')
    return t.folder(folder, sep=sep), Expect((t.fname,))


@corruption(('mmrec',))
def inter_row_wrong_separator(d, folder, ab):
    t = Inter.parse(folder)
    row = d.draw(st.integers(0, len(t.rows) - 1), label='row')
    sep = d.draw(st.sampled_from([',', ' ', ';', '  ']), label='separator')
    t.rows[row] = [sep.join(t.rows[row])]
    return t.folder(folder), Expect((t.fname,))


@corruption(('mmrec',))
def inter_row_extra_field(d, folder, ab):
    t = Inter.parse(folder)
    row = d.draw(st.integers(0, len(t.rows) - 1), label='row')
    t.rows[row].append(d.draw(extra_text, label='extra field'))
    return t.folder(folder), Expect((t.fname,))


@corruption(('mmrec',))
def inter_row_missing_field(d, folder, ab):
    t = Inter.parse(folder)
    row = d.draw(st.integers(0, len(t.rows) - 1), label='row')
    del t.rows[row][d.draw(st.integers(0, len(t.rows[row]) - 1), label='field')]
    return t.folder(folder), Expect((t.fname,))


@corruption(('mmrec',))
def inter_header_only(d, folder, ab):
    t = Inter.parse(folder)
    t.rows = []
    return t.folder(folder), Expect((t.fname,), match='no interactions')


@corruption(('mmrec',))
def inter_blank(d, folder, ab):
    blank = d.draw(st.sampled_from(['', '\n', '\n\n', '   \n', '\r\n', '\ufeff']),
                   label='text')
    return folder.with_file(folder.inter, blank.encode()), Expect((folder.inter,))


@corruption(('mmrec',))
def inter_no_training_row(d, folder, ab):
    t = Inter.parse(folder)
    col = t.col('x_label')
    label = d.draw(st.sampled_from(['1', '2']), label='new label of the training rows')
    for r in t.rows:
        if r[col] == '0':
            r[col] = label
    return t.folder(folder), Expect((t.fname,), match='no training interaction')


@corruption(('mmrec',))
def inter_duplicate_column(d, folder, ab):
    t = Inter.parse(folder)
    col = d.draw(st.sampled_from(INTER_COLUMNS), label='column')
    t.header.append(col)
    for r in t.rows:
        r.append('0')
    return t.folder(folder), Expect((t.fname,), match='appears 2 times')


@corruption(('mmrec',))
def inter_bad_utf8(d, folder, ab):
    return (folder.with_file(folder.inter, insert_bad_byte(d, folder.files[folder.inter])),
            Expect((folder.inter,)))


@corruption(('mmrec',))
def inter_is_a_directory(d, folder, ab):
    return folder.with_file(folder.inter, DIR), Expect((folder.inter,))


# JSON splits ----------------------------------------------------------------------

split_files = st.sampled_from(SPLIT_FILES)


def json_obj(folder: Folder, fname: str) -> dict:
    return json.loads(folder.files[fname])  # type: ignore[arg-type]


def dumps(obj) -> bytes:
    return json.dumps(obj).encode()


@corruption(('json',))
def json_not_a_mapping(d, folder, ab):
    f = d.draw(split_files, label='file')
    obj = d.draw(st.sampled_from([[], [[0, 1]], [{'0': [0]}], 'abc', 3, None, True, 1.5]),
                 label='content')
    return folder.with_file(f, dumps(obj)), Expect((f,), match='expected a JSON object')


def some_key(d, obj: dict, ab: Abstract) -> str:
    keys = sorted(obj) or [str(u) for u in range(ab.num_users)]
    return d.draw(st.sampled_from(keys), label='user key')


@corruption(('json',))
def json_value_not_a_list(d, folder, ab):
    f = d.draw(split_files, label='file')
    obj = json_obj(folder, f)
    obj[some_key(d, obj, ab)] = d.draw(
        st.sampled_from([3, '1', '[1]', {'0': 1}, None, True, 1.5]), label='value')
    return folder.with_file(f, dumps(obj)), Expect((f,))


BAD_ITEMS = ['3', '0', 1.5, 1.0, True, False, None, [1], {}, -1, -5, 2 ** 63, 2 ** 64,
             -(2 ** 63) - 1, float('nan'), float('inf')]


@corruption(('json',))
def json_bad_item(d, folder, ab):
    f = d.draw(split_files, label='file')
    obj = json_obj(folder, f)
    key = some_key(d, obj, ab)
    items = obj.setdefault(key, [])
    items.insert(d.draw(st.integers(0, len(items)), label='position'),
                 d.draw(st.sampled_from(BAD_ITEMS), label='bad item'))
    return folder.with_file(f, dumps(obj)), Expect((f,))


BAD_KEYS = ['a', '', ' ', '1.5', '-1', '\u0661', '\uff15', '1e3', '0x1', str(2 ** 63),
            str(2 ** 64), 'null', '3 4', '+-1', '1_0', 'None', '"1"']


@corruption(('json',))
def json_bad_key(d, folder, ab):
    f = d.draw(split_files, label='file')
    obj = json_obj(folder, f)
    bad = d.draw(st.sampled_from(BAD_KEYS), label='bad key')
    if obj and d.draw(st.booleans(), label='rename an existing key'):
        obj[bad] = obj.pop(some_key(d, obj, ab))
    else:
        obj[bad] = [0]
    return folder.with_file(f, dumps(obj)), Expect((f,))


@corruption(('json',))
def json_truncated(d, folder, ab):
    f = d.draw(split_files, label='file')
    text = folder.files[f].rstrip()  # type: ignore[union-attr]
    cut = d.draw(st.integers(0, len(text) - 1), label='cut at')
    return folder.with_file(f, text[:cut]), Expect((f,))


@corruption(('json',))
def json_trailing_garbage(d, folder, ab):
    f = d.draw(split_files, label='file')
    junk = d.draw(st.sampled_from([b'x', b',', b'}', b']', b'{}', b'[]', b'0', b'\n0']))
    return folder.with_file(f, folder.files[f] + junk), Expect((f,), match='malformed')


@corruption(('json',))
def json_duplicate_key(d, folder, ab):
    f = d.draw(split_files, label='file')
    items = list(json_obj(folder, f).items())
    if items:
        items.append(items[d.draw(st.integers(0, len(items) - 1), label='repeated key')])
    else:
        items = [('0', []), ('0', [])]
    items = d.draw(st.permutations(items), label='key order')
    text = '{' + ', '.join(f'{json.dumps(k)}: {json.dumps(v)}' for k, v in items) + '}'
    return folder.with_file(f, text.encode()), Expect((f,), match='appears twice')


@corruption(('json',))
def json_split_deleted(d, folder, ab):
    f = d.draw(split_files, label='file')
    # AmazonMM documents a RuntimeError for absent raw files (download() cannot help).
    return (folder.with_file(f, None),
            Expect((f,), exc=(RuntimeError,), match=rf"missing: \['{re.escape(f)}'\]"))


@corruption(('json',))
def json_split_is_a_directory(d, folder, ab):
    f = d.draw(split_files, label='file')
    return folder.with_file(f, DIR), Expect((f,), match='is a directory')


@corruption(('json',))
def json_no_training_item(d, folder, ab):
    keys = d.draw(st.lists(st.sampled_from([str(u) for u in range(ab.num_users)]),
                           unique=True), label='users listed with no item')
    return (folder.with_file('train.json', dumps({k: [] for k in keys})),
            Expect(('train.json',), match='no training interaction'))


@corruption(('json',))
def json_bad_utf8(d, folder, ab):
    f = d.draw(split_files, label='file')
    return folder.with_file(f, insert_bad_byte(d, folder.files[f])), Expect((f,))


def has_features(folder: Folder, ab: Abstract) -> bool:
    return bool(ab.features)


# Id maps -----------------------------------------------------------------------------

map_files = st.sampled_from(['user2id.json', 'item2id.json'])


def the_map(folder: Folder, ab: Abstract, fname: str) -> Dict[str, int]:
    r"""The id map :obj:`fname` of :obj:`folder`, or a correct one to corrupt."""
    if fname in folder.files:
        return json_obj(folder, fname)
    size = ab.num_users if fname == 'user2id.json' else ab.num_items
    return id_map(fname[0], size, list(range(size)))


@corruption(('json',))
def map_not_a_mapping(d, folder, ab):
    f = d.draw(map_files, label='file')
    obj = d.draw(st.sampled_from([[], [0, 1], 'a', 3, None]), label='content')
    return folder.with_file(f, dumps(obj)), Expect((f,), match='expected a JSON object')


@corruption(('json',))
def map_bad_value(d, folder, ab):
    f = d.draw(map_files, label='file')
    obj = the_map(folder, ab, f)
    key = d.draw(st.sampled_from(sorted(obj)), label='key')
    obj[key] = d.draw(st.sampled_from(['a', '', 1.5, None, -1, True, [0], {}, 2 ** 63,
                                       '1.5', '\u0661']), label='bad id')
    return folder.with_file(f, dumps(obj)), Expect((f,))


@corruption(('json',))
def map_id_out_of_range(d, folder, ab):
    f = d.draw(map_files, label='file')
    obj = the_map(folder, ab, f)
    key = d.draw(st.sampled_from(sorted(obj)), label='key')
    obj[key] = len(obj) + d.draw(st.integers(0, 3), label='beyond the size')
    return folder.with_file(f, dumps(obj)), Expect((f,), match='out of range')


def map_of_two(folder: Folder, ab: Abstract, f: str) -> bool:
    return len(the_map(folder, ab, f)) >= 2


@corruption(('json',), applies=lambda folder, ab: ab.num_users >= 2 or ab.num_items >= 2)
def map_two_keys_one_id(d, folder, ab):
    f = d.draw(map_files.filter(lambda f: map_of_two(folder, ab, f)), label='file')
    obj = the_map(folder, ab, f)
    a, b = d.draw(st.lists(st.sampled_from(sorted(obj)), min_size=2, max_size=2,
                           unique=True), label='keys')
    obj[a] = obj[b]
    return folder.with_file(f, dumps(obj)), Expect((f,), match='both map to id')


@corruption(('json',), applies=lambda folder, ab: ab.num_users >= 2 or ab.num_items >= 2)
def map_gap(d, folder, ab):
    f = d.draw(map_files.filter(lambda f: map_of_two(folder, ab, f)), label='file')
    obj = the_map(folder, ab, f)
    gone = d.draw(st.integers(0, len(obj) - 2), label='id removed')
    obj = {k: v for k, v in obj.items() if v != gone}
    return folder.with_file(f, dumps(obj)), Expect((f,), match='out of range')


@corruption(('json',))
def map_smaller_than_ids(d, folder, ab):
    f = d.draw(map_files, label='file')
    column = 0 if f == 'user2id.json' else 1
    top = max(p[column] for p in ab.pairs())  # the largest id used
    size = d.draw(st.integers(0, top), label='map size')
    # Valid on its own, but an id used by the interactions is beyond it.
    return (folder.with_file(f, dumps(id_map(f[0], size, list(range(size))))),
            Expect(SPLIT_FILES + (f,), match=rf"out of range: '.*{f}'"))


@corruption(('json',), applies=has_features)
def map_more_items_than_feature_rows(d, folder, ab):
    size = ab.num_items + d.draw(st.integers(1, 3), label='extra items')
    return (folder.with_file('item2id.json', dumps(id_map('i', size, list(range(size))))),
            Expect(tuple(folder.feature_files), match='feature rows'))


# Features ----------------------------------------------------------------------------


def feature_file(d, folder: Folder) -> str:
    return d.draw(st.sampled_from(folder.feature_files), label='feature file')


@corruption(BOTH, applies=has_features)
def feat_truncated(d, folder, ab):
    f = feature_file(d, folder)
    raw = npy_bytes(folder.files[f])  # type: ignore[arg-type]
    cut = d.draw(st.integers(0, len(raw) - 1), label='cut at')
    return folder.with_file(f, raw[:cut]), Expect((f,), match='cannot read')


@corruption(BOTH, applies=has_features)
def feat_not_finite(d, folder, ab):
    f = feature_file(d, folder)
    x = folder.files[f].copy()  # type: ignore[union-attr]
    if x.dtype.kind != 'f':
        x = x.astype(np.float64)
    row = d.draw(st.integers(0, x.shape[0] - 1), label='row')
    col = d.draw(st.integers(0, x.shape[1] - 1), label='column')
    x[row, col] = d.draw(st.sampled_from([np.nan, np.inf, -np.inf]), label='value')
    return folder.with_file(f, x), Expect((f,), match=rf'row {row} .*NaN or inf')


@corruption(BOTH, applies=has_features)
def feat_beyond_float32(d, folder, ab):
    f = feature_file(d, folder)
    x = folder.files[f].astype(np.float64)  # type: ignore[union-attr]
    row = d.draw(st.integers(0, x.shape[0] - 1), label='row')
    x[row, 0] = d.draw(st.sampled_from([1e39, -1e39, 1e300, -1.7e308]), label='value')
    return folder.with_file(f, x), Expect((f,), match=rf'row {row} .*float32')


@corruption(BOTH, applies=has_features)
def feat_wrong_row_count(d, folder, ab):
    f = feature_file(d, folder)
    x = folder.files[f]
    rows = d.draw(st.integers(0, ab.num_items + 2).filter(lambda r: r != ab.num_items),
                  label='rows')
    y = np.resize(x, (rows, x.shape[1])).astype(x.dtype)  # type: ignore[union-attr]
    # A shorter file may be reported as an item id beyond the feature rows, against the
    # interaction file that holds it; several feature files, as their disagreement.
    return (folder.with_file(f, y),
            Expect((f,) + folder.interaction_files + tuple(folder.feature_files),
                   match='rows'))


@corruption(BOTH, applies=has_features)
def feat_wrong_ndim(d, folder, ab):
    f = feature_file(d, folder)
    x = folder.files[f]
    y = d.draw(st.sampled_from([x.reshape(-1), x[None], x[..., None],  # type: ignore
                                np.asarray(x.flat[0])]), label='array')  # type: ignore
    return folder.with_file(f, y), Expect((f,), match='2-D')


@corruption(BOTH, applies=has_features)
def feat_no_column(d, folder, ab):
    f = feature_file(d, folder)
    x = folder.files[f]
    return (folder.with_file(f, np.zeros((x.shape[0], 0), x.dtype)),  # type: ignore
            Expect((f,), match='no column'))


@corruption(BOTH, applies=has_features)
def feat_not_numeric(d, folder, ab):
    f = feature_file(d, folder)
    rows, cols = folder.files[f].shape  # type: ignore[union-attr]
    dtype = d.draw(st.sampled_from([np.bool_, np.complex64, '<U3', 'S2', object,
                                    [('a', 'f4')], 'datetime64[s]', 'V4']), label='dtype')
    return folder.with_file(f, np.zeros((rows, cols), dtype)), Expect((f,))


@corruption(BOTH, applies=has_features)
def feat_not_npy(d, folder, ab):
    f = feature_file(d, folder)
    x = folder.files[f]
    npz = io.BytesIO()
    np.savez(npz, x=x)
    content = d.draw(st.sampled_from([b'', b'0 1 2\n', b'\x93NUMPY', npz.getvalue(),
                                      json.dumps(x.tolist()).encode()]),  # type: ignore
                     label='content')
    return folder.with_file(f, content), Expect((f,))


@corruption(BOTH, applies=has_features)
def feat_is_a_directory(d, folder, ab):
    f = feature_file(d, folder)
    return folder.with_file(f, DIR), Expect((f,))


@corruption(BOTH)
def feat_reserved_modality_name(d, folder, ab):
    m = d.draw(st.sampled_from(RESERVED), label='modality')
    f = f'{m}_feat.npy'
    return (folder.with_file(f, np.zeros((ab.num_items, 1), np.float32)),
            Expect((f,), match='reserved'))


@corruption(BOTH, applies=has_features)
def missing_list_bad_line(d, folder, ab):
    m = d.draw(st.sampled_from(sorted(ab.features)), label='modality')
    f = f'{m}_missing.txt'
    lines = (folder.files.get(f, b'').decode() or '').splitlines()  # type: ignore
    n = ab.num_items
    bad = d.draw(st.sampled_from(['a', '1.5', '-1', str(n), str(n + 5), '\u0661', '1 2',
                                  '0x1', str(2 ** 64)]), label='bad line')
    lines.insert(d.draw(st.integers(0, len(lines)), label='position'), bad)
    return folder.with_file(f, '\n'.join(lines).encode()), Expect((f,), match='line')


@corruption(BOTH)
def missing_list_without_features(d, folder, ab):
    m = d.draw(modality_names.filter(lambda m: m not in ab.features), label='modality')
    content = d.draw(st.sampled_from([b'0\n', b'', b'not an id\n', b'\xff']), label='text')
    # Documented: ignored with a warning (there is nothing to mark as missing).
    return (folder.with_file(f'{m}_missing.txt', content),
            Expect((), accepted=rf"{re.escape(m)}_missing.txt' is ignored"))


@pytest.mark.parametrize('bad', CORRUPTIONS, ids=lambda c: c.name)
@examples(15)
@given(data=st.data())
def test_single_corruption_is_a_clear_error(bad, data):
    fmt = data.draw(st.sampled_from(bad.formats), label='format')
    ab = data.draw(abstract_datasets(dense=fmt == 'mmrec',
                                     min_modalities=int(bad.applies is has_features)),
                   label='dataset')
    name = data.draw(dataset_names, label='name')
    folders = mmrec_folders if fmt == 'mmrec' else json_folders
    folder = data.draw(folders(ab, name), label='valid folder')
    assume(bad.applies(folder, ab))
    corrupted, expect = bad.apply(data, folder, ab)

    with tempfile.TemporaryDirectory() as root, warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        corrupted.write(root)
        try:
            got = AmazonMM(root, name)[0]
        except expect.exc as e:
            assert expect.accepted is None, f'{bad.name}: documented as accepted, got {e!r}'
            msg = str(e)
            assert any(n in msg for n in expect.names), (
                f'{bad.name}: the message does not name {expect.names}: {msg}')
            if expect.match is not None:
                assert re.search(expect.match, msg), f'{bad.name}: {msg!r}'
            return
    assert expect.accepted is not None, (
        f'{bad.name}: the corrupted folder loaded without error (a silent change)')
    messages = [str(x.message) for x in w]
    assert any(re.search(expect.accepted, m) for m in messages), (bad.name, messages)
    assert_encodes(got, ab)


# 3. The documented changes ####################################################


@examples(50)
@given(st.data())
def test_documented_changes(data):
    r"""Duplicates within a split: dropped with a warning counting them. A pair in training
    and a held-out split: kept with a warning counting them (strict: an error). Held-out
    pairs of users without training items (cold start): dropped with a warning counting
    users and pairs (strict: an error); the users still count (max id + 1)."""
    ab = data.draw(abstract_datasets(dense=True), label='dataset')
    fmt = data.draw(st.sampled_from(BOTH), label='format')
    files = {s: list(ab.splits[s]) for s in SPLITS}  # what the files will list
    expected = {s: list(ab.splits[s]) for s in SPLITS}  # what loading gives
    dups = {s: 0 for s in SPLITS}
    overlap = {'val': 0, 'test': 0}
    kinds = data.draw(st.sets(st.sampled_from(['dup', 'overlap', 'cold']), min_size=1),
                      label='changes')
    if 'dup' in kinds:
        for s in SPLITS:
            if ab.splits[s]:
                extra = data.draw(st.lists(st.sampled_from(ab.splits[s]), max_size=3),
                                  label=f'{s} duplicates')
                files[s] += extra
                dups[s] = len(extra)
    if 'overlap' in kinds:
        for s in ('val', 'test'):
            fresh = sorted(set(ab.splits['train']) - set(ab.splits[s]))
            extra = data.draw(st.sets(st.sampled_from(fresh), max_size=2) if fresh
                              else st.just(set()), label=f'training pairs also in {s}')
            files[s] += sorted(extra)
            expected[s] = sorted(expected[s] + sorted(extra))
            overlap[s] = len(extra)
    num_users = ab.num_users
    cold_users, cold_pairs = set(), 0
    if 'cold' in kinds:
        trained = {u for u, _ in ab.splits['train']}
        candidates = [u for u in range(ab.num_users + 2) if u not in trained]
        for s in ('val', 'test'):
            extra = data.draw(st.sets(st.tuples(st.sampled_from(candidates),
                                                st.integers(0, ab.num_items - 1)),
                                      max_size=3), label=f'cold-start pairs in {s}')
            files[s] += sorted(extra)
            cold_users |= {u for u, _ in extra}
            cold_pairs += len(extra)
        num_users = max([num_users] + [u + 1 for u in cold_users])
    for s in SPLITS:
        files[s] = data.draw(st.permutations(files[s]), label=f'{s} as written')

    changed = Abstract(num_users, ab.num_items, files, ab.features, ab.missing)
    if fmt == 'mmrec':
        folder = data.draw(mmrec_folders(changed, 'toy'), label='folder')
    else:
        folder = data.draw(json_folders(
            replace(changed, splits={s: sorted(p) for s, p in files.items()}), 'toy'),
            label='folder')
    got, messages = load(folder)
    assert_encodes(got, replace(ab, num_users=num_users, splits=expected))

    wanted = [rf"dropped {n} duplicated interaction\(s\) in the '{s}' split"
              for s, n in dups.items() if n]
    if any(overlap.values()):
        wanted.append(rf"{overlap['val']} validation and {overlap['test']} test "
                      rf"interaction\(s\) also appear in training; kept")
    if cold_users:
        wanted.append(rf"{len(cold_users)} cold-start user\(s\) .*\({cold_pairs} held-out "
                      rf"interaction\(s\)\); dropped")
    trained = {i for _, i in expected['train']}
    cold_items = {i for s in ('val', 'test') for _, i in expected[s]} - trained
    if cold_items:
        wanted.append(rf"{len(cold_items)} item\(s\) appear in validation/test but never "
                      rf"in training \(cold-start items\); kept")
    wanted += [f'the {label} split is empty' for s, label in (('val', 'validation'),
                                                              ('test', 'test'))
               if not expected[s]]
    if not ab.features:
        wanted.append('holds interactions only')
    for pattern in wanted:
        assert sum(bool(re.search(pattern, m)) for m in messages) == 1, (pattern, messages)
    assert len(messages) == len(wanted), (wanted, messages)

    if any(overlap.values()) or cold_users:
        with pytest.raises(DatasetFormatError, match=r'\(strict=True\)'):
            load(folder, strict=True)
