r"""The shared BPR loss: MMRec's value, and per-column means for several heads at once."""
import torch

from mrdib_pyg.nn.loss import bpr_loss


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
