r"""The PNG pictures: written, readable, and showing what they claim (checked on the
figure's own data where a picture could otherwise be drawn from the wrong numbers)."""
import json

import pytest

pytest.importorskip('matplotlib')
import matplotlib.image as mpimg  # noqa: E402

from mrdib_pyg.data import SyntheticMM  # noqa: E402
from mrdib_pyg.plot import (load_result, main, plot_comparison, plot_dataset,  # noqa: E402
                            plot_training, run_label)
from mrdib_pyg.train.cli import main as train_main  # noqa: E402

SMALL = ['--dataset-arg', 'num_users=60', '--dataset-arg', 'num_items=40',
         '--dataset-arg', 'image_dim=8', '--dataset-arg', 'text_dim=6']


def fake_result(model='vbpr', mrdib=False, test=0.2, epochs=4, best=2):
    hist = []
    for e in range(epochs):
        rec = {'epoch': e, 'loss': {'backbone': 0.7 - 0.1 * e, 'redundant': -0.5 * e,
                                    'loss': 1.0 - 0.1 * e},
               'valid': {'Recall@20': 0.1 + 0.02 * e, 'NDCG@20': 0.05 + 0.01 * e,
                         'MAP@20': 0.01}}
        hist.append(rec)
    return {'config': {'model': model, 'mrdib': {'alpha1': 0.1} if mrdib else None},
            'best_epoch': best, 'history': hist, 'best_valid': hist[best]['valid'],
            'test_at_best': {'Recall@20': test, 'NDCG@20': test / 2}}


def opened(path):
    img = mpimg.imread(str(path))
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    assert img.std() > 0.01  # not a blank canvas
    return img


def test_training_curves_png(tmp_path):
    out = plot_training(fake_result(), str(tmp_path / 'c.png'))
    opened(out)
    assert not list(tmp_path.glob('*.tmp.png'))


def test_training_curves_reject_a_metric_that_was_not_logged(tmp_path):
    with pytest.raises(ValueError, match='were not logged'):
        plot_training(fake_result(), str(tmp_path / 'c.png'), metrics=['Recall@7'])
    assert not (tmp_path / 'c.png').exists()


def test_load_result_names_the_file_when_it_is_not_a_result(tmp_path):
    bad = tmp_path / 'x.json'
    bad.write_text(json.dumps({'rows': []}))
    with pytest.raises(ValueError, match="x.json' is not a training result"):
        load_result(str(bad))
    with pytest.raises(FileNotFoundError, match='no training result'):
        load_result(str(tmp_path / 'missing.json'))


def test_comparison_pools_seeds_by_label(tmp_path, monkeypatch):
    results = [fake_result('vbpr', False, 0.20), fake_result('vbpr', False, 0.22),
               fake_result('vbpr', True, 0.25), fake_result('lightgcn', False, 0.30)]
    assert [run_label(r) for r in results[1:3]] == ['vbpr', 'vbpr+MRdIB']
    import matplotlib.axes
    seen = {}
    bar = matplotlib.axes.Axes.bar

    def spy(self, x, height, *a, **k):
        seen['x'], seen['height'], seen['yerr'] = list(x), list(height), list(k['yerr'])
        return bar(self, x, height, *a, **k)
    monkeypatch.setattr(matplotlib.axes.Axes, 'bar', spy)
    out = plot_comparison(results, str(tmp_path / 'cmp.png'))
    opened(out)
    assert seen['height'] == pytest.approx([0.21, 0.25, 0.30])
    assert seen['yerr'][0] == pytest.approx(0.0141421, rel=1e-4)
    assert seen['yerr'][1:] == [0.0, 0.0]


def test_comparison_names_a_missing_metric(tmp_path):
    with pytest.raises(ValueError, match='has no test MAP@20'):
        plot_comparison([fake_result()], str(tmp_path / 'x.png'), metric='MAP@20')


def test_dataset_picture(tmp_path):
    data = SyntheticMM(num_users=50, num_items=30, image_dim=8, text_dim=5, seed=0)[0]
    opened(plot_dataset(data, str(tmp_path / 'd.png')))


def test_train_cli_plot_flag_writes_curves_beside_results(tmp_path, capsys):
    args = ['--epochs', '2', '--no-progress', '--device', 'cpu', '--out-dir',
            str(tmp_path), '--plot'] + SMALL
    assert train_main(args) == 0
    opened(tmp_path / 'curves.png')
    assert 'curves written' in capsys.readouterr().err


def test_plot_command_compare_and_curves(tmp_path, capsys):
    for n, test in enumerate((0.1, 0.2)):
        (tmp_path / f'r{n}.json').write_text(json.dumps(fake_result(test=test)))
    main(['compare', str(tmp_path / 'r0.json'), str(tmp_path / 'r1.json'),
          '-o', str(tmp_path / 'cmp.png')])
    main(['curves', str(tmp_path / 'r0.json')])
    opened(tmp_path / 'cmp.png')
    opened(tmp_path / 'curves.png')
