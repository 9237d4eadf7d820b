r"""Which half of a side-by-side accuracy gap is the model, which the training loop?

Trains one side's model inside the other side's training loop, on the same MMRec-format
folder, and prints one JSON line with the best validation epoch, the test metrics at it
and the validation curve:

* ``--direction mmrec-in-ours``: MMRec's own model (its ``calculate_loss`` and
  ``full_sort_predict``, built and initialised by MMRec's code) trained by our
  :class:`~mrdib_pyg.train.Trainer` (our sampler, our Adam, our evaluator);
* ``--direction ours-in-mmrec``: our model (built and initialised by
  :func:`~mrdib_pyg.train.build.build_model`) trained by MMRec's ``Trainer`` (MMRec's
  loader, its Adam, its evaluator).

* ``--direction ours-mmrec-init`` (BM3, DualGNN, GRCN, LATTICE): our model and our loop,
  started from the initial parameters MMRec's code draws at the same seed (copied in as
  ``benchmarks/equivalence/<model>.py`` copies them). Same computation as MMRec's model
  in our loop (the equivalence check), at our model's speed: the initial draw alone.

With the two plain runs (``bench_mmrec.py --mode accuracy``), this is a 2 x 2 design: if
MMRec's model trained by our loop lands where our model does, the loop (sampling,
optimiser, evaluation) accounts for the gap; if it lands where MMRec does, the model does
(its initialisation or its training-time computation). Run from MMRec's ``src/`` under
MMRec's interpreter, with our package and MMRec's CPU shim on the path::

    cd /tmp/mmrec/src && OMP_NUM_THREADS=1 PYTHONPATH=.:/work/main:/tmp/mmrec_cpu_shim \
        /tmp/mmvenv/bin/python /work/main/benchmarks/swap_trainer.py \
        --direction mmrec-in-ours --model BM3 --ours bm3 --seed 999 --epochs 20

Give MMRec's grid values explicitly (``--mmrec-arg n_layers=1``: a list left in MMRec's
configuration fails in its model) and ours the same through ``--model-arg``. Both sides use the folder's ids as
they are (the script checks that the two sides see the same users, items and training
pairs). Diagnostic only: nothing of either side is changed.
"""
import argparse
import ast
import importlib.util
import json
import os
import sys
import time

# MMRec's packages (common, utils, models) come from the working directory, not from this
# script's folder (whose common.py is ours).
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[0] = os.getcwd()

import torch  # noqa: E402

from mrdib_pyg.data.sampling import BPRBatch  # noqa: E402


