"""lmu_memory: the parallel form (impulse-response convolution: Toeplitz matmul below FFT_FROM tokens,
FFT from there) against the token-by-token recurrence, outputs, final states and the gradients of u
and the initial state, at odd lengths; the system's construction; the input checks."""

import functools

import pytest
import torch

from seqmix.kernels.lmu import legendre_delay, lmu_memory, zero_order_hold
from seqmix.kernels.lmu.chunk import FFT_FROM

RATIO = 1e-5  # relative RMS error allowed between chunk and naive in fp32 (the FFT's rounding is ~3e-7)

lmu_naive, lmu_chunk = (functools.partial(lmu_memory, impl=impl) for impl in ("naive", "chunk"))
SYSTEM = zero_order_hold(*legendre_delay(12, 40.0))


def outputs_and_grads(fn, u, s0):
    m, final = fn(u, *SYSTEM, initial_state=s0, output_final_state=True)
    gen = torch.Generator().manual_seed(123)
    loss = (m * torch.randn(m.shape, generator=gen, dtype=m.dtype)).sum()
    loss = loss + (final * torch.randn(final.shape, generator=gen, dtype=final.dtype)).sum()
    inputs = [x for x in (u, s0) if x is not None]
    return [m.detach(), final.detach(), *torch.autograd.grad(loss, inputs)]


@pytest.mark.parametrize("t", [1, 37, FFT_FROM - 1, FFT_FROM, 301])
@pytest.mark.parametrize("with_state", [False, True])
def test_lmu_chunk_equals_naive(t, with_state, assert_rel_close):
    gen = torch.Generator().manual_seed(t)
    u = torch.randn(2, t, 3, generator=gen).requires_grad_()
    s0 = torch.randn(2, 3, 12, generator=gen).requires_grad_() if with_state else None
    expected = outputs_and_grads(lmu_naive, u, s0)
    for name, got, want in zip(("m", "final", "du", "ds0"), outputs_and_grads(lmu_chunk, u, s0), expected):
        assert_rel_close(got, want, RATIO, f"T={t} state={with_state}: {name}")


def test_lmu_fp64_is_exact_to_rounding(assert_rel_close):
    u, s0 = torch.randn(1, 150, 2, dtype=torch.float64), torch.randn(1, 2, 12, dtype=torch.float64)
    got, want = (fn(u, *SYSTEM, initial_state=s0)[0] for fn in (lmu_chunk, lmu_naive))
    assert got.dtype == torch.float64
    assert_rel_close(got, want, 1e-12, "fp64 chunk vs naive")


def test_legendre_delay_matches_the_paper():
    """A_ij = (2i+1)/theta * (-1 if i < j else (-1)^(i-j+1)), B_i = (2i+1)(-1)^i / theta; ZOH of one step."""
    a, b = legendre_delay(3, 2.0)
    expected_a = torch.tensor([[-1, -1, -1], [3, -3, -3], [-5, 5, -5]], dtype=torch.float64) / 2.0
    assert torch.equal(a, expected_a) and torch.equal(b, torch.tensor([1.0, -3.0, 5.0], dtype=torch.float64) / 2.0)
    a_bar, b_bar = zero_order_hold(a, b)
    assert torch.allclose(a_bar, torch.linalg.matrix_exp(a), atol=1e-14)
    assert torch.allclose(a @ b_bar, (a_bar - torch.eye(3, dtype=torch.float64)) @ b, atol=1e-14)  # A Bb = (Ab - I) B
    assert torch.linalg.eigvals(a_bar).abs().max() < 1, "the discretised memory must be stable"


def test_lmu_memory_checks_its_inputs():
    u = torch.randn(2, 5, 3)
    with pytest.raises(ValueError, match=r"u must be a float tensor \[batch, time, channels\]"):
        lmu_memory(u[0], *SYSTEM)
    with pytest.raises(ValueError, match="a_bar must be"):
        lmu_memory(u, SYSTEM[0], SYSTEM[1][:4])
    with pytest.raises(ValueError, match=r"initial_state must be \[B, H, N\] = \(2, 3, 12\)"):
        lmu_memory(u, *SYSTEM, initial_state=torch.zeros(2, 12))
    with pytest.raises(ValueError, match="impl='triton' is unknown"):
        lmu_memory(u, *SYSTEM, impl="triton")
