"""ProbSparse attention (Informer): with a large factor it is full softmax attention; lazy
queries get mean(V) (or the prefix mean when causal); the max-mean measure picks the spiky
queries; the sparse form equals the dense reference; the sample is reproducible."""

import math

import pytest
import torch

from seqmix.core import build_mixer
from seqmix.core.mixers import probsparse
from seqmix.core.mixers.probsparse import (
    lazy_output,
    probsparse_attention,
    probsparse_sample_keys,
    probsparse_select,
    sparsity_measure,
)
from seqmix.core.layers import merge_heads
from seqmix.kernels.attention import attention_naive


def qkv(b=2, h=2, t=40, d=8, seed=0, s=None):
    gen = torch.Generator().manual_seed(seed)
    s = t if s is None else s
    return (torch.randn(b, h, t, d, generator=gen), torch.randn(b, h, s, d, generator=gen),
            torch.randn(b, h, s, d, generator=gen))


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("impl", ["naive", "sparse"])
def test_large_factor_is_full_attention(causal, impl, assert_rel_close):
    q, k, v = qkv(t=20)
    o = probsparse_attention(q, k, v, factor=20, causal=causal, seed=0, impl=impl)  # u = 20 * ceil(ln 20) >= 20
    assert_rel_close(o, attention_naive(q, k, v, causal=causal), 1e-6, f"causal={causal} {impl}")


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("impl", ["naive", "sparse"])
def test_lazy_queries_get_the_mean_of_values(causal, impl, assert_rel_close):
    q, k, v = qkv(t=60)
    active = probsparse_select(q, k, 1, causal=causal, seed=3)
    n_active = active.sum(-1)
    assert (n_active >= 1).all() and (n_active < 60).all(), f"factor 1 must leave lazy queries: {n_active}"
    if not causal:
        assert (n_active == 5).all(), "non-causal: exactly u = 1 * ceil(ln 60) = 5 active queries"
    o = probsparse_attention(q, k, v, factor=1, causal=causal, seed=3, impl=impl)
    if causal:
        expected_lazy = v.cumsum(-2) / torch.arange(1, 61)[:, None]  # mean of v_0..v_i
    else:
        expected_lazy = v.mean(-2, keepdim=True).expand_as(o)
    full = attention_naive(q, k, v, causal=causal)
    assert_rel_close(o[~active], expected_lazy[~active], 1e-6, "lazy rows")
    assert_rel_close(o[active], full[active], 1e-6, "active rows")
    assert_rel_close(lazy_output(v, 60, causal=causal), expected_lazy, 1e-6, "lazy_output")


@pytest.mark.parametrize("causal", [False, True])
def test_measure_picks_the_spiky_queries(causal):
    """Queries aligned with one key (a peaked score distribution) have a large max-mean
    measure; near-zero queries (flat scores) a small one."""
    t, d = 64, 16
    gen = torch.Generator().manual_seed(0)
    k = torch.randn(1, 1, t, d, generator=gen)
    q = 0.01 * torch.randn(1, 1, t, d, generator=gen)
    spiky = torch.tensor([5, 17, 33, 48, 60])
    q[0, 0, spiky] = 4.0 * k[0, 0, spiky]  # each spiky query peaks on its own key
    active = probsparse_select(q, k, 1, causal=causal, seed=0)[0, 0]
    assert active[spiky].all(), f"spiky queries {spiky.tolist()} not all active: {active.nonzero().flatten().tolist()}"
    if not causal:
        assert active.sum() == 5, "u = ceil(ln 64) = 5: exactly the spiky queries"


def test_causal_sample_sees_only_the_past():
    index = probsparse_sample_keys(50, 50, 3, causal=True, seed=1)
    assert index.shape == (50, 3 * 4)  # U = 3 * ceil(ln 50)
    assert (index <= torch.arange(50)[:, None]).all() and (index >= 0).all()
    assert index[-1].unique().numel() > 1, "the sample must vary"


def test_sparse_equals_naive_with_grads(assert_rel_close):
    q, k, v = (x.requires_grad_() for x in qkv(t=50, seed=2))
    results = []
    for impl in ("naive", "sparse"):
        o = probsparse_attention(q, k, v, factor=2, causal=True, seed=5, impl=impl)
        results.append([o.detach(), *torch.autograd.grad((o * o.detach().sin()).sum(), (q, k, v))])
    for a, e in zip(*results):
        assert_rel_close(a, e, 1e-5, "sparse vs naive")


def test_cross_attention_lengths():
    q, k, v = qkv(t=30, s=45)
    o = probsparse_attention(q, k, v, factor=1, causal=False, seed=0)
    assert o.shape == (2, 2, 30, 8)
    with pytest.raises(ValueError, match="causal form is self attention"):
        probsparse_attention(q, k, v, factor=1, causal=True, seed=0)


def test_seed_makes_the_mixer_reproducible():
    torch.manual_seed(0)
    mixer = build_mixer("probsparse", 16, n_heads=2, factor=1, causal=False)
    x = torch.randn(2, 60, 16)
    with torch.no_grad():
        assert torch.equal(mixer(x), mixer(x)), "a fixed seed gives the same sample at every call"
        mixer.seed = None
        torch.manual_seed(1)
        a = mixer(x)
        torch.manual_seed(1)
        assert torch.equal(a, mixer(x)), "seed=None follows torch's global generator"


