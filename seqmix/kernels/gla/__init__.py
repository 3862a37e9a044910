"""Gated linear attention (GLA; Yang, Wang, Shen, Panda, Kim 2023, "Gated Linear
Attention Transformers with Hardware-Efficient Training").

    S_t = diag(exp(g_t)) S_{t-1} + k_t^T v_t ,   o_t = scale * q_t S_t

:func:`chunk_gla` is the public op; ``naive`` is the token-by-token reference, ``chunk``
the stable chunk-parallel PyTorch form, ``triton`` the GPU kernel
(``seqmix.kernels.gla.triton.gla_triton``, same signature as :func:`gla_chunk`),
imported only when asked for.
"""

from __future__ import annotations

from torch import Tensor

from seqmix.kernels.gla.chunk import gla_chunk
from seqmix.kernels.gla.limits import GLA
from seqmix.kernels.gla.naive import gla_naive

__all__ = ["GLA", "chunk_gla", "gla_chunk", "gla_naive"]


def chunk_gla(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor,
    *,
    scale: float | None = None,
    initial_state: Tensor | None = None,
    output_final_state: bool = False,
    cu_seqlens: Tensor | None = None,
    chunk_size: int = 64,
    impl: str = "auto",
) -> tuple[Tensor, Tensor | None]:
    """Causal gated linear attention.

    Args:
        q, k: ``[B, T, H, K]``; v: ``[B, T, H, V]``.
        g: ``[B, T, H, K]`` log forget gates (<= 0; not checked, a positive gate grows the state).
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
    choice = GLA.resolve("chunk_gla", impl, q, chunk_size=chunk_size, head_dims={"K": q.shape[-1], "V": v.shape[-1]})
    arguments = dict(scale=scale, initial_state=initial_state, output_final_state=output_final_state,
                     cu_seqlens=cu_seqlens)
    if choice == "naive":
        return gla_naive(q, k, v, g, **arguments)
    if choice == "chunk":
        return gla_chunk(q, k, v, g, chunk_size=chunk_size, **arguments)
    return GLA.triton("gla_triton", q)(q, k, v, g, chunk_size=chunk_size, **arguments)
