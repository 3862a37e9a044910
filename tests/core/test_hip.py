"""HiP attention: softmax's parameters, the hierarchical selection, the count of attended keys, errors.

Tolerances: relative RMS 1e-6 where HiP must equal softmax attention (the same fp32 scores), 1e-5 naive vs chunk.
"""

from __future__ import annotations

import pytest
import torch

from seqmix.core import build_mixer
from seqmix.core.mixers.hip import HiPAttention, hip_attention_chunk, hip_attention_naive, hip_select_naive
from seqmix.core.mixers.softmax import SoftmaxAttention

D = 16


def _pair(causal: bool, rotary: bool, **hip) -> tuple[SoftmaxAttention, HiPAttention]:
    torch.manual_seed(0)
    softmax = SoftmaxAttention(D, n_heads=2, causal=causal, rotary=rotary)
    pruned = HiPAttention(D, n_heads=2, causal=causal, rotary=rotary, **hip)
    pruned.load_state_dict(softmax.state_dict())  # strict: the same parameters, nothing added
    return softmax.eval(), pruned.eval()


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("impl", ["naive", "chunk"])
@torch.no_grad()
def test_top_k_covering_every_block_is_softmax(causal, impl, assert_rel_close):
    softmax, pruned = _pair(causal, rotary=True, block_size=4, top_k=10, impl=impl)  # 37 keys: 10 blocks
    x = torch.randn(2, 37, D)
    assert_rel_close(pruned(x), softmax(x), 1e-6, f"top_k >= blocks, causal={causal}, impl={impl}")
    assert pruned.keys_attended == pruned.keys_visible  # every visible key attended
    pruned.top_k, pruned.prune = 1, False
    assert_rel_close(pruned(x), softmax(x), 1e-6, "prune=False")


@torch.no_grad()
def test_pruned_step_equals_forward(assert_rel_close):
    _, pruned = _pair(True, rotary=False, block_size=2, top_k=2)
    x = torch.randn(1, 21, D)
    y = pruned(x)
    state = pruned.init_state(1)
    steps = []
    for t in range(x.shape[1]):
        y_t, state = pruned.step(x[:, t], state)
        steps.append(y_t)
    assert_rel_close(torch.stack(steps, 1), y, 1e-5, "step vs forward with pruning")


def test_selection_finds_the_true_top_k_on_monotone_scores():
    rising = [float(b) for b in range(23)]
    assert hip_select_naive(rising, 3) == [20, 21, 22]
    assert hip_select_naive(rising[::-1], 3) == [0, 1, 2]  # all three inside the first of the 3 starting chunks
    assert hip_select_naive(rising[:2], 3) == [0, 1]  # fewer blocks than top_k: all of them


