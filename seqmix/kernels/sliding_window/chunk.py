"""Sliding-window softmax attention in blocks: O(T * window) instead of O(T^2).

The reference is ``seqmix.kernels.attention.attention_naive(..., window=w)``: query ``i``
sees keys ``(i - w, i]`` (causal) or ``[i - w//2, i + w//2]`` (non-causal). Here the
key axis is cut into blocks of ``c`` keys and each block of queries attends only to the
blocks that can hold its visible keys:

- causal, ``c = w``: its own block and the previous one (``2w`` keys per query);
- non-causal, ``c = max(1, w // 2)``: the previous, its own and the next block (``3c``).

A fixed ``[c, n_blocks * c]`` mask on the relative position (key - query) keeps exactly
the keys the reference keeps; padded keys and ``key_mask`` are masked the same way.
Queries may be fewer than keys (causal): they are the last ``T`` of the ``S`` positions
(bottom-right alignment, as with a cache of past keys).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def check_sliding_window_inputs(op: str, q: Tensor, k: Tensor, v: Tensor, *, window: int, causal: bool,
                                key_mask: Tensor | None) -> None:
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not isinstance(x, Tensor) or x.dim() != 4:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"{op}: {name} must be a 4-D tensor [batch, heads, time, dim], got {shape}")
    b, h, t, dk = q.shape
    s = k.shape[2]
    if k.shape[:2] != (b, h) or k.shape[3] != dk:
        raise ValueError(f"{op}: k must be [B={b}, H={h}, S, K={dk}], got {tuple(k.shape)}")
    if v.shape[:3] != k.shape[:3]:
        raise ValueError(f"{op}: v must be [B={b}, H={h}, S={s}, V], got {tuple(v.shape)}")
    if t == 0:
        raise ValueError(f"{op}: zero queries; give at least one token")
    if not isinstance(window, int) or isinstance(window, bool) or window < 1:
        raise ValueError(f"{op}: window must be a positive int, got {window!r}")
    if causal and s < t:
        raise ValueError(f"{op}: causal attention needs at least as many keys as queries (S >= T), got S={s}, T={t}")
    if not causal and s != t:
        raise ValueError(f"{op}: non-causal sliding windows are for self attention (S == T), got S={s}, T={t}")
    if key_mask is not None and (key_mask.dtype != torch.bool or tuple(key_mask.shape) != (b, s)):
        raise ValueError(f"{op}: key_mask must be a bool tensor [B={b}, S={s}] (True = attend), "
                         f"got {key_mask.dtype} {tuple(key_mask.shape)}")


def sliding_window_chunk(q: Tensor, k: Tensor, v: Tensor, *, window: int, causal: bool = True,
                         scale: float | None = None, key_mask: Tensor | None = None) -> Tensor:
    """Blocked sliding-window softmax attention, equal to ``attention_naive(..., window=window)``.

    ``q: [B, H, T, K]``, ``k: [B, H, S, K]``, ``v: [B, H, S, V]`` -> ``[B, H, T, V]``;
    ``key_mask: [B, S]`` bool (True = attend). A query that sees no key gives 0.
    """
    check_sliding_window_inputs("sliding_window_chunk", q, k, v, window=window, causal=causal, key_mask=key_mask)
    b, n_heads, t, dk = q.shape
    scale = scale if scale is not None else 1.0 / math.sqrt(dk)
    keep = torch.ones(1, k.shape[2], dtype=torch.bool, device=q.device) if key_mask is None else key_mask  # [B|1, S]
    if causal:  # keys older than window - 1 before the first query are never seen: drop them once
        first = max(0, k.shape[2] - t - (window - 1))
        k, v, keep = k[:, :, first:], v[:, :, first:], keep[:, first:]
        c, behind, ahead = window, 1, 0
    else:
        c, behind, ahead = max(1, window // 2), 1, 1
    s = k.shape[2]
    lead = s - t  # queries sit at key positions lead .. s-1 (lead < window)
    n = -(-s // c)
    tail = n * c - s

    def key_blocks(x: Tensor) -> Tensor:  # [..., S, X] -> [..., N, (behind + 1 + ahead) * c, X]
        x = F.pad(x, (0, 0, behind * c, tail + ahead * c))  # [..., (N + behind + ahead) * c, X]
        x = x.unflatten(-2, (n + behind + ahead, c))  # [..., N + behind + ahead, c, X]
        return torch.cat([x[..., j : j + n, :, :] for j in range(behind + 1 + ahead)], dim=-2)

    qb = F.pad(q, (0, 0, lead, tail)).unflatten(2, (n, c))  # [B, H, N, c, K]
    kb, vb = key_blocks(k), key_blocks(v)  # [B, H, N, w_blk, K], [B, H, N, w_blk, V]
    keep_b = key_blocks(keep[..., None]).squeeze(-1)  # [B|1, N, w_blk]; padding -> False

    a = torch.arange(c, device=q.device)[:, None]  # query offset in its block
    j = torch.arange((behind + 1 + ahead) * c, device=q.device)[None, :] - behind * c  # key offset
    rel = j - a  # [c, w_blk] key position - query position
    near = ((rel <= 0) & (rel > -window)) if causal else (rel.abs() <= window // 2)
    visible = near & keep_b[:, None, :, None, :]  # [B|1, 1, N, c, w_blk]

    scores = (qb @ kb.transpose(-1, -2)) * scale  # [B, H, N, c, w_blk]
    scores = scores.masked_fill(~visible, float("-inf"))
    weights = torch.softmax(scores, dim=-1).nan_to_num(0.0)  # rows with no visible key -> 0
    o = (weights @ vb).flatten(2, 3)  # [B, H, N, c, V] -> [B, H, N*c, V]
    return o[:, :, lead : lead + t]
