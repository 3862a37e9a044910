"""ProbSparse self-attention (Zhou et al. 2021, "Informer").

Only the ``u = c * ceil(ln L_Q)`` queries with the most "spiky" score distribution get full
attention; the others ("lazy" queries) get the mean of the values. Spikiness is the
max-mean measure

    M(q_i, K) = max_j (q_i k_j^T / sqrt(d)) - mean_j (q_i k_j^T / sqrt(d))

estimated on ``U = c * ceil(ln L_K)`` keys sampled per query (with replacement), so the
selection costs ``O(L_Q U d)`` and the attention ``O(u L_K d)``.

Causal form (Informer's masked decoder self-attention, made causal honestly): a lazy query
``i`` gets the mean of ``v_0..v_i``; an active one attends to its prefix; the keys sampled
for query ``i`` are drawn among ``0..i``; and instead of one global top-u (which lets a
future query push a past one out of the top set), query ``i`` is active when its measure
ranks among the top ``u_i = min(i + 1, max(1, c * ceil(ln(i + 1))))`` of the measures of
queries ``0..i``. So ``y_{<=t}`` never depends on ``x_{>t}``. About ``c ln(L)^2 / 2`` queries
are active in expectation.

The sample is drawn from a ``torch.Generator`` seeded by ``seed`` (the same sample at every
call: deterministic, and the same for every implementation); ``seed=None`` draws a new
sample per call from torch's global generator (reproducible under ``torch.manual_seed``).
``resample_keys=True`` draws a new sample at every *training* call, as Informer's code does,
and keeps the ``seed`` sample in eval mode (like dropout: noise while training, a
deterministic function of the input when predicting).

Implementations (same selection, from :func:`probsparse_select`): ``"naive"`` computes the
full ``[L_Q, L_K]`` attention for every query and keeps the active rows; ``"sparse"``
gathers the active queries and attends only with them.

Decoding: ``step`` (and ``forward`` continuing a non-empty :class:`~seqmix.core.mixer.KVCache`)
attends fully with each new query over the cached keys, Informer's decoder behaviour for a
single token: one query is always active. So its step does **not** equal its forward over the
whole sequence, where lazy queries get the mean of the values; a prompt's first piece (an
empty cache) is ProbSparse as in ``forward``. Cross attention steps with a
:class:`~seqmix.core.mixer.ContextCache` (the context projected once in ``init_state``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from seqmix.core.layers import merge_heads
from seqmix.core.mixer import KVCache, register_mixer
from seqmix.core.mixers.softmax import CachedAttention
from seqmix.kernels.attention import attention_naive

_RANK_BLOCK_ELEMENTS = 1 << 20  # comparisons per block when ranking the causal measures (cache-sized blocks)


def _log_budget(factor: int, length: int) -> int:
    """``min(length, max(1, factor * ceil(ln length)))``: Informer's ``u`` and ``U``."""
    return min(length, max(1, factor * math.ceil(math.log(length))))


def probsparse_sample_keys(l_q: int, l_k: int, factor: int, *, causal: bool, seed: int,
                           device: torch.device | str | None = None) -> Tensor:
    """Key indices ``[L_Q, U]`` sampled with replacement for each query (shared by batch and heads).

    Causal: query ``i`` draws among its visible keys ``0..i + (L_K - L_Q)``.
    """
    n_sample = _log_budget(factor, l_k)
    generator = torch.Generator().manual_seed(seed)
    if causal:
        visible = torch.arange(l_q)[:, None] + (l_k - l_q) + 1  # [L_Q, 1] keys each query sees
        uniform = torch.rand(l_q, n_sample, generator=generator, dtype=torch.float64)  # [L_Q, U]
        index = torch.minimum((uniform * visible).long(), visible - 1)
    else:
        index = torch.randint(l_k, (l_q, n_sample), generator=generator)
    return index.to(device)


