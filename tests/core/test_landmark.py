"""Landmark attention: the mixer is the paper's grouped softmax (an explicit per-query transcription,
fp64), landmark keys are W_k (e + block mean), retrieval with k >= the blocks is training mode,
retrieval with k < blocks is the grouped softmax over the top-k blocks, a decode step reads only the
k retrieved blocks of its cache (counted, and NaN everywhere else changes nothing), clear errors."""

import math

import pytest
import torch

from seqmix.core import build_mixer
from seqmix.core.layers import split_heads
from seqmix.core.mixers.landmark import LandmarkCache, landmark_attention_chunk, landmark_attention_naive


def grouped_softmax_reference(q, k, v, landmarks, block_size, retrieval_k=None):
    """The paper's grouped softmax, one query at a time (``q`` = the last T of S positions)."""
    b_, h_, t_, dk = q.shape
    s_ = k.shape[2]
    o = torch.zeros(b_, h_, t_, v.shape[-1], dtype=q.dtype)
    for b in range(b_):
        for h in range(h_):
            for t in range(t_):
                i = s_ - t_ + t
                c = i // block_size
                s = k[b, h] @ q[b, h, t] / math.sqrt(dk)  # [S]
                r = landmarks[b, h, :c] @ q[b, h, t] / math.sqrt(dk)  # [c]: the earlier blocks' landmarks
                chosen = range(c) if retrieval_k is None else r.argsort(descending=True)[:retrieval_k].tolist()
                own = range(c * block_size, i + 1)
                z = sum(s[j].exp() for j in own) + sum(r[n].exp() for n in chosen)
                out = sum(s[j].exp() / z * v[b, h, j] for j in own)
                for n in chosen:
                    members = range(n * block_size, (n + 1) * block_size)
                    inside = sum(s[j].exp() for j in members)
                    out = out + r[n].exp() / z * sum(s[j].exp() / inside * v[b, h, j] for j in members)
                o[b, h, t] = out
    return o


