import ctypes

import pytest

from mrdib_pyg.train import allocator, build
from mrdib_pyg.train.config import TrainConfig


class FakeLibc:
    def __init__(self):
        self.calls = []

        def mallopt(param, value):
            self.calls.append((param, value))
            return 1
        self.mallopt = mallopt


@pytest.fixture
def fresh(monkeypatch):
    monkeypatch.setattr(allocator, '_applied', False)
    monkeypatch.setattr(allocator.sys, 'platform', 'linux')


def test_sets_the_mmap_and_trim_thresholds(fresh, monkeypatch):
    libc = FakeLibc()
    monkeypatch.setattr(ctypes, 'CDLL', lambda name: libc)
    assert allocator.keep_freed_memory(1 << 28)
    assert libc.calls == [(-3, 1 << 28), (-1, 1 << 29)]  # M_MMAP_THRESHOLD, M_TRIM_THRESHOLD
    assert allocator.keep_freed_memory()  # once per process
    assert len(libc.calls) == 2


def test_no_glibc_changes_nothing(fresh, monkeypatch):
    def no_libc(name):
        raise OSError('no such library')
    monkeypatch.setattr(ctypes, 'CDLL', no_libc)
    assert allocator.keep_freed_memory() is False


def test_not_linux_changes_nothing(monkeypatch):
    monkeypatch.setattr(allocator, '_applied', False)
    monkeypatch.setattr(allocator.sys, 'platform', 'darwin')
    monkeypatch.setattr(ctypes, 'CDLL', lambda name: pytest.fail('must not load libc'))
    assert allocator.keep_freed_memory() is False


@pytest.mark.parametrize('keep', [True, False])
def test_run_applies_it_only_when_asked(keep, monkeypatch):
    called = []
    monkeypatch.setattr(build, 'keep_freed_memory', lambda: called.append(1) or True)
    cfg = TrainConfig(model='bprmf', dataset='synthetic', epochs=1, progress=False,
                      keep_freed_memory=keep,
                      dataset_args=dict(num_users=60, num_items=40, seed=0))
    build.run(cfg)
    assert called == ([1] if keep else [])
