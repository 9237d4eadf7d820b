r"""LGMRec: local (collaborative + modality) graph embeddings and global hypergraph
embeddings over learned modality hyperedges."""
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mrdib_pyg.data.derived import GraphSpec, UserItemGraph
from mrdib_pyg.data.sampling import BPRBatch
from mrdib_pyg.nn.conv.hypergraph import GlobalHypergraphEmbedding
from mrdib_pyg.nn.conv.lg_propagation import LGPropagation
from mrdib_pyg.nn.conv.modality_graph import ModalityGraphEmbedding
from mrdib_pyg.nn.conv.sparse_op import SparseOperator
from mrdib_pyg.nn.loss import emb_loss
from mrdib_pyg.nn.models.base import MultimodalRecommender, mmrec_modality_order
from mrdib_pyg.nn.models.registry import register_model
from mrdib_pyg.nn.output import ModalityOutput, RecOutput

__all__ = ['LGMRec', 'table_info_nce']


def table_info_nce(anchor: Tensor, positive: Tensor, candidates: Tensor,
                   temperature: float,
                   factors: Optional[Tuple[Tensor, Tensor]] = None) -> Tensor:
    r"""LGMRec's InfoNCE (MMRec's ``ssl_triple_loss``): row :math:`n` of :obj:`anchor` must
    pick row :math:`n` of :obj:`positive` against **every** row of :obj:`candidates` (a
    full table, the positive's own row included), summed over the rows,

    .. math::
        \mathcal{L} = -\sum_{n} \log
        \frac{\exp(\hat{\mathbf{a}}_n^\top \hat{\mathbf{p}}_n / \tau)}
             {\sum_{k} \exp(\hat{\mathbf{a}}_n^\top \hat{\mathbf{c}}_k / \tau)},
        \qquad \hat{\mathbf{x}} = \mathbf{x} / \|\mathbf{x}\|.

    Unlike MGCN's in-batch :func:`~mrdib_pyg.nn.models.mgcn.info_nce` (mean over the
    batch, negatives from the batch) the negatives are the whole table and the rows are
    summed.

    The :math:`B \times N` logits dominate LGMRec's step. Two exact rewrites keep them
    cheap: :math:`1/\tau` scales the :math:`B` anchors instead of the :math:`B \times N`
    logits, and a low-rank table :math:`\mathbf{C} = \mathbf{H}\mathbf{Z}`
    (:obj:`factors=(H, Z)`, :math:`[N, K]` and :math:`[K, d]`: the hypergraph tables) gives
    the logits as :math:`(\hat{\mathbf{A}}\mathbf{Z}^\top)(\mathbf{D}^{-1}\mathbf{H})^\top`
    (:math:`D` = the row norms of :math:`\mathbf{C}`), :math:`BNK` instead of :math:`BNd`
    multiply-adds, used when :math:`K < d`. As the cosine logits are bounded by
    :math:`1/\tau`, the log-sum-exp needs no max shift for :math:`\tau \ge 0.02` (MMRec
    takes the log of a ratio of exponentials; all forms agree to float precision).

    Args:
        anchor (Tensor): :obj:`[B, d]`.
        positive (Tensor): :obj:`[B, d]`, row-aligned with :obj:`anchor`.
        candidates (Tensor): :obj:`[N, d]`.
        temperature (float): :math:`\tau`.
        factors (tuple, optional): :obj:`(H, Z)` with :obj:`candidates == H @ Z`.
    """
    a = F.normalize(anchor, dim=1) / temperature
    pos = (a * F.normalize(positive, dim=1)).sum(-1)
    if factors is not None and factors[0].size(1) < candidates.size(1):
        assign, state = factors
        norms = candidates.norm(dim=1, keepdim=True).clamp_min(1e-12)
        left, right = a @ state.t(), (assign / norms).t()
    else:
        left, right = a, F.normalize(candidates, dim=1).t()
    if temperature >= 0.02:  # |logits| <= 1/tau <= 50: exp cannot overflow
        lse = _ExpMatmulSum.apply(left, right.contiguous()).log()
    else:
        lse = torch.logsumexp(left @ right, dim=1)
    return (lse - pos).sum()


