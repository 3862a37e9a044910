"""Titans' neural memory, chunk-parallel (the paper's section 3.2), with the gradients in closed form.

Inside a chunk every gradient is taken at the chunk's base memory ``G`` (see
:mod:`seqmix.kernels.titans.naive`), so for a token ``s`` of the chunk, with the forward pass at
its key ``x^1_s = k_s``, ``h^l_s = x^l_s G_l``, ``x^{l+1}_s = silu(h^l_s)`` and the output ``o_s``:

    delta^L_s = 2 (o_s - v_s) ,   delta^l_s = (delta^{l+1}_s G_{l+1}^T) * silu'(h^l_s)
    grad_{W_l} l_s = (x^l_s)^T delta^l_s                    (an outer product: rank one per token)

Unrolling ``S_t = eta_t S_{t-1} - theta_t u_t`` and ``M_t = (1 - alpha_t) M_{t-1} + S_t`` from the
chunk's entry state ``(M, S)``, with ``beta_t = prod_{r<=t} (1 - alpha_r)`` and ``P_t = prod_{r<=t} eta_r``:

    M_t = beta_t M + c_t S - sum_{s<=t} A_ts (x_s)^T delta_s ,   c_t = sum_{j<=t} (beta_t / beta_j) P_j
    A_ts = theta_s sum_{j=s..t} (beta_t / beta_j) (P_j / P_s)      i.e.  A = (D_alpha @ D_eta) * theta_s

where ``D[t, j]`` is the product of the gates over ``(j, t]`` (<= 1, from sums of log gates over
that range, never a ratio of products). The retrieval ``y_t = M_t(q_t)`` never builds ``M_t``:
layer by layer, ``z^{l+1}_t = beta_t z_t M_l + c_t z_t S_l - sum_s A_ts (z_t . x^l_s) delta^l_s``,
a causal linear-attention-like product. Chunks run one after another (each base is the previous
chunk's final memory); a piece that starts mid-chunk (``state.position``) first finishes that chunk.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from seqmix.kernels.common import compute_dtype
from seqmix.kernels.titans.naive import MemoryState


def segment_sums(g: Tensor) -> Tensor:
    """``g: [B, H, L]`` -> ``[B, H, L, L]``: entry ``[t, j]`` is ``sum_{r=j+1..t} g_r`` for ``j <= t``, else -inf."""
    length = g.shape[-1]
    ones = torch.ones(length, length, dtype=torch.bool, device=g.device)
    sums = g[..., :, None].expand(*g.shape, length).masked_fill(~ones.tril(-1), 0).cumsum(-2)  # [B, H, L(t), L(j)]
    return sums.masked_fill(~ones.tril(), float("-inf"))


def _silu_grad(h: Tensor) -> Tensor:
    s = torch.sigmoid(h)
    return s * (1 + h * (1 - s))


def _gate_terms(log_eta: Tensor, theta: Tensor, log_keep: Tensor) -> tuple[Tensor, ...]:
    """What a chunk needs from its gates alone, for chunks ``[B, H, N, C]`` at once: ``A [.., C(t), C(s)]``,
    ``beta, c [.., C, 1]``, ``P [.., C]`` and the momentum's coefficients ``theta_s P_t / P_s [.., C(t), C(s)]``."""
    decay_keep = segment_sums(log_keep).exp()  # [B, H, N, C(t), C(j)]: prod (1 - alpha) over (j, t]
    decay_eta = segment_sums(log_eta).exp()  # [B, H, N, C(j), C(s)]: prod eta over (s, j]
    a = (decay_keep @ decay_eta) * theta[..., None, :]  # [B, H, N, C(t), C(s)]
    p = log_eta.cumsum(-1).exp()  # [B, H, N, C]
    beta = log_keep.cumsum(-1).exp()[..., None]  # [B, H, N, C, 1]
    return a, beta, decay_keep @ p[..., None], p, decay_eta * theta[..., None, :]


