"""The Legendre memory as one FFT convolution (LMU-FFT, Chilkuri & Eliasmith 2021; LMUFormer's training form).

The memory is linear and time-invariant, so it is the causal convolution of the input with its
impulse response ``H_k = Ab^k Bb`` (``[T, N]``), plus the initial state's free response:

    m_t = sum_{j <= t} H_{t-j} u_j  +  Ab^(t+1) m_0

``H`` comes from :func:`~seqmix.kernels.lmu.chunk.powers` (log2(T) doubling steps, float64). The
convolution is ``torch.fft.rfft`` zero-padded to ``n`` = the power of two >= 2T - 1 (so the circular
convolution is the linear one): ``O(T log T)`` per channel and memory dimension. The response's
spectrum ``rfft(H, n)`` is cached per (system, n, dtype, device) for fixed systems, like the chunked
form's tables. The chunked form (:mod:`~seqmix.kernels.lmu.chunk`) is linear in T and faster on the
CPU; this one is the paper's form, kept as a second check of it.
"""

from __future__ import annotations

import weakref

import torch
from torch import Tensor

from seqmix.kernels.common import compute_dtype
from seqmix.kernels.lmu.chunk import powers

_CACHE_SIZE = 16
_SPECTRA: dict[tuple, tuple[weakref.ref, weakref.ref, Tensor]] = {}


def response_spectrum(a_bar: Tensor, b_bar: Tensor, n: int, dtype: torch.dtype) -> Tensor:
    """``rfft(H_k, n)`` over k < n / 2, ``[N, n / 2 + 1]`` complex (``H`` in float64, then ``dtype``); cached
    while the same ``a_bar``, ``b_bar`` live unchanged (apart under ``torch.inference_mode``: autograd
    cannot save those), built with its graph when either needs a gradient."""
    def build(a: Tensor, b: Tensor) -> Tensor:
        return torch.fft.rfft(powers(a.double(), b.double(), n // 2).to(dtype).T, n=n)  # [N, T'] -> [N, n/2 + 1]

    if torch.is_grad_enabled() and (a_bar.requires_grad or b_bar.requires_grad):
        return build(a_bar, b_bar)
    key = (id(a_bar), id(b_bar), a_bar._version, b_bar._version, n, dtype, a_bar.device,
           torch.is_inference_mode_enabled())
    hit = _SPECTRA.get(key)
    if hit is not None and hit[0]() is a_bar and hit[1]() is b_bar:
        return hit[2]
    spectrum = build(a_bar.detach(), b_bar.detach())
    _SPECTRA.pop(key, None)
    while len(_SPECTRA) >= _CACHE_SIZE:
        _SPECTRA.pop(next(iter(_SPECTRA)))
    _SPECTRA[key] = weakref.ref(a_bar), weakref.ref(b_bar), spectrum
    return spectrum


def lmu_fft(u: Tensor, a_bar: Tensor, b_bar: Tensor, s0: Tensor | None) -> tuple[Tensor, Tensor]:
    """The FFT form above; the arguments and results of :func:`~seqmix.kernels.lmu.naive.lmu_naive`
    (``s0=None``: zeros, no free response to add)."""
    dtype = compute_dtype(u)
    t = u.shape[1]
    n = 1 << max(2 * t - 2, 1).bit_length()  # the power of two >= 2T - 1
    spectrum = torch.fft.rfft(u.to(dtype).transpose(1, 2), n=n)[..., None, :] * response_spectrum(
        a_bar, b_bar, n, dtype)  # [B, H, 1, n/2 + 1] * [N, n/2 + 1] -> [B, H, N, n/2 + 1]
    m = torch.fft.irfft(spectrum, n=n)[..., :t].transpose(-1, -2)  # [B, H, N, n] -> [B, H, T, N]
    if s0 is not None:
        a = a_bar.to(dtype)
        m = m + powers(a, s0.to(dtype) @ a.T, t)  # [B, H, T, N]: Ab^(t+1) m_0
    m = m.transpose(1, 2)  # [B, T, H, N]
    return m, m[:, -1]
