r"""LGMRec's global hypergraph embedding: learned modality hyperedges, soft Gumbel-softmax
assignments of items and users to them, and hypergraph message passing through them."""
from typing import Optional, Tuple

import torch
from torch import Tensor, nn

from mrdib_pyg.nn.conv.sparse_op import SparseOperator

__all__ = ['gumbel_softmax', 'assignment_dropout', 'HyperedgeAssignment', 'HGNNConv',
           'GlobalHypergraphEmbedding']


def gumbel_softmax(logits: Tensor, tau: float,
                   generator: Optional[torch.Generator] = None) -> Tensor:
    r"""The soft Gumbel-softmax over the last dimension,

    .. math::
        \mathbf{y} = \operatorname{softmax}\big((\mathbf{l} + \mathbf{g}) / \tau\big),
        \qquad g_k = -\log e_k,\ e_k \sim \operatorname{Exp}(1),

    drawn exactly as :func:`torch.nn.functional.gumbel_softmax` (:obj:`hard=False`) draws
    it, but from :obj:`generator` when one is given (:obj:`None`: torch's global stream,
    where the result is bit-identical to :func:`~torch.nn.functional.gumbel_softmax` at
    the same random state).

    Args:
        logits (Tensor): :obj:`[N, K]` unnormalised log-probabilities.
        tau (float): temperature :math:`\tau > 0`.
        generator (torch.Generator, optional): random stream of the noise.
    """
    gumbels = -torch.empty_like(logits).exponential_(generator=generator).log()
    return ((logits + gumbels) / tau).softmax(dim=-1)


def assignment_dropout(x: Tensor, keep_rate: float,
                       generator: Optional[torch.Generator] = None) -> Tensor:
    r"""Inverted dropout keeping each entry with probability :obj:`keep_rate` (kept entries
    are divided by it). The same draws as :func:`torch.nn.functional.dropout` with
    :math:`p = 1 -` :obj:`keep_rate` on a CPU tensor at the same global random state
    (:obj:`generator=None`); :obj:`keep_rate=1` returns :obj:`x` and draws nothing, and
    :obj:`keep_rate=0` returns zeros, as torch's dropout does."""
    p = 1.0 - keep_rate
    if p == 0.0:
        return x
    if p == 1.0:
        return x * x.new_zeros(())
    noise = torch.empty_like(x).bernoulli_(1.0 - p, generator=generator)
    return x * noise.div_(1.0 - p)


def _apply(op, x: Tensor) -> Tensor:
    return op(x) if isinstance(op, SparseOperator) else op @ x


