"""The selective scan of Mamba-1 (Gu & Dao 2023, "Mamba: Linear-Time Sequence Modeling with
Selective State Spaces"), per channel e and state index n::

    h_t = exp(delta_t A) * h_{t-1} + delta_t B_t u_t ,   y_t = C_t . h_t + D u_t

:func:`selective_scan` is the public op; ``naive`` is the token-by-token reference
(``naive.py``), ``chunk`` the two-level chunked scan (``chunk.py``, the fast form on the CPU).
There is no Triton form yet, so ``"auto"`` is ``"chunk"`` on every device.
"""

from __future__ import annotations

from torch import Tensor

from seqmix.kernels.selective_scan.chunk import selective_scan_chunk
from seqmix.kernels.selective_scan.limits import SELECTIVE_SCAN
from seqmix.kernels.selective_scan.naive import ScanInputs, selective_scan_naive

__all__ = ["SELECTIVE_SCAN", "ScanInputs", "selective_scan", "selective_scan_chunk", "selective_scan_naive"]


def selective_scan(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None, *,
                   initial_state: Tensor | None = None, output_final_state: bool = False, chunk_size: int = 256,
                   impl: str = "auto") -> tuple[Tensor, Tensor | None]:
    """The selective scan above.

    - ``u: [B, T, E]`` inputs; ``delta: [B, T, E]`` step sizes (>= 0, e.g. a softplus);
    - ``A: [E, N]`` the diagonal state matrix (<= 0: every decay ``exp(delta A)`` is at most 1);
    - ``B, C: [B, T, N]`` input and output matrices per token; ``D: [E]`` the skip (None: no skip);
    - ``initial_state: [B, E, N]`` (zeros when None); ``output_final_state``: also return ``h_T``;
    - ``chunk_size``: tokens per chunk of the chunked form; ``impl``: ``"auto"`` (= ``"chunk"``),
      ``"naive"`` or ``"chunk"``.

    Returns ``y: [B, T, E]`` in the dtype of u and ``h_T: [B, E, N]`` in fp32 (fp64 for fp64 u) or None.
    """
    x = ScanInputs.check("selective_scan", u, delta, A, B, C, D, initial_state, chunk_size)
    y, final = SELECTIVE_SCAN.form("selective_scan", impl, u, name="selective_scan", chunk_size=chunk_size)(x)
    if D is not None:
        y = y + D.to(y.dtype) * x.u
    return y.to(u.dtype), (final if output_final_state else None)
