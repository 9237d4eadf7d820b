import pytest
import torch
import torch.nn.functional as F

from mrdib_pyg.nn.conv.latent_dropout import (BootstrapTerms, LatentBootstrap,
                                              cosine_alignment, latent_dropout)

U, I, D = 7, 5, 8


def tables(seed=0, grad=True):
    g = torch.Generator().manual_seed(seed)
    user = torch.randn(U, D, generator=g).requires_grad_(grad)
    item = torch.randn(I, D, generator=g).requires_grad_(grad)
    mods = {'text': torch.randn(I, D, generator=g).requires_grad_(grad),
            'image': torch.randn(I, D, generator=g).requires_grad_(grad)}
    return user, item, mods


USERS, ITEMS = torch.tensor([0, 3, 3, 6]), torch.tensor([1, 4, 0, 1])


def test_latent_dropout_is_a_detached_dropout_view():
    x = torch.randn(400, 50, requires_grad=True)
    torch.manual_seed(1)
    view = latent_dropout(x, 0.3)
    assert not view.requires_grad
    kept = view != 0
    assert abs(kept.float().mean().item() - 0.7) < 0.02
    assert torch.allclose(view[kept], x.detach()[kept] / 0.7)
    # MMRec's call (F.dropout on a clone under no_grad) draws the very same mask.
    torch.manual_seed(1)
    with torch.no_grad():
        expected = F.dropout(x.clone(), 0.3)
    assert torch.equal(view, expected)


def test_latent_dropout_applies_in_any_mode_and_p0_draws_nothing():
    x = torch.randn(10, 4)
    model = LatentBootstrap(4, dropout=0.5).eval()
    torch.manual_seed(0)
    assert not torch.equal(latent_dropout(x, model.dropout), x)  # eval mode: still drawn
    state = torch.get_rng_state()
    assert torch.equal(latent_dropout(x, 0.0), x)
    assert torch.equal(torch.get_rng_state(), state)


def test_cosine_alignment_values_and_stop_gradient():
    a = torch.tensor([[1., 0.], [0., 2.]], requires_grad=True)
    t = torch.tensor([[3., 0.], [0., -1.]], requires_grad=True)
    loss = cosine_alignment(a, t)
    assert loss.item() == pytest.approx(1 - (1 + -1) / 2)
    loss.backward()
    assert a.grad is not None and t.grad is None
    x = torch.randn(6, 3)
    y = torch.randn(6, 3)
    expected = 1 - ((x * y).sum(-1) / (x.norm(dim=-1) * y.norm(dim=-1))).mean()
    assert torch.allclose(cosine_alignment(x, y), expected, atol=1e-6)


def reference_terms(boot, user, item, mods, seed):
    r"""MMRec's calculate_loss, term by term: full-table predictor, then indexing."""
    torch.manual_seed(seed)
    p = boot.dropout
    with torch.no_grad():
        ut, it = F.dropout(user.clone(), p), F.dropout(item.clone(), p)
        mt = {m: F.dropout(x.clone(), p) for m, x in mods.items()}
    P = boot.predictor
    pu, pi = P(user)[USERS], P(item)[ITEMS]

    def cos(a, b):
        return 1 - F.cosine_similarity(a, b, dim=-1).mean()
    ui, iu = cos(pu, it[ITEMS]), cos(pi, ut[USERS])
    mi = {m: cos(P(x)[ITEMS], it[ITEMS]) for m, x in mods.items()}
    ms = {m: cos(P(x)[ITEMS], mt[m][ITEMS]) for m, x in mods.items()}
    return ui, iu, mi, ms


