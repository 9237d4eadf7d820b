r"""Numerical equivalence of our :class:`~mrdib_pyg.nn.models.soil.SOIL` with the authors'
own ``models/soil.py`` (TL-UESTC/SOIL, an MMRec model), on a small MMRec-format dataset
written to a temporary folder.

Run (from MMRec's ``src/``, under MMRec's venv, with our package on the path)::

    cd /tmp/mmrec/src && PYTHONPATH=.:/work/main /tmp/mmvenv/bin/python \
        /work/main/benchmarks/equivalence/soil.py

SOIL's code is an MMRec snapshot plus one model file. The script installs that file into
the MMRec copy it runs from (read with ``git show`` from the SOIL checkout, ``$SOIL_REPO``,
default ``/work/.mirror/TL-UESTC+SOIL/repo``) with two mechanical patches and nothing else:
``models/soil.py`` imports SOIL's own ``utils/utils.py`` (installed as
``utils/soil_utils.py``: MMRec's lacks ``build_non_zero_graph`` / ``build_graph_from_adj``
and the 1e-7 floor of SOIL's ``get_sparse_laplacian``), and its four ``.cuda()`` calls
become ``.to(self.device)`` (CPU here). ``configs/model/SOIL.yaml`` is copied as is;
``knn_i=10`` / ``knn_a=2`` (SOIL's Baby values) come in the overrides, and
``cl_loss = cl_loss2 = 0.1`` (the grid's largest) so that both InfoNCE pairs weigh in.

SOIL's derived matrices are read from its model (``norm_adj``, ``R``,
``image_interest_adj``, ``mm_attractive_adj``, ...) and, by wrapping its three graph
builders (the wrapper records the argument and returns the builder's own result), its raw
interest matrices and raw second-order matrix :math:`R^a` before normalisation.

(a) derived graphs: the interest graphs (values and patterns), the floored kNN graphs, the
    final item operators :math:`G^m`, the second-order edges :math:`R^a`, its two
    normalised forms (our :func:`floored_sym_norm` and :func:`quirk_block_norm` on SOIL's
    raw :math:`R^a`, and our declared specs as built), and the augmented operators;
(b) the forward tables (content, side, final) and ``full_sort_predict`` vs ``score``;
(c) the loss on a full and on the smaller last batch, its three parts, and the gradient of
    every parameter;
(d) SOIL draws nothing at random per epoch (no edge dropout, ``pre_epoch_processing`` is
    empty), so instead: five Adam steps on SOIL's batches and the tables after them.

:math:`S^a` is symmetric, so a user's two history items :math:`i, j` offer the same value
through :math:`(i, j)` and :math:`(j, i)`; when only one fits in the top
:math:`k_a + |\mathcal{I}(u)|`, SOIL credits one of them by float rounding and ``topk``'s
tie order, ours the row of the larger id. :math:`R^a` is therefore compared on what does
not depend on the tie (each user's total, the new items and their values, the sorted
history values), the number of users where the two choices differ is reported, and (b)-(d)
run our model on :math:`R^a` as SOIL picked it (normalised by our functions); the effect of
the tie choice on the tables is reported beside them (not compared).

Prints a table (quantity, max abs diff, tolerance) and writes
``benchmarks/results/equivalence_soil.json``. Exits with status 1 if a difference exceeds
its tolerance.
"""
import os
import shutil
import subprocess
import sys
import tempfile
import warnings

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import dense, maxdiff, mmrec_setup, pattern, report  # noqa: E402

NAME = 'eqsoil'
SOIL_REPO = os.environ.get('SOIL_REPO', '/work/.mirror/TL-UESTC+SOIL/repo')
TOL = 1e-5
#: After several Adam steps (Adam divides by the running RMS of tiny gradients).
TOL_TRAINED = 1e-4
BATCH = 256
STEPS = 5
TEXT_SHIFT = 2.0
OVERRIDES = {'knn_i': 10, 'knn_a': 2, 'cl_loss': 0.1, 'cl_loss2': 0.1}


