"""HiP attention (Lee et al. 2024, "HiP Attention: Sparse Sub-Quadratic Attention with Hierarchical
Attention Pruning"): a trained softmax attention, pruned at inference without retraining.

The parameters are :class:`~seqmix.core.mixers.softmax.SoftmaxAttention`'s (this class is its
subclass), so a trained softmax mixer's ``state_dict`` loads unchanged. Keys are cut into blocks of
``L = block_size`` tokens (block ``b`` = positions ``[bL, bL + L)``). For each query ``i`` at position
``p`` the candidate blocks are ``0 .. n - 1`` (causal: the finished blocks before ``p``'s own block,
``n = floor(p / L)``; non-causal: every block). The block's score against the query is the paper's
block-sparse representative score, the max over the block's tokens:

    r_i(b) = max_{j in block b, j visible} q_i . k_j / sqrt(K)

The hierarchical top-k mask selection (the paper's Algorithm 1, with the first block of a chunk as
its representative):

    nodes <- k chunks splitting [0, n) evenly              (chunk c = [floor(c n / k), floor((c + 1) n / k)))
    repeat until every node is one block:
        branch: node [s, e) -> children [s, m), [m, e) with m = s + ceil((e - s) / 2)   (a one-block node: itself)
        score:  child [s', e') scores r_i(s'), its first block
        select: keep the k children with the largest scores

then softmax attention over the kept blocks' keys plus the query's own block (always kept, as the
paper keeps the diagonal; causal: its keys up to ``p``). ``log2(n / k)`` levels of ``2k`` block scores
each: ``O(T k L log(T / L) D)``, i.e. ``O(T log T)`` for fixed ``k`` and ``L``. With
``top_k >= n`` every block is kept and it is softmax attention exactly; ``prune=False`` (settable on a
trained model) is softmax attention too. The selection is not differentiated (a mask), the attention
over the kept keys is.

Left out: query blocks sharing one mask (the paper's ``b_q``; here every query selects its own, so a
decoding step equals the forward), sink and sliding-window blocks of the later HiP versions, the
paper's KV-cache offloading and its GPU kernels; cross attention and windows (the patterns say so).

``impl="naive"``: every query's selection by the loop above in plain Python, then the dense masked
softmax (fp32). ``impl="chunk"`` (auto): the same selection vectorised over queries (in groups that
bound memory), the block keys gathered, never a ``T x S`` matrix. ``keys_attended`` /
``keys_visible`` count, summed over calls, the keys each query attended and could have attended.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from seqmix.core.mixer import check_int, register_mixer
from seqmix.core.mixers.softmax import KeySelectingAttention
from seqmix.kernels.attention import visible_keys_mask
from seqmix.kernels.common import compute_dtype

_GROUP_ELEMENTS = 1 << 22  # the chunk form's gathered keys [queries, blocks, L, K] per sequence and head, at most


def _first_nodes(n: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The ``k`` chunks that split ``[0, n)`` evenly: ``(start, end)``, each ``[..., k]`` for ``n: [...]``."""
    c = torch.arange(k + 1, device=n.device)
    bounds = c * n[..., None] // k  # [..., k + 1]
    return bounds[..., :-1], bounds[..., 1:]