@pytest.mark.parametrize('p', [0.0, 0.3, 0.5])
def test_terms_equal_mmrecs_with_the_same_seed(p):
    torch.manual_seed(0)
    boot = LatentBootstrap(D, dropout=p)
    user, item, mods = tables()
    ui, iu, mi, ms = reference_terms(boot, user, item, mods, seed=5)
    torch.manual_seed(5)
    terms = boot(user, item, USERS, ITEMS, mods)
    assert isinstance(terms, BootstrapTerms)
    assert torch.allclose(terms.user_item, ui, atol=1e-6)
    assert torch.allclose(terms.item_user, iu, atol=1e-6)
    assert list(terms.modality_item) == ['text', 'image']
    for m in mods:
        assert torch.allclose(terms.modality_item[m], mi[m], atol=1e-6)
        assert torch.allclose(terms.modality_self[m], ms[m], atol=1e-6)
    expected = mi['text'] + mi['image'] + ms['text'] + ms['image']  # MMRec's sum order
    assert torch.allclose(terms.modality(), expected, atol=1e-6)
    assert torch.allclose(terms.interaction(), ui + iu)


def test_other_seed_other_masks():
    boot = LatentBootstrap(D, dropout=0.5)
    user, item, mods = tables()
    torch.manual_seed(1)
    a = boot(user, item, USERS, ITEMS, mods)
    torch.manual_seed(2)
    b = boot(user, item, USERS, ITEMS, mods)
    assert not torch.allclose(a.user_item, b.user_item)


def test_modality_rows_give_the_same_terms_and_gradients():
    boot = LatentBootstrap(D, dropout=0.3)
    user, item, mods = tables()
    lin = torch.nn.Linear(3, D)
    feats = torch.randn(I, 3, requires_grad=True)
    mods = {'text': lin(feats)}
    torch.manual_seed(3)
    full = boot(user, item, USERS, ITEMS, mods)
    full.modality().backward()
    g_full = (feats.grad.clone(), lin.weight.grad.clone())
    feats.grad = lin.weight.grad = None
    torch.manual_seed(3)
    rows = boot(user, item, USERS, ITEMS, {'text': lin(feats)}, {'text': lin(feats[ITEMS])})
    rows.modality().backward()
    assert torch.allclose(full.modality(), rows.modality(), atol=1e-6)
    assert torch.allclose(feats.grad, g_full[0], atol=1e-6)
    assert torch.allclose(lin.weight.grad, g_full[1], atol=1e-6)
    # Only the batch's feature rows receive a gradient.
    untouched = torch.ones(I, dtype=torch.bool)
    untouched[ITEMS] = False
    assert feats.grad[untouched].abs().sum() == 0


def test_targets_carry_no_gradient():
    boot = LatentBootstrap(D, dropout=0.3)
    user, item, _ = tables()
    torch.manual_seed(0)
    # item_user reaches the user table only through its target: no gradient there.
    boot(user, item, USERS, ITEMS).item_user.backward()
    assert user.grad is None and item.grad.abs().sum() > 0


def test_without_modalities():
    boot = LatentBootstrap(D)
    user, item, _ = tables()
    terms = boot(user, item, USERS, ITEMS)
    assert terms.modality_item == {} and terms.modality() == 0
    assert terms.modality().dim() == 0


def test_init_and_repr():
    torch.manual_seed(0)
    boot = LatentBootstrap(64, dropout=0.5)
    # Xavier-normal: std sqrt(2 / (64 + 64)) = 0.125.
    assert abs(boot.predictor.weight.std().item() - 0.125) < 0.01
    assert repr(boot).startswith('LatentBootstrap(\n  64, dropout=0.5')


@pytest.mark.parametrize('p', [-0.1, 1.0])
def test_rejects_bad_dropout(p):
    with pytest.raises(ValueError, match='LatentBootstrap.*dropout'):
        LatentBootstrap(D, dropout=p)


def test_rejects_rows_of_an_unknown_modality():
    boot = LatentBootstrap(D)
    user, item, mods = tables()
    with pytest.raises(ValueError, match="modality_rows has 'audio'"):
        boot(user, item, USERS, ITEMS, mods, {'audio': torch.zeros(4, D)})
