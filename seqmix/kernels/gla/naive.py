"""Gated linear attention (Yang et al. 2023), token by token: the reference.

    S_t = diag(exp(g_t)) S_{t-1} + k_t^T v_t        S: [K, V] per head, S_0 = initial_state
    o_t = scale * q_t S_t

``g: [B, T, H, K]`` are log forget gates (<= 0), one per key channel and token.
"""

from __future__ import annotations

import torch
from torch import Tensor

from seqmix.kernels.common import (
    check_qkv,
    check_state_and_offsets,
    compute_dtype,
    per_sequence,
)


def check_gla_inputs(op: str, q: Tensor, k: Tensor, v: Tensor, g: Tensor,
                     initial_state: Tensor | None, cu_seqlens: Tensor | None) -> None:
    check_qkv(op, q, k, v)
    if not isinstance(g, Tensor) or g.shape != q.shape or not g.is_floating_point():
        got = f"{g.dtype} {tuple(g.shape)}" if isinstance(g, Tensor) else type(g).__name__
        raise ValueError(f"{op}: g must be a float tensor of log forget gates shaped like q {tuple(q.shape)}, "
                         f"got {got}")
    check_state_and_offsets(op, q, v, initial_state, cu_seqlens)


def gla_naive(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor,
    *,
    scale: float | None = None,
    initial_state: Tensor | None = None,
    output_final_state: bool = False,
    cu_seqlens: Tensor | None = None,
) -> tuple[Tensor, Tensor | None]:
    """The recurrence above, one token at a time, in fp32 (fp64 for fp64 inputs).

    ``q, k, g: [B, T, H, K]``, ``v: [B, T, H, V]`` -> ``o: [B, T, H, V]`` (dtype of q) and
    the final state ``[B, H, K, V]`` (``[N, H, K, V]`` with ``cu_seqlens``) or None.
    """
    check_gla_inputs("gla_naive", q, k, v, g, initial_state, cu_seqlens)
    dtype = compute_dtype(q)
    scale = q.shape[-1] ** -0.5 if scale is None else scale

    def run(q: Tensor, k: Tensor, v: Tensor, g: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
        outputs = []
        steps = (x.to(dtype).unbind(1) for x in (q, k, v, g))
        for q_t, k_t, v_t, g_t in zip(*steps):
            s = g_t.exp()[..., None] * s + k_t[..., :, None] * v_t[..., None, :]  # [B, H, K, V]
            outputs.append(torch.einsum("bhk,bhkv->bhv", q_t, s) * scale)
        return torch.stack(outputs, 1), s  # [B, T, H, V], [B, H, K, V]

    state_shape = (q.shape[2], q.shape[3], v.shape[3])
    o, final = per_sequence(run, (q, k, v, g), initial_state, cu_seqlens, state_shape, dtype)
    return o.to(q.dtype), (final if output_final_state else None)