def hip_select_naive(block_scores: list[float], k: int) -> list[int]:
    """The blocks kept by the hierarchical selection for one query, written as a plain loop.

    ``block_scores[b]`` is ``r_i(b)`` for the candidate blocks ``0 .. n - 1``; returns the kept blocks.
    """
    n = len(block_scores)
    nodes = [(int(c * n // k), int((c + 1) * n // k)) for c in range(k)]
    nodes = [(s, e) for s, e in nodes if e > s]
    while any(e - s > 1 for s, e in nodes):
        children = []
        for s, e in nodes:
            m = s + (e - s + 1) // 2
            children += [(s, m), (m, e)] if e > m else [(s, m)]
        children.sort(key=lambda node: -block_scores[node[0]])  # stable: ties keep the earlier block
        nodes = children[:k]
    return sorted(s for s, _ in nodes)


def hip_attention_naive(q: Tensor, k: Tensor, v: Tensor, *, causal: bool, block_size: int, top_k: int,
                        key_mask: Tensor | None) -> tuple[Tensor, Tensor]:
    """HiP attention by its definition: ``q: [B, H, T, K]`` (the last ``T`` of ``S`` positions), ``k: [B, H, S, K]``,
    ``v: [B, H, S, V]``, ``key_mask: [B, S] | None`` -> ``(o: [B, H, T, V] fp32, attended: [B, H, T, S] bool)``."""
    dtype = compute_dtype(q)
    q, k, v = (x.to(dtype) for x in (q, k, v))
    b, h, t, _ = q.shape
    s, size = k.shape[2], block_size
    blocks = -(-s // size)
    visible = visible_keys_mask(t, s, causal=causal, key_mask=key_mask, device=q.device).expand(b, h, t, s)
    scores = torch.einsum("bhtk,bhsk->bhts", q, k) * q.shape[-1] ** -0.5  # [B, H, T, S]
    padded = torch.nn.functional.pad(scores.detach().masked_fill(~visible, -math.inf), (0, blocks * size - s),
                                     value=-math.inf)  # [B, H, T, N * L]
    r = padded.unflatten(-1, (blocks, size)).amax(-1).tolist()  # [B, H, T, N] -> nested lists
    pos = torch.arange(s - t, s).tolist()
    kept = [[[[False] * blocks for _ in range(t)] for _ in range(h)] for _ in range(b)]  # [B, H, T, N]
    for bi in range(b):
        for hi in range(h):
            for i, p in enumerate(pos):
                own = p // size
                n = own if causal else blocks
                for block in hip_select_naive(r[bi][hi][i][:n], top_k) + [own]:
                    kept[bi][hi][i][block] = True
    kept_keys = torch.tensor(kept, device=q.device).repeat_interleave(size, -1)  # [B, H, T, N] -> [B, H, T, N * L]
    attended = kept_keys[..., :s] & visible  # [B, H, T, S]
    weights = torch.softmax(scores.masked_fill(~attended, -math.inf), -1).nan_to_num(0.0)  # no visible key -> 0
    return weights @ v, attended


def hip_attention_chunk(q: Tensor, k: Tensor, v: Tensor, *, causal: bool, block_size: int, top_k: int,
                        key_mask: Tensor | None) -> tuple[Tensor, Tensor]:
    """The same attention, the selection vectorised over queries and the kept blocks gathered.
    Arguments as :func:`hip_attention_naive`; returns ``(o: [B, H, T, V] fp32, attended per query: [B, H, T])``."""
    dtype = compute_dtype(q)
    q, k, v = (x.to(dtype) for x in (q, k, v))
    b, h, t, dk = q.shape
    s, size = k.shape[2], block_size
    blocks = -(-s // size)
    pad = blocks * size - s
    kb = torch.nn.functional.pad(k, (0, 0, 0, pad)).unflatten(2, (blocks, size))  # [B, H, N, L, K]
    vb = torch.nn.functional.pad(v, (0, 0, 0, pad)).unflatten(2, (blocks, size))  # [B, H, N, L, V]
    token_ok = torch.arange(blocks * size, device=q.device) < s  # [N * L]
    token_ok = token_ok if key_mask is None else token_ok & torch.nn.functional.pad(key_mask, (0, pad))  # [B|, NL]
    token_ok = token_ok.expand(b, blocks * size).unflatten(1, (blocks, size))  # [B, N, L]
    group = max(1, _GROUP_ELEMENTS // (2 * (top_k + 1) * size * dk))
    outs, counts = [], []
    for start in range(0, t, group):
        stop = min(t, start + group)
        pos = torch.arange(s - t + start, s - t + stop, device=q.device)  # [g] positions on the key axis
        o, count = _attend_group(q[:, :, start:stop], kb, vb, token_ok, pos, causal=causal, top_k=top_k)
        outs.append(o)
        counts.append(count)
    return torch.cat(outs, 2), torch.cat(counts, 2)


def _gather(x: Tensor, index: Tensor) -> Tensor:
    """``x: [B, H, N, ...]`` at block ``index: [B, H, g, m]`` -> ``[B, H, g, m, ...]`` (one ``index_select``)."""
    b, h, n = x.shape[:3]
    flat = (torch.arange(b * h, device=x.device).view(b, h, 1, 1) * n + index).flatten()  # [B H g m] into [B H N]
    return x.flatten(0, 2).index_select(0, flat).view(*index.shape, *x.shape[3:])


def _attend_group(q: Tensor, kb: Tensor, vb: Tensor, token_ok: Tensor, pos: Tensor, *, causal: bool,
                  top_k: int) -> tuple[Tensor, Tensor]:
    """Queries ``q: [B, H, g, K]`` at key positions ``pos: [g]`` against the blocks ``kb``/``vb``
    (``[B, H, N, L, *]``, tokens allowed by ``token_ok: [B, N, L]``) -> ``(o [B, H, g, V], attended [B, H, g])``."""
    b, h, g, dk = q.shape
    blocks, size = kb.shape[2], kb.shape[3]
    scale = dk ** -0.5
    own = pos // size  # [g]
    n = own if causal else torch.full_like(own, blocks)  # [g] candidate blocks 0 .. n - 1
    token_ok = token_ok[:, None].expand(b, h, blocks, size)  # [B, H, N, L]
    key_pos = torch.arange(blocks * size, device=q.device).view(blocks, size)  # [N, L]

    def allowed(index: Tensor) -> Tensor:  # [B, H, g, m] -> [B, H, g, m, L]: tokens query may see in those blocks
        ok = _gather(token_ok, index)
        return ok & (key_pos[index] <= pos[:, None, None]) if causal else ok

    def score(start: Tensor, end: Tensor) -> Tensor:  # nodes [B, H, g, m] -> r_i(first block) [B, H, g, m]
        first = start.clamp(max=blocks - 1)
        r = torch.einsum("bhgk,bhgmlk->bhgml", q.detach(), _gather(kb, first).detach()) * scale  # [B, H, g, m, L]
        r = r.masked_fill(~allowed(first), -math.inf).amax(-1).clamp(min=torch.finfo(r.dtype).min)
        return r.masked_fill(end <= start, -math.inf)  # a block with every key masked > an empty node

    start, end = (x.expand(b, h, g, top_k) for x in _first_nodes(n, top_k))  # [B, H, g, k]
    r = score(start, end)
    while bool(((end - start) > 1).any()):
        mid = start + (end - start + 1) // 2
        c_start = torch.stack([start, mid], -1).flatten(-2)  # [B, H, g, k, 2] -> [B, H, g, 2k]
        c_end = torch.stack([mid, end], -1).flatten(-2)  # [B, H, g, 2k]
        c_r = torch.stack([r.masked_fill(mid <= start, -math.inf), score(mid, end)], -1).flatten(-2)  # left: parent's
        index = c_r.topk(top_k, -1).indices  # [B, H, g, k]
        start, end, r = c_start.gather(-1, index), c_end.gather(-1, index), c_r.gather(-1, index)
    chosen = (end > start) & (start != own[:, None])  # [B, H, g, k]: a real block, not the own block twice
    index = torch.cat([start.clamp(max=blocks - 1), own[:, None].expand(b, h, g, 1)], -1)  # [B, H, g, k + 1]
    ok = allowed(index) & torch.cat([chosen, chosen.new_ones(b, h, g, 1)], -1)[..., None]  # [B, H, g, k + 1, L]
    scores = torch.einsum("bhgk,bhgmlk->bhgml", q, _gather(kb, index)) * scale  # [B, H, g, k + 1, L]
    weights = torch.softmax(scores.masked_fill(~ok, -math.inf).flatten(-2), -1).nan_to_num(0.0)  # [B, H, g, (k+1) L]
    o = torch.einsum("bhgm,bhgmv->bhgv", weights, _gather(vb, index).flatten(3, 4))  # [B, H, g, (k+1) L, V] -> o
    return o, ok.flatten(-2).sum(-1)


@register_mixer("hip")
class HiPAttention(KeySelectingAttention):
    """Softmax attention with HiP's hierarchical top-k block pruning (training-free; softmax's parameters).

    Args:
        block_size: ``L``, keys per block (the unit the pruning keeps), >= 1.
        top_k: blocks each query keeps besides its own block, >= 1; ``top_k >=`` the number of blocks is
            softmax attention.
        prune: False: dense softmax attention (the same parameters); settable on a trained model.
        rotary: rotary positions on queries and keys, as :class:`SoftmaxAttention`'s.
    """

    patterns = frozenset({"causal_self", "noncausal_self"})
    impls = ("naive", "chunk")
    paper = "Lee et al. 2024, HiP Attention: Sparse Sub-Quadratic Attention with Hierarchical Attention Pruning"
    complexity = "O(T k L log(T / L) D) (k blocks of L kept per query)"
    test_configs = ({"n_heads": 2, "block_size": 4, "top_k": 2},)

    def __init__(self, d_model: int, *, n_heads: int = 4, causal: bool = True, impl: str = "auto",
                 rotary: bool = False, block_size: int = 16, top_k: int = 4, prune: bool = True):
        super().__init__(d_model, n_heads=n_heads, causal=causal, impl=impl, rotary=rotary)
        name = type(self).__name__
        check_int(name, "block_size", block_size, meaning="keys per block, e.g. 16")
        check_int(name, "top_k", top_k, meaning="blocks kept per query besides its own")
        if not isinstance(prune, bool):
            raise ValueError(f"{name}: prune must be True (HiP pruning) or False (dense softmax), got {prune!r}")
        self.block_size = block_size
        self.top_k = top_k
        self.prune = prune

    def selecting(self) -> bool:
        return self.prune

    def attend_selected(self, q, k, v, key_mask):
        form = hip_attention_naive if self.resolve_impl(q) == "naive" else hip_attention_chunk
        return form(q, k, v, causal=self.causal, block_size=self.block_size, top_k=self.top_k, key_mask=key_mask)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, block_size={self.block_size}, top_k={self.top_k}, prune={self.prune}"
