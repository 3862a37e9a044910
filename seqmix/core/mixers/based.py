"""BASED: Taylor-feature linear attention plus sliding-window softmax attention.

Paper: Arora, Eyuboglu, Zhang, Timalsina, Alberti, Zinsley, Zou, Rudra & Ré 2024, "Simple
linear attention language models balance the recall-throughput tradeoff".

Two branches over the same input, summed:

- global, linear: q and k are projected to a small ``feature_dim`` F per head and mapped by
  the 2nd-order Taylor expansion of exp, ``phi(x) = [1, x / F^(1/4), vec(x x^T) / sqrt(2F)]``
  (``1 + F + F^2`` features), so ``phi(q) . phi(k) = 1 + s + s^2 / 2`` with ``s = q.k / sqrt(F)``,
  which is always >= 1/2. The output is normalised: ``o_t = sum_i phi(q_t).phi(k_i) v_i /
  sum_i phi(q_t).phi(k_i)``, computed in one call of ``seqmix.kernels.linear_attn.linear_attn``
  with a column of ones appended to v (its output column is the normaliser);
- local, exact: sliding-window softmax attention over the last ``window`` tokens, the
  :class:`~seqmix.core.mixers.sliding_window.SlidingWindowAttention` mixer.

In the paper the two are separate layers of a hybrid stack (with short-convolution layers
too); here one mixer holds both, so a stack of ``based`` mixers has both in every layer.
The paper's short-convolution layers are an option here (``conv_size``, off by default), placed
as in GLA's and DeltaNet's ``conv_size``: the q, k and v projections of the linear branch each
pass a causal depthwise convolution of ``conv_size`` taps and SiLU before the feature map
(:class:`~seqmix.core.layers.ShortConvolution`), the local token shift that lets the linear
branch form induction heads on MQAR.
Recurrent: the state is the linear state ``[B, H, 1 + F + F^2, V + 1]`` (fp32) plus the
window's KV cache (plus, with ``conv_size``, the last ``conv_size - 1`` projections), all of
fixed size; that is the recall-memory trade-off BASED studies.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from seqmix.core.layers import ShortConvs
from seqmix.core.mixer import Mixer, check_int, register_mixer, state_dtype
from seqmix.core.mixers.sliding_window import SlidingWindowAttention, WindowState
from seqmix.kernels.linear_attn import linear_attn

# (linear state [B, H, 1 + F + F^2, V + 1], window cache), and with conv_size the conv cache [B, size - 1, 2 H*F + D]
BasedState = tuple[Tensor, WindowState] | tuple[Tensor, WindowState, Tensor]


def taylor_features(x: Tensor) -> Tensor:
    """``[..., F] -> [..., 1 + F + F^2]``: ``phi(q) . phi(k) = 1 + s + s^2 / 2``, ``s = q.k / sqrt(F)``."""
    f = x.shape[-1]
    outer = (x[..., :, None] * x[..., None, :]).flatten(-2)  # [..., F, F] -> [..., F^2]
    return torch.cat([torch.ones_like(x[..., :1]), x / f ** 0.25, outer / math.sqrt(2 * f)], -1)


@register_mixer("based")
class Based(Mixer):
    """BASED: Taylor linear attention (global recall) + sliding-window softmax (local precision)."""

    patterns = frozenset({"causal_self"})
    impls = ("naive", "chunk")
    recurrent = True
    paper = ("Arora et al. 2024, Simple linear attention language models balance the "
             "recall-throughput tradeoff")
    complexity = "O(T D F^2 + T W D)"
    test_configs = ({"n_heads": 2, "feature_dim": 4, "window": 16, "chunk_size": 16},
                    {"n_heads": 4, "feature_dim": 8, "window": 7, "chunk_size": 16},
                    {"n_heads": 2, "feature_dim": 4, "window": 5, "chunk_size": 16, "conv_size": 4})

    def __init__(self, d_model: int, *, n_heads: int = 4, causal: bool = True, impl: str = "auto",
                 feature_dim: int = 16, window: int = 64, chunk_size: int = 64, conv_size: int | None = None):
        """``feature_dim``: F per head of the Taylor map; ``window``: tokens of the local softmax;
        ``conv_size``: taps of the short convolutions on the linear branch's q, k, v (module docstring), or None."""
        super().__init__(d_model, n_heads=n_heads, causal=causal, impl=impl)
        if not isinstance(feature_dim, int) or feature_dim < 1:
            raise ValueError(f"Based: feature_dim must be a positive int (16 in the paper), got {feature_dim!r}")
        if not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"Based: chunk_size must be a positive int, got {chunk_size!r}")
        if conv_size is not None:
            check_int("Based", "conv_size", conv_size, minimum=2, meaning="taps of the short convolutions; None for none")
        self.feature_dim = feature_dim
        self.chunk_size = chunk_size
        self.conv_size = conv_size
        self.q = nn.Linear(d_model, n_heads * feature_dim, bias=False)
        self.k = nn.Linear(d_model, n_heads * feature_dim, bias=False)
        self.v = nn.Linear(d_model, d_model, bias=False)
        self.out = nn.Linear(d_model, d_model, bias=False)
        features = n_heads * feature_dim  # the q and k projections' channels; v has d_model
        self.convs = ShortConvs((features, features, d_model), conv_size) if conv_size is not None else None
        self.local = SlidingWindowAttention(d_model, n_heads=n_heads, causal=True, window=window)

    @property
    def n_features(self) -> int:
        return 1 + self.feature_dim + self.feature_dim ** 2

    def _forward(self, x, *, context, mask, state, return_state):
        return self.mix(x, state=state, return_state=return_state, impl=self.resolve_impl(x))

    def mix(self, x: Tensor, *, state: BasedState | None, return_state: bool,
            impl: str) -> Tensor | tuple[Tensor, BasedState]:
        b, t, d = x.shape
        h, f = self.n_heads, self.feature_dim
        linear_state = window_state = conv_cache = None
        if state is not None and self.convs is None:
            linear_state, window_state = state
        elif state is not None:
            linear_state, window_state, conv_cache = state
        q, k, v = self.q(x), self.k(x), self.v(x)  # [B, T, H*F], [B, T, H*F], [B, T, D]
        if self.convs is not None:
            (q, k, v), conv_cache = self.convs((q, k, v), conv_cache)  # cache [B, size - 1, 2 H*F + D]
        q = taylor_features(q.view(b, t, h, f))  # [B, T, H, F] -> [B, T, H, 1 + F + F^2]
        k = taylor_features(k.view(b, t, h, f))  # [B, T, H, 1 + F + F^2]
        v = v.view(b, t, h, self.head_dim)  # [B, T, H, V]
        v = torch.cat([v, torch.ones_like(v[..., :1])], -1)  # [B, T, H, V + 1]: the last column sums phi.phi
        o, linear_state = linear_attn(q, k, v, scale=1.0, initial_state=linear_state,
                                      output_final_state=return_state, chunk_size=self.chunk_size, impl=impl)
        o = o[..., :-1] / o[..., -1:]  # [B, T, H, V], normalised by sum_i phi(q_t).phi(k_i) >= 1/2
        y_global = self.out(o.reshape(b, t, d))  # [B, T, H, V] -> [B, T, D]
        local = self.local.mix(x, mask=None, state=window_state, return_state=return_state, impl=impl)
        if not return_state:
            return y_global + local
        y_local, window_state = local
        if self.convs is None:
            return y_global + y_local, (linear_state, window_state)
        return y_global + y_local, (linear_state, window_state, conv_cache)

    def init_state(self, batch_size: int, device: torch.device | str | None = None,
                   dtype: torch.dtype = torch.float32) -> BasedState:
        linear_state = torch.zeros(batch_size, self.n_heads, self.n_features, self.head_dim + 1,
                                   device=device, dtype=state_dtype(dtype))
        window_state = self.local.init_state(batch_size, device, dtype)
        if self.convs is None:
            return linear_state, window_state
        conv_cache = self.convs.empty_cache(batch_size, device, dtype)
        return linear_state, window_state, conv_cache  # [B, H, 1 + F + F^2, V + 1], window, [B, size - 1, 2 H*F + D]

    def _step(self, x_t: Tensor, state: BasedState) -> tuple[Tensor, BasedState]:
        y, state = self.mix(x_t[:, None], state=state, return_state=True, impl="naive")  # one token: the recurrence
        return y[:, 0], state

    def state_size(self, seq_len: int) -> int:
        conv = 0 if self.convs is None else self.convs.state_size
        return self.n_heads * self.n_features * (self.head_dim + 1) + self.local.state_size(seq_len) + conv
