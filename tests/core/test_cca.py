"""CCA-Attention (``cca``): reductions to softmax attention, no future leak through core tokens, every key seen
once, the core token's formula, the bounded decoding cache, argument errors. Tolerances: relative RMS 1e-5 (fp32).

The generic contract (shapes, causality, pieces = whole = step, chunk = naive with gradients) is in
tests/core/test_mixers_generic.py.
"""

from __future__ import annotations

import pytest
import torch

from seqmix.core.mixers.cca import CoreContextAwareAttention, pool_groups
from seqmix.core.mixers.softmax import SoftmaxAttention

D = 16


def _cca(causal=True, group_size=3, local_window=5, seed=0):
    torch.manual_seed(seed)
    return CoreContextAwareAttention(D, n_heads=2, causal=causal, group_size=group_size, local_window=local_window)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("group_size,local_window", [(1, 64), (1, 3), (4, 64)])
def test_equals_softmax_when_every_key_is_seen_as_itself(causal, group_size, local_window, assert_rel_close):
    """Group size 1 (a core token is its token) or a window over the whole sequence: softmax attention."""
    cca = _cca(causal, group_size, local_window)
    softmax = SoftmaxAttention(D, n_heads=2, causal=causal)
    softmax.load_state_dict(cca.state_dict())  # the same q/k/v/o projections (QKVProjection)
    x = torch.randn(2, 21, D)
    for impl in ("naive", "chunk"):
        cca.impl = impl
        with torch.no_grad():
            y, expected = cca(x), softmax(x)
        assert_rel_close(y, expected, 1e-5, f"causal={causal} g={group_size} w={local_window} {impl}")


def test_pooling_differs_from_softmax():
    """With groups and a short window the result is not softmax attention (the core tokens matter)."""
    cca = _cca(group_size=3, local_window=2)
    softmax = SoftmaxAttention(D, n_heads=2)
    softmax.load_state_dict(cca.state_dict())
    x = torch.randn(1, 12, D)
    assert (cca(x) - softmax(x)).abs().max() > 1e-3


@pytest.mark.parametrize("impl", ["naive", "chunk"])
def test_no_future_leak_through_core_tokens(impl):
    """dy[t]/dx[s] = 0 for s > t; and a token far outside the window still reaches y[t], through its core token."""
    cca = _cca(group_size=3, local_window=2)
    cca.impl = impl
    t = 13
    x = torch.randn(1, t, D, requires_grad=True)
    y = cca(x)
    for i in range(t):
        (grad,) = torch.autograd.grad(y[0, i].sum(), x, retain_graph=True)
        per_token = grad[0].abs().sum(-1)  # [T]
        assert (per_token[i + 1:] == 0).all(), f"y[{i}] depends on a future token: {per_token.tolist()}"
        assert (per_token[: i + 1] > 0).all(), f"y[{i}] ignores a past token: {per_token.tolist()}"


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("group_size,local_window", [(3, 5), (4, 2), (2, 7), (5, 1)])
def test_every_key_seen_exactly_once(causal, group_size, local_window):
    """Each query sees each (visible) key's group either key by key or through its core token, never both,
    never neither; causal: a core token only of a group that ended before the query."""
    cca = _cca(causal, group_size, local_window)
    t = 17
    n_groups = -(-t // group_size)
    pos_q = torch.arange(t)[:, None]  # [T, 1]
    direct = cca.sees_key(pos_q, torch.arange(t)[None], start=0, end=t)  # [T, T]
    core = cca.sees_core(pos_q, torch.arange(n_groups)[None])  # [T, G]
    via_core = core[:, torch.arange(t) // group_size]  # [T, T]: key s seen through its group's core token
    allowed = torch.ones(t, t, dtype=torch.bool).tril() if causal else torch.ones(t, t, dtype=torch.bool)
    assert not (direct & via_core).any(), "a key counted twice"
    assert torch.equal(direct | via_core, allowed), "a visible key not seen (or a future one seen)"
    if causal:
        group_end = (torch.arange(n_groups) + 1) * group_size - 1  # [G]
        assert not (core & (group_end[None] >= pos_q)).any(), "a core token seen before its group ended"
        assert (direct.sum(1) >= torch.clamp(pos_q[:, 0] + 1, max=local_window)).all(), "the window is not kept"


def test_core_token_is_the_significance_weighted_sum(assert_rel_close):
    """c_j = softmax(q_last k_j^T / sqrt(K)) [k_j; v_j], for one group written out."""
    q_last, k, v = torch.randn(1, 1, 1, 4), torch.randn(1, 1, 1, 3, 4), torch.randn(1, 1, 1, 3, 5)
    ck, cv = pool_groups(q_last, k, v)
    s = torch.softmax(torch.stack([q_last[0, 0, 0] @ k[0, 0, 0, m] / 2.0 for m in range(3)]), 0)  # sqrt(K) = 2
    assert_rel_close(ck[0, 0, 0], sum(s[m] * k[0, 0, 0, m] for m in range(3)), 1e-6, "core key")
    assert_rel_close(cv[0, 0, 0], sum(s[m] * v[0, 0, 0, m] for m in range(3)), 1e-6, "core value")


def test_cache_keeps_core_tokens_and_a_bounded_window(assert_rel_close):
    """After T tokens the state holds T // g core tokens and at most w + g - 1 raw keys; state_size counts them."""
    cca = _cca(group_size=3, local_window=5).eval()
    x = torch.randn(2, 40, D)
    with torch.no_grad():
        y, state = cca(x[:, :25], return_state=True)
        for i in range(25, 40):
            _, state = cca.step(x[:, i], state)
    assert state.seen == 40 and state.core_keys.shape[2] == 40 // 3
    assert 5 <= state.keys.shape[2] <= 5 + 3 - 1
    assert cca.state_size(40) == 2 * D * (state.core_keys.shape[2] + state.keys.shape[2])


@pytest.mark.parametrize("argument,value", [("group_size", 0), ("local_window", 0), ("group_size", 2.5),
                                            ("local_window", True)])
def test_bad_sizes_fail_in_init(argument, value):
    with pytest.raises(ValueError, match=f"{argument} must be an int >= 1, got {value!r}"):
        CoreContextAwareAttention(D, **{argument: value})


def test_cross_attention_is_refused():
    cca = _cca()
    x = torch.randn(1, 4, D)
    with pytest.raises(ValueError, match="pattern 'causal_cross' is not supported"):
        cca(x, context=x)
    with pytest.raises(ValueError, match="self attention only"):
        cca.init_state(1, context=x)
