"""Chunk-parallel linear attention with a fixed per-head decay (Lightning Attention-2 /
RetNet's chunkwise form), in PyTorch: the fast path on the CPU.

The sequence is cut into N chunks of C tokens. With ``gamma = exp(decay)``, position i of
a chunk (0-based) and the state ``S_n`` entering chunk n:

    o_i     = scale * ( gamma^(i+1) q_i S_n  +  sum_{j <= i} gamma^(i-j) (q_i . k_j) v_j )
    S_{n+1} = gamma^C S_n + sum_j gamma^(C-1-j) k_j^T v_j

The intra-chunk part (masked, decayed ``q k^T``) is one batched matmul over all chunks;
only the state recurrence is a loop over the chunks (unbound, never sliced). Every
exponent is <= 0, so strong decays underflow to 0 instead of overflowing. A last,
shorter chunk is zero-padded; its state update uses its true length.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from seqmix.kernels.linear_attn.common import check_chunk_size, compute_dtype, per_sequence
from seqmix.kernels.linear_attn.naive import check_global_inputs, check_linear_attn_inputs


def to_chunks(x: Tensor, chunk: int, dtype: torch.dtype) -> Tensor:
    """``[B, T, H, K] -> [B, H, N, C, K]``, zero-padding T up to ``N * C``."""
    b, t, h, d = x.shape
    n = math.ceil(t / chunk)
    x = F.pad(x.to(dtype), (0, 0, 0, 0, 0, n * chunk - t))  # [B, N*C, H, K]
    return x.view(b, n, chunk, h, d).permute(0, 3, 1, 2, 4)  # [B, N*C, H, K] -> [B, H, N, C, K]


def from_chunks(x: Tensor, t: int) -> Tensor:
    """``[B, H, N, C, V] -> [B, T, H, V]``, dropping the padding."""
    b, h, n, c, d = x.shape
    return x.permute(0, 2, 3, 1, 4).reshape(b, n * c, h, d)[:, :t]  # [B, H, N, C, V] -> [B, T, H, V]


def scan_chunks(decays: Tensor | None, updates: Tensor, s0: Tensor) -> tuple[Tensor, Tensor]:
    """The inter-chunk recurrence ``S_{n+1} = decays[n] * S_n + updates[n]``.

    ``updates: [B, H, N, K, V]``, ``decays``: broadcastable to it (or None = 1), ``s0: [B, H, K, V]``.
    Returns the states entering each chunk ``[B, H, N, K, V]`` and the final state.
    """
    entering, s = [], s0
    per_chunk = [None] * updates.shape[2] if decays is None else decays.unbind(2)
    for decay, update in zip(per_chunk, updates.unbind(2)):
        entering.append(s)
        s = update + (s if decay is None else decay * s)
    return torch.stack(entering, 2), s


def linear_attn_chunk(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    decay: Tensor | None = None,
    scale: float | None = None,
    initial_state: Tensor | None = None,
    output_final_state: bool = False,
    cu_seqlens: Tensor | None = None,
    chunk_size: int = 64,
) -> tuple[Tensor, Tensor | None]:
    """Same contract as :func:`seqmix.kernels.linear_attn.naive.linear_attn_naive`, chunked."""
    check_linear_attn_inputs("linear_attn_chunk", q, k, v, decay, initial_state, cu_seqlens)
    check_chunk_size("linear_attn_chunk", chunk_size)
    dtype = compute_dtype(q)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    log_gamma = None if decay is None else decay.to(dtype)

    def run(q: Tensor, k: Tensor, v: Tensor, s0: Tensor) -> tuple[Tensor, Tensor]:
        t = q.shape[1]
        c = min(chunk_size, t)
        qc, kc, vc = (to_chunks(x, c, dtype) for x in (q, k, v))  # [B, H, N, C, K|V]
        n = qc.shape[2]
        i = torch.arange(c, device=q.device)
        causal = i[:, None] >= i[None, :]  # [C, C] key j <= query i
        scores = qc @ kc.transpose(-1, -2)  # [B, H, N, C, C]
        if log_gamma is None:
            scores = scores.masked_fill(~causal, 0.0)
            updates = kc.transpose(-1, -2) @ vc  # [B, H, N, K, V]
            states, final = scan_chunks(None, updates, s0)
            q_in = qc
        else:
            lg = log_gamma[:, None, None]  # [H, 1, 1]
            distance = (i[:, None] - i[None, :]).clamp(min=0).to(dtype)  # [C, C]
            weights = torch.where(causal, torch.exp(lg * distance), 0.0)  # [H, C, C]
            scores = scores * weights[:, None]  # [B, H, N, C, C]
            # the last chunk may be shorter: its keys decay to its own end, the state by its length
            length = torch.full((n,), c, device=q.device, dtype=dtype)
            length[-1] = t - (n - 1) * c
            to_end = (length[:, None] - 1 - i.to(dtype)).clamp(min=0)  # [N, C] (padded keys are zero)
            k_out = kc * torch.exp(lg * to_end)[..., None]  # [B, H, N, C, K]
            updates = k_out.transpose(-1, -2) @ vc  # [B, H, N, K, V]
            chunk_decay = torch.exp(log_gamma[:, None] * length)[None, ..., None, None]  # [1, H, N, 1, 1]
            states, final = scan_chunks(chunk_decay, updates, s0)
            q_in = qc * torch.exp(lg * (i + 1).to(dtype)[:, None])[:, None]  # [B, H, N, C, K]
        o = (scores @ vc + q_in @ states) * scale  # [B, H, N, C, V]
        return from_chunks(o, t), final

    state_shape = (q.shape[2], q.shape[3], v.shape[3])
    o, final = per_sequence(run, (q, k, v), initial_state, cu_seqlens, state_shape, dtype)
    return o.to(q.dtype), (final if output_final_state else None)


def linear_attn_global_chunk(q: Tensor, k: Tensor, v: Tensor, *, scale: float | None = None) -> Tensor:
    """Non-causal linear attention in linear time, ``scale * q (k^T v)``; shapes as
    :func:`seqmix.kernels.linear_attn.naive.linear_attn_global_naive`."""
    check_global_inputs("linear_attn_global_chunk", q, k, v)
    dtype = compute_dtype(q)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    kv = torch.einsum("bshk,bshv->bhkv", k.to(dtype), v.to(dtype))  # [B, H, K, V]
    return (torch.einsum("bthk,bhkv->bthv", q.to(dtype), kv) * scale).to(q.dtype)
