import shutil
import socket
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from mrdib_pyg.data import AmazonMM
from mrdib_pyg.data.amazon_mm import MMREC_DRIVE_URL
from mrdib_pyg.data.readers import DatasetFormatError
from mrdib_pyg.data.schema import ITEM, RATES, REV_RATES, USER, missing_items

SHARED_BABY = Path(__file__).resolve().parents[2].parent / 'shared' / 'data' / 'amazon-baby'


def as_set(edge_index):
    return set(map(tuple, edge_index.t().tolist()))


def quiet(**kwargs):
    r"""Construct AmazonMM with warnings turned into errors (the toy data is clean)."""
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        return AmazonMM(**kwargs)


def data_files(root, name='toy'):
    folder = Path(root) / name / 'processed'
    return [p.name for p in folder.glob('data*')] if folder.exists() else []


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError('AmazonMM tried to open a network socket')
    monkeypatch.setattr(socket, 'socket', refuse)
    monkeypatch.setattr(socket, 'create_connection', refuse)


@pytest.mark.parametrize('fmt', ['mmrec', 'json'])
def test_schema(fmt, make_mmrec, make_json):
    from conftest import TEST, TRAIN, VAL
    root = make_mmrec() if fmt == 'mmrec' else make_json()
    dataset = quiet(root=str(root), name='toy')
    assert len(dataset) == 1
    assert (dataset.num_users, dataset.num_items) == (4, 5)
    assert repr(dataset) == 'AmazonMM(toy, users=4, items=5)'
    data = dataset[0]
    assert set(data.node_types) == {USER, ITEM, 'image', 'text'}
    for t in data.node_types:
        assert data[t].num_nodes is not None
    assert data[USER].num_nodes == 4 and data[ITEM].num_nodes == 5

    store = data[RATES]
    assert as_set(store.edge_index) == set(TRAIN)
    assert as_set(store.val_edge_index) == set(VAL)
    assert as_set(store.test_edge_index) == set(TEST)
    assert store.edge_index.dtype == torch.long
    assert torch.equal(data[REV_RATES].edge_index, store.edge_index.flip(0))

    for m, dim in (('image', 8), ('text', 4)):
        assert data[m].x.shape == (5, dim) and data[m].x.dtype == torch.float32
        assert data[m].num_nodes == 5
        assert data[ITEM, 'has', m].edge_index.tolist() == [list(range(5))] * 2
        assert data[m, 'rev_has', ITEM].edge_index.tolist() == [list(range(5))] * 2
        raw = np.load(root / 'toy' / 'raw' / f'{m}_feat.npy')
        assert torch.allclose(data[m].x, torch.from_numpy(raw).float())


@pytest.mark.parametrize('fmt', ['mmrec', 'json'])
def test_no_held_out_pair_in_message_passing_graph(fmt, make_mmrec, make_json):
    # Held-out pairs are also planted in training-looking places: a user's val item
    # listed twice, and the overlap case, must still never enter edge_index unless
    # they are genuinely training pairs.
    from conftest import TEST, TRAIN, VAL
    root = make_mmrec() if fmt == 'mmrec' else make_json()
    data = quiet(root=str(root), name='toy')[0]
    held_out = as_set(data[RATES].val_edge_index) | as_set(data[RATES].test_edge_index)
    assert held_out == set(VAL) | set(TEST)
    for edge_type in data.edge_types:
        if USER in (edge_type[0], edge_type[2]):
            mp = data[edge_type].edge_index
            if edge_type[0] == ITEM:
                mp = mp.flip(0)
            assert not (as_set(mp) & held_out), edge_type
            assert as_set(mp) == set(TRAIN)


def test_json_id_maps_and_extra_files(make_json):
    root = make_json(num_users=6, num_items=7, features={'audio': np.ones((7, 2))})
    np.save(root / 'toy' / 'raw' / 'user_graph_dict.npy', np.zeros(3))  # ignored
    data = quiet(root=str(root), name='toy')[0]
    assert data[USER].num_nodes == 6 and data[ITEM].num_nodes == 7
    assert set(data.node_types) == {USER, ITEM, 'audio'}
    assert data['audio'].x.shape == (7, 2)


def test_any_single_inter_file(make_mmrec):
    root = make_mmrec(name='mine', inter_name='baby14-indexed-v4.inter')
    data = quiet(root=str(root), name='mine')[0]
    assert data[RATES].edge_index.size(1) == 7


def test_interactions_only_warns_once(make_json):
    root = make_json(features={})
    with pytest.warns(UserWarning, match='interactions only') as record:
        dataset = AmazonMM(str(root), 'toy')
    assert sum('interactions only' in str(w.message) for w in record) == 1
    assert dataset[0].node_types == [USER, ITEM]
    with warnings.catch_warnings():  # cached: no second warning
        warnings.simplefilter('error')
        AmazonMM(str(root), 'toy')


