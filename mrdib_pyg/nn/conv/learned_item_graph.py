r"""LATTICE's learned item–item structure: kNN graphs of projected modality features,
mixed by learnable weights, normalised, and blended with frozen kNN graphs — kept sparse."""
import warnings
from typing import Mapping, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mrdib_pyg.data.graphs import item_knn_graph, to_csr
from mrdib_pyg.nn.conv.sparse_op import SparseOperator


def propagate(x: Tensor, edge_index: Tensor, edge_weight: Tensor) -> Tensor:
    r""":math:`S\,\mathbf{X}` for a sparse :math:`S` given as (row, col) pairs and weights
    (duplicated pairs add up), by gather and scatter, so gradients reach both
    :obj:`x` and :obj:`edge_weight`.

    Args:
        x (Tensor): :obj:`[N, d]` node features.
        edge_index (Tensor): :obj:`[2, E]` (row, col) pairs, :obj:`row` the receiving node.
        edge_weight (Tensor): :obj:`[E]` entries :math:`S_{\text{row},\text{col}}`.
    """
    row, col = edge_index
    return x.new_zeros(x.shape).index_add(0, row, x[col] * edge_weight.unsqueeze(-1))


class LearnedItemGraph(nn.Module):
    r"""The latent item–item structure of `"Mining Latent Structures for Multimedia
    Recommendation" <https://arxiv.org/abs/2104.09036>`_ (LATTICE, ACM MM 2021), as MMRec's
    ``lattice.py`` builds it, without ever forming an :math:`I \times I` dense matrix.

    Given one feature table :math:`\mathbf{X}^m` per modality (in LATTICE the *projected*
    features :math:`W_m \mathbf{f}^m + b_m`), each modality gets a weighted cosine
    :math:`k`-NN graph (the item itself competes for the :math:`k` slots; the values are
    the cosines, not normalised per modality),

    .. math::
        A^m_{ij} = \begin{cases} s^m_{ij} & j \in \operatorname{top-}k_{j'}\, s^m_{ij'}\\
        0 & \text{otherwise}\end{cases}, \qquad
        s^m_{ij} = \frac{\mathbf{x}^{m\top}_i \mathbf{x}^m_j}
        {\|\mathbf{x}^m_i\|\,\|\mathbf{x}^m_j\|},

    the modalities are mixed by a softmax of learnable weights :math:`\mathbf{w}` (MMRec
    initialises every entry to :math:`0.5`, i.e. equal shares) and the mixture is
    symmetric-normalised once with its weighted row sums,

    .. math::
        \boldsymbol{\alpha} = \operatorname{softmax}(\mathbf{w}), \qquad
        A = \sum_m \alpha_m A^m, \qquad L = D^{-1/2} A D^{-1/2}, \quad D_{ii} = \sum_j A_{ij},

    and blended with the frozen graphs :math:`O_m` (the normalised kNN graphs of the raw
    features, given to the constructor), mixed with the same weights:

    .. math::
        S = (1 - \lambda)\, L + \lambda \sum_m \alpha_m O_m .

    :meth:`forward` returns :math:`S` as :obj:`(edge_index, edge_weight)` whose weights carry
    gradients to the features and to :math:`\mathbf{w}`; :func:`propagate` applies it with
    gradients, :meth:`operator` freezes it into a
    :class:`~mrdib_pyg.nn.conv.SparseOperator` (LATTICE uses that between rebuilds).

    **Sparse, same numbers.** MMRec forms the dense :math:`I \times I` similarity, top-k,
    Laplacian (two dense :math:`I^3` products) and mixture, which costs
    :math:`4 I^2` bytes per matrix (2.1 GB for Clothing's 23,033 items). Here the top-k
    *indices* are found chunk by chunk without gradient
    (:func:`~mrdib_pyg.data.graphs.item_knn_graph`), the kept cosines are recomputed with
    gradient from the normalised rows (:math:`s_{ij} = \hat{\mathbf{x}}_i^\top
    \hat{\mathbf{x}}_j` for the :math:`Ik` kept pairs only), and the degrees come from a
    scatter. Values and gradients equal MMRec's dense ones to float precision; only exact
    ties in the top-k may select a different (equally similar) neighbour.

    Where MMRec produces NaN this layer does not: an item whose mixed degree is not
    positive (possible only with negative cosines) is isolated in :math:`L` (MMRec: NaN for
    a negative degree, zero for a zero one), and all-zero feature rows have cosine 0 to
    every item (MMRec divides by their zero norm). Non-finite entries of a frozen graph are
    set to zero with a warning.

    Args:
        original_graphs (dict): modality :math:`\rightarrow` frozen :obj:`[I, I]` sparse
            graph :math:`O_m`; its keys fix the modalities and their order (the order of
            :math:`\mathbf{w}`).
        k (int, optional): neighbours per item; lowered to :math:`I` with a warning when
            larger (MMRec fails). (default: :obj:`10`)
        lambda_coeff (float, optional): :math:`\lambda \in [0, 1]`, the frozen graphs' share.
            (default: :obj:`0.9`)
        chunk_size (int, optional): rows of the similarity computed at once in the top-k
            search. (default: :obj:`1024`)
        backend (str, optional): backend of :meth:`operator`'s
            :class:`~mrdib_pyg.nn.conv.SparseOperator`. (default: :obj:`'csr'`)

    Shapes:
        - **input:** dict modality :math:`\rightarrow` features :math:`(I, d_m)`
        - **output:** :obj:`edge_index` :math:`(2, E)`, :obj:`edge_weight` :math:`(E)`, with
          :math:`E = 2 I k M` (duplicated pairs are not merged) for :math:`M` modalities
    """

    def __init__(self, original_graphs: Mapping[str, Tensor], k: int = 10,
                 lambda_coeff: float = 0.9, chunk_size: int = 1024, backend: str = 'csr'):
        super().__init__()
        name = self.__class__.__name__
        if not original_graphs:
            raise ValueError(f"'{name}' needs one frozen graph per modality (got none)")
        if not 0.0 <= lambda_coeff <= 1.0:
            raise ValueError(f"'{name}' needs 0 <= lambda_coeff <= 1 (got {lambda_coeff})")
        if k < 1:
            raise ValueError(f"'{name}' needs k >= 1 (got {k})")
        if chunk_size < 1:
            raise ValueError(f"'{name}' needs chunk_size >= 1 (got {chunk_size})")
        self.modalities = list(original_graphs)
        shapes = {tuple(g.shape) for g in original_graphs.values()}
        num_items = next(iter(original_graphs.values())).size(0)
        if len(shapes) != 1 or shapes.pop() != (num_items, num_items):
            raise ValueError(f"'{name}' needs square frozen graphs of one size (got shapes "
                             f"{ {m: tuple(g.shape) for m, g in original_graphs.items()} })")
        self.num_items = int(num_items)
        if k > self.num_items:
            warnings.warn(f"'{name}': k={k} exceeds the {self.num_items} items; using "
                          f"k={self.num_items}", stacklevel=2)
            k = self.num_items
        self.k = int(k)
        self.lambda_coeff = float(lambda_coeff)
        self.chunk_size = int(chunk_size)
        self.backend = backend
        for n, m in enumerate(self.modalities):
            index, weight = _finite_parts(original_graphs[m], m, name)
            self.register_buffer(f'original_index_{n}', index, persistent=False)
            self.register_buffer(f'original_weight_{n}', weight, persistent=False)
        #: :math:`\mathbf{w}`, one logit per modality in :attr:`modalities` order.
        self.modal_weight = nn.Parameter(torch.empty(len(self.modalities)))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.constant_(self.modal_weight, 0.5)  # MMRec's [0.5, 0.5]: equal shares

    def mix_weights(self) -> Tensor:
        r""":math:`\boldsymbol{\alpha} = \operatorname{softmax}(\mathbf{w})`, one per
        modality in :attr:`modalities` order."""
        return torch.softmax(self.modal_weight, dim=0)

    def original(self, modality: str) -> Tuple[Tensor, Tensor]:
        r"""The frozen graph :math:`O_m` of :obj:`modality` as :obj:`(edge_index, weight)`."""
        n = self.modalities.index(modality)
        return getattr(self, f'original_index_{n}'), getattr(self, f'original_weight_{n}')

    def knn(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        r"""The weighted cosine :math:`k`-NN graph :math:`A^m` of :obj:`x` as
        :obj:`(edge_index, weight)`: indices chosen without gradient, the cosines of the kept
        pairs with gradient w.r.t. :obj:`x`."""
        if x.dim() != 2 or x.size(0) != self.num_items:
            raise ValueError(f"'{self.__class__.__name__}' needs [{self.num_items}, d] "
                             f"features (got {tuple(x.shape)})")
        with torch.no_grad():
            edge_index, _ = item_knn_graph(x.detach(), self.k, self.chunk_size, loop=True)
        xn = F.normalize(x, p=2., dim=-1)
        row, col = edge_index
        return edge_index, (xn[row] * xn[col]).sum(-1)

    def learned(self, features: Mapping[str, Tensor],
                weights: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        r"""The normalised learned graph :math:`L = D^{-1/2}(\sum_m \alpha_m A^m)D^{-1/2}`
        as :obj:`(edge_index, edge_weight)` (duplicated pairs not merged)."""
        alpha = self.mix_weights() if weights is None else weights
        parts = [self.knn(features[m]) for m in self.modalities]
        edge_index = torch.cat([ei for ei, _ in parts], dim=1)
        value = torch.cat([alpha[n] * v for n, (_, v) in enumerate(parts)])
        row, col = edge_index
        deg = value.new_zeros(self.num_items).index_add(0, row, value)
        # Degrees <= 0 (negative cosines) isolate the item; where() keeps NaN out of the
        # gradient of the unused branch.
        positive = deg > 0
        inv_sqrt = torch.where(positive, deg, torch.ones_like(deg)).pow(-0.5) * positive
        return edge_index, inv_sqrt[row] * value * inv_sqrt[col]

    def forward(self, features: Mapping[str, Tensor]) -> Tuple[Tensor, Tensor]:
        r""":math:`S = (1-\lambda) L + \lambda \sum_m \alpha_m O_m` of the given per-modality
        features (a dict with every modality of :attr:`modalities`), as
        :obj:`(edge_index, edge_weight)`."""
        missing = [m for m in self.modalities if m not in features]
        if missing:
            raise ValueError(f"'{self.__class__.__name__}' got no features for the "
                             f"modalities {missing}")
        alpha = self.mix_weights()
        index, weight = self.learned(features, alpha)
        indices, weights = [index], [(1.0 - self.lambda_coeff) * weight]
        for n, m in enumerate(self.modalities):
            o_index, o_weight = self.original(m)
            indices.append(o_index)
            weights.append(self.lambda_coeff * alpha[n] * o_weight)
        return torch.cat(indices, dim=1), torch.cat(weights)

    def operator(self, edge_index: Tensor, edge_weight: Tensor) -> SparseOperator:
        r"""A frozen (detached) :class:`~mrdib_pyg.nn.conv.SparseOperator` of
        :obj:`(edge_index, edge_weight)`, duplicated pairs summed."""
        adj = torch.sparse_coo_tensor(edge_index, edge_weight.detach(),
                                      (self.num_items, self.num_items),
                                      check_invariants=False).coalesce()
        return SparseOperator(to_csr(adj), symmetric=False, backend=self.backend)

    def to_dense(self, edge_index: Tensor, edge_weight: Tensor) -> Tensor:
        r"""The dense :math:`[I, I]` matrix of :obj:`(edge_index, edge_weight)` (for checks
        on small graphs), with gradient."""
        flat = edge_index[0] * self.num_items + edge_index[1]
        dense = edge_weight.new_zeros(self.num_items * self.num_items)
        return dense.index_add(0, flat, edge_weight).view(self.num_items, self.num_items)

    def extra_repr(self) -> str:
        return (f'modalities={self.modalities}, num_items={self.num_items}, k={self.k}, '
                f'lambda_coeff={self.lambda_coeff}')


def _finite_parts(adj: Tensor, modality: str, owner: str) -> Tuple[Tensor, Tensor]:
    if adj.layout == torch.strided:
        adj = adj.to_sparse()
    coo = adj.to_sparse_coo().coalesce()
    index, weight = coo.indices(), coo.values().float()
    bad = ~torch.isfinite(weight)
    if bool(bad.any()):
        warnings.warn(f"'{owner}': the frozen graph of modality '{modality}' has "
                      f"{int(bad.sum())} non-finite weights (items whose top-k cosines sum "
                      f"to a negative degree); they are set to 0", stacklevel=3)
        weight = torch.where(bad, torch.zeros_like(weight), weight)
    return index, weight


__all__ = ['LearnedItemGraph', 'propagate']
