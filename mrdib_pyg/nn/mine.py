r"""Mutual-information neural estimation (MINE): the critic and the Donsker–Varadhan bound
used by MRdIB's redundant term.

Belghazi et al., "Mutual Information Neural Estimation" (ICML 2018,
`arXiv:1801.04062 <https://arxiv.org/abs/1801.04062>`_).
"""
import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def log_mean_exp(x: Tensor) -> Tensor:
    r""":math:`\log \frac{1}{N}\sum_i e^{x_i}`, computed stably over all elements."""
    x = x.reshape(-1)
    return torch.logsumexp(x, dim=0) - math.log(x.numel())


def random_derangement(n: int, device=None,
                       generator: Optional[torch.Generator] = None) -> Tensor:
    r"""A random permutation of :obj:`range(n)` without fixed points (:math:`\pi(i) \ne i`),
    for marginal pairs that never include a joint pair: a uniformly random order
    :math:`\sigma`, then :math:`\sigma_k \mapsto \sigma_{k+1 \bmod n}` (a random cycle; every
    element moves). :obj:`n < 2` returns the identity (no derangement exists)."""
    if n < 2:
        return torch.arange(n, device=device)
    # drawn where it is used (a copy from the host would wait for the GPU), unless a
    # generator of another device is given
    where = device if generator is None else generator.device
    order = torch.randperm(n, generator=generator, device=where).to(device)
    perm = torch.empty_like(order)
    perm[order] = order.roll(-1)
    return perm


def donsker_varadhan(t_joint: Tensor, t_marg: Tensor) -> Tensor:
    r"""The Donsker–Varadhan lower bound on the mutual information, in nats:

    .. math::
        \hat{I}_{DV} = \frac{1}{N}\sum_i T(a_i, b_i)
        - \log \frac{1}{N}\sum_i e^{T(a_i, b_{\pi(i)})}

    Args:
        t_joint (Tensor): critic values on joint pairs :math:`(a_i, b_i)`.
        t_marg (Tensor): critic values on marginal pairs :math:`(a_i, b_{\pi(i)})`.
    """
    return t_joint.mean() - log_mean_exp(t_marg)


