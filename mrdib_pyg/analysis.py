r"""Analysis tools for learned representations: linear probes, a fresh-critic mutual-information
estimate and a t-SNE wrapper.

These are the measuring instruments of the planted-factor experiment
(``benchmarks/bench_planted.py``, ``examples/mrdib_planted_factors.ipynb``). They take *frozen*
tensors (call them on ``.detach()`` ed representations) and never touch a model.

Conventions shared by every function here:

* rows are items (or any samples); :obj:`train_idx` / :obj:`test_idx` are disjoint row indices.
  Everything is *fitted* on the training rows and *measured* on the held-out rows, so a probe
  or a critic that merely memorises the training rows scores nothing;
* input columns are standardised with the training rows' mean and standard deviation (a
  per-column affine map changes neither a linear probe's fit nor the mutual information, but
  it makes the ridge penalty and the critic's optimisation scale-free).
"""
import math
from typing import Optional, Sequence, Union

import torch
from torch import Tensor

from mrdib_pyg.nn.mine import MINECritic, donsker_varadhan, random_derangement

__all__ = ['linear_probe_r2', 'estimate_mi', 'tsne_2d', 'split_rows']

Index = Union[Tensor, Sequence[int]]


def _as_index(idx: Index, device) -> Tensor:
    idx = torch.as_tensor(idx, dtype=torch.long, device=device)
    if idx.dim() != 1 or idx.numel() == 0:
        raise ValueError(f'expected a non-empty 1-d index, got shape {tuple(idx.shape)}')
    return idx


def _standardise(x: Tensor, train_idx: Tensor, eps: float = 1e-8) -> Tensor:
    mean = x[train_idx].mean(0, keepdim=True)
    std = x[train_idx].std(0, unbiased=False, keepdim=True)
    return (x - mean) / (std + eps)


def split_rows(n: int, test_fraction: float = 0.3, seed: int = 0):
    r"""A random split of :obj:`n` rows into :obj:`(train_idx, test_idx)` with
    :math:`\lceil \text{test\_fraction} \cdot n \rceil` held-out rows (fixed by :obj:`seed`)."""
    if not 0 < test_fraction < 1:
        raise ValueError(f'test_fraction must lie in (0, 1), got {test_fraction}')
    g = torch.Generator().manual_seed(int(seed))
    perm = torch.randperm(n, generator=g)
    n_test = max(1, math.ceil(test_fraction * n))
    if n_test >= n:
        raise ValueError(f'cannot hold out {n_test} of {n} rows')
    return perm[n_test:].sort().values, perm[:n_test].sort().values


def linear_probe_r2(reps: Tensor, targets: Tensor, train_idx: Index, test_idx: Index,
                    ridge: float = 1e-3) -> Tensor:
    r"""Held-out :math:`R^2` of a ridge-regularised linear probe, one value per target column.

    With :math:`X` the standardised representations (plus an intercept) of the training rows
    and :math:`Y` their targets, the probe is the closed-form ridge solution

    .. math::
        W = (X^\top X + \lambda n\, \tilde{I})^{-1} X^\top Y ,

    where :math:`n` is the number of training rows and :math:`\tilde{I}` the identity with a
    zero at the intercept (the intercept is not penalised). :math:`\lambda` = :obj:`ridge` is
    thus a penalty per training row on standardised inputs, independent of the scale of
    :obj:`reps`. On the held-out rows :math:`T` with predictions :math:`\hat{y}`,

    .. math::
        R^2_j = 1 - \frac{\sum_{i \in T} (y_{ij} - \hat{y}_{ij})^2}
                         {\sum_{i \in T} (y_{ij} - \bar{y}^{T}_j)^2},

    the usual coefficient of determination (as :func:`sklearn.metrics.r2_score`), which is
    :math:`\approx 1` when the column is a linear function of the representation,
    :math:`\approx 0` when it is independent of it, and can be negative (a probe worse than the
    held-out mean). Computed in float64.

    Args:
        reps (Tensor): :obj:`[N, d]` representations (detached).
        targets (Tensor): :obj:`[N]` or :obj:`[N, k]` targets.
        train_idx, test_idx: disjoint row indices.
        ridge (float, optional): :math:`\lambda \ge 0`. (default: :obj:`1e-3`)

    Returns:
        Tensor: :obj:`[k]` held-out :math:`R^2` per target column (float64, on CPU).
    """
    if ridge < 0:
        raise ValueError(f'ridge must be >= 0, got {ridge}')
    x = reps.detach().to('cpu', torch.float64)
    y = targets.detach().to('cpu', torch.float64)
    if y.dim() == 1:
        y = y.unsqueeze(-1)
    if x.dim() != 2 or x.size(0) != y.size(0):
        raise ValueError(f'reps {tuple(x.shape)} and targets {tuple(y.shape)} must be [N, d] '
                         f'and [N, k] with the same N')
    tr, te = _as_index(train_idx, 'cpu'), _as_index(test_idx, 'cpu')
    x = _standardise(x, tr)
    x = torch.cat([x, torch.ones(x.size(0), 1, dtype=x.dtype)], dim=1)
    xt, yt = x[tr], y[tr]
    penalty = torch.full((x.size(1), ), ridge * tr.numel(), dtype=x.dtype)
    penalty[-1] = 0.
    gram = xt.t() @ xt + torch.diag(penalty)
    # lstsq instead of solve: a rank-deficient Gram (ridge = 0, collinear columns) still works
    w = torch.linalg.lstsq(gram, xt.t() @ yt).solution
    pred = x[te] @ w
    yte = y[te]
    sse = ((yte - pred) ** 2).sum(0)
    sst = ((yte - yte.mean(0, keepdim=True)) ** 2).sum(0)
    return 1. - sse / sst.clamp_min(1e-12)


