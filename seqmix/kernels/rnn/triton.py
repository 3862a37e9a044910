"""Head-wise LSTM, GRU and sLSTM as fused recurrent Triton kernels (FlashRNN-style).

One launch runs the whole sequence: one program per (block of 16 batch rows, head) keeps
the cell state (``h, c`` and for the sLSTM ``n, m``) in registers, fp32, for all T steps,
and at every step computes ``a_t = gates_x_t + h_{t-1} R[h]`` with one ``tl.dot`` per gate
(``[16, K] x [K, K]``; the head's recurrent block ``R[h]`` is re-read each step, so it stays
in the L1/L2 caches instead of making a round trip to HBM; a head of 64 fits in registers,
one of 256 would not). The forward saves the pre-activation gates and the cell states
(fp32) for the backward.

The backward is one launch too, walking backward in time with the state gradients in
registers: it forms the gradient of every pre-activation gate (which is the gradient of
``gates_x``) and sends ``da_t R[h]^T`` back to ``h_{t-1}``. The gradient of the recurrent
weights, ``dR[h] = sum_{b,t} h_{t-1}^T da_t``, does not depend on the time order, so it is
one batched matmul afterwards (``torch.einsum``), as cuDNN does it.

Equations: ``seqmix/kernels/rnn/naive.py``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from seqmix.kernels.rnn.limits import RNN
from seqmix.kernels.rnn.naive import RNNState, check_rnn_inputs
from seqmix.kernels.triton_utils import block_size, check_tensors, new_output

BB = 16  # batch rows per program: the smallest tl.dot operand


@triton.jit
def _tanh(x):
    return 2.0 * tl.sigmoid(2.0 * x) - 1.0


@triton.jit
def _log_sigmoid(x):
    return tl.minimum(x, 0.0) - tl.log(1.0 + tl.exp(-tl.abs(x)))


@triton.jit
def _gate(gx, R, h_dt, p_g, p_r, m_bk, m_r, g: tl.constexpr, K: tl.constexpr):
    """Pre-activation of gate g: gates_x + h_{t-1} R_g, [BB, BK] fp32."""
    return (tl.load(gx + p_g + g * K, mask=m_bk, other=0.0).to(tl.float32)
            + tl.dot(h_dt, tl.load(R + p_r + g * K, mask=m_r, other=0.0)))


@triton.jit
def _back(da, R, p_r, m_r, g: tl.constexpr, K: tl.constexpr):
    """da_g R_g^T: what gate g sends back to h_{t-1}, [BB, BK]."""
    r = tl.load(R + p_r + g * K, mask=m_r, other=0.0)
    return tl.dot(da.to(r.dtype), tl.trans(r))


@triton.jit
def _program(B, H: tl.constexpr, K: tl.constexpr, G: tl.constexpr, BB: tl.constexpr, BK: tl.constexpr):
    """This program's head ``i_h``, batch rows ``o_b`` and columns ``o_k``; the mask of its ``[BB, BK]``
    tiles and of R's ``[BK, BK]`` tiles; the offsets of its tile of a ``[B, H, K]`` state and of gate 0
    of its head's block of ``R [H, K, G, K]``."""
    i_b, i_h = tl.program_id(0), tl.program_id(1)
    o_b, o_k = i_b * BB + tl.arange(0, BB), tl.arange(0, BK)
    m_bk = (o_b < B)[:, None] & (o_k < K)[None, :]
    m_r = (o_k < K)[:, None] & (o_k < K)[None, :]
    p_state = (o_b[:, None] * H + i_h) * K + o_k[None, :]  # [BB, BK] into [B, H, K]
    p_r = i_h * K * G * K + o_k[:, None] * (G * K) + o_k[None, :]  # [BK, BK] into R [H, K, G, K]
    return i_h, o_b, o_k, m_bk, m_r, p_state, p_r


