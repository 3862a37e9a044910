"""Chunk-parallel gated linear attention in PyTorch, numerically stable for any gates.

With ``b_i = sum_{t <= i} g_t`` the gates cumulated inside a chunk (b falls from 0, per
key channel), position i of chunk n and the state ``S_n`` entering it:

    o_i     = scale * ( (q_i * exp(b_i)) S_n  +  sum_{j <= i} sum_k q_ik k_jk exp(b_ik - b_jk) v_j )
    S_{n+1} = diag(exp(b_last)) S_n + sum_j (k_j * exp(b_last - b_j))^T v_j

Every exponent in the inter-chunk terms is <= 0. The intra-chunk pair factor
``exp(b_i - b_j)`` is where naive chunking overflows: written as ``exp(b_i) exp(-b_j)``,
``exp(-b_j)`` is huge for strong gates. The GLA paper (Yang et al. 2023, section 4)
splits it at a reference point m between the two, ``exp(b_i - b_m) * exp(b_m - b_j)``,
both <= 1 when ``j <= m < i`` ("secondary chunking"), and computes the rest pairwise in
log space. Here the same split is applied recursively: a block of 2h tokens is cut in
halves, the queries of the second half meet the keys of the first half through one
matmul with m = the last position of the first half, and each half is cut again, down
to single tokens, where the pair factor is exp(0) = 1. The chunk's score matrix is
assembled from those blocks bottom-up, ``[[A_first, 0], [S, A_second]]``, and meets the
values in one matmul. That costs ``log2(C)`` passes over ``[T, K]`` tensors instead of a
``[T, c, K]`` pair tensor, and nothing overflows, whatever the gates.

Precision: every exponent is a sum of gates over its own range (a prefix from m, a
suffix to m), summed directly, never the difference of two cumulated sums; such a
difference loses the digits the two share (``eps * |b|``) and, worse, makes the gate
gradient a sum of O(1) terms that cancel to the tiny true value under strong gates.
So the chunked form is as precise as the token-by-token recurrence, gradients included.

Everything inside a chunk is batched over all chunks; only the state recurrence loops
over the (unbound) chunks. ``chunk_size`` must be a power of two.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from seqmix.kernels.common import Recurrence, compute_dtype, from_chunks, to_chunks
from seqmix.kernels.gla.limits import GLA
from seqmix.kernels.linear_attn.chunk import scan_chunks


def chunk_length(chunk_size: int, t: int) -> int:
    """``chunk_size`` (a power of two), or for a short sequence the smallest power of two that holds it."""
    return min(chunk_size, 1 << (t - 1).bit_length())


def suffix_sum(g: Tensor) -> Tensor:
    """``sum_{r > j} g_r`` along dim -2, summed directly (never as a difference of two
    cumulated sums, which would lose the digits they share and cancel in the gradient)."""
    after = F.pad(g[..., 1:, :], (0, 0, 0, 1))  # [..., C, K]: g_{j+1}, 0 at the end
    return after.flip(-2).cumsum(-2).flip(-2)


def gla_chunk(x: Recurrence, g: Tensor) -> tuple[Tensor, Tensor | None]:
    """The chunked, stable form above; the arguments and results of :func:`seqmix.kernels.gla.chunk_gla`
    (``chunk_size`` a power of two, ``limits.py``)."""
    GLA.check("gla_chunk", "chunk", chunk_size=x.chunk_size)
    dtype = compute_dtype(x.q)

    def run(q: Tensor, k: Tensor, v: Tensor, g: Tensor, s0: Tensor) -> tuple[Tensor, Tensor]:
        t = q.shape[1]
        c = chunk_length(x.chunk_size, t)
        # padded tokens have q = k = v = 0 and g = 0 (no decay), so they leave the state as it is
        qc, kc, vc, gc = (to_chunks(y, c, dtype) for y in (q, k, v, g))  # [B, H, N, C, K|V]
        b = gc.cumsum(-2)  # [B, H, N, C, K] gates from the chunk start to i
        b_last = b[..., -1:, :]  # [B, H, N, 1, K] the whole chunk

        # inter-chunk: the state entering each chunk
        updates = (kc * torch.exp(suffix_sum(gc))).transpose(-1, -2) @ vc  # [B, H, N, K, V]
        states, final = scan_chunks(b_last.exp().transpose(-1, -2), updates, s0)  # [B, H, N, K, V]
        o = (qc * b.exp()) @ states  # [B, H, N, C, V]

        # intra-chunk scores, assembled from single tokens up: a block of 2h tokens is
        # [[A_first, 0], [S, A_second]], S = its second half's queries against its first half's keys
        bs, n = b.shape[0], b.shape[2]
        scores = (qc * kc).sum(-1)[..., None, None]  # [B, H, N, C, 1, 1] one token: pair factor 1
        half = 1
        while half < c:
            shape = (bs, -1, n, c // (2 * half), 2, half)  # [B, H, N, C, *] -> [B, H, N, blocks, 2, half, *]
            (_, q_late), (k_early, _), (g_early, g_late) = (
                y.view(*shape, y.shape[-1]).unbind(-3) for y in (qc, kc, gc)
            )  # each [B, H, N, blocks, half, K]
            q_late = q_late * torch.exp(g_late.cumsum(-2))  # gates from the middle to the query, <= 0
            k_early = k_early * torch.exp(suffix_sum(g_early))  # gates from the key to the middle, <= 0
            if half <= 2:  # tiny blocks: broadcast products beat batched 1x1 / 2x2 matmuls
                cross = (q_late[..., :, None, :] * k_early[..., None, :, :]).sum(-1)  # [..., half, half]
            else:
                cross = q_late @ k_early.transpose(-1, -2)  # [B, H, N, blocks, half, half]
            first, second = scores.view(*shape[:-1], half, half).unbind(-3)  # [B, H, N, blocks, half, half] each
            top = F.pad(first, (0, half))  # [..., half, 2 half]: no query of the first half sees the second
            scores = torch.cat([top, torch.cat([cross, second], -1)], -2)  # [B, H, N, blocks, 2 half, 2 half]
            half *= 2
        o = o + scores.view(bs, -1, n, c, c) @ vc  # [B, H, N, C, V]
        return from_chunks(o * x.scale, t), final

    return x.per_sequence(run, g)
