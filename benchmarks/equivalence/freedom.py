r"""Numerical equivalence of :class:`mrdib_pyg.nn.models.freedom.FREEDOM` with MMRec's FREEDOM.

Run under MMRec's venv, from MMRec's ``src/`` (MMRec reads ``configs/`` from the working
directory)::

    cd /tmp/mmrec/src && PYTHONPATH=.:/work/main /tmp/mmvenv/bin/python \
        /work/main/benchmarks/equivalence/freedom.py

It writes a small MMRec-format dataset to a temporary folder (``freedom_eq.inter`` with the
training rows sorted by (user, item), so that MMRec's edge order is ours; ``image_feat.npy``
[I, 64] and ``text_feat.npy`` [I, 32]), builds MMRec's model on it and ours on the same files
through :class:`~mrdib_pyg.data.AmazonMM` (raw ids on both sides, so user/item ``k`` is row
``k`` of both tables), copies MMRec's initial parameters into ours and compares:

(a) the derived graphs: the frozen mixed item graph, the full sym-norm user–item graph, the
    training edges and their sampling weights;
(b) the forward tables (evaluation graph and this epoch's pruned graph), and the scores;
(c) the training loss on MMRec's own first batch (reg_weight 0 and 1e-3, and each modality
    term), and the gradients it gives;
(d) the per-epoch pruning: on torch's global stream (``pruning_rng='global'``) and the same
    seed, the kept edges and their re-normalised values are MMRec's (dropout 0.8 and 0.9: the
    kept count is ``int(E * (1. - dropout))``); with our default per-epoch streams against
    MMRec's global one, the per-edge keep frequencies over many epochs, the keep rate per
    degree-weight decile and the mean kept degree per user agree within sampling noise.

Prints a table (quantity, max abs diff) and writes
``benchmarks/results/equivalence_freedom.json``. Exits non-zero if a check fails.
"""
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
NAME = 'freedom_eq'
U, I, D_IMG, D_TXT = 300, 200, 64, 32
TOL = 1e-5