@triton.jit
def _state(x0, p_state, m_bk, HAS_X0: tl.constexpr, BB: tl.constexpr, BK: tl.constexpr):
    """The fp32 ``[BB, BK]`` tile of the state ``x0`` (zeros without one)."""
    x = tl.zeros([BB, BK], dtype=tl.float32)
    if HAS_X0:
        x += tl.load(x0 + p_state, mask=m_bk, other=0.0)
    return x


@triton.jit
def _step(o_b, o_k, t, T, i_h, H: tl.constexpr, K: tl.constexpr, G: tl.constexpr):
    """Step t's ``[BB, BK]`` offsets into its gates in ``[B, T, H, G, K]`` and its values in ``[B, T, H, K]``."""
    row = (o_b[:, None].to(tl.int64) * T + t) * H + i_h  # [BB, 1] token row of [B, T, H]
    return row * (G * K) + o_k[None, :], row * K + o_k[None, :]


@triton.jit
def _four_gates(gx, R, h, p_g, p_r, m_bk, m_r, pre, K: tl.constexpr):
    """The four pre-activations ``gates_x + h_{t-1} R_g`` of an LSTM / sLSTM step, also stored in ``pre``."""
    h_dt = h.to(R.dtype.element_ty)
    a_0 = _gate(gx, R, h_dt, p_g, p_r, m_bk, m_r, 0, K)
    a_1 = _gate(gx, R, h_dt, p_g, p_r, m_bk, m_r, 1, K)
    a_2 = _gate(gx, R, h_dt, p_g, p_r, m_bk, m_r, 2, K)
    a_3 = _gate(gx, R, h_dt, p_g, p_r, m_bk, m_r, 3, K)
    _store_four(pre, p_g, a_0, a_1, a_2, a_3, m_bk, K)
    return a_0, a_1, a_2, a_3


@triton.jit
def _store_four(x, p_g, a_0, a_1, a_2, a_3, m_bk, K: tl.constexpr):
    """Stores four gates' ``[BB, BK]`` tiles at ``p_g`` of ``x [B, T, H, 4, K]``."""
    tl.store(x + p_g, a_0, mask=m_bk)
    tl.store(x + p_g + K, a_1, mask=m_bk)
    tl.store(x + p_g + 2 * K, a_2, mask=m_bk)
    tl.store(x + p_g + 3 * K, a_3, mask=m_bk)


@triton.jit
def _four_back(da_0, da_1, da_2, da_3, dpre, p_g, R, p_r, m_bk, m_r, K: tl.constexpr):
    """Stores the four gates' gradients in ``dpre`` and returns what they send back to ``h_{t-1}``."""
    _store_four(dpre, p_g, da_0, da_1, da_2, da_3, m_bk, K)
    return (_back(da_0, R, p_r, m_r, 0, K) + _back(da_1, R, p_r, m_r, 1, K)
            + _back(da_2, R, p_r, m_r, 2, K) + _back(da_3, R, p_r, m_r, 3, K))


# ------------------------------------------------------------------------------------- LSTM
@triton.jit
def _lstm_fwd(gx, R, h0, c0, y, pre, cs, h_t, c_t, B, T,
              H: tl.constexpr, K: tl.constexpr, BB: tl.constexpr, BK: tl.constexpr,
              HAS_H0: tl.constexpr, STORE_FINAL: tl.constexpr):
    i_h, o_b, o_k, m_bk, m_r, p_state, p_r = _program(B, H, K, 4, BB, BK)
    h = _state(h0, p_state, m_bk, HAS_H0, BB, BK)
    c = _state(c0, p_state, m_bk, HAS_H0, BB, BK)
    for t in range(0, T):
        p_g, p_s = _step(o_b, o_k, t, T, i_h, H, K, 4)
        a_i, a_f, a_z, a_o = _four_gates(gx, R, h, p_g, p_r, m_bk, m_r, pre, K)
        c = tl.sigmoid(a_f) * c + tl.sigmoid(a_i) * _tanh(a_z)
        h = tl.sigmoid(a_o) * _tanh(c)
        tl.store(y + p_s, h.to(y.dtype.element_ty), mask=m_bk)
        tl.store(cs + p_s, c, mask=m_bk)
    if STORE_FINAL:
        tl.store(h_t + p_state, h, mask=m_bk)
        tl.store(c_t + p_state, c, mask=m_bk)


