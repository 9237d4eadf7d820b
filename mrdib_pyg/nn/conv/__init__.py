r"""Reusable propagation layers; each works on its own inside a custom recommender."""
from mrdib_pyg.nn.conv.sparse_op import SparseOperator, has_torch_sparse
from mrdib_pyg.nn.conv.lg_propagation import LGPropagation
from mrdib_pyg.nn.conv.edge_pruning import (DegreeSensitiveEdgePruning, bipartite_degree_weights,
                                             bipartite_sym_norm)
from mrdib_pyg.nn.conv.modality_purifier import ModalityPurifier
from mrdib_pyg.nn.conv.attention_fuser import AttentionFuser
from mrdib_pyg.nn.conv.mmgcn_conv import MMGCNConv, MMGCNEncoder, bipartite_blocks
from mrdib_pyg.nn.conv.learned_item_graph import LearnedItemGraph
from mrdib_pyg.nn.conv.user_graph_conv import UserGraphConv
from mrdib_pyg.nn.conv.hypergraph import (GlobalHypergraphEmbedding, HGNNConv, HyperedgeAssignment,
                                          assignment_dropout, gumbel_softmax)
from mrdib_pyg.nn.conv.modality_graph import ModalityGraphEmbedding
from mrdib_pyg.nn.conv.graph_refiner import BipartiteEdges, GraphRefiner, RoutingConv
from mrdib_pyg.nn.conv.edge_weighted_gcn import EdgeWeightedGCN
from mrdib_pyg.nn.conv.latent_dropout import (BootstrapTerms, LatentBootstrap, cosine_alignment,
                                              latent_dropout)
from mrdib_pyg.nn.conv.row_sparse_linear import RowSparseLinear

__all__ = [
    'SparseOperator', 'has_torch_sparse', 'LGPropagation',
    'DegreeSensitiveEdgePruning', 'bipartite_degree_weights', 'bipartite_sym_norm',
    'ModalityPurifier', 'AttentionFuser', 'MMGCNConv', 'MMGCNEncoder', 'bipartite_blocks',
    'LearnedItemGraph', 'UserGraphConv', 'GlobalHypergraphEmbedding', 'HGNNConv',
    'HyperedgeAssignment', 'ModalityGraphEmbedding', 'gumbel_softmax', 'assignment_dropout',
    'BipartiteEdges', 'RoutingConv', 'GraphRefiner', 'EdgeWeightedGCN',
    'BootstrapTerms', 'LatentBootstrap', 'cosine_alignment', 'latent_dropout',
    'RowSparseLinear',
]
