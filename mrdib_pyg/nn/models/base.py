r"""The base classes every backbone derives from: :class:`Recommender` (tables, loss,
cached scoring, declared graphs) and :class:`MultimodalRecommender` (modality order, feature
buffers, per-modality outputs, the plug-in hook)."""
from typing import Any, Callable, ClassVar, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn
from torch_geometric.data import HeteroData

from mrdib_pyg.data.sampling import BPRBatch
from mrdib_pyg.data.derived import build_graphs
from mrdib_pyg.data.schema import ITEM, USER, item_features, modality_names
from mrdib_pyg.nn.loss import bpr_loss
from mrdib_pyg.nn.output import LazyModalities, ModalityOutput, RecOutput


class Recommender(nn.Module):
    r"""Base class of the backbones.

    A backbone owns the (non-learned) graphs and features it needs as non-persistent
    buffers, so :meth:`forward` takes no input and :obj:`model.to(device)` moves everything.
    It receives its graphs as constructor arguments and never builds one itself: it
    *declares* them in :meth:`graph_specs` (:mod:`mrdib_pyg.data.derived`), and
    :meth:`from_data` has the data layer build them once (cached in the dataset's
    ``processed/`` folder when a :obj:`cache_dir` is given). Subclasses implement:

    * :meth:`forward` :math:`\rightarrow` :class:`~mrdib_pyg.nn.output.RecOutput` (full tables);
    * :meth:`loss` — the backbone's own training loss on a :class:`BPRBatch`
      (the default is BPR on the final tables plus :meth:`regularizer`);
    * optionally :meth:`pre_epoch` (edge dropout, graph resampling, as MMRec's
      ``pre_epoch_processing``).

    :meth:`score` returns a :obj:`[len(users), num_items]` score matrix. In evaluation mode
    it computes the tables once and caches them until the module goes back to training
    mode or its parameters change through :meth:`invalidate_cache`; it never rebuilds a
    graph.
    """
    #: Whether the backbone exposes per-modality outputs (MRdIB refuses those that don't).
    multimodal: ClassVar[bool] = False
    #: Training options this backbone's MMRec configuration sets beside the model's own
    #: (e.g. MGCN's learning-rate decay); the command line layers them under the dataset
    #: preset, ``--config`` and flags (:meth:`~mrdib_pyg.train.TrainConfig.preset`).
    train_defaults: ClassVar[Dict[str, Any]] = {}
    #: Rank with the tables of the last *training* forward (computed before that batch's
    #: optimiser step) instead of recomputing them in evaluation mode: MMRec's MMGCN, GRCN
    #: and DualGNN do this. Off by default; those backbones take it as an argument.
    score_last_train_forward: bool = False

    def __init__(self, num_users: int, num_items: int):
        super().__init__()
        self.num_users = int(num_users)
        self.num_items = int(num_items)
        self._cache: Optional[RecOutput] = None
        self._last_train: Optional[RecOutput] = None

    # -- construction -----------------------------------------------------------------
    @classmethod
    def graph_specs(cls, modalities: Sequence[str] = (), **kwargs) -> Dict[str, Any]:
        r"""The derived graphs this backbone needs, keyed by the constructor argument that
        receives each, given the dataset's :obj:`modalities` and the constructor arguments
        :obj:`kwargs` (e.g. :obj:`knn_k`). A value is a
        :class:`~mrdib_pyg.data.derived.GraphSpec`, or a dict of them (e.g. one per
        modality), which the argument then receives as a dict of graphs. None by default."""
        return {}

    @classmethod
    def from_data(cls, data: HeteroData, cache_dir: Optional[str] = None, **kwargs):
        r"""The backbone for :obj:`data`: table sizes from its node counts, graphs of
        :meth:`graph_specs` built from its training edges (a graph passed in
        :obj:`kwargs` is used as given), :obj:`kwargs` for the rest."""
        graphs = cls._graphs(data, cache_dir, 'keep', kwargs)
        return cls(data[USER].num_nodes, data[ITEM].num_nodes, **graphs, **kwargs)

    @classmethod
    def _graphs(cls, data: HeteroData, cache_dir: Optional[str], fill: str,
                kwargs: Dict[str, Any]) -> Dict[str, Tensor]:
        specs = cls.graph_specs(modalities=modality_names(data), **kwargs)
        return build_graphs(data, {k: s for k, s in specs.items() if k not in kwargs},
                            cache_dir, fill)

    def check_graph_shapes(self, graphs: Mapping[str, Any]) -> None:
        r"""Raise :class:`ValueError` naming the argument if a graph passed to the
        constructor has the wrong shape; :obj:`graphs` maps argument name ->
        :obj:`(tensor, expected shape)`."""
        for arg, (graph, shape) in graphs.items():
            if tuple(graph.shape) != tuple(shape):
                raise ValueError(f"'{self.__class__.__name__}': {arg} has shape "
                                 f"{tuple(graph.shape)}, expected {tuple(shape)}")

    # -- training ---------------------------------------------------------------------
    def forward(self) -> RecOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward_batch(self, batch: BPRBatch) -> Tuple[RecOutput, BPRBatch]:
        r"""The tables one training step needs and the batch indexed into them. By default
        the full tables and the batch as it is; a backbone trained on sampled subgraphs
        (:class:`~mrdib_pyg.nn.models.PyGBackbone` with :obj:`num_neighbors`) returns the
        subgraph's tables and the batch's rows re-indexed into them. The loss and every
        plug-in see only this pair."""
        return self.forward(), batch

    def pre_epoch(self, epoch: int) -> None:
        r"""Hook called by the trainer before every epoch (no-op by default)."""

    def regularizer(self, out: RecOutput, batch: BPRBatch) -> Tensor:
        r"""Regularisation term of :meth:`loss` (zero by default)."""
        return out.user.new_zeros(())

    def loss(self, out: RecOutput, batch: BPRBatch) -> Tensor:
        r"""The backbone's own loss: BPR on the final tables plus :meth:`regularizer`."""
        u, pos, neg = batch.rows(out.user, out.item)
        pos, neg = (u * pos).sum(-1), (u * neg).sum(-1)
        return bpr_loss(pos, neg) + self.regularizer(out, batch)

    # -- inference --------------------------------------------------------------------
    def train(self, mode: bool = True):
        self._cache = None
        return super().train(mode)

    def invalidate_cache(self) -> None:
        self._cache = None

    def remember_training_tables(self, out: RecOutput) -> RecOutput:
        r"""Keep :obj:`out`'s tables (detached) for ranking when
        :attr:`score_last_train_forward` is set and the module is training; returns
        :obj:`out`. Backbones offering MMRec's behaviour call it at the end of
        :meth:`forward`."""
        if self.training and self.score_last_train_forward:
            self._last_train = RecOutput(user=out.user.detach(), item=out.item.detach())
        return out

    @torch.no_grad()
    def embeddings(self) -> RecOutput:
        r"""The tables used for ranking (cached in evaluation mode; with
        :attr:`score_last_train_forward`, the last training forward's once there is one)."""
        if self.training:
            return self.forward()
        if self.score_last_train_forward and self._last_train is not None:
            return self._last_train
        if self._cache is None:
            self._cache = self.forward()
        return self._cache

    @torch.no_grad()
    def score(self, users: Tensor) -> Tensor:
        r"""Scores of :obj:`users` against every item, :obj:`[len(users), num_items]`."""
        out = self.embeddings()
        return out.user[users] @ out.item.t()

    def extra_repr(self) -> str:
        return f'num_users={self.num_users}, num_items={self.num_items}'


