import json
import warnings

import numpy as np
import pytest
import torch

from mrdib_pyg.data.readers import (DatasetFormatError, clean_splits, detect_format,
                                    find_feature_files, read_features, read_id_map,
                                    read_inter, read_missing, read_raw_folder,
                                    read_split_json)

HEADER = 'userID\titemID\trating\tx_label\n'


def write(path, text):
    path.write_text(text)
    return str(path)


def pairs(*ps):
    return torch.tensor(ps, dtype=torch.long).view(-1, 2).t()


# .inter ######################################################################


def test_read_inter(tmp_path):
    path = write(tmp_path / 'a.inter',
                 HEADER + '0\t1\t5\t0\n1\t2\t4\t0\n0\t3\t3\t1\n1\t0\t1\t2\n')
    out = read_inter(path)
    assert out['train'].tolist() == [[0, 1], [1, 2]]
    assert out['val'].tolist() == [[0], [3]]
    assert out['test'].tolist() == [[1], [0]]
    assert out['train'].dtype == torch.long


@pytest.mark.parametrize('text, match', [
    ('userID,itemID,x_label\n0,1,0\n', 'expected tab-separated'),
    ('', 'empty'),
    ('userID\titem\tx_label\n0\t1\t0\n', r"missing column 'itemID'.*'item'"),
    ('0\t1\t0\n1\t2\t0\n', r"missing column 'userID'.*header line seems to be missing"),
    (HEADER + '0\t1\t5\t0\n12a\t2\t5\t0\n', r"line 3, column 'userID': '12a'"),
    (HEADER + '0\t3.5\t5\t0\n', r"line 2, column 'itemID': '3.5' is not an integer"),
    (HEADER + '0\t1\t5\t0\n0\t-2\t5\t0\n', r"line 3, column 'itemID': negative id -2"),
    (HEADER + '0\t1\t5\t0\n0\t2\t5\t3\n', r"line 3, column 'x_label': 3 is not one of"),
    (HEADER + '0\t1\t5\n', r"at line 2: 4 fields expected, 3 found"),  # a short row, named as one
    (HEADER + '0\t1\t5\t0\n0\t1\t5\t0\t9\t9\n', r'line 3: 4 fields expected, 6 found'),
])
def test_read_inter_errors(tmp_path, text, match):
    path = write(tmp_path / 'bad.inter', text)
    with pytest.raises(DatasetFormatError, match=match) as e:
        read_inter(path)
    assert 'bad.inter' in str(e.value)
    assert '\n' not in str(e.value)  # one line (pandas' own text ended in a newline)
    assert isinstance(e.value, ValueError)


# JSON ########################################################################


def test_read_split_json(tmp_path):
    path = write(tmp_path / 'train.json', json.dumps({'0': [1, 2], '3': [0], '4': []}))
    assert read_split_json(path).tolist() == [[0, 0, 3], [1, 2, 0]]
    empty = write(tmp_path / 'val.json', '{}')
    assert read_split_json(empty).shape == (2, 0)


@pytest.mark.parametrize('text, match', [
    ('{"0": [1, 2],\n "1": [3,, 4]}', r'malformed JSON at line 2, column'),
    ('[1, 2]', 'expected a JSON object'),
    ('{"0": 5}', r"user '0': expected a list"),
    ('{"0": [1, 3.5]}', r"user '0', position 1: 3.5 is not an integer"),
    ('{"0": [1, "2"]}', r"user '0', position 1: '2' is not an integer"),
    ('{"12a": [1]}', r"user key '12a': '12a' is not an integer"),
    ('{"0": [-1]}', r"negative item id -1"),
    ('{"-3": [1]}', r"negative id -3"),
])
def test_read_split_json_errors(tmp_path, text, match):
    path = write(tmp_path / 'train.json', text)
    with pytest.raises(DatasetFormatError, match=match) as e:
        read_split_json(path)
    assert 'train.json' in str(e.value)


def test_read_id_map(tmp_path):
    assert read_id_map(write(tmp_path / 'item2id.json', '{"a": 1, "b": 0}')) == 2
    with pytest.raises(DatasetFormatError, match=r"item2id.json.*'b': id 5 is out of"):
        read_id_map(write(tmp_path / 'item2id.json', '{"a": 0, "b": 5}'))
    with pytest.raises(DatasetFormatError, match=r"user2id.json.*'a': 1.5 is not"):
        read_id_map(write(tmp_path / 'user2id.json', '{"a": 1.5}'))