@triton.jit
def _lstm_bwd(R, pre, cs, c0, dy, dh_t, dc_t, dpre, dh0, dc0, B, T,
              H: tl.constexpr, K: tl.constexpr, BB: tl.constexpr, BK: tl.constexpr,
              HAS_H0: tl.constexpr, HAS_DFINAL: tl.constexpr):
    i_h, o_b, o_k, m_bk, m_r, p_state, p_r = _program(B, H, K, 4, BB, BK)
    dh_rec = _state(dh_t, p_state, m_bk, HAS_DFINAL, BB, BK)  # dL/dh_t through step t+1
    dc = _state(dc_t, p_state, m_bk, HAS_DFINAL, BB, BK)  # dL/dc_t through step t+1
    for j in range(0, T):
        t = T - 1 - j
        p_g, p_s = _step(o_b, o_k, t, T, i_h, H, K, 4)
        i = tl.sigmoid(tl.load(pre + p_g, mask=m_bk, other=0.0))
        f = tl.sigmoid(tl.load(pre + p_g + K, mask=m_bk, other=0.0))
        z = _tanh(tl.load(pre + p_g + 2 * K, mask=m_bk, other=0.0))
        o = tl.sigmoid(tl.load(pre + p_g + 3 * K, mask=m_bk, other=0.0))
        c = tl.load(cs + p_s, mask=m_bk, other=0.0)
        c_prev = tl.load(cs + p_s - H * K, mask=m_bk & (t > 0), other=0.0)
        if HAS_H0:
            c_prev += tl.load(c0 + p_state, mask=m_bk & (t == 0), other=0.0)
        dh = tl.load(dy + p_s, mask=m_bk, other=0.0).to(tl.float32) + dh_rec
        tc = _tanh(c)
        dc += dh * o * (1.0 - tc * tc)
        da_i = dc * z * i * (1.0 - i)
        da_f = dc * c_prev * f * (1.0 - f)
        da_z = dc * i * (1.0 - z * z)
        da_o = dh * tc * o * (1.0 - o)
        dh_rec = _four_back(da_i, da_f, da_z, da_o, dpre, p_g, R, p_r, m_bk, m_r, K)
        dc = dc * f
    if HAS_H0:
        tl.store(dh0 + p_state, dh_rec, mask=m_bk)
        tl.store(dc0 + p_state, dc, mask=m_bk)


# -------------------------------------------------------------------------------------- GRU
@triton.jit
def _gru_fwd(gx, R, bias_n, h0, y, pre, B, T,
             H: tl.constexpr, K: tl.constexpr, BB: tl.constexpr, BK: tl.constexpr, HAS_H0: tl.constexpr):
    i_h, o_b, o_k, m_bk, m_r, p_state, p_r = _program(B, H, K, 3, BB, BK)
    dt = R.dtype.element_ty
    b_n = tl.load(bias_n + i_h * K + o_k, mask=o_k < K, other=0.0).to(tl.float32)
    h = _state(h0, p_state, m_bk, HAS_H0, BB, BK)
    for t in range(0, T):
        p_g, p_s = _step(o_b, o_k, t, T, i_h, H, K, 3)
        h_dt = h.to(dt)
        a_r = _gate(gx, R, h_dt, p_g, p_r, m_bk, m_r, 0, K)
        a_z = _gate(gx, R, h_dt, p_g, p_r, m_bk, m_r, 1, K)
        q_n = tl.dot(h_dt, tl.load(R + p_r + 2 * K, mask=m_r, other=0.0)) + b_n[None, :]  # (h R)_n + bias_n
        tl.store(pre + p_g, a_r, mask=m_bk)
        tl.store(pre + p_g + K, a_z, mask=m_bk)
        tl.store(pre + p_g + 2 * K, q_n, mask=m_bk)
        r, z = tl.sigmoid(a_r), tl.sigmoid(a_z)
        n = _tanh(tl.load(gx + p_g + 2 * K, mask=m_bk, other=0.0).to(tl.float32) + r * q_n)
        h = (1.0 - z) * n + z * h
        tl.store(y + p_s, h.to(y.dtype.element_ty), mask=m_bk)


