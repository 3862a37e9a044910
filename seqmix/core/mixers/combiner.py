"""Combiner-Fixed (Ren et al. 2021, "Combiner: Full Attention Transformer with Sparse Computation Cost").

Combiner reads attention as a conditional expectation ``o_i = sum_j p(j|i) v_j`` and factorises
``p(j|i)`` so that every visible key keeps a non-zero probability at sub-quadratic cost. Combiner-Fixed
splits the sequence into spans ``Omega_r = {r s, ..., r s + s - 1}`` of ``s = span`` tokens. Query ``i``
(in span ``c = i // s``) attends

- directly to the keys of its own span (causal: up to itself), ``Omega_i^0``;
- indirectly to every other span ``r`` through one summary (causal: only spans that have ended,
  ``r < c``; non-causal: every ``r != c``), whose probability is split over the span's members:

    p(j|i) = exp(q_i . k_j / sqrt(K)) / Z_i                                      j in Omega_i^0
    p(j|i) = p(Omega_r|i) q(j|Omega_r),                                          j in Omega_r, r a summary
    p(Omega_r|i) = exp(q_i . kbar_r / sqrt(K) + log n_r) / Z_i,                  kbar_r = mean_{j in Omega_r} k_j
    q(j|Omega_r) = softmax_{j in Omega_r}(w . k_j / sqrt(K))                     (the local in-span softmax)

with ``Z_i`` the sum over the direct keys and the visible summaries, so each row of ``p`` sums to 1,
and ``o_i = sum_{j direct} p(j|i) v_j + sum_r p(Omega_r|i) vbar_r`` with ``vbar_r = sum_j q(j|Omega_r) v_j``.
This is the paper's factorisation ``p(j|i) = p(Omega_r|i) q(j|Omega_r)`` (its "Combiner-Fixed", with the
fixed-span partition of Sparse Transformer's fixed pattern). Choices stated here (the abstract gives no
formula for them): the summary key is the mean key of the span; ``q(j|Omega_r)`` scores the members
against ``w``, a learned query per head (zero at init: ``q`` uniform, ``vbar_r`` the mean value); a
summary's logit gets ``+ log n_r`` (it stands for ``n_r`` keys), so with equal keys inside each span
Combiner is full softmax attention exactly, and ``span=1`` is full softmax attention for any input.

Cost: ``s`` direct keys plus ``T / s`` summaries per query, ``O(T (s + T/s) K)``, which is
``O(T sqrt(T) K)`` at ``s ~ sqrt(T)``.

- ``impl="naive"``: the explicit ``T x S`` probability matrix ``P`` of the formulas above (one-hot span
  membership, no reshaping into blocks), then ``P @ V`` (:func:`combiner_probabilities`).
- ``impl="chunk"`` (auto): the span-blocked form, ``[s, s]`` direct scores per span and ``[T, N]``
  summary scores, one joint softmax over the two, no ``T x T`` matrix.

Left out: Combiner-Axial and the other variants (Mixture, Logsparse), rotary positions (a summary has no
single position), key masks, cross attention (patterns: causal and non-causal self). Decoding keeps the
plain :class:`~seqmix.core.mixer.KVCache` (``2 T D`` floats, as softmax attention; the summaries are
recomputed from it each step) so that ``step`` equals ``forward``.
"""

from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seqmix.core.layers import merge_heads
from seqmix.core.mixer import check_int, register_mixer
from seqmix.core.mixers.softmax import CachedAttention
from seqmix.kernels.common import compute_dtype

COMBINER_IMPLS = ("naive", "chunk")


