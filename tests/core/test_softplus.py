"""Softplus attention with re-weighting: rows are distributions over the visible keys (causal,
windowed, padded, huge scores); the length scale is log_{L0} n_i; the mixer is the explicit
formula; re-weighting with power 1 is the identity, a power p is w^p renormalised, switchable at
inference; clear errors."""

import math

import pytest
import torch
import torch.nn.functional as F

from seqmix.core import build_mixer
from seqmix.core.layers import split_heads
from seqmix.core.mixers.softplus import length_scale, softplus_weights
from seqmix.kernels.attention import visible_keys_mask


def random_scores(t, s, scale=3.0, seed=0):
    return torch.randn(2, 2, t, s, generator=torch.Generator().manual_seed(seed)) * scale  # [B, H, T, S]


@pytest.mark.parametrize("power", [1.0, 4.0])
@pytest.mark.parametrize("scale", [3.0, 1e4])
def test_rows_are_distributions_over_visible_keys(power, scale):
    key_mask = torch.ones(2, 9, dtype=torch.bool)
    key_mask[1, 5:] = False  # the second sequence is padded
    cases = {
        "causal": visible_keys_mask(9, 9, causal=True),
        "causal, window 3": visible_keys_mask(9, 9, causal=True, window=3),
        "padded": visible_keys_mask(9, 9, causal=False, key_mask=key_mask),
        "causal, cached keys": visible_keys_mask(4, 9, causal=True),
    }
    for what, visible in cases.items():
        w = softplus_weights(random_scores(visible.shape[-2], 9, scale), visible, power=power)
        assert torch.isfinite(w).all() and (w >= 0).all(), what
        assert (w[~visible.expand_as(w)] == 0).all(), f"{what}: weight on a key it may not see"
        torch.testing.assert_close(w.sum(-1), torch.ones(w.shape[:-1]), msg=what)


def test_a_query_without_visible_keys_gets_zero():
    visible = visible_keys_mask(3, 2, causal=True)  # causal cross, S < T: the first query sees nothing
    w = softplus_weights(random_scores(3, 2), visible, power=2.0)
    assert (w[:, :, 0] == 0).all() and torch.allclose(w[:, :, 1:].sum(-1), torch.ones(2, 2, 2))


def test_power_one_is_the_l1_normalised_softplus_and_p_is_a_renormalised_power():
    scores, visible = random_scores(7, 7), visible_keys_mask(7, 7, causal=True)
    plain = F.softplus(scores) * visible  # the paper's l1 normalisation of softplus, written out
    plain = plain / plain.sum(-1, keepdim=True)
    torch.testing.assert_close(softplus_weights(scores, visible, power=1.0), plain)
    sharpened = plain ** 5 / (plain ** 5).sum(-1, keepdim=True)
    torch.testing.assert_close(softplus_weights(scores, visible, power=5.0), sharpened)
    assert (sharpened.amax(-1)[..., 1:] > plain.amax(-1)[..., 1:]).all(), "a power > 1 sharpens the strongest weight"


def test_length_scale_follows_the_formula():
    n_causal = torch.arange(1.0, 7.0, dtype=torch.float64)  # n_i = i + 1
    causal = length_scale(visible_keys_mask(6, 6, causal=True), 512)[0, 0, :, 0]
    torch.testing.assert_close(causal, n_causal.log() / math.log(512))
    n_windowed = torch.tensor([1.0, 2, 3, 3, 3, 3], dtype=torch.float64)  # n_i = min(i + 1, 3)
    windowed = length_scale(visible_keys_mask(6, 6, causal=True, window=3), 16)[0, 0, :, 0]
    torch.testing.assert_close(windowed, n_windowed.log() / math.log(16))
    assert length_scale(visible_keys_mask(8, 8, causal=False), 8).eq(1).all(), "the scale is 1 at n = L0"


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("length_base,power", [(16, 1.0), (None, 1.0), (16, 3.0)])
def test_mixer_is_the_explicit_formula(causal, length_base, power, assert_rel_close):
    """y = W_o sum_j w'_ij v_j with w' = (softplus(lambda_i q.k / sqrt K) / sum)^p / sum, lambda_i = log_16 n_i."""
    torch.manual_seed(0)
    mixer = build_mixer("softplus", 16, n_heads=2, causal=causal, length_base=length_base,
                        reweight_power=power).double()
    x = torch.randn(2, 11, 16, dtype=torch.float64)
    q, k, v = (split_heads(f(x), 2) for f in (mixer.qkv.q, mixer.qkv.k, mixer.qkv.v))  # [B, H, T, K]
    n = torch.arange(1.0, 12.0)[:, None] if causal else torch.full((11, 1), 11.0)  # [T, 1] keys query i sees
    n = n.double()
    lam = torch.log(n) / math.log(16) if length_base else torch.ones_like(n)
    w = F.softplus(lam * (q @ k.transpose(-1, -2)) / math.sqrt(8))  # [B, H, T, S]
    if causal:
        w = w.tril()
    w = w / w.sum(-1, keepdim=True)
    w = w ** power / (w ** power).sum(-1, keepdim=True)
    expected = mixer.out((w @ v).transpose(1, 2).reshape(2, 11, 16))  # [B, H, T, V] -> [B, T, D]
    with torch.no_grad():
        assert_rel_close(mixer(x), expected.detach(), 1e-12, f"causal={causal} L0={length_base} p={power}")


def test_reweighting_switches_at_inference(assert_rel_close):
    """Setting reweight_power on a built mixer changes its output; back to 1 gives the original exactly."""
    torch.manual_seed(0)
    mixer = build_mixer("softplus", 16, n_heads=2).eval()
    x = torch.randn(2, 13, 16)
    with torch.no_grad():
        y = mixer(x)
        mixer.reweight_power = 8.0
        y_sharp = mixer(x)
        torch.manual_seed(0)
        assert_rel_close(y_sharp, build_mixer("softplus", 16, n_heads=2, reweight_power=8.0)(x), 1e-6, "p=8")
        assert (y_sharp - y).abs().max() > 1e-3, "re-weighting changed nothing"
        mixer.reweight_power = 1
        assert torch.equal(mixer(x), y)


def test_bad_arguments_name_the_range():
    with pytest.raises(ValueError, match="length_base must be an int >= 2"):
        build_mixer("softplus", 16, length_base=1)
    with pytest.raises(ValueError, match="reweight_power must be a finite number >= 1"):
        build_mixer("softplus", 16, reweight_power=0.5)
    mixer = build_mixer("softplus", 16)
    with pytest.raises(ValueError, match="reweight_power must be a finite number >= 1"):
        mixer.reweight_power = float("inf")
