"""Core Context Aware attention (CCA-Attention, "Core Context Aware Attention for Long Context
Language Modeling", Chen et al. 2024).

Two attentions fused into one. **Globality-pooling attention**: the tokens are split into
groups of ``g = group_size``; group ``j`` is merged into ONE core token, a weighted sum of its
tokens whose weights (their significance) are a softmax of each token's key against the query of
the group's last token::

    s_j   = softmax(q_last(j) K_j^T / sqrt(K))                 [g]   significance in group j
    c^k_j = s_j K_j,   c^v_j = s_j V_j                          the core key and core value

(the paper pools the token embeddings, ``c_j = s_j X_j``, and projects them; with bias-free
projections ``s_j X_j W = s_j K_j``, the same thing). **Locality-preserved attention**: each
query sees its ``w = local_window`` nearest tokens key by key. **Fusion**: one softmax over the
concatenation ``[core keys visible to the query ; local keys]``::

    o_t = softmax(q_t [C^k_vis(t) ; K_loc(t)]^T / sqrt(K)) [C^v_vis(t) ; V_loc(t)]

Which tokens a query sees, and how (the abstract gives no boundary; our choice, stated): every
key is seen exactly once, either directly or through its group's core token. A query at position
``t`` sees **directly** every token of the groups that meet its window (causal: positions
``t-w+1 .. t``; non-causal: ``t-w//2 .. t+w//2``), so the local span starts on a group boundary
and holds ``w`` to ``w+g-1`` keys; it sees every **other** group through its core token (causal:
only the groups before the window, which ended before ``t``, so a core token never leaks the
future). With ``g = 1``, or a window that covers the sequence, this is exactly softmax attention.
In the non-causal pattern a shorter last group is pooled with the query of its last token.

Implementations: ``naive`` is the formula with explicit ``[T, G + S]`` masks (fp32);
``chunk`` processes the queries group by group, each against the core tokens and the
``ceil((w-1)/g) + 1`` (causal) key groups its window can meet: ``O(T (T/g + w + g) D)``.
Decoding: the state (:class:`CCACache`) holds the core tokens of the finished groups and the raw
keys and values from the first group the newest query sees directly (its window and the running
group), so ``step`` equals ``forward``. Left out: the paper's kernel-level fusion and its
LLM fine-tuning recipe; cross attention, key masks and rotary positions.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seqmix.core.layers import QKVProjection, merge_heads
from seqmix.core.mixer import Mixer, check_int, register_mixer
from seqmix.kernels.common import compute_dtype


class CCACache(NamedTuple):
    """CCA's decoding state: core tokens of the finished groups and the raw keys that queries still see."""

    core_keys: Tensor  # [B, H, G, K] the core keys of groups 0 .. G-1 (G = seen // group_size)
    core_values: Tensor  # [B, H, G, V]
    keys: Tensor  # [B, H, R, K] raw keys of positions seen - R .. seen - 1 (seen - R is a group start)
    values: Tensor  # [B, H, R, V]
    seen: int  # tokens seen so far


