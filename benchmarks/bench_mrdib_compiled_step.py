r"""Would ``torch.compile`` halve MRdIB's step? A fixed-shape restatement, timed three ways.

MRdIB's step is ~1,700 small operators on a CPU (``bench_mrdib_cost.py --profile``), and its
shapes change every batch (the number of unique items, of unique positives), so compiling
``MRdIB.loss_terms`` as it is recompiles until torch's limit. This script restates the same
step with shapes that depend on the batch size only: the unique items are padded to 2B rows
and the unique positives to B, with masks (the KL is a weighted sum that equals the mean over
unique items; the critic's joint mean and log-mean-exp skip the padding; the derangement
leaves the padding in place). It uses the module's own encoders, fusion MLP and critic, on
the Baby shapes of ``bench_mrdib_cost.py`` (two 64-d modality tables, one 64-d user table,
batches of 2,048 random triples), and times, interleaved step by step in one process:

* ``module``: ``MRdIB``'s own step (``common.mrdib_step``), eager;
* ``padded eager``: the fixed-shape step, eager;
* ``padded compiled``: the same three functions (encode, critic, loss) under
  ``torch.compile(dynamic=False)`` (the C++ code generator of Inductor on a CPU).

Left out of the restatement, as they are a handful of scalar operators: MINE's moving-average
correction (the critic ascends the plain bound here) and the logged diagnostics. Both
optimisers are fused Adam in all three. The compiled step draws its noise with Inductor's
generator, so its values are not comparable draw by draw; only its time is.

    python benchmarks/bench_mrdib_compiled_step.py --steps 40 --threads 1
"""
import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import baby_shaped_output, machine, mrdib_step, print_table, write_json  # noqa: E402

from mrdib_pyg.nn.mine import random_derangement  # noqa: E402
from mrdib_pyg.nn.mrdib import MRdIB  # noqa: E402
from mrdib_pyg.nn.output import BPRBatch  # noqa: E402