def install_reference(src: str = '.') -> None:
    r"""Write SOIL's model, utils and yaml into the MMRec tree at :obj:`src` (patched as the
    module docstring says)."""
    def show(path):
        return subprocess.check_output(['git', '-C', SOIL_REPO, 'show', f'HEAD:{path}'],
                                       text=True)
    model = show('models/soil.py')
    patches = (('from utils.utils import', 'from utils.soil_utils import', 1),
               ('.cuda()', '.to(self.device)', 4))
    for old, new, count in patches:
        assert model.count(old) == count, (old, model.count(old))
        model = model.replace(old, new)
    files = {'models/soil.py': model, 'utils/soil_utils.py': show('utils/utils.py'),
             'configs/model/SOIL.yaml': show('configs/model/SOIL.yaml')}
    for path, text in files.items():
        with open(os.path.join(src, path), 'w') as f:
            f.write(text)


def write_data(tmp: str):
    r"""The harness's dataset (300 users, 200 items) with its signed text features shifted
    by :data:`TEXT_SHIFT`: text cosines are then mostly positive, as those of sentence
    embeddings are, with a few negative ones (floored to 1e-7). On the unshifted features
    some interest-graph rows have a negative weighted degree, where SOIL's
    :math:`D^{-1/2}` is NaN and its whole forward is NaN (ours isolates those items)."""
    import numpy as np

    from harness import write_dataset
    from mrdib_pyg.data import AmazonMM
    mm_dir = os.path.join(tmp, 'mmrec', NAME)
    write_dataset(mm_dir, NAME)
    path = os.path.join(mm_dir, 'text_feat.npy')
    np.save(path, (np.load(path) + TEXT_SHIFT).astype(np.float32))
    shutil.copytree(mm_dir, os.path.join(tmp, 'ours', NAME, 'raw'))
    return os.path.join(tmp, 'mmrec') + os.sep, AmazonMM(os.path.join(tmp, 'ours'), NAME)[0]


def param_pairs(model, mm):
    r"""(name, ours, SOIL's) for every parameter of both models."""
    pairs = [('user_embedding', model.user_emb, mm.user_embedding.weight),
             ('item_id_embedding', model.item_emb, mm.item_id_embedding.weight)]
    for mod, trs, gate in (('image', mm.image_trs, mm.map_v[0]),
                           ('text', mm.text_trs, mm.map_t[0])):
        pur = model.purifiers[mod]
        for p in ('weight', 'bias'):
            pairs.append((f'{mod}_trs.{p}', getattr(pur.proj, p), getattr(trs, p)))
            pairs.append((f'map_{mod[0]}.0.{p}', getattr(pur.gate, p), getattr(gate, p)))
    q = model.fuser.query
    pairs += [('attention.0.weight', q[0].weight, mm.attention[0].weight),
              ('attention.0.bias', q[0].bias, mm.attention[0].bias),
              ('attention.2.weight', q[2].weight, mm.attention[2].weight)]
    return pairs


def tie_invariant(ours, theirs, train):
    r"""Differences of R^a that do not depend on the tie choice: per-user totals, the
    entries off the training pairs, and each user's sorted history values; and the users
    whose rows differ."""
    total = maxdiff(ours.sum(1), theirs.sum(1))
    off = maxdiff(ours[~train], theirs[~train])
    hist, users = 0.0, 0
    for u in range(ours.size(0)):
        a, b = ours[u, train[u]].sort()[0], theirs[u, train[u]].sort()[0]
        hist = max(hist, maxdiff(a, b))
        users += int(maxdiff(ours[u], theirs[u]) > TOL)
    return total, off, hist, users


