"""Linear attention with an optional per-head decay as Triton kernels (Lightning Attention-2 tiling).

    S_t = exp(decay) * S_{t-1} + k_t^T v_t ,   o_t = scale * q_t S_t

One program per (sequence, head, block of BV value columns) walks the sequence chunk by
chunk (BT tokens). The state block ``S: [K, BV]`` stays in registers (fp32) for the whole
walk, so nothing sequence-long is ever materialised (no cumsum over the sequence, no
per-chunk states in HBM). Per chunk, with ``lam = decay[h]`` and positions i, j in 0..BT-1:

    intra (tensor cores):  A = (q k^T) * M,  M_ij = exp(lam (i - j)) [i >= j]
    o     = scale * (A v + exp(lam (i + 1)) q S)
    S     = exp(lam n) S + (exp(lam (n - 1 - j)) k)^T v          (n = tokens in the chunk)

Every exponent is <= 0. The backward is one kernel with two walks: forward in time to
rebuild S and form dq, then backward in time carrying dS (on chip) to form dk, dv and
the gradient of the initial state. dq and dk are sums over the value blocks (partials
summed afterwards); the decay's gradient follows from them (see ``_decay_grad``).

Batches and packed sequences (``cu_seqlens``) share one code path: a batch ``[B, T]`` is
read as B packed sequences with offsets ``0, T, 2T, ...``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from seqmix.kernels.common import Recurrence
from seqmix.kernels.linear_attn.limits import LINEAR_ATTN
from seqmix.kernels.triton_utils import (autotune, block_size, chunk_rows, contiguous, load_state,
    new_outputs, prepare, sequence_bounds, state_tile, token_tile, value_block_partials, value_grid)

_CONFIGS = [triton.Config({"BV": bv}, num_warps=w, num_stages=s)
            for bv in (64, 32) for w in (4, 8) for s in (2, 3)]


@triton.jit
def _decays(decay, i_h, o_t, HAS_DECAY: tl.constexpr):
    """``lam = decay[h]`` (0 without decay), the decayed causal mask ``[BT, BT]`` and the query factors ``[BT]``."""
    lam = tl.load(decay + i_h).to(tl.float32) if HAS_DECAY else 0.0
    causal = o_t[:, None] >= o_t[None, :]
    m_intra = tl.where(causal, tl.exp(lam * (o_t[:, None] - o_t[None, :]).to(tl.float32)), 0.0)  # [BT, BT]
    return lam, m_intra, tl.exp(lam * (o_t + 1).to(tl.float32))


@triton.jit
def _chunk(q, k, v, do, bos, start, seq_len, lam, i_h, o_t, o_k, o_v, H: tl.constexpr, K: tl.constexpr,
           V: tl.constexpr, BT: tl.constexpr, LOAD_Q: tl.constexpr, LOAD_DO: tl.constexpr):
    """The chunk at ``start``: its tiles of q, k, v and do (q and do only when asked for: k and v
    stand in), their offsets and masks, its number of tokens n and its key factors."""
    n, m_t, rows = chunk_rows(bos, start, seq_len, o_t, BT)
    p_qk, m_qk = token_tile(rows, m_t, i_h, o_k, K, H)  # [BT, BK]
    p_vo, m_vo = token_tile(rows, m_t, i_h, o_v, V, H)  # [BT, BV]
    b_k = tl.load(k + p_qk, mask=m_qk, other=0.0)
    b_v = tl.load(v + p_vo, mask=m_vo, other=0.0)
    b_q = b_k
    b_do = b_v
    if LOAD_Q:
        b_q = tl.load(q + p_qk, mask=m_qk, other=0.0)
    if LOAD_DO:
        b_do = tl.load(do + p_vo, mask=m_vo, other=0.0)
    k_decay = tl.where(m_t, tl.exp(lam * (n - 1 - o_t).to(tl.float32)), 0.0)  # [BT]
    return b_q, b_k, b_v, b_do, p_qk, m_qk, p_vo, m_vo, n, k_decay


@triton.jit
def _next_state(state, b_k, b_v, k_decay, lam, n):
    """The state after the chunk: ``exp(lam n) S + (exp(lam (n - 1 - j)) k)^T v``."""
    return state * tl.exp(lam * n.to(tl.float32)) + tl.dot(tl.trans((b_k * k_decay[:, None]).to(b_v.dtype)), b_v)


@autotune(_CONFIGS, key=["K", "V", "BT"])
@triton.jit
def _fwd_kernel(q, k, v, decay, h0, o, ht, offsets, scale,
                H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
                BV: tl.constexpr, HAS_DECAY: tl.constexpr, HAS_H0: tl.constexpr, STORE_HT: tl.constexpr):
    i_v, i_nh = tl.program_id(0), tl.program_id(1)
    bos, seq_len = sequence_bounds(offsets, i_nh // H)
    dt = q.dtype.element_ty
    o_t, o_k, o_v = tl.arange(0, BT), tl.arange(0, BK), i_v * BV + tl.arange(0, BV)
    lam, m_intra, q_decay = _decays(decay, i_nh % H, o_t, HAS_DECAY)
    p_state, m_state = state_tile(o_k, o_v, K, V)
    p_state += i_nh * K * V  # [BK, BV] offsets into [N, H, K, V]
    state = load_state(h0, p_state, m_state, HAS_H0, BK, BV)

    for start in range(0, seq_len, BT):
        b_q, b_k, b_v, b_do, p_qk, m_qk, p_vo, m_vo, n, k_decay = _chunk(
            q, k, v, v, bos, start, seq_len, lam, i_nh % H, o_t, o_k, o_v, H, K, V, BT, True, False)
        scores = tl.dot(b_q, tl.trans(b_k)) * m_intra  # [BT, BT] fp32
        b_o = tl.dot(scores.to(dt), b_v)
        b_o += tl.dot((b_q * q_decay[:, None]).to(dt), state.to(dt))
        tl.store(o + p_vo, (b_o * scale).to(o.dtype.element_ty), mask=m_vo)
        state = _next_state(state, b_k, b_v, k_decay, lam, n)

    if STORE_HT:
        tl.store(ht + p_state, state, mask=m_state)


@autotune(_CONFIGS, key=["K", "V", "BT"], reset_to_zero=["dq", "dk"])
@triton.jit
def _bwd_kernel(q, k, v, do, decay, h0, dht, dq, dk, dv, dh0, offsets, scale, T_total,
                H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
                BV: tl.constexpr, HAS_DECAY: tl.constexpr, HAS_H0: tl.constexpr, HAS_DHT: tl.constexpr,
                STORE_DH0: tl.constexpr):
    i_v, i_nh = tl.program_id(0), tl.program_id(1)
    i_h = i_nh % H
    bos, seq_len = sequence_bounds(offsets, i_nh // H)
    n_chunks = tl.cdiv(seq_len, BT)
    dt = q.dtype.element_ty
    o_t, o_k, o_v = tl.arange(0, BT), tl.arange(0, BK), i_v * BV + tl.arange(0, BV)
    lam, m_intra, q_decay = _decays(decay, i_h, o_t, HAS_DECAY)
    p_state, m_state = state_tile(o_k, o_v, K, V)
    p_state += i_nh * K * V  # [BK, BV]
    partial = i_v.to(tl.int64) * T_total * H * K  # offset of this value block's dq/dk partials

    # walk 1, forward in time: rebuild the state entering each chunk, dq = scale (D k + decay dO S^T)
    state = load_state(h0, p_state, m_state, HAS_H0, BK, BV)
    for i_c in range(0, n_chunks):
        b_q, b_k, b_v, b_do, p_qk, m_qk, p_vo, m_vo, n, k_decay = _chunk(
            q, k, v, do, bos, i_c * BT, seq_len, lam, i_h, o_t, o_k, o_v, H, K, V, BT, False, True)
        d_scores = tl.dot(b_do, tl.trans(b_v)) * m_intra  # [BT, BT]
        b_dq = tl.dot(d_scores.to(dt), b_k) + tl.dot(b_do, tl.trans(state.to(dt))) * q_decay[:, None]
        tl.store(dq + partial + p_qk, b_dq * scale, mask=m_qk)
        state = _next_state(state, b_k, b_v, k_decay, lam, n)

    # walk 2, backward in time, carrying dS = dL/d(state after the chunk)
    d_state = load_state(dht, p_state, m_state, HAS_DHT, BK, BV)
    for j_c in range(0, n_chunks):
        b_q, b_k, b_v, b_do, p_qk, m_qk, p_vo, m_vo, n, k_decay = _chunk(
            q, k, v, do, bos, (n_chunks - 1 - j_c) * BT, seq_len, lam, i_h, o_t, o_k, o_v, H, K, V, BT, True, True)
        scores = tl.dot(b_q, tl.trans(b_k)) * m_intra  # [BT, BT]
        d_scores = tl.dot(b_do, tl.trans(b_v)) * m_intra  # [BT, BT]
        b_dk = tl.dot(tl.trans(d_scores).to(dt), b_q) * scale
        b_dk += tl.dot(b_v, tl.trans(d_state.to(dt))) * k_decay[:, None]
        b_dv = tl.dot(tl.trans(scores).to(dt), b_do) * scale
        b_dv += tl.dot((b_k * k_decay[:, None]).to(dt), d_state.to(dt))
        tl.store(dk + partial + p_qk, b_dk, mask=m_qk)
        tl.store(dv + p_vo, b_dv.to(dv.dtype.element_ty), mask=m_vo)
        d_state = d_state * tl.exp(lam * n.to(tl.float32))
        d_state += tl.dot(tl.trans((b_q * q_decay[:, None]).to(dt)), b_do) * scale

    if STORE_DH0:
        tl.store(dh0 + p_state, d_state, mask=m_state)


def _decay_grad(q: Tensor, k: Tensor, dq: Tensor, dk: Tensor, final: Tensor | None, d_final: Tensor | None,
                offsets: Tensor, n_seq: int) -> Tensor:
    """dL/d(decay) from dq and dk, with no extra pass over the state.

    With B_t = decay * (t + 1) (t counted from the sequence start), o_t and the final state
    depend on the decay only through q_t e^{B_t} and k_s e^{-B_s} (and e^{B_{T-1}} on the
    final state), so dL/dB_t = sum_k (q dq - k dk)_t (+ sum(S_T * dS_T) at t = T-1) and
    dL/d(decay) = sum_t (t + 1) dL/dB_t.
    """
    per_token = (q.float() * dq - k.float() * dk).sum(-1)  # [B, T, H]
    b, t, h = per_token.shape
    per_token = per_token.reshape(b * t, h)  # [B, T, H] -> [B*T, H]: the packed view
    starts = offsets[:-1].long()
    lengths = offsets.diff().long()
    seq_id = torch.repeat_interleave(torch.arange(n_seq, device=q.device), lengths)  # [B*T]
    position = torch.arange(b * t, device=q.device) - starts[seq_id] + 1  # t + 1 within its sequence
    grad = (per_token * position[:, None].float()).sum(0)  # [H]
    if final is not None and d_final is not None:
        grad += ((final * d_final).sum((-1, -2)) * lengths[:, None].float()).sum(0)  # [N, H] -> [H]
    return grad


class LinearAttnFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, decay, initial_state, offsets, n_seq, scale, chunk_size, output_final_state):
        b, t, h, dk = q.shape
        dv = v.shape[-1]
        o, final = new_outputs(q, v, n_seq, with_state=output_final_state)
        _fwd_kernel[value_grid(dv, n_seq * h)](
            q, k, v, decay if decay is not None else q, initial_state if initial_state is not None else q,
            o, final if final is not None else o, offsets, scale,
            H=h, K=dk, V=dv, BT=chunk_size, BK=block_size(dk),
            HAS_DECAY=decay is not None, HAS_H0=initial_state is not None, STORE_HT=final is not None)
        ctx.save_for_backward(q, k, v, decay, initial_state, offsets, final)
        ctx.n_seq, ctx.scale, ctx.chunk_size = n_seq, scale, chunk_size
        return o, final

    @staticmethod
    def backward(ctx, do, d_final):
        q, k, v, decay, initial_state, offsets, final = ctx.saved_tensors
        b, t, h, dk = q.shape
        dv = v.shape[-1]
        d_final = contiguous(d_final)
        dq, dk_ = (value_block_partials(_CONFIGS, dv, b, t, h, dk, device=q.device) for _ in range(2))
        dv_, dh0 = new_outputs(q, v, ctx.n_seq, with_state=initial_state is not None)
        _bwd_kernel[value_grid(dv, ctx.n_seq * h)](
            q, k, v, do.contiguous(), decay if decay is not None else q,
            initial_state if initial_state is not None else q, d_final if d_final is not None else q, dq, dk_, dv_,
            dh0 if dh0 is not None else q, offsets, ctx.scale, b * t,
            H=h, K=dk, V=dv, BT=ctx.chunk_size, BK=block_size(dk),
            HAS_DECAY=decay is not None, HAS_H0=initial_state is not None, HAS_DHT=d_final is not None,
            STORE_DH0=dh0 is not None)
        dq, dk_ = dq.sum(0), dk_.sum(0)  # [NV, B, T, H, K] -> [B, T, H, K]
        d_decay = None
        if decay is not None and ctx.needs_input_grad[3]:
            d_decay = _decay_grad(q, k, dq, dk_, final, d_final, offsets, ctx.n_seq).to(decay.dtype)
        return (dq.to(q.dtype), dk_.to(k.dtype), dv_, d_decay,
                dh0.to(initial_state.dtype) if dh0 is not None else None, None, None, None, None, None)


def linear_attn_triton(x: Recurrence, decay: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """The Triton form of :func:`seqmix.kernels.linear_attn.linear_attn` (the same arguments and
    results): fp32/bf16/fp16 on CUDA, or on the CPU under ``TRITON_INTERPRET=1``; the chunk size
    and head dims of ``limits.py``; the final state is fp32."""
    q, k, v, offsets, n_seq = prepare("linear_attn_triton", LINEAR_ATTN, x, decay)
    return LinearAttnFunction.apply(q, k, v, decay, x.initial_state, offsets, n_seq, x.scale, x.chunk_size,
                                    x.output_final_state)
