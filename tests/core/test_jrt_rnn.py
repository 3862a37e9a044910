"""JRT-RNN's prefix linear attention: with prefix_len=0 it is BASED's causal Taylor linear attention
(same weights); a prefix token sees the whole prefix and nothing after it, a later token never sees
beyond itself (gradients); the chunked form equals the T x T formula with a prefix and a carried
state; a prompt prefilled by one forward is continued by step and by pieces; a prefix longer than the
input makes the whole input the prefix."""

import pytest
import torch

from seqmix.core import build_mixer

D, H, F = 16, 2, 4


def jrt(prefix_len, seed=0):
    torch.manual_seed(seed)
    return build_mixer("jrt_rnn", D, n_heads=H, feature_dim=F, prefix_len=prefix_len, chunk_size=8)


def inputs(t, seed=1):
    return torch.randn(2, t, D, generator=torch.Generator().manual_seed(seed))


def test_without_prefix_it_is_causal_linear_attention(assert_rel_close):
    """BASED's global branch is the same normalised Taylor linear attention: its local branch silenced
    and its q, k, v, out weights given to JRT-RNN's q, decoder keys, v, out, the outputs agree."""
    mixer = jrt(0)
    based = build_mixer("based", D, n_heads=H, feature_dim=F, window=4, chunk_size=8)
    with torch.no_grad():
        based.local.out.weight.zero_()
        for mine, theirs in ((mixer.q, based.q), (mixer.k_dec, based.k), (mixer.v, based.v), (mixer.out, based.out)):
            theirs.weight.copy_(mine.weight)
        x = inputs(21)
        for impl in ("naive", "chunk"):
            mixer.impl = impl
            assert_rel_close(mixer(x), based(x), 1e-5, f"impl={impl}")


@pytest.mark.parametrize("impl", ["naive", "chunk"])
def test_who_sees_whom(impl):
    """d y_i / d x_j != 0 exactly for: j < M when i < M (the whole prefix, nothing after it); j < M or
    j <= i when i >= M (the whole prefix, then causal)."""
    t, m = 9, 4
    mixer = jrt(m)
    mixer.impl = impl
    x = inputs(t).requires_grad_()
    y = mixer(x)
    for i in range(t):
        (grad,) = torch.autograd.grad(y[:, i].sum(), x, retain_graph=True)
        seen = grad.abs().sum((0, 2)) > 0  # [T]: which positions position i depends on
        expected = torch.arange(t) < m if i < m else (torch.arange(t) < m) | (torch.arange(t) <= i)
        assert torch.equal(seen, expected), f"position {i} sees {seen.nonzero().flatten().tolist()}"


@pytest.mark.parametrize("t", [4, 23])  # all prefix, prefix then causal (T=1 from nothing: y = v, q's grad is noise)
def test_chunk_equals_naive_with_prefix_and_state(t, assert_rel_close):
    mixer = jrt(6)
    with torch.no_grad():
        _, state = mixer(inputs(3, seed=5), return_state=True)  # a carried state: no prefix in the next piece
    x = inputs(t)
    results = {}
    for impl in ("naive", "chunk"):
        mixer.impl = impl
        for carried in (None, state):
            mixer.zero_grad()
            xi = x.clone().requires_grad_()
            y, final = mixer(xi, state=carried, return_state=True)
            (y.sin().sum() + final.kv.sum()).backward()
            grads = [xi.grad, *(p.grad for p in mixer.parameters() if p.grad is not None)]
            results[impl, carried is None] = [y.detach(), final.kv.detach(), *grads]
    for fresh in (True, False):
        got, want = results["chunk", fresh], results["naive", fresh]
        assert len(got) == len(want), "the same parameters get gradients"
        for i, (a, b) in enumerate(zip(got, want)):
            assert_rel_close(a, b, 1e-5, f"T={t} fresh={fresh}: result {i}")


def test_prefill_then_step_and_pieces(assert_rel_close):
    mixer = jrt(5).eval()
    x = inputs(14)
    with torch.no_grad():
        y = mixer(x)
        y_prompt, state = mixer(x[:, :7], return_state=True)  # the prompt holds the whole prefix
        assert state.seen == 7
        steps = []
        for i in range(7, 14):
            y_t, state = mixer.step(x[:, i], state)
            steps.append(y_t)
        assert_rel_close(torch.cat([y_prompt, torch.stack(steps, 1)], 1), y, 1e-5, "prefill 7, then step")
        y_rest = mixer(x[:, 7:], state=mixer(x[:, :7], return_state=True)[1])
        assert_rel_close(torch.cat([y_prompt, y_rest], 1), y, 1e-5, "two pieces")


def test_prefix_longer_than_the_input_is_the_whole_input(assert_rel_close):
    x = inputs(6)
    with torch.no_grad():
        assert_rel_close(jrt(50)(x), jrt(6)(x), 1e-6, "prefix_len 50 on 6 tokens = prefix_len 6")
        assert (jrt(6)(x) - jrt(5)(x)).abs().max() > 1e-4, "the prefix length must matter"
    assert jrt(3).state_size(10) == jrt(3).state_size(10_000) == H * (1 + F + F * F) * (D // H + 1)


@pytest.mark.parametrize("arguments,message", [
    ({"prefix_len": -1}, "prefix_len must be an int >= 0"),
    ({"prefix_len": True}, "prefix_len must be an int >= 0"),
    ({"feature_dim": 0}, "feature_dim must be a positive int"),
    ({"chunk_size": 0}, "chunk_size must be a positive int"),
    ({"causal": False}, "supports only \\['causal_self'\\]"),
])
def test_bad_arguments_name_their_range(arguments, message):
    with pytest.raises(ValueError, match=message):
        build_mixer("jrt_rnn", D, n_heads=H, **arguments)


def test_chunk_features_are_the_taylor_features():
    """The chunked form's feature map (the square term scaled before the product) is BASED's Taylor map."""
    from seqmix.core.mixers.based import taylor_features
    from seqmix.core.mixers.jrt_rnn import chunk_features

    x = torch.randn(2, 5, 3, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(chunk_features(x), taylor_features(x), rtol=1e-13, atol=0)
    q, k = chunk_features(x[:, :1]), chunk_features(x[:, 1:2])
    s = (x[:, :1] * x[:, 1:2]).sum(-1) / 6 ** 0.5
    torch.testing.assert_close((q * k).sum(-1), 1 + s + s * s / 2)  # the intra-chunk scores' identity


def test_no_prefix_builds_no_encoder_keys():
    """prefix_len=0 has no prefix to encode: no k_enc weights (they would get no gradient); with a prefix, k_enc
    gets one."""
    assert jrt(0).k_enc is None and not any(name.startswith("k_enc") for name, _ in jrt(0).named_parameters())
    mixer = jrt(4)
    mixer(inputs(9)).sum().backward()
    assert mixer.k_enc.weight.grad is not None and mixer.k_enc.weight.grad.abs().sum() > 0