def test_processed_cache_is_reused(make_mmrec, monkeypatch):
    root = make_mmrec()
    first = quiet(root=str(root), name='toy')

    def boom(self):
        raise AssertionError('process() called although a processed file exists')
    monkeypatch.setattr(AmazonMM, 'process', boom)
    second = AmazonMM(str(root), 'toy')
    assert torch.equal(second[0][RATES].edge_index, first[0][RATES].edge_index)
    # Options that change the result must not reuse the stale file.
    with pytest.raises(AssertionError, match='process'):
        AmazonMM(str(root), 'toy', fill_missing='mean')
    with pytest.raises(AssertionError, match='process'):
        AmazonMM(str(root), 'toy', strict=True)
    monkeypatch.undo()
    third = AmazonMM(str(root), 'toy', force_reload=True)
    assert torch.equal(third[0]['image'].x, first[0]['image'].x)


@pytest.mark.parametrize('fill', ['keep', 'mean', 'zero'])
def test_missing_modality(fill, make_mmrec):
    x = np.arange(15, dtype=np.float64).reshape(5, 3)
    root = make_mmrec(features={'image': x, 'text': np.ones((5, 2))})
    (root / 'toy' / 'raw' / 'image_missing.txt').write_text('1\n3\n')
    data = quiet(root=str(root), name='toy', fill_missing=fill)[0]
    assert data[ITEM, 'has', 'image'].edge_index[0].tolist() == [0, 2, 4]
    assert missing_items(data, 'image').tolist() == [1, 3]
    assert missing_items(data, 'text').numel() == 0
    expected = torch.from_numpy(x).float()
    if fill == 'mean':
        expected[[1, 3]] = expected[[0, 2, 4]].mean(0)
    elif fill == 'zero':
        expected[[1, 3]] = 0.
    assert torch.equal(data['image'].x, expected)
    assert data_files(root) == [f'data_fill-{fill}.pt']


def test_strict(make_mmrec):
    from conftest import TEST, TRAIN, VAL
    root = make_mmrec(val=VAL + [TRAIN[0]], test=TEST + [(4, 1)])  # overlap + cold user 4
    with pytest.warns(UserWarning) as record:
        data = AmazonMM(str(root), 'toy')[0]
    msgs = ' '.join(str(w.message) for w in record)
    assert '1 validation and 0 test interaction(s) also appear in training' in msgs
    assert '1 cold-start user(s)' in msgs
    assert data[USER].num_nodes == 5  # max id + 1 over all splits, as MMRec
    assert TRAIN[0] in as_set(data[RATES].val_edge_index)  # kept, as MMRec
    assert (4, 1) not in as_set(data[RATES].test_edge_index)  # cold-start dropped

    with pytest.raises(DatasetFormatError, match='also appear in training'):
        AmazonMM(str(root), 'toy', strict=True)
    assert data_files(root) == ['data_fill-keep.pt']  # only the lenient one


def test_duplicates_dropped(make_json):
    from conftest import TRAIN
    root = make_json(train=TRAIN + TRAIN[:2])
    with pytest.warns(UserWarning, match="dropped 2 duplicated interaction"):
        data = AmazonMM(str(root), 'toy')[0]
    assert data[RATES].edge_index.size(1) == len(TRAIN)


def test_known_name_count_warning(make_mmrec):
    root = make_mmrec(name='sports')
    with pytest.warns(UserWarning, match=r"MMRec's 'sports' has 35598, 18357, 296337"):
        AmazonMM(str(root), 'sports')


def _corrupt_inter_comma(raw):
    (raw / 'toy.inter').write_text('userID,itemID,x_label\n0,1,0\n')
    return 'toy.inter', 'expected tab-separated'


def _corrupt_inter_label(raw):
    with open(raw / 'toy.inter', 'a') as f:
        f.write('1\t1\t5.0\t9\t7\n')
    return 'toy.inter', "line 17, column 'x_label': 7"


def _corrupt_inter_float_id(raw):
    with open(raw / 'toy.inter', 'a') as f:
        f.write('1\t3.5\t5.0\t9\t0\n')
    return 'toy.inter', "line 17, column 'itemID': '3.5'"


def _corrupt_nan(raw):
    x = np.ones((5, 8))
    x[3, 2] = np.nan
    np.save(raw / 'image_feat.npy', x)
    return 'image_feat.npy', 'row 3'


def _corrupt_rows(raw):
    np.save(raw / 'text_feat.npy', np.ones((4, 4)))
    return 'text_feat.npy', 'disagree on the number of rows'