def load_module(name, path):
    r"""The Python file :obj:`path` as a module (the benchmark folders are not on
    :obj:`sys.path`)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fit_curve():
    r"""``mmrec_fit_curve.py`` as a module (it imports MMRec's packages, so only under
    MMRec's interpreter)."""
    return load_module('mmrec_fit_curve', os.path.join(HERE, 'mmrec_fit_curve.py'))


class OursInMMRec(torch.nn.Module):
    r"""Our backbone behind MMRec's model interface: the loss on MMRec's stacked
    (user, positive[, negative]) rows, ``full_sort_predict`` through our cached scoring,
    and the epoch hooks MMRec's ``Trainer`` calls."""

    def __init__(self, model):
        super().__init__()
        self.m = model
        self.epoch = 0

    def calculate_loss(self, inter):
        neg = inter[2] if inter.size(0) > 2 else inter[1]  # negative-free loaders
        out, batch = self.m.forward_batch(BPRBatch(inter[0], inter[1], neg))
        return self.m.loss(out, batch)

    def full_sort_predict(self, inter):
        return self.m.score(inter[0])

    def pre_epoch_processing(self):
        self.m.pre_epoch(self.epoch)
        self.epoch += 1

    def post_epoch_processing(self):
        return None


def parse_kv(pairs):
    out = {}
    for kv in pairs:
        k, v = kv.split('=', 1)
        try:
            out[k] = ast.literal_eval(v)
        except (ValueError, SyntaxError):
            out[k] = v
    return out


def mmrec_parts(args):
    r"""MMRec's config, loaders and first-grid-value settings, as ``fit.py`` builds them."""
    from utils.configurator import Config
    from utils.logger import init_logger
    over = {'gpu_id': 0, 'use_gpu': False, 'seed': [args.seed], 'hyper_parameters': ['seed'],
            'save_recommended_topk': False, 'epochs': args.epochs,
            'stopping_step': args.epochs}
    over.update(parse_kv(args.mmrec_arg))
    config = Config(args.model, args.mmrec_dataset, over, False)
    config['use_gpu'], config['device'] = False, torch.device('cpu')
    init_logger(config)
    return (config, *fit_curve().loaders(config))


def check_same_split(mm_train, data):
    from mrdib_pyg.data.schema import ITEM, RATES, USER
    ei = data[RATES].edge_index
    ours = set(zip(ei[0].tolist(), ei[1].tolist()))
    df = mm_train.df
    theirs = set(zip(df[mm_train.uid_field].tolist(), df[mm_train.iid_field].tolist()))
    if ours != theirs:
        raise SystemExit(f'the two sides read different training pairs '
                         f'({len(ours)} vs {len(theirs)})')
    return data[USER].num_nodes, data[ITEM].num_nodes


def mmrec_model(args, data):
    r"""MMRec's config and its model, built and initialised at :obj:`args.seed` as MMRec's
    ``fit.py`` does, after checking both sides read the same training pairs; also the
    user and item counts."""
    from utils.utils import get_model, init_seed
    config, tr, train, _, _ = mmrec_parts(args)
    num_users, num_items = check_same_split(tr, data)
    init_seed(args.seed)
    train.pretrain_setup()
    return config, get_model(config['model'])(config, train), num_users, num_items


def our_config(args, config, **options):
    r"""Our :class:`TrainConfig` for a run in our loop with MMRec's settings: its learning
    rate and schedule, its training batch, and no early stop before :obj:`args.epochs`."""
    from mrdib_pyg.train import TrainConfig
    decay, decay_step = config['learning_rate_scheduler'] or (1.0, 50)
    return TrainConfig(dataset=args.name, root=args.root, model=args.ours, epochs=args.epochs,
                       patience=args.epochs, seed=args.seed, lr=config['learning_rate'],
                       lr_decay=float(decay), lr_decay_step=int(decay_step),
                       batch_size=config['train_batch_size'], progress=False, device='cpu',
                       **options)


def our_loop_summary(res):
    r"""Best epoch, test at it and the validation curve of a run of our :class:`Trainer`."""
    return {'best_epoch': res.best_epoch,
            'test': {k: round(res.test_at_best[k], 4) for k in ('Recall@20', 'NDCG@20')},
            'valid_curve_recall20': [round(h['valid']['Recall@20'], 5) for h in res.history]}


def mmrec_in_ours(args, data):
    r"""MMRec's model, our :class:`Trainer`."""
    from mrdib_pyg.nn.models.base import Recommender
    from mrdib_pyg.train import Trainer

    config, net, num_users, num_items = mmrec_model(args, data)

    class MMRecModel(Recommender):
        r"""MMRec's model behind our backbone interface: its loss on our batches (user,
        positive, negative rows, as MMRec's loader stacks them), its
        ``full_sort_predict`` for ranking."""

        def __init__(self):
            super().__init__(num_users, num_items)
            self.net = net

        def forward_batch(self, batch):
            return None, batch

        def loss(self, out, batch):
            inter = torch.stack([batch.users, batch.pos, batch.neg])
            return self.net.calculate_loss(inter).sum()

        def pre_epoch(self, epoch):
            self.net.pre_epoch_processing()

        @torch.no_grad()
        def score(self, users):
            return self.net.full_sort_predict((users,))

    # MMRec's evaluation batch too (its full_sort_predict runs once per block of users:
    # LATTICE's rebuilds its item graph in every call)
    cfg = our_config(args, config, eval_batch_size=config['eval_batch_size'])
    return our_loop_summary(Trainer(MMRecModel(), data, cfg).fit())


def ours_in_mmrec(args, data):
    r"""Our model, MMRec's ``Trainer``."""
    from utils.utils import get_trainer, init_seed

    from mrdib_pyg.train import TrainConfig
    from mrdib_pyg.train.build import build_model

    config, tr, train, valid, test = mmrec_parts(args)
    check_same_split(tr, data)
    init_seed(args.seed)
    train.pretrain_setup()
    cfg = TrainConfig(dataset=args.name, root=args.root, model=args.ours,
                      model_args=parse_kv(args.model_arg), seed=args.seed, device='cpu')
    model = build_model(cfg, data)
    trainer = get_trainer()(config, OursInMMRec(model), False)
    records = fit_curve().record_validation(trainer, valid)
    _, _, best_test = trainer.fit(train, valid_data=valid, test_data=test, saved=False,
                                  verbose=False)
    curve = [r['recall@20'] for r in records]
    best = max(curve)
    return {'best_epoch': curve.index(best),
            'test': {'Recall@20': round(float(best_test['recall@20']), 4),
                     'NDCG@20': round(float(best_test['ndcg@20']), 4)},
            'valid_curve_recall20': curve}


def ours_mmrec_init(args, data):
    r"""Our model and our :class:`Trainer`, from the initial parameters MMRec draws (copied
    by ``copy_params`` of ``benchmarks/equivalence/<ours>.py``, the mapping the
    equivalence check uses)."""
    from mrdib_pyg.train import Trainer
    from mrdib_pyg.train.build import build_model

    path = os.path.join(HERE, 'equivalence', f'{args.ours}.py')
    eq = load_module(f'equivalence_{args.ours}', path) if os.path.exists(path) else None
    if not hasattr(eq, 'copy_params'):
        raise SystemExit(f'--direction ours-mmrec-init needs copy_params in {path} '
                         f'(there for bm3, dualgnn, grcn, lattice)')
    config, net, _, _ = mmrec_model(args, data)
    cfg = our_config(args, config, model_args=parse_kv(args.model_arg))
    model = build_model(cfg, data)
    eq.copy_params(model, net)
    del net
    return our_loop_summary(Trainer(model, data, cfg).fit())


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--direction', required=True,
                   choices=('mmrec-in-ours', 'ours-in-mmrec', 'ours-mmrec-init'))
    p.add_argument('--model', required=True, help="MMRec's model name, e.g. BM3")
    p.add_argument('--ours', required=True, help='our registry name, e.g. bm3')
    p.add_argument('--model-arg', action='append', default=[],
                   help='key=value for our model (ours-in-mmrec, ours-mmrec-init)')
    p.add_argument('--mmrec-arg', action='append', default=[],
                   help="key=value for MMRec's config (every direction)")
    p.add_argument('--root', default='/tmp/mm', help='our AmazonMM root (ROOT/NAME/raw)')
    p.add_argument('--name', default='baby')
    p.add_argument('--mmrec-dataset', default='baby')
    p.add_argument('--seed', type=int, default=999)
    p.add_argument('--epochs', type=int, default=20)
    p.add_argument('--out', default=None, help='append the JSON line to this file')
    args = p.parse_args()
    torch.set_num_threads(int(os.environ.get('OMP_NUM_THREADS', '1')))

    from mrdib_pyg.data import AmazonMM
    data = AmazonMM(args.root, args.name)[0]
    t0 = time.perf_counter()
    fn = {'mmrec-in-ours': mmrec_in_ours, 'ours-in-mmrec': ours_in_mmrec,
          'ours-mmrec-init': ours_mmrec_init}[args.direction]
    res = {'direction': args.direction, 'model': args.model, 'seed': args.seed,
           'epochs': args.epochs, **fn(args, data),
           'wall_s': round(time.perf_counter() - t0, 1)}
    line = json.dumps(res)
    print(line)
    if args.out:
        with open(args.out, 'a') as f:
            f.write(line + '\n')


if __name__ == '__main__':
    main()