def _planted(t: int, size: int, block_scores: list[float]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Head dimension 2: every query is (1, 0), every key of block b is (score_b, 0): r(b) = score_b / sqrt(2)."""
    q = torch.zeros(1, 1, t, 2)
    q[..., 0] = 1.0
    k = torch.zeros(1, 1, t, 2)
    k[..., 0] = torch.tensor(block_scores).repeat_interleave(size)[:t]
    return q, k, torch.randn(1, 1, t, 3)


@pytest.mark.parametrize("form", [hip_attention_naive, hip_attention_chunk])
def test_pruning_keeps_the_planted_blocks(form):
    size, top_k = 4, 3
    scores = (torch.rand(16, generator=torch.Generator().manual_seed(0)) - 5).tolist()  # low everywhere
    for block, high in ((0, 9.0), (10, 8.0), (5, 7.0)):  # chunks [0, 5), [5, 10), [10, 16) start at the planted blocks
        scores[block] = high
    scores[12] = 3.0  # the best of the rest: it loses to each planted block
    q, k, v = _planted(64, size, scores)
    _, attended = form(q, k, v, causal=False, block_size=size, top_k=top_k, key_mask=None)
    own = torch.arange(64) // size
    counts = attended.sum(-1) if attended.dim() == 4 else attended  # naive: [B, H, T, S]; chunk: [B, H, T]
    expected = torch.where((own == 0) | (own == 5) | (own == 10), 3, 4) * size  # planted blocks + its own block
    assert torch.equal(counts[0, 0], expected)
    if attended.dim() == 4:
        kept_blocks = attended[0, 0].unflatten(-1, (16, size)).any(-1)  # [T, 16]
        for i in range(64):
            assert set(kept_blocks[i].nonzero().flatten().tolist()) == {0, 5, 10, int(own[i])}


@pytest.mark.parametrize("causal", [True, False])
def test_naive_and_chunk_attend_the_same_keys_with_a_key_mask(causal, assert_rel_close):
    torch.manual_seed(1)
    q, k, v = torch.randn(2, 2, 30, 8), torch.randn(2, 2, 30, 8), torch.randn(2, 2, 30, 8)
    key_mask = torch.rand(2, 30) > 0.3
    o_naive, attended = hip_attention_naive(q, k, v, causal=causal, block_size=3, top_k=2, key_mask=key_mask)
    o_chunk, counts = hip_attention_chunk(q, k, v, causal=causal, block_size=3, top_k=2, key_mask=key_mask)
    assert torch.equal(attended.sum(-1), counts)
    assert_rel_close(o_chunk, o_naive, 1e-5, f"causal={causal} with a key mask")
    assert int(counts.max()) <= 3 * 3  # top_k blocks + its own, of 3 keys each


@pytest.mark.parametrize("causal", [True, False])
def test_a_query_block_attends_what_its_first_query_selects(causal, assert_rel_close):
    """b_q = 5 queries over blocks of 2 keys: every query of a query block attends the blocks that
    hip_select_naive picks from its first query's block scores, plus the blocks under the query block."""
    torch.manual_seed(2)
    q, k, v = torch.randn(1, 2, 31, 8), torch.randn(1, 2, 31, 8), torch.randn(1, 2, 31, 8)
    arguments = dict(causal=causal, block_size=2, top_k=2, key_mask=None, query_block=5)
    o_naive, attended = hip_attention_naive(q, k, v, **arguments)
    o_chunk, counts = hip_attention_chunk(q, k, v, **arguments)
    assert torch.equal(attended.sum(-1), counts)
    assert_rel_close(o_chunk, o_naive, 1e-5, f"query blocks, causal={causal}")
    r = q @ k.transpose(-1, -2) / 8 ** 0.5  # [1, 2, 31, 31]
    r = torch.nn.functional.pad(r, (0, 1), value=-float("inf")).unflatten(-1, (16, 2)).amax(-1)  # [1, 2, 31, 16]
    for h in range(2):
        for i in range(31):
            p0 = i // 5 * 5
            n = p0 // 2 if causal else 16
            local = set(range(p0 // 2, min(p0 + 4, 30) // 2 + 1))
            blocks = set(hip_select_naive(r[0, h, p0, :n].tolist(), 2)) | local
            keys = {j for b in blocks for j in (2 * b, 2 * b + 1) if j < 31 and (j <= i or not causal)}
            assert set(attended[0, h, i].nonzero().flatten().tolist()) == keys, (h, i)


def test_a_piece_after_a_cache_uses_the_carried_first_query(assert_rel_close):
    torch.manual_seed(3)
    q, k, v = torch.randn(2, 2, 30, 8), torch.randn(2, 2, 30, 8), torch.randn(2, 2, 30, 8)
    arguments = dict(causal=True, block_size=3, top_k=2, key_mask=None, query_block=4)
    whole, _ = hip_attention_chunk(q, k, v, **arguments)
    lead = q[:, :, 16]  # the piece starts at 18, inside the query block [16, 20)
    for form in (hip_attention_naive, hip_attention_chunk):
        piece, _ = form(q[:, :, 18:], k, v, **arguments, lead=lead)
        assert_rel_close(piece, whole[:, :, 18:], 1e-5, form.__name__)


def test_counts_attended_and_visible_keys():
    _, pruned = _pair(True, rotary=False, block_size=4, top_k=1)
    pruned(torch.randn(3, 40, D))
    assert pruned.keys_visible == 3 * 2 * (40 * 41 // 2)  # batch x heads x sum of (p + 1)
    assert pruned.keys_attended <= 3 * 2 * 40 * 2 * 4  # at most own + top_k blocks of 4 per query
    assert pruned.keys_attended < pruned.keys_visible / 2


@pytest.mark.parametrize("arguments,named", [
    ({"block_size": 0}, "block_size"),
    ({"block_size": 2.5}, "block_size"),
    ({"top_k": 0}, "top_k"),
    ({"top_k": True}, "top_k"),
    ({"query_block": 0}, "query_block"),
    ({"prune": "yes"}, "prune"),
    ({"impl": "sdpa"}, "impl"),
])
def test_bad_arguments_fail_in_init(arguments, named):
    with pytest.raises(ValueError, match=named):
        HiPAttention(D, n_heads=2, **arguments)


def test_unsupported_uses_are_refused():
    with pytest.raises(TypeError, match="window"):
        build_mixer("hip", D, window=4)  # not a HiP argument
    mixer = HiPAttention(D, n_heads=2)
    with pytest.raises(ValueError, match="causal_cross"):
        mixer(torch.randn(1, 5, D), context=torch.randn(1, 7, D))
