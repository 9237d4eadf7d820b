r"""The :class:`AmazonMM` dataset: any MMRec-style multimodal recommendation folder."""
import os
import os.path as osp
import warnings
from typing import Callable, List, Optional

from torch_geometric.data import HeteroData, InMemoryDataset

from .readers import FEAT_SUFFIX, SPLIT_FILES, SPLIT_NAMES, detect_format, read_raw_folder
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
      warnings (and are errors with :obj:`strict=True`), where MMRec is silent.

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
        transform (callable, optional): applied to the data object on every access.
            (default: :obj:`None`)
        pre_transform (callable, optional): applied once before saving.
            (default: :obj:`None`)
        force_reload (bool, optional): re-process even if a processed file exists.
            (default: :obj:`False`)

    Raises:
        ~mrdib_pyg.data.readers.DatasetFormatError: (a :class:`ValueError`) on any
            malformed or inconsistent raw file, naming the file and the line/row/field.
        RuntimeError: if the raw files are absent (see :meth:`download`).

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
    ) -> None:
        if fill_missing not in FILL_OPTIONS:
            raise ValueError(f"'{self.__class__.__name__}' does not support "
                             f"fill_missing='{fill_missing}' (expected one of "
                             f"{FILL_OPTIONS})")
        if not name or osp.basename(name) != name:
            raise ValueError(f"'{self.__class__.__name__}' expects a plain folder name "
                             f"(got name={name!r})")
        self.name = name
        self.fill_missing = fill_missing
        self.strict = bool(strict)
        super().__init__(root, transform, pre_transform, force_reload=force_reload)
        self.load(self.processed_paths[0], data_cls=HeteroData)

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
    def processed_file_names(self) -> str:
        # Every option that changes the stored graph is in the name.
        strict = '_strict' if self.strict else ''
        return f'data_fill-{self.fill_missing}{strict}.pt'

    def download(self) -> None:
        r"""Never touches the network: MMRec's files sit in a Google Drive *folder*,
        which cannot be fetched by file id, so this raises a :class:`RuntimeError` that
        says which files to put where by hand."""
        present = sorted(os.listdir(self.raw_dir)) if osp.isdir(self.raw_dir) else []
        known = self.name.lower() in KNOWN_COUNTS
        source = (f"The published MMRec files (Baby/Sports/Clothing/...) are in the "
                  f"Google Drive folder {MMREC_DRIVE_URL} ; download the "
                  f"'{self.name}' folder by hand." if known else
                  f"MMRec-format datasets are published in the Google Drive folder "
                  f"{MMREC_DRIVE_URL} .")
        raise RuntimeError(
            f"{self.__class__.__name__}: the raw files of dataset '{self.name}' are "
            f"missing from '{self.raw_dir}' (found: {present or 'nothing'}). They cannot "
            f"be downloaded automatically. Put there either\n"
            f"  (MMRec format) '{self.name}.inter' (tab-separated: userID, itemID, "
            f"x_label) plus optional 'image_feat.npy' and 'text_feat.npy', or\n"
            f"  (LATTICE JSON format) {', '.join(repr(f) for f in SPLIT_FILES)} plus "
            f"optional 'user2id.json', 'item2id.json', 'image_feat.npy' and "
            f"'text_feat.npy'.\n"
            f"Other modalities go in '<modality>{FEAT_SUFFIX}'. {source} "
            f"See datasets/README.md.")

    def process(self) -> None:
        parts = read_raw_folder(self.raw_dir, self.name, strict=self.strict)
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

        # Write beside the target, then rename: a failure never leaves a stale file.
        path = self.processed_paths[0]
        tmp = path + '.tmp'
        try:
            self.save([data], tmp)
            os.replace(tmp, path)
        finally:
            if osp.exists(tmp):
                os.remove(tmp)

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

