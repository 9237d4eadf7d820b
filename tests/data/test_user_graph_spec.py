import os

import pytest
import torch

from mrdib_pyg.data import derived
from mrdib_pyg.data.derived import UserCoInteraction, build_graphs
from mrdib_pyg.data.schema import build_heterodata

U, I = 10, 8


@pytest.fixture
def data():
    g = torch.Generator().manual_seed(0)
    ei = torch.unique(torch.stack([torch.randint(U, (40, ), generator=g),
                                   torch.randint(I, (40, ), generator=g)]), dim=1)
    # user 9 trains on nothing but a duplicated pair of an item nobody else has
    ei = ei[:, ~((ei[0] == 9) | (ei[1] == 7))]
    ei = torch.cat([ei, torch.tensor([[9, 9], [7, 7]])], dim=1)
    held_out = torch.tensor([[0, 1, 2], [7, 7, 7]])  # would link 0, 1, 2 and 9 if leaked
    feats = {'image': torch.randn(I, 4, generator=g)}
    return build_heterodata(U, I, ei, held_out, held_out, feats)


def dense_counts(data):
    r"""The reference: binary R from the training pairs, R R^T without the diagonal."""
    ei = data['user', 'rates', 'item'].edge_index
    R = torch.zeros(U, I)
    R[ei[0], ei[1]] = 1.
    C = R @ R.t()
    C.fill_diagonal_(0)
    return C


def test_counts_equal_the_dense_reference(data):
    got = build_graphs(data, {'g': UserCoInteraction(k=None)})['g']
    assert got.layout == torch.sparse_csr and got.shape == (U, U)
    assert got.dtype == torch.float32
    C = dense_counts(data)
    assert torch.equal(got.to_dense(), C)
    assert got.to_dense()[9].sum() == 0  # only a duplicated pair nobody shares; no leak


def test_topk_keeps_heaviest_and_smaller_ids_on_ties(data):
    C = dense_counts(data)
    got = build_graphs(data, {'g': UserCoInteraction(k=2)})['g'].to_dense()
    for u in range(U):
        nz = C[u].nonzero().view(-1).tolist()
        expect = sorted(nz, key=lambda v: (-C[u, v].item(), v))[:2]
        assert got[u].nonzero().view(-1).tolist() == sorted(expect)
        assert torch.equal(got[u, expect], C[u, expect])
    assert UserCoInteraction() == UserCoInteraction(k=40)  # DualGNN's default


def test_cached_in_processed_folder(data, tmp_path):
    spec = {'g': UserCoInteraction(k=3)}
    first = build_graphs(data, spec, cache_dir=str(tmp_path))['g']
    files = [f for f in os.listdir(tmp_path) if f.startswith('user_coint__')]
    assert len(files) == 1 and 'k3' in files[0]
    again = build_graphs(data, spec, cache_dir=str(tmp_path))['g']
    assert torch.equal(first.to_dense(), again.to_dense())
    build_graphs(data, {'g': UserCoInteraction(k=4)}, cache_dir=str(tmp_path))
    assert len([f for f in os.listdir(tmp_path) if f.startswith('user_coint__')]) == 2


def test_rejects_bad_k_and_is_exported():
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match='UserCoInteraction'):
            UserCoInteraction(k=bad)
    assert 'UserCoInteraction' in derived.__all__
    assert 'UserCoInteraction' in derived.__doc__
