r"""Numerical equivalence of our :class:`~mrdib_pyg.nn.models.mgcn.MGCN` with MMRec's own
``models/mgcn.py``, on a small MMRec-format dataset written to a temporary folder.

Run (from MMRec's ``src/``, under MMRec's venv, with our package on the path)::

    cd /tmp/mmrec/src && PYTHONPATH=.:/work/main /tmp/mmvenv/bin/python \
        /work/main/benchmarks/equivalence/mgcn.py

Both sides read the same files: MMRec through its Config / RecDataset / TrainDataLoader,
ours through :class:`~mrdib_pyg.data.AmazonMM` (both keep the file's ids; users first,
items offset by :math:`U` in the bipartite matrix). MMRec's initial parameters (ID tables,
the trained feature tables, projections, gates, attention) are copied into ours, then:

(a) the derived graphs: MMRec's ``norm_adj``, ``R``, ``image_original_adj`` and
    ``text_original_adj`` against our declared ``UserItemGraph(norm='sym')``,
    ``UserItemGraph(norm='sym', block='user_item')`` and ``ItemKNN(m, k=10, weighted=True,
    loop=True, norm='sym')`` (values and non-zero patterns);
(b) the forward tables: content (behaviour) view, side view, final user / item tables,
    and MMRec's ``full_sort_predict`` against our cached ``score``;
(c) the training loss on MMRec's own batches (a full one and the smaller last one, where
    MMRec divides the L2 term by its configured ``train_batch_size``: ours with
    ``reg_batch_size`` set), its parts, and the gradient of every parameter;
(d) MGCN draws nothing at random per epoch (no edge dropout, no resampling;
    ``pre_epoch_processing`` is empty), so there is no distribution to compare; instead we
    check the training dynamics: five Adam steps (lr 1e-3) on MMRec's batches, the tables
    and trained feature tables after them, and that the item graphs stayed those of the raw
    features on both sides (MMRec builds them once in ``__init__``).

Prints a table (quantity, max abs diff) and writes
``benchmarks/results/equivalence_mgcn.json``. Exits with status 1 if a difference exceeds
the tolerance.
"""
import json
import os
import shutil
import sys
import tempfile
import warnings

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, '..', 'results', 'equivalence_mgcn.json')
NAME = 'eqmgcn'
TOL = 1e-5
#: After several Adam steps: Adam divides each update by the gradient's running RMS, so
#: float-level differences of tiny gradients become visible (still far below the tables'
#: scale, about 0.1).
TOL_TRAINED = 1e-4
BATCH = 256
STEPS = 5


def write_dataset(folder: str, num_users: int = 300, num_items: int = 200, seed: int = 0):
    r"""An MMRec-format folder: ``<NAME>.inter`` (userID, itemID, x_label), non-negative
    64-d image features (as CNN features) and signed 32-d text features. A few items occur
    only in held-out splits, so zero-degree rows of the user–item graph are exercised."""
    rng = np.random.default_rng(seed)
    held_out_only = set(range(num_items - 3, num_items))
    rows = []
    for u in range(num_users):
        k = int(rng.integers(5, 12))
        items = rng.choice(num_items - 3, size=k, replace=False)
        for n, i in enumerate(items):
            rows.append((u, int(i), 0 if n < k - 2 else n - (k - 3)))
    for n, i in enumerate(sorted(held_out_only)):
        rows.append((n, i, 1 + n % 2))
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, f'{NAME}.inter'), 'w') as f:
        f.write('userID\titemID\tx_label\n')
        f.writelines(f'{u}\t{i}\t{lab}\n' for u, i, lab in rows)
    np.save(os.path.join(folder, 'image_feat.npy'),
            rng.random((num_items, 64)).astype(np.float32))
    np.save(os.path.join(folder, 'text_feat.npy'),
            rng.standard_normal((num_items, 32)).astype(np.float32))


