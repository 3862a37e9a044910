"""The delta rule (DeltaNet) as Triton kernels: chunks in the WY/UT representation.

    S_t = S_{t-1} + beta_t k_t^T (v_t - k_t S_{t-1}) ,   o_t = scale * q_t S_t

One program per (sequence, head, block of BV value columns) walks the sequence in chunks
of BT tokens with ``S: [K, BV]`` in registers (fp32); the delta rule acts on each value
column separately, so the value blocks never talk to each other. Per chunk (the UT
transform of Yang et al. 2024, "Parallelizing Linear Transformers with the Delta Rule"):

    A   = tril(diag(beta) K K^T, -1)                    [BT, BT]  (tensor cores)
    M   = (I + A)^{-1}                                  forward substitution, row by row, on chip
    W   = M (beta K),  U' = M (beta V)                  the WY factors of the Householder product
    U   = U' - W S                                      the chunk's true updates
    O   = scale (Q S + tril(Q K^T) U)
    S  <- S + K^T U

The backward first re-runs the walk to store the state entering every chunk (the delta
rule's state update is not safely invertible, so it cannot be run backwards), then walks
backward in time carrying ``dS`` on chip and differentiates the chunk formulas above,
including the inverse (``dA = -M^T dM M^T``). dq, dk and dbeta are sums over the value
blocks (partials summed afterwards).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from seqmix.kernels.common import Recurrence
from seqmix.kernels.delta_rule.limits import DELTA_RULE
from seqmix.kernels.triton_utils import (autotune, block_size, chunk_rows, contiguous, load_state, new_output,
    new_outputs, new_state, prepare, sequence_bounds, state_tile, token_tile, value_block_partials, value_grid)

# few configs: these kernels are large, and every config is compiled when autotuning
_CONFIGS = [triton.Config({"BV": bv}, num_warps=4, num_stages=2) for bv in (64, 32)]


@triton.jit
def _unit_lower_inverse(a, o_t, n):
    """(I + a)^{-1} for a strictly lower-triangular [BT, BT] tile whose rows >= n are zero, by
    forward substitution: row i of the inverse is e_i - sum_{j < i} a_ij (row j of the inverse)."""
    rows = o_t[:, None]
    inverse = tl.where(rows == o_t[None, :], 1.0, 0.0)
    for i in range(1, n):
        a_i = tl.sum(tl.where(rows == i, a, 0.0), axis=0)  # [BT] row i of a
        r = tl.sum(a_i[:, None] * inverse, axis=0)  # [BT] a_i @ inverse (rows >= i of inverse meet zeros)
        inverse = tl.where(rows == i, inverse - r[None, :], inverse)
    return inverse


@triton.jit
def _chunk_wy(b_k, b_beta, o_t, n):
    """The chunk's M = (I + tril(diag(beta) K K^T, -1))^{-1} (n valid rows) and K K^T, in fp32."""
    kk = tl.dot(b_k, tl.trans(b_k))  # [BT, BT]
    a = tl.where(o_t[:, None] > o_t[None, :], b_beta[:, None] * kk, 0.0)
    return _unit_lower_inverse(a, o_t, n), kk


@triton.jit
def _chunk(k, v, beta, bos, start, seq_len, i_h, o_t, o_k, o_v,
           H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr):
    """The chunk at ``start``: its tiles of k, v and beta (fp32), the offsets and masks of its k and v
    tiles, its number of tokens n and its rows."""
    n, m_t, rows = chunk_rows(bos, start, seq_len, o_t, BT)
    p_tk, m_tk = token_tile(rows, m_t, i_h, o_k, K, H)  # [BT, BK]
    p_tv, m_tv = token_tile(rows, m_t, i_h, o_v, V, H)  # [BT, BV]
    b_k = tl.load(k + p_tk, mask=m_tk, other=0.0)
    b_v = tl.load(v + p_tv, mask=m_tv, other=0.0)
    b_beta = tl.load(beta + rows * H + i_h, mask=m_t, other=0.0).to(tl.float32)
    return b_k, b_v, b_beta, p_tk, m_tk, p_tv, m_tv, n, rows


