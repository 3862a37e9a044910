"""Gated linear attention (Yang et al. 2023), token by token: the reference.

    S_t = diag(exp(g_t)) S_{t-1} + k_t^T v_t        S: [K, V] per head, S_0 = initial_state
    o_t = scale * q_t S_t

``g: [B, T, H, K]`` are log forget gates (<= 0), one per key channel and token.
"""

from __future__ import annotations

import torch
from torch import Tensor

from seqmix.kernels.common import Recurrence, compute_dtype


def check_gates(op: str, q: Tensor, g: Tensor) -> None:
    """``g``: a float tensor of log forget gates shaped like q."""
    if not isinstance(g, Tensor) or g.shape != q.shape or not g.is_floating_point():
        got = f"{g.dtype} {tuple(g.shape)}" if isinstance(g, Tensor) else type(g).__name__
        raise ValueError(f"{op}: g must be a float tensor of log forget gates shaped like q {tuple(q.shape)}, "
                         f"got {got}")


def gla_naive(x: Recurrence, g: Tensor) -> tuple[Tensor, Tensor | None]:
    """The recurrence above, one token at a time, in fp32 (fp64 for fp64 inputs); the arguments and
    results of :func:`seqmix.kernels.gla.chunk_gla`."""
    dtype = compute_dtype(x.q)

    def run(q: Tensor, k: Tensor, v: Tensor, g: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
        outputs = []
        steps = (t.to(dtype).unbind(1) for t in (q, k, v, g))
        for q_t, k_t, v_t, g_t in zip(*steps):
            s = g_t.exp()[..., None] * s + k_t[..., :, None] * v_t[..., None, :]  # [B, H, K, V]
            outputs.append(torch.einsum("bhk,bhkv->bhv", q_t, s) * x.scale)
        return torch.stack(outputs, 1), s  # [B, T, H, V], [B, H, K, V]

    return x.per_sequence(run, g)
