"""Routing attention (Routing Transformer, Roy et al. 2021, "Efficient Content-Based Sparse Attention with
Routing Transformers").

What is implemented (the paper's sections on shared-QK routing attention, online k-means and mixed heads;
equations named, not numbered):

- **Shared, unit-normalised queries and keys**: one projection gives ``q_i = k_i = W x_i / ||W x_i||`` per
  head (l2 normalisation, no layer norm). Scores are ``sqrt(K) q_i . k_j`` (unit vectors: the
  ``sqrt(K)`` makes random pairs score with variance ~1, as ``q . k / sqrt(K)`` does for unnormalised ones).
- **Routing**: each routed head keeps ``C = n_clusters`` centroids ``mu`` (a buffer, saved in the state
  dict); token ``i`` joins the nearest one, ``c(i) = argmax_c mu_c . k_i / ||mu_c||`` (= the nearest
  centroid of unit vectors), and attends only to tokens of its own cluster:
  ``X'_i = sum_{j: c(j) = c(i), j <= i} A_ij V_j`` (non-causal: every ``j``).
- **Online k-means**: in ``train()`` each forward moves every centroid that got members by an exponential
  moving average toward their mean, ``mu_c <- d mu_c + (1 - d) mean_{i: c(i) = c} k_i`` (``d =
  centroid_decay``), under ``torch.no_grad`` after the call's assignments are made (the update never
  changes the outputs of the call that makes it, and no gradient reaches ``mu``). In ``eval()`` the
  centroids are frozen. The paper writes the update with the sum of the cluster's queries and keys,
  half weight each; with shared QK and the mean (the brief's choice) it is the line above.
- **Balanced windows** (our exact rule; the paper's is "the top-w tokens of each centroid"): the members of
  a cluster, in order of position, are cut into windows of ``w = window`` consecutive members; member
  ``m(i)`` (0 for the cluster's first token) lies in window ``m(i) // w``. A token attends to the members
  of its cluster in its own window (causal: those not after it). Every window holds ``w`` tokens (a
  cluster's last one fewer), so a sorted form costs ``O(T w)`` whatever the cluster sizes. Unlike the
  paper's top-w, every token is in exactly one window and ``m(i)`` depends only on tokens up to ``i``:
  causal (no future token decides who is routed where) and step-able. When ``w`` is at least every
  cluster's size this is exactly attention masked to same-cluster pairs.
- **Shared-QK self rule** (our rule, Reformer's): with ``q = k``, ``q_i . k_i = 1`` is the largest
  score, so a token attends to itself **only when it sees no other key** (a cluster's first token when
  causal, a window of one). Applied exactly, in both forms, so forward, step and both forms agree.
- **Mixed heads**: the first ``local_heads`` heads attend locally instead (causal: the last
  ``local_window`` positions; non-causal: ``local_window // 2`` on either side), the others are routed.

Forms: ``naive`` is dense ``[T, S]`` attention with the same-cluster, same-window (and local) masks, in
fp32; ``chunk`` gathers each routed head's tokens into cluster-sorted windows of ``w`` slots (one gather,
no ``T x T``) and each local head's queries into blocks against their neighbourhood: ``O(T (w + W) D +
T C K)``; with ``C`` and ``w`` about ``sqrt(T)`` this is the paper's ``O(T^1.5 D)``.

Decoding (eval): the state (:class:`RoutingCache`) keeps every token's key (= query), value, cluster and
member index and the members per cluster, so a new token's window is known and ``step`` equals
``forward``. ``step`` is one query against the cache in the dense form (``O(S D)``; the sorted form would
re-sort the whole cache). In ``train()`` the centroids move with every call, so steps are an eval-time
operation. ``forward`` with ``impl="chunk"`` and a carried state re-sorts the cache with the new tokens
(the cached tokens' routed rows are recomputed and dropped).

Left out: the paper's top-w selection (not causal: the future decides which past tokens a centroid keeps,
and a token may be in several windows or none), relative positions, cross attention, key masks and the
paper's TPU sparse kernels.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seqmix.core.layers import merge_heads, split_heads
from seqmix.core.mixer import Mixer, check_int, register_mixer
from seqmix.kernels.attention import visible_keys_mask
from seqmix.kernels.common import compute_dtype


class RoutingCache(NamedTuple):
    """Routing attention's decoding state: every token seen, with its routing (it grows)."""

    keys: Tensor  # [B, H, S, K] the shared, unit-normalised query/key of each token
    values: Tensor  # [B, H, S, V]
    clusters: Tensor  # [B, R, S] long: each token's cluster in each routed head
    members: Tensor  # [B, R, S] long: its index among its cluster's members, from the first token
    counts: Tensor  # [B, R, C] long: members of each cluster so far


