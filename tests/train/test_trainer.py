import json
import math

import pytest
import torch

from mrdib_pyg.data.synthetic import SyntheticMM
from mrdib_pyg.train.cli import config_from_args, main
from mrdib_pyg.train.config import TrainConfig
from mrdib_pyg.train import EarlyStopping, Trainer, build_model, run

SMALL = dict(num_users=120, num_items=80, image_dim=32, text_dim=16,
             interactions_per_user=(5, 12), seed=1)


@pytest.fixture(scope='module')
def data():
    return SyntheticMM(**SMALL)[0]


def cfg(**kw):
    base = dict(dataset='synthetic', dataset_args=SMALL, epochs=3, batch_size=256,
                progress=False, device='cpu', seed=0)
    base.update(kw)
    return TrainConfig().update(base)


def test_early_stopping_follows_mmrec():
    s = EarlyStopping(patience=2)
    assert s.step(0.10001, 0)
    assert not s.step(0.10004, 1)  # equal after rounding to 4 decimals: no improvement
    assert not s.step(0.1, 2)
    assert not s.should_stop  # 2 bad epochs == patience: keep going
    assert not s.step(0.09, 3)
    assert s.should_stop  # the (patience + 1)-th consecutive bad epoch stops
    assert s.best_epoch == 0


@pytest.mark.parametrize('model', ['bprmf', 'lightgcn', 'vbpr'])
def test_run_writes_results_and_checkpoint(tmp_path, data, model):
    result = run(cfg(model=model, out_dir=str(tmp_path)), data=data)
    saved = json.loads((tmp_path / 'results.json').read_text())
    assert saved['best_epoch'] == result.best_epoch
    assert len(saved['history']) == 3
    assert set(saved['test_at_best']) >= {'Recall@20', 'NDCG@20', 'Precision@5', 'MAP@50'}
    assert saved['config']['model'] == model
    assert saved['timings']['train_epoch_median_s'] > 0
    state = torch.load(tmp_path / 'best.pt', weights_only=False)
    assert state['epoch'] == result.best_epoch
    # The test metrics recorded at the best epoch are those of the saved weights.
    trainer = Trainer(build_model(cfg(model=model), data), data, cfg(model=model))
    trainer.load_best(str(tmp_path / 'best.pt'))
    again = trainer.evaluate('test')
    assert again['Recall@20'] == pytest.approx(result.test_at_best['Recall@20'], abs=1e-6)


def test_training_improves_over_random_init(data):
    c = cfg(model='lightgcn', epochs=15, lr=1e-2)
    trainer = Trainer(build_model(c, data), data, c)
    before = trainer.evaluate('val')['Recall@20']
    result = trainer.fit()
    assert result.best_valid['Recall@20'] > before + 0.02
    losses = [h['loss']['loss'] for h in result.history]
    assert losses[-1] < losses[0]


def test_same_seed_same_result(data):
    a = run(cfg(model='vbpr'), data=data)
    b = run(cfg(model='vbpr'), data=data)
    assert a.test_at_best == b.test_at_best


def test_unknown_options_fail_loudly(tmp_path):
    with pytest.raises(KeyError, match='learning_rate'):
        TrainConfig().update({'learning_rate': 0.1})
    bad = tmp_path / 'c.yaml'
    bad.write_text('epochs: 3\nlearnig_rate: 0.1\n')
    with pytest.raises(KeyError, match=str(bad)):
        TrainConfig.from_yaml(str(bad))
    with pytest.raises(KeyError, match='Unknown model'):
        build_model(cfg(model='nope'), None)


def test_cli_precedence(tmp_path):
    f = tmp_path / 'c.yaml'
    f.write_text('epochs: 7\nlr: 0.01\nmodel_args: {num_layers: 3}\n')
    c, _ = config_from_args(['--config', str(f), '--lr', '0.002', '--model-arg', 'reg_weight=1e-3',
                             '--no-progress', '--topk', '5', '20'])
    assert c.epochs == 7 and c.lr == 0.002 and c.progress is False
    assert c.model_args == {'num_layers': 3, 'reg_weight': 1e-3}
    assert c.topk == (5, 20)
    assert c.batch_size == 1024  # the synthetic preset sits under the file and the flags


