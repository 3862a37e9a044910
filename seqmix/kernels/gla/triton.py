"""Gated linear attention (GLA) as Triton kernels: chunks with secondary sub-chunks.

    S_t = diag(exp(g_t)) S_{t-1} + k_t^T v_t ,   o_t = scale * q_t S_t ,   g: [B, T, H, K] <= 0

One program per (sequence, head, block of BV value columns) walks the sequence in chunks
of BT tokens with the state block ``S: [K, BV]`` in registers (fp32). Inside a chunk,
``b = cumsum(g)`` (chunk-local, in registers) and the chunk is cut into sub-chunks of
BC = 16 rows (the hardware-efficient form of the GLA paper):

- inter-chunk:      o_i += (q_i * exp(b_i)) S                         (tensor cores)
- off-diagonal sub-chunk pairs J < I, with the reference r = b at the end of sub-chunk I-1:
                    A_IJ = (q_I * exp(b_I - r)) (k_J * exp(r - b_J))^T  (tensor cores)
- diagonal sub-chunks, exact: A_ij = sum_k q_ik k_jk exp(b_ik - b_jk), i >= j
                    (a [BC, BC, K] product on CUDA cores)
- state:            S = exp(b_L) * S + (k * exp(b_L - b))^T v          (tensor cores)

Every exponent is <= 0, so strong gates underflow to 0 instead of overflowing. The
backward walks forward in time (rebuilding S, giving dq) then backward in time carrying
``dS`` on chip (giving dk, dv, and the initial state's gradient), sub-chunk by sub-chunk
the same way. The gates' gradient uses dg_t = sum_{s >= t} (q_s dq_s - k_s dk_s)
(+ the final state's term), a reversed running sum done by a third small kernel; the i = j
terms, which do not depend on g, are left out of q dq - k dk so that strong gates do not
make it cancel catastrophically.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from seqmix.kernels.common import Recurrence
from seqmix.kernels.gla.limits import GLA
from seqmix.kernels.triton_utils import (autotune, block_size, chunk_rows, contiguous, load_state, new_output,
    new_outputs, prepare, sequence_bounds, state_tile, token_tile, value_block_partials, value_grid)

BC = 16  # the secondary (sub-)chunk: rows whose pairwise gates are computed exactly
# few configs: these kernels are large, and every config is compiled when autotuning
_CONFIGS = [triton.Config({"BV": bv}, num_warps=4, num_stages=2) for bv in (64, 32)]


@triton.jit
def _prefix(b_g, o_t, bound):
    """Sum of the gate rows above ``bound`` (the cumulative gate just before row ``bound``): [BK]."""
    return tl.sum(tl.where(o_t[:, None] < bound, b_g, 0.0), axis=0)


@triton.jit
def _diag_gates(b_c, o_c, STRICT: tl.constexpr):
    """exp(b_i - b_j) for i >= j (i > j when STRICT) inside one sub-chunk, else 0: [BC, BC, BK]."""
    if STRICT:
        causal = (o_c[:, None] > o_c[None, :])[:, :, None]
    else:
        causal = (o_c[:, None] >= o_c[None, :])[:, :, None]
    return tl.exp(tl.where(causal, b_c[:, None, :] - b_c[None, :, :], float("-inf")))


@triton.jit
def _diagonal(x, o_c):
    """The diagonal of a [BC, BC] tile: [BC]."""
    return tl.sum(tl.where(o_c[:, None] == o_c[None, :], x, 0.0), axis=1)


@triton.jit
def _chunk(a, g, b, bos, start, seq_len, i_h, o_t, o_k, o_v,
           H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr):
    """The chunk at ``start``: its tiles of ``a`` (q or k, [BT, BK]), of the gates and of ``b`` (v or
    do, [BT, BV]), the gates cumulated inside it ``[BT, BK]`` and over all of it ``[BK]``, n, its row mask."""
    n, m_t, rows = chunk_rows(bos, start, seq_len, o_t, BT)
    p_tk, m_tk = token_tile(rows, m_t, i_h, o_k, K, H)
    p_tv, m_tv = token_tile(rows, m_t, i_h, o_v, V, H)
    b_g = tl.load(g + p_tk, mask=m_tk, other=0.0).to(tl.float32)
    # padded rows hold 0: the last row of the cumulative gate is the whole chunk's
    return (tl.load(a + p_tk, mask=m_tk, other=0.0), b_g, tl.load(b + p_tv, mask=m_tv, other=0.0),
            tl.cumsum(b_g, axis=0), tl.sum(b_g, axis=0), n, m_tk)


@triton.jit
def _sub_chunk(q, k, v, do, g, b_g, bos, start, n, i_c, i_h, o_t, o_k, o_v, scale, H: tl.constexpr,
               K: tl.constexpr, V: tl.constexpr, BC: tl.constexpr, LOAD_DO: tl.constexpr):
    """Sub-chunk ``i_c`` of the chunk at ``start``: its rows ``o_c`` inside the chunk, tiles of q, k
    (offsets ``p_ck``, mask ``m_ck``), v and ``scale * do`` (offsets ``p_cv``, mask ``m_cv``; v stands in
    for do unless asked for), the cumulative gate before it ``ref`` [BK] and at each of its rows ``b_c``."""
    o_c = i_c * BC + tl.arange(0, BC)
    m_c = o_c < n
    rows_c = bos + start + o_c
    p_ck, m_ck = token_tile(rows_c, m_c, i_h, o_k, K, H)  # [BC, BK]
    p_cv, m_cv = token_tile(rows_c, m_c, i_h, o_v, V, H)  # [BC, BV]
    v_c = tl.load(v + p_cv, mask=m_cv, other=0.0)
    do_c = v_c
    if LOAD_DO:
        do_c = (tl.load(do + p_cv, mask=m_cv, other=0.0) * scale).to(q.dtype.element_ty)
    ref = _prefix(b_g, o_t, i_c * BC)  # [BK] cumulative gate before this sub-chunk
    b_c = ref[None, :] + tl.cumsum(tl.load(g + p_ck, mask=m_ck, other=0.0).to(tl.float32), axis=0)
    return (o_c, tl.load(q + p_ck, mask=m_ck, other=0.0), tl.load(k + p_ck, mask=m_ck, other=0.0), v_c, do_c,
            ref, b_c, p_ck, m_ck, p_cv, m_cv)


@triton.jit
def _next_state(state, b_k, b_v, b_b, b_last, m_tk):
    """The state after the chunk: ``exp(b_L) * S + (k * exp(b_L - b))^T v``."""
    k_end = b_k * tl.exp(tl.where(m_tk, b_last[None, :] - b_b, float("-inf")))  # [BT, BK]
    return state * tl.exp(b_last)[:, None] + tl.dot(tl.trans(k_end.to(b_v.dtype)), b_v)


@autotune(_CONFIGS, key=["K", "V", "BT"])
@triton.jit
def _fwd_kernel(q, k, v, g, h0, o, ht, offsets, scale,
                H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr,
                BK: tl.constexpr, BV: tl.constexpr, HAS_H0: tl.constexpr, STORE_HT: tl.constexpr):
    i_v, i_nh = tl.program_id(0), tl.program_id(1)
    i_h = i_nh % H
    bos, seq_len = sequence_bounds(offsets, i_nh // H)
    dt = q.dtype.element_ty
    o_t, o_k, o_v = tl.arange(0, BT), tl.arange(0, BK), i_v * BV + tl.arange(0, BV)
    p_state, m_state = state_tile(o_k, o_v, K, V)
    p_state += i_nh * K * V  # [BK, BV] into [N, H, K, V]
    state = load_state(h0, p_state, m_state, HAS_H0, BK, BV)

    for start in range(0, seq_len, BT):
        b_k, b_g, b_v, b_b, b_last, n, m_tk = _chunk(k, g, v, bos, start, seq_len, i_h, o_t, o_k, o_v, H, K, V, BT)
        for i_c in range(0, BT // BC):  # a loop, not unrolled: compile time
            o_c, q_c, k_c, v_c, do_c, ref, b_c, p_ck, m_ck, p_cv, m_cv = _sub_chunk(
                q, k, v, v, g, b_g, bos, start, n, i_c, i_h, o_t, o_k, o_v, scale, H, K, V, BC, False)
            b_o = tl.dot((q_c * tl.exp(b_c)).to(dt), state.to(dt))  # [BC, BV] from earlier chunks
            if i_c > 0:  # earlier sub-chunks of this chunk, relative to ref
                k_ref = b_k * tl.exp(tl.where(o_t[:, None] < i_c * BC, ref[None, :] - b_b, float("-inf")))
                a_off = tl.dot((q_c * tl.exp(b_c - ref[None, :])).to(dt), tl.trans(k_ref.to(dt)))  # [BC, BT]
                b_o += tl.dot(a_off.to(dt), b_v)
            a_diag = tl.sum(q_c[:, None, :].to(tl.float32) * k_c[None, :, :].to(tl.float32)
                            * _diag_gates(b_c, o_c, False), axis=2)  # [BC, BC]
            b_o += tl.dot(a_diag.to(dt), v_c)
            tl.store(o + p_cv, (b_o * scale).to(o.dtype.element_ty), mask=m_cv)
        state = _next_state(state, b_k, b_v, b_b, b_last, m_tk)

    if STORE_HT:
        tl.store(ht + p_state, state, mask=m_state)


@autotune(_CONFIGS, key=["K", "V", "BT"], reset_to_zero=["dq", "dk", "dbq", "dbk"])
@triton.jit
def _bwd_kernel(q, k, v, g, do, h0, dht, dq, dk, dv, dh0, dbq, dbk, offsets, scale, T_total,
                H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr,
                BK: tl.constexpr, BV: tl.constexpr, HAS_H0: tl.constexpr, HAS_DHT: tl.constexpr,
                STORE_DH0: tl.constexpr):
    i_v, i_nh = tl.program_id(0), tl.program_id(1)
    i_h = i_nh % H
    bos, seq_len = sequence_bounds(offsets, i_nh // H)
    n_chunks = tl.cdiv(seq_len, BT)
    dt = q.dtype.element_ty
    o_t, o_k, o_v = tl.arange(0, BT), tl.arange(0, BK), i_v * BV + tl.arange(0, BV)
    p_state, m_state = state_tile(o_k, o_v, K, V)
    p_state += i_nh * K * V
    partial = i_v.to(tl.int64) * T_total * H * K  # this value block's slice of the dq/dk partials

    # walk 1, forward in time: dq = (dO S^T) exp(b) + intra-chunk terms
    state = load_state(h0, p_state, m_state, HAS_H0, BK, BV)
    for i_t in range(0, n_chunks):
        start = i_t * BT
        b_k, b_g, b_v, b_b, b_last, n, m_tk = _chunk(k, g, v, bos, start, seq_len, i_h, o_t, o_k, o_v, H, K, V, BT)
        for i_c in range(0, BT // BC):  # a loop, not unrolled: compile time
            o_c, q_c, k_c, v_c, do_c, ref, b_c, p_ck, m_ck, p_cv, m_cv = _sub_chunk(
                q, k, v, do, g, b_g, bos, start, n, i_c, i_h, o_t, o_k, o_v, scale, H, K, V, BC, True)
            b_dq = tl.dot(do_c, tl.trans(state.to(dt))) * tl.exp(b_c)  # [BC, BK]
            if i_c > 0:
                k_ref = b_k * tl.exp(tl.where(o_t[:, None] < i_c * BC, ref[None, :] - b_b, float("-inf")))
                d_off = tl.dot(do_c, tl.trans(b_v))  # [BC, BT]
                b_dq += tl.dot(d_off.to(dt), k_ref.to(dt)) * tl.exp(b_c - ref[None, :])
            d_diag = tl.dot(do_c, tl.trans(v_c))  # [BC, BC]
            b_dq += tl.sum(d_diag[:, :, None] * k_c[None, :, :].to(tl.float32) * _diag_gates(b_c, o_c, True),
                           axis=1)
            # the gates' gradient takes dq without the i = j term, which does not depend on g
            tl.store(dbq + partial + p_ck, q_c.to(tl.float32) * b_dq, mask=m_ck)
            b_dq += _diagonal(d_diag, o_c)[:, None] * k_c.to(tl.float32)
            tl.store(dq + partial + p_ck, b_dq, mask=m_ck)
        state = _next_state(state, b_k, b_v, b_b, b_last, m_tk)

    # walk 2, backward in time, carrying dS = dL/d(state after the chunk)
    d_state = load_state(dht, p_state, m_state, HAS_DHT, BK, BV)
    for j_t in range(0, n_chunks):
        start = (n_chunks - 1 - j_t) * BT
        b_q, b_g, b_do, b_b, b_last, n, m_tk = _chunk(q, g, do, bos, start, seq_len, i_h, o_t, o_k, o_v, H, K, V, BT)
        b_do = (b_do * scale).to(dt)
        for i_c in range(0, BT // BC):  # a loop, not unrolled: compile time
            o_c, q_c, k_c, v_c, do_c, ref, b_c, p_ck, m_ck, p_cv, m_cv = _sub_chunk(
                q, k, v, do, g, b_g, bos, start, n, i_c, i_h, o_t, o_k, o_v, scale, H, K, V, BC, True)
            k_end = tl.exp(tl.where(m_ck, b_last[None, :] - b_c, float("-inf")))  # [BC, BK]
            b_dk = tl.dot(v_c, tl.trans(d_state.to(dt))) * k_end
            b_dv = tl.dot((k_c * k_end).to(dt), d_state.to(dt))
            if i_c < BT // BC - 1:  # later sub-chunks of this chunk, relative to r = b at this sub-chunk's end
                ref = _prefix(b_g, o_t, (i_c + 1) * BC)
                q_ref = b_q * tl.exp(tl.where(o_t[:, None] >= (i_c + 1) * BC, b_b - ref[None, :], float("-inf")))
                k_ref = tl.exp(ref[None, :] - b_c)  # [BC, BK], exponent <= 0
                d_off = tl.dot(b_do, tl.trans(v_c))  # [BT, BC]
                b_dk += tl.dot(tl.trans(d_off.to(dt)), q_ref.to(dt)) * k_ref
                a_off = tl.dot(q_ref.to(dt), tl.trans((k_c * k_ref).to(dt)))  # [BT, BC]
                b_dv += tl.dot(tl.trans(a_off.to(dt)), b_do)
            gates = _diag_gates(b_c, o_c, False)  # [BC(i), BC(j), BK]
            d_diag = tl.dot(do_c, tl.trans(v_c))  # [BC(i), BC(j)]
            b_dk += tl.sum(d_diag[:, :, None] * q_c[:, None, :].to(tl.float32) * _diag_gates(b_c, o_c, True), axis=0)
            tl.store(dbk + partial + p_ck, k_c.to(tl.float32) * b_dk, mask=m_ck)  # as dbq: without i = j
            b_dk += _diagonal(d_diag, o_c)[:, None] * q_c.to(tl.float32)
            a_diag = tl.sum(q_c[:, None, :].to(tl.float32) * k_c[None, :, :].to(tl.float32) * gates, axis=2)
            b_dv += tl.dot(tl.trans(a_diag.to(dt)), do_c)
            tl.store(dk + partial + p_ck, b_dk, mask=m_ck)
            tl.store(dv + p_cv, b_dv.to(dv.dtype.element_ty), mask=m_cv)
        q_start = b_q * tl.exp(b_b)  # [BT, BK]
        d_state = d_state * tl.exp(b_last)[:, None] + tl.dot(tl.trans(q_start.to(dt)), b_do)

    if STORE_DH0:
        tl.store(dh0 + p_state, d_state, mask=m_state)


@triton.jit
def _dg_kernel(db, d_last, dg, offsets,
               H: tl.constexpr, K: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, HAS_LAST: tl.constexpr):
    """dg_t = sum_{s >= t} db_s (db = q dq - k dk), plus the final state's term, at every t."""
    i_nh = tl.program_id(0)
    i_h = i_nh % H
    bos, seq_len = sequence_bounds(offsets, i_nh // H)
    n_chunks = tl.cdiv(seq_len, BT)
    o_t, o_k = tl.arange(0, BT), tl.arange(0, BK)
    m_k = o_k < K
    carry = tl.zeros([BK], dtype=tl.float32)
    if HAS_LAST:
        carry += tl.load(d_last + i_nh * K + o_k, mask=m_k, other=0.0)
    for j_t in range(0, n_chunks):
        start = (n_chunks - 1 - j_t) * BT
        rows = bos + start + o_t
        m = (o_t < seq_len - start)[:, None] & m_k[None, :]
        p = rows[:, None] * (H * K) + i_h * K + o_k[None, :]
        x = tl.load(db + p, mask=m, other=0.0)
        total = tl.sum(x, axis=0)  # [BK]
        suffix = carry[None, :] + total[None, :] - tl.cumsum(x, axis=0) + x  # sum over rows >= this row
        tl.store(dg + p, suffix, mask=m)
        carry += total


class GLAFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, g, initial_state, offsets, n_seq, scale, chunk_size, output_final_state):
        b, t, h, dk = q.shape
        dv = v.shape[-1]
        o, final = new_outputs(q, v, n_seq, with_state=output_final_state)
        _fwd_kernel[value_grid(dv, n_seq * h)](
            q, k, v, g, initial_state if initial_state is not None else q, o, final if final is not None else o,
            offsets, scale, H=h, K=dk, V=dv, BT=chunk_size, BC=BC, BK=block_size(dk),
            HAS_H0=initial_state is not None, STORE_HT=final is not None)
        ctx.save_for_backward(q, k, v, g, initial_state, offsets, final)
        ctx.n_seq, ctx.scale, ctx.chunk_size = n_seq, scale, chunk_size
        return o, final

    @staticmethod
    def backward(ctx, do, d_final):
        q, k, v, g, initial_state, offsets, final = ctx.saved_tensors
        b, t, h, dk = q.shape
        dv = v.shape[-1]
        d_final = contiguous(d_final)
        dq, dk_, dbq, dbk = (value_block_partials(_CONFIGS, dv, b, t, h, dk, device=q.device) for _ in range(4))
        dv_, dh0 = new_outputs(q, v, ctx.n_seq, with_state=initial_state is not None)
        _bwd_kernel[value_grid(dv, ctx.n_seq * h)](
            q, k, v, g, do.contiguous(), initial_state if initial_state is not None else q,
            d_final if d_final is not None else q, dq, dk_, dv_, dh0 if dh0 is not None else q,
            dbq, dbk, offsets, ctx.scale, b * t, H=h, K=dk, V=dv, BT=ctx.chunk_size, BC=BC, BK=block_size(dk),
            HAS_H0=initial_state is not None, HAS_DHT=d_final is not None, STORE_DH0=dh0 is not None)
        dq, dk_ = dq.sum(0), dk_.sum(0)  # [NV, B, T, H, K] -> [B, T, H, K]
        dg = new_output((b, t, h, dk), device=q.device, dtype=torch.float32)
        d_last = (final * d_final).sum(-1) if d_final is not None else None  # [N, H, K]
        db = (dbq - dbk).sum(0)  # [NV, B, T, H, K] -> [B, T, H, K]: q dq - k dk without the i = j terms
        _dg_kernel[(ctx.n_seq * h,)](db, d_last if d_last is not None else db, dg, offsets,
                                     H=h, K=dk, BT=ctx.chunk_size, BK=block_size(dk), HAS_LAST=d_last is not None)
        return (dq.to(q.dtype), dk_.to(k.dtype), dv_, dg.to(g.dtype),
                dh0.to(initial_state.dtype) if dh0 is not None else None, None, None, None, None, None)


def gla_triton(x: Recurrence, g: Tensor) -> tuple[Tensor, Tensor | None]:
    """The Triton form of :func:`seqmix.kernels.gla.chunk_gla` (the same arguments and results):
    fp32/bf16/fp16 on CUDA, or on the CPU under ``TRITON_INTERPRET=1``; the chunk size and head dims
    of ``limits.py`` (sub-chunks are 16 rows); the final state is fp32."""
    q, k, v, offsets, n_seq = prepare("gla_triton", GLA, x, g)
    return GLAFunction.apply(q, k, v, g.contiguous(), x.initial_state, offsets, n_seq, x.scale, x.chunk_size,
                             x.output_final_state)