def shared_qk_weights(scores: Tensor, visible: Tensor, is_self: Tensor) -> Tensor:
    """Softmax of ``scores`` over the ``visible`` keys other than the query itself; a query that sees no
    other key attends to itself (when visible); a query that sees nothing gets weights 0. Bool masks
    broadcast against ``scores: [..., T, S]``."""
    others = visible & ~is_self
    keep = others | (visible & is_self & ~others.any(-1, keepdim=True))  # [..., T, S]
    has_key = keep.any(-1, keepdim=True)
    scores = scores.masked_fill(~keep, float("-inf")).masked_fill(~has_key, 0.0)  # no -inf-only row: no NaN
    return torch.softmax(scores, -1) * has_key


def member_index(clusters: Tensor, counts: Tensor, n_clusters: int) -> tuple[Tensor, Tensor]:
    """``clusters: [B, R, T]`` of new tokens after ``counts: [B, R, C]`` earlier members ->
    ``(members [B, R, T]``: each token's index in its cluster, ``counts`` after the new tokens)."""
    onehot = F.one_hot(clusters, n_clusters)  # [B, R, T, C]
    running = onehot.cumsum(2) + counts[:, :, None]  # [B, R, T, C] members up to and including each token
    return running.gather(-1, clusters[..., None])[..., 0] - 1, counts + onehot.sum(2)


