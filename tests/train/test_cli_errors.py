r"""Every user error of ``mrdib-train`` gives one clear line on stderr and exit status 2, found
before any data is loaded or epoch is run, and never a traceback (issue 11, nothing silent)."""
import math
import os
import subprocess
import sys

import pytest

from mrdib_pyg.train import build
from mrdib_pyg.train.cli import main
from mrdib_pyg.train.config import MRDIB_KEYS, MRdIBOptions, TrainConfig

TINY = ['--dataset-arg', 'num_users=60', '--dataset-arg', 'num_items=40',
        '--dataset-arg', 'image_dim=8', '--dataset-arg', 'text_dim=4',
        '--dataset-arg', 'interactions_per_user=[4, 8]',
        '--epochs', '1', '--no-progress', '--device', 'cpu']


@pytest.fixture
def no_data(monkeypatch):
    r"""Loading data means a wrong option was not caught first: fail the test (pytest's
    exception is not one the command line catches)."""
    monkeypatch.setattr(build, 'load_data',
                        lambda cfg: pytest.fail('data loaded before the options were checked'))


def fail(capsys, *argv: str) -> str:
    r"""Run the command line on :obj:`argv` (after the tiny settings); it must exit with 2 and
    print exactly one error line. Returns that line."""
    assert main(TINY + list(argv)) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith('mrdib-train: error: ') and 'Traceback' not in captured.err
    return lines[0]


# -- silent wrong results ------------------------------------------------------------------
@pytest.mark.parametrize('argv, message', [
    (['--epochs', '0'], 'epochs (--epochs) must be an integer >= 1 (got 0)'),
    (['--epochs', '-1'], 'epochs (--epochs) must be an integer >= 1 (got -1)'),
    (['--patience', '-1'], 'patience (--patience) must be an integer >= 0 (got -1)'),
    (['--mrdib', '--alpha1', 'nan'], 'alpha1 (--alpha1) must be a finite number >= 0 (got nan)'),
    (['--mrdib', '--alpha1', 'inf'], 'alpha1 (--alpha1) must be a finite number >= 0 (got inf)'),
    (['--mrdib', '--alpha1', '-0.1'], 'alpha1 (--alpha1) must be a finite number >= 0'),
    (['--mrdib', '--latent-dim', '0'], 'latent_dim (--latent-dim) must be an integer >= 1'),
    (['--valid-metric', 'Bogus@20'], "valid_metric (--valid-metric) must be METRIC@K with "
                                     "METRIC one of Recall, NDCG, Precision, MAP and K one of "
                                     "topk 5 10 20 50, e.g. Recall@20 (got 'Bogus@20')"),
    (['--valid-metric', 'Recall@7'], "K one of topk 5 10 20 50"),
])
def test_out_of_range_options_fail_before_any_data_is_loaded(capsys, no_data, argv, message):
    assert message in fail(capsys, *argv)


@pytest.mark.parametrize('field, value', [
    ('epochs', 0), ('epochs', 'ten'), ('batch_size', 0), ('lr', 0.0), ('lr', math.nan),
    ('lr', math.inf), ('weight_decay', -1e-4), ('eval_batch_size', 0), ('topk', (0, 5)),
    ('topk', ()), ('seed', -1), ('patience', -1), ('critic_steps', -1), ('critic_warmup', -1),
    ('critic_lr', 0.0), ('mi_probe_every', -1), ('ema_decay', 1.0), ('ema_decay', -0.1),
    ('logvar_bound', 0.0), ('logvar_bound', math.nan), ('encoder_hidden', 0),
    ('fusion_hidden', 0), ('critic_hidden', 0), ('latent_dim', 0), ('alpha2', -1.0),
    ('alpha3', math.inf), ('redundant_floor', math.nan), ('input_norm', 'batch'),
    ('ablation', 'wo_everything'), ('fill_missing', 'drop'), ('progress', 'yes'),
    ('model_args', [1]), ('valid_metric', 'Recall2@20'),
])
def test_validate_names_the_option_and_its_value(field, value):
    c = TrainConfig(mrdib=MRdIBOptions())
    setattr(c.mrdib if field in MRDIB_KEYS else c, field, value)
    with pytest.raises(ValueError, match=rf"^{field} \(--"):
        c.validate()


def test_validate_accepts_the_defaults_and_none_where_allowed():
    assert TrainConfig().validate() == TrainConfig()
    TrainConfig().update(dict(mrdib=True, encoder_hidden=None, fusion_hidden=None, logvar_bound=None,
                              redundant_floor=None, patience=0, critic_steps=0,
                              ema_decay=0.0, topk=[5], valid_metric='MAP@5')).validate()


