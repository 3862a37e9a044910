"""lmu_memory: the parallel forms (chunk: the impulse-response convolution blocked into matmuls with a
scan over chunk states; fft: one FFT convolution) against the token-by-token recurrence, outputs, final
states and the gradients of u and the initial state, at odd lengths and around the chunk size; the
gradients of a learnable system; the table cache following in-place changes; the system's
construction; the input checks."""

import functools

import pytest
import torch

from seqmix.kernels.lmu import legendre_delay, lmu_memory, zero_order_hold
from seqmix.kernels.lmu.chunk import CHUNK_SIZE

RATIO = 1e-5  # relative RMS error allowed between a parallel form and naive in fp32 (measured: ~1e-6)

lmu_naive = functools.partial(lmu_memory, impl="naive")
PARALLEL = ("chunk", "fft")
SYSTEM = zero_order_hold(*legendre_delay(12, 40.0))


def outputs_and_grads(fn, u, s0):
    m, final = fn(u, *SYSTEM, initial_state=s0, output_final_state=True)
    gen = torch.Generator().manual_seed(123)
    loss = (m * torch.randn(m.shape, generator=gen, dtype=m.dtype)).sum()
    loss = loss + (final * torch.randn(final.shape, generator=gen, dtype=final.dtype)).sum()
    inputs = [x for x in (u, s0) if x is not None]
    return [m.detach(), final.detach(), *torch.autograd.grad(loss, inputs)]


@pytest.mark.parametrize("impl", PARALLEL)
@pytest.mark.parametrize("t", [1, 37, CHUNK_SIZE - 1, CHUNK_SIZE, CHUNK_SIZE + 1, 301])
@pytest.mark.parametrize("with_state", [False, True])
def test_lmu_parallel_equals_naive(impl, t, with_state, assert_rel_close):
    gen = torch.Generator().manual_seed(t)
    u = torch.randn(2, t, 3, generator=gen).requires_grad_()
    s0 = torch.randn(2, 3, 12, generator=gen).requires_grad_() if with_state else None
    expected = outputs_and_grads(lmu_naive, u, s0)
    got = outputs_and_grads(functools.partial(lmu_memory, impl=impl), u, s0)
    for name, got, want in zip(("m", "final", "du", "ds0"), got, expected):
        assert_rel_close(got, want, RATIO, f"{impl} T={t} state={with_state}: {name}")


@pytest.mark.parametrize("impl", PARALLEL)
def test_lmu_fp64_is_exact_to_rounding(impl, assert_rel_close):
    u, s0 = torch.randn(1, 150, 2, dtype=torch.float64), torch.randn(1, 2, 12, dtype=torch.float64)
    got, want = (lmu_memory(u, *SYSTEM, initial_state=s0, impl=i)[0] for i in (impl, "naive"))
    assert got.dtype == torch.float64
    assert_rel_close(got, want, 1e-12, f"fp64 {impl} vs naive")


@pytest.mark.parametrize("impl", PARALLEL)
def test_learnable_system_gets_the_recurrence_gradients(impl, assert_rel_close):
    """The tables are cached only for fixed systems: a system that needs a gradient is rebuilt with its graph."""
    u = torch.randn(1, 70, 2, dtype=torch.float64)
    grads = {}
    for form in ("naive", impl):
        a, b = (s.clone().requires_grad_() for s in SYSTEM)
        m, _ = lmu_memory(u, a, b, impl=form)
        grads[form] = torch.autograd.grad(m.sin().sum(), (a, b))
    for name, got, want in zip(("a_bar", "b_bar"), grads[impl], grads["naive"]):
        assert_rel_close(got, want, 1e-10, f"{impl}: gradient of {name}")


@pytest.mark.parametrize("impl", PARALLEL)
def test_cached_tables_follow_in_place_changes(impl, assert_rel_close):
    a, b = (s.clone() for s in SYSTEM)
    u = torch.randn(1, 40, 2, dtype=torch.float64)
    lmu_memory(u, a, b, impl=impl)  # fills the cache for (a, b)
    with torch.no_grad():
        a.mul_(0.5)
        b.mul_(2.0)
    got, want = (lmu_memory(u, a, b, impl=i)[0] for i in (impl, "naive"))
    assert_rel_close(got, want, 1e-12, f"{impl} after changing the system in place")


@pytest.mark.parametrize("impl", PARALLEL)
def test_tables_from_inference_mode_do_not_reach_training(impl):
    """Lightning validates under torch.inference_mode: the tables cached there cannot be saved for backward."""
    a, b = (s.clone() for s in SYSTEM)
    with torch.inference_mode():
        lmu_memory(torch.randn(1, 40, 2), a, b, impl=impl)
    u = torch.randn(1, 40, 2, requires_grad=True)
    lmu_memory(u, a, b, impl=impl)[0].sum().backward()
    assert u.grad is not None and u.grad.abs().sum() > 0


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