def test_resample_keys_draws_a_new_sample_in_training_and_keeps_the_seed_sample_in_eval():
    x = torch.randn(2, 60, 16)
    torch.manual_seed(0)
    mixer = build_mixer("probsparse", 16, n_heads=2, factor=1, causal=False, resample_keys=True)
    fixed = build_mixer("probsparse", 16, n_heads=2, factor=1, causal=False)
    fixed.load_state_dict(mixer.state_dict())
    with torch.no_grad():
        mixer.train()
        torch.manual_seed(1)
        a = mixer(x)
        assert not torch.equal(a, mixer(x)), "training calls draw a new key sample each"
        torch.manual_seed(1)
        assert torch.equal(a, mixer(x)), "the training sample follows torch's global generator"
        assert not torch.equal(a, fixed(x))
        mixer.eval()
        assert torch.equal(mixer(x), fixed.eval()(x)), "eval mode uses the seed's sample"


def test_bad_arguments_name_the_problem():
    with pytest.raises(ValueError, match="factor must be an int >= 1"):
        build_mixer("probsparse", 16, factor=0)
    with pytest.raises(ValueError, match="seed must be an int >= 0 or None"):
        build_mixer("probsparse", 16, seed=-1)
    with pytest.raises(ValueError, match="resample_keys=True keeps the `seed` sample"):
        build_mixer("probsparse", 16, seed=None, resample_keys=True)
    with pytest.raises(ValueError, match="pattern 'causal_cross' is not supported"):
        build_mixer("probsparse", 16, causal=True)(torch.randn(1, 4, 16), context=torch.randn(1, 4, 16))


@pytest.mark.parametrize("head_dim, length", [(32, 40), (2, 100)])  # L_K <= U * K: dense scores; else gathered keys
def test_measure_is_max_minus_mean_of_the_sampled_scores(head_dim, length, assert_rel_close):
    q, k, _ = qkv(t=length, d=head_dim, seed=4)
    index = probsparse_sample_keys(length, length, 1, causal=False, seed=2)  # [L, U]
    scores = torch.stack([(q[:, :, i, None] * k[:, :, index[i]]).sum(-1) for i in range(length)], 2)  # [B, H, L, U]
    scores = scores * head_dim**-0.5
    assert_rel_close(sparsity_measure(q, k, index), scores.amax(-1) - scores.mean(-1), 1e-6, "measure")


def test_causal_rank_in_blocks_equals_the_rule_row_by_row(monkeypatch):
    """Query i is active when fewer than u_i of the measures of queries 0..i are larger; the
    ranking runs in blocks of rows (forced small here) and must give the same answer."""
    q, k, _ = qkv(t=70, seed=6)
    monkeypatch.setattr(probsparse, "_RANK_BLOCK_ELEMENTS", 4 * 70 * 3)  # 3 rows per block
    active = probsparse_select(q, k, 2, causal=True, seed=1)  # [B, H, L]
    measure = sparsity_measure(q, k, probsparse_sample_keys(70, 70, 2, causal=True, seed=1))
    for i in range(70):
        budget = min(i + 1, max(1, 2 * math.ceil(math.log(i + 1))))
        larger = (measure[..., : i + 1] > measure[..., i : i + 1]).sum(-1)  # [B, H]
        assert torch.equal(active[..., i], larger < budget), f"row {i}"


def test_step_attends_fully_with_the_newest_query_so_it_is_not_forward(assert_rel_close):
    """Informer's decoder for one token: ProbSparse's step is full causal attention of the newest
    query over the cache, so it does not equal forward, whose lazy queries get the prefix mean.
    A prompt's first piece (an empty cache) is ProbSparse as in forward; what follows is full."""
    torch.manual_seed(0)
    mixer = build_mixer("probsparse", 16, n_heads=2, factor=1, causal=True).eval()
    x = torch.randn(2, 30, 16)
    with torch.no_grad():
        q, k, v = mixer.qkv(x)  # [B, H, T, K] each
        full = mixer.out(merge_heads(attention_naive(q, k, v, causal=True)))  # [B, T, D]
        state, steps = mixer.init_state(2), []
        for t in range(30):
            y_t, state = mixer.step(x[:, t], state)
            steps.append(y_t)
        assert_rel_close(torch.stack(steps, 1), full, 1e-6, "step by step = full attention")
        forward = mixer(x)
        differs = (torch.stack(steps, 1) - forward).norm() / forward.norm()
        assert differs > 1e-2, f"step must differ from forward (its lazy queries), relative difference {differs:.1e}"
        prompt, state = mixer(x[:, :20], return_state=True)
        assert_rel_close(prompt, mixer(x[:, :20]), 1e-6, "the prompt's piece is ProbSparse")
        rest, _ = mixer(x[:, 20:], state=state, return_state=True)
        assert_rel_close(rest, full[:, 20:], 1e-6, "a continuation attends fully")


def test_cross_step_attends_fully_over_the_context(assert_rel_close):
    torch.manual_seed(0)
    mixer = build_mixer("probsparse", 16, n_heads=2, factor=1, causal=False).eval()
    x, context = torch.randn(2, 9, 16), torch.randn(2, 12, 16)
    with torch.no_grad():
        q, k, v = mixer.qkv(x, context)
        full = mixer.out(merge_heads(attention_naive(q, k, v, causal=False)))  # [B, T, D]
        state = mixer.init_state(2, context=context)
        steps = torch.stack([mixer.step(x[:, t], state)[0] for t in range(9)], 1)
        assert_rel_close(steps, full, 1e-6, "cross step = full attention over the context")
        assert_rel_close(mixer(x, state=state), mixer(x, context=context), 1e-6, "forward over the state")
    with pytest.raises(ValueError, match="does not take a key mask"):
        mixer.init_state(2, context=context, context_mask=torch.ones(2, 12, dtype=torch.bool))
