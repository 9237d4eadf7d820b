r"""Numerical equivalence of our :class:`~mrdib_pyg.nn.models.lgmrec.LGMRec` with MMRec's own
``models/lgmrec.py``, on a small MMRec-format dataset written to a temporary folder.

Run (from MMRec's ``src/``, under MMRec's venv, with our package on the path)::

    cd /tmp/mmrec/src && PYTHONPATH=.:/work/main /tmp/mmvenv/bin/python \
        /work/main/benchmarks/equivalence/lgmrec.py

Both sides read the same files (:func:`harness.prepare`: MMRec through its Config /
RecDataset / TrainDataLoader, ours through :class:`~mrdib_pyg.data.AmazonMM`; both keep the
file's ids, users first, items offset by :math:`U`). MMRec's initial parameters (ID tables,
``item_image_trs`` / ``item_text_trs``, ``v_hyper`` / ``t_hyper``) are copied into ours.

LGMRec is random in every forward pass (Gumbel noise on the hyperedge assignments, dropout
on them in training; MMRec draws the Gumbel noise in evaluation too). Our model built with
``noise_rng='global'`` and ``order=['image', 'text']`` makes the same torch calls on the
global stream in MMRec's order (Gumbel: image items, image users, text items, text users;
then dropout: image items, image users, text items, text users), so re-seeding torch before
each side's forward makes the draws identical, and the *whole* model is compared, noise
included:

(a) the derived graphs: MMRec's ``norm_adj``, ``adj`` (raw :math:`R`) and
    ``adj * num_inters[:U]`` (user mean) against our declared ``UserItemGraph(norm='sym')``,
    ``UserItemGraph(norm='none', block='user_item')`` and ``UserItemGraph(norm='row',
    block='user_item')`` (values and non-zero patterns);
(b) the forward tables in training mode at the same seed: CGE, each modality's MGE (our
    per-modality outputs), the four hypergraph tables, the final user / item tables; in
    evaluation mode MMRec's ``full_sort_predict`` against our ``score`` at the same seed;
(c) the training loss on MMRec's own batches (a full one and the smaller last one) at the
    same seed, its BPR / hypergraph-InfoNCE / regulariser parts, and every parameter's
    gradient; then five Adam steps (lr 1e-3), each at the same seed, and the tables after;
(d) the randomness itself with our default stream (``noise_rng='model'``, which draws other
    numbers than MMRec): over N noisy training forwards per side, the mean and standard
    deviation of the final tables agree within Monte Carlo error (reported as the largest
    difference in units of its standard error), and the dropout keeps a share
    ``keep_rate`` of the assignment entries, scaled by ``1/keep_rate``, on both sides.

Prints a table (quantity, max abs diff, tolerance) and writes
``benchmarks/results/equivalence_lgmrec.json``; exits with status 1 if a difference
exceeds its tolerance.
"""
import os
import shutil
import sys
import tempfile
import warnings

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import dense, maxdiff, mmrec_setup, pattern, prepare, report  # noqa: E402

NAME = 'eqlgmrec'
BATCH = 256
TOL = 1e-5
#: After several Adam steps (Adam divides each update by the gradient's running RMS, so
#: float-level differences of tiny gradients show up, far below the tables' scale ~1).
TOL_TRAINED = 1e-4
STEPS = 5
DRAWS = 300
#: Monte Carlo check: largest |mean difference| / standard error over all table entries.
#: With ~64k entries compared, the maximum of |N(0, 1)| is about 4.5; 6 leaves margin.
TOL_SIGMAS = 6.0
OVERRIDES = {  # LGMRec.yaml's grids, each at its single (Baby) value
    'n_ui_layers': 2, 'n_mm_layers': 2, 'n_hyper_layer': 1, 'hyper_num': 4,
    'keep_rate': 0.5, 'alpha': 0.3, 'cl_weight': 1e-4, 'reg_weight': 1e-6,
}


