"""The Legendre Memory Unit's memory (Voelker et al. 2019), a fixed linear time-invariant system per channel:

    m_t = Ab m_{t-1} + Bb u_t          (Ab, Bb) = zero_order_hold(*legendre_delay(order, theta))

:func:`lmu_memory` is the public op; ``naive`` is the token-by-token recurrence (the reference);
``chunk`` and ``fft`` are the parallel form, the causal convolution with the impulse response
``Ab^k Bb`` (LMU-FFT's training form): ``chunk`` blocks it into matmuls over chunks of 32 tokens
with a scan over the chunk states (linear in T, the fastest on the CPU, ``"auto"``'s form); ``fft``
is one FFT convolution (``O(T log T)``), the paper's. No Triton form yet (``limits.py``).
"""

from __future__ import annotations

from torch import Tensor

from seqmix.kernels.lmu.chunk import lmu_chunk
from seqmix.kernels.lmu.fft import lmu_fft
from seqmix.kernels.lmu.limits import LMU
from seqmix.kernels.lmu.naive import (check_memory_inputs, legendre_delay, lmu_naive, shifted_legendre,
                                      zero_order_hold)

__all__ = ["LMU", "legendre_delay", "lmu_chunk", "lmu_fft", "lmu_memory", "lmu_naive", "shifted_legendre",
           "zero_order_hold"]


def lmu_memory(u: Tensor, a_bar: Tensor, b_bar: Tensor, *, initial_state: Tensor | None = None,
               output_final_state: bool = False, impl: str = "auto") -> tuple[Tensor, Tensor | None]:
    """The memory of every channel over a sequence.

    Args:
        u: ``[B, T, H]`` the input, one scalar per channel and token.
        a_bar, b_bar: ``[N, N]``, ``[N]`` the discretised system (float64 is best: the parallel forms
            build their tables in float64 whatever their dtype, and cache them while these tensors
            live unchanged and need no gradient).
        initial_state: ``[B, H, N]`` the memory before the first token; zeros when None.
        output_final_state: also return the memory after the last token.
        impl: ``"auto"`` (chunk) | ``"naive"`` | ``"chunk"`` | ``"fft"``.

    Returns:
        ``m: [B, T, H, N]`` in the dtype of u, and ``m_T: [B, H, N]`` (fp32; fp64 for fp64 u) or None.
    """
    check_memory_inputs("lmu_memory", u, a_bar, b_bar, initial_state)
    m, final = LMU.form("lmu_memory", impl, u, name="lmu")(u, a_bar, b_bar, initial_state)
    return m.to(u.dtype), (final if output_final_state else None)
