"""Flow attention, the mixer of Flowformer (Wu et al. 2022, "Flowformer: Linearizing Transformers
with Conservation Flows"):

    q, k, v = W_q x, W_k x, W_v x                  [B, T, H, K]
    o = FlowAttention(phi(q), phi(k), v)            phi = sigmoid (+ 1e-6), the paper's feature map
    y = W_o o

Flow attention (:mod:`seqmix.kernels.flow`, where the math is written out; the paper's
equations of its Flow-Attention section, not numbered here): incoming flows
``I = phi(Q) sum phi(K)`` and outgoing flows ``O = phi(K) sum phi(Q)``, conservation
``I^ = phi(Q) sum phi(K)/O``, ``O^ = phi(K) sum phi(Q)/I``, competition
``V^ = n softmax(O^) * V``, allocation ``sigmoid(I^)`` of the normalised aggregation
``phi(Q)/I (phi(K)^T V^)``. Linear in T.

Optional short convolutions (``conv_size``, off by default; as linear attention's, GLA's and DeltaNet's): q, k
and v each pass a causal depthwise convolution of ``conv_size`` taps and SiLU after their projection, the local
token shift Zoology's MQAR models have; the state is then ``(FlowState, conv_cache)`` with the last
``conv_size - 1`` projections. Not in the paper.

Patterns: ``noncausal_self`` (the paper's form), ``causal_self``: the paper's causal Flowformer
(its code): every sum is a prefix sum, the flows are divided by the token counts, the
competition is normalised over the key's own prefix, and a key's outgoing flow is measured
over the queries up to it (later ones do not exist yet). The running sums are the state
(:class:`~seqmix.kernels.flow.FlowState`, constant size), so a sequence can be processed in
pieces and stepped. Left out: cross attention. Its form is natural (sinks are the queries,
sources the context), but every context key's outgoing flow sums over *all* queries, so a
decoder stepping one query at a time cannot equal the forward, which the contract's cross
step promises. Also left out: the paper's clamp of ``O^`` to [-1, 1] (the competition is a
stable log-sum-exp here) and dropout.
"""

from __future__ import annotations

import torch
from torch import nn

from seqmix.core.layers import ShortConvs, split_conv_state
from seqmix.core.mixer import Mixer, State, check_int, register_mixer, state_dtype
from seqmix.kernels.flow import FLOW, FlowState, flow_attention


@register_mixer("flow")
class FlowAttention(Mixer):
    """Flowformer's flow attention, causal or not.

    Args:
        chunk_size: tokens per chunk of the chunked causal linear attention inside ``impl="chunk"``.
        conv_size: taps of the short convolutions on q, k and v (module docstring), or None for none.
    """

    patterns = frozenset({"causal_self", "noncausal_self"})
    impls = FLOW.impls
    recurrent = True
    paper = "Wu et al. 2022, Flowformer: Linearizing Transformers with Conservation Flows"
    complexity = "O(T C D + T D K)"
    test_configs = ({"n_heads": 2, "chunk_size": 16}, {"n_heads": 2, "chunk_size": 16, "conv_size": 3})

    def __init__(self, d_model: int, *, n_heads: int = 4, causal: bool = True, impl: str = "auto",
                 chunk_size: int = 64, conv_size: int | None = None):
        super().__init__(d_model, n_heads=n_heads, causal=causal, impl=impl)
        name = type(self).__name__
        FLOW.check(name, impl, chunk_size=chunk_size)
        if conv_size is not None:
            check_int(name, "conv_size", conv_size, minimum=2, meaning="taps of the short convolutions; None for none")
        self.chunk_size = chunk_size
        self.conv_size = conv_size
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.convs = ShortConvs((d_model,) * 3, conv_size) if conv_size is not None else None
        self.out = nn.Linear(d_model, d_model)

    def _forward(self, x, *, context, mask, state, return_state):
        b, t, _ = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.n_heads, self.head_dim).unbind(2)  # [B, T, H, K] each
        conv_cache = None
        if self.convs is not None:
            state, conv_cache = split_conv_state(type(self).__name__, state, "FlowState")
            (q, k, v), conv_cache = self.convs((q, k, v), conv_cache)  # cache [B, size - 1, 3 D]
        o, final = flow_attention(q, k, v, causal=self.causal, initial_state=state, output_final_state=return_state,
                                  chunk_size=self.chunk_size, impl=self.resolve_impl(x))  # [B, T, H, V]
        y = self.out(o.reshape(b, t, self.d_model))  # [B, T, H, V] -> [B, T, D]
        if self.convs is not None and return_state:
            final = (final, conv_cache)
        return (y, final) if return_state else y

    def init_state(self, batch_size: int, device: torch.device | str | None = None,
                   dtype: torch.dtype = torch.float32) -> State:
        flows = FlowState.empty(batch_size, self.n_heads, self.head_dim, self.head_dim, device, state_dtype(dtype))
        if self.convs is None:
            return flows
        return flows, self.convs.empty_cache(batch_size, device, dtype)  # FlowState, [B, size - 1, 3 D]

    def state_size(self, seq_len: int) -> int:
        conv = 0 if self.convs is None else self.convs.state_size
        return self.n_heads * (4 * self.head_dim + 1 + self.head_dim ** 2) + conv  # four [K] sums, a log-sum-exp,
        # kv [K, V] per head (+ the conv cache)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, chunk_size={self.chunk_size}, conv_size={self.conv_size}"