def all_pairs_dv(critic: MINECritic, a: Tensor, b: Tensor, block: int = 256) -> float:
    r"""DV on all :math:`N` joint pairs and all :math:`N(N-1)` off-diagonal product pairs."""
    n = a.size(0)
    t_joint = critic(a, b)
    chunks = []
    for start in range(0, n, block):
        rows = torch.arange(start, min(start + block, n), device=a.device)
        aa = a[rows].unsqueeze(1).expand(-1, n, -1)
        bb = b.unsqueeze(0).expand(rows.numel(), -1, -1)
        t = critic(aa.reshape(-1, a.size(1)), bb.reshape(-1, b.size(1))).view(rows.numel(), n)
        off = torch.ones_like(t, dtype=torch.bool)
        off[torch.arange(rows.numel()), rows] = False
        chunks.append(t[off])
    return float(donsker_varadhan(t_joint, torch.cat(chunks)))


def estimate_mi(z_a: Tensor, z_b: Tensor, train_idx: Index, test_idx: Index,
                steps: int = 1500, hidden: int = 128, seed: int = 0, lr: float = 1e-3,
                batch_size: Optional[int] = 256, ema_decay: float = 0.99,
                weight_decay: float = 1e-4, std_a: Optional[Tensor] = None,
                std_b: Optional[Tensor] = None) -> float:
    r"""Mutual information :math:`I(A; B)` in nats, estimated by a *fresh* MINE critic on frozen
    representations: trained on the training rows, evaluated on the held-out rows.

    A new :class:`~mrdib_pyg.nn.mine.MINECritic` :math:`T` (2-layer MLP of width :obj:`hidden`
    on :math:`[a \| b]`, seeded by :obj:`seed`) ascends the Donsker–Varadhan bound

    .. math::
        \hat{I}_{DV}(T) = \mathbb{E}_{p(a,b)}[T(a, b)] - \log \mathbb{E}_{p(a)p(b)}[e^{T(a, b)}]
        \;\le\; I(A; B)

    for :obj:`steps` Adam steps on mini-batches of training rows (marginal pairs by shuffling
    :math:`b` within the batch) with MINE's moving-average-corrected gradient
    (:meth:`~mrdib_pyg.nn.mine.MINECritic.mine_loss`: the denominator of the log-partition
    gradient is a bias-corrected EMA of :math:`\overline{e^T}`). The returned value is the plain
    DV bound of the final critic on the *held-out* rows :math:`T`, with the expectation over
    :math:`p(a)p(b)` taken over all :math:`|T|(|T|-1)` off-diagonal pairs:

    .. math::
        \hat{I} = \frac{1}{|T|}\sum_{i \in T} T(a_i, b_i)
        - \log \frac{1}{|T|(|T|-1)} \sum_{i \ne j \in T} e^{T(a_i, b_j)} .

    Held-out evaluation makes it a fair estimate (a critic that memorised its training pairs
    gains nothing on new pairs), at the price of a downward bias; it can be slightly negative
    for independent inputs. With :math:`|T|` held-out rows the estimate saturates near
    :math:`\log |T|` for strongly dependent inputs (the limit of any DV/InfoNCE-type estimate on
    :math:`|T|` samples), so compare estimates made with the same :math:`|T|`.

    Never pass the critic a model trained against (e.g. MRdIB's own training critic, which the
    encoders learned to fool): this function always builds a new one.

    Args:
        z_a (Tensor): :obj:`[N, d_a]` frozen representations.
        z_b (Tensor): :obj:`[N, d_b]` frozen representations (row :math:`i` pairs with
            :obj:`z_a[i]`).
        train_idx, test_idx: disjoint row indices (critic training / evaluation).
        steps (int, optional): critic optimisation steps. (default: :obj:`1500`)
        hidden (int, optional): critic width. (default: :obj:`128`)
        seed (int, optional): seeds the critic's initialisation and the batches.
            (default: :obj:`0`)
        lr (float, optional): Adam learning rate. (default: :obj:`1e-3`)
        batch_size (int, optional): training rows per step (:obj:`None`: all).
            (default: :obj:`256`)
        ema_decay (float, optional): decay of MINE's moving average. (default: :obj:`0.99`)
        weight_decay (float, optional): Adam weight decay of the critic. (default: :obj:`1e-4`)
        std_a, std_b (Tensor, optional): per-row standard deviations of Gaussian posteriors
            whose means are :obj:`z_a`, :obj:`z_b`. Then the estimate is of
            :math:`I(A; B)` for *samples* :math:`a \sim \mathcal{N}(z_a, \mathrm{diag}\,
            \sigma_a^2)`: every training step draws new samples (a critic trained on one fixed
            draw memorises its noise and reads far below zero on held-out rows), the held-out
            rows are scored on one draw fixed by :obj:`seed`. (default: :obj:`None`)
    """
    if z_a.size(0) != z_b.size(0):
        raise ValueError(f'z_a and z_b must have the same rows, got {z_a.size(0)} and '
                         f'{z_b.size(0)}')
    a = z_a.detach().to('cpu', torch.float32)
    b = z_b.detach().to('cpu', torch.float32)
    tr, te = _as_index(train_idx, 'cpu'), _as_index(test_idx, 'cpu')
    if te.numel() < 2:
        raise ValueError('estimate_mi needs at least 2 held-out rows')
    gen = torch.Generator().manual_seed(int(seed))
    sa = None if std_a is None else std_a.detach().to('cpu', torch.float32)
    sb = None if std_b is None else std_b.detach().to('cpu', torch.float32)

    def draw(x: Tensor, std: Optional[Tensor], rows: Tensor) -> Tensor:
        if std is None:
            return x[rows]
        return x[rows] + std[rows] * torch.randn(x[rows].shape, generator=gen)

    # standardise with the statistics of one draw of the training rows
    a_tr, b_tr = draw(a, sa, tr), draw(b, sb, tr)
    mean_a, scale_a = a_tr.mean(0), a_tr.std(0, unbiased=False) + 1e-8
    mean_b, scale_b = b_tr.mean(0), b_tr.std(0, unbiased=False) + 1e-8
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        critic = MINECritic(a.size(1), b.size(1), hidden=hidden, ema_decay=ema_decay)
    opt = torch.optim.Adam(critic.parameters(), lr=lr, weight_decay=weight_decay)
    n_tr = tr.numel()
    bs = n_tr if batch_size is None else min(int(batch_size), n_tr)
    critic.train()
    for _ in range(int(steps)):
        rows = tr[torch.randperm(n_tr, generator=gen)[:bs]]
        perm = random_derangement(bs, generator=gen)
        loss = critic.mine_loss((draw(a, sa, rows) - mean_a) / scale_a,
                                (draw(b, sb, rows) - mean_b) / scale_b, perm=perm)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    critic.eval()
    with torch.no_grad():
        return all_pairs_dv(critic, (draw(a, sa, te) - mean_a) / scale_a,
                            (draw(b, sb, te) - mean_b) / scale_b)


