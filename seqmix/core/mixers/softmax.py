"""Softmax attention (SDPA fast path) and its sink-free sigmoid / ReLU variants.

Papers: Vaswani et al. 2017 (softmax); "When Attention Sink Emerges" (Gu et al. 2024) and
"Active-Dormant Attention Heads" for sigmoid and ReLU attention without normalisation
across keys, which removes the attention sink.

Blocks -> mixers: :class:`AttentionMixer` holds the projections shared by all three;
the three registered classes differ only in how scores become weights.
"""

from __future__ import annotations

from typing import ClassVar

import torch.nn.functional as F
from torch import Tensor, nn

from seqmix.core.embeddings import RotaryEmbedding
from seqmix.core.layers import QKVProjection, merge_heads
from seqmix.core.mixer import PATTERNS, Mixer, register_mixer
from seqmix.kernels.attention import attention_naive, visible_keys_mask


class AttentionMixer(Mixer):
    """Multi-head attention over ``x`` (self) or ``context`` (cross); a base, not registered."""

    patterns = frozenset(PATTERNS)
    supports_mask = True
    normalizer: ClassVar[str] = "softmax"

    def __init__(self, d_model: int, *, n_heads: int = 4, causal: bool = True, impl: str = "auto",
                 rotary: bool = False, window: int | None = None):
        super().__init__(d_model, n_heads=n_heads, causal=causal, impl=impl)
        if window is not None and window < 1:
            raise ValueError(f"{type(self).__name__}: window must be >= 1 or None, got {window}")
        self.qkv = QKVProjection(d_model, n_heads)
        self.out = nn.Linear(d_model, d_model, bias=False)
        self.rotary = RotaryEmbedding(self.head_dim) if rotary else None
        self.window = window

    def _forward(self, x, *, context, mask, state, return_state):
        q, k, v = self.qkv(x, context)  # [B, H, T, K], [B, H, S, K], [B, H, S, V]
        if self.rotary is not None:
            s, t = k.shape[-2], q.shape[-2]
            q, k = self.rotary(q, offset=s - t), self.rotary(k)
        o = self.attend(q, k, v, mask)  # [B, H, T, V]
        return self.out(merge_heads(o))

    def attend(self, q: Tensor, k: Tensor, v: Tensor, key_mask: Tensor | None) -> Tensor:
        return attention_naive(q, k, v, causal=self.causal, normalizer=self.normalizer,
                               window=self.window, key_mask=key_mask)

    def state_size(self, seq_len: int) -> int:
        cached = seq_len if self.window is None else min(seq_len, self.window)
        return 2 * cached * self.d_model  # the key and value cache


@register_mixer("softmax")
class SoftmaxAttention(AttentionMixer):
    """Standard softmax attention; ``impl="sdpa"`` is PyTorch's fused kernel (flash on GPU)."""

    impls = ("naive", "sdpa")
    paper = "Vaswani et al. 2017, Attention Is All You Need"
    complexity = "O(T^2 D)"
    test_configs = ({"n_heads": 2}, {"n_heads": 2, "rotary": True})

    def attend(self, q, k, v, key_mask):
        if self.resolve_impl(q) == "naive":
            return super().attend(q, k, v, key_mask)
        t, s = q.shape[-2], k.shape[-2]
        if key_mask is None and self.window is None and (not self.causal or s == t):
            return F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        visible = visible_keys_mask(t, s, causal=self.causal, window=self.window, key_mask=key_mask,
                                    device=q.device)  # [B|1, 1, T, S]
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=visible)
        return o.masked_fill(~visible.any(-1, keepdim=True), 0.0)  # queries that see no key -> 0


@register_mixer("sigmoid_attention")
class SigmoidAttention(AttentionMixer):
    """``sigmoid(q.k / sqrt(K) - log n)``: no normalisation across keys, so no attention sink."""

    normalizer = "sigmoid"
    paper = "Gu et al. 2024, When Attention Sink Emerges (sigmoid attention)"
    complexity = "O(T^2 D)"
    test_configs = ({"n_heads": 2},)


@register_mixer("relu_attention")
class ReLUAttention(AttentionMixer):
    """``relu(q.k / sqrt(K)) / n``: the ReLU form of sink-free attention."""

    normalizer = "relu"
    paper = "Gu et al. 2024 / Guo et al. 2024, Active-Dormant Attention Heads (ReLU attention)"
    complexity = "O(T^2 D)"
    test_configs = ({"n_heads": 2},)
