"""The selective scan (Mamba-1's SSM; Gu & Dao 2023), token by token: the reference.

Per channel e and state index n, with the zero-order hold on A and the Euler step on B
that the paper's implementation uses (section 3.5; Algorithm 2)::

    h_t = exp(delta_t A) * h_{t-1} + delta_t B_t u_t        h: [E, N] per sequence, h_0 = initial_state
    y_t = C_t . h_t  (+ D u_t, added by :func:`seqmix.kernels.selective_scan.selective_scan`)

``u, delta: [B, T, E]``, ``A: [E, N]`` (<= 0 keeps the scan stable), ``B, C: [B, T, N]``.
:class:`ScanInputs` are the checked arguments every form takes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from seqmix.kernels.common import check_chunk_size, compute_dtype


@dataclass(frozen=True)
class ScanInputs:
    """The checked arguments of :func:`~seqmix.kernels.selective_scan.selective_scan`, in the compute
    dtype (fp32; fp64 for fp64 ``u``): ``u, delta: [B, T, E]``, ``A: [E, N]``, ``B, C: [B, T, N]``,
    ``h0: [B, E, N]`` (zeros when no initial state was given), ``chunk_size`` (the chunked form's)."""

    u: Tensor
    delta: Tensor
    A: Tensor
    B: Tensor
    C: Tensor
    h0: Tensor
    chunk_size: int

    @classmethod
    def check(cls, op: str, u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None,
              initial_state: Tensor | None, chunk_size: int) -> ScanInputs:
        """Checks every shape once (a ValueError naming the argument and the shape it needs)."""
        for name, x in (("u", u), ("delta", delta), ("A", A), ("B", B), ("C", C), ("D", D),
                        ("initial_state", initial_state)):
            if x is not None and (not isinstance(x, Tensor) or not x.is_floating_point()):
                got = x.dtype if isinstance(x, Tensor) else type(x).__name__
                raise ValueError(f"{op}: {name} must be a floating-point tensor, got {got}")
        if u.dim() != 3:
            raise ValueError(f"{op}: u must be [batch, time, channels E], got {tuple(u.shape)}")
        b, t, e = u.shape
        if A.dim() != 2 or A.shape[0] != e:
            raise ValueError(f"{op}: A must be [E={e}, N] (one row per channel of u), got {tuple(A.shape)}")
        n = A.shape[1]
        wanted = {"delta": (delta, (b, t, e)), "B": (B, (b, t, n)), "C": (C, (b, t, n)), "D": (D, (e,)),
                  "initial_state": (initial_state, (b, e, n))}
        for name, (x, shape) in wanted.items():
            if x is not None and tuple(x.shape) != shape:
                raise ValueError(f"{op}: {name} must be {list(shape)} for u {tuple(u.shape)} and A {tuple(A.shape)}, "
                                 f"got {tuple(x.shape)}")
        check_chunk_size(op, chunk_size)
        dtype = compute_dtype(u)
        h0 = initial_state if initial_state is not None else u.new_zeros(b, e, n)
        return cls(*(x.to(dtype) for x in (u, delta, A, B, C, h0)), chunk_size)


def selective_scan_naive(x: ScanInputs) -> tuple[Tensor, Tensor]:
    """The recurrence above, one token at a time: ``(y [B, T, E] without D u, h_T [B, E, N])``."""
    h = x.h0
    outputs = []
    for u_t, delta_t, b_t, c_t in zip(x.u.unbind(1), x.delta.unbind(1), x.B.unbind(1), x.C.unbind(1)):
        decay = torch.exp(delta_t[:, :, None] * x.A)  # [B, E, N]
        h = decay * h + (delta_t * u_t)[:, :, None] * b_t[:, None, :]  # [B, E, N]
        outputs.append((h * c_t[:, None, :]).sum(-1))  # [B, E]
    return torch.stack(outputs, 1), h  # [B, T, E], [B, E, N]
