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

from seqmix.kernels.linear_attn.limits import LINEAR_ATTN
from seqmix.kernels.linear_attn.naive import check_linear_attn_inputs
from seqmix.kernels.triton_utils import autotune, block_size, check_tensors, new_output, sequence_offsets

_CONFIGS = [triton.Config({"BV": bv}, num_warps=w, num_stages=s)
            for bv in (64, 32) for w in (4, 8) for s in (2, 3)]


@autotune(_CONFIGS, key=["K", "V", "BT"])
@triton.jit
def _fwd_kernel(q, k, v, decay, h0, o, ht, offsets, scale,
                H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
                BV: tl.constexpr, HAS_DECAY: tl.constexpr, HAS_H0: tl.constexpr, STORE_HT: tl.constexpr):
    i_v, i_nh = tl.program_id(0), tl.program_id(1)
    i_n, i_h = i_nh // H, i_nh % H
    bos = tl.load(offsets + i_n).to(tl.int64)
    seq_len = (tl.load(offsets + i_n + 1) - bos).to(tl.int32)
    dt = q.dtype.element_ty
    o_t, o_k, o_v = tl.arange(0, BT), tl.arange(0, BK), i_v * BV + tl.arange(0, BV)
    m_k, m_v = o_k < K, o_v < V
    lam = tl.load(decay + i_h).to(tl.float32) if HAS_DECAY else 0.0
    causal = o_t[:, None] >= o_t[None, :]
    m_intra = tl.where(causal, tl.exp(lam * (o_t[:, None] - o_t[None, :]).to(tl.float32)), 0.0)  # [BT, BT]
    q_decay = tl.exp(lam * (o_t + 1).to(tl.float32))  # [BT]

    p_state = i_nh * K * V + o_k[:, None] * V + o_v[None, :]  # [BK, BV] offsets into [N, H, K, V]
    m_state = m_k[:, None] & m_v[None, :]
    state = tl.zeros([BK, BV], dtype=tl.float32)
    if HAS_H0:
        state += tl.load(h0 + p_state, mask=m_state, other=0.0).to(tl.float32)

    for start in range(0, seq_len, BT):
        n = tl.minimum(seq_len - start, BT)
        m_t = o_t < n
        rows = bos + start + o_t  # [BT] token index in the packed sequence
        p_qk = rows[:, None] * (H * K) + i_h * K + o_k[None, :]  # [BT, BK]
        p_vo = rows[:, None] * (H * V) + i_h * V + o_v[None, :]  # [BT, BV]
        b_q = tl.load(q + p_qk, mask=m_t[:, None] & m_k[None, :], other=0.0)
        b_k = tl.load(k + p_qk, mask=m_t[:, None] & m_k[None, :], other=0.0)
        b_v = tl.load(v + p_vo, mask=m_t[:, None] & m_v[None, :], other=0.0)
        k_decay = tl.where(m_t, tl.exp(lam * (n - 1 - o_t).to(tl.float32)), 0.0)  # [BT]

        scores = tl.dot(b_q, tl.trans(b_k)) * m_intra  # [BT, BT] fp32
        b_o = tl.dot(scores.to(dt), b_v)
        b_o += tl.dot((b_q * q_decay[:, None]).to(dt), state.to(dt))
        tl.store(o + p_vo, (b_o * scale).to(o.dtype.element_ty), mask=m_t[:, None] & m_v[None, :])

        state = state * tl.exp(lam * n.to(tl.float32)) + tl.dot(tl.trans((b_k * k_decay[:, None]).to(dt)), b_v)

    if STORE_HT:
        tl.store(ht + p_state, state, mask=m_state)


