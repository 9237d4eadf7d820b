import os

import pytest
import torch
import torch.nn.functional as F

from mrdib_pyg.data.adjacency import adjacency_from_data
from mrdib_pyg.data.derived import (ItemKNN, MixedItemKNN, TrainingEdges, UserItemGraph,
                                    build_graphs)
from mrdib_pyg.data.schema import build_heterodata


@pytest.fixture
def data():
    g = torch.Generator().manual_seed(0)
    U, I = 10, 12
    ei = torch.unique(torch.stack([torch.randint(U, (50, ), generator=g),
                                   torch.randint(I, (50, ), generator=g)]), dim=1)
    feats = {'image': torch.rand(I, 8, generator=g), 'text': torch.randn(I, 5, generator=g)}
    return build_heterodata(U, I, ei, ei[:, :3], ei[:, 3:6], feats)


def dense_knn(x, k, weighted):
    r"""The reference: dense cosine, top-k with the item itself, D^-1/2 A D^-1/2 (row sums)."""
    xn = F.normalize(x, dim=-1)
    sim = xn @ xn.t()
    val, idx = sim.topk(k, dim=-1)
    a = torch.zeros_like(sim).scatter_(1, idx, val if weighted else torch.ones_like(val))
    d = a.sum(1).pow(-0.5)
    return d[:, None] * a * d[None, :]


def test_user_item_graph_matches_the_bipartite_adjacency(data):
    U, I = 10, 12
    full = build_graphs(data, {'a': UserItemGraph()})['a'].to_dense()
    assert torch.allclose(full, adjacency_from_data(data).to_dense())
    block = build_graphs(data, {'r': UserItemGraph(block='user_item')})['r'].to_dense()
    assert block.shape == (U, I) and torch.allclose(block, full[:U, U:])
    row = build_graphs(data, {'a': UserItemGraph(norm='row', self_loops=True)})['a'].to_dense()
    assert torch.allclose(row.sum(1), torch.ones(U + I))
    assert (row.diagonal() > 0).all()


def test_training_edges(data):
    ei = build_graphs(data, {'e': TrainingEdges()})['e']
    assert ei.shape[0] == 2 and ei.dtype == torch.long
    und = build_graphs(data, {'e': TrainingEdges(undirected=True)})['e']
    assert und.size(1) == 2 * ei.size(1) and int(und.max()) < 22
    assert int(und[0, :ei.size(1)].max()) < 10 and int(und[1, :ei.size(1)].min()) >= 10


@pytest.mark.parametrize('weighted', [True, False])
def test_item_knn_equals_the_dense_reference(data, weighted):
    got = build_graphs(data, {'g': ItemKNN('image', k=3, weighted=weighted)})['g'].to_dense()
    assert torch.allclose(got, dense_knn(data['image'].x, 3, weighted), atol=1e-6)
    if not weighted:  # FREEDOM's graph: every entry is 1/k
        assert torch.allclose(got[got > 0], torch.full_like(got[got > 0], 1 / 3))


def test_mixed_knn_weights_and_missing_modalities(data):
    got = build_graphs(data, {'g': MixedItemKNN((('image', 0.1), ), k=3)})['g'].to_dense()
    ref = 0.1 * dense_knn(data['image'].x, 3, False) + 0.9 * dense_knn(data['text'].x, 3, False)
    assert torch.allclose(got, ref, atol=1e-6)
    spec = MixedItemKNN((('image', 0.1), ('audio', 0.5)))
    assert spec.mix(['image', 'text']) == pytest.approx({'image': 0.1, 'text': 0.9})
    assert spec.mix(['text']) == {'text': 1.0}  # one modality: its graph alone (MMRec)
    with pytest.raises(ValueError, match='no modality'):
        build_graphs(data, {'g': ItemKNN('audio')})


def test_graphs_are_cached_by_parameters_and_inputs(data, tmp_path, monkeypatch):
    spec = ItemKNN('image', k=3)
    first = build_graphs(data, {'g': spec}, str(tmp_path))['g']
    assert len(os.listdir(tmp_path)) == 1
    monkeypatch.setattr(ItemKNN, 'build', lambda *a: pytest.fail('rebuilt a cached graph'))
    again = build_graphs(data, {'g': spec}, str(tmp_path))['g']
    assert torch.equal(again.to_dense(), first.to_dense())
    monkeypatch.undo()
    build_graphs(data, {'g': ItemKNN('image', k=4)}, str(tmp_path))
    data['image'].x = data['image'].x + 1.0  # other features: another file
    build_graphs(data, {'g': spec}, str(tmp_path))
    assert len(os.listdir(tmp_path)) == 3


def test_from_data_builds_declared_graphs_and_takes_given_ones(data):
    from mrdib_pyg.nn.models import LightGCN
    model = LightGCN.from_data(data)
    assert torch.allclose(model.graph.to_dense(), adjacency_from_data(data).to_dense())
    eye = torch.eye(22).to_sparse_csr()
    assert torch.equal(LightGCN.from_data(data, adj=eye).graph.to_dense(), torch.eye(22))