def combiner_probabilities(q: Tensor, k: Tensor, w: Tensor, *, span: int, causal: bool) -> Tensor:
    """The expanded Combiner-Fixed probabilities ``P: [B, H, T, S]`` (rows sum to 1).

    ``q: [B, H, T, K]`` are the queries of the last ``T`` of the ``S`` positions of ``k: [B, H, S, K]``
    (``T < S`` when a KV cache holds earlier keys; non-causal: ``T == S``); ``w: [H, K]`` is the
    in-span query of ``q(j|Omega_r)``. Computed in fp32 (fp64 for fp64 inputs).
    """
    dtype = compute_dtype(q)
    q, k, w = q.to(dtype), k.to(dtype), w.to(dtype)
    t, s_len, scale = q.shape[2], k.shape[2], q.shape[-1] ** -0.5
    n_spans = -(-s_len // span)
    query_pos = torch.arange(t, device=q.device) + (s_len - t)  # [T] positions on the key axis
    key_pos = torch.arange(s_len, device=q.device)  # [S]
    query_span, key_span = query_pos // span, key_pos // span  # [T], [S]
    member = torch.arange(n_spans, device=q.device)[:, None] == key_span[None, :]  # [N, S]: j in Omega_r
    count = member.sum(1).to(dtype)  # [N] n_r
    k_bar = (member.to(dtype) @ k) / count[:, None]  # [N, S] @ [B, H, S, K] -> [B, H, N, K]
    member_logit = torch.einsum("bhsk,hk->bhs", k, w) * scale  # [B, H, S] w . k_j / sqrt(K)
    span_lse = member_logit[:, :, None, :].masked_fill(~member, float("-inf")).logsumexp(-1)  # [B, H, N]
    log_q = member_logit - span_lse[:, :, key_span]  # [B, H, S] log q(j | Omega_r(j))
    summary_logit = (q @ k_bar.transpose(-1, -2)) * scale + count.log()  # [B, H, T, N]
    direct = query_span[:, None] == key_span[None, :]  # [T, S]: j in the query's own span
    if causal:
        direct &= key_pos[None, :] <= query_pos[:, None]
        summarised = key_span[None, :] < query_span[:, None]  # [T, S]: j's span has ended
    else:
        summarised = ~direct  # [T, S]: every other span
    logits = torch.where(direct, (q @ k.transpose(-1, -2)) * scale,  # [B, H, T, S]
                         torch.where(summarised, summary_logit[..., key_span] + log_q[:, :, None], float("-inf")))
    return torch.softmax(logits, dim=-1)


def combiner_naive(q: Tensor, k: Tensor, v: Tensor, w: Tensor, *, span: int, causal: bool) -> Tensor:
    """``P @ V`` with the explicit ``P`` of :func:`combiner_probabilities`: ``[B, H, T, V]`` in fp32/fp64."""
    return combiner_probabilities(q, k, w, span=span, causal=causal) @ v.to(compute_dtype(q))


def combiner_chunk(q: Tensor, k: Tensor, v: Tensor, w: Tensor, *, span: int, causal: bool) -> Tensor:
    """The span-blocked form of :func:`combiner_naive` (same arguments and result), ``O(T (s + N))`` scores."""
    dtype = compute_dtype(q)
    q, k, v, w = q.to(dtype), k.to(dtype), v.to(dtype), w.to(dtype)
    b, h, t, dk = q.shape
    s_len, dv, scale = k.shape[2], v.shape[-1], dk ** -0.5
    n_spans = -(-s_len // span)
    pad = n_spans * span - s_len
    k_blocks = F.pad(k, (0, 0, 0, pad)).view(b, h, n_spans, span, dk)  # [B, H, S, K] -> [B, H, N, s, K]
    v_blocks = F.pad(v, (0, 0, 0, pad)).view(b, h, n_spans, span, dv)  # [B, H, S, V] -> [B, H, N, s, V]
    real = (torch.arange(n_spans * span, device=q.device) < s_len).view(n_spans, span)  # [N, s] not padding
    count = real.sum(1).to(dtype)  # [N] n_r
    k_bar = k_blocks.sum(3) / count[:, None]  # [B, H, N, K] (padded keys are zeros)
    member_logit = torch.einsum("bhnsk,hk->bhns", k_blocks, w) * scale  # [B, H, N, s]
    q_member = torch.softmax(member_logit.masked_fill(~real, float("-inf")), dim=-1)  # [B, H, N, s]
    v_bar = torch.einsum("bhns,bhnsv->bhnv", q_member, v_blocks)  # [B, H, N, V]

    # queries: positions S - T ... S - 1, blocked from the start of their first span
    first = (s_len - t) // span
    lead = (s_len - t) - first * span  # query slots before the first query in its span
    n_q = n_spans - first
    q_blocks = F.pad(q, (0, 0, lead, n_q * span - lead - t)).view(b, h, n_q, span, dk)  # [B, H, Nq, s, K]
    direct = (q_blocks @ k_blocks[:, :, first:].transpose(-1, -2)) * scale  # [B, H, Nq, s, s]
    sees_key = real[first:, None, :]  # [Nq, 1, s]
    if causal:
        sees_key = sees_key & torch.ones(span, span, dtype=torch.bool, device=q.device).tril()  # [Nq, s, s]
    own = torch.arange(first, n_spans, device=q.device)[:, None]  # [Nq, 1]
    other = torch.arange(n_spans, device=q.device)[None, :]  # [1, N]
    sees_summary = other < own if causal else other != own  # [Nq, N]
    summary = torch.einsum("bhnik,bhrk->bhnir", q_blocks, k_bar) * scale + count.log()  # [B, H, Nq, s, N]
    logits = torch.cat([direct.masked_fill(~sees_key, float("-inf")),
                        summary.masked_fill(~sees_summary[:, None, :], float("-inf"))], dim=-1)  # [.., s + N]
    p = torch.softmax(logits, dim=-1)  # [B, H, Nq, s, s + N]
    o = p[..., :span] @ v_blocks[:, :, first:]  # [B, H, Nq, s, V]
    o = o + torch.einsum("bhnir,bhrv->bhniv", p[..., span:], v_bar)  # [B, H, Nq, s, V]
    return o.reshape(b, h, n_q * span, dv)[:, :, lead:lead + t]  # [B, H, Nq, s, V] -> [B, H, T, V]


def combiner_attention(q: Tensor, k: Tensor, v: Tensor, w: Tensor, *, span: int, causal: bool,
                       impl: str) -> Tensor:
    """Combiner-Fixed attention ``[B, H, T, K] x [B, H, S, K] x [B, H, S, V] -> [B, H, T, V]`` (fp32/fp64).

    Queries are the last ``T`` of ``S`` positions (``T == S`` unless a KV cache holds earlier keys);
    ``w: [H, K]`` the in-span query; ``impl``: ``"naive"`` (the explicit ``T x S`` probabilities) or
    ``"chunk"`` (span-blocked).
    """
    if impl not in COMBINER_IMPLS:
        raise ValueError(f"combiner_attention: impl={impl!r} is unknown; choose one of {COMBINER_IMPLS}")
    if not causal and q.shape[2] != k.shape[2]:
        raise ValueError(f"combiner_attention: non-causal self attention needs as many queries as keys, "
                         f"got T={q.shape[2]}, S={k.shape[2]}; pass causal=True to continue a cache")
    form = combiner_naive if impl == "naive" else combiner_chunk
    return form(q, k, v, w, span=span, causal=causal)


@register_mixer("combiner")
class CombinerAttention(CachedAttention):
    """Combiner-Fixed: direct attention inside the span, span summaries split over their members.

    Args:
        span: tokens per span ``s`` (an int >= 1); about ``sqrt(T)`` gives the ``O(T sqrt(T))`` cost.
            ``span=1`` is full softmax attention.
    """

    patterns = frozenset({"causal_self", "noncausal_self"})
    impls = COMBINER_IMPLS
    paper = "Ren et al. 2021, Combiner: Full Attention Transformer with Sparse Computation Cost (Combiner-Fixed)"
    complexity = "O(T (s + T/s) D), O(T^1.5 D) at s ~ sqrt(T)"
    test_configs = ({"n_heads": 2, "span": 8},)

    def __init__(self, d_model: int, *, n_heads: int = 4, causal: bool = True, impl: str = "auto",
                 span: int = 64):
        super().__init__(d_model, n_heads=n_heads, causal=causal, impl=impl)
        check_int(type(self).__name__, "span", span, meaning="tokens per span, about sqrt(T)")
        self.span = span
        self.span_query = nn.Parameter(torch.zeros(n_heads, self.head_dim))  # [H, K] w of q(j | Omega_r)

    def _forward(self, x, *, context, mask, state, return_state):
        q, k, v, _, state = self.queries_and_keys(x, context=context, mask=mask, state=state,
                                                  return_state=return_state)
        o = combiner_attention(q, k, v, self.span_query, span=self.span, causal=self.causal,
                               impl=self.resolve_impl(x))  # [B, H, T, V]
        y = self.out(merge_heads(o.to(x.dtype)))  # [B, H, T, V] -> [B, T, D]
        return (y, state) if return_state else y

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, span={self.span}"
