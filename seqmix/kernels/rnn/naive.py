"""Head-wise LSTM, GRU and sLSTM, one time step at a time: the references.

FlashRNN (Pöppel et al. 2024) splits the hidden state into ``H`` heads of ``K`` units and
makes the recurrent matrix block-diagonal, one ``[K, G*K]`` block per head. The input
projections of all time steps are one matmul done by the caller (``gates_x``, biases
included); what is left is the recurrence, per head ``h``:

    a_t = gates_x[:, t, h] + h_{t-1} @ R[h]          a_t: [B, G, K]

LSTM (G = 4, gates i, f, z, o):
    c_t = sigmoid(f) * c_{t-1} + sigmoid(i) * tanh(z),   h_t = sigmoid(o) * tanh(c_t)

GRU (G = 3, gates r, z, n; the cuDNN / PyTorch form with a recurrent bias ``bias_n`` on n):
    r = sigmoid(x_r + (h R)_r), z = sigmoid(x_z + (h R)_z),
    n = tanh(x_n + r * ((h R)_n + bias_n)),              h_t = (1 - z) * n + z * h_{t-1}

sLSTM (xLSTM, Beck et al. 2024; G = 4, gates i, f, z, o; exponential input gate,
sigmoid forget gate, normaliser n and stabiliser m):
    m_t = max(logsigmoid(f) + m_{t-1}, i)
    i'  = exp(i - m_t),   f' = exp(logsigmoid(f) + m_{t-1} - m_t)
    c_t = f' c_{t-1} + i' tanh(z),   n_t = f' n_{t-1} + i',   h_t = sigmoid(o) * c_t / n_t
  The default initial state is h = c = n = 0 and m = -inf ("nothing seen yet"), so that
  m_1 = i_1 and n_t >= 1 for every t: the division never sees a zero.

Shapes: ``gates_x: [B, T, H, G, K]``, ``R: [H, K, G, K]`` (``(h R)[b, g, e] = sum_d h[b, d]
R[d, g, e]``), every state ``[B, H, K]``; states are tuples: LSTM ``(h, c)``, GRU ``(h,)``,
sLSTM ``(h, c, n, m)``. Computation and states are fp32 (fp64 for fp64 inputs); the output
``h: [B, T, H, K]`` comes back in the dtype of ``gates_x``.
"""

from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import Tensor

from seqmix.kernels.common import compute_dtype
from seqmix.kernels.threads import single_threaded

RNNState = tuple[Tensor, ...]

N_GATES = {"lstm": 4, "gru": 3, "slstm": 4}
N_STATES = {"lstm": 2, "gru": 1, "slstm": 4}
STATE_NAMES = {"lstm": "(h, c)", "gru": "(h,)", "slstm": "(h, c, n, m)"}


def check_rnn_inputs(cell: str, gates_x: Tensor, R: Tensor, initial_state: RNNState | None,
                     bias_n: Tensor | None = None) -> None:
    """Shapes of ``gates_x [B, T, H, G, K]``, ``R [H, K, G, K]``, the state tuple and GRU's ``bias_n``."""
    op, g = f"{cell}_headwise", N_GATES[cell]
    if not isinstance(gates_x, Tensor) or gates_x.dim() != 5 or gates_x.shape[3] != g:
        got = tuple(gates_x.shape) if isinstance(gates_x, Tensor) else type(gates_x).__name__
        raise ValueError(f"{op}: gates_x must be [batch, time, heads, {g} gates, head_dim], got {got}")
    if not gates_x.is_floating_point():
        raise ValueError(f"{op}: gates_x must be a floating-point tensor, got {gates_x.dtype}")
    b, t, h, _, k = gates_x.shape
    if t == 0:
        raise ValueError(f"{op}: gates_x has zero time steps; give at least one")
    if not isinstance(R, Tensor) or tuple(R.shape) != (h, k, g, k):
        got = tuple(R.shape) if isinstance(R, Tensor) else type(R).__name__
        raise ValueError(f"{op}: R must be [heads={h}, head_dim={k}, gates={g}, head_dim={k}], got {got}")
    if initial_state is not None:
        n = N_STATES[cell]
        if not isinstance(initial_state, (tuple, list)) or len(initial_state) != n:
            raise ValueError(f"{op}: initial_state must be a tuple {STATE_NAMES[cell]} of {n} tensors "
                             f"[B={b}, H={h}, K={k}], got {type(initial_state).__name__}")
        for s in initial_state:
            if not isinstance(s, Tensor) or tuple(s.shape) != (b, h, k):
                got = tuple(s.shape) if isinstance(s, Tensor) else type(s).__name__
                raise ValueError(f"{op}: every initial_state tensor {STATE_NAMES[cell]} must be "
                                 f"[B={b}, H={h}, K={k}], got {got}")
    if cell == "gru" and (not isinstance(bias_n, Tensor) or tuple(bias_n.shape) != (h, k)):
        got = tuple(bias_n.shape) if isinstance(bias_n, Tensor) else type(bias_n).__name__
        raise ValueError(f"gru_headwise: bias_n (the recurrent bias of the n gate) must be [H={h}, K={k}], got {got}")