@autotune(_CONFIGS, key=["K", "V", "BT"])
@triton.jit
def _fwd_kernel(q, k, v, beta, h0, o, ht, states, offsets, scale, max_chunks,
                H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
                BV: tl.constexpr, HAS_H0: tl.constexpr, STORE_O: tl.constexpr, STORE_HT: tl.constexpr,
                STORE_STATES: tl.constexpr):
    i_v, i_nh = tl.program_id(0), tl.program_id(1)
    i_n, i_h = i_nh // H, i_nh % H
    bos, seq_len = sequence_bounds(offsets, i_n)
    dt = q.dtype.element_ty
    o_t, o_k, o_v = tl.arange(0, BT), tl.arange(0, BK), i_v * BV + tl.arange(0, BV)
    p_state, m_state = state_tile(o_k, o_v, K, V)  # [BK, BV] inside one [K, V] state
    state = load_state(h0 + i_nh * K * V, p_state, m_state, HAS_H0, BK, BV)

    for start in range(0, seq_len, BT):
        b_k, b_v, b_beta, p_tk, m_tk, p_tv, m_tv, n, rows = _chunk(k, v, beta, bos, start, seq_len, i_h, o_t,
                                                                    o_k, o_v, H, K, V, BT)
        if STORE_STATES:  # the state entering this chunk, for the backward: [N, max_chunks, H, K, V]
            i_c = start // BT
            tl.store(states + ((i_n * max_chunks + i_c) * H + i_h).to(tl.int64) * K * V + p_state, state,
                     mask=m_state)
        m, _ = _chunk_wy(b_k, b_beta, o_t, n)
        w = tl.dot(m.to(dt), (b_k * b_beta[:, None]).to(dt))  # [BT, BK]
        u = tl.dot(m.to(dt), (b_v * b_beta[:, None]).to(dt)) - tl.dot(w.to(dt), state.to(dt))  # [BT, BV]
        if STORE_O:
            b_q = tl.load(q + p_tk, mask=m_tk, other=0.0)
            qk = tl.where(o_t[:, None] >= o_t[None, :], tl.dot(b_q, tl.trans(b_k)), 0.0)
            b_o = tl.dot(b_q, state.to(dt)) + tl.dot(qk.to(dt), u.to(dt))
            tl.store(o + p_tv, (b_o * scale).to(o.dtype.element_ty), mask=m_tv)
        state += tl.dot(tl.trans(b_k), u.to(dt))

    if STORE_HT:
        tl.store(ht + i_nh * K * V + p_state, state, mask=m_state)


