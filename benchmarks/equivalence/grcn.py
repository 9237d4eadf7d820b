r"""Numerical equivalence of our :class:`~mrdib_pyg.nn.models.grcn.GRCN` with MMRec's own
``models/grcn.py``, on a small MMRec-format dataset written to a temporary folder.

Run (from MMRec's ``src/``, under MMRec's venv; our package on the path)::

    cd /tmp/mmrec/src && PYTHONPATH=.:/work/main /tmp/mmvenv/bin/python \
        /work/main/benchmarks/equivalence/grcn.py

MMRec's GRCN calls ``.cuda()`` in its loss; this script runs it on CPU by monkeypatching
``torch.Tensor.cuda`` to return the tensor itself (nothing else of MMRec is changed).

Both models read the same files (:func:`harness.prepare`: MMRec through its
Config/RecDataset/TrainDataLoader, ours through :class:`~mrdib_pyg.data.AmazonMM`; both keep
the file's ids). MMRec keeps its edges in file order, ours are sorted by (user, item): every
per-edge quantity is compared after mapping MMRec's edges onto ours by their (user, item)
key. MMRec's initial tensors are copied into ours, then we compare:

(a) the graphs: MMRec's training ``edge_index`` against our declared ``TrainingEdges``; the
    attention of every modality on every edge in both directions; the refined and pruned
    edge weights MMRec's id network receives (captured from its call);
(b) the forward tables: each modality's routing-network output, the id network's output and
    the concatenated user/item tables; MMRec's routing rounds (its ``GATConv`` on the
    directed edges) give all-zero user rows, i.e. the preference never changes, and our
    ``route_to_users=True`` is compared with MMRec's own ``GATConv`` run on the reversed
    edges (the routing the paper describes);
(c) the training loss on one of MMRec's own training batches (BPR part, regulariser) and
    the gradient of every parameter;
(d) GRCN has no per-epoch randomness (MMRec's ``dropout_adj`` runs with ``p = 0`` on every
    forward); its per-forward edge "selection" is the ReLU pruning, so we compare the
    pruned-edge counts and the kept weights' sums in both directions at the start and after
    each of five Adam steps on MMRec's batches, the weights after them, and MMRec's ranking
    with the last training batch's tables against ours with
    ``score_last_train_forward=True``.

Prints a table (quantity, max abs diff) and writes ``benchmarks/results/equivalence_grcn.json``.
Exits with status 1 if a difference exceeds its tolerance.
"""
import os
import shutil
import sys
import tempfile

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import maxdiff, mmrec_setup, prepare, report  # noqa: E402

NAME = 'eqgrcn'
TOL = 1e-5
#: After Adam steps: Adam divides each update by the gradient's running RMS, so
#: float-level differences of tiny gradients become visible (the tables are of order 1).
TOL_TRAINED = 1e-4
REG_WEIGHT = 0.1  # MMRec's first grid value; non-zero, so the regulariser is compared
BATCH = 256
STEPS = 5


def copy_params(model, mm) -> None:
    r"""MMRec's GRCN tensors -> ours (image = MMRec's ``v_gcn``, text = ``t_gcn``; the
    confidence columns are in the same order, image then text)."""
    assert model.modalities == ['image', 'text']
    with torch.no_grad():
        model.id_embedding.copy_(mm.id_gcn.id_embedding)
        model.refiner.confidence.copy_(mm.model_specific_conf)
        for m, gcn in (('image', mm.v_gcn), ('text', mm.t_gcn)):
            conv = model.refiner.convs[m]
            conv.preference.copy_(gcn.preference)
            conv.projection.weight.copy_(gcn.MLP.weight)
            conv.projection.bias.copy_(gcn.MLP.bias)


def param_pairs(model, mm):
    r"""(name, our parameter, MMRec's parameter) for every parameter."""
    out = [('id_embedding', model.id_embedding, mm.id_gcn.id_embedding),
           ('confidence', model.refiner.confidence, mm.model_specific_conf)]
    for m, gcn in (('image', mm.v_gcn), ('text', mm.t_gcn)):
        conv = model.refiner.convs[m]
        out += [(f'{m}.preference', conv.preference, gcn.preference),
                (f'{m}.projection.weight', conv.projection.weight, gcn.MLP.weight),
                (f'{m}.projection.bias', conv.projection.bias, gcn.MLP.bias)]
    return out