def tsne_2d(x: Tensor, seed: int = 0, perplexity: float = 30.0, **kwargs) -> Tensor:
    r"""A 2-d t-SNE embedding (van der Maaten & Hinton, 2008) of the rows of :obj:`x`, via
    :class:`sklearn.manifold.TSNE` (PCA initialisation, :obj:`random_state=seed`).

    t-SNE places points so that the Student-t similarities
    :math:`q_{ij} \propto (1 + \|y_i - y_j\|^2)^{-1}` match the Gaussian neighbourhood
    probabilities :math:`p_{ij}` of the input (perplexity sets their bandwidth) by minimising
    :math:`\mathrm{KL}(P \| Q)`. Distances between clusters in the picture are not
    meaningful; only neighbourhoods are.

    The perplexity is clipped to :math:`(N - 1) / 3` for small inputs. Extra keyword
    arguments go to :class:`~sklearn.manifold.TSNE`. Returns a :obj:`[N, 2]` float tensor.
    """
    try:
        from sklearn.manifold import TSNE
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("tsne_2d needs scikit-learn: pip install scikit-learn") from e
    arr = x.detach().to('cpu', torch.float32).numpy()
    n = arr.shape[0]
    if n < 4:
        raise ValueError(f'tsne_2d needs at least 4 rows, got {n}')
    perplexity = min(float(perplexity), (n - 1) / 3.)
    tsne = TSNE(n_components=2, init='pca', random_state=int(seed), perplexity=perplexity,
                **kwargs)
    return torch.from_numpy(tsne.fit_transform(arr)).float()
