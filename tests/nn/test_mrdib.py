import math

import pytest
import torch

from mrdib_pyg.nn.mine import MINECritic, random_derangement
from mrdib_pyg.nn.mrdib import MRdIB, MRdIBOutput, VariationalEncoder, _kl_std_normal
from mrdib_pyg.nn.output import BPRBatch, ModalityOutput, RecOutput

NUM_USERS, NUM_ITEMS = 30, 50


def make_output(names=('image', 'text'), item_dims=(12, 6), user_dims=(None, 5),
                requires_grad=False, shared=False, seed=0, dtype=torch.float32):
    r"""A backbone-like output built from leaf tensors. With :obj:`shared=True` every
    modality is a noisy linear view of one common item factor (strongly dependent)."""
    g = torch.Generator().manual_seed(seed)
    common = torch.randn(NUM_ITEMS, 4, generator=g, dtype=dtype)
    mods = {}
    for name, d_i, d_u in zip(names, item_dims, user_dims):
        if shared:
            item = common @ torch.randn(4, d_i, generator=g, dtype=dtype)
            item = item + 0.1 * torch.randn(NUM_ITEMS, d_i, generator=g, dtype=dtype)
        else:
            item = torch.randn(NUM_ITEMS, d_i, generator=g, dtype=dtype)
        user = None if d_u is None else torch.randn(NUM_USERS, d_u, generator=g, dtype=dtype)
        mods[name] = ModalityOutput(item.requires_grad_(requires_grad),
                                    None if user is None else user.requires_grad_(requires_grad))
    user = torch.randn(NUM_USERS, 8, generator=g, dtype=dtype).requires_grad_(requires_grad)
    item = torch.randn(NUM_ITEMS, 8, generator=g, dtype=dtype).requires_grad_(requires_grad)
    return RecOutput(user=user, item=item, modalities=mods)


