r"""MMGCN's per-modality graph convolution: :class:`MMGCNConv` (one layer) and
:class:`MMGCNEncoder` (the stack of layers one modality runs over
:math:`[\text{user preference} \,;\, \text{item feature}]`)."""
from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mrdib_pyg.data.graphs import csr_from_parts
from mrdib_pyg.nn.conv.sparse_op import SparseOperator

Graph = Union[SparseOperator, Tensor]
PairTensor = Tuple[Tensor, Tensor]


def propagate(graph: Graph, x: Tensor) -> Tensor:
    r""":math:`\hat{A} x` for a :class:`SparseOperator` or a :obj:`torch.sparse` matrix."""
    if isinstance(graph, SparseOperator):
        return graph(x)
    if isinstance(graph, Tensor) and graph.layout in (torch.sparse_csr, torch.sparse_coo):
        return graph @ x
    raise TypeError(f"expected a SparseOperator or a torch.sparse matrix as graph "
                    f"(got {type(graph).__name__})")


class _RowNormalize(torch.autograd.Function):
    r""":obj:`F.normalize(x, dim=1)` (:math:`x / \max(\lVert x \rVert, \epsilon)` per row) with a
    fused backward, :math:`\partial x = (\partial y - y \langle \partial y, y \rangle) /
    \max(\lVert x \rVert, \epsilon)`: half the passes over the :obj:`[U, d_0]` preference
    of autograd's version (the same values to float precision)."""

    @staticmethod
    def forward(ctx, x: Tensor, eps: float) -> Tensor:
        inv = x.norm(dim=1, keepdim=True).clamp_min_(eps).reciprocal_()
        y = x * inv
        ctx.save_for_backward(y, inv)
        return y

    @staticmethod
    def backward(ctx, grad: Tensor):
        y, inv = ctx.saved_tensors
        return (grad - y * (grad * y).sum(1, keepdim=True)) * inv, None


def row_normalize(x: Tensor, eps: float = 1e-12) -> Tensor:
    r"""Row-wise :math:`\ell_2` normalisation, as :obj:`F.normalize(x, dim=1, eps=eps)`."""
    if x.requires_grad:
        return _RowNormalize.apply(x, eps)
    return F.normalize(x, dim=1, eps=eps)


def bipartite_blocks(adj: Tensor, num_users: int) -> Tuple[Tensor, Tensor]:
    r"""The two off-diagonal blocks of a :obj:`[U+I, U+I]` user–item matrix (users first):
    :math:`\hat{A}_{ui}` (:obj:`[U, I]`, rows of users) and :math:`\hat{A}_{iu}`
    (:obj:`[I, U]`), as CSR. Raises :class:`ValueError` if :obj:`adj` has a user–user or
    item–item entry (self-loops included), which the blocks would lose.

    Propagating with the blocks is the same product as with :obj:`adj`, faster on CPU (each
    block reads a smaller input), and it lets autograd skip the half of the input that
    needs no gradient (raw item features)."""
    n = adj.size(0)
    if adj.dim() != 2 or adj.size(1) != n or not 0 < num_users < n:
        raise ValueError(f"bipartite_blocks: expected a square [U+I, U+I] matrix with "
                         f"0 < U < U+I (got shape {tuple(adj.shape)}, U={num_users})")
    coo = adj.to_sparse_coo().coalesce()
    (row, col), val = coo.indices(), coo.values()
    ui = (row < num_users) & (col >= num_users)
    iu = (row >= num_users) & (col < num_users)
    if bool((~(ui | iu) & (val != 0)).any()):
        raise ValueError("bipartite_blocks: the matrix has user-user or item-item entries "
                         "(e.g. self-loops); it is not a bipartite user-item graph")
    num_items = n - num_users

    def block(mask, r0, c0, shape):
        idx = torch.stack([row[mask] - r0, col[mask] - c0])
        return csr_from_parts(idx, val[mask], shape)

    return (block(ui, 0, num_users, (num_users, num_items)),
            block(iu, num_users, 0, (num_items, num_users)))


