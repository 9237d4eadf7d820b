r"""The training-loop parts of the BM3 side-by-side gap (``docs/results.md``, BM3's 2 x 2
swap): does our optimiser or our evaluator differ from MMRec's on the real Baby folder?

1. **Adam.** Our BM3 (built by :func:`~mrdib_pyg.train.build.build_model`, seed 999)
   trained for :obj:`--steps` steps (default: one epoch, 59 batches of 2,048) on the same
   batches, with the torch seed reset before every step so every arm draws the same
   dropout targets, by plain single-tensor Adam (MMRec's), a second plain run (the
   computation is deterministic: must be bit-equal), ``foreach`` Adam, and our fused Adam
   (:func:`~mrdib_pyg.train.trainer.make_adam`); the largest parameter difference to the
   first plain run.
2. **Evaluator.** The same BM3 trained epoch by epoch by our :class:`Trainer`, ranked after
   each of :obj:`--epochs` epochs by our :class:`~mrdib_pyg.evaluate.FullRankEvaluator` and
   by MMRec's ``Trainer._valid_epoch`` (MMRec's evaluator) on validation and test.

Run from MMRec's ``src/`` under MMRec's interpreter (part 2 needs MMRec)::

    cd /tmp/mmrec/src && OMP_NUM_THREADS=1 PYTHONPATH=.:/work/main:/tmp/mmrec_cpu_shim \
        /tmp/mmvenv/bin/python /work/main/benchmarks/equivalence/bm3_loop.py

Prints both tables and writes ``benchmarks/results/equivalence_bm3_loop.json``.
"""
import argparse
import importlib.util
import json
import os
import sys

sys.path[0] = os.getcwd()  # MMRec's packages, not this folder's neighbours

import torch  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, '..', 'results')
SETTINGS = ['n_layers=1', 'dropout=0.3', 'reg_weight=0.1']  # MMRec's first grid values


def build(data, seed=999):
    from mrdib_pyg.train import TrainConfig
    from mrdib_pyg.train.build import build_model
    cfg = TrainConfig(dataset='baby', model='bm3', seed=seed, device='cpu',
                      model_args={'n_layers': 1, 'dropout': 0.3, 'reg_weight': 0.1})
    torch.manual_seed(seed)
    return build_model(cfg, data), cfg


def adam_arms(data, steps):
    from mrdib_pyg.data.sampling import BPRSampler
    from mrdib_pyg.data.schema import ITEM, RATES, USER
    from mrdib_pyg.train.trainer import make_adam
    ei = data[RATES].edge_index

    def run(kind):
        model, cfg = build(data)
        params = list(model.parameters())
        opt = (make_adam(params, 1e-3, 0.0) if kind == 'fused (ours)' else
               torch.optim.Adam(params, lr=1e-3, foreach=(kind == 'foreach')))
        sampler = BPRSampler(ei, data[USER].num_nodes, data[ITEM].num_nodes, seed=1)
        batches = iter(sampler)
        for k in range(steps):
            try:
                batch = next(batches)
            except StopIteration:
                batches = iter(sampler)
                batch = next(batches)
            torch.manual_seed(k)  # the same dropout targets in every arm
            out, batch = model.forward_batch(batch)
            loss = model.loss(out, batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return {n: p.detach() for n, p in model.named_parameters()}

    ref = run('plain')
    rows = []
    for kind in ('plain, again', 'foreach', 'fused (ours)'):
        other = run(kind)
        worst = max(ref, key=lambda n: float((other[n] - ref[n]).abs().max()))
        rows.append({'arm': kind, 'max_abs_diff': float((other[worst] - ref[worst]).abs().max()),
                     'parameter': worst})
        print(f"{kind:14s} max |param - plain| {rows[-1]['max_abs_diff']:.2e} ({worst})")
    return rows


def evaluators(data, epochs):
    from utils.utils import get_trainer

    from mrdib_pyg.train import Trainer
    spec = importlib.util.spec_from_file_location(
        'swap_trainer', os.path.join(HERE, '..', 'swap_trainer.py'))
    swap = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(swap)
    args = argparse.Namespace(seed=999, epochs=epochs, model='BM3', mmrec_dataset='baby',
                              mmrec_arg=SETTINGS)
    config, _, _, valid, test = swap.mmrec_parts(args)
    model, cfg = build(data)
    cfg.progress = False
    theirs = get_trainer()(config, swap.OursInMMRec(model), False)  # ranks with our model
    ours = Trainer(model, data, cfg)
    rows = []
    for epoch in range(epochs + 1):
        for split, loader in (('val', valid), ('test', test)):
            a = ours.evaluate(split)
            b = theirs._valid_epoch(loader)[1]
            rows.append({'epochs_trained': epoch, 'split': split,
                         'ours': {k: a[k] for k in ('Recall@20', 'NDCG@20')},
                         'mmrec': {k: float(b[k.lower()]) for k in ('Recall@20', 'NDCG@20')}})
            print(f"after {epoch} epoch(s), {split:4s}: ours R@20 {a['Recall@20']:.5f} "
                  f"N@20 {a['NDCG@20']:.5f} | MMRec R@20 {float(b['recall@20']):.4f} "
                  f"N@20 {float(b['ndcg@20']):.4f}")
        if epoch < epochs:
            ours.train_epoch(epoch)
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--steps', type=int, default=59, help='Adam arms: training steps')
    p.add_argument('--epochs', type=int, default=2, help='evaluators: epochs trained')
    p.add_argument('--root', default='/tmp/mm', help='our AmazonMM root (ROOT/baby/raw: the '
                   "folder MMRec's configs/dataset/baby.yaml points at)")
    args = p.parse_args()
    torch.set_num_threads(int(os.environ.get('OMP_NUM_THREADS', '1')))
    from mrdib_pyg.data import AmazonMM
    data = AmazonMM(args.root, 'baby')[0]
    out = {'adam': adam_arms(data, args.steps), 'evaluators': evaluators(data, args.epochs),
           'steps': args.steps, 'torch': torch.__version__}
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, 'equivalence_bm3_loop.json'), 'w') as f:
        json.dump(out, f, indent=2)


if __name__ == '__main__':
    main()
