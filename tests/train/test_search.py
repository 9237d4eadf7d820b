import csv
import json
import math

import pytest

from mrdib_pyg.train import build
from mrdib_pyg.train.config import TrainConfig
from mrdib_pyg.train.search import main, parse_space, search
from mrdib_pyg.train.trainer import TrainResult

TINY = dict(num_users=80, num_items=50, image_dim=16, text_dim=8, seed=1)
ALPHAS = ('alpha1', 'alpha2', 'alpha3')
GRID = [1e-4, 1e-3, 5e-3, 1e-2, 5e-2]
TARGET = {'alpha1': 1e-3, 'alpha2': 1e-2, 'alpha3': 5e-2}  # the fake's best setting
SELECTED_TEST = 0.13579   # the fake's test Recall@20 at TARGET
SENTINEL = 0.86421        # ... at every other setting: must never show up


def base_cfg(**kw):
    c = dict(dataset_args=TINY, epochs=2, batch_size=256, progress=False, device='cpu',
             mrdib=True)
    c.update(kw)
    return TrainConfig().update(c)


def fake_valid(cfg):
    r"""Validation Recall@20 peaking at TARGET, separable in the alphas."""
    return 0.5 - sum(abs(math.log10(getattr(cfg.mrdib, a) / TARGET[a])) for a in ALPHAS) / 10


class FakeRun:
    r"""Replaces build.run: records calls, optionally fails after :obj:`fail_after`."""

    def __init__(self, valid=fake_valid, fail_after=None):
        self.calls, self.valid, self.fail_after = [], valid, fail_after

    def __call__(self, cfg, data=None):
        if self.fail_after is not None and len(self.calls) >= self.fail_after:
            raise RuntimeError('interrupted')
        self.calls.append(({a: getattr(cfg.mrdib, a) for a in ALPHAS}, cfg.epochs, cfg.seed))
        v = self.valid(cfg)
        best = all(getattr(cfg.mrdib, a) == TARGET[a] for a in ALPHAS)
        t = SELECTED_TEST if best else SENTINEL
        return TrainResult(cfg.to_dict(), cfg.epochs - 1, {'Recall@20': v, 'NDCG@20': v / 2},
                           {'Recall@20': t, 'NDCG@20': t})


@pytest.fixture
def fake(monkeypatch):
    f = FakeRun()
    monkeypatch.setattr(build, 'run', f)
    return f


def test_coordinate_visits_each_setting_once_and_selects_best_validation(tmp_path, fake):
    res = search(base_cfg(), None, 'coordinate', str(tmp_path), log=lambda s: None)
    # start (0.005, 0.05, 0.005) + 4 new values per option: 13 runs, no extra final run
    assert len(fake.calls) == 13 == len(res.trials)
    assert len({json.dumps(c[0], sort_keys=True) for c in fake.calls}) == 13
    assert fake.calls[0][0] == {'alpha1': 0.005, 'alpha2': 0.05, 'alpha3': 0.005}
    assert res.selected == TARGET
    assert res.valid['Recall@20'] == pytest.approx(0.5)
    assert res.test['Recall@20'] == SELECTED_TEST
    rows = list(csv.DictReader(open(tmp_path / 'trials.csv')))
    assert len(rows) == 13 and all(int(r['epochs']) == 2 for r in rows)
    assert json.loads((tmp_path / 'selected.json').read_text())['selected'] == TARGET
    assert (tmp_path / 'coordinate.png').stat().st_size > 0


def test_ties_keep_the_incumbent_then_go_to_grid_order(tmp_path, monkeypatch):
    f = FakeRun(valid=lambda cfg: 0.3)
    monkeypatch.setattr(build, 'run', f)
    space = {'alpha1': [1e-2, 1e-4, 5e-3], 'alpha2': [5e-2, 1e-3]}
    # base alphas 0.005/0.05: on every tie the coordinate search stays where it is
    res = search(base_cfg(), space, 'coordinate', str(tmp_path / 'c'), log=lambda s: None)
    assert res.selected == {'alpha1': 5e-3, 'alpha2': 5e-2}
    res = search(base_cfg(), space, 'halving', str(tmp_path / 'h'), min_epochs=1,
                 log=lambda s: None, plots=False)
    assert res.selected == {'alpha1': 1e-2, 'alpha2': 5e-2}
    # values scoring above the incumbent replace it; of two tied for best, the first in
    # grid order wins
    f = FakeRun(valid=lambda cfg: 0.3 + 0.1 * (cfg.mrdib.alpha1 in (1e-4, 1e-3)))
    monkeypatch.setattr(build, 'run', f)
    space = {'alpha1': [1e-2, 1e-3, 5e-3, 1e-4]}
    res = search(base_cfg(), space, 'coordinate', str(tmp_path / 'c2'), log=lambda s: None,
                 plots=False)
    assert res.selected == {'alpha1': 1e-3}