class HyperedgeAssignment(nn.Module):
    r"""The learnable modality hyperedges of `"LGMRec: Local and Global Graph Learning for
    Multimodal Recommendation" <https://arxiv.org/abs/2312.16400>`_ (AAAI 2024).

    :math:`K` hyperedges per modality are columns of a learned matrix
    :math:`\mathbf{W}_h \in \mathbb{R}^{F_m \times K}`; an item's affinity to them is its
    (fixed) raw feature times :math:`\mathbf{W}_h`, a user's is the **sum** of its items'
    affinities (:math:`\mathbf{R}` is the raw 0/1 user–item matrix), and each is turned
    into a soft assignment by a Gumbel-softmax of temperature :math:`\tau`:

    .. math::
        \mathbf{H}_I = \operatorname{GumbelSoftmax}_\tau\big(\mathbf{F}_m \mathbf{W}_h\big),
        \qquad
        \mathbf{H}_U = \operatorname{GumbelSoftmax}_\tau\big(\mathbf{R}\,\mathbf{F}_m
        \mathbf{W}_h\big)

    (the item noise is drawn first, then the user noise; as in MMRec the user assignment
    is the Gumbel-softmax of the summed *logits*, not the sum of the item assignments).
    With :obj:`noise=False` the noise is left out: :math:`\operatorname{softmax}(\cdot /
    \tau)`.

    :math:`\mathbf{W}_h` is MMRec's ``v_hyper`` / ``t_hyper`` (same :math:`[F_m, K]`
    layout, Xavier-uniform initialisation).

    Args:
        in_channels (int): raw feature width :math:`F_m`.
        num_hyperedges (int): :math:`K` (MMRec's ``hyper_num``).
        tau (float, optional): temperature :math:`\tau`. (default: :obj:`0.2`)

    Shapes:
        - **input:** features :math:`(I, F_m)`, :math:`\mathbf{R}` :math:`(U, I)` (a
          :class:`~mrdib_pyg.nn.conv.SparseOperator` or a sparse/dense matrix)
        - **output:** :math:`\mathbf{H}_I` :math:`(I, K)`, :math:`\mathbf{H}_U` :math:`(U, K)`
    """

    def __init__(self, in_channels: int, num_hyperedges: int, tau: float = 0.2):
        super().__init__()
        name = self.__class__.__name__
        if in_channels < 1 or num_hyperedges < 1:
            raise ValueError(f"'{name}' needs in_channels >= 1 and num_hyperedges >= 1 "
                             f"(got {in_channels} and {num_hyperedges})")
        if not tau > 0:
            raise ValueError(f"'{name}' needs tau > 0 (got {tau})")
        self.in_channels = in_channels
        self.num_hyperedges = num_hyperedges
        self.tau = float(tau)
        self.weight = nn.Parameter(torch.empty(in_channels, num_hyperedges))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.xavier_uniform_(self.weight)

    def logits(self, x: Tensor, user_item) -> Tuple[Tensor, Tensor]:
        r"""The item and user affinities :math:`(\mathbf{F}_m\mathbf{W}_h,\
        \mathbf{R}\mathbf{F}_m\mathbf{W}_h)` before the softmax."""
        if x.dim() != 2 or x.size(1) != self.in_channels:
            raise ValueError(f"'{self.__class__.__name__}' expects [I, {self.in_channels}] "
                             f"features (got {tuple(x.shape)})")
        # A transposed view of a [K, F] copy as the right operand: autograd then forms the
        # weight's gradient as (G^T X)^T, a fast wide product, instead of X^T G with K
        # output columns (8x slower for Baby's 4096-d image features on CPU BLAS).
        item = x @ self.weight.t().contiguous().t()
        return item, _apply(user_item, item)

    def forward(self, x: Tensor, user_item, noise: bool = True,
                generator: Optional[torch.Generator] = None) -> Tuple[Tensor, Tensor]:
        item, user = self.logits(x, user_item)
        if not noise:
            return (item / self.tau).softmax(-1), (user / self.tau).softmax(-1)
        item = gumbel_softmax(item, self.tau, generator)
        return item, gumbel_softmax(user, self.tau, generator)

    def extra_repr(self) -> str:
        return f'{self.in_channels}, {self.num_hyperedges}, tau={self.tau}'


class HGNNConv(nn.Module):
    r"""LGMRec's parameter-free hypergraph convolution (MMRec's ``HGNNLayer``) over item
    and user hyperedge assignments :math:`\mathbf{H}_I, \mathbf{H}_U`: messages go from
    items to the :math:`K` hyperedges and back, and users read the same hyperedge states,

    .. math::
        \mathbf{Z}^{(l)} = \tilde{\mathbf{H}}_I^\top \mathbf{X}^{(l)}, \qquad
        \mathbf{X}^{(l+1)} = \tilde{\mathbf{H}}_I \mathbf{Z}^{(l)}, \qquad
        \mathbf{U} = \tilde{\mathbf{H}}_U \mathbf{Z}^{(L-1)},

    returning :math:`(\mathbf{U}, \mathbf{X}^{(L)})`. In training
    :math:`\tilde{\mathbf{H}} = \operatorname{Dropout}_{1-\rho}(\mathbf{H})` (inverted
    dropout keeping each entry with probability :math:`\rho` = :obj:`keep_rate`, the item
    matrix drawn first, one draw for all :math:`L` layers); in evaluation
    :math:`\tilde{\mathbf{H}} = \mathbf{H}`.

    Args:
        num_layers (int, optional): :math:`L \ge 1` (MMRec's ``n_hyper_layer``).
            (default: :obj:`1`)
        keep_rate (float, optional): :math:`\rho \in [0, 1]`. (default: :obj:`0.5`)

    Shapes:
        - **input:** :math:`\mathbf{H}_I` :math:`(I, K)`, :math:`\mathbf{H}_U` :math:`(U, K)`,
          item embeddings :math:`(I, d)`
        - **output:** user :math:`(U, d)`, item :math:`(I, d)`
    """

    def __init__(self, num_layers: int = 1, keep_rate: float = 0.5):
        super().__init__()
        name = self.__class__.__name__
        if num_layers < 1:
            raise ValueError(f"'{name}' needs num_layers >= 1 (got {num_layers})")
        if not 0.0 <= keep_rate <= 1.0:
            raise ValueError(f"'{name}' needs 0 <= keep_rate <= 1 (got {keep_rate})")
        self.num_layers = num_layers
        self.keep_rate = float(keep_rate)

    def forward(self, item_assign: Tensor, user_assign: Tensor, x: Tensor,
                generator: Optional[torch.Generator] = None,
                return_factors: bool = False):
        r"""Returns :obj:`(user, item)`, and with :obj:`return_factors=True` also
        :obj:`(item_assign, user_assign, state)`: the (dropped-out) assignments and the last
        hyperedge state :math:`\mathbf{Z}^{(L-1)}`, so that :obj:`user == user_assign @
        state` and :obj:`item == item_assign @ state` (both tables have rank
        :math:`\le K`; LGMRec's InfoNCE uses it)."""
        if item_assign.size(0) != x.size(0) or item_assign.size(1) != user_assign.size(1):
            raise ValueError(f"'{self.__class__.__name__}' needs [I, K] and [U, K] "
                             f"assignments and [I, d] embeddings (got "
                             f"{tuple(item_assign.shape)}, {tuple(user_assign.shape)} and "
                             f"{tuple(x.shape)})")
        if self.training:
            item_assign = assignment_dropout(item_assign, self.keep_rate, generator)
            user_assign = assignment_dropout(user_assign, self.keep_rate, generator)
        for _ in range(self.num_layers):
            state = item_assign.t() @ x
            x = item_assign @ state
        if return_factors:
            return user_assign @ state, x, (item_assign, user_assign, state)
        return user_assign @ state, x

    def extra_repr(self) -> str:
        return f'num_layers={self.num_layers}, keep_rate={self.keep_rate}'


