"""The short-convolution option (``conv_size``) of linear attention, flow attention and LightNet: the formula with an identity
tap, the conv cache carried in the state, step, the default, the errors (GLA's and BASED's have their own files)."""

import pytest
import torch
import torch.nn.functional as F

from seqmix.core.mixers.flow import FlowAttention
from seqmix.core.mixers.lightnet import LightNet, LightNetState
from seqmix.core.mixers.linear import LinearAttention, LRPEState
from seqmix.kernels.flow import FlowState, flow_attention
from seqmix.kernels.linear_attn import linear_attn

MIXERS = {
    "linear_attention": lambda **kw: LinearAttention(16, n_heads=2, chunk_size=16, **kw),
    "linear_attention_lrpe": lambda **kw: LinearAttention(16, n_heads=2, chunk_size=16, positional="lrpe",
                                                          decay="retnet", **kw),
    "flow": lambda **kw: FlowAttention(16, n_heads=2, chunk_size=16, **kw),
    "lightnet": lambda **kw: LightNet(16, n_heads=2, chunk_size=16, **kw),
}


def identity_taps(mixer):
    """Every conv's last tap 1, the others 0: the convolutions become SiLU of their inputs."""
    with torch.no_grad():
        for conv in mixer.convs:
            conv.weight.zero_()
            conv.weight[-1] = 1.0


def test_linear_attention_identity_taps_give_silu_of_the_projections():
    """With identity taps q, k, v are SiLU of their projections, before phi (the module docstring's form)."""
    torch.manual_seed(0)
    mixer = LinearAttention(16, n_heads=2, chunk_size=16, feature_map="elu1", conv_size=3, impl="naive")
    identity_taps(mixer)
    x = torch.randn(2, 11, 16)
    q, k, v = F.silu(mixer.qkv(x)).view(2, 11, 3, 2, 8).unbind(2)  # [B, T, H, K] each
    o, _ = linear_attn(F.elu(q) + 1, F.elu(k) + 1, v, impl="naive")
    torch.testing.assert_close(mixer(x), mixer.output(o, x))


def test_flow_identity_taps_give_silu_of_the_projections():
    torch.manual_seed(0)
    mixer = FlowAttention(16, n_heads=2, chunk_size=16, conv_size=3, impl="naive")
    identity_taps(mixer)
    x = torch.randn(2, 11, 16)
    q, k, v = F.silu(mixer.qkv(x)).view(2, 11, 3, 2, 8).unbind(2)  # [B, T, H, K] each
    o, _ = flow_attention(q, k, v, causal=True, impl="naive")
    torch.testing.assert_close(mixer(x), mixer.out(o.reshape(2, 11, 16)))


def test_lightnet_identity_taps_give_silu_of_the_projections():
    """With identity taps q, f, v are SiLU of their projections (q's SiLU is the convolution's, not applied twice)."""
    torch.manual_seed(0)
    mixer = LightNet(16, n_heads=2, chunk_size=16, conv_size=3, impl="naive")
    identity_taps(mixer)
    x = torch.randn(2, 11, 16)
    q, f, v = (F.silu(proj(x)).view(2, 11, 2, -1) for proj in (mixer.q_proj, mixer.f_proj, mixer.v_proj))
    o, _ = mixer.attend(q, f.float(), v, impl="naive")  # [B, T, H, V]
    torch.testing.assert_close(mixer(x), mixer.output(o, x))


@pytest.mark.parametrize("name", MIXERS)
def test_conv_cache_carries_the_preceding_tokens(name):
    """Two pieces with the carried state equal one pass: the conv cache holds the last conv_size - 1 projections."""
    torch.manual_seed(1)
    mixer = MIXERS[name](conv_size=4)
    x = torch.randn(1, 9, 16)
    whole = mixer(x)
    first, state = mixer(x[:, :5], return_state=True)
    inner, cache = state
    assert cache.shape == (1, 3, 2 * mixer.key_dim + mixer.value_dim if name == "lightnet" else 3 * 16)
    second, _ = mixer(x[:, 5:], state=state, return_state=True)
    torch.testing.assert_close(torch.cat([first, second], 1), whole, atol=1e-5, rtol=1e-5)
    if isinstance(inner, LRPEState):
        floats = inner.memory[0].numel()
    elif isinstance(inner, (FlowState, LightNetState)):
        floats = sum(part[0].numel() for part in inner if isinstance(part, torch.Tensor))  # the count is an int
    else:
        floats = inner[0].numel()
    assert mixer.state_size(100) == floats + cache[0].numel()


@pytest.mark.parametrize("name", MIXERS)
def test_step_from_init_state_matches_the_forward(name):
    torch.manual_seed(2)
    mixer = MIXERS[name](conv_size=4)
    x = torch.randn(2, 7, 16)
    state = mixer.init_state(2)
    steps = []
    for t in range(7):
        y, state = mixer.step(x[:, t], state)
        steps.append(y)
    torch.testing.assert_close(torch.stack(steps, 1), mixer(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", MIXERS)
def test_default_has_no_convolutions_and_a_plain_state(name):
    mixer = MIXERS[name]()
    assert mixer.convs is None and not any("convs" in key for key in mixer.state_dict())
    assert type(mixer.init_state(2)) is not tuple  # a tensor or the mixer's NamedTuple, not (state, conv_cache)


@pytest.mark.parametrize("name", MIXERS)
def test_a_state_without_the_conv_cache_is_a_clear_error(name):
    plain = MIXERS[name]().init_state(1)
    mixer = MIXERS[name](conv_size=4)
    with pytest.raises(ValueError, match=r"with conv_size the state is \("):
        mixer(torch.randn(1, 3, 16), state=plain)


@pytest.mark.parametrize("name", MIXERS)
@pytest.mark.parametrize("bad", [1, 0, 2.5, True, "4"])
def test_bad_conv_size_is_a_clear_error(name, bad):
    with pytest.raises(ValueError, match="conv_size must be an int >= 2"):
        MIXERS[name](conv_size=bad)