def _chunk(q: Tensor, k: Tensor, v: Tensor, a: Tensor, beta: Tensor, c: Tensor, p: Tensor, m: Tensor,
           weights: tuple[Tensor, ...], momentum: tuple[Tensor, ...], base: tuple[Tensor, ...]
           ) -> tuple[Tensor, tuple[Tensor, ...], tuple[Tensor, ...]]:
    """One chunk (or the rest of one) of L tokens: ``q, k: [B, H, L, K]``, ``v: [B, H, L, V]`` and its
    :func:`_gate_terms` cut to L."""
    layers = len(base)
    inputs, pre = [k], []  # x^l_s and h^l_s at the keys, under the base memory
    for i, w in enumerate(base):
        h = inputs[-1] @ w  # [B, H, L, out]
        if i < layers - 1:
            pre.append(h)
            inputs.append(F.silu(h))
    deltas = [2 * (h - v)]  # delta^L: [B, H, L, V]
    for i in range(layers - 2, -1, -1):
        deltas.insert(0, (deltas[0] @ base[i + 1].transpose(-1, -2)) * _silu_grad(pre[i]))  # [B, H, L, hidden]
    z = q
    for i, (w, s, x, d) in enumerate(zip(weights, momentum, inputs, deltas)):
        z = beta * (z @ w) + c * (z @ s) - (a * (z @ x.transpose(-1, -2))) @ d  # [B, H, L, out]
        if i < layers - 1:
            z = F.silu(z)
    last_a, last_m = a[..., -1, :], m[..., -1, :]  # [B, H, L]: the chunk's end
    new_weights = tuple(beta[:, :, -1, :, None] * w + c[:, :, -1, :, None] * s
                        - torch.einsum("bhs,bhsi,bhso->bhio", last_a, x, d)
                        for w, s, x, d in zip(weights, momentum, inputs, deltas))
    new_momentum = tuple(p[..., -1, None, None] * s - torch.einsum("bhs,bhsi,bhso->bhio", last_m, x, d)
                         for s, x, d in zip(momentum, inputs, deltas))
    return z, new_weights, new_momentum


def titans_chunk(q: Tensor, k: Tensor, v: Tensor, log_eta: Tensor, theta: Tensor, log_keep: Tensor,
                 state: MemoryState, chunk_size: int) -> tuple[Tensor, MemoryState]:
    """The chunked form; the arguments and results of :func:`seqmix.kernels.titans.titans_memory`."""
    dtype = compute_dtype(q)
    q, k, v, *gates = (t.to(dtype).transpose(1, 2) for t in (q, k, v, log_eta, theta, log_keep))
    # [B, T, H, K] -> [B, H, T, K]; gates [B, T, H] -> [B, H, T]
    weights, momentum, base, position = state
    weights, momentum, base = (tuple(w.to(dtype) for w in ws) for ws in (weights, momentum, base))
    b, h, length = gates[0].shape
    lead = min(length, -position % chunk_size)  # the rest of a chunk that an earlier piece began
    n = -(-(length - lead) // chunk_size)
    body = (F.pad(g[..., lead:], (0, n * chunk_size - length + lead)).view(b, h, n, chunk_size) for g in gates)
    # [B, H, T - lead] -> [B, H, N, C], zero-padded: padded gates are exp(0) = 1 and theta 0, never read
    terms = list(zip(*(t.unbind(2) for t in _gate_terms(*body))))  # per chunk (unbind, not slices: a slice's
    # backward writes into a zero tensor of the whole, once per chunk)
    if lead:
        terms.insert(0, tuple(t[:, :, 0] for t in _gate_terms(*(g[..., None, :lead] for g in gates))))
    pieces = zip(*(([t[:, :, :lead]] if lead else []) + list(t[:, :, lead:].split(chunk_size, 2)) for t in (q, k, v)))
    outputs, start = [], 0
    for (q_n, k_n, v_n), (a, beta, c, p, m) in zip(pieces, terms):
        if (position + start) % chunk_size == 0:
            base = weights  # a new chunk: its gradients are taken at the memory it starts from
        cut = q_n.shape[2]
        o, weights, momentum = _chunk(q_n, k_n, v_n, a[..., :cut, :cut], beta[..., :cut, :], c[..., :cut, :],
                                      p[..., :cut], m[..., :cut, :cut], weights, momentum, base)
        outputs.append(o)
        start += cut
    o = torch.cat(outputs, 2).transpose(1, 2)  # [B, H, T, V] -> [B, T, H, V]
    return o, MemoryState(weights, momentum, base, position + length)