class GlobalHypergraphEmbedding(nn.Module):
    r"""LGMRec's global hypergraph embedding (GHE) of one modality: a
    :class:`HyperedgeAssignment` followed by an :class:`HGNNConv` over item embeddings
    (LGMRec feeds the collaborative, LightGCN item embeddings),

    .. math::
        (\mathbf{H}_U, \mathbf{H}_I) = \operatorname{assign}(\mathbf{F}_m, \mathbf{R}),
        \qquad (\mathbf{U}^m_g, \mathbf{I}^m_g) = \operatorname{HGNN}(\mathbf{H}_I,
        \mathbf{H}_U, \mathbf{E}_I).

    The Gumbel noise is drawn in training, and in evaluation too unless
    :obj:`eval_noise=False` (MMRec draws it in every forward pass, evaluation included);
    the dropout only in training. :meth:`assign` and :meth:`propagate` are the two halves,
    for a model that must order the random draws of several modalities as MMRec does (all
    Gumbel draws first, then the dropouts).

    Args:
        in_channels (int): raw feature width :math:`F_m`.
        num_hyperedges (int): :math:`K`. (default: :obj:`4`)
        num_layers (int): hypergraph layers :math:`L`. (default: :obj:`1`)
        tau (float): Gumbel temperature. (default: :obj:`0.2`)
        keep_rate (float): assignment keep rate. (default: :obj:`0.5`)
        eval_noise (bool): draw Gumbel noise in evaluation mode. (default: :obj:`True`)

    Shapes:
        - **input:** features :math:`(I, F_m)`, item embeddings :math:`(I, d)`,
          :math:`\mathbf{R}` :math:`(U, I)`
        - **output:** user :math:`(U, d)`, item :math:`(I, d)`
    """

    def __init__(self, in_channels: int, num_hyperedges: int = 4, num_layers: int = 1,
                 tau: float = 0.2, keep_rate: float = 0.5, eval_noise: bool = True):
        super().__init__()
        self.assignment = HyperedgeAssignment(in_channels, num_hyperedges, tau)
        self.conv = HGNNConv(num_layers, keep_rate)
        self.eval_noise = bool(eval_noise)

    def reset_parameters(self) -> None:
        self.assignment.reset_parameters()

    @property
    def draws_noise(self) -> bool:
        r"""Whether the next :meth:`forward` draws random numbers."""
        return self.training or self.eval_noise

    def assign(self, x: Tensor, user_item,
               generator: Optional[torch.Generator] = None) -> Tuple[Tensor, Tensor]:
        r"""The (item, user) assignments, with noise when :attr:`draws_noise`."""
        return self.assignment(x, user_item, self.draws_noise, generator)

    def propagate(self, item_assign: Tensor, user_assign: Tensor, x_item: Tensor,
                  generator: Optional[torch.Generator] = None,
                  return_factors: bool = False):
        r"""The (user, item) hypergraph embeddings of :obj:`x_item` (and their factors,
        see :meth:`HGNNConv.forward`)."""
        return self.conv(item_assign, user_assign, x_item, generator, return_factors)

    def forward(self, x: Tensor, x_item: Tensor, user_item,
                generator: Optional[torch.Generator] = None) -> Tuple[Tensor, Tensor]:
        return self.propagate(*self.assign(x, user_item, generator), x_item, generator)

    def extra_repr(self) -> str:
        return f'eval_noise={self.eval_noise}'