ModalityHook = Callable[[Dict[str, Tensor]], Dict[str, Tensor]]


def mmrec_modality_order(names: Sequence[str]) -> List[str]:
    r"""MMRec's order: text, then image (VBPR concatenates ``[text || image]``); other
    modalities follow in the given order."""
    head = [n for n in ('text', 'image') if n in names]
    return head + [n for n in names if n not in head]


class MultimodalRecommender(Recommender):
    r"""Base class of the backbones with modality features. It owns, once for all of them:

    * the modality order (:attr:`modalities`; MMRec's, text first, unless given) and one
      non-persistent feature buffer per modality (:meth:`feature`), checked for shape;
    * :meth:`from_data`, which reads the features with :obj:`fill_missing` (items without a
      modality: :obj:`'keep'` their zero rows, MMRec's :obj:`'mean'`, or :obj:`'zero'`) and
      builds the declared graphs from the same filled features;
    * the plug-in hook (:attr:`modality_hook`): a backbone that sets
      :attr:`supports_replace` routes its per-modality representations through
      :meth:`apply_modality_hook` before fusing them (MRdIB's replace mode); a plug-in
      otherwise only reads :attr:`RecOutput.modalities <mrdib_pyg.nn.output.RecOutput>`.

    Subclasses call ``super().__init__(num_users, num_items, features, order)`` and return
    every modality in :attr:`RecOutput.modalities`.

    Args:
        num_users (int), num_items (int): table sizes.
        features (dict): modality name :math:`\rightarrow` :obj:`[I, d_m]` features.
        order (list, optional): the modality order (default: MMRec's).
    """
    multimodal: ClassVar[bool] = True
    #: Whether :meth:`forward` fuses :meth:`apply_modality_hook`'s output (replace mode).
    supports_replace: ClassVar[bool] = False

    def __init__(self, num_users: int, num_items: int, features: Mapping[str, Tensor],
                 order: Optional[Sequence[str]] = None):
        super().__init__(num_users, num_items)
        name = self.__class__.__name__
        if not features:
            raise ValueError(f"'{name}' needs at least one modality's features (got none)")
        self.modalities = (list(order) if order is not None
                           else mmrec_modality_order(list(features)))
        if sorted(self.modalities) != sorted(features):
            raise ValueError(f"'{name}' order {self.modalities} does not match the "
                             f"modalities {sorted(features)}")
        for m in self.modalities:
            x = features[m]
            if x.dim() != 2 or x.size(0) != num_items:
                raise ValueError(f"'{name}': modality '{m}' has shape {tuple(x.shape)}, "
                                 f"expected [{num_items}, d] (one row per item)")
            self.register_buffer(f'feat_{m}', x.float(), persistent=False)
        self.feature_dims = {m: features[m].size(1) for m in self.modalities}
        # trained copies of the features (make_features_trainable); empty: features fixed
        self.feature_emb = nn.ParameterDict()
        self.modality_hook: Optional[ModalityHook] = None

    @classmethod
    def from_data(cls, data: HeteroData, fill_missing: str = 'keep',
                  cache_dir: Optional[str] = None, **kwargs):
        names = modality_names(data)
        if not names:
            raise ValueError(f"'{cls.__name__}' needs modality features, and the dataset has "
                             f"none")
        feats = {m: item_features(data, m, fill_missing) for m in names}
        graphs = cls._graphs(data, cache_dir, fill_missing, kwargs)
        return cls(data[USER].num_nodes, data[ITEM].num_nodes, feats, **graphs, **kwargs)

    def item_graph_shapes(self, item_graphs: Mapping[str, Any]) -> Dict[str, Any]:
        r"""Check that :obj:`item_graphs` holds one graph per modality and return their
        expected :obj:`[I, I]` shapes, keyed as :meth:`check_graph_shapes` names them."""
        if sorted(item_graphs) != sorted(self.modalities):
            raise ValueError(f"'{self.__class__.__name__}' needs one item graph per modality "
                             f"{sorted(self.modalities)} (got {sorted(item_graphs)})")
        return {f'item_graphs[{m!r}]': (g, (self.num_items, self.num_items))
                for m, g in item_graphs.items()}

    def feature(self, modality: str) -> Tensor:
        r"""The :obj:`[I, d_m]` raw features of :obj:`modality`."""
        return getattr(self, f'feat_{modality}')

    def make_features_trainable(self) -> None:
        r"""Give every modality a trained copy of its features (:attr:`feature_emb`), as
        MMRec's ``nn.Embedding.from_pretrained(feat, freeze=False)`` (FREEDOM, BM3, LATTICE,
        MGCN): :meth:`modality_features` then returns the copy, which the optimiser
        fine-tunes, while :meth:`feature` keeps the raw features (the buffer may share
        memory with the dataset's tensor; :meth:`reset_feature_tables` restores the copy
        from it)."""
        self.feature_emb = nn.ParameterDict(
            {m: nn.Parameter(self.feature(m).detach().clone()) for m in self.modalities})

    def modality_features(self, modality: str) -> Tensor:
        r"""The :obj:`[I, d_m]` features a backbone computes with: the trained copy after
        :meth:`make_features_trainable`, else the raw :meth:`feature`."""
        if modality in self.feature_emb:
            return self.feature_emb[modality]
        return self.feature(modality)

    @torch.no_grad()
    def reset_feature_tables(self) -> None:
        r"""Reset the trained feature copies (if any) to the raw features."""
        for m, p in self.feature_emb.items():
            p.copy_(self.feature(m))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # checkpoints written before FREEDOM and BM3 moved their trained features into
        # feature_emb kept them as parameters named feat_<modality>
        for m in self.feature_emb:
            old = f'{prefix}feat_{m}'
            if old in state_dict and f'{prefix}feature_emb.{m}' not in state_dict:
                state_dict[f'{prefix}feature_emb.{m}'] = state_dict.pop(old)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def modality_projection(self, modality: str, items: Optional[Tensor] = None) -> Tensor:
        r""":math:`W_m \mathbf{f}^m + \mathbf{b}_m` of :obj:`modality` (only the rows of
        :obj:`items` when given), for the backbones that keep one projection of their
        :meth:`modality_features` per modality in :obj:`self.trs` (FREEDOM, BM3, LATTICE)."""
        x = self.modality_features(modality)
        return self.trs[modality](x if items is None else x.index_select(0, items))

    def lazy_projections(self, items: Optional[Tensor] = None) -> LazyModalities:
        r"""Every modality's :meth:`modality_projection` (of :obj:`items` only, when
        given) as :attr:`RecOutput.modalities`, each computed when first read: a backbone
        whose own computation does not always need them (FREEDOM at :obj:`reg_weight=0`,
        BM3 when ranking, LATTICE between its graph rebuilds) then projects no 4096-d
        feature unless a plug-in or a loss term reads it. MMRec projects every item's
        features at every step."""
        return LazyModalities(
            self.modalities, lambda m: ModalityOutput(item=self.modality_projection(m, items)))

    def forward_with_batch_projections(self, batch: BPRBatch) -> Tuple[RecOutput, BPRBatch]:
        r"""A :meth:`forward_batch` for backbones whose modality tables are
        :meth:`lazy_projections` (FREEDOM, LATTICE): the tables of :meth:`forward`, the item
        table restricted to the batch's distinct items (the batch re-indexed into them), and
        modality tables that project only those items when read. The loss and every
        gradient are those of the full tables, without a projection and backward pass
        through every item's features at every step."""
        items, batch = batch.reindex_items()
        out = self.forward()
        return (RecOutput(user=out.user, item=out.item.index_select(0, items),
                          modalities=self.lazy_projections(items), extras=out.extras), batch)

    def apply_modality_hook(self, reps: Dict[str, Tensor]) -> Dict[str, Tensor]:
        r""":obj:`reps` through :attr:`modality_hook` when one is set (replace mode)."""
        return reps if self.modality_hook is None else self.modality_hook(reps)

    def extra_repr(self) -> str:
        mods = ', '.join(f'{m}={d}' for m, d in self.feature_dims.items())
        return f'{super().extra_repr()}, modalities=({mods})'
