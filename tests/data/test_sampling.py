import pytest
import torch

from mrdib_pyg.data.sampling import BPRBatch, BPRSampler


def edges(U=40, I=25, E=400, seed=0):
    g = torch.Generator().manual_seed(seed)
    ei = torch.stack([torch.randint(U, (E, ), generator=g), torch.randint(I, (E, ), generator=g)])
    return torch.unique(ei, dim=1)


def test_epoch_covers_every_training_pair_once_with_valid_negatives():
    ei = edges()
    s = BPRSampler(ei, 40, 25, batch_size=64)
    seen = []
    for b in s:
        assert b.users.numel() <= 64
        assert not s.has_interaction(b.users, b.neg).any()
        seen.append(torch.stack([b.users, b.pos]))
    seen = torch.cat(seen, dim=1)
    assert seen.size(1) == ei.size(1)
    assert torch.equal(torch.unique(seen, dim=1), torch.unique(ei, dim=1))


def test_negatives_only_from_training_items_and_roughly_uniform():
    ei = edges(I=25)
    ei = ei[:, ei[1] < 20]  # items 20..24 never occur in training
    s = BPRSampler(ei, 40, 25, batch_size=10_000)
    negs = torch.cat([b.neg for _ in range(30) for b in s])
    assert int(negs.max()) < 20
    counts = torch.bincount(negs, minlength=20).float()
    assert counts.min() > 0.5 * counts.mean()


def test_same_seed_same_batches_and_distributed_shares_are_disjoint():
    ei = edges()
    a = [b.neg for b in BPRSampler(ei, 40, 25, batch_size=50, seed=3)]
    b = [b.neg for b in BPRSampler(ei, 40, 25, batch_size=50, seed=3)]
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    rows = [torch.cat([torch.stack([b.users, b.pos]) for b in
                       BPRSampler(ei, 40, 25, batch_size=50, seed=3, rank=r, world_size=2)], 1)
            for r in (0, 1)]
    both = torch.cat(rows, 1)
    assert both.size(1) == ei.size(1)
    assert torch.unique(both, dim=1).size(1) == ei.size(1)


def test_user_who_rated_everything_raises():
    ei = torch.tensor([[0, 0, 1], [0, 1, 0]])
    s = BPRSampler(ei, 2, 2, batch_size=4)
    with pytest.raises(RuntimeError, match='every training item'):
        list(s)


def test_batch_rows_equal_indexing_in_value_and_gradient():
    g = torch.Generator().manual_seed(0)
    user = torch.randn(7, 3, generator=g, requires_grad=True)
    item = torch.randn(5, 3, generator=g, requires_grad=True)
    batch = BPRBatch(torch.tensor([0, 6, 6, 2]), torch.tensor([1, 1, 4, 0]),
                     torch.tensor([3, 2, 2, 4]))
    weights = torch.randn(3, 4, 3, generator=g)
    got = batch.rows(user, item)
    want = (user[batch.users], item[batch.pos], item[batch.neg])
    for a, b in zip(got, want):
        assert torch.equal(a, b)
    grads = []
    for rows in (got, want):
        loss = sum((w * r).sum() for w, r in zip(weights, rows))
        grads.append(torch.autograd.grad(loss, (user, item)))
    for a, b in zip(*grads):
        assert torch.allclose(a, b)
