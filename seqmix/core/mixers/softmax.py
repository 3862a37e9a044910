"""Softmax attention (SDPA fast path) and its sink-free sigmoid / ReLU variants.

Papers: Vaswani et al. 2017 (softmax); "When Attention Sink Emerges" (Gu et al. 2024) and
"Active-Dormant Attention Heads" for sigmoid and ReLU attention without normalisation
across keys, which removes the attention sink.

Blocks -> mixers: :class:`CachedAttention` holds the projections and the decoding state of
every attention mixer (a :class:`~seqmix.core.mixer.KVCache` for self attention, a
:class:`~seqmix.core.mixer.ContextCache` for cross attention; ProbSparse uses it too);
:class:`AttentionMixer` adds rotary positions and a window; the three registered classes
differ only in how scores become weights.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seqmix.core.embeddings import RotaryEmbedding
from seqmix.core.layers import QKVProjection, merge_heads, split_heads
from seqmix.core.mixer import PATTERNS, ContextCache, KVCache, Mixer, State, register_mixer
from seqmix.kernels.attention import attention_naive, visible_keys_mask


class CachedAttention(Mixer):
    """Multi-head q/k/v/o projections and where the keys come from; a base, not registered.

    Keys and values come from ``x`` (self), from ``context`` (cross), from a
    :class:`ContextCache` (cross attention stepping: the context projected once, in
    ``init_state``), or from a :class:`KVCache` with ``x``'s own appended (self attention
    carrying a state: prefill and ``step``). Subclasses say how queries meet those keys.
    """

    # rotary positions for self attention (AttentionMixer's option), set in __init__: a class-level None would
    # shadow the submodule that nn.Module keeps in _modules (the rotary of `rotary=True` would never run)
    rotary: RotaryEmbedding | None
    cache_window: int | None = None  # a causal window: the cache keeps only the last this many keys

    def __init__(self, d_model: int, *, n_heads: int, causal: bool, impl: str):
        super().__init__(d_model, n_heads=n_heads, causal=causal, impl=impl)
        self.rotary = None
        self.qkv = QKVProjection(d_model, n_heads)
        self.out = nn.Linear(d_model, d_model, bias=False)

    def init_state(self, batch_size: int, device: torch.device | str | None = None,
                   dtype: torch.dtype = torch.float32, *, context: Tensor | None = None,
                   context_mask: Tensor | None = None) -> KVCache | ContextCache:
        """An empty :class:`KVCache`, or with ``context: [B, S, D]`` its projected :class:`ContextCache`."""
        if context is None:
            if context_mask is not None:
                raise ValueError(f"{type(self).__name__}: context_mask is the key mask of a context; pass context too")
            empty = torch.zeros(batch_size, self.n_heads, 0, self.head_dim, device=device, dtype=dtype)  # [B, H, 0, K]
            return KVCache(empty, empty, None, 0)
        self.check_input(context, context=context, mask=context_mask)  # the cross pattern, the mask's shape
        if context.shape[0] != batch_size:
            raise ValueError(f"{type(self).__name__}: context has batch {context.shape[0]}, "
                             f"not batch_size={batch_size}")
        k = split_heads(self.qkv.k(context), self.n_heads)  # [B, H, S, K]
        v = split_heads(self.qkv.v(context), self.n_heads)  # [B, H, S, V]
        return ContextCache(k, v, context_mask)

    def queries_and_keys(self, x: Tensor, *, context: Tensor | None, mask: Tensor | None, state: State | None,
                         return_state: bool) -> tuple[Tensor, Tensor, Tensor, Tensor | None, State | None]:
        """``(q [B, H, T, K], k [B, H, S, K], v [B, H, S, V], key_mask [B, S] | None, state after x)``."""
        if isinstance(state, ContextCache):
            q = split_heads(self.qkv.q(x), self.n_heads)  # [B, H, T, K]
            return q, state.keys, state.values, state.key_mask, state
        q, k, v = self.qkv(x, context)  # [B, H, T, K], [B, H, S, K], [B, H, S, V]
        if context is not None:  # cross attention: no rotary (two sequences' positions are not comparable)
            return q, k, v, mask, ContextCache(k, v, mask) if return_state else None
        if state is None and not return_state:
            if self.rotary is not None:
                q, k = self.rotary(q), self.rotary(k)
            return q, k, v, mask, None
        cache = state if state is not None else self.init_state(x.shape[0], x.device, x.dtype)
        if self.rotary is not None:
            q, k = self.rotary(q, offset=cache.seen), self.rotary(k, offset=cache.seen)
        cache = cache.append(k, v, mask)
        kept = cache if self.cache_window is None else cache.last(self.cache_window)
        return q, cache.keys, cache.values, cache.key_mask, kept

    def state_size(self, seq_len: int) -> int:
        cached = seq_len if self.cache_window is None else min(seq_len, self.cache_window)
        return 2 * cached * self.d_model  # the key and value cache


def mirrored_attention(q: Tensor, k: Tensor, v: Tensor, rotary: RotaryEmbedding | None, *, prefix: int | None,
                       key_mask: Tensor | None) -> Tensor:
    """BICO's bidirectional self attention (Lv et al. 2023), the exact quadratic form: un-rotated ``q, k: [B, H, T,
    K]``, ``v: [B, H, T, V]`` -> ``[B, H, T, V]``. With ``R_p`` the rotary at position ``p`` and ``R'_p`` the mirrored
    one (sine negated, :class:`~seqmix.core.embeddings.RotaryEmbedding`)::

        s_ij = (R_i q_i) . (R_j k_j) / sqrt(K)     j <= i  (past and own key: relative offset j - i)
        s_ij = (R'_i q_i) . (R'_j k_j) / sqrt(K)   j > i   (future key: offset i - j)

    so a key at distance ``d`` scores the same on either side of the query. Query ``i`` sees key ``j`` iff
    ``j <= i`` or ``j < prefix`` (``None``: every key; a prefix LM otherwise), and ``key_mask: [B, T]`` keeps it
    (True = attend); softmax over the visible keys, a query that sees none gives 0. Without ``rotary`` both
    triangles are the plain scores."""
    t = q.shape[-2]
    if rotary is None:
        scores = torch.einsum("bhtk,bhsk->bhts", q, k)  # [B, H, T, T]
    else:
        past = torch.einsum("bhtk,bhsk->bhts", rotary(q), rotary(k))  # [B, H, T, T]
        future = torch.einsum("bhtk,bhsk->bhts", rotary(q, mirrored=True), rotary(k, mirrored=True))
        scores = torch.tril(past) + torch.triu(future, diagonal=1)
    i = torch.arange(t, device=q.device)[:, None]  # [T, 1]
    j = torch.arange(t, device=q.device)[None, :]  # [1, T]
    visible = (j <= i) | (j < (t if prefix is None else prefix))  # [T, T]
    visible = visible[None, None] if key_mask is None else visible & key_mask[:, None, None, :]  # [B|1, 1, T, T]
    scores = (scores * q.shape[-1] ** -0.5).masked_fill(~visible, float("-inf"))
    weights = torch.softmax(scores, dim=-1).nan_to_num(0.0)  # rows with no visible key -> 0
    return torch.einsum("bhts,bhsv->bhtv", weights, v)


class AttentionMixer(CachedAttention):
    """Multi-head attention over ``x`` (self) or ``context`` (cross); a base, not registered.

    ``rotary``: rotary positions on self attention's queries and keys (continuing from the
    cache when stepping). ``window``: each query sees its last ``window`` keys (causal) or
    those within ``window // 2`` (non-causal); the causal cache keeps only those.

    BICO's mode (a mode, not an argument: ``seqmix.apps.lm.bico.bidirectional`` sets it for the span of a
    ``with``): ``mirrored_bidirectional = True`` runs self attention as :func:`mirrored_attention` over the
    whole input (no state), the first ``bidirectional_prefix`` positions read both ways (``None``: all).
    """

    patterns = frozenset(PATTERNS)
    supports_mask = True
    normalizer: ClassVar[str] = "softmax"
    mirrored_bidirectional: bool = False  # BICO's mode (class docstring); softmax attention without a window only
    bidirectional_prefix: int | None = None  # in BICO's mode: positions that see the future (None: every one)

    def __init__(self, d_model: int, *, n_heads: int = 4, causal: bool = True, impl: str = "auto",
                 rotary: bool = False, window: int | None = None):
        super().__init__(d_model, n_heads=n_heads, causal=causal, impl=impl)
        if window is not None and window < 1:
            raise ValueError(f"{type(self).__name__}: window must be >= 1 or None, got {window}")
        self.rotary = RotaryEmbedding(self.head_dim) if rotary else None
        self.window = window
        self.cache_window = window if causal else None

    def _forward(self, x, *, context, mask, state, return_state):
        if self.mirrored_bidirectional:
            return self._forward_mirrored(x, context=context, mask=mask, state=state, return_state=return_state)
        q, k, v, key_mask, state = self.queries_and_keys(x, context=context, mask=mask, state=state,
                                                         return_state=return_state)
        y = self.out(merge_heads(self.attend(q, k, v, key_mask)))  # [B, H, T, V] -> [B, T, D]
        return (y, state) if return_state else y

    def _forward_mirrored(self, x, *, context, mask, state, return_state):
        name = type(self).__name__
        if context is not None or state is not None or return_state:
            raise ValueError(f"{name}: BICO's mirrored bidirectional mode is self attention over the whole input, "
                             "with no context and no state; leave the mode (bidirectional(...)) to decode or cross-attend")
        if self.normalizer != "softmax" or self.window is not None:
            raise ValueError(f"{name}: BICO's mirrored bidirectional mode is implemented for softmax attention "
                             f"without a window (normalizer {self.normalizer!r}, window {self.window}); use softmax")
        q, k, v = self.qkv(x, None)  # [B, H, T, K], [B, H, T, K], [B, H, T, V], not rotated yet
        o = mirrored_attention(q, k, v, self.rotary, prefix=self.bidirectional_prefix, key_mask=mask)
        return self.out(merge_heads(o))  # [B, H, T, V] -> [B, T, D]

    def attend(self, q: Tensor, k: Tensor, v: Tensor, key_mask: Tensor | None) -> Tensor:
        return attention_naive(q, k, v, causal=self.causal, normalizer=self.normalizer,
                               window=self.window, key_mask=key_mask)


@register_mixer("softmax")
class SoftmaxAttention(AttentionMixer):
    """Standard softmax attention; ``impl="sdpa"`` is PyTorch's fused kernel (flash on GPU).

    EchoAtt (Rajabzadeh et al. 2024, attention sharing; driven by ``MixerStack(share_attention=...)`` in
    ``core/blocks.py``): :meth:`forward_echo` gives the layer's softmax probabilities ``P = softmax(Q K^T /
    sqrt(K))`` beside its output (a *source* layer), or, once :meth:`drop_queries_and_keys` made it a *shared*
    layer, applies a source layer's ``P`` to its own values: ``y = (P (x W_v)) W_o``, with no q/k projections
    (their parameters and FLOPs are the saving). A shared layer's state is a :class:`KVCache` whose keys are
    ``[B, H, S, 0]``: it caches its values only.
    """

    impls = ("naive", "sdpa")
    paper = "Vaswani et al. 2017, Attention Is All You Need"
    complexity = "O(T^2 D)"
    test_configs = ({"n_heads": 2}, {"n_heads": 2, "rotary": True})
    shares_attention: bool = False  # True: an EchoAtt shared layer (no q/k; it applies another layer's probabilities)

    def drop_queries_and_keys(self) -> None:
        """Make this an EchoAtt shared layer: delete its q/k projections (it will only apply probabilities)."""
        self.qkv.q = None
        self.qkv.k = None
        self.rotary = None  # positions enter through the source layer's probabilities
        self.shares_attention = True

    def _refuse_shared(self) -> None:
        if self.shares_attention:
            raise ValueError(f"{type(self).__name__}: this layer shares another layer's attention (EchoAtt) and has "
                             "no q/k projections; run it inside its MixerStack (which passes the probabilities), "
                             "or build the stack without share_attention")

    def _forward(self, x, *, context, mask, state, return_state):
        self._refuse_shared()
        return super()._forward(x, context=context, mask=mask, state=state, return_state=return_state)

    def init_state(self, batch_size: int, device: torch.device | str | None = None,
                   dtype: torch.dtype = torch.float32, *, context: Tensor | None = None,
                   context_mask: Tensor | None = None) -> KVCache | ContextCache:
        """As :meth:`CachedAttention.init_state`; a shared layer's empty cache has keys ``[B, H, 0, 0]``."""
        if not self.shares_attention:
            return super().init_state(batch_size, device, dtype, context=context, context_mask=context_mask)
        self.refuse_context(context, context_mask)
        keys = torch.zeros(batch_size, self.n_heads, 0, 0, device=device, dtype=dtype)  # [B, H, 0, 0]: no keys
        values = torch.zeros(batch_size, self.n_heads, 0, self.head_dim, device=device, dtype=dtype)  # [B, H, 0, V]
        return KVCache(keys, values, None, 0)

    def state_size(self, seq_len: int) -> int:
        full = super().state_size(seq_len)
        return full // 2 if self.shares_attention else full  # a shared layer caches its values only

    def attention_probs(self, q: Tensor, k: Tensor, key_mask: Tensor | None) -> Tensor:
        """``P = softmax(q k^T / sqrt(K))`` over the visible keys: ``[B, H, T, K] x [B, H, S, K] -> [B, H, T, S]``
        (causality, window and key mask as :meth:`attend`; a query that sees no key gets a row of zeros)."""
        t, s = q.shape[-2], k.shape[-2]
        visible = visible_keys_mask(t, s, causal=self.causal, window=self.window, key_mask=key_mask,
                                    device=q.device)  # [B|1, 1, T, S]
        scores = torch.einsum("bhtk,bhsk->bhts", q, k) * q.shape[-1] ** -0.5  # [B, H, T, S]
        return torch.softmax(scores.masked_fill(~visible, float("-inf")), dim=-1).nan_to_num(0.0)

    def forward_echo(self, x: Tensor, *, probs: Tensor | None = None, mask: Tensor | None = None,
                     state: State | None = None,
                     return_state: bool = False) -> tuple[Tensor, Tensor, State | None]:
        """EchoAtt self attention over ``x: [B, T, D]``: ``(y [B, T, D], probs [B, H, T, S], state or None)``.

        ``probs=None`` (a source layer): its own probabilities, computed explicitly (no fused kernel: they are
        what the shared layers reuse). ``probs`` given (a shared layer): a source layer's probabilities over the
        same keys (``S``: its cache and ``x``), applied to this layer's values; ``mask`` is then already in them.
        """
        self.check_input(x, mask=mask, state=state, return_state=return_state)
        if probs is None:
            self._refuse_shared()
            q, k, v, key_mask, state = self.queries_and_keys(x, context=None, mask=mask, state=state,
                                                             return_state=return_state)
            probs = self.attention_probs(q, k, key_mask)  # [B, H, T, S]
        else:
            if not self.shares_attention:
                raise ValueError(f"{type(self).__name__}: got another layer's probabilities but owns q/k; call "
                                 "drop_queries_and_keys() first (MixerStack(share_attention=...) does)")
            v = split_heads(self.qkv.v(x), self.n_heads)  # [B, T, D] -> [B, H, T, V]
            if state is not None or return_state:
                cache = state if state is not None else self.init_state(x.shape[0], x.device, x.dtype)
                keys = v.new_zeros(*v.shape[:3], 0)  # [B, H, T, 0]: a shared layer keeps no keys
                cache = cache.append(keys, v, mask)
                v = cache.values  # [B, H, S, V]
                state = cache if self.cache_window is None else cache.last(self.cache_window)
            b, h, t, s = x.shape[0], self.n_heads, x.shape[1], v.shape[2]
            if tuple(probs.shape) != (b, h, t, s):
                raise ValueError(f"{type(self).__name__}: the shared probabilities are {tuple(probs.shape)} but this "
                                 f"layer has [B={b}, H={h}, T={t}, S={s}]; the source layer must see the same "
                                 "tokens, cache and n_heads")
        o = torch.einsum("bhts,bhsv->bhtv", probs.to(v.dtype), v)  # [B, H, T, V]
        y = self.out(merge_heads(o))  # [B, H, T, V] -> [B, T, D]
        return y, probs, state if (return_state or state is not None) else None

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


