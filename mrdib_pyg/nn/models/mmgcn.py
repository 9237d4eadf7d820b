r"""MMGCN: one graph network per modality over the user–item graph, averaged."""
from typing import Dict, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from mrdib_pyg.data.derived import UserItemGraph
from mrdib_pyg.data.sampling import BPRBatch
from mrdib_pyg.nn.conv.mmgcn_conv import MMGCNEncoder, bipartite_blocks
from mrdib_pyg.nn.conv.sparse_op import SparseOperator
from mrdib_pyg.nn.loss import interleaved_id_reg
from mrdib_pyg.nn.models.base import MultimodalRecommender
from mrdib_pyg.nn.models.registry import register_model
from mrdib_pyg.nn.output import ModalityOutput, RecOutput


@register_model('mmgcn', 'MMGCN: one GCN per modality over user preferences and item '
                         'features, averaged (MMRec MMGCN)')
class MMGCN(MultimodalRecommender):
    r"""MMGCN from `"MMGCN: Multi-modal Graph Convolution Network for Personalized
    Recommendation of Micro-video" <https://arxiv.org/abs/1908.11189>`_ (Wei et al.,
    ACM MM 2019), as MMRec's ``models/mmgcn.py`` trains it.

    Every modality :math:`m` runs its own :class:`~mrdib_pyg.nn.conv.MMGCNEncoder` over the
    undirected user–item graph of the training interactions, with the mean over neighbours
    :math:`\hat{A} = D^{-1}A` as aggregation (declared as
    :class:`~mrdib_pyg.data.derived.UserItemGraph` :obj:`(norm='row')`, built once), a
    per-modality user preference :math:`\mathbf{P}_m` stacked on the (projected) item
    features, and one id embedding :math:`\mathbf{E}_{\text{id}} \in \mathbb{R}^{(U+I)
    \times d}` shared by all modalities and layers:

    .. math::
        \mathbf{X}_m^{(0)} &= \operatorname{normalize}\big([\mathbf{P}_m ;
            \phi_m(\mathbf{F}_m)]\big), \qquad
        \mathbf{X}_m^{(l+1)} = \operatorname{MMGCNConv}_{m,l}\big(\mathbf{X}_m^{(l)},
            \hat{A}, \mathbf{E}_{\text{id}}\big) \\
        \mathbf{Z} &= \frac{1}{M} \sum_m \mathbf{X}_m^{(L)}, \qquad
        \hat{y}_{ui} = \mathbf{z}_u^\top \mathbf{z}_{U+i}

    (:class:`~mrdib_pyg.nn.conv.MMGCNConv` holds the layer's aggregation, self path and
    combiner.) Loss (MMRec's, on the batch's rows of :math:`\mathbf{Z}`):

    .. math::
        \mathcal{L} = -\frac{1}{B}\sum_b \log \sigma(s^+_b - s^-_b)
        + \lambda \Big(\operatorname{mean}(\mathbf{E}_{\text{id}}[u]^2)
        + \tfrac{1}{2}\operatorname{mean}(\mathbf{E}_{\text{id}}[i^+]^2)
        + \tfrac{1}{2}\operatorname{mean}(\mathbf{E}_{\text{id}}[i^-]^2)
        + \sum_{m \in \text{reg\_preferences}} \operatorname{mean}(\mathbf{P}_m^2)\Big)

    (MMRec writes the id term as the mean over the interleaved
    :math:`[u, u]`/:math:`[i^+, i^-]` rows, which is the same number, and regularises the
    *whole* image preference matrix, not the text one.)

    Per-modality outputs (for plug-ins): :math:`\mathbf{X}_m^{(L)}`, its item rows and its own
    user rows (:obj:`ModalityOutput(item=[I, d], user=[U, d])`). No replace mode
    (:attr:`supports_replace` is off).

    **Computation.** :math:`\hat{A}` is split once into its two bipartite blocks
    (:func:`~mrdib_pyg.nn.conv.mmgcn_conv.bipartite_blocks`), each a CSR
    :class:`~mrdib_pyg.nn.conv.SparseOperator` with its transpose precomputed, and the
    encoders run on :obj:`(users, items)` pairs (the bipartite form of
    :class:`~mrdib_pyg.nn.conv.MMGCNConv`): every layer's square product runs on the smaller
    node set, the raw text half gets no gradient, and the 4096-d image features are projected
    once per forward. Same numbers as MMRec's dense order to float precision
    (``benchmarks/equivalence/mmgcn.py``).

    **MMRec's defaults** (``configs/model/MMGCN.yaml``, first grid values): embedding 64,
    3 layers (hard-coded in MMRec; the YAML's :obj:`n_layers: 2` is never read), image
    projected to 256 by a :obj:`Linear` and text fed raw (384), :obj:`reg_weight=0`,
    learning rate :math:`10^{-4}` (:attr:`train_defaults`).

    **Deliberate differences from MMRec**, each selectable:

    * MMRec creates :math:`\mathbf{E}_{\text{id}}` and every :math:`\mathbf{P}_m` as plain
      tensors, not :class:`~torch.nn.Parameter`, so its optimiser never updates them (and
      its regulariser has no gradient at all). We train them; MMRec's behaviour is
      :obj:`trainable_embeddings=False` (frozen buffers with MMRec's initial draw).
    * MMRec's ranking (``full_sort_predict``) uses the tables of the **last training
      batch's** forward, computed before that batch's optimiser step. We recompute them in
      evaluation mode (the base class's cached :meth:`score`); MMRec's is
      :obj:`score_last_train_forward=True`.
    * MMRec's BPR here is :math:`-\operatorname{mean}\log\sigma(\cdot)` without the
      :math:`10^{-10}` of its shared ``BPRLoss``; we use the shared
      :func:`~mrdib_pyg.nn.loss.bpr_loss` (equal unless :math:`\sigma < 10^{-6}`, where
      MMRec's version heads to :math:`+\infty`).
    * :obj:`concat` is a real boolean. MMRec sets :obj:`concate = 'False'`, a non-empty
      string, so its *concatenation* combiner always runs; that variant produced MMRec's
      published numbers, so it is our default too (:obj:`concat=True`). The element-wise sum
      the string seems to ask for is :obj:`concat=False`.
    * The projected modalities are named (:obj:`projections`), as MMRec hard-codes the image
      branch's :obj:`dim_latent=256`; a modality not named (text, or any other) goes in raw.
    * The graph counts a duplicated training pair once (the data layer drops duplicates);
      MMRec's mean aggregation would count it twice (the Baby split used here has none).

    MMRec's exact training and ranking: :obj:`trainable_embeddings=False,
    score_last_train_forward=True` (with the default :obj:`concat=True`).

    Args:
        num_users (int), num_items (int): table sizes.
        features (dict): modality name :math:`\rightarrow` :obj:`[I, d_m]` features.
        adj (Tensor): :obj:`[U+I, U+I]` mean-aggregation matrix :math:`D^{-1}A` (sparse,
            users first), from :meth:`graph_specs`.
        embedding_dim (int, optional): :math:`d`. (default: :obj:`64`)
        num_layers (int, optional): :math:`L`. (default: :obj:`3`)
        reg_weight (float, optional): :math:`\lambda`. (default: :obj:`0.0`)
        concat (bool, optional): concatenation (:obj:`True`) or sum (:obj:`False`) combiner.
            (default: :obj:`True`)
        projections (tuple, optional): :obj:`((modality, width), ...)`: modalities projected
            by a :obj:`Linear` before the graph (names the dataset lacks are ignored).
            (default: :obj:`(('image', 256),)`)
        reg_preferences (tuple, optional): modalities whose preference matrix enters the
            regulariser. (default: :obj:`('image',)`, MMRec's)
        trainable_embeddings (bool, optional): train :math:`\mathbf{E}_{\text{id}}` and the
            :math:`\mathbf{P}_m`. (default: :obj:`True`)
        score_last_train_forward (bool, optional): rank with the last training forward's
            tables, as MMRec. (default: :obj:`False`)
        backend (str, optional): of :class:`~mrdib_pyg.nn.conv.SparseOperator`.
            (default: :obj:`'csr'`)
        order (list, optional): modality order (default: MMRec's, text first).
    """
    train_defaults = {'lr': 1e-4}

    def __init__(self, num_users: int, num_items: int, features: Dict[str, Tensor],
                 adj: Tensor, embedding_dim: int = 64, num_layers: int = 3,
                 reg_weight: float = 0.0, concat: bool = True,
                 projections: Tuple[Tuple[str, int], ...] = (('image', 256), ),
                 reg_preferences: Tuple[str, ...] = ('image', ),
                 trainable_embeddings: bool = True, score_last_train_forward: bool = False,
                 backend: str = 'csr', order: Optional[Sequence[str]] = None):
        super().__init__(num_users, num_items, features, order)
        name = self.__class__.__name__
        n = self.num_users + self.num_items
        if tuple(adj.shape) != (n, n):
            raise ValueError(f"'{name}' needs a [{n}, {n}] user-item matrix (users first), "
                             f"got adj of shape {tuple(adj.shape)}")
        self.embedding_dim = embedding_dim
        self.reg_weight = reg_weight
        self.concat = concat
        self.projections = {m: int(w) for m, w in projections}
        self.reg_preferences = tuple(reg_preferences)
        self.trainable_embeddings = trainable_embeddings
        self.score_last_train_forward = score_last_train_forward
        # The graph is bipartite: propagating with its two blocks is the same product, faster,
        # and skips the gradient of the constant raw-feature half.
        to_user, to_item = bipartite_blocks(adj, self.num_users)
        self.to_user = SparseOperator(to_user, backend=backend)
        self.to_item = SparseOperator(to_item, backend=backend)
        emb = torch.empty(n, embedding_dim)
        if trainable_embeddings:
            self.id_embedding = nn.Parameter(emb)
        else:
            self.register_buffer('id_embedding', emb)
        self.encoders = nn.ModuleDict({
            m: MMGCNEncoder(num_users, self.feature_dims[m], embedding_dim,
                            latent_dim=self.projections.get(m), num_layers=num_layers,
                            concat=concat, trainable_preference=trainable_embeddings)
            for m in self.modalities})
        self.reset_parameters()

    @classmethod
    def graph_specs(cls, **kwargs):
        return {'adj': UserItemGraph(norm='row')}

    def reset_parameters(self) -> None:
        with torch.no_grad():
            nn.init.xavier_normal_(self.id_embedding)
        for enc in self.encoders.values():
            enc.reset_parameters()
        self._last_train = None

    def modality_tables(self) -> Dict[str, Tuple[Tensor, Tensor]]:
        r""":math:`\mathbf{X}_m^{(L)}` for every modality, as :obj:`([U, d], [I, d])`."""
        graph = (self.to_user, self.to_item)
        return {m: self.encoders[m](self.feature(m), graph, self.id_embedding)
                for m in self.modalities}

    def forward(self) -> RecOutput:
        reps = self.modality_tables()
        M = len(self.modalities)
        user = sum(reps[m][0] for m in self.modalities) / M
        item = sum(reps[m][1] for m in self.modalities) / M
        out = RecOutput(user=user, item=item, modalities={
            m: ModalityOutput(item=i, user=u) for m, (u, i) in reps.items()})
        return self.remember_training_tables(out)


    def regularizer(self, out: RecOutput, batch: BPRBatch) -> Tensor:
        reg = interleaved_id_reg(self.id_embedding, self.num_users, batch.users, batch.pos,
                                 batch.neg)
        for m in self.reg_preferences:
            if m in self.encoders:
                reg = reg + self.encoders[m].preference.pow(2).mean()
        return self.reg_weight * reg

    def extra_repr(self) -> str:
        return (f'{super().extra_repr()}, embedding_dim={self.embedding_dim}, '
                f'concat={self.concat}, trainable_embeddings={self.trainable_embeddings}')
