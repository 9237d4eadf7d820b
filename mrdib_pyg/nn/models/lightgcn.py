r"""LightGCN on the precomputed user–item adjacency."""
import torch
from torch import Tensor, nn

from mrdib_pyg.data.sampling import BPRBatch
from mrdib_pyg.data.derived import UserItemGraph
from mrdib_pyg.nn.conv import LGPropagation, SparseOperator
from mrdib_pyg.nn.loss import emb_loss
from mrdib_pyg.nn.models.base import Recommender
from mrdib_pyg.nn.models.registry import register_model
from mrdib_pyg.nn.output import RecOutput


@register_model('lightgcn', 'LightGCN on the user-item graph (MMRec LightGCN)')
class LightGCN(Recommender):
    r"""The LightGCN model of `"LightGCN: Simplifying and Powering Graph Convolution Network
    for Recommendation" <https://arxiv.org/abs/2002.02126>`_, as MMRec trains it:

    .. math::
        \mathbf{E}^{(l+1)} = \hat{A}\,\mathbf{E}^{(l)}, \quad
        \mathbf{E} = \frac{1}{L+1}\sum_{l=0}^{L} \mathbf{E}^{(l)}, \quad
        \mathcal{L} = \mathrm{BPR}(\mathbf{E}) + \lambda\,\mathrm{EmbLoss}(\mathbf{E}^{(0)}_{u,i^+,i^-})

    with :math:`\hat{A}` the symmetric-normalised bipartite adjacency of the training
    interactions (:func:`~mrdib_pyg.data.adjacency.bipartite_adjacency`), built once.
    Xavier-uniform initialisation. ID-only: MRdIB refuses it.

    Args:
        num_users (int), num_items (int): table sizes.
        adj (Tensor): :obj:`[(U+I), (U+I)]` normalised adjacency (sparse).
        embedding_dim (int, optional): (default: :obj:`64`)
        num_layers (int, optional): :math:`L`. (default: :obj:`2`)
        reg_weight (float, optional): :math:`\lambda`. (default: :obj:`1e-4`)
        backend (str, optional): sparse backend of
            :class:`~mrdib_pyg.nn.conv.SparseOperator`. (default: :obj:`'csr'`)
    """

    def __init__(self, num_users: int, num_items: int, adj: Tensor, embedding_dim: int = 64,
                 num_layers: int = 2, reg_weight: float = 1e-4, backend: str = 'csr'):
        super().__init__(num_users, num_items)
        self.embedding_dim = embedding_dim
        self.reg_weight = reg_weight
        self.user_emb = nn.Parameter(torch.empty(num_users, embedding_dim))
        self.item_emb = nn.Parameter(torch.empty(num_items, embedding_dim))
        self.graph = SparseOperator(adj, symmetric=True, backend=backend)
        self.propagation = LGPropagation(num_layers, combine='mean')
        self.reset_parameters()

    @classmethod
    def graph_specs(cls, **kwargs):
        return {'adj': UserItemGraph(norm='sym')}

    def reset_parameters(self) -> None:
        nn.init.xavier_uniform_(self.user_emb)
        nn.init.xavier_uniform_(self.item_emb)

    def forward(self) -> RecOutput:
        x = torch.cat([self.user_emb, self.item_emb], dim=0)
        user, item = self.propagation(x, self.graph).split([self.num_users, self.num_items])
        return RecOutput(user=user, item=item)

    def regularizer(self, out: RecOutput, batch: BPRBatch) -> Tensor:
        return self.reg_weight * emb_loss(
            batch.rows(self.user_emb, self.item_emb),
            batch.users.numel())

    def extra_repr(self) -> str:
        return (f'{super().extra_repr()}, embedding_dim={self.embedding_dim}, '
                f'num_layers={self.propagation.num_layers}')
