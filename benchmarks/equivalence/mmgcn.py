r"""Numerical equivalence of our :class:`~mrdib_pyg.nn.models.mmgcn.MMGCN` with MMRec's own
``models/mmgcn.py``, on a small MMRec-format dataset written to a temporary folder.

Run (from MMRec's ``src/``, under MMRec's venv; our package on the path)::

    cd /tmp/mmrec/src && PYTHONPATH=.:/work/main /tmp/mmvenv/bin/python \
        /work/main/benchmarks/equivalence/mmgcn.py

Both models read the same files (MMRec through its Config/RecDataset/TrainDataLoader, ours
through :class:`~mrdib_pyg.data.AmazonMM`; both keep the file's ids, users first, items
offset by :math:`U`). MMRec's initial tensors are copied into ours, then we compare:

(a) the aggregation matrix: MMRec's mean-aggregating ``MessagePassing`` applied to the
    identity, against our declared ``UserItemGraph(norm='row')``;
(b) the forward tables (each modality's GCN output, and the fused user/item tables), for the
    concatenation combiner MMRec runs and, through MMRec's ``GCN`` class built with a false
    ``concate``, for the sum combiner;
(c) the training loss on one of MMRec's own training batches (BPR part, regulariser) and the
    gradient of every trained weight;
(d) MMGCN has no per-epoch randomness (no edge dropout, no resampling); instead we check the
    training dynamics that MMRec's quirks decide: five Adam steps on MMRec's batches with
    ``trainable_embeddings=False`` (MMRec's never-trained id/preference tensors), the tables
    after them, and MMRec's ranking with the last training batch's tables against ours with
    ``score_last_train_forward=True``.

Prints a table (quantity, max abs diff) and writes ``benchmarks/results/equivalence_mmgcn.json``.
"""
import json
import os
import shutil
import sys
import tempfile

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, '..', 'results', 'equivalence_mmgcn.json')
NAME = 'eqmmgcn'
TOL = 1e-5


def write_dataset(folder: str, num_users: int = 300, num_items: int = 200, seed: int = 0):
    r"""An MMRec-format folder: ``<NAME>.inter`` (userID, itemID, x_label) and features."""
    rng = np.random.default_rng(seed)
    rows, seen = [], set()
    for u in range(num_users):
        k = int(rng.integers(5, 12))
        items = rng.choice(num_items, size=k, replace=False)
        labels = [0] * (k - 2) + [1, 2]
        for i, lab in zip(items, labels):
            rows.append((u, int(i), lab))
            if lab == 0:
                seen.add(int(i))
    for i in range(num_items):  # every item in training: no item row without an edge
        if i not in seen:
            u = int(rng.integers(num_users))
            if (u, i) not in {(r[0], r[1]) for r in rows}:
                rows.append((u, i, 0))
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, f'{NAME}.inter'), 'w') as f:
        f.write('userID\titemID\tx_label\n')
        f.writelines(f'{u}\t{i}\t{lab}\n' for u, i, lab in rows)
    np.save(os.path.join(folder, 'image_feat.npy'),
            rng.standard_normal((num_items, 64)).astype(np.float32))
    np.save(os.path.join(folder, 'text_feat.npy'),
            rng.standard_normal((num_items, 32)).astype(np.float32))


def mmrec_setup(data_path: str, reg_weight: float, batch_size: int):
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
        'hyper_parameters': ['seed'], 'reg_weight': reg_weight, 'learning_rate': 1e-4,
        'train_batch_size': batch_size,
    }
    config = Config('MMGCN', NAME, over, False)
    config['device'] = torch.device('cpu')
    ds = RecDataset(config)
    train, _, _ = ds.split()
    str(train)  # sets inter_num, which the loader reads
    loader = TrainDataLoader(config, train, batch_size=batch_size, shuffle=True)
    init_seed(999)
    loader.pretrain_setup()
    return config, loader


def copy_gcn(enc, gcn) -> None:
    r"""MMRec ``GCN`` tensors -> our :class:`MMGCNEncoder`."""
    with torch.no_grad():
        enc.preference.copy_(gcn.preference)
        if enc.projection is not None:
            enc.projection.weight.copy_(gcn.MLP.weight)
            enc.projection.bias.copy_(gcn.MLP.bias)
        for n, conv in enumerate(enc.convs, 1):
            conv.weight.copy_(getattr(gcn, f'conv_embed_{n}').weight)
            for ours, theirs in ((conv.linear, f'linear_layer{n}'), (conv.combine, f'g_layer{n}')):
                ours.weight.copy_(getattr(gcn, theirs).weight)
                ours.bias.copy_(getattr(gcn, theirs).bias)