def count_visible_keys(b: int, t: int, s: int, *, causal: bool, key_mask: Tensor | None) -> int:
    """Keys the last ``t`` of ``s`` positions may see, summed over queries and the batch (no ``T x S`` mask)."""
    keys = torch.ones(b, s, dtype=torch.long) if key_mask is None else key_mask.long().cpu()  # [B, S]
    if not causal:
        return int(keys.sum()) * t
    return int(keys.cumsum(1)[:, s - t:].sum())  # query at position p sees the keys 0 .. p


class KeySelectingAttention(SoftmaxAttention):
    """Softmax attention in which each query attends to keys it selects (HiP's blocks, SEA's top-k): a base,
    not registered. Softmax's parameters (a trained softmax state dict loads), the selection switchable at
    inference (off: dense softmax, :meth:`selecting`), and counters over calls of the keys attended and
    the keys the queries could see (``keys_attended / keys_visible``: the fraction a benchmark reports).

    Subclasses implement ``selecting()`` and ``attend_selected(q, k, v, key_mask) -> (o, attended)``,
    ``attended`` counting the keys each query attended (summed by the counter).
    """

    def __init__(self, d_model: int, *, n_heads: int = 4, causal: bool = True, impl: str = "auto",
                 rotary: bool = False):
        super().__init__(d_model, n_heads=n_heads, causal=causal, impl=impl, rotary=rotary)
        self.keys_attended = 0  # keys attended, summed over queries, heads and calls
        self.keys_visible = 0  # keys those queries could see (causality and key mask), summed the same way

    def selecting(self) -> bool:
        raise NotImplementedError

    def attend_selected(self, q: Tensor, k: Tensor, v: Tensor, key_mask: Tensor | None) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def attend(self, q, k, v, key_mask):
        visible = count_visible_keys(q.shape[0], q.shape[-2], k.shape[-2], causal=self.causal,
                                     key_mask=key_mask) * q.shape[1]  # times the heads
        self.keys_visible += visible
        if not self.selecting():
            self.keys_attended += visible
            return super().attend(q, k, v, key_mask)
        o, attended = self.attend_selected(q, k, v, key_mask)
        self.keys_attended += int(attended.sum())
        return o.to(q.dtype)


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