class _ExpMatmulSum(torch.autograd.Function):
    r""":math:`s_b = \sum_n \exp((\mathbf{L}\mathbf{R})_{bn})` holding one :math:`B \times N`
    table: the exponentials are formed in place and scaled in place by the incoming
    gradient in the backward pass (autograd would allocate two more tables of the step's
    largest size). :math:`\mathbf{R}` is contiguous :math:`[K, N]`, so both backward
    products are wide ones (narrow-output BLAS products are several times slower on CPU).
    The table is consumed by the backward pass: a second backward raises."""

    @staticmethod
    def forward(ctx, left: Tensor, right: Tensor) -> Tensor:
        table = (left @ right).exp_()
        ctx.save_for_backward(left, right)
        ctx.table = table
        return table.sum(1)

    @staticmethod
    def backward(ctx, grad: Tensor):
        left, right = ctx.saved_tensors
        table = ctx.table
        if table is None:
            raise RuntimeError('table_info_nce: backward through the same loss twice is '
                               'not supported (its [B, N] table is freed on the first)')
        ctx.table = None
        table.mul_(grad.unsqueeze(1))
        grad_left = table @ right.t() if ctx.needs_input_grad[0] else None
        grad_right = left.t() @ table if ctx.needs_input_grad[1] else None
        return grad_left, grad_right


@register_model('lgmrec', 'LGMRec: LightGCN + per-modality graph embeddings (local) and '
                          'Gumbel-softmax modality hypergraphs (global) (MMRec LGMRec)')
