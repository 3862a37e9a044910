"""The mamba mixer's mechanism: against mambapy's Mamba block (an independent pure-PyTorch
implementation) with the same weights, outputs, input gradients and the recurrent state; the
paper's initialisation (S4D-real A, the step-size bias); input-dependent step sizes; errors."""

import math

import pytest
import torch
import torch.nn.functional as F
from mambapy.mamba import MambaBlock, MambaConfig

from seqmix.core import build_mixer
from seqmix.core.mixers.mamba import Mamba

D_MODEL, D_STATE, CONV, DT_RANK = 16, 4, 3, 2


def mixer_and_oracle(impl):
    """Our mixer and mambapy's block (no conv bias: ours has none) with our weights copied in."""
    torch.manual_seed(0)
    ours = build_mixer("mamba", D_MODEL, d_state=D_STATE, conv_size=CONV, dt_rank=DT_RANK, chunk_size=8, impl=impl)
    oracle = MambaBlock(MambaConfig(d_model=D_MODEL, n_layers=1, d_state=D_STATE, d_conv=CONV, dt_rank=DT_RANK,
                                    conv_bias=False, pscan=True))
    with torch.no_grad():
        for name in ("in_proj", "x_proj", "dt_proj", "out_proj"):
            getattr(oracle, name).load_state_dict(getattr(ours, name).state_dict())
        oracle.conv1d.weight.copy_(ours.conv.weight.t()[:, None, :])  # [k, E] -> [E, 1, k]
        oracle.A_log.copy_(ours.A_log)
        oracle.D.copy_(ours.D)
    return ours, oracle


@pytest.mark.parametrize("impl", ["naive", "chunk"])
def test_mamba_equals_mambapy(impl, assert_rel_close):
    ours, oracle = mixer_and_oracle(impl)
    x = torch.randn(2, 37, D_MODEL, generator=torch.Generator().manual_seed(1))
    x_ours, x_oracle = x.clone().requires_grad_(), x.clone().requires_grad_()
    y_ours, (_, ssm) = ours(x_ours, return_state=True)
    y_oracle = oracle(x_oracle)
    assert_rel_close(y_ours.detach(), y_oracle.detach(), 1e-5, f"{impl}: output")
    cotangent = torch.sin(torch.arange(y_ours.numel(), dtype=x.dtype)).view_as(y_ours)
    y_ours.backward(cotangent)
    y_oracle.backward(cotangent)
    assert_rel_close(x_ours.grad, x_oracle.grad, 1e-5, f"{impl}: input gradient")
    with torch.no_grad():  # mambapy's step carries the SSM state [B, E, N] like ours
        cache = (None, torch.zeros(2, ours.inner, CONV - 1))
        for t in range(x.shape[1]):
            _, cache = oracle.step(x[:, t], cache)
    assert_rel_close(ssm.detach(), cache[0], 1e-5, f"{impl}: final SSM state")


def test_mamba_initialisation_follows_the_paper():
    mixer = Mamba(32, d_state=6, dt_min=0.01, dt_max=0.05)
    a = -torch.exp(mixer.A_log)
    torch.testing.assert_close(a, -torch.arange(1.0, 7.0).expand(64, 6))  # S4D-real: A_en = -(n + 1)
    dt = F.softplus(mixer.dt_proj.bias)
    assert dt.min() >= 0.01 * (1 - 1e-5) and dt.max() <= 0.05 * (1 + 1e-5), "softplus(b_dt) outside [dt_min, dt_max]"
    assert mixer.dt_proj.in_features == math.ceil(32 / 16) and mixer.inner == 64
    assert mixer.state_size(10) == mixer.state_size(10_000) == 64 * 6 + 3 * 64


def test_mamba_step_size_depends_on_the_input():
    """Selectivity: two tokens give two different step sizes per channel (the x -> delta path is live)."""
    mixer = Mamba(16, d_state=4)
    x = torch.randn(1, 2, 16, generator=torch.Generator().manual_seed(3))
    u, _ = mixer.in_proj(x).chunk(2, -1)
    u, _ = mixer.conv(u)
    delta = F.softplus(mixer.dt_proj(mixer.x_proj(u)[..., :mixer.dt_proj.in_features]))  # [1, 2, E]
    assert (delta[0, 0] - delta[0, 1]).abs().max() > 1e-4


@pytest.mark.parametrize("arguments,message", [
    ({"d_state": 0}, "d_state must be an int >= 1"),
    ({"conv_size": 1}, "conv_size must be an int >= 2"),
    ({"dt_rank": 0}, "dt_rank must be an int >= 1"),
    ({"dt_min": 0.2, "dt_max": 0.1}, "need 0 < dt_min <= dt_max"),
    ({"chunk_size": 0}, "chunk_size must be a positive int"),
    ({"impl": "triton"}, "impl='triton' is unknown"),
    ({"causal": False}, "supports only \\['causal_self'\\]"),
])
def test_mamba_arguments_are_checked(arguments, message):
    with pytest.raises(ValueError, match=message):
        Mamba(16, **arguments)
