r"""FREEDOM: a frozen item–item graph and a degree-sensitively pruned user–item graph."""
from typing import Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mrdib_pyg.data.derived import MixedItemKNN, TrainingEdges, UserItemGraph
from mrdib_pyg.data.sampling import BPRBatch
from mrdib_pyg.nn.conv.edge_pruning import DegreeSensitiveEdgePruning
from mrdib_pyg.nn.conv.lg_propagation import LGPropagation
from mrdib_pyg.nn.conv.sparse_op import SparseOperator
from mrdib_pyg.nn.models.base import MultimodalRecommender
from mrdib_pyg.nn.models.registry import register_model
from mrdib_pyg.nn.output import RecOutput


def logsigmoid_bpr(user: Tensor, pos: Tensor, neg: Tensor) -> Tensor:
    r"""FREEDOM's own BPR, :math:`-\frac{1}{B}\sum_b \log\sigma(\mathbf{u}_b^\top
    \mathbf{i}^+_b - \mathbf{u}_b^\top \mathbf{i}^-_b)` (with :func:`logsigmoid`, not the
    :math:`10^{-10}`-guarded :func:`~mrdib_pyg.nn.loss.bpr_loss` of the other models)."""
    return -F.logsigmoid((user * pos).sum(-1) - (user * neg).sum(-1)).mean()


@register_model('freedom', 'FREEDOM: frozen mixed item kNN graph + degree-pruned LightGCN '
                           '(MMRec FREEDOM)')
