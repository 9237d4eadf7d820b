r"""The tiny graph and batch several backbone test files share (12 users, 9 items,
16-d image / 6-d text features, 3 validation and 3 test pairs)."""
import torch

from mrdib_pyg.data.sampling import BPRBatch
from mrdib_pyg.data.schema import build_heterodata

U, I = 12, 9


def tiny_graph():
    g = torch.Generator().manual_seed(0)
    ei = torch.unique(torch.stack([torch.randint(U, (60, ), generator=g),
                                   torch.randint(I, (60, ), generator=g)]), dim=1)
    feats = {'image': torch.randn(I, 16, generator=g), 'text': torch.randn(I, 6, generator=g)}
    return build_heterodata(U, I, ei, ei[:, :3], ei[:, 3:6], feats)


def tiny_batch():
    return BPRBatch(torch.tensor([0, 1, 2, 1]), torch.tensor([0, 1, 2, 1]),
                    torch.tensor([3, 4, 5, 6]))