class LGMRec(MultimodalRecommender):
    r"""LGMRec from `"LGMRec: Local and Global Graph Learning for Multimodal
    Recommendation" <https://arxiv.org/abs/2312.16400>`_ (AAAI 2024), as MMRec implements it.

    **Collaborative graph embedding (CGE)**: LightGCN-mean over :math:`L_{ui}` layers of
    the symmetric-normalised user–item adjacency :math:`\hat{A}`,
    :math:`\mathbf{C} = \frac{1}{L_{ui}+1}\sum_{l=0}^{L_{ui}} \hat{A}^l [\mathbf{E}_U;
    \mathbf{E}_I]` (:obj:`cf_model='mf'`: :math:`\mathbf{C} = [\mathbf{E}_U;
    \mathbf{E}_I]`).

    **Modality graph embedding (MGE)** per modality :math:`m`
    (:class:`~mrdib_pyg.nn.conv.modality_graph.ModalityGraphEmbedding`): projected raw item
    features, users as the mean of their items, propagated :math:`L_{mm}` times (last layer),
    :math:`\mathbf{M}^m = \hat{A}^{L_{mm}} [\mathbf{D}_U^{-1}\mathbf{R}\,\mathbf{F}_m
    \mathbf{W}_m;\ \mathbf{F}_m \mathbf{W}_m]`.

    **Global hypergraph embedding (GHE)** per modality
    (:class:`~mrdib_pyg.nn.conv.hypergraph.GlobalHypergraphEmbedding`): :math:`K` learned
    hyperedges, item assignments :math:`\mathbf{H}^m_I = \operatorname{GumbelSoftmax}_\tau
    (\mathbf{F}_m \mathbf{W}^m_h)`, user assignments :math:`\mathbf{H}^m_U =
    \operatorname{GumbelSoftmax}_\tau(\mathbf{R}\,\mathbf{F}_m \mathbf{W}^m_h)` (raw 0/1
    :math:`\mathbf{R}`: the sum of the items' logits), dropped out with keep rate
    :math:`\rho` in training, and :math:`L_h` hypergraph passes over the CGE item table:
    :math:`\mathbf{Z} = \tilde{\mathbf{H}}_I^{m\top}\mathbf{X}`,
    :math:`\mathbf{X} \leftarrow \tilde{\mathbf{H}}^m_I \mathbf{Z}` (from
    :math:`\mathbf{X} = \mathbf{C}_I`), :math:`\mathbf{G}^m = [\tilde{\mathbf{H}}^m_U
    \mathbf{Z};\ \mathbf{X}]`.

    **Output**:

    .. math::
        \mathbf{E} = \underbrace{\mathbf{C} + \sum_m \operatorname{norm}(\mathbf{M}^m)
        }_{\text{local}} + \alpha\, \operatorname{norm}\Big(\sum_m \mathbf{G}^m\Big),
        \qquad \hat{y}_{ui} = \mathbf{e}_u^\top \mathbf{e}_i

    (:math:`\operatorname{norm}` = row-wise L2 normalisation).

    **Loss** on a batch :math:`(u, i^+, i^-)` of size :math:`B`:

    .. math::
        \mathcal{L} = -\overline{\log\sigma(\hat{y}_{ui^+} - \hat{y}_{ui^-})}
        + \beta\sum_{(a,b)}\Big[\mathrm{NCE}_\tau(\mathbf{G}^a_{U}[u], \mathbf{G}^b_{U}[u],
        \mathbf{G}^b_U) + \mathrm{NCE}_\tau(\mathbf{G}^a_I[i^+], \mathbf{G}^b_I[i^+],
        \mathbf{G}^b_I)\Big]
        + \lambda \frac{\|\mathbf{E}_u\|_F + \|\mathbf{E}_{i^+}\|_F + \|\mathbf{E}_{i^-}\|_F}{B}

    with :func:`table_info_nce` (negatives: the whole user or item table, summed over the
    batch rows, :math:`\tau = 0.2`), the plain (not squared) Frobenius norms of the final
    batch rows (:func:`~mrdib_pyg.nn.loss.emb_loss`), :math:`\beta` = :obj:`cl_weight`,
    :math:`\lambda` = :obj:`reg_weight`. The pair :math:`(a, b)` is MMRec's (anchor image,
    positive and negatives text); with more modalities every pair of MMRec's canonical
    order (text, image, then the others) contributes, the later one as anchor.

    **Per-modality outputs** (for plug-ins such as MRdIB): :obj:`ModalityOutput(item=
    M^m_I, user=M^m_U)`, the modality's local MGE tables *before* their L2 normalisation
    (the representation built from the modality alone; the normalised rows are what the
    local embedding adds). The hypergraph tables are in :obj:`extras` (``hyper_user/<m>``,
    ``hyper_item/<m>``, and their factors ``hyper_assign_user/<m>``,
    ``hyper_assign_item/<m>``, ``hyper_state/<m>``), with ``cge`` (:math:`\mathbf{C}`).

    MMRec's defaults (``LGMRec.yaml``, Baby's block; grids take their single values):
    embedding 64, feat_embed_dim 64, cf_model lightgcn, :obj:`n_ui_layers=2`,
    :obj:`n_mm_layers=2`, :obj:`n_hyper_layer=1`, :obj:`hyper_num=4`, :obj:`keep_rate=0.5`,
    :obj:`alpha=0.3`, :obj:`cl_weight=1e-4`, :obj:`reg_weight=1e-6`, :math:`\tau = 0.2`
    (hard-coded in MMRec, for both the Gumbel-softmax and the InfoNCE). The yaml's comments
    give Sports: :obj:`n_hyper_layer=1, hyper_num=4, keep_rate=0.4, alpha=0.6`; Clothing:
    :obj:`n_hyper_layer=2, hyper_num=64, keep_rate=0.2, alpha=0.2`. Training: MMRec's
    global Adam lr :math:`10^{-3}` without decay (the yaml sets none, so
    :attr:`train_defaults` is empty). Initialisation: Xavier-uniform for the ID tables,
    :math:`\mathbf{W}_m` and :math:`\mathbf{W}^m_h`; the raw features are frozen, as in
    MMRec.

    **Randomness.** Every training forward pass draws Gumbel noise (all modalities' item
    then user assignments, in :attr:`modalities` order) and then the dropout masks (per
    modality, items then users); MMRec also draws the Gumbel noise in evaluation, and so do
    we unless :obj:`eval_noise=False` (noise-free :math:`\operatorname{softmax}(\cdot/\tau)`
    assignments, deterministic scores).

    Deliberate differences from MMRec:

    * **Random stream.** By default (:obj:`noise_rng='model'`) forward pass :math:`n`
      draws from a generator seeded with :obj:`noise_seed + n` (:obj:`noise_seed` is
      taken from the global stream at construction, so seeding the run fixes it; it and
      the counter are saved in the state dict): two models built with the same seed give
      the same tables, and nothing else consuming the global stream shifts the draws.
      MMRec draws from torch's global stream; :obj:`noise_rng='global'` does too, with the
      same torch calls in the same order given :obj:`order=['image', 'text']` (MMRec's
      ``v`` then ``t``), so at the same random state the tables are MMRec's to float
      precision (``benchmarks/equivalence/lgmrec.py``). The distributions are MMRec's
      either way.
    * **Evaluation draws once per evaluation.** MMRec calls ``forward`` (new Gumbel noise)
      for every block of 4096 evaluated users; our :meth:`score` caches one evaluation
      forward for all users. Each user's score has MMRec's distribution.
    * **Any set of modalities.** MMRec needs image and text (with one modality it skips
      MGE and GHE and its loss fails); here every modality gets its MGE and GHE, one
      modality has no contrastive term, more than two contrast every pair (above).
    * **One propagation for CGE and MGE.** :math:`\hat{A}` is applied to the concatenation
      :math:`[\mathbf{E}; \mathbf{M}^{(0)}_{m_1}; \dots]` (one CSR product per layer instead
      of one per table; same numbers to float precision).
    * The graphs are declared (:meth:`graph_specs`): the row-normalised
      :math:`\mathbf{D}_U^{-1}\mathbf{R}` replaces MMRec's
      :math:`\mathbf{R}/(d_u + 10^{-7})` (relative difference :math:`10^{-7}/d_u`), and
      duplicate training pairs count once in :math:`\mathbf{R}` (MMRec's hyperedge sum
      would count them twice; MMRec's datasets have none).
    * **Cheaper InfoNCE, same values.** The :math:`B \times U` logits dominate a step;
      :func:`table_info_nce` forms them from the rank-:math:`K` factors of the hypergraph
      tables when :math:`K < d` (Baby: 4 vs 64), holds one :math:`B \times U` table
      (exponentials and their gradient in place) and keeps every BLAS product wide. On a
      Baby-sized synthetic set (CPU, one thread, batch 2048) a training step takes about
      0.5x MMRec's time; values agree to float precision (see the equivalence script).
    * (Not a difference.) The BPR term is :math:`-\log\sigma`, as in MMRec's
      ``lgmrec.py``, not the :math:`10^{-10}`-guarded :func:`~mrdib_pyg.nn.loss.bpr_loss`.

    Args:
        num_users (int), num_items (int): table sizes.
        features (dict): modality name :math:`\rightarrow` :obj:`[I, F_m]` raw features
            (frozen).
        adj (Tensor): :obj:`[U+I, U+I]` sym-normalised user–item adjacency :math:`\hat{A}`.
        user_item (Tensor): :obj:`[U, I]` raw 0/1 interaction matrix :math:`\mathbf{R}`.
        user_mean (Tensor): :obj:`[U, I]` row-normalised :math:`\mathbf{D}_U^{-1}\mathbf{R}`.
        embedding_dim (int, optional): :math:`d`. (default: :obj:`64`)
        feat_embed_dim (int, optional): width of :math:`\mathbf{W}_m`; must equal :math:`d`.
            (default: :obj:`64`)
        cf_model (str, optional): :obj:`'lightgcn'` or :obj:`'mf'`. (default:
            :obj:`'lightgcn'`)
        n_ui_layers (int, optional): :math:`L_{ui}`. (default: :obj:`2`)
        n_mm_layers (int, optional): :math:`L_{mm}`. (default: :obj:`2`)
        n_hyper_layer (int, optional): :math:`L_h \ge 1`. (default: :obj:`1`)
        hyper_num (int, optional): :math:`K`. (default: :obj:`4`)
        keep_rate (float, optional): :math:`\rho`. (default: :obj:`0.5`)
        alpha (float, optional): :math:`\alpha`. (default: :obj:`0.3`)
        cl_weight (float, optional): :math:`\beta`. (default: :obj:`1e-4`)
        reg_weight (float, optional): :math:`\lambda`. (default: :obj:`1e-6`)
        tau (float, optional): :math:`\tau` of the Gumbel-softmax and the InfoNCE.
            (default: :obj:`0.2`)
        eval_noise (bool, optional): draw Gumbel noise in evaluation (MMRec).
            (default: :obj:`True`)
        noise_rng (str, optional): :obj:`'model'` or :obj:`'global'` (MMRec's).
            (default: :obj:`'model'`)
        noise_seed (int, optional): base seed of :obj:`'model'` (default: drawn from the
            global stream).
        backend (str, optional): sparse backend of
            :class:`~mrdib_pyg.nn.conv.SparseOperator`. (default: :obj:`'csr'`)
        order (list, optional): modality order (default: MMRec's, text first).
    """

    def __init__(self, num_users: int, num_items: int, features: Mapping[str, Tensor],
                 adj: Tensor, user_item: Tensor, user_mean: Tensor,
                 embedding_dim: int = 64, feat_embed_dim: int = 64,
                 cf_model: str = 'lightgcn', n_ui_layers: int = 2, n_mm_layers: int = 2,
                 n_hyper_layer: int = 1, hyper_num: int = 4, keep_rate: float = 0.5,
                 alpha: float = 0.3, cl_weight: float = 1e-4, reg_weight: float = 1e-6,
                 tau: float = 0.2, eval_noise: bool = True, noise_rng: str = 'model',
                 noise_seed: Optional[int] = None, backend: str = 'csr',
                 order: Optional[Sequence[str]] = None):
        super().__init__(num_users, num_items, features, order)
        name = self.__class__.__name__
        if feat_embed_dim != embedding_dim:
            raise ValueError(f"'{name}' adds the modality embeddings to the ID embeddings, "
                             f"so feat_embed_dim must equal embedding_dim (got "
                             f"{feat_embed_dim} and {embedding_dim})")
        if cf_model not in ('lightgcn', 'mf'):
            raise ValueError(f"'{name}' got unknown cf_model '{cf_model}' (expected "
                             f"'lightgcn' or 'mf')")
        if noise_rng not in ('model', 'global'):
            raise ValueError(f"'{name}' got unknown noise_rng '{noise_rng}' (expected "
                             f"'model' or 'global')")
        if n_ui_layers < 0 or n_mm_layers < 0:
            raise ValueError(f"'{name}' needs n_ui_layers >= 0 and n_mm_layers >= 0 (got "
                             f"{n_ui_layers} and {n_mm_layers})")
        if cl_weight < 0 or reg_weight < 0:
            raise ValueError(f"'{name}' needs cl_weight >= 0 and reg_weight >= 0 (got "
                             f"{cl_weight} and {reg_weight})")
        n = num_users + num_items
        self.check_graph_shapes({'adj': (adj, (n, n)),
                                 'user_item': (user_item, (num_users, num_items)),
                                 'user_mean': (user_mean, (num_users, num_items))})
        self.embedding_dim = embedding_dim
        self.cf_model = cf_model
        self.n_ui_layers = n_ui_layers if cf_model == 'lightgcn' else 0
        self.alpha = float(alpha)
        self.cl_weight = float(cl_weight)
        self.reg_weight = float(reg_weight)
        self.tau = float(tau)
        self.noise_rng = noise_rng

        self.user_emb = nn.Parameter(torch.empty(num_users, embedding_dim))
        self.item_emb = nn.Parameter(torch.empty(num_items, embedding_dim))
        self.mge = nn.ModuleDict({m: ModalityGraphEmbedding(self.feature_dims[m],
                                                            feat_embed_dim, n_mm_layers)
                                  for m in self.modalities})
        self.ghe = nn.ModuleDict({m: GlobalHypergraphEmbedding(
            self.feature_dims[m], hyper_num, n_hyper_layer, tau, keep_rate, eval_noise)
            for m in self.modalities})
        self.graph = SparseOperator(adj, symmetric=True, backend=backend)
        self.user_item = SparseOperator(user_item, backend=backend)
        self.user_mean = SparseOperator(user_mean, backend=backend)
        # CGE and every MGE run on the same graph: one propagation of their concatenation.
        self.propagation = LGPropagation(max(self.n_ui_layers, n_mm_layers), combine='last')
        canonical = mmrec_modality_order(self.modalities)
        self.cl_pairs: List[Tuple[str, str]] = [(canonical[j], canonical[i])
                                                for i in range(len(canonical))
                                                for j in range(i + 1, len(canonical))]
        self.reset_parameters()
        if noise_seed is None:  # from the global stream: seeding the run fixes it
            noise_seed = int(torch.randint(2**62, ()))
        self.register_buffer('noise_seed', torch.tensor(int(noise_seed)))
        self.register_buffer('noise_step', torch.tensor(0))

    @classmethod
    def graph_specs(cls, modalities: Sequence[str] = (), **kwargs) -> Dict[str, GraphSpec]:
        r""":math:`\hat{A}` (:obj:`adj`), the raw :math:`\mathbf{R}` (:obj:`user_item`, the
        hyperedge sums) and :math:`\mathbf{D}_U^{-1}\mathbf{R}` (:obj:`user_mean`, the MGE
        user features), all from the training interactions."""
        return {'adj': UserItemGraph(norm='sym'),
                'user_item': UserItemGraph(norm='none', block='user_item'),
                'user_mean': UserItemGraph(norm='row', block='user_item')}

    def reset_parameters(self) -> None:
        nn.init.xavier_uniform_(self.user_emb)
        nn.init.xavier_uniform_(self.item_emb)
        for m in self.modalities:
            self.mge[m].reset_parameters()
            self.ghe[m].reset_parameters()

    # -- forward ------------------------------------------------------------------------
    def noise_generator(self) -> Optional[torch.Generator]:
        r"""The random stream of the next noisy forward pass: a generator seeded with
        :obj:`noise_seed + noise_step` (then :obj:`noise_step` advances), or :obj:`None`
        (torch's global stream) with :obj:`noise_rng='global'`."""
        if self.noise_rng == 'global':
            return None
        generator = torch.Generator(device=self.user_emb.device)
        generator.manual_seed(int(self.noise_seed) + int(self.noise_step))
        self.noise_step += 1
        return generator

    def forward(self) -> RecOutput:
        U, d = self.num_users, self.embedding_dim
        noisy = self.training or any(g.eval_noise for g in self.ghe.values())
        gen = self.noise_generator() if noisy else None
        # MMRec's draw order: every modality's Gumbel noise first, then the dropouts.
        assign = {m: self.ghe[m].assign(self.feature(m), self.user_item, gen)
                  for m in self.modalities}

        ego = torch.cat([self.user_emb, self.item_emb], dim=0)
        blocks = [ego] if self.n_ui_layers > 0 else []
        blocks += [self.mge[m].initial(self.feature(m), self.user_mean)
                   for m in self.modalities]
        # split (not sliced): each layer's backward then assembles one [N, w] gradient
        layers = [h.split(d, dim=1)
                  for h in self.propagation.layers(torch.cat(blocks, dim=1), self.graph)]
        if self.n_ui_layers > 0:
            cge = torch.stack([h[0] for h in layers[:self.n_ui_layers + 1]]).mean(0)
            offset = 1
        else:
            cge, offset = ego, 0
        mge = {m: layers[self.mge[m].num_layers][offset + k]
               for k, m in enumerate(self.modalities)}
        local = cge + sum(F.normalize(mge[m]) for m in self.modalities)

        hyper, extras = None, {'cge': cge}
        for m in self.modalities:
            hu, hi, (ai, au, z) = self.ghe[m].propagate(*assign[m], cge[U:], gen,
                                                        return_factors=True)
            extras[f'hyper_user/{m}'], extras[f'hyper_item/{m}'] = hu, hi
            # rank-K factors of both tables (the InfoNCE's fast path)
            extras[f'hyper_assign_user/{m}'], extras[f'hyper_assign_item/{m}'] = au, ai
            extras[f'hyper_state/{m}'] = z
            g = torch.cat([hu, hi], dim=0)
            hyper = g if hyper is None else hyper + g
        final = local + self.alpha * F.normalize(hyper)
        user, item = final.split([U, self.num_items])
        return RecOutput(user=user, item=item,
                         modalities={m: ModalityOutput(item=mge[m][U:], user=mge[m][:U])
                                     for m in self.modalities},
                         extras=extras)

    # -- loss ---------------------------------------------------------------------------
    def regularizer(self, out: RecOutput, batch: BPRBatch) -> Tensor:
        r""":math:`\lambda` times the summed Frobenius norms of the batch's final user,
        positive and negative rows, over the batch size (MMRec's ``reg_loss``)."""
        rows = batch.rows(out.user, out.item)
        return self.reg_weight * emb_loss(rows, batch.users.numel())

    def contrastive_loss(self, out: RecOutput, batch: BPRBatch) -> Tensor:
        r"""The hypergraph InfoNCE (unweighted; :meth:`loss` multiplies by
        :obj:`cl_weight`): for every pair :math:`(a, b)` of :attr:`cl_pairs`, the batch's
        users in :math:`\mathbf{G}^a_U` against all of :math:`\mathbf{G}^b_U`, plus the
        batch's positive items in :math:`\mathbf{G}^a_I` against all of
        :math:`\mathbf{G}^b_I`."""
        x = out.extras
        total = out.user.new_zeros(())
        for a, b in self.cl_pairs:
            ub, ib, z = x[f'hyper_user/{b}'], x[f'hyper_item/{b}'], x[f'hyper_state/{b}']
            total = total + table_info_nce(x[f'hyper_user/{a}'].index_select(0, batch.users),
                                           ub.index_select(0, batch.users), ub, self.tau,
                                           (x[f'hyper_assign_user/{b}'], z))
            total = total + table_info_nce(x[f'hyper_item/{a}'].index_select(0, batch.pos),
                                           ib.index_select(0, batch.pos), ib, self.tau,
                                           (x[f'hyper_assign_item/{b}'], z))
        return total

    def loss(self, out: RecOutput, batch: BPRBatch) -> Tensor:
        u, p, n = batch.rows(out.user, out.item)
        loss = -F.logsigmoid((u * p).sum(-1) - (u * n).sum(-1)).mean()
        if self.cl_weight and self.cl_pairs:
            loss = loss + self.cl_weight * self.contrastive_loss(out, batch)
        if self.reg_weight:
            loss = loss + self.regularizer(out, batch)
        return loss

    def extra_repr(self) -> str:
        g = next(iter(self.ghe.values()))
        return (f'{super().extra_repr()}, embedding_dim={self.embedding_dim}, '
                f'cf_model={self.cf_model!r}, n_ui_layers={self.n_ui_layers}, '
                f'hyper_num={g.assignment.num_hyperedges}, keep_rate={g.conv.keep_rate}, '
                f'alpha={self.alpha}, cl_weight={self.cl_weight}, '
                f'reg_weight={self.reg_weight}, noise_rng={self.noise_rng!r}')