def write_dataset(folder: Path, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(U):
        n = int(rng.integers(6, 16))
        items = rng.choice(I, size=n, replace=False)
        # Popular items: a skewed degree distribution makes the degree weights matter.
        items = np.unique(np.concatenate([items, rng.choice(10, size=2, replace=False)]))
        rng.shuffle(items)
        labels = np.zeros(len(items), dtype=int)
        labels[-2], labels[-1] = 1, 2
        rows += [(u, int(i), int(l)) for i, l in zip(items, labels)]
    present = {i for _, i, l in rows if l == 0}
    rows += [(0, i, 0) for i in range(I) if i not in present and (0, i, 1) not in rows]
    rows = sorted(set(rows), key=lambda r: (r[2] != 0, r[0], r[1]))  # train rows sorted
    seen, dedup = set(), []
    for u, i, l in rows:  # one label per pair
        if (u, i) not in seen:
            seen.add((u, i))
            dedup.append((u, i, l))
    with open(folder / f'{NAME}.inter', 'w') as f:
        f.write('userID\titemID\tx_label\n')
        f.writelines(f'{u}\t{i}\t{l}\n' for u, i, l in dedup)
    # Low-rank + noise features: neighbours are meaningful and ties improbable.
    base = rng.normal(size=(I, 8))
    img = base @ rng.normal(size=(8, D_IMG)) + 0.5 * rng.normal(size=(I, D_IMG))
    txt = base @ rng.normal(size=(8, D_TXT)) + 0.5 * rng.normal(size=(I, D_TXT))
    np.save(folder / 'image_feat.npy', img.astype(np.float32))
    np.save(folder / 'text_feat.npy', txt.astype(np.float32))


def mmrec_model(data_root: Path, dropout: float, reg_weight: float):
    from utils.configurator import Config
    from utils.dataset import RecDataset
    from utils.dataloader import TrainDataLoader
    from utils.utils import init_seed
    from models.freedom import FREEDOM as MMRecFREEDOM
    over = {'gpu_id': 0, 'use_gpu': False, 'seed': [999], 'hyper_parameters': ['seed'],
            'data_path': str(data_root) + os.sep, 'dropout': dropout,
            'reg_weight': reg_weight,
            # configs/dataset/baby.yaml's keys, for our file
            'USER_ID_FIELD': 'userID', 'ITEM_ID_FIELD': 'itemID', 'TIME_FIELD': 'timestamp',
            'filter_out_cod_start_users': True, 'inter_file_name': f'{NAME}.inter',
            'vision_feature_file': 'image_feat.npy', 'text_feature_file': 'text_feat.npy',
            'user_graph_dict_file': 'user_graph_dict.npy', 'field_separator': '\t'}
    config = Config('FREEDOM', NAME, over, False)
    config['device'] = torch.device('cpu')
    ds = RecDataset(config)
    splits = ds.split()
    for d in (ds, *splits):
        str(d)  # sets inter_num, which the loaders read
    train = splits[0]
    loader = TrainDataLoader(config, train, batch_size=config['train_batch_size'],
                             shuffle=False)
    init_seed(999)
    loader.pretrain_setup()
    model = MMRecFREEDOM(config, loader)
    return model, loader


def dense(adj: torch.Tensor) -> torch.Tensor:
    return adj.to_dense() if adj.layout == torch.strided else adj.to_sparse_coo().to_dense()


def main() -> int:
    from mrdib_pyg.data import AmazonMM, BPRBatch
    from mrdib_pyg.nn.conv.edge_pruning import DegreeSensitiveEdgePruning
    from mrdib_pyg.nn.models.freedom import FREEDOM, logsigmoid_bpr

    torch.set_num_threads(int(os.environ.get('OMP_NUM_THREADS', '1')))
    t0 = time.perf_counter()
    rows, checks = [], []

    def record(quantity, diff, tol=TOL, note=''):
        diff = float(diff)
        ok = diff <= tol
        rows.append({'quantity': quantity, 'max_abs_diff': diff, 'tol': tol, 'ok': ok,
                     'note': note})
        checks.append(ok)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        mm_root, our_root = tmp / 'mmrec', tmp / 'ours'
        (mm_root / NAME).mkdir(parents=True)
        write_dataset(mm_root / NAME)
        (our_root / NAME / 'raw').mkdir(parents=True)
        for f in (mm_root / NAME).iterdir():
            (our_root / NAME / 'raw' / f.name).write_bytes(f.read_bytes())

        mm, loader = mmrec_model(mm_root, dropout=0.8, reg_weight=1e-3)
        data = AmazonMM(str(our_root), NAME)[0]
        # MMRec's random stream for the same-seed checks ('epoch', our default, below)
        ours = FREEDOM.from_data(data, dropout=0.8, reg_weight=1e-3, pruning_rng='global')
        assert (ours.num_users, ours.num_items) == (mm.n_users, mm.n_items), 'table sizes'
        with torch.no_grad():  # MMRec's initial parameters, same ids on both sides
            ours.user_emb.copy_(mm.user_embedding.weight)
            ours.item_emb.copy_(mm.item_id_embedding.weight)
            ours.feature_emb['image'].copy_(mm.image_embedding.weight)
            ours.feature_emb['text'].copy_(mm.text_embedding.weight)
            for m, lin in (('image', mm.image_trs), ('text', mm.text_trs)):
                ours.trs[m].weight.copy_(lin.weight)
                ours.trs[m].bias.copy_(lin.bias)

        # (a) derived graphs
        record('(a) frozen item graph S (0.1 image + 0.9 text kNN)',
               (dense(mm.mm_adj) - ours.item_graph.to_dense()).abs().max())
        record('(a) full sym-norm user-item graph',
               (dense(mm.norm_adj) - ours.graph.to_dense()).abs().max())
        same_edges = torch.equal(mm.edge_indices, ours.pruning.edge_index)
        record('(a) training edges, same order', 0.0 if same_edges else 1.0, tol=0.0)
        record('(a) degree sampling weights 1/sqrt(d_u d_i)',
               (mm.edge_values - ours.pruning.prob).abs().max(), tol=0.0,
               note='bit-identical')

        # (d) one epoch's pruning, same seed
        for drop in (0.8, 0.9):
            mm.dropout = drop
            pruning = DegreeSensitiveEdgePruning(ours.pruning.edge_index, ours.num_users,
                                                 ours.num_items, keep_ratio=1.0 - drop)
            torch.manual_seed(7)
            mm.pre_epoch_processing()
            torch.manual_seed(7)
            mine = pruning()
            mm_kept = mm.masked_adj.coalesce()._nnz() // 2
            record(f'(d) dropout {drop}: kept edges ({mm_kept} of {mm.edge_values.numel()})',
                   abs(mm_kept - pruning.num_keep) + abs(mine._nnz() // 2 - mm_kept), tol=0)
            record(f'(d) dropout {drop}: pruned + re-normalised graph, same seed',
                   (dense(mm.masked_adj) - mine.to_dense()).abs().max())
        mm.dropout = 0.8

        # (b) forward tables
        ours.eval()
        mm.eval()
        with torch.no_grad():
            mu, mi = mm.forward(mm.norm_adj)
            out = ours()
            record('(b) user table, evaluation graph', (mu - out.user).abs().max())
            record('(b) item table, evaluation graph', (mi - out.item).abs().max())
            users = torch.arange(0, ours.num_users, 7)
            s_mm = mm.full_sort_predict((users, ))
            record('(b) full-sort scores', (s_mm - ours.score(users)).abs().max())
        ours.train()
        mm.train()
        torch.manual_seed(11)
        mm.pre_epoch_processing()
        torch.manual_seed(11)
        ours.pre_epoch(0)
        with torch.no_grad():
            mu, mi = mm.forward(mm.masked_adj)
            out = ours()
            record('(b) user table, pruned training graph', (mu - out.user).abs().max())
            record('(b) item table, pruned training graph', (mi - out.item).abs().max())
            for m, lin, feat in (('image', mm.image_trs, mm.image_embedding),
                                 ('text', mm.text_trs, mm.text_embedding)):
                record(f'(b) {m} projection (modality output)',
                       (lin(feat.weight) - out.modalities[m].item).abs().max())

        # (c) training loss on MMRec's first batch, and its gradients
        inter = next(iter(loader))
        batch = BPRBatch(inter[0], inter[1], inter[2])
        for rw in (0.0, 1e-3, 0.5):
            mm.reg_weight, ours.reg_weight = rw, rw
            mm.zero_grad()
            ours.zero_grad()
            l_mm = mm.calculate_loss(inter)
            l_ours = ours.loss(ours(), batch)
            record(f'(c) loss, reg_weight={rw} (MMRec {l_mm.item():.6f})',
                   (l_mm - l_ours).abs())
            l_mm.backward()
            l_ours.backward()
            pairs = [('user', mm.user_embedding.weight, ours.user_emb),
                     ('item ID', mm.item_id_embedding.weight, ours.item_emb)]
            if rw > 0:
                pairs += [('image features', mm.image_embedding.weight, ours.feature_emb['image']),
                          ('text trs weight', mm.text_trs.weight, ours.trs['text'].weight)]
            for what, a, b in pairs:
                record(f'(c) grad {what}, reg_weight={rw}', (a.grad - b.grad).abs().max())
        with torch.no_grad():
            u, _ = mm.forward(mm.masked_adj)
            u = u[batch.users]
            out = ours()
            for m, lin, feat in (('image', mm.image_trs, mm.image_embedding),
                                 ('text', mm.text_trs, mm.text_embedding)):
                x = lin(feat.weight)
                t_mm = mm.bpr_loss(u, x[batch.pos], x[batch.neg])
                y = out.modalities[m].item
                t_ours = logsigmoid_bpr(out.user[batch.users], y[batch.pos], y[batch.neg])
                record(f'(c) modality BPR term, {m}', (t_mm - t_ours).abs())

        # (d) statistics over many epochs, independent streams
        n_draws = 1000
        E = mm.edge_values.numel()
        key_mm = mm.edge_indices[0] * ours.num_items + mm.edge_indices[1]
        order = torch.argsort(key_mm)
        freq_mm, freq_ours = torch.zeros(E), torch.zeros(E)
        deg_mm, deg_ours = [], []
        torch.manual_seed(123)
        for _ in range(n_draws):
            mm.pre_epoch_processing()
            idx = mm.masked_adj.coalesce().indices()
            ui = idx[:, idx[0] < ours.num_users]
            k = ui[0] * ours.num_items + (ui[1] - ours.num_users)
            freq_mm[torch.searchsorted(key_mm[order], k)] += 1
            deg_mm.append(torch.bincount(ui[0], minlength=ours.num_users).float())
        # Ours: the model's default per-epoch streams (pruning_seed + epoch).
        torch.manual_seed(456)
        default = FREEDOM.from_data(data, dropout=0.8)
        for epoch in range(n_draws):
            default.pre_epoch(epoch)
            idx = default.train_graph.adj.to_sparse_coo().indices()
            kept = idx[:, idx[0] < ours.num_users]
            kept[1] -= ours.num_users
            k = kept[0] * ours.num_items + kept[1]
            freq_ours[torch.searchsorted(key_mm[order], k)] += 1
            deg_ours.append(torch.bincount(kept[0], minlength=ours.num_users).float())
        freq_mm, freq_ours = freq_mm / n_draws, freq_ours / n_draws
        p = (freq_mm + freq_ours) / 2
        se = (2 * p * (1 - p) / n_draws).clamp_min(1e-12).sqrt()
        z = ((freq_mm - freq_ours).abs() / se)[p > 0]
        record(f'(d) per-edge keep frequency, {n_draws} epochs each, independent streams',
               (freq_mm - freq_ours).abs().max(), tol=0.1,
               note=f'max |z| = {float(z.max()):.2f} over {E} edges')
        record('(d) per-edge keep frequency, max |z| (sampling noise)', z.max(), tol=5.0)
        record('(d) per-edge keep frequency, |mean z^2 - 1| (chi-square / edges)',
               (z.pow(2).mean() - 1).abs(), tol=0.2,
               note='about 0 when both draw from one distribution')
        # Keep rate against the degree weight: same degree sensitivity on both sides.
        w = mm.edge_values
        bins = torch.bucketize(w, torch.quantile(w, torch.linspace(0, 1, 11)[1:-1]))
        rate_mm = torch.stack([freq_mm[bins == b].mean() for b in range(10)])
        rate_ours = torch.stack([freq_ours[bins == b].mean() for b in range(10)])
        record('(d) keep rate per decile of 1/sqrt(d_u d_i)', (rate_mm - rate_ours).abs().max(),
               tol=0.01, note=f'MMRec {rate_mm[0]:.3f} (lowest weights) .. '
                              f'{rate_mm[-1]:.3f} (highest)')
        dm, do = torch.stack(deg_mm), torch.stack(deg_ours)
        se_deg = ((dm.var(0) + do.var(0)) / n_draws).clamp_min(1e-12).sqrt()
        z_deg = (dm.mean(0) - do.mean(0)).abs() / se_deg
        record('(d) mean kept degree per user', (dm.mean(0) - do.mean(0)).abs().max(),
               tol=0.5, note=f'max |z| = {float(z_deg.max()):.2f} over {ours.num_users} users')
        record('(d) mean kept degree per user, max |z|', z_deg.max(), tol=5.0)

    width = max(len(r['quantity']) for r in rows)
    print(f"{'quantity':<{width}}  max abs diff   tol      ok")
    for r in rows:
        print(f"{r['quantity']:<{width}}  {r['max_abs_diff']:<13.3e}  {r['tol']:<7.0e}  "
              f"{'yes' if r['ok'] else 'NO'}  {r['note']}")
    result = {'model': 'FREEDOM', 'mmrec_model': 'src/models/freedom.py',
              'dataset': {'users': U, 'items': I, 'image_dim': D_IMG, 'text_dim': D_TXT,
                          'train_edges': int(E)},
              'torch': torch.__version__, 'seconds': round(time.perf_counter() - t0, 1),
              'all_ok': all(checks), 'rows': rows}
    out = REPO / 'benchmarks' / 'results' / 'equivalence_freedom.json'
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + '\n')
    print(f"{'all checks pass' if all(checks) else 'SOME CHECKS FAIL'}; wrote {out}")
    return 0 if all(checks) else 1


if __name__ == '__main__':
    sys.exit(main())