def test_halving_keeps_top_third_per_rung_and_multiplies_the_budget(tmp_path, monkeypatch):
    def valid(cfg):  # the ranking changes with the budget
        return fake_valid(cfg) + 0.05 * math.sin(1e3 * cfg.mrdib.alpha1 * cfg.mrdib.alpha2 + cfg.epochs
                                                 + 7 * cfg.mrdib.alpha3)
    f = FakeRun(valid=valid)
    monkeypatch.setattr(build, 'run', f)
    space = {a: [1e-3, 1e-2, 5e-2] for a in ALPHAS}
    res = search(base_cfg(epochs=20), space, 'halving', str(tmp_path), eta=3,
                 min_epochs=1, log=lambda s: None)
    budgets = [c[1] for c in f.calls]
    # 27 at 1 epoch, 9 at 3, 3 at 9, then the last one left trains at the full 20
    assert budgets == [1] * 27 + [3] * 9 + [9] * 3 + [20]
    rungs = [f.calls[:27], f.calls[27:36], f.calls[36:39], f.calls[39:]]
    for prev, nxt in zip(rungs, rungs[1:]):
        ranked = sorted(prev, key=lambda c: -valid(base_cfg(epochs=c[1]).update(c[0])))
        top = ranked[:max(1, len(prev) // 3)]
        assert sorted(json.dumps(c[0]) for c in nxt) == sorted(json.dumps(c[0]) for c in top)
    assert res.selected == rungs[-1][0][0]
    assert (tmp_path / 'halving.png').exists()


def test_halving_samples_max_configs(tmp_path, fake):
    space = {a: GRID for a in ALPHAS}
    search(base_cfg(epochs=9), space, 'halving', str(tmp_path), max_configs=10,
           min_epochs=1, log=lambda s: None, plots=False)
    assert [c[1] for c in fake.calls] == [1] * 10 + [3] * 3 + [9]


def test_resume_reruns_only_missing_trials(tmp_path, monkeypatch):
    first = FakeRun(fail_after=5)
    monkeypatch.setattr(build, 'run', first)
    with pytest.raises(RuntimeError, match='interrupted'):
        search(base_cfg(), None, 'coordinate', str(tmp_path), log=lambda s: None, plots=False)
    assert len(list(csv.DictReader(open(tmp_path / 'trials.csv')))) == 5
    done = [c[0] for c in first.calls]

    second = FakeRun()
    monkeypatch.setattr(build, 'run', second)
    lines = []
    res = search(base_cfg(), None, 'coordinate', str(tmp_path), log=lines.append, plots=False)
    assert '5 finished runs read back' in lines[0]
    assert len(second.calls) == 8
    assert not any(c[0] in done for c in second.calls)
    assert res.selected == TARGET and res.test['Recall@20'] == SELECTED_TEST

    # A complete folder reruns nothing (the selected test is read from selected.json) ...
    third = FakeRun()
    monkeypatch.setattr(build, 'run', third)
    assert search(base_cfg(), None, 'coordinate', str(tmp_path),
                  log=lambda s: None).test['Recall@20'] == SELECTED_TEST
    assert third.calls == []
    # ... and a lost last row is run again, alone.
    text = (tmp_path / 'trials.csv').read_text().splitlines()
    (tmp_path / 'trials.csv').write_text('\n'.join(text[:-1]) + '\n')
    search(base_cfg(), None, 'coordinate', str(tmp_path), log=lambda s: None, plots=False)
    assert [c[0] for c in third.calls] == [TARGET]


def test_a_different_search_in_the_same_folder_is_refused(tmp_path, fake):
    search(base_cfg(), {'alpha1': [1e-3, 5e-3]}, out_dir=str(tmp_path), log=lambda s: None)
    with pytest.raises(ValueError, match='different search.*space'):
        search(base_cfg(), {'alpha1': [1e-3, 1e-2]}, out_dir=str(tmp_path))
    with pytest.raises(ValueError, match='different search.*base.lr'):
        search(base_cfg(lr=0.1), {'alpha1': [1e-3, 5e-3]}, out_dir=str(tmp_path))
    assert len(fake.calls) == 2


def test_test_metrics_of_other_settings_appear_nowhere(tmp_path, fake, capsys):
    assert main(['--mrdib', '--epochs', '2', '--no-progress', '--seeds', '1', '2',
                 '--search-out', str(tmp_path)]) == 0
    assert len(fake.calls) == 26  # 13 settings x 2 seeds
    out = capsys.readouterr().out
    assert str(SENTINEL)[:6] not in out and '0.1358' in out
    for path in tmp_path.iterdir():
        if path.suffix in ('.csv', '.md', '.json'):
            assert str(SENTINEL)[:6] not in path.read_text(), path.name
    assert str(SELECTED_TEST) in (tmp_path / 'selected.json').read_text()
    assert '0.1358' in (tmp_path / 'summary.md').read_text()
    assert 'test' not in (tmp_path / 'trials.csv').read_text().splitlines()[0]


def test_cli_runs_in_process(tmp_path, fake, capsys):
    assert main(['--mrdib', '--epochs', '2', '--no-progress', '--space', 'alpha1=1e-4,1e-3',
                 '--space', 'alpha2=5e-2', '--search-out', str(tmp_path), '--no-plots']) == 0
    assert [c[0]['alpha1'] for c in fake.calls] == [0.005, 1e-4, 1e-3]
    out = capsys.readouterr().out
    assert out.count('trial ') == 3 and 'alpha1=0.0001' in out
    assert {p.name for p in tmp_path.iterdir()} == {'trials.csv', 'search.json',
                                                    'summary.md', 'selected.json'}


@pytest.mark.parametrize('args,message', [
    (['--space', 'alpha1='], 'at least one value'),
    (['--space', 'alpha9=1,2'], "unknown option 'alpha9'"),
    (['--space', 'seed=1,2'], 'cannot be searched'),
    (['--method', 'foo'], "invalid choice: 'foo'"),
    (['--bogus'], 'unrecognized arguments: --bogus'),
    (['--model-arg', 'oops'], 'KEY=VALUE'),
    (['--space', 'lr=0,1e-3'], 'lr (--lr) must be'),  # TrainConfig.validate, before any run
])
def test_cli_bad_input_exits_2_with_one_message(tmp_path, fake, capsys, args, message):
    assert main(['--mrdib', '--search-out', str(tmp_path / 's')] + args) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1].startswith('mrdib-search: error:')
    assert message in err and 'Traceback' not in err
    assert fake.calls == []


def test_parse_space_reads_yaml_scalars():
    assert parse_space(['lr=1e-3, 5e-3', 'model_args.num_layers=1,2', 'replace=true']) == {
        'lr': [1e-3, 5e-3], 'model_args.num_layers': [1, 2], 'replace': [True]}


def test_real_end_to_end_on_tiny_synthetic_data(tmp_path):
    from mrdib_pyg.data.synthetic import SyntheticMM
    data = SyntheticMM(**TINY)[0]
    lines = []
    res = search(base_cfg(model='bprmf', mrdib=False),
                 {'lr': [1e-3, 5e-2], 'model_args.reg_weight': [1e-4]}, out_dir=str(tmp_path),
                 data=data, log=lines.append)
    assert len(res.trials) == 2 and res.selected['model_args.reg_weight'] == 1e-4
    best = max(res.trials, key=lambda t: t['valid']['Recall@20'])
    assert res.selected['lr'] == best['options']['lr']
    assert 0 <= res.test['Recall@20'] <= 1
    assert sum(line.startswith('trial') for line in lines) == 2
    summary = (tmp_path / 'summary.md').read_text()
    assert 'model_args.reg_weight' in summary and 'test  Recall' in summary


def test_json_prints_the_selection_alone_on_stdout(tmp_path, fake, capsys):
    assert main(['--mrdib', '--epochs', '2', '--no-progress', '--space', 'alpha1=1e-4,1e-3',
                 '--search-out', str(tmp_path), '--no-plots', '--json']) == 0
    captured = capsys.readouterr()
    record = json.loads(captured.out)  # nothing but the JSON on stdout
    assert record == json.loads((tmp_path / 'selected.json').read_text())
    assert record['selected']['alpha1'] == 1e-3 and 'trial ' in captured.err


@pytest.mark.parametrize('args,message', [
    (['--resume', 'somewhere'], '--resume is an mrdib-train option'),
    (['--plot'], '--plot is an mrdib-train option'),
    (['--plot', 'x.png'], '--plot is an mrdib-train option'),
    (['--out-dir', 'somewhere'], '--out-dir is an mrdib-train option'),
])
def test_train_options_that_mean_nothing_here_are_refused(tmp_path, fake, capsys, args,
                                                          message):
    # accepted as mrdib-train options, they used to be ignored without a word
    assert main(['--mrdib', '--search-out', str(tmp_path / 's')] + args) == 2
    err = capsys.readouterr().err
    assert message in err and fake.calls == []
    assert not (tmp_path / 's').exists()


def test_a_start_value_off_the_grid_is_announced(tmp_path, fake, capsys):
    # the base alpha1 (the paper's 0.005) is not among the two values asked for: it is
    # tried first and could win, which the user is told before any run
    assert main(['--mrdib', '--epochs', '2', '--no-progress', '--space', 'alpha1=1e-4,1e-3',
                 '--space', 'alpha2=5e-2', '--search-out', str(tmp_path), '--no-plots']) == 0
    out = capsys.readouterr().out
    assert "alpha1: the starting value 0.005 (the base configuration's) is not in the grid " \
           "[0.0001, 0.001]" in out and 'alpha1 (--alpha1)' in out
    assert 'alpha2: the starting value' not in out  # 0.05 is on its grid
    assert out.index('starting value') < out.index('trial ')
