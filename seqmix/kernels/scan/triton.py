"""Aaren's softmax prefix scan as Triton kernels: the ``(max, numerator, denominator)`` state on chip.

    o_t = sum_{j <= t} exp(s_j) v_j / sum_{j <= t} exp(s_j)      (plus the initial state's prefix)

One program per (batch, head, block of BV value columns) walks the sequence in chunks of BT
tokens carrying the state ``(m, u [BV], w)`` in registers (fp32). Per chunk, with
``M_t = max(m, s_1..s_t)`` (a masked row max, every entry of P <= 1):

    P    = exp(s_j - M_t) [j <= t]                                  [BT, BT]
    num  = exp(m - M_t) u + P V      (tensor cores),   den = exp(m - M_t) w + P 1
    o    = num / den;   (m, u, w) <- the state merged with the whole chunk

The forward also keeps ``M_t`` and ``den_t`` per token ([B, T, H], for the backward). The
backward walks backward in time carrying, relative to the running max ``R`` at the end of
the chunk (so every exponent stays <= 0),

    G = sum_{t later} exp(R - M_t) do_t / den_t ,   gamma = sum_{t later} exp(R - M_t) delta_t / den_t

(``delta_t = do_t . o_t``), started from the final state's gradient, which acts as one more
output. Then ``dv_j = sum_{t >= j} p_tj do_t`` and ``ds_j = sum_{t >= j} p_tj (v_j . do_t - delta_t)``
with ``p_tj = exp(s_j - M_t) / den_t``; what is left of ``G`` and ``gamma`` at the start is
the initial state's gradient. The gradient that reaches the final running max through
``max`` (the one argmax token, or ``m_0``) is added afterwards.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from seqmix.kernels.scan.limits import SCAN
from seqmix.kernels.scan.naive import ScanState, check_scan_inputs
from seqmix.kernels.triton_utils import autotune, check_tensors, new_output, value_block_partials, value_grid

_CONFIGS = [triton.Config({"BV": bv}, num_warps=w) for bv in (64, 32) for w in (4, 8)]


@triton.jit
def _program(T, H: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BV: tl.constexpr):
    """This program's value block ``i_v``, its (batch, head) ``i_bh`` and head ``i_h``, the first row of
    its sequence, the rows ``o_t`` of a chunk, its value columns ``o_v`` and the causal mask ``[BT, BT]``."""
    i_v, i_bh = tl.program_id(0), tl.program_id(1)
    o_t = tl.arange(0, BT)
    return (i_v, i_bh, i_bh % H, (i_bh // H).to(tl.int64) * T, o_t, i_v * BV + tl.arange(0, BV),
            o_t[:, None] >= o_t[None, :])


@autotune(_CONFIGS, key=["V", "BT"])
@triton.jit
def _fwd_kernel(s, v, m0, u0, w0, o, row_max, row_den, m_t, u_t, w_t, T,
                H: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BV: tl.constexpr,
                HAS_H0: tl.constexpr, STORE_FINAL: tl.constexpr):
    i_v, i_bh, i_h, bos, o_t, o_v, causal = _program(T, H, V, BT, BV)
    m_v = o_v < V
    dt = v.dtype.element_ty
    if HAS_H0:
        m = tl.load(m0 + i_bh).to(tl.float32)
        u = tl.load(u0 + i_bh * V + o_v, mask=m_v, other=0.0).to(tl.float32)
        w = tl.load(w0 + i_bh).to(tl.float32)
    else:  # the empty prefix (-inf, 0, 0), as 0-d fp32 tensors like the loads above
        m = tl.max(tl.full([BT], float("-inf"), tl.float32), axis=0)
        u = tl.zeros([BV], dtype=tl.float32)
        w = tl.sum(tl.zeros([BT], dtype=tl.float32), axis=0)
    for start in range(0, T, BT):
        m_t_ = o_t < T - start
        rows = bos + start + o_t
        b_s = tl.load(s + rows * H + i_h, mask=m_t_, other=float("-inf")).to(tl.float32)  # [BT]
        b_v = tl.load(v + rows[:, None] * (H * V) + i_h * V + o_v[None, :], mask=m_t_[:, None] & m_v[None, :],
                      other=0.0)
        scores = tl.where(causal, b_s[None, :], float("-inf"))  # [BT, BT]
        row_m = tl.maximum(tl.max(scores, axis=1), m)  # [BT] running max at each row
        p = tl.exp(scores - row_m[:, None])  # [BT, BT], 0 above the diagonal
        carried = tl.exp(m - row_m)  # [BT] weight of the state entering the chunk
        num = carried[:, None] * u[None, :] + tl.dot(p.to(dt), b_v)
        den = carried * w + tl.sum(p, axis=1)
        tl.store(o + rows[:, None] * (H * V) + i_h * V + o_v[None, :], (num / den[:, None]).to(o.dtype.element_ty),
                 mask=m_t_[:, None] & m_v[None, :])
        if i_v == 0:
            tl.store(row_max + rows * H + i_h, row_m, mask=m_t_)
            tl.store(row_den + rows * H + i_h, den, mask=m_t_)
        m_new = tl.maximum(m, tl.max(b_s, axis=0))
        e = tl.exp(b_s - m_new)  # [BT], 0 on padded rows
        u = tl.exp(m - m_new) * u + tl.sum(e[:, None] * b_v.to(tl.float32), axis=0)
        w = tl.exp(m - m_new) * w + tl.sum(e, axis=0)
        m = m_new
    if STORE_FINAL:
        tl.store(u_t + i_bh * V + o_v, u, mask=m_v)
        if i_v == 0:
            tl.store(m_t + i_bh, m)
            tl.store(w_t + i_bh, w)


@autotune(_CONFIGS, key=["V", "BT"], reset_to_zero=["ds"])
@triton.jit
def _bwd_kernel(s, v, do, delta, row_max, row_den, m0, m_t, du_t, dw_t, dv, ds, du0, dw0, T,
                H: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BV: tl.constexpr,
                HAS_H0: tl.constexpr, HAS_DFINAL: tl.constexpr):
    i_v, i_bh, i_h, bos, o_t, o_v, causal = _program(T, H, V, BT, BV)
    m_v = o_v < V
    dt = v.dtype.element_ty
    first_block = (i_v == 0).to(tl.float32)  # the V-independent terms of ds are added once
    partial = i_v.to(tl.int64) * (T * (tl.num_programs(1) // H)) * H  # this block's slice of ds

    ref = tl.load(m_t + i_bh).to(tl.float32)  # R: the running max after the last token
    g = tl.zeros([BV], dtype=tl.float32)  # G relative to R
    gamma = tl.sum(tl.zeros([BT], dtype=tl.float32), axis=0)
    if HAS_DFINAL:  # the final state (m, u, w) acts as one more output with do/den = du, delta/den = -dw
        g += tl.load(du_t + i_bh * V + o_v, mask=m_v, other=0.0).to(tl.float32)
        gamma -= tl.load(dw_t + i_bh).to(tl.float32)
    n_chunks = tl.cdiv(T, BT)
    for j_c in range(0, n_chunks):
        start = (n_chunks - 1 - j_c) * BT
        m_t_ = o_t < T - start
        rows = bos + start + o_t
        m_tv = m_t_[:, None] & m_v[None, :]
        p_tv = rows[:, None] * (H * V) + i_h * V + o_v[None, :]
        b_s = tl.load(s + rows * H + i_h, mask=m_t_, other=float("-inf")).to(tl.float32)
        b_v = tl.load(v + p_tv, mask=m_tv, other=0.0)
        b_do = tl.load(do + p_tv, mask=m_tv, other=0.0).to(tl.float32)
        b_delta = tl.load(delta + rows * H + i_h, mask=m_t_, other=0.0)
        b_m = tl.load(row_max + rows * H + i_h, mask=m_t_, other=0.0)
        b_den = tl.load(row_den + rows * H + i_h, mask=m_t_, other=1.0)

        # from later chunks (and the final state): exp(s_j - R) (G, gamma)
        e_ref = tl.exp(b_s - ref)  # [BT], <= 1
        b_dv = e_ref[:, None] * g[None, :]
        b_ds = e_ref * (tl.sum(b_v.to(tl.float32) * g[None, :], axis=1) - gamma * first_block)
        # inside the chunk: p[t, j] = exp(s_j - M_t) / den_t
        valid = causal & m_t_[:, None]  # rows past the end have no M_t
        p = tl.exp(tl.where(valid, b_s[None, :] - b_m[:, None], float("-inf"))) / b_den[:, None]
        b_dv += tl.dot(tl.trans(p).to(dt), b_do.to(dt))
        vd = tl.dot(b_v, tl.trans(b_do.to(dt)))  # [BT(j), BT(t)] v_j . do_t over this block
        b_ds += tl.sum(tl.trans(p) * (vd - first_block * b_delta[None, :]), axis=1)
        tl.store(dv + p_tv, b_dv.to(dv.dtype.element_ty), mask=m_tv)
        tl.store(ds + partial + rows * H + i_h, b_ds, mask=m_t_)

        # move the carry to the running max before this chunk
        ref_prev = ref  # nothing earlier and no initial state: the carry is not used again
        if HAS_H0:
            ref_prev = tl.load(m0 + i_bh).to(tl.float32)
        if start > 0:
            ref_prev = tl.load(row_max + (bos + start - 1) * H + i_h)
        shift = tl.exp(tl.where(m_t_, ref_prev - b_m, float("-inf"))) / b_den  # [BT]
        g = tl.exp(ref_prev - ref) * g + tl.sum(shift[:, None] * b_do, axis=0)
        gamma = tl.exp(ref_prev - ref) * gamma + tl.sum(shift * b_delta, axis=0)
        ref = ref_prev
    if HAS_H0:
        tl.store(du0 + i_bh * V + o_v, g, mask=m_v)
        if i_v == 0:
            tl.store(dw0 + i_bh, -gamma)


class SoftmaxScanFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, s, v, m0, u0, w0, chunk_size, output_final_state):
        b, t, h, dv = v.shape
        device = v.device
        o = new_output((b, t, h, dv), device=device, dtype=v.dtype)
        row_max = new_output((b, t, h), device=device, dtype=torch.float32)
        row_den = new_output((b, t, h), device=device, dtype=torch.float32)
        m_t = new_output((b, h), device=device, dtype=torch.float32)
        u_t = new_output((b, h, dv), device=device, dtype=torch.float32)
        w_t = new_output((b, h), device=device, dtype=torch.float32)
        has_h0 = m0 is not None
        _fwd_kernel[value_grid(dv, b * h)](
            s, v, m0 if has_h0 else s, u0 if has_h0 else s, w0 if has_h0 else s, o, row_max, row_den,
            m_t, u_t, w_t, t, H=h, V=dv, BT=chunk_size, HAS_H0=has_h0, STORE_FINAL=True)
        ctx.save_for_backward(s, v, o, row_max, row_den, m0, u0, w0, m_t, u_t, w_t)
        ctx.chunk_size = chunk_size
        if not output_final_state:
            return o, None, None, None
        return o, m_t, u_t, w_t

    @staticmethod
    def backward(ctx, do, dm_t, du_t, dw_t):
        s, v, o, row_max, row_den, m0, u0, w0, m_t, u_t, w_t = ctx.saved_tensors
        b, t, h, dv = v.shape
        has_h0 = m0 is not None
        has_final = any(x is not None for x in (dm_t, du_t, dw_t))
        dm_t = torch.zeros_like(m_t) if dm_t is None else dm_t.float()
        du_t = torch.zeros_like(u_t) if du_t is None else du_t.float().contiguous()
        dw_t = torch.zeros_like(w_t) if dw_t is None else dw_t.float()
        do = do.contiguous()
        delta = (do.float() * o.float()).sum(-1)  # [B, T, H] do_t . o_t
        ds = value_block_partials(_CONFIGS, dv, b, t, h, device=v.device)
        dv_ = new_output((b, t, h, dv), device=v.device, dtype=v.dtype)
        du0 = new_output((b, h, dv), device=v.device, dtype=torch.float32) if has_h0 else None
        dw0 = new_output((b, h), device=v.device, dtype=torch.float32) if has_h0 else None
        _bwd_kernel[value_grid(dv, b * h)](
            s, v, do, delta, row_max, row_den, m0 if has_h0 else s, m_t, du_t, dw_t, dv_, ds,
            du0 if has_h0 else s, dw0 if has_h0 else s, t, H=h, V=dv, BT=ctx.chunk_size,
            HAS_H0=has_h0, HAS_DFINAL=has_final)
        ds = ds.sum(0)  # [NV, B, T, H] -> [B, T, H]
        dm0 = (du0 * u0.float()).sum(-1) + dw0 * w0.float() if has_h0 else None  # through exp(m0)
        if has_final:  # what reaches the final max through max(): to the argmax token, or to m0
            through_max = dm_t - (u_t * du_t).sum(-1) - w_t * dw_t  # [B, H]
            s_max, where = s.float().max(1)  # [B, H]
            from_state = (m0.float() >= s_max) if has_h0 else torch.zeros_like(s_max, dtype=torch.bool)
            ds.scatter_add_(1, where[:, None], torch.where(from_state, 0.0, through_max)[:, None])
            if has_h0:
                dm0 = dm0 + torch.where(from_state, through_max, 0.0)
        return (ds.to(s.dtype), dv_, dm0.to(m0.dtype) if has_h0 else None,
                du0.to(u0.dtype) if has_h0 else None, dw0.to(w0.dtype) if has_h0 else None, None, None)


def softmax_scan_triton(s: Tensor, v: Tensor, *, initial_state: ScanState | None = None,
                        output_final_state: bool = False, chunk_size: int = 64) -> tuple[Tensor, ScanState | None]:
    """The Triton form of :func:`seqmix.kernels.scan.softmax_scan` (same arguments).

    ``s: [B, T, H]``, ``v: [B, T, H, V]`` (fp32/bf16/fp16, on CUDA, or on the CPU under
    ``TRITON_INTERPRET=1``); state ``(m [B, H], u [B, H, V], w [B, H])``. ``chunk_size``
    (16, 32, 64 or 128) is the tile BT. Returns ``o: [B, T, H, V]`` in v's dtype and the
    fp32 final state or None.
    """
    op = "softmax_scan_triton"
    check_scan_inputs(op, s, v, initial_state)
    SCAN.check(op, "triton", chunk_size=chunk_size, head_dims={"V": v.shape[-1]})
    m0, u0, w0 = initial_state if initial_state is not None else (None, None, None)
    check_tensors(op, v, s, m0, u0, w0)
    contiguous = [x.contiguous() if x is not None else None for x in (s, v, m0, u0, w0)]
    o, m_t, u_t, w_t = SoftmaxScanFunction.apply(*contiguous, chunk_size, output_final_state)
    return o, ((m_t, u_t, w_t) if output_final_state else None)
