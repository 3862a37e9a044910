"""Head-wise (block-diagonal) LSTM, GRU and sLSTM recurrences, FlashRNN-style.

Public ops (equations in ``naive.py``)::

    lstm_headwise(gates_x [B, T, H, 4, K], R [H, K, 4, K], *, initial_state=(h0, c0) | None,
                  output_final_state=False, impl="auto") -> (h [B, T, H, K], (h_T, c_T) | None)
    gru_headwise(gates_x [B, T, H, 3, K], R [H, K, 3, K], bias_n [H, K], *, initial_state=(h0,) | None,
                 output_final_state=False, impl="auto") -> (h [B, T, H, K], (h_T,) | None)
    slstm_headwise(gates_x [B, T, H, 4, K], R [H, K, 4, K], *, initial_state=(h0, c0, n0, m0) | None,
                   output_final_state=False, impl="auto") -> (h [B, T, H, K], (h_T, c_T, n_T, m_T) | None)

- ``gates_x`` is the input projection of every step with its bias (``W x_t + b``), gates in the
  order LSTM ``(i, f, z, o)``, GRU ``(r, z, n)``, sLSTM ``(i, f, z, o)``; ``R[h]`` is head
  ``h``'s recurrent block, ``(h_{t-1} R)[g, e] = sum_d h_{t-1}[d] R[d, g, e]``.
- Every state tensor is ``[B, H, K]``, fp32 (fp64 for fp64 inputs); ``None`` means zeros
  (and ``m0 = -inf`` for the sLSTM stabiliser, see :func:`zero_state`). ``h`` comes back in
  the dtype of ``gates_x``.
- ``impl``: ``"naive"`` (step by step, autograd; the reference), ``"chunk"`` (the fused loop
  with a hand-written backward, ``chunk.py``; the CPU fast form), ``"triton"`` (the GPU kernel
  ``seqmix.kernels.rnn.triton.{lstm,gru,slstm}_triton``, same arguments as the ``*_chunk``
  functions, imported only when asked for; CPU tensors need ``TRITON_INTERPRET=1``),
  ``"auto"`` (``"triton"`` for CUDA tensors, ``"chunk"`` elsewhere).
"""

from __future__ import annotations

from torch import Tensor

from seqmix.kernels.rnn.chunk import gru_chunk, lstm_chunk, slstm_chunk
from seqmix.kernels.rnn.limits import RNN
from seqmix.kernels.rnn.naive import (
    N_GATES,
    N_STATES,
    RNNState,
    gru_naive,
    lstm_naive,
    slstm_naive,
    zero_state,
)

__all__ = [
    "N_GATES",
    "RNN",
    "N_STATES",
    "RNNState",
    "gru_chunk",
    "gru_headwise",
    "gru_naive",
    "lstm_chunk",
    "lstm_headwise",
    "lstm_naive",
    "slstm_chunk",
    "slstm_headwise",
    "slstm_naive",
    "zero_state",
]


def lstm_headwise(gates_x: Tensor, R: Tensor, *, initial_state: RNNState | None = None,
                  output_final_state: bool = False, impl: str = "auto") -> tuple[Tensor, RNNState | None]:
    """Head-wise LSTM over ``gates_x: [B, T, H, 4, K]`` with ``R: [H, K, 4, K]``; see the module docstring."""
    form = RNN.form("lstm_headwise", impl, gates_x, name="lstm", head_dims={"K": gates_x.shape[-1]})
    return form(gates_x, R, initial_state=initial_state, output_final_state=output_final_state)


def gru_headwise(gates_x: Tensor, R: Tensor, bias_n: Tensor, *, initial_state: RNNState | None = None,
                 output_final_state: bool = False, impl: str = "auto") -> tuple[Tensor, RNNState | None]:
    """Head-wise GRU over ``gates_x: [B, T, H, 3, K]`` with ``R: [H, K, 3, K]``, ``bias_n: [H, K]``."""
    form = RNN.form("gru_headwise", impl, gates_x, name="gru", head_dims={"K": gates_x.shape[-1]})
    return form(gates_x, R, bias_n, initial_state=initial_state, output_final_state=output_final_state)


def slstm_headwise(gates_x: Tensor, R: Tensor, *, initial_state: RNNState | None = None,
                   output_final_state: bool = False, impl: str = "auto") -> tuple[Tensor, RNNState | None]:
    """Head-wise sLSTM over ``gates_x: [B, T, H, 4, K]`` with ``R: [H, K, 4, K]``; see the module docstring."""
    form = RNN.form("slstm_headwise", impl, gates_x, name="slstm", head_dims={"K": gates_x.shape[-1]})
    return form(gates_x, R, initial_state=initial_state, output_final_state=output_final_state)
