"""Linear attention with an optional fixed per-head decay (Katharopoulos et al. 2020;
Lightning Attention-1/2 / TransNormerLLM; RetNet's retention).

    S_t = exp(decay) * S_{t-1} + k_t^T v_t ,   o_t = scale * q_t S_t

:func:`linear_attn` is the public op; ``naive`` is the token-by-token reference,
``chunk`` the chunk-parallel PyTorch form, ``triton`` the GPU kernel
(``seqmix.kernels.linear_attn.triton.linear_attn_triton``), imported only when asked for.
Each form takes the checked arguments (:class:`~seqmix.kernels.common.Recurrence`) and the decay.
"""

from __future__ import annotations

from torch import Tensor

from seqmix.kernels.common import Recurrence
from seqmix.kernels.linear_attn.chunk import linear_attn_chunk, linear_attn_global_chunk
from seqmix.kernels.linear_attn.limits import LINEAR_ATTN
from seqmix.kernels.linear_attn.naive import check_decay, linear_attn_global_naive, linear_attn_naive

__all__ = [
    "LINEAR_ATTN",
    "linear_attn",
    "linear_attn_chunk",
    "linear_attn_global_chunk",
    "linear_attn_global_naive",
    "linear_attn_naive",
]


def linear_attn(q: Tensor, k: Tensor, v: Tensor, *, decay: Tensor | None = None, scale: float | None = None,
                initial_state: Tensor | None = None, output_final_state: bool = False,
                cu_seqlens: Tensor | None = None, chunk_size: int = 64,
                impl: str = "auto") -> tuple[Tensor, Tensor | None]:
    """Causal linear attention with optional per-head decay.

    ``decay: [H]`` log-decays (<= 0), ``S_t = exp(decay) S_{t-1} + k_t^T v_t``; None = no decay.
    The other arguments and the results: :class:`~seqmix.kernels.common.Recurrence`; ``impl``:
    ``"auto"`` (Triton for CUDA tensors, chunk elsewhere) | ``"naive"`` | ``"chunk"`` | ``"triton"``.
    """
    x = Recurrence.check("linear_attn", q, k, v, scale=scale, initial_state=initial_state,
                         output_final_state=output_final_state, cu_seqlens=cu_seqlens, chunk_size=chunk_size)
    check_decay("linear_attn", q, decay)
    return LINEAR_ATTN.form("linear_attn", impl, q, name="linear_attn", chunk_size=chunk_size,
                            head_dims=x.head_dims)(x, decay)