class FREEDOM(MultimodalRecommender):
    r"""FREEDOM from `"A Tale of Two Graphs: Freezing and Denoising Graph Structures for
    Multimodal Recommendation" <https://arxiv.org/abs/2211.06924>`_, as MMRec trains it.

    **Frozen item–item graph.** Per modality, the cosine top-:math:`k` neighbours of every
    item on the *raw* features (the item itself included), unweighted and normalised
    :math:`D^{-1/2} A D^{-1/2}` with the out-degree (every entry :math:`1/k`), mixed as

    .. math::
        S = w_v\, \hat{A}_{\text{image}} + (1 - w_v)\, \hat{A}_{\text{text}}, \qquad
        \mathbf{h} = S^{L_m}\, \mathbf{E}_{\text{item}}

    (declared as :class:`~mrdib_pyg.data.derived.MixedItemKNN`, built once).

    **Denoised user–item graph.** LightGCN-mean over :math:`L` layers,

    .. math::
        [\mathbf{u}_g; \mathbf{i}_g] = \frac{1}{L+1}\sum_{l=0}^{L} \tilde{A}^{l}
        [\mathbf{E}_{\text{user}}; \mathbf{E}_{\text{item}}],

    where in training :math:`\tilde{A}` is redrawn before every epoch (:meth:`pre_epoch`)
    by :class:`~mrdib_pyg.nn.conv.DegreeSensitiveEdgePruning`: it keeps
    :math:`\lfloor E(1 - p) \rfloor` edges drawn without replacement with probability
    :math:`\propto 1/\sqrt{d_u d_i}` and re-normalises them with the kept degrees; in
    evaluation :math:`\tilde{A}` is the full symmetric-normalised graph.

    **Output.** :math:`\mathbf{u} = \mathbf{u}_g`, :math:`\mathbf{i} = \mathbf{i}_g +
    \mathbf{h}`, :math:`\hat{y}_{ui} = \mathbf{u}^\top\mathbf{i}`. The per-modality item
    tables handed to plug-ins are :math:`\mathbf{x}^m_i = W_m \mathbf{f}^m_i + b_m`, paired
    with :math:`\mathbf{u}` (as in the modality BPR terms below).

    **Loss** (a :math:`\log\sigma` BPR, :func:`logsigmoid_bpr`):

    .. math::
        \mathcal{L} = \mathrm{BPR}(\mathbf{u}, \mathbf{i}) + \lambda \sum_m
        \mathrm{BPR}(\mathbf{u}, \mathbf{x}^m)

    (:math:`\lambda` = :obj:`reg_weight`; no L2 term). As in MMRec the raw features
    :math:`\mathbf{f}^m` are *trained* (MMRec's ``nn.Embedding.from_pretrained(...,
    freeze=False)``): trained copies initialised from the features
    (:attr:`feature_emb`), unless :obj:`freeze_features=True`.

    MMRec's defaults (``FREEDOM.yaml``; grids take their first value): embedding 64,
    feat_embed_dim 64, knn_k 10, mm_image_weight 0.1, n_mm_layers 1, n_ui_layers 2,
    dropout 0.8 (grid 0.8, 0.9), reg_weight 0 (grid 0, 1e-5, 1e-4, 1e-3); Adam lr 1e-3
    without decay. Initialisation: Xavier-uniform ID embeddings, PyTorch's default
    :obj:`Linear` init for :math:`W_m, b_m`. ``lambda_coeff``, ``weight_size``,
    ``cf_model`` and ``degree_ratio`` are read by MMRec but unused, and left out.

    Deliberate differences from MMRec (the model, its loss, its gradients and the
    distribution of its pruned graphs are MMRec's; only the second item changes numbers,
    namely which edges a given seed keeps):

    * with :obj:`reg_weight=0` the modality BPR terms are skipped instead of added times
      zero: MMRec's zero gradients leave Adam's update of :math:`W_m, b_m,
      \mathbf{f}^m` exactly zero, so training is unchanged, and one backward pass through
      the :math:`I \times 4096` image features and Adam's update of them per batch are
      saved. Only with :obj:`weight_decay > 0` (MMRec's default is 0) would MMRec decay
      those parameters, which receive no gradient here;
    * the edge draw uses its own random stream by default: epoch :math:`e` draws with a
      generator seeded with :obj:`pruning_seed + e` (:obj:`pruning_seed` is taken from the
      global stream at construction, so seeding the run fixes it, and is saved in the
      state dict). The draws then depend only on the run's seed and the epoch: a resumed
      run redraws the same graphs, and nothing else that consumes the global stream shifts
      them. MMRec draws from torch's global stream; :obj:`pruning_rng='global'` does too
      (the same :func:`torch.multinomial` call on bit-identical weights, so with the
      training edges in the same order and the same RNG state it keeps MMRec's very edges;
      our :class:`~mrdib_pyg.data.derived.TrainingEdges` are sorted by (user, item), MMRec
      keeps the file order). Either way the distribution of the kept graph is MMRec's;
    * the pruned graph and the frozen item graph are CSR matrices with a precomputed
      backward (:class:`~mrdib_pyg.nn.conv.SparseOperator`) instead of COO tensors rebuilt
      with sparse sums per epoch;
    * at least one edge is kept, and a model used in training mode before any
      :meth:`pre_epoch` draws epoch 0's graph on its first :meth:`forward` (MMRec fails
      in both cases; so it does with :obj:`knn_k` above the item count, which the data
      layer lowers with a warning);
    * modalities other than image and text are supported (each gets its projection and
      BPR term, and shares the item-graph weight left by :obj:`mm_image_weight`);
      :obj:`feat_embed_dim` must equal :obj:`embedding_dim` (MMRec fails otherwise).

    Args:
        num_users (int), num_items (int): table sizes.
        features (dict): modality name :math:`\rightarrow` :obj:`[I, d_m]` raw features.
        adj (Tensor): :obj:`[(U+I), (U+I)]` symmetric-normalised user–item adjacency
            (:class:`~mrdib_pyg.data.derived.UserItemGraph`), used in evaluation.
        train_edges (Tensor): :obj:`[2, E]` training (user, item) pairs
            (:class:`~mrdib_pyg.data.derived.TrainingEdges`), pruned in training.
        mm_adj (Tensor): :obj:`[I, I]` frozen item–item graph :math:`S`
            (:class:`~mrdib_pyg.data.derived.MixedItemKNN`).
        embedding_dim (int, optional): :math:`d`. (default: :obj:`64`)
        feat_embed_dim (int, optional): width of :math:`W_m`; must equal :math:`d`.
            (default: :obj:`64`)
        knn_k (int, optional): :math:`k` of the item graph (used by :meth:`graph_specs`).
            (default: :obj:`10`)
        mm_image_weight (float, optional): :math:`w_v` (used by :meth:`graph_specs`).
            (default: :obj:`0.1`)
        n_mm_layers (int, optional): :math:`L_m`. (default: :obj:`1`)
        n_ui_layers (int, optional): :math:`L`. (default: :obj:`2`)
        dropout (float, optional): pruned share :math:`p \in [0, 1)` of the training
            edges; :obj:`0` trains on the full graph. (default: :obj:`0.8`)
        reg_weight (float, optional): :math:`\lambda`. (default: :obj:`0.0`)
        freeze_features (bool, optional): keep the raw features fixed (MMRec trains them).
            (default: :obj:`False`)
        pruning_rng (str, optional): random stream of the per-epoch edge draw:
            :obj:`'epoch'` (a generator seeded with :obj:`pruning_seed + epoch`) or
            :obj:`'global'` (torch's global stream, MMRec's). (default: :obj:`'epoch'`)
        pruning_seed (int, optional): base seed of :obj:`'epoch'` (default: drawn from the
            global stream).
        backend (str, optional): sparse backend of
            :class:`~mrdib_pyg.nn.conv.SparseOperator`. (default: :obj:`'csr'`)
        order (list, optional): modality order (default: MMRec's, text first).
    """

    def __init__(self, num_users: int, num_items: int, features: Mapping[str, Tensor],
                 adj: Tensor, train_edges: Tensor, mm_adj: Tensor,
                 embedding_dim: int = 64, feat_embed_dim: int = 64, knn_k: int = 10,
                 mm_image_weight: float = 0.1, n_mm_layers: int = 1, n_ui_layers: int = 2,
                 dropout: float = 0.8, reg_weight: float = 0.0,
                 freeze_features: bool = False, pruning_rng: str = 'epoch',
                 pruning_seed: Optional[int] = None, backend: str = 'csr',
                 order: Optional[Sequence[str]] = None):
        super().__init__(num_users, num_items, features, order)
        name = self.__class__.__name__
        if feat_embed_dim != embedding_dim:
            raise ValueError(f"'{name}' scores users against the projected features, so "
                             f"feat_embed_dim must equal embedding_dim (got "
                             f"{feat_embed_dim} and {embedding_dim})")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"'{name}' needs 0 <= dropout < 1 (got {dropout})")
        if reg_weight < 0:
            raise ValueError(f"'{name}' needs reg_weight >= 0 (got {reg_weight})")
        if pruning_rng not in ('epoch', 'global'):
            raise ValueError(f"'{name}' got unknown pruning_rng '{pruning_rng}' (expected "
                             f"'epoch' or 'global')")
        n = num_users + num_items
        self.check_graph_shapes({'adj': (adj, (n, n)),
                                 'mm_adj': (mm_adj, (num_items, num_items))})
        self.embedding_dim = embedding_dim
        self.feat_embed_dim = feat_embed_dim
        self.knn_k = knn_k
        self.mm_image_weight = mm_image_weight
        self.dropout = float(dropout)
        self.reg_weight = float(reg_weight)
        self.freeze_features = bool(freeze_features)
        self.pruning_rng = pruning_rng
        self.backend = backend

        self.user_emb = nn.Parameter(torch.empty(num_users, embedding_dim))
        self.item_emb = nn.Parameter(torch.empty(num_items, embedding_dim))
        self.trs = nn.ModuleDict({m: nn.Linear(self.feature_dims[m], feat_embed_dim)
                                  for m in self.modalities})
        if not self.freeze_features:
            self.make_features_trainable()

        self.graph = SparseOperator(adj, symmetric=True, backend=backend)
        self.item_graph = SparseOperator(mm_adj, symmetric=False, backend=backend)
        self.pruning = (DegreeSensitiveEdgePruning(train_edges, num_users, num_items,
                                                   keep_ratio=1.0 - self.dropout)
                        if self.dropout > 0 else None)
        self.train_graph: Optional[SparseOperator] = None
        self.ui_propagation = LGPropagation(n_ui_layers, combine='mean')
        self.mm_propagation = LGPropagation(n_mm_layers, combine='last')
        self.reset_parameters()
        if pruning_seed is None:  # from the global stream: seeding the run fixes it
            pruning_seed = int(torch.randint(2**62, ()))
        # Persistent: a checkpoint carries it, so a resumed run redraws the same graphs.
        self.register_buffer('pruning_seed', torch.tensor(int(pruning_seed)))

    @classmethod
    def graph_specs(cls, modalities: Sequence[str] = (), knn_k: int = 10,
                    mm_image_weight: float = 0.1, **kwargs):
        return {'adj': UserItemGraph(norm='sym'),
                'train_edges': TrainingEdges(),
                'mm_adj': MixedItemKNN(weights=(('image', float(mm_image_weight)), ),
                                       k=int(knn_k), weighted=False, loop=True, norm='sym')}

    def reset_parameters(self) -> None:
        nn.init.xavier_uniform_(self.user_emb)
        nn.init.xavier_uniform_(self.item_emb)
        self.reset_feature_tables()
        for lin in self.trs.values():
            lin.reset_parameters()

    # -- training ---------------------------------------------------------------------
    def pruning_generator(self, epoch: int) -> Optional[torch.Generator]:
        r"""The random stream of epoch :obj:`epoch`'s draw: a generator seeded with
        :obj:`pruning_seed + epoch` (:obj:`pruning_rng='epoch'`), or :obj:`None`, torch's
        global stream (:obj:`'global'`, MMRec's)."""
        if self.pruning_rng == 'global':
            return None
        generator = torch.Generator(device=self.user_emb.device)
        return generator.manual_seed(int(self.pruning_seed) + int(epoch))

    def pre_epoch(self, epoch: int) -> None:
        r"""Draws epoch :obj:`epoch`'s pruned user–item graph (MMRec's
        ``pre_epoch_processing``), one :func:`torch.multinomial` on
        :meth:`pruning_generator`."""
        if self.pruning is not None:
            adj = self.pruning(self.pruning_generator(epoch))
            self.train_graph = SparseOperator(adj, symmetric=True, backend=self.backend)

    def forward_batch(self, batch: BPRBatch) -> Tuple[RecOutput, BPRBatch]:
        r"""The propagated tables as :meth:`forward`, the item table restricted to the
        batch's distinct items and their projections only
        (:meth:`forward_with_batch_projections`): their rows are all the loss and a plug-in
        read."""
        return self.forward_with_batch_projections(batch)

    def forward(self) -> RecOutput:
        r"""The full tables; the modality projections are computed when first read
        (:class:`~mrdib_pyg.nn.output.LazyModalities`)."""
        if not self.training or self.pruning is None:
            graph = self.graph
        else:
            if self.train_graph is None:
                self.pre_epoch(0)
            graph = self.train_graph
        h = self.mm_propagation(self.item_emb, self.item_graph)
        x = torch.cat([self.user_emb, self.item_emb], dim=0)
        user, item = self.ui_propagation(x, graph).split([self.num_users, self.num_items])
        return RecOutput(user=user, item=item + h, modalities=self.lazy_projections())

    def loss(self, out: RecOutput, batch: BPRBatch) -> Tensor:
        r""":math:`\mathrm{BPR}(\mathbf{u}, \mathbf{i}) + \lambda\sum_m
        \mathrm{BPR}(\mathbf{u}, \mathbf{x}^m)` on the batch (modalities in
        :attr:`modalities` order, MMRec's text then image)."""
        u, pos, neg = batch.rows(out.user, out.item)
        loss = logsigmoid_bpr(u, pos, neg)
        if self.reg_weight != 0:
            modal = sum(logsigmoid_bpr(u, out.modalities[m].item.index_select(0, batch.pos),
                                       out.modalities[m].item.index_select(0, batch.neg))
                        for m in self.modalities)
            loss = loss + self.reg_weight * modal
        return loss

    def extra_repr(self) -> str:
        return (f'{super().extra_repr()}, embedding_dim={self.embedding_dim}, '
                f'knn_k={self.knn_k}, mm_image_weight={self.mm_image_weight}, '
                f'dropout={self.dropout}, reg_weight={self.reg_weight}, '
                f'freeze_features={self.freeze_features}')
