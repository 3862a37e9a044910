"""SEA attention: softmax's parameters (+ the estimator), k = T is softmax, distillation improves the estimated
top-k, the count of attended keys, errors.

Tolerances: relative RMS 1e-6 where SEA must equal softmax attention (the same fp32 scores), 1e-5 naive vs chunk.
"""

from __future__ import annotations

import math

import pytest
import torch

from seqmix.core.mixers.sea import (SEAAttention, sea_attention_chunk, sea_attention_naive, sea_features,
                                   sea_log_scores, sea_node_scores)
from seqmix.core.mixers.softmax import SoftmaxAttention

D = 16


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("impl", ["naive", "chunk"])
@torch.no_grad()
def test_top_k_covering_every_key_is_softmax(causal, impl, assert_rel_close):
    torch.manual_seed(0)
    softmax = SoftmaxAttention(D, n_heads=2, causal=causal, rotary=True).eval()
    sea = SEAAttention(D, n_heads=2, causal=causal, rotary=True, top_k=37, features=4, impl=impl).eval()
    missing, unexpected = sea.load_state_dict(softmax.state_dict(), strict=False)
    assert (missing, unexpected) == (["estimator"], [])  # the estimator is the only new parameter
    x = torch.randn(2, 37, D)
    assert_rel_close(sea(x), softmax(x), 1e-6, f"top_k = T, causal={causal}, impl={impl}")
    assert sea.keys_attended == sea.keys_visible  # every visible key attended
    sea.top_k, sea.sparse = 1, False
    assert_rel_close(sea(x), softmax(x), 1e-6, "sparse=False")


@pytest.mark.parametrize("causal", [True, False])
def test_each_query_attends_its_top_k_estimated_keys(causal):
    """Blocks of one key, one query per query block, a compressed width over every key: each query attends the
    top-k keys of the estimate among its candidates (causal: the keys before it) and itself."""
    torch.manual_seed(1)
    q, k, v = torch.randn(1, 2, 23, 8), torch.randn(1, 2, 23, 8), torch.randn(1, 2, 23, 3)
    estimator = torch.randn(2, 8, 4)
    key_mask = torch.ones(1, 23, dtype=torch.bool)
    key_mask[0, 3] = False
    per_key = dict(causal=causal, top_k=5, key_mask=key_mask, block_size=1, query_block=1, width=64)
    _, attended = sea_attention_naive(q, k, v, estimator, **per_key)
    est = sea_log_scores(sea_features(q, estimator), sea_features(k, estimator))  # [1, 2, 23, 23]
    for h in range(2):
        for i in range(23):
            keys = torch.tensor([j for j in range(i if causal else 23) if key_mask[0, j]], dtype=torch.long)
            wanted = set(keys[est[0, h, i, keys].argsort(descending=True)[:5]].tolist()) | {i}
            assert set(attended[0, h, i].nonzero().flatten().tolist()) == wanted - {3}, (h, i)
    _, counts = sea_attention_chunk(q, k, v, estimator, **per_key)
    assert torch.equal(counts, attended.sum(-1))


@pytest.mark.parametrize("causal", [True, False])
def test_naive_and_chunk_select_the_same_blocks(causal, assert_rel_close):
    torch.manual_seed(2)
    q, k, v = torch.randn(2, 2, 41, 8), torch.randn(2, 2, 41, 8), torch.randn(2, 2, 41, 3)
    estimator = torch.randn(2, 8, 6)
    key_mask = torch.rand(2, 41) > 0.2
    blocks = dict(causal=causal, top_k=2, key_mask=key_mask, block_size=3, query_block=4, width=3)
    o_naive, attended = sea_attention_naive(q, k, v, estimator, **blocks)
    o_chunk, counts = sea_attention_chunk(q, k, v, estimator, **blocks)
    assert torch.equal(counts, attended.sum(-1))
    assert_rel_close(o_chunk, o_naive, 1e-5, f"causal={causal}")
    assert int(counts.max()) <= (2 + 3) * 3  # top_k blocks + at most 3 local blocks of 3 keys