def param_pairs(model, mm):
    r"""(name, ours, MMRec's) for every parameter."""
    return [('user_embedding', model.user_emb, mm.user_embedding.weight),
            ('item_id_embedding', model.item_emb, mm.item_id_embedding.weight),
            ('item_image_trs', model.mge['image'].weight, mm.item_image_trs),
            ('item_text_trs', model.mge['text'].weight, mm.item_text_trs),
            ('v_hyper', model.ghe['image'].assignment.weight, mm.v_hyper),
            ('t_hyper', model.ghe['text'].assignment.weight, mm.t_hyper)]


def mmrec_parts(mm, b):
    r"""MMRec's loss parts on batch :obj:`b`, recomputed its way (one forward)."""
    u_all, i_all, (uv, iv, ut, it) = mm.forward()
    users, pos, neg = b[0], b[1], b[2]
    u, p, n = u_all[users], i_all[pos], i_all[neg]
    bpr = mm.bpr_loss(u, p, n)
    hcl = (mm.ssl_triple_loss(uv[users], ut[users], ut)
           + mm.ssl_triple_loss(iv[pos], it[pos], it))
    return bpr, hcl, mm.reg_loss(u, p, n)


def main() -> int:
    torch.set_num_threads(1)
    warnings.filterwarnings('ignore')
    from models.lgmrec import LGMRec as MMRecLGMRec

    from mrdib_pyg.data.sampling import BPRBatch
    from mrdib_pyg.nn.models.lgmrec import LGMRec

    tmp = tempfile.mkdtemp(prefix='eq_lgmrec_')
    rows = []
    extra = {'reference': 'enoche/MMRec src/models/lgmrec.py'}
    try:
        data_path, data = prepare(tmp, NAME)
        config, loader, _ = mmrec_setup('LGMRec', NAME, data_path, BATCH, OVERRIDES)
        torch.manual_seed(0)
        mm = MMRecLGMRec(config, loader)
        U, I = data['user'].num_nodes, data['item'].num_nodes
        assert (U, I) == (mm.n_users, mm.n_items), ((U, I), (mm.n_users, mm.n_items))
        kw = {k: OVERRIDES[k] for k in OVERRIDES}
        model = LGMRec.from_data(data, order=['image', 'text'], noise_rng='global', **kw)
        with torch.no_grad():
            for _, ours, theirs in param_pairs(model, mm):
                ours.copy_(theirs)
        extra.update(dataset={'users': U, 'items': I, 'image_dim': 64, 'text_dim': 32,
                              'train_interactions':
                                  int(data['user', 'rates', 'item'].edge_index.size(1))},
                     settings={**OVERRIDES, 'batch_size': BATCH, 'adam_steps': STEPS,
                               'draws': DRAWS, 'tau': mm.tau})

        # (a) derived graphs
        R_mm = dense(mm.adj)
        mean_mm = R_mm * mm.num_inters[:U]
        for label, ours, theirs in (
                ("norm_adj vs UserItemGraph(norm='sym')", model.graph.to_dense(),
                 dense(mm.norm_adj)),
                ("adj (R) vs UserItemGraph(norm='none', block='user_item')",
                 model.user_item.to_dense(), R_mm),
                ("adj*num_inters vs UserItemGraph(norm='row', block='user_item')",
                 model.user_mean.to_dense(), mean_mm)):
            rows.append((label, maxdiff(ours, theirs), TOL))
            rows.append(('  non-zero pattern (symmetric difference)',
                         float(len(pattern(ours) ^ pattern(theirs.to_sparse()))), 0.0))

        # (b) forward tables, same seed on both sides
        mm.train()
        model.train()
        with torch.no_grad():
            rows.append(('CGE (deterministic)', maxdiff(model().extras['cge'], mm.cge()), TOL))
            torch.manual_seed(11)
            u_mm, i_mm, (uv, iv, ut, it) = mm.forward()
            torch.manual_seed(11)
            out = model()
            for m, tag in (('image', 'v'), ('text', 't')):
                mge_mm = mm.mge(tag)
                mo = out.modalities[m]
                rows.append((f'MGE {m}: user | item (= modalities[{m!r}])',
                             max(maxdiff(mo.user, mge_mm[:U]), maxdiff(mo.item, mge_mm[U:])),
                             TOL))
            for label, ours, theirs in (('hyper user image', 'hyper_user/image', uv),
                                        ('hyper item image', 'hyper_item/image', iv),
                                        ('hyper user text', 'hyper_user/text', ut),
                                        ('hyper item text', 'hyper_item/text', it)):
                # sums over many items (scale ~10): relative to the largest entry
                scale = float(theirs.abs().max())
                rows.append((f'{label} (seed 11, train), / max|entry| {scale:.1f}',
                             maxdiff(out.extras[ours], theirs) / scale, TOL))
            rows.append(('final user table (seed 11, train mode)', maxdiff(out.user, u_mm), TOL))
            rows.append(('final item table (seed 11, train mode)', maxdiff(out.item, i_mm), TOL))
            extra['table_scale'] = float(torch.cat([u_mm, i_mm]).abs().max())
            mm.eval()
            model.eval()
            users = torch.arange(U)
            torch.manual_seed(12)
            s_mm = mm.full_sort_predict((users, ))
            torch.manual_seed(12)
            rows.append(('full_sort_predict vs score (eval, seed 12, Gumbel noise)',
                         maxdiff(model.score(users), s_mm), TOL))
            mm.train()
            model.train()

        # (c) loss, parts and gradients on MMRec's batches; then Adam steps
        batches = [b.clone() for b in loader]
        extra['batches'] = [int(b.size(1)) for b in batches]
        for label, b in (('full batch', batches[0]), ('last batch', batches[-1])):
            batch = BPRBatch(b[0], b[1], b[2])
            mm.zero_grad()
            model.zero_grad()
            torch.manual_seed(21)
            loss_mm = mm.calculate_loss(b)
            loss_mm.backward()
            torch.manual_seed(21)
            out = model()
            loss = model.loss(out, batch)
            loss.backward()
            rows.append((f'loss, {label} (B={b.size(1)}, value {float(loss_mm):.5f})',
                         maxdiff(loss, loss_mm), TOL))
            with torch.no_grad():
                torch.manual_seed(21)
                bpr_mm, hcl_mm, reg_mm = mmrec_parts(mm, b)
                u, p, n = out.user[b[0]], out.item[b[1]], out.item[b[2]]
                bpr = -F.logsigmoid((u * p).sum(-1) - (u * n).sum(-1)).mean()
                hcl = model.contrastive_loss(out, batch)
                rows.append(('  BPR term', maxdiff(bpr, bpr_mm), TOL))
                # a sum over 2B rows of ~log(U) each: compare relative to its size
                rows.append((f'  hypergraph InfoNCE, relative (value {float(hcl_mm):.2f})',
                             maxdiff(hcl, hcl_mm) / float(hcl_mm.abs()), TOL))
                rows.append(('  regulariser (sum of norms / B)',
                             maxdiff(model.regularizer(out, batch) / model.reg_weight, reg_mm),
                             TOL))
            worst, name = 0.0, ''
            for pname, ours, theirs in param_pairs(model, mm):
                d = maxdiff(ours.grad, theirs.grad)
                if d >= worst:
                    worst, name = d, pname
            rows.append((f'  gradients, max over 6 tensors (largest: {name})', worst, TOL))

        opt_mm = torch.optim.Adam(mm.parameters(), lr=1e-3)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        for step, b in enumerate(batches[:STEPS]):
            opt_mm.zero_grad()
            opt.zero_grad()
            torch.manual_seed(100 + step)
            mm.calculate_loss(b).backward()
            opt_mm.step()
            torch.manual_seed(100 + step)
            model.loss(model(), BPRBatch(b[0], b[1], b[2])).backward()
            opt.step()
        with torch.no_grad():
            torch.manual_seed(31)
            u_mm, i_mm, _ = mm.forward()
            torch.manual_seed(31)
            out = model()
        rows.append((f'final user table after {STEPS} Adam steps', maxdiff(out.user, u_mm),
                     TOL_TRAINED))
        rows.append((f'final item table after {STEPS} Adam steps', maxdiff(out.item, i_mm),
                     TOL_TRAINED))
        rows.append((f'parameters after {STEPS} Adam steps (max over 6)',
                     max(maxdiff(o, t) for _, o, t in param_pairs(model, mm)), TOL_TRAINED))

        # (d) the distribution of the noisy forward, our own stream against MMRec's
        own = LGMRec.from_data(data, order=['image', 'text'], noise_rng='model',
                               noise_seed=1234, **kw)
        with torch.no_grad():
            for _, ours, theirs in param_pairs(own, mm):
                ours.copy_(theirs)
        own.train()

        def moments(fn):
            s = s2 = None
            for _ in range(DRAWS):
                x = fn()
                s = x if s is None else s + x
                s2 = x * x if s2 is None else s2 + x * x
            mean = s / DRAWS
            var = (s2 / DRAWS - mean * mean).clamp_min(0) * DRAWS / (DRAWS - 1)
            return mean.double(), var.double()

        with torch.no_grad():
            torch.manual_seed(41)
            m_mm, v_mm = moments(lambda: torch.cat(mm.forward()[:2]))

            def own_tables():
                o = own()
                return torch.cat([o.user, o.item])

            m_own, v_own = moments(own_tables)
        se = ((v_mm + v_own) / DRAWS).sqrt().clamp_min(1e-12)
        sigmas = float(((m_mm - m_own).abs() / se).max())
        rows.append((f'(d) E[final tables] over {DRAWS} draws, own stream vs MMRec: '
                     f'max |diff| / s.e. (sigmas)', sigmas, TOL_SIGMAS))
        # one entry's sample std has a ~4% Monte Carlo error at 300 draws; its mean over
        # all entries is the stable statistic
        sd_rel = abs(float(v_own.sqrt().mean() / v_mm.sqrt().mean()) - 1)
        rows.append(('(d) mean per-entry std of final tables: relative diff', sd_rel, 0.02))
        extra['mean_abs_table'] = float(m_mm.abs().mean())
        extra['mean_std_table'] = float(v_mm.sqrt().mean())
        # dropout statistics of the assignments: share kept and the scale of kept entries
        keep = OVERRIDES['keep_rate']
        x = torch.rand(U, 4) + 0.5
        g = own.noise_generator()
        from mrdib_pyg.nn.conv.hypergraph import assignment_dropout
        kept_own, kept_mm, scale_own = [], [], 0.0
        for _ in range(DRAWS):
            y = assignment_dropout(x, keep, g)
            kept_own.append(float((y != 0).float().mean()))
            scale_own = max(scale_own, float((y[y != 0] / x[y != 0] - 1 / keep).abs().max()))
            z = mm.drop(x)
            kept_mm.append(float((z != 0).float().mean()))
        share_own = sum(kept_own) / DRAWS
        share_mm = sum(kept_mm) / DRAWS
        se_share = (keep * (1 - keep) / (DRAWS * x.numel())) ** 0.5
        rows.append((f'(d) dropout kept share: ours {share_own:.4f}, MMRec {share_mm:.4f} '
                     f'(keep_rate {keep}): |diff| in s.e.',
                     abs(share_own - share_mm) / (2 ** 0.5 * se_share), TOL_SIGMAS))
        rows.append(('(d) dropout scale of kept entries vs 1/keep_rate', scale_own, 1e-5))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return report('lgmrec', rows, extra)


if __name__ == '__main__':
    sys.exit(main())