@autotune(_CONFIGS, key=["K", "V", "BT"], reset_to_zero=["dq", "dk"])
@triton.jit
def _bwd_kernel(q, k, v, do, decay, h0, dht, dq, dk, dv, dh0, offsets, scale, T_total,
                H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
                BV: tl.constexpr, HAS_DECAY: tl.constexpr, HAS_H0: tl.constexpr, HAS_DHT: tl.constexpr,
                STORE_DH0: tl.constexpr):
    i_v, i_nh = tl.program_id(0), tl.program_id(1)
    i_n, i_h = i_nh // H, i_nh % H
    bos = tl.load(offsets + i_n).to(tl.int64)
    seq_len = (tl.load(offsets + i_n + 1) - bos).to(tl.int32)
    n_chunks = tl.cdiv(seq_len, BT)
    dt = q.dtype.element_ty
    o_t, o_k, o_v = tl.arange(0, BT), tl.arange(0, BK), i_v * BV + tl.arange(0, BV)
    m_k, m_v = o_k < K, o_v < V
    lam = tl.load(decay + i_h).to(tl.float32) if HAS_DECAY else 0.0
    causal = o_t[:, None] >= o_t[None, :]
    m_intra = tl.where(causal, tl.exp(lam * (o_t[:, None] - o_t[None, :]).to(tl.float32)), 0.0)  # [BT, BT]
    q_decay = tl.exp(lam * (o_t + 1).to(tl.float32))  # [BT]
    p_state = i_nh * K * V + o_k[:, None] * V + o_v[None, :]  # [BK, BV]
    m_state = m_k[:, None] & m_v[None, :]
    partial = i_v.to(tl.int64) * T_total * H * K  # offset of this value block's dq/dk partials

    # walk 1, forward in time: rebuild the state entering each chunk, dq = scale (D k + decay dO S^T)
    state = tl.zeros([BK, BV], dtype=tl.float32)
    if HAS_H0:
        state += tl.load(h0 + p_state, mask=m_state, other=0.0).to(tl.float32)
    for i_c in range(0, n_chunks):
        start = i_c * BT
        n = tl.minimum(seq_len - start, BT)
        m_t = o_t < n
        rows = bos + start + o_t
        p_qk = rows[:, None] * (H * K) + i_h * K + o_k[None, :]
        p_vo = rows[:, None] * (H * V) + i_h * V + o_v[None, :]
        m_qk, m_vo = m_t[:, None] & m_k[None, :], m_t[:, None] & m_v[None, :]
        b_k = tl.load(k + p_qk, mask=m_qk, other=0.0)
        b_v = tl.load(v + p_vo, mask=m_vo, other=0.0)
        b_do = tl.load(do + p_vo, mask=m_vo, other=0.0)
        k_decay = tl.where(m_t, tl.exp(lam * (n - 1 - o_t).to(tl.float32)), 0.0)

        d_scores = tl.dot(b_do, tl.trans(b_v)) * m_intra  # [BT, BT]
        b_dq = tl.dot(d_scores.to(dt), b_k) + tl.dot(b_do, tl.trans(state.to(dt))) * q_decay[:, None]
        tl.store(dq + partial + p_qk, b_dq * scale, mask=m_qk)
        state = state * tl.exp(lam * n.to(tl.float32)) + tl.dot(tl.trans((b_k * k_decay[:, None]).to(dt)), b_v)

    # walk 2, backward in time, carrying dS = dL/d(state after the chunk)
    d_state = tl.zeros([BK, BV], dtype=tl.float32)
    if HAS_DHT:
        d_state += tl.load(dht + p_state, mask=m_state, other=0.0).to(tl.float32)
    for j_c in range(0, n_chunks):
        start = (n_chunks - 1 - j_c) * BT
        n = tl.minimum(seq_len - start, BT)
        m_t = o_t < n
        rows = bos + start + o_t
        p_qk = rows[:, None] * (H * K) + i_h * K + o_k[None, :]
        p_vo = rows[:, None] * (H * V) + i_h * V + o_v[None, :]
        m_qk, m_vo = m_t[:, None] & m_k[None, :], m_t[:, None] & m_v[None, :]
        b_q = tl.load(q + p_qk, mask=m_qk, other=0.0)
        b_k = tl.load(k + p_qk, mask=m_qk, other=0.0)
        b_v = tl.load(v + p_vo, mask=m_vo, other=0.0)
        b_do = tl.load(do + p_vo, mask=m_vo, other=0.0)
        k_decay = tl.where(m_t, tl.exp(lam * (n - 1 - o_t).to(tl.float32)), 0.0)

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


