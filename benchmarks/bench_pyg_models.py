r"""PyG models that are not ours, plugged in through
:class:`~mrdib_pyg.nn.models.PyGBackbone`, bare and with MRdIB, full graph and mini-batch:
test Recall@20 / NDCG@20 at the best validation epoch (mean ± std over seeds) and median
seconds per training epoch, on the embedded SyntheticMM data the contract test uses
(400 users, 300 items, sharp preferences; popularity's Recall@20 is printed beside).

    OMP_NUM_THREADS=1 python benchmarks/bench_pyg_models.py --seeds 0 1 2 --epochs 20
"""
import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, print_table, write_json  # noqa: E402

from mrdib_pyg.data import SyntheticMM  # noqa: E402
from mrdib_pyg.evaluate import FullRankEvaluator  # noqa: E402
from mrdib_pyg.nn import MRdIB  # noqa: E402
from mrdib_pyg.nn.models import PyGBackbone  # noqa: E402
from mrdib_pyg.train import TrainConfig, Trainer, seed_everything  # noqa: E402


def build(name, data):
    from torch_geometric.nn import GCN, GraphSAGE, to_hetero
    from torch_geometric.nn.models import LightGCN
    if name in ('GraphSAGE (to_hetero)', 'GraphSAGE (to_hetero), mini-batch [10, 10]'):
        enc = to_hetero(GraphSAGE((-1, -1), 64, num_layers=2), data.metadata(), aggr='mean')
        fanout = [10, 10] if 'mini' in name else None
        return PyGBackbone(enc, data, num_neighbors=fanout)
    if name == 'GCN (homogeneous)':
        return PyGBackbone(GCN(64, 64, num_layers=2), data, mode='homogeneous')
    if name == 'LightGCN (PyG)':
        enc = LightGCN(PyGBackbone.num_nodes(data), 64, num_layers=2)
        return PyGBackbone(enc, data, mode='homogeneous', id_embeddings=False,
                           call=lambda e, x, ei: e.get_embedding(ei))
    raise KeyError(name)


MODELS = ('GraphSAGE (to_hetero)', 'GraphSAGE (to_hetero), mini-batch [10, 10]',
          'GCN (homogeneous)', 'LightGCN (PyG)')


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
    p.add_argument('--epochs', type=int, default=20)
    p.add_argument('--threads', type=int, default=1)
    p.add_argument('--out', default='pyg_models.json')
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    data = SyntheticMM(num_users=400, num_items=300, interactions_per_user=(10, 20),
                       temperature=0.25, popularity=0.2, seed=1)[0]
    counts = torch.bincount(data['user', 'rates', 'item'].edge_index[1],
                            minlength=data['item'].num_nodes).float()
    pop = FullRankEvaluator.from_data(data, 'test', ks=(20, )).evaluate(
        lambda users: counts.expand(len(users), -1).clone(), device=torch.device('cpu'))
    rows, runs = [], []
    for name in MODELS:
        for variant in ('bare', '+ MRdIB'):
            r20, n20, secs = [], [], []
            for seed in args.seeds:
                cfg = TrainConfig(dataset='synthetic', epochs=args.epochs, patience=args.epochs,
                                  progress=False, lr=1e-2, batch_size=512, seed=seed,
                                  device='cpu')
                seed_everything(seed)
                model = build(name, data)
                plugin = MRdIB.from_output(model()) if variant != 'bare' else None
                res = Trainer(model, data, cfg, plugin).fit()
                r20.append(res.test_at_best['Recall@20'])
                n20.append(res.test_at_best['NDCG@20'])
                secs.append(res.timings['train_epoch_median_s'])
                runs.append({'model': name, 'variant': variant, 'seed': seed,
                             'best_epoch': res.best_epoch, 'test': res.test_at_best})
            sd = (lambda v: statistics.stdev(v) if len(v) > 1 else 0.0)
            rows.append({'model': name, 'variant': variant,
                         'Recall@20': f'{statistics.fmean(r20):.4f} ± {sd(r20):.4f}',
                         'NDCG@20': f'{statistics.fmean(n20):.4f} ± {sd(n20):.4f}',
                         's/epoch': f'{statistics.median(secs):.2f}'})
            print(rows[-1], flush=True)
    print(f"popularity test Recall@20: {pop['Recall@20']:.4f}")
    print_table(rows, ['model', 'variant', 'Recall@20', 'NDCG@20', 's/epoch'])
    write_json(args.out, {'machine': machine(), 'args': vars(args), 'rows': rows,
                          'runs': runs, 'popularity_recall20': pop['Recall@20']})


if __name__ == '__main__':
    main()
