"""Combiner-Fixed (seqmix/core/mixers/combiner.py): the expanded probabilities against the paper's
factorisation written out by a loop, full support, rows summing to 1, the span-blocked form against
``P @ V`` (outputs and gradients, fp64, relative RMS <= 1e-10), the limits where it is softmax attention,
and the argument errors. The contract (shapes, causality, pieces, step = forward, chunk = naive in fp32
at 1e-5, long inputs) is in tests/core/test_mixers_generic.py."""

from __future__ import annotations

import math

import pytest
import torch

from seqmix.core import build_mixer
from seqmix.core.mixers.combiner import combiner_attention, combiner_probabilities
from seqmix.kernels.attention import visible_keys_mask


def _qkvw(t, s=None, *, heads=2, dim=4, seed=0):
    """Random fp64 ``q: [1, H, T, K]``, ``k, v: [1, H, S, K]``, ``w: [H, K]`` (queries = the last T of S)."""
    g = torch.Generator().manual_seed(seed)
    s = t if s is None else s
    q, k, v = (torch.randn(1, heads, n, dim, generator=g, dtype=torch.float64) for n in (t, s, s))
    return q, k, v, torch.randn(heads, dim, generator=g, dtype=torch.float64)


def _loop_probabilities(q, k, w, *, span, causal):
    """``p(j|i)`` for one head (``q: [T, K]``, ``k: [S, K]``, ``w: [K]``) from the definitions, one query at a time."""
    t, s_len, scale = q.shape[0], k.shape[0], q.shape[1] ** -0.5
    spans = [list(range(r, min(r + span, s_len))) for r in range(0, s_len, span)]
    p = torch.zeros(t, s_len, dtype=q.dtype)
    for row in range(t):
        i = row + s_len - t
        c = i // span
        direct = [j for j in spans[c] if not causal or j <= i]
        summaries = [r for r in range(len(spans)) if (r < c if causal else r != c)]
        weight = {j: torch.exp(q[row] @ k[j] * scale) for j in direct}  # exp(q_i . k_j / sqrt(K))
        span_weight = {r: torch.exp(q[row] @ k[spans[r]].mean(0) * scale + math.log(len(spans[r])))
                       for r in summaries}  # exp(q_i . kbar_r / sqrt(K) + log n_r)
        z = sum(weight.values()) + sum(span_weight.values())
        for j in direct:
            p[row, j] = weight[j] / z
        for r in summaries:
            members = torch.softmax(k[spans[r]] @ w * scale, 0)  # q(j | Omega_r)
            p[row, spans[r]] = span_weight[r] / z * members
    return p


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("span", [1, 3, 4])
def test_probabilities_are_the_factorisation(causal, span):
    """The explicit matrix is the paper's p(j|i) = p(Omega_r|i) q(j|Omega_r), written out query by query."""
    t, s = (4, 10) if causal else (10, 10)  # causal: the last 4 queries of 10 keys (a KV cache's case)
    q, k, _, w = _qkvw(t, s)
    p = combiner_probabilities(q, k, w, span=span, causal=causal)
    for h in range(q.shape[1]):
        expected = _loop_probabilities(q[0, h], k[0, h], w[h], span=span, causal=causal)
        torch.testing.assert_close(p[0, h], expected, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("causal", [True, False])
def test_full_support_and_rows_sum_to_one(causal):
    """Every visible key (causal: j <= i; non-causal: all) has a non-zero probability, no other key has any."""
    q, k, _, w = _qkvw(23, dim=8)
    p = combiner_probabilities(q, k, w, span=5, causal=causal)  # [1, H, T, T]
    visible = visible_keys_mask(23, 23, causal=causal)  # [1, 1, T, T]
    assert bool(((p > 0) == visible).all()), "the support is not exactly the visible keys"
    torch.testing.assert_close(p.sum(-1), torch.ones_like(p[..., 0]), rtol=0, atol=1e-12)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("t,span", [(1, 4), (7, 1), (23, 5), (24, 4), (23, 30)])
def test_chunk_equals_p_at_v(causal, t, span, assert_rel_close):
    """The span-blocked form equals P @ V: outputs and the gradients of q, k, v and w (fp64)."""
    results = {}
    for impl in ("naive", "chunk"):
        q, k, v, w = (x.requires_grad_() for x in _qkvw(t, seed=1))
        o = combiner_attention(q, k, v, w, span=span, causal=causal, impl=impl)
        o.backward(torch.sin(torch.arange(o.numel(), dtype=o.dtype)).view_as(o))
        results[impl] = (o.detach(), q.grad, k.grad, v.grad, w.grad)
    for name, fast, ref in zip(("o", "dq", "dk", "dv", "dw"), results["chunk"], results["naive"]):
        assert_rel_close(fast, ref, 1e-10, f"causal={causal} T={t} span={span}: {name}")


@pytest.mark.parametrize("t", [1, 3, 6])
def test_chunk_equals_p_at_v_after_a_cache(t, assert_rel_close):
    """Causal queries that continue a cache (the last T of S = 17 keys, starting inside a span)."""
    q, k, v, w = _qkvw(t, 17, seed=2)
    for span in (1, 4, 5):
        o_chunk = combiner_attention(q, k, v, w, span=span, causal=True, impl="chunk")
        o_naive = combiner_attention(q, k, v, w, span=span, causal=True, impl="naive")
        assert_rel_close(o_chunk, o_naive, 1e-10, f"T={t} of S=17, span={span}")


@pytest.mark.parametrize("causal", [True, False])
def test_span_one_or_whole_sequence_is_softmax_attention(causal):
    """span = 1 (every other key is its own summary) and span >= T (one direct span) give softmax attention."""
    q, k, _, w = _qkvw(13)
    scores = (q @ k.transpose(-1, -2)) / 2.0  # [1, H, T, T], sqrt(K) = 2
    dense = torch.softmax(scores.masked_fill(~visible_keys_mask(13, 13, causal=causal), float("-inf")), -1)
    for span in (1, 13, 20):
        torch.testing.assert_close(combiner_probabilities(q, k, w, span=span, causal=causal), dense,
                                   rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("causal", [True, False])
def test_equal_keys_within_spans_give_softmax_attention(causal):
    """With one key repeated through each span (the last one partial), the log n_r of a summary makes
    Combiner's probabilities exactly softmax attention's."""
    q, k, _, w = _qkvw(14)
    k = k[:, :, torch.arange(14) // 4]  # [1, H, 14, K]: spans of 4 equal keys, the last of 2
    scores = (q @ k.transpose(-1, -2)) / 2.0  # [1, H, T, T]
    dense = torch.softmax(scores.masked_fill(~visible_keys_mask(14, 14, causal=causal), float("-inf")), -1)
    torch.testing.assert_close(combiner_probabilities(q, k, w, span=4, causal=causal), dense,
                               rtol=1e-12, atol=1e-14)


def test_mixer_learns_the_in_span_query():
    """The in-span query ``w`` gets a gradient through the summaries (it starts at 0: q uniform)."""
    mixer = build_mixer("combiner", 16, n_heads=2, span=3)
    mixer(torch.randn(1, 11, 16)).square().sum().backward()
    assert mixer.span_query.grad is not None and mixer.span_query.grad.abs().sum() > 0


@pytest.mark.parametrize("span", [0, -3, 2.5, True, "8", None])
def test_bad_span_fails_in_init(span):
    with pytest.raises(ValueError, match=r"span must be an int >= 1 .*got"):
        build_mixer("combiner", 16, n_heads=2, span=span)


def test_op_errors_name_the_problem():
    q, k, v, w = _qkvw(5)
    with pytest.raises(ValueError, match="impl='triton' is unknown; choose one of"):
        combiner_attention(q, k, v, w, span=2, causal=True, impl="triton")
    with pytest.raises(ValueError, match="non-causal self attention needs as many queries as keys"):
        combiner_attention(q[:, :, :2], k, v, w, span=2, causal=False, impl="chunk")
