"""Linear attention with an optional per-head decay: Katharopoulos et al. 2020 ("Transformers
are RNNs"), TransNormer / TransNormerLLM and Lightning Attention-1/2 (Qin et al. 2022-2024:
no denominator, a norm on the output), RetNet's retention (Sun et al. 2023: fixed decay
``gamma_h = 1 - 2^(-5-h)``, swish output gate).

    S_t = gamma * S_{t-1} + phi(k_t)^T v_t ,   o_t = phi(q_t) S_t / sqrt(K)
    y_t = W_o ( RMSNorm_head(o_t) * swish(W_r x_t) )

:class:`LinearAttention` is the registered mixer; its output path (:class:`HeadNormGate`) and
non-causal form (:func:`bidirectional`) are shared with GLA from :mod:`seqmix.core.layers`.

TransNormerLLM's pieces (Qin et al. 2023) are options: ``positional="lrpe"`` encodes q and k with the
rotation part of LRPE-d (:class:`seqmix.core.embeddings.LRPE`: ``q~_t . k~_s = sum_j q_j k_j
cos(theta_j (t - s))``, so with a decay the score is the paper's ``q_t^T k_s lambda^(t-s) cos(theta (t-s))``;
the keys are ``2K`` wide, the scale ``(2K)^-0.5``, the state ``[H, 2K, V]`` plus the position reached);
``output_norm="srmsnorm"`` norms each head without a learned scale (SRMSNorm). With SGLU and SRMSNorm
in the block (:mod:`seqmix.core.blocks`) this is the TNL layer; left out: TNL's own decay schedule
(``decay="retnet"`` or ``"learned"`` stand in) and the norm over all heads at once (here per head).

Optional short convolutions (``conv_size``, off by default; as GLA's, DeltaNet's and BASED's ``conv_size``):
q, k and v each pass a causal depthwise convolution of ``conv_size`` taps and SiLU after their projection and
before ``phi``, the local token shift Zoology's MQAR models have. The state then also carries the last
``conv_size - 1`` projections, ``(memory, conv_cache)``; in the non-causal pattern the convolution stays causal.

Patterns: ``causal_self`` (the recurrence, chunked), ``noncausal_self``: without decay
the global form ``phi(q) (phi(K)^T V)``, with decay the bidirectional form (a forward and
a backward scan, the token itself counted once, i.e. RetNet's symmetric
``gamma^|t-s|``). Cross attention is not offered: a decay between the positions of two
different sequences has no meaning.
"""

from __future__ import annotations

from typing import Callable, Literal, NamedTuple, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seqmix.core.embeddings import LRPE
from seqmix.core.layers import HeadNormGate, ShortConvs, bidirectional, split_conv_state
from seqmix.core.mixer import Mixer, State, check_int, register_mixer, state_dtype
from seqmix.kernels.linear_attn import LINEAR_ATTN, linear_attn, linear_attn_global_chunk, linear_attn_global_naive

FeatureMap = Literal["identity", "elu1", "silu"]
Decay = Literal["none", "retnet", "learned"]
Positional = Literal["none", "lrpe"]
OutputNorm = Literal["rmsnorm", "srmsnorm"]

FEATURE_MAPS: dict[str, Callable[[Tensor], Tensor]] = {
    "identity": lambda x: x,  # Lightning Attention / TransNormerLLM kernel form, RetNet
    "elu1": lambda x: F.elu(x) + 1.0,  # Katharopoulos et al.: positive features
    "silu": F.silu,  # TransNormerLLM's activation on q and k
}


class LRPEState(NamedTuple):
    """The state with ``positional="lrpe"``: the memory over rotated keys and the position reached."""

    memory: Tensor  # [B, H, 2K, V]
    seen: int  # tokens read so far: the next token's position


