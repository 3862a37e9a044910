"""Linear attention's short convolutions (``conv_size``): the formula with an identity tap, the state, the errors."""

import pytest
import torch
import torch.nn.functional as F

from seqmix.core.mixers.linear import LinearAttention, LRPEState
from seqmix.kernels.linear_attn import linear_attn


def test_identity_taps_give_silu_of_the_projections():
    """With every conv's last tap 1 and the others 0, q, k, v are SiLU of their projections before phi."""
    torch.manual_seed(0)
    mixer = LinearAttention(16, n_heads=2, chunk_size=16, feature_map="elu1", conv_size=3, impl="naive")
    with torch.no_grad():
        for conv in mixer.convs:
            conv.weight.zero_()
            conv.weight[-1] = 1.0
    x = torch.randn(2, 11, 16)
    q, k, v = F.silu(mixer.qkv(x)).view(2, 11, 3, 2, 8).unbind(2)  # [B, T, H, K] each
    o, _ = linear_attn(F.elu(q) + 1, F.elu(k) + 1, v, impl="naive")
    torch.testing.assert_close(mixer(x), mixer.output(o, x))


@pytest.mark.parametrize("positional", ["none", "lrpe"])
def test_conv_cache_carries_the_preceding_tokens(positional):
    """Two pieces with the carried state equal one pass: the conv cache holds the last conv_size - 1 projections."""
    torch.manual_seed(1)
    mixer = LinearAttention(16, n_heads=2, chunk_size=16, conv_size=4, positional=positional, decay="retnet")
    x = torch.randn(1, 9, 16)
    whole = mixer(x)
    first, state = mixer(x[:, :5], return_state=True)
    memory, cache = state
    assert cache.shape == (1, 3, 3 * 16)
    assert isinstance(memory, LRPEState) == (positional == "lrpe")
    second, _ = mixer(x[:, 5:], state=state, return_state=True)
    torch.testing.assert_close(torch.cat([first, second], 1), whole, atol=1e-5, rtol=1e-5)
    plain = memory.memory if positional == "lrpe" else memory
    assert mixer.state_size(100) == plain[0].numel() + cache[0].numel()


def test_step_from_init_state_matches_the_forward():
    torch.manual_seed(2)
    mixer = LinearAttention(16, n_heads=2, chunk_size=16, conv_size=4)
    x = torch.randn(2, 7, 16)
    state = mixer.init_state(2)
    steps = []
    for t in range(7):
        y, state = mixer.step(x[:, t], state)
        steps.append(y)
    torch.testing.assert_close(torch.stack(steps, 1), mixer(x), atol=1e-5, rtol=1e-5)


def test_default_has_no_convolutions_and_a_plain_state():
    mixer = LinearAttention(16, n_heads=2)
    assert mixer.convs is None and not any("convs" in name for name in mixer.state_dict())
    assert isinstance(mixer.init_state(2), torch.Tensor)


def test_a_state_without_the_conv_cache_is_a_clear_error():
    mixer = LinearAttention(16, n_heads=2, conv_size=4)
    with pytest.raises(ValueError, match=r"with conv_size the state is \(memory, conv_cache\)"):
        mixer(torch.randn(1, 3, 16), state=torch.zeros(1, 2, 8, 8))


@pytest.mark.parametrize("bad", [1, 0, 2.5, True, "4"])
def test_bad_conv_size_is_a_clear_error(bad):
    with pytest.raises(ValueError, match="conv_size must be an int >= 2"):
        LinearAttention(16, n_heads=2, conv_size=bad)
