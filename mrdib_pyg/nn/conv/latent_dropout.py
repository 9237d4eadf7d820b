r"""BM3's bootstrap pieces: dropout target views of latent tables, the cosine alignment
loss, and the predictor head that pairs them (negative-free self-supervision)."""
from typing import Dict, Mapping, NamedTuple, Optional

import torch.nn.functional as F
from torch import Tensor, nn


def latent_dropout(x: Tensor, p: float) -> Tensor:
    r"""The *target view* of a latent table in `"Bootstrap Latent Representations for
    Multi-modal Recommendation" <https://arxiv.org/abs/2207.05969>`_ (BM3): a dropout copy
    of the online table that carries no gradient,

    .. math::
        \tilde{\mathbf{X}} = \operatorname{sg}(\mathbf{X}) \odot \mathbf{M} / (1 - p),
        \qquad M_{ij} \sim \operatorname{Bernoulli}(1 - p),

    with :math:`\operatorname{sg}` the stop-gradient. The dropout is part of the objective,
    not a regulariser of the forward pass, so it applies whatever the module's mode (as
    MMRec's :func:`F.dropout` call with its default :obj:`training=True`). It is
    :func:`torch.nn.functional.dropout` itself, on the detached table: with the same
    random state it draws MMRec's very mask; :obj:`p = 0` draws nothing.

    Args:
        x (Tensor): the online table :math:`(N, F)` (any shape).
        p (float): drop probability :math:`p \in [0, 1)`.
    """
    return F.dropout(x.detach(), p, training=True)


def cosine_alignment(online: Tensor, target: Tensor) -> Tensor:
    r"""BM3's alignment loss between predicted online rows and target rows,

    .. math::
        \mathcal{L}(\mathbf{h}, \tilde{\mathbf{z}}) = 1 - \frac{1}{B}\sum_{b=1}^{B}
        \frac{\mathbf{h}_b^\top \operatorname{sg}(\tilde{\mathbf{z}}_b)}
        {\max(\lVert\mathbf{h}_b\rVert\, \lVert\tilde{\mathbf{z}}_b\rVert, \epsilon)},

    (:func:`torch.nn.functional.cosine_similarity` with its :math:`\epsilon = 10^{-8}`);
    the target never receives a gradient.

    Shapes:
        - **input:** :math:`(B, F)` and :math:`(B, F)`
        - **output:** scalar
    """
    return 1 - F.cosine_similarity(online, target.detach(), dim=-1).mean()


class BootstrapTerms(NamedTuple):
    r"""The alignment terms of :class:`LatentBootstrap`, each a scalar.

    Args:
        user_item: :math:`\mathcal{L}(P\mathbf{u}, \tilde{\mathbf{i}})`.
        item_user: :math:`\mathcal{L}(P\mathbf{i}, \tilde{\mathbf{u}})`.
        modality_item: modality :math:`m \rightarrow \mathcal{L}(P\mathbf{x}^m,
            \tilde{\mathbf{i}})` (the modality view predicts the item's target).
        modality_self: modality :math:`m \rightarrow \mathcal{L}(P\mathbf{x}^m,
            \tilde{\mathbf{x}}^m)` (the modality view predicts its own target).
    """
    user_item: Tensor
    item_user: Tensor
    modality_item: Dict[str, Tensor]
    modality_self: Dict[str, Tensor]

    def interaction(self) -> Tensor:
        r""":math:`\mathcal{L}_{ui} + \mathcal{L}_{iu}`."""
        return self.user_item + self.item_user

    def modality(self) -> Tensor:
        r""":math:`\sum_m \mathcal{L}_{m,i} + \sum_m \mathcal{L}_{m,m}` (summed in MMRec's
        order: every modality–item term, then every modality–self term); zero without
        modalities."""
        terms = list(self.modality_item.values()) + list(self.modality_self.values())
        if not terms:
            return self.user_item.new_zeros(())
        total = terms[0]
        for t in terms[1:]:
            total = total + t
        return total


