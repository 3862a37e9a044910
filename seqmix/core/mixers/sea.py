"""SEA (Lee et al. 2023, "SEA: Sparse Linear Attention with Estimated Attention Mask"): a linear-attention
estimate of the attention matrix, compressed to a fixed width, picks per query block the top-k key blocks;
exact softmax attention runs over those.

The parameters are :class:`~seqmix.core.mixers.softmax.SoftmaxAttention`'s (this class subclasses it through
:class:`~seqmix.core.mixers.key_blocks.BlockSelectingAttention`) plus the estimator's projection
``estimator: [H, K, R]``. A trained softmax mixer's ``state_dict`` loads with ``strict=False``: the only
missing key is ``estimator``, which keeps its initialisation (Performer's random features, below) until
:meth:`SEAAttention.estimator_loss` distils it.

What is built, per head (``q_i, k_j`` the projected, rotated query and key, ``K`` the head size; keys in
blocks of ``L = block_size``, queries in query blocks of ``b_q = query_block`` whose first query ``q0``
selects for the block, as in ``key_blocks.py``):

1. the estimator's feature map, Performer's positive random features (FAVOR+) through a learned
   projection ``W = estimator[h]`` (``R`` features, initialised ``N(0, 1)``, where the estimate is
   unbiased for ``exp(q . k / sqrt(K))``)::

       phi(x) = exp(x~ W - |x~|^2 / 2),   x~ = x / K^(1/4)

2. the estimated attention of ``q0``, kernel linear attention's weights, compressed: the estimated mass of
   a span of blocks ``[s, e)`` is ``A^(s, e) = phi(q0) . sum_{j in blocks s .. e-1} phi(k_j)`` (the per-key
   estimate summed over the span, from prefix sums of ``phi(k)`` over blocks: ``O(R)`` per span). The
   compressed row is ``W_c = width`` spans splitting the candidate blocks ``0 .. n - 1`` evenly (causal:
   the blocks finished before ``q0``'s);
3. the mask: the ``top_k`` spans of the compressed row, refined to blocks (each kept span halved and the
   ``top_k`` children by estimated mass kept, until every span is one block; with ``width >= n`` it is the
   exact top-k of the blocks' estimated masses), not differentiated;
4. sparse softmax attention of each query of the block over the kept blocks and the local blocks (those
   overlapping ``[p0, p0 + b_q)``; causal: keys up to the query).

``O(T R (W + k log(T / (W L))) / b_q)`` for the estimate and the mask, ``O(T k L D)`` for the attention.

Distillation (:meth:`SEAAttention.estimator_loss`): ``KL(A_i || A^_i)`` between the teacher's softmax rows
(the mixer's own q/k, frozen) and the per-key estimated rows, averaged over queries; only ``estimator`` learns.

Differs from the paper: the paper decodes the linear-attention output of every query into a ``T x K'``
compressed row with a CNN and interpolates its top-k back to ``T x T``; here the compressed row is the
estimate pooled over spans of blocks (no decoder), refined to key blocks, and shared by a query block
(chosen by its first query: causal, and a decoding step equals the forward). ``block_size=1,
query_block=1, width >= T`` is the per-key rule: each query attends the top-k keys of its estimate among
the keys before it, and itself. Left out: the paper's per-layer ``k`` schedule, cross attention and windows
(the patterns say so).

``impl="naive"``: the per-key estimate, pooled per block and per span, the selection by a plain loop, the
dense masked softmax (fp32). ``impl="chunk"`` (auto): the span masses from prefix sums (fp64, log space),
the selection vectorised over query blocks, the kept blocks gathered once per query block and attended with
block-local matrix products, in groups recomputed in the backward: never a ``T x S`` estimate or softmax.
``keys_attended`` / ``keys_visible`` count, summed over calls, the keys each query attended and could have.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seqmix.core.mixer import check_int, register_mixer
from seqmix.core.mixers.key_blocks import (BlockSelectingAttention, NodeScore, block_sparse_attention, first_queries,
                                           query_block_layout, select_blocks_naive)
from seqmix.kernels.attention import visible_keys_mask
from seqmix.kernels.common import compute_dtype


def sea_features(x: Tensor, estimator: Tensor) -> Tensor:
    """``log phi(x)`` of step 1: ``x: [B, H, T, K]``, ``estimator: [H, K, R]`` -> ``[B, H, T, R]``."""
    x = x * x.shape[-1] ** -0.25
    return torch.einsum("bhtk,hkr->bhtr", x, estimator.to(x.dtype)) - x.pow(2).sum(-1, keepdim=True) / 2


def sea_log_scores(fq: Tensor, fk: Tensor) -> Tensor:
    """``log(phi(q_i) . phi(k_j))`` from log-features ``fq: [B, H, T, R]``, ``fk: [B, H, S, R]`` -> ``[B, H, T, S]``.

    Each entry depends on ``q_i`` and ``k_j`` alone (a stabiliser per query and per key), so a step equals the
    forward; the row normalisation of step 2 does not change the ranking and is left to the callers that need it.
    """
    mq, mk = fq.amax(-1, keepdim=True), fk.amax(-1, keepdim=True)  # [B, H, T, 1], [B, H, S, 1]
    dots = (fq - mq).exp() @ (fk - mk).exp().transpose(-1, -2)  # [B, H, T, S], each in (0, R]
    return dots.clamp(min=torch.finfo(dots.dtype).tiny).log() + mq + mk.transpose(-1, -2)


def _log_add(a: list[float]) -> float:
    top = max(a)
    return top if top == -math.inf else top + math.log(sum(math.exp(x - top) for x in a))


def sea_attention_naive(q: Tensor, k: Tensor, v: Tensor, estimator: Tensor, *, causal: bool, top_k: int,
                        key_mask: Tensor | None, block_size: int, query_block: int, width: int,
                        lead: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """SEA by its definition: ``q: [B, H, T, K]`` (the last ``T`` of ``S`` positions), ``k: [B, H, S, K]``,
    ``v: [B, H, S, V]``, ``estimator: [H, K, R]``, ``key_mask: [B, S] | None``, ``lead: [B, H, K] | None`` (the
    first query of a query block begun before ``q``) -> ``(o: [B, H, T, V] fp32, attended: [B, H, T, S] bool)``.

    The estimated mass of a node of blocks is the sum of ``phi(q_rep) . phi(k_j)`` over its unmasked keys (fp64)."""
    dtype = compute_dtype(q)
    q, k, v = (x.to(dtype) for x in (q, k, v))
    b, h, t, dk = q.shape
    s, size = k.shape[2], block_size
    blocks = -(-s // size)
    visible = visible_keys_mask(t, s, causal=causal, key_mask=key_mask, device=q.device).expand(b, h, t, s)
    layout = query_block_layout(t, s, query_block)
    with torch.no_grad():
        reps = first_queries(q, layout, query_block, None if lead is None else lead.to(dtype))  # [B, H, nq, K]
        est = sea_log_scores(sea_features(reps.double(), estimator.double()),
                             sea_features(k.double(), estimator.double()))  # [B, H, nq, S] per key
        if key_mask is not None:
            est = est.masked_fill(~key_mask[:, None, None], -math.inf)
        mass = F.pad(est, (0, blocks * size - s), value=-math.inf).unflatten(-1, (blocks, size)).logsumexp(-1)
        mass = mass.tolist()  # [B, H, nq, N] -> nested lists: log estimated mass per block
    kept = torch.zeros(b, h, layout.count, blocks, dtype=torch.bool)  # [B, H, nq, N]
    for c in range(layout.count):
        p0 = (layout.first + c) * query_block
        n = p0 // size if causal else blocks
        local = range(p0 // size, min(p0 + query_block - 1, s - 1) // size + 1)  # blocks under the query block
        for bi in range(b):
            for hi in range(h):
                row = mass[bi][hi][c]
                chosen = select_blocks_naive(lambda start, end: _log_add(row[start:end]), n, width=width, k=top_k)
                for block in [*chosen, *local]:
                    kept[bi, hi, c, block] = True
    which = (torch.arange(s - t, s) // query_block - layout.first).to(q.device)  # [T] each query's block
    attended = kept.to(q.device)[:, :, which].repeat_interleave(size, -1)[..., :s] & visible  # [B, H, T, S]
    scores = torch.einsum("bhtk,bhsk->bhts", q, k) * dk ** -0.5  # [B, H, T, S]
    weights = torch.softmax(scores.masked_fill(~attended, -math.inf), -1).nan_to_num(0.0)  # no visible key -> 0
    return weights @ v, attended


def sea_node_scores(estimator: Tensor):
    """SEA's node score for :func:`~seqmix.core.mixers.key_blocks.block_sparse_attention`: the estimated mass
    ``log sum_{j in node} phi(rep) . phi(k_j)`` from prefix sums over blocks of ``sum_{j in b} phi(k_j)`` (fp64,
    in log space): ``O(N L R)`` once, then ``O(R)`` per node."""

    def prepare(kb: Tensor, token_ok: Tensor) -> NodeScore:
        b, h, blocks, size, _ = kb.shape
        fk = sea_features(kb.flatten(2, 3).double(), estimator.double())  # [B, H, N L, R]
        fk = fk.masked_fill(~token_ok.flatten(1)[:, None, :, None], -math.inf)  # [B, H, N L, R]
        per_block = fk.unflatten(2, (blocks, size)).logsumexp(3)  # [B, H, N, L, R] -> [B, H, N, R]
        prefix = F.pad(per_block.logcumsumexp(2), (0, 0, 1, 0), value=-math.inf)  # [B, H, N + 1, R]
        r = prefix.shape[-1]

        def score(reps: Tensor, start: Tensor, end: Tensor) -> Tensor:
            fq = sea_features(reps.double(), estimator.double())  # [B, H, g, R]
            hi, lo = (prefix.gather(2, i.flatten(2)[..., None].expand(-1, -1, -1, r)).view(*i.shape, r)
                      for i in (end, start))  # [B, H, g, m, R] log prefix sums at the ends and starts
            inside = torch.where(hi > lo, hi + torch.log1p(-torch.exp(lo - hi)), -math.inf)  # log(P[end] - P[start])
            mass = (fq[..., None, :] + inside).logsumexp(-1)  # [B, H, g, m]
            return mass.masked_fill(end <= start, -math.inf)

        return score

    return prepare


def sea_attention_chunk(q: Tensor, k: Tensor, v: Tensor, estimator: Tensor, *, causal: bool, top_k: int,
                        key_mask: Tensor | None, block_size: int, query_block: int, width: int,
                        lead: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The same attention: the selection vectorised over query blocks (prefix sums of the key features), the
    kept blocks gathered once per query block. Arguments as :func:`sea_attention_naive`; returns
    ``(o: [B, H, T, V] fp32, attended per query: [B, H, T])``."""
    return block_sparse_attention(q, k, v, prepare=sea_node_scores(estimator.detach()), causal=causal,
                                  block_size=block_size, query_block=query_block, width=width, top_k=top_k,
                                  key_mask=key_mask, lead=lead)


