"""Aaren: attention as an RNN (Feng et al. 2024, "Attention as an RNN").

A learned query token per head attends causally over the prefix:

    s_t = q_h . k_t / sqrt(K),   o_t = sum_{j <= t} softmax(s_{<=t})_j v_j,   y_t = W_o o_t

Every prefix output comes from one parallel prefix scan over the state ``(m, u, w)`` (running
max, numerator, denominator; :mod:`seqmix.kernels.scan`), and ``step`` updates that state
in constant memory, so Aaren trains like attention and runs like an RNN.
"""

from __future__ import annotations

import torch
from torch import nn

from seqmix.core.mixer import Mixer, State, register_mixer, state_dtype
from seqmix.kernels.scan import SCAN, empty_state, softmax_scan


@register_mixer("aaren")
class Aaren(Mixer):
    """Aaren mixer: ``n_heads`` learned queries, keys and values from ``x``, causal self only.

    Args:
        n_heads: heads (one learned query each); ``d_model`` divisible by it.
        chunk_size: tokens per chunk of the chunked scan (Triton: 16 to 128).
    """

    paper = "Feng et al. 2024, Attention as an RNN"
    complexity = "O(T D) (parallel prefix scan)"

    patterns = frozenset({"causal_self"})
    impls = SCAN.impls
    recurrent = True
    test_configs = ({"n_heads": 2}, {"n_heads": 4, "chunk_size": 16})

    def __init__(self, d_model: int, *, n_heads: int = 4, causal: bool = True, impl: str = "auto",
                 chunk_size: int = 64):
        super().__init__(d_model, n_heads=n_heads, causal=causal, impl=impl)
        self.triton_refusal = SCAN.check("Aaren", impl, chunk_size=chunk_size,
                                         head_dims={"d_model / n_heads": self.head_dim})
        self.chunk_size = chunk_size
        self.query = nn.Parameter(torch.randn(n_heads, self.head_dim) / self.head_dim ** 0.5)  # [H, K]
        self.k = nn.Linear(d_model, d_model, bias=False)
        self.v = nn.Linear(d_model, d_model, bias=False)
        self.out = nn.Linear(d_model, d_model, bias=False)

    def _forward(self, x, *, context, mask, state, return_state):
        b, t, d = x.shape
        k = self.k(x).view(b, t, self.n_heads, self.head_dim)  # [B, T, H, K]
        v = self.v(x).view(b, t, self.n_heads, self.head_dim)  # [B, T, H, V]
        s = torch.einsum("bthk,hk->bth", k, self.query) * self.head_dim ** -0.5  # [B, T, H]
        o, final = softmax_scan(s, v, initial_state=state, output_final_state=return_state,
                                chunk_size=self.chunk_size, impl=self.resolve_impl(x))
        y = self.out(o.reshape(b, t, d))  # [B, T, H, V] -> [B, T, D]
        return (y, final) if return_state else y

    def init_state(self, batch_size: int, device: torch.device | str | None = None,
                   dtype: torch.dtype = torch.float32) -> State:
        """The empty prefix ``(m = -inf [B, H], u = 0 [B, H, V], w = 0 [B, H])``, fp32 (fp64 kept)."""
        return empty_state(batch_size, self.n_heads, self.head_dim, device=device, dtype=state_dtype(dtype))

    def state_size(self, seq_len: int) -> int:
        return self.n_heads * (self.head_dim + 2)  # m, u [V], w per head