def main() -> int:
    torch.set_num_threads(1)
    warnings.filterwarnings('ignore')
    install_reference()
    import models.soil as soil_ref

    from mrdib_pyg.data.derived import build_graphs
    from mrdib_pyg.data.graphs import item_knn_graph
    from mrdib_pyg.data.interest_graphs import (AttractivenessGraph, InterestItemGraph,
                                                attractiveness_edges, floored_sym_norm,
                                                quirk_block_norm)
    from mrdib_pyg.data.sampling import BPRBatch
    from mrdib_pyg.nn.models.soil import SOIL

    recorded = {}

    def recording(fn):
        def wrapper(adj, *args, **kwargs):
            out = fn(adj, *args, **kwargs)
            recorded.setdefault(fn.__name__, []).append((adj.clone(), out))
            return out
        return wrapper

    for fn in ('build_non_zero_graph', 'build_knn_normalized_graph', 'build_graph_from_adj'):
        setattr(soil_ref, fn, recording(getattr(soil_ref, fn)))

    rows, info = [], {}
    tmp = tempfile.mkdtemp(prefix='eq_soil_')
    try:
        data_path, data = write_data(tmp)
        config, loader, _ = mmrec_setup('SOIL', NAME, data_path, BATCH, OVERRIDES)
        torch.manual_seed(0)
        mm = soil_ref.SOIL(config, loader)
        U, I = data['user'].num_nodes, data['item'].num_nodes
        assert (U, I) == (mm.n_users, mm.n_items), ((U, I), (mm.n_users, mm.n_items))
        knn_k, knn_i, knn_a = int(config['knn_k']), int(config['knn_i']), int(config['knn_a'])
        train = torch.zeros(U, I, dtype=torch.bool)
        ei = data['user', 'rates', 'item'].edge_index
        train[ei[0], ei[1]] = True
        feats = {m: data[m].x for m in ('image', 'text')}

        # (a) derived graphs ------------------------------------------------------------
        interest_mm = dict(zip(('image', 'text'), recorded['build_non_zero_graph']))
        knn_mm = dict(zip(('image', 'text'), recorded['build_knn_normalized_graph']))
        (_, _), (raw_R, _) = recorded['build_graph_from_adj']
        ours = build_graphs(data, {
            'interest': {m: InterestItemGraph(m, k=knn_i, knn_k=0) for m in feats},
            'G': {m: InterestItemGraph(m, k=knn_i, knn_k=knn_k) for m in feats},
            'Aa': AttractivenessGraph(k=knn_a),
            'Ra_quirk': AttractivenessGraph(k=knn_a, block='user_item', degree_quirk=True),
            'Ra_fixed': AttractivenessGraph(k=knn_a, block='user_item')})
        for m in feats:
            theirs = interest_mm[m][1]
            pa, pb = pattern(ours['interest'][m]), pattern(theirs)
            rows.append((f'{m} interest graph (knn_i={knn_i}, sym, floored)',
                         maxdiff(ours['interest'][m], theirs), TOL))
            rows.append((f'  {m} interest graph: pattern differences ({len(pb)} nnz)',
                         float(len(pa ^ pb)), 0.0))
            knn = floored_sym_norm(*item_knn_graph(feats[m], knn_k, loop=True), I)
            rows.append((f'{m} kNN graph (k={knn_k}, weighted, sym, floored)',
                         maxdiff(knn, knn_mm[m][1]), TOL))
            theirs_g = getattr(mm, f'{m}_interest_adj').coalesce()
            rows.append((f'{m} item operator G = interest + kNN', maxdiff(ours['G'][m],
                                                                          theirs_g), TOL))
            info[f'{m}_interest_pairs'] = len(pb)
            info[f'{m}_operator_nnz'] = int(theirs_g.values().numel())

        (au, aj), aw = attractiveness_edges(ei, U, I, [feats['image'], feats['text']], knn_a)
        ours_R = torch.zeros(U, I)
        ours_R[au, aj] = aw
        theirs_R = dense(raw_R.coalesce())
        total, off, hist, swapped = tie_invariant(ours_R, theirs_R, train)
        rows.append(('R^a raw: per-user totals', total, TOL))
        rows.append(('R^a raw: new (non-history) items and values', off, TOL))
        rows.append(('R^a raw: sorted history values per user', hist, TOL))
        rows.append(('R^a raw: pattern differences', float(len(pattern(ours_R)
                                                              ^ pattern(theirs_R))), 0.0))
        new = ((theirs_R > 0) & ~train).sum(1)
        info.update({'Ra_nnz': int((theirs_R > 0).sum()), 'Ra_new_items_per_user_mean':
                     float(new.float().mean()), 'Ra_new_items_per_user_max': int(new.max()),
                     'Ra_users_with_history_tie_resolved_differently': swapped,
                     'Ra_raw_max_abs_diff_as_built': maxdiff(ours_R, theirs_R)})
        # SOIL's R^a through our normalisations
        (fu, fj), fw = theirs_R.to_sparse().coalesce().indices(), \
            theirs_R.to_sparse().coalesce().values()
        full_idx = torch.stack([torch.cat([fu, fj + U]), torch.cat([fj + U, fu])])
        Aa_soil = floored_sym_norm(full_idx, torch.cat([fw, fw]), U + I)
        Ra_soil = quirk_block_norm(torch.stack([fu, fj]), fw, U, I)
        rows.append(('mm_attractive_adj: our norm of SOIL raw R^a',
                     maxdiff(Aa_soil, mm.mm_attractive_adj.coalesce()), TOL))
        rows.append(('mm_attractive_adj_R: our quirk norm of SOIL raw R^a',
                     maxdiff(Ra_soil, mm.mm_attractive_adj_R.coalesce()), TOL))
        info['Aa_as_built_max_abs_diff'] = maxdiff(ours['Aa'], mm.mm_attractive_adj.coalesce())
        info['Ra_quirk_as_built_max_abs_diff'] = maxdiff(ours['Ra_quirk'],
                                                         mm.mm_attractive_adj_R.coalesce())
        info['Ra_fixed_vs_quirk_max_abs_diff'] = maxdiff(ours['Ra_fixed'], ours['Ra_quirk'])
        if swapped == 0:  # then the declared specs as built must match too
            rows.append(('mm_attractive_adj: declared spec as built', info[
                'Aa_as_built_max_abs_diff'], TOL))
            rows.append(('mm_attractive_adj_R: declared spec (quirk) as built', info[
                'Ra_quirk_as_built_max_abs_diff'], TOL))

        common = dict(knn_k=knn_k, knn_i=knn_i, knn_a=knn_a, cl_loss=OVERRIDES['cl_loss'],
                      cl_loss2=OVERRIDES['cl_loss2'], soil_degree_quirk=True)
        model = SOIL.from_data(data, attractive=Aa_soil, attractive_user_item=Ra_soil, **common)
        own = SOIL.from_data(data, **common)  # our R^a as built (tie choice ours)
        fixed = SOIL.from_data(data, attractive=Aa_soil, **dict(common, soil_degree_quirk=False))
        for other in (own, fixed):
            other.load_state_dict(model.state_dict())
        with torch.no_grad():
            for _, a, b in param_pairs(model, mm):
                a.copy_(b)
            for other in (own, fixed):
                for (_, a, _), (_, b, _) in zip(param_pairs(other, mm), param_pairs(model, mm)):
                    a.copy_(b)
        rows.append(('augmented UI adjacency (norm_adj + mm_attractive_adj/2)',
                     maxdiff(model.ui_graph.to_dense(), dense(mm.norm_adj.coalesce())), TOL))
        rows.append(('augmented readout (R + mm_attractive_adj_R/2)',
                     maxdiff(model.user_item.to_dense(), dense(mm.R.coalesce())), TOL))

        # (b) forward tables ------------------------------------------------------------
        mm.train()
        model.train()
        u_mm, i_mm, side_mm, content_mm = mm.forward(mm.norm_adj, train=True)
        out = model()
        rows.append(('content (behaviour) view', maxdiff(out.extras['content'], content_mm),
                     TOL))
        rows.append(('side view', maxdiff(out.extras['side'], side_mm), TOL))
        rows.append(('final user table', maxdiff(out.user, u_mm), TOL))
        rows.append(('final item table', maxdiff(out.item, i_mm), TOL))
        info['table_scale_max_abs'] = float(torch.cat([u_mm, i_mm]).abs().max())
        with torch.no_grad():
            info['tables_with_our_tie_choice_max_abs_diff'] = max(
                maxdiff(own().user, u_mm), maxdiff(own().item, i_mm))
            info['user_table_fixed_degrees_vs_quirk_max_abs_diff'] = maxdiff(fixed().user,
                                                                            u_mm)
            info['item_table_fixed_degrees_vs_quirk_max_abs_diff'] = maxdiff(fixed().item,
                                                                            i_mm)
        mm.eval()
        model.eval()
        users = torch.arange(U)
        with torch.no_grad():
            s_mm = mm.full_sort_predict((users, ))
        rows.append(('full_sort_predict vs score (all users)',
                     maxdiff(model.score(users), s_mm), TOL))
        mm.train()
        model.train()

        # (c) loss, parts, gradients ----------------------------------------------------
        batches = [b.clone() for b in loader]
        info['batches'] = [int(b.size(1)) for b in (batches[0], batches[-1])]
        for label, b in (('full batch', batches[0]), ('last batch', batches[-1])):
            mm.zero_grad()
            model.zero_grad()
            loss_mm = mm.calculate_loss(b)
            loss_mm.backward()
            out = model()
            batch = BPRBatch(b[0], b[1], b[2])
            loss = model.loss(out, batch)
            loss.backward()
            rows.append((f'loss, {label} (B={b.size(1)}, value {float(loss_mm):.5f})',
                         maxdiff(loss, loss_mm), TOL))
            if label == 'full batch':
                with torch.no_grad():
                    u_mm, i_mm, side_mm, content_mm = mm.forward(mm.norm_adj, train=True)
                    s_u, s_i = torch.split(side_mm, [U, I])
                    c_u, c_i = torch.split(content_mm, [U, I])
                    ue = u_mm[b[0]]
                    bpr_mm = mm.bpr_loss(ue, i_mm[b[1]], i_mm[b[2]])
                    ii_mm = mm.InfoNCE(s_i[b[1]], c_i[b[1]], 0.2) + mm.InfoNCE(
                        s_u[b[0]], c_u[b[0]], 0.2)
                    ui_mm = mm.InfoNCE(ue, c_i[b[1]], 0.2) + mm.InfoNCE(ue, s_i[b[1]], 0.2)
                    l_ii, l_ui = model.contrastive_losses(out, batch)
                    bpr = loss - model.cl_loss * l_ii - model.cl_loss2 * l_ui
                rows.append(('  BPR term', maxdiff(bpr, bpr_mm), TOL))
                rows.append(('  L_ii (side vs content, items + users)', maxdiff(l_ii, ii_mm),
                             TOL))
                rows.append(('  L_ui (user vs content / side items)', maxdiff(l_ui, ui_mm),
                             TOL))
            worst, name = 0.0, ''
            for pname, a, t in param_pairs(model, mm):
                d = float('inf') if (a.grad is None) != (t.grad is None) else maxdiff(
                    a.grad, t.grad)
                if d >= worst:
                    worst, name = d, pname
            rows.append((f'gradients, {label} (max over {len(param_pairs(model, mm))} '
                         f'tensors; largest on {name})', worst, TOL))

        # (d) no per-epoch randomness: training dynamics --------------------------------
        opt_mm = torch.optim.Adam(mm.parameters(), lr=1e-3)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        for b in batches[:STEPS]:
            opt_mm.zero_grad()
            opt.zero_grad()
            mm.calculate_loss(b).backward()
            opt_mm.step()
            model.loss(model(), BPRBatch(b[0], b[1], b[2])).backward()
            opt.step()
            mm.pre_epoch_processing()
            model.pre_epoch(1)
        with torch.no_grad():
            u_mm, i_mm = mm.forward(mm.norm_adj)
            out = model()
        rows.append((f'final user table after {STEPS} Adam steps', maxdiff(out.user, u_mm),
                     TOL_TRAINED))
        rows.append((f'final item table after {STEPS} Adam steps', maxdiff(out.item, i_mm),
                     TOL_TRAINED))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print('not compared (information):')
    for k, v in info.items():
        print(f'  {k}: {v}')
    extra = {'reference': 'TL-UESTC/SOIL models/soil.py (HEAD), in enoche/MMRec src/',
             'dataset': {'users': U, 'items': I, 'image_dim': 64, 'text_dim': 32,
                         'train_interactions': int(ei.size(1))},
             'settings': dict(OVERRIDES, batch_size=BATCH, adam_steps=STEPS, knn_k=knn_k,
                              soil_degree_quirk=True),
             'info': info}
    return report('soil', rows, extra)


if __name__ == '__main__':
    sys.exit(main())