@triton.jit
def _gru_bwd(gx, R, pre, y, h0, dy, dh_t, dgx, dq_n, dh0, B, T,
             H: tl.constexpr, K: tl.constexpr, BB: tl.constexpr, BK: tl.constexpr,
             HAS_H0: tl.constexpr, HAS_DFINAL: tl.constexpr):
    i_h, o_b, o_k, m_bk, m_r, p_state, p_r = _program(B, H, K, 3, BB, BK)
    dh_rec = _state(dh_t, p_state, m_bk, HAS_DFINAL, BB, BK)
    for j in range(0, T):
        t = T - 1 - j
        p_g, p_s = _step(o_b, o_k, t, T, i_h, H, K, 3)
        r = tl.sigmoid(tl.load(pre + p_g, mask=m_bk, other=0.0))
        z = tl.sigmoid(tl.load(pre + p_g + K, mask=m_bk, other=0.0))
        q_n = tl.load(pre + p_g + 2 * K, mask=m_bk, other=0.0)
        n = _tanh(tl.load(gx + p_g + 2 * K, mask=m_bk, other=0.0).to(tl.float32) + r * q_n)
        h_prev = tl.load(y + p_s - H * K, mask=m_bk & (t > 0), other=0.0).to(tl.float32)
        if HAS_H0:
            h_prev += tl.load(h0 + p_state, mask=m_bk & (t == 0), other=0.0)
        dh = tl.load(dy + p_s, mask=m_bk, other=0.0).to(tl.float32) + dh_rec
        dn = dh * (1.0 - z) * (1.0 - n * n)  # through tanh: the gradient of x_n
        da_r = dn * q_n * r * (1.0 - r)
        da_z = dh * (h_prev - n) * z * (1.0 - z)
        d_q = dn * r  # the gradient of (h R)_n + bias_n
        tl.store(dgx + p_g, da_r, mask=m_bk)
        tl.store(dgx + p_g + K, da_z, mask=m_bk)
        tl.store(dgx + p_g + 2 * K, dn, mask=m_bk)
        tl.store(dq_n + p_s, d_q, mask=m_bk)
        dh_rec = (dh * z + _back(da_r, R, p_r, m_r, 0, K) + _back(da_z, R, p_r, m_r, 1, K)
                  + _back(d_q, R, p_r, m_r, 2, K))
    if HAS_H0:
        tl.store(dh0 + p_state, dh_rec, mask=m_bk)