@autotune(_CONFIGS, key=["K", "V", "BT"], reset_to_zero=["dq", "dk", "dbeta"])
@triton.jit
def _bwd_kernel(q, k, v, beta, do, dht, states, dq, dk, dv, dbeta, dh0, offsets, scale, max_chunks, T_total,
                H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
                BV: tl.constexpr, HAS_DHT: tl.constexpr, STORE_DH0: tl.constexpr):
    i_v, i_nh = tl.program_id(0), tl.program_id(1)
    i_n, i_h = i_nh // H, i_nh % H
    bos, seq_len = sequence_bounds(offsets, i_n)
    n_chunks = tl.cdiv(seq_len, BT)
    dt = q.dtype.element_ty
    o_t, o_k, o_v = tl.arange(0, BT), tl.arange(0, BK), i_v * BV + tl.arange(0, BV)
    p_state, m_state = state_tile(o_k, o_v, K, V)
    causal = o_t[:, None] >= o_t[None, :]
    partial_k = i_v.to(tl.int64) * T_total * H * K  # this value block's slice of the dq/dk partials
    partial_b = i_v.to(tl.int64) * T_total * H  # ... and of the dbeta partials

    d_state = load_state(dht + i_nh * K * V, p_state, m_state, HAS_DHT, BK, BV)  # dL/d(state after the chunk)
    for j_c in range(0, n_chunks):
        i_c = n_chunks - 1 - j_c
        start = i_c * BT
        b_k, b_v, b_beta, p_tk, m_tk, p_tv, m_tv, n, rows = _chunk(k, v, beta, bos, start, seq_len, i_h, o_t,
                                                                    o_k, o_v, H, K, V, BT)
        b_q = tl.load(q + p_tk, mask=m_tk, other=0.0)
        b_do = (tl.load(do + p_tv, mask=m_tv, other=0.0) * scale).to(dt)
        state = tl.load(states + ((i_n * max_chunks + i_c) * H + i_h).to(tl.int64) * K * V + p_state,
                        mask=m_state, other=0.0)  # [BK, BV] entering this chunk

        # recompute the chunk's forward quantities
        m, kk = _chunk_wy(b_k, b_beta, o_t, n)
        k_beta = (b_k * b_beta[:, None]).to(dt)
        v_beta = (b_v * b_beta[:, None]).to(dt)
        w = tl.dot(m.to(dt), k_beta)  # [BT, BK]
        u = tl.dot(m.to(dt), v_beta) - tl.dot(w.to(dt), state.to(dt))  # [BT, BV]
        qk = tl.where(causal, tl.dot(b_q, tl.trans(b_k)), 0.0)  # [BT, BT]

        # O = scale (Q S + tril(Q K^T) U);  S_next = S + K^T U;  U = U' - W S
        d_u = tl.dot(tl.trans(qk.to(dt)), b_do) + tl.dot(b_k, d_state.to(dt))  # [BT, BV]
        d_ou = tl.where(causal, tl.dot(b_do, tl.trans(u.to(dt))), 0.0)  # [BT, BT] dL/d(tril(Q K^T))
        b_dq = tl.dot(b_do, tl.trans(state.to(dt))) + tl.dot(d_ou.to(dt), b_k)  # [BT, BK]
        b_dk = tl.dot(tl.trans(d_ou.to(dt)), b_q) + tl.dot(u.to(dt), tl.trans(d_state.to(dt)))
        d_w = -tl.dot(d_u.to(dt), tl.trans(state.to(dt)))  # [BT, BK]
        # W = M (beta K), U' = M (beta V)
        d_m = tl.dot(d_w.to(dt), tl.trans(k_beta)) + tl.dot(d_u.to(dt), tl.trans(v_beta))  # [BT, BT]
        d_kbeta = tl.dot(tl.trans(m.to(dt)), d_w.to(dt))  # [BT, BK]
        d_vbeta = tl.dot(tl.trans(m.to(dt)), d_u.to(dt))  # [BT, BV]
        # M = (I + A)^{-1}:  dA = -M^T dM M^T on the strict lower triangle;  A = tril(diag(beta) K K^T, -1)
        d_a = -tl.dot(tl.dot(tl.trans(m.to(dt)), d_m.to(dt)).to(dt), tl.trans(m.to(dt)))
        d_a = tl.where(o_t[:, None] > o_t[None, :], d_a, 0.0)
        b_dk += tl.dot((d_a * b_beta[:, None]).to(dt), b_k) + tl.dot(tl.trans(d_a.to(dt)), k_beta)
        b_dk += d_kbeta * b_beta[:, None]
        b_dbeta = tl.sum(d_a * kk, axis=1) + tl.sum(d_kbeta * b_k.to(tl.float32), axis=1)
        b_dbeta += tl.sum(d_vbeta * b_v.to(tl.float32), axis=1)

        tl.store(dq + partial_k + p_tk, b_dq, mask=m_tk)
        tl.store(dk + partial_k + p_tk, b_dk, mask=m_tk)
        tl.store(dv + p_tv, (d_vbeta * b_beta[:, None]).to(dv.dtype.element_ty), mask=m_tv)
        tl.store(dbeta + partial_b + rows * H + i_h, b_dbeta, mask=o_t < n)
        d_state += tl.dot(tl.trans(b_q), b_do) - tl.dot(tl.trans(w.to(dt)), d_u.to(dt))

    if STORE_DH0:
        tl.store(dh0 + i_nh * K * V + p_state, d_state, mask=m_state)