class Capture:
    r"""Records the arguments of MMRec's id network (the refined edge weights) and the
    outputs of its routing networks on every forward, without changing them."""

    def __init__(self, mm):
        self.calls = {}
        for key, module in (('id', mm.id_gcn), ('image', mm.v_gcn), ('text', mm.t_gcn)):
            module.register_forward_hook(self.hook(key), with_kwargs=True)

    def hook(self, key):
        def record(module, args, kwargs, output):
            self.calls[key] = (args, output)
        return record


def main() -> int:
    torch.set_num_threads(1)
    torch.Tensor.cuda = lambda self, *args, **kwargs: self  # MMRec's GRCN hard-codes .cuda()
    from models.grcn import GRCN as MMRecGRCN

    from mrdib_pyg.data.sampling import BPRBatch
    from mrdib_pyg.nn.models.grcn import GRCN

    tmp = tempfile.mkdtemp(prefix='eq_grcn_')
    rows, extra = [], {}
    try:
        data_path, data = prepare(tmp, NAME)
        config, loader, _ = mmrec_setup('GRCN', NAME, data_path, BATCH,
                                        {'reg_weight': REG_WEIGHT, 'learning_rate': 1e-3})
        torch.manual_seed(0)
        mm = MMRecGRCN(config, loader)
        capture = Capture(mm)
        U, I = data['user'].num_nodes, data['item'].num_nodes
        assert (U, I) == (mm.n_users, mm.n_items), ((U, I), (mm.n_users, mm.n_items))

        def ours(**kwargs):
            model = GRCN.from_data(data, reg_weight=REG_WEIGHT,
                                   **{'route_to_users': False, **kwargs})
            copy_params(model, mm)
            return model

        model = ours()
        edges = model.edges

        # (a) graphs: the training edges, then MMRec's per-edge tensors in our edge order
        mm_u, mm_i = mm.edge_index[0], mm.edge_index[1] - U
        e_mm = set(zip(mm_u.tolist(), mm_i.tolist()))
        e_ours = set(zip(edges.user.tolist(), edges.item.tolist()))
        rows.append(('training edges (symmetric difference size)', float(len(e_mm ^ e_ours)),
                     0.0))
        E = edges.num_edges
        extra['num_edges'] = E
        to_ours = torch.sort(mm_u * I + mm_i).indices  # MMRec's position of our edge e
        assert torch.equal(mm_u[to_ours], edges.user) and torch.equal(mm_i[to_ours], edges.item)

        def split(per_edge_2e):
            r"""MMRec's [2E] vector over cat(edges, reversed edges) -> ours
            (to_item: the user -> item half, to_user: the item -> user half)."""
            v = per_edge_2e.reshape(-1)
            return v[:E][to_ours], v[E:][to_ours]

        rep_mm = mm.forward()
        graph = model.refine()
        for m in ('image', 'text'):
            att_item, att_user = split(capture.calls[m][1][1])
            rows.append((f'{m} attention, item -> user messages',
                         maxdiff(graph.modalities[m].att_user, att_user), TOL))
            rows.append((f'{m} attention, user -> item messages',
                         maxdiff(graph.modalities[m].att_item, att_item), TOL))
        mm_to_item, mm_to_user = split(capture.calls['id'][0][1])
        rows.append(('refined edge weights, item -> user', maxdiff(graph.to_user, mm_to_user),
                     TOL))
        rows.append(('refined edge weights, user -> item', maxdiff(graph.to_item, mm_to_item),
                     TOL))

        # (b) forward tables
        out = model()
        for m in ('image', 'text'):
            theirs = capture.calls[m][1][0]
            mo = out.modalities[m]
            rows.append((f'{m} routing-network output', maxdiff(torch.cat([mo.user, mo.item]),
                                                                 theirs), TOL))
        id_mm = capture.calls['id'][1]
        ids = model.id_embedding.split([U, I])
        id_user, id_item = model.id_gcn(ids, edges, graph.to_user, graph.to_item)
        rows.append(('id network output', maxdiff(torch.cat([id_user, id_item]), id_mm), TOL))
        rows.append(('user table [id | image | text]', maxdiff(out.user, rep_mm[:U]), TOL))
        rows.append(('item table [id | image | text]', maxdiff(out.item, rep_mm[U:]), TOL))
        extra['table_scale_max_abs'] = float(rep_mm.detach().abs().max())
        # MMRec's routing: its GATConv on the (user, item) edges reaches the items only.
        g = mm.v_gcn
        with torch.no_grad():
            feat = torch.nn.functional.normalize(
                torch.nn.functional.leaky_relu(g.MLP(g.features)))
            pref = torch.nn.functional.normalize(g.preference)
            h = g.conv_embed_1(torch.cat([pref, feat]), mm.edge_index)
        rows.append(('MMRec routing message, user rows (max abs: no-op)',
                     float(h[:U].abs().max()), 0.0))
        extra['mmrec_routing_message_item_rows_max_abs'] = float(h[U:].abs().max())
        # The paper's routing: MMRec's own GATConv on the reversed edges gathers at users.
        paper = ours(route_to_users=True)
        with torch.no_grad():
            p = pref
            for _ in range(g.num_routing):
                h = g.conv_embed_1(torch.cat([p, feat]), mm.edge_index[[1, 0]])
                p = torch.nn.functional.normalize(p + h[:U])
            routed = paper.refiner.convs['image'].route(
                *paper.refiner.convs['image'].inputs(paper.feature('image')), paper.edges)
        rows.append(('route_to_users=True vs MMRec GATConv on reversed edges',
                     maxdiff(routed, p), TOL))
        extra['paper_routing_change_of_preference_max_abs'] = maxdiff(routed, pref)

        # (c) loss and gradients on one of MMRec's batches
        inter = next(iter(loader))
        batch = BPRBatch(inter[0], inter[1], inter[2])
        mm.zero_grad()
        loss_mm = mm.calculate_loss(inter).reshape(())
        loss_mm.backward()
        mm.reg_weight = 0.0
        with torch.no_grad():
            bpr_mm = mm.calculate_loss(inter).reshape(())
        mm.reg_weight = REG_WEIGHT
        model.zero_grad()
        out = model()
        loss = model.loss(out, batch)
        loss.backward()
        reg = model.regularizer(out, batch)
        extra['loss_mmrec'] = loss_mm.item()
        rows.append(('training loss (BPR + reg)', maxdiff(loss, loss_mm), TOL))
        rows.append(('BPR part', maxdiff(loss - reg, bpr_mm), TOL))
        rows.append(('regulariser', maxdiff(reg, loss_mm - bpr_mm), TOL))
        for name, a, b in param_pairs(model, mm):
            rows.append((f'gradient {name}', maxdiff(a.grad, b.grad), TOL))

        # (d) pruning statistics and training dynamics over Adam steps on MMRec's batches
        compat = ours(score_last_train_forward=True)
        mm_opt = torch.optim.Adam(mm.parameters(), lr=1e-3)
        opt = torch.optim.Adam(compat.parameters(), lr=1e-3)
        mm.train()
        compat.train()
        stats = {'pruned_to_user': [], 'pruned_to_item': []}
        count_diff, sum_diff = 0.0, 0.0
        it = iter(loader)
        for step in range(STEPS + 1):
            inter = next(it)
            b = BPRBatch(inter[0], inter[1], inter[2])
            mm_opt.zero_grad()
            loss_mm = mm.calculate_loss(inter).sum()
            opt.zero_grad()
            o = compat()
            loss = compat.loss(o, b)
            w_ours = compat.refine()
            mm_to_item, mm_to_user = split(capture.calls['id'][0][1].detach())
            for key, a, t in (('to_user', w_ours.to_user, mm_to_user),
                              ('to_item', w_ours.to_item, mm_to_item)):
                n_ours, n_mm = int((a == 0).sum()), int((t == 0).sum())
                stats[f'pruned_{key}'].append([n_ours, n_mm])
                count_diff = max(count_diff, abs(n_ours - n_mm))
                sum_diff = max(sum_diff, abs(float(a.sum()) - float(t.sum())))
            if step == STEPS:
                break
            loss_mm.backward()
            mm_opt.step()
            loss.backward()
            opt.step()
        extra['pruned_edges_ours_mmrec_per_step'] = stats
        rows.append((f'pruned-edge count, {STEPS + 1} forwards (both directions)', count_diff,
                     0.0))
        rows.append(('kept-weight sum, same forwards', sum_diff, TOL_TRAINED))
        diffs = [maxdiff(a, b) for _, a, b in param_pairs(compat, mm)]
        rows.append((f'parameters after {STEPS} Adam steps', max(diffs), TOL_TRAINED))
        mm.eval()
        compat.eval()
        users = torch.arange(U)
        with torch.no_grad():
            s_mm = mm.full_sort_predict([users])
        rows.append(('full-sort scores, last training forward', maxdiff(compat.score(users),
                                                                       s_mm), TOL_TRAINED))
        compat.score_last_train_forward = False
        compat.invalidate_cache()
        extra['scores_recomputed_vs_mmrec_max_abs_diff'] = maxdiff(compat.score(users), s_mm)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return report('grcn', rows, extra)


if __name__ == '__main__':
    sys.exit(main())
