"""Chunk-parallel linear attention with a fixed per-head decay (Lightning Attention-2 /
RetNet's chunkwise form), in PyTorch: the fast path on the CPU.

The sequence is cut into N chunks of C tokens. With ``gamma = exp(decay)``, position i of
a chunk (0-based) and the state ``S_n`` entering chunk n:

    o_i     = scale * ( gamma^(i+1) q_i S_n  +  sum_{j <= i} gamma^(i-j) (q_i . k_j) v_j )
    S_{n+1} = gamma^C S_n + sum_j gamma^(C-1-j) k_j^T v_j

The intra-chunk part (masked, decayed ``q k^T``) is one batched matmul over all chunks;
only the state recurrence is a loop over the chunks (unbound, never sliced), a few
``[B, H, K, V]`` additions. Every exponent is <= 0, so strong decays underflow to 0
instead of overflowing. A last, shorter chunk is zero-padded; its state update uses its
true length.

The forward and its backward are one autograd Function (:class:`_ChunkLinearAttn`): the
backward is written out in the same batched shape (one reverse loop for the state
gradient), so autograd records neither the chunk loop nor the layout copies. The decay
enters as four small factor tensors (mask, query, key and chunk factors) computed outside
by autograd from ``decay``, so a learned decay gets its gradient through them.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from seqmix.kernels.common import Recurrence, bmm, compute_dtype, from_chunks, to_chunks
from seqmix.kernels.linear_attn.naive import check_global_inputs
from seqmix.kernels.threads import single_threaded


def scan_chunks(decays: Tensor | None, updates: Tensor, s0: Tensor, *,
                reverse: bool = False) -> tuple[Tensor, Tensor]:
    """The inter-chunk recurrence ``S_{n+1} = decays[n] * S_n + updates[n]``.

    ``updates: [B, H, N, K, V]``, ``decays``: broadcastable to it (or None = 1), ``s0: [B, H, K, V]``.
    Returns the states entering each chunk ``[B, H, N, K, V]`` and the final state.
    ``reverse=True`` runs from the last chunk to the first (a state gradient flowing back):
    then entry n is the state before chunk n is added, i.e. the one that left chunk n + 1.
    """
    entering, s = [], s0
    per_chunk = [None] * updates.shape[2] if decays is None else decays.unbind(2)
    pairs = list(zip(per_chunk, updates.unbind(2)))
    with single_threaded():  # [B, H, K, V] additions: too small to share out
        for decay, update in reversed(pairs) if reverse else pairs:
            entering.append(s)
            s = update + (s if decay is None else decay * s)
    return torch.stack(entering[::-1] if reverse else entering, 2), s


class _ChunkLinearAttn(torch.autograd.Function):
    """The chunked forward above and its backward, for chunks ``[B, H, N, C, K]``.

    With ``A = (Q K^T) * M`` (M: the causal mask, decayed), ``Qd = Q * q_decay``,
    ``Kd = K * k_decay``, ``U_n = Kd_n^T V_n`` and ``O_n = scale (A V + Qd S_n)``, the
    backward (``dO`` scaled by ``scale``) is::

        R_n  = dS_{n+1} = chunk_decay[n+1] R_{n+1} + Qd_{n+1}^T dO_{n+1}   (R_{N-1}: final's gradient)
        dA   = (dO V^T) * M
        dQ   = dA K + (dO S_n^T) * q_decay
        dK   = dA^T Q + (V R_n^T) * k_decay
        dV   = A^T dO + Kd R_n

    and the decay factors' gradients are the matching sums of products (only when asked).
    """

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, s0: Tensor, mask: Tensor | None, q_decay: Tensor | None,
                k_decay: Tensor | None, chunk_decay: Tensor | None, scale: float, chunk: int
                ) -> tuple[Tensor, Tensor]:
        t = q.shape[1]
        qc, kc, vc = (to_chunks(x, chunk, s0.dtype) for x in (q, k, v))  # [B, H, N, C, K|V]
        scores = bmm(qc, kc.transpose(-1, -2))  # [B, H, N, C, C]
        if mask is None:  # no decay: the causal mask, in place (scores then saves A itself)
            a = scores.tril_()
        else:  # decay: scores stays raw, for the mask's gradient
            a = scores * mask  # [B, H, N, C, C]
        kd = kc if k_decay is None else kc * k_decay  # [B, H, N, C, K]
        states, final = scan_chunks(chunk_decay, bmm(kd.transpose(-1, -2), vc), s0)  # [B, H, N, K, V]
        qd = qc if q_decay is None else qc * q_decay  # [B, H, N, C, K]
        o = bmm(qd, states, add_to=bmm(a, vc), alpha=scale, beta=scale)  # [B, H, N, C, V]
        ctx.save_for_backward(qc, kc, vc, scores, states, mask, q_decay, k_decay, chunk_decay)
        ctx.scale, ctx.t = scale, t
        return from_chunks(o, t), final

    @staticmethod
    @once_differentiable
    def backward(ctx, d_o: Tensor, d_final: Tensor | None):
        qc, kc, vc, scores, states, mask, q_decay, k_decay, chunk_decay = ctx.saved_tensors
        t, chunk = ctx.t, qc.shape[-2]
        do = to_chunks(d_o, chunk, qc.dtype).mul_(ctx.scale)  # [B, H, N, C, V]
        a = scores if mask is None else scores * mask  # [B, H, N, C, C]
        qd = qc if q_decay is None else qc * q_decay
        kd = kc if k_decay is None else kc * k_decay
        d_final = torch.zeros_like(states[:, :, 0]) if d_final is None else d_final.to(states.dtype)
        r, d_s0 = scan_chunks(chunk_decay, bmm(qd.transpose(-1, -2), do), d_final, reverse=True)  # [B, H, N, K, V]

        d_scores = bmm(do, vc.transpose(-1, -2))  # [B, H, N, C, C]
        grads = dict.fromkeys(("mask", "q_decay", "k_decay", "chunk_decay"))
        if mask is None:
            da = d_scores.tril_()
        else:
            if ctx.needs_input_grad[4]:
                grads["mask"] = (d_scores * scores).sum_to_size(mask.shape)
            da = d_scores.mul_(mask)
        do_s = bmm(do, states.transpose(-1, -2))  # [B, H, N, C, K]
        if q_decay is None:
            dq = bmm(da, kc, add_to=do_s)
        else:
            if ctx.needs_input_grad[5]:
                grads["q_decay"] = (do_s * qc).sum_to_size(q_decay.shape)
            dq = bmm(da, kc, add_to=do_s.mul_(q_decay))
        v_r = bmm(vc, r.transpose(-1, -2))  # [B, H, N, C, K]
        if k_decay is None:
            dk = bmm(da.transpose(-1, -2), qc, add_to=v_r)
        else:
            if ctx.needs_input_grad[6]:
                grads["k_decay"] = (v_r * kc).sum_to_size(k_decay.shape)
            dk = bmm(da.transpose(-1, -2), qc, add_to=v_r.mul_(k_decay))
        dv = bmm(a.transpose(-1, -2), do, add_to=bmm(kd, r))  # [B, H, N, C, V]
        if chunk_decay is not None and ctx.needs_input_grad[7]:
            grads["chunk_decay"] = (r * states).sum_to_size(chunk_decay.shape)
        return (from_chunks(dq, t), from_chunks(dk, t), from_chunks(dv, t), d_s0, grads["mask"],
                grads["q_decay"], grads["k_decay"], grads["chunk_decay"], None, None)


def decay_factors(log_gamma: Tensor, chunk: int, t: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The decay as factors of the chunked form, from ``log_gamma: [H]`` (autograd reaches it through them).

    Returns the decayed causal mask ``gamma^(i-j) [j <= i]: [H, 1, C, C]``, the query factors
    ``gamma^(i+1): [H, 1, C, 1]``, the key factors ``gamma^(L_n-1-j): [H, N, C, 1]`` (``L_n``: the
    true length of chunk n, so a shorter last chunk decays to its own end; padded keys are
    zero) and the chunk factors ``gamma^(L_n): [1, H, N, 1, 1]``.
    """
    n = -(-t // chunk)
    lg = log_gamma[:, None, None]  # [H, 1, 1]
    i = torch.arange(chunk, device=log_gamma.device)
    causal = i[:, None] >= i[None, :]  # [C, C] key j <= query i
    distance = (i[:, None] - i[None, :]).clamp(min=0).to(log_gamma.dtype)  # [C, C]
    mask = torch.where(causal, torch.exp(lg * distance), 0.0)[:, None]  # [H, 1, C, C]
    q_decay = torch.exp(log_gamma[:, None] * (i + 1).to(log_gamma.dtype))[:, None, :, None]  # [H, 1, C, 1]
    length = torch.full((n,), chunk, device=log_gamma.device, dtype=log_gamma.dtype)
    length[-1] = t - (n - 1) * chunk
    to_end = (length[:, None] - 1 - i.to(log_gamma.dtype)).clamp(min=0)  # [N, C]
    k_decay = torch.exp(lg * to_end)[..., None]  # [H, N, C, 1]
    chunk_decay = torch.exp(log_gamma[:, None] * length)[None, ..., None, None]  # [1, H, N, 1, 1]
    return mask, q_decay, k_decay, chunk_decay


def linear_attn_chunk(x: Recurrence, decay: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """The chunked form above; the arguments and results of :func:`seqmix.kernels.linear_attn.linear_attn`."""
    log_gamma = None if decay is None else decay.to(compute_dtype(x.q))

    def run(q: Tensor, k: Tensor, v: Tensor, s0: Tensor) -> tuple[Tensor, Tensor]:
        t = q.shape[1]
        c = min(x.chunk_size, t)
        factors = (None,) * 4 if log_gamma is None else decay_factors(log_gamma, c, t)
        return _ChunkLinearAttn.apply(q, k, v, s0, *factors, x.scale, c)

    return x.per_sequence(run)


def linear_attn_global_chunk(q: Tensor, k: Tensor, v: Tensor, *, scale: float | None = None) -> Tensor:
    """Non-causal linear attention in linear time, ``scale * q (k^T v)``; shapes as
    :func:`seqmix.kernels.linear_attn.naive.linear_attn_global_naive`."""
    check_global_inputs("linear_attn_global_chunk", q, k, v)
    dtype = compute_dtype(q)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    kv = torch.einsum("bshk,bshv->bhkv", k.to(dtype), v.to(dtype))  # [B, H, K, V]
    return (torch.einsum("bthk,bhkv->bthv", q.to(dtype), kv) * scale).to(q.dtype)
