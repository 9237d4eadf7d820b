r"""MRdIB: the Multimodal Representation-disentangled Information Bottleneck plug-in."""
import itertools
import math
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Tuple

import torch
from torch import Tensor, nn
from torch.nn import Parameter

from mrdib_pyg.data.sampling import BPRBatch
from mrdib_pyg.nn.loss import bpr_loss
from mrdib_pyg.nn.mine import MINECritic
from mrdib_pyg.nn.output import RecOutput


@dataclass
class MRdIBOutput:
    r"""What :meth:`MRdIB.forward` (and :meth:`MRdIB.loss_terms`) returns.

    Args:
        loss (Tensor): scalar :math:`\mathcal{L}_{MIB} + \alpha_2 \max(\hat{I}_{DV}, 0)
            + \alpha_3 \mathcal{L}_U` over the computed terms, to *add* to the backbone's loss.
        terms (dict): the unweighted terms, each a scalar: :obj:`'synergy'` (fused BPR, the
            first term of :math:`\mathcal{L}_{MIB}`), :obj:`'kl'`, :obj:`'unique'` and
            :obj:`'redundant'` (the plain Donsker–Varadhan value summed over modality pairs, an
            MI estimate in nats, also when it is below the floor). A switched-off term is
            absent. :obj:`'sigma'` (mean posterior standard deviation) is a diagnostic.
        encoding (BatchEncoding): the batch's posteriors and samples.

    :attr:`z` and :attr:`z_neg` (modality :math:`\rightarrow` :obj:`[B, latent_dim]` samples of
    the positive / negative items, rows aligned with the batch; the means in evaluation mode)
    are gathered on access only.
    """
    loss: Tensor
    terms: Dict[str, Tensor]
    encoding: 'BatchEncoding'

    @property
    def z(self) -> Dict[str, Tensor]:
        return {m: z[self.encoding.pos] for m, z in self.encoding.z.items()}

    @property
    def z_neg(self) -> Dict[str, Tensor]:
        return {m: z[self.encoding.neg] for m, z in self.encoding.z.items()}


@dataclass
class BatchEncoding:
    r"""The posteriors of a batch's items, each unique item encoded once
    (:meth:`MRdIB.encode_batch`).

    Args:
        items (Tensor): :obj:`[N]` the unique items of :obj:`pos` :math:`\cup` :obj:`neg`.
        pos (Tensor), neg (Tensor): :obj:`[B]` row of each positive / negative in
            :obj:`items`.
        mine_rows (Tensor): rows of the *unique positive* items (the redundant term's pairs:
            an item repeated in the batch must not pair with itself as a "marginal" pair).
        mu (dict), logvar (dict), std (dict), z (dict): modality :math:`\rightarrow`
            :obj:`[N, d]` (:obj:`std` :math:`= e^{\ell/2}`, computed once for the sample, the
            KL and the logs).
    """
    items: Tensor
    pos: Tensor
    neg: Tensor
    mine_rows: Tensor
    mu: Dict[str, Tensor]
    logvar: Dict[str, Tensor]
    std: Dict[str, Tensor]
    z: Dict[str, Tensor]

    def mine_pairs(self, detach: bool = False) -> Dict[str, Tensor]:
        r"""Modality :math:`\rightarrow` :obj:`[P, d]` samples of the unique positives."""
        return {m: (z.detach() if detach else z).index_select(0, self.mine_rows)
                for m, z in self.z.items()}


_EMPTY_DICT = nn.ModuleDict()


def _key(name: str) -> str:
    r"""A :class:`~torch.nn.ModuleDict` key for any modality name: '.' is not allowed in
    keys and '|' joins pair keys, so both are %-escaped (with '%' itself); a name that would
    shadow a :class:`~torch.nn.ModuleDict` attribute (e.g. 'type') gets a leading '%'."""
    key = name.replace('%', '%25').replace('.', '%2E').replace('|', '%7C')
    if not key or hasattr(_EMPTY_DICT, key):
        key = '%' + key
    return key