def padded_step_functions(mrdib: MRdIB, B: int):
    r"""The encode, critic and loss functions of the fixed-shape step (two modalities, one
    shared user table of the latent width, so the user maps are identities)."""
    mods, d = mrdib.modalities, mrdib.latent_dim
    critic = mrdib.critic(*mrdib.pairs[0])
    a1, a2, a3 = mrdib.alpha1, mrdib.alpha2, mrdib.alpha3

    def encode(xs, eps):
        res = []
        for m, x, e in zip(mods, xs, eps):
            mu, logvar = mrdib.encoder(m)(x)
            std = torch.exp(0.5 * logvar)
            res.append((mu, logvar, std, torch.addcmul(mu, e, std)))
        return res

    def masked_dv(t_joint, t_marg, valid, log_p):
        joint = (t_joint * valid).sum() / valid.sum()
        lme = torch.logsumexp(t_marg.masked_fill(valid == 0, float('-inf')), 0) - log_p
        return joint - lme

    def critic_loss(za, zb, perm, valid, log_p):
        return -masked_dv(*critic(za, zb, marginal_perm=perm), valid, log_p)

    def loss(enc, users, pos, neg, kl_weight, mine_rows, perm, valid, log_p):
        z_all = torch.cat([e[3] for e in enc], -1)
        user_heads = torch.cat([users, users, users], -1)  # M unique heads, then the fused
        item_heads = torch.cat([z_all, mrdib.fusion(z_all)], -1)
        rows = item_heads.index_select(0, torch.cat([pos, neg])).view(2, B, 3, d)
        scores = (rows * user_heads.view(1, B, 3, d)).sum(-1)
        head = (-torch.log(1e-10 + torch.sigmoid(scores[0] - scores[1]))).mean(0)
        kl = sum((0.5 * (mu.pow(2) + std.pow(2) - 1.0 - lv).sum(-1) * kl_weight).sum()
                 for mu, lv, std, _ in enc)
        za, zb = (enc[k][3].index_select(0, mine_rows) for k in (0, 1))
        t = critic(za, zb, detach_params=True, marginal_perm=perm)
        dv = masked_dv(*t, valid, log_p)
        return head[-1] + a1 * kl + a3 * head[:2].sum() + a2 * dv.clamp(min=0)

    return encode, critic_loss, loss


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--users', type=int, default=19445)
    p.add_argument('--items', type=int, default=7050)
    p.add_argument('--batch', type=int, default=2048)
    p.add_argument('--steps', type=int, default=40)
    p.add_argument('--warmup', type=int, default=5)
    p.add_argument('--threads', type=int, default=1)
    p.add_argument('--out', default='mrdib_compiled_step.json')
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    U, I, B, d = args.users, args.items, args.batch, 64
    tables, theta, out = baby_shaped_output(U, I, d)
    mrdib = MRdIB.from_output(out)
    mods = mrdib.modalities
    main_opt = torch.optim.Adam(list(mrdib.main_parameters()), lr=1e-3, fused=True)
    critic_opt = torch.optim.Adam(mrdib.critic_parameters(), lr=1e-3, fused=True)
    eager = padded_step_functions(mrdib, B)
    compiled = tuple(torch.compile(f, dynamic=False) for f in eager)

    def padded_step(batch, fns):
        encode, critic_loss, loss_fn = fns
        items, inverse = torch.unique(torch.cat([batch.pos, batch.neg]), return_inverse=True)
        n = items.numel()
        mine = torch.unique(inverse[:B])
        n_pos = mine.numel()
        kl_weight = torch.zeros(2 * B)
        kl_weight[:n] = 1.0 / n
        valid = torch.zeros(B)
        valid[:n_pos] = 1.0
        perm = torch.arange(B)
        perm[:n_pos] = random_derangement(n_pos)
        log_p = torch.tensor(math.log(n_pos))
        mine_rows = F.pad(mine, (0, B - n_pos))
        rows = F.pad(items, (0, 2 * B - n))
        enc = encode([tables[m].index_select(0, rows) for m in mods],
                     [torch.randn(2 * B, d) for _ in mods])
        critic_opt.zero_grad(set_to_none=True)
        za, zb = (enc[k][3].detach().index_select(0, mine_rows) for k in (0, 1))
        critic_loss(za, zb, perm, valid, log_p).backward()
        critic_opt.step()
        total = loss_fn(enc, theta.index_select(0, batch.users), inverse[:B], inverse[B:],
                        kl_weight, mine_rows, perm, valid, log_p)
        main_opt.zero_grad(set_to_none=True)
        for t in (*tables.values(), theta):
            t.grad = None
        total.backward()
        main_opt.step()

    variants = {
        'module': lambda b: mrdib_step(mrdib, out, b, main_opt, critic_opt,
                                       (*tables.values(), theta)),
        'padded eager': lambda b: padded_step(b, eager),
        'padded compiled': lambda b: padded_step(b, compiled),
    }
    times = {k: [] for k in variants}
    first_compiled_s = None
    for i in range(args.warmup + args.steps):
        for name, step in variants.items():
            batch = BPRBatch(torch.randint(0, U, (B, )), torch.randint(0, I, (B, )),
                             torch.randint(0, I, (B, )))
            t = time.perf_counter()
            step(batch)
            elapsed = time.perf_counter() - t
            if name == 'padded compiled' and first_compiled_s is None:
                first_compiled_s = elapsed
            if i >= args.warmup:
                times[name].append(elapsed)
    base = statistics.median(times['module'])
    rows = [{'variant': k, 'ms per step (median)': 1e3 * statistics.median(v),
             'vs module': statistics.median(v) / base} for k, v in times.items()]
    print(f'MRdIB step, Baby shapes, batch {B}, {args.threads} thread(s), '
          f'{args.steps} interleaved steps each (first compiled step, compilation included: '
          f'{first_compiled_s:.1f} s)')
    print_table(rows, list(rows[0]))
    write_json(args.out, dict(args=vars(args), machine=machine(), rows=rows,
                              first_compiled_step_s=first_compiled_s,
                              ms_all={k: [1e3 * t for t in v] for k, v in times.items()}))


if __name__ == '__main__':
    main()
