"""Landmark attention (Mohtashami & Jaggi 2023, "Landmark Attention: Random-Access Infinite
Context Length for Transformers").

The sequence is cut into blocks of ``L = block_size`` tokens; each finished block ``b`` has a
landmark key ``l_b``, and attention to a block's tokens is gated by attention to its landmark
(the paper's grouped softmax). For query ``i`` in block ``c(i) = floor(i / L)``, key ``j`` in block
``b(j)``, ``s_ij = q_i . k_j / sqrt(K)`` and ``r_ib = q_i . l_b / sqrt(K)``:

    Z_i  = sum_{j: b(j) = c(i), j <= i} exp(s_ij) + sum_{b in R_i} exp(r_ib)        (one softmax group)
    a_ij = exp(s_ij) / Z_i                                           b(j) = c(i), j <= i   (own block)
    a_ij = exp(r_ib) / Z_i * exp(s_ij) / sum_{j' in b} exp(s_ij')    b = b(j) in R_i       (earlier block)
    o_i  = sum_j a_ij v_j

The landmark's mass ``exp(r_ib) / Z_i`` is spread over block ``b``'s tokens by a softmax within
the block, so each row of ``a`` sums to 1; the landmark's own value gets weight 0, as in the paper.
Training mode (``retrieval_k=None``): ``R_i`` = every block before ``c(i)``. Retrieval mode
(``retrieval_k=k``, the paper's inference): ``R_i`` = the ``k`` blocks before ``c(i)`` with the
largest landmark scores ``r_ib`` (per query and head), and the same grouped softmax over them, so
with ``k >=`` the number of earlier blocks it is training mode exactly. A query reads its own block
and ``k`` retrieved blocks: ``O(T (T / L + k L) D)`` instead of ``O(T^2 D)``. Shared retrieval
(``shared_retrieval=True``, with ``retrieval_k``): the queries of block ``c`` use the ``R`` retrieved by the
block's first query (its landmark scores choose; each query's own scores still gate), so the ``k``
blocks are gathered once per block and read with block-by-block matrix products (the per-query form
gathers ``k L`` keys per query, which on a CPU costs more than dense attention). Not the paper's
per-token retrieval; causal, and the first query is carried in the cache so a step equals the forward.

The landmark key (a choice: in the paper the landmark is a token inserted after each block whose
hidden state carries its block's content from the earlier layers; one mixer has no such token):
``l_b = W_k (e + mean_{j in b} x_j) = W_k e + mean_{j in b} k_j``, the key projection of a learned
landmark embedding ``e`` plus the block's mean input, so it is learned and depends on the content.

Left out: landmark tokens in the residual stream, the paper's positional handling of retrieved
blocks (no positional encoding here), retrieval shared across heads, offloading the cache to
another memory; cross attention and the non-causal form (the mechanism is causal; the patterns say so).

``impl="naive"``: the dense ``T x S`` formula above, written out (fp32). ``impl="chunk"``
(auto): queries grouped by block; each group reads its own block and, through the landmark
scores, the earlier blocks (all, or the ``k`` retrieved ones, gathered per query or, shared, per
block), in groups of blocks that bound memory; in retrieval each group is recomputed in the backward
(``torch.utils.checkpoint``), so no gathered block outlives its group. Decoding carries a
:class:`LandmarkCache` (the KV cache, one landmark key per finished block, the newest block's first
query); ``blocks_read`` counts the earlier blocks whose keys and values were read.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from seqmix.core.layers import QKVProjection, merge_heads
from seqmix.core.mixer import Mixer, check_int, register_mixer
from seqmix.kernels.common import compute_dtype

_GROUP_ELEMENTS = 1 << 22  # the chunk form's [queries, blocks read, L] scores per sequence and head, at most


class LandmarkCache(NamedTuple):
    """Landmark attention's decoding state: the KV cache (it grows) and a landmark key per finished block."""

    keys: Tensor  # [B, H, S, K]
    values: Tensor  # [B, H, S, V]
    landmarks: Tensor  # [B, H, S // L, K]
    lead: Tensor  # [B, H, K]: the first query of the newest block (shared retrieval chooses with it)


