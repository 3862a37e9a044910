"""BASED's short convolutions (``conv_size``): the formula with an identity tap, the state, the errors."""

import pytest
import torch
import torch.nn.functional as F

from seqmix.core.mixers.based import Based, taylor_features
from seqmix.kernels.linear_attn import linear_attn


def test_identity_taps_give_silu_of_the_projections():
    """With every conv's last tap 1 and the others 0, the linear branch reads SiLU of q, k, v (the docstring's form)."""
    torch.manual_seed(0)
    mixer = Based(16, n_heads=2, feature_dim=4, window=5, chunk_size=16, conv_size=3, impl="naive")
    with torch.no_grad():
        for conv in mixer.convs:
            conv.weight.zero_()
            conv.weight[-1] = 1.0
    b, t, h = 2, 11, 2
    x = torch.randn(b, t, 16)
    q = taylor_features(F.silu(mixer.q(x)).view(b, t, h, 4))  # [B, T, H, 1 + F + F^2]
    k = taylor_features(F.silu(mixer.k(x)).view(b, t, h, 4))  # [B, T, H, 1 + F + F^2]
    v = F.silu(mixer.v(x)).view(b, t, h, 8)  # [B, T, H, V]
    o, _ = linear_attn(q, k, torch.cat([v, torch.ones_like(v[..., :1])], -1), scale=1.0, impl="naive")
    o = o[..., :-1] / o[..., -1:]  # [B, T, H, V]
    expected = mixer.out(o.reshape(b, t, 16)) + mixer.local(x)  # the window branch reads x itself
    torch.testing.assert_close(mixer(x), expected)


def test_conv_cache_carries_the_preceding_tokens():
    """Two pieces with the carried state equal one pass; ``state_size`` counts the conv cache."""
    torch.manual_seed(1)
    mixer = Based(16, n_heads=2, feature_dim=4, window=5, chunk_size=16, conv_size=4)
    x = torch.randn(1, 9, 16)
    whole = mixer(x)
    first, state = mixer(x[:, :5], return_state=True)
    linear_state, window_state, cache = state
    assert cache.shape == (1, 3, 2 * 2 * 4 + 16)
    second, _ = mixer(x[:, 5:], state=state, return_state=True)
    torch.testing.assert_close(torch.cat([first, second], 1), whole, atol=1e-5, rtol=1e-5)
    plain = Based(16, n_heads=2, feature_dim=4, window=5, chunk_size=16)
    assert mixer.state_size(100) - plain.state_size(100) == cache[0].numel()


def test_default_has_no_convolutions_and_a_two_part_state():
    mixer = Based(16, n_heads=2, feature_dim=4)
    assert mixer.convs is None and not any("convs" in name for name in mixer.state_dict())
    assert len(mixer.init_state(2)) == 2


@pytest.mark.parametrize("bad", [1, 0, 2.5, True, "4"])
def test_bad_conv_size_is_a_clear_error(bad):
    with pytest.raises(ValueError, match="conv_size must be an int >= 2"):
        Based(16, n_heads=2, conv_size=bad)