def test_compressed_estimate_is_the_sum_of_the_per_key_estimate(assert_rel_close):
    """A node's score is log sum over its keys of phi(q) . phi(k): the per-key estimate pooled, from prefix sums."""
    torch.manual_seed(3)
    q, k, estimator = torch.randn(1, 2, 1, 8), torch.randn(1, 2, 24, 8), torch.randn(2, 8, 4)
    token_ok = torch.ones(1, 6, 4, dtype=torch.bool)
    token_ok[0, 2, 1] = False  # a masked key is not counted
    score = sea_node_scores(estimator)(k.unflatten(2, (6, 4)), token_ok)
    start = torch.tensor([0, 1, 2, 5]).expand(1, 2, 1, 4)  # [B, H, g, m] nodes: blocks 0-5, 1-2, 2, none
    end = torch.tensor([6, 3, 3, 5]).expand(1, 2, 1, 4)
    got = score(q[:, :, 0][:, :, None], start, end)  # [1, 2, 1, 4]
    est = sea_log_scores(sea_features(q, estimator), sea_features(k, estimator))[:, :, 0]  # [1, 2, 24]
    est[..., 9] = -math.inf
    for node, (a, b) in enumerate([(0, 6), (1, 3), (2, 3)]):
        assert_rel_close(got[:, :, 0, node], est[..., 4 * a: 4 * b].logsumexp(-1).double(), 1e-6, f"node {a}-{b}")
    assert torch.isneginf(got[..., 3]).all()  # an empty node


def _recall(teacher: SEAAttention, x: torch.Tensor, k: int) -> float:
    """Mean overlap of the estimated top-k keys with the softmax teacher's true top-k (non-causal rows)."""
    with torch.no_grad():
        q, keys, _, _, _ = teacher.queries_and_keys(x, context=None, mask=None, state=None, return_state=False)
        true = (q @ keys.transpose(-1, -2)).topk(k, -1).indices  # [B, H, T, k]
        est = sea_log_scores(sea_features(q, teacher.estimator), sea_features(keys, teacher.estimator))
        found = est.topk(k, -1).indices  # [B, H, T, k]
        return float((true[..., :, None] == found[..., None, :]).any(-1).float().mean())


def test_distillation_improves_the_estimated_top_k():
    torch.manual_seed(0)
    k = 4
    sea = SEAAttention(D, n_heads=1, causal=False, top_k=k, features=8)
    with torch.no_grad():
        sea.qkv.q.weight.mul_(3)  # a fixed teacher with peaked rows
        sea.qkv.k.weight.mul_(3)
    teacher = {n: p.clone() for n, p in sea.named_parameters() if n != "estimator"}
    held_out = torch.randn(32, 32, D)
    before = _recall(sea, held_out, k)
    optimizer = torch.optim.Adam([sea.estimator], lr=3e-2)
    for _ in range(200):
        loss = sea.estimator_loss(torch.randn(2, 32, D))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert all(p.grad is None for n, p in sea.named_parameters() if n != "estimator")  # the teacher is frozen
    after = _recall(sea, held_out, k)
    assert after >= before + 0.08, f"top-{k} recall {before:.3f} -> {after:.3f} after distillation"
    assert all(torch.equal(p, teacher[n]) for n, p in sea.named_parameters() if n != "estimator")


def test_estimator_loss_is_a_kl_divergence():
    torch.manual_seed(0)
    sea = SEAAttention(D, n_heads=2, causal=True, features=4)
    x = torch.randn(2, 9, D)
    loss = sea.estimator_loss(x, mask=torch.ones(2, 9, dtype=torch.bool))
    assert loss.dim() == 0 and torch.isfinite(loss) and loss > 0
    with torch.no_grad():
        first = sea.estimator_loss(x[:, :1])  # one visible key: both rows are one-hot
    assert float(first) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("argument, value", [("top_k", 0), ("top_k", 2.5), ("top_k", True), ("features", 0),
                                             ("sparse", 1), ("block_size", 0), ("query_block", 0), ("width", 0)])
def test_bad_arguments_fail_in_init(argument, value):
    with pytest.raises(ValueError, match=argument):
        SEAAttention(D, n_heads=2, **{argument: value})


def test_cross_attention_is_refused():
    with pytest.raises(ValueError, match="pattern"):
        SEAAttention(D, n_heads=2, causal=False)(torch.randn(1, 4, D), context=torch.randn(1, 5, D))
