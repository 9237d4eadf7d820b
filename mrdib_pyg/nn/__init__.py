r"""Neural parts: the output type, losses, propagation layers, backbones and MRdIB."""
from mrdib_pyg.nn.output import BPRBatch, LazyModalities, ModalityOutput, RecOutput
from mrdib_pyg.nn.mrdib import MRdIB, MRdIBOutput
from mrdib_pyg.nn.mine import MINECritic

__all__ = ['BPRBatch', 'LazyModalities', 'ModalityOutput', 'RecOutput', 'MRdIB', 'MRdIBOutput', 'MINECritic']