# Features ####################################################################


def test_read_features_casts_float64(tmp_path):
    x = np.arange(12, dtype=np.float64).reshape(3, 4)
    np.save(tmp_path / 'image_feat.npy', x)
    out = read_features(str(tmp_path / 'image_feat.npy'))
    assert out.dtype == torch.float32 and out.shape == (3, 4)
    assert torch.equal(out, torch.from_numpy(x).float())


def test_read_features_errors(tmp_path):
    x = np.ones((4, 3))
    x[2, 1] = np.nan
    x[3, 0] = np.inf
    np.save(tmp_path / 'image_feat.npy', x)
    with pytest.raises(DatasetFormatError, match=r"image_feat.npy.*row 2 .*2 bad row"):
        read_features(str(tmp_path / 'image_feat.npy'))

    np.save(tmp_path / 'text_feat.npy', np.ones(5))
    with pytest.raises(DatasetFormatError, match=r"text_feat.npy.*ndim=1"):
        read_features(str(tmp_path / 'text_feat.npy'))

    np.save(tmp_path / 'full.npy', np.ones((50, 8)))
    data = (tmp_path / 'full.npy').read_bytes()
    (tmp_path / 'audio_feat.npy').write_bytes(data[:len(data) // 2])  # truncated
    with pytest.raises(DatasetFormatError, match=r"audio_feat.npy.*cannot read"):
        read_features(str(tmp_path / 'audio_feat.npy'))

    (tmp_path / 'junk_feat.npy').write_bytes(b'not an npy file')
    with pytest.raises(DatasetFormatError, match=r"junk_feat.npy.*cannot read"):
        read_features(str(tmp_path / 'junk_feat.npy'))


def test_read_missing(tmp_path):
    path = write(tmp_path / 'image_missing.txt', '3\n\n1\n3\n')
    assert read_missing(path, 5).tolist() == [1, 3]
    with pytest.raises(DatasetFormatError, match=r"image_missing.txt.*line 2: item id 5"):
        read_missing(write(tmp_path / 'image_missing.txt', '1\n5\n'), 5)
    with pytest.raises(DatasetFormatError, match=r"image_missing.txt.*line 1: 'x'"):
        read_missing(write(tmp_path / 'image_missing.txt', 'x\n'), 5)


def test_detect_format(tmp_path):
    assert detect_format(str(tmp_path / 'nope'), 'x') == (None, [])
    assert detect_format(str(tmp_path), 'x') == (None, [])
    write(tmp_path / 'train.json', '{}')
    assert detect_format(str(tmp_path), 'x') == ('json', ['train.json', 'val.json',
                                                           'test.json'])
    write(tmp_path / 'other.inter', HEADER)
    with pytest.warns(UserWarning, match='using the MMRec file'):
        assert detect_format(str(tmp_path), 'x') == ('mmrec', ['other.inter'])
    write(tmp_path / 'second.inter', HEADER)
    with pytest.raises(DatasetFormatError, match='several .inter'):
        detect_format(str(tmp_path), 'x')
    write(tmp_path / 'x.inter', HEADER)
    with pytest.warns(UserWarning):
        assert detect_format(str(tmp_path), 'x') == ('mmrec', ['x.inter'])


def test_find_feature_files(tmp_path):
    for f in ('text_feat.npy', 'audio_feat.npy', 'image_feat.npy', 'user_graph_dict.npy',
              '_feat.npy'):
        (tmp_path / f).write_bytes(b'')
    assert list(find_feature_files(str(tmp_path))) == ['audio', 'image', 'text']


# Split hygiene ###############################################################


def test_clean_splits_duplicates():
    splits = {'train': pairs((0, 1), (0, 1), (1, 2), (0, 1)), 'val': pairs((0, 2), (0, 2)),
              'test': pairs((1, 0))}
    with pytest.warns(UserWarning) as record:
        out = clean_splits(splits, 3, 'src.inter')
    msgs = [str(w.message) for w in record]
    assert any("dropped 2 duplicated interaction(s) in the 'train'" in m for m in msgs)
    assert any("dropped 1 duplicated interaction(s) in the 'val'" in m for m in msgs)
    assert out['train'].tolist() == [[0, 1], [1, 2]]  # first occurrences, in order
    assert out['val'].tolist() == [[0], [2]]


def test_clean_splits_overlap():
    splits = {'train': pairs((0, 1), (1, 2)), 'val': pairs((0, 1)),
              'test': pairs((1, 2), (1, 0))}
    with pytest.warns(UserWarning, match=r"src: 1 validation and 1 test .*kept"):
        out = clean_splits(splits, 3, 'src')
    assert out['val'].size(1) == 1 and out['test'].size(1) == 2
    with pytest.raises(DatasetFormatError, match=r"1 validation and 1 test.*strict"):
        clean_splits(splits, 3, 'src', strict=True)


def test_clean_splits_cold_start():
    splits = {'train': pairs((0, 1)), 'val': pairs((0, 2), (1, 2)),
              'test': pairs((1, 0), (2, 0))}
    with pytest.warns(UserWarning, match=r"2 cold-start user\(s\).*\(3 held-out"):
        out = clean_splits(splits, 3, 'src')
    assert out['val'].tolist() == [[0], [2]]
    assert out['test'].shape == (2, 0)
    with pytest.raises(DatasetFormatError, match='2 cold-start'):
        clean_splits(splits, 3, 'src', strict=True)


def test_clean_splits_clean_input_is_silent():
    splits = {'train': pairs((0, 1), (1, 2), (0, 0)), 'val': pairs((0, 2)), 'test': pairs((1, 0))}
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        out = clean_splits(splits, 3, 'src')
    assert all(torch.equal(out[k], splits[k]) for k in splits)


def test_clean_splits_requires_training():
    splits = {'train': pairs(), 'val': pairs((0, 2)), 'test': pairs((1, 0))}
    with pytest.raises(DatasetFormatError, match='no training interaction'):
        clean_splits(splits, 3, 'src')


# Whole folders ###############################################################


def test_read_raw_folder_mmrec(make_mmrec):
    root = make_mmrec()
    parts = read_raw_folder(str(root / 'toy' / 'raw'), 'toy')
    assert parts.format == 'mmrec'
    assert (parts.num_users, parts.num_items) == (4, 5)
    assert [parts.splits[s].size(1) for s in ('train', 'val', 'test')] == [7, 4, 4]
    assert {k: tuple(v.shape) for k, v in parts.features.items()} == {
        'image': (5, 8), 'text': (5, 4)}


def test_read_raw_folder_id_maps(make_json):
    root = make_json(num_users=6, num_items=9, features={})
    parts = read_raw_folder(str(root / 'toy' / 'raw'), 'toy')
    assert parts.format == 'json'
    assert (parts.num_users, parts.num_items) == (6, 9)


def test_read_raw_folder_id_beyond_map(make_json):
    root = make_json(test=[(0, 3), (1, 4), (2, 0), (3, 7)], num_items=5, features={})
    with pytest.raises(DatasetFormatError,
                       match=r"test.json.*item id 7 .*out of range.*item2id.json.* 5 item"):
        read_raw_folder(str(root / 'toy' / 'raw'), 'toy')
    root = make_json(num_users=3, features={})
    with pytest.raises(DatasetFormatError, match=r"train.json.*user id 3 .*user2id.json"):
        read_raw_folder(str(root / 'toy' / 'raw'), 'toy')


def test_read_raw_folder_feature_rows(make_mmrec):
    root = make_mmrec(features={'image': np.ones((6, 3))})
    with pytest.raises(DatasetFormatError,
                       match=r"image_feat.npy.*6 feature rows but .* 5 items; expected one "
                             r"row per item \(items 5\.\.5 occur in no split"):
        read_raw_folder(str(root / 'toy' / 'raw'), 'toy')


def test_read_raw_folder_missing_json(make_json):
    root = make_json()
    (root / 'toy' / 'raw' / 'val.json').unlink()
    with pytest.raises(DatasetFormatError, match=r"missing file\(s\) \['val.json'\]"):
        read_raw_folder(str(root / 'toy' / 'raw'), 'toy')