def pool_groups(q_last: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    """Core tokens of ``n`` groups: ``q_last: [B, H, n, K]`` (the query of each group's last token),
    ``k: [B, H, n, m, K]``, ``v: [B, H, n, m, V]`` -> ``(core keys [B, H, n, K], core values [B, H, n, V])``,
    ``s = softmax(q_last k^T / sqrt(K))`` over the group's ``m`` tokens, ``c = s k``, ``s v``."""
    scores = torch.einsum("bhnk,bhnmk->bhnm", q_last, k) * q_last.shape[-1] ** -0.5  # [B, H, n, m]
    s = torch.softmax(scores.to(compute_dtype(scores)), -1).to(k.dtype)
    return torch.einsum("bhnm,bhnmk->bhnk", s, k), torch.einsum("bhnm,bhnmv->bhnv", s, v)


@register_mixer("cca")
class CoreContextAwareAttention(Mixer):
    """CCA-Attention: core tokens of pooled groups and a local window, in one softmax.

    Args:
        group_size: ``g``, tokens merged into one core token (>= 1; 1 with any window is softmax attention).
        local_window: ``w``, the nearest tokens each query sees key by key (>= 1; causal: the last ``w``
            positions, non-causal: ``w // 2`` on either side), widened to the group boundaries.
    """

    patterns = frozenset({"causal_self", "noncausal_self"})
    impls = ("naive", "chunk")
    paper = "Chen et al. 2024, Core Context Aware Attention for Long Context Language Modeling"
    complexity = "O(T (T/g + w + g) D)"
    test_configs = ({"n_heads": 2, "group_size": 4, "local_window": 6},)

    def __init__(self, d_model: int, *, n_heads: int = 4, causal: bool = True, impl: str = "auto",
                 group_size: int = 16, local_window: int = 64):
        super().__init__(d_model, n_heads=n_heads, causal=causal, impl=impl)
        for argument, value in (("group_size", group_size), ("local_window", local_window)):
            check_int(type(self).__name__, argument, value)
        self.group_size = group_size
        self.local_window = local_window
        self.qkv = QKVProjection(d_model, n_heads)
        self.out = nn.Linear(d_model, d_model, bias=False)

    # ------------------------------------------------------------ visibility
    def direct_groups(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """The first and last group that a query at position ``t`` sees key by key (those its window meets)."""
        g = self.group_size
        if self.causal:
            return (t - self.local_window + 1).clamp(min=0) // g, t // g
        r = self.local_window // 2
        return (t - r).clamp(min=0) // g, (t + r) // g

    def sees_key(self, t: Tensor, s: Tensor, *, start: int, end: int) -> Tensor:
        """Whether query position ``t`` sees key position ``s`` directly (broadcast); keys exist at
        positions ``start .. end-1``."""
        first, last = self.direct_groups(t)
        group = s.clamp(min=0) // self.group_size
        sees = (s >= start) & (s < end) & (group >= first) & (group <= last)
        return sees & (s <= t) if self.causal else sees

    def sees_core(self, t: Tensor, j: Tensor) -> Tensor:
        """Whether query position ``t`` sees group ``j`` through its core token (broadcast): the groups it does
        not see directly, only earlier ones when causal (they ended before its window began)."""
        first, last = self.direct_groups(t)
        return (j < first) if self.causal else (j < first) | (j > last)

    # --------------------------------------------------------------- forward
    def init_state(self, batch_size: int, device: torch.device | str | None = None,
                   dtype: torch.dtype = torch.float32, *, context: Tensor | None = None,
                   context_mask: Tensor | None = None) -> CCACache:
        """An empty :class:`CCACache` (no core token, no key)."""
        self.refuse_context(context, context_mask)
        empty = torch.zeros(batch_size, self.n_heads, 0, self.head_dim, device=device, dtype=dtype)  # [B, H, 0, K]
        return CCACache(empty, empty, empty, empty, 0)

    def _forward(self, x, *, context, mask, state, return_state):
        q, k, v = self.qkv(x)  # [B, H, T, K], [B, H, T, K], [B, H, T, V]
        (b, h, t, dk), dv, g = q.shape, v.shape[-1], self.group_size
        if self.causal:
            cache = state if state is not None else self.init_state(b, x.device, x.dtype)
            seen, start = cache.seen, cache.seen - cache.keys.shape[2]
            keys = torch.cat([cache.keys.to(k.dtype), k], 2)  # [B, H, R + T, K], positions start .. seen + T - 1
            values = torch.cat([cache.values.to(v.dtype), v], 2)  # [B, H, R + T, V]
            done, now = seen // g, (seen + t) // g  # groups finished before this piece, and after it
            q_last = q[:, :, (done + 1) * g - 1 - seen::g][:, :, :now - done]  # [B, H, n, K], each group's last query
            span = slice(done * g - start, now * g - start)  # the tokens of the groups that end in this piece
            ck, cv = pool_groups(q_last, keys[:, :, span].reshape(b, h, now - done, g, dk),  # [B, H, n, g, K]
                                 values[:, :, span].reshape(b, h, now - done, g, dv))  # [B, H, n, g, V]
            core_k = torch.cat([cache.core_keys.to(k.dtype), ck], 2)  # [B, H, now, K]
            core_v = torch.cat([cache.core_values.to(v.dtype), cv], 2)  # [B, H, now, V]
        else:
            seen, start, keys, values = 0, 0, k, v
            n, rest = divmod(t, g)
            core_k, core_v = pool_groups(q[:, :, g - 1:n * g:g], k[:, :, :n * g].reshape(b, h, n, g, dk),
                                         v[:, :, :n * g].reshape(b, h, n, g, dv))  # [B, H, n, g, K] -> [B, H, n, K]
            if rest:  # a shorter last group, pooled with the query of its last token
                ck, cv = pool_groups(q[:, :, -1:], k[:, :, None, n * g:], v[:, :, None, n * g:])  # [B, H, 1, rest, K]
                core_k, core_v = torch.cat([core_k, ck], 2), torch.cat([core_v, cv], 2)  # [B, H, n + 1, K]
        attend = self.attend_naive if self.resolve_impl(x) == "naive" else self.attend_chunk
        o = attend(q, keys, values, core_k, core_v, q_start=seen, k_start=start)  # [B, H, T, V]
        y = self.out(merge_heads(o))  # [B, H, T, V] -> [B, T, D]
        if not return_state:
            return y
        first = int(self.direct_groups(torch.tensor(seen + t - 1))[0]) * g  # the next queries see nothing before it
        kept = CCACache(core_k, core_v, keys[:, :, first - start:], values[:, :, first - start:], seen + t)
        return y, kept

    def attend_naive(self, q: Tensor, k: Tensor, v: Tensor, core_k: Tensor, core_v: Tensor, *,
                     q_start: int, k_start: int) -> Tensor:
        """The fused softmax over ``[core tokens ; keys]`` with an explicit ``[T, G + S]`` mask, in fp32.

        ``q: [B, H, T, K]`` at positions ``q_start ..``, ``k, v: [B, H, S, *]`` at ``k_start ..``,
        ``core_k, core_v: [B, H, G, *]`` of groups ``0 .. G-1`` -> ``[B, H, T, V]``.
        """
        dtype = compute_dtype(q)
        t, s, groups = q.shape[2], k.shape[2], core_k.shape[2]
        pos_q = torch.arange(q_start, q_start + t, device=q.device)[:, None]  # [T, 1]
        pos_k = torch.arange(k_start, k_start + s, device=q.device)[None]  # [1, S]
        visible = torch.cat([self.sees_core(pos_q, torch.arange(groups, device=q.device)[None]),
                             self.sees_key(pos_q, pos_k, start=k_start, end=k_start + s)], 1)  # [T, G + S]
        all_k = torch.cat([core_k, k], 2).to(dtype)  # [B, H, G + S, K]
        all_v = torch.cat([core_v, v], 2).to(dtype)  # [B, H, G + S, V]
        scores = q.to(dtype) @ all_k.transpose(-1, -2) * q.shape[-1] ** -0.5  # [B, H, T, G + S]
        weights = torch.softmax(scores.masked_fill(~visible, float("-inf")), -1)  # every query sees itself
        return (weights @ all_v).to(q.dtype)

    def attend_chunk(self, q: Tensor, k: Tensor, v: Tensor, core_k: Tensor, core_v: Tensor, *,
                     q_start: int, k_start: int) -> Tensor:
        """:meth:`attend_naive` group by group: the queries of a group against the core tokens and the key
        groups their windows can meet (``before`` groups back, ``after`` ahead), ``O(T (G + w + g))``."""
        g, (b, h, t, dk), s = self.group_size, q.shape, k.shape[2]
        reach = self.local_window - 1 if self.causal else self.local_window // 2
        before, after = math.ceil(reach / g), (0 if self.causal else math.ceil(reach / g))
        q_group0 = q_start // g
        n_q = (q_start + t - 1) // g - q_group0 + 1  # query groups
        lead = q_start - q_group0 * g
        qb = F.pad(q, (0, 0, lead, n_q * g - t - lead)).view(b, h, n_q, g, dk)  # [B, H, n_q, g, K]
        first = q_group0 - k_start // g - before  # the first key group of the first block, relative to k_start
        pad_left = max(0, -first)
        n_k = pad_left + max(math.ceil(s / g), first + n_q + before + after)  # key groups after padding
        blocks = range(first + pad_left, first + pad_left + before + after + 1)

        def local(x: Tensor) -> Tensor:  # [B, H, S, *] -> [B, H, n_q, L, *], L = (before + after + 1) g
            x = F.pad(x, (0, 0, pad_left * g, n_k * g - pad_left * g - s)).view(b, h, n_k, g, x.shape[-1])
            return torch.cat([x[:, :, o:o + n_q] for o in blocks], 3)  # [B, H, n_k, g, *] -> [B, H, n_q, L, *]

        k_loc, v_loc = local(k), local(v)  # [B, H, n_q, L, K], [B, H, n_q, L, V]
        ar = torch.arange(max(g * (before + after + 1), n_q), device=q.device)
        pos_q = ((q_group0 + ar[:n_q, None]) * g + ar[None, :g])[:, :, None]  # [n_q, g, 1]
        pos_k = ((q_group0 - before + ar[:n_q, None]) * g + ar[None, :g * (before + after + 1)])[:, None]  # [n_q, 1, L]
        sees_loc = self.sees_key(pos_q, pos_k, start=k_start, end=k_start + s)  # [n_q, g, L]
        sees_core = self.sees_core(pos_q, torch.arange(core_k.shape[2], device=q.device))  # [n_q, g, G]
        # every row sees a key (padded query rows too: each shares its group with a real key), so no 0/0 row
        scale = dk ** -0.5
        scores = torch.cat([torch.einsum("bhngk,bhck->bhngc", qb, core_k).masked_fill(~sees_core, float("-inf")),
                            (qb @ k_loc.transpose(-1, -2)).masked_fill(~sees_loc, float("-inf"))], -1) * scale
        weights = torch.softmax(scores.to(compute_dtype(scores)), -1).to(q.dtype)  # [B, H, n_q, g, G + L]
        w_core, w_loc = weights.split([core_k.shape[2], k_loc.shape[3]], -1)
        o = torch.einsum("bhngc,bhcv->bhngv", w_core, core_v) + w_loc @ v_loc  # [B, H, n_q, g, V]
        return o.reshape(b, h, n_q * g, v.shape[-1])[:, :, lead:lead + t]  # [B, H, n_q, g, V] -> [B, H, T, V]

    def state_size(self, seq_len: int) -> int:
        if seq_len <= 0:
            return 0
        kept_from = int(self.direct_groups(torch.tensor(seq_len - 1))[0]) * self.group_size
        return 2 * self.d_model * (seq_len // self.group_size + seq_len - kept_from)  # core tokens + raw keys
