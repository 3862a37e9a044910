"""HiP attention (Lee et al. 2024, "HiP Attention: Sparse Sub-Quadratic Attention with Hierarchical
Attention Pruning"): a trained softmax attention, pruned at inference without retraining.

The parameters are :class:`~seqmix.core.mixers.softmax.SoftmaxAttention`'s (this class subclasses it through
:class:`~seqmix.core.mixers.key_blocks.BlockSelectingAttention`), so a trained softmax mixer's ``state_dict``
loads unchanged. Keys are cut into blocks of ``L = block_size`` tokens (block ``b`` = positions
``[bL, bL + L)``), queries into query blocks of ``b_q = query_block`` (the paper's ``b_q``; default ``L``).
A query block's selection is made by its first query ``q0`` at position ``p0`` (the only query all its
members may depend on, see ``key_blocks.py``) among the candidate blocks ``0 .. n - 1`` (causal: the
blocks finished before ``p0``'s block, ``n = floor(p0 / L)``; non-causal: every block). A block's score
is the paper's block-sparse representative score, the max over the block's tokens:

    r(b) = max_{j in block b, j unmasked} q0 . k_j / sqrt(K)

The hierarchical top-k mask selection (the paper's Algorithm 1, with the first block of a chunk as
its representative):

    nodes <- k chunks splitting [0, n) evenly              (chunk c = [floor(c n / k), floor((c + 1) n / k)))
    repeat until every node is one block:
        branch: node [s, e) -> children [s, m), [m, e) with m = s + ceil((e - s) / 2)   (a one-block node: itself)
        score:  child [s', e') scores r(s'), its first block
        select: keep the k children with the largest scores

then each query of the block attends with exact softmax the kept blocks' keys plus the local blocks
(those overlapping ``[p0, p0 + b_q)``, as the paper keeps the diagonal; causal: keys up to the query).
Per query block ``log2(n / k)`` levels of ``2k`` block scores: ``O(T k L D log(T / L) / b_q)`` for the
selection, ``O(T k L D)`` for the attention. With ``top_k >=`` the number of blocks every key is kept and
it is softmax attention exactly; ``prune=False`` (settable on a trained model) is softmax attention too.
``query_block=1``: every query selects its own blocks (the per-query rule of this module before
``b_q``). The selection is not differentiated (a mask), the attention over the kept keys is.

Differs from the paper: the paper scores a query block by the max over all its queries (during prefill
a query's mask then depends on later queries); here its first query scores, so the mixer stays causal
and a decoding step (the first query carried in a ``BlockCache``) equals the forward. Left out: sink and
sliding-window blocks of the later HiP versions, the paper's KV-cache offloading and its GPU kernels;
cross attention and windows (the patterns say so).

``impl="naive"``: every query block's selection by the loop above in plain Python, then the dense masked
softmax (fp32). ``impl="chunk"`` (auto): the selection vectorised over query blocks, the kept blocks'
keys gathered once per query block ``[B, H, n_qblocks, k + local, L, K]`` and attended with block-local
matrix products, in groups recomputed in the backward; never a ``T x S`` matrix. ``keys_attended`` /
``keys_visible`` count, summed over calls, the keys each query attended and could have attended.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from seqmix.core.mixer import check_int, register_mixer
from seqmix.core.mixers.key_blocks import (BlockSelectingAttention, NodeScore, block_sparse_attention, first_queries,
                                           gather_blocks, query_block_layout, select_blocks_naive)
from seqmix.kernels.attention import visible_keys_mask
from seqmix.kernels.common import compute_dtype


def hip_select_naive(block_scores: list[float], k: int) -> list[int]:
    """The blocks kept by the hierarchical selection for one query, written as a plain loop.

    ``block_scores[b]`` is ``r_i(b)`` for the candidate blocks ``0 .. n - 1``; returns the kept blocks.
    A node is scored by its first block.
    """
    return select_blocks_naive(lambda start, end: block_scores[start], len(block_scores), width=k, k=k)


def hip_attention_naive(q: Tensor, k: Tensor, v: Tensor, *, causal: bool, block_size: int, top_k: int,
                        key_mask: Tensor | None, query_block: int = 1,
                        lead: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """HiP attention by its definition: ``q: [B, H, T, K]`` (the last ``T`` of ``S`` positions), ``k: [B, H, S, K]``,
    ``v: [B, H, S, V]``, ``key_mask: [B, S] | None``, ``lead: [B, H, K] | None`` (the first query of a query block
    begun before ``q``) -> ``(o: [B, H, T, V] fp32, attended: [B, H, T, S] bool)``."""
    dtype = compute_dtype(q)
    q, k, v = (x.to(dtype) for x in (q, k, v))
    b, h, t, dk = q.shape
    s, size = k.shape[2], block_size
    blocks = -(-s // size)
    visible = visible_keys_mask(t, s, causal=causal, key_mask=key_mask, device=q.device).expand(b, h, t, s)
    scores = torch.einsum("bhtk,bhsk->bhts", q, k) * dk ** -0.5  # [B, H, T, S]
    layout = query_block_layout(t, s, query_block)
    reps = first_queries(q, layout, query_block, None if lead is None else lead.to(dtype))  # [B, H, nq, K]
    rep_scores = torch.einsum("bhck,bhsk->bhcs", reps, k).detach() * dk ** -0.5  # [B, H, nq, S]
    if key_mask is not None:
        rep_scores = rep_scores.masked_fill(~key_mask[:, None, None], -math.inf)
    padded = F.pad(rep_scores, (0, blocks * size - s), value=-math.inf)  # [B, H, nq, N L]
    r = padded.unflatten(-1, (blocks, size)).amax(-1).tolist()  # [B, H, nq, N] -> nested lists
    kept = torch.zeros(b, h, layout.count, blocks, dtype=torch.bool)  # [B, H, nq, N]
    for c in range(layout.count):
        p0 = (layout.first + c) * query_block
        n = p0 // size if causal else blocks
        local = range(p0 // size, min(p0 + query_block - 1, s - 1) // size + 1)  # blocks under the query block
        for bi in range(b):
            for hi in range(h):
                for block in [*hip_select_naive(r[bi][hi][c][:n], top_k), *local]:
                    kept[bi, hi, c, block] = True
    which = (torch.arange(s - t, s) // query_block - layout.first).to(q.device)  # [T] each query's block
    kept_keys = kept.to(q.device)[:, :, which].repeat_interleave(size, -1)  # [B, H, T, N] -> [B, H, T, N L]
    attended = kept_keys[..., :s] & visible  # [B, H, T, S]
    weights = torch.softmax(scores.masked_fill(~attended, -math.inf), -1).nan_to_num(0.0)  # no visible key -> 0
    return weights @ v, attended


def hip_node_scores(kb: Tensor, token_ok: Tensor) -> NodeScore:
    """HiP's node score over the key blocks ``kb: [B, H, N, L, K]`` (``token_ok: [B, N, L]``): a node scores
    ``r(first block) = max_{j in it} rep . k_j / sqrt(K)``; a block with every key masked ranks above an empty node."""
    b, h, blocks, size, dk = kb.shape
    ok = token_ok[:, None].expand(b, h, blocks, size)  # [B, H, N, L]

    def score(reps: Tensor, start: Tensor, end: Tensor) -> Tensor:
        first = start.clamp(max=blocks - 1)  # [B, H, g, m]
        r = torch.einsum("bhgk,bhgmlk->bhgml", reps, gather_blocks(kb, first)) * dk ** -0.5  # [B, H, g, m, L]
        r = r.masked_fill(~gather_blocks(ok, first), -math.inf).amax(-1).clamp(min=torch.finfo(r.dtype).min)
        return r.masked_fill(end <= start, -math.inf)  # [B, H, g, m]

    return score


def hip_attention_chunk(q: Tensor, k: Tensor, v: Tensor, *, causal: bool, block_size: int, top_k: int,
                        key_mask: Tensor | None, query_block: int = 1,
                        lead: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The same attention, the selection vectorised over query blocks and the kept blocks gathered once per
    query block. Arguments as :func:`hip_attention_naive`; returns ``(o: [B, H, T, V] fp32, attended per query:
    [B, H, T])``."""
    return block_sparse_attention(q, k, v, prepare=hip_node_scores, causal=causal, block_size=block_size,
                                  query_block=query_block, width=top_k, top_k=top_k, key_mask=key_mask, lead=lead)


