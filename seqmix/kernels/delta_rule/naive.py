"""The delta rule, token by token: the reference every other form is checked against.

Shapes: ``q, k: [B, T, H, K]``, ``v: [B, T, H, V]``, ``beta: [B, T, H]``, state ``S: [B, H, K, V]``.
Per head, with row vectors ``k_t: [1, K]`` and ``v_t: [1, V]``::

    S_t = S_{t-1} + beta_t k_t^T (v_t - k_t S_{t-1})  =  (I - beta_t k_t^T k_t) S_{t-1} + beta_t k_t^T v_t
    o_t = scale * q_t S_t

``k`` is L2-normalised by the caller and ``beta`` lies in (0, 1), so each step is a
contraction of ``S`` along ``k_t`` (one step of online regression of ``v`` on ``k``).
The recurrence runs in fp64 when the inputs are fp64 and in fp32 otherwise; the output
has the input dtype, the final state the compute dtype.

This module also holds the input checks the chunked form and the Triton kernel share;
the packed-sequence (``cu_seqlens``) loop is the linear-recurrence one of
``seqmix.kernels.common``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from seqmix.kernels.common import check_qkv, check_state_and_offsets, compute_dtype, per_sequence


def check_delta_rule_inputs(op: str, q: Tensor, k: Tensor, v: Tensor, beta: Tensor, *, scale: float | None,
                            initial_state: Tensor | None, cu_seqlens: Tensor | None) -> float:
    """Validate a delta-rule call (shapes, state, packed offsets); return the scale (default ``K ** -0.5``)."""
    check_qkv(op, q, k, v)
    b, t, h, _ = q.shape
    if not isinstance(beta, Tensor) or tuple(beta.shape) != (b, t, h) or not beta.is_floating_point():
        got = f"{beta.dtype} {tuple(beta.shape)}" if isinstance(beta, Tensor) else type(beta).__name__
        raise ValueError(f"{op}: beta must be a float tensor [B={b}, T={t}, H={h}] of writing strengths in (0, 1), "
                         f"got {got}")
    if t == 0:
        raise ValueError(f"{op}: the sequence has zero time steps; give at least one token")
    check_state_and_offsets(op, q, v, initial_state, cu_seqlens)
    if scale is None:
        return q.shape[-1] ** -0.5
    if not scale > 0:
        raise ValueError(f"{op}: scale must be > 0, got {scale}")
    return float(scale)


def run_delta_rule(kernel, q: Tensor, k: Tensor, v: Tensor, beta: Tensor, *, scale: float,
                   initial_state: Tensor | None, output_final_state: bool,
                   cu_seqlens: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """Run ``kernel(q, k, v, beta, scale, s0) -> (o, s_T)`` in the compute dtype, over the batch or
    over each packed sequence (the state restarting at every boundary)."""
    dtype = compute_dtype(q)

    def run(q: Tensor, k: Tensor, v: Tensor, beta: Tensor, s0: Tensor) -> tuple[Tensor, Tensor]:
        return kernel(q.to(dtype), k.to(dtype), v.to(dtype), beta.to(dtype), scale, s0)

    state_shape = (q.shape[2], q.shape[3], v.shape[3])
    o, final = per_sequence(run, (q, k, v, beta), initial_state, cu_seqlens, state_shape, dtype)
    return o.to(q.dtype), (final if output_final_state else None)


def _recurrence(q: Tensor, k: Tensor, v: Tensor, beta: Tensor, scale: float, h: Tensor) -> tuple[Tensor, Tensor]:
    outs = []
    for q_t, k_t, v_t, b_t in zip(q.unbind(1), k.unbind(1), v.unbind(1), beta.unbind(1)):  # [B, H, K], [B, H]
        v_old = torch.einsum("bhk,bhkv->bhv", k_t, h)  # what the memory predicts for k_t
        h = h + torch.einsum("bhk,bhv->bhkv", k_t, b_t[..., None] * (v_t - v_old))
        outs.append(torch.einsum("bhk,bhkv->bhv", q_t * scale, h))
    return torch.stack(outs, 1), h  # [B, T, H, V], [B, H, K, V]


def delta_rule_naive(q: Tensor, k: Tensor, v: Tensor, beta: Tensor, *, scale: float | None = None,
                     initial_state: Tensor | None = None, output_final_state: bool = False,
                     cu_seqlens: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
    """The delta rule one token at a time. See the module docstring for the recurrence.

    Returns ``(o: [B, T, H, V], final_state: [N, H, K, V] or None)``.
    """
    scale = check_delta_rule_inputs("delta_rule_naive", q, k, v, beta, scale=scale, initial_state=initial_state,
                                    cu_seqlens=cu_seqlens)
    return run_delta_rule(_recurrence, q, k, v, beta, scale=scale, initial_state=initial_state,
                            output_final_state=output_final_state, cu_seqlens=cu_seqlens)
