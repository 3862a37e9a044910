"""Block-sparse attention by query block, shared by HiP (``hip.py``) and SEA (``sea.py``).

Keys are cut into blocks of ``L = block_size`` positions (block ``b`` = ``[bL, bL + L)``), queries into
query blocks of ``b_q = query_block`` positions (query block ``c`` = ``[c b_q, (c + 1) b_q)``, absolute
positions on the key axis, so a piece after a cache and a step see the same blocks as the whole forward).
The queries of a query block share one selection of key blocks (HiP's ``b_q``: the selection is paid once
per query block and the selected keys are gathered once per query block, ``[B, H, n_qblocks, m, L, K]``).

The selection is made by the block's **first query**, ``p0 = c b_q``, among the candidate blocks
``0 .. n - 1`` (causal: ``n = floor(p0 / L)``, the blocks finished before ``p0``'s; non-causal: every
block). The first query is the only query every member of the block may depend on: a mask chosen from
later queries would let a query's output depend on later tokens (the papers' prefill pools the block's
queries; a causal mixer cannot). Each query ``i`` then attends the selected blocks plus the *local*
blocks, those overlapping ``[p0, p0 + b_q)`` (causal: their keys up to ``i``), with exact softmax.
With ``b_q = 1`` every query selects its own blocks (the per-query rule).

A piece that starts inside a query block (a step, a prompt continued) needs the block's first query from
the earlier call: :class:`BlockCache` carries it (``lead``), so ``step`` equals ``forward``.

Selection: :func:`tree_select` (vectorised) / :func:`select_blocks_naive` (a plain loop): ``width`` nodes
splitting ``[0, n)`` evenly, the ``k`` best kept, then halved and the ``k`` best children kept until every
node is one block (HiP's Algorithm 1; SEA's compressed estimate refined to blocks). The node score is the
caller's. Attention: :func:`block_sparse_attention`, in groups of query blocks that bound memory, each group
recomputed in the backward (``torch.utils.checkpoint``) so no gathered key outlives its group.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from seqmix.core.layers import merge_heads
from seqmix.core.mixer import KVCache, check_int
from seqmix.core.mixers.softmax import KeySelectingAttention
from seqmix.kernels.common import compute_dtype

_GROUP_ELEMENTS = 1 << 22  # a group's gathered keys / scores, [B, H, g, b_q | K, m, L], at most (16 MB in fp32)

# score(rep [B, H, g, K], start [B, H, g, m], end [B, H, g, m]) -> node scores [B, H, g, m] (empty node: -inf)
NodeScore = Callable[[Tensor, Tensor, Tensor], Tensor]


class BlockCache(NamedTuple):
    """The KV cache of a block-selecting attention, plus the first query of the newest query block."""

    keys: Tensor  # [B, H, S, K]
    values: Tensor  # [B, H, S, V]
    key_mask: Tensor | None  # [B, S] bool, True = attend; None: every key
    seen: int  # tokens seen so far
    lead: Tensor  # [B, H, K]: the query at position floor((seen - 1) / b_q) b_q (zeros before any token)

    def append(self, k: Tensor, v: Tensor, mask: Tensor | None) -> BlockCache:
        kv = KVCache(self.keys, self.values, self.key_mask, self.seen).append(k, v, mask)
        return BlockCache(*kv, self.lead)


class QueryBlockLayout(NamedTuple):
    """Where the ``t`` queries (the last of ``s`` positions) fall in query blocks of ``b_q``."""

    first: int  # the first query block, c0 = (s - t) // b_q
    count: int  # query blocks, nq
    front: int  # positions of the first query block before the first query
    back: int  # positions of the last query block after the last query


def query_block_layout(t: int, s: int, query_block: int) -> QueryBlockLayout:
    first = (s - t) // query_block
    count = (s - 1) // query_block - first + 1 if t > 0 else 0
    front = s - t - first * query_block
    return QueryBlockLayout(first, count, front, count * query_block - front - t)


def pad_rows(x: Tensor, front: int, back: int) -> Tensor:
    """``x: [B, H, T, C]`` with ``front`` / ``back`` zero rows on the sequence axis (itself, no copy, when none)."""
    return x if front == back == 0 else F.pad(x, (0, 0, front, back))


def first_queries(q: Tensor, layout: QueryBlockLayout, query_block: int, lead: Tensor | None) -> Tensor:
    """The first query of each query block, ``[B, H, nq, K]``; a block begun before ``q`` takes ``lead``
    (the carried first query; without one, the first query present)."""
    qb = pad_rows(q, layout.front, layout.back).unflatten(2, (layout.count, query_block))  # [B, H, nq, b_q, K]
    reps = qb[:, :, :, 0]  # [B, H, nq, K]
    if layout.front > 0:
        head = lead if lead is not None else q[:, :, 0]  # [B, H, K]
        reps = torch.cat([head[:, :, None].to(q.dtype), reps[:, :, 1:]], 2)  # [B, H, nq, K]
    return reps


def first_nodes(n: Tensor, width: int) -> tuple[Tensor, Tensor]:
    """The ``width`` chunks that split ``[0, n)`` evenly: ``(start, end)``, each ``[..., width]`` for ``n: [...]``."""
    c = torch.arange(width + 1, device=n.device)
    bounds = c * n[..., None] // width  # [..., width + 1]
    return bounds[..., :-1], bounds[..., 1:]


def tree_select(score: NodeScore, reps: Tensor, n: Tensor, *, width: int, k: int) -> tuple[Tensor, Tensor]:
    """The hierarchical top-``k`` block selection, vectorised: ``reps: [B, H, g, K]`` first queries with
    ``n: [g]`` candidate blocks -> ``(blocks [B, H, g, k], chosen [B, H, g, k])`` (``chosen``: a real block)."""
    b, h, g = reps.shape[:3]
    start, end = (x.expand(b, h, g, width) for x in first_nodes(n, width))  # [B, H, g, W]
    r = score(reps, start, end)  # [B, H, g, W]
    if width > k:
        index = r.topk(k, -1).indices  # [B, H, g, k]
        start, end, r = start.gather(-1, index), end.gather(-1, index), r.gather(-1, index)
    while bool(((end - start) > 1).any()):
        mid = start + (end - start + 1) // 2
        c_start = torch.stack([start, mid], -1).flatten(-2)  # [B, H, g, k, 2] -> [B, H, g, 2k]
        c_end = torch.stack([mid, end], -1).flatten(-2)  # [B, H, g, 2k]
        c_r = score(reps, c_start, c_end)  # [B, H, g, 2k]
        index = c_r.topk(min(k, c_r.shape[-1]), -1).indices  # [B, H, g, k]
        start, end, r = c_start.gather(-1, index), c_end.gather(-1, index), c_r.gather(-1, index)
    return start, end > start


def select_blocks_naive(node_score: Callable[[int, int], float], n: int, *, width: int, k: int) -> list[int]:
    """The same selection for one query as a plain loop: ``node_score(start, end)`` scores the node of blocks
    ``[start, end)``; returns the kept blocks of ``0 .. n - 1``, sorted."""
    nodes = [(c * n // width, (c + 1) * n // width) for c in range(width)]
    nodes = [(s, e) for s, e in nodes if e > s]
    if len(nodes) > k:
        nodes = sorted(nodes, key=lambda node: -node_score(*node))[:k]  # stable: ties keep the earlier node
    while any(e - s > 1 for s, e in nodes):
        children = []
        for s, e in nodes:
            m = s + (e - s + 1) // 2
            children += [(s, m), (m, e)] if e > m else [(s, m)]
        children.sort(key=lambda node: -node_score(*node))
        nodes = children[:k]
    return sorted(s for s, _ in nodes)


def gather_blocks(x: Tensor, index: Tensor) -> Tensor:
    """``x: [B, H, N, ...]`` at blocks ``index: [B, H, g, m]`` -> ``[B, H, g, m, ...]`` (one ``index_select``)."""
    b, h, n = x.shape[:3]
    flat = (torch.arange(b * h, device=x.device).view(b, h, 1, 1) * n + index).flatten()  # [B H g m] into [B H N]
    return x.flatten(0, 2).index_select(0, flat).view(*index.shape, *x.shape[3:])


def _attend_group(qb: Tensor, kb: Tensor, vb: Tensor, index: Tensor, ok: Tensor) -> Tensor:
    """Query blocks ``qb: [B, H, g, b_q, K]`` over their blocks ``index: [B, H, g, m]`` of ``kb`` / ``vb``
    (``[B, H, N, L, *]``), keys allowed by ``ok: [B, H, g, b_q, m, L]`` -> ``o: [B, H, g, b_q, V]``."""
    kg = gather_blocks(kb, index).flatten(3, 4)  # [B, H, g, m, L, K] -> [B, H, g, m L, K]
    vg = gather_blocks(vb, index).flatten(3, 4)  # [B, H, g, m L, V]
    scores = qb @ kg.transpose(-1, -2) * qb.shape[-1] ** -0.5  # [B, H, g, b_q, m L]
    weights = torch.softmax(scores.masked_fill(~ok.flatten(-2), -math.inf), -1).nan_to_num(0.0)  # no key -> 0
    return weights @ vg  # [B, H, g, b_q, V]


def block_sparse_attention(q: Tensor, k: Tensor, v: Tensor, *, prepare: Callable[[Tensor, Tensor], NodeScore],
                           causal: bool, block_size: int, query_block: int, width: int, top_k: int,
                           key_mask: Tensor | None, lead: Tensor | None) -> tuple[Tensor, Tensor]:
    """Attention of ``q: [B, H, T, K]`` (the last ``T`` of ``S`` positions) over ``k: [B, H, S, K]``,
    ``v: [B, H, S, V]`` (``key_mask: [B, S] | None``), each query block over the ``top_k`` key blocks that
    :func:`tree_select` picks with the node score ``prepare(kb, token_ok)`` (``kb: [B, H, N, L, K]`` the key
    blocks, ``token_ok: [B, N, L]`` the real, unmasked keys) plus its local blocks.
    Returns ``(o: [B, H, T, V] fp32, attended keys per query: [B, H, T])``."""
    dtype = compute_dtype(q)
    q, k, v = (x.to(dtype) for x in (q, k, v))
    b, h, t, dk = q.shape
    s, size = k.shape[2], block_size
    blocks = -(-s // size)
    pad = blocks * size - s
    kb = pad_rows(k, 0, pad).unflatten(2, (blocks, size)).contiguous()  # [B, H, N, L, K], gathered from
    vb = pad_rows(v, 0, pad).unflatten(2, (blocks, size)).contiguous()  # [B, H, N, L, V]
    token_ok = torch.arange(blocks * size, device=q.device) < s  # [N L]
    if key_mask is not None:
        token_ok = token_ok & F.pad(key_mask, (0, pad))  # [B, N L]
    token_ok = token_ok.expand(b, blocks * size).unflatten(1, (blocks, size))  # [B, N, L]
    layout = query_block_layout(t, s, query_block)
    qb = pad_rows(q, layout.front, layout.back).unflatten(2, (layout.count, query_block))  # [B, H, nq, b_q, K]
    with torch.no_grad():
        reps = first_queries(q.detach(), layout, query_block, lead)  # [B, H, nq, K]
        score = prepare(kb.detach(), token_ok)
    p0 = (layout.first + torch.arange(layout.count, device=q.device)) * query_block  # [nq] first positions
    q_pos = p0[:, None] + torch.arange(query_block, device=q.device)  # [nq, b_q]
    local_first = p0 // size  # [nq]
    local_last = (q_pos[:, -1].clamp(max=s - 1)) // size  # [nq]
    n_local = int((local_last - local_first).max()) + 1 if layout.count else 1
    local = local_first[:, None] + torch.arange(n_local, device=q.device)  # [nq, n_local]
    local_valid = local <= local_last[:, None]  # [nq, n_local]
    n = local_first if causal else torch.full_like(local_first, blocks)  # [nq] candidates 0 .. n - 1
    m = top_k + n_local
    group = max(1, _GROUP_ELEMENTS // (b * h * max(m, 2 * top_k) * size * max(query_block, dk)))
    key_pos = torch.arange(blocks * size, device=q.device).view(blocks, size)  # [N, L]
    outs, counts = [], []
    for c in range(0, layout.count, group):
        sl = slice(c, c + group)
        g = qb[:, :, sl].shape[2]
        with torch.no_grad():
            chosen_blocks, chosen = tree_select(score, reps[:, :, sl], n[sl], width=width, k=top_k)  # [B, H, g, k]
            if not causal:  # a local block is attended once
                inside = (chosen_blocks >= local_first[sl, None]) & (chosen_blocks <= local_last[sl, None])
                chosen = chosen & ~inside
            index = torch.cat([chosen_blocks.clamp(max=blocks - 1),
                               local[sl].clamp(max=blocks - 1).expand(b, h, g, n_local)], -1)  # [B, H, g, m]
            valid = torch.cat([chosen, local_valid[sl].expand(b, h, g, n_local)], -1)  # [B, H, g, m]
            ok = gather_blocks(token_ok[:, None].expand(b, h, blocks, size), index)  # [B, H, g, m, L]
            ok = (ok & valid[..., None])[:, :, :, None]  # [B, H, g, 1, m, L]
            if causal:
                ok = ok & (key_pos[index][:, :, :, None] <= q_pos[sl][None, None, :, :, None, None])
            ok = ok & (q_pos[sl] < s)[None, None, :, :, None, None]  # [B, H, g, b_q, m, L]
        if torch.is_grad_enabled() and (qb.requires_grad or kb.requires_grad or vb.requires_grad):
            o = checkpoint(_attend_group, qb[:, :, sl], kb, vb, index, ok, use_reentrant=False)
        else:
            o = _attend_group(qb[:, :, sl], kb, vb, index, ok)
        outs.append(o)  # [B, H, g, b_q, V]
        counts.append(ok.flatten(-2).sum(-1))  # [B, H, g, b_q]
    o = torch.cat(outs, 2).flatten(2, 3)[:, :, layout.front: layout.front + t]  # [B, H, nq b_q, V] -> [B, H, T, V]
    count = torch.cat(counts, 2).flatten(2, 3)[:, :, layout.front: layout.front + t]  # [B, H, T]
    return o, count


class BlockSelectingAttention(KeySelectingAttention):
    """A :class:`KeySelectingAttention` whose query blocks of ``query_block`` select key blocks of
    ``block_size`` (HiP, SEA); a base, not registered. Its state is a :class:`BlockCache` (the KV cache and
    the newest query block's first query), so ``step`` equals ``forward``."""

    def __init__(self, d_model: int, *, n_heads: int, causal: bool, impl: str, rotary: bool, block_size: int,
                 query_block: int | None):
        super().__init__(d_model, n_heads=n_heads, causal=causal, impl=impl, rotary=rotary)
        name = type(self).__name__
        check_int(name, "block_size", block_size, meaning="keys per block, e.g. 16")
        query_block = block_size if query_block is None else query_block
        check_int(name, "query_block", query_block, meaning="queries sharing one selection; None: block_size")
        self.block_size = block_size
        self.query_block = query_block
        self._lead: Tensor | None = None  # the carried first query, for this call's attend_selected only

    def init_state(self, batch_size: int, device: torch.device | str | None = None,
                   dtype: torch.dtype = torch.float32, *, context: Tensor | None = None,
                   context_mask: Tensor | None = None) -> BlockCache:
        """An empty :class:`BlockCache` (self attention only: the patterns have no cross attention)."""
        self.refuse_context(context, context_mask)
        empty = torch.zeros(batch_size, self.n_heads, 0, self.head_dim, device=device, dtype=dtype)  # [B, H, 0, K]
        lead = torch.zeros(batch_size, self.n_heads, self.head_dim, device=device, dtype=dtype)  # [B, H, K]
        return BlockCache(empty, empty, None, 0, lead)

    def _forward(self, x, *, context, mask, state, return_state):
        lead = state.lead if isinstance(state, BlockCache) and state.seen > 0 else None
        q, k, v, key_mask, state = self.queries_and_keys(x, context=context, mask=mask, state=state,
                                                         return_state=return_state)
        self._lead = lead
        try:
            y = self.out(merge_heads(self.attend(q, k, v, key_mask)))  # [B, H, T, V] -> [B, T, D]
        finally:
            self._lead = None
        if not return_state:
            return y
        s, t = k.shape[2], q.shape[2]
        newest = (s - 1) // self.query_block * self.query_block  # the newest query block's first position
        if newest >= s - t:
            state = state._replace(lead=q[:, :, newest - (s - t)].to(state.lead.dtype))  # [B, H, K]
        return y, state

    def state_size(self, seq_len: int) -> int:
        return 2 * seq_len * self.d_model + self.d_model  # the KV cache and one query per head

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, block_size={self.block_size}, query_block={self.query_block}"
