"""Softmax attention of one query over every prefix, as a scan (Aaren's core).

Public op (equations in ``naive.py``)::

    softmax_scan(s [B, T, H], v [B, T, H, V], *, initial_state=(m [B, H], u [B, H, V], w [B, H]) | None,
                 output_final_state=False, chunk_size=64, impl="auto")
        -> (o [B, T, H, V], (m_T, u_T, w_T) | None)

    o_t = sum_{j <= t} exp(s_j) v_j / sum_{j <= t} exp(s_j)      (plus the initial state's prefix)

- ``s`` are the scores of one query per head (``q . k_t``, already scaled), ``v`` the values;
- the state ``(m, u, w)`` is the running max, numerator and denominator, fp32 (fp64 for fp64
  inputs); ``None`` is the empty prefix ``(-inf, 0, 0)`` (:func:`empty_state`); two states
  merge with the associative :func:`combine`;
- ``impl``: ``"naive"`` (token by token; the reference), ``"chunk"`` (cummax + masked
  ``[C, C]`` products per chunk + a merge over chunks, ``chunk.py``; the CPU fast form),
  ``"triton"`` (the GPU kernel ``seqmix.kernels.scan.triton.softmax_scan_triton``, same
  arguments as :func:`softmax_scan_chunk`, imported only when asked for; CPU tensors need
  ``TRITON_INTERPRET=1``), ``"auto"`` (``"triton"`` for CUDA tensors, ``"chunk"`` elsewhere).
"""

from __future__ import annotations

from torch import Tensor

from seqmix.kernels.scan.chunk import softmax_scan_chunk
from seqmix.kernels.scan.limits import SCAN
from seqmix.kernels.scan.naive import ScanState, combine, empty_state, softmax_scan_naive

__all__ = ["SCAN", "ScanState", "combine", "empty_state", "softmax_scan", "softmax_scan_chunk", "softmax_scan_naive"]


def softmax_scan(s: Tensor, v: Tensor, *, initial_state: ScanState | None = None, output_final_state: bool = False,
                 chunk_size: int = 64, impl: str = "auto") -> tuple[Tensor, ScanState | None]:
    """Causal softmax attention of one query per head over every prefix; see the module docstring."""
    choice = SCAN.resolve("softmax_scan", impl, v, chunk_size=chunk_size, head_dims={"V": v.shape[-1]})
    arguments = dict(initial_state=initial_state, output_final_state=output_final_state)
    if choice == "naive":
        return softmax_scan_naive(s, v, **arguments)
    if choice == "chunk":
        return softmax_scan_chunk(s, v, chunk_size=chunk_size, **arguments)
    return SCAN.triton("softmax_scan_triton", v)(s, v, chunk_size=chunk_size, **arguments)
