import pytest
import torch
import torch.nn.functional as F
from torch_geometric.utils import scatter, softmax

from mrdib_pyg.nn.conv.edge_weighted_gcn import EdgeWeightedGCN
from mrdib_pyg.nn.conv.graph_refiner import BipartiteEdges, GraphRefiner, RoutingConv

U, I = 7, 5


def random_edges(num=18, seed=0, shuffle=True):
    g = torch.Generator().manual_seed(seed)
    key = torch.unique(torch.randint(U * I, (num, ), generator=g))
    if shuffle:  # BipartiteEdges sorts them itself
        key = key[torch.randperm(key.numel(), generator=g)]
    return torch.stack([key // I, key % I])


def dense(edges, weight):
    r"""The :obj:`[U, I]` matrix with :obj:`weight` at the edges."""
    A = torch.zeros(U, I, dtype=weight.dtype)
    A[edges.user, edges.item] = weight
    return A


def test_edges_sorted_and_aggregations_equal_dense_products():
    torch.manual_seed(0)
    ei = random_edges()
    edges = BipartiteEdges(ei, U, I)
    assert edges.num_edges == ei.size(1)
    key = edges.user * I + edges.item
    assert torch.equal(key, torch.sort(ei[0] * I + ei[1]).values)
    assert torch.equal(edges.edge_index, torch.stack([edges.user, edges.item]))
    w1, w2 = torch.rand(edges.num_edges), torch.rand(edges.num_edges)
    xu, xi = torch.randn(U, 3), torch.randn(I, 3)
    assert torch.allclose(edges.to_users(xi, w1), dense(edges, w1) @ xi, atol=1e-6)
    assert torch.allclose(edges.to_items(xu, w2), dense(edges, w2).t() @ xu, atol=1e-6)
    ones = torch.ones(edges.num_edges)
    assert torch.allclose(edges.to_users(xi), dense(edges, ones) @ xi, atol=1e-6)
    assert torch.allclose(edges.dot(xu, xi), (xu @ xi.t())[edges.user, edges.item], atol=1e-6)


def test_edge_gradients_against_autograd_on_dense():
    torch.manual_seed(1)
    edges = BipartiteEdges(random_edges(seed=1), U, I)
    E = edges.num_edges

    def leaves():
        return [t.double().requires_grad_() for t in
                (torch.rand(E), torch.rand(E), torch.randn(U, 4), torch.randn(I, 4))]

    def loss(w1, w2, xu, xi, ours):
        if ours:
            s = edges.dot(xu, xi)
            out = (edges.to_users(xi, w1 * s).sin().sum()
                   + edges.to_items(xu, w2 * s).cos().sum())
        else:
            s = (xu @ xi.t())[edges.user, edges.item]
            out = ((dense(edges, w1 * s) @ xi).sin().sum()
                   + (dense(edges, w2 * s).t() @ xu).cos().sum())
        return out

    a = leaves()
    b = [x.detach().clone().requires_grad_() for x in a]
    ga = torch.autograd.grad(loss(*a, ours=True), a)
    gb = torch.autograd.grad(loss(*b, ours=False), b)
    for x, y in zip(ga, gb):
        assert torch.allclose(x, y, atol=1e-10)
    # and the custom backward passes torch's numerical check
    w, xi = torch.rand(E, dtype=torch.double), torch.randn(I, 2, dtype=torch.double)
    assert torch.autograd.gradcheck(lambda w, x: edges.to_items(
        edges.to_users(x, w), w), (w.requires_grad_(), xi.requires_grad_()))


def test_edges_keep_duplicates_and_reject_bad_input():
    ei = torch.tensor([[0, 0, 1], [2, 2, 3]])
    edges = BipartiteEdges(ei, 2, 4)
    assert edges.num_edges == 3  # a multigraph, as PyG's message passing sees it
    out = edges.to_users(torch.eye(4))
    assert out[0, 2] == 2.0 and out[1, 3] == 1.0
    with pytest.raises(ValueError, match=r'\[2, E\]'):
        BipartiteEdges(ei.t(), 2, 4)
    with pytest.raises(ValueError, match='outside'):
        BipartiteEdges(torch.tensor([[0], [4]]), 2, 4)
    with pytest.raises(ValueError, match='one weight per edge'):
        edges.to_users(torch.eye(4), torch.ones(2))
    with pytest.raises(ValueError, match='expects 2 rows'):
        edges.to_items(torch.eye(4))
    assert 'num_edges=3' in repr(edges)


def mmrec_attention(pref, items, ei):
    r"""MMRec's GATConv on the undirected edge list cat(edges, reversed edges), with PyG's
    softmax and scatter over the U+I nodes: returns (x + messages, alpha[2E])."""
    x = torch.cat([pref, items])
    src = torch.cat([ei[0], ei[1] + U])
    dst = torch.cat([ei[1] + U, ei[0]])
    alpha = softmax((x[dst] * x[src]).sum(-1), dst, num_nodes=U + I)
    out = x + scatter(x[src] * alpha.view(-1, 1), dst, dim=0, dim_size=U + I, reduce='sum')
    return out, alpha


@pytest.mark.parametrize('route_to_users', [False, True])
def test_routing_conv_matches_pyg_message_passing_reference(route_to_users):
    torch.manual_seed(2)
    edges = BipartiteEdges(random_edges(seed=2), U, I)
    ei = edges.edge_index
    E = edges.num_edges
    conv = RoutingConv(U, feature_dim=6, channels=4, num_routing=3,
                       route_to_users=route_to_users)
    feats = torch.randn(I, 6)
    out = conv(feats, edges)
    pref = F.normalize(conv.preference)
    items = F.normalize(F.leaky_relu(conv.projection(feats), 0.01))
    if route_to_users:  # the paper's routing: users gather their items
        for _ in range(3):
            a = softmax((pref[ei[0]] * items[ei[1]]).sum(-1), ei[0], num_nodes=U)
            pref = F.normalize(pref + scatter(items[ei[1]] * a.view(-1, 1), ei[0], 0,
                                              dim_size=U, reduce='sum'))
    ref, alpha = mmrec_attention(pref, items, ei)
    assert out.user.shape == (U, 4) and out.item.shape == (I, 4)
    assert torch.allclose(torch.cat([out.user, out.item]), ref, atol=1e-6)
    assert torch.allclose(out.att_item, alpha[:E], atol=1e-6)  # user -> item half
    assert torch.allclose(out.att_user, alpha[E:], atol=1e-6)  # item -> user half
    # attention sums to one over every node's edges
    deg_u = torch.bincount(ei[0], minlength=U) > 0
    sums = scatter(out.att_user, ei[0], 0, dim_size=U, reduce='sum')
    assert torch.allclose(sums[deg_u], torch.ones(int(deg_u.sum())), atol=1e-6)


def test_mmrec_routing_is_the_identity_and_paper_routing_is_not():
    torch.manual_seed(3)
    edges = BipartiteEdges(random_edges(seed=3), U, I)
    feats = torch.randn(I, 6)
    mmrec = RoutingConv(U, 6, 4, num_routing=3, route_to_users=False)
    paper = RoutingConv(U, 6, 4, num_routing=3, route_to_users=True)
    paper.load_state_dict(mmrec.state_dict())
    pref, items = mmrec.inputs(feats)
    # MMRec's GATConv on the (user, item) edges: messages reach items, user rows are zero
    msg, _ = mmrec_attention(pref, items, edges.edge_index)
    x = torch.cat([pref, items])
    src, dst = edges.user, edges.item + U
    alpha = softmax((x[dst] * x[src]).sum(-1), dst, num_nodes=U + I)
    directed = scatter(x[src] * alpha.view(-1, 1), dst, 0, dim_size=U + I, reduce='sum')
    assert directed[:U].abs().max() == 0 and directed[U:].abs().max() > 0
    assert torch.equal(mmrec.route(pref, items, edges), pref)
    assert not torch.allclose(paper.route(pref, items, edges), pref)
    assert not torch.allclose(paper(feats, edges).user, mmrec(feats, edges).user)
    assert torch.allclose(mmrec(feats, edges).user, msg[:U], atol=1e-6)
    with pytest.raises(ValueError, match='width 6'):
        mmrec(torch.randn(I, 5), edges)
    with pytest.raises(ValueError, match='num_routing'):
        RoutingConv(U, 6, 4, num_routing=-1)


def test_graph_refiner_confidence_of_the_sending_node_max_and_prune():
    torch.manual_seed(4)
    edges = BipartiteEdges(random_edges(seed=4), U, I)
    dims = {'image': 6, 'text': 3}
    ref = GraphRefiner(U, I, dims, channels=4)
    feats = {'image': torch.randn(I, 6), 'text': torch.randn(I, 3)}
    g = ref(feats, edges)
    assert list(g.modalities) == ['image', 'text']
    assert ref.confidence.shape == (U + I, 2)
    c = ref.confidence
    att_u = torch.stack([g.modalities[m].att_user for m in dims], 1)
    att_i = torch.stack([g.modalities[m].att_item for m in dims], 1)
    # item -> user messages are scaled by the item's confidence, user -> item by the user's
    to_user = (att_u * c[U + edges.item]).max(1).values.clamp_min(0)
    to_item = (att_i * c[edges.user]).max(1).values.clamp_min(0)
    assert torch.allclose(g.to_user, to_user) and torch.allclose(g.to_item, to_item)
    w = torch.cat([g.to_user, g.to_item])
    assert (w == 0).any() and (w > 0).any()  # some messages are pruned
    (g.to_user.sum() + g.to_item.sum()).backward()
    assert c.grad.abs().sum() > 0
    assert ref.convs['image'].preference.grad.abs().sum() > 0
    unpruned = GraphRefiner(U, I, dims, channels=4, prune=False)
    unpruned.load_state_dict(ref.state_dict())
    assert (torch.cat(unpruned(feats, edges)[1:]) < 0).any()
    with pytest.raises(ValueError, match='no features'):
        ref({'image': feats['image']}, edges)
    with pytest.raises(ValueError, match='built for'):
        ref(feats, BipartiteEdges(random_edges(), U + 1, I))
    with pytest.raises(ValueError, match='at least one'):
        GraphRefiner(U, I, {})


@pytest.mark.parametrize('num_layers', [0, 1, 2, 3])
def test_edge_weighted_gcn_equals_dense_powers(num_layers):
    torch.manual_seed(5)
    edges = BipartiteEdges(random_edges(seed=5), U, I)
    w_user, w_item = torch.rand(edges.num_edges), torch.rand(edges.num_edges)
    x = torch.randn(U + I, 3)
    A = torch.zeros(U + I, U + I)
    A[:U, U:] = dense(edges, w_user)       # users gather items with w_{i->u}
    A[U:, :U] = dense(edges, w_item).t()   # items gather users with w_{u->i}
    h = F.normalize(x)
    ref, layer = h.clone(), h
    for _ in range(num_layers):
        layer = A @ layer
        ref = ref + layer
    gcn = EdgeWeightedGCN(num_layers)
    out_u, out_i = gcn((x[:U], x[U:]), edges, w_user, w_item)
    assert torch.allclose(torch.cat([out_u, out_i]), ref, atol=1e-5)
    raw_u, _ = EdgeWeightedGCN(num_layers, normalize=False)((x[:U], x[U:]), edges,
                                                              w_user, w_item)
    assert num_layers == 0 or not torch.allclose(raw_u, out_u)
    assert 'num_layers=%d' % num_layers in repr(gcn)
    with pytest.raises(ValueError, match='num_layers'):
        EdgeWeightedGCN(-1)
