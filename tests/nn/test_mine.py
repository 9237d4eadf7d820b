import math
import time

import pytest
import torch

from mrdib_pyg.nn.mine import MINECritic, donsker_varadhan, log_mean_exp


def correlated_gaussians(n, d, rho, generator):
    r"""d independent pairs (a_k, b_k) of standard normals with correlation rho:
    I(a; b) = -d/2 log(1 - rho^2)."""
    a = torch.randn(n, d, generator=generator)
    b = rho * a + math.sqrt(1 - rho ** 2) * torch.randn(n, d, generator=generator)
    return a, b


def true_mi(d, rho):
    return -0.5 * d * math.log(1 - rho ** 2)


def test_dv_formula():
    t_joint = torch.tensor([1.0, 2.0, 3.0])
    t_marg = torch.tensor([0.0, math.log(2.0), math.log(3.0)])
    assert log_mean_exp(t_marg).item() == pytest.approx(math.log(2.0))
    assert donsker_varadhan(t_joint, t_marg).item() == pytest.approx(2.0 - math.log(2.0))
    # stable where a naive exp overflows
    assert log_mean_exp(torch.tensor([1000.0, 1000.0])).item() == pytest.approx(1000.0)


def test_critic_shapes_and_detached_params():
    torch.manual_seed(0)
    critic = MINECritic(3, 5, hidden=16)
    a = torch.randn(7, 3, requires_grad=True)
    b = torch.randn(7, 5, requires_grad=True)
    assert critic(a, b).shape == (7,)
    critic.dv(a, b, detach_params=True).backward()
    assert a.grad.abs().sum() > 0 and b.grad.abs().sum() > 0
    assert all(p.grad is None for p in critic.parameters())
    # same values with and without detaching
    perm = torch.randperm(7)
    assert torch.equal(critic.dv(a, b, perm), critic.dv(a, b, perm, detach_params=True))


def test_first_step_gradient_is_plain_dv_gradient():
    # before any average exists, the bias-corrected EMA equals the batch mean: MINE's
    # corrected gradient reduces to the plain DV gradient.
    torch.manual_seed(0)
    critic = MINECritic(2, 2, hidden=8)
    a, b = torch.randn(64, 2), torch.randn(64, 2)
    perm = torch.randperm(64)
    loss = critic.mine_loss(a, b, perm)
    assert loss.item() == pytest.approx(-critic.dv(a, b, perm).item(), abs=1e-6)
    g_mine = torch.autograd.grad(loss, list(critic.parameters()))
    g_dv = torch.autograd.grad(-critic.dv(a, b, perm), list(critic.parameters()))
    for x, y in zip(g_mine, g_dv):
        torch.testing.assert_close(x, y)
    assert int(critic.ema_steps) == 1
    assert math.exp(critic.log_ema.item()) == pytest.approx(
        0.01 * torch.exp(critic(a, b[perm])).mean().item(), rel=1e-5)


def test_moving_average_corrected_gradient():
    torch.manual_seed(0)
    decay = 0.9
    critic = MINECritic(2, 2, hidden=8, ema_decay=decay)
    means = []
    for _ in range(3):  # fill the average with batches of other statistics
        a, b = 2 * torch.randn(64, 2), torch.randn(64, 2)
        perm = torch.randperm(64)
        with torch.no_grad():
            means.append(torch.exp(critic(a, b[perm])).mean().item())
        critic.mine_loss(a, b, perm)
    a, b = torch.randn(64, 2), torch.randn(64, 2)
    perm = torch.randperm(64)
    with torch.no_grad():
        means.append(torch.exp(critic(a, b[perm])).mean().item())
    ema = 0.0
    for x in means:
        ema = decay * ema + (1 - decay) * x
    ema_hat = ema / (1 - decay ** len(means))
    assert abs(ema_hat - means[-1]) > 1e-3 * means[-1]  # the correction does something

    loss = critic.mine_loss(a, b, perm)
    # value: the plain bound
    assert loss.item() == pytest.approx(-critic.dv(a, b, perm).item(), abs=1e-6)
    # gradient: of  -(mean T_joint - mean(exp T_marg) / ema_hat)
    ref = -(critic(a, b).mean() - torch.exp(critic(a, b[perm])).mean() / ema_hat)
    params = list(critic.parameters())
    for x, y in zip(torch.autograd.grad(loss, params), torch.autograd.grad(ref, params)):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-6)


