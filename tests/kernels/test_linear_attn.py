"""linear_attn: the chunked form against the token-by-token reference, outputs, final
states and every gradient (q, k, v, decay, initial_state), odd lengths, packed batches."""

from functools import partial

import pytest
import torch

from seqmix.kernels.linear_attn import linear_attn, linear_attn_global_chunk, linear_attn_global_naive

linear_attn_naive, linear_attn_chunk = (partial(linear_attn, impl=impl) for impl in ("naive", "chunk"))

RATIO = 1e-5  # relative RMS error allowed between chunk and naive in fp32


def make_inputs(b, t, h, dk, dv, *, decay, with_state, n_seq=None, seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(b, t, h, dk, generator=gen, dtype=dtype).requires_grad_() for _ in range(2))
    v = torch.randn(b, t, h, dv, generator=gen, dtype=dtype).requires_grad_()
    log_decay = (-torch.rand(h, generator=gen, dtype=dtype) * 0.3).requires_grad_() if decay else None
    s0 = torch.randn(n_seq or b, h, dk, dv, generator=gen, dtype=dtype).requires_grad_() if with_state else None
    return q, k, v, log_decay, s0


def outputs_and_grads(fn, q, k, v, log_decay, s0, *, output_final_state, **kwargs):
    """``fn``'s output and final state, and the gradients of every input under fixed random cotangents."""
    o, final = fn(q, k, v, decay=log_decay, initial_state=s0, output_final_state=output_final_state, **kwargs)
    gen = torch.Generator().manual_seed(123)
    loss = (o * torch.randn(o.shape, generator=gen, dtype=o.dtype)).sum()
    if output_final_state:
        loss = loss + (final * torch.randn(final.shape, generator=gen, dtype=final.dtype)).sum()
    else:
        assert final is None, "output_final_state=False must return None as the final state"
    inputs = [x for x in (q, k, v, log_decay, s0) if x is not None]
    grads = torch.autograd.grad(loss, inputs)
    return [o.detach()] + ([final.detach()] if output_final_state else []) + list(grads)


@pytest.mark.parametrize("t,dk,dv", [(1, 16, 32), (63, 32, 16), (130, 16, 32), (200, 32, 16)])
@pytest.mark.parametrize("decay", [False, True])
@pytest.mark.parametrize("with_state,output_final_state", [(False, False), (True, True), (False, True)])
def test_linear_attn_chunk_matches_naive(t, dk, dv, decay, with_state, output_final_state, assert_rel_close):
    inputs = make_inputs(2, t, 2, dk, dv, decay=decay, with_state=with_state)
    expected = outputs_and_grads(linear_attn_naive, *inputs, output_final_state=output_final_state)
    actual = outputs_and_grads(linear_attn_chunk, *inputs, output_final_state=output_final_state, chunk_size=16)
    assert len(actual) == len(expected)
    for i, (a, e) in enumerate(zip(actual, expected)):
        assert_rel_close(a, e, RATIO, f"T={t} dk={dk} dv={dv} decay={decay} state={with_state} result {i}")


def test_linear_attn_chunk_any_chunk_size(assert_rel_close):
    inputs = make_inputs(1, 100, 2, 16, 16, decay=True, with_state=True)
    expected = outputs_and_grads(linear_attn_naive, *inputs, output_final_state=True)
    for chunk_size in (1, 7, 64, 256):
        actual = outputs_and_grads(linear_attn_chunk, *inputs, output_final_state=True, chunk_size=chunk_size)
        for i, (a, e) in enumerate(zip(actual, expected)):
            assert_rel_close(a, e, RATIO, f"chunk_size={chunk_size} result {i}")


def test_linear_attn_fp64_is_exact():
    inputs = make_inputs(2, 130, 2, 16, 32, decay=True, with_state=True, dtype=torch.float64)
    expected = outputs_and_grads(linear_attn_naive, *inputs, output_final_state=True)
    actual = outputs_and_grads(linear_attn_chunk, *inputs, output_final_state=True, chunk_size=32)
    for a, e in zip(actual, expected):
        assert a.dtype == torch.float64
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("decay", [False, True])
def test_linear_attn_chunk_backward_gradcheck(decay):
    """The hand-written backward of the chunked Function against finite differences (fp64, tiny):
    q, k, v, the initial state and the decay, with a final state and a shorter last chunk."""
    q, k, v, log_decay, s0 = make_inputs(1, 11, 2, 3, 2, decay=decay, with_state=True, dtype=torch.float64)

    def fn(q, k, v, s0, *log_decay):
        o, final = linear_attn_chunk(q, k, v, decay=log_decay[0] if log_decay else None, initial_state=s0,
                                     output_final_state=True, chunk_size=4)
        return o, final

    inputs = (q, k, v, s0) + ((log_decay,) if decay else ())
    assert torch.autograd.gradcheck(fn, inputs)


