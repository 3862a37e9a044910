"""TransNormerLLM's pieces (Qin et al. 2023), each against its formula: LRPE-d, SRMSNorm, SGLU, the TNL
layer (linear attention with decay + LRPE + SRMSNorm + SGLU), and the defaults they leave unchanged."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from seqmix.core.blocks import ChannelMixer, MixerStack, make_norm, mixer_factory
from seqmix.core.embeddings import LRPE
from seqmix.core.mixers.linear import LinearAttention, LRPEState, retnet_log_decay

TNL = dict(n_heads=2, chunk_size=16, decay="retnet", feature_map="silu", positional="lrpe", output_norm="srmsnorm")


def rel_rms(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a - b).pow(2).mean().sqrt() / b.pow(2).mean().sqrt()).detach())


def test_lrpe_scores_depend_on_the_distance_only():
    h, k, t = 2, 4, 9
    lrpe = LRPE(h, k)
    q, key = torch.randn(1, t, h, k, dtype=torch.float64), torch.randn(1, t, h, k, dtype=torch.float64)
    theta = lrpe.theta  # [H, K]
    assert torch.allclose(theta.flatten(), 10000.0 ** (-torch.arange(h * k, dtype=torch.float64) / (h * k)))
    scores = torch.einsum("bthk,bshk->bhts", lrpe(q), lrpe(key))  # [B, H, T, T]
    distance = torch.arange(t)[:, None] - torch.arange(t)[None, :]  # [T, S]: t - s
    cosines = torch.cos(distance[None, :, :, None] * theta[:, None, None, :])  # [H, T, S, K]
    formula = torch.einsum("bthk,bshk,htsk->bhts", q, key, cosines)  # sum_j q_j k_j cos(theta_j (t - s))
    assert torch.allclose(scores, formula, atol=1e-12)
    shifted = torch.einsum("bthk,bshk->bhts", lrpe(q, offset=1000), lrpe(key, offset=1000))
    assert torch.allclose(shifted, formula, atol=1e-9)  # relative: a common offset changes nothing


def test_linear_attention_with_lrpe_is_the_decayed_cosine_score():
    """o_t = (2K)^-0.5 sum_{s<=t} lambda^(t-s) sum_j q_j k_j cos(theta_j (t-s)) v_s, then the output path."""
    torch.manual_seed(0)
    d, t = 16, 11
    mixer = LinearAttention(d, impl="naive", **TNL).double()
    x = torch.randn(2, t, d, dtype=torch.float64)
    q, k, v = mixer.qkv(x).view(2, t, 3, 2, 8).unbind(2)  # [B, T, H, K] each
    q, k = F.silu(q), F.silu(k)
    distance = torch.arange(t)[:, None] - torch.arange(t)[None, :]  # [T, S]
    cosines = torch.cos(distance[None, :, :, None] * mixer.lrpe.theta[:, None, None, :])  # [H, T, S, K]
    decay = torch.exp(retnet_log_decay(2).double()[:, None, None] * distance.clamp(min=0))  # [H, T, S]
    scores = torch.einsum("bthk,bshk,htsk->bhts", q, k, cosines) * decay * (distance >= 0)  # [B, H, T, S]
    o = torch.einsum("bhts,bshv->bthv", scores, v) / math.sqrt(16)  # [B, T, H, V], scale of the 2K-wide keys
    assert rel_rms(mixer(x), mixer.output(o, x)) < 1e-10
    chunk = LinearAttention(d, impl="chunk", **TNL).double()
    chunk.load_state_dict(mixer.state_dict())
    assert rel_rms(chunk(x), mixer(x)) < 1e-10


def test_lrpe_state_carries_the_position():
    torch.manual_seed(0)
    mixer = LinearAttention(16, **TNL)
    x = torch.randn(2, 13, 16)
    whole = mixer(x)
    first, state = mixer(x[:, :6], return_state=True)
    assert isinstance(state, LRPEState) and state.seen == 6 and state.memory.shape == (2, 2, 16, 8)
    second, state = mixer(x[:, 6:], state=state, return_state=True)
    assert state.seen == 13 and rel_rms(torch.cat((first, second), 1), whole) < 1e-5
    assert mixer.state_size(10) == mixer.state_size(10_000) == 2 * 16 * 8
    with pytest.raises(ValueError, match="LRPEState"):
        mixer(x, state=torch.zeros(2, 2, 16, 8))


def test_srmsnorm_is_x_over_its_rms_with_no_parameters():
    x = torch.randn(3, 5, 12) * 7
    norm = make_norm("srmsnorm", 12)
    assert sum(p.numel() for p in norm.parameters()) == 0
    assert torch.allclose(norm(x), x / (x.norm(dim=-1, keepdim=True) / math.sqrt(12)), atol=1e-5)
    head_norm = LinearAttention(16, n_heads=2, output_norm="srmsnorm").output.norm
    assert sum(p.numel() for p in head_norm.parameters()) == 0


def test_sglu_is_the_product_of_two_projections_with_no_activation():
    x = torch.randn(2, 3, 12)
    sglu, glu = ChannelMixer(12, kind="sglu"), ChannelMixer(12, kind="glu")
    assert sum(p.numel() for p in sglu.parameters()) == sum(p.numel() for p in glu.parameters())
    w1, w2 = sglu.up.weight.chunk(2, 0)  # [hidden, D] each
    b1, b2 = sglu.up.bias.chunk(2)
    formula = ((x @ w1.T + b1) * (x @ w2.T + b2)) @ sglu.down.weight.T + sglu.down.bias  # (x W1 * x W2) W3
    assert torch.allclose(sglu(x), formula, atol=1e-5)
    glu.load_state_dict(sglu.state_dict())
    assert torch.allclose(glu(x), (F.silu(x @ w1.T + b1) * (x @ w2.T + b2)) @ glu.down.weight.T + glu.down.bias,
                          atol=1e-5)  # the default "glu" keeps its SiLU


def test_tnl_block_steps_as_it_forwards():
    torch.manual_seed(0)
    stack = MixerStack(16, 2, mixer_factory("linear_attention", **TNL), norm="srmsnorm", mlp="sglu")
    assert all(sum(p.numel() for p in b.norm_mix.parameters()) == 0 for b in stack.blocks)
    x = torch.randn(2, 7, 16)
    whole = stack(x)
    states = stack.init_states(2)
    steps = []
    for i in range(7):
        y, states = stack.step(x[:, i], states)
        steps.append(y)
    assert rel_rms(torch.stack(steps, 1), whole) < 1e-5


def test_defaults_are_unchanged():
    mixer = LinearAttention(16, n_heads=2)
    assert mixer.positional == "none" and mixer.lrpe is None
    assert set(mixer.state_dict()) == {"qkv.weight", "output.norm.weight", "output.gate.weight", "output.out.weight"}
    state = mixer.init_state(2)
    assert isinstance(state, torch.Tensor) and state.shape == (2, 2, 8, 8)
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    mixer = mixer.double()
    q, k, v = mixer.qkv(x).view(2, 5, 3, 2, 8).unbind(2)  # [B, T, H, K] each
    scores = torch.einsum("bthk,bshk->bhts", q, k).tril()  # [B, H, T, S]
    o = torch.einsum("bhts,bshv->bthv", scores, v) / math.sqrt(8)  # [B, T, H, V]
    assert rel_rms(mixer(x), mixer.output(o, x)) < 1e-10
    assert isinstance(make_norm("rmsnorm", 8), torch.nn.RMSNorm) and make_norm("rmsnorm", 8).weight is not None


@pytest.mark.parametrize("arguments, message", [
    (dict(positional="rope"), "positional='rope' is unknown"),
    (dict(output_norm="layernorm"), "output_norm='layernorm' is unknown"),
    (dict(positional="lrpe", impl="triton", n_heads=1, d_model=256), "key dim = 512"),
])
def test_bad_options_fail_clearly(arguments, message):
    d_model = arguments.pop("d_model", 16)
    with pytest.raises(ValueError, match=message):
        LinearAttention(d_model, **arguments)
    with pytest.raises(ValueError, match="'sglu'"):
        ChannelMixer(8, kind="swiglu")
    with pytest.raises(ValueError, match="'srmsnorm'"):
        make_norm("scalenorm", 8)
