r"""Reusable propagation layers; each works on its own inside a custom recommender."""
from mrdib_pyg.nn.conv.sparse_op import SparseOperator, has_torch_sparse
from mrdib_pyg.nn.conv.lg_propagation import LGPropagation

__all__ = ['SparseOperator', 'LGPropagation', 'has_torch_sparse']
