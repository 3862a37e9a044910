"""Routing attention (``routing``): one cluster is full shared-QK attention, both forms equal the written-out
rule (same cluster, same window of ``w`` members, local heads), windows holding whole clusters give attention
masked to same-cluster pairs, centroids move toward their members' mean in train() only, argument errors.
Tolerances: relative RMS 1e-5 (fp32).

The generic contract (shapes, causality, pieces = whole = step, chunk = naive with gradients) is in
tests/core/test_mixers_generic.py.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from seqmix.core.mixers.routing import RoutingAttention

D, H, K = 16, 2, 8


def _routing(causal=True, *, n_clusters=3, window=4, local_heads=1, local_window=3, decay=0.5, seed=0):
    torch.manual_seed(seed)
    return RoutingAttention(D, n_heads=H, causal=causal, n_clusters=n_clusters, window=window,
                            local_heads=local_heads, local_window=local_window, centroid_decay=decay)


def _keys_values(mixer, x):
    b, t, _ = x.shape
    k = F.normalize(mixer.qk(x).view(b, t, H, K), dim=-1).transpose(1, 2)  # [B, T, H, K] -> [B, H, T, K]
    v = mixer.v(x).view(b, t, H, K).transpose(1, 2)  # [B, T, H, K] -> [B, H, T, K]
    return k, v


def _clusters(mixer, k):
    """Nearest centroid per routed head, written out: ``[B, R, T]``."""
    mu = mixer.centroids / mixer.centroids.norm(dim=-1, keepdim=True)  # [R, C, K]
    return torch.einsum("brtk,rck->brtc", k[:, mixer.local_heads:], mu).argmax(-1)


def _attend(mixer, x, sees):
    """``out(concat_h sum_j a_ij v_j)`` with ``a_i = softmax_j(sqrt(K) k_i . k_j)`` over the keys ``sees(b, h, i, j)``
    other than ``i`` (``i`` itself when there is none): the shared-QK rule, one query at a time."""
    k, v = _keys_values(mixer, x)
    b, _, t, _ = k.shape
    o = torch.zeros_like(v)
    for bi in range(b):
        for h in range(H):
            for i in range(t):
                keys = [j for j in range(t) if j != i and sees(bi, h, i, j)] or [i]
                a = torch.softmax(math.sqrt(K) * k[bi, h, keys] @ k[bi, h, i], 0)  # [n]
                o[bi, h, i] = a @ v[bi, h, keys]
    return mixer.out(o.transpose(1, 2).reshape(b, t, D))  # [B, H, T, K] -> [B, T, D]


@pytest.mark.parametrize("causal", [True, False])
def test_one_cluster_is_full_shared_qk_attention(causal, assert_rel_close):
    """C = 1 and a window over the sequence: every head attends to every (earlier) token but itself; a token
    attends to itself only when it sees no other key (the first token, causal). Written as one masked softmax."""
    mixer = _routing(causal, n_clusters=1, window=64, local_heads=0)
    x = torch.randn(2, 11, D)
    k, v = _keys_values(mixer, x)
    allowed = ~torch.eye(11, dtype=torch.bool)
    if causal:
        allowed = allowed.tril()
        allowed[0, 0] = True  # token 0 sees no other key
    scores = (math.sqrt(K) * k @ k.transpose(-1, -2)).masked_fill(~allowed, float("-inf"))  # [B, H, T, T]
    expected = mixer.out((torch.softmax(scores, -1) @ v).transpose(1, 2).reshape(2, 11, D))  # [B, T, D]
    for impl in ("naive", "chunk"):
        mixer.impl = impl
        with torch.no_grad():
            assert_rel_close(mixer.eval()(x), expected.detach(), 1e-5, f"causal={causal} {impl}")


@pytest.mark.parametrize("causal", [True, False])
def test_both_forms_follow_the_written_out_rule(causal, assert_rel_close):
    """Routed heads: same cluster and same window of w = 4 members (member m in window m // 4); the local head:
    the last 3 positions (non-causal: 1 on either side). Clusters here have more than 4 members."""
    mixer = _routing(causal).eval()
    x = torch.randn(2, 19, D)
    with torch.no_grad():
        c = _clusters(mixer, _keys_values(mixer, x)[0])  # [B, R, T]
        m = torch.zeros_like(c)
        for i in range(c.shape[-1]):
            m[..., i] = (c[..., :i] == c[..., i:i + 1]).sum(-1)  # earlier members of its cluster
        assert (F.one_hot(c, 3).sum(2) > 4).any(), "a cluster must span several windows for this test"

        def sees(b, h, i, j):
            if h < mixer.local_heads:
                return i - 3 < j <= i if causal else abs(i - j) <= 1
            r = h - mixer.local_heads
            same = bool(c[b, r, i] == c[b, r, j]) and int(m[b, r, i]) // 4 == int(m[b, r, j]) // 4
            return same and (j <= i or not causal)

        expected = _attend(mixer, x, sees)
        for impl in ("naive", "chunk"):
            mixer.impl = impl
            assert_rel_close(mixer(x), expected, 1e-5, f"causal={causal} {impl}")


@pytest.mark.parametrize("causal", [True, False])
def test_windows_holding_every_cluster_give_same_cluster_attention(causal, assert_rel_close):
    """w >= every cluster's size: the sorted/gathered windows equal dense attention masked to same-cluster pairs
    (and differ from it when windows cut clusters)."""
    x = torch.randn(2, 23, D)
    outputs = {}
    for window in (23, 2):
        mixer = _routing(causal, n_clusters=4, window=window, local_heads=0).eval()
        with torch.no_grad():
            k, v = _keys_values(mixer, x)
            c = _clusters(mixer, k)  # [B, H, T], every head routed
            allowed = (c[..., :, None] == c[..., None, :]) & ~torch.eye(23, dtype=torch.bool)  # [B, H, T, T]
            if causal:
                allowed = allowed.tril()
            allowed = allowed | (torch.eye(23, dtype=torch.bool) & ~allowed.any(-1, keepdim=True))  # alone: itself
            scores = (math.sqrt(K) * k @ k.transpose(-1, -2)).masked_fill(~allowed, float("-inf"))
            expected = mixer.out((torch.softmax(scores, -1) @ v).transpose(1, 2).reshape(2, 23, D))  # [B, T, D]
            for impl in ("naive", "chunk"):
                mixer.impl = impl
                outputs[window, impl] = mixer(x)
        if window == 23:
            for impl in ("naive", "chunk"):
                assert_rel_close(outputs[window, impl], expected, 1e-5, f"causal={causal} {impl}")
    assert (outputs[2, "chunk"] - outputs[23, "chunk"]).abs().max() > 1e-3, "windows of 2 must cut clusters"


def test_centroids_move_toward_their_members_mean_in_train_only():
    """train(): mu_c <- d mu_c + (1 - d) mean of its members' keys (d = 0.5), centroids without members stay;
    eval() (forward and step): frozen. Never a parameter, so no optimiser or gradient touches them."""
    mixer = _routing(n_clusters=3, local_heads=1, decay=0.5)
    assert "centroids" in mixer.state_dict() and all("centroid" not in n for n, _ in mixer.named_parameters())
    x = torch.randn(2, 30, D)
    before = mixer.centroids.clone()  # [R, C, K]
    with torch.no_grad():
        keys = _keys_values(mixer, x)[0]  # [B, H, T, K]
        k, c = keys[:, 1:], _clusters(mixer, keys)  # [B, R, T, K], [B, R, T]: head 0 is local
    mixer.train()(x).sum().backward()
    assert mixer.centroids.grad is None
    for cluster in range(3):
        members = k[:, 0][c[:, 0] == cluster]  # [n, K]
        if len(members) == 0:
            assert torch.equal(mixer.centroids[0, cluster], before[0, cluster])
            continue
        mean = members.mean(0)
        assert torch.allclose(mixer.centroids[0, cluster], 0.5 * before[0, cluster] + 0.5 * mean, atol=1e-6)
        assert (mixer.centroids[0, cluster] - mean).norm() < (before[0, cluster] - mean).norm()
    assert not torch.equal(mixer.centroids, before)
    trained = mixer.centroids.clone()
    mixer.eval()
    with torch.no_grad():
        _, state = mixer(x, return_state=True)
        mixer.step(x[:, 0], state)
    assert torch.equal(mixer.centroids, trained), "eval() must not move the centroids"


def test_a_training_call_routes_with_the_centroids_it_started_from():
    """The update comes after the call's routing: its output is the eval output with the old centroids, and the
    naive and chunk forms make the same output and the same update."""
    naive = _routing(decay=0.0)  # d = 0: the centroids jump to the means, the largest possible move
    chunk, frozen = copy.deepcopy(naive), copy.deepcopy(naive).eval()
    naive.impl, chunk.impl = "naive", "chunk"
    x = torch.randn(2, 25, D)
    with torch.no_grad():
        y_naive, y_chunk, y_frozen = naive(x), chunk(x), frozen(x)
    assert torch.allclose(y_naive, y_frozen, atol=1e-6) and torch.allclose(y_chunk, y_frozen, atol=1e-6)
    assert torch.allclose(naive.centroids, chunk.centroids, atol=1e-6)
    assert not torch.allclose(naive.centroids, frozen.centroids)


def test_decoding_state_holds_what_state_size_says():
    """The cache keeps a key, a value, a cluster and a member index per token and routed head, and the members
    per cluster (which place the next token in its window)."""
    mixer = _routing().eval()
    x = torch.randn(1, 9, D)
    with torch.no_grad():
        _, state = mixer(x, return_state=True)
    floats = sum(t[0].numel() for t in state)
    assert floats == mixer.state_size(9) == 9 * (2 * D + 2) + 3
    assert int(state.counts.sum()) == 9 and torch.equal(state.counts, F.one_hot(state.clusters, 3).sum(2))


@pytest.mark.parametrize("arguments,match", [
    ({"n_clusters": 0}, "n_clusters must be an int >= 1"),
    ({"window": 0}, "window must be an int >= 1"),
    ({"window": 2.0}, "window must be an int >= 1"),
    ({"local_window": 0}, "local_window must be an int >= 1"),
    ({"local_heads": 3}, "local_heads must be an int in 0 .. n_heads=2"),
    ({"local_heads": -1}, "local_heads must be an int in 0 .. n_heads=2"),
    ({"centroid_decay": 1.5}, "centroid_decay must be a float in \\[0, 1\\]"),
    ({"centroid_decay": -0.1}, "centroid_decay must be a float in \\[0, 1\\]"),
])
def test_bad_arguments_fail_in_init(arguments, match):
    with pytest.raises(ValueError, match=match):
        RoutingAttention(D, n_heads=H, **arguments)


def test_cross_attention_is_refused():
    mixer = _routing()
    with pytest.raises(ValueError, match="is self attention only"):
        mixer.init_state(1, context=torch.randn(1, 3, D))
