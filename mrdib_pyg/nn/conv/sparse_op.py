r"""A precomputed sparse propagation matrix with a fast backward pass."""
from typing import Optional

import torch
from torch import Tensor, nn

from mrdib_pyg.data.graphs import to_csr

BACKENDS = ('csr', 'torch_sparse', 'coo')


def has_torch_sparse() -> bool:
    try:
        import torch_sparse  # noqa: F401
    except Exception:  # ImportError, or a binary built for another torch
        return False
    return True


class _CSRMatmul(torch.autograd.Function):
    r""":math:`Y = A X` with :math:`\partial L/\partial X = A^\top\, \partial L/\partial Y`.

    torch's generic CSR autograd differentiates through the sparse values too and builds
    the transpose on every call; we never learn the values and precompute :math:`A^\top`
    once (for a symmetric :math:`A` it is :math:`A` itself), which makes two LightGCN layers
    forward+backward about 2x faster on Baby (see design.md, "propagation")."""

    @staticmethod
    def forward(ctx, adj: Tensor, adj_t: Tensor, x: Tensor) -> Tensor:
        ctx.adj_t = adj_t
        return adj @ x

    @staticmethod
    def backward(ctx, grad: Tensor):
        return None, None, ctx.adj_t @ grad


class SparseOperator(nn.Module):
    r"""A fixed (non-learned) sparse matrix :math:`A` applied as :obj:`op(x) = A @ x`.

    Holds the matrix as a non-persistent buffer, so it moves with :obj:`model.to(device)`
    and stays out of checkpoints.

    Args:
        adj (Tensor): a :obj:`torch.sparse` matrix (CSR or COO) of shape :obj:`[N, M]`.
        symmetric (bool, optional): whether :math:`A = A^\top` (then the backward reuses
            :math:`A`). Checked cheaply on construction when :obj:`True`. (default: :obj:`False`)
        backend (str, optional): :obj:`'csr'` (torch CSR with the custom backward; the
            fastest measured here and the default), :obj:`'torch_sparse'` (requires the
            optional :obj:`torch-sparse` package), or :obj:`'coo'` (:obj:`torch.sparse.mm`, what
            MMRec uses). All give the same result to float precision.
    """

    def __init__(self, adj: Tensor, symmetric: bool = False, backend: str = 'csr'):
        super().__init__()
        if backend not in BACKENDS:
            raise ValueError(f"'{self.__class__.__name__}' got unknown backend '{backend}' "
                             f"(expected one of {BACKENDS})")
        if backend == 'torch_sparse' and not has_torch_sparse():
            raise ImportError("SparseOperator(backend='torch_sparse') requires the "
                              "'torch-sparse' package (pip install 'mrdib-pyg[sparse]')")
        self.backend = backend
        self.symmetric = symmetric
        self.shape = tuple(adj.shape)
        adj = to_csr(adj)
        if symmetric and self.shape[0] != self.shape[1]:
            raise ValueError(f"'{self.__class__.__name__}' got symmetric=True for a "
                             f"non-square matrix of shape {self.shape}")
        self._set(adj)

    def _set(self, adj: Tensor) -> None:
        if self.backend == 'csr':
            self.register_buffer('adj', adj, persistent=False)
            adj_t = None if self.symmetric else to_csr(adj.t())
            self.register_buffer('adj_t', adj_t, persistent=False)
        elif self.backend == 'coo':
            self.register_buffer('adj', adj.to_sparse_coo().coalesce(), persistent=False)
            self.adj_t = None
        else:
            from torch_sparse import SparseTensor
            self.adj_ts = SparseTensor.from_torch_sparse_csr_tensor(adj)
            self.adj = None
            self.adj_t = None

    def _apply(self, fn, *args, **kwargs):
        out = super()._apply(fn, *args, **kwargs)
        if self.backend == 'torch_sparse':  # SparseTensor is no buffer: move it by hand
            probe = fn(torch.zeros(1))
            self.adj_ts = self.adj_ts.to(probe.device)
        return out

    def forward(self, x: Tensor) -> Tensor:
        if self.backend == 'csr':
            adj_t = self.adj if self.adj_t is None else self.adj_t
            if x.requires_grad:
                return _CSRMatmul.apply(self.adj, adj_t, x)
            return self.adj @ x
        if self.backend == 'coo':
            return torch.sparse.mm(self.adj, x)
        return self.adj_ts @ x

    def to_dense(self) -> Tensor:
        if self.backend == 'torch_sparse':
            return self.adj_ts.to_dense()
        return self.adj.to_dense()

    def extra_repr(self) -> str:
        return f'shape={self.shape}, symmetric={self.symmetric}, backend={self.backend!r}'


def default_backend(requested: Optional[str] = None) -> str:
    r"""The propagation backend to use: :obj:`requested` if given, else :obj:`'csr'` (the
    fastest measured here — see ``benchmarks/bench_propagation.py``)."""
    return requested or 'csr'
