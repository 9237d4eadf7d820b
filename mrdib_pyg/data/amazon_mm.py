r"""The :class:`AmazonMM` dataset: any MMRec-style multimodal recommendation folder."""
import os
import os.path as osp
import re
import warnings
from typing import Any, Callable, Dict, List, Optional

from torch_geometric.data import HeteroData, InMemoryDataset

from .cache import (checksum_problem, fingerprint_changes, fingerprint_files, read_record,
                    write_checked)
from .readers import (FEAT_SUFFIX, SPLIT_FILES, SPLIT_NAMES, check_is_file, detect_format,
                      raw_files, read_raw_folder)
from .schema import ITEM, RATES, USER, build_heterodata, item_features

MMREC_DRIVE_URL = ('https://drive.google.com/drive/folders/'
                   '13cBy1EA_saTUuXxVllKgtfci2A09jyaG?usp=sharing')

# name -> (#users, #items, #interactions) after MMRec's preprocessing
KNOWN_COUNTS = {
    'baby': (19445, 7050, 160792),
    'sports': (35598, 18357, 296337),
    'clothing': (39387, 23033, 278677),
}

FILL_OPTIONS = ('keep', 'mean', 'zero')

# Bump when process() changes what it stores: older processed files are then rebuilt.
PROCESSED_VERSION = 1


