r"""Which sparse backend propagates fastest? Two LightGCN layers, forward + backward, on the
real Amazon Baby training graph (26,495 nodes, 239,348 directed edges), 64-d.

Backends: 'csr' (torch CSR + our precomputed-transpose backward, the default), 'csr_autograd'
(torch's generic CSR autograd), 'coo' (torch.sparse.mm, as MMRec), 'torch_sparse' (when
installed), and PyG's LGConv with its per-call normalisation. Medians of --repeats runs.

    python benchmarks/bench_propagation.py
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import load_baby, machine, print_table, write_json  # noqa: E402

from mrdib_pyg.data.adjacency import adjacency_from_data  # noqa: E402
from mrdib_pyg.data.schema import RATES  # noqa: E402
from mrdib_pyg.nn.conv import LGPropagation, SparseOperator, has_torch_sparse  # noqa: E402


def timed(fn, repeats):
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main():
    p = argparse.ArgumentParser()
    p.add_argument('--repeats', type=int, default=20)
    p.add_argument('--threads', type=int, default=torch.get_num_threads())
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    data = load_baby(generated=False)
    adj = adjacency_from_data(data)
    n = adj.size(0)
    x0 = torch.randn(n, 64)
    prop = LGPropagation(2)

    def run_op(op):
        def step():
            x = x0.clone().requires_grad_()
            prop(x, op).sum().backward()
        return step

    class Generic(torch.nn.Module):  # torch's own CSR autograd
        def forward(self, x):
            return adj @ x

    rows = []
    ops = {'csr': SparseOperator(adj, symmetric=True, backend='csr'),
           'csr_autograd': Generic(),
           'coo': SparseOperator(adj, symmetric=True, backend='coo')}
    if has_torch_sparse():
        ops['torch_sparse'] = SparseOperator(adj, symmetric=True, backend='torch_sparse')
    for name, op in ops.items():
        rows.append({'backend': name, 'fwd+bwd_ms': 1e3 * timed(run_op(op), args.repeats)})

    from torch_geometric.nn import LGConv
    conv = LGConv()
    u, i = data[RATES].edge_index
    nu = data['user'].num_nodes
    ei = torch.cat([torch.stack([u, i + nu]), torch.stack([i + nu, u])], 1)

    def pyg():
        x = x0.clone().requires_grad_()
        h1 = conv(x, ei)
        h2 = conv(h1, ei)
        ((x + h1 + h2) / 3).sum().backward()
    rows.append({'backend': 'pyg_LGConv', 'fwd+bwd_ms': 1e3 * timed(pyg, max(3, args.repeats // 4))})
    base = rows[0]['fwd+bwd_ms']
    for r in rows:
        r['vs_csr'] = r['fwd+bwd_ms'] / base
    print(f'Two-layer propagation on Baby ({n} nodes, {adj._nnz()} nnz, 64-d), '
          f'{args.threads} thread(s), median of {args.repeats}')
    print_table(rows, ['backend', 'fwd+bwd_ms', 'vs_csr'])
    write_json(f'propagation_t{args.threads}.json', {'machine': machine(), 'args': vars(args), 'rows': rows})


if __name__ == '__main__':
    main()
