r"""The shared BPR loss: MMRec's value, and per-column means for several heads at once."""
import torch

from mrdib_pyg.nn.loss import bpr_loss, interleaved_id_reg


def test_bpr_loss_is_mmrecs_value():
    torch.manual_seed(0)
    pos, neg = torch.randn(50), torch.randn(50)
    by_hand = -torch.log(1e-10 + 1.0 / (1.0 + torch.exp(neg - pos))).mean()
    torch.testing.assert_close(bpr_loss(pos, neg), by_hand)


def test_bpr_loss_over_one_dim_gives_one_loss_per_head():
    torch.manual_seed(0)
    pos, neg = torch.randn(50, 3), torch.randn(50, 3)
    per_head = bpr_loss(pos, neg, dim=0)
    assert per_head.shape == (3,)
    for h in range(3):
        torch.testing.assert_close(per_head[h], bpr_loss(pos[:, h], neg[:, h]))
    torch.testing.assert_close(bpr_loss(pos, neg), per_head.mean())


def test_interleaved_id_reg_is_mmrecs_interleaved_mean():
    # MMRec's MMGCN/GRCN: mean of squares over the rows of users repeated twice, and over the
    # (pos, neg) item rows interleaved, of one user-then-item table
    torch.manual_seed(0)
    U, I, B = 7, 5, 6
    e = torch.randn(U + I, 3)
    users = torch.randint(0, U, (B,))
    pos, neg = torch.randint(0, I, (B,)), torch.randint(0, I, (B,))
    user_rows = e[users.repeat_interleave(2)]
    item_rows = e[U + torch.stack([pos, neg], dim=1).reshape(-1)]
    expected = user_rows.pow(2).mean() + item_rows.pow(2).mean()
    got = interleaved_id_reg(e, U, users, pos, neg)
    torch.testing.assert_close(got, expected)
