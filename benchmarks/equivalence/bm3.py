r"""Numerical equivalence of our :class:`~mrdib_pyg.nn.models.bm3.BM3` with MMRec's own
``models/bm3.py``, on a small MMRec-format dataset written to a temporary folder.

Run (from MMRec's ``src/``, under MMRec's venv, with our package on the path)::

    cd /tmp/mmrec/src && PYTHONPATH=.:/work/main /tmp/mmvenv/bin/python \
        /work/main/benchmarks/equivalence/bm3.py

Both sides read the same files (:func:`harness.prepare`: MMRec through its Config /
RecDataset / TrainDataLoader with ``use_neg_sampling: False``, ours through
:class:`~mrdib_pyg.data.AmazonMM`, file ids kept on both sides). MMRec's initial parameters
(ID tables, predictor, projections and the trained feature tables) are copied into ours,
then, for MMRec's default setting (n_layers 1, dropout 0.3, reg_weight 0.1) and the other
grid corner (n_layers 2, dropout 0.5, reg_weight 0.01):

(a) the derived graph: MMRec's ``norm_adj`` against our declared
    ``UserItemGraph(norm='sym')`` (values and non-zero pattern);
(b) the forward tables: the online user / item tables (MMRec's ``forward``), the predicted
    tables and the modality projections, and MMRec's ``full_sort_predict`` against our
    cached ``score``;
(c) the training loss on MMRec's own (user, positive) batches (a full one, the smaller
    last one, and a 40-row slice, whose gradient reaches few feature rows): with
    target dropout 0 (deterministic), and with the configured dropout under the same
    torch seed on both sides (both call :func:`F.dropout` on tables of the same
    shapes in the same order -- user, item, text, image -- so they draw the same masks),
    and every parameter's gradient; our batch carries a ``neg`` of out-of-range ids, which
    would fail if BM3's loss read it;
(d) the per-batch randomness (target dropout): on independent random streams (MMRec's
    seeds and ours disjoint), the mean of the training loss over many draws agrees within
    sampling noise, and our dropout views keep a share :math:`1 - p` of the entries scaled
    by :math:`1 / (1 - p)`; then the training dynamics: a few Adam steps (lr 1e-3) on
    MMRec's batches, seeded alike, and the tables and trained features after them.

Prints a table (quantity, max abs diff, tolerance) and writes
``benchmarks/results/equivalence_bm3.json``. Exits with status 1 if a difference exceeds
its tolerance.
"""
import os
import shutil
import sys
import tempfile
import warnings

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import dense, maxdiff, mmrec_setup, pattern, prepare, report  # noqa: E402

NAME = 'eqbm3'
BATCH = 256
TOL = 1e-5
#: After several Adam steps: Adam divides each update by the gradient's running RMS, so
#: float-level differences of tiny gradients become visible.
TOL_TRAINED = 1e-4
STEPS = 5
DRAWS = 300
SETTINGS = ({'n_layers': 1, 'dropout': 0.3, 'reg_weight': 0.1},   # MMRec's defaults
            {'n_layers': 2, 'dropout': 0.5, 'reg_weight': 0.01})  # the other grid corner


def param_pairs(model, mm):
    r"""(name, ours, MMRec's) for every parameter of both models."""
    pairs = [('user_embedding', model.user_emb, mm.user_embedding.weight),
             ('item_id_embedding', model.item_emb, mm.item_id_embedding.weight),
             ('predictor.weight', model.bootstrap.predictor.weight, mm.predictor.weight),
             ('predictor.bias', model.bootstrap.predictor.bias, mm.predictor.bias),
             ('image_embedding', model.feature_emb['image'], mm.image_embedding.weight),
             ('text_embedding', model.feature_emb['text'], mm.text_embedding.weight)]
    for m, trs in (('image', mm.image_trs), ('text', mm.text_trs)):
        for p in ('weight', 'bias'):
            pairs.append((f'{m}_trs.{p}', getattr(model.trs[m], p), getattr(trs, p)))
    return pairs


def copy_params(model, mm) -> None:
    r"""MMRec's BM3 tensors -> ours."""
    with torch.no_grad():
        for _, ours, theirs in param_pairs(model, mm):
            ours.copy_(theirs)


def build(data_path, data, setting):
    from models.bm3 import BM3 as MMRecBM3

    from mrdib_pyg.nn.models.bm3 import BM3
    config, loader, _ = mmrec_setup('BM3', NAME, data_path, BATCH, dict(setting))
    assert not config['use_neg_sampling']
    torch.manual_seed(0)
    mm = MMRecBM3(config, loader)
    model = BM3.from_data(data, n_layers=int(config['n_layers']),
                          dropout=float(config['dropout']),
                          reg_weight=float(config['reg_weight']),
                          cl_weight=float(config['cl_weight']))
    assert (model.num_users, model.num_items) == (mm.n_users, mm.n_items)
    assert model.modalities == ['text', 'image']
    copy_params(model, mm)
    return mm, model, loader


