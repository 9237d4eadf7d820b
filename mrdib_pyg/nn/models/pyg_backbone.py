r"""Any PyTorch Geometric encoder as a backbone, without writing a :class:`Recommender`.

:class:`PyGBackbone` wraps a user's own :class:`torch.nn.Module` that runs over the
user–item–modality heterograph and gives the trainer, the evaluator and MRdIB what they
need: the final user and item tables, one representation per modality, a loss.
"""
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn
from torch_geometric.data import HeteroData

from mrdib_pyg.data.sampling import BPRBatch
from mrdib_pyg.data.schema import ITEM, RATES, USER, item_features, modality_names
from mrdib_pyg.nn.loss import emb_loss
from mrdib_pyg.nn.output import ModalityOutput, RecOutput
from mrdib_pyg.nn.models.base import Recommender, mmrec_modality_order

__all__ = ['PyGBackbone']

Call = Callable[..., Union[Tensor, Dict[str, Tensor]]]


class PyGBackbone(Recommender):
    r"""A PyG encoder over the user–item–modality graph, trained as a recommender.

    The adapter owns the inputs an encoder needs and turns its output into a
    :class:`~mrdib_pyg.nn.output.RecOutput`:

    * **inputs**: a learned ID embedding per user and per item (:math:`d` =
      :obj:`embedding_dim`, Xavier-uniform) and, for every modality node type :math:`m`,
      its feature rows projected to :math:`d` by a linear layer (:obj:`project_features`)
      or raw. Only the *training* edges are passed (each edge type's ``edge_index``; the
      held-out positives live under other names and never reach the encoder).
    * **calling the encoder**, by :obj:`mode`:

      - :obj:`'hetero'`: :obj:`encoder(x_dict, edge_index_dict)` returning a dict of node
        type :math:`\rightarrow` table, e.g. :obj:`to_hetero(GraphSAGE(...), data.metadata())`;
      - :obj:`'homogeneous'`: :obj:`encoder(x, edge_index)` over one node range (users,
        items, then each modality's nodes; every edge type merged, as
        :meth:`HeteroData.to_homogeneous` orders them) returning :obj:`[N, d']`, sliced
        back per node type, e.g. PyG's :class:`~torch_geometric.nn.models.GCN`;

      :obj:`call(encoder, *inputs)` replaces the call, e.g.
      :obj:`lambda enc, x, ei: enc.get_embedding(ei)` for PyG's
      :class:`~torch_geometric.nn.models.LightGCN`, which owns its embeddings (then set
      :obj:`id_embeddings=False`).
    * **outputs**: the final tables are the encoder's :obj:`'user'` and :obj:`'item'`
      outputs; :math:`\hat{y}_{ui} = \mathbf{u}^\top \mathbf{i}`. Modality :math:`m`'s
      representation (what MRdIB reads) is by default the encoder's output for the
      :math:`m` nodes (row :math:`k` is item :math:`k`'s), paired with the user table;
      :obj:`modality_outputs` maps a modality to another output name instead, or is a
      function of the output dict returning :obj:`{m: (item_table, user_table or None)}`.
    * **loss**: BPR on the final tables plus :obj:`reg_weight` times MMRec's
      :func:`~mrdib_pyg.nn.loss.emb_loss` of the batch's ID embeddings.

    The encoder may use lazy modules (:obj:`in_channels=-1`, as :func:`to_hetero` models
    usually do): the constructor runs one forward pass to materialise them, so the
    optimiser sees every parameter.

    Args:
        encoder (torch.nn.Module): the user's encoder.
        data (HeteroData): the dataset graph (an :class:`~mrdib_pyg.data.AmazonMM` or
            :class:`~mrdib_pyg.data.SyntheticMM` item); only its sizes, training edges and
            features are kept.
        mode (str): :obj:`'hetero'` or :obj:`'homogeneous'`. (default: :obj:`'hetero'`)
        embedding_dim (int): ID embedding and projection width. (default: :obj:`64`)
        id_embeddings (bool): feed learned ID embeddings as user/item inputs (else zeros:
            for encoders with embeddings of their own). (default: :obj:`True`)
        project_features (bool): project modality features to :obj:`embedding_dim`
            (required in homogeneous mode, where every node has one width).
            (default: :obj:`True`)
        modalities (list, optional): the modality node types to include (default: every
            modality of :obj:`data`, MMRec's order).
        modality_outputs (dict or callable, optional): see above.
        call (callable, optional): how to call the encoder, see above.
        reg_weight (float): weight of the ID-embedding L2 term. (default: :obj:`0.0`)

    Example::

        from torch_geometric.nn import GraphSAGE, to_hetero
        data = AmazonMM('data', 'baby')[0]
        sage = to_hetero(GraphSAGE((-1, -1), 64, num_layers=2), data.metadata(), aggr='mean')
        model = PyGBackbone(sage, data)
        Trainer(model, data, TrainConfig(), plugins=MRdIB.from_output(model())).fit()
    """
    def __init__(self, encoder: nn.Module, data: HeteroData, mode: str = 'hetero',
                 embedding_dim: int = 64, id_embeddings: bool = True,
                 project_features: bool = True, modalities: Optional[Sequence[str]] = None,
                 modality_outputs: Optional[Union[Mapping[str, str], Callable]] = None,
                 call: Optional[Call] = None, reg_weight: float = 0.0,
                 num_neighbors: Optional[Sequence[int]] = None):
        super().__init__(data[USER].num_nodes, data[ITEM].num_nodes)
        if mode not in ('hetero', 'homogeneous'):
            raise ValueError(f"PyGBackbone: mode must be 'hetero' or 'homogeneous' "
                             f"(got '{mode}')")
        if mode == 'homogeneous' and not project_features:
            raise ValueError('PyGBackbone: homogeneous mode needs project_features=True '
                             '(every node of one graph has one input width)')
        present = modality_names(data)
        self.modalities: List[str] = (mmrec_modality_order(present) if modalities is None
                                      else list(modalities))
        unknown = [m for m in self.modalities if m not in present]
        if unknown:
            raise ValueError(f'PyGBackbone: modalities {unknown} are not in the data '
                             f'(it has {present})')
        self.multimodal = bool(self.modalities)
        self.encoder, self.mode, self.call = encoder, mode, call
        self.embedding_dim, self.reg_weight = int(embedding_dim), float(reg_weight)
        self.id_embeddings = bool(id_embeddings)
        self.modality_outputs = modality_outputs
        self.user_emb = nn.Parameter(torch.empty(self.num_users, embedding_dim))
        self.item_emb = nn.Parameter(torch.empty(self.num_items, embedding_dim))
        self.proj = nn.ModuleDict()
        for m in self.modalities:
            x = item_features(data, m, 'keep').float()
            self.register_buffer(f'feat_{m}', x, persistent=False)
            if project_features:
                self.proj[m] = nn.Linear(x.size(1), embedding_dim)
        self.node_types = [USER, ITEM] + self.modalities
        self.edge_types = [et for et in data.edge_types
                           if et[0] in self.node_types and et[2] in self.node_types
                           and 'edge_index' in data[et]]
        for n, et in enumerate(self.edge_types):
            self.register_buffer(f'edges_{n}', data[et].edge_index.long(), persistent=False)
        sizes = [self.num_users, self.num_items] + [self.num_items] * len(self.modalities)
        offsets = torch.tensor([0] + sizes).cumsum(0)
        self.offsets = {t: (int(offsets[k]), int(offsets[k + 1]))
                        for k, t in enumerate(self.node_types)}
        if mode == 'homogeneous':
            parts = []
            for n, et in enumerate(self.edge_types):
                ei = getattr(self, f'edges_{n}')
                parts.append(torch.stack([ei[0] + self.offsets[et[0]][0],
                                          ei[1] + self.offsets[et[2]][0]]))
            self.register_buffer('homo_edges', torch.cat(parts, 1) if parts
                                 else torch.empty(2, 0, dtype=torch.long), persistent=False)
        self.num_neighbors = None
        if num_neighbors is not None:
            self._init_sampling(data, num_neighbors)
        self.reset_parameters()
        with torch.no_grad():  # materialise lazy modules (and check the outputs) up front
            self.forward()

    def _init_sampling(self, data: HeteroData, num_neighbors: Sequence[int]) -> None:
        if self.mode != 'hetero':
            raise ValueError('PyGBackbone: mini-batch training (num_neighbors) needs '
                             "mode='hetero'")
        nums = [int(k) for k in num_neighbors]
        if not nums or any(k == 0 or k < -1 for k in nums):
            raise ValueError(f'PyGBackbone: num_neighbors must list one fan-out per layer, '
                             f'each >= 1 or -1 for all neighbours (got {list(num_neighbors)})')
        require_neighbor_sampling()
        from torch_geometric.sampler import NeighborSampler
        graph = HeteroData()
        for t in self.node_types:
            graph[t].num_nodes = self.num_users if t == USER else self.num_items
        for et in self.edge_types:  # training edges only; features are gathered by id
            graph[et].edge_index = data[et].edge_index.long()
        self.num_neighbors = nums
        self._graph = graph
        self._sampler = NeighborSampler(graph, nums)

    @staticmethod
    def num_nodes(data: HeteroData, modalities: Optional[Sequence[str]] = None) -> int:
        r"""The node count of the homogeneous graph (users, items, one node per item and
        modality): the size of an encoder that owns one embedding per node."""
        mods = modality_names(data) if modalities is None else list(modalities)
        return data[USER].num_nodes + data[ITEM].num_nodes * (1 + len(mods))

    def reset_parameters(self) -> None:
        nn.init.xavier_uniform_(self.user_emb)
        nn.init.xavier_uniform_(self.item_emb)
        for lin in self.proj.values():
            lin.reset_parameters()

    def feature(self, modality: str) -> Tensor:
        return getattr(self, f'feat_{modality}')

    # -- inputs and the encoder call ----------------------------------------------------
    def _inputs(self, n_id: Optional[Dict[str, Tensor]] = None) -> Dict[str, Tensor]:
        r"""Input rows of every node type: all of them, or those of :obj:`n_id` (the global
        ids of a sampled subgraph's nodes)."""
        def rows(t: Tensor, key: str) -> Tensor:
            return t if n_id is None else t[n_id[key]]
        users, items = rows(self.user_emb, USER), rows(self.item_emb, ITEM)
        if not self.id_embeddings:
            users, items = torch.zeros_like(users), torch.zeros_like(items)
        x = {USER: users, ITEM: items}
        for m in self.modalities:
            f = rows(self.feature(m), m)
            x[m] = self.proj[m](f) if m in self.proj else f
        return x

    def _encode(self, x: Dict[str, Tensor], edges: Dict[tuple, Tensor]) -> Dict[str, Tensor]:
        if self.mode == 'hetero':
            out = (self.call(self.encoder, x, edges) if self.call is not None
                   else self.encoder(x, edges))
            if not isinstance(out, Mapping):
                raise TypeError(f'PyGBackbone (hetero): the encoder returned '
                                f'{type(out).__name__}, expected a dict of node type -> table')
            return dict(out)
        flat = torch.cat([x[t] for t in self.node_types], 0)
        h = (self.call(self.encoder, flat, self.homo_edges) if self.call is not None
             else self.encoder(flat, self.homo_edges))
        if not isinstance(h, Tensor) or h.dim() != 2 or h.size(0) != flat.size(0):
            raise TypeError(f'PyGBackbone (homogeneous): the encoder must return one '
                            f'[{flat.size(0)}, d] table (got '
                            f'{getattr(h, "shape", type(h).__name__)})')
        return {t: h[a:b] for t, (a, b) in self.offsets.items()}

    def _output(self, out: Dict[str, Tensor], x: Dict[str, Tensor],
                item_rows: Optional[Dict[str, Tensor]] = None) -> RecOutput:
        for t in (USER, ITEM):
            if t not in out:
                raise KeyError(f"PyGBackbone: the encoder returned no '{t}' table (it returns "
                               f"{sorted(out)})")
        if callable(self.modality_outputs):
            picked = self.modality_outputs(out)
            mods = {m: ModalityOutput(item=v[0], user=v[1]) if isinstance(v, (tuple, list))
                    else ModalityOutput(item=v) for m, v in picked.items()}
        else:
            names, mods = dict(self.modality_outputs or {}), {}
            for m in self.modalities:
                key = names.get(m, m)
                if key not in out:
                    raise KeyError(f"PyGBackbone: modality '{m}' reads the encoder output "
                                   f"'{key}', which it does not return (it returns "
                                   f"{sorted(out)})")
                table = out[key]
                if item_rows is not None and key in item_rows:
                    table = _align(table, item_rows[key], out[ITEM].size(0))
                mods[m] = ModalityOutput(item=table)
        return RecOutput(user=out[USER], item=out[ITEM], modalities=mods,
                         extras={'user_ego': x[USER], 'item_ego': x[ITEM]})

    def _edges(self) -> Dict[tuple, Tensor]:
        return {et: getattr(self, f'edges_{n}') for n, et in enumerate(self.edge_types)}

    # -- full graph and sampled subgraphs -----------------------------------------------
    def forward(self) -> RecOutput:
        r"""The full tables: the encoder over the whole training graph (used for
        evaluation always, and for training without :obj:`num_neighbors`)."""
        x = self._inputs()
        return self._output(self._encode(x, self._edges()), x)

    def forward_batch(self, batch: BPRBatch) -> Tuple[RecOutput, BPRBatch]:
        r"""Without :obj:`num_neighbors`: the full tables. With it: the encoder over the
        subgraph that PyG's :class:`~torch_geometric.loader.LinkNeighborLoader` samples
        around the batch's (user, positive) and (user, negative) pairs (the negatives are
        the trainer's own BPR negatives), and the batch re-indexed into its tables."""
        if self.num_neighbors is None or not self.training:
            return self.forward(), batch
        from torch_geometric.loader import LinkNeighborLoader
        b = batch.users.numel()
        pairs = torch.stack([torch.cat([batch.users, batch.users]),
                             torch.cat([batch.pos, batch.neg])]).cpu()
        loader = LinkNeighborLoader(self._graph, self.num_neighbors,
                                    edge_label_index=(RATES, pairs), batch_size=2 * b,
                                    neighbor_sampler=self._sampler)
        sub = loader(torch.arange(2 * b))
        device = self.user_emb.device
        n_id = {t: sub[t].n_id.to(device) for t in self.node_types if 'n_id' in sub[t]}
        for t in self.node_types:  # a type the sampler did not reach: no rows
            n_id.setdefault(t, torch.empty(0, dtype=torch.long, device=device))
        edges = {et: sub[et].edge_index.to(device) for et in self.edge_types
                 if et in sub.edge_types and 'edge_index' in sub[et]}
        x = self._inputs(n_id)
        item_rows = {m: (n_id[m], n_id[ITEM]) for m in self.modalities}
        out = self._output(self._encode(x, edges), x, item_rows)
        label = sub[RATES].edge_label_index.to(device)
        return out, BPRBatch(label[0, :b], label[1, :b], label[1, b:])

    def regularizer(self, out: RecOutput, batch: BPRBatch) -> Tensor:
        if self.reg_weight == 0:
            return out.user.new_zeros(())
        users, items = out.extras['user_ego'], out.extras['item_ego']
        rows = batch.rows(users, items)
        return self.reg_weight * emb_loss(rows, batch.users.numel())

    def extra_repr(self) -> str:
        return (f'{super().extra_repr()}, mode={self.mode}, modalities={self.modalities}, '
                f'embedding_dim={self.embedding_dim}')


