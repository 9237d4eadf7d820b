r"""BPR matrix factorisation."""
import torch
from torch import Tensor, nn

from mrdib_pyg.data.sampling import BPRBatch
from mrdib_pyg.nn.loss import emb_loss
from mrdib_pyg.nn.models.base import Recommender
from mrdib_pyg.nn.models.registry import register_model
from mrdib_pyg.nn.output import RecOutput


@register_model('bprmf', 'matrix factorisation with BPR (MMRec BPR)')
class BPRMF(Recommender):
    r"""Matrix factorisation trained with the BPR loss of `"BPR: Bayesian Personalized
    Ranking from Implicit Feedback" <https://arxiv.org/abs/1205.2618>`_:

    .. math::
        \hat{y}_{ui} = \mathbf{e}_u^\top \mathbf{e}_i, \qquad
        \mathcal{L} = \mathrm{BPR} + \lambda \,\frac{\|\mathbf{E}_u\|_F + \|\mathbf{E}_{i^+}\|_F
        + \|\mathbf{E}_{i^-}\|_F}{B}

    (MMRec's ``EmbLoss``: plain, not squared, norms of the batch rows). Xavier-normal
    initialisation as MMRec. An ID-only backbone: MRdIB refuses it.

    Args:
        num_users (int), num_items (int): table sizes.
        embedding_dim (int, optional): (default: :obj:`64`)
        reg_weight (float, optional): :math:`\lambda`. (default: :obj:`1e-4`)
    """

    def __init__(self, num_users: int, num_items: int, embedding_dim: int = 64,
                 reg_weight: float = 1e-4):
        super().__init__(num_users, num_items)
        self.embedding_dim = embedding_dim
        self.reg_weight = reg_weight
        self.user_emb = nn.Parameter(torch.empty(num_users, embedding_dim))
        self.item_emb = nn.Parameter(torch.empty(num_items, embedding_dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.xavier_normal_(self.user_emb)
        nn.init.xavier_normal_(self.item_emb)

    def forward(self) -> RecOutput:
        return RecOutput(user=self.user_emb, item=self.item_emb)

    def regularizer(self, out: RecOutput, batch: BPRBatch) -> Tensor:
        return self.reg_weight * emb_loss(
            batch.rows(out.user, out.item),
            batch.users.numel())