def _corrupt_ndim(raw):
    np.save(raw / 'text_feat.npy', np.ones((5, 4, 2)))
    return 'text_feat.npy', 'ndim=3'


def _corrupt_truncated(raw):
    data = (raw / 'image_feat.npy').read_bytes()
    (raw / 'image_feat.npy').write_bytes(data[:100])
    return 'image_feat.npy', 'cannot read'


def _corrupt_missing(raw):
    (raw / 'image_missing.txt').write_text('0\nfoo\n')
    return 'image_missing.txt', "line 2: 'foo'"


@pytest.mark.parametrize('corrupt', [
    _corrupt_inter_comma, _corrupt_inter_label, _corrupt_inter_float_id, _corrupt_nan,
    _corrupt_rows, _corrupt_ndim, _corrupt_truncated, _corrupt_missing])
def test_malformed_mmrec_leaves_nothing(corrupt, make_mmrec):
    root = make_mmrec()
    file, match = corrupt(root / 'toy' / 'raw')
    with pytest.raises(ValueError, match=match) as e:
        AmazonMM(str(root), 'toy')
    assert file in str(e.value)
    assert data_files(root) == []
    assert not (root / 'toy' / 'processed').exists()  # not even an empty folder


@pytest.mark.parametrize('file, text, match', [
    ('val.json', '{"0": [1,\n 2', 'malformed JSON at line 2'),
    ('test.json', '{"0": [1, 2.5]}', "2.5 is not an integer"),
    ('train.json', '{"0": [9]}', "item id 9 .*item2id.json"),
    ('user2id.json', '{"a": 0, "b": "x"}', "'x' is not an integer"),
])
def test_malformed_json_leaves_nothing(file, text, match, make_json):
    root = make_json(num_users=4, num_items=5)
    (root / 'toy' / 'raw' / file).write_text(text)
    with pytest.raises(DatasetFormatError, match=match) as e:
        AmazonMM(str(root), 'toy')
    assert file in str(e.value)
    assert data_files(root) == []


def test_download_raises_offline(tmp_path, no_network):
    with pytest.raises(RuntimeError) as e:
        AmazonMM(str(tmp_path), 'baby')
    msg = str(e.value)
    assert str(tmp_path / 'baby' / 'raw') in msg
    for f in ('baby.inter', 'train.json', 'val.json', 'test.json', 'image_feat.npy',
              'text_feat.npy', MMREC_DRIVE_URL):
        assert f in msg
    assert data_files(tmp_path, 'baby') == []


def test_download_lists_partial_json(make_json, no_network):
    root = make_json()
    (root / 'toy' / 'raw' / 'test.json').unlink()
    with pytest.raises(RuntimeError, match=r"found: \[.*'train.json'.*'val.json'"):
        AmazonMM(str(root), 'toy')


def test_bad_options(tmp_path):
    with pytest.raises(ValueError, match="AmazonMM' does not support fill_missing='avg'"):
        AmazonMM(str(tmp_path), 'toy', fill_missing='avg')
    with pytest.raises(ValueError, match='plain folder name'):
        AmazonMM(str(tmp_path), '../toy')


def test_real_amazon_baby(tmp_path):
    if not (SHARED_BABY / 'train.json').exists():
        pytest.skip(f'{SHARED_BABY} is absent')
    shutil.copytree(SHARED_BABY, tmp_path / 'baby' / 'raw')  # never write into shared/
    with pytest.warns(UserWarning, match='interactions only'):
        dataset = AmazonMM(str(tmp_path), 'baby')  # known name: counts match, no warning
    data = dataset[0]
    assert data[USER].num_nodes == 19445
    assert data[ITEM].num_nodes == 7050
    store = data[RATES]
    assert store.edge_index.size(1) == 119674
    assert store.val_edge_index.size(1) == 20559
    assert store.test_edge_index.size(1) == 20559
    assert store.edge_index[1].unique().numel() == 7048


def test_empty_split_and_cold_items_reported(make_mmrec):
    from conftest import TRAIN, VAL
    # item 4 only in validation (never trained on); no test interaction at all
    train = [p for p in TRAIN if p[1] != 4] + [(3, 3)]
    root = make_mmrec(train=train, val=VAL, test=[])
    with pytest.warns(UserWarning) as record:
        data = AmazonMM(str(root), 'toy')[0]
    msgs = ' '.join(str(w.message) for w in record)
    assert '1 item(s) appear in validation/test but never in training' in msgs
    assert 'the test split is empty' in msgs and 'the validation split' not in msgs
    assert data[RATES].test_edge_index.size(1) == 0