def sparsity_measure(q: Tensor, k: Tensor, key_index: Tensor) -> Tensor:
    """``M = max - mean`` of the scaled scores of each query on its sampled keys: ``[B, H, L_Q]``.

    Two ways to the same sampled scores, whichever holds the smaller intermediate: the dense
    ``[L_Q, L_K]`` score matrix (one matmul) and a gather of the sampled columns when
    ``L_K <= U * K`` (Informer's lengths: one matmul is faster than gathering the
    keys), else the sampled keys gathered ``[L_Q, U, K]`` and dotted with their query
    (long sequences: O(L log L) memory, as the paper's).
    """
    l_q, n_sample = key_index.shape
    if k.shape[-2] <= n_sample * k.shape[-1]:
        scores = q @ k.transpose(-1, -2)  # [B, H, L_Q, L_K]
        scores = scores.gather(-1, key_index.expand(*q.shape[:2], l_q, n_sample))  # [B, H, L_Q, U]
    else:
        k_sample = k[:, :, key_index]  # [B, H, L_Q, U, K]
        scores = torch.einsum("bhlk,bhluk->bhlu", q, k_sample)  # [B, H, L_Q, U]
    scores = scores * q.shape[-1] ** -0.5
    return scores.amax(-1) - scores.mean(-1)


