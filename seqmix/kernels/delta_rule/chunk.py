"""The delta rule in chunks: the WY/UT form of Yang et al. 2024.

"Parallelizing Linear Transformers with the Delta Rule over Sequence Length" (NeurIPS 2024).
Within a chunk of ``C`` tokens starting from state ``S``, write the update of token ``t``
as ``u_t = beta_t (v_t - k_t S_{t-1})`` so that ``S_t = S + sum_{i<=t} k_i^T u_i``. Then

    u_t = beta_t (v_t - k_t S - sum_{i<t} (k_t . k_i) u_i)
    =>  (I + tril(diag(beta) K K^T, -1)) U = diag(beta) (V - K S)
    =>  U = T V - T K S = U' - W S,   T = (I + tril(diag(beta) K K^T, -1))^{-1} diag(beta)

``W = T K`` and ``U' = T V`` (the UT transform) depend only on the chunk, so they are
computed for all chunks at once: one batched unit-lower-triangular solve
(``torch.linalg.solve_triangular`` against the identity) gives the inverse, two matmuls W and U'. What is
left sequential is the state, chunk by chunk::

    U_n = U'_n - W_n S_n          (the chunk's true updates)
    S_{n+1} = S_n + K_n^T U_n
    O_n = scale * (Q_n S_n + tril(Q_n K_n^T) U_n)     (batched over chunks after the loop)

The loop goes over ``unbind`` views of the chunks (never ``x[:, i:i+C]`` in a loop, which
made the backward nearly quadratic here). The backward is written out by hand in the same
shape: one reverse loop over chunks for the state gradient, the rest batched.
"""

from __future__ import annotations


import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from seqmix.kernels.common import Recurrence, bmm, from_chunks, to_chunks
from seqmix.kernels.delta_rule.naive import run_delta_rule
from seqmix.kernels.threads import single_threaded