@register_mixer("routing")
class RoutingAttention(Mixer):
    """Routing Transformer attention: shared unit-normalised QK, online k-means routing in balanced windows,
    local heads beside routed heads.

    Args:
        n_clusters: ``C``, k-means centroids per routed head (>= 1; 1: full shared-QK attention in windows).
        window: ``w``, members of a cluster per attention window (>= 1; at least the cluster sizes: exactly
            same-cluster attention).
        local_heads: heads that attend locally (0 .. n_heads); the other ``n_heads - local_heads`` are routed.
        local_window: ``W``, the local heads' span (>= 1; causal: the last ``W`` positions, non-causal:
            ``W // 2`` on either side).
        centroid_decay: ``d`` in ``mu <- d mu + (1 - d) mean`` during training (0 <= d <= 1; 1 freezes the
            centroids).
    """

    patterns = frozenset({"causal_self", "noncausal_self"})
    impls = ("naive", "chunk")
    paper = "Roy et al. 2021, Efficient Content-Based Sparse Attention with Routing Transformers"
    complexity = "O(T (w + W) D + T C K)"
    # centroid_decay=1: the generic test runs naive then chunk on one mixer in train(); frozen centroids keep
    # the two calls' routing equal (tests/core/test_routing.py checks the moving ones)
    test_configs = ({"n_heads": 2, "local_heads": 1, "n_clusters": 3, "window": 8, "local_window": 5,
                     "centroid_decay": 1.0},)

    def __init__(self, d_model: int, *, n_heads: int = 4, causal: bool = True, impl: str = "auto",
                 n_clusters: int = 4, window: int = 64, local_heads: int = 2, local_window: int = 64,
                 centroid_decay: float = 0.999):
        super().__init__(d_model, n_heads=n_heads, causal=causal, impl=impl)
        name = type(self).__name__
        for arg, value in (("n_clusters", n_clusters), ("window", window), ("local_window", local_window)):
            check_int(name, arg, value)
        if isinstance(local_heads, bool) or not isinstance(local_heads, int) or not 0 <= local_heads <= n_heads:
            raise ValueError(f"{name}: local_heads must be an int in 0 .. n_heads={n_heads}, got {local_heads!r}")
        if isinstance(centroid_decay, bool) or not isinstance(centroid_decay, (int, float)) \
                or not 0.0 <= centroid_decay <= 1.0:
            raise ValueError(f"{name}: centroid_decay must be a float in [0, 1] (1 freezes the centroids), "
                             f"got {centroid_decay!r}")
        self.n_clusters, self.window, self.local_window = n_clusters, window, local_window
        self.local_heads, self.routed_heads = local_heads, n_heads - local_heads
        self.centroid_decay = float(centroid_decay)
        self.qk = nn.Linear(d_model, d_model, bias=False)  # queries and keys: one projection
        self.v = nn.Linear(d_model, d_model, bias=False)
        self.out = nn.Linear(d_model, d_model, bias=False)
        centroids = F.normalize(torch.randn(self.routed_heads, n_clusters, self.head_dim), dim=-1)  # [R, C, K]
        self.register_buffer("centroids", centroids)

    # --------------------------------------------------------------- routing
    def assign(self, k: Tensor) -> Tensor:
        """The nearest centroid of each routed head's unit key ``k: [B, R, T, K]`` -> ``[B, R, T]`` long."""
        mu = F.normalize(self.centroids.float(), dim=-1)  # [R, C, K]
        return torch.einsum("brtk,rck->brtc", k.float(), mu).argmax(-1)

    @torch.no_grad()
    def update_centroids(self, k: Tensor, clusters: Tensor) -> None:
        """One online k-means step: every centroid with members moves toward their mean,
        ``mu <- d mu + (1 - d) mean`` (``k: [B, R, T, K]``, ``clusters: [B, R, T]``)."""
        onehot = F.one_hot(clusters, self.n_clusters).to(self.centroids.dtype)  # [B, R, T, C]
        sums = torch.einsum("brtc,brtk->rck", onehot, k.to(self.centroids.dtype))  # [R, C, K]
        counts = onehot.sum((0, 2))[..., None]  # [R, C, 1]
        moved = self.centroid_decay * self.centroids + (1.0 - self.centroid_decay) * sums / counts.clamp(min=1)
        self.centroids.copy_(torch.where(counts > 0, moved, self.centroids))

    # --------------------------------------------------------------- forward
    def init_state(self, batch_size: int, device: torch.device | str | None = None,
                   dtype: torch.dtype = torch.float32, *, context: Tensor | None = None,
                   context_mask: Tensor | None = None) -> RoutingCache:
        """An empty :class:`RoutingCache` (no token; every cluster without members)."""
        self.refuse_context(context, context_mask)
        b, h, r = batch_size, self.n_heads, self.routed_heads
        empty = torch.zeros(b, h, 0, self.head_dim, device=device, dtype=dtype)  # [B, H, 0, K]
        routes = torch.zeros(b, r, 0, device=device, dtype=torch.long)  # [B, R, 0]
        return RoutingCache(empty, empty, routes, routes, torch.zeros(b, r, self.n_clusters, device=device,
                                                                      dtype=torch.long))

    def _forward(self, x, *, context, mask, state, return_state):
        return self.mix(x, state, return_state, self.resolve_impl(x))

    def _step(self, x_t: Tensor, state: RoutingCache) -> tuple[Tensor, RoutingCache]:
        """One query against the cache in the dense form (``O(S D)``; the sorted form would re-sort the cache)."""
        y, state = self.mix(x_t[:, None], state, True, "naive")  # [B, 1, D]
        return y[:, 0], state

    def mix(self, x: Tensor, state: RoutingCache | None, return_state: bool,
            impl: str) -> Tensor | tuple[Tensor, RoutingCache]:
        """``x: [B, T, D]`` after the tokens of ``state`` (None: none) through the form ``impl``."""
        b, t, _ = x.shape
        k = F.normalize(split_heads(self.qk(x), self.n_heads), dim=-1)  # [B, H, T, K], queries = keys
        v = split_heads(self.v(x), self.n_heads)  # [B, H, T, V]
        cache = state if state is not None else self.init_state(b, x.device, x.dtype)
        clusters = self.assign(k[:, self.local_heads:])  # [B, R, T]
        members, counts = member_index(clusters, cache.counts, self.n_clusters)
        if self.training and self.routed_heads:
            self.update_centroids(k[:, self.local_heads:], clusters)  # after the assignments: outputs unchanged
        full = RoutingCache(torch.cat([cache.keys.to(k.dtype), k], 2), torch.cat([cache.values.to(v.dtype), v], 2),
                            torch.cat([cache.clusters, clusters], 2), torch.cat([cache.members, members], 2),
                            counts)  # [B, H, S, K], [B, H, S, V], [B, R, S], [B, R, S]
        attend = self.attend_naive if impl == "naive" else self.attend_chunk
        y = self.out(merge_heads(attend(full, t).to(x.dtype)))  # [B, H, T, V] -> [B, T, D]
        return (y, full) if return_state else y

    def attend_naive(self, cache: RoutingCache, t: int) -> Tensor:
        """The last ``t`` tokens of ``cache`` (``S`` tokens) against all ``S``: dense ``[T, S]`` attention with the
        local and the same-cluster, same-window masks, in fp32 -> ``[B, H, T, V]``."""
        dtype = compute_dtype(cache.keys)
        k, v = cache.keys.to(dtype), cache.values.to(dtype)  # [B, H, S, K], [B, H, S, V]
        (b, h, s, dk), lh = k.shape, self.local_heads
        pos_k = torch.arange(s, device=k.device)
        pos_q = pos_k[s - t:, None]  # [T, 1]
        local = visible_keys_mask(t, s, causal=self.causal, window=self.local_window, device=k.device)  # [1,1,T,S]
        bucket = (cache.members // self.window) * self.n_clusters + cache.clusters  # [B, R, S] (cluster, window)
        routed = bucket[:, :, s - t:, None] == bucket[:, :, None, :]  # [B, R, T, S]
        if self.causal:
            routed = routed & (pos_k <= pos_q)
        visible = torch.cat([local.expand(b, lh, t, s), routed], 1)  # [B, H, T, S]
        scores = k[:, :, s - t:] @ k.transpose(-1, -2) * math.sqrt(dk)  # [B, H, T, S]
        return shared_qk_weights(scores, visible, pos_k == pos_q) @ v

    def attend_chunk(self, cache: RoutingCache, t: int) -> Tensor:
        """:meth:`attend_naive` without a ``T x S`` matrix: local heads in blocks, routed heads in sorted windows."""
        lh = self.local_heads
        k, v = cache.keys.to(compute_dtype(cache.keys)), cache.values.to(compute_dtype(cache.keys))
        parts = []
        if lh:
            parts.append(self.local_blocks(k[:, :lh], v[:, :lh], t))
        if self.routed_heads:
            parts.append(self.routed_windows(k[:, lh:], v[:, lh:], cache, t))
        return torch.cat(parts, 1)  # [B, H, T, V]

    def local_blocks(self, k: Tensor, v: Tensor, t: int) -> Tensor:
        """Local heads, the last ``t`` of ``k: [B, L, S, K]`` as queries: blocks of ``n = min(W, t)`` queries, each
        against the ``lo + n + hi`` positions its windows can reach -> ``[B, L, T, V]``, ``O(T W)``."""
        (b, lh, s, dk), w = k.shape, self.local_window
        n = min(w, t)
        blocks = math.ceil(t / n)
        lo, hi = (w - 1, 0) if self.causal else (w // 2, w // 2)
        q0 = s - t  # the first query's position
        start = max(q0 - lo, 0)
        front = lo - (q0 - start)  # zero keys before position 0
        back = lo + blocks * n + hi - front - (s - start)  # zero keys after position s - 1

        def windows(x: Tensor) -> Tensor:  # [B, L, S, *] -> [B, L, blocks, lo + n + hi, *]
            padded = F.pad(x[:, :, start:], (0, 0, front, back))  # [B, L, lo + blocks n + hi, *]
            return padded.unfold(2, lo + n + hi, n).transpose(-1, -2)  # [B, L, blocks, *, span] -> [.., span, *]

        pos = torch.arange(q0 - lo, q0 + blocks * n + hi, device=k.device)
        pos_k = pos.unfold(0, lo + n + hi, n)[:, None]  # [blocks, 1, span]
        pos_q = torch.arange(q0, q0 + blocks * n, device=k.device).view(blocks, n, 1)  # [blocks, n, 1]
        visible = (pos_k >= 0) & (pos_k < s)
        if self.causal:
            visible = visible & (pos_k <= pos_q) & (pos_k > pos_q - w)
        else:
            visible = visible & ((pos_k - pos_q).abs() <= w // 2)
        qb = F.pad(k[:, :, q0:], (0, 0, 0, blocks * n - t)).view(b, lh, blocks, n, dk)  # [B, L, blocks, n, K]
        scores = qb @ windows(k).transpose(-1, -2) * math.sqrt(dk)  # [B, L, blocks, n, span]
        o = shared_qk_weights(scores, visible, pos_k == pos_q) @ windows(v)  # [B, L, blocks, n, V]
        return o.reshape(b, lh, blocks * n, v.shape[-1])[:, :, :t]  # [B, L, blocks, n, V] -> [B, L, T, V]

    def routed_windows(self, k: Tensor, v: Tensor, cache: RoutingCache, t: int) -> Tensor:
        """Routed heads: every token ``k: [B, R, S, K]`` to its slot in a cluster-sorted layout (cluster ``c``
        from slot ``P_c``, a multiple of ``w``; member ``m`` at ``P_c + m``), attention within each run of ``w``
        slots, the last ``t`` tokens' rows gathered back -> ``[B, R, T, V]``, ``O(S w)``."""
        (b, r, s, dk), dv, w = k.shape, v.shape[-1], self.window
        room = (cache.counts + w - 1) // w * w  # [B, R, C] slots of each cluster, whole windows
        slot = (room.cumsum(-1) - room).gather(-1, cache.clusters) + cache.members  # [B, R, S]
        n_slots = int(room.sum(-1).max())
        token = torch.full((b, r, n_slots), s, device=k.device, dtype=torch.long)  # [B, R, L], s = empty slot
        token.scatter_(-1, slot, torch.arange(s, device=k.device).expand(b, r, s))

        def gather(x: Tensor) -> Tensor:  # [B, R, S, *] -> [B, R, L / w, w, *], zeros in empty slots
            padded = F.pad(x, (0, 0, 0, 1))  # [B, R, S + 1, *]
            slots = padded.gather(2, token[..., None].expand(-1, -1, -1, x.shape[-1]))  # [B, R, L, *]
            return slots.view(b, r, -1, w, x.shape[-1])  # [B, R, L, *] -> [B, R, L / w, w, *]

        pos = token.view(b, r, -1, w)  # [B, R, L / w, w] each slot's position (s: empty)
        pos_q, pos_k = pos[..., :, None], pos[..., None, :]  # [B, R, n, w, 1], [B, R, n, 1, w]
        visible = (pos_k < s) & (pos_q < s)
        if self.causal:
            visible = visible & (pos_k <= pos_q)
        kw = gather(k)  # [B, R, n, w, K]
        o = shared_qk_weights(kw @ kw.transpose(-1, -2) * math.sqrt(dk), visible, pos_k == pos_q) @ gather(v)
        o = o.reshape(b, r, n_slots, dv)  # [B, R, n, w, V] -> [B, R, L, V]
        return o.gather(2, slot[:, :, s - t:, None].expand(-1, -1, -1, dv))  # [B, R, T, V]

    def state_size(self, seq_len: int) -> int:
        """Keys and values (``2 D``) and a cluster and member index per routed head (``2 R``) per token, and the
        members per cluster (``R C``)."""
        return seq_len * (2 * self.d_model + 2 * self.routed_heads) + self.routed_heads * self.n_clusters
