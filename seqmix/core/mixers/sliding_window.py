"""Sliding-window softmax attention (Longformer's local attention, Mistral's SWA).

Paper: Beltagy et al. 2020, "Longformer: The Long-Document Transformer" (local windows);
Jiang et al. 2023, "Mistral 7B" (causal sliding-window attention with a rolling KV cache).

Each query attends to the last ``window`` keys up to itself (causal) or to the keys within
``window // 2`` on either side (non-causal). ``impl="chunk"`` is the blocked O(T * window)
form of ``seqmix/kernels/sliding_window/chunk.py``; ``"naive"`` the masked quadratic
reference. Causal, it is a recurrent mixer: the state is a fixed-size cache of the last
``window`` keys and values (with their validity and the position counter for rotary),
so ``step`` and piecewise ``forward`` equal one ``forward`` over the whole sequence.
"""

from __future__ import annotations

import torch
from torch import Tensor

from seqmix.core.layers import merge_heads
from seqmix.core.mixer import register_mixer
from seqmix.core.mixers.softmax import AttentionMixer
from seqmix.kernels.sliding_window import sliding_window_attention

# (keys [B, H, W, K], values [B, H, W, V], filled [B, W] bool, position [] int64): the KV window
WindowState = tuple[Tensor, Tensor, Tensor, Tensor]


@register_mixer("sliding_window")
class SlidingWindowAttention(AttentionMixer):
    """Softmax attention over a sliding window of ``window`` keys, with a fixed-size KV cache."""

    patterns = frozenset({"causal_self", "noncausal_self"})
    impls = ("naive", "chunk")
    recurrent = True
    paper = "Beltagy et al. 2020 (Longformer); Jiang et al. 2023 (Mistral 7B)"
    complexity = "O(T W D)"
    test_configs = ({"n_heads": 2, "window": 16}, {"n_heads": 2, "window": 7, "rotary": True})

    def __init__(self, d_model: int, *, n_heads: int = 4, causal: bool = True, impl: str = "auto",
                 window: int = 64, rotary: bool = False):
        if not isinstance(window, int) or isinstance(window, bool) or window < 1:
            raise ValueError(f"{type(self).__name__}: window must be a positive int, got {window!r}")
        super().__init__(d_model, n_heads=n_heads, causal=causal, impl=impl, rotary=rotary, window=window)

    def _forward(self, x, *, context, mask, state, return_state):
        return self.mix(x, mask=mask, state=state, return_state=return_state, impl=self.resolve_impl(x))

    def mix(self, x: Tensor, *, mask: Tensor | None, state: WindowState | None, return_state: bool,
            impl: str) -> Tensor | tuple[Tensor, WindowState]:
        """The forward pass with an explicit ``impl`` (so that :class:`Based` can choose it)."""
        carry = state is not None or return_state
        if carry and not self.causal:
            raise ValueError(f"{type(self).__name__}: a carried state needs causal=True "
                             "(a non-causal window sees future tokens)")
        b, t, _ = x.shape
        if carry and state is None:
            state = self.init_state(b, x.device, x.dtype)
        offset = int(state[3]) if carry else 0
        q, k, v = self.qkv(x)  # [B, H, T, K], [B, H, T, K], [B, H, T, V]
        if self.rotary is not None:
            q, k = self.rotary(q, offset=offset), self.rotary(k, offset=offset)
        if not carry:
            o = sliding_window_attention(q, k, v, window=self.window, causal=self.causal, key_mask=mask, impl=impl)
            return self.out(merge_heads(o))
        k_cache, v_cache, filled, position = state
        keep = torch.ones(b, t, dtype=torch.bool, device=x.device) if mask is None else mask
        keys = torch.cat([k_cache.to(k.dtype), k], 2)  # [B, H, W + T, K]
        values = torch.cat([v_cache.to(v.dtype), v], 2)  # [B, H, W + T, V]
        keep = torch.cat([filled, keep], 1)  # [B, W + T]
        o = sliding_window_attention(q, keys, values, window=self.window, causal=True, key_mask=keep, impl=impl)
        w = self.window
        y = self.out(merge_heads(o))
        return (y, (keys[:, :, -w:], values[:, :, -w:], keep[:, -w:], position + t)) if return_state else y

    def init_state(self, batch_size: int, device: torch.device | str | None = None,
                   dtype: torch.dtype = torch.float32) -> WindowState:
        h, w, dk = self.n_heads, self.window, self.head_dim
        return (torch.zeros(batch_size, h, w, dk, device=device, dtype=dtype),
                torch.zeros(batch_size, h, w, dk, device=device, dtype=dtype),
                torch.zeros(batch_size, w, dtype=torch.bool, device=device),  # no slot filled yet
                torch.zeros((), dtype=torch.int64, device=device))

    def _step(self, x_t: Tensor, state: WindowState) -> tuple[Tensor, WindowState]:
        y, state = self.mix(x_t[:, None], mask=None, state=state, return_state=True, impl="naive")
        return y[:, 0], state

    def state_size(self, seq_len: int) -> int:
        return 2 * self.window * self.d_model  # the key and value window, whatever seq_len
