r"""MRdIB's predictor heads: their values against BPR computed by hand with the right user
table, and their direction (steps on one head raise that head's pairwise accuracy)."""
import pytest
import torch

from mrdib_pyg.nn.mrdib import MRdIB
from mrdib_pyg.nn.output import BPRBatch, ModalityOutput, RecOutput

U, I = 40, 60


def make_output(seed=0, modality_user=False):
    g = torch.Generator().manual_seed(seed)
    mods = {'image': ModalityOutput(torch.randn(I, 12, generator=g)),           # no own users
            'text': ModalityOutput(torch.randn(I, 6, generator=g),
                                   torch.randn(U, 5, generator=g))}             # own users
    return RecOutput(user=torch.randn(U, 8, generator=g), item=torch.randn(I, 8, generator=g),
                     modalities=mods,
                     modality_user=torch.randn(U, 8, generator=g) if modality_user else None)


def make_batch(n=64, seed=1):
    g = torch.Generator().manual_seed(seed)
    return BPRBatch(torch.randint(0, U, (n,), generator=g),
                    torch.randint(0, I, (n,), generator=g),
                    torch.randint(0, I, (n,), generator=g))


def bpr_by_hand(pos, neg):
    # -mean log(1e-10 + sigmoid(s+ - s-)), written out
    diff = pos - neg
    return -torch.log(1e-10 + 1.0 / (1.0 + torch.exp(-diff))).mean()


def mapped_users(model, table, m, users):
    lin = model.user_map(m)
    rows = table[users]
    return rows if isinstance(lin, torch.nn.Identity) else rows @ lin.weight.t() + lin.bias


def means(model, out, m, items):
    return model.encoder(m)(out.modalities[m].item[items])[0]


@pytest.mark.parametrize('modality_user', [False, True])
def test_head_values_match_hand_computed_bpr(modality_user):
    torch.manual_seed(0)
    out, batch = make_output(modality_user=modality_user), make_batch()
    model = MRdIB.from_output(out, latent_dim=8, alpha2=0.0).eval()  # z = mu
    res = model(out, batch)
    # the user table each modality must pair with: its own, else modality_user, else user
    image_users = out.modality_user if modality_user else out.user
    tables = {'image': image_users, 'text': out.modalities['text'].user}
    users = {m: mapped_users(model, tables[m], m, batch.users) for m in model.modalities}
    unique = 0.0
    for m in model.modalities:
        zp, zn = means(model, out, m, batch.pos), means(model, out, m, batch.neg)
        unique = unique + bpr_by_hand((users[m] * zp).sum(1), (users[m] * zn).sum(1))
    torch.testing.assert_close(res.terms['unique'], unique)

    u_bar = (users['image'] + users['text']) / 2
    fused = {s: model.fusion(torch.cat([means(model, out, 'image', items),
                                        means(model, out, 'text', items)], dim=1))
             for s, items in (('pos', batch.pos), ('neg', batch.neg))}
    synergy = bpr_by_hand((u_bar * fused['pos']).sum(1), (u_bar * fused['neg']).sum(1))
    torch.testing.assert_close(res.terms['synergy'], synergy)
    # swapping the triple's roles gives another value (the check above can tell)
    swapped = bpr_by_hand((u_bar * fused['neg']).sum(1), (u_bar * fused['pos']).sum(1))
    assert abs(float(swapped) - float(synergy)) > 1e-3


def pairwise_accuracy(model, out, batch, head):
    r"""Share of triples the head ranks right: its score of pos above its score of neg."""
    with torch.no_grad():
        tables = {m: out.modality_user_table(m) for m in model.modalities}
        users = {m: model.user_map(m)(tables[m][batch.users]) for m in model.modalities}
        if head == 'synergy':
            u = torch.stack(list(users.values())).mean(0)
            score = {s: (u * model.fusion(torch.cat([means(model, out, m, items)
                                                     for m in model.modalities], 1))).sum(1)
                     for s, items in (('pos', batch.pos), ('neg', batch.neg))}
        else:
            score = {s: (users[head] * means(model, out, head, items)).sum(1)
                     for s, items in (('pos', batch.pos), ('neg', batch.neg))}
        return float((score['pos'] > score['neg']).float().mean())


@pytest.mark.parametrize('head', ['image', 'text', 'synergy'])
def test_steps_on_one_head_raise_its_pairwise_accuracy(head):
    r"""60 Adam steps on one head's BPR alone (z = mu, one fixed batch of 64 random triples)
    lift that head's pairwise accuracy from chance (< 0.6) by at least 0.25; a head with
    positive and negative swapped drives it down instead."""
    torch.manual_seed(0)
    out, batch = make_output(), make_batch()
    model = MRdIB.from_output(out, latent_dim=8, alpha1=0.0, alpha2=0.0).eval()
    before = pairwise_accuracy(model, out, batch, head)
    opt = torch.optim.Adam(model.main_parameters(), lr=1e-2)
    for _ in range(60):
        res = model(out, batch)
        if head == 'synergy':
            loss = res.terms['synergy']
        else:  # this modality's unique head alone, from the returned z
            u = model.user_map(head)(out.modality_user_table(head)[batch.users])
            loss = -torch.nn.functional.logsigmoid(
                (u * res.z[head]).sum(1) - (u * res.z_neg[head]).sum(1)).mean()
            # it is the per-modality part of the unique term
            other = [m for m in model.modalities if m != head][0]
            uo = model.user_map(other)(out.modality_user_table(other)[batch.users])
            part = -torch.log(1e-10 + torch.sigmoid(
                (uo * res.z[other]).sum(1) - (uo * res.z_neg[other]).sum(1))).mean()
            torch.testing.assert_close(res.terms['unique'] - part, loss, atol=1e-5, rtol=1e-5)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = pairwise_accuracy(model, out, batch, head)
    assert before < 0.6 and after > before + 0.25, (head, before, after)