@register_mixer("sea")
class SEAAttention(BlockSelectingAttention):
    """Softmax attention over the top-k key blocks of a learned linear-attention estimate (softmax's parameters
    and an estimator).

    Args:
        top_k: key blocks each query block attends besides its local blocks, >= 1; ``top_k >=`` the number of
            blocks is softmax attention.
        block_size: ``L``, keys per block (the unit selected and gathered), >= 1.
        query_block: ``b_q``, queries sharing one selection (made by the block's first query), >= 1;
            None: ``block_size``.
        width: ``W``, columns of the compressed estimate (the candidate blocks split into ``W`` spans), >= 1.
        features: ``R``, the estimator's random features per head, >= 1.
        sparse: False: dense softmax attention (the same parameters); settable on a trained model.
        rotary: rotary positions on queries and keys, as :class:`SoftmaxAttention`'s.
    """

    patterns = frozenset({"causal_self", "noncausal_self"})
    impls = ("naive", "chunk")
    paper = "Lee et al. 2023, SEA: Sparse Linear Attention with Estimated Attention Mask"
    complexity = "O(T R (W + k log(T / (W L))) / b_q) estimate + O(T k L D) attention (k blocks of L per query)"
    test_configs = ({"n_heads": 2, "top_k": 2, "block_size": 4, "width": 4, "features": 4},
                    {"n_heads": 2, "top_k": 5, "block_size": 1, "query_block": 1, "width": 64, "features": 4})

    def __init__(self, d_model: int, *, n_heads: int = 4, causal: bool = True, impl: str = "auto",
                 rotary: bool = False, top_k: int = 4, block_size: int = 16, query_block: int | None = None,
                 width: int = 64, features: int = 32, sparse: bool = True):
        super().__init__(d_model, n_heads=n_heads, causal=causal, impl=impl, rotary=rotary, block_size=block_size,
                         query_block=query_block)
        name = type(self).__name__
        check_int(name, "top_k", top_k, meaning="key blocks attended per query block, e.g. 4")
        check_int(name, "width", width, meaning="columns of the compressed estimate, e.g. 64")
        check_int(name, "features", features, meaning="the estimator's random features per head, e.g. 32")
        if not isinstance(sparse, bool):
            raise ValueError(f"{name}: sparse must be True (SEA's top-k) or False (dense softmax), got {sparse!r}")
        self.top_k = top_k
        self.width = width
        self.sparse = sparse
        self.estimator = nn.Parameter(torch.randn(n_heads, self.head_dim, features))  # [H, K, R] Performer's init

    def selecting(self) -> bool:
        return self.sparse

    def attend_selected(self, q, k, v, key_mask):
        form = sea_attention_naive if self.resolve_impl(q) == "naive" else sea_attention_chunk
        return form(q, k, v, self.estimator, causal=self.causal, top_k=self.top_k, key_mask=key_mask,
                    block_size=self.block_size, query_block=self.query_block, width=self.width, lead=self._lead)

    def estimator_loss(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """Distillation loss of the estimator on ``x: [B, T, D]`` (``mask: [B, T]`` key padding, True = keep):
        ``KL(A_i || A^_i)`` between the frozen teacher's softmax rows and the estimated rows, averaged over
        queries that see a key. Only ``estimator`` gets a gradient (the projections are the teacher)."""
        self.check_input(x, mask=mask)
        with torch.no_grad():
            q, k, _, key_mask, _ = self.queries_and_keys(x, context=None, mask=mask, state=None, return_state=False)
            q, k = q.float(), k.float()  # [B, H, T, K], [B, H, T, K]
            t = q.shape[2]
            visible = visible_keys_mask(t, t, causal=self.causal, key_mask=key_mask, device=q.device)  # [B|1,1,T,T]
            scores = q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5  # [B, H, T, T]
            teacher = torch.log_softmax(scores.masked_fill(~visible, -math.inf), -1)  # [B, H, T, T]
        est = sea_log_scores(sea_features(q, self.estimator), sea_features(k, self.estimator))  # [B, H, T, T]
        student = torch.log_softmax(est.masked_fill(~visible, -math.inf), -1)  # [B, H, T, T]
        visible = visible.expand_as(est)  # [B, H, T, T]
        terms = torch.where(visible, teacher.exp() * (teacher - student), 0.0)  # [B, H, T, T]
        rows = visible.any(-1)  # [B, H, T] queries that see a key
        return terms.sum(-1)[rows].mean()

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, top_k={self.top_k}, width={self.width}, "
                f"features={self.estimator.shape[-1]}, sparse={self.sparse}")