def to_batch(b):
    from mrdib_pyg.data.sampling import BPRBatch
    # BM3 is negative-free: a neg of out-of-range ids fails loudly if the loss reads it.
    return BPRBatch(b[0], b[1], torch.full_like(b[1], 10 ** 9))


def main() -> int:
    torch.set_num_threads(1)
    warnings.filterwarnings('ignore')
    rows, notes = [], {}

    def record(quantity, diff, tol=TOL, note=''):
        rows.append((quantity, float(diff), tol))
        if note:
            notes[quantity] = note

    tmp = tempfile.mkdtemp(prefix='eq_bm3_')
    try:
        data_path, data = prepare(tmp, NAME)
        for k, setting in enumerate(SETTINGS):
            tag = f"[L={setting['n_layers']} p={setting['dropout']} reg={setting['reg_weight']}]"
            mm, model, loader = build(data_path, data, setting)
            U, I = model.num_users, model.num_items
            p = model.dropout

            # (a) the derived graph
            if k == 0:
                a, b = model.graph.to_dense(), dense(mm.norm_adj)
                pa, pb = pattern(model.graph.adj), pattern(mm.norm_adj)
                record('(a) user-item adjacency (sym-norm), values', maxdiff(a, b))
                record('(a) user-item adjacency, non-zero pattern (symmetric difference)',
                       len(pa ^ pb), tol=0.0)

            # (b) forward tables
            mm.train()
            model.train()
            u_mm, i_mm = mm.forward()
            out = model()
            record(f'(b) {tag} online user table', maxdiff(out.extras['user_online'], u_mm))
            record(f'(b) {tag} online item table (i_g + item ID)',
                   maxdiff(out.extras['item_online'], i_mm))
            record(f'(b) {tag} predicted user table', maxdiff(out.user, mm.predictor(u_mm)))
            record(f'(b) {tag} predicted item table', maxdiff(out.item, mm.predictor(i_mm)))
            for m, trs, emb in (('text', mm.text_trs, mm.text_embedding),
                                ('image', mm.image_trs, mm.image_embedding)):
                record(f'(b) {tag} {m} projection (modality output)',
                       maxdiff(out.modalities[m].item, trs(emb.weight)))
            mm.eval()
            model.eval()
            users = torch.arange(U)
            with torch.no_grad():
                s_mm = mm.full_sort_predict((users, ))
            record(f'(b) {tag} full_sort_predict vs score (all users)',
                   maxdiff(model.score(users), s_mm))
            mm.train()
            model.train()

            # (c) loss and gradients on MMRec's own batches
            batches = [b.clone() for b in loader]
            assert batches[0].size(0) == 2, 'MMRec gives BM3 (user, positive) rows only'
            full, last = batches[0], batches[-1]
            # Our projections' backward multiplies only the rows with a gradient (the
            # batch's distinct items): nearly every item in a 256-row batch here, a few in
            # a 40-row slice.
            for label, b in (('full batch', full), ('last batch', last),
                             ('40-row slice', full[:, :40])):
                B = b.size(1)
                n = int(b[1].unique().numel())
                label = f'{label}, {n} of {I} items'
                with torch.no_grad():  # deterministic: no target dropout
                    mm.dropout, model.bootstrap.dropout = 0.0, 0.0
                    d = maxdiff(model.loss(model(), to_batch(b)), mm.calculate_loss(b))
                    mm.dropout, model.bootstrap.dropout = p, p
                record(f'(c) {tag} loss, B={B} ({label}), dropout 0', d)
                mm.zero_grad()
                model.zero_grad()
                torch.manual_seed(100 + k)
                loss_mm = mm.calculate_loss(b)
                loss_mm.backward()
                torch.manual_seed(100 + k)
                loss = model.loss(model(), to_batch(b))
                loss.backward()
                record(f'(c) {tag} loss, B={B}, dropout {p}, same seed',
                       maxdiff(loss, loss_mm), note=f'value {float(loss_mm):.6f}')
                worst, name = 0.0, ''
                for pname, ours, theirs in param_pairs(model, mm):
                    if (ours.grad is None) != (theirs.grad is None):
                        worst, name = float('inf'), pname
                        break
                    dd = maxdiff(ours.grad, theirs.grad)
                    if dd >= worst:
                        worst, name = dd, pname
                record(f'(c) {tag} gradients, B={B}, same seed (max over '
                       f'{len(param_pairs(model, mm))} tensors)', worst,
                       note=f'largest on {name}')
                # the trainer's path: projections of the batch's items only
                model.zero_grad()
                torch.manual_seed(100 + k)
                # (forward_batch encodes the negatives too, for plug-ins: in-range ids here)
                fb = to_batch(b)._replace(neg=b[1])
                loss_fb = model.loss(*model.forward_batch(fb))
                loss_fb.backward()
                record(f'(c) {tag} loss, B={B}, same seed, forward_batch (trainer path)',
                       maxdiff(loss_fb, loss_mm))
                worst = max(maxdiff(ours.grad, theirs.grad)
                            for _, ours, theirs in param_pairs(model, mm)
                            if ours.grad is not None)
                record(f'(c) {tag} gradients, B={B}, same seed, forward_batch', worst)

            # (d) the target dropout on independent streams
            with torch.no_grad():
                out = model()
                lm, lo = [], []
                for s in range(DRAWS):
                    torch.manual_seed(s)
                    lm.append(float(mm.calculate_loss(full)))
                    torch.manual_seed(10 ** 6 + s)
                    lo.append(float(model.loss(out, to_batch(full))))
            lm, lo = torch.tensor(lm, dtype=torch.float64), torch.tensor(lo, dtype=torch.float64)
            se = ((lm.var() + lo.var()) / DRAWS).sqrt()
            z = float((lm.mean() - lo.mean()).abs() / se)
            record(f'(d) {tag} mean loss over {DRAWS} draws, independent streams',
                   abs(float(lm.mean() - lo.mean())), tol=float(5 * se),
                   note=f'MMRec {float(lm.mean()):.5f} (sd {float(lm.std()):.5f}), ours '
                        f'{float(lo.mean()):.5f} (sd {float(lo.std()):.5f}), |z| = {z:.2f}; '
                        f'tolerance 5 standard errors')
            record(f'(d) {tag} loss sd over draws, ratio - 1',
                   abs(float(lo.std() / lm.std()) - 1), tol=0.25,
                   note=f'standard error of the ratio of two sds of {DRAWS} draws: '
                        f'about {float(1 / (DRAWS - 1) ** 0.5):.2f}')
            from mrdib_pyg.nn.conv.latent_dropout import latent_dropout
            torch.manual_seed(7)
            view = latent_dropout(torch.ones(U + 3 * I, model.embedding_dim), p)
            kept = float((view != 0).double().mean())
            record(f'(d) {tag} dropout view: kept share vs 1 - p', abs(kept - (1 - p)), tol=0.01,
                   note=f'{kept:.4f} of {view.numel()} entries')
            record(f'(d) {tag} dropout view: kept value vs 1 / (1 - p)',
                   float((view[view != 0] - 1 / (1 - p)).abs().max()), tol=1e-6)

            # (d) training dynamics, seeded alike
            opt_mm = torch.optim.Adam(mm.parameters(), lr=1e-3)
            opt = torch.optim.Adam(model.parameters(), lr=1e-3)
            for step, b in enumerate(batches[:STEPS]):
                opt_mm.zero_grad()
                opt.zero_grad()
                torch.manual_seed(1000 + step)
                mm.calculate_loss(b).backward()
                opt_mm.step()
                torch.manual_seed(1000 + step)
                model.loss(model(), to_batch(b)).backward()
                opt.step()
            with torch.no_grad():
                u_mm, i_mm = mm.forward()
                out = model()
                record(f'(d) {tag} predicted user table after {STEPS} Adam steps',
                       maxdiff(out.user, mm.predictor(u_mm)), tol=TOL_TRAINED)
                record(f'(d) {tag} predicted item table after {STEPS} Adam steps',
                       maxdiff(out.item, mm.predictor(i_mm)), tol=TOL_TRAINED)
                for m, emb in (('image', mm.image_embedding), ('text', mm.text_embedding)):
                    record(f'(d) {tag} trained {m} features after {STEPS} Adam steps',
                           maxdiff(model.modality_features(m), emb.weight), tol=TOL_TRAINED,
                           note=f'moved {maxdiff(model.modality_features(m), data[m].x):.2e} from '
                                f'the raw features')
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    status = report('bm3', rows, extra={
        'reference': 'enoche/MMRec src/models/bm3.py',
        'dataset': {'users': U, 'items': I, 'image_dim': 64, 'text_dim': 32,
                    'train_interactions': int(data['user', 'rates', 'item'].edge_index.size(1))},
        'settings': {'batch_size': BATCH, 'adam_steps': STEPS, 'draws': DRAWS,
                     'grid_points': list(SETTINGS), 'cl_weight': 2.0},
        'notes': notes})
    for q, n in notes.items():
        print(f'  {q}: {n}')
    return status


if __name__ == '__main__':
    sys.exit(main())