class AmazonMM(InMemoryDataset):
    r"""A multimodal recommendation dataset in the format of MMRec
    (`"A Comprehensive Survey on Multimodal Recommender Systems"
    <https://arxiv.org/abs/2302.04473>`_, `enoche/MMRec <https://github.com/enoche/MMRec>`_)
    or of LATTICE-style JSON splits, e.g. the Amazon Baby, Sports and Clothing 5-core
    datasets with CNN image features (4096-d) and Sentence-Transformer text features
    (384-d).

    Any :obj:`name` works: the raw files live in :obj:`root/<name>/raw/` and the processed
    file in :obj:`root/<name>/processed/`. The format is detected from the files present:

    * **MMRec**: ``<name>.inter`` (or the single ``*.inter`` file), tab-separated with the
      columns :obj:`userID`, :obj:`itemID`, :obj:`x_label` (0/1/2 = train/valid/test);
    * **LATTICE JSON**: ``train.json``, ``val.json``, ``test.json`` (user id :math:`\rightarrow`
      list of item ids) and optional ``user2id.json`` / ``item2id.json``;

    plus, in both cases, optional ``<modality>_feat.npy`` matrices (``image_feat.npy``
    :math:`\rightarrow` modality :obj:`'image'`, ``text_feat.npy`` :math:`\rightarrow`
    :obj:`'text'`, any other name works) and ``<modality>_missing.txt`` files listing the
    items without that modality (one id per line). ``user_graph_dict.npy`` is ignored.
    Without any feature file the dataset holds the interactions only (with a warning).

    The single :class:`~torch_geometric.data.HeteroData` follows
    :mod:`mrdib_pyg.data.schema`: :obj:`data['user', 'rates', 'item'].edge_index` holds the
    **training** interactions only, :obj:`val_edge_index` / :obj:`test_edge_index` the
    held-out positives, and each modality is a node type linked to its items by
    :obj:`('item', 'has', m)` edges (none for items declared missing).

    Deliberate differences from MMRec:

    * items declared missing keep their stored rows by default (:obj:`fill_missing='keep'`)
      and lose their :obj:`has` edge; MMRec's mean filling is :obj:`fill_missing='mean'`;
    * duplicated interactions within a split are dropped (MMRec keeps them), with a warning;
    * the number of items must equal every feature file's row count, and NaN/inf features
      are errors (MMRec checks neither);
    * pairs in both training and a held-out split and cold-start users are reported by
      warnings (and are errors with :obj:`strict=True`), where MMRec is silent;
    * an id range far larger than the ids used (max id + 1 > 2 :math:`\times` distinct
      ids + 1000, without an id map or, for items, feature files to bound it) is taken
      for a mistyped id and is an error, unless :obj:`allow_sparse_ids=True`.

    **The processed file is never stale nor silently corrupt.** Beside
    ``processed/data_<options>.pt`` goes ``processed/fingerprint_<options>.json``: the
    name, size, modification time and SHA-1 of every raw file the readers look at, the
    options that change the result (including :obj:`pre_transform`) and the SHA-1 of the
    processed file. Every load compares them (hashing streams the files; about a quarter
    of a second for MMRec's Baby features) and, on any difference, re-processes
    automatically with a warning that says why: which raw file was added, removed or
    changed (its size or content; a new modification time alone is not a change), which
    option changed, or that the processed file is corrupted (truncated, emptied, replaced,
    a flipped byte) or has no fingerprint. The processed folder is only a cache of the raw
    files, so rebuilding it loses nothing. A processed file whose checksum matches but
    that still cannot be loaded (e.g. written by an incompatible PyTorch) is an error
    naming the file; :obj:`force_reload=True` rebuilds it. Each writer (e.g. several DDP
    ranks processing the same dataset for the first time) writes its own temporary file
    and renames it into place, so no reader ever sees a torn file.

    Args:
        root (str): root folder; the dataset lives in :obj:`root/<name>/`.
        name (str): the dataset name, e.g. :obj:`'baby'`. Known names (:obj:`'baby'`,
            :obj:`'sports'`, :obj:`'clothing'`) add a check against MMRec's published
            counts (a warning if they differ) and download help.
        fill_missing (str, optional): what the feature rows of items declared in
            ``<modality>_missing.txt`` become: :obj:`'keep'` (the rows as stored),
            :obj:`'mean'` (the mean of the available rows, MMRec's choice) or
            :obj:`'zero'`. Either way such items get no :obj:`has` edge.
            (default: :obj:`'keep'`)
        strict (bool, optional): raise instead of warning on pairs in both training and a
            held-out split, and on cold-start users. (default: :obj:`False`)
        allow_sparse_ids (bool, optional): accept user/item id ranges with large unused
            parts (see above), for genuinely sparse id spaces. (default: :obj:`False`)
        transform (callable, optional): applied to the data object on every access.
            (default: :obj:`None`)
        pre_transform (callable, optional): applied once before saving.
            (default: :obj:`None`)
        force_reload (bool, optional): re-process even if an up-to-date processed file
            exists. (default: :obj:`False`)

    Raises:
        ValueError: if :obj:`name` is not a plain folder name (``.``, ``..``, or a path).
        ~mrdib_pyg.data.readers.DatasetFormatError: (a :class:`ValueError`) on any
            malformed or inconsistent raw file, naming the file and the line/row/field.
        RuntimeError: if the raw files are absent (see :meth:`download`), or if the
            processed file cannot be loaded although its checksum matches.

    **STATS:** (MMRec's preprocessing; the splits are MMRec's random per-user splits)

    .. list-table::
        :widths: 10 10 10 10 10 10
        :header-rows: 1

        * - Name
          - #users
          - #items
          - #interactions
          - image dim
          - text dim
        * - Baby
          - 19,445
          - 7,050
          - 160,792
          - 4,096
          - 384
        * - Sports
          - 35,598
          - 18,357
          - 296,337
          - 4,096
          - 384
        * - Clothing
          - 39,387
          - 23,033
          - 278,677
          - 4,096
          - 384
    """
    url = MMREC_DRIVE_URL

    def __init__(
        self,
        root: str,
        name: str,
        fill_missing: str = 'keep',
        strict: bool = False,
        transform: Optional[Callable] = None,
        pre_transform: Optional[Callable] = None,
        force_reload: bool = False,
        allow_sparse_ids: bool = False,
    ) -> None:
        if fill_missing not in FILL_OPTIONS:
            raise ValueError(f"'{self.__class__.__name__}' does not support "
                             f"fill_missing='{fill_missing}' (expected one of "
                             f"{FILL_OPTIONS})")
        if name in ('', '.', '..') or re.search(r'[/\\]', name):
            raise ValueError(f"'{self.__class__.__name__}' expects a plain folder name, "
                             f"not a path (got name={name!r})")
        self.name = name
        self.fill_missing = fill_missing
        self.strict = bool(strict)
        self.allow_sparse_ids = bool(allow_sparse_ids)
        super().__init__(root, transform, pre_transform, force_reload=force_reload)
        path = self.processed_paths[0]
        try:
            self.load(path, data_cls=HeteroData)
        except MemoryError:
            raise
        except Exception as e:  # the checksum matched: not a torn or flipped file
            raise RuntimeError(
                f"{self.__class__.__name__}: cannot load the processed file '{path}' "
                f"({type(e).__name__}: {e}); pass force_reload=True to rebuild it from "
                f"the raw files") from e

    @property
    def raw_dir(self) -> str:
        return osp.join(self.root, self.name, 'raw')

    @property
    def processed_dir(self) -> str:
        return osp.join(self.root, self.name, 'processed')

    @property
    def raw_file_names(self) -> List[str]:
        # Depends on the files present: PyG calls download() when one is missing.
        fmt, files = detect_format(self.raw_dir, self.name)
        return files if fmt is not None else [f'{self.name}.inter']

    @property
    def _options_tag(self) -> str:
        # Every option that changes the stored graph is in the file names.
        return (f'_fill-{self.fill_missing}' + ('_strict' if self.strict else '') +
                ('_sparse' if self.allow_sparse_ids else ''))

    @property
    def processed_file_names(self) -> str:
        return f'data{self._options_tag}.pt'

    @property
    def fingerprint_path(self) -> str:
        r"""The JSON record of what the processed file was built from (see above)."""
        return osp.join(self.processed_dir, f'fingerprint{self._options_tag}.json')

    def _options(self) -> Dict[str, Any]:
        pre = 'None' if self.pre_transform is None else re.sub(
            r' at 0x[0-9a-fA-F]+', '', str(self.pre_transform))  # no memory address
        return dict(version=PROCESSED_VERSION, name=self.name,
                    fill_missing=self.fill_missing, strict=self.strict,
                    allow_sparse_ids=self.allow_sparse_ids, pre_transform=pre)

    def _stale_reason(self) -> Optional[str]:
        # Why the existing processed file is not what the raw files and options give now.
        record = read_record(self.fingerprint_path)
        if record is not None:
            old, now = record.get('options', {}), self._options()
            changed = [f"option '{k}' changed ({old.get(k)!r} -> {v!r})"
                       for k, v in now.items() if old.get(k) != v]
            if changed:
                return ', '.join(changed)
            changes = fingerprint_changes(record.get('raw', {}),
                                          fingerprint_files(raw_files(self.raw_dir)))
            if changes:
                return f"{changes} (in '{self.raw_dir}')"
        return checksum_problem(self.processed_paths[0], record, self.fingerprint_path)

    def _process(self) -> None:
        # PyG's Dataset._process re-processes only when the processed file is absent or
        # force_reload=True; also do it when the file is stale or corrupted, and say why.
        if not self.force_reload and osp.exists(self.processed_paths[0]):
            reason = self._stale_reason()
            if reason is not None:
                warnings.warn(f"{self.__class__.__name__} '{self.name}': re-processing the "
                              f"raw files because {reason}", stacklevel=5)
                self.force_reload = True
        existed = osp.isdir(self.processed_dir)
        try:
            super()._process()
        except BaseException:
            # PyG creates the folder before process() runs: a failed first build would
            # leave an empty processed/ behind
            if not existed and osp.isdir(self.processed_dir) \
                    and not os.listdir(self.processed_dir):
                os.rmdir(self.processed_dir)
            raise

    def download(self) -> None:
        r"""Never touches the network: MMRec's files sit in a Google Drive *folder*,
        which cannot be fetched by file id, so this raises a :class:`RuntimeError` that
        says which files to put where by hand (or a
        :class:`~mrdib_pyg.data.readers.DatasetFormatError` if a raw file is there but is
        a broken symbolic link or a link loop)."""
        for path in self.raw_paths:  # there, but a link loop, a broken link, ...
            if osp.lexists(path):
                check_is_file(path)
        present = sorted(os.listdir(self.raw_dir)) if osp.isdir(self.raw_dir) else []
        absent = [osp.basename(p) for p in self.raw_paths if not osp.lexists(p)]
        known = self.name.lower() in KNOWN_COUNTS
        source = (f"The published MMRec files (Baby/Sports/Clothing/...) are in the "
                  f"Google Drive folder {MMREC_DRIVE_URL} ; download the "
                  f"'{self.name}' folder by hand." if known else
                  f"MMRec-format datasets are published in the Google Drive folder "
                  f"{MMREC_DRIVE_URL} .")
        raise RuntimeError(
            f"{self.__class__.__name__}: the raw files of dataset '{self.name}' are "
            f"missing from '{self.raw_dir}' (missing: {absent}; found: "
            f"{present or 'nothing'}). They cannot "
            f"be downloaded automatically. Put there either\n"
            f"  (MMRec format) '{self.name}.inter' (tab-separated: userID, itemID, "
            f"x_label) plus optional 'image_feat.npy' and 'text_feat.npy', or\n"
            f"  (LATTICE JSON format) {', '.join(repr(f) for f in SPLIT_FILES)} plus "
            f"optional 'user2id.json', 'item2id.json', 'image_feat.npy' and "
            f"'text_feat.npy'.\n"
            f"Other modalities go in '<modality>{FEAT_SUFFIX}'. {source} "
            f"See datasets/README.md.")

    def process(self) -> None:
        # Fingerprint first: a raw file changed while being read is seen as changed later.
        raw = fingerprint_files(raw_files(self.raw_dir))
        parts = read_raw_folder(self.raw_dir, self.name, strict=self.strict,
                                allow_sparse_ids=self.allow_sparse_ids)
        if not parts.features:
            warnings.warn(f"{self.__class__.__name__} '{self.name}': no "
                          f"'<modality>{FEAT_SUFFIX}' file in '{self.raw_dir}'; the dataset "
                          f"holds interactions only", stacklevel=2)
        data = build_heterodata(parts.num_users, parts.num_items, parts.splits['train'],
                                parts.splits['val'], parts.splits['test'],
                                parts.features, parts.missing)
        for modality, miss in parts.missing.items():
            if self.fill_missing == 'mean' and miss.numel() == parts.num_items:
                raise ValueError(f"'{self.raw_dir}': every item is declared missing for "
                                 f"'{modality}', so fill_missing='mean' has no rows to "
                                 f"average")
            data[modality].x = item_features(data, modality, self.fill_missing)
        self._check_known_counts(data)

        if self.pre_transform is not None:
            data = self.pre_transform(data)

        # Own temporary files, renamed into place, with the fingerprint and checksum.
        write_checked(self.processed_paths[0], lambda tmp: self.save([data], tmp),
                      self.fingerprint_path, dict(options=self._options(), raw=raw))

    def _check_known_counts(self, data: HeteroData) -> None:
        expected = KNOWN_COUNTS.get(self.name.lower())
        if expected is None:
            return
        store = data[RATES]
        got = (data[USER].num_nodes, data[ITEM].num_nodes,
               sum(store[f'{s}_edge_index' if s != 'train' else 'edge_index'].size(1)
                   for s in SPLIT_NAMES))
        if got != expected:
            warnings.warn(f"{self.__class__.__name__} '{self.name}': found {got[0]} users, "
                          f"{got[1]} items, {got[2]} interactions; MMRec's '{self.name}' "
                          f"has {expected[0]}, {expected[1]}, {expected[2]} (a different "
                          f"preprocessing or split?)", stacklevel=3)

    @property
    def num_users(self) -> int:
        r"""The number of users."""
        return int(self._data[USER].num_nodes)

    @property
    def num_items(self) -> int:
        r"""The number of items."""
        return int(self._data[ITEM].num_nodes)

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}({self.name}, users={self.num_users}, '
                f'items={self.num_items})')