def retrieve_blocks(scores: Tensor, allowed: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The ``k`` allowed blocks with the largest landmark ``scores: [..., N]`` (``allowed``: a bool mask
    broadcastable to it): ``(index [..., min(k, N)], valid [..., min(k, N)])``; a query with fewer than
    ``k`` allowed blocks gets them all, the other picks marked invalid."""
    masked = scores.detach().masked_fill(~allowed, -math.inf)  # [..., N]
    top, index = masked.topk(min(k, scores.shape[-1]), dim=-1)
    return index, top > -math.inf


def gather_blocks(x: Tensor, index: Tensor, block_size: int) -> Tensor:
    """The blocks ``index: [B, H, *, k]`` of ``x: [B, H, S, C]`` (contiguous) -> ``[B, H, *, k, L, C]``, read row
    by row from the flat rows of ``x`` (no other block is touched, nor copied)."""
    b, h, s, c = x.shape
    start = torch.arange(b * h, device=x.device).view(b, h, *[1] * (index.dim() - 2)) * s  # [B, H, 1, .., 1]
    rows = (start + index * block_size)[..., None] + torch.arange(block_size, device=x.device)  # [B, H, *, k, L]
    return x.reshape(b * h * s, c).index_select(0, rows.flatten()).view(*rows.shape, c)  # [B*H*S, C] -> [.., L, C]


def block_first_queries(q: Tensor, seq_len: int, block_size: int, lead: Tensor | None) -> Tensor:
    """For each query of ``q: [B, H, T, K]`` (the last ``T`` of ``seq_len`` positions) the first query of its block,
    ``[B, H, T, K]``; a block begun before ``q`` takes ``lead: [B, H, K]`` (without one, the first query present)."""
    t = q.shape[2]
    start = torch.arange(seq_len - t, seq_len, device=q.device) // block_size * block_size - (seq_len - t)  # [T]
    head = q[:, :, 0] if lead is None else lead.to(q.dtype)  # [B, H, K]
    q_ext = torch.cat([head[:, :, None], q], 2)  # [B, H, 1 + T, K]
    return q_ext[:, :, (start + 1).clamp(min=0)]  # [B, H, T, K]


def landmark_attention_naive(q: Tensor, k: Tensor, v: Tensor, landmarks: Tensor, *, block_size: int,
                             retrieval_k: int | None, shared: bool = False, lead: Tensor | None = None) -> Tensor:
    """The grouped-softmax formula as a dense ``[T, S]`` matrix, fp32 (fp64 for fp64).

    ``q: [B, H, T, K]`` are the last ``T`` of ``S`` positions, ``k: [B, H, S, K]``, ``v: [B, H, S, V]``,
    ``landmarks: [B, H, S // block_size, K]`` -> ``o: [B, H, T, V]`` (fp32, fp64 for fp64). ``shared``: the queries
    of a block retrieve the blocks their block's first query retrieves (``lead``: that query for a block begun
    before ``q``).
    """
    dtype = compute_dtype(q)
    q, k, v, landmarks = (x.to(dtype) for x in (q, k, v, landmarks))
    t, s, n = q.shape[2], k.shape[2], landmarks.shape[2]
    scale = q.shape[-1] ** -0.5
    pos_q = torch.arange(s - t, s, device=q.device)  # [T]
    pos_k = torch.arange(s, device=q.device)  # [S]
    own = (pos_k[None] // block_size == pos_q[:, None] // block_size) & (pos_k[None] <= pos_q[:, None])  # [T, S]
    earlier = torch.arange(n, device=q.device)[None] < (pos_q // block_size)[:, None]  # [T, N]
    s_tok = torch.einsum("bhtk,bhsk->bhts", q, k) * scale  # [B, H, T, S]
    r = torch.einsum("bhtk,bhnk->bhtn", q, landmarks) * scale  # [B, H, T, N]
    if retrieval_k is not None:
        chooser = r
        if shared:  # each query retrieves by its block's first query
            reps = block_first_queries(q, s, block_size, lead)  # [B, H, T, K]
            chooser = torch.einsum("bhtk,bhnk->bhtn", reps, landmarks) * scale  # [B, H, T, N]
        index, valid = retrieve_blocks(chooser, earlier, retrieval_k)  # [B, H, T, k]
        earlier = torch.zeros_like(r, dtype=torch.bool).scatter(-1, index, valid)  # [B, H, T, N], the set R_i
    group = torch.cat([s_tok.masked_fill(~own, -math.inf), r.masked_fill(~earlier, -math.inf)], -1)
    g = torch.softmax(group, -1)  # [B, H, T, S + N]: exp(s_ij) / Z_i and exp(r_ib) / Z_i
    within = torch.softmax(s_tok[..., : n * block_size].unflatten(-1, (n, block_size)), -1)  # [B, H, T, N, L]
    gated = (g[..., s:, None] * within).flatten(-2)  # [B, H, T, N, L] -> [B, H, T, N * L]
    a = g[..., :s] + F.pad(gated, (0, s - n * block_size))  # [B, H, T, S]
    return a @ v


def landmark_attention_chunk(q: Tensor, k: Tensor, v: Tensor, landmarks: Tensor, *, block_size: int,
                             retrieval_k: int | None, shared: bool = False,
                             lead: Tensor | None = None) -> tuple[Tensor, int]:
    """The same attention, queries grouped by block, reading each earlier block whole or (retrieval) only
    the ``k`` retrieved ones. Arguments as :func:`landmark_attention_naive`; returns ``(o: [B, H, T, V],
    blocks read by the last query)``."""
    dtype = compute_dtype(q)
    q, k, v, landmarks = (x.to(dtype) for x in (q, k, v, landmarks))
    t, dk = q.shape[2:]
    s, size = k.shape[2], block_size
    first = (s - t) // size  # the block of the first query
    front = s - t - first * size  # positions of that block before the first query
    blocks = -(-s // size) - first  # query blocks
    qb = F.pad(q, (0, 0, front, blocks * size - front - t)).unflatten(2, (blocks, size))  # [B, H, nq, L, K]
    tail = blocks * size - (s - first * size)
    kb = F.pad(k[:, :, first * size:], (0, 0, 0, tail)).unflatten(2, (blocks, size))  # [B, H, nq, L, K]
    vb = F.pad(v[:, :, first * size:], (0, 0, 0, tail)).unflatten(2, (blocks, size))  # [B, H, nq, L, V]
    if retrieval_k is None:  # scores [L, n, L] per query block
        per_block = size * size * max(1, first + blocks - 1)
    elif shared:  # gathered keys [k, L, K] and scores [L, k, L] per query block, every sequence and head
        per_block = q.shape[0] * q.shape[1] * size * max(1, min(retrieval_k, first + blocks - 1)) * max(dk, size)
    else:  # gathered keys [L, k, L, K] per query block
        per_block = size * size * max(1, min(retrieval_k, first + blocks - 1)) * dk
    reps = None
    if retrieval_k is not None and shared:  # the first query of each query block chooses its blocks
        reps = qb[:, :, :, 0]  # [B, H, nq, K]
        if front > 0:  # the first block began before q
            head = q[:, :, 0] if lead is None else lead.to(dtype)  # [B, H, K]
            reps = torch.cat([head[:, :, None], reps[:, :, 1:]], 2)  # [B, H, nq, K]
    step = max(1, _GROUP_ELEMENTS // per_block)  # query blocks per group
    outs, read = [], 0
    lean = retrieval_k is not None and torch.is_grad_enabled() and any(x.requires_grad for x in (q, k, v, landmarks))
    for c in range(0, blocks, step):
        group = (qb[:, :, c : c + step], kb[:, :, c : c + step], vb[:, :, c : c + step], k, v, landmarks,
                 None if reps is None else reps[:, :, c : c + step])
        options = dict(first_block=first + c, seq_len=s, retrieval_k=retrieval_k)
        if lean:  # the gathered blocks are recomputed in the backward, not kept: memory O(T (T / L + k L))
            o = checkpoint(_attend_group_output, *group, **options, use_reentrant=False)
            read = min(retrieval_k, first + c + min(step, blocks - c) - 1)
        else:
            o, read = _attend_group(*group, **options)
        outs.append(o)
    o = torch.cat(outs, 2).flatten(2, 3)[:, :, front : front + t]  # [B, H, nq, L, V] -> [B, H, T, V]
    return o, read


def _attend_group_output(*args, **kwargs) -> Tensor:
    return _attend_group(*args, **kwargs)[0]


def _attend_group(qg: Tensor, kg: Tensor, vg: Tensor, k: Tensor, v: Tensor, landmarks: Tensor, reps: Tensor | None,
                  *, first_block: int, seq_len: int, retrieval_k: int | None) -> tuple[Tensor, int]:
    """Queries ``qg: [B, H, g, L, K]`` of blocks ``first_block ...`` against their own blocks' keys
    ``kg`` / values ``vg`` (``[B, H, g, L, *]``) and the finished blocks of ``k``, ``v``, ``landmarks``;
    ``reps: [B, H, g, K]``: shared retrieval, each block's blocks chosen by that query (None: per query)."""
    g, size, dk = qg.shape[2:]
    scale = dk ** -0.5
    i = torch.arange(size, device=qg.device)
    block = first_block + torch.arange(g, device=qg.device)  # [g] the query blocks
    own = (i[:, None] >= i[None]) & ((block[:, None] * size + i)[:, None, :] < seq_len)  # [g, L, L]: j <= i, j < S
    s_own = (torch.einsum("bhcik,bhcjk->bhcij", qg, kg) * scale).masked_fill(~own, -math.inf)  # [B, H, g, L, L]
    n = first_block + g - 1  # finished blocks before the group's last block
    if n == 0:
        return torch.softmax(s_own, -1) @ vg, 0
    r = None  # the landmark scores of every query and block [B, H, g, L, n] (shared retrieval: only the chosen)
    if reps is None:
        r = torch.einsum("bhcik,bhnk->bhcin", qg, landmarks[:, :, :n]) * scale  # [B, H, g, L, n]
    allowed = (torch.arange(n, device=qg.device)[None] < block[:, None])[:, None]  # [g, 1, n]: b < c(i)
    if retrieval_k is None:  # every finished block
        far_k = k[:, :, : n * size].unflatten(2, (n, size))  # [B, H, S, K] -> [B, H, n, L, K], no copy
        far_v = v[:, :, : n * size].unflatten(2, (n, size))  # [B, H, n, L, V]
        s_far = torch.einsum("bhcik,bhnjk->bhcinj", qg, far_k) * scale  # [B, H, g, L, n, L]
        gate = r.masked_fill(~allowed, -math.inf)
    elif reps is not None:  # the k blocks retrieved by each query block's first query, gathered once per block
        r_rep = torch.einsum("bhck,bhnk->bhcn", reps, landmarks[:, :, :n]) * scale  # [B, H, g, n]
        index, valid = retrieve_blocks(r_rep, allowed[:, 0], retrieval_k)  # [B, H, g, k]
        far_k, far_v = gather_blocks(k, index, size), gather_blocks(v, index, size)  # [B, H, g, k, L, K]
        s_far = (qg @ far_k.flatten(3, 4).transpose(-1, -2)).unflatten(-1, (index.shape[-1], size)) * scale
        chosen = gather_blocks(landmarks, index, 1)[..., 0, :]  # [B, H, g, k, 1, K] -> [B, H, g, k, K]
        gate = (qg @ chosen.transpose(-1, -2) * scale).masked_fill(~valid[:, :, :, None], -math.inf)  # [B, H, g, L, k]
    else:  # only the k retrieved blocks
        index, valid = retrieve_blocks(r, allowed, retrieval_k)  # [B, H, g, L, k]
        far_k, far_v = gather_blocks(k, index, size), gather_blocks(v, index, size)  # [B, H, g, L, k, L, K]
        s_far = (far_k.flatten(4, 5) @ qg[..., None]).view(*index.shape, size) * scale  # [B, H, g, L, k, L]
        gate = r.gather(-1, index).masked_fill(~valid, -math.inf)  # [B, H, g, L, k]
    log_z = torch.logsumexp(torch.cat([s_own, gate], -1), -1, keepdim=True)  # [B, H, g, L, 1]
    w_far = torch.exp(gate - log_z)[..., None] * torch.softmax(s_far, -1)  # [B, H, g, L, n | k, L]
    if retrieval_k is None:
        o_far = torch.einsum("bhcinj,bhnjv->bhciv", w_far, far_v)  # [B, H, g, L, V]
    elif reps is not None:
        o_far = w_far.flatten(-2) @ far_v.flatten(3, 4)  # [B, H, g, L, k L] @ [B, H, g, k L, V]
    else:
        o_far = (w_far.flatten(-2)[..., None, :] @ far_v.flatten(4, 5))[..., 0, :]  # per query [1, k L] @ [k L, V]
    o = torch.exp(s_own - log_z) @ vg + o_far  # [B, H, g, L, V]
    return o, far_k.shape[-3]


@register_mixer("landmark")
class LandmarkAttention(Mixer):
    """Causal landmark attention with grouped softmax and top-k block retrieval.

    Args:
        block_size: ``L``, tokens per block (each finished block gets a landmark key), >= 1.
        retrieval_k: None: training mode (every earlier block, gated by its landmark); an int >= 1:
            each query reads only the ``k`` earlier blocks with the largest landmark scores
            (settable on a trained model: ``mixer.retrieval_k = 4``).
        shared_retrieval: False: every query retrieves its own blocks (the paper); True: the queries of a
            block read the blocks retrieved by the block's first query (gathered once per block: the fast form
            of retrieval on a CPU). Settable on a trained model.
    """

    patterns = frozenset({"causal_self"})
    impls = ("naive", "chunk")
    paper = "Mohtashami & Jaggi 2023, Landmark Attention: Random-Access Infinite Context Length for Transformers"
    complexity = "O(T^2 D) training; O(T (T/L + k L) D) with retrieval_k = k; O(T (T/L^2 + k L) D) shared"
    test_configs = ({"n_heads": 1, "block_size": 16}, {"n_heads": 2, "block_size": 3, "retrieval_k": 2},
                    {"n_heads": 2, "block_size": 4, "retrieval_k": 2, "shared_retrieval": True})

    def __init__(self, d_model: int, *, n_heads: int = 4, causal: bool = True, impl: str = "auto",
                 block_size: int = 64, retrieval_k: int | None = None, shared_retrieval: bool = False):
        super().__init__(d_model, n_heads=n_heads, causal=causal, impl=impl)
        check_int(type(self).__name__, "block_size", block_size, meaning="tokens per landmark block, e.g. 64")
        self.block_size = block_size
        self.retrieval_k = retrieval_k  # checked by the property
        if not isinstance(shared_retrieval, bool):
            raise ValueError(f"{type(self).__name__}: shared_retrieval must be True (a block's queries share its first "
                             f"query's blocks) or False (every query retrieves its own), got {shared_retrieval!r}")
        self.shared_retrieval = shared_retrieval
        self.qkv = QKVProjection(d_model, n_heads)
        self.landmark = nn.Parameter(torch.randn(d_model) * 0.02)  # e, the learned landmark embedding
        self.out = nn.Linear(d_model, d_model, bias=False)
        self.blocks_read = 0  # earlier blocks read (keys and values) by the newest query of each call, summed

    @property
    def retrieval_k(self) -> int | None:
        return self._retrieval_k

    @retrieval_k.setter
    def retrieval_k(self, value: int | None) -> None:
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{type(self).__name__}: retrieval_k must be an int >= 1 (earlier blocks each query "
                             f"reads) or None (training mode: every block), got {value!r}")
        self._retrieval_k = value

    def init_state(self, batch_size: int, device: torch.device | str | None = None,
                   dtype: torch.dtype = torch.float32, *, context: Tensor | None = None,
                   context_mask: Tensor | None = None) -> LandmarkCache:
        """An empty :class:`LandmarkCache` (landmark attention is self attention only)."""
        self.refuse_context(context, context_mask)
        empty = torch.zeros(batch_size, self.n_heads, 0, self.head_dim, device=device, dtype=dtype)  # [B, H, 0, K]
        lead = torch.zeros(batch_size, self.n_heads, self.head_dim, device=device, dtype=dtype)  # [B, H, K]
        return LandmarkCache(empty, empty, empty, lead)

    def landmark_keys(self, keys: Tensor, start: int, stop: int) -> Tensor:
        """``l_b = W_k e + mean_{j in b} k_j`` for the blocks ``start <= b < stop`` of ``keys: [B, H, S, K]``."""
        b, h, _, dk = keys.shape
        blocks = keys[:, :, start * self.block_size : stop * self.block_size]  # [B, H, n * L, K]
        mean = blocks.unflatten(2, (stop - start, self.block_size)).mean(3)  # [B, H, n, L, K] -> [B, H, n, K]
        return mean + self.qkv.k(self.landmark.to(keys.dtype)).view(1, h, 1, dk)  # [D] -> [1, H, 1, K]

    def _forward(self, x, *, context, mask, state, return_state):
        q, k, v = self.qkv(x)  # [B, H, T, K], [B, H, T, K], [B, H, T, V]
        if state is None:
            state = self.init_state(x.shape[0], x.device, x.dtype)
        keys = torch.cat([state.keys.to(k.dtype), k], 2)  # [B, H, S, K]
        values = torch.cat([state.values.to(v.dtype), v], 2)  # [B, H, S, V]
        done = state.landmarks.shape[2]
        landmarks = torch.cat([state.landmarks.to(k.dtype),
                               self.landmark_keys(keys, done, keys.shape[2] // self.block_size)], 2)  # [B, H, N, K]
        lead = state.lead if state.keys.shape[2] > 0 else None  # the first query of a block begun earlier
        options = dict(block_size=self.block_size, retrieval_k=self.retrieval_k, shared=self.shared_retrieval,
                       lead=lead)
        if self.resolve_impl(x) == "naive":
            o = landmark_attention_naive(q, keys, values, landmarks, **options)
            read = landmarks.shape[2]  # the dense formula reads every block
        else:
            o, read = landmark_attention_chunk(q, keys, values, landmarks, **options)
        self.blocks_read += read
        y = self.out(merge_heads(o.to(x.dtype)))  # [B, H, T, V] -> [B, T, D]
        if not return_state:
            return y
        s, t = keys.shape[2], q.shape[2]
        newest = (s - 1) // self.block_size * self.block_size  # the newest block's first position
        lead = q[:, :, newest - (s - t)] if newest >= s - t else state.lead.to(q.dtype)  # [B, H, K]
        return y, LandmarkCache(keys, values, landmarks, lead)

    def state_size(self, seq_len: int) -> int:
        return (2 * seq_len + seq_len // self.block_size + 1) * self.d_model  # KV cache, landmarks, a block's query

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, block_size={self.block_size}, retrieval_k={self.retrieval_k}, "
                f"shared_retrieval={self.shared_retrieval}")
