"""Linear attention with an optional fixed per-head decay, token by token: the reference.

    S_t = exp(decay) * S_{t-1} + k_t^T v_t        S: [K, V] per head, S_0 = initial_state
    o_t = scale * q_t S_t

``decay: [H]`` is the log of the per-step decay (<= 0; RetNet's gamma = exp(decay));
``decay=None`` is plain (Katharopoulos) linear attention with no decay. The global
(non-causal) form ``scale * q (K^T V)`` is here too, as a quadratic product.
"""

from __future__ import annotations

import torch
from torch import Tensor

from seqmix.kernels.common import Recurrence, compute_dtype


def check_decay(op: str, q: Tensor, decay: Tensor | None) -> None:
    """``decay``: None, or a float tensor ``[H]`` of per-head log-decays, each <= 0."""
    if decay is None:
        return
    h = q.shape[2]
    if not isinstance(decay, Tensor) or tuple(decay.shape) != (h,) or not decay.is_floating_point():
        got = f"{decay.dtype} {tuple(decay.shape)}" if isinstance(decay, Tensor) else type(decay).__name__
        raise ValueError(f"{op}: decay must be a float tensor [H={h}] of per-head log-decays, got {got}")
    if bool((decay > 0).any()):
        raise ValueError(
            f"{op}: decay holds log-decays and must be <= 0 (gamma = exp(decay) <= 1), got max "
            f"{decay.max().item():.3g}; pass log(gamma), e.g. torch.log(1 - 2 ** (-5 - torch.arange(H)))"
        )


def linear_attn_naive(x: Recurrence, decay: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """The recurrence above, one token at a time, in fp32 (fp64 for fp64 inputs); the arguments
    and results of :func:`seqmix.kernels.linear_attn.linear_attn`."""
    dtype = compute_dtype(x.q)
    gamma = None if decay is None else decay.to(dtype).exp()[:, None, None]  # [H, 1, 1]

    def run(q: Tensor, k: Tensor, v: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
        outputs = []
        for q_t, k_t, v_t in zip(q.to(dtype).unbind(1), k.to(dtype).unbind(1), v.to(dtype).unbind(1)):
            kv = k_t[..., :, None] * v_t[..., None, :]  # [B, H, K, V]
            s = kv + (s if gamma is None else gamma * s)
            outputs.append(torch.einsum("bhk,bhkv->bhv", q_t, s) * x.scale)
        return torch.stack(outputs, 1), s  # [B, T, H, V], [B, H, K, V]

    return x.per_sequence(run)


def linear_attn_global_naive(q: Tensor, k: Tensor, v: Tensor, *, scale: float | None = None) -> Tensor:
    """Non-causal linear attention as the quadratic product ``scale * (q k^T) v``.

    ``q: [B, T, H, K]``, ``k: [B, S, H, K]``, ``v: [B, S, H, V]`` -> ``[B, T, H, V]``
    (``S`` may differ from ``T``: cross attention over a context).
    """
    check_global_inputs("linear_attn_global_naive", q, k, v)
    dtype = compute_dtype(q)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = torch.einsum("bthk,bshk->bhts", q.to(dtype), k.to(dtype))  # [B, H, T, S]
    return (torch.einsum("bhts,bshv->bthv", scores, v.to(dtype)) * scale).to(q.dtype)


def check_global_inputs(op: str, q: Tensor, k: Tensor, v: Tensor) -> None:
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not isinstance(x, Tensor) or x.dim() != 4:
            raise ValueError(f"{op}: {name} must be a 4-D tensor [batch, time, heads, dim]")
    if k.shape[0] != q.shape[0] or k.shape[2:] != q.shape[2:] or v.shape[:3] != k.shape[:3]:
        raise ValueError(
            f"{op}: expected q [B, T, H, K], k [B, S, H, K], v [B, S, H, V]; got {tuple(q.shape)}, "
            f"{tuple(k.shape)}, {tuple(v.shape)}"
        )