# ------------------------------------------------------------------------------------ sLSTM
@triton.jit
def _slstm_fwd(gx, R, h0, c0, n0, m0, y, pre, cs, ns, ms, h_t, c_t, n_t, m_t, B, T,
               H: tl.constexpr, K: tl.constexpr, BB: tl.constexpr, BK: tl.constexpr,
               HAS_H0: tl.constexpr, STORE_FINAL: tl.constexpr):
    i_h, o_b, o_k, m_bk, m_r, p_state, p_r = _program(B, H, K, 4, BB, BK)
    if HAS_H0:
        h = tl.load(h0 + p_state, mask=m_bk, other=0.0).to(tl.float32)
        c = tl.load(c0 + p_state, mask=m_bk, other=0.0).to(tl.float32)
        n = tl.load(n0 + p_state, mask=m_bk, other=0.0).to(tl.float32)
        m = tl.load(m0 + p_state, mask=m_bk, other=0.0).to(tl.float32)
    else:  # nothing seen yet: h = c = n = 0, m = -inf
        h = tl.zeros([BB, BK], dtype=tl.float32)
        c = tl.zeros([BB, BK], dtype=tl.float32)
        n = tl.zeros([BB, BK], dtype=tl.float32)
        m = tl.full([BB, BK], float("-inf"), tl.float32)
    for t in range(0, T):
        p_g, p_s = _step(o_b, o_k, t, T, i_h, H, K, 4)
        a_i, a_f, a_z, a_o = _four_gates(gx, R, h, p_g, p_r, m_bk, m_r, pre, K)
        log_f_plus_m = _log_sigmoid(a_f) + m
        m = tl.maximum(log_f_plus_m, a_i)
        i_gate = tl.exp(a_i - m)
        f_gate = tl.exp(log_f_plus_m - m)
        c = f_gate * c + i_gate * _tanh(a_z)
        n = f_gate * n + i_gate
        h = tl.sigmoid(a_o) * c / n
        tl.store(y + p_s, h.to(y.dtype.element_ty), mask=m_bk)
        tl.store(cs + p_s, c, mask=m_bk)
        tl.store(ns + p_s, n, mask=m_bk)
        tl.store(ms + p_s, m, mask=m_bk)
    if STORE_FINAL:
        tl.store(h_t + p_state, h, mask=m_bk)
        tl.store(c_t + p_state, c, mask=m_bk)
        tl.store(n_t + p_state, n, mask=m_bk)
        tl.store(m_t + p_state, m, mask=m_bk)