@register_mixer("hip")
class HiPAttention(BlockSelectingAttention):
    """Softmax attention with HiP's hierarchical top-k block pruning (training-free; softmax's parameters).

    Args:
        block_size: ``L``, keys per block (the unit the pruning keeps), >= 1.
        top_k: blocks each query block keeps besides its local blocks, >= 1; ``top_k >=`` the number of
            blocks is softmax attention.
        query_block: ``b_q``, queries sharing one selection (made by the block's first query), >= 1;
            None: ``block_size``. 1: every query selects its own blocks.
        prune: False: dense softmax attention (the same parameters); settable on a trained model.
        rotary: rotary positions on queries and keys, as :class:`SoftmaxAttention`'s.
    """

    patterns = frozenset({"causal_self", "noncausal_self"})
    impls = ("naive", "chunk")
    paper = "Lee et al. 2024, HiP Attention: Sparse Sub-Quadratic Attention with Hierarchical Attention Pruning"
    complexity = "O(T k L D (1 + log(T / L) / b_q)) (k blocks of L kept per query block of b_q)"
    test_configs = ({"n_heads": 2, "block_size": 4, "top_k": 2}, {"n_heads": 2, "block_size": 3, "top_k": 2,
                                                                  "query_block": 1})

    def __init__(self, d_model: int, *, n_heads: int = 4, causal: bool = True, impl: str = "auto",
                 rotary: bool = False, block_size: int = 16, top_k: int = 4, query_block: int | None = None,
                 prune: bool = True):
        super().__init__(d_model, n_heads=n_heads, causal=causal, impl=impl, rotary=rotary, block_size=block_size,
                         query_block=query_block)
        name = type(self).__name__
        check_int(name, "top_k", top_k, meaning="blocks kept per query block besides its local blocks")
        if not isinstance(prune, bool):
            raise ValueError(f"{name}: prune must be True (HiP pruning) or False (dense softmax), got {prune!r}")
        self.top_k = top_k
        self.prune = prune

    def selecting(self) -> bool:
        return self.prune

    def attend_selected(self, q, k, v, key_mask):
        form = hip_attention_naive if self.resolve_impl(q) == "naive" else hip_attention_chunk
        return form(q, k, v, causal=self.causal, block_size=self.block_size, top_k=self.top_k, key_mask=key_mask,
                    query_block=self.query_block, lead=self._lead)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, top_k={self.top_k}, prune={self.prune}"