def _run_forward(q, k, v, beta, initial_state, offsets, n_seq, scale, chunk_size, *, store_o, store_final,
                 states=None, max_chunks=0):
    b, t, h, dk = q.shape
    dv = v.shape[-1]
    o = new_output((b, t, h, dv), device=q.device, dtype=q.dtype) if store_o else None
    final = new_state(q, v, n_seq) if store_final else None
    _fwd_kernel[value_grid(dv, n_seq * h)](
        q, k, v, beta, initial_state if initial_state is not None else q, o if o is not None else q,
        final if final is not None else q, states if states is not None else q, offsets, scale, max_chunks,
        H=h, K=dk, V=dv, BT=chunk_size, BK=block_size(dk), HAS_H0=initial_state is not None,
        STORE_O=store_o, STORE_HT=store_final, STORE_STATES=states is not None)
    return o, final


class DeltaRuleFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, beta, initial_state, offsets, n_seq, scale, chunk_size, output_final_state):
        o, final = _run_forward(q, k, v, beta, initial_state, offsets, n_seq, scale, chunk_size, store_o=True,
                                store_final=output_final_state)
        ctx.save_for_backward(q, k, v, beta, initial_state, offsets)
        ctx.n_seq, ctx.scale, ctx.chunk_size = n_seq, scale, chunk_size
        return o, final

    @staticmethod
    def backward(ctx, do, d_final):
        q, k, v, beta, initial_state, offsets = ctx.saved_tensors
        b, t, h, dk = q.shape
        dv = v.shape[-1]
        bt = ctx.chunk_size
        max_chunks = max(int(triton.cdiv(int(offsets.diff().max()), bt)), 1)
        # the state entering every chunk: [N, max_chunks, H, K, V] (written by the re-run walk)
        states = torch.zeros((ctx.n_seq, max_chunks, h, dk, dv), device=q.device, dtype=torch.float32)
        _run_forward(q, k, v, beta, initial_state, offsets, ctx.n_seq, ctx.scale, bt, store_o=False,
                     store_final=False, states=states, max_chunks=max_chunks)
        d_final = contiguous(d_final)
        dq, dk_ = (value_block_partials(_CONFIGS, dv, b, t, h, dk, device=q.device) for _ in range(2))
        dbeta = value_block_partials(_CONFIGS, dv, b, t, h, device=q.device)
        dv_, dh0 = new_outputs(q, v, ctx.n_seq, with_state=True)
        _bwd_kernel[value_grid(dv, ctx.n_seq * h)](
            q, k, v, beta, do.contiguous(), d_final if d_final is not None else q, states, dq, dk_, dv_, dbeta,
            dh0, offsets, ctx.scale, max_chunks, b * t, H=h, K=dk, V=dv, BT=bt, BK=block_size(dk),
            HAS_DHT=d_final is not None, STORE_DH0=True)
        return (dq.sum(0).to(q.dtype), dk_.sum(0).to(k.dtype), dv_, dbeta.sum(0).to(beta.dtype),
                dh0.to(initial_state.dtype) if initial_state is not None else None, None, None, None, None, None)


def delta_rule_triton(x: Recurrence, beta: Tensor) -> tuple[Tensor, Tensor | None]:
    """The Triton form of :func:`seqmix.kernels.delta_rule.chunk_delta_rule` (the same arguments and
    results): fp32/bf16/fp16 on CUDA, or on the CPU under ``TRITON_INTERPRET=1``; the chunk size and
    head dims of ``limits.py``; the final state is fp32."""
    q, k, v, offsets, n_seq = prepare("delta_rule_triton", DELTA_RULE, x, beta)
    return DeltaRuleFunction.apply(q, k, v, beta.contiguous(), x.initial_state, offsets, n_seq, x.scale,
                                   x.chunk_size, x.output_final_state)
