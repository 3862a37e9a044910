"""Sliding-window softmax attention: each query sees only the keys within ``window`` of it.

``sliding_window_attention`` is the public entry point; ``impl`` picks the form:

- ``"naive"``: the quadratic reference ``seqmix.kernels.attention.attention_naive(..., window=w)``;
- ``"chunk"``: the blocked O(T * window) form in PyTorch (``chunk.py``), the fast path;
- ``"auto"``: ``"chunk"`` on every device (there is no Triton form yet, ``limits.py``).

Layout ``[B, H, T, K]`` like every softmax-family kernel in ``seqmix.kernels.attention``.
"""

from __future__ import annotations

from torch import Tensor

from seqmix.kernels.attention import attention_naive
from seqmix.kernels.sliding_window.chunk import check_sliding_window_inputs, sliding_window_chunk
from seqmix.kernels.sliding_window.limits import SLIDING_WINDOW


def sliding_window_attention(q: Tensor, k: Tensor, v: Tensor, *, window: int, causal: bool = True,
                             scale: float | None = None, key_mask: Tensor | None = None,
                             impl: str = "auto") -> Tensor:
    """Softmax attention over a sliding window.

    ``q: [B, H, T, K]``, ``k: [B, H, S, K]``, ``v: [B, H, S, V]`` -> ``[B, H, T, V]``.
    Causal: query ``i`` (at key position ``i + S - T``) sees the last ``window`` keys up to
    itself, so ``S > T`` means a cache of past keys in front. Non-causal (``S == T``): keys
    within ``window // 2`` on either side. ``key_mask: [B, S]`` bool, True = attend;
    ``scale`` defaults to ``K ** -0.5``.
    """
    choice = SLIDING_WINDOW.resolve("sliding_window_attention", impl, q)
    if choice == "naive":
        check_sliding_window_inputs("sliding_window_attention", q, k, v, window=window, causal=causal,
                                    key_mask=key_mask)
        return attention_naive(q, k, v, causal=causal, scale=scale, window=window, key_mask=key_mask)
    return sliding_window_chunk(q, k, v, window=window, causal=causal, scale=scale, key_mask=key_mask)


__all__ = ["SLIDING_WINDOW", "sliding_window_attention", "sliding_window_chunk"]
