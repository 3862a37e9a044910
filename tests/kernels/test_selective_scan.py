"""selective_scan: the chunked scan against the token-by-token reference, outputs, final states and
every gradient (u, delta, A, B, C, D, initial_state), odd lengths, several chunk sizes, strong decays;
the reference against the recurrence written out; errors that name the argument."""

import functools

import pytest
import torch
import torch.nn.functional as F

import seqmix.kernels.selective_scan.chunk as selective_scan_chunk_module
from seqmix.kernels.selective_scan import selective_scan

RATIO = 1e-5  # relative RMS error allowed between chunk and naive in fp32
E, N = 6, 4


def make_inputs(t, *, with_state, delta_shift=-1.0, seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    u = torch.randn(2, t, E, generator=gen, dtype=dtype)
    delta = F.softplus(torch.randn(2, t, E, generator=gen, dtype=dtype) + delta_shift)
    A = -torch.rand(E, N, generator=gen, dtype=dtype) * N
    B, C = (torch.randn(2, t, N, generator=gen, dtype=dtype) for _ in range(2))
    D = torch.randn(E, generator=gen, dtype=dtype)
    h0 = torch.randn(2, E, N, generator=gen, dtype=dtype) if with_state else None
    return [x if x is None else x.requires_grad_() for x in (u, delta, A, B, C, D, h0)]


def plain_inputs(t):
    """u, delta, A, B, C, D without gradients."""
    return [x.detach() for x in make_inputs(t, with_state=False)[:6]]


def outputs_and_grads(inputs, *, output_final_state, **kwargs):
    """The output and final state, and the gradients of every input under fixed random cotangents."""
    u, delta, A, B, C, D, h0 = inputs
    y, final = selective_scan(u, delta, A, B, C, D, initial_state=h0, output_final_state=output_final_state, **kwargs)
    gen = torch.Generator().manual_seed(123)
    loss = (y * torch.randn(y.shape, generator=gen, dtype=y.dtype)).sum()
    if output_final_state:
        loss = loss + (final * torch.randn(final.shape, generator=gen, dtype=final.dtype)).sum()
    else:
        assert final is None, "output_final_state=False must return None as the final state"
    given = [x for x in inputs if x is not None]
    return [y.detach()] + ([final.detach()] if output_final_state else []) + list(torch.autograd.grad(loss, given))


@functools.lru_cache(maxsize=None)
def naive_results(t, with_state, output_final_state, delta_shift):
    """The reference for one case, computed once for all chunk sizes."""
    inputs = make_inputs(t, with_state=with_state, delta_shift=delta_shift)
    return outputs_and_grads(inputs, output_final_state=output_final_state, impl="naive")


@pytest.mark.parametrize("t", [1, 13, 63, 100])
@pytest.mark.parametrize("chunk_size", [1, 8, 64])
@pytest.mark.parametrize("with_state,output_final_state", [(False, False), (True, True), (False, True)])
def test_selective_scan_chunk_matches_naive(t, chunk_size, with_state, output_final_state, assert_rel_close):
    expected = naive_results(t, with_state, output_final_state, -1.0)
    actual = outputs_and_grads(make_inputs(t, with_state=with_state), output_final_state=output_final_state,
                               chunk_size=chunk_size, impl="chunk")
    assert len(actual) == len(expected)
    for i, (a, e) in enumerate(zip(actual, expected)):
        assert_rel_close(a, e, RATIO, f"T={t} C={chunk_size} state={with_state} result {i}")


@pytest.mark.parametrize("delta_shift", [4.0, 30.0])
def test_selective_scan_strong_decays_stay_finite_and_exact(delta_shift, assert_rel_close):
    """Steps of delta ~ 5 and ~ 30 (decays down to exp(-500)): every exponent is <= 0, nothing overflows."""
    expected = naive_results(37, True, True, delta_shift)
    actual = outputs_and_grads(make_inputs(37, with_state=True, delta_shift=delta_shift), output_final_state=True,
                               chunk_size=8, impl="chunk")
    for i, (a, e) in enumerate(zip(actual, expected)):
        assert_rel_close(a, e, RATIO, f"delta shift {delta_shift} result {i}")


def test_selective_scan_naive_is_the_recurrence():
    """The reference against the recurrence written out in fp64, channel by channel."""
    u, delta, A, B, C, D, h0 = (x.detach().double() for x in make_inputs(5, with_state=True))
    y, final = selective_scan(u, delta, A, B, C, D, initial_state=h0, output_final_state=True, impl="naive")
    h, expected = h0.clone(), torch.empty_like(y)
    for t in range(5):
        for e in range(E):  # every state index n of channel e at once
            step = (delta[:, t, e] * u[:, t, e])[:, None] * B[:, t]  # [2, N]
            h[:, e] = torch.exp(delta[:, t, e, None] * A[e]) * h[:, e] + step
            expected[:, t, e] = (C[:, t] * h[:, e]).sum(-1) + D[e] * u[:, t, e]
    torch.testing.assert_close(y, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(final, h, rtol=1e-12, atol=1e-12)


def test_selective_scan_pieces_carry_the_state(assert_rel_close):
    """A sequence in two pieces with the state carried equals one run (chunked form)."""
    u, delta, A, B, C, D = plain_inputs(50)
    whole, _ = selective_scan(u, delta, A, B, C, D, chunk_size=8)
    first, h = selective_scan(u[:, :21], delta[:, :21], A, B[:, :21], C[:, :21], D, output_final_state=True,
                              chunk_size=8)
    second, _ = selective_scan(u[:, 21:], delta[:, 21:], A, B[:, 21:], C[:, 21:], D, initial_state=h, chunk_size=8)
    assert_rel_close(torch.cat([first, second], 1), whole, RATIO, "two pieces")


def test_selective_scan_dtypes():
    """bf16 inputs give bf16 outputs and an fp32 state; fp64 stays fp64 (for gradient checks)."""
    inputs = plain_inputs(9)
    y, final = selective_scan(*(x.bfloat16() for x in inputs), output_final_state=True)
    assert y.dtype == torch.bfloat16 and final.dtype == torch.float32
    y, final = selective_scan(*(x.double() for x in inputs), output_final_state=True)
    assert y.dtype == final.dtype == torch.float64


def test_selective_scan_errors_name_the_argument():
    u, delta, A, B, C, D = plain_inputs(9)
    with pytest.raises(ValueError, match=r"A must be \[E=6, N\]"):
        selective_scan(u, delta, A[:3], B, C, D)
    with pytest.raises(ValueError, match=r"C must be \[2, 9, 4\]"):
        selective_scan(u, delta, A, B, C[:, :4], D)
    with pytest.raises(ValueError, match=r"initial_state must be \[2, 6, 4\]"):
        selective_scan(u, delta, A, B, C, D, initial_state=torch.zeros(2, 4, 6))
    with pytest.raises(ValueError, match="u must be a floating-point tensor"):
        selective_scan(u.long(), delta, A, B, C, D)
    with pytest.raises(ValueError, match="chunk_size must be a positive int"):
        selective_scan(u, delta, A, B, C, D, chunk_size=0)
    with pytest.raises(ValueError, match="impl='triton' is unknown"):
        selective_scan(u, delta, A, B, C, D, impl="triton")


def test_selective_scan_chunks_stepping_in_groups_match_naive(monkeypatch, assert_rel_close):
    """Chunks step in groups of at most STEP_FLOATS floats; three chunks a group gives the same results."""
    monkeypatch.setattr(selective_scan_chunk_module, "STEP_FLOATS", 3 * E * N)
    expected = naive_results(100, True, True, -1.0)
    actual = outputs_and_grads(make_inputs(100, with_state=True), output_final_state=True, chunk_size=8, impl="chunk")
    for i, (a, e) in enumerate(zip(actual, expected)):
        assert_rel_close(a, e, RATIO, f"groups of 3 chunks, result {i}")


@pytest.mark.parametrize("threads", [1, 3])
def test_selective_scan_channel_runs_in_threads_match_naive(threads, assert_rel_close):
    """The channels are scanned in one run per torch thread (channel_parts, which cover every channel
    once); 1 run and 3 runs give the naive results, outputs and every gradient."""
    assert [(p.start, p.stop) for p in selective_scan_chunk_module.channel_parts(7, 3)] == [(0, 2), (2, 5), (5, 7)]
    assert len(selective_scan_chunk_module.channel_parts(2, 8)) == 2  # never an empty run
    assert [(p.start, p.stop) for p in selective_scan_chunk_module.channel_parts(E, threads)] == (
        [(0, E)] if threads == 1 else [(0, 2), (2, 4), (4, 6)])
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        actual = outputs_and_grads(make_inputs(100, with_state=True), output_final_state=True, chunk_size=8,
                                   impl="chunk")
    finally:
        torch.set_num_threads(before)
    assert torch.get_num_threads() == before
    for i, (a, e) in enumerate(zip(actual, naive_results(100, True, True, -1.0))):
        assert_rel_close(a, e, RATIO, f"{threads} channel runs, result {i}")


@pytest.mark.parametrize("segment", [1, 3])
def test_selective_scan_backward_segments_match_naive(segment, monkeypatch, assert_rel_close):
    """The backward restarts from the forward's checkpoints every SEGMENT positions (segments of 1 and of 3,
    which cut chunks of 8 unevenly): outputs and every gradient as the reference."""
    monkeypatch.setattr(selective_scan_chunk_module, "SEGMENT", segment)
    expected = naive_results(100, True, True, -1.0)
    actual = outputs_and_grads(make_inputs(100, with_state=True), output_final_state=True, chunk_size=8, impl="chunk")
    for i, (a, e) in enumerate(zip(actual, expected)):
        assert_rel_close(a, e, RATIO, f"segments of {segment}, result {i}")
