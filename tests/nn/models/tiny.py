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


# The graph of the MGCN, SOIL, LGMRec and LATTICE tests: 12 users, 11 items (the last one
# never trained on), non-negative image features as CNN features.
U11, I11 = 12, 11


def graph_with_untrained_item(modalities=('image', 'text'), seed=0, text_shift=0.0):
    r"""12 users x 11 items; the last item has no training edge. Image features are
    non-negative (as CNN features), the others Gaussian plus :obj:`text_shift`."""
    g = torch.Generator().manual_seed(seed)
    ei = torch.unique(torch.stack([torch.randint(U11, (60, ), generator=g),
                                   torch.randint(I11 - 1, (60, ), generator=g)]), dim=1)
    dims = {'image': 16, 'text': 6, 'audio': 5}
    feats = {m: torch.rand(I11, dims[m], generator=g) if m == 'image'
             else torch.randn(I11, dims[m], generator=g) + text_shift for m in modalities}
    return build_heterodata(U11, I11, ei, ei[:, :3], ei[:, 3:6], feats)


def batch_of_four():
    return BPRBatch(torch.tensor([0, 1, 2, 1]), torch.tensor([0, 1, 2, 3]),
                    torch.tensor([3, 4, 5, 6]))


def dense_infonce(a, b, t):
    r"""InfoNCE as MMRec's MGCN (and SOIL) write it, densely: in-batch negatives."""
    a, b = torch.nn.functional.normalize(a, dim=1), torch.nn.functional.normalize(b, dim=1)
    pos = torch.exp((a * b).sum(-1) / t)
    ttl = torch.exp(a @ b.t() / t).sum(1)
    return -torch.log(pos / ttl).mean()


def assert_every_parameter_trained(model, batch, dim=64):
    r"""One forward and backward of :obj:`model`'s loss on :obj:`batch`: the tables have the
    right shapes, the loss is a finite scalar, and every parameter gets a non-zero
    gradient."""
    out = model()
    num_users, num_items = model.num_users, model.num_items
    assert out.user.shape == (num_users, dim) and out.item.shape == (num_items, dim)
    loss = model.loss(out, batch)
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
