"""The delta rule (DeltaNet): ``S_t = S_{t-1} + beta_t k_t^T (v_t - k_t S_{t-1})``, ``o_t = scale q_t S_t``.

``chunk_delta_rule`` is the public entry point; ``impl`` picks the form:

- ``"naive"``: token by token (``naive.py``), the reference;
- ``"chunk"``: the WY/UT chunkwise-parallel form in PyTorch (``chunk.py``), the CPU fast path;
- ``"triton"``: the GPU kernel ``seqmix.kernels.delta_rule.triton.delta_rule_triton``,
  imported only when asked for; on CPU tensors it needs ``TRITON_INTERPRET=1``;
- ``"auto"``: ``"triton"`` for CUDA tensors, ``"chunk"`` elsewhere.

Each form takes the checked arguments (:class:`~seqmix.kernels.common.Recurrence`) and beta.
"""

from __future__ import annotations

from torch import Tensor

from seqmix.kernels.common import Recurrence
from seqmix.kernels.delta_rule.chunk import delta_rule_chunk
from seqmix.kernels.delta_rule.limits import DELTA_RULE
from seqmix.kernels.delta_rule.naive import check_beta, delta_rule_naive


def chunk_delta_rule(q: Tensor, k: Tensor, v: Tensor, beta: Tensor, *, scale: float | None = None,
                     initial_state: Tensor | None = None, output_final_state: bool = False,
                     cu_seqlens: Tensor | None = None, chunk_size: int = 64,
                     impl: str = "auto") -> tuple[Tensor, Tensor | None]:
    """The delta rule.

    ``beta: [B, T, H]`` writing strengths in (0, 1); ``k`` must be L2-normalised by the caller;
    ``scale`` > 0. The other arguments and the results: :class:`~seqmix.kernels.common.Recurrence`.
    """
    x = Recurrence.check("chunk_delta_rule", q, k, v, scale=scale, initial_state=initial_state,
                         output_final_state=output_final_state, cu_seqlens=cu_seqlens, chunk_size=chunk_size)
    check_beta("chunk_delta_rule", x, beta)
    return DELTA_RULE.form("chunk_delta_rule", impl, q, name="delta_rule", chunk_size=chunk_size,
                           head_dims=x.head_dims)(x, beta)


__all__ = ["DELTA_RULE", "chunk_delta_rule", "delta_rule_chunk", "delta_rule_naive"]
