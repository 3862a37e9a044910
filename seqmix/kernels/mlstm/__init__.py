"""xLSTM's mLSTM recurrence (Beck et al. 2024): matrix memory, exponential input gate, forget
gate, normaliser, max-stabiliser.

    C_t = f_t C_{t-1} + i_t k_t^T v_t,   n_t = f_t n_{t-1} + i_t k_t,   h_t = q_t C_t / max(|q_t . n_t|, 1)

:func:`chunk_mlstm` is the public op; ``naive`` is the stabilised token-by-token reference
(``naive.py``), ``chunk`` the chunkwise-parallel PyTorch form (``chunk.py``). No Triton form yet.
"""

from __future__ import annotations

from torch import Tensor

from seqmix.kernels.mlstm.chunk import mlstm_chunk
from seqmix.kernels.mlstm.limits import MLSTM_OP
from seqmix.kernels.mlstm.naive import MLSTMInput, MLSTMState, mlstm_naive

__all__ = ["MLSTM_OP", "MLSTMInput", "MLSTMState", "chunk_mlstm", "mlstm_chunk", "mlstm_naive"]


def chunk_mlstm(q: Tensor, k: Tensor, v: Tensor, log_i: Tensor, log_f: Tensor, *, scale: float | None = None,
                initial_state: MLSTMState | None = None, output_final_state: bool = False, chunk_size: int = 64,
                impl: str = "auto") -> tuple[Tensor, MLSTMState | None]:
    """The causal mLSTM cell per head (without the output gate).

    Args:
        q, k: ``[B, T, H, K]``; v: ``[B, T, H, V]``.
        log_i: ``[B, T, H]`` input-gate pre-activations (``i_t = exp(log_i_t)``, any real).
        log_f: ``[B, T, H]`` log forget gates (``logsigmoid(f~)``, <= 0; or ``f~`` for an
            exponential forget gate, any real: the stabiliser keeps both finite).
        scale: multiplies the keys (default ``K ** -0.5``).
        initial_state: :class:`MLSTMState` ``(C [B, H, K, V], n [B, H, K], m [B, H])``; empty when None.
        output_final_state: also return the state after the last token (fp32, fp64 for fp64 inputs).
        chunk_size: tokens per chunk of the chunked form (any positive int).
        impl: ``"auto"`` (the chunked form everywhere: no Triton form) | ``"naive"`` | ``"chunk"``.

    Returns:
        ``h: [B, T, H, V]`` in the dtype of q, and the final state or None.
    """
    x = MLSTMInput.check("chunk_mlstm", q, k, v, log_i, log_f, scale=scale, initial_state=initial_state,
                         output_final_state=output_final_state, chunk_size=chunk_size)
    return MLSTM_OP.form("chunk_mlstm", impl, q, name="mlstm", chunk_size=chunk_size)(x)