class LatentBootstrap(nn.Module):
    r"""The negative-free bootstrap objective of `"Bootstrap Latent Representations for
    Multi-modal Recommendation" <https://arxiv.org/abs/2207.05969>`_ (BM3): a shared linear
    predictor :math:`P` maps *online* rows, and each is pulled towards a dropout *target*
    view (:func:`latent_dropout`) of another table, with no negatives and no gradient
    through the targets.

    Given online user / item tables :math:`\mathbf{U}, \mathbf{I}` and modality tables
    :math:`\mathbf{X}^m` (all of width :math:`d`), and a batch of observed pairs
    :math:`(u_b, i_b)`:

    .. math::
        \tilde{\mathbf{U}} = \operatorname{drop}_p(\mathbf{U}),\quad
        \tilde{\mathbf{I}} = \operatorname{drop}_p(\mathbf{I}),\quad
        \tilde{\mathbf{X}}^m = \operatorname{drop}_p(\mathbf{X}^m)

        \mathcal{L}_{ui} = \mathcal{L}(P\mathbf{U}_{u}, \tilde{\mathbf{I}}_{i}),\quad
        \mathcal{L}_{iu} = \mathcal{L}(P\mathbf{I}_{i}, \tilde{\mathbf{U}}_{u}),\quad
        \mathcal{L}_{m,i} = \mathcal{L}(P\mathbf{X}^m_{i}, \tilde{\mathbf{I}}_{i}),\quad
        \mathcal{L}_{m,m} = \mathcal{L}(P\mathbf{X}^m_{i}, \tilde{\mathbf{X}}^m_{i})

    with :math:`\mathcal{L}` the :func:`cosine_alignment` loss, :math:`P\mathbf{x} =
    W\mathbf{x} + \mathbf{b}`. The masks are drawn on the *full* tables, in the order user,
    item, then the modalities in the given order (MMRec's order, so the same random state
    draws MMRec's masks; a user or item repeated in the batch keeps one mask); the
    predictor applies to the batch rows only (row-wise, so equal to MMRec's predictor on
    the full table followed by indexing).

    Args:
        channels (int): width :math:`d` of every table (the predictor is
            :math:`d \rightarrow d`).
        dropout (float, optional): target dropout :math:`p \in [0, 1)`.
            (default: :obj:`0.3`, the first value of MMRec's BM3 grid)

    Shapes:
        - **input:** user table :math:`(U, d)`, item table :math:`(I, d)`, batch users and
          items :math:`(B)`, modality tables :math:`(I, d)` each (optionally their batch
          rows :math:`(B, d)`)
        - **output:** :class:`BootstrapTerms` of scalars
    """

    def __init__(self, channels: int, dropout: float = 0.3):
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"'{self.__class__.__name__}' needs 0 <= dropout < 1 "
                             f"(got {dropout})")
        self.channels = int(channels)
        self.dropout = float(dropout)
        self.predictor = nn.Linear(channels, channels)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        r"""MMRec's initialisation: Xavier-normal weight, PyTorch's default bias."""
        self.predictor.reset_parameters()
        nn.init.xavier_normal_(self.predictor.weight)

    def predict(self, x: Tensor) -> Tensor:
        r"""The predictor :math:`P\mathbf{x}` (also BM3's scoring map)."""
        return self.predictor(x)

    def forward(self, user: Tensor, item: Tensor, users: Tensor, items: Tensor,
                modalities: Optional[Mapping[str, Tensor]] = None,
                modality_rows: Optional[Mapping[str, Tensor]] = None) -> BootstrapTerms:
        r"""The alignment terms on a batch.

        Args:
            user (Tensor): :math:`(U, d)` online user table.
            item (Tensor): :math:`(I, d)` online item table.
            users (Tensor), items (Tensor): :math:`(B)` the batch's observed pairs.
            modalities (dict, optional): modality :math:`\rightarrow` :math:`(I, d)` online
                modality table (its target view is drawn on the full table).
            modality_rows (dict, optional): modality :math:`\rightarrow` :math:`(B, d)` the
                same tables' rows at :obj:`items`, when the caller has them cheaper than by
                indexing (e.g. projecting only the batch's feature rows, so that the
                backward pass skips the other items). (default: :obj:`modalities[m][items]`)
        """
        modalities = dict(modalities or {})
        rows = dict(modality_rows or {})
        for m in rows:
            if m not in modalities:
                raise ValueError(f"'{self.__class__.__name__}': modality_rows has '{m}', "
                                 f"which is not in modalities {list(modalities)}")
        # MMRec's order of random draws: user, item, then each modality.
        user_t = latent_dropout(user, self.dropout)
        item_t = latent_dropout(item, self.dropout)
        mod_t = {m: latent_dropout(x, self.dropout) for m, x in modalities.items()}
        # index_select: a plain row gather, with a cheaper backward than x[idx]
        item_t_rows = item_t.index_select(0, items)
        pu = self.predict(user.index_select(0, users))
        pi = self.predict(item.index_select(0, items))
        mod_item, mod_self = {}, {}
        for m, x in modalities.items():
            px = self.predict(rows[m] if m in rows else x.index_select(0, items))
            mod_item[m] = cosine_alignment(px, item_t_rows)
            mod_self[m] = cosine_alignment(px, mod_t[m].index_select(0, items))
        return BootstrapTerms(user_item=cosine_alignment(pu, item_t_rows),
                              item_user=cosine_alignment(pi, user_t.index_select(0, users)),
                              modality_item=mod_item, modality_self=mod_self)

    def extra_repr(self) -> str:
        return f'{self.channels}, dropout={self.dropout}'
