r"""Resume after a kill (issue 11, section 3): ``last.pt`` is written atomically after every
epoch, and a run continued from it (``mrdib-train --resume DIR``) reaches exactly the numbers
of the uninterrupted run on CPU with one thread and the same seed."""
import io
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from mrdib_pyg.data.synthetic import SyntheticMM
from mrdib_pyg.train import build as build_module
from mrdib_pyg.train.cli import main
from mrdib_pyg.train.config import TrainConfig
from mrdib_pyg.train import build_trainer, run
from mrdib_pyg.train.trainer import LAST, read_checkpoint, resume_config

TINY = dict(num_users=80, num_items=50, image_dim=16, text_dim=8,
            interactions_per_user=(4, 10), seed=1)
TINY_ARGS = [a for k, v in TINY.items()
             for a in ('--dataset-arg', f'{k}={list(v) if isinstance(v, tuple) else v}')]
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope='module')
def data():
    return SyntheticMM(**TINY)[0]


@pytest.fixture
def one_thread():
    r"""Bit-exact comparisons need one intra-op thread (summation order)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def cfg(**kw):
    base = dict(dataset='synthetic', dataset_args=TINY, model='vbpr', epochs=5, batch_size=64,
                patience=50, progress=False, device='cpu', seed=3)
    base.update(kw)
    return TrainConfig().update(base)


def numbers(result) -> dict:
    r"""Everything of a result but wall-clock timings (as JSON writes it: tuples as lists)."""
    result = json.loads(json.dumps(result))
    history = [{k: v for k, v in h.items() if not k.endswith('_seconds')}
               for h in result['history']]
    config = {k: v for k, v in result['config'].items() if k != 'out_dir'}
    return dict(config=config, best_epoch=result['best_epoch'], best_valid=result['best_valid'],
                test_at_best=result['test_at_best'], history=history, info=result['info'])


class Killed(Exception):
    pass


@pytest.mark.parametrize('mrdib', [False, True])
def test_resumed_run_equals_uninterrupted_run(tmp_path, data, one_thread, mrdib):
    # MRdIB adds a critic optimiser, MINE moving averages, a step counter and draws of the
    # global torch generator (the reparametrised samples): all must be restored.
    c = cfg(mrdib=True, critic_warmup=3) if mrdib else cfg()
    full = build_trainer(c, data).fit()

    # The same run, "killed" in the middle of epoch 3 (a partial epoch that moved the
    # weights, the optimisers and every generator past last.pt's epoch 2).
    c.out_dir = str(tmp_path)
    first = build_trainer(c, data)
    steps = 3 * len(first.sampler) + len(first.sampler) // 2
    step = first.optimizer.step

    def dying_step(*args, **kwargs):
        nonlocal steps
        if steps == 0:
            raise Killed
        steps -= 1
        return step(*args, **kwargs)
    first.optimizer.step = dying_step
    with pytest.raises(Killed):
        first.fit()
    assert read_checkpoint(str(tmp_path))['epoch'] == 2

    second = build_trainer(c, data)  # a new process would start from a fresh trainer
    assert second.load_checkpoint(str(tmp_path / LAST)) == 2
    pre_epochs = []
    second.model.pre_epoch = pre_epochs.append
    resumed = second.fit()
    assert pre_epochs == [3, 4]  # the backbone's per-epoch hook runs for the resumed epochs
    assert [h['epoch'] for h in resumed.history] == list(range(5))
    assert [h['valid'] for h in resumed.history] == [h['valid'] for h in full.history]
    assert [h['loss'] for h in resumed.history] == [h['loss'] for h in full.history]
    assert resumed.test_at_best == full.test_at_best
    assert resumed.best_epoch == full.best_epoch
    if mrdib:
        assert 'redundant' in full.history[-1]['loss']


def test_more_epochs_continue_a_finished_run_and_a_finished_run_is_reported(
        tmp_path, data, one_thread, monkeypatch, capsys):
    full = run(cfg(epochs=4, out_dir=str(tmp_path / 'full')), data=data)
    short = run(cfg(epochs=2, out_dir=str(tmp_path / 'short')), data=data)
    longer = resume_config(str(tmp_path / 'short'), {'epochs': 4})
    assert longer.epochs == 4 and longer.out_dir == str(tmp_path / 'short')
    capsys.readouterr()
    resumed = run(longer, data=data, resume=True)
    assert numbers(resumed.to_dict()) == numbers(full.to_dict())
    # said without progress bars too (these runs have none)
    assert 'resumed after epoch 1: epochs 2..3 to go' in capsys.readouterr().err
    assert len(short.history) == 2
    # Over: its stored result, without loading data or training again.
    monkeypatch.setattr(build_module, 'load_data', lambda c: pytest.fail('data loaded'))
    again = run(resume_config(str(tmp_path / 'short')), resume=True)
    assert again.to_dict() == resumed.to_dict()
    saved = json.loads((tmp_path / 'short' / 'results.json').read_text())
    assert numbers(saved) == numbers(full.to_dict())


def test_checkpoint_holds_the_whole_state(tmp_path, data):
    run(cfg(epochs=2, mrdib=True, out_dir=str(tmp_path)), data=data)
    state = read_checkpoint(str(tmp_path))
    assert state['epoch'] == 1 and len(state['history']) == 2
    assert 'critic_optimizer' in state['plugins']['mrdib'] and state['plugins']['mrdib']['step']
    assert state['optimizer']['state'] and state['sampler']['generator'].dtype == torch.uint8
    assert set(state['rng']) >= {'python', 'numpy', 'torch'}
    assert state['config']['mrdib']['alpha1'] == 0.005 and state['info']['num_users'] == 80
    assert not [f for f in os.listdir(tmp_path) if f.endswith('.tmp')]  # atomic writes


def test_a_write_cut_short_leaves_the_previous_checkpoint(tmp_path, data, monkeypatch):
    real_save = torch.save

    def dying_save(obj, f, *args, **kwargs):  # dies half-way through epoch 1's last.pt
        if not (isinstance(obj, dict) and 'rng' in obj and obj['epoch'] == 1):
            return real_save(obj, f, *args, **kwargs)
        buffer = io.BytesIO()
        real_save(obj, buffer)
        if isinstance(f, (str, os.PathLike)):
            f = open(f, 'wb')
        f.write(buffer.getvalue()[:buffer.tell() // 2])
        f.flush()
        raise Killed
    monkeypatch.setattr(torch, 'save', dying_save)
    with pytest.raises(Killed):
        run(cfg(epochs=3, out_dir=str(tmp_path)), data=data)
    assert read_checkpoint(str(tmp_path))['epoch'] == 0  # whole, and still epoch 0's


def _kill_after_second_checkpoint(proc: subprocess.Popen, last: str, timeout: float) -> None:
    r"""SIGKILL :obj:`proc` as soon as :obj:`last` is replaced after its first write (epoch
    0), i.e. early in epoch 2 at the latest."""
    first, deadline = None, time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            st = os.stat(last)
            now = (st.st_ino, st.st_mtime_ns)
        except FileNotFoundError:
            now = None
        if first is None:
            first = now
        elif now != first:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return
        time.sleep(0.002)
    proc.kill()
    proc.wait()
    pytest.fail(f'{last} was not rewritten within {timeout} s (exit status {proc.returncode})')


def test_resume_after_sigkill_of_a_real_process(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1',
               PYTHONPATH=REPO + os.pathsep + os.environ.get('PYTHONPATH', ''))
    cmd = [sys.executable, '-m', 'mrdib_pyg'] + TINY_ARGS + [
        '--epochs', '10', '--patience', '50', '--batch-size', '32', '--mrdib', '--seed', '5',
        '--no-progress', '--device', 'cpu']
    killed, full = tmp_path / 'killed', tmp_path / 'full'
    opts = dict(env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    uninterrupted = subprocess.Popen(cmd + ['--out-dir', str(full)], **opts)
    victim = subprocess.Popen(cmd + ['--out-dir', str(killed)], **opts)
    _kill_after_second_checkpoint(victim, str(killed / LAST), timeout=60)
    assert victim.returncode == -signal.SIGKILL
    epoch = read_checkpoint(str(killed))['epoch']
    assert 1 <= epoch < 9 and not (killed / 'results.json').exists()  # killed, not finished

    resumed = subprocess.run([sys.executable, '-m', 'mrdib_pyg', '--resume', str(killed)],
                             env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert uninterrupted.wait(timeout=120) == 0, uninterrupted.stderr.read()
    a = json.loads((full / 'results.json').read_text())
    b = json.loads((killed / 'results.json').read_text())
    assert len(b['history']) == 10
    assert numbers(b) == numbers(a)


@pytest.fixture(scope='module')
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp('finished')
    argv = TINY_ARGS + ['--epochs', '1', '--no-progress', '--device', 'cpu', '--out-dir', str(out)]
    assert main(argv) == 0
    return out


def resume_fails(capsys, *argv: str) -> str:
    assert main(list(argv)) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and 'Traceback' not in captured.err, captured.err
    assert lines[0].startswith('mrdib-train: error: ')
    return lines[0]


def test_resume_without_a_checkpoint(capsys, tmp_path):
    line = resume_fails(capsys, '--resume', str(tmp_path))
    assert line == (f"mrdib-train: error: cannot resume: '{tmp_path}' holds no last.pt (a run "
                    f"writes last.pt into its --out-dir after every epoch)")
    assert "'nowhere' does not exist" in resume_fails(capsys, '--resume', 'nowhere')


def test_resume_from_a_truncated_checkpoint(capsys, tmp_path, finished_run):
    blob = (finished_run / LAST).read_bytes()
    (tmp_path / LAST).write_bytes(blob[:len(blob) // 2])
    line = resume_fails(capsys, '--resume', str(tmp_path))
    assert f"cannot resume from '{tmp_path / LAST}': the file is damaged or truncated" in line
    torch.save({'epoch': 0, 'model': {}}, tmp_path / LAST)  # e.g. best.pt renamed
    assert 'it is not a last.pt checkpoint of mrdib-train (it lacks' in resume_fails(
        capsys, '--resume', str(tmp_path))


@pytest.mark.parametrize('argv, message', [
    (['--lr', '0.01'], 'lr (--lr) 0.01 (the run used 0.005)'),
    (['--mrdib'], 'mrdib (--mrdib) True (the run used False)'),
    (['--dataset-arg', 'num_users=90'], 'dataset_args (--dataset-arg)'),
    (['--out-dir', 'elsewhere'], "out_dir (--out-dir) 'elsewhere' (a resumed run writes into"),
])
def test_resume_with_conflicting_options(capsys, finished_run, argv, message):
    line = resume_fails(capsys, '--resume', str(finished_run), *argv)
    assert f"cannot resume '{finished_run}' with other options: {message}" in line
    assert 'only epochs (--epochs), progress (--progress), device (--device) may change' in line


def test_resume_accepts_unchanged_and_resumable_options(capsys, finished_run):
    stored = json.loads((finished_run / 'results.json').read_text())
    argv = ['--resume', str(finished_run), '--lr', '0.005', '--no-progress', '--json']
    assert main(argv + TINY_ARGS) == 0  # the same options again: the stored result
    assert numbers(json.loads(capsys.readouterr().out)) == numbers(stored)