@pytest.mark.parametrize("decay", [False, True])
def test_linear_attn_cu_seqlens(decay, assert_rel_close):
    lengths = [17, 0, 63, 50]  # an empty sequence too
    cu_seqlens = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int64)
    q, k, v, log_decay, s0 = make_inputs(1, sum(lengths), 2, 16, 32, decay=decay, with_state=True,
                                         n_seq=len(lengths))
    packed = {}
    for name, fn in (("naive", linear_attn_naive), ("chunk", linear_attn_chunk)):
        packed[name] = outputs_and_grads(fn, q, k, v, log_decay, s0, output_final_state=True, cu_seqlens=cu_seqlens)
    for i, (a, e) in enumerate(zip(packed["chunk"], packed["naive"])):
        assert_rel_close(a, e, RATIO, f"packed, decay={decay}, result {i}")
    # the state restarts at every boundary: each sequence alone gives the same output and final state
    o, final = packed["naive"][:2]
    for n, (start, end) in enumerate(zip(cu_seqlens[:-1].tolist(), cu_seqlens[1:].tolist())):
        if end == start:
            torch.testing.assert_close(final[n], s0[n].detach())
            continue
        o_n, final_n = linear_attn_naive(q[:, start:end], k[:, start:end], v[:, start:end], decay=log_decay,
                                         initial_state=s0[n : n + 1], output_final_state=True)
        assert_rel_close(o[:, start:end], o_n.detach(), 1e-6, f"sequence {n} output")
        assert_rel_close(final[n : n + 1], final_n.detach(), 1e-6, f"sequence {n} final state")


def test_linear_attn_strong_decay_is_finite(assert_rel_close):
    q, k, v, _, s0 = make_inputs(1, 200, 2, 16, 16, decay=False, with_state=True)
    log_decay = torch.tensor([-20.0, -60.0], requires_grad=True)
    expected = outputs_and_grads(linear_attn_naive, q, k, v, log_decay, s0, output_final_state=True)
    actual = outputs_and_grads(linear_attn_chunk, q, k, v, log_decay, s0, output_final_state=True)
    for i, (a, e) in enumerate(zip(actual, expected)):
        assert torch.isfinite(a).all(), f"result {i} is not finite under strong decay"
        assert_rel_close(a, e, RATIO, f"strong decay result {i}")


def test_linear_attn_dispatch(assert_rel_close, monkeypatch):
    q, k, v, log_decay, _ = make_inputs(1, 40, 2, 16, 16, decay=True, with_state=False)
    reference = linear_attn_naive(q, k, v, decay=log_decay)[0].detach()
    for impl in ("auto", "naive", "chunk"):
        o, final = linear_attn(q, k, v, decay=log_decay, impl=impl, chunk_size=16)
        assert final is None
        assert_rel_close(o.detach(), reference, RATIO, f"impl={impl}")
    with pytest.raises(ValueError, match="impl='fast' is unknown"):
        linear_attn(q, k, v, impl="fast")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="needs CUDA tensors.*TRITON_INTERPRET=1"):
        linear_attn(q, k, v, impl="triton")


def test_linear_attn_global_forms_agree(assert_rel_close):
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(2, 30, 2, 16, generator=gen, requires_grad=True)
    k = torch.randn(2, 45, 2, 16, generator=gen, requires_grad=True)  # a context of another length
    v = torch.randn(2, 45, 2, 8, generator=gen, requires_grad=True)
    cotangent = torch.randn(2, 30, 2, 8, generator=gen)
    results = []
    for fn in (linear_attn_global_naive, linear_attn_global_chunk):
        o = fn(q, k, v)
        results.append([o.detach(), *torch.autograd.grad((o * cotangent).sum(), (q, k, v))])
    for i, (a, e) in enumerate(zip(*results)):
        assert_rel_close(a, e, RATIO, f"global form result {i}")


@pytest.mark.parametrize("fn", [linear_attn_naive, linear_attn_chunk, linear_attn])
def test_linear_attn_bad_inputs_are_clear_errors(fn):
    q, k, v, _, _ = make_inputs(2, 10, 2, 16, 8, decay=False, with_state=False)
    with pytest.raises(ValueError, match=r"q must be a 4-D tensor \[batch, time, heads, dim\]"):
        fn(q[0], k, v)
    with pytest.raises(ValueError, match="k must have the shape of q"):
        fn(q, k[:, :5], v)
    with pytest.raises(ValueError, match="v must be"):
        fn(q, k, v[:, :, :1])
    with pytest.raises(ValueError, match=r"decay must be a float tensor \[H=2\]"):
        fn(q, k, v, decay=torch.zeros(3))
    with pytest.raises(ValueError, match="decay holds log-decays and must be <= 0"):
        fn(q, k, v, decay=torch.tensor([0.1, -0.1]))
    with pytest.raises(ValueError, match=r"initial_state must be \[N=2, H=2, K=16, V=8\]"):
        fn(q, k, v, initial_state=torch.zeros(2, 2, 8, 16))
    with pytest.raises(ValueError, match="batch must be 1"):
        fn(q, k, v, cu_seqlens=torch.tensor([0, 4, 10]))
    with pytest.raises(ValueError, match="cu_seqlens must rise from 0 to T=10"):
        fn(q[:1], k[:1], v[:1], cu_seqlens=torch.tensor([0, 4, 9]))
    with pytest.raises(ValueError, match="cu_seqlens must be a 1-D int64 tensor"):
        fn(q[:1], k[:1], v[:1], cu_seqlens=torch.tensor([0.0, 10.0]))


def test_linear_attn_bad_chunk_size():
    q, k, v, _, _ = make_inputs(1, 10, 2, 16, 8, decay=False, with_state=False)
    with pytest.raises(ValueError, match="chunk_size must be a positive int"):
        linear_attn_chunk(q, k, v, chunk_size=0)