def test_dataset_presets_apply_only_to_their_dataset():
    c, _ = config_from_args([])
    assert (c.dataset, c.lr, c.batch_size) == ('synthetic', 5e-3, 1024)
    c, _ = config_from_args(['--dataset', 'baby'])
    assert (c.lr, c.batch_size) == (1e-3, 2048)  # MMRec's defaults
    c, _ = config_from_args(['--lr', '0.01'])
    assert c.lr == 0.01


def test_cli_main_prints_metrics_table(capsys, tmp_path):
    args = ['--epochs', '2', '--batch-size', '512', '--no-progress', '--device', 'cpu',
            '--out-dir', str(tmp_path)]
    for k, v in SMALL.items():
        args += ['--dataset-arg', f'{k}={list(v) if isinstance(v, tuple) else v}']
    assert main(args) == 0
    text = capsys.readouterr().out
    assert 'Recall' in text and 'NDCG' in text and '@20' in text
    assert (tmp_path / 'results.json').exists()


def test_multimodal_backbone_without_features_is_refused():
    from mrdib_pyg.data.schema import build_heterodata
    ei = torch.tensor([[0, 1], [0, 1]])
    bare = build_heterodata(2, 2, ei, ei, ei, {})
    with pytest.raises(ValueError, match='generated-features'):
        build_model(cfg(model='vbpr'), bare)


def test_cli_reports_input_errors_without_traceback(capsys, tmp_path):
    assert main(['--dataset', 'mydata', '--root', str(tmp_path), '--no-progress']) == 2
    err = capsys.readouterr().err
    assert err.startswith('mrdib-train: error:') and str(tmp_path / 'mydata' / 'raw') in err
    assert 'Traceback' not in err


def test_cli_end_to_end_on_an_unseen_mmrec_format_dataset(tmp_path, capsys):
    import numpy as np
    g = np.random.default_rng(0)
    raw = tmp_path / 'garden' / 'raw'
    raw.mkdir(parents=True)
    lines = ['userID\titemID\trating\ttimestamp\tx_label']
    for u in range(60):
        items = g.choice(40, size=6, replace=False)
        lines += [f'{u}\t{i}\t5\t0\t{0 if k < 4 else k - 3}' for k, i in enumerate(items)]
    (raw / 'garden.inter').write_text('\n'.join(lines) + '\n')
    np.save(raw / 'image_feat.npy', g.normal(size=(40, 32)))  # float64 on disk, as MMRec's
    np.save(raw / 'text_feat.npy', g.normal(size=(40, 16)))
    args = ['--dataset', 'garden', '--root', str(tmp_path), '--model', 'vbpr', '--mrdib',
            '--epochs', '2', '--no-progress', '--device', 'cpu', '--out-dir', str(tmp_path / 'r')]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "on 'garden': 60 users, 40 items, 240 training interactions" in out
    assert 'modalities: image, text' in out
    saved = json.loads((tmp_path / 'r' / 'results.json').read_text())
    assert saved['info']['modalities'] == ['image', 'text']
    assert 'redundant' in saved['history'][0]['loss']


def test_generated_features_are_flagged_by_their_source_not_the_dataset_name(data):
    from mrdib_pyg.data import attach_generated_features
    from mrdib_pyg.data.schema import build_heterodata
    from mrdib_pyg.train.build import has_generated_features
    assert not has_generated_features(data)  # synthetic throughout, whatever cfg.dataset says
    rates = data['user', 'rates', 'item']
    bare = build_heterodata(data['user'].num_nodes, data['item'].num_nodes, rates.edge_index,
                            rates.val_edge_index, rates.test_edge_index, {})
    real_like = attach_generated_features(bare, dims={'image': 8, 'text': 4})
    assert has_generated_features(real_like)
    with pytest.warns(UserWarning, match='GENERATED'):
        result = run(cfg(model='vbpr', epochs=1), data=real_like)
    assert result.info['generated_features'] is True


