"""Flow attention in linear time: the flows of :mod:`seqmix.kernels.flow.naive` as prefix sums
(causal) or totals (non-causal) over ``[T, K]`` features, never a ``[T, T]`` matrix.

    I_i  = a_i . sum_{j: vis} b_j                     O_j  = b_j . sum_{i: out} a_i
    I^_i = a_i . sum_{j: vis} b_j n_j / O_j / n_i      O^_j = b_j . sum_{i: out} a_i n_i / I_i / n_j
    c_j  = n_j exp(O^_j - logsumexp_{j' in P(j)} O^_j')      (causal: a log-cumsum-exp)
    o_i  = sigmoid(I^_i) (a_i / I_i) sum_{j: vis} b_j^T (c_j v_j)

The last sum is linear attention with queries ``a / I``, keys ``b`` and values ``c v``: the
chunked causal form of :func:`seqmix.kernels.linear_attn.linear_attn` (its ``chunk_size``),
or the global product ``q (k^T v)`` when non-causal.
"""

from __future__ import annotations

import torch
from torch import Tensor

from seqmix.kernels.flow.naive import FlowState, features, token_counts
from seqmix.kernels.linear_attn import linear_attn, linear_attn_global_chunk


def flow_chunk(q: Tensor, k: Tensor, v: Tensor, *, causal: bool, state: FlowState,
               chunk_size: int) -> tuple[Tensor, FlowState]:
    """The linear form above; the arguments and results of :func:`seqmix.kernels.flow.flow_attention`."""
    a, b = features(q), features(k)  # [B, T, H, K]
    v = v.to(a.dtype)  # [B, T, H, V]
    t = a.shape[1]
    n = token_counts(t, state.seen, causal, a)  # [T, 1]

    def visible_sum(x: Tensor, before: Tensor) -> Tensor:
        """``before + sum`` of ``x: [B, T, H, K]`` over the visible tokens: a prefix sum, or the total."""
        total = x.cumsum(1) if causal else x.sum(1, keepdim=True)  # [B, T|1, H, K]
        return before[:, None] + total

    incoming = (a * visible_sum(b, state.key_sum)).sum(-1)  # [B, T, H]
    outgoing = (b * visible_sum(a, state.query_sum)).sum(-1)  # [B, T, H]
    key_weights, query_weights = n / outgoing, n / incoming  # [B, T, H]
    conserved_in = (a * visible_sum(b * key_weights[..., None], state.key_conserved)).sum(-1) / n  # [B, T, H]
    conserved_out = (b * visible_sum(a * query_weights[..., None], state.query_conserved)).sum(-1) / n  # [B, T, H]
    log_prefix = conserved_out.logcumsumexp(1) if causal else conserved_out.logsumexp(1, keepdim=True)  # [B, T|1, H]
    log_norm = torch.logaddexp(state.log_competition[:, None], log_prefix)  # [B, T|1, H]
    weighted = (n * torch.exp(conserved_out - log_norm))[..., None] * v  # [B, T, H, V] competition c_j v_j
    queries = a / incoming[..., None]  # [B, T, H, K]
    if causal:
        aggregated, kv = linear_attn(queries, b, weighted, scale=1.0, initial_state=state.kv, output_final_state=True,
                                     chunk_size=chunk_size, impl="chunk")  # [B, T, H, V], [B, H, K, V]
    else:
        aggregated, kv = linear_attn_global_chunk(queries, b, weighted, scale=1.0), state.kv  # [B, T, H, V]
    o = torch.sigmoid(conserved_in)[..., None] * aggregated  # [B, T, H, V]
    return o.to(q.dtype), state.advance(a, b, key_weights, query_weights, log_norm[:, -1], kv, t)