class MINECritic(nn.Module):
    r"""The statistics network :math:`T(a, b)` of MINE: a 2-layer MLP on the concatenation
    :math:`[a \,\|\, b]`,

    .. math::
        T(a, b) = w_2^\top \mathrm{ReLU}(W_1 [a \,\|\, b] + b_1) + b_2 .

    It carries the exponential moving average of :math:`\mathbb{E}_{marg}[e^T]` that MINE uses
    to correct the (biased) mini-batch gradient of the log-partition term, as a buffer kept in
    log space (:obj:`log_ema`) with Adam-style bias correction over :obj:`ema_steps` updates.

    Args:
        dim_a (int): width of :math:`a`.
        dim_b (int): width of :math:`b`.
        hidden (int, optional): hidden width. (default: :obj:`128`)
        ema_decay (float, optional): decay of the moving average. (default: :obj:`0.99`)
        max_weight (float, optional): upper bound of the gradient weight
            :math:`\overline{e^T}_{batch} / \widehat{\mathrm{ema}}` (a lagging average must not
            turn one batch into a huge step). (default: :obj:`10.0`)

    Shapes:
        - **input:** :math:`a` :math:`(N, d_a)`, :math:`b` :math:`(N, d_b)`
        - **output:** :math:`(N,)`
    """
    def __init__(self, dim_a: int, dim_b: int, hidden: int = 128, ema_decay: float = 0.99,
                 max_weight: float = 10.0):
        super().__init__()
        if not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"{self.__class__.__name__}: ema_decay must lie in [0, 1), "
                             f"got {ema_decay}")
        self.dim_a, self.dim_b, self.hidden = int(dim_a), int(dim_b), int(hidden)
        if not max_weight >= 1.0:
            raise ValueError(f"{self.__class__.__name__}: max_weight must be >= 1, "
                             f"got {max_weight}")
        self.ema_decay = float(ema_decay)
        self.max_weight = float(max_weight)
        self.lin1 = nn.Linear(self.dim_a + self.dim_b, self.hidden)
        self.lin2 = nn.Linear(self.hidden, 1)
        # log of the (un-corrected) moving average of E_marg[exp T]; starts at log(0).
        self.register_buffer('log_ema', torch.tensor(float('-inf')))
        self.register_buffer('ema_steps', torch.tensor(0, dtype=torch.long))
        # ema_steps as a Python int once read (None: not read since the last load): reading
        # the buffer at every step would wait for the GPU
        self._steps: Optional[int] = None
        self.reset_parameters()

    def reset_parameters(self):
        self.lin1.reset_parameters()
        self.lin2.reset_parameters()
        self.reset_ema()

    def reset_ema(self):
        self.log_ema.fill_(float('-inf'))
        self.ema_steps.zero_()
        self._steps = 0

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._steps = None

    def forward(self, a: Tensor, b: Tensor, detach_params: bool = False,
                marginal_perm: Optional[Tensor] = None):
        r"""Critic values :math:`T(a_i, b_i)`; with :obj:`marginal_perm` :math:`\pi`, the pair
        :obj:`(T(a_i, b_i), T(a_i, b_{\pi(i)}))` of joint and marginal values.

        With :obj:`detach_params=True` the critic's parameters are used as constants: the
        gradient still flows into :obj:`a` and :obj:`b`, but none reaches the critic. MRdIB's
        main loss uses this, so that the encoders can descend the bound while the critic is
        only trained by its own ascent step.
        """
        w1, b1, w2, b2 = self.lin1.weight, self.lin1.bias, self.lin2.weight, self.lin2.bias
        if detach_params:
            w1, b1, w2, b2 = w1.detach(), b1.detach(), w2.detach(), b2.detach()
        if marginal_perm is None:
            h = torch.cat([a, b], dim=-1)
            return F.linear(F.relu(F.linear(h, w1, b1)), w2, b2).squeeze(-1)
        # W1 [a || b] = W1_a a + W1_b b: project a and b once and reuse the projections for
        # the joint and the shuffled pairs (half the first layer's work on 2N concatenations)
        pa = F.linear(a, w1[:, :self.dim_a], b1)
        pb = F.linear(b, w1[:, self.dim_a:])
        h = F.relu(torch.cat([pa + pb, pa + pb.index_select(0, marginal_perm)], dim=0))
        t = F.linear(h, w2, b2).squeeze(-1)
        return t[:a.size(0)], t[a.size(0):]

    def scores(self, a: Tensor, b: Tensor, perm: Optional[Tensor] = None,
               detach_params: bool = False) -> Tuple[Tensor, Tensor]:
        r"""Joint and marginal critic values; marginal pairs shuffle :obj:`b` by :obj:`perm`
        (a fresh :func:`random_derangement` when :obj:`None`, so that no marginal pair is a
        joint pair)."""
        if perm is None:
            perm = random_derangement(b.size(0), device=b.device)
        return self(a, b, detach_params=detach_params, marginal_perm=perm)

    def dv(self, a: Tensor, b: Tensor, perm: Optional[Tensor] = None,
           detach_params: bool = False) -> Tensor:
        r"""The plain Donsker–Varadhan value on the batch (nats)."""
        return donsker_varadhan(*self.scores(a, b, perm, detach_params))

    def mine_loss(self, a: Tensor, b: Tensor, perm: Optional[Tensor] = None,
                  update_ema: bool = True) -> Tensor:
        r"""The loss the critic's optimiser *minimises* to ascend the bound, with MINE's
        moving-average gradient correction. :obj:`a` and :obj:`b` are detached.

        Its value is :math:`-\hat{I}_{DV}` (the plain bound on the batch). Its gradient is

        .. math::
            -\Big(\nabla\, \overline{T}_{joint}
            - \frac{\nabla\, \overline{e^{T}}_{marg}}{\widehat{\mathrm{ema}}}\Big),

        i.e. the denominator of the log-partition term's gradient is the bias-corrected moving
        average of :math:`\overline{e^{T}}_{marg}` (updated with this batch first) instead of the
        batch mean alone, with the ratio bounded by :obj:`max_weight`. Computed in log space,
        so no :math:`e^{T}` can overflow.
        """
        t_joint, t_marg = self.scores(a.detach(), b.detach(), perm)
        lme = log_mean_exp(t_marg)
        log_ema = self._corrected_log_ema(lme.detach(), update=update_ema)
        # value: lme; gradient: exp(lme - log_ema) * grad(lme) = grad(mean exp T) / ema
        # a lagging average can make the ratio explode on a batch where T jumped: bound it
        weight = torch.exp((lme.detach() - log_ema).clamp(max=math.log(self.max_weight)))
        surrogate = lme.detach() + weight * (lme - lme.detach())
        return -(t_joint.mean() - surrogate)

    @torch.no_grad()
    def _corrected_log_ema(self, lme: Tensor, update: bool) -> Tensor:
        log_ema = self.log_ema.to(lme.dtype)
        if self._steps is None:
            self._steps = int(self.ema_steps)
        steps = self._steps
        if update:
            d = self.ema_decay
            # ema <- d * ema + (1 - d) * mean(exp T), in log space (log 0 = -inf at the start)
            if d > 0:
                log_ema = torch.logaddexp(log_ema + math.log(d), lme + math.log1p(-d))
            else:
                log_ema = lme.clone()
            steps += 1
            self.log_ema.copy_(log_ema)
            self.ema_steps.fill_(steps)
            self._steps = steps
        if steps == 0:  # nothing averaged yet: plain MINE gradient
            return lme
        # Adam-style bias correction of an average that started at 0
        return log_ema - math.log1p(-self.ema_decay ** steps)

    def extra_repr(self) -> str:
        return (f'dim_a={self.dim_a}, dim_b={self.dim_b}, hidden={self.hidden}, '
                f'ema_decay={self.ema_decay}, max_weight={self.max_weight}')
