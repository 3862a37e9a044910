"""Titans' neural memory (Behrouz, Zhong, Mirrokni 2024), token by token: the reference.

Per head, the memory is an MLP ``M`` with weights ``W_1 .. W_L`` (``[in, out]`` each; SiLU between
layers, none after the last), trained at test time on the associative loss of each token:

    l(M; k_t, v_t) = || M(k_t) - v_t ||^2                                      (eq. 12)
    S_t = eta_t S_{t-1} - theta_t grad l(M_base; k_t, v_t)                      (eq. 10, momentary + past surprise)
    M_t = (1 - alpha_t) M_{t-1} + S_t                                           (eq. 13, forgetting)
    y_t = M_t(q_t)                                                              (eq. 15, after token t's update)

``M_base`` is the memory at the start of the token's chunk (chunks of ``chunk_size`` tokens,
aligned to the absolute position): the paper's chunk-parallel approximation (section 3.2), in
which every gradient of a chunk is taken w.r.t. the memory at the chunk start. With
``chunk_size=1`` that is the exact per-token gradient descent, ``M_base = M_{t-1}``. This loop
takes each gradient with ``torch.autograd.grad`` (``create_graph=True`` when autograd is on, so
an outer loss backpropagates through the inner updates); the chunked form
(:mod:`seqmix.kernels.titans.chunk`) writes the same gradients in closed form.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from seqmix.kernels.common import compute_dtype


class MemoryState(NamedTuple):
    """The memory carried between pieces: a constant size (three copies of the MLP's weights)."""

    weights: tuple[Tensor, ...]  # M_t, one [B, H, in, out] per layer
    momentum: tuple[Tensor, ...]  # S_t, shaped like weights
    base: tuple[Tensor, ...]  # the memory at the current chunk's start, where the gradients are taken
    position: int  # tokens seen so far; chunks start at multiples of chunk_size


def memory_apply(weights: tuple[Tensor, ...], x: Tensor) -> Tensor:
    """The MLP ``x: [B, H, L, in] -> [B, H, L, out]`` with per-sequence weights ``[B, H, in, out]``."""
    for i, w in enumerate(weights):
        x = x @ w  # [B, H, L, out]
        if i < len(weights) - 1:
            x = F.silu(x)
    return x


def titans_naive(q: Tensor, k: Tensor, v: Tensor, log_eta: Tensor, theta: Tensor, log_keep: Tensor,
                 state: MemoryState, chunk_size: int) -> tuple[Tensor, MemoryState]:
    """The recurrence above one token at a time in fp32 (fp64 for fp64 inputs); the arguments and
    results of :func:`seqmix.kernels.titans.titans_memory`."""
    dtype = compute_dtype(q)
    q, k, v = (t.to(dtype).transpose(1, 2) for t in (q, k, v))  # [B, T, H, K] -> [B, H, T, K]
    eta, theta, keep = (t.to(dtype).transpose(1, 2)[..., None, None] for t in (log_eta.exp(), theta, log_keep.exp()))
    outer_grad = torch.is_grad_enabled()  # build the graph of the inner gradients only when an outer loss may need it
    weights, momentum, base, position = state
    weights, momentum, base = (tuple(w.to(dtype) for w in ws) for ws in (weights, momentum, base))
    outputs = []
    with torch.enable_grad():
        for t in range(q.shape[2]):
            if (position + t) % chunk_size == 0:
                base = weights  # a new chunk: its gradients are taken at the memory it starts from
            at = tuple(w.clone() if outer_grad and w.requires_grad else w.detach().requires_grad_() for w in base)
            # a copy: the partial derivative in the weights, also when k, v depend on them (MAC's keys come from
            # attention over tokens read from the memory); the outer gradient passes through the copy
            loss = (memory_apply(at, k[:, :, t : t + 1]) - v[:, :, t : t + 1]).square().sum()
            grads = torch.autograd.grad(loss, at, create_graph=outer_grad)
            momentum = tuple(eta[:, :, t] * s - theta[:, :, t] * g for s, g in zip(momentum, grads))
            weights = tuple(keep[:, :, t] * w + s for w, s in zip(weights, momentum))
            outputs.append(memory_apply(weights, q[:, :, t : t + 1]))  # [B, H, 1, V]
    o = torch.cat(outputs, 2).transpose(1, 2)  # [B, H, T, V] -> [B, T, H, V]
    return o, MemoryState(weights, momentum, base, position + q.shape[2])
