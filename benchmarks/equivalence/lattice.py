r"""Numerical equivalence of our :class:`~mrdib_pyg.nn.models.lattice.LATTICE` with MMRec's
own ``models/lattice.py``, on a small MMRec-format dataset written to a temporary folder.

Run (from MMRec's ``src/``, under MMRec's venv, with our package on the path)::

    cd /tmp/mmrec/src && PYTHONPATH=.:/work/main /tmp/mmvenv/bin/python \
        /work/main/benchmarks/equivalence/lattice.py

Both sides read the same files (:func:`harness.prepare`: MMRec through its Config /
RecDataset / TrainDataLoader, ours through :class:`~mrdib_pyg.data.AmazonMM`, ids kept).
MMRec's initial parameters (ID tables, trained feature tables, projections, modality
weights) are copied into ours; the modality logits are first set to an unequal
:math:`[w_\text{image}, w_\text{text}] = [0.8, 0.3]` on both sides (MMRec starts at
:math:`[0.5, 0.5]`, which would hide a swapped modality order). Then:

(a) the derived graphs: MMRec's ``norm_adj`` :math:`D^{-1}(A+I)` against our
    ``UserItemGraph(norm='row', self_loops=True)``; its cached ``image_original_adj`` /
    ``text_original_adj`` against our ``ItemKNN(m, k=10, weighted=True, loop=True,
    norm='sym')``; its dense learned per-modality top-k graphs and the final item graph
    ``item_adj`` (:math:`0.1\,L + 0.9\sum_m\alpha_m O_m`) against our sparse ones (values
    and non-zero patterns);
(b) the forward tables (training forward with a rebuild, and the evaluation forward), and
    MMRec's ``full_sort_predict`` against our cached ``score``;
(c) the training loss on MMRec's own batches: the first batch of an epoch (graph rebuilt
    with gradient), the next one (graph reused, detached) and the last, smaller one (L2
    divisor), with the gradient of every parameter (and which ones get none);
(d) LATTICE draws nothing at random per epoch (its only per-epoch change is the
    deterministic graph rebuild), so there is no distribution to compare; instead the
    rebuild schedule: two epochs of Adam steps on MMRec's batches (rebuild on each epoch's
    first batch, detached graph afterwards), the stale graph mid-epoch, the rebuilt graph
    of epoch 2 from the moved projections, the parameters and tables after training, and
    the evaluation rebuild.

``--folder DIR`` runs the same checks on an existing MMRec-format folder instead (e.g. the
Baby split at full scale, 19,445 users and 7,050 items with 4096/384-d features; several
GiB of memory for MMRec's dense item graphs); ``--out NAME`` names the JSON.

Prints a table (quantity, max abs diff, tolerance) and writes
``benchmarks/results/equivalence_lattice.json``. Exits with status 1 if a difference
exceeds its tolerance.
"""
import os
import shutil
import sys
import tempfile
import warnings

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import maxdiff, mmrec_setup, pattern, prepare, report  # noqa: E402

NAME = 'eqlattice'
TOL = 1e-5
#: After Adam steps: Adam divides each update by the gradient's running RMS, so float-level
#: differences of tiny gradients become visible (still far below the tables' scale).
TOL_TRAINED = 1e-4
BATCH = 256
STEPS = 4  # Adam steps per epoch in (d)
REG = 1e-3  # the largest of MMRec's reg_weight grid, so the L2 term weighs in the loss
LOGITS = {'image': 0.8, 'text': 0.3}


def param_pairs(model, mm):
    r"""(name, ours, MMRec's) for every parameter; the modality logits separately."""
    pairs = [('user_embedding', model.user_emb, mm.user_embedding.weight),
             ('item_id_embedding', model.item_emb, mm.item_id_embedding.weight),
             ('image_embedding', model.feature_emb['image'], mm.image_embedding.weight),
             ('text_embedding', model.feature_emb['text'], mm.text_embedding.weight)]
    for m, trs in (('image', mm.image_trs), ('text', mm.text_trs)):
        for p in ('weight', 'bias'):
            pairs.append((f'{m}_trs.{p}', getattr(model.trs[m], p), getattr(trs, p)))
    return pairs


def mm_index(model):
    r"""Our modality order -> MMRec's positions in ``modal_weight`` (image 0, text 1)."""
    return [{'image': 0, 'text': 1}[m] for m in model.modalities]


