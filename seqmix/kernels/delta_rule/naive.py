"""The delta rule, token by token: the reference every other form is checked against.

Shapes: ``q, k: [B, T, H, K]``, ``v: [B, T, H, V]``, ``beta: [B, T, H]``, state ``S: [B, H, K, V]``.
Per head, with row vectors ``k_t: [1, K]`` and ``v_t: [1, V]``::

    S_t = S_{t-1} + beta_t k_t^T (v_t - k_t S_{t-1})  =  (I - beta_t k_t^T k_t) S_{t-1} + beta_t k_t^T v_t
    o_t = scale * q_t S_t

``k`` is L2-normalised by the caller and ``beta`` lies in (0, 1), so each step is a
contraction of ``S`` along ``k_t`` (one step of online regression of ``v`` on ``k``).
The recurrence runs in fp64 when the inputs are fp64 and in fp32 otherwise; the output
has the input dtype, the final state the compute dtype.

This module also holds the check of the delta rule's own inputs (``beta``, the scale, a
non-empty sequence); the rest is the linear recurrences' :class:`~seqmix.kernels.common.Recurrence`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from seqmix.kernels.common import Recurrence, compute_dtype


def check_beta(op: str, x: Recurrence, beta: Tensor) -> None:
    """``beta``: a float tensor ``[B, T, H]``; also a positive scale and at least one token."""
    b, t, h, _ = x.q.shape
    if not isinstance(beta, Tensor) or tuple(beta.shape) != (b, t, h) or not beta.is_floating_point():
        got = f"{beta.dtype} {tuple(beta.shape)}" if isinstance(beta, Tensor) else type(beta).__name__
        raise ValueError(f"{op}: beta must be a float tensor [B={b}, T={t}, H={h}] of writing strengths in (0, 1), "
                         f"got {got}")
    if t == 0:
        raise ValueError(f"{op}: the sequence has zero time steps; give at least one token")
    if not x.scale > 0:
        raise ValueError(f"{op}: scale must be > 0, got {x.scale}")


def run_delta_rule(kernel, x: Recurrence, beta: Tensor) -> tuple[Tensor, Tensor | None]:
    """Run ``kernel(q, k, v, beta, scale, s0) -> (o, s_T)`` with every input in the compute dtype
    (:meth:`Recurrence.per_sequence`)."""
    dtype = compute_dtype(x.q)

    def run(q: Tensor, k: Tensor, v: Tensor, beta: Tensor, s0: Tensor) -> tuple[Tensor, Tensor]:
        return kernel(q.to(dtype), k.to(dtype), v.to(dtype), beta.to(dtype), x.scale, s0)

    return x.per_sequence(run, beta)


def _recurrence(q: Tensor, k: Tensor, v: Tensor, beta: Tensor, scale: float, h: Tensor) -> tuple[Tensor, Tensor]:
    outs = []
    for q_t, k_t, v_t, b_t in zip(q.unbind(1), k.unbind(1), v.unbind(1), beta.unbind(1)):  # [B, H, K], [B, H]
        v_old = torch.einsum("bhk,bhkv->bhv", k_t, h)  # what the memory predicts for k_t
        h = h + torch.einsum("bhk,bhv->bhkv", k_t, b_t[..., None] * (v_t - v_old))
        outs.append(torch.einsum("bhk,bhkv->bhv", q_t * scale, h))
    return torch.stack(outs, 1), h  # [B, T, H, V], [B, H, K, V]


def delta_rule_naive(x: Recurrence, beta: Tensor) -> tuple[Tensor, Tensor | None]:
    """The delta rule one token at a time (the recurrence above); the arguments and results of
    :func:`seqmix.kernels.delta_rule.chunk_delta_rule`."""
    return run_delta_rule(_recurrence, x, beta)