class MMGCNConv(nn.Module):
    r"""One layer of the modality-specific graph convolution of `"MMGCN: Multi-modal Graph
    Convolution Network for Personalized Recommendation of Micro-video"
    <https://arxiv.org/abs/1908.11189>`_ (Wei et al., ACM MM 2019), as MMRec's
    ``models/mmgcn.py`` computes it:

    .. math::
        \mathbf{h} &= \sigma\big(\hat{A}\, \mathbf{X} \mathbf{W}_c\big)
        && \text{(aggregation, eq. 1)} \\
        \hat{\mathbf{x}} &= \sigma\big(\mathbf{X} \mathbf{W}_s^\top + \mathbf{b}_s\big)
        + \mathbf{E}_{\text{id}} && \text{(self path, eq. 5)} \\
        \mathbf{X}' &= \begin{cases}
            \sigma\big(\mathbf{W}_g [\mathbf{h} \,\|\, \hat{\mathbf{x}}] + \mathbf{b}_g\big)
            & \text{concat} \\
            \sigma\big(\mathbf{W}_g \mathbf{h} + \mathbf{b}_g + \hat{\mathbf{x}}\big)
            & \text{sum (element-wise)}
        \end{cases}

    with :math:`\sigma` the leaky ReLU (slope :math:`0.01`), :math:`\hat{A}` a fixed
    propagation matrix over users and items — MMGCN's is the mean over neighbours,
    :math:`D^{-1}A` of the undirected user–item graph (MMRec's :obj:`aggr='mean'`
    :class:`~torch_geometric.nn.conv.MessagePassing`; build it with
    :class:`~mrdib_pyg.data.derived.UserItemGraph` :obj:`(norm='row')`) — and
    :math:`\mathbf{E}_{\text{id}}` an optional id embedding added to the self path.

    The aggregation weight :math:`\mathbf{W}_c` is square (:obj:`in_channels` both ways), as
    in MMRec. :math:`\mathbf{W}_g` is applied to the two halves of the concatenation
    separately (no copy). The sum variant maps :math:`\mathbf{h}` to :obj:`out_channels`
    with :math:`\mathbf{W}_g`. Xavier-normal weights, PyTorch's default biases (MMRec's
    initialisation).

    **Bipartite form** (faster; the same numbers to float precision). Given
    :obj:`x = (x_user, x_item)` and :obj:`graph = (A_ui, A_iu)` (:func:`bipartite_blocks`),
    the layer runs on the two node sets without concatenating them — users aggregate
    :math:`\hat{A}_{ui}\mathbf{X}_{\text{item}}\mathbf{W}_c`, items
    :math:`\hat{A}_{iu}\mathbf{X}_{\text{user}}\mathbf{W}_c` — and returns
    :obj:`(out_user, out_item)`. Each product is ordered so that the dense
    :math:`F \times F` multiplication runs on the smaller node set:
    :math:`\hat{A}_{ui}(\mathbf{X}_{\text{item}}\mathbf{W}_c)` and
    :math:`(\hat{A}_{iu}\mathbf{X}_{\text{user}})\mathbf{W}_c` when :math:`I \le U` (the
    usual case), mirrored otherwise. An input that needs no gradient (raw item features)
    gets none.

    Args:
        in_channels (int): width :math:`F` of :math:`\mathbf{X}`.
        out_channels (int): width :math:`F'` of the output and of the id embedding.
        concat (bool, optional): the concatenation combiner (:obj:`True`) or the element-wise
            sum (:obj:`False`). (default: :obj:`True`)
        negative_slope (float, optional): of the leaky ReLU. (default: :obj:`0.01`)

    Shapes:
        - **input:** node features :math:`(N, F)`, a propagation matrix :math:`(N, N)`
          (:class:`~mrdib_pyg.nn.conv.SparseOperator` or :obj:`torch.sparse`), optional id
          embedding :math:`(N, F')`; or, bipartite, pairs :math:`((U, F), (I, F))`,
          :math:`((U, I), (I, U))` and :math:`((U, F'), (I, F'))`
        - **output:** :math:`(N, F')`, or the pair :math:`((U, F'), (I, F'))`
    """

    def __init__(self, in_channels: int, out_channels: int, concat: bool = True,
                 negative_slope: float = 0.01):
        super().__init__()
        if in_channels <= 0 or out_channels <= 0:
            raise ValueError(f"'{self.__class__.__name__}' needs positive widths "
                             f"(got in_channels={in_channels}, out_channels={out_channels})")
        if not isinstance(concat, bool):
            # MMRec's own flag is the string 'False', which Python reads as true.
            raise TypeError(f"'{self.__class__.__name__}' needs a bool for concat "
                            f"(got {concat!r})")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.concat = concat
        self.negative_slope = negative_slope
        self.weight = nn.Parameter(torch.empty(in_channels, in_channels))
        self.linear = nn.Linear(in_channels, out_channels)
        self.combine = nn.Linear(in_channels + out_channels if concat else in_channels,
                                 out_channels)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.xavier_normal_(self.weight)
        for lin in (self.linear, self.combine):
            lin.reset_parameters()  # default bias
            nn.init.xavier_normal_(lin.weight)

    def message(self, graph: Graph, x_src: Tensor, num_dst: int) -> Tensor:
        r""":math:`\hat{A}\mathbf{X}\mathbf{W}_c` for :obj:`num_dst` receiving nodes, with the
        :math:`F \times F` product on the smaller of the two node sets."""
        if x_src.size(0) <= num_dst:
            return propagate(graph, x_src @ self.weight)
        return propagate(graph, x_src) @ self.weight

    def update(self, x: Tensor, conv: Tensor,
               id_embedding: Optional[Tensor] = None) -> Tensor:
        r"""The layer for nodes with features :obj:`x` whose aggregated message is
        :obj:`conv` (:math:`\hat{A}\mathbf{X}\mathbf{W}_c`, rows of the same nodes)."""
        act = lambda t: F.leaky_relu(t, self.negative_slope)  # noqa: E731
        h = act(conv)
        x_hat = act(self.linear(x))
        if id_embedding is not None:
            x_hat = x_hat + id_embedding
        if self.concat:
            w = self.combine.weight
            out = torch.addmm(self.combine.bias, h, w[:, :self.in_channels].t())
            out = torch.addmm(out, x_hat, w[:, self.in_channels:].t())
        else:
            out = self.combine(h) + x_hat
        return act(out)

    def forward(self, x: Union[Tensor, PairTensor], graph: Union[Graph, Tuple[Graph, Graph]],
                id_embedding: Optional[Union[Tensor, PairTensor]] = None
                ) -> Union[Tensor, PairTensor]:
        if isinstance(x, Tensor):
            return self.update(x, propagate(graph, x @ self.weight), id_embedding)
        x_user, x_item = x
        to_user, to_item = graph
        e_user, e_item = (None, None) if id_embedding is None else id_embedding
        U, I = x_user.size(0), x_item.size(0)
        return (self.update(x_user, self.message(to_user, x_item, U), e_user),
                self.update(x_item, self.message(to_item, x_user, I), e_item))

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}({self.in_channels}, {self.out_channels}, '
                f'concat={self.concat})')