def copy_params(model, mm) -> None:
    r"""MMRec's LATTICE tensors -> ours, the modality logits reordered."""
    with torch.no_grad():
        for _, ours, theirs in param_pairs(model, mm):
            ours.copy_(theirs)
        model.item_graph.modal_weight.copy_(mm.modal_weight[mm_index(model)])


def grad_pairs(model, mm):
    r"""(name, our gradient, MMRec's) for the 9 parameter tensors (logits reordered)."""
    g, h = model.item_graph.modal_weight.grad, mm.modal_weight.grad
    out = [('modal_weight', g, None if h is None else h[mm_index(model)])]
    return out + [(name, o.grad, t.grad) for name, o, t in param_pairs(model, mm)]


def grads(model, mm):
    r"""The largest absolute and relative (to the tensor's largest MMRec entry) gradient
    differences, the tensors where they are, and the parameters that got no gradient (on
    both sides; a mismatch is infinite)."""
    worst, rel, where, where_rel, none = 0.0, 0.0, '', '', []
    for name, ours, theirs in grad_pairs(model, mm):
        if (ours is None) != (theirs is None):
            return float('inf'), float('inf'), name, name, none
        if ours is None:
            none.append(name)
            continue
        d = maxdiff(ours, theirs)
        r = d / max(float(theirs.abs().max()), 1e-30)
        if d >= worst:
            worst, where = d, name
        if r >= rel:
            rel, where_rel = r, name
    return worst, rel, where, where_rel, none


