"""Gated linear attention (GLA; Yang, Wang, Shen, Panda, Kim 2023, "Gated Linear
Attention Transformers with Hardware-Efficient Training").

    S_t = diag(exp(g_t)) S_{t-1} + k_t^T v_t ,   o_t = scale * q_t S_t

:func:`chunk_gla` is the public op; ``naive`` is the token-by-token reference, ``chunk``
the stable chunk-parallel PyTorch form, ``triton`` the GPU kernel
(``seqmix.kernels.gla.triton.gla_triton``), imported only when asked for. Each form takes
the checked arguments (:class:`~seqmix.kernels.common.Recurrence`) and the gates.
"""

from __future__ import annotations

from torch import Tensor

from seqmix.kernels.common import Recurrence
from seqmix.kernels.gla.chunk import gla_chunk
from seqmix.kernels.gla.limits import GLA
from seqmix.kernels.gla.naive import check_gates, gla_naive

__all__ = ["GLA", "chunk_gla", "gla_chunk", "gla_naive"]


def chunk_gla(q: Tensor, k: Tensor, v: Tensor, g: Tensor, *, scale: float | None = None,
              initial_state: Tensor | None = None, output_final_state: bool = False, cu_seqlens: Tensor | None = None,
              chunk_size: int = 64, impl: str = "auto") -> tuple[Tensor, Tensor | None]:
    """Causal gated linear attention.

    ``g: [B, T, H, K]`` log forget gates (<= 0; not checked, a positive gate grows the state).
    The other arguments and the results: :class:`~seqmix.kernels.common.Recurrence`; ``impl``:
    ``"auto"`` (Triton for CUDA tensors, chunk elsewhere) | ``"naive"`` | ``"chunk"`` | ``"triton"``.
    """
    x = Recurrence.check("chunk_gla", q, k, v, scale=scale, initial_state=initial_state,
                         output_final_state=output_final_state, cu_seqlens=cu_seqlens, chunk_size=chunk_size)
    check_gates("chunk_gla", q, g)
    return GLA.form("chunk_gla", impl, q, name="gla", chunk_size=chunk_size, head_dims=x.head_dims)(x, g)