def _grid(meta, V: int, NH: int):
    return (triton.cdiv(V, meta["BV"]), NH)


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
        o = new_output((b, t, h, dv), device=q.device, dtype=q.dtype)
        final = new_output((n_seq, h, dk, dv), device=q.device, dtype=torch.float32) if output_final_state else None
        _fwd_kernel[lambda meta: _grid(meta, dv, n_seq * h)](
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
        do = do.contiguous()
        d_final = d_final.contiguous() if d_final is not None else None
        # dq and dk are summed over value blocks: allocate for the most blocks any config uses
        max_blocks = triton.cdiv(dv, min(c.kwargs["BV"] for c in _CONFIGS))
        dq = torch.zeros((max_blocks, b, t, h, dk), device=q.device, dtype=torch.float32)
        dk_ = torch.zeros((max_blocks, b, t, h, dk), device=q.device, dtype=torch.float32)
        dv_ = new_output((b, t, h, dv), device=q.device, dtype=v.dtype)
        dh0 = (new_output((ctx.n_seq, h, dk, dv), device=q.device, dtype=torch.float32)
               if initial_state is not None else None)
        _bwd_kernel[lambda meta: _grid(meta, dv, ctx.n_seq * h)](
            q, k, v, do, decay if decay is not None else q, initial_state if initial_state is not None else q,
            d_final if d_final is not None else q, dq, dk_, dv_, dh0 if dh0 is not None else q,
            offsets, ctx.scale, b * t,
            H=h, K=dk, V=dv, BT=ctx.chunk_size, BK=block_size(dk),
            HAS_DECAY=decay is not None, HAS_H0=initial_state is not None, HAS_DHT=d_final is not None,
            STORE_DH0=dh0 is not None)
        dq, dk_ = dq.sum(0), dk_.sum(0)  # [NV, B, T, H, K] -> [B, T, H, K]
        d_decay = None
        if decay is not None and ctx.needs_input_grad[3]:
            d_decay = _decay_grad(q, k, dq, dk_, final, d_final, offsets, ctx.n_seq).to(decay.dtype)
        return (dq.to(q.dtype), dk_.to(k.dtype), dv_, d_decay,
                dh0.to(initial_state.dtype) if dh0 is not None else None, None, None, None, None, None)


def linear_attn_triton(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    decay: Tensor | None = None,
    scale: float | None = None,
    initial_state: Tensor | None = None,
    output_final_state: bool = False,
    cu_seqlens: Tensor | None = None,
    chunk_size: int = 64,
) -> tuple[Tensor, Tensor | None]:
    """The Triton form of :func:`seqmix.kernels.linear_attn.linear_attn` (same arguments).

    ``q, k: [B, T, H, K]``, ``v: [B, T, H, V]`` (fp32/bf16/fp16, on CUDA, or on the CPU under
    ``TRITON_INTERPRET=1``); ``decay: [H]``; ``initial_state: [N, H, K, V]``. Head dims up
    to 256. ``chunk_size`` (16, 32, 64 or 128) is the tile BT (``limits.py``). Returns ``o: [B, T, H, V]``
    in q's dtype and the fp32 final state ``[N, H, K, V]`` or None.
    """
    op = "linear_attn_triton"
    check_linear_attn_inputs(op, q, k, v, decay, initial_state, cu_seqlens)
    LINEAR_ATTN.check(op, "triton", chunk_size=chunk_size, head_dims={"K": q.shape[-1], "V": v.shape[-1]})
    device = check_tensors(op, q, k, v, decay, initial_state)
    if q.dtype == torch.float64:
        raise ValueError(f"{op}: fp64 is not supported by the Triton kernels; use impl='naive' or 'chunk' for fp64")
    b, t = q.shape[:2]
    offsets, n_seq = sequence_offsets(cu_seqlens, b, t, device)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    k, v = k.to(q.dtype), v.to(q.dtype)
    return LinearAttnFunction.apply(
        q.contiguous(), k.contiguous(), v.contiguous(), decay, initial_state, offsets, n_seq, scale,
        chunk_size, output_final_state)