def make_batch(size=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    return BPRBatch(torch.randint(0, NUM_USERS, (size,), generator=g),
                    torch.randint(0, NUM_ITEMS, (size,), generator=g),
                    torch.randint(0, NUM_ITEMS, (size,), generator=g))


def count_critic_calls(module):
    calls = []
    for critic in module.critics.values():
        critic.register_forward_hook(lambda *_: calls.append(1))
    return calls


# -- 1. KL ------------------------------------------------------------------------------
def test_kl_closed_form_matches_monte_carlo():
    r"""KL(N(mu, diag e^logvar) || N(0, I)) per row against the mean of
    log q(z) - log p(z) over 200,000 samples z ~ q: relative error < 1% per row (the
    Monte-Carlo standard error here is about 0.3%)."""
    g = torch.Generator().manual_seed(0)
    mu = 0.5 * torch.randn(4, 8, generator=g, dtype=torch.float64)
    logvar = 1.5 * torch.randn(4, 8, generator=g, dtype=torch.float64)
    closed = _kl_std_normal(mu, logvar)
    std = torch.exp(0.5 * logvar)
    eps = torch.randn(200_000, 4, 8, generator=g, dtype=torch.float64)
    z = mu + std * eps
    log_q = (-0.5 * eps.pow(2) - 0.5 * logvar - 0.5 * math.log(2 * math.pi)).sum(-1)
    log_p = (-0.5 * z.pow(2) - 0.5 * math.log(2 * math.pi)).sum(-1)
    mc = (log_q - log_p).mean(0)
    assert closed.shape == (4,)
    assert ((closed - mc).abs() / closed).max() < 0.01, (closed, mc)


def test_kl_exact_values():
    # zero at the prior; 1-D values by hand: KL = (mu^2 + s^2 - 1 - log s^2) / 2
    assert _kl_std_normal(torch.zeros(3, 5), torch.zeros(3, 5)).abs().max() == 0
    mu = torch.tensor([[1.0], [0.0], [0.0], [2.0]], dtype=torch.float64)
    var = torch.tensor([[1.0], [2.0], [0.25], [0.5]], dtype=torch.float64)
    expected = 0.5 * (mu.pow(2) + var - 1 - var.log()).squeeze(-1)
    torch.testing.assert_close(_kl_std_normal(mu, var.log()), expected)
    assert _kl_std_normal(mu, var.log())[1].item() == pytest.approx(0.5 * (1 - math.log(2)))
    # summed over latent dimensions
    torch.testing.assert_close(_kl_std_normal(mu.repeat(1, 3), var.log().repeat(1, 3)),
                               3 * expected)


def test_kl_term_averages_over_unique_items():
    torch.manual_seed(0)
    out = make_output()
    # items 3 and 7 repeat, and 7 is positive and negative: 4 unique items
    batch = BPRBatch(torch.tensor([0, 1, 2, 3]), torch.tensor([3, 3, 7, 9]),
                     torch.tensor([7, 7, 11, 3]))
    model = MRdIB.from_output(out, latent_dim=8)
    res = model(out, batch)
    uniq = torch.tensor([3, 7, 9, 11])
    expected = sum(_kl_std_normal(*model.encoder(m)(out.modalities[m].item[uniq])).mean()
                   for m in model.modalities)
    torch.testing.assert_close(res.terms['kl'], expected)
    # a per-triple average would weigh item 3 and 7 more and differ
    per_triple = sum(_kl_std_normal(*model.encoder(m)(
        out.modalities[m].item[torch.cat([batch.pos, batch.neg])])).mean()
        for m in model.modalities)
    assert not torch.allclose(per_triple, expected)


# -- 3. adversarial directions ------------------------------------------------------------
def _fixed_perm_dv(model, z, seed):
    torch.manual_seed(seed)
    a, b = model.pairs[0]
    perm = random_derangement(z[a].size(0))
    with torch.no_grad():
        return model.critic(a, b).dv(z[a], z[b], perm).item()


def test_critic_step_raises_dv_with_z_fixed():
    torch.manual_seed(0)
    out = make_output(shared=True)
    batch = make_batch(64)
    model = MRdIB.from_output(out, latent_dim=8).eval()  # z = mu: fixed
    enc = model.encode_batch(out, batch)
    z = enc.mine_pairs(detach=True)
    opt = torch.optim.SGD(model.critic_parameters(), lr=0.05)
    encoder_before = [p.detach().clone() for p in model.main_parameters()]
    for step in range(5):  # each step, moving average warm or not, must raise the bound
        before = _fixed_perm_dv(model, z, seed=100 + step)
        torch.manual_seed(100 + step)  # the step's shuffle = the evaluation's shuffle
        opt.zero_grad()
        model.critic_loss(enc).backward()
        opt.step()
        after = _fixed_perm_dv(model, z, seed=100 + step)
        assert after > before, (step, before, after)
    # the critic step never touches the encoders
    assert all(torch.equal(p, q) for p, q in zip(model.main_parameters(), encoder_before))


def test_encoder_step_lowers_dv_with_critic_frozen():
    torch.manual_seed(0)
    out = make_output(shared=True)
    batch = make_batch(64)
    model = MRdIB.from_output(out, latent_dim=8, alpha1=0.0, alpha3=0.0).eval()
    # give the critic something to say first
    critic_opt = torch.optim.Adam(model.critic_parameters(), lr=1e-2)
    for _ in range(50):
        critic_opt.zero_grad()
        model.critic_step_loss(out, batch).backward()
        critic_opt.step()
    critic_opt.zero_grad()  # set_to_none: the main step below must leave them None
    critic_before = [p.detach().clone() for p in model.critic_parameters()]

    encoder_opt = torch.optim.SGD(model.main_parameters(), lr=0.05)
    torch.manual_seed(7)
    res = model(out, batch)
    assert res.terms['redundant'] > 0.05  # a real dependence is being measured
    encoder_opt.zero_grad()
    # the redundant part of the returned loss (alpha1 = alpha3 = 0): alpha2 * DV
    (res.loss - res.terms['synergy']).backward()
    assert all(p.grad is None for p in model.critic_parameters())
    encoder_opt.step()
    torch.manual_seed(7)  # same shuffle
    with torch.no_grad():
        after = model(out, batch).terms['redundant']
    assert after < res.terms['redundant'].detach(), (res.terms['redundant'], after)
    assert all(torch.equal(p, q) for p, q in zip(model.critic_parameters(), critic_before))


def test_critic_step_loss_uses_detached_z():
    out = make_output(requires_grad=True)
    model = MRdIB.from_output(out, latent_dim=8)
    loss = model.critic_step_loss(out, make_batch())
    loss.backward()
    assert all(p.grad is None for p in model.main_parameters())
    assert all(mo.item.grad is None for mo in out.modalities.values())
    assert all(p.grad is not None for p in model.critic_parameters())
    assert int(model.critic('image', 'text').ema_steps) == 1


# -- 4. parameter split -------------------------------------------------------------------
def test_critic_gets_no_gradient_from_main_loss():
    torch.manual_seed(0)
    out = make_output()
    model = MRdIB.from_output(out, latent_dim=8)
    calls = count_critic_calls(model)
    res = model(out, make_batch())
    assert isinstance(res, MRdIBOutput) and 'redundant' in res.terms and calls
    res.loss.backward()
    assert all(p.grad is None or p.grad.abs().max() == 0 for p in model.critic_parameters())
    # the rest of the module does learn from it
    assert all(p.grad is not None for p in model.main_parameters())


def test_parameter_partition():
    model = MRdIB.from_output(make_output(names=('a', 'b', 'c'), item_dims=(4, 5, 6),
                                          user_dims=(None, None, 3)), latent_dim=8)
    main = {id(p) for p in model.main_parameters()}
    critic = {id(p) for p in model.critic_parameters()}
    assert main and critic and not (main & critic)
    assert main | critic == {id(p) for p in model.parameters()}
    assert len(critic) == 3 * 4  # three pairs, two Linear layers each


# -- 5. ablations -------------------------------------------------------------------------
EXPECTED_TERMS = {
    'full': {'synergy', 'kl', 'unique', 'redundant'},
    'wo_mib': {'synergy', 'unique', 'redundant'},
    'wo_redundant': {'synergy', 'kl', 'unique'},
    'wo_unique': {'synergy', 'kl', 'redundant'},
    'mib_only': {'synergy', 'kl'},
}


def loss_terms(res):
    return set(res.terms) - {'sigma'}  # 'sigma' is a diagnostic, not a loss term


@pytest.mark.parametrize('name', sorted(MRdIB.ABLATIONS))
def test_ablation_removes_exactly_its_term(name):
    assert set(EXPECTED_TERMS) == set(MRdIB.ABLATIONS)
    torch.manual_seed(0)
    out = make_output()
    model = MRdIB.from_output(out, ablation=name, latent_dim=8)
    calls = count_critic_calls(model)
    res = model(out, make_batch())
    assert loss_terms(res) == EXPECTED_TERMS[name] == set(model.active_terms)
    assert bool(calls) == ('redundant' in EXPECTED_TERMS[name])
    # one modality pair: the encoders see max(DV, 0)
    expected = (res.terms['synergy'] + model.alpha1 * res.terms.get('kl', 0.0)
                + model.alpha2 * max(float(res.terms.get('redundant', 0.0)), 0.0)
                + model.alpha3 * res.terms.get('unique', 0.0))
    torch.testing.assert_close(res.loss, expected)
    step = model.critic_step_loss(out, make_batch())
    assert (step is None) == ('redundant' not in EXPECTED_TERMS[name])
    assert bool(calls) == ('redundant' in EXPECTED_TERMS[name])


@pytest.mark.parametrize('alpha,term', [('alpha1', 'kl'), ('alpha2', 'redundant'),
                                        ('alpha3', 'unique')])
def test_zero_alpha_skips_term(alpha, term):
    out = make_output()
    model = MRdIB.from_output(out, latent_dim=8, **{alpha: 0.0})
    calls = count_critic_calls(model)
    res = model(out, make_batch())
    assert term not in res.terms and len(loss_terms(res)) == 3
    assert bool(calls) == (term != 'redundant')


def test_skipped_term_cannot_poison_the_loss():
    # 0 * NaN = NaN: a skipped term must not be computed at all
    out = make_output()
    model = MRdIB.from_output(out, latent_dim=8, ablation='wo_redundant')
    for critic in model.critics.values():
        critic.register_forward_hook(lambda *_: torch.full((), float('nan')))
    assert torch.isfinite(model(out, make_batch()).loss)


def test_ablation_names_validated():
    with pytest.raises(ValueError, match='unknown ablation'):
        MRdIB.ablation('wo_everything')
    assert MRdIB.ablation('mib_only') == dict(use_mib=True, use_redundant=False,
                                              use_unique=False)
    with pytest.raises(ValueError, match='use_unique'):
        MRdIB.from_output(make_output(), ablation='wo_unique', use_unique=True)


# -- 6. construction ----------------------------------------------------------------------
@pytest.mark.parametrize('n, message', [
    (0, r'>= 2 modalities\); got none .*LightGCN and BPR-MF'),
    (1, r'at least 2 modalities .*has one \(image\).*second modality')])
def test_from_output_refuses_fewer_than_two_modalities(n, message):
    out = make_output(names=('image',)[:n], item_dims=(4,), user_dims=(None,))
    with pytest.raises(ValueError, match=message):
        MRdIB.from_output(out)


def test_three_arbitrary_modalities_sum_three_pairs():
    names = ('photo.v2', 'caption|x', 'training')  # '.', '|' and an attribute name
    out = make_output(names=names, item_dims=(7, 5, 3), user_dims=(None, 4, 8))
    batch = make_batch()
    model = MRdIB.from_output(out, latent_dim=8).eval()
    assert model.modalities == list(names) and len(model.critics) == 3
    assert model.pairs == [('photo.v2', 'caption|x'), ('photo.v2', 'training'),
                           ('caption|x', 'training')]
    assert len({id(model.critic(a, b)) for a, b in model.pairs}) == 3
    calls = count_critic_calls(model)
    torch.manual_seed(3)
    res = model(out, batch)
    assert len(calls) == 3 and set(res.z) == set(names)
    z = model.encode_batch(out, batch).mine_pairs()
    n = torch.unique(batch.pos).numel()
    assert z['training'].size(0) == n
    torch.manual_seed(3)  # eval: the shuffles are the only randomness, drawn in pair order
    expected = sum(model.critic(a, b).dv(z[a], z[b], random_derangement(n))
                   for a, b in model.pairs)
    torch.testing.assert_close(res.terms['redundant'], expected)
    assert model.critic_step_loss(out, batch) is not None
    assert 'photo.v2: 7' in repr(model)
    # the fusion sees every modality
    assert model.fusion[0].in_features == 3 * 8


def test_user_side_and_shapes():
    out = make_output()
    model = MRdIB.from_output(out, latent_dim=6)
    # image has no user table: it pairs with out.user (width 8) -> mapped; text has width 5
    assert model.user_dims == {'image': 8, 'text': 5}
    assert isinstance(model.user_map('image'), torch.nn.Linear)
    assert isinstance(MRdIB({'a': 3, 'b': 3}, {'a': 6, 'b': 4}, latent_dim=6).user_map('a'),
                      torch.nn.Identity)
    batch = make_batch(10)
    res = model(out, batch)
    assert res.z['image'].shape == res.z_neg['text'].shape == (10, 6)
    mu = model.encode(out)
    assert mu['text'].shape == (NUM_ITEMS, 6)
    assert model.encode(out, batch.pos)['image'].shape == (10, 6)
    with pytest.raises(ValueError, match='modalities'):
        model(make_output(names=('image', 'sound')), batch)
    mlp = MRdIB.from_output(out, latent_dim=6, encoder_hidden=11, fusion_hidden=9)
    assert mlp.encoder('text').net[0].out_features == 11 and mlp.fusion[0].out_features == 9
    assert mlp(out, batch).z['text'].shape == (10, 6)
    with pytest.raises(ValueError, match='at least 2'):
        MRdIB({'a': 3}, {'a': 3})
    with pytest.raises(ValueError, match='alpha2'):
        MRdIB({'a': 3, 'b': 3}, {'a': 3, 'b': 3}, alpha2=-1.0)


# -- 7. train vs eval ---------------------------------------------------------------------
def test_eval_is_deterministic_mean_train_is_stochastic():
    out = make_output()
    batch = make_batch()
    model = MRdIB.from_output(out, latent_dim=8).eval()
    first, second = model(out, batch), model(out, batch)
    mu = model.encode(out, batch.pos)
    for m in model.modalities:
        assert torch.equal(first.z[m], second.z[m])
        torch.testing.assert_close(first.z[m], mu[m])
    torch.testing.assert_close(first.terms['synergy'], second.terms['synergy'])
    model.train()
    a, b = model(out, batch), model(out, batch)
    assert not torch.allclose(a.z['image'], b.z['image'])
    # encode gives means in training too
    torch.testing.assert_close(model.encode(out, batch.pos)['image'], mu['image'])


def test_same_item_shares_its_sample():
    out = make_output()
    batch = BPRBatch(torch.tensor([0, 1]), torch.tensor([5, 6]), torch.tensor([6, 5]))
    res = MRdIB.from_output(out, latent_dim=8).train()(out, batch)
    torch.testing.assert_close(res.z['text'][0], res.z_neg['text'][1])


# -- 8. gradients reach the backbone ------------------------------------------------------
def test_gradients_flow_into_backbone_tables():
    torch.manual_seed(0)
    out = make_output(requires_grad=True)
    batch = make_batch()
    model = MRdIB.from_output(out, latent_dim=8)
    model(out, batch).loss.backward()
    in_batch = torch.zeros(NUM_ITEMS, dtype=torch.bool)
    in_batch[batch.pos] = in_batch[batch.neg] = True
    for m, mo in out.modalities.items():
        grad = mo.item.grad
        assert grad is not None and grad[in_batch].abs().sum(-1).gt(0).all(), m
        assert grad[~in_batch].abs().max() == 0  # only the batch's items
    assert out.modalities['text'].user.grad.abs().sum() > 0  # per-modality user table
    assert out.user.grad[batch.users].abs().sum() > 0  # image pairs with out.user
    assert out.item.grad is None  # MRdIB reads the modality tables only


def test_user_grad_false_leaves_the_user_tables_alone():
    torch.manual_seed(0)
    out = make_output(requires_grad=True)
    batch = make_batch()
    model = MRdIB.from_output(out, latent_dim=8, user_grad=False)
    res = model(out, batch)
    res.loss.backward()
    assert out.user.grad is None and out.modalities['text'].user.grad is None
    assert all(mo.item.grad.abs().sum() > 0 for mo in out.modalities.values())
    # Same loss value as with the gradient on: only where it flows changes.
    torch.manual_seed(0)
    other = MRdIB.from_output(out, latent_dim=8)
    other.load_state_dict(model.state_dict())
    torch.manual_seed(1)
    a = model(out, batch).loss
    torch.manual_seed(1)
    assert torch.allclose(a, other(out, batch).loss)


def _one_backward(batch, **kwargs):
    # A fresh output and MRdIB, seeded alike on every call; one loss and its backward.
    torch.manual_seed(0)
    out = make_output(requires_grad=True)
    model = MRdIB.from_output(out, latent_dim=8, **kwargs)
    torch.manual_seed(1)
    res = model(out, batch)
    res.loss.backward()
    return out, res, model


@pytest.mark.parametrize('scale', [0.0, 0.25])
def test_item_grad_scales_only_the_gradient_into_the_modality_items(scale):
    batch = make_batch()
    full, res_full, m_full = _one_backward(batch)
    part, res_part, m_part = _one_backward(batch, item_grad=scale)
    assert torch.allclose(res_full.loss, res_part.loss)  # the values are the same
    for m in full.modalities:
        g_full, g_part = full.modalities[m].item.grad, part.modalities[m].item.grad
        if scale == 0:
            assert g_part is None or torch.count_nonzero(g_part) == 0
        else:
            assert torch.allclose(g_part, scale * g_full, atol=1e-7)
        assert g_full.abs().sum() > 0
    # MRdIB's own encoders learn exactly as before; the user side is untouched.
    assert torch.allclose(full.user.grad if full.user.grad is not None else torch.zeros(1),
                          part.user.grad if part.user.grad is not None else torch.zeros(1))
    for p_full, p_part in zip(m_full.parameters(), m_part.parameters()):
        assert (p_full.grad is None) == (p_part.grad is None)
        if p_full.grad is not None:
            assert torch.allclose(p_full.grad, p_part.grad, atol=1e-7)


@pytest.mark.parametrize('weight', [0.0, 0.3])
def test_synergy_weight_scales_only_the_fused_heads_share(weight):
    batch = make_batch()
    _, full, m_full = _one_backward(batch)
    _, part, m_part = _one_backward(batch, synergy_weight=weight)
    for key in full.terms:  # the logged terms stay unweighted
        assert torch.allclose(full.terms[key], part.terms[key])
    expected = full.loss - (1.0 - weight) * full.terms['synergy']
    assert torch.allclose(part.loss, expected, atol=1e-6)
    # The fusion MLP learns only through the synergy head: its gradient scales by the weight.
    for p_full, p_part in zip(m_full.fusion.parameters(), m_part.fusion.parameters()):
        assert p_full.grad.abs().sum() > 0
        assert torch.allclose(p_part.grad, weight * p_full.grad, atol=1e-7)
    with pytest.raises(ValueError, match='synergy_weight'):
        MRdIB({'a': 4, 'b': 4}, {'a': 4, 'b': 4}, synergy_weight=-1.0)


def test_item_grad_is_checked():
    with pytest.raises(ValueError, match='item_grad'):
        MRdIB({'a': 4, 'b': 4}, {'a': 4, 'b': 4}, item_grad=1.5)


def test_mrdib_changes_backbone_gradients():
    torch.manual_seed(0)
    out = make_output(requires_grad=True)
    batch = make_batch()
    image = out.modalities['image'].item
    # a toy backbone loss that uses the modality table
    backbone = -(out.user[batch.users] * image[batch.pos][:, :8]).sum(-1).mean()
    g_plain, = torch.autograd.grad(backbone, image, retain_graph=True)
    model = MRdIB.from_output(out, latent_dim=8)
    g_with, = torch.autograd.grad(backbone + model(out, batch).loss, image)
    assert not torch.allclose(g_plain, g_with)


# -- device, dtype, reset -----------------------------------------------------------------
def test_float64_and_reset_parameters():
    out = make_output(dtype=torch.float64)
    model = MRdIB.from_output(out, latent_dim=8)
    assert all(p.dtype == torch.float64 for p in model.parameters())
    res = model(out, make_batch())
    assert res.loss.dtype == torch.float64 and torch.isfinite(res.loss)
    model.critic_step_loss(out, make_batch()).backward()
    before = [p.detach().clone() for p in model.parameters()]
    model.reset_parameters()
    assert all(not torch.equal(p, q) for p, q in zip(model.parameters(), before))
    assert all(int(c.ema_steps) == 0 for c in model.critics.values())


@pytest.mark.skipif(not torch.cuda.is_available(), reason='CUDA not available')
def test_cuda():
    out = make_output()
    out = RecOutput(out.user.cuda(), out.item.cuda(),
                    {m: ModalityOutput(mo.item.cuda(), None if mo.user is None
                                       else mo.user.cuda())
                     for m, mo in out.modalities.items()})
    model = MRdIB.from_output(out, latent_dim=8)
    assert next(model.parameters()).is_cuda
    batch = make_batch().to('cuda')
    model.critic_step_loss(out, batch).backward()
    res = model(out, batch)
    res.loss.backward()
    assert res.loss.is_cuda and torch.isfinite(res.loss)


# -- conditioning and the fixes of issue 7 -------------------------------------------------
def test_marginal_pairs_come_from_unique_positives_and_a_derangement():
    out = make_output(shared=True)
    # items 4 and 9 repeat as positives: a shuffle of the raw rows would pair them with
    # themselves as "marginal" pairs
    batch = BPRBatch(torch.arange(8), torch.tensor([4, 4, 4, 9, 9, 2, 3, 5]),
                     torch.tensor([1, 6, 7, 8, 10, 11, 12, 13]))
    model = MRdIB.from_output(out, latent_dim=8).eval()
    enc = model.encode_batch(out, batch)
    assert torch.equal(enc.items[enc.mine_rows], torch.tensor([2, 3, 4, 5, 9]))
    for n in (2, 3, 17):
        for seed in range(20):
            torch.manual_seed(seed)
            perm = random_derangement(n)
            assert sorted(perm.tolist()) == list(range(n))
            assert bool((perm != torch.arange(n)).all()), perm


def test_encoders_gain_nothing_from_dv_below_the_floor():
    torch.manual_seed(0)
    out = make_output(requires_grad=True)
    batch = make_batch(32)
    model = MRdIB.from_output(out, latent_dim=8, alpha1=0.0, alpha3=0.0).eval()
    a, b = model.pairs[0]
    with torch.no_grad():  # a critic that scores joint pairs low: DV < 0 for these z
        model.critic(a, b).lin2.bias.fill_(0.0)
    res = None
    for seed in range(50):
        torch.manual_seed(seed)
        res = model(out, batch)
        if res.terms['redundant'] < 0:
            break
    assert res.terms['redundant'] < 0, 'no batch gave a negative DV'
    (res.loss - res.terms['synergy']).sum().backward()  # the redundant part of the loss
    assert all(mo.item.grad is None or mo.item.grad.abs().max() == 0
               for mo in out.modalities.values())
    # the plain bound (floor None) would have pushed it further down
    plain = MRdIB.from_output(out, latent_dim=8, alpha1=0.0, alpha3=0.0,
                              redundant_floor=None).eval()
    plain.load_state_dict(model.state_dict())
    torch.manual_seed(seed)
    res = plain(out, batch)
    (res.loss - res.terms['synergy']).backward()
    assert out.modalities['image'].item.grad.abs().max() > 0


def test_logvar_is_bounded_and_layer_norm_is_row_scale_free():
    torch.manual_seed(0)
    enc = VariationalEncoder(16, 4, input_norm='layer', logvar_bound=6.0)
    x = torch.randn(5, 16)
    mu, logvar = enc(1e4 * x)
    assert logvar.abs().max() < 6.0
    torch.testing.assert_close(enc(x)[0], mu, atol=1e-4, rtol=1e-4)  # row scale removed
    raw = VariationalEncoder(16, 4, input_norm='none', logvar_bound=None)
    assert raw(1e4 * x)[1].abs().max() > 6.0
    with pytest.raises(ValueError, match='input_norm'):
        VariationalEncoder(16, 4, input_norm='batch')


def test_scale_conditioning_is_set_once_and_keeps_the_scale_gradient():
    torch.manual_seed(0)
    enc = VariationalEncoder(16, 4)  # default: input_norm='scale'
    x = 50.0 * torch.randn(64, 16)
    assert float(enc.inv_scale) == 0.0
    mu, _ = enc(x)
    assert float(enc.inv_scale) == pytest.approx(1 / float(x.pow(2).mean().sqrt()), rel=1e-5)
    before = float(enc.inv_scale)
    enc(3.0 * x)  # later batches do not move the constant
    assert float(enc.inv_scale) == before
    # the encoder's input is O(1) at the start, so are its outputs
    assert mu.abs().max() < 10
    # the KL still sees the scale of x (a row norm would hide it): d KL / d alpha != 0
    alpha = torch.tensor(1.0, requires_grad=True)
    m, lv = enc(alpha * x)
    _kl_std_normal(m, lv).mean().backward()
    assert alpha.grad.abs() > 1e-3
    layer = VariationalEncoder(16, 4, input_norm='layer')
    alpha = torch.tensor(1.0, requires_grad=True)
    m, lv = layer(alpha * x)
    _kl_std_normal(m, lv).mean().backward()
    assert alpha.grad.abs() < 1e-4
    # the constant is part of the state (a reloaded module scores the same)
    assert 'inv_scale' in enc.state_dict()


def test_scale_loaded_from_a_state_dict_is_used_and_an_unset_one_is_recalibrated():
    # the encoder remembers in Python that its scale is set (no GPU read per call); a
    # loaded state replaces the scale, and a state saved before any batch (scale 0) must
    # lead to a new calibration, not to inputs multiplied by 0
    torch.manual_seed(0)
    x = 50.0 * torch.randn(64, 16)
    enc = VariationalEncoder(16, 4)
    enc(x)
    other = VariationalEncoder(16, 4)
    other.inv_scale.fill_(0.5)
    enc.load_state_dict(other.state_dict())
    assert torch.equal(enc(x)[0], other(x)[0]) and float(enc.inv_scale) == 0.5
    enc.load_state_dict(VariationalEncoder(16, 4).state_dict())  # never calibrated
    enc(2.0 * x)
    assert float(enc.inv_scale) == pytest.approx(1 / float((2.0 * x).pow(2).mean().sqrt()),
                                                 rel=1e-5)


def test_wo_mib_does_not_sample():
    out = make_output()
    batch = make_batch()
    model = MRdIB.from_output(out, latent_dim=8, ablation='wo_mib').train()
    first, second = model(out, batch), model(out, batch)
    assert torch.equal(first.z['image'], second.z['image'])
    noisy = MRdIB.from_output(out, latent_dim=8, ablation='wo_mib', sample_without_kl=True)
    assert not torch.equal(noisy(out, batch).z['image'], noisy(out, batch).z['image'])


@pytest.mark.parametrize('kwargs,match', [
    (dict(alpha1=float('nan')), 'alpha1'), (dict(alpha3=float('inf')), 'alpha3'),
    (dict(latent_dim=0), 'latent_dim'), (dict(critic_hidden=0), 'critic_hidden'),
    (dict(redundant_floor=float('nan')), 'redundant_floor')])
def test_invalid_settings_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MRdIB({'a': 3, 'b': 3}, {'a': 3, 'b': 3}, **kwargs)