class MMGCNEncoder(nn.Module):
    r"""One modality's graph network of MMGCN (`"MMGCN: Multi-modal Graph Convolution
    Network for Personalized Recommendation of Micro-video" <https://arxiv.org/abs/1908.11189>`_):
    a stack of :class:`MMGCNConv` layers over the user–item graph whose input is each
    user's learned *preference* for the modality stacked on the items' features,

    .. math::
        \mathbf{X}^{(0)} = \operatorname{normalize}\Big(\begin{bmatrix}
            \mathbf{P} \\ \phi(\mathbf{F}) \end{bmatrix}\Big), \qquad
        \mathbf{X}^{(l+1)} = \operatorname{MMGCNConv}_l\big(\mathbf{X}^{(l)}, \hat{A},
        \mathbf{E}_{\text{id}}\big), \quad l = 0, \dots, L-1

    where :math:`\mathbf{P} \in \mathbb{R}^{U \times d_0}` is the preference matrix,
    :math:`\phi` a :obj:`Linear` projection to :obj:`latent_dim` (MMRec: 4096-d image
    features :math:`\rightarrow 256`) or the identity (MMRec: text, raw 384-d), and
    :math:`\operatorname{normalize}` the row-wise :math:`\ell_2` normalisation. The first
    layer maps :math:`d_0 \rightarrow d`, the others :math:`d \rightarrow d`. The features
    are projected once per forward.

    Initialisation as MMRec: Xavier-normal preference and layer weights, PyTorch's default
    for the projection, for every bias, and for the combination weights of layers
    :math:`\ge 2` (MMRec re-initialises only the first layer's).

    Args:
        num_users (int): :math:`U`, rows of the preference matrix.
        feature_dim (int): width of the item features :math:`\mathbf{F}`.
        out_channels (int): :math:`d`, the output and id-embedding width. (MMRec: 64)
        latent_dim (int, optional): project the features to this width first; :obj:`None`
            feeds them raw. (default: :obj:`None`)
        num_layers (int, optional): :math:`L \ge 1`. (default: :obj:`3`, MMRec's fixed depth)
        concat (bool, optional): the combiner of :class:`MMGCNConv`. (default: :obj:`True`)
        trainable_preference (bool, optional): :math:`\mathbf{P}` is an
            :class:`~torch.nn.Parameter` (:obj:`True`) or a frozen buffer (:obj:`False`,
            MMRec's actual behaviour: its preference is a plain tensor the optimiser never
            sees). (default: :obj:`True`)

    Shapes:
        - **input:** item features :math:`(I, F)`; the propagation matrix :math:`(U+I, U+I)`
          (users first) or its blocks :math:`((U, I), (I, U))` (:func:`bipartite_blocks`,
          faster); an optional id embedding :math:`(U+I, d)`
        - **output:** :math:`(U+I, d)`, users first, for a square matrix; the pair
          :math:`((U, d), (I, d))` for blocks
    """

    def __init__(self, num_users: int, feature_dim: int, out_channels: int,
                 latent_dim: Optional[int] = None, num_layers: int = 3, concat: bool = True,
                 trainable_preference: bool = True):
        super().__init__()
        name = self.__class__.__name__
        if num_layers < 1:
            raise ValueError(f"'{name}' needs num_layers >= 1 (got {num_layers})")
        if latent_dim is not None and latent_dim <= 0:
            raise ValueError(f"'{name}' needs latent_dim > 0 or None (got {latent_dim})")
        self.num_users = int(num_users)
        self.feature_dim = feature_dim
        self.out_channels = out_channels
        self.latent_dim = latent_dim
        self.trainable_preference = trainable_preference
        d0 = latent_dim or feature_dim
        self.projection = nn.Linear(feature_dim, latent_dim) if latent_dim else None
        pref = torch.empty(self.num_users, d0)
        if trainable_preference:
            self.preference = nn.Parameter(pref)
        else:  # persistent: a checkpoint restores the same frozen draw
            self.register_buffer('preference', pref)
        self.convs = nn.ModuleList(
            [MMGCNConv(d0 if i == 0 else out_channels, out_channels, concat)
             for i in range(num_layers)])
        self.reset_parameters()

    @property
    def num_layers(self) -> int:
        return len(self.convs)

    def reset_parameters(self) -> None:
        with torch.no_grad():
            nn.init.xavier_normal_(self.preference)
        if self.projection is not None:
            self.projection.reset_parameters()
        for i, conv in enumerate(self.convs):
            conv.reset_parameters()
            if i > 0:
                conv.combine.reset_parameters()

    def inputs(self, features: Tensor) -> PairTensor:
        r""":math:`\mathbf{X}^{(0)}` as its user and item parts, :obj:`([U, d_0], [I, d_0])`
        (the normalisation is row-wise, so the parts are normalised apart)."""
        items = self.projection(features) if self.projection is not None else features
        return row_normalize(self.preference), row_normalize(items)

    def forward(self, features: Tensor, graph: Union[Graph, Tuple[Graph, Graph]],
                id_embedding: Optional[Tensor] = None) -> Union[Tensor, PairTensor]:
        if features.dim() != 2 or features.size(1) != self.feature_dim:
            raise ValueError(f"'{self.__class__.__name__}' expects item features of width "
                             f"{self.feature_dim} (got shape {tuple(features.shape)})")
        x_user, x_item = self.inputs(features)
        if isinstance(graph, (tuple, list)):
            x = (x_user, x_item)
            if id_embedding is not None:
                id_embedding = tuple(id_embedding.split(
                    [self.num_users, id_embedding.size(0) - self.num_users]))
        else:
            x = torch.cat([x_user, x_item], dim=0)
        for conv in self.convs:
            x = conv(x, graph, id_embedding)
        return x

    def extra_repr(self) -> str:
        return (f'num_users={self.num_users}, feature_dim={self.feature_dim}, '
                f'latent_dim={self.latent_dim}, '
                f'trainable_preference={self.trainable_preference}')