def weight_pairs(model, mm):
    r"""(name, our parameter, MMRec's parameter) for every trained weight."""
    out = []
    for m, gcn in (('image', mm.v_gcn), ('text', mm.t_gcn)):
        enc = model.encoders[m]
        if enc.projection is not None:
            out += [(f'{m}.projection.weight', enc.projection.weight, gcn.MLP.weight),
                    (f'{m}.projection.bias', enc.projection.bias, gcn.MLP.bias)]
        for n, conv in enumerate(enc.convs, 1):
            out.append((f'{m}.conv{n}.weight', conv.weight, getattr(gcn, f'conv_embed_{n}').weight))
            for ours, theirs in ((conv.linear, f'linear_layer{n}'), (conv.combine, f'g_layer{n}')):
                for p in ('weight', 'bias'):
                    out.append((f'{m}.{theirs}.{p}', getattr(ours, p),
                                getattr(getattr(gcn, theirs), p)))
    return out


def maxdiff(a, b) -> float:
    return float((a.detach().double() - b.detach().double()).abs().max())


def main() -> int:
    torch.set_num_threads(1)
    from models.mmgcn import GCN as MMRecGCN
    from models.mmgcn import MMGCN as MMRecMMGCN

    from mrdib_pyg.data import AmazonMM
    from mrdib_pyg.data.sampling import BPRBatch
    from mrdib_pyg.nn.models.mmgcn import MMGCN

    reg_weight = 0.1  # non-zero, so the regulariser is compared too
    tmp = tempfile.mkdtemp(prefix='eq_mmgcn_')
    rows = []

    def record(quantity, diff, note=''):
        rows.append({'quantity': quantity, 'max_abs_diff': diff, 'note': note})

    try:
        mm_dir = os.path.join(tmp, 'mmrec', NAME)
        write_dataset(mm_dir)
        ours_raw = os.path.join(tmp, 'ours', NAME, 'raw')
        shutil.copytree(mm_dir, ours_raw)
        config, loader = mmrec_setup(os.path.join(tmp, 'mmrec') + '/', reg_weight, 256)
        torch.manual_seed(0)
        mm = MMRecMMGCN(config, loader)
        data = AmazonMM(os.path.join(tmp, 'ours'), NAME)[0]
        U, I = data['user'].num_nodes, data['item'].num_nodes
        assert (U, I) == (mm.n_users, mm.n_items), ((U, I), (mm.n_users, mm.n_items))
        N = U + I

        def ours_model(**kw):
            model = MMGCN.from_data(data, reg_weight=reg_weight, **kw)
            with torch.no_grad():
                model.id_embedding.copy_(mm.id_embedding)
            copy_gcn(model.encoders['image'], mm.v_gcn)
            copy_gcn(model.encoders['text'], mm.t_gcn)
            return model

        model = ours_model()

        # (a) the aggregation matrix
        conv = mm.v_gcn.conv_embed_1
        theirs_adj = conv.propagate(mm.edge_index, size=(N, N), x=torch.eye(N))
        ours_adj = torch.zeros(N, N)  # our two blocks, put back into the square matrix
        ours_adj[:U, U:] = model.to_user.to_dense()
        ours_adj[U:, :U] = model.to_item.to_dense()
        record('aggregation matrix D^-1 A', maxdiff(ours_adj, theirs_adj),
               f'{N}x{N}, {int((theirs_adj != 0).sum())} non-zeros in MMRec, '
               f'{int((ours_adj != 0).sum())} in ours')
        e_mm = {tuple(p) for p in mm.edge_index.t().tolist()}
        e_ours = {tuple(p) for p in ours_adj.nonzero().tolist()}
        record('edge set (symmetric difference size)', float(len(e_mm ^ e_ours)),
               f'{len(e_mm)} directed edges')

        # (b) forward tables
        rep_mm = mm.forward()
        out = model()
        v_mm = mm.v_gcn(mm.v_feat, mm.id_embedding)
        t_mm = mm.t_gcn(mm.t_feat, mm.id_embedding)
        mo = out.modalities
        for m, theirs in (('image', v_mm), ('text', t_mm)):
            record(f'{m} GCN output (concat)',
                   maxdiff(torch.cat([mo[m].user, mo[m].item]), theirs))
        record('user table', maxdiff(out.user, rep_mm[:U]))
        record('item table', maxdiff(out.item, rep_mm[U:]))
        record('table scale (max abs value)', float(rep_mm.detach().abs().max()),
               'reference, not a diff')

        # sum combiner: MMRec's GCN class with a false concate
        from mrdib_pyg.nn.conv.mmgcn_conv import MMGCNEncoder
        torch.manual_seed(1)
        for m, feat, latent in (('image', mm.v_feat, 256), ('text', mm.t_feat, None)):
            g_sum = MMRecGCN(mm.edge_index, 256, U, I, feat.size(1), 64, 'mean', '',
                             num_layer=3, has_id=True, dim_latent=latent, device='cpu')
            enc = MMGCNEncoder(U, feat.size(1), 64, latent_dim=latent, concat=False)
            copy_gcn(enc, g_sum)
            theirs = g_sum(feat, mm.id_embedding)
            # the square form on D^-1 A and the bipartite form on its blocks
            square = enc(feat, ours_adj.to_sparse_csr(), mm.id_embedding)
            pair = torch.cat(enc(feat, (model.to_user, model.to_item), mm.id_embedding))
            record(f'{m} GCN output (sum combiner, square form)', maxdiff(square, theirs))
            record(f'{m} GCN output (sum combiner, bipartite form)', maxdiff(pair, theirs))

        # (c) training loss and gradients on one of MMRec's batches
        inter = next(iter(loader))
        batch = BPRBatch(inter[0], inter[1], inter[2])
        mm.zero_grad()
        loss_mm = mm.calculate_loss(inter)
        loss_mm.backward()
        mm.reg_weight = 0.0
        bpr_mm = mm.calculate_loss(inter)
        mm.reg_weight = reg_weight
        model.zero_grad()
        out = model()
        loss = model.loss(out, batch)
        loss.backward()
        reg = model.regularizer(out, batch)
        record('training loss (BPR + reg)', maxdiff(loss, loss_mm),
               f'MMRec {float(loss_mm.detach()):.6f}, batch {batch.users.numel()}')
        record('BPR part', maxdiff(loss - reg, bpr_mm))
        reg_mm = (loss_mm - bpr_mm).detach()
        record('regulariser', maxdiff(reg, reg_mm), f'MMRec {float(reg_mm):.6f}')
        grads = [maxdiff(a.grad, b.grad) for _, a, b in weight_pairs(model, mm)]
        record('gradients of all trained weights', max(grads), f'{len(grads)} tensors')

        # (d) training dynamics: MMRec's frozen id/preference tensors and stale ranking
        mm_opt = torch.optim.Adam(mm.parameters(), lr=1e-3)
        compat = ours_model(trainable_embeddings=False, score_last_train_forward=True)
        n_trained_mm = sum(p.numel() for p in mm.parameters())
        n_trained_ours = sum(p.numel() for p in compat.parameters())
        record('trained parameter count (ours - MMRec)', float(n_trained_ours - n_trained_mm),
               f'MMRec {n_trained_mm}')
        opt = torch.optim.Adam(compat.parameters(), lr=1e-3)
        mm.train()
        compat.train()
        it = iter(loader)
        for _ in range(5):
            inter = next(it)
            b = BPRBatch(inter[0], inter[1], inter[2])
            mm_opt.zero_grad()
            mm.calculate_loss(inter).backward()
            mm_opt.step()
            opt.zero_grad()
            o = compat()
            compat.loss(o, b).backward()
            opt.step()
        diffs = [maxdiff(a, b) for _, a, b in weight_pairs(compat, mm)]
        record('weights after 5 Adam steps', max(diffs))
        record('id embedding / preferences unchanged',
               max(maxdiff(compat.id_embedding, mm.id_embedding),
                   maxdiff(compat.encoders['image'].preference, mm.v_gcn.preference),
                   maxdiff(compat.encoders['text'].preference, mm.t_gcn.preference)))
        mm.eval()
        compat.eval()
        users = torch.arange(U)
        with torch.no_grad():
            s_mm = mm.full_sort_predict([users])
        s_ours = compat.score(users)
        record('full-sort scores, last training forward', maxdiff(s_ours, s_mm))
        compat.score_last_train_forward = False
        compat.invalidate_cache()
        record('scores recomputed after the step (ours default) vs MMRec',
               maxdiff(compat.score(users), s_mm), 'expected > 0: the last step is applied')
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    width = max(len(r['quantity']) for r in rows)
    print(f'{"quantity":<{width}}  max abs diff   note')
    for r in rows:
        print(f'{r["quantity"]:<{width}}  {r["max_abs_diff"]:.3e}      {r["note"]}')
    checked = [r for r in rows if not r['note'].startswith(('reference', 'expected'))]
    ok = all(r['max_abs_diff'] <= TOL for r in checked)
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    with open(RESULTS, 'w') as f:
        json.dump({'model': 'mmgcn', 'tolerance': TOL, 'all_within_tolerance': ok,
                   'torch': torch.__version__, 'rows': rows}, f, indent=2)
    print('all within tolerance' if ok else 'MISMATCH', f'(tol {TOL:g}) ->',
          os.path.normpath(RESULTS))
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())