def _kl_std_normal(mu: Tensor, logvar: Tensor) -> Tensor:
    r""":math:`\mathrm{KL}(\mathcal{N}(\mu, \mathrm{diag}\,\sigma^2) \,\|\, \mathcal{N}(0, I))`
    per row, summed over the last dimension."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(-1)


class VariationalEncoder(nn.Module):
    r"""The stochastic encoder :math:`q(z \mid x) = \mathcal{N}(\mu(x), \mathrm{diag}\,
    e^{\ell(x)})` of one modality, conditioned so that it stays finite on any backbone:

    .. math::
        h = \mathrm{Norm}(x), \qquad [\mu \,\|\, r] = \mathrm{Enc}(h), \qquad
        \ell = L \tanh(r / L)

    Backbone representations have any scale: VBPR's :math:`W_v f_v` over 4096-d non-negative
    CNN features reaches :math:`|x| \approx 20` at initialisation and grows by about
    :math:`\text{lr}\cdot\|f\|_1` per Adam step; an encoder fed that as is output
    log-variances of :math:`\pm 100` (KL :math:`10^{17}`).

    * :obj:`logvar_bound` :math:`L` bounds the log-variance smoothly to :math:`(-L, L)`
      (:math:`L = 6`: :math:`\sigma \in (0.05, 20)`), so the KL and its gradient stay bounded;
      :obj:`None` leaves it unbounded. At initialisation :math:`\ell \approx 0` either way.
    * :obj:`input_norm='scale'` divides :math:`x` by one constant, the RMS of the first batch
      it sees (a buffer, saved with the module): the encoder starts on unit-scale inputs, and
      the gradient still reaches the *scale* of the backbone's representation, so the KL keeps
      regularising it as the paper's objective does. :obj:`'layer'` standardises each row
      (:class:`~torch.nn.LayerNorm` without affine parameters): also stable, but blind to the
      scale of :math:`x`, which removed most of MRdIB's gain on planted-factor VBPR (+2.8% vs
      +12% Recall@20). :obj:`'none'` feeds :math:`x` as is.

    Args:
        in_dim (int): width of :math:`x`.
        latent_dim (int): :math:`d`.
        hidden (int, optional): hidden width of an MLP encoder; :obj:`None`: one
            :class:`~torch.nn.Linear`. (default: :obj:`None`)
        input_norm (str, optional): :obj:`'scale'`, :obj:`'layer'` or :obj:`'none'`.
            (default: :obj:`'scale'`)
        logvar_bound (float, optional): :math:`L`. (default: :obj:`6.0`)

    Shapes:
        - **input:** :math:`(N, d_{in})`
        - **output:** :math:`\mu` :math:`(N, d)`, :math:`\ell` :math:`(N, d)`
    """
    NORMS = ('scale', 'layer', 'none')

    def __init__(self, in_dim: int, latent_dim: int, hidden: Optional[int] = None,
                 input_norm: str = 'scale', logvar_bound: Optional[float] = 6.0):
        super().__init__()
        name = self.__class__.__name__
        if input_norm not in self.NORMS:
            raise ValueError(f"{name}: input_norm must be one of {self.NORMS}, "
                             f"got '{input_norm}'")
        if logvar_bound is not None and not logvar_bound > 0:
            raise ValueError(f"{name}: logvar_bound must be > 0 or None, got {logvar_bound}")
        self.in_dim, self.latent_dim, self.hidden = int(in_dim), int(latent_dim), hidden
        self.input_norm, self.logvar_bound = input_norm, logvar_bound
        self.norm = (nn.LayerNorm(in_dim, elementwise_affine=False)
                     if input_norm == 'layer' else nn.Identity())
        # 'scale': 1 / RMS of the first batch, set once (0 = not calibrated yet)
        self.register_buffer('inv_scale', torch.zeros(()))
        # whether inv_scale is known to be set: reading the buffer on every call would wait
        # for the GPU each time (cleared when a state dict is loaded)
        self._calibrated = False
        if hidden is None:
            self.net = nn.Linear(in_dim, 2 * latent_dim)
        else:
            self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(),
                                     nn.Linear(hidden, 2 * latent_dim))
        self.reset_parameters()

    def reset_parameters(self):
        for module in self.net.modules():
            if isinstance(module, nn.Linear):
                module.reset_parameters()

    def forward(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        if self.input_norm == 'scale':
            if not self._calibrated:
                if self.inv_scale == 0:
                    with torch.no_grad():
                        self.inv_scale.fill_(
                            float(x.pow(2).mean().sqrt().clamp_min(1e-12)) ** -1)
                self._calibrated = True
            x = x * self.inv_scale
        mu, raw = self.net(self.norm(x)).chunk(2, dim=-1)
        if self.logvar_bound is None:
            return mu, raw
        bound = self.logvar_bound
        # L tanh(r / L) written as 2L sigmoid(2r / L) - L: the same function, and torch's
        # CPU sigmoid is several times faster than its tanh
        return mu, torch.sigmoid(raw * (2.0 / bound)) * (2.0 * bound) - bound

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._calibrated = False  # the loaded scale may be 0 (saved before the first batch)

    def extra_repr(self) -> str:
        return f'input_norm={self.input_norm}, logvar_bound={self.logvar_bound}'


class MRdIB(nn.Module):
    r"""The Multimodal Representation-disentangled Information Bottleneck from the
    `"Multimodal Representation-disentangled Information Bottleneck for Multimodal
    Recommendation" <https://arxiv.org/abs/2509.20225>`_ paper (Wang et al., 2025): a
    training-only plug-in that attaches to a backbone's per-modality representations
    (:attr:`~mrdib_pyg.nn.output.RecOutput.modalities`) and returns extra loss terms.

    For every modality :math:`m` (any names, at least two) with item representation
    :math:`x_m` a variational encoder gives

    .. math::
        q(z_m \mid x_m) = \mathcal{N}\big(\mu_m(x_m), \mathrm{diag}\,
        e^{\ell_m(x_m)}\big), \qquad
        [\mu_m \,\|\, \ell_m] = \mathrm{Enc}_m(x_m) \in \mathbb{R}^{2d},

    sampled as :math:`z_m = \mu_m + e^{\ell_m/2} \odot \epsilon` in training and
    :math:`z_m = \mu_m` in evaluation (:class:`VariationalEncoder`: by default the input is
    divided by a constant set on the first batch and :math:`\ell_m` bounded to
    :math:`(-6, 6)`; see there why).
    On a batch of BPR triples :math:`(u, i^+, i^-)`, with
    :math:`\mathrm{BPR}(s^+, s^-) = -\overline{\log \sigma(s^+ - s^-)}`:

    * **Unique** (one predictor per modality):
      :math:`\mathcal{L}_U = \sum_m \mathrm{BPR}(\langle u_m, z_m^{i^+}\rangle,
      \langle u_m, z_m^{i^-}\rangle)`, where :math:`u_m = P_m\,U_m[u]` is the modality's
      user table (:meth:`RecOutput.modality_user_table`) mapped by a linear :math:`P_m` to
      :math:`d` when its width differs (the identity otherwise).
    * **Synergy** (fused predictor): :math:`\mathcal{L}_S = \mathrm{BPR}(\langle \bar u,
      g(z^{i^+})\rangle, \langle \bar u, g(z^{i^-})\rangle)` with
      :math:`g = \mathrm{Lin} \circ \mathrm{ReLU} \circ \mathrm{Lin}` on
      :math:`[z_1 \,\|\, \dots \,\|\, z_M]` and :math:`\bar u = \frac{1}{M}\sum_m u_m`.
    * **MIB**: :math:`\mathcal{L}_{MIB} = \mathcal{L}_S + \alpha_1 \sum_m
      \overline{\mathrm{KL}}\big(q(z_m|x_m) \,\|\, \mathcal{N}(0, I)\big)`, with
      :math:`\mathrm{KL} = \frac12 \sum_k (\mu_k^2 + e^{\ell_k} - 1 - \ell_k)` averaged over the
      *unique* items of the batch (:math:`i^+ \cup i^-`).
    * **Redundant** (MINE, Donsker–Varadhan): over the positive items, for every modality pair
      :math:`a < b` with its own critic :math:`T_{ab}` (2-layer MLP on
      :math:`[z_a \,\|\, z_b]`),

      .. math::
          \hat{I}_{DV} = \sum_{a<b} \overline{T_{ab}(z_a^{i}, z_b^{i})}
          - \log \overline{\exp T_{ab}(z_a^{i}, z_b^{\pi(i)})},

      over the batch's *unique* positive items, :math:`\pi` a random derangement (no
      marginal pair is a joint pair).

    The total, to be added to the backbone's loss, is

    .. math::
        \mathcal{L}_{MRdIB} = \mathcal{L}_{MIB}
        + \alpha_2 \sum_{a<b} \max\big(\hat{I}^{ab}_{DV}, \phi\big) + \alpha_3 \mathcal{L}_U .

    **User side** (:obj:`user_grad`, ours): by default the heads' gradient reaches the
    backbone's user tables, as in the paper. :obj:`user_grad=False` detaches them, so MRdIB
    shapes only the item-side modality representations: a remedy for backbones whose
    modality items pair with the same user table the backbone ranks with (FREEDOM, MGCN),
    where the heads otherwise pull that table towards the noisy modality predictions (see
    ``docs/results.md``). **Item side** (:obj:`item_grad`, ours): the gradient MRdIB sends
    into the backbone's modality item representations :math:`x_m` is multiplied by
    :obj:`item_grad` (1, the paper's, by default; 0 detaches them, so MRdIB trains only its
    own heads and cannot change the backbone). The values of :math:`x_m` and of every term
    are unchanged; only how strongly MRdIB reshapes the backbone is. **Synergy weight**
    (:obj:`synergy_weight`, ours): a factor :math:`w_S` on :math:`\mathcal{L}_S` in the total
    (1, the paper's, by default, where the fused head has no weight of its own); its value in
    :obj:`terms` stays unweighted, as the alphas' terms do.

    The floor :math:`\phi` (:obj:`redundant_floor`, default 0) is ours: the mutual information
    is :math:`\ge 0`, so a DV value below zero only says the critic is momentarily behind;
    the plain bound is unbounded below in the encoders' direction, and encoders that descend
    it there chase the critic's blind spots instead of removing overlap (measured on Baby-shaped
    data: DV :math:`-10^4` nats, a total loss going negative). Above the floor the objective
    is the paper's. :obj:`redundant_floor=None` gives the plain bound.

    **Adversarial training.** The encoders *minimise* :math:`\hat{I}_{DV}` through
    :obj:`loss`, in which the critics act as constants (their parameters are detached, so
    :obj:`loss.backward()` leaves every critic gradient :obj:`None`). The critics *maximise* it
    with their own optimiser on :meth:`critic_parameters`, minimising :meth:`critic_loss`
    on detached :math:`z`, with MINE's moving-average correction of the log-partition gradient.
    Per batch: :meth:`encode_batch` once; (1) critic step(s) on its detached samples;
    (2) :meth:`loss_terms` with the updated critic, and the main step on
    :obj:`L_backbone + loss` with the optimiser built on :meth:`main_parameters`.
    :meth:`forward` is (2) alone, for callers that train no critic.

    Nothing of MRdIB runs at prediction time. :meth:`encode` returns the posterior means for
    probes and for backbones that opt into "replace mode" through their own hook.

    Our choices (where the paper leaves details open):

    * the fused predictor's user side is the mean of the mapped per-modality users
      :math:`\bar u` (no extra map of :obj:`RecOutput.user`);
    * :obj:`use_mib=False` (the paper's "w/o MIB", :math:`\alpha_1 = 0`) drops the KL term
      and, unless :obj:`sample_without_kl=True`, the sampling (:math:`z_m = \mu_m`: without the
      KL nothing keeps the variance meaningful, so noise would only blur the heads);
      :math:`\mathcal{L}_S` stays (it is also the synergistic objective);
    * a switched-off term (switch off, or its :math:`\alpha = 0`) is not computed at all and is
      absent from :obj:`terms`; the synergy term is always on;
    * the redundant term is summed over all modality pairs; the critics are always built (so
      a trainer can always build their optimiser) but never called when the term is off;
    * an item appearing several times in a batch (as positive or negative) is encoded and
      sampled once; KL and the redundant term count it once.

    Args:
        modality_dims (Dict[str, int]): modality name :math:`\rightarrow` width of its item
            representation :math:`x_m`.
        user_dims (Dict[str, int]): modality name :math:`\rightarrow` width of its user table.
        latent_dim (int, optional): :math:`d`. (default: :obj:`64`)
        alpha1 (float, optional): KL weight. (default: :obj:`0.005`)
        alpha2 (float, optional): redundant (DV) weight. (default: :obj:`0.05`)
        alpha3 (float, optional): unique weight. (default: :obj:`0.005`)
        critic_hidden (int, optional): hidden width of each critic. (default: :obj:`128`)
        fusion_hidden (int, optional): hidden width of the fusion MLP
            (:obj:`None`: :obj:`latent_dim`). (default: :obj:`None`)
        ema_decay (float, optional): decay of MINE's moving average. (default: :obj:`0.99`)
        use_mib (bool, optional): compute the KL term. (default: :obj:`True`)
        use_redundant (bool, optional): compute the redundant term. (default: :obj:`True`)
        use_unique (bool, optional): compute the unique term. (default: :obj:`True`)
        encoder_hidden (int, optional): hidden width of an MLP encoder; :obj:`None` gives a
            single :class:`~torch.nn.Linear` to :math:`2d`. (default: :obj:`None`)
        input_norm (str, optional): the encoders' input conditioning, :obj:`'scale'`,
            :obj:`'layer'` or :obj:`'none'` (:class:`VariationalEncoder`).
            (default: :obj:`'scale'`)
        logvar_bound (float, optional): the encoders' log-variance bound; :obj:`None`:
            unbounded. (default: :obj:`6.0`)
        redundant_floor (float, optional): :math:`\phi`, the floor of each pair's DV value
            in the encoders' loss; :obj:`None`: the plain bound. (default: :obj:`0.0`)
        sample_without_kl (bool, optional): sample :math:`z_m` even when the KL term is off.
            (default: :obj:`False`)
        critic_max_weight (float, optional): bound of MINE's moving-average gradient weight
            (:class:`~mrdib_pyg.nn.mine.MINECritic`). (default: :obj:`10.0`)
        user_grad (bool, optional): let the heads' gradient reach the backbone's user
            tables. (default: :obj:`True`)
        item_grad (float, optional): scale in :math:`[0, 1]` of the gradient reaching the
            backbone's modality item representations. (default: :obj:`1.0`)
        synergy_weight (float, optional): :math:`w_S \ge 0`, the weight of the synergy
            term in the total. (default: :obj:`1.0`)
    """
    #: Named ablations of the paper's Table 2, see :meth:`ablation`.
    ABLATIONS = frozenset({'full', 'wo_mib', 'wo_redundant', 'wo_unique', 'mib_only'})
    _ABLATION_SWITCHES = {
        'full': dict(use_mib=True, use_redundant=True, use_unique=True),
        'wo_mib': dict(use_mib=False, use_redundant=True, use_unique=True),
        'wo_redundant': dict(use_mib=True, use_redundant=False, use_unique=True),
        'wo_unique': dict(use_mib=True, use_redundant=True, use_unique=False),
        'mib_only': dict(use_mib=True, use_redundant=False, use_unique=False),
    }

    def __init__(self, modality_dims: Dict[str, int], user_dims: Dict[str, int],
                 latent_dim: int = 64, alpha1: float = 0.005, alpha2: float = 0.05,
                 alpha3: float = 0.005, critic_hidden: int = 128,
                 fusion_hidden: Optional[int] = None, ema_decay: float = 0.99,
                 use_mib: bool = True, use_redundant: bool = True, use_unique: bool = True,
                 encoder_hidden: Optional[int] = None, input_norm: str = 'scale',
                 logvar_bound: Optional[float] = 6.0, redundant_floor: Optional[float] = 0.0,
                 sample_without_kl: bool = False, critic_max_weight: float = 10.0,
                 user_grad: bool = True, item_grad: float = 1.0,
                 synergy_weight: float = 1.0):
        super().__init__()
        name = self.__class__.__name__
        self.modalities: List[str] = list(modality_dims)
        if len(self.modalities) < 2:
            raise ValueError(f"{name} needs at least 2 modalities, got "
                             f"{len(self.modalities)}: {self.modalities}")
        if set(user_dims) != set(self.modalities):
            raise ValueError(f"{name}: user_dims keys {sorted(user_dims)} must equal the "
                             f"modality_dims keys {sorted(self.modalities)}")
        for key, value in (('alpha1', alpha1), ('alpha2', alpha2), ('alpha3', alpha3),
                           ('synergy_weight', synergy_weight)):
            if not (math.isfinite(value) and value >= 0):  # NaN must not drop a term silently
                raise ValueError(f"{name}: {key} must be a finite number >= 0, got {value}")
        for key, value in (('latent_dim', latent_dim), ('critic_hidden', critic_hidden),
                           ('fusion_hidden', fusion_hidden or 1),
                           ('encoder_hidden', encoder_hidden or 1)):
            if int(value) < 1:
                raise ValueError(f"{name}: {key} must be >= 1, got {value}")
        if redundant_floor is not None and not math.isfinite(redundant_floor):
            raise ValueError(f"{name}: redundant_floor must be finite or None, "
                             f"got {redundant_floor}")
        self.modality_dims = {m: int(modality_dims[m]) for m in self.modalities}
        self.user_dims = {m: int(user_dims[m]) for m in self.modalities}
        self.latent_dim = int(latent_dim)
        self.alpha1, self.alpha2, self.alpha3 = float(alpha1), float(alpha2), float(alpha3)
        self.synergy_weight = float(synergy_weight)
        self.critic_hidden = int(critic_hidden)
        self.fusion_hidden = int(fusion_hidden or latent_dim)
        self.encoder_hidden = encoder_hidden
        self.ema_decay = float(ema_decay)
        self.use_mib, self.use_redundant, self.use_unique = use_mib, use_redundant, use_unique
        self.redundant_floor = None if redundant_floor is None else float(redundant_floor)
        self.sample_without_kl = bool(sample_without_kl)
        self.user_grad = bool(user_grad)
        if not (math.isfinite(item_grad) and 0.0 <= item_grad <= 1.0):
            raise ValueError(f"{name}: item_grad must be a number in [0, 1], got {item_grad}")
        self.item_grad = float(item_grad)
        d = self.latent_dim
        self.encoders = nn.ModuleDict({
            _key(m): VariationalEncoder(self.modality_dims[m], d, encoder_hidden,
                                        input_norm, logvar_bound)
            for m in self.modalities})
        self.user_maps = nn.ModuleDict({
            _key(m): nn.Identity() if self.user_dims[m] == d
            else nn.Linear(self.user_dims[m], d) for m in self.modalities})
        self.fusion = nn.Sequential(nn.Linear(len(self.modalities) * d, self.fusion_hidden),
                                    nn.ReLU(), nn.Linear(self.fusion_hidden, d))
        self.pairs: List[Tuple[str, str]] = list(itertools.combinations(self.modalities, 2))
        self.critics = nn.ModuleDict({
            f'{_key(a)}|{_key(b)}': MINECritic(d, d, self.critic_hidden, self.ema_decay,
                                               critic_max_weight)
            for a, b in self.pairs})
        self.reset_parameters()

    def encoder(self, m: str) -> VariationalEncoder:
        r"""The variational encoder of modality :obj:`m` (returns :math:`(\mu, \ell)`)."""
        return self.encoders[_key(m)]

    def user_map(self, m: str) -> nn.Module:
        r"""The map of modality :obj:`m`'s user table to the latent size."""
        return self.user_maps[_key(m)]

    def critic(self, a: str, b: str) -> MINECritic:
        r"""The critic of modality pair :obj:`(a, b)` (in :attr:`modalities` order)."""
        return self.critics[f'{_key(a)}|{_key(b)}']

    def reset_parameters(self):
        for module in self.modules():
            if module is not self and hasattr(module, 'reset_parameters'):
                module.reset_parameters()

    # -- construction helpers -------------------------------------------------------------
    @classmethod
    def ablation(cls, name: str) -> Dict[str, bool]:
        r"""The switches :obj:`use_mib`, :obj:`use_redundant`, :obj:`use_unique` of a named
        ablation: :obj:`'full'`, :obj:`'wo_mib'` (:math:`\alpha_1=0`), :obj:`'wo_redundant'`
        (:math:`\alpha_2=0`), :obj:`'wo_unique'` (:math:`\alpha_3=0`), :obj:`'mib_only'`
        (:math:`\alpha_2=\alpha_3=0`)."""
        if name not in cls._ABLATION_SWITCHES:
            raise ValueError(f"{cls.__name__}: unknown ablation '{name}', expected one of "
                             f"{sorted(cls.ABLATIONS)}")
        return dict(cls._ABLATION_SWITCHES[name])

    @classmethod
    def from_output(cls, out: RecOutput, ablation: Optional[str] = None, **kwargs) -> 'MRdIB':
        r"""Builds the module for a backbone from one of its outputs (widths, and the device
        and dtype of its modality tables). :obj:`ablation` names a switch set
        (:meth:`ablation`); other keyword arguments go to the constructor."""
        n = len(out.modalities)
        if n == 0:
            raise ValueError(
                f"{cls.__name__} needs a backbone with per-modality outputs (>= 2 modalities); "
                f"got none — ID-only backbones such as LightGCN and BPR-MF cannot use it")
        if n == 1:
            raise ValueError(
                f"{cls.__name__} needs at least 2 modalities (its redundant and synergy terms "
                f"compare modalities); the backbone has one ({next(iter(out.modalities))}): "
                f"add a second modality's features, or train without MRdIB")
        if ablation is not None:
            for key, value in cls.ablation(ablation).items():
                if key in kwargs and kwargs[key] != value:
                    raise ValueError(f"{cls.__name__}: ablation '{ablation}' sets {key}={value} "
                                     f"but {key}={kwargs[key]} was also given")
                kwargs[key] = value
        modality_dims = {m: mo.item.size(-1) for m, mo in out.modalities.items()}
        user_dims = {m: out.modality_user_table(m).size(-1) for m in out.modalities}
        first = next(iter(out.modalities.values())).item
        module = cls(modality_dims, user_dims, **kwargs)
        dtype = first.dtype if first.is_floating_point() else None
        return module.to(device=first.device, dtype=dtype)

    # -- which terms run ------------------------------------------------------------------
    @property
    def computes_kl(self) -> bool:
        return self.use_mib and self.alpha1 > 0

    @property
    def computes_redundant(self) -> bool:
        return self.use_redundant and self.alpha2 > 0

    @property
    def computes_unique(self) -> bool:
        return self.use_unique and self.alpha3 > 0

    @property
    def samples(self) -> bool:
        r"""Whether training draws :math:`z_m` (else :math:`z_m = \mu_m`)."""
        return self.computes_kl or self.sample_without_kl

    @property
    def active_terms(self) -> List[str]:
        r"""Keys :meth:`forward` puts into :obj:`terms`."""
        terms = ['synergy']
        if self.computes_kl:
            terms.append('kl')
        if self.computes_unique:
            terms.append('unique')
        if self.computes_redundant:
            terms.append('redundant')
        return terms

    # -- parameters -----------------------------------------------------------------------
    def critic_parameters(self) -> Iterator[Parameter]:
        r"""The critics' parameters: for the critic optimiser only."""
        return self.critics.parameters()

    def main_parameters(self) -> Iterator[Parameter]:
        r"""Every parameter except the critics': for the main optimiser (with the
        backbone's)."""
        critic_ids = {id(p) for p in self.critic_parameters()}
        return (p for p in self.parameters() if id(p) not in critic_ids)

    # -- encoding -------------------------------------------------------------------------
    def _check(self, out: RecOutput):
        if set(out.modalities) != set(self.modalities):
            raise ValueError(f"{self.__class__.__name__} was built for modalities "
                             f"{self.modalities}, the output has {list(out.modalities)}")

    def _posterior(self, m: str, x: Tensor) -> Tuple[Tensor, Tensor]:
        return self.encoder(m)(x)

    def encode(self, out: RecOutput, items: Optional[Tensor] = None) -> Dict[str, Tensor]:
        r"""Posterior means :math:`\mu_m` of :obj:`items` (all items when :obj:`None`),
        :obj:`[N, latent_dim]` per modality, whatever the mode. Not wrapped in
        :obj:`no_grad`: a replace-mode backbone trains through it."""
        self._check(out)
        return self.encode_items({m: mo.item for m, mo in out.modalities.items()}, items)

    def encode_items(self, reps: Dict[str, Tensor],
                     items: Optional[Tensor] = None) -> Dict[str, Tensor]:
        r""":meth:`encode` on bare per-modality item tables (modality :math:`\rightarrow`
        :obj:`[I, d_m]`), e.g. inside a backbone's replace-mode hook."""
        if set(reps) != set(self.modalities):
            raise ValueError(f"{self.__class__.__name__} was built for modalities "
                             f"{self.modalities}, got {list(reps)}")
        return {m: self._posterior(m, reps[m] if items is None
                                   else reps[m].index_select(0, items))[0]
                for m in self.modalities}

    def _attach(self, x: Tensor) -> Tensor:
        r""":obj:`x` unchanged in value, its gradient into the backbone scaled by
        :attr:`item_grad` (1: as is; 0: detached)."""
        if self.item_grad == 1.0 or not x.requires_grad:
            return x
        if self.item_grad == 0.0:
            return x.detach()
        return x.detach() + self.item_grad * (x - x.detach())

    def encode_batch(self, out: RecOutput, batch: BPRBatch) -> BatchEncoding:
        r"""Encodes every unique item of :obj:`batch` once and samples :math:`z_m` (the
        means in evaluation mode, or when :attr:`samples` is off)."""
        self._check(out)
        B = batch.pos.numel()
        items, inverse = torch.unique(torch.cat([batch.pos, batch.neg]), return_inverse=True)
        mine_rows = torch.unique(inverse[:B])
        mu, logvar, std, z = {}, {}, {}, {}
        for m in self.modalities:
            # index_select: a row gather, several times faster than x[items] and its backward
            x = self._attach(out.modalities[m].item.index_select(0, items))
            mu[m], logvar[m] = self._posterior(m, x)
            std[m] = torch.exp(0.5 * logvar[m])
            if self.training and self.samples:
                z[m] = torch.addcmul(mu[m], torch.randn_like(mu[m]), std[m])
            else:
                z[m] = mu[m]
        return BatchEncoding(items, inverse[:B], inverse[B:], mine_rows, mu, logvar, std, z)

    # -- losses ---------------------------------------------------------------------------
    def loss_terms(self, out: RecOutput, batch: BPRBatch, enc: Optional[BatchEncoding] = None,
                   redundant: bool = True) -> MRdIBOutput:
        r"""The MRdIB loss terms on a batch (training only); :obj:`enc` reuses an encoding of
        the batch, :obj:`redundant=False` leaves the DV term out of :obj:`loss` for this batch
        (a critic warm-up) while still reporting its value."""
        enc = self.encode_batch(out, batch) if enc is None else enc
        gathered: Dict[int, Tensor] = {}  # modalities sharing a user table gather it once
        users = {}
        for m in self.modalities:
            table = out.modality_user_table(m)
            if id(table) not in gathered:
                rows = table.index_select(0, batch.users)
                gathered[id(table)] = rows if self.user_grad else rows.detach()
            users[m] = self.user_map(m)(gathered[id(table)])
        terms: Dict[str, Tensor] = {}

        # Every head at once: head k pairs user table k with item table k, [B, H, d] each;
        # the heads are the M modalities (when the unique term runs) and the fused one, last.
        M, d, B = len(self.modalities), self.latent_dim, batch.users.numel()
        u_bar = torch.stack([users[m] for m in self.modalities]).mean(0)
        z_all = torch.cat([enc.z[m] for m in self.modalities], dim=-1)
        if self.computes_unique:
            user_heads = torch.cat([users[m] for m in self.modalities] + [u_bar], dim=-1)
            item_heads = torch.cat([z_all, self.fusion(z_all)], dim=-1)
        else:
            user_heads, item_heads = u_bar, self.fusion(z_all)
        H = item_heads.size(-1) // d
        # one gather serves the positive and the negative side of every head
        pos_neg = torch.cat([enc.pos, enc.neg])
        item_rows = item_heads.index_select(0, pos_neg).view(2, B, H, d)
        scores = (item_rows * user_heads.view(1, B, H, d)).sum(-1)  # [2, B, H]
        head_bpr = bpr_loss(scores[0], scores[1], dim=0)  # [H]
        terms['synergy'] = head_bpr[-1]
        loss = (terms['synergy'] if self.synergy_weight == 1.0
                else self.synergy_weight * terms['synergy'])

        if self.computes_kl:
            terms['kl'] = sum(0.5 * (enc.mu[m].pow(2) + enc.std[m].pow(2) - 1.0
                                     - enc.logvar[m]).sum(-1).mean() for m in self.modalities)
            loss = loss + self.alpha1 * terms['kl']
        if self.computes_unique:
            terms['unique'] = head_bpr[:M].sum()
            loss = loss + self.alpha3 * terms['unique']
        if self.computes_redundant:
            z = enc.mine_pairs()
            dvs = [self.critic(a, b).dv(z[a], z[b], detach_params=True) for a, b in self.pairs]
            terms['redundant'] = sum(dv.detach() for dv in dvs)
            if redundant:
                floor = self.redundant_floor
                loss = loss + self.alpha2 * sum(dv if floor is None else dv.clamp(min=floor)
                                                for dv in dvs)
        with torch.no_grad():
            terms['sigma'] = torch.stack([enc.std[m].mean() for m in self.modalities]).mean()
        return MRdIBOutput(loss=loss, terms=terms, encoding=enc)

    def forward(self, out: RecOutput, batch: BPRBatch) -> MRdIBOutput:
        r"""The MRdIB loss terms on a batch (:meth:`loss_terms`). Call in training only."""
        return self.loss_terms(out, batch)

    def critic_loss(self, enc: BatchEncoding) -> Optional[Tensor]:
        r"""The loss the critic optimiser minimises: :math:`-\hat{I}_{DV}` summed over
        modality pairs on the *detached* samples of :obj:`enc`'s unique positives, with MINE's
        moving-average-corrected gradient (each call updates the moving averages once).
        :obj:`None` when the redundant term is off (nothing is computed)."""
        if not self.computes_redundant:
            return None
        z = enc.mine_pairs(detach=True)
        return sum(self.critic(a, b).mine_loss(z[a], z[b]) for a, b in self.pairs)

    def critic_step_loss(self, out: RecOutput, batch: BPRBatch) -> Optional[Tensor]:
        r""":meth:`critic_loss` on a fresh encoding of :obj:`batch` (no gradient reaches the
        encoders or the backbone)."""
        if not self.computes_redundant:
            return None
        with torch.no_grad():
            enc = self.encode_batch(out, batch)
        return self.critic_loss(enc)

    def extra_repr(self) -> str:
        mods = ', '.join(f'{m}: {self.modality_dims[m]}' for m in self.modalities)
        return (f'modalities={{{mods}}}, latent_dim={self.latent_dim}, '
                f'alpha1={self.alpha1}, alpha2={self.alpha2}, alpha3={self.alpha3}, '
                f'terms={self.active_terms}')