@triton.jit
def _slstm_bwd(R, pre, cs, ns, ms, c0, n0, m0, dy, dh_t, dc_t, dn_t, dm_t, dpre, dh0, dc0, dn0, dm0, B, T,
               H: tl.constexpr, K: tl.constexpr, BB: tl.constexpr, BK: tl.constexpr,
               HAS_H0: tl.constexpr, HAS_DFINAL: tl.constexpr):
    i_h, o_b, o_k, m_bk, m_r, p_state, p_r = _program(B, H, K, 4, BB, BK)
    dh_rec = _state(dh_t, p_state, m_bk, HAS_DFINAL, BB, BK)
    dc = _state(dc_t, p_state, m_bk, HAS_DFINAL, BB, BK)
    dn = _state(dn_t, p_state, m_bk, HAS_DFINAL, BB, BK)
    dm = _state(dm_t, p_state, m_bk, HAS_DFINAL, BB, BK)
    for j in range(0, T):
        t = T - 1 - j
        p_g, p_s = _step(o_b, o_k, t, T, i_h, H, K, 4)
        a_i = tl.load(pre + p_g, mask=m_bk, other=0.0)
        a_f = tl.load(pre + p_g + K, mask=m_bk, other=0.0)
        z = _tanh(tl.load(pre + p_g + 2 * K, mask=m_bk, other=0.0))
        o = tl.sigmoid(tl.load(pre + p_g + 3 * K, mask=m_bk, other=0.0))
        c = tl.load(cs + p_s, mask=m_bk, other=0.0)
        n = tl.load(ns + p_s, mask=m_bk, other=1.0)
        m = tl.load(ms + p_s, mask=m_bk, other=0.0)
        first = m_bk & (t == 0)
        c_prev = tl.load(cs + p_s - H * K, mask=m_bk & (t > 0), other=0.0)
        n_prev = tl.load(ns + p_s - H * K, mask=m_bk & (t > 0), other=0.0)
        m_prev = tl.load(ms + p_s - H * K, mask=m_bk & (t > 0), other=0.0)
        if HAS_H0:
            c_prev += tl.load(c0 + p_state, mask=first, other=0.0)
            n_prev += tl.load(n0 + p_state, mask=first, other=0.0)
            m_prev = tl.where(first, tl.load(m0 + p_state, mask=first, other=0.0), m_prev)
        else:
            m_prev = tl.where(first, float("-inf"), m_prev)
        log_f_plus_m = _log_sigmoid(a_f) + m_prev
        i_gate = tl.exp(a_i - m)
        f_gate = tl.exp(log_f_plus_m - m)

        dh = tl.load(dy + p_s, mask=m_bk, other=0.0).to(tl.float32) + dh_rec
        da_o = dh * c / n * o * (1.0 - o)
        dc += dh * o / n
        dn -= dh * o * c / (n * n)
        d_i_gate = dc * z + dn
        d_f_gate = dc * c_prev + dn * n_prev
        da_z = dc * i_gate * (1.0 - z * z)
        da_i = d_i_gate * i_gate
        d_lfm = d_f_gate * f_gate  # d(logsigmoid(f) + m_prev)
        dm -= d_i_gate * i_gate + d_f_gate * f_gate  # m_t divides both gates
        # m_t = max(logsigmoid(f) + m_prev, i): to the larger one, split on ties (as torch.maximum)
        to_lfm = tl.where(log_f_plus_m > a_i, 1.0, tl.where(log_f_plus_m == a_i, 0.5, 0.0))
        d_lfm += dm * to_lfm
        da_i += dm * (1.0 - to_lfm)
        da_f = d_lfm * (1.0 - tl.sigmoid(a_f))  # logsigmoid' = sigmoid(-x)
        dh_rec = _four_back(da_i, da_f, da_z, da_o, dpre, p_g, R, p_r, m_bk, m_r, K)
        dc = dc * f_gate
        dn = dn * f_gate
        dm = d_lfm
    if HAS_H0:
        tl.store(dh0 + p_state, dh_rec, mask=m_bk)
        tl.store(dc0 + p_state, dc, mask=m_bk)
        tl.store(dn0 + p_state, dn, mask=m_bk)
        tl.store(dm0 + p_state, dm, mask=m_bk)


# ------------------------------------------------------------------------------- wrappers
def _weight_grad(y: Tensor, h0: Tensor | None, d_gates: Tensor) -> Tensor:
    """dR[h] = sum_{b,t} h_{t-1}^T da_t: ``y [B, T, H, K]``, ``d_gates [B, T, H, G, K]`` -> ``[H, K, G, K]``."""
    first = h0.float() if h0 is not None else torch.zeros_like(y[:, 0], dtype=torch.float32)
    h_prev = torch.cat([first[:, None], y[:, :-1].float()], 1)  # [B, T, H, K]
    return torch.einsum("bthd,bthge->hdge", h_prev, d_gates)


def _grid(b: int, h: int):
    return (triton.cdiv(b, BB), h)


def _launch_options(k: int) -> dict:
    """num_warps / num_stages: R's [K, K] tiles are reloaded every step, so no multi-buffering
    (a K = 256 head's four bf16 tiles are 512 KB); more warps for wide heads."""
    return {"num_warps": 4 if k <= 64 else 8, "num_stages": 1}


def _empty(*shape, like: Tensor, dtype=torch.float32) -> Tensor:
    return new_output(shape, device=like.device, dtype=dtype)


class LSTMFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gx, R, h0, c0):
        b, t, h, _, k = gx.shape
        y = _empty(b, t, h, k, like=gx, dtype=gx.dtype)
        pre = _empty(b, t, h, 4, k, like=gx)
        cs = _empty(b, t, h, k, like=gx)
        h_t, c_t = _empty(b, h, k, like=gx), _empty(b, h, k, like=gx)
        _lstm_fwd[_grid(b, h)](gx, R, h0 if h0 is not None else gx, c0 if c0 is not None else gx, y, pre, cs,
                               h_t, c_t, b, t, H=h, K=k, BB=BB, BK=block_size(k), HAS_H0=h0 is not None,
                               STORE_FINAL=True, **_launch_options(k))
        ctx.save_for_backward(R, h0, c0, y, pre, cs)
        return y, h_t, c_t

    @staticmethod
    def backward(ctx, dy, dh_t, dc_t):
        R, h0, c0, y, pre, cs = ctx.saved_tensors
        b, t, h, k = y.shape
        has_final = dh_t is not None or dc_t is not None
        dh_t = torch.zeros_like(h_t_like(y)) if dh_t is None else dh_t.float().contiguous()
        dc_t = torch.zeros_like(h_t_like(y)) if dc_t is None else dc_t.float().contiguous()
        dpre = _empty(b, t, h, 4, k, like=y)
        dh0, dc0 = _empty(b, h, k, like=y), _empty(b, h, k, like=y)
        _lstm_bwd[_grid(b, h)](R, pre, cs, c0 if c0 is not None else cs, dy.contiguous(), dh_t, dc_t, dpre,
                               dh0, dc0, b, t, H=h, K=k, BB=BB, BK=block_size(k), HAS_H0=h0 is not None,
                               HAS_DFINAL=has_final, **_launch_options(k))
        dR = _weight_grad(y, h0, dpre)
        has_h0 = h0 is not None
        return (dpre, dR.to(R.dtype), dh0 if has_h0 else None, dc0 if has_h0 else None)


def h_t_like(y: Tensor) -> Tensor:
    """A [B, H, K] fp32 tensor on y's device (the shape of every state)."""
    return torch.empty(y.shape[0], y.shape[2], y.shape[3], device=y.device, dtype=torch.float32)


class GRUFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gx, R, bias_n, h0):
        b, t, h, _, k = gx.shape
        y = _empty(b, t, h, k, like=gx, dtype=gx.dtype)
        pre = _empty(b, t, h, 3, k, like=gx)
        _gru_fwd[_grid(b, h)](gx, R, bias_n, h0 if h0 is not None else gx, y, pre, b, t, H=h, K=k, BB=BB,
                              BK=block_size(k), HAS_H0=h0 is not None, **_launch_options(k))
        ctx.save_for_backward(gx, R, h0, y, pre)
        return y

    @staticmethod
    def backward(ctx, dy):
        gx, R, h0, y, pre = ctx.saved_tensors
        b, t, h, k = y.shape
        dgx = _empty(b, t, h, 3, k, like=y)
        dq_n = _empty(b, t, h, k, like=y)
        dh0 = _empty(b, h, k, like=y)
        _gru_bwd[_grid(b, h)](gx, R, pre, y, h0 if h0 is not None else y, dy.contiguous(), dy, dgx, dq_n, dh0,
                              b, t, H=h, K=k, BB=BB, BK=block_size(k), HAS_H0=h0 is not None, HAS_DFINAL=False,
                              **_launch_options(k))
        d_rec = torch.stack([dgx[:, :, :, 0], dgx[:, :, :, 1], dq_n], 3)  # [B, T, H, 3, K]: grads of h R
        dR = _weight_grad(y, h0, d_rec)
        return dgx, dR.to(R.dtype), dq_n.sum((0, 1)), dh0 if h0 is not None else None


class SLSTMFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gx, R, h0, c0, n0, m0):
        b, t, h, _, k = gx.shape
        y = _empty(b, t, h, k, like=gx, dtype=gx.dtype)
        pre = _empty(b, t, h, 4, k, like=gx)
        cs, ns, ms = (_empty(b, t, h, k, like=gx) for _ in range(3))
        finals = [_empty(b, h, k, like=gx) for _ in range(4)]
        has_h0 = h0 is not None
        state = (h0, c0, n0, m0) if has_h0 else (gx,) * 4
        _slstm_fwd[_grid(b, h)](gx, R, *state, y, pre, cs, ns, ms, *finals, b, t, H=h, K=k, BB=BB,
                                BK=block_size(k), HAS_H0=has_h0, STORE_FINAL=True, **_launch_options(k))
        ctx.save_for_backward(R, h0, c0, n0, m0, y, pre, cs, ns, ms)
        return (y, *finals)

    @staticmethod
    def backward(ctx, dy, dh_t, dc_t, dn_t, dm_t):
        R, h0, c0, n0, m0, y, pre, cs, ns, ms = ctx.saved_tensors
        b, t, h, k = y.shape
        finals = [dh_t, dc_t, dn_t, dm_t]
        has_final = any(x is not None for x in finals)
        finals = [torch.zeros_like(h_t_like(y)) if x is None else x.float().contiguous() for x in finals]
        dpre = _empty(b, t, h, 4, k, like=y)
        d_state = [_empty(b, h, k, like=y) for _ in range(4)]
        has_h0 = h0 is not None
        state = (c0, n0, m0) if has_h0 else (cs,) * 3
        _slstm_bwd[_grid(b, h)](R, pre, cs, ns, ms, *state, dy.contiguous(), *finals, dpre, *d_state, b, t, H=h,
                                K=k, BB=BB, BK=block_size(k), HAS_H0=has_h0, HAS_DFINAL=has_final, **_launch_options(k))
        dR = _weight_grad(y, h0, dpre)
        return (dpre, dR.to(R.dtype), *(d_state if has_h0 else (None,) * 4))


def _check(cell: str, gates_x: Tensor, R: Tensor, initial_state: RNNState | None, bias_n: Tensor | None = None):
    op = f"{cell}_triton"
    check_rnn_inputs(cell, gates_x, R, initial_state, bias_n)
    check_tensors(op, gates_x, R, bias_n, *(initial_state or ()))
    RNN.check(op, "triton", head_dims={"K": gates_x.shape[-1]})
    state = None if initial_state is None else tuple(s.float().contiguous() for s in initial_state)
    return gates_x.contiguous(), R.to(gates_x.dtype).contiguous(), state


def lstm_triton(gates_x: Tensor, R: Tensor, *, initial_state: RNNState | None = None,
                output_final_state: bool = False) -> tuple[Tensor, RNNState | None]:
    """The Triton form of :func:`seqmix.kernels.rnn.lstm_headwise` (same arguments and results)."""
    gx, R_, state = _check("lstm", gates_x, R, initial_state)
    h0, c0 = state if state is not None else (None, None)
    y, h_t, c_t = LSTMFunction.apply(gx, R_, h0, c0)
    return y, ((h_t, c_t) if output_final_state else None)


def gru_triton(gates_x: Tensor, R: Tensor, bias_n: Tensor, *, initial_state: RNNState | None = None,
               output_final_state: bool = False) -> tuple[Tensor, RNNState | None]:
    """The Triton form of :func:`seqmix.kernels.rnn.gru_headwise` (same arguments and results)."""
    gx, R_, state = _check("gru", gates_x, R, initial_state, bias_n)
    y = GRUFunction.apply(gx, R_, bias_n.float().contiguous(), state[0] if state is not None else None)
    return y, ((y[:, -1].float(),) if output_final_state else None)


def slstm_triton(gates_x: Tensor, R: Tensor, *, initial_state: RNNState | None = None,
                 output_final_state: bool = False) -> tuple[Tensor, RNNState | None]:
    """The Triton form of :func:`seqmix.kernels.rnn.slstm_headwise` (same arguments and results)."""
    gx, R_, state = _check("slstm", gates_x, R, initial_state)
    y, *finals = SLSTMFunction.apply(gx, R_, *(state if state is not None else (None,) * 4))
    return y, (tuple(finals) if output_final_state else None)