def main() -> int:
    torch.set_num_threads(1)
    warnings.filterwarnings('ignore')
    from models.lattice import LATTICE as MMRecLATTICE
    from utils.utils import build_knn_neighbourhood, build_sim

    from mrdib_pyg.data.sampling import BPRBatch
    from mrdib_pyg.nn.models.lattice import LATTICE

    rows, notes = [], {}

    def record(quantity, diff, tol=TOL):
        rows.append((quantity, float(diff), tol))

    import argparse
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--folder', default=None, metavar='DIR',
                   help='an existing MMRec-format folder (DIR/NAME.inter, features) instead '
                        'of the small generated one, e.g. the Baby split at full scale')
    p.add_argument('--name', default=None, help='the dataset name in --folder')
    p.add_argument('--out', default=None, help='JSON name (default: equivalence_lattice)')
    args = p.parse_args()
    tmp = tempfile.mkdtemp(prefix='eq_lattice_')
    try:
        if args.folder:  # MMRec reads DIR's parent as data_path, ours DIR as NAME/raw
            from mrdib_pyg.data import AmazonMM
            name = args.name or os.path.basename(os.path.normpath(args.folder))
            os.makedirs(os.path.join(tmp, 'mmrec'))
            os.makedirs(os.path.join(tmp, 'ours', name))
            os.symlink(os.path.abspath(args.folder), os.path.join(tmp, 'mmrec', name))
            os.symlink(os.path.abspath(args.folder), os.path.join(tmp, 'ours', name, 'raw'))
            data_path = os.path.join(tmp, 'mmrec') + os.sep
            data = AmazonMM(os.path.join(tmp, 'ours'), name)[0]
        else:
            name = NAME
            data_path, data = prepare(tmp, NAME)
        config, loader, _ = mmrec_setup('LATTICE', name, data_path, BATCH,
                                        {'reg_weight': REG})
        torch.manual_seed(0)
        mm = MMRecLATTICE(config, loader)
        U, I = data['user'].num_nodes, data['item'].num_nodes
        assert (U, I) == (mm.n_users, mm.n_items), ((U, I), (mm.n_users, mm.n_items))
        model = LATTICE.from_data(data, knn_k=int(config['knn_k']),
                                  lambda_coeff=float(config['lambda_coeff']),
                                  n_ui_layers=len(config['weight_size']),
                                  n_layers=int(config['n_layers']), reg_weight=REG,
                                  reg_batch_size=BATCH)
        assert sorted(model.modalities) == ['image', 'text']
        with torch.no_grad():
            mm.modal_weight.copy_(torch.tensor([LOGITS['image'], LOGITS['text']]))
        copy_params(model, mm)
        idx = mm_index(model)
        record('modality mix softmax(w) (ours reordered)',
               maxdiff(model.item_graph.mix_weights(), mm.softmax(mm.modal_weight)[idx]))

        # (a) derived graphs ----------------------------------------------------------
        adj_pairs = [('user-item adjacency D^-1(A+I)', model.ui_graph.adj, mm.norm_adj)]
        for m, theirs in (('image', mm.image_original_adj), ('text', mm.text_original_adj)):
            ei, w = model.item_graph.original(m)
            ours = torch.sparse_coo_tensor(ei, w, (I, I)).coalesce()
            adj_pairs.append((f'frozen {m} graph (10-NN of raw, weighted, sym)', ours, theirs))
        with torch.no_grad():
            proj = {m: model.modality_projection(m) for m in model.modalities}
            for m, trs, feat in (('image', mm.image_trs, mm.image_embedding.weight),
                                 ('text', mm.text_trs, mm.text_embedding.weight)):
                theirs = build_knn_neighbourhood(build_sim(trs(feat)), topk=mm.knn_k)
                ei, w = model.item_graph.knn(proj[m])
                adj_pairs.append((f'learned {m} 10-NN graph (projected, unnormalised)',
                                  torch.sparse_coo_tensor(ei, w, (I, I)).coalesce(), theirs))
        mm.train()
        model.train()
        u_mm, i_mm = mm.forward(mm.norm_adj, build_item_graph=True)
        ei, ew = model.item_graph({m: model.modality_projection(m) for m in model.modalities})
        adj_pairs.append(('item graph S = 0.1 L + 0.9 sum_m a_m O_m',
                          torch.sparse_coo_tensor(ei, ew.detach(), (I, I)).coalesce(),
                          mm.item_adj))
        for label, ours, theirs in adj_pairs:
            record(label, maxdiff(ours, theirs))
            pa, pb = pattern(ours), pattern(theirs)
            record(f'  non-zero pattern (symmetric difference of {len(pb)})',
                   float(len(pa ^ pb)), 0.0)

        # (b) forward tables ----------------------------------------------------------
        model.pre_epoch(0)
        out = model()
        record('final user table (training forward, rebuild)', maxdiff(out.user, u_mm))
        record('final item table (training forward, rebuild)', maxdiff(out.item, i_mm))
        notes['table scale (max abs value)'] = float(torch.cat([u_mm, i_mm]).abs().max())
        mm.eval()
        model.eval()
        # at full scale a sample of users (all 19,445 x 7,050 scores in double would
        # take several GiB more)
        users = torch.arange(U if not args.folder else min(U, 2048))
        with torch.no_grad():
            s_mm = mm.full_sort_predict((users, ))
            u_e, i_e = mm.forward(mm.norm_adj, build_item_graph=True)
        record('final item table (evaluation forward)', maxdiff(model.embeddings().item, i_e))
        record('full_sort_predict vs score (all users)', maxdiff(model.score(users), s_mm))
        mm.train()
        model.train()

        # (c) loss and gradients on MMRec's batches ------------------------------------
        batches = [b.clone() for b in loader]
        notes['batches per epoch'] = f'{len(batches)} (sizes {batches[0].size(1)} ... ' \
                                     f'{batches[-1].size(1)})'
        mm.pre_epoch_processing()
        model.pre_epoch(0)
        for label, b in (('first batch: rebuild with gradient', batches[0]),
                         ('second batch: detached graph', batches[1]),
                         ('last, smaller batch: detached graph', batches[-1])):
            mm.zero_grad(set_to_none=True)
            model.zero_grad(set_to_none=True)
            loss_mm = mm.calculate_loss(b)
            loss_mm.backward()
            out = model()
            batch = BPRBatch(b[0], b[1], b[2])
            loss = model.loss(out, batch)
            loss.backward()
            record(f'loss, {label} (B={b.size(1)})', maxdiff(loss, loss_mm))
            worst, rel, where, where_rel, none = grads(model, mm)
            record(f'  gradients, absolute (max over 9 tensors; on {where})', worst)
            record(f'  gradients, relative to each tensor\'s largest entry (on {where_rel})',
                   rel, 1e-4)
            notes[f'no gradient, {label}'] = none or 'none'
            if not none:
                notes['largest gradient entry on the rebuild batch (modal_weight, image '
                      'features, image_trs.weight)'] = [
                    float(mm.modal_weight.grad.abs().max()),
                    float(mm.image_embedding.weight.grad.abs().max()),
                    float(mm.image_trs.weight.grad.abs().max())]
            if label.startswith('first'):
                u_mm, i_mm = mm.forward(mm.norm_adj, build_item_graph=False)
                _, emb_mm, _ = mm.bpr_loss(u_mm[b[0]], i_mm[b[1]], i_mm[b[2]])
                record('  L2 term', maxdiff(model.regularizer(out, batch), emb_mm))
        record('graph parameters get gradient only on the rebuild batch (mismatches)',
               float(sum(v != ['modal_weight', 'image_embedding', 'text_embedding',
                               'image_trs.weight', 'image_trs.bias', 'text_trs.weight',
                               'text_trs.bias']
                         for k, v in notes.items() if 'detached' in k)), 0.0)

        # (d) the rebuild schedule over two epochs of Adam steps ---------------------------
        opt_mm = torch.optim.Adam(mm.parameters(), lr=1e-3)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        graphs = []
        for epoch in range(2):
            mm.pre_epoch_processing()
            model.pre_epoch(epoch)
            for step, b in enumerate(batches[:STEPS]):
                opt_mm.zero_grad(set_to_none=True)
                opt.zero_grad(set_to_none=True)
                mm.calculate_loss(b).backward()
                opt_mm.step()
                model.loss(model(), BPRBatch(b[0], b[1], b[2])).backward()
                opt.step()
                if step == 0:
                    graphs.append(model.frozen_item_graph.to_dense())
                    record(f'epoch {epoch + 1}: item graph rebuilt on its first batch',
                           maxdiff(model.frozen_item_graph.to_dense(), mm.item_adj),
                           TOL if epoch == 0 else TOL_TRAINED)
            record(f'epoch {epoch + 1}: stale (detached) graph after {STEPS} steps',
                   maxdiff(model.frozen_item_graph.to_dense(), mm.item_adj),
                   TOL if epoch == 0 else TOL_TRAINED)
            with torch.no_grad():
                u_mm, i_mm = mm.forward(mm.norm_adj, build_item_graph=False)
                out = model()  # training mode, no pre_epoch: reuses the stale graph
            record(f'epoch {epoch + 1}: tables after {STEPS} Adam steps',
                   max(maxdiff(out.user, u_mm), maxdiff(out.item, i_mm)), TOL_TRAINED)
        notes['item graph change from the epoch-1 to the epoch-2 rebuild (max abs; what '
              'a wrong rebuild schedule would show)'] = maxdiff(graphs[1], graphs[0])
        worst = max(maxdiff(o, t) for _, o, t in param_pairs(model, mm))
        record('parameters after both epochs (max over 8 tensors)', worst, TOL_TRAINED)
        record('modality logits after both epochs',
               maxdiff(model.item_graph.modal_weight, mm.modal_weight[idx]), TOL_TRAINED)
        notes['modality logits moved (MMRec [image, text])'] = \
            [round(float(v), 6) for v in mm.modal_weight - torch.tensor(
                [LOGITS['image'], LOGITS['text']])]
        notes['image features moved (max abs)'] = maxdiff(mm.image_embedding.weight,
                                                          model.feature('image'))
        mm.eval()
        model.eval()
        with torch.no_grad():
            s_mm = mm.full_sort_predict((users, ))
        record('after training: full_sort_predict vs score', maxdiff(model.score(users), s_mm),
               TOL_TRAINED)
        record('after training: evaluation-rebuilt item graph',
               maxdiff(model.frozen_item_graph.to_dense(), mm.item_adj), TOL_TRAINED)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    extra = {'reference': 'enoche/MMRec src/models/lattice.py',
             'dataset': {'folder': args.folder or 'generated', 'users': U, 'items': I,
                         **{f'{m}_dim': int(data[m].x.size(1)) for m in ('image', 'text')},
                         'train_interactions': int(data['user', 'rates', 'item']
                                                   .edge_index.size(1))},
             'settings': {'batch_size': BATCH, 'reg_weight': REG, 'adam_lr': 1e-3,
                          'adam_steps_per_epoch': STEPS, 'initial_logits': LOGITS,
                          'knn_k': int(config['knn_k']),
                          'lambda_coeff': float(config['lambda_coeff']),
                          'n_layers': int(config['n_layers']),
                          'weight_size': list(config['weight_size'])},
             'notes': notes}
    for k, v in notes.items():
        print(f'# {k}: {v}')
    return report(args.out or 'lattice', rows, extra)


if __name__ == '__main__':
    sys.exit(main())