def test_run_validates_before_loading_data(no_data):
    with pytest.raises(ValueError, match=r'epochs \(--epochs\)'):
        build.run(TrainConfig().update(dict(epochs=0)))
    with pytest.raises(ValueError, match="model 'bprmf' has no argument 'foo'"):
        build.run(TrainConfig().update(dict(model='bprmf', model_args={'foo': 1})))


# -- backbone and dataset arguments --------------------------------------------------------
def test_unknown_model_argument_names_the_model_and_its_arguments(capsys, no_data):
    assert fail(capsys, '--model-arg', 'foo=1') == (
        "mrdib-train: error: model 'vbpr' has no argument 'foo' (--model-arg foo=...); its "
        "arguments are: embedding_dim, order, reg_weight")


def test_unknown_dataset_argument_names_the_dataset_and_its_arguments(capsys, no_data):
    line = fail(capsys, '--dataset-arg', 'bogus=1')
    assert "dataset 'synthetic' has no argument 'bogus' (--dataset-arg bogus=...)" in line
    assert 'num_users' in line and 'interactions_per_user' in line


def test_wrongly_typed_model_argument_says_what_it_expects(capsys, no_data):
    assert fail(capsys, '--model', 'lightgcn', '--model-arg', 'num_layers=abc') == (
        "mrdib-train: error: model 'lightgcn': argument 'num_layers' expects an integer "
        "(got 'abc')")


def test_malformed_key_value_pair(capsys, no_data):
    assert fail(capsys, '--model-arg', 'foo') == (
        "mrdib-train: error: --model-arg expects KEY=VALUE (got 'foo')")


# -- --config files ------------------------------------------------------------------------
@pytest.mark.parametrize('text, message', [
    (None, "cannot read the config file '{path}': No such file or directory"),
    ('- 1\n- 2\n', "the config file '{path}' must hold a mapping of option: value at the top "
                   "level (got a list)"),
    ('epochs: [1\n  x: :\n', "the config file '{path}' is not valid YAML: expected ',' or ']', "
                             "but got ':' at line 2, column 4"),
    ('epochs: ten\n', "epochs (--epochs) expects an integer (got 'ten')"),
    ('topk: [5, x]\n', "topk (--topk) expects a list of integers (got (5, 'x'))"),
])
def test_bad_config_files(capsys, no_data, tmp_path, text, message):
    path = tmp_path / 'c.yaml'
    if text is not None:
        path.write_text(text)
    argv = ['--config', str(path), '--no-progress', '--device', 'cpu']
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err == f'mrdib-train: error: {message.format(path=path)}\n'


def test_config_that_is_a_folder(capsys, no_data, tmp_path):
    assert main(['--config', str(tmp_path)]) == 2
    assert capsys.readouterr().err == (f"mrdib-train: error: cannot read the config file "
                                       f"'{tmp_path}': Is a directory\n")


# -- device and folders --------------------------------------------------------------------
def test_unavailable_cuda_device(capsys, no_data, monkeypatch):
    import torch
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    line = fail(capsys, '--device', 'cuda')
    assert line.startswith("mrdib-train: error: device (--device) 'cuda' is not available: ")
    assert line.endswith('use --device cpu (or auto)')


def test_malformed_device_name(capsys, no_data):
    assert "device (--device) 'gpu' is not a device name" in fail(capsys, '--device', 'gpu')


def test_out_dir_that_is_a_file(capsys, no_data, tmp_path):
    f = tmp_path / 'results'
    f.write_text('')
    assert fail(capsys, '--out-dir', str(f)) == (
        f"mrdib-train: error: out_dir (--out-dir) '{f}' is a file, not a folder "
        f"(results.json and best.pt are written there)")
    assert 'inside the file' in fail(capsys, '--out-dir', str(f / 'sub'))


def test_out_dir_that_cannot_be_written(capsys, no_data, tmp_path, monkeypatch):
    ro = tmp_path / 'ro'
    ro.mkdir()
    real = os.access
    monkeypatch.setattr(os, 'access', lambda p, mode: False if str(p) == str(ro)
                        else real(p, mode))
    assert fail(capsys, '--out-dir', str(ro / 'run1')) == (
        f"mrdib-train: error: out_dir (--out-dir) '{ro / 'run1'}' is not writable: permission "
        f"denied on '{ro}' (results.json and best.pt are written there)")


@pytest.mark.skipif(not hasattr(os, 'geteuid') or os.geteuid() == 0,
                    reason='permissions do not bind the superuser')
