"""The delta rule (DeltaNet): ``S_t = S_{t-1} + beta_t k_t^T (v_t - k_t S_{t-1})``, ``o_t = scale q_t S_t``.

``chunk_delta_rule`` is the public entry point; ``impl`` picks the form:

- ``"naive"``: token by token (``naive.py``), the reference;
- ``"chunk"``: the WY/UT chunkwise-parallel form in PyTorch (``chunk.py``), the CPU fast path;
- ``"triton"``: the GPU kernel ``seqmix.kernels.delta_rule.triton.delta_rule_triton`` (same
  arguments as ``delta_rule_chunk``), imported only when asked for; on CPU tensors it
  needs ``TRITON_INTERPRET=1``;
- ``"auto"``: ``"triton"`` for CUDA tensors, ``"chunk"`` elsewhere.
"""

from __future__ import annotations

from torch import Tensor

from seqmix.kernels.delta_rule.chunk import delta_rule_chunk
from seqmix.kernels.delta_rule.limits import DELTA_RULE
from seqmix.kernels.delta_rule.naive import delta_rule_naive


def chunk_delta_rule(q: Tensor, k: Tensor, v: Tensor, beta: Tensor, *, scale: float | None = None,
                     initial_state: Tensor | None = None, output_final_state: bool = False,
                     cu_seqlens: Tensor | None = None, chunk_size: int = 64,
                     impl: str = "auto") -> tuple[Tensor, Tensor | None]:
    """The delta rule over ``q, k: [B, T, H, K]``, ``v: [B, T, H, V]``, ``beta: [B, T, H]``.

    ``k`` must be L2-normalised by the caller and ``beta`` lie in (0, 1). ``scale``
    defaults to ``K ** -0.5``. ``initial_state`` / the final state are ``[N, H, K, V]``
    (fp32, fp64 for fp64 inputs), ``N = B``, or the number of packed sequences when
    ``cu_seqlens: int [N+1]`` packs them along ``T`` (then ``B == 1`` and the state starts
    afresh at each boundary). Returns ``(o: [B, T, H, V], final_state or None)``.
    """
    choice = DELTA_RULE.resolve("chunk_delta_rule", impl, q, chunk_size=chunk_size,
                                head_dims={"K": q.shape[-1], "V": v.shape[-1]})
    arguments = dict(scale=scale, initial_state=initial_state, output_final_state=output_final_state,
                     cu_seqlens=cu_seqlens)
    if choice == "naive":
        return delta_rule_naive(q, k, v, beta, **arguments)
    if choice == "chunk":
        return delta_rule_chunk(q, k, v, beta, chunk_size=chunk_size, **arguments)
    return DELTA_RULE.triton("delta_rule_triton", q)(q, k, v, beta, chunk_size=chunk_size, **arguments)


__all__ = ["DELTA_RULE", "chunk_delta_rule", "delta_rule_chunk", "delta_rule_naive"]
