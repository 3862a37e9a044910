"""JRT-RNN's prefix linear attention (PLA).

Paper: Arora, Timalsina, Singhal, Spector, Eyuboglu, Zhao, Rao, Rudra & Ré 2024, "Just read twice:
closing the recall gap for recurrent language models". The first ``prefix_len`` tokens (the prompt,
M of them) are read non-causally, with their own encoder keys ``k_e``; every token then also reads
causally with the decoder keys ``k_d`` (the paper's PLA equation):

    y_i = phi(q_i) (sum_{j <= M} phi(k_e,j)^T v_j + sum_{j <= i} phi(k_d,j)^T v_j)
          / phi(q_i) (sum_{j <= M} phi(k_e,j)^T   + sum_{j <= i} phi(k_d,j)^T)

so a prefix token sees the whole prefix, and a later token sees the whole prefix and the tokens up
to itself, never beyond. ``phi`` is BASED's 2nd-order Taylor feature map
(:func:`seqmix.core.mixers.based.taylor_features`, JRT-RNN's choice), whose scores are >= 1/2, so the
normaliser is positive. ``q = W_q x``, ``k_d = W_kd x``, ``k_e = W_ke x`` (``feature_dim`` per head),
``v = W_v x``; ``y = W_o o``.

Forms: ``naive`` is the T x T masked formula above; ``chunk`` computes the prefix state
``S_e = sum_{j <= M} phi(k_e,j)^T [v_j, 1]`` once and runs causal Taylor linear attention by chunks
from it (:func:`prefix_linear_attn_chunk`: the states entering the chunks as running sums, the
intra-chunk scores ``1 + s + s^2 / 2`` from the F raw channels), the last value column carrying the
normaliser. State: ``JRTState(kv [B, H, K, V + 1], seen)``, constant in size.

The prefix is the first ``min(prefix_len, T)`` tokens of the forward that starts a sequence (state
None or ``seen == 0``): a ``prefix_len`` longer than the input makes the whole input the prefix, and
tokens after the first forward (later pieces, ``step``) are never prefix. So a prompt is prefilled by
one forward and continued by ``step``; stepping from ``init_state`` with ``prefix_len > 0`` reads
only the first token as the prefix. With ``prefix_len=0`` it is causal linear attention, and step
equals forward (the generic tests use that; ``tests/core/test_jrt_rnn.py`` covers the prefix).

Left out: the rest of the JRT-RNN architecture (BASED's sliding-window and short-convolution layers,
the paper's loss on the prefix), and a Triton form (K = 1 + F + F^2 is 273 at F = 16, over the
linear-attention kernel's head limit). JRT-Prompt (the context repeated) is a data option of the
recall app, not of this mixer.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seqmix.core.mixer import Mixer, register_mixer
from seqmix.core.mixers.based import taylor_features
from seqmix.kernels.common import compute_dtype
from seqmix.kernels.linear_attn import LINEAR_ATTN


class JRTState(NamedTuple):
    """What JRT-RNN carries: the linear-attention state and how many tokens it has read."""

    kv: Tensor  # [B, H, K, V + 1]: sum phi(k)^T [v, 1] (encoder and decoder keys), the last column the normaliser
    seen: int  # tokens read so far; the prefix belongs to the forward that starts at 0


def prefix_linear_attn_naive(q: Tensor, k: Tensor, v: Tensor, k_enc: Tensor,
                             s0: Tensor | None) -> tuple[Tensor, Tensor]:
    """The T x T form: ``q, k: [B, T, H, K]``, ``v: [B, T, H, V]``, ``k_enc: [B, M, H, K]`` (keys of the
    first M tokens), ``s0: [B, H, K, V]`` or None -> ``(o: [B, T, H, V], final state [B, H, K, V])``,
    both in fp32 (fp64 for fp64 inputs); ``o_i = sum_j A_ij v_j + q_i s0`` with
    ``A_ij = q_i.k_j [j <= i] + q_i.k_enc_j [j < M]``."""
    dtype = compute_dtype(q)
    q, k, v, k_enc = (z.to(dtype) for z in (q, k, v, k_enc))
    t, m = q.shape[1], k_enc.shape[1]
    future = torch.ones(t, t, dtype=torch.bool, device=q.device).triu(1)  # [T, T]: j > i
    scores = torch.einsum("bihk,bjhk->bhij", q, k).masked_fill(future, 0.0)  # [B, H, T, T]
    final = torch.einsum("bjhk,bjhv->bhkv", k, v)  # [B, H, K, V]
    if m > 0:  # every token sees the whole prefix
        scores = scores + F.pad(torch.einsum("bihk,bjhk->bhij", q, k_enc), (0, t - m))  # [B, H, T, M] -> [B, H, T, T]
        final = final + torch.einsum("bjhk,bjhv->bhkv", k_enc, v[:, :m])
    o = torch.einsum("bhij,bjhv->bihv", scores, v)  # [B, T, H, V]
    if s0 is not None:
        o = o + torch.einsum("bihk,bhkv->bihv", q, s0.to(dtype))
        final = final + s0.to(dtype)
    return o, final


def chunk_features(x: Tensor) -> Tensor:
    """:func:`~seqmix.core.mixers.based.taylor_features` (``[..., F] -> [..., 1 + F + F^2]``) with the
    ``1 / sqrt(2F)`` of the square term applied to x first, ``(x / (2F)^(1/4)) (x) (x / (2F)^(1/4))``: the
    same features, one pass over ``[..., F^2]`` (and its gradient) fewer."""
    f = x.shape[-1]
    scaled = x * (2 * f) ** -0.25  # [..., F]
    outer = (scaled[..., :, None] * scaled[..., None, :]).flatten(-2)  # [..., F, F] -> [..., F^2]
    return torch.cat([torch.ones_like(x[..., :1]), x * f ** -0.25, outer], -1)


def prefix_linear_attn_chunk(q: Tensor, k: Tensor, v: Tensor, k_enc: Tensor, s0: Tensor | None, *,
                             output_final_state: bool, chunk_size: int) -> tuple[Tensor, Tensor | None]:
    """The same by chunks of ``chunk_size`` tokens (one chunk when T is shorter), from the raw (pre-feature-map) ``q, k: [B, T, H, F]``
    and the Taylor features ``k_enc: [B, M, H, K]`` of the prefix keys (``v, s0`` as in
    :func:`prefix_linear_attn_naive`); ``o`` in fp32 (fp64 for fp64 inputs).

    With ``S_n = s0 + sum_{j < M} phi(k_enc,j)^T v_j + sum_{j before chunk n} phi(k_j)^T v_j`` (the
    prefix state computed once; no decay, so the states entering the chunks are running sums of the
    chunks' ``phi(k)^T v``, N adds)::

        o_i = phi(q_i) S_n + sum_{j <= i in chunk n} (1 + s_ij + s_ij^2 / 2) v_j ,   s_ij = q_i . k_j / sqrt(F)

    The intra-chunk scores use ``phi(q) . phi(k) = 1 + s + s^2 / 2`` (the Taylor map's definition) on
    the F raw channels instead of the ``1 + F + F^2`` features (17x fewer at F = 16); the features are
    built once, directly in the chunked layout (:func:`chunk_features`). Padded tokens have ``v = 0``
    and add nothing.
    """
    dtype = compute_dtype(q)
    b, t, h, f = q.shape
    c = min(chunk_size, t)  # a short input (a step) is one chunk of its own length
    n = -(-t // c)

    def chunked(x: Tensor) -> Tensor:  # [B, T, H, X] -> [B, H, N, C, X], zero-padded, in the compute dtype
        x = F.pad(x.to(dtype), (0, 0, 0, 0, 0, n * c - t))  # [B, N*C, H, X]
        return x.view(b, n, c, h, -1).permute(0, 3, 1, 2, 4).contiguous()  # [B, N, C, H, X] -> [B, H, N, C, X]

    qc, kc, vc = chunked(q), chunked(k), chunked(v)  # [B, H, N, C, F | F | V]
    q_feat, k_feat = chunk_features(qc), chunk_features(kc)  # [B, H, N, C, K] each, contiguous
    updates = k_feat.transpose(-1, -2) @ vc  # [B, H, N, K, V]: each chunk's sum phi(k_j)^T v_j
    start = torch.zeros_like(updates[:, :, 0])  # [B, H, K, V]
    if k_enc.shape[1] > 0:
        start = start + torch.einsum("bjhk,bjhv->bhkv", k_enc.to(dtype), v[:, : k_enc.shape[1]].to(dtype))
    if s0 is not None:
        start = start + s0.to(dtype)
    entering, running = [], start
    for update in updates.unbind(2):  # N adds of [B, H, K, V] (a cumsum over dim 2 of [B, H, N, K, V] is ~10x slower)
        entering.append(running)
        running = running + update
    states = torch.stack(entering, 2)  # [B, H, N, K, V]: the state entering each chunk
    scores = (qc @ kc.transpose(-1, -2)) * f ** -0.5  # [B, H, N, C, C]: s_ij
    future = torch.ones(c, c, dtype=torch.bool, device=q.device).triu(1)  # [C, C]: j > i
    scores = (1 + scores + 0.5 * scores * scores).masked_fill(future, 0.0)  # phi(q_i) . phi(k_j), causal
    o = q_feat @ states + scores @ vc  # [B, H, N, C, V]
    o = o.permute(0, 2, 3, 1, 4).reshape(b, n * c, h, -1)[:, :t]  # [B, H, N, C, V] -> [B, T, H, V]
    final = running if output_final_state else None  # [B, H, K, V]
    return o, final


@register_mixer("jrt_rnn")
class JRTRNN(Mixer):
    """Prefix linear attention: the first ``prefix_len`` tokens read non-causally, the rest causally.

    Args:
        prefix_len: M, the prompt tokens read non-causally (0: causal linear attention; longer than
            the input: the whole input is the prefix).
        feature_dim: F, the width per head of q and the keys before the Taylor map (1 + F + F^2 features).
        chunk_size: tokens per chunk of the chunked linear attention.
    """

    patterns = frozenset({"causal_self"})
    impls = ("naive", "chunk")
    recurrent = True
    paper = "Arora et al. 2024, Just read twice: closing the recall gap for recurrent language models"
    complexity = "O(T C D F^2 + T D F^2)"
    # prefix_len=0 only: a prefix is read non-causally, which the generic causality test forbids
    test_configs = ({"n_heads": 2, "feature_dim": 4, "chunk_size": 16},
                    {"n_heads": 4, "feature_dim": 8, "chunk_size": 16})

    def __init__(self, d_model: int, *, n_heads: int = 4, causal: bool = True, impl: str = "auto",
                 prefix_len: int = 0, feature_dim: int = 16, chunk_size: int = 64):
        super().__init__(d_model, n_heads=n_heads, causal=causal, impl=impl)
        name = type(self).__name__
        if not isinstance(prefix_len, int) or isinstance(prefix_len, bool) or prefix_len < 0:
            raise ValueError(f"{name}: prefix_len must be an int >= 0 (the prompt tokens read non-causally; "
                             f"0 = causal linear attention), got {prefix_len!r}")
        if not isinstance(feature_dim, int) or feature_dim < 1:
            raise ValueError(f"{name}: feature_dim must be a positive int (16 in the paper), got {feature_dim!r}")
        LINEAR_ATTN.check(name, "chunk", chunk_size=chunk_size)  # the form the chunked impl runs
        self.prefix_len = prefix_len
        self.feature_dim = feature_dim
        self.chunk_size = chunk_size
        self.q = nn.Linear(d_model, n_heads * feature_dim, bias=False)
        self.k_dec = nn.Linear(d_model, n_heads * feature_dim, bias=False)
        self.v = nn.Linear(d_model, d_model, bias=False)
        self.out = nn.Linear(d_model, d_model, bias=False)
        # the prefix's encoder keys: only with a prefix (prefix_len=0 would leave them without gradients)
        self.k_enc = nn.Linear(d_model, n_heads * feature_dim, bias=False) if prefix_len > 0 else None

    @property
    def n_features(self) -> int:
        return 1 + self.feature_dim + self.feature_dim ** 2

    def features(self, proj: nn.Linear, x: Tensor) -> Tensor:
        """``phi(proj(x))``: ``[B, T, D] -> [B, T, H, F] -> [B, T, H, 1 + F + F^2]``."""
        b, t, _ = x.shape
        return taylor_features(proj(x).view(b, t, self.n_heads, self.feature_dim))  # [B, T, H, F] -> [B, T, H, K]

    def _forward(self, x, *, context, mask, state, return_state):
        b, t, d = x.shape
        seen = 0 if state is None else state.seen
        m = min(self.prefix_len, t) if seen == 0 else 0  # the prefix, read by the forward that starts a sequence
        if self.k_enc is not None:
            k_enc = self.features(self.k_enc, x[:, :m])  # [B, M, H, K]
        else:  # no prefix: an empty one
            k_enc = x.new_zeros(b, 0, self.n_heads, self.n_features)  # [B, 0, H, K]
        v = self.v(x).view(b, t, self.n_heads, self.head_dim)  # [B, T, H, V]
        v = torch.cat([v, torch.ones_like(v[..., :1])], -1)  # [B, T, H, V + 1]: the last column sums the scores
        s0 = None if state is None else state.kv
        if self.resolve_impl(x) == "naive":
            q, k = self.features(self.q, x), self.features(self.k_dec, x)  # [B, T, H, K] each
            o, final = prefix_linear_attn_naive(q, k, v, k_enc, s0)
        else:  # the raw q, k: the chunked form builds their features itself
            q, k = (proj(x).view(b, t, self.n_heads, self.feature_dim) for proj in (self.q, self.k_dec))  # [B, T, H, F]
            o, final = prefix_linear_attn_chunk(q, k, v, k_enc, s0, output_final_state=return_state,
                                                chunk_size=self.chunk_size)
        o = o[..., :-1] / o[..., -1:]  # [B, T, H, V], normalised by the scores' sum (>= 1/2)
        y = self.out(o.to(x.dtype).reshape(b, t, d))  # [B, T, H, V] -> [B, T, D]
        return (y, JRTState(final, seen + t)) if return_state else y

    def init_state(self, batch_size: int, device: torch.device | str | None = None,
                   dtype: torch.dtype = torch.float32) -> JRTState:
        state_dtype = torch.float64 if dtype == torch.float64 else torch.float32
        kv = torch.zeros(batch_size, self.n_heads, self.n_features, self.head_dim + 1, device=device,
                         dtype=state_dtype)  # [B, H, K, V + 1]
        return JRTState(kv, 0)

    def state_size(self, seq_len: int) -> int:
        return self.n_heads * self.n_features * (self.head_dim + 1)  # kv: [H, 1 + F + F^2, V + 1]

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, prefix_len={self.prefix_len}, feature_dim={self.feature_dim}"
