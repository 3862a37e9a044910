"""Titans' neural long-term memory (Behrouz, Zhong, Mirrokni 2024, "Titans: Learning to Memorize at
Test Time"): a per-head MLP memory trained at test time by gradient descent with momentum and
weight decay on ``||M(k_t) - v_t||^2``, chunk-parallel as in the paper's section 3.2.

:func:`titans_memory` is the public op; ``naive`` is the token-by-token loop that takes each gradient
with ``torch.autograd.grad`` (the reference), ``chunk`` the chunk-parallel form with the gradients in
closed form. Both use the same chunk approximation (gradients at the chunk's starting memory); with
``chunk_size=1`` it is exact per-token gradient descent.
"""

from __future__ import annotations

from torch import Tensor

from seqmix.kernels.titans.chunk import titans_chunk
from seqmix.kernels.titans.limits import TITANS
from seqmix.kernels.titans.naive import MemoryState, memory_apply, titans_naive

__all__ = ["TITANS", "MemoryState", "memory_apply", "titans_chunk", "titans_memory", "titans_naive"]


def titans_memory(q: Tensor, k: Tensor, v: Tensor, log_eta: Tensor, theta: Tensor, log_keep: Tensor,
                  state: MemoryState, *, chunk_size: int = 16, impl: str = "auto") -> tuple[Tensor, MemoryState]:
    """Retrieve ``y_t = M_t(q_t)`` while the memory learns ``k_t -> v_t``.

    ``q, k: [B, T, H, K]``, ``v: [B, T, H, V]``; per token and head ``log_eta: [B, T, H]`` (log of the
    momentum factor eta, <= 0), ``theta: [B, T, H]`` (the inner learning rate, >= 0), ``log_keep:
    [B, T, H]`` (log of 1 - alpha, the forgetting gate, <= 0); ``state``: the :class:`MemoryState`
    to start from (weights ``[B, H, in, out]`` per layer, the first ``in`` = K, the last ``out`` = V).
    Returns ``(o: [B, T, H, V], final state)``, in fp32 (fp64 for fp64 inputs). ``impl``: ``"auto"``
    (the chunked form) | ``"naive"`` | ``"chunk"``.
    """
    b, t, h, dk = q.shape
    if k.shape != q.shape or v.shape[:3] != (b, t, h):
        raise ValueError(f"titans_memory: k must be shaped like q {tuple(q.shape)} and v [B, T, H, V], got "
                         f"k {tuple(k.shape)}, v {tuple(v.shape)}")
    for name, gate in (("log_eta", log_eta), ("theta", theta), ("log_keep", log_keep)):
        if gate.shape != (b, t, h):
            raise ValueError(f"titans_memory: {name} must be [B, T, H] = {(b, t, h)}, got {tuple(gate.shape)}")
    w = state.weights if isinstance(state, MemoryState) else ()
    if (not isinstance(w, tuple) or not w or w[0].shape[:3] != (b, h, dk) or w[-1].shape[-1] != v.shape[-1]
            or len(state.momentum) != len(w) or len(state.base) != len(w)):
        raise ValueError(f"titans_memory: state must hold per layer [B={b}, H={h}, in, out] weights, momentum and "
                         f"base, the first in = K = {dk}, the last out = V = {v.shape[-1]}; build it with the "
                         "mixer's init_state")
    form = {"naive": titans_naive, "chunk": titans_chunk}[TITANS.resolve("titans_memory", impl, q,
                                                                          chunk_size=chunk_size)]
    return form(q, k, v, log_eta, theta, log_keep, state, chunk_size)
