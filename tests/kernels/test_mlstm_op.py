"""chunk_mlstm: the chunkwise-parallel form against the stabilised token-by-token reference, outputs,
final states (C, n, m) and every gradient (q, k, v, log_i, log_f, and the initial C, n, m), at odd
lengths, chunk sizes that do and do not divide T, sigmoid and exponential forget gates, large gates.
(test_mlstm_op.py, not test_mlstm.py: test basenames are unique, and the mixer's are tests/core/test_mlstm.py.)"""

import functools

import pytest
import torch
import torch.nn.functional as F

from seqmix.kernels.mlstm import MLSTMState, chunk_mlstm
from tests.conftest import rel_rms

mlstm_naive, mlstm_chunk = (functools.partial(chunk_mlstm, impl=impl) for impl in ("naive", "chunk"))

RATIO = 1e-5  # relative RMS error allowed between chunk and naive in fp32


def make_inputs(t, *, with_state, forget="sigmoid", input_scale=1.0, b=2, h=2, dk=16, dv=8, seed=0,
                dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    randn = functools.partial(torch.randn, generator=gen, dtype=dtype)
    q, k, v = randn(b, t, h, dk), randn(b, t, h, dk), randn(b, t, h, dv)
    log_i = randn(b, t, h) * input_scale
    f_pre = randn(b, t, h) + 2.0
    log_f = F.logsigmoid(f_pre) if forget == "sigmoid" else f_pre * 0.5  # exp gates: some > 1 (log_f > 0)
    state = MLSTMState(randn(b, h, dk, dv), randn(b, h, dk), randn(b, h)) if with_state else None
    leaves = [x.requires_grad_() for x in (q, k, v, log_i, log_f, *(state or ()))]
    return leaves[:5], (MLSTMState(*leaves[5:]) if with_state else None)


def results(fn, inputs, state, *, output_final_state, **kwargs):
    """``fn``'s output (and final state), and the gradients of every input under fixed random cotangents."""
    h, final = fn(*inputs, initial_state=state, output_final_state=output_final_state, **kwargs)
    gen = torch.Generator().manual_seed(123)
    loss = (h * torch.randn(h.shape, generator=gen, dtype=h.dtype)).sum()
    if output_final_state:
        loss = loss + sum((s * torch.randn(s.shape, generator=gen, dtype=s.dtype)).sum() for s in final)
    else:
        assert final is None, "output_final_state=False must return None as the final state"
    leaves = [*inputs, *(state or ())]
    grads = torch.autograd.grad(loss, leaves)
    return [h.detach(), *([s.detach() for s in final] if output_final_state else []), *grads]


@pytest.mark.parametrize("t,chunk_size", [(1, 16), (63, 16), (130, 64), (200, 48)])
@pytest.mark.parametrize("with_state,output_final_state", [(False, False), (True, True)])
def test_mlstm_chunk_matches_naive(t, chunk_size, with_state, output_final_state, assert_rel_close):
    inputs, state = make_inputs(t, with_state=with_state)
    expected = results(mlstm_naive, inputs, state, output_final_state=output_final_state)
    actual = results(mlstm_chunk, inputs, state, output_final_state=output_final_state, chunk_size=chunk_size)
    assert len(actual) == len(expected)
    for i, (a, e) in enumerate(zip(actual, expected)):
        assert_rel_close(a, e, RATIO, f"T={t} C={chunk_size} state={with_state} result {i}")


@pytest.mark.parametrize("forget,input_scale", [("exp", 1.0), ("sigmoid", 60.0)])
def test_mlstm_growing_or_large_gates(forget, input_scale, assert_rel_close):
    """Exponential forget gates above 1 (the memory grows: m climbs through the sequence) and input
    gates up to exp(200) (far beyond fp32): both forms agree in fp64, outputs and gradients; in fp32
    the chunked form is finite and as close to the fp64 result as the fp32 recurrence is. (Such
    memories are ruled by a few tokens, so ``q . n`` comes near 0 for some queries and ``h`` is
    ill-conditioned: the fp32 recurrence itself is off by ~1e-4 here, hence no fixed fp32 ratio.)"""
    inputs, state = make_inputs(150, with_state=True, forget=forget, input_scale=input_scale, dtype=torch.float64)
    expected = results(mlstm_naive, inputs, state, output_final_state=True)
    actual = results(mlstm_chunk, inputs, state, output_final_state=True, chunk_size=32)
    for i, (a, e) in enumerate(zip(actual, expected)):
        assert torch.isfinite(e).all(), f"the reference's result {i} is not finite"
        assert_rel_close(a, e, 1e-9, f"fp64, {forget} gates, input scale {input_scale}: result {i}")
    single, single_state = [x.detach().float() for x in inputs], MLSTMState(*(s.detach().float() for s in state))
    naive_error, chunk_error = (rel_rms(fn(*single, initial_state=single_state, chunk_size=32)[0], expected[0])
                                for fn in (mlstm_naive, mlstm_chunk))
    assert chunk_error <= max(2 * naive_error, RATIO), f"fp32 chunk error {chunk_error:.2e}, naive {naive_error:.2e}"


def test_mlstm_fp64_is_exact(assert_rel_close):
    inputs, state = make_inputs(70, with_state=True, dtype=torch.float64)
    expected = results(mlstm_naive, inputs, state, output_final_state=True)
    actual = results(mlstm_chunk, inputs, state, output_final_state=True, chunk_size=16)
    for a, e in zip(actual, expected):
        assert a.dtype == torch.float64
        assert_rel_close(a, e, 1e-12, "fp64")


def test_mlstm_pieces_carry_the_state(assert_rel_close):
    """Two pieces with the final state carried equal the whole sequence (the chunked form)."""
    (q, k, v, log_i, log_f), _ = make_inputs(90, with_state=False)
    q, k, v, log_i, log_f = (x.detach() for x in (q, k, v, log_i, log_f))
    whole, final = mlstm_chunk(q, k, v, log_i, log_f, output_final_state=True, chunk_size=16)
    first, mid = mlstm_chunk(*(x[:, :37] for x in (q, k, v, log_i, log_f)), output_final_state=True, chunk_size=16)
    second, end = mlstm_chunk(*(x[:, 37:] for x in (q, k, v, log_i, log_f)), initial_state=mid,
                              output_final_state=True, chunk_size=16)
    assert_rel_close(torch.cat([first, second], 1), whole, RATIO, "two pieces")
    for name, a, e in zip(MLSTMState._fields, end, final):
        assert_rel_close(a, e, RATIO, f"final {name}")


def test_chunk_mlstm_dispatch():
    (q, k, v, log_i, log_f), _ = make_inputs(20, with_state=False)
    reference = mlstm_naive(q, k, v, log_i, log_f)[0]
    for impl in ("auto", "chunk"):
        assert torch.allclose(chunk_mlstm(q, k, v, log_i, log_f, impl=impl, chunk_size=8)[0], reference, atol=1e-5)
    with pytest.raises(ValueError, match="impl='triton' is unknown"):
        chunk_mlstm(q, k, v, log_i, log_f, impl="triton")


@pytest.mark.parametrize("fn", [mlstm_naive, mlstm_chunk])
def test_chunk_mlstm_bad_inputs_are_clear_errors(fn):
    (q, k, v, log_i, log_f), _ = make_inputs(10, with_state=False)
    with pytest.raises(ValueError, match=r"q must be a 4-D tensor \[batch, time, heads, dim\]"):
        fn(q[0], k, v, log_i, log_f)
    with pytest.raises(ValueError, match=r"log_i must be a float tensor \[B=2, T=10, H=2\]"):
        fn(q, k, v, log_i[..., None], log_f)
    with pytest.raises(ValueError, match=r"log_f must be a float tensor"):
        fn(q, k, v, log_i, log_f.long())
    bad = MLSTMState.zeros(2, 2, 16, 8)._replace(m=torch.zeros(2))
    with pytest.raises(ValueError, match=r"initial_state must be MLSTMState\(C \(2, 2, 16, 8\), n .*, m \(2, 2\)\)"):
        fn(q, k, v, log_i, log_f, initial_state=bad)
    with pytest.raises(ValueError, match="chunk_size must be a positive int"):
        fn(q, k, v, log_i, log_f, chunk_size=0)
