"""The LMU mixer's mechanisms: the parallel form equals the recurrence (with a carried state, every
gradient); the memory is a delay line (the Legendre decoder reads the input theta tokens ago); the
fixed system stays float64 and out of checkpoints; bad arguments fail with their range."""

import math

import pytest
import torch

from seqmix.core import build_mixer
from seqmix.kernels.lmu import lmu_memory, shifted_legendre


def test_parallel_form_equals_recurrence_with_state(assert_rel_close):
    torch.manual_seed(0)
    mixer = build_mixer("lmu", 16, n_heads=2, order=8, theta=20.0)
    x = torch.randn(2, 70, 16)  # 70 tokens: three chunks of the chunk form
    s0 = torch.randn(2, 2, 8)
    results = {}
    for impl in ("naive", "chunk", "fft"):
        mixer.impl = impl
        mixer.zero_grad()
        xi, si = x.clone().requires_grad_(), s0.clone().requires_grad_()
        y, final = mixer(xi, state=si, return_state=True)
        (y.sin().sum() + final.sum()).backward()
        results[impl] = [y.detach(), final.detach(), xi.grad, si.grad, *(p.grad for p in mixer.parameters())]
    for impl in ("chunk", "fft"):
        for i, (got, want) in enumerate(zip(results[impl], results["naive"])):
            assert_rel_close(got, want, 1e-5, f"{impl} vs naive, result {i}")


@pytest.mark.parametrize("r", [0.5, 1.0])
def test_memory_is_a_delay_line(r):
    """Voelker et al. eq. 3: ``u(t - r theta) ~= sum_i P~_i(r) m_i(t)``. The input is held for a step, so
    m_t (after u_t) holds the staircase whose midpoints are the samples: the reference is the smooth
    signal at continuous time ``t + 1/2 - r theta``. Band-limited input (6 sines, periods >= theta):
    the relative RMS error is 0.04-0.1% at order 12 (0.5% allowed), after the first 3 theta tokens."""
    theta, order = 64.0, 12
    mixer = build_mixer("lmu", 8, n_heads=1, order=order, theta=theta)
    gen = torch.Generator().manual_seed(0)
    freqs = torch.rand(6, generator=gen, dtype=torch.float64) / theta
    phases = torch.rand(6, generator=gen, dtype=torch.float64) * 2 * math.pi
    signal = lambda s: torch.sin(2 * math.pi * freqs[:, None] * s + phases[:, None]).sum(0)  # noqa: E731
    t = torch.arange(600, dtype=torch.float64)
    m, _ = lmu_memory(signal(t)[None, :, None], mixer.a_bar, mixer.b_bar)  # [1, T, 1, N]
    read = m[0, :, 0] @ shifted_legendre(order, r)  # [T]
    delayed = signal(t + 0.5 - r * theta)
    steady = slice(int(3 * theta), None)
    error = float((read - delayed)[steady].norm() / delayed[steady].norm())
    assert error < 5e-3, f"delay {r} theta: relative RMS error {error:.2e}"
    early = float((read - signal(t + 0.5))[steady].norm() / delayed[steady].norm())
    assert early > 0.1, "the memory must read the past, not the present"


def test_system_stays_float64_and_out_of_checkpoints():
    mixer = build_mixer("lmu", 8, n_heads=2, order=4, theta=8.0).to(torch.bfloat16)
    assert mixer.a_bar.dtype == mixer.b_bar.dtype == torch.float64
    assert mixer.u_proj.weight.dtype == torch.bfloat16
    assert sorted(mixer.state_dict()) == ["hidden.bias", "hidden.weight", "u_proj.bias", "u_proj.weight"]
    assert mixer.state_size(10) == mixer.state_size(10_000) == 2 * 4


@pytest.mark.parametrize("arguments,message", [
    ({"order": 0}, "order must be an int in 1 .. 1024"),
    ({"order": 2.0}, "order must be an int"),
    ({"theta": 0.0}, "theta must be a finite number > 0"),
    ({"theta": float("inf")}, "theta must be a finite number > 0"),
    ({"causal": False}, "supports only \\['causal_self'\\]"),
])
def test_bad_arguments_name_their_range(arguments, message):
    with pytest.raises(ValueError, match=message):
        build_mixer("lmu", 8, n_heads=2, **arguments)