def require_neighbor_sampling() -> None:
    r"""Raise :class:`ImportError` with the install command when PyG's neighbour sampler
    has neither of its backends (pyg-lib or torch-sparse)."""
    import torch_geometric.typing as pyg_typing
    if pyg_typing.WITH_PYG_LIB or pyg_typing.WITH_TORCH_SPARSE:
        return
    version = torch.__version__.split('+')[0]
    cuda = (f"cu{torch.version.cuda.replace('.', '')}" if torch.version.cuda else 'cpu')
    raise ImportError(
        'Mini-batch training samples neighbours with PyG, which needs pyg-lib or '
        'torch-sparse, and neither is installed. Install one the usual PyG way: '
        f'pip install pyg-lib -f https://data.pyg.org/whl/torch-{version}+{cuda}.html '
        '(or: pip install torch-sparse, which builds from source when no wheel matches). '
        'Full-graph training (num_neighbors=None) needs neither.')


def _align(table: Tensor, rows: Tuple[Tensor, Tensor], num_items: int) -> Tensor:
    r"""A sampled modality table re-indexed to the subgraph's items: row :math:`k` holds the
    modality node of the subgraph's :math:`k`-th item (zeros where the sampler did not
    reach it; every seed item is reached with a fan-out of at least one)."""
    modality_ids, item_ids = rows
    size = int(max(modality_ids.max().item() if modality_ids.numel() else 0,
                   item_ids.max().item() if item_ids.numel() else 0)) + 1
    where = torch.full((size, ), -1, dtype=torch.long, device=table.device)
    where[modality_ids] = torch.arange(modality_ids.numel(), device=table.device)
    at = where[item_ids]
    out = table.new_zeros(num_items, table.size(1))
    found = at >= 0
    return out.index_copy(0, torch.nonzero(found).flatten(), table[at[found]])
