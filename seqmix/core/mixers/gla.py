"""Gated linear attention (GLA; Yang, Wang, Shen, Panda, Kim 2023, "Gated Linear Attention
Transformers with Hardware-Efficient Training"), the paper's layer:

    q, k = W_q x, W_k x            [B, T, H, K]   (key width expand_k * d_model)
    v = W_v x                      [B, T, H, V]   (value width expand_v * d_model)
    g = logsigmoid(W_2 W_1 x + b) / gate_logit_normalizer     low-rank, data-dependent forget gates
    S_t = diag(exp(g_t)) S_{t-1} + k_t^T v_t ,  o_t = q_t S_t / sqrt(K)
    y = W_o ( RMSNorm_head(o) * swish(W_r x) )

Optional short convolutions (``conv_size``, off by default as in the paper; flash-linear-attention's
``use_short_conv``): q, k, v each pass a causal depthwise convolution of ``conv_size`` taps and SiLU after their
projection, the local token shift that linear-attention layers need to form induction heads (Zoology's MQAR
models and DeltaNet put it there). The state then also carries the last ``conv_size - 1`` projections; in the
non-causal pattern the convolution stays causal (a local feature of the preceding tokens).

Patterns: ``causal_self`` (the recurrence, chunked by :func:`seqmix.kernels.gla.chunk_gla`)
and ``noncausal_self``: a forward scan plus a backward scan over the reversed sequence,
the token itself counted once, with the same gates (a pair ``a < b`` is weighted by the
gates of ``a+1 .. b`` both ways), see :func:`seqmix.core.layers.bidirectional`.
No cross attention: the gates are a function of one sequence's positions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from seqmix.core.layers import HeadNormGate, ShortConvs, bidirectional
from seqmix.core.mixer import Mixer, State, check_int, expanded_widths, register_mixer, state_dtype
from seqmix.kernels.gla import GLA, chunk_gla


@register_mixer("gla")
class GatedLinearAttention(Mixer):
    """GLA with the paper's defaults (expand_k 0.5, expand_v 1, gate rank 16, normalizer 16).

    Args:
        expand_k / expand_v: key / value widths over heads as multiples of ``d_model``.
        gate_low_rank_dim: rank of the gate projection ``W_2 W_1``.
        gate_logit_normalizer: divides ``logsigmoid``; larger = slower forgetting.
        chunk_size: tokens per chunk of the chunked kernel (a power of two; Triton: 16 to 128).
        conv_size: taps of the short convolutions on q, k and v (module docstring), or None for none.
    """

    patterns = frozenset({"causal_self", "noncausal_self"})
    impls = GLA.impls
    recurrent = True
    paper = "Yang et al. 2023, Gated Linear Attention Transformers with Hardware-Efficient Training"
    complexity = "O(T C D + T D K)"
    test_configs = (
        {"n_heads": 2, "chunk_size": 16},
        {"n_heads": 4, "chunk_size": 16, "expand_k": 1.0, "gate_low_rank_dim": 8, "gate_logit_normalizer": 4.0},
        {"n_heads": 2, "chunk_size": 16, "conv_size": 4},
    )

    def __init__(self, d_model: int, *, n_heads: int = 4, causal: bool = True, impl: str = "auto",
                 expand_k: float = 0.5, expand_v: float = 1.0, gate_low_rank_dim: int = 16,
                 gate_logit_normalizer: float = 16.0, chunk_size: int = 64, conv_size: int | None = None):
        super().__init__(d_model, n_heads=n_heads, causal=causal, impl=impl)
        name = type(self).__name__
        self.key_dim, self.value_dim = expanded_widths(name, d_model, n_heads, expand_k, expand_v)
        if not isinstance(gate_low_rank_dim, int) or gate_low_rank_dim < 1:
            raise ValueError(f"{name}: gate_low_rank_dim must be a positive int, got {gate_low_rank_dim!r}")
        if not gate_logit_normalizer > 0:
            raise ValueError(f"{name}: gate_logit_normalizer must be > 0, got {gate_logit_normalizer!r}")
        head_dims = {"key_dim / n_heads": self.key_dim // n_heads, "value_dim / n_heads": self.value_dim // n_heads}
        self.triton_refusal = GLA.check(name, impl, chunk_size=chunk_size, head_dims=head_dims)
        if conv_size is not None:
            check_int(name, "conv_size", conv_size, minimum=2, meaning="taps of the short convolutions; None for none")
        self.gate_logit_normalizer = gate_logit_normalizer
        self.conv_size = conv_size
        self.chunk_size = chunk_size
        self.q_proj = nn.Linear(d_model, self.key_dim, bias=False)
        self.k_proj = nn.Linear(d_model, self.key_dim, bias=False)
        self.v_proj = nn.Linear(d_model, self.value_dim, bias=False)
        self.gate_proj = nn.Sequential(nn.Linear(d_model, gate_low_rank_dim, bias=False),
                                       nn.Linear(gate_low_rank_dim, self.key_dim, bias=True))
        self.convs = (ShortConvs((self.key_dim, self.key_dim, self.value_dim), conv_size)
                      if conv_size is not None else None)
        self.output = HeadNormGate(d_model, n_heads, self.value_dim, gate=True)

    def _forward(self, x, *, context, mask, state, return_state):
        b, t, _ = x.shape
        h = self.n_heads
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)  # [B, T, H*K], [B, T, H*K], [B, T, H*V]
        memory, conv_cache = (state, None) if self.convs is None or state is None else state
        if self.convs is not None:
            (q, k, v), conv_cache = self.convs((q, k, v), conv_cache)  # [B, size - 1, 2 H*K + H*V]
        q, k, v = q.view(b, t, h, -1), k.view(b, t, h, -1), v.view(b, t, h, -1)  # [B, T, H, K] (V for v)
        g = (F.logsigmoid(self.gate_proj(x).float()) / self.gate_logit_normalizer).view(b, t, h, -1)  # [B, T, H, K]
        impl = self.resolve_impl(x)
        final = None
        if self.causal:
            o, final = chunk_gla(q, k, v, g, initial_state=memory, output_final_state=return_state,
                                 chunk_size=self.chunk_size, impl=impl)
            if self.convs is not None and return_state:
                final = (final, conv_cache)
        else:
            scan = lambda q, k, v, g: chunk_gla(q, k, v, g, chunk_size=self.chunk_size, impl=impl)[0]  # noqa: E731
            o = bidirectional(scan, q, k, v, g)
        y = self.output(o, x)
        return (y, final) if return_state else y

    def init_state(self, batch_size: int, device: torch.device | str | None = None,
                   dtype: torch.dtype = torch.float32) -> State:
        memory = torch.zeros(batch_size, self.n_heads, self.key_dim // self.n_heads, self.value_dim // self.n_heads,
                             device=device, dtype=state_dtype(dtype))  # S: [B, H, K, V]
        if self.convs is None:
            return memory
        return memory, self.convs.empty_cache(batch_size, device, dtype)  # [B, H, K, V], [B, size - 1, 2 H*K + H*V]

    def state_size(self, seq_len: int) -> int:
        conv = 0 if self.convs is None else self.convs.state_size
        return self.key_dim * self.value_dim // self.n_heads + conv  # S: [H, K/H, V/H] (+ the conv cache)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, key_dim={self.key_dim}, value_dim={self.value_dim}, conv_size={self.conv_size}"
