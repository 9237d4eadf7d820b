r"""Datasets (user–item–modality heterographs), readers, derived graphs and BPR sampling."""
from mrdib_pyg.data.schema import build_heterodata, modality_names, split_edge_index
from mrdib_pyg.data.amazon_mm import AmazonMM
from mrdib_pyg.data.synthetic import SyntheticMM, attach_generated_features, generate_synthetic
from mrdib_pyg.data.adjacency import bipartite_adjacency
from mrdib_pyg.data.graphs import (item_knn_graph, row_norm_adj, sym_norm_adj,
                                   user_cooccurrence_graph)
from mrdib_pyg.data.sampling import BPRBatch, BPRSampler
from mrdib_pyg.data.derived import (ItemKNN, MixedItemKNN, TrainingEdges, UserCoInteraction,
                                    UserItemGraph)
from mrdib_pyg.data.interest_graphs import AttractivenessGraph, InterestItemGraph

__all__ = [
    'AmazonMM', 'SyntheticMM', 'generate_synthetic', 'attach_generated_features',
    'build_heterodata', 'modality_names', 'split_edge_index', 'bipartite_adjacency',
    'item_knn_graph', 'sym_norm_adj', 'row_norm_adj', 'user_cooccurrence_graph', 'BPRSampler', 'BPRBatch',
    'UserItemGraph', 'TrainingEdges', 'ItemKNN', 'MixedItemKNN', 'UserCoInteraction',
    'AttractivenessGraph', 'InterestItemGraph',
]
