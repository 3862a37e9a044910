"""Linear attention with an optional fixed per-head decay (Katharopoulos et al. 2020;
Lightning Attention-1/2 / TransNormerLLM; RetNet's retention).

    S_t = exp(decay) * S_{t-1} + k_t^T v_t ,   o_t = scale * q_t S_t

:func:`linear_attn` is the public op; ``naive`` is the token-by-token reference,
``chunk`` the chunk-parallel PyTorch form, ``triton`` the GPU kernel
(``seqmix.kernels.linear_attn.triton.linear_attn_triton``, same signature as
:func:`linear_attn_chunk`), imported only when asked for.
"""

from __future__ import annotations

from torch import Tensor

from seqmix.kernels.linear_attn.chunk import linear_attn_chunk, linear_attn_global_chunk
from seqmix.kernels.linear_attn.limits import LINEAR_ATTN
from seqmix.kernels.linear_attn.naive import linear_attn_global_naive, linear_attn_naive

__all__ = [
    "LINEAR_ATTN",
    "linear_attn",
    "linear_attn_chunk",
    "linear_attn_global_chunk",
    "linear_attn_global_naive",
    "linear_attn_naive",
]


def linear_attn(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    decay: Tensor | None = None,
    scale: float | None = None,
    initial_state: Tensor | None = None,
    output_final_state: bool = False,
    cu_seqlens: Tensor | None = None,
    chunk_size: int = 64,
    impl: str = "auto",
) -> tuple[Tensor, Tensor | None]:
    """Causal linear attention with optional per-head decay.

    Args:
        q, k: ``[B, T, H, K]``; v: ``[B, T, H, V]``.
        decay: ``[H]`` log-decays (<= 0), ``S_t = exp(decay) S_{t-1} + k_t^T v_t``; None = no decay.
        scale: multiplies the output, default ``K ** -0.5``.
        initial_state: ``[B, H, K, V]`` (``[N, H, K, V]`` with ``cu_seqlens``); zeros when None.
        output_final_state: also return the state after the last token (fp32, fp64 for fp64 inputs).
        cu_seqlens: int64 ``[N + 1]`` offsets of N sequences packed along time (B must be 1);
            the state restarts at every boundary.
        chunk_size: tokens per chunk of the chunked forms.
        impl: ``"auto"`` (Triton for CUDA tensors, chunk elsewhere) | ``"naive"`` | ``"chunk"`` | ``"triton"``.

    Returns:
        ``o: [B, T, H, V]`` in the dtype of q, and the final state or None.
    """
    choice = LINEAR_ATTN.resolve("linear_attn", impl, q, chunk_size=chunk_size,
                                 head_dims={"K": q.shape[-1], "V": v.shape[-1]})
    arguments = dict(decay=decay, scale=scale, initial_state=initial_state,
                     output_final_state=output_final_state, cu_seqlens=cu_seqlens)
    if choice == "naive":
        return linear_attn_naive(q, k, v, **arguments)
    if choice == "chunk":
        return linear_attn_chunk(q, k, v, chunk_size=chunk_size, **arguments)
    return LINEAR_ATTN.triton("linear_attn_triton", q)(q, k, v, chunk_size=chunk_size, **arguments)