def retnet_log_decay(n_heads: int, device: torch.device | None = None) -> Tensor:
    """RetNet's per-head decays, as logs: ``log(1 - 2^(-5 - h))`` for ``h = 0 .. H-1``."""
    h = torch.arange(n_heads, dtype=torch.float64, device=device)
    return torch.log1p(-(2.0 ** (-5.0 - h))).float()  # [H]


@register_mixer("linear_attention")
class LinearAttention(Mixer):
    """Linear attention, optionally decayed (Lightning Attention / RetNet form).

    Args:
        feature_map: ``phi`` applied to q and k: ``"identity"`` (Lightning / RetNet),
            ``"elu1"`` (``elu + 1``, Katharopoulos), ``"silu"`` (TransNormerLLM). There is no
            ``phi(q) . sum phi(k)`` denominator in any case: the per-head RMSNorm of the output
            replaces it (TransNormer's NormAttention; the denominator is what makes it unstable).
        decay: ``"none"``; ``"retnet"``: fixed ``gamma_h = 1 - 2^(-5-h)``; ``"learned"``: one
            decay per head, ``gamma = sigmoid(w)``, started at the RetNet schedule.
        output_gate: multiply the normed output by ``swish(W_r x)`` (RetNet, TransNormerLLM).
        chunk_size: tokens per chunk of the chunked kernel.
        positional: ``"none"``; ``"lrpe"``: TransNormerLLM's LRPE-d rotation of q and k (module docstring).
        output_norm: the per-head norm of the output: ``"rmsnorm"`` (learned scale) or ``"srmsnorm"`` (none).
        conv_size: taps of the short convolutions on q, k and v (module docstring), or None for none.
    """

    patterns = frozenset({"causal_self", "noncausal_self"})
    impls = LINEAR_ATTN.impls
    recurrent = True
    paper = ("Katharopoulos et al. 2020 (Transformers are RNNs); Qin et al. 2023-24 (TransNormerLLM, "
             "Lightning Attention-2); Sun et al. 2023 (RetNet)")
    complexity = "O(T C D + T D K)"
    test_configs = (
        {"n_heads": 2, "chunk_size": 16},
        {"n_heads": 2, "chunk_size": 16, "decay": "retnet", "feature_map": "elu1"},
        {"n_heads": 4, "chunk_size": 16, "decay": "learned", "feature_map": "silu", "output_gate": False},
        {"n_heads": 2, "chunk_size": 16, "decay": "retnet", "feature_map": "silu", "positional": "lrpe",
         "output_norm": "srmsnorm"},  # the TNL layer
        {"n_heads": 2, "chunk_size": 16, "feature_map": "elu1", "conv_size": 4},
    )

    def __init__(self, d_model: int, *, n_heads: int = 4, causal: bool = True, impl: str = "auto",
                 feature_map: FeatureMap = "identity", decay: Decay = "none", output_gate: bool = True,
                 chunk_size: int = 64, positional: Positional = "none", output_norm: OutputNorm = "rmsnorm",
                 conv_size: int | None = None):
        super().__init__(d_model, n_heads=n_heads, causal=causal, impl=impl)
        name = type(self).__name__
        if feature_map not in FEATURE_MAPS:
            raise ValueError(f"{name}: feature_map={feature_map!r} is unknown; choose one of {sorted(FEATURE_MAPS)}")
        for argument, value, allowed in (("decay", decay, Decay), ("positional", positional, Positional),
                                         ("output_norm", output_norm, OutputNorm)):
            if value not in get_args(allowed):
                raise ValueError(f"{name}: {argument}={value!r} is unknown; choose one of {list(get_args(allowed))}")
        if conv_size is not None:
            check_int(name, "conv_size", conv_size, minimum=2, meaning="taps of the short convolutions; None for none")
        key_dim = 2 * self.head_dim if positional == "lrpe" else self.head_dim  # LRPE: [x cos, x sin]
        self.triton_refusal = LINEAR_ATTN.check(name, impl, chunk_size=chunk_size,
                                                head_dims={"d_model / n_heads": self.head_dim, "key dim": key_dim})
        self.key_dim = key_dim
        self.positional = positional
        self.lrpe = LRPE(n_heads, self.head_dim) if positional == "lrpe" else None
        self.feature_map = feature_map
        self.decay = decay
        self.chunk_size = chunk_size
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.conv_size = conv_size
        self.convs = ShortConvs((d_model,) * 3, conv_size) if conv_size is not None else None
        self.decay_logit = None
        if decay == "learned":
            gamma = retnet_log_decay(n_heads).exp()
            self.decay_logit = nn.Parameter(torch.log(gamma / (1 - gamma)))  # sigmoid(w) = gamma
        self.output = HeadNormGate(d_model, n_heads, d_model, gate=output_gate, norm=output_norm)

    def log_decay(self, device: torch.device) -> Tensor | None:
        """``[H]`` log-decays (<= 0), or None without decay."""
        if self.decay == "retnet":
            return retnet_log_decay(self.n_heads, device)
        if self.decay == "learned":
            return F.logsigmoid(self.decay_logit.float())
        return None

    def _forward(self, x, *, context, mask, state, return_state):
        b, t, _ = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.n_heads, self.head_dim).unbind(2)  # [B, T, H, K] each
        conv_cache = None
        if self.convs is not None:
            state, conv_cache = split_conv_state(type(self).__name__, state, "memory")
            (q, k, v), conv_cache = self.convs((q, k, v), conv_cache)  # cache [B, size - 1, 3 D]
        phi = FEATURE_MAPS[self.feature_map]
        q, k = phi(q), phi(k)
        memory, seen = state, 0
        if self.lrpe is not None:
            if state is not None and not isinstance(state, LRPEState):
                raise ValueError(f"{type(self).__name__}: with positional='lrpe' the state is an LRPEState (memory, "
                                 "position) from init_state or forward(..., return_state=True), "
                                 f"got {type(state).__name__}")
            if state is not None:
                memory, seen = state
            q, k = self.lrpe(q, seen), self.lrpe(k, seen)  # [B, T, H, 2K] each
        impl = self.resolve_impl(x)
        decay = self.log_decay(x.device)
        final = None
        if self.causal:
            o, final = linear_attn(q, k, v, decay=decay, initial_state=memory, output_final_state=return_state,
                                   chunk_size=self.chunk_size, impl=impl)
            if self.lrpe is not None and return_state:
                final = LRPEState(final, seen + t)
            if self.convs is not None and return_state:
                final = (final, conv_cache)
        elif decay is None:  # the global form; "triton" has no kernel to add to two matmuls
            o = (linear_attn_global_naive if impl == "naive" else linear_attn_global_chunk)(q, k, v)
        else:
            scan = lambda q, k, v, g: linear_attn(q, k, v, decay=decay, chunk_size=self.chunk_size,  # noqa: E731
                                                  impl=impl)[0]
            o = bidirectional(scan, q, k, v, None)
        y = self.output(o, x)
        return (y, final) if return_state else y

    def init_state(self, batch_size: int, device: torch.device | str | None = None,
                   dtype: torch.dtype = torch.float32) -> State:
        memory = torch.zeros(batch_size, self.n_heads, self.key_dim, self.head_dim, device=device,
                             dtype=state_dtype(dtype))  # [B, H, K, V] (K = 2 head_dim with LRPE)
        memory = memory if self.lrpe is None else LRPEState(memory, 0)
        if self.convs is None:
            return memory
        return memory, self.convs.empty_cache(batch_size, device, dtype)  # [B, H, K, V] (or LRPEState), [B, size - 1, 3 D]

    def state_size(self, seq_len: int) -> int:
        conv = 0 if self.convs is None else self.convs.state_size
        return self.n_heads * self.key_dim * self.head_dim + conv  # S: [H, K, V], whatever the length (+ conv cache)

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, feature_map={self.feature_map!r}, decay={self.decay!r}, "
                f"positional={self.positional!r}, conv_size={self.conv_size}")