class _ChunkDeltaRule(torch.autograd.Function):
    """The WY/UT forward above, and its backward written out by hand.

    Autograd through the chunk loop works but records ~10 small ops per chunk; the hand
    backward runs one reverse loop of two matmuls per chunk and does everything else
    batched over chunks. With ``dO`` the output's gradient times ``scale`` (the scale is
    applied once, to the output and to its gradient) and ``dS`` the gradient of the state
    leaving a chunk::

        dU_n = tril(Q_n K_n^T)^T dO_n + K_n dS_{n+1}
        dS_n = dS_{n+1} + Q_n^T dO_n - W_n^T dU_n

    then, batched: ``dQ = dO S_n^T + tril(dO U^T) K``, ``dK = tril(dO U^T)^T Q + U dS_{n+1}^T``,
    ``dW = -dU S_n^T``, ``dU' = dU``, and through ``[W U'] = L^{-1} diag(beta) [K V]`` (with the
    inverse ``L^{-1}`` kept from the forward, so the backward needs no solve):
    ``d(beta v) = L^{-T} dU``, ``d(beta k) = L^{-T} dW = -d(beta v) S_n^T`` and
    ``dL = -tril(d(beta k) W^T + d(beta v) U'^T, -1) = -tril(d(beta v) U_n^T, -1)``.
    """

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, beta: Tensor, h: Tensor, scale: float,
                chunk_size: int) -> tuple[Tensor, Tensor]:
        t = q.shape[1]
        qc, kc, vc = (to_chunks(x, chunk_size, q.dtype) for x in (q, k, v))  # [B, H, N, C, K|V]
        bc = to_chunks(beta[..., None], chunk_size, q.dtype)  # [B, H, N, C, 1]; padding has beta = 0: no write
        bk = bc * kc  # [B, H, N, C, K]
        # The UT transform of every chunk at once: T = (I + tril(diag(beta) K K^T, -1))^{-1} diag(beta),
        # from one batched unit-lower-triangular solve for the inverse; W = T K, U' = T V.
        lower = (bk @ kc.transpose(-1, -2)).tril_(-1)  # [B, H, N, C, C], unit diagonal implied
        eye = torch.eye(chunk_size, dtype=q.dtype, device=q.device).expand_as(lower)
        with single_threaded():  # LAPACK solves one small matrix at a time: threads would meet after each
            inverse = torch.linalg.solve_triangular(lower, eye, upper=False, unitriangular=True)  # [B, H, N, C, C]
        w, u_prime = inverse @ bk, inverse @ (bc * vc)  # [B, H, N, C, K], [B, H, N, C, V]

        # The state loop writes in place: U' becomes U chunk by chunk, S_n goes to its slot of s.
        u = u_prime  # [B, H, N, C, V]
        s = h.new_empty(*h.shape[:2], u.shape[2], *h.shape[2:])  # [B, H, N, K, V]
        h = h.clone()  # [B, H, K, V], updated in place
        with single_threaded():
            for w_n, u_n, k_n, s_n in zip(w.unbind(2), u.unbind(2), kc.unbind(2), s.unbind(2)):
                s_n.copy_(h)  # the state entering the chunk
                bmm(w_n, h, add_to=u_n, alpha=-1.0)  # [B, H, C, V], the chunk's true updates U'_n - W_n S_n
                bmm(k_n.transpose(-1, -2), u_n, add_to=h)  # [B, H, K, V]
        qk = (qc @ kc.transpose(-1, -2)).tril_()  # [B, H, N, C, C]
        o = bmm(qk, u, add_to=qc @ s, alpha=scale, beta=scale)  # [B, H, N, C, V]
        ctx.save_for_backward(qc, kc, vc, bc, inverse, w, s, u, qk)
        ctx.scale, ctx.t = scale, t
        return from_chunks(o, t), h

    @staticmethod
    @once_differentiable
    def backward(ctx, d_o: Tensor, d_h: Tensor | None):
        qc, kc, vc, bc, inverse, w, s, u, qk = ctx.saved_tensors
        chunk_size = kc.shape[-2]
        do = to_chunks(d_o, chunk_size, qc.dtype).mul_(ctx.scale)  # [B, H, N, C, V], scale * dO
        dh = torch.zeros_like(s[:, :, 0]) if d_h is None else d_h.to(s.dtype, copy=True)  # [B, H, K, V], in place
        du_local = qk.transpose(-1, -2) @ do  # [B, H, N, C, V]
        qdo = qc.transpose(-1, -2) @ do  # [B, H, N, K, V]

        # In place as in the forward: the local part of dU becomes dU, dS_{n+1} goes to its slot.
        du = du_local  # [B, H, N, C, V]
        ds_next = torch.empty_like(s)  # [B, H, N, K, V]
        with single_threaded():
            for du_n, qdo_n, w_n, k_n, ds_n in zip(*(reversed(x.unbind(2)) for x in (du, qdo, w, kc, ds_next))):
                ds_n.copy_(dh)  # dS_{n+1}
                bmm(k_n, dh, add_to=du_n)  # [B, H, C, V]
                bmm(w_n.transpose(-1, -2), du_n, add_to=dh.add_(qdo_n), alpha=-1.0)  # dS_n

        dqk = (do @ u.transpose(-1, -2)).tril_()  # [B, H, N, C, C]
        dq = bmm(dqk, kc, add_to=do @ s.transpose(-1, -2))  # [B, H, N, C, K]
        dkc = bmm(u, ds_next.transpose(-1, -2), add_to=dqk.transpose(-1, -2) @ qc)  # [B, H, N, C, K]
        # Through W = L^{-1} (beta k) and U' = L^{-1} (beta v), with dW = -dU S^T and dU' = dU:
        dbv = inverse.transpose(-1, -2) @ du  # gradient of beta * v, [B, H, N, C, V]
        neg_dbk = dbv @ s.transpose(-1, -2)  # -(gradient of beta * k) = -L^{-T} dW, [B, H, N, C, K]
        neg_dlower = (dbv @ u.transpose(-1, -2)).tril_(-1)  # -dL = tril(dbk W^T + dbv U'^T) = tril(dbv U^T)
        bmm(neg_dlower, kc, add_to=neg_dbk)  # through L = I + tril(beta k k^T, -1)
        bmm(neg_dlower.transpose(-1, -2), bc * kc, add_to=dkc.addcmul_(bc, neg_dbk, value=-1.0), alpha=-1.0)
        dvc = bc * dbv
        dbc = (dbv * vc).sum(-1, keepdim=True) - (neg_dbk * kc).sum(-1, keepdim=True)  # [B, H, N, C, 1]
        t = ctx.t
        return (from_chunks(dq, t), from_chunks(dkc, t), from_chunks(dvc, t),
                from_chunks(dbc, t)[..., 0], dh, None, None)


def delta_rule_chunk(x: Recurrence, beta: Tensor) -> tuple[Tensor, Tensor | None]:
    """The chunkwise-parallel delta rule (any chunk size; the last chunk is zero-padded); the
    arguments and results of :func:`seqmix.kernels.delta_rule.chunk_delta_rule`."""

    def kernel(q: Tensor, k: Tensor, v: Tensor, beta: Tensor, scale: float, h0: Tensor) -> tuple[Tensor, Tensor]:
        return _ChunkDeltaRule.apply(q, k, v, beta, h0, scale, x.chunk_size)

    return run_delta_rule(kernel, x, beta)
