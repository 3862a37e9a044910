"""The Legendre Memory Unit's memory (Voelker, Kajić & Eliasmith 2019, "Legendre Memory Units:
Continuous-Time Representation in Recurrent Neural Networks"), one token at a time: the reference.

The continuous-time delay system of order N and window theta (the paper's eq. 1-2),

    theta dm/dt = A m + B u ,   A_ij = (2i+1) * (-1 if i < j else (-1)^(i-j+1)),   B_i = (2i+1) (-1)^i

(here with 1/theta folded into A and B), holds in ``m(t)`` the shifted-Legendre coefficients of
the input's last ``theta`` time units: ``u(t - r theta) ~= sum_i P~_i(r) m_i(t)`` for ``0 <= r <= 1``,
``P~_i(r) = P_i(2r - 1)`` (:func:`shifted_legendre`; eq. 3). Discretised by zero-order hold with a
step of one token (:func:`zero_order_hold`, once, in float64):

    m_t = Ab m_{t-1} + Bb u_t          m: [N] per channel, u_t: one scalar per channel
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from seqmix.kernels.common import compute_dtype


def legendre_delay(order: int, theta: float) -> tuple[Tensor, Tensor]:
    """The continuous system ``dm/dt = A m + B u`` above: ``A: [N, N]``, ``B: [N]``, float64."""
    i = torch.arange(order, dtype=torch.float64)
    rows, cols = i[:, None], i[None, :]
    sign = torch.where(rows < cols, -1.0, (-1.0) ** (rows - cols + 1))  # [N, N]
    a = (2 * rows + 1) * sign / theta  # [N, N]
    b = (2 * i + 1) * (-1.0) ** i / theta  # [N]
    return a, b


def zero_order_hold(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """``(Ab, Bb) = (exp(A), A^-1 (exp(A) - I) B)``, the input held for one step, from one matrix
    exponential of ``[[A, B], [0, 0]]`` (no inverse of A needed); the dtype of ``a``."""
    n = a.shape[0]
    augmented = torch.zeros(n + 1, n + 1, dtype=a.dtype)
    augmented[:n, :n], augmented[:n, n] = a, b
    held = torch.linalg.matrix_exp(augmented)  # [[Ab, Bb], [0, 1]]
    return held[:n, :n].contiguous(), held[:n, n].contiguous()


def shifted_legendre(order: int, r: float) -> Tensor:
    """``[P~_0(r), ..., P~_{N-1}(r)]``, ``P~_i(r) = P_i(2r - 1)`` (float64): the decoder that reads
    ``u(t - r theta)`` out of the memory (``r = 1``: the input ``theta`` steps ago)."""
    return torch.tensor([(-1.0) ** i * sum(math.comb(i, j) * math.comb(i + j, j) * (-r) ** j for j in range(i + 1))
                         for i in range(order)], dtype=torch.float64)


def check_memory_inputs(op: str, u: Tensor, a_bar: Tensor, b_bar: Tensor, initial_state: Tensor | None) -> None:
    """``u: [B, T, H]`` floats; ``a_bar: [N, N]``, ``b_bar: [N]``; ``initial_state: [B, H, N]`` or None."""
    if not isinstance(u, Tensor) or u.dim() != 3 or not u.is_floating_point():
        got = f"{u.dtype} {tuple(u.shape)}" if isinstance(u, Tensor) else type(u).__name__
        raise ValueError(f"{op}: u must be a float tensor [batch, time, channels], got {got}")
    n = a_bar.shape[0] if isinstance(a_bar, Tensor) and a_bar.dim() == 2 else -1
    if n < 1 or tuple(a_bar.shape) != (n, n) or not isinstance(b_bar, Tensor) or tuple(b_bar.shape) != (n,):
        raise ValueError(f"{op}: a_bar must be [N, N] and b_bar [N] (from zero_order_hold), got "
                         f"{tuple(getattr(a_bar, 'shape', ()))} and {tuple(getattr(b_bar, 'shape', ()))}")
    want = (u.shape[0], u.shape[2], n)
    if initial_state is not None and (not isinstance(initial_state, Tensor) or tuple(initial_state.shape) != want):
        got = tuple(initial_state.shape) if isinstance(initial_state, Tensor) else type(initial_state).__name__
        raise ValueError(f"{op}: initial_state must be [B, H, N] = {want}, got {got}")


def lmu_naive(u: Tensor, a_bar: Tensor, b_bar: Tensor, s0: Tensor | None) -> tuple[Tensor, Tensor]:
    """The recurrence above, one token at a time, in fp32 (fp64 for fp64 inputs): ``u: [B, T, H]``,
    ``s0: [B, H, N]`` (None: zeros) -> ``(m: [B, T, H, N], m_T: [B, H, N])`` in that dtype."""
    dtype = compute_dtype(u)
    a_bar, b_bar = a_bar.to(dtype), b_bar.to(dtype)
    m = s0.to(dtype) if s0 is not None else u.new_zeros(u.shape[0], u.shape[2], a_bar.shape[0], dtype=dtype)
    memories = []
    for u_t in u.to(dtype).unbind(1):  # [B, H]
        m = m @ a_bar.T + u_t[..., None] * b_bar  # [B, H, N]
        memories.append(m)
    return torch.stack(memories, 1), m  # [B, T, H, N], [B, H, N]