def test_lr_decays_as_mmrec_lambda_lr():
    r"""MMRec's LambdaLR: lr * decay ** (epoch / step), stepped after every epoch."""
    from mrdib_pyg.data import SyntheticMM
    data = SyntheticMM(num_users=30, num_items=20, interactions_per_user=(3, 6), seed=0)[0]
    cfg = TrainConfig().update(dict(model='bprmf', epochs=3, patience=5, progress=False,
                                    lr=0.1, lr_decay=0.5, lr_decay_step=2, batch_size=64))
    trainer = Trainer(build_model(cfg, data), data, cfg)
    trainer.fit()
    assert trainer.optimizer.param_groups[0]['lr'] == pytest.approx(0.1 * 0.5 ** (3 / 2))


def test_model_presets_sit_under_dataset_presets_config_and_flags(tmp_path):
    from mrdib_pyg.train.cli import config_from_args
    cfg, _ = config_from_args(['--model', 'mgcn', '--dataset', 'baby'])
    assert (cfg.lr_decay, cfg.lr_decay_step, cfg.lr) == (0.96, 50, 1e-3)  # MGCN.yaml
    cfg, _ = config_from_args(['--model', 'mgcn', '--dataset', 'baby', '--lr-decay', '1'])
    assert cfg.lr_decay == 1.0
    cfg, _ = config_from_args(['--model', 'mmgcn', '--dataset', 'baby'])
    assert cfg.lr == 1e-4  # MMGCN's first grid value
    cfg, _ = config_from_args(['--model', 'mmgcn'])  # the synthetic preset comes later
    assert cfg.lr == 5e-3
    (tmp_path / 'c.yaml').write_text('model: mmgcn\nlr: 0.002\n')
    cfg, _ = config_from_args(['--config', str(tmp_path / 'c.yaml'), '--dataset', 'baby'])
    assert cfg.lr == 0.002


def test_evaluate_names_its_split_and_refuses_unknown_ones(data):
    # 'valid' (the command line's word) is validation; any other unknown name used to
    # give the TEST metrics without a word
    c = cfg(model='lightgcn', epochs=1)
    trainer = Trainer(build_model(c, data), data, c)
    val, test = trainer.evaluate('val'), trainer.evaluate('test')
    assert val != test and trainer.evaluate('valid') == val
    for wrong in ('validaton', 'train', 'Test'):
        with pytest.raises(ValueError, match=f"unknown split '{wrong}'"):
            trainer.evaluate(wrong)


def test_empty_split_is_an_error_or_a_warning():
    from mrdib_pyg.data.schema import RATES
    data = SyntheticMM(num_users=40, num_items=30, seed=0)[0]
    no_test = data.clone()
    no_test[RATES].test_edge_index = no_test[RATES].test_edge_index[:, :0]
    cfg = TrainConfig(model='bprmf', epochs=1, progress=False)
    with pytest.warns(UserWarning, match="no test interaction.*NaN"):
        res = Trainer(build_model(cfg, no_test), no_test, cfg).fit()
    assert all(math.isnan(v) for v in res.test_at_best.values())
    assert not any(math.isnan(v) for v in res.best_valid.values())
    no_valid = data.clone()
    no_valid[RATES].val_edge_index = no_valid[RATES].val_edge_index[:, :0]
    with pytest.raises(ValueError, match="no validation interaction"):
        Trainer(build_model(cfg, no_valid), no_valid, cfg)


def test_progress_is_one_line_per_epoch_when_stderr_is_not_a_terminal(capsys):
    data = SyntheticMM(num_users=40, num_items=30, seed=0)[0]
    cfg = TrainConfig(model='bprmf', epochs=3, patience=5, progress=True)
    Trainer(build_model(cfg, data), data, cfg).fit()
    lines = capsys.readouterr().err.strip().splitlines()
    assert [line.split(':')[0] for line in lines] == ['epoch 0/3', 'epoch 1/3', 'epoch 2/3']
    assert 'valid Recall@20' in lines[0] and 'without improvement' in lines[0]
    assert '\r' not in ''.join(lines) and '%|' not in ''.join(lines)  # no bar fragments
    cfg.progress = False
    Trainer(build_model(cfg, data), data, cfg).fit()
    assert capsys.readouterr().err == ''
