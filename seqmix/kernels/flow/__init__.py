"""Flow attention (Wu et al. 2022, "Flowformer: Linearizing Transformers with Conservation Flows").

:func:`flow_attention` is the public op; ``naive`` is the explicit ``T x T`` flow formula
(the reference, :mod:`seqmix.kernels.flow.naive`, where the math is written out), ``chunk``
the linear form with prefix sums (:mod:`seqmix.kernels.flow.chunk`). No Triton form.
"""

from __future__ import annotations

from torch import Tensor

from seqmix.kernels.common import check_chunk_size, check_qkv, compute_dtype
from seqmix.kernels.flow.chunk import flow_chunk
from seqmix.kernels.flow.limits import FLOW
from seqmix.kernels.flow.naive import EPS, FlowState, features, flow_naive

__all__ = ["EPS", "FLOW", "FlowState", "features", "flow_attention", "flow_chunk", "flow_naive"]


def flow_attention(q: Tensor, k: Tensor, v: Tensor, *, causal: bool, initial_state: FlowState | None = None,
                   output_final_state: bool = False, chunk_size: int = 64,
                   impl: str = "auto") -> tuple[Tensor, FlowState | None]:
    """Flow attention of ``q, k: [B, T, H, K]`` (before the feature map, which the op applies) and
    ``v: [B, T, H, V]`` -> ``(o: [B, T, H, V] in q's dtype, final state or None)``.

    ``causal``: the paper's causal form (prefix sums), which may continue from ``initial_state``
    (a :class:`FlowState`; None: nothing before) and return its final state when
    ``output_final_state``; non-causal takes neither. ``chunk_size``: tokens per chunk of the
    chunked linear attention inside ``"chunk"``. ``impl``: ``"auto"`` (``"chunk"``) | ``"naive"`` | ``"chunk"``.
    """
    op = "flow_attention"
    check_qkv(op, q, k, v)
    check_chunk_size(op, chunk_size)
    b, _, h, dk = q.shape
    dv = v.shape[-1]
    if not causal and (initial_state is not None or output_final_state):
        raise ValueError(f"{op}: a state needs causal=True (non-causal flows sum over the whole sequence); "
                         "pass initial_state=None and output_final_state=False")
    if initial_state is None:
        initial_state = FlowState.empty(b, h, dk, dv, q.device, compute_dtype(q))
    elif not isinstance(initial_state, FlowState) or tuple(initial_state.kv.shape) != (b, h, dk, dv):
        got = tuple(initial_state.kv.shape) if isinstance(initial_state, FlowState) else type(initial_state).__name__
        raise ValueError(f"{op}: initial_state must be a FlowState with kv [B={b}, H={h}, K={dk}, V={dv}], "
                         f"got {got}; start from FlowState.empty or a previous piece's final state")
    form = FLOW.form(op, impl, q, name="flow", chunk_size=chunk_size)
    o, final = form(q, k, v, causal=causal, state=initial_state, chunk_size=chunk_size)
    return o, (final if output_final_state else None)