def mmrec_setup(data_path: str):
    from utils.configurator import Config
    from utils.dataloader import TrainDataLoader
    from utils.dataset import RecDataset
    from utils.utils import init_seed
    over = {  # configs/dataset/baby.yaml's keys, for our dataset
        'USER_ID_FIELD': 'userID', 'ITEM_ID_FIELD': 'itemID', 'TIME_FIELD': 'timestamp',
        'filter_out_cod_start_users': True, 'inter_file_name': f'{NAME}.inter',
        'vision_feature_file': 'image_feat.npy', 'text_feature_file': 'text_feat.npy',
        'user_graph_dict_file': 'user_graph_dict.npy', 'field_separator': '\t',
        'data_path': data_path, 'gpu_id': 0, 'use_gpu': False, 'seed': [999],
        'hyper_parameters': ['seed'], 'train_batch_size': BATCH,
        'cl_loss': 0.1,  # the grid's largest, so the InfoNCE part weighs in the loss
    }
    config = Config('MGCN', NAME, over, False)
    config['device'] = torch.device('cpu')
    ds = RecDataset(config)
    train, _, _ = ds.split()
    str(train)  # MMRec sets inter_num inside __str__
    loader = TrainDataLoader(config, train, batch_size=BATCH, shuffle=True)
    init_seed(999)
    loader.pretrain_setup()
    return config, loader


def mmrec_batches(loader):
    r"""One epoch of MMRec's (user, pos, neg) batches, as it samples them."""
    return [b.clone() for b in loader]


def param_pairs(model, mm):
    r"""(name, ours, MMRec's) for every parameter of both models."""
    im, tx = model.modalities.index('image'), model.modalities.index('text')
    pairs = [('user_embedding', model.user_emb, mm.user_embedding.weight),
             ('item_id_embedding', model.item_emb, mm.item_id_embedding.weight),
             ('image_embedding', model.feature_emb['image'], mm.image_embedding.weight),
             ('text_embedding', model.feature_emb['text'], mm.text_embedding.weight)]
    for mod, trs, gate in (('image', mm.image_trs, mm.gate_v[0]),
                           ('text', mm.text_trs, mm.gate_t[0])):
        pur = model.purifiers[mod]
        for p in ('weight', 'bias'):
            pairs.append((f'{mod}_trs.{p}', getattr(pur.proj, p), getattr(trs, p)))
            pairs.append((f'gate_{mod[0]}.{p}', getattr(pur.gate, p), getattr(gate, p)))
    fz = model.fuser
    pairs += [('query_common.0.weight', fz.query[0].weight, mm.query_common[0].weight),
              ('query_common.0.bias', fz.query[0].bias, mm.query_common[0].bias),
              ('query_common.2.weight', fz.query[2].weight, mm.query_common[2].weight)]
    for mod, k, gate in (('image', im, mm.gate_image_prefer[0]),
                         ('text', tx, mm.gate_text_prefer[0])):
        for p in ('weight', 'bias'):
            pairs.append((f'gate_{mod}_prefer.{p}', getattr(fz.gates[k], p), getattr(gate, p)))
    return pairs


def maxdiff(a, b) -> float:
    return float((a.detach().double() - b.detach().double()).abs().max())


def dense(sp) -> torch.Tensor:
    return sp.to_dense() if sp.layout != torch.strided else sp


def pattern(sp) -> set:
    coo = sp.to_sparse_coo().coalesce() if sp.layout != torch.sparse_coo else sp.coalesce()
    keep = coo.values() != 0
    return {tuple(p) for p in coo.indices()[:, keep].t().tolist()}


