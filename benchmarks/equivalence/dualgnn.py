r"""Numerical equivalence of our :class:`~mrdib_pyg.nn.models.dualgnn.DualGNN` with MMRec's
own ``models/dualgnn.py``, on a small MMRec-format dataset written to a temporary folder.

Run (from MMRec's ``src/``, under MMRec's venv; our package on the path)::

    cd /tmp/mmrec/src && PYTHONPATH=.:/work/main /tmp/mmvenv/bin/python \
        /work/main/benchmarks/equivalence/dualgnn.py

The dataset has three groups of users, so that every branch of MMRec's neighbour sampling
runs: a dense group (more than 40 co-interacting users, with tied counts), a sparse group
(fewer than 40: padded by resampling) and a few users whose training items nobody else has
(no co-interacting user). MMRec's ``user_graph_dict.npy`` is written with MMRec's own
preprocessing (``preprocessing/dualgnn-gen-u-u-matrix.py``: its ``gen_user_matrix`` is
imported from that file, and the lines of its ``__main__`` block that turn the matrix into
the dict are reproduced in :func:`mmrec_user_graph_dict`, marked as reference code). Both models read the same files
(MMRec through its Config/RecDataset/TrainDataLoader, ours through
:class:`~mrdib_pyg.data.AmazonMM`; both keep the file's ids). MMRec's initial tensors are
copied into ours, then we compare:

(a) the derived graphs: MMRec's ``Base_gcn`` applied to the identity against our
    ``UserItemGraph(norm='sym')``; MMRec's co-interaction matrix and dict against our
    ``UserCoInteraction``; the 40 neighbours each user keeps (counts; sets, up to ties at the
    40th place, where MMRec keeps whatever ``torch.topk`` returned first);
(b) the forward tables with the same user–user sample (MMRec's draw copied into ours with
    ``UserGraphConv.set_sample``): each modality's GCN output, the user and item tables with
    ``mmrec_inplace_sum=True`` against MMRec's, and our default (unaliased) fusion against
    MMRec's own pieces combined without the alias;
(c) the training loss on one of MMRec's batches (BPR part, regulariser; MMRec's loss also
    holds the constant ``reg_weight * mean(weight_i^2)``, added to ours for the comparison),
    the gradients of every trained weight, three Adam steps and MMRec's ranking with the
    last training forward's tables;
(d) the per-epoch sample: the deterministic part (users with at least 40 neighbours, and the
    first n slots of the others) exactly, and the distribution of the padding: the mean and
    the second moment of the sampled weight matrix over many draws of MMRec's
    ``topk_sample`` and of ours, as z-scores (and, as a control, the z-scores a plain
    uniform-with-replacement padding would get against MMRec's growing-list draw).

Prints a table (quantity, max abs diff, tolerance) and writes
``benchmarks/results/equivalence_dualgnn.json``.
"""
import importlib.util
import os
import shutil
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import dense, maxdiff, mmrec_setup, report  # noqa: E402

NAME = 'eqdualgnn'
K = 40
REG = 0.1
TOL = 1e-5
DRAWS = 400