def probsparse_select(q: Tensor, k: Tensor, factor: int, *, causal: bool, seed: int) -> Tensor:
    """Which queries are active: bool ``[B, H, L_Q]`` (no gradient flows through the choice)."""
    l_q, l_k = q.shape[-2], k.shape[-2]
    with torch.no_grad():
        measure = sparsity_measure(q, k, probsparse_sample_keys(l_q, l_k, factor, causal=causal, seed=seed,
                                                                device=q.device))
        if not causal:
            top = measure.topk(_log_budget(factor, l_q), dim=-1).indices  # [B, H, u]
            return torch.zeros_like(measure, dtype=torch.bool).scatter_(-1, top, True)
        # query i is active when fewer than u_i of the queries 0..i have a larger measure
        budget = torch.tensor([_log_budget(factor, i + 1) for i in range(l_q)], device=q.device)  # [L_Q]
        active = []
        block = max(1, _RANK_BLOCK_ELEMENTS // measure.numel())  # query rows per block: B*H*L_Q comparisons a row
        for start in range(0, l_q, block):
            rows = torch.arange(start, min(start + block, l_q), device=q.device)  # [R]
            seen = torch.arange(rows[-1] + 1, device=q.device)  # [S]
            larger = measure[..., None, : len(seen)] > measure[..., rows, None]  # [B, H, R, S]
            larger &= seen[None, :] <= rows[:, None]
            active.append(larger.sum(-1) < budget[rows])
        return torch.cat(active, -1)


def lazy_output(v: Tensor, l_q: int, *, causal: bool) -> Tensor:
    """What a lazy query gets: ``mean(V)`` (non-causal) or the mean of its prefix (causal). ``[B, H, L_Q, V]``."""
    if causal:
        count = torch.arange(1, v.shape[-2] + 1, device=v.device, dtype=v.dtype)[:, None]  # [L, 1]
        return v.cumsum(-2) / count
    return v.mean(-2, keepdim=True).expand(*v.shape[:2], l_q, v.shape[-1])


def probsparse_attention(q: Tensor, k: Tensor, v: Tensor, *, factor: int, causal: bool, seed: int,
                         impl: str = "sparse") -> Tensor:
    """ProbSparse attention ``[B, H, L_Q, K] x [B, H, L_K, K] x [B, H, L_K, V] -> [B, H, L_Q, V]``.

    ``impl``: ``"naive"`` (dense scores, active rows kept) or ``"sparse"`` (active queries gathered).
    Causal needs ``L_Q == L_K`` (self attention).
    """
    if impl not in ("naive", "sparse"):
        raise ValueError(f"probsparse_attention: impl={impl!r} is unknown; choose 'naive' or 'sparse'")
    l_q, l_k = q.shape[-2], k.shape[-2]
    if causal and l_q != l_k:
        raise ValueError(f"probsparse_attention: the causal form is self attention, L_Q == L_K; got {l_q} and {l_k}")
    active = probsparse_select(q, k, factor, causal=causal, seed=seed)  # [B, H, L_Q]
    lazy = lazy_output(v, l_q, causal=causal)  # [B, H, L_Q, V]
    if impl == "naive":
        full = attention_naive(q, k, v, causal=causal)  # [B, H, L_Q, V]
        return torch.where(active[..., None], full, lazy)
    n_top = int(active.sum(-1).max())
    order = torch.argsort((~active).to(torch.int8), dim=-1, stable=True)[..., :n_top]  # [B, H, u] active first
    valid = active.gather(-1, order)  # [B, H, u] (False where a head has fewer than u active queries)
    q_top = q.gather(2, order[..., None].expand(-1, -1, -1, q.shape[-1]))  # [B, H, u, K]
    scores = q_top @ k.transpose(-1, -2) * q.shape[-1] ** -0.5  # [B, H, u, L_K]
    if causal:
        scores = scores.masked_fill(torch.arange(l_k, device=q.device) > order[..., None], float("-inf"))
    o_top = torch.softmax(scores, dim=-1) @ v  # [B, H, u, V]
    index = order[..., None].expand(-1, -1, -1, v.shape[-1])  # [B, H, u, V]
    o_top = torch.where(valid[..., None], o_top, lazy.gather(2, index))
    return lazy.scatter(2, index, o_top)


@register_mixer("probsparse")
class ProbSparseAttention(CachedAttention):
    """Informer's ProbSparse multi-head attention (self, causal self, or cross).

    Args:
        factor: Informer's sampling factor ``c`` (>= 1): ``c * ceil(ln L)`` active queries and
            sampled keys per query.
        seed: seed of the key sample (the same sample at every call); None = a new sample per
            call from torch's global generator.
        resample_keys: a new sample (torch's global generator) at every call in training mode,
            as Informer's code; eval mode keeps the ``seed`` sample.

    ``step`` attends fully with the newest query (Informer's decoder for one token), so unlike
    the other causal mixers its step does not equal its forward (see the module docstring).
    """

    paper = "Zhou et al. 2021, Informer (ProbSparse self-attention)"
    complexity = "O(T log T D)"

    patterns = frozenset({"causal_self", "noncausal_self", "noncausal_cross"})
    impls = ("naive", "sparse")
    step_matches_forward = False  # step attends fully with the newest query (see the module docstring)
    test_configs = ({"n_heads": 2, "factor": 1}, {"n_heads": 4, "factor": 2, "seed": 7})

    def __init__(self, d_model: int, *, n_heads: int = 4, causal: bool = True, impl: str = "auto",
                 factor: int = 5, seed: int | None = 0, resample_keys: bool = False):
        super().__init__(d_model, n_heads=n_heads, causal=causal, impl=impl)
        if not isinstance(factor, int) or factor < 1:
            raise ValueError(f"ProbSparseAttention: factor must be an int >= 1 (Informer uses 5), got {factor!r}")
        if seed is not None and (not isinstance(seed, int) or seed < 0):
            raise ValueError(f"ProbSparseAttention: seed must be an int >= 0 or None (a new sample per call), "
                             f"got {seed!r}")
        if not isinstance(resample_keys, bool):
            raise ValueError(f"ProbSparseAttention: resample_keys must be true or false, got {resample_keys!r}")
        if resample_keys and seed is None:
            raise ValueError("ProbSparseAttention: resample_keys=True keeps the `seed` sample for eval mode, so it "
                             "needs an int seed; seed=None already draws a new sample at every call")
        self.factor, self.seed, self.resample_keys = factor, seed, resample_keys

    def _forward(self, x, *, context, mask, state, return_state):
        q, k, v, _, new_state = self.queries_and_keys(x, context=context, mask=None, state=state,
                                                      return_state=return_state)
        if isinstance(state, KVCache) and state.seen > 0:  # continuing a prompt: every new query is active
            o = attention_naive(q, k, v, causal=True)  # [B, H, T, V]
        else:
            fresh = self.seed is None or (self.resample_keys and self.training)
            seed = int(torch.randint(2**62, ()).item()) if fresh else self.seed
            o = probsparse_attention(q, k, v, factor=self.factor, causal=self.causal, seed=seed,
                                     impl=self.resolve_impl(x))  # [B, H, T, V]
        y = self.out(merge_heads(o))  # [B, H, T, V] -> [B, T, D]
        return (y, new_state) if return_state else y

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, factor={self.factor}, seed={self.seed}, resample_keys={self.resample_keys}"
