"""SEA (Lee et al. 2023, "SEA: Sparse Linear Attention with Estimated Attention Mask"): a linear-attention
estimate of the attention matrix picks, per query, the top-k keys; exact softmax attention runs over those.

The parameters are :class:`~seqmix.core.mixers.softmax.SoftmaxAttention`'s (this class is its subclass) plus
the estimator's projection ``estimator: [H, K, R]``. A trained softmax mixer's ``state_dict`` loads with
``strict=False``: the only missing key is ``estimator``, which keeps its initialisation (Performer's random
features, below) until :meth:`SEAAttention.estimator_loss` distils it.

What is built, per head (``q_i, k_j`` the projected, rotated query and key, ``K`` the head size):

1. the estimator's feature map, Performer's positive random features (FAVOR+) through a learned
   projection ``W = estimator[h]`` (``R`` features, initialised ``N(0, 1)``, where the estimate is
   unbiased for ``exp(q . k / sqrt(K))``)::

       phi(x) = exp(x~ W - |x~|^2 / 2),   x~ = x / K^(1/4)

2. the estimated attention row, kernel linear attention's weights (in log space, per query)::

       log A^_ij = log(phi(q_i) . phi(k_j)) - log sum_{j' visible} phi(q_i) . phi(k_j')

3. the mask: the ``top_k`` visible keys of ``A^_i`` (all visible keys when fewer), not differentiated;
4. sparse softmax attention over the mask: ``o_i = sum_{j in M_i} softmax_j(q_i . k_j / sqrt(K)) v_j``.

Distillation (:meth:`SEAAttention.estimator_loss`): ``KL(A_i || A^_i)`` between the teacher's softmax rows
(the mixer's own q/k, frozen) and the estimated rows, averaged over queries; only ``estimator`` learns.

Left out: the paper's compression of the estimate to ``T x K'`` columns by a CNN decoder and its
interpolation back to ``T x T`` (here the estimate is formed per key, ``O(T S R)`` for ``R`` features, in
groups of queries that bound memory, so the estimate is quadratic with a small constant while the exact
attention is ``O(T k D)``), the paper's per-layer ``k`` schedule, and cross attention / windows (the
patterns say so). Every query selects its own keys among those it may see, so a decoding step with the KV
cache equals the forward.

``impl="naive"``: the dense estimate, top-k, and the dense masked softmax (fp32). ``impl="chunk"`` (auto):
the same estimate and top-k in groups of queries, the kept keys gathered, never a ``T x S`` softmax.
``keys_attended`` / ``keys_visible`` count, summed over calls, the keys each query attended and could have.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from seqmix.core.mixer import check_int, register_mixer
from seqmix.core.mixers.softmax import KeySelectingAttention
from seqmix.kernels.attention import visible_keys_mask
from seqmix.kernels.common import compute_dtype

_GROUP_ELEMENTS = 1 << 22  # the chunk form's estimate [queries, keys, R] per sequence and head, at most


def sea_features(x: Tensor, estimator: Tensor) -> Tensor:
    """``log phi(x)`` of step 1: ``x: [B, H, T, K]``, ``estimator: [H, K, R]`` -> ``[B, H, T, R]``."""
    x = x * x.shape[-1] ** -0.25
    return torch.einsum("bhtk,hkr->bhtr", x, estimator.to(x.dtype)) - x.pow(2).sum(-1, keepdim=True) / 2


def sea_log_scores(fq: Tensor, fk: Tensor) -> Tensor:
    """``log(phi(q_i) . phi(k_j))`` from log-features ``fq: [B, H, T, R]``, ``fk: [B, H, S, R]`` -> ``[B, H, T, S]``.

    Each entry depends on ``q_i`` and ``k_j`` alone (a stabiliser per query and per key), so a step equals the
    forward; the row normalisation of step 2 does not change the ranking and is left to the callers that need it.
    """
    mq, mk = fq.amax(-1, keepdim=True), fk.amax(-1, keepdim=True)  # [B, H, T, 1], [B, H, S, 1]
    dots = (fq - mq).exp() @ (fk - mk).exp().transpose(-1, -2)  # [B, H, T, S], each in (0, R]
    return dots.clamp(min=torch.finfo(dots.dtype).tiny).log() + mq + mk.transpose(-1, -2)


def _top_keys(est: Tensor, visible: Tensor, top_k: int) -> tuple[Tensor, Tensor]:
    """The ``top_k`` visible keys by estimate: ``est, visible: [..., S]`` -> ``(index [..., m], kept [..., m])``."""
    m = min(top_k, est.shape[-1])
    index = est.masked_fill(~visible, -math.inf).topk(m, -1).indices  # [..., m]
    return index, visible.gather(-1, index)


def sea_attention_naive(q: Tensor, k: Tensor, v: Tensor, estimator: Tensor, *, causal: bool, top_k: int,
                        key_mask: Tensor | None) -> tuple[Tensor, Tensor]:
    """SEA by its definition: ``q: [B, H, T, K]`` (the last ``T`` of ``S`` positions), ``k: [B, H, S, K]``,
    ``v: [B, H, S, V]``, ``estimator: [H, K, R]``, ``key_mask: [B, S] | None``
    -> ``(o: [B, H, T, V] fp32, attended: [B, H, T, S] bool)``."""
    dtype = compute_dtype(q)
    q, k, v = (x.to(dtype) for x in (q, k, v))
    b, h, t, _ = q.shape
    s = k.shape[2]
    visible = visible_keys_mask(t, s, causal=causal, key_mask=key_mask, device=q.device).expand(b, h, t, s)
    with torch.no_grad():
        est = sea_log_scores(sea_features(q, estimator), sea_features(k, estimator))  # [B, H, T, S]
        index, kept = _top_keys(est, visible, top_k)  # [B, H, T, m]
        attended = torch.zeros_like(visible).scatter(-1, index, kept)  # [B, H, T, S]
    scores = torch.einsum("bhtk,bhsk->bhts", q, k) * q.shape[-1] ** -0.5  # [B, H, T, S]
    weights = torch.softmax(scores.masked_fill(~attended, -math.inf), -1).nan_to_num(0.0)  # no visible key -> 0
    return weights @ v, attended


def sea_attention_chunk(q: Tensor, k: Tensor, v: Tensor, estimator: Tensor, *, causal: bool, top_k: int,
                        key_mask: Tensor | None) -> tuple[Tensor, Tensor]:
    """The same attention in groups of queries, the kept keys gathered. Arguments as :func:`sea_attention_naive`;
    returns ``(o: [B, H, T, V] fp32, attended per query: [B, H, T])``."""
    dtype = compute_dtype(q)
    q, k, v = (x.to(dtype) for x in (q, k, v))
    b, h, t, dk = q.shape
    s = k.shape[2]
    with torch.no_grad():
        fk = sea_features(k, estimator)  # [B, H, S, R]
    group = max(1, _GROUP_ELEMENTS // (s * max(fk.shape[-1], dk)))
    outs, counts = [], []
    for start in range(0, t, group):
        stop = min(t, start + group)
        g = stop - start
        qg = q[:, :, start:stop]  # [B, H, g, K]
        pos = torch.arange(s - t + start, s - t + stop, device=q.device)[:, None]  # [g, 1] positions on the key axis
        visible = torch.arange(s, device=q.device) <= pos if causal else pos.new_ones(g, s, dtype=torch.bool)  # [g, S]
        if key_mask is not None:
            visible = visible & key_mask[:, None, None, :]  # [B, 1, g, S]
        visible = visible.expand(b, h, g, s)
        with torch.no_grad():
            est = sea_log_scores(sea_features(qg, estimator), fk)  # [B, H, g, S]
            index, kept = _top_keys(est, visible, top_k)  # [B, H, g, m]
        flat = index.flatten(2)[..., None]  # [B, H, g m, 1]
        kg = k.gather(2, flat.expand(-1, -1, -1, dk)).unflatten(2, index.shape[2:])  # [B, H, g, m, K]
        vg = v.gather(2, flat.expand(-1, -1, -1, v.shape[-1])).unflatten(2, index.shape[2:])  # [B, H, g, m, V]
        scores = torch.einsum("bhgk,bhgmk->bhgm", qg, kg) * dk ** -0.5  # [B, H, g, m]
        weights = torch.softmax(scores.masked_fill(~kept, -math.inf), -1).nan_to_num(0.0)  # [B, H, g, m]
        outs.append(torch.einsum("bhgm,bhgmv->bhgv", weights, vg))  # [B, H, g, V]
        counts.append(kept.sum(-1))
    return torch.cat(outs, 2), torch.cat(counts, 2)


@register_mixer("sea")
class SEAAttention(KeySelectingAttention):
    """Softmax attention over the top-k keys of a learned linear-attention estimate (softmax's parameters and an estimator).

    Args:
        top_k: keys each query attends, >= 1; ``top_k >=`` the sequence length is softmax attention.
        features: ``R``, the estimator's random features per head, >= 1.
        sparse: False: dense softmax attention (the same parameters); settable on a trained model.
        rotary: rotary positions on queries and keys, as :class:`SoftmaxAttention`'s.
    """

    patterns = frozenset({"causal_self", "noncausal_self"})
    impls = ("naive", "chunk")
    paper = "Lee et al. 2023, SEA: Sparse Linear Attention with Estimated Attention Mask"
    complexity = "O(T^2 R) estimate + O(T k D) attention (R features, k keys per query)"
    test_configs = ({"n_heads": 2, "top_k": 5, "features": 4},)

    def __init__(self, d_model: int, *, n_heads: int = 4, causal: bool = True, impl: str = "auto",
                 rotary: bool = False, top_k: int = 16, features: int = 32, sparse: bool = True):
        super().__init__(d_model, n_heads=n_heads, causal=causal, impl=impl, rotary=rotary)
        name = type(self).__name__
        check_int(name, "top_k", top_k, meaning="keys attended per query, e.g. 16")
        check_int(name, "features", features, meaning="the estimator's random features per head, e.g. 32")
        if not isinstance(sparse, bool):
            raise ValueError(f"{name}: sparse must be True (SEA's top-k) or False (dense softmax), got {sparse!r}")
        self.top_k = top_k
        self.sparse = sparse
        self.estimator = nn.Parameter(torch.randn(n_heads, self.head_dim, features))  # [H, K, R] Performer's init

    def selecting(self) -> bool:
        return self.sparse

    def attend_selected(self, q, k, v, key_mask):
        form = sea_attention_naive if self.resolve_impl(q) == "naive" else sea_attention_chunk
        return form(q, k, v, self.estimator, causal=self.causal, top_k=self.top_k, key_mask=key_mask)

    def estimator_loss(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """Distillation loss of the estimator on ``x: [B, T, D]`` (``mask: [B, T]`` key padding, True = keep):
        ``KL(A_i || A^_i)`` between the frozen teacher's softmax rows and the estimated rows, averaged over
        queries that see a key. Only ``estimator`` gets a gradient (the projections are the teacher)."""
        self.check_input(x, mask=mask)
        with torch.no_grad():
            q, k, _, key_mask, _ = self.queries_and_keys(x, context=None, mask=mask, state=None, return_state=False)
            q, k = q.float(), k.float()  # [B, H, T, K], [B, H, T, K]
            t = q.shape[2]
            visible = visible_keys_mask(t, t, causal=self.causal, key_mask=key_mask, device=q.device)  # [B|1,1,T,T]
            scores = q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5  # [B, H, T, T]
            teacher = torch.log_softmax(scores.masked_fill(~visible, -math.inf), -1)  # [B, H, T, T]
        est = sea_log_scores(sea_features(q, self.estimator), sea_features(k, self.estimator))  # [B, H, T, T]
        student = torch.log_softmax(est.masked_fill(~visible, -math.inf), -1)  # [B, H, T, T]
        visible = visible.expand_as(est)  # [B, H, T, T]
        terms = torch.where(visible, teacher.exp() * (teacher - student), 0.0)  # [B, H, T, T]
        rows = visible.any(-1)  # [B, H, T] queries that see a key
        return terms.sum(-1)[rows].mean()

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, top_k={self.top_k}, features={self.estimator.shape[-1]}, "
                f"sparse={self.sparse}")