def write_dataset(folder: str, seed: int = 0) -> None:
    r"""``<NAME>.inter`` and features. Users 0-149 draw from items 0-59 (dense: many
    co-interacting users, tied counts), users 150-289 from items 60-379 (sparse: fewer
    than 40 co-interacting users), users 290-299 each own two training items nobody else
    has (items 380-399)."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(300):
        if u < 150:
            items = rng.choice(60, size=int(rng.integers(6, 15)), replace=False)
        elif u < 290:
            items = 60 + rng.choice(320, size=int(rng.integers(5, 9)), replace=False)
        else:
            own = 380 + 2 * (u - 290) + np.arange(2)
            items = np.concatenate([own, 60 + rng.choice(320, size=2, replace=False)])
        labels = [0] * (len(items) - 2) + [1, 2]
        rows += [(u, int(i), lab) for i, lab in zip(items, labels)]
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, f'{NAME}.inter'), 'w') as f:
        f.write('userID\titemID\tx_label\n')
        f.writelines(f'{u}\t{i}\t{lab}\n' for u, i, lab in rows)
    np.save(os.path.join(folder, 'image_feat.npy'),
            np.abs(rng.standard_normal((400, 64))).astype(np.float32))
    np.save(os.path.join(folder, 'text_feat.npy'),
            rng.standard_normal((400, 32)).astype(np.float32))


def mmrec_user_graph_dict(folder: str):
    r"""MMRec's ``user_graph_dict.npy`` for :obj:`folder`, written there; returns
    :obj:`(dense count matrix, dict)`.

    REFERENCE CODE: ``gen_user_matrix`` is imported from MMRec's
    ``preprocessing/dualgnn-gen-u-u-matrix.py``; the rest is that script's ``__main__``
    block (its config and path handling aside; its two top-200 branches written as one)."""
    import pandas as pd
    path = os.path.join(os.getcwd(), '..', 'preprocessing', 'dualgnn-gen-u-u-matrix.py')
    spec = importlib.util.spec_from_file_location('mmrec_gen_uu', path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    train_df = pd.read_csv(os.path.join(folder, f'{NAME}.inter'), sep='\t')
    num_user = len(pd.unique(train_df['userID']))
    train_df = train_df[train_df['x_label'] == 0].copy()
    train_data = train_df[['userID', 'itemID']].to_numpy()
    user_graph = mod.gen_user_matrix(train_data, num_user)
    user_num = torch.zeros(num_user)
    user_graph_dict = {}
    for i in range(num_user):
        user_num[i] = len(torch.nonzero(user_graph[i]))
    for i in range(num_user):
        user_i = torch.topk(user_graph[i], min(int(user_num[i]), 200))
        user_graph_dict[i] = [user_i.indices.numpy().tolist(), user_i.values.numpy().tolist()]
    np.save(os.path.join(folder, 'user_graph_dict.npy'), user_graph_dict, allow_pickle=True)
    return user_graph, user_graph_dict


def copy_params(model, mm) -> None:
    r"""MMRec's initial tensors -> ours (MMRec's weight_u columns are image, text)."""
    cols = {'image': 0, 'text': 1}
    with torch.no_grad():
        for m, gcn in (('image', mm.v_gcn), ('text', mm.t_gcn)):
            model.preference[m].copy_(gcn.preference)
            model.mlp[m][0].weight.copy_(gcn.MLP.weight)
            model.mlp[m][0].bias.copy_(gcn.MLP.bias)
            model.mlp[m][2].weight.copy_(gcn.MLP_1.weight)
            model.mlp[m][2].bias.copy_(gcn.MLP_1.bias)
            model.modality_weight[:, model.modalities.index(m)].copy_(mm.weight_u[:, cols[m], 0])


def weight_pairs(model, mm, grad: bool = False):
    r"""(name, ours, MMRec's) for every trained weight, or for its gradient."""
    get = (lambda p: p.grad) if grad else (lambda p: p)  # noqa: E731
    out = []
    for m, gcn in (('image', mm.v_gcn), ('text', mm.t_gcn)):
        out += [(f'{m}.preference', get(model.preference[m]), get(gcn.preference)),
                (f'{m}.MLP.weight', get(model.mlp[m][0].weight), get(gcn.MLP.weight)),
                (f'{m}.MLP.bias', get(model.mlp[m][0].bias), get(gcn.MLP.bias)),
                (f'{m}.MLP_1.weight', get(model.mlp[m][2].weight), get(gcn.MLP_1.weight)),
                (f'{m}.MLP_1.bias', get(model.mlp[m][2].bias), get(gcn.MLP_1.bias))]
    cols = [model.modalities.index('image'), model.modalities.index('text')]
    out.append(('weight_u', get(model.modality_weight)[:, cols], get(mm.weight_u)[:, :, 0]))
    return out


def sample_matrix(index, weight, U: int) -> torch.Tensor:
    r"""The dense [U, U] matrix of one sample (repeated neighbours summed)."""
    index = torch.as_tensor(index, dtype=torch.long)
    rows = torch.arange(U).unsqueeze(1).expand_as(index)
    return torch.zeros(U, U).index_put_((rows.reshape(-1), index.reshape(-1)),
                                       torch.as_tensor(weight).float().reshape(-1),
                                       accumulate=True)


def uniform_padding(graph, generator) -> torch.Tensor:
    r"""The control: pad every short list with uniform draws from its ORIGINAL n entries
    (not MMRec's growing list)."""
    U, k = graph.num_users, graph.k
    deg = graph.num_neighbors.clamp(min=1).unsqueeze(1)
    slot = torch.arange(k).expand(U, k).clone()
    r = (torch.rand(U, k, generator=generator) * deg).long()
    slot = torch.where(slot < deg, slot, r)
    index = graph.neighbors.gather(1, slot)
    weight = torch.softmax(graph.counts.gather(1, slot), 1) * (graph.num_neighbors > 0)[:, None]
    return sample_matrix(index, weight, U)


def moment_z(a: torch.Tensor, b: torch.Tensor) -> float:
    r"""Largest |z| of the difference of two means of draws :obj:`[R, ...]` (entries where
    both sides are constant are compared exactly: any difference gives inf)."""
    diff = a.mean(0) - b.mean(0)
    se = (a.var(0) / a.size(0) + b.var(0) / b.size(0)).sqrt()
    z = torch.where(se > 0, diff.abs() / se.clamp_min(1e-30),
                    torch.where(diff.abs() > 1e-6, torch.full_like(diff, float('inf')),
                                torch.zeros_like(diff)))
    return float(z.max())


def main() -> int:
    torch.set_num_threads(1)
    from models.dualgnn import DualGNN as MMRecDualGNN

    from mrdib_pyg.data import AmazonMM
    from mrdib_pyg.data.derived import UserCoInteraction
    from mrdib_pyg.data.sampling import BPRBatch
    from mrdib_pyg.nn.models.dualgnn import DualGNN

    tmp = tempfile.mkdtemp(prefix='eq_dualgnn_')
    rows, extra = [], {}
    try:
        mm_dir = os.path.join(tmp, 'mmrec', NAME)
        write_dataset(mm_dir)
        uu_mm, uu_dict = mmrec_user_graph_dict(mm_dir)
        shutil.copytree(mm_dir, os.path.join(tmp, 'ours', NAME, 'raw'))
        config, loader, _ = mmrec_setup('DualGNN', NAME, os.path.join(tmp, 'mmrec'), 256,
                                        {'reg_weight': REG, 'aggr_mode': 'add',
                                         'learning_rate': 1e-3})
        torch.manual_seed(0)
        np.random.seed(0)
        mm = MMRecDualGNN(config, loader)
        # On CPU `.to('cpu')` returns MMRec's result_embed Parameter itself, which then
        # refuses the plain tensor its forward assigns (on GPU it is a plain tensor).
        mm._parameters.pop('result_embed', None)
        data = AmazonMM(os.path.join(tmp, 'ours'), NAME)[0]
        U, I = data['user'].num_nodes, data['item'].num_nodes
        assert (U, I) == (mm.n_users, mm.n_items), ((U, I), (mm.n_users, mm.n_items))
        N = U + I

        torch.manual_seed(1)
        model = DualGNN.from_data(data, reg_weight=REG, mmrec_inplace_sum=True)
        copy_params(model, mm)

        # (a) derived graphs -----------------------------------------------------------
        theirs_adj = mm.v_gcn.conv_embed_1(torch.eye(N), mm.edge_index)
        rows.append(('(a) user-item matrix D^-1/2 A D^-1/2', maxdiff(model.graph.to_dense(),
                                                                      theirs_adj), TOL))
        full = dense(UserCoInteraction(k=None).build(data, 'keep'))
        rows.append(('(a) co-interaction counts vs MMRec matrix', maxdiff(full, uu_mm), 0.0))
        from_dict = torch.zeros(U, U)
        for u, (nb, cnt) in uu_dict.items():
            from_dict[u, nb] = torch.tensor(cnt)
        rows.append(('(a) co-interaction counts vs user_graph_dict', maxdiff(full, from_dict),
                     0.0))
        g = model.user_graph
        n_mm = torch.tensor([min(len(uu_dict[u][0]), K) for u in range(U)])
        rows.append(('(a) kept neighbours per user (count diff)',
                     float((g.num_neighbors - n_mm).abs().max()), 0.0))
        cnt_diff, tie_only, differ = 0.0, True, 0
        for u in range(U):
            n = int(n_mm[u])
            nb_mm, c_mm = uu_dict[u][0][:K], uu_dict[u][1][:K]
            nb, c = g.neighbors[u, :n].tolist(), g.counts[u, :n]
            cnt_diff = max(cnt_diff, maxdiff(torch.tensor(sorted(c.tolist())),
                                             torch.tensor(sorted(c_mm))) if n else 0.0)
            if set(nb) != set(nb_mm):
                differ += 1
                boundary = c_mm[-1]
                odd = set(nb) ^ set(nb_mm)
                tie_only &= all(full[u, v] == boundary for v in odd)
        rows.append(('(a) kept counts per user (sorted)', cnt_diff, 0.0))
        rows.append(('(a) kept sets differing beyond k-th-place ties', float(not tie_only), 0.0))
        extra['users'] = {'total': U, 'with >= 40 neighbours': int((n_mm == K).sum()),
                          'padded (0 < n < 40)': int(((n_mm > 0) & (n_mm < K)).sum()),
                          'without neighbours': int((n_mm == 0).sum()),
                          'kept set differs by a k-th-place tie': differ}

        # (d) the per-epoch sample ---------------------------------------------------------
        np.random.seed(1)
        t0 = time.perf_counter()
        mm.pre_epoch_processing()
        extra['mmrec_topk_sample_s'] = round(time.perf_counter() - t0, 4)
        t0 = time.perf_counter()
        model.pre_epoch(0)
        extra['ours_resample_s'] = round(time.perf_counter() - t0, 4)
        idx_mm = torch.tensor(mm.epoch_user_graph)
        w_mm = mm.user_weight_matrix
        i_ours, w_ours = g.sample(torch.Generator().manual_seed(0))
        full_users = (n_mm == K) & torch.tensor([set(g.neighbors[u].tolist())
                                                 == set(uu_dict[u][0][:K]) for u in range(U)])
        W_mm, W_ours = sample_matrix(idx_mm, w_mm, U), sample_matrix(i_ours, w_ours, U)
        rows.append(('(d) sample, users with >= 40 neighbours, sorted weights',
                     maxdiff(w_ours[n_mm == K].sort(1).values, w_mm[n_mm == K].sort(1).values),
                     1e-6))
        rows.append((f'(d) sample W, the {int(full_users.sum())} of them without a tie',
                     maxdiff(W_ours[full_users], W_mm[full_users]), 1e-6))
        short = (n_mm > 0) & (n_mm < K)
        first = max(maxdiff(i_ours[u, :int(n_mm[u])].sort().values,
                            idx_mm[u, :int(n_mm[u])].sort().values) for u in range(U)
                    if short[u])
        rows.append(('(d) sample, first n slots of padded users', first, 0.0))
        none = n_mm == 0
        rows.append(('(d) sample, users without neighbours (|W| row sum)',
                     float(W_ours[none].abs().sum() + W_mm[none].abs().sum()), 0.0))
        rows.append(('(d) sample weights sum to 1 (users with neighbours)',
                     maxdiff(W_ours[~none].sum(1), torch.ones(int((~none).sum()))), 1e-6))
        np.random.seed(2)
        gen = torch.Generator().manual_seed(2)
        Wm, Wo, Wu = [], [], []
        for _ in range(DRAWS):
            Wm.append(sample_matrix(*mm.topk_sample(K), U)[short])
            Wo.append(sample_matrix(*g.sample(gen), U)[short])
            Wu.append(uniform_padding(g, gen)[short])
        Wm, Wo, Wu = torch.stack(Wm), torch.stack(Wo), torch.stack(Wu)
        rows.append((f'(d) padding E[W], max |z| over {DRAWS} draws', moment_z(Wo, Wm), 5.0))
        rows.append((f'(d) padding E[W^2], max |z| over {DRAWS} draws',
                     moment_z(Wo ** 2, Wm ** 2), 5.0))
        extra['control_uniform_padding_max_z'] = {
            'E[W]': round(moment_z(Wu, Wm), 2), 'E[W^2]': round(moment_z(Wu ** 2, Wm ** 2), 2),
            'note': 'padding from the original list only: should fail the 5.0 bound'}
        model.user_graph.set_sample(idx_mm, w_mm)  # the same sample on both sides from here

        # (b) forward tables -----------------------------------------------------------------
        inter = next(iter(loader))
        batch = BPRBatch(inter[0].clone(), inter[1].clone(), inter[2].clone())
        clone = lambda: [t.clone() for t in inter]  # noqa: E731  (MMRec shifts ids in place)
        mm.train()
        model.train()
        mm.forward(clone())
        v_mm, _ = mm.v_gcn(mm.edge_index_dropv, mm.edge_index, mm.v_feat)
        t_mm, _ = mm.t_gcn(mm.edge_index_dropt, mm.edge_index, mm.t_feat)
        out = model()
        for m, theirs in (('image', v_mm), ('text', t_mm)):
            mo = out.modalities[m]
            rows.append((f'(b) {m} GCN output x + h1 + h2',
                         maxdiff(torch.cat([mo.user, mo.item]), theirs), TOL))
        rows.append(('(b) user table (mmrec_inplace_sum=True)',
                     maxdiff(out.user, mm.result_embed[:U]), TOL))
        rows.append(('(b) item table', maxdiff(out.item, mm.result_embed[U:]), TOL))
        w = mm.weight_u[:, :, 0]
        fused = w[:, :1] * v_mm[:U] + w[:, 1:] * t_mm[:U]
        ref = fused + mm.user_graph(fused, mm.epoch_user_graph, mm.user_weight_matrix)
        model.mmrec_inplace_sum = False
        rows.append(('(b) user table (default, unaliased) vs MMRec pieces',
                     maxdiff(model().user, ref), TOL))
        extra['aliasing_effect_max_abs'] = maxdiff(model().user, mm.result_embed[:U])
        model.mmrec_inplace_sum = True
        rows.append(('(b) table scale (max abs value; reference)',
                     float(mm.result_embed.detach().abs().max()), float('inf')))

        # (c) loss, gradients, Adam steps, ranking -------------------------------------------
        mm.zero_grad()
        loss_mm = mm.calculate_loss(clone())
        loss_mm.backward()
        const = REG * float((mm.weight_i ** 2).mean())
        mm.reg_weight = 0.0
        bpr_mm = float(mm.calculate_loss(clone()))
        mm.reg_weight = REG
        model.zero_grad()
        out = model()
        loss = model.loss(out, batch)
        loss.backward()
        reg = float(model.regularizer(out, batch))
        rows.append(('(c) training loss (+ MMRec weight_i term)', abs(float(loss) + const
                                                                      - float(loss_mm)), TOL))
        rows.append(('(c) BPR part (log2)', abs(float(loss) - reg - bpr_mm), TOL))
        rows.append(('(c) regulariser', abs(reg + const - (float(loss_mm) - bpr_mm)), TOL))
        grads = [maxdiff(a, b) for _, a, b in weight_pairs(model, mm, grad=True)]
        rows.append((f'(c) gradients of all trained weights ({len(grads)} tensors)',
                     max(grads), TOL))
        model.score_last_train_forward = True
        mm_opt = torch.optim.Adam(mm.parameters(), lr=1e-3)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        it = iter(loader)
        for _ in range(3):
            inter = next(it)
            b = BPRBatch(inter[0].clone(), inter[1].clone(), inter[2].clone())
            mm_opt.zero_grad()
            mm.calculate_loss([t.clone() for t in inter]).backward()
            mm_opt.step()
            opt.zero_grad()
            model.loss(model(), b).backward()
            opt.step()
        # Adam divides each gradient by its own magnitude, so float noise on a near-zero
        # gradient (a user reached only through the graph) becomes a fraction of lr.
        steps = {n: maxdiff(a, b) for n, a, b in weight_pairs(model, mm)}
        extra['adam_3_steps_max_diff_per_tensor'] = steps
        rows.append(('(c) weights after 3 Adam steps (lr 1e-3)', max(steps.values()), 1e-4))
        mm.eval()
        model.eval()
        users = torch.arange(U)
        with torch.no_grad():
            s_mm = mm.full_sort_predict([users])
        rows.append(('(c) full-sort scores, last training forward',
                     maxdiff(model.score(users), s_mm), 1e-4))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return report('dualgnn', rows, extra)


if __name__ == '__main__':
    sys.exit(main())