def zero_state(cell: str, batch: int, heads: int, head_dim: int, *, device: torch.device | str | None = None,
               dtype: torch.dtype = torch.float32) -> RNNState:
    """The default initial state of ``cell``: zeros, and ``m = -inf`` for the sLSTM stabiliser."""
    zeros = [torch.zeros(batch, heads, head_dim, device=device, dtype=dtype) for _ in range(N_STATES[cell])]
    if cell == "slstm":
        zeros[3] = torch.full((batch, heads, head_dim), float("-inf"), device=device, dtype=dtype)
    return tuple(zeros)


def _prepare(cell: str, gates_x: Tensor, R: Tensor, initial_state: RNNState | None):
    dtype = compute_dtype(gates_x)
    b, _, h, _, k = gates_x.shape
    if initial_state is None:
        state = zero_state(cell, b, h, k, device=gates_x.device, dtype=dtype)
    else:
        state = tuple(s.to(dtype) for s in initial_state)
    return gates_x.to(dtype), R.to(dtype), state


def _recurrent(h: Tensor, R: Tensor) -> Tensor:
    return torch.einsum("bhd,hdge->bhge", h, R)  # [B, H, K] x [H, K, G, K] -> [B, H, G, K]


@single_threaded()
def lstm_naive(gates_x: Tensor, R: Tensor, *, initial_state: RNNState | None = None,
               output_final_state: bool = False) -> tuple[Tensor, RNNState | None]:
    """Head-wise LSTM, step by step. Gates ``(i, f, z, o)``; state ``(h, c)``."""
    check_rnn_inputs("lstm", gates_x, R, initial_state)
    gx, R, (h, c) = _prepare("lstm", gates_x, R, initial_state)
    outputs = []
    for x_t in gx.unbind(1):  # [B, H, 4, K]
        i, f, z, o = (x_t + _recurrent(h, R)).unbind(2)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(z)
        h = torch.sigmoid(o) * torch.tanh(c)
        outputs.append(h)
    y = torch.stack(outputs, 1).to(gates_x.dtype)  # [B, T, H, K]
    return y, ((h, c) if output_final_state else None)


@single_threaded()
def gru_naive(gates_x: Tensor, R: Tensor, bias_n: Tensor, *, initial_state: RNNState | None = None,
              output_final_state: bool = False) -> tuple[Tensor, RNNState | None]:
    """Head-wise GRU, step by step. Gates ``(r, z, n)``; ``bias_n: [H, K]``; state ``(h,)``."""
    check_rnn_inputs("gru", gates_x, R, initial_state, bias_n)
    gx, R, (h,) = _prepare("gru", gates_x, R, initial_state)
    bias_n = bias_n.to(gx.dtype)
    outputs = []
    for x_t in gx.unbind(1):  # [B, H, 3, K]
        x_r, x_z, x_n = x_t.unbind(2)
        rec_r, rec_z, rec_n = _recurrent(h, R).unbind(2)
        r = torch.sigmoid(x_r + rec_r)
        z = torch.sigmoid(x_z + rec_z)
        n = torch.tanh(x_n + r * (rec_n + bias_n))
        h = (1 - z) * n + z * h
        outputs.append(h)
    y = torch.stack(outputs, 1).to(gates_x.dtype)  # [B, T, H, K]
    return y, ((h,) if output_final_state else None)


@single_threaded()
def slstm_naive(gates_x: Tensor, R: Tensor, *, initial_state: RNNState | None = None,
                output_final_state: bool = False) -> tuple[Tensor, RNNState | None]:
    """Head-wise sLSTM, step by step. Gates ``(i, f, z, o)``; state ``(h, c, n, m)``."""
    check_rnn_inputs("slstm", gates_x, R, initial_state)
    gx, R, (h, c, n, m) = _prepare("slstm", gates_x, R, initial_state)
    outputs = []
    for x_t in gx.unbind(1):  # [B, H, 4, K]
        i, f, z, o = (x_t + _recurrent(h, R)).unbind(2)
        log_f_plus_m = F.logsigmoid(f) + m
        m_new = torch.maximum(log_f_plus_m, i)
        i_gate = torch.exp(i - m_new)
        f_gate = torch.exp(log_f_plus_m - m_new)
        c = f_gate * c + i_gate * torch.tanh(z)
        n = f_gate * n + i_gate
        h = torch.sigmoid(o) * c / n
        m = m_new
        outputs.append(h)
    y = torch.stack(outputs, 1).to(gates_x.dtype)  # [B, T, H, K]
    return y, ((h, c, n, m) if output_final_state else None)