def test_mine_estimates_mi_of_correlated_gaussians():
    r"""d = 2 pairs, rho in {0, 0.5, 0.8} (true MI 0, 0.288, 1.022 nats); a fresh critic
    (hidden 128) trained with the moving-average-corrected objective for 500 Adam steps
    (lr 2e-3, batch 512); DV evaluated on 20,000 held-out samples must be within
    10% + 0.03 nats of the truth, and ordered. ~1 s per rho on 2 cores."""
    d, steps, batch = 2, 500, 512
    estimates = {}
    start = time.perf_counter()
    # matrices this small gain nothing from intra-op threads, and on a loaded machine the
    # thread hand-offs dominate: run single-threaded, restore afterwards
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _train_and_estimate(d, steps, batch, estimates)
    finally:
        torch.set_num_threads(threads)
    assert estimates[0.8] > estimates[0.5] > estimates[0.0] + 0.15
    assert abs(estimates[0.0]) < 0.03
    print(f"MINE d={d}: " + ", ".join(f"rho={r}: true {true_mi(d, r):.3f} est {e:.3f}"
                                      for r, e in estimates.items())
          + f" ({time.perf_counter() - start:.1f} s)")


def _train_and_estimate(d, steps, batch, estimates):
    for rho in (0.0, 0.5, 0.8):
        torch.manual_seed(0)
        gen = torch.Generator().manual_seed(0)
        critic = MINECritic(d, d, hidden=128, ema_decay=0.99)
        opt = torch.optim.Adam(critic.parameters(), lr=2e-3)
        for _ in range(steps):
            a, b = correlated_gaussians(batch, d, rho, gen)
            opt.zero_grad()
            critic.mine_loss(a, b).backward()
            opt.step()
        held_out = torch.Generator().manual_seed(12345)
        a, b = correlated_gaussians(20000, d, rho, held_out)
        with torch.no_grad():
            estimates[rho] = critic.dv(a, b).item()
        truth = true_mi(d, rho)
        assert abs(estimates[rho] - truth) <= 0.1 * truth + 0.03, (rho, truth, estimates)


def test_ema_decay_validated_and_reset():
    with pytest.raises(ValueError, match='ema_decay'):
        MINECritic(2, 2, ema_decay=1.0)
    critic = MINECritic(2, 2)
    critic.mine_loss(torch.randn(8, 2), torch.randn(8, 2))
    assert int(critic.ema_steps) == 1
    critic.reset_parameters()
    assert int(critic.ema_steps) == 0 and critic.log_ema.item() == float('-inf')
    assert 'hidden=128' in repr(critic)


def test_moving_average_step_count_follows_a_loaded_state():
    # the step count of the bias correction is kept in Python between steps (no GPU read
    # per step) and must follow a loaded state dict
    torch.manual_seed(0)
    a, b = torch.randn(8, 2), torch.randn(8, 2)
    critic, fresh = MINECritic(2, 2), MINECritic(2, 2)
    for _ in range(3):
        critic.mine_loss(a, b)
    lme = torch.tensor(0.3)
    corrected = critic._corrected_log_ema(lme, update=False)
    assert not torch.equal(corrected, lme)
    critic.load_state_dict(fresh.state_dict())  # nothing averaged yet: the plain gradient
    assert torch.equal(critic._corrected_log_ema(lme, update=False), lme)
    critic.mine_loss(a, b)
    assert int(critic.ema_steps) == 1
    restored = MINECritic(2, 2)
    restored.load_state_dict(critic.state_dict())
    assert torch.equal(restored._corrected_log_ema(lme, update=False),
                       critic._corrected_log_ema(lme, update=False))
