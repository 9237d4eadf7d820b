r"""Nothing lost, nothing stale, nothing silent: the processed cache follows its raw files,
corrupted or concurrent writes are caught, and every error names the file to blame."""
import hashlib
import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import TEST, TRAIN, VAL
from mrdib_pyg.data import AmazonMM
from mrdib_pyg.data import amazon_mm
from mrdib_pyg.data.graphs import cached_graph
from mrdib_pyg.data.readers import (DatasetFormatError, read_features, read_id_map,
                                    read_inter, read_split_json)
from mrdib_pyg.data.schema import RATES, USER, ITEM

PROCESSED = 'data_fill-keep.pt'


def as_set(edge_index):
    return set(map(tuple, edge_index.t().tolist()))


def load_quietly(root, name='toy', **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        return AmazonMM(str(root), name, **kwargs)


def processed(root, name='toy'):
    return Path(root) / name / 'processed' / PROCESSED


# 1. Stale cache ##############################################################


def test_changed_inter_is_reprocessed(make_mmrec):
    root = make_mmrec()
    assert as_set(load_quietly(root)[0][RATES].edge_index) == set(TRAIN)
    make_mmrec(train=TRAIN + TEST, test=[])  # test rows moved to training
    with pytest.warns(UserWarning, match=r"re-processing.*'toy.inter' changed"):
        data = AmazonMM(str(root), 'toy')[0]
    assert as_set(data[RATES].edge_index) == set(TRAIN + TEST)
    assert data[RATES].test_edge_index.size(1) == 0
    assert as_set(load_quietly(root)[0][RATES].edge_index) == set(TRAIN + TEST)


def test_replaced_features_are_reprocessed(make_mmrec):
    root = make_mmrec()
    load_quietly(root)
    path = root / 'toy' / 'raw' / 'image_feat.npy'
    st = path.stat()
    new = np.full((5, 8), 3.0)
    np.save(path, new)  # same shape and size; restore the mtime too
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size
    with pytest.warns(UserWarning, match=r"'image_feat.npy' changed"):
        data = AmazonMM(str(root), 'toy')[0]
    assert torch.equal(data['image'].x, torch.from_numpy(new).float())


def test_switch_to_json_is_reprocessed(make_mmrec, make_json):
    root = make_mmrec()
    load_quietly(root)
    (root / 'toy' / 'raw' / 'toy.inter').unlink()
    make_json(train=TRAIN + VAL, val=[])
    with pytest.warns(UserWarning, match=r"'toy.inter' was removed, 'test.json' was added"):
        data = AmazonMM(str(root), 'toy')[0]
    assert as_set(data[RATES].edge_index) == set(TRAIN + VAL)


def test_changed_pre_transform_is_reprocessed(make_mmrec):
    class Tag:
        def __init__(self, tag):
            self.tag = tag

        def __call__(self, data):
            data.tag = self.tag
            return data

        def __repr__(self):
            return f'Tag({self.tag})'

    root = make_mmrec()
    assert load_quietly(root, pre_transform=Tag(1))[0].tag == 1
    with pytest.warns(UserWarning, match=r"option 'pre_transform' changed"):
        assert AmazonMM(str(root), 'toy', pre_transform=Tag(2))[0].tag == 2
    assert load_quietly(root, pre_transform=Tag(2))[0].tag == 2


def test_touched_but_unchanged_is_reused(make_mmrec, monkeypatch):
    root = make_mmrec()
    load_quietly(root)
    for f in (root / 'toy' / 'raw').iterdir():
        os.utime(f)  # a copy or a touch changes mtimes, not contents

    def boom(self):
        raise AssertionError('re-processed although no raw file changed')
    monkeypatch.setattr(AmazonMM, 'process', boom)
    load_quietly(root)


# 2. Corrupted processed file #################################################


def _truncate(path):
    path.write_bytes(path.read_bytes()[:200])


def _empty(path):
    path.write_bytes(b'')


def _other_object(path):
    torch.save({'something': 'else'}, path)


def _flip_feature_byte(path):
    # A flipped bit in a tensor's storage: torch.load reads it without complaint.
    x = torch.from_numpy(np.load(path.parents[1] / 'raw' / 'image_feat.npy')).float()
    raw = bytearray(path.read_bytes())
    at = raw.find(x[0].numpy().tobytes())
    assert at >= 0
    raw[at + 1] ^= 0x10
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize('corrupt', [_truncate, _empty, _other_object, _flip_feature_byte])
def test_corrupted_processed_file_is_reprocessed(corrupt, make_mmrec):
    root = make_mmrec()
    good = load_quietly(root)[0]
    corrupt(processed(root))
    with pytest.warns(UserWarning, match=rf"re-processing.*{PROCESSED}' is corrupted"):
        data = AmazonMM(str(root), 'toy')[0]
    assert torch.equal(data['image'].x, good['image'].x)
    assert torch.equal(data[RATES].edge_index, good[RATES].edge_index)
    load_quietly(root)  # mended


def test_unloadable_processed_file_says_force_reload(make_mmrec):
    root = make_mmrec()
    load_quietly(root)
    _other_object(processed(root))  # ... and a record that matches it
    record = root / 'toy' / 'processed' / 'fingerprint_fill-keep.json'
    meta = json.loads(record.read_text())
    meta['sha1'] = hashlib.sha1(processed(root).read_bytes()).hexdigest()
    record.write_text(json.dumps(meta))
    with pytest.raises(RuntimeError, match=rf"{PROCESSED}'.*force_reload=True"):
        AmazonMM(str(root), 'toy')
    assert AmazonMM(str(root), 'toy', force_reload=True).num_items == 5


def test_corrupted_cached_graph_is_rebuilt(tmp_path):
    calls = []

    def build():
        calls.append(1)
        return torch.arange(100.), torch.ones(3, dtype=torch.long)

    first = cached_graph(str(tmp_path), 'g', {'k': 1}, 'abc', build)
    [path] = tmp_path.glob('g__*.pt')
    raw = bytearray(path.read_bytes())
    at = raw.find(torch.arange(100.)[50:52].numpy().tobytes())
    raw[at] ^= 0x01
    path.write_bytes(bytes(raw))
    with pytest.warns(UserWarning, match=r"g__.*\.pt' is corrupted.*rebuilding"):
        again = cached_graph(str(tmp_path), 'g', {'k': 1}, 'abc', build)
    assert len(calls) == 2 and torch.equal(again[0], first[0])
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        cached_graph(str(tmp_path), 'g', {'k': 1}, 'abc', build)
    assert len(calls) == 2


# 3. Concurrent first processing ##############################################


def test_writer_never_touches_another_writers_temp_file(make_mmrec):
    root = make_mmrec()
    folder = root / 'toy' / 'processed'
    folder.mkdir()
    foreign = folder / f'{PROCESSED}.tmp'  # another process's file, mid-write
    foreign.write_bytes(b'another writer')
    load_quietly(root)
    assert foreign.read_bytes() == b'another writer'
    assert len(list(folder.glob('*.tmp'))) == 1


def test_interleaved_writers(make_mmrec, monkeypatch):
    # A second process processes the same dataset between our write and our rename.
    root = make_mmrec()
    replace = os.replace
    state = {'inner': False}

    def interleave(src, dst):
        if not state['inner']:
            state['inner'] = True
            AmazonMM(str(root), 'toy', force_reload=True)
        replace(src, dst)
    monkeypatch.setattr(amazon_mm.os, 'replace', interleave)
    data = AmazonMM(str(root), 'toy')[0]
    monkeypatch.undo()
    assert as_set(data[RATES].edge_index) == set(TRAIN)
    assert not list((root / 'toy' / 'processed').glob('*.tmp'))
    load_quietly(root)  # the files left behind are consistent


# 4. Duplicate JSON keys, ambiguous id maps ###################################


def test_duplicate_json_key(tmp_path):
    path = tmp_path / 'train.json'
    path.write_text('{"0": [0, 1, 2], "1": [4], "0": [3]}')
    with pytest.raises(DatasetFormatError, match=r"train.json.*key '0' appears twice"):
        read_split_json(str(path))


def test_id_map_two_names_one_id(tmp_path):
    path = tmp_path / 'item2id.json'
    path.write_text('{"a": 0, "b": 1, "c": 1}')
    with pytest.raises(DatasetFormatError,
                       match=r"item2id.json.*'b' and 'c' both map to id 1"):
        read_id_map(str(path))


def test_duplicate_key_through_dataset(make_json):
    root = make_json()
    (root / 'toy' / 'raw' / 'val.json').write_text('{"0": [2], "1": [3], "0": [4]}')
    with pytest.raises(DatasetFormatError, match=r"val.json.*key '0' appears twice"):
        AmazonMM(str(root), 'toy')


# 5. One mistyped id ##########################################################


def test_mistyped_user_id(make_mmrec):
    root = make_mmrec(train=TRAIN[:3] + [(100000000000, 1)] + TRAIN[4:])
    with pytest.raises(DatasetFormatError,
                       match=r"toy.inter': line 5: user id 100000000000 would make "
                             r"100000000001 users.*allow_sparse_ids=True"):
        AmazonMM(str(root), 'toy')


def test_phantom_items_without_features(make_json):
    root = make_json(train=TRAIN + [(2, 99999)], features={})
    with pytest.raises(DatasetFormatError,
                       match=r"train.json': user '2', position 1: item id 99999 would "
                             r"make 100000 items"):
        AmazonMM(str(root), 'toy')
    with pytest.warns(UserWarning, match='interactions only'):
        data = AmazonMM(str(root), 'toy', allow_sparse_ids=True)[0]
    assert data[ITEM].num_nodes == 100000


def test_sparse_user_ids_opt_out(make_mmrec):
    root = make_mmrec(train=TRAIN + [(5000, 1)], test=TEST + [(5000, 2)])
    data = load_quietly(root, allow_sparse_ids=True)[0]
    assert data[USER].num_nodes == 5001
    assert sorted(p.name for p in (root / 'toy' / 'processed').glob('data*')) == [
        'data_fill-keep_sparse.pt']


# 6. Zero-width features ######################################################


def test_zero_width_features(tmp_path, make_mmrec):
    np.save(tmp_path / 'image_feat.npy', np.zeros((5, 0)))
    with pytest.raises(DatasetFormatError, match=r"image_feat.npy.*no column"):
        read_features(str(tmp_path / 'image_feat.npy'))
    root = make_mmrec(features={'image': np.ones((5, 3)), 'text': np.zeros((5, 0))})
    with pytest.raises(DatasetFormatError, match=r"text_feat.npy.*no column"):
        AmazonMM(str(root), 'toy')


# 7. Names that are paths #####################################################


@pytest.mark.parametrize('name', ['..', '.', 'a/b', 'a\\b', '../toy', ''])
def test_name_cannot_escape_root(name, tmp_path):
    (tmp_path / 'sub').mkdir()
    with pytest.raises(ValueError, match='plain folder name'):
        AmazonMM(str(tmp_path / 'sub'), name)
    assert sorted(p.name for p in tmp_path.iterdir()) == ['sub']


# 8. Messages that name the right file ########################################


def test_item_id_beyond_feature_rows_blames_interactions(make_mmrec):
    root = make_mmrec(test=TEST + [(0, 5)])
    with pytest.raises(DatasetFormatError,
                       match=r"toy.inter': line 17: item id 5 is out of range: the "
                             r"feature files have 5 rows") as e:
        AmazonMM(str(root), 'toy')
    assert 'feat.npy' not in str(e.value)


@pytest.mark.parametrize('short', ['image', 'text'])
def test_feature_files_disagree_blames_the_short_one(make_mmrec, short):
    # the interactions need 5 items: the file with 4 rows is the wrong one, whichever of
    # the two is read first
    rows = {'image': 5, 'text': 5, short: 4}
    root = make_mmrec(features={m: np.ones((n, 2)) for m, n in rows.items()})
    with pytest.raises(DatasetFormatError,
                       match=rf"{short}_feat.npy': the feature files disagree on the number "
                             rf"of rows \('image_feat.npy' {rows['image']}, 'text_feat.npy' "
                             rf"{rows['text']}\); the interactions give \(max item id \+ 1\) "
                             rf"5 items"):
        AmazonMM(str(root), 'toy')


def test_header_only_inter(make_mmrec):
    root = make_mmrec(train=[], val=[], test=[])
    with pytest.raises(DatasetFormatError, match=r"toy.inter': no interactions") as e:
        AmazonMM(str(root), 'toy')
    assert 'feat.npy' not in str(e.value)


def test_no_training_row_blames_inter(make_mmrec):
    root = make_mmrec(train=[])
    with pytest.raises(DatasetFormatError, match=r"toy.inter': no training interaction"):
        AmazonMM(str(root), 'toy')


def test_inter_is_a_directory(make_mmrec):
    root = make_mmrec()
    inter = root / 'toy' / 'raw' / 'toy.inter'
    inter.unlink()
    inter.mkdir()
    with pytest.raises(DatasetFormatError, match=r"toy.inter': is a directory"):
        AmazonMM(str(root), 'toy')


def test_inter_is_a_symlink_loop(make_mmrec):
    root = make_mmrec()
    inter = root / 'toy' / 'raw' / 'toy.inter'
    inter.unlink()
    try:
        os.symlink(inter, inter)
    except (OSError, NotImplementedError):
        pytest.skip('no symbolic links here')
    with pytest.raises(DatasetFormatError, match=r"toy.inter': is a symbolic link loop"):
        AmazonMM(str(root), 'toy')


# 9. What pandas accepts ######################################################


def test_inter_with_bom_and_spaced_header(tmp_path):
    path = tmp_path / 'a.inter'
    path.write_text('\ufeff userID \titemID\t x_label\n0\t1\t0\n1\t2\t1\n',
                    encoding='utf-8')
    out = read_inter(str(path))
    assert out['train'].tolist() == [[0], [1]]
    assert out['val'].tolist() == [[1], [2]]


def test_dataset_with_bom(make_mmrec):
    root = make_mmrec()
    inter = root / 'toy' / 'raw' / 'toy.inter'
    inter.write_text('\ufeff' + inter.read_text().replace('userID', ' userID '),
                     encoding='utf-8')
    data = load_quietly(root)[0]
    assert as_set(data[RATES].edge_index) == set(TRAIN)
