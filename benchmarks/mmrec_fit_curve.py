r"""Train MMRec's own model to early stopping and print one JSON line with the best validation
result, the test result at it, the best epoch and the validation curve (Recall@20 and
NDCG@20 of every epoch). Run from MMRec's ``src/`` with MMRec's interpreter:

    python /path/to/benchmarks/mmrec_fit_curve.py MODEL DATASET key=value ... seed_value=N

The same steps as ``../shared/tools/mmrec/fit.py`` (config, dataset split, loaders, seed,
``trainer.fit``); the only addition is a wrapper around the trainer's validation pass that
records each epoch's metrics (MMRec's ``fit(verbose=False)`` logs none of them); with
``MMREC_CURVE_LOG=FILE`` each validation and test pass is also appended to FILE as it ends
(one JSON line), so a run cut short keeps its curve. Nothing of MMRec's training or
evaluation is changed.
"""
import ast
import json
import os
import sys
import time

# MMRec's packages (common, utils, models) come from the working directory, not from this
# script's folder (whose common.py is ours).
sys.path[0] = os.getcwd()

from utils.configurator import Config  # noqa: E402
from utils.dataloader import EvalDataLoader, TrainDataLoader  # noqa: E402
from utils.dataset import RecDataset  # noqa: E402
from utils.logger import init_logger  # noqa: E402
from utils.utils import get_model, get_trainer, init_seed  # noqa: E402

KEEP = ('recall@5', 'recall@10', 'recall@20', 'ndcg@5', 'ndcg@10', 'ndcg@20')


def loaders(config):
    r"""MMRec's training split and its train / validation / test loaders, as ``fit.py``
    builds them."""
    ds = RecDataset(config)
    tr, va, te = ds.split()
    for d in (ds, tr, va, te):  # as fit.py: __str__ sets the counts the loaders read
        str(d)
    train = TrainDataLoader(config, tr, batch_size=config['train_batch_size'], shuffle=True)
    valid = EvalDataLoader(config, va, additional_dataset=tr, batch_size=config['eval_batch_size'])
    test = EvalDataLoader(config, te, additional_dataset=tr, batch_size=config['eval_batch_size'])
    return tr, train, valid, test


def record_validation(trainer, valid_data):
    r"""Wrap MMRec's ``trainer._valid_epoch`` so that every pass over :obj:`valid_data`
    appends its Recall@20 and NDCG@20 to the returned list (one entry per epoch); the
    pass itself is MMRec's, unchanged."""
    curve = []
    valid_epoch = trainer._valid_epoch

    progress = os.environ.get('MMREC_CURVE_LOG')

    def recorded(data, *args, **kwargs):
        score, result = valid_epoch(data, *args, **kwargs)
        if data is valid_data:
            curve.append({k: round(float(result[k]), 5) for k in ('recall@20', 'ndcg@20')})
        if progress:  # every pass as it ends, so that a run cut short leaves its curve
            with open(progress, 'a') as f:
                f.write(json.dumps({'split': 'valid' if data is valid_data else 'test',
                                    'epoch': len(curve) - 1, 'time': round(time.time(), 1),
                                    **{k: round(float(v), 5) for k, v in result.items()
                                       if k in KEEP}}) + '\n')
        return score, result

    trainer._valid_epoch = recorded
    return curve


def main():
    model, dataset = sys.argv[1], sys.argv[2]
    over = {'gpu_id': 0, 'use_gpu': False, 'seed': [999], 'hyper_parameters': ['seed'],
            'save_recommended_topk': False}
    for kv in sys.argv[3:]:
        k, v = kv.split('=', 1)
        try:
            over[k] = ast.literal_eval(v)
        except (ValueError, SyntaxError):
            over[k] = v
    seed = int(over.pop('seed_value', 999))
    config = Config(model, dataset, over, False)
    config['use_gpu'], config['device'] = False, 'cpu'
    init_logger(config)
    _, train_data, valid_data, test_data = loaders(config)
    config['seed'] = seed
    init_seed(seed)
    train_data.pretrain_setup()
    net = get_model(config['model'])(config, train_data).to(config['device'])
    trainer = get_trainer()(config, net, False)

    curve = record_validation(trainer, valid_data)
    t0 = time.perf_counter()
    _, best_valid, best_test = trainer.fit(train_data, valid_data=valid_data,
                                           test_data=test_data, saved=False, verbose=False)
    wall = time.perf_counter() - t0
    pick = lambda r: {k: round(float(v), 4) for k, v in r.items() if k in KEEP}  # noqa: E731
    best_score = max(c['recall@20'] for c in curve) if curve else None
    print(json.dumps({'model': model, 'dataset': dataset, 'seed': seed,
                      'stop_counter': getattr(trainer, 'cur_step', None),
                      'best_epoch': next((i for i, c in enumerate(curve)
                                          if c['recall@20'] == best_score), None),
                      'wall_s': round(wall, 1), 'valid': pick(best_valid),
                      'test': pick(best_test), 'valid_curve': curve}))


if __name__ == '__main__':
    main()
