r"""DualGNN: per-modality user–item graphs, fused per user, plus a sampled user–user graph."""
import math
from typing import Dict, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mrdib_pyg.data.derived import UserCoInteraction, UserItemGraph
from mrdib_pyg.data.sampling import BPRBatch
from mrdib_pyg.nn.conv.lg_propagation import LGPropagation
from mrdib_pyg.nn.conv.mmgcn_conv import row_normalize
from mrdib_pyg.nn.conv.sparse_op import SparseOperator
from mrdib_pyg.nn.conv.user_graph_conv import WEIGHTINGS, UserGraphConv
from mrdib_pyg.nn.models.base import MultimodalRecommender
from mrdib_pyg.nn.models.registry import register_model
from mrdib_pyg.nn.output import ModalityOutput, RecOutput


@register_model('dualgnn', 'DualGNN: per-modality GCNs fused by learned user weights, plus a '
                           'sampled user co-interaction graph (MMRec DualGNN)')
class DualGNN(MultimodalRecommender):
    r"""DualGNN from `"DualGNN: Dual Graph Neural Network for Multimedia Recommendation"
    <https://ieeexplore.ieee.org/document/9662444>`_ (Wang et al., IEEE TMM 2021), as
    MMRec's ``models/dualgnn.py`` trains it.

    Every modality :math:`m` maps its item features through an MLP, stacks them under a
    learned user preference :math:`\mathbf{P}_m \in \mathbb{R}^{U \times d}`, normalises every
    row and propagates twice over the symmetric-normalised user–item graph
    :math:`\hat{A} = D^{-1/2} A D^{-1/2}` (:class:`~mrdib_pyg.data.derived.UserItemGraph`,
    no self-loops; MMRec's ``Base_gcn`` with :obj:`aggr='add'`), summing the layers:

    .. math::
        \mathbf{X}_m &= \operatorname{normalize}\Big(\begin{bmatrix} \mathbf{P}_m \\
            \mathbf{W}_{m,2}\, \sigma(\mathbf{W}_{m,1} \mathbf{F}_m + \mathbf{b}_{m,1})
            + \mathbf{b}_{m,2} \end{bmatrix}\Big), \qquad
        \mathbf{Z}_m = \mathbf{X}_m + \hat{A}\mathbf{X}_m + \hat{A}^2\mathbf{X}_m

    (:math:`\sigma` the leaky ReLU, slope 0.01; widths :math:`d_m \rightarrow 256
    \rightarrow d`). Items sum the modalities; users mix them with learned per-user weights
    :math:`\alpha_{u,m}` (initialised to a softmax, then free) and add the user–user term of
    :class:`~mrdib_pyg.nn.conv.UserGraphConv` over the epoch's sample of the :math:`k=40`
    heaviest co-interaction neighbours (:class:`~mrdib_pyg.data.derived.UserCoInteraction`,
    padded by resampling, softmax weights over the counts; redrawn in :meth:`pre_epoch`):

    .. math::
        \mathbf{i}_i = \sum_m \mathbf{z}_{m,i}, \qquad
        \tilde{\mathbf{u}}_u = \sum_m \alpha_{u,m}\, \mathbf{z}_{m,u}, \qquad
        \mathbf{u}_u = \tilde{\mathbf{u}}_u + \sum_{t=1}^{k} w_{u,t}\,
            \tilde{\mathbf{u}}_{s_{u,t}}, \qquad \hat{y}_{ui} = \mathbf{u}_u^\top \mathbf{i}_i

    (with one modality, :math:`\tilde{\mathbf{u}} = \mathbf{z}_{m,\text{user}}`, as MMRec).
    Loss, MMRec's (a base-2 logarithm; :math:`\mathcal{B}` the batch's users):

    .. math::
        \mathcal{L} = -\frac{1}{B}\sum_b \log_2 \sigma(s^+_b - s^-_b)
        + \lambda \Big(\sum_m \operatorname{mean}\big(\mathbf{P}_m[\mathcal{B}]^2\big)
        + \operatorname{mean}(\boldsymbol{\alpha}^2)\Big)

    Per-modality outputs (for plug-ins): :math:`\mathbf{Z}_m`'s item rows and its own user
    rows (:obj:`ModalityOutput(item=[I, d], user=[U, d])`), before fusion and before the
    user–user term. No replace mode (:attr:`supports_replace` is off).

    **Computation.** :math:`\hat{A}` is one CSR :class:`~mrdib_pyg.nn.conv.SparseOperator`
    and all modalities propagate in one product per layer (their columns side by side). The
    user–user sample is a sparse :math:`[U, U]` matrix rebuilt once per epoch, vectorised
    (MMRec loops over the users in Python every epoch).

    **MMRec's defaults** (``configs/model/DualGNN.yaml``, first grid values): embedding 64,
    :obj:`aggr_mode='add'`, :obj:`reg_weight=0.1`, learning rate 0.1
    (:attr:`train_defaults`; MMRec's scheduler, no decay). Hard-coded in MMRec: :math:`k=40`,
    softmax user weighting, MLP width :math:`4d = 256`, two propagation steps (the YAML's
    :obj:`n_layers: 2` and the class's :obj:`num_layer = 1` are never read). Initialisation
    as MMRec: Xavier-normal :math:`\mathbf{P}_m`, Xavier-normal :math:`\boldsymbol{\alpha}`
    passed through a softmax over modalities, PyTorch's default :obj:`Linear` init.

    **Deliberate differences from MMRec**:

    * MMRec sums the item tables with an in-place ``+=`` on the image table, which the user
      fusion reads afterwards, so it actually computes :math:`\tilde{\mathbf{u}} =
      \alpha_{\text{image}}(\mathbf{z}_{\text{image}} + \mathbf{z}_{\text{text}}) +
      \alpha_{\text{text}}\mathbf{z}_{\text{text}}`. We fuse the modalities as written
      (no aliasing); MMRec's numbers: :obj:`mmrec_inplace_sum=True` (the image table, or the
      first modality without one, receives the sum; the per-modality outputs stay the
      unaliased tables).
    * MMRec also creates an item weight matrix :math:`\boldsymbol{\alpha}^{I}` that no
      forward reads and regularises it (:math:`+\lambda\operatorname{mean}
      ((\boldsymbol{\alpha}^{I})^2)`); that term moves nothing but itself, so it is left out
      (MMRec's loss value is ours plus it). Its unused ``MLP_v``/``MLP_t``/``MLP_user``
      layers, never-used "dropped-edge" graphs (computed in ``__init__``) and
      ``result_embed`` initial tensor are not reproduced either.
    * The padding draw uses torch's random numbers, from its own stream by default: epoch
      :math:`e` draws with a generator seeded with :obj:`sampling_seed + e`
      (:obj:`sampling_seed` is taken from the global stream at construction and saved in
      the state dict), so a resumed run redraws the same samples;
      :obj:`sampling_rng='global'` draws from torch's global stream. MMRec draws from
      NumPy's global stream, which cannot be reproduced; the distribution of the sample is
      MMRec's (the same growing-list resampling).
    * Tied counts at the :math:`k`-th place: we keep the smaller user ids; MMRec keeps
      whichever :func:`torch.topk` returned first when it wrote ``user_graph_dict.npy``.
    * The loss uses :math:`\log\sigma(\cdot)/\ln 2` via :func:`~torch.nn.functional.logsigmoid`;
      MMRec's :math:`\log_2(\sigma(\cdot))` is the same to float precision, except that it
      becomes infinite once :math:`\sigma` underflows (differences below about :math:`-88`).
    * MMRec's ranking uses the tables of the **last training batch's** forward (before that
      batch's step); we recompute them in evaluation mode. MMRec's:
      :obj:`score_last_train_forward=True`.
    * A model used before any :meth:`pre_epoch` draws epoch 0's sample on its first
      forward (MMRec fails); modalities other than image and text are supported.

    MMRec's exact forward and loss (up to the random padding and the constant
    :math:`\boldsymbol{\alpha}^{I}` term): :obj:`mmrec_inplace_sum=True,
    score_last_train_forward=True`.

    Args:
        num_users (int), num_items (int): table sizes.
        features (dict): modality name :math:`\rightarrow` :obj:`[I, d_m]` raw features.
        adj (Tensor): :obj:`[U+I, U+I]` symmetric-normalised user–item matrix (sparse, users
            first), from :meth:`graph_specs`.
        user_graph (Tensor): :obj:`[U, U]` sparse co-interaction counts, from
            :meth:`graph_specs` (:class:`~mrdib_pyg.data.derived.UserCoInteraction`).
        embedding_dim (int, optional): :math:`d`. (default: :obj:`64`)
        hidden_dim (int, optional): width of the MLP's hidden layer. (default: :obj:`256`)
        num_layers (int, optional): propagation steps over :math:`\hat{A}`. (default: :obj:`2`)
        user_topk (int, optional): :math:`k`, neighbours sampled per user. (default: :obj:`40`)
        user_weighting (str, optional): :obj:`'softmax'` over the counts or :obj:`'mean'`.
            (default: :obj:`'softmax'`)
        reg_weight (float, optional): :math:`\lambda`. (default: :obj:`0.1`)
        mmrec_inplace_sum (bool, optional): reproduce MMRec's aliased user fusion.
            (default: :obj:`False`)
        score_last_train_forward (bool, optional): rank with the last training forward's
            tables, as MMRec. (default: :obj:`False`)
        sampling_rng (str, optional): :obj:`'epoch'` (a generator seeded with
            :obj:`sampling_seed + epoch`) or :obj:`'global'`. (default: :obj:`'epoch'`)
        sampling_seed (int, optional): base seed of :obj:`'epoch'` (default: drawn from the
            global stream).
        backend (str, optional): of :class:`~mrdib_pyg.nn.conv.SparseOperator`.
            (default: :obj:`'csr'`)
        order (list, optional): modality order (default: MMRec's, text first).
    """
    train_defaults = {'lr': 0.1}

    def __init__(self, num_users: int, num_items: int, features: Mapping[str, Tensor],
                 adj: Tensor, user_graph: Tensor, embedding_dim: int = 64,
                 hidden_dim: int = 256, num_layers: int = 2, user_topk: int = 40,
                 user_weighting: str = 'softmax', reg_weight: float = 0.1,
                 mmrec_inplace_sum: bool = False, score_last_train_forward: bool = False,
                 sampling_rng: str = 'epoch', sampling_seed: Optional[int] = None,
                 backend: str = 'csr', order: Optional[Sequence[str]] = None):
        super().__init__(num_users, num_items, features, order)
        name = self.__class__.__name__
        n = self.num_users + self.num_items
        self.check_graph_shapes({'adj': (adj, (n, n)),
                                 'user_graph': (user_graph, (num_users, num_users))})
        if embedding_dim < 1 or hidden_dim < 1:
            raise ValueError(f"'{name}' needs positive widths (got embedding_dim="
                             f"{embedding_dim}, hidden_dim={hidden_dim})")
        if reg_weight < 0:
            raise ValueError(f"'{name}' needs reg_weight >= 0 (got {reg_weight})")
        if user_weighting not in WEIGHTINGS:
            raise ValueError(f"'{name}' got unknown user_weighting '{user_weighting}' "
                             f"(expected one of {WEIGHTINGS})")
        if sampling_rng not in ('epoch', 'global'):
            raise ValueError(f"'{name}' got unknown sampling_rng '{sampling_rng}' "
                             f"(expected 'epoch' or 'global')")
        self.embedding_dim = embedding_dim
        self.hidden_dim = hidden_dim
        self.user_topk = user_topk
        self.reg_weight = float(reg_weight)
        self.mmrec_inplace_sum = bool(mmrec_inplace_sum)
        self.score_last_train_forward = bool(score_last_train_forward)
        self.sampling_rng = sampling_rng

        self.preference = nn.ParameterDict({
            m: nn.Parameter(torch.empty(num_users, embedding_dim)) for m in self.modalities})
        self.mlp = nn.ModuleDict({
            m: nn.Sequential(nn.Linear(self.feature_dims[m], hidden_dim), nn.LeakyReLU(0.01),
                             nn.Linear(hidden_dim, embedding_dim))
            for m in self.modalities})
        #: :math:`\boldsymbol{\alpha}`, one column per modality in :attr:`modalities` order.
        self.modality_weight = nn.Parameter(torch.empty(num_users, len(self.modalities)))
        self.graph = SparseOperator(adj, symmetric=True, backend=backend)
        self.propagation = LGPropagation(num_layers, combine='sum')
        self.user_graph = UserGraphConv(user_graph, k=user_topk, weighting=user_weighting,
                                        backend=backend)
        self.reset_parameters()
        if sampling_seed is None:  # from the global stream: seeding the run fixes it
            sampling_seed = int(torch.randint(2**62, ()))
        # Persistent: a checkpoint carries it, so a resumed run redraws the same samples.
        self.register_buffer('sampling_seed', torch.tensor(int(sampling_seed)))

    @classmethod
    def graph_specs(cls, modalities: Sequence[str] = (), user_topk: int = 40, **kwargs):
        return {'adj': UserItemGraph(norm='sym'),
                'user_graph': UserCoInteraction(k=int(user_topk))}

    def reset_parameters(self) -> None:
        with torch.no_grad():
            for p in self.preference.values():
                nn.init.xavier_normal_(p)
            # MMRec: Xavier-normal on [U, M, 1] (same fans as [U, M]), then a softmax.
            nn.init.xavier_normal_(self.modality_weight)
            self.modality_weight.copy_(torch.softmax(self.modality_weight, dim=1))
        for mlp in self.mlp.values():
            for layer in mlp:
                if isinstance(layer, nn.Linear):
                    layer.reset_parameters()
        self._last_train = None

    # -- per-epoch sample -------------------------------------------------------------
    def sampling_generator(self, epoch: int) -> Optional[torch.Generator]:
        r"""The random stream of epoch :obj:`epoch`'s user–user sample: a generator seeded
        with :obj:`sampling_seed + epoch` (:obj:`sampling_rng='epoch'`), or :obj:`None`,
        torch's global stream (:obj:`'global'`)."""
        if self.sampling_rng == 'global':
            return None
        generator = torch.Generator(device=self.user_graph.neighbors.device)
        return generator.manual_seed(int(self.sampling_seed) + int(epoch))

    def pre_epoch(self, epoch: int) -> None:
        r"""Draws epoch :obj:`epoch`'s user–user sample (MMRec's ``pre_epoch_processing``)."""
        self.user_graph.resample(self.sampling_generator(epoch))
        self._cache = None

    # -- forward ----------------------------------------------------------------------
    def modality_tables(self) -> Dict[str, Tuple[Tensor, Tensor]]:
        r""":math:`\mathbf{Z}_m` for every modality, as :obj:`([U, d], [I, d])`."""
        x = torch.cat([torch.cat([row_normalize(self.preference[m]),
                                  row_normalize(self.mlp[m](self.feature(m)))], dim=0)
                       for m in self.modalities], dim=1)
        z = self.propagation(x, self.graph)  # every modality in one product per layer
        return {m: tuple(part.split([self.num_users, self.num_items]))
                for m, part in zip(self.modalities, z.split(self.embedding_dim, dim=1))}

    def fuse_users(self, users: Dict[str, Tensor]) -> Tensor:
        r""":math:`\tilde{\mathbf{u}} = \sum_m \alpha_{u,m} \mathbf{z}_{m,u}` (MMRec's
        aliased version with :obj:`mmrec_inplace_sum`)."""
        if len(self.modalities) == 1:
            return users[self.modalities[0]]
        if self.mmrec_inplace_sum:
            first = 'image' if 'image' in users else self.modalities[0]
            users = dict(users)
            users[first] = sum(users[m] for m in self.modalities)
        return sum(self.modality_weight[:, j:j + 1] * users[m]
                   for j, m in enumerate(self.modalities))

    def forward(self) -> RecOutput:
        if self.user_graph.op is None:  # used before any pre_epoch(): draw epoch 0's
            self.pre_epoch(0)
        reps = self.modality_tables()
        item = sum(reps[m][1] for m in self.modalities)
        user = self.fuse_users({m: reps[m][0] for m in self.modalities})
        user = user + self.user_graph(user)
        out = RecOutput(user=user, item=item, modalities={
            m: ModalityOutput(item=i, user=u) for m, (u, i) in reps.items()})
        return self.remember_training_tables(out)


    # -- loss -------------------------------------------------------------------------
    def regularizer(self, out: RecOutput, batch: BPRBatch) -> Tensor:
        reg = sum(self.preference[m][batch.users].pow(2).mean() for m in self.modalities)
        return self.reg_weight * (reg + self.modality_weight.pow(2).mean())

    def loss(self, out: RecOutput, batch: BPRBatch) -> Tensor:
        r"""MMRec's :math:`-\operatorname{mean}\log_2\sigma(s^+ - s^-)` plus
        :meth:`regularizer`."""
        u, pos, neg = batch.rows(out.user, out.item)
        diff = (u * pos).sum(-1) - (u * neg).sum(-1)
        return -F.logsigmoid(diff).mean() / math.log(2.0) + self.regularizer(out, batch)

    def extra_repr(self) -> str:
        return (f'{super().extra_repr()}, embedding_dim={self.embedding_dim}, '
                f'user_topk={self.user_topk}, reg_weight={self.reg_weight}, '
                f'mmrec_inplace_sum={self.mmrec_inplace_sum}')
