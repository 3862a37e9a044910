"""The Legendre memory in parallel (LMU-FFT, Chilkuri & Eliasmith 2021; LMUFormer's training form).

The memory is linear and time-invariant, so it is the causal convolution of the input with its
impulse response ``H_k = Ab^k Bb`` (``[T, N]``), plus the initial state's free response:

    m_t = sum_{j <= t} H_{t-j} u_j  +  Ab^(t+1) m_0

``H`` and the free response come from :func:`powers`, log2(T) doubling steps (``H`` in float64,
from the float64 ``Ab, Bb``). The convolution is a Toeplitz matmul for short sequences and an FFT
(``torch.fft.rfft`` zero-padded to 2T, so the circular convolution is the linear one) from
:data:`FFT_FROM` tokens on: ``O(T log T)`` per channel and memory dimension.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from seqmix.kernels.common import compute_dtype

FFT_FROM = 64  # sequences at least this long convolve by FFT; shorter ones by a [T, T] Toeplitz matmul


def powers(a: Tensor, v: Tensor, n: int) -> Tensor:
    """``[a^0 v, a^1 v, ..., a^(n-1) v]``: ``a: [N, N]``, ``v: [..., N]`` -> ``[..., n, N]``, by doubling
    (the first L terms times ``a^L`` are the next L: log2(n) matmuls)."""
    out = v[..., None, :]  # [..., 1, N]
    power = a  # a^L, L = the terms so far
    while out.shape[-2] < n:
        out = torch.cat([out, out @ power.T], -2)  # [..., 2L, N]
        power = power @ power
    return out[..., :n, :]


def causal_conv(u: Tensor, h: Tensor) -> Tensor:
    """``m_t = sum_{j <= t} h_{t-j} u_j``: ``u: [B, H, T]``, ``h: [T, N]`` -> ``[B, H, T, N]``."""
    t = u.shape[-1]
    if t < FFT_FROM:
        window = F.pad(u, (t - 1, 0)).unfold(-1, t, 1)  # [B, H, T, T]: row i = u_{i-T+1} .. u_i (zeros before 0)
        return window @ h.flip(0)  # [B, H, T, N]
    spectrum = torch.fft.rfft(u, n=2 * t)[..., None, :] * torch.fft.rfft(h.T, n=2 * t)  # [B, H, N, T + 1]
    return torch.fft.irfft(spectrum, n=2 * t)[..., :t].transpose(-1, -2)  # [B, H, N, 2T] -> [B, H, T, N]


def lmu_chunk(u: Tensor, a_bar: Tensor, b_bar: Tensor, s0: Tensor | None) -> tuple[Tensor, Tensor]:
    """The convolution form above; the arguments and results of :func:`~seqmix.kernels.lmu.naive.lmu_naive`
    (``s0=None``: zeros, no free response to add)."""
    dtype = compute_dtype(u)
    t = u.shape[1]
    response = powers(a_bar.double(), b_bar.double(), t).to(dtype)  # [T, N]: H_k = Ab^k Bb
    m = causal_conv(u.to(dtype).transpose(1, 2), response)  # [B, T, H] -> [B, H, T] -> [B, H, T, N]
    if s0 is not None:
        a = a_bar.to(dtype)
        m = m + powers(a, s0.to(dtype) @ a.T, t)  # [B, H, T, N]: Ab^(t+1) m_0
    m = m.transpose(1, 2)  # [B, T, H, N]
    return m, m[:, -1]
