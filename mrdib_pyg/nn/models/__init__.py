r"""Backbones: one file per model, each a short composition of :mod:`mrdib_pyg.nn.conv`."""
from mrdib_pyg.nn.models.base import Recommender
from mrdib_pyg.nn.models.bpr_mf import BPRMF
from mrdib_pyg.nn.models.lightgcn import LightGCN
from mrdib_pyg.nn.models.vbpr import VBPR

#: Name -> class, as the trainer and command line know them.
MODELS = {
    'bprmf': BPRMF,
    'lightgcn': LightGCN,
    'vbpr': VBPR,
}

__all__ = ['Recommender', 'BPRMF', 'LightGCN', 'VBPR', 'MODELS']
