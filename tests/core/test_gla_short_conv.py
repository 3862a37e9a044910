"""GLA's short convolutions (``conv_size``): the formula with an identity tap, the state, the errors."""

import pytest
import torch
import torch.nn.functional as F

from seqmix.core.mixers.gla import GatedLinearAttention
from seqmix.kernels.gla import chunk_gla


def test_identity_taps_give_silu_of_the_projections():
    """With every conv's last tap 1 and the others 0, q, k, v are SiLU of their projections (the docstring's form)."""
    torch.manual_seed(0)
    mixer = GatedLinearAttention(16, n_heads=2, chunk_size=16, conv_size=3, impl="naive")
    with torch.no_grad():
        for conv in mixer.convs:
            conv.weight.zero_()
            conv.weight[-1] = 1.0
    x = torch.randn(2, 11, 16)
    b, t, h = 2, 11, 2
    q = F.silu(mixer.q_proj(x)).view(b, t, h, -1)  # [B, T, H, K]
    k = F.silu(mixer.k_proj(x)).view(b, t, h, -1)  # [B, T, H, K]
    v = F.silu(mixer.v_proj(x)).view(b, t, h, -1)  # [B, T, H, V]
    g = (F.logsigmoid(mixer.gate_proj(x)) / mixer.gate_logit_normalizer).view(b, t, h, -1)  # [B, T, H, K]
    o, _ = chunk_gla(q, k, v, g, chunk_size=16, impl="naive")
    torch.testing.assert_close(mixer(x), mixer.output(o, x))


def test_conv_cache_carries_the_preceding_tokens():
    """Two pieces with the carried state equal one pass: the conv cache holds the last conv_size - 1 projections."""
    torch.manual_seed(1)
    mixer = GatedLinearAttention(16, n_heads=2, chunk_size=16, conv_size=4)
    x = torch.randn(1, 9, 16)
    whole = mixer(x)
    first, state = mixer(x[:, :5], return_state=True)
    memory, cache = state
    assert cache.shape == (1, 3, 2 * mixer.key_dim + mixer.value_dim)
    second, _ = mixer(x[:, 5:], state=state, return_state=True)
    torch.testing.assert_close(torch.cat([first, second], 1), whole, atol=1e-5, rtol=1e-5)
    assert mixer.state_size(100) == memory[0].numel() + cache[0].numel()


def test_default_has_no_convolutions_and_a_plain_state():
    mixer = GatedLinearAttention(16, n_heads=2)
    assert mixer.convs is None and not any("convs" in name for name in mixer.state_dict())
    assert isinstance(mixer.init_state(2), torch.Tensor)


@pytest.mark.parametrize("bad", [1, 0, 2.5, True, "4"])
def test_bad_conv_size_is_a_clear_error(bad):
    with pytest.raises(ValueError, match="conv_size must be an int >= 2"):
        GatedLinearAttention(16, n_heads=2, conv_size=bad)