def test_read_only_out_dir_for_real(capsys, no_data, tmp_path):
    ro = tmp_path / 'ro'
    ro.mkdir()
    ro.chmod(0o555)
    try:
        assert 'is not writable' in fail(capsys, '--out-dir', str(ro))
    finally:
        ro.chmod(0o755)


def test_root_that_is_a_file(capsys, no_data, tmp_path):
    f = tmp_path / 'datasets'
    f.write_text('')
    assert fail(capsys, '--dataset', 'garden', '--root', str(f)) == (
        f"mrdib-train: error: root (--root): '{f}' is a file, not a folder (datasets are read "
        f"from ROOT/NAME/raw/)")


def test_root_whose_processed_folder_cannot_be_created(capsys, no_data, tmp_path, monkeypatch):
    (tmp_path / 'garden' / 'raw').mkdir(parents=True)
    real = os.access
    monkeypatch.setattr(os, 'access', lambda p, mode: False if str(p).endswith('garden')
                        else real(p, mode))
    line = fail(capsys, '--dataset', 'garden', '--root', str(tmp_path))
    assert "root (--root)" in line and 'is not writable' in line
    assert 'the processed dataset is cached in ROOT/NAME/processed/' in line


# -- how errors are reported ---------------------------------------------------------------
def test_bare_key_errors_say_what_was_looked_up(capsys, monkeypatch):
    def lookup(cfg):
        return {}['userID']
    monkeypatch.setattr(build, 'run', lookup)
    line = fail(capsys)
    assert line.startswith("mrdib-train: error: unknown key 'userID' (looked up in lookup(), "
                           "test_cli_errors.py line ")


def test_unexpected_errors_are_reported_as_such(capsys, monkeypatch):
    def broken(cfg):
        raise TypeError('boom')
    monkeypatch.setattr(build, 'run', broken)
    assert fail(capsys) == ('mrdib-train: error: TypeError: boom (an unexpected error: set '
                            'MRDIB_TRACEBACK=1 to see where, and report it if the input looks '
                            'right)')


def test_os_errors_name_the_file(capsys, monkeypatch, tmp_path):
    def denied(cfg):
        raise PermissionError(13, 'Permission denied', str(tmp_path / 'x'))
    monkeypatch.setattr(build, 'run', denied)
    assert fail(capsys) == f"mrdib-train: error: Permission denied: '{tmp_path / 'x'}'"


def test_mrdib_traceback_re_raises(monkeypatch, no_data):
    monkeypatch.setenv('MRDIB_TRACEBACK', '1')
    with pytest.raises(ValueError, match='epochs'):
        main(TINY + ['--epochs', '0'])


@pytest.mark.parametrize('argv', [['--epochs', '0'], ['--model-arg', 'foo=1']])
def test_real_process_prints_one_line_and_exits_with_2(argv):
    env = dict(os.environ, OMP_NUM_THREADS='1')
    env.pop('MRDIB_TRACEBACK', None)
    proc = subprocess.run([sys.executable, '-m', 'mrdib_pyg'] + TINY + argv,
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ''
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert proc.stderr.startswith('mrdib-train: error: ') and 'Traceback' not in proc.stderr


def test_warnings_are_one_plain_line_on_the_command_line():
    import warnings
    from mrdib_pyg.train.cli import plain_warnings
    python_format = warnings.formatwarning
    with plain_warnings('mrdib-train'):
        assert warnings.formatwarning('3 cold-start users dropped', UserWarning, 'x.py',
                                      7) == 'mrdib-train: warning: 3 cold-start users dropped\n'
        other = warnings.formatwarning('old API', DeprecationWarning, 'x.py', 7)
        assert 'DeprecationWarning' in other and 'x.py:7' in other  # Python's own format
    assert warnings.formatwarning is python_format  # restored


def test_plot_without_matplotlib_fails_before_training(capsys, no_data, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, 'matplotlib', None)  # import matplotlib -> ImportError
    line = fail(capsys, '--plot', '--out-dir', str(tmp_path / 'run'))
    assert "plotting needs matplotlib: pip install 'mrdib-pyg[plot]'" in line
    assert not (tmp_path / 'run').exists()


def test_plot_command_without_matplotlib_is_one_line(capsys, monkeypatch, tmp_path):
    from mrdib_pyg.plot import main as plot_main
    monkeypatch.setitem(sys.modules, 'matplotlib', None)
    with pytest.raises(SystemExit) as exit_:
        plot_main(['dataset', '--dataset', 'synthetic', '-o', str(tmp_path / 'd.png')])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith('mrdib-plot: error: plotting needs matplotlib')
    assert len(err.strip().splitlines()) == 1 and 'Traceback' not in err
