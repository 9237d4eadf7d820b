r"""GRCN's id graph network: sum-aggregation layers over a user–item graph whose edges
carry (refined, learned) weights, with a residual sum of the layers."""
from typing import Optional, Tuple

import torch.nn.functional as F
from torch import Tensor, nn

from mrdib_pyg.nn.conv.graph_refiner import BipartiteEdges

PairTensor = Tuple[Tensor, Tensor]


class EdgeWeightedGCN(nn.Module):
    r"""The id embedding network of GRCN (`"Graph-Refined Convolutional Network for
    Multimedia Recommendation with Implicit Feedback" <https://arxiv.org/abs/2008.01388>`_,
    Wei et al., ACM MM 2020), as MMRec's ``models/grcn.py`` (``EGCN``) computes it: a
    parameter-free stack of weighted-sum layers on the refined graph of
    :class:`~mrdib_pyg.nn.conv.graph_refiner.GraphRefiner`,

    .. math::
        \mathbf{h}^{(0)} &= \operatorname{normalize}(\mathbf{X}), \qquad
        \mathbf{h}^{(l+1)}_u = \sum_{i \in \mathcal{N}(u)} w_{i \to u}\, \mathbf{h}^{(l)}_i,
        \qquad
        \mathbf{h}^{(l+1)}_i = \sum_{u \in \mathcal{N}(i)} w_{u \to i}\, \mathbf{h}^{(l)}_u \\
        \mathbf{Z} &= \sum_{l=0}^{L} \mathbf{h}^{(l)}

    (MMRec's two PyG ``MessagePassing`` layers with :obj:`aggr='add'` and message
    :math:`w\,\mathbf{x}_j`, on both directions of the training edges; :math:`L = 2`, no
    activation, row-wise :math:`\ell_2` normalisation of the input). Gradients reach both
    the input and the edge weights.

    Args:
        num_layers (int, optional): :math:`L`. (default: :obj:`2`, MMRec's)
        normalize (bool, optional): normalise the input rows. (default: :obj:`True`)

    Shapes:
        - **input:** :obj:`(x_user, x_item)` :math:`((U, F), (I, F))`, a
          :class:`~mrdib_pyg.nn.conv.graph_refiner.BipartiteEdges` with :math:`E` edges,
          weights :obj:`to_user` :math:`(E)` and :obj:`to_item` :math:`(E)` (:obj:`None`:
          all ones)
        - **output:** :math:`((U, F), (I, F))`
    """

    def __init__(self, num_layers: int = 2, normalize: bool = True):
        super().__init__()
        if num_layers < 0:
            raise ValueError(f"'{self.__class__.__name__}' needs num_layers >= 0 "
                             f"(got {num_layers})")
        self.num_layers = num_layers
        self.normalize = normalize

    def forward(self, x: PairTensor, edges: BipartiteEdges,
                to_user: Optional[Tensor] = None,
                to_item: Optional[Tensor] = None) -> PairTensor:
        x_user, x_item = x
        if self.normalize:
            x_user, x_item = F.normalize(x_user), F.normalize(x_item)
        out_user, out_item = x_user, x_item
        for _ in range(self.num_layers):
            x_user, x_item = (edges.to_users(x_item, to_user),
                              edges.to_items(x_user, to_item))
            out_user, out_item = out_user + x_user, out_item + x_item
        return out_user, out_item

    def extra_repr(self) -> str:
        return f'num_layers={self.num_layers}, normalize={self.normalize}'
