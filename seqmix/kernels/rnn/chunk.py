"""Head-wise LSTM, GRU and sLSTM: the fast CPU form (``impl="chunk"``).

A nonlinear recurrence cannot be chunked along time, so "chunk" here is FlashRNN's recipe
in PyTorch: a fused time loop with a hand-written backward (back-propagation through
time), wrapped in one ``torch.autograd.Function`` per cell. The equations are those of
``naive.py``; what changes is the work per step:

- the input is laid out time-major and head-batched once (``[T, H, B, G*K]``), so each
  step is one ``baddbmm`` over the heads (``gates_x[t] + h_{t-1} @ R``);
- autograd records nothing inside the loop: each step keeps only the few tensors its
  backward needs (the gate activations, ``c_t``, ``h_t``);
- the backward runs its own loop, one ``bmm`` per step (``dh_{t-1} = da_t @ R^T``) and a
  handful of elementwise ops, and computes ``dR = sum_t h_{t-1}^T da_t`` as one ``bmm``
  over all steps at the end.

The loops run single-threaded (:func:`single_threaded`): each step's ops are far too small
to split across threads, and an OpenMP barrier per op made the loop up to 30x slower with
2 threads on a busy machine (T = 4096, B = 1, D = 32).

The backward is not itself differentiable (no double backward).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from seqmix.kernels.rnn.naive import RNNState, _prepare, check_rnn_inputs
from seqmix.kernels.threads import single_threaded


def _time_major(gx: Tensor) -> Tensor:
    t, h, b, g, k = gx.shape[1], gx.shape[2], gx.shape[0], gx.shape[3], gx.shape[4]
    return gx.permute(1, 2, 0, 3, 4).reshape(t, h, b, g * k)  # [B, T, H, G, K] -> [T, H, B, G*K]


def _heads_first(s: Tensor) -> Tensor:
    return s.transpose(0, 1).contiguous()  # [B, H, K] -> [H, B, K]


def _batch_first(s: Tensor) -> Tensor:
    return s.transpose(0, 1)  # [H, B, K] -> [B, H, K]


_BLOCK = 32  # steps whose backward factors are computed together (vectorised, yet small enough to stay in cache)


def _blocks_backwards(t_len: int) -> list[tuple[int, int]]:
    """``(start, stop)`` of the blocks of ``_BLOCK`` steps, last block first."""
    return [(max(0, stop - _BLOCK), stop) for stop in range(t_len, 0, -_BLOCK)]


def _weight_grad(h_prev: Tensor, da: Tensor) -> Tensor:
    """``dR[h] = sum_{t, b} h_{t-1}[h, b]^T da_t[h, b]``: ``[T, H, B, K] x [T, H, B, G*K] -> [H, K, G*K]``."""
    t, h, b, k = h_prev.shape
    lhs = h_prev.permute(1, 3, 0, 2).reshape(h, k, t * b)  # [T, H, B, K] -> [H, K, T*B]
    rhs = da.reshape(t, h, b, -1).permute(1, 0, 2, 3).reshape(h, t * b, -1)  # -> [H, T*B, G*K]
    return torch.bmm(lhs, rhs)


# ----------------------------------------------------------------------------- LSTM
class _LSTMLoop(torch.autograd.Function):
    @staticmethod
    @single_threaded()
    def forward(ctx, gx: Tensor, R: Tensor, h0: Tensor, c0: Tensor) -> tuple[Tensor, Tensor]:
        # gx: [T, H, B, 4K]; R: [H, K, 4K]; h0, c0: [H, B, K]
        t_len = gx.shape[0]
        n_heads, batch, k = h0.shape
        hs, cs = gx.new_empty(t_len + 1, n_heads, batch, k), gx.new_empty(t_len + 1, n_heads, batch, k)
        tanh_c = gx.new_empty(t_len, n_heads, batch, k)
        acts = gx.new_empty(t_len, n_heads, batch, 4, k)  # sigmoid(i), sigmoid(f), tanh(z), sigmoid(o)
        hs[0], cs[0] = h0, c0
        for t, gx_t in enumerate(gx.unbind(0)):
            a = torch.baddbmm(gx_t, hs[t], R).view(n_heads, batch, 4, k)  # [H, B, 4K] -> [H, B, 4, K]
            act = torch.sigmoid(a, out=acts[t])
            act[:, :, 2] = torch.tanh(a[:, :, 2])
            i, f, z, o = act.unbind(2)
            torch.addcmul(f * cs[t], i, z, out=cs[t + 1])
            torch.mul(o, torch.tanh(cs[t + 1], out=tanh_c[t]), out=hs[t + 1])
        ctx.save_for_backward(R, hs, cs, tanh_c, acts)
        return hs[1:].clone(), cs[t_len].clone()  # [T, H, B, K], [H, B, K]

    @staticmethod
    @single_threaded()
    def backward(ctx, dy: Tensor, dc_last: Tensor):
        R, hs, cs, tanh_c, acts = ctx.saved_tensors
        t_len, n_heads, batch, k = dy.shape
        da = torch.empty_like(acts)  # [T, H, B, 4, K]
        RT = R.transpose(1, 2).contiguous()  # [H, 4K, K]
        dh, dc = torch.zeros_like(hs[0]), dc_last
        for start, stop in _blocks_backwards(t_len):
            act, tc = acts[start:stop], tanh_c[start:stop]
            i, f, z, o = act.unbind(3)  # each [L, H, B, K]
            # d a_t = (dc_t, dc_t, dc_t, dh_t) * coef_t: every factor that needs no gradient, per block
            coef = act - act * act  # sigmoid' for i, f, o: [L, H, B, 4, K]
            coef[:, :, :, 0] *= z
            coef[:, :, :, 1] *= cs[start:stop]
            coef[:, :, :, 2] = i * (1 - z * z)
            coef[:, :, :, 3] *= tc
            dc_dh = o * (1 - tc * tc)  # d c_t / d h_t: [L, H, B, K]
            for j in range(stop - start - 1, -1, -1):
                t = start + j
                dh = dh + dy[t]
                dc = torch.addcmul(dc, dh, dc_dh[j])
                torch.mul(torch.stack((dc, dc, dc, dh), 2), coef[j], out=da[t])
                dc = dc * f[j]
                dh = torch.bmm(da[t].view(n_heads, batch, 4 * k), RT)
        return da.view(t_len, n_heads, batch, 4 * k), _weight_grad(hs[:-1], da), dh, dc


def lstm_chunk(gates_x: Tensor, R: Tensor, *, initial_state: RNNState | None = None,
               output_final_state: bool = False) -> tuple[Tensor, RNNState | None]:
    """Head-wise LSTM, fused loop; same contract as :func:`~seqmix.kernels.rnn.naive.lstm_naive`."""
    check_rnn_inputs("lstm", gates_x, R, initial_state)
    gx, R, (h0, c0) = _prepare("lstm", gates_x, R, initial_state)
    h, k = R.shape[0], R.shape[1]
    y, c_last = _LSTMLoop.apply(_time_major(gx), R.reshape(h, k, 4 * k),  # [H, K, 4, K] -> [H, K, 4K]
                                _heads_first(h0), _heads_first(c0))
    y = y.permute(2, 0, 1, 3)  # [T, H, B, K] -> [B, T, H, K]
    final = (y[:, -1], _batch_first(c_last)) if output_final_state else None
    return y.to(gates_x.dtype), final


# ------------------------------------------------------------------------------ GRU
class _GRULoop(torch.autograd.Function):
    @staticmethod
    @single_threaded()
    def forward(ctx, gx: Tensor, R: Tensor, bias_n: Tensor, h0: Tensor) -> Tensor:
        # gx: [T, H, B, 3K]; R: [H, K, 3K]; bias_n: [H, K]; h0: [H, B, K]
        n_heads, batch, k = h0.shape
        bias = bias_n[:, None]  # [H, 1, K]
        h = h0
        hs, rzs, hns, ns = [h0], [], [], []
        for gx_t in gx.view(gx.shape[0], n_heads, batch, 3, k).unbind(0):  # [H, B, 3, K]
            rec = torch.bmm(h, R).view(n_heads, batch, 3, k)  # [H, B, 3K] -> [H, B, 3, K]
            rz = torch.sigmoid(gx_t[:, :, :2] + rec[:, :, :2])  # [H, B, 2, K]
            r, z = rz.unbind(2)
            hn = rec[:, :, 2] + bias
            n = torch.tanh(torch.addcmul(gx_t[:, :, 2], r, hn))
            h = torch.addcmul(n, z, h - n)
            hs.append(h), rzs.append(rz), hns.append(hn), ns.append(n)
        ctx.save_for_backward(R)
        ctx.saved = (hs, rzs, hns, ns)
        return torch.stack(hs[1:])  # [T, H, B, K]

    @staticmethod
    @single_threaded()
    def backward(ctx, dy: Tensor):
        (R,) = ctx.saved_tensors
        hs, rzs, hns, ns = ctx.saved
        del ctx.saved
        t_len, n_heads, batch, k = dy.shape
        RT = R.transpose(1, 2).contiguous()  # [H, 3K, K]
        dh = torch.zeros_like(hs[0])
        drec, da_n = [None] * t_len, [None] * t_len  # d (h R) = (d a_r, d a_z, d hn); d a_n
        for t in range(t_len - 1, -1, -1):
            r, z = rzs[t].unbind(2)
            n = ns[t]
            dh = dh + dy[t]
            da_n[t] = dh * (1 - z) * (1 - n * n)
            drec[t] = torch.stack((da_n[t] * hns[t] * (r - r * r), dh * (hs[t] - n) * (z - z * z), da_n[t] * r), 2)
            dh = torch.addcmul(torch.bmm(drec[t].view(n_heads, batch, 3 * k), RT), dh, z)
        drec = torch.stack(drec)  # [T, H, B, 3, K]
        dgx = torch.cat((drec[:, :, :, :2], torch.stack(da_n)[:, :, :, None]), 3)  # [T, H, B, 3, K]
        dbias = drec[:, :, :, 2].sum((0, 2))  # [H, K]
        return dgx.view(t_len, n_heads, batch, 3 * k), _weight_grad(torch.stack(hs[:-1]), drec), dbias, dh


def gru_chunk(gates_x: Tensor, R: Tensor, bias_n: Tensor, *, initial_state: RNNState | None = None,
              output_final_state: bool = False) -> tuple[Tensor, RNNState | None]:
    """Head-wise GRU, fused loop; same contract as :func:`~seqmix.kernels.rnn.naive.gru_naive`."""
    check_rnn_inputs("gru", gates_x, R, initial_state, bias_n)
    gx, R, (h0,) = _prepare("gru", gates_x, R, initial_state)
    h, k = R.shape[0], R.shape[1]
    y = _GRULoop.apply(_time_major(gx), R.reshape(h, k, 3 * k),  # [H, K, 3, K] -> [H, K, 3K]
                       bias_n.to(gx.dtype), _heads_first(h0))
    y = y.permute(2, 0, 1, 3)  # [T, H, B, K] -> [B, T, H, K]
    return y.to(gates_x.dtype), ((y[:, -1],) if output_final_state else None)


# ---------------------------------------------------------------------------- sLSTM
class _SLSTMLoop(torch.autograd.Function):
    @staticmethod
    @single_threaded()
    def forward(ctx, gx: Tensor, R: Tensor, h0: Tensor, c0: Tensor, n0: Tensor, m0: Tensor):
        # gx: [T, H, B, 4K]; R: [H, K, 4K]; states: [H, B, K]
        t_len = gx.shape[0]
        n_heads, batch, k = h0.shape
        hs, cs, ns, ms = (gx.new_empty(t_len + 1, n_heads, batch, k) for _ in range(4))
        pre = gx.new_empty(t_len, n_heads, batch, 4, k)  # the pre-activations a_t
        hs[0], cs[0], ns[0], ms[0] = h0, c0, n0, m0
        for t, gx_t in enumerate(gx.unbind(0)):
            a = torch.baddbmm(gx_t, hs[t], R, out=pre[t].view(n_heads, batch, 4 * k)).view(n_heads, batch, 4, k)
            a_i, a_f, a_z, a_o = a.unbind(2)
            u = F.logsigmoid(a_f).add_(ms[t])  # log f + m_{t-1}
            m = torch.maximum(u, a_i, out=ms[t + 1])
            i_gate, f_gate = torch.exp(a_i - m), torch.exp(u.sub_(m))
            torch.addcmul(f_gate * cs[t], i_gate, torch.tanh(a_z), out=cs[t + 1])
            torch.addcmul(i_gate, f_gate, ns[t], out=ns[t + 1])
            torch.mul(torch.sigmoid(a_o), cs[t + 1], out=hs[t + 1]).div_(ns[t + 1])
        ctx.save_for_backward(R, hs, cs, ns, ms, pre)
        return hs[1:].clone(), cs[t_len].clone(), ns[t_len].clone(), ms[t_len].clone()

    @staticmethod
    @single_threaded()
    def backward(ctx, dy: Tensor, dc_last: Tensor, dn_last: Tensor, dm_last: Tensor):
        R, hs, cs, ns, ms, pre = ctx.saved_tensors
        t_len, n_heads, batch, k = dy.shape
        da = torch.empty_like(pre)  # [T, H, B, 4, K]
        RT = R.transpose(1, 2).contiguous()  # [H, 4K, K]
        dh = torch.zeros_like(hs[0])
        dc, dn, dm = dc_last, dn_last, dm_last
        for start, stop in _blocks_backwards(t_len):
            a_i, a_f, a_z, a_o = pre[start:stop].unbind(3)  # each [L, H, B, K]
            # the forward's gates and every factor that needs no gradient, per block of steps
            m_prev, m, c, n = ms[start:stop], ms[start + 1:stop + 1], cs[start + 1:stop + 1], ns[start + 1:stop + 1]
            u = F.logsigmoid(a_f) + m_prev  # log f + m_{t-1}
            i_gate, f_gate = torch.exp(a_i - m), torch.exp(u - m)
            z, o = torch.tanh(a_z), torch.sigmoid(a_o)
            w_u = (u > a_i).to(u.dtype) + 0.5 * (u == a_i).to(u.dtype)  # torch.maximum's split of the gradient
            o_over_n, c_over_n = o / n, c / n
            dn_dh = o_over_n * c_over_n  # -d n_t / d h_t share
            coef_zo = torch.stack((i_gate * (1 - z * z), c_over_n * (o - o * o)), 3)  # [L, H, B, 2, K]
            sig_neg_f = torch.sigmoid(-a_f)  # d logsigmoid(a_f) / d a_f
            for j in range(stop - start - 1, -1, -1):
                t = start + j
                dh = dh + dy[t]
                dc = torch.addcmul(dc, dh, o_over_n[j])  # dc_t including h_t = o c_t / n_t
                dn = torch.addcmul(dn, dh, dn_dh[j], value=-1.0)
                g_f = torch.addcmul(dc * cs[t], dn, ns[t]).mul_(f_gate[j])  # d (u - m_t) through f'
                g_i = torch.addcmul(dn, dc, z[j]).mul_(i_gate[j])  # d (a_i - m_t) through i'
                dm_t = dm - g_f - g_i  # d m_t
                du = torch.addcmul(g_f, dm_t, w_u[j])
                torch.add(g_i, dm_t, out=da[t, :, :, 0]).sub_(du).add_(g_f)  # g_i + dm_t (1 - w_u)
                torch.mul(du, sig_neg_f[j], out=da[t, :, :, 1])
                torch.mul(torch.stack((dc, dh), 2), coef_zo[j], out=da[t, :, :, 2:])
                dc, dn, dm = dc * f_gate[j], dn * f_gate[j], du
                dh = torch.bmm(da[t].view(n_heads, batch, 4 * k), RT)
        return da.view(t_len, n_heads, batch, 4 * k), _weight_grad(hs[:-1], da), dh, dc, dn, dm


def slstm_chunk(gates_x: Tensor, R: Tensor, *, initial_state: RNNState | None = None,
                output_final_state: bool = False) -> tuple[Tensor, RNNState | None]:
    """Head-wise sLSTM, fused loop; same contract as :func:`~seqmix.kernels.rnn.naive.slstm_naive`."""
    check_rnn_inputs("slstm", gates_x, R, initial_state)
    gx, R, state = _prepare("slstm", gates_x, R, initial_state)
    h, k = R.shape[0], R.shape[1]
    y, c, n, m = _SLSTMLoop.apply(_time_major(gx), R.reshape(h, k, 4 * k),  # [H, K, 4, K] -> [H, K, 4K]
                                  *(_heads_first(s) for s in state))
    y = y.permute(2, 0, 1, 3)  # [T, H, B, K] -> [B, T, H, K]
    final = (y[:, -1], _batch_first(c), _batch_first(n), _batch_first(m)) if output_final_state else None
    return y.to(gates_x.dtype), final