def random_inputs(t, s, block_size, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(2, 2, n, 4, generator=g, dtype=torch.float64) for n in (t, s, s))  # [B, H, *, K]
    landmarks = torch.randn(2, 2, s // block_size, 4, generator=g, dtype=torch.float64)  # [B, H, N, K]
    return q, k, v, landmarks


def both_impls(q, k, v, landmarks, block_size, retrieval_k):
    naive = landmark_attention_naive(q, k, v, landmarks, block_size=block_size, retrieval_k=retrieval_k)
    chunk, _ = landmark_attention_chunk(q, k, v, landmarks, block_size=block_size, retrieval_k=retrieval_k)
    return {"naive": naive, "chunk": chunk}


@pytest.mark.parametrize("t,s", [(13, 13), (5, 13), (1, 9)])  # the whole sequence, a piece after a cache, one step
@pytest.mark.parametrize("retrieval_k", [None, 2])
def test_ops_are_the_grouped_softmax(t, s, retrieval_k):
    q, k, v, landmarks = random_inputs(t, s, 3)
    expected = grouped_softmax_reference(q, k, v, landmarks, 3, retrieval_k)
    for impl, o in both_impls(q, k, v, landmarks, 3, retrieval_k).items():
        torch.testing.assert_close(o, expected, rtol=1e-10, atol=1e-12, msg=f"{impl} T={t} S={s} k={retrieval_k}")


def test_retrieval_with_k_at_least_the_blocks_is_training_mode_and_fewer_blocks_differ():
    q, k, v, landmarks = random_inputs(14, 14, 3)  # 4 finished blocks
    training = both_impls(q, k, v, landmarks, 3, None)
    for retrieval_k in (4, 7):
        for impl, o in both_impls(q, k, v, landmarks, 3, retrieval_k).items():
            torch.testing.assert_close(o, training[impl], rtol=1e-12, atol=1e-12, msg=f"{impl} k={retrieval_k}")
    for impl, o in both_impls(q, k, v, landmarks, 3, 1).items():
        assert (o[:, :, 9:] - training[impl][:, :, 9:]).abs().max() > 1e-3, f"{impl}: k=1 read every block"


@pytest.mark.parametrize("retrieval_k", [None, 2])
@pytest.mark.parametrize("impl", ["naive", "chunk"])
def test_mixer_is_the_formula_with_landmark_keys_from_the_block_mean(impl, retrieval_k):
    torch.manual_seed(0)
    mixer = build_mixer("landmark", 8, n_heads=2, block_size=3, retrieval_k=retrieval_k, impl=impl).double()
    x = torch.randn(2, 11, 8, dtype=torch.float64)
    q, k, v = mixer.qkv(x)  # [B, H, T, K]
    blocks = x[:, :9].unflatten(1, (3, 3)).mean(2)  # [B, 9, D] -> [B, 3, 3, D] -> [B, 3, D], block means
    landmarks = split_heads(mixer.qkv.k(mixer.landmark + blocks), 2)  # l_b = W_k (e + mean x): [B, H, 3, K]
    o = grouped_softmax_reference(q, k, v, landmarks, 3, retrieval_k)  # [B, H, T, V]
    expected = mixer.out(o.transpose(1, 2).flatten(2))  # [B, H, T, V] -> [B, T, H*V] -> [B, T, D]
    torch.testing.assert_close(mixer(x), expected, rtol=1e-10, atol=1e-12)
    _, state = mixer(x, return_state=True)
    assert isinstance(state, LandmarkCache) and state.landmarks.shape == (2, 2, 3, 4)
    assert sum(t[0].numel() for t in state) == mixer.state_size(11)  # KV cache, a landmark per finished block, a query


def test_a_decode_step_reads_only_the_k_retrieved_blocks():
    torch.manual_seed(0)
    mixer = build_mixer("landmark", 8, n_heads=2, block_size=3, retrieval_k=2).eval()
    x = torch.randn(2, 20, 8)
    with torch.no_grad():
        y = mixer(x)
        state, steps = mixer.init_state(2), []
        for i in range(20):
            before = mixer.blocks_read
            y_t, state = mixer.step(x[:, i], state)
            steps.append(y_t)
            assert mixer.blocks_read - before == min(2, i // 3), f"token {i}: read {mixer.blocks_read - before} blocks"
        torch.testing.assert_close(torch.stack(steps, 1), y, rtol=1e-5, atol=1e-6)  # retrieval: step == forward

        # poison every cached key and value outside the 2 blocks the next token retrieves (and its own block)
        x_t = torch.randn(2, 8)
        q = split_heads(mixer.qkv.q(x_t)[:, None], 2)  # [B, H, 1, K]
        chosen = (q @ state.landmarks.transpose(-1, -2)).topk(2, dim=-1).indices[:, :, 0]  # [B, H, 2] of 6 blocks
        keep = torch.zeros(2, 2, 20, dtype=torch.bool)  # [B, H, S]
        keep[:, :, 18:] = True  # the own block (tokens 18, 19 and the new one)
        for n in range(2):
            keep |= (torch.arange(20) // 3)[None, None] == chosen[..., n, None]
        poisoned = LandmarkCache(state.keys.masked_fill(~keep[..., None], math.nan),
                                 state.values.masked_fill(~keep[..., None], math.nan), state.landmarks,
                                 state.lead)
        assert torch.equal(mixer.step(x_t, poisoned)[0], mixer.step(x_t, state)[0])

        mixer.retrieval_k = None  # training mode reads every finished block
        before = mixer.blocks_read
        mixer.step(x_t, state)
        assert mixer.blocks_read - before == 6


def shared_reference(q, k, v, landmarks, block_size, retrieval_k, lead=None):
    """Shared retrieval by its definition: each query's R_i is what its block's first query retrieves (the
    per-query reference with the retrieval made by that query), the gate and tokens its own."""
    s_, t_ = k.shape[2], q.shape[2]
    o = torch.zeros(*q.shape[:3], v.shape[-1], dtype=q.dtype)
    for t in range(t_):
        i = s_ - t_ + t
        p0 = i // block_size * block_size
        rep = q[:, :, p0 - (s_ - t_)] if p0 >= s_ - t_ else (lead if lead is not None else q[:, :, 0])  # [B, H, K]
        c = i // block_size
        r = torch.einsum("bhk,bhnk->bhn", rep, landmarks[:, :, :c])  # [B, H, c]: the first query's scores
        for b in range(q.shape[0]):
            for h in range(q.shape[1]):
                chosen = r[b, h].argsort(descending=True)[:retrieval_k].tolist()
                dk = q.shape[-1]
                sc = k[b, h, : i + 1] @ q[b, h, t] / math.sqrt(dk)
                lm = landmarks[b, h, :c] @ q[b, h, t] / math.sqrt(dk)
                own = range(c * block_size, i + 1)
                z = sum(sc[j].exp() for j in own) + sum(lm[n].exp() for n in chosen)
                out = sum(sc[j].exp() / z * v[b, h, j] for j in own)
                for n in chosen:
                    members = range(n * block_size, (n + 1) * block_size)
                    inside = sum(sc[j].exp() for j in members)
                    out = out + lm[n].exp() / z * sum(sc[j].exp() / inside * v[b, h, j] for j in members)
                o[b, h, t] = out
    return o


@pytest.mark.parametrize("t,s", [(13, 13), (5, 13), (1, 9)])
def test_shared_retrieval_is_the_grouped_softmax_over_the_first_querys_blocks(t, s):
    q, k, v, landmarks = random_inputs(t, s, 3)
    lead = torch.randn(2, 2, 4, dtype=torch.float64)  # the first query of a block begun before q
    expected = shared_reference(q, k, v, landmarks, 3, 2, lead)
    naive = landmark_attention_naive(q, k, v, landmarks, block_size=3, retrieval_k=2, shared=True, lead=lead)
    chunk, _ = landmark_attention_chunk(q, k, v, landmarks, block_size=3, retrieval_k=2, shared=True, lead=lead)
    torch.testing.assert_close(naive, expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(chunk, expected, rtol=1e-10, atol=1e-12)
    full, _ = landmark_attention_chunk(q, k, v, landmarks, block_size=3, retrieval_k=9, shared=True, lead=lead)
    training, _ = landmark_attention_chunk(q, k, v, landmarks, block_size=3, retrieval_k=None)
    torch.testing.assert_close(full, training, rtol=1e-12, atol=1e-12)  # k >= blocks: training mode


def test_shared_retrieval_fwd_bwd_matches_per_block_gradients():
    """The checkpointed chunk form gives the naive form's gradients (retrieval: the blocks are recomputed)."""
    q, k, v, landmarks = (x.requires_grad_() for x in random_inputs(20, 20, 4, seed=3))
    grads = []
    for form in (landmark_attention_naive, lambda *a, **kw: landmark_attention_chunk(*a, **kw)[0]):
        o = form(q, k, v, landmarks, block_size=4, retrieval_k=2, shared=True)
        grads.append(torch.autograd.grad(o.sin().sum(), (q, k, v, landmarks)))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("argument,value", [("block_size", 0), ("block_size", -2), ("block_size", 2.5),
                                            ("block_size", True), ("retrieval_k", 0), ("retrieval_k", 1.5),
                                            ("shared_retrieval", 1)])
def test_bad_arguments_name_themselves(argument, value):
    with pytest.raises(ValueError, match=f"{argument} must be"):
        build_mixer("landmark", 8, n_heads=2, **{argument: value})


def test_errors_at_inference_and_for_unsupported_patterns():
    mixer = build_mixer("landmark", 8, n_heads=2, block_size=3)
    with pytest.raises(ValueError, match="retrieval_k must be an int >= 1"):
        mixer.retrieval_k = -1
    with pytest.raises(ValueError, match="supports only \\['causal_self'\\]"):
        build_mixer("landmark", 8, n_heads=2, causal=False)
    with pytest.raises(ValueError, match="pattern 'causal_cross' is not supported"):
        mixer(torch.randn(1, 4, 8), context=torch.randn(1, 4, 8))
    with pytest.raises(ValueError, match="has no cross attention"):
        mixer.init_state(1, context=torch.randn(1, 4, 8))