def main() -> int:
    torch.set_num_threads(1)
    warnings.filterwarnings('ignore')
    from models.mgcn import MGCN as MMRecMGCN

    from mrdib_pyg.data import AmazonMM
    from mrdib_pyg.data.sampling import BPRBatch
    from mrdib_pyg.nn.models.mgcn import MGCN, info_nce

    tmp = tempfile.mkdtemp(prefix='eq_mgcn_')
    rows = []

    def record(quantity, diff, note='', compare=True, tol=TOL):
        rows.append({'quantity': quantity, 'max_abs_diff': diff, 'note': note,
                     'compared': compare, 'tolerance': tol if compare else None})

    try:
        mm_dir = os.path.join(tmp, 'mmrec', NAME)
        write_dataset(mm_dir)
        shutil.copytree(mm_dir, os.path.join(tmp, 'ours', NAME, 'raw'))
        config, loader = mmrec_setup(os.path.join(tmp, 'mmrec') + '/')
        torch.manual_seed(0)
        mm = MMRecMGCN(config, loader)
        data = AmazonMM(os.path.join(tmp, 'ours'), NAME)[0]
        U, I = data['user'].num_nodes, data['item'].num_nodes
        assert (U, I) == (mm.n_users, mm.n_items), ((U, I), (mm.n_users, mm.n_items))
        cl = float(config['cl_loss'])
        model = MGCN.from_data(data, cl_loss=cl, reg_weight=float(config['reg_weight']),
                               knn_k=int(config['knn_k']))
        with torch.no_grad():
            for _, ours, theirs in param_pairs(model, mm):
                ours.copy_(theirs)
        assert sorted(model.modalities) == ['image', 'text']

        # (a) derived graphs
        for label, ours, theirs in (
                ('user-item adjacency (sym)', model.ui_graph, mm.norm_adj),
                ('R (user->item block)', model.user_item, mm.R),
                ('image item graph (10-NN, weighted, sym)', model.item_graphs['image'],
                 mm.image_original_adj),
                ('text item graph (10-NN, weighted, sym)', model.item_graphs['text'],
                 mm.text_original_adj)):
            a, b = ours.to_dense(), dense(theirs)
            pa, pb = pattern(ours.adj), pattern(theirs)
            record(label, maxdiff(a, b), f'{tuple(a.shape)}, {len(pb)} non-zeros in MMRec, '
                   f'{len(pa)} in ours, {len(pa ^ pb)} differ')
            record(f'{label}: non-zero pattern (symmetric difference)', float(len(pa ^ pb)),
                   tol=0.0)

        # (b) forward tables
        mm.train()
        model.train()
        u_mm, i_mm, side_mm, content_mm = mm.forward(mm.norm_adj, train=True)
        out = model()
        record('content (behaviour) view', maxdiff(out.extras['content'], content_mm))
        record('side view', maxdiff(out.extras['side'], side_mm))
        record('final user table', maxdiff(out.user, u_mm))
        record('final item table', maxdiff(out.item, i_mm))
        record('table scale (max abs value)', float(torch.cat([u_mm, i_mm]).abs().max()),
               'reference, not a diff', compare=False)
        mm.eval()
        model.eval()
        users = torch.arange(U)
        with torch.no_grad():
            s_mm = mm.full_sort_predict((users, ))
        record('full_sort_predict vs score (all users)', maxdiff(model.score(users), s_mm))
        mm.train()
        model.train()

        # (c) loss and gradients on MMRec's batches
        batches = mmrec_batches(loader)
        full, last = batches[0], batches[-1]
        record('batches in one epoch', float(len(batches)),
               f'sizes {batches[0].size(1)} ... {last.size(1)}', compare=False)
        for label, b in (('full batch', full), ('last (smaller) batch', last)):
            model.reg_batch_size = BATCH  # MMRec divides by its train_batch_size
            mm.zero_grad()
            model.zero_grad()
            loss_mm = mm.calculate_loss(b)
            loss_mm.backward()
            out = model()
            batch = BPRBatch(b[0], b[1], b[2])
            loss = model.loss(out, batch)
            loss.backward()
            record(f'loss, {label} (B={b.size(1)})', maxdiff(loss, loss_mm),
                   f'value {float(loss_mm):.6f}')
            if label == 'full batch':
                # the parts, recomputed MMRec's way on MMRec's tables
                u_mm, i_mm, side_mm, content_mm = mm.forward(mm.norm_adj, train=True)
                mf_mm, emb_mm, _ = mm.bpr_loss(u_mm[b[0]], i_mm[b[1]], i_mm[b[2]])
                s_u, s_i = torch.split(side_mm, [U, I])
                c_u, c_i = torch.split(content_mm, [U, I])
                cl_mm = (mm.InfoNCE(s_i[b[1]], c_i[b[1]], 0.2)
                         + mm.InfoNCE(s_u[b[0]], c_u[b[0]], 0.2))
                record('  L2 term', maxdiff(model.regularizer(out, batch), emb_mm))
                record('  InfoNCE (items + users)',
                       maxdiff(model.contrastive_loss(out, batch), cl_mm))
                record('  InfoNCE helper vs MMRec InfoNCE',
                       maxdiff(info_nce(s_u[b[0]], c_u[b[0]], 0.2),
                               mm.InfoNCE(s_u[b[0]], c_u[b[0]], 0.2)))
                mf = loss - model._l2([out.user[batch.users], out.item[batch.pos],
                                       out.item[batch.neg]], batch) \
                    - cl * model.contrastive_loss(out, batch)
                record('  BPR term', maxdiff(mf, mf_mm))
            worst, name = 0.0, ''
            scale = max(float(t.grad.abs().max()) for _, _, t in param_pairs(model, mm)
                        if t.grad is not None)
            for pname, ours, theirs in param_pairs(model, mm):
                if (ours.grad is None) != (theirs.grad is None):
                    worst, name = float('inf'), pname
                    break
                d = maxdiff(ours.grad, theirs.grad)
                if d >= worst:
                    worst, name = d, pname
            record(f'gradients, {label} (max over {len(param_pairs(model, mm))} tensors)',
                   worst, f'largest on {name}; largest gradient entry {scale:.2e}')
            # Without reg_batch_size, only the L2 term of a smaller batch differs.
            model.reg_batch_size = None
            with torch.no_grad():
                out = model()
                d = float(model.loss(out, batch) - mm.calculate_loss(b))
            record(f'  loss, {label}, reg_batch_size=None (our default)', abs(d),
                   'deviation by design on the smaller batch' if b.size(1) < BATCH else '',
                   compare=b.size(1) == BATCH)
        model.reg_batch_size = BATCH

        # (d) no per-epoch randomness; training dynamics instead
        knn_before = {m: model.item_graphs[m].to_dense().clone() for m in model.modalities}
        knn_mm_before = {'image': dense(mm.image_original_adj).clone(),
                         'text': dense(mm.text_original_adj).clone()}
        opt_mm = torch.optim.Adam(mm.parameters(), lr=1e-3)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        for b in batches[:STEPS]:
            for o in (opt_mm, opt):
                o.zero_grad()
            mm.calculate_loss(b).backward()
            opt_mm.step()
            model.loss(model(), BPRBatch(b[0], b[1], b[2])).backward()
            opt.step()
        mm.pre_epoch_processing()
        model.pre_epoch(1)
        with torch.no_grad():
            u_mm, i_mm, _, _ = mm.forward(mm.norm_adj, train=True)
            out = model()
        record(f'final user table after {STEPS} Adam steps', maxdiff(out.user, u_mm),
               tol=TOL_TRAINED)
        record(f'final item table after {STEPS} Adam steps', maxdiff(out.item, i_mm),
               tol=TOL_TRAINED)
        record(f'trained image features after {STEPS} steps',
               maxdiff(model.feature_emb['image'], mm.image_embedding.weight),
               f'moved {maxdiff(model.feature_emb["image"], model.feature("image")):.2e} '
               f'from the raw features', tol=TOL_TRAINED)
        record(f'trained text features after {STEPS} steps',
               maxdiff(model.feature_emb['text'], mm.text_embedding.weight), tol=TOL_TRAINED)
        for m, adj in (('image', mm.image_original_adj), ('text', mm.text_original_adj)):
            record(f'{m} item graph unchanged by training (ours | MMRec)',
                   max(maxdiff(model.item_graphs[m].to_dense(), knn_before[m]),
                       maxdiff(dense(adj), knn_mm_before[m])),
                   'built once from the raw features on both sides')
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    width = max(len(r['quantity']) for r in rows)
    print(f'{"quantity":<{width}}  max abs diff  tolerance  note')
    for r in rows:
        tol = f'{r["tolerance"]:9.0e}' if r['compared'] else '        -'
        print(f'{r["quantity"]:<{width}}  {r["max_abs_diff"]:12.3e}  {tol}  {r["note"]}')
    failed = [r['quantity'] for r in rows
              if r['compared'] and not r['max_abs_diff'] <= r['tolerance']]
    result = {
        'model': 'MGCN', 'reference': 'enoche/MMRec src/models/mgcn.py',
        'tolerance': TOL, 'tolerance_after_training': TOL_TRAINED,
        'dataset': {'users': U, 'items': I, 'image_dim': 64, 'text_dim': 32,
                    'train_interactions': int(data['user', 'rates', 'item'].edge_index.size(1))},
        'settings': {'batch_size': BATCH, 'adam_steps': STEPS, 'cl_loss': cl,
                     'reg_weight': float(config['reg_weight']), 'knn_k': int(config['knn_k']),
                     'n_ui_layers': int(config['n_ui_layers']),
                     'n_layers': int(config['n_layers'])},
        'torch': torch.__version__, 'rows': rows, 'passed': not failed, 'failed': failed,
    }
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    with open(RESULTS, 'w') as f:
        json.dump(result, f, indent=1)
    print(('PASSED' if not failed else f'FAILED: {failed}') + f'; wrote '
          f'{os.path.normpath(RESULTS)}')
    return 0 if not failed else 1


if __name__ == '__main__':
    sys.exit(main())
