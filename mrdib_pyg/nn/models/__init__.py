r"""Backbones: one file per model, each a short composition of :mod:`mrdib_pyg.nn.conv`.

Importing this package registers every backbone in :data:`MODELS`
(:func:`~mrdib_pyg.nn.models.registry.register_model`)."""
from mrdib_pyg.nn.models.base import MultimodalRecommender, Recommender, mmrec_modality_order
from mrdib_pyg.nn.models.registry import MODELS, describe_models, model_defaults, register_model
from mrdib_pyg.nn.models.bpr_mf import BPRMF
from mrdib_pyg.nn.models.lightgcn import LightGCN
from mrdib_pyg.nn.models.vbpr import VBPR
from mrdib_pyg.nn.models.freedom import FREEDOM
from mrdib_pyg.nn.models.mgcn import MGCN
from mrdib_pyg.nn.models.mmgcn import MMGCN
from mrdib_pyg.nn.models.lattice import LATTICE
from mrdib_pyg.nn.models.grcn import GRCN
from mrdib_pyg.nn.models.bm3 import BM3
from mrdib_pyg.nn.models.soil import SOIL
from mrdib_pyg.nn.models.dualgnn import DualGNN
from mrdib_pyg.nn.models.lgmrec import LGMRec
from mrdib_pyg.nn.models.pyg_backbone import PyGBackbone

__all__ = [
    'Recommender', 'MultimodalRecommender', 'mmrec_modality_order', 'MODELS',
    'register_model', 'model_defaults', 'describe_models',
    'BPRMF', 'LightGCN', 'VBPR', 'FREEDOM', 'MGCN', 'MMGCN', 'LATTICE', 'GRCN', 'BM3', 'SOIL',
    'DualGNN', 'LGMRec', 'PyGBackbone',
]
