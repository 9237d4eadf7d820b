r"""A/B: MRdIB's own cost per training batch, an older revision against this one, interleaved
step by step in one process on the same tensors (Baby shapes: 19,445 users, 7,050 items, two
64-d modality tables with gradients, 2,048-triple batches; one thread). Medians over 55 steps
each; the ratio is measured in one run, so machine load affects both alike.

The older revision is imported as a renamed package, e.g. for commit 89f3f67:

    git worktree add /tmp/old 89f3f67
    mkdir -p /tmp/oldpkg && cp -r /tmp/old/mrdib_pyg /tmp/oldpkg/mrdib_pyg_old
    grep -rl mrdib_pyg /tmp/oldpkg/mrdib_pyg_old | xargs sed -i 's/mrdib_pyg\b/mrdib_pyg_old/g'
    python benchmarks/bench_mrdib_cost_ab.py /tmp/oldpkg benchmarks/results/mrdib_cost_ab.json
"""
import sys, time, statistics, json
sys.path.insert(0, sys.argv[1])
import torch
torch.set_num_threads(1)
from mrdib_pyg.nn.mrdib import MRdIB as New
from mrdib_pyg.nn.output import BPRBatch, ModalityOutput, RecOutput
from mrdib_pyg_old.nn.mrdib import MRdIB as Old
from mrdib_pyg_old.nn.output import BPRBatch as OBatch, ModalityOutput as OMO, RecOutput as ORO
torch.manual_seed(0)
U, I, d, B = 19445, 7050, 64, 2048
tables = {m: torch.randn(I, d, requires_grad=True) for m in ('text', 'image')}
theta = torch.randn(U, d, requires_grad=True)
out = RecOutput(user=torch.randn(U, 2*d), item=torch.randn(I, 2*d), modalities={m: ModalityOutput(t) for m, t in tables.items()}, modality_user=theta)
oout = ORO(user=out.user, item=out.item, modalities={m: OMO(t) for m, t in tables.items()}, modality_user=theta)
new, old = New.from_output(out), Old.from_output(oout)
opt = {k: (torch.optim.Adam(list(m.main_parameters()), lr=1e-3), torch.optim.Adam(m.critic_parameters(), lr=1e-3)) for k, m in (('new', new), ('old', old))}
times = {'new': [], 'old': []}
def step(kind, b):
    mo, (mopt, copt) = (new if kind == 'new' else old), opt[kind]
    t0 = time.perf_counter()
    if kind == 'new':
        enc = mo.encode_batch(out, b); copt.zero_grad(); mo.critic_loss(enc).backward(); copt.step()
        loss = mo.loss_terms(out, b, enc).loss
    else:
        ob = OBatch(*b)
        copt.zero_grad(); mo.critic_step_loss(oout, ob).backward(); copt.step()
        loss = mo(oout, ob).loss
    mopt.zero_grad()
    for t in (*tables.values(), theta): t.grad = None
    loss.backward(); mopt.step()
    return time.perf_counter() - t0
for i in range(60):
    b = BPRBatch(torch.randint(0, U, (B,)), torch.randint(0, I, (B,)), torch.randint(0, I, (B,)))
    order = ('new', 'old') if i % 2 else ('old', 'new')
    for k in order:
        t = step(k, b)
        if i >= 5: times[k].append(t)
med = {k: 1e3 * statistics.median(v) for k, v in times.items()}
print({k: round(v, 1) for k, v in med.items()}, 'ratio new/old', round(med['new'] / med['old'], 3))
json.dump({'median_ms': med, 'ratio_new_over_old': med['new'] / med['old'], 'steps': len(times['new']), 'threads': 1}, open(sys.argv[2], 'w'), indent=1)
