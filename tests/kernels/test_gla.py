"""chunk_gla: the stable chunked form against the token-by-token reference, outputs, final
states and every gradient (q, k, v, g, initial_state), odd lengths, packed batches,
strong gates."""

import functools

import pytest
import torch
import torch.nn.functional as F

from seqmix.kernels.gla import chunk_gla

gla_naive, gla_chunk = (functools.partial(chunk_gla, impl=impl) for impl in ("naive", "chunk"))

RATIO = 1e-5  # relative RMS error allowed between chunk and naive in fp32


def make_inputs(b, t, h, dk, dv, *, with_state, n_seq=None, gate_scale=1.0, seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(b, t, h, dk, generator=gen, dtype=dtype).requires_grad_() for _ in range(2))
    v = torch.randn(b, t, h, dv, generator=gen, dtype=dtype).requires_grad_()
    g = F.logsigmoid(torch.randn(b, t, h, dk, generator=gen, dtype=dtype) * gate_scale).requires_grad_()
    s0 = torch.randn(n_seq or b, h, dk, dv, generator=gen, dtype=dtype).requires_grad_() if with_state else None
    return q, k, v, g, s0


def outputs_and_grads(fn, q, k, v, g, s0, *, output_final_state, **kwargs):
    """``fn``'s output and final state, and the gradients of every input under fixed random cotangents."""
    o, final = fn(q, k, v, g, initial_state=s0, output_final_state=output_final_state, **kwargs)
    gen = torch.Generator().manual_seed(123)
    loss = (o * torch.randn(o.shape, generator=gen, dtype=o.dtype)).sum()
    if output_final_state:
        loss = loss + (final * torch.randn(final.shape, generator=gen, dtype=final.dtype)).sum()
    else:
        assert final is None, "output_final_state=False must return None as the final state"
    inputs = [x for x in (q, k, v, g, s0) if x is not None]
    grads = torch.autograd.grad(loss, inputs)
    return [o.detach()] + ([final.detach()] if output_final_state else []) + list(grads)


@functools.lru_cache(maxsize=None)
def naive_results(t, dk, dv, with_state, output_final_state):
    """The reference for one case, computed once for all chunk sizes."""
    inputs = make_inputs(2, t, 2, dk, dv, with_state=with_state)
    return outputs_and_grads(gla_naive, *inputs, output_final_state=output_final_state)


@pytest.mark.parametrize("t,dk,dv", [(1, 16, 32), (63, 32, 16), (130, 16, 32), (200, 32, 16)])
@pytest.mark.parametrize("chunk_size", [16, 64])
@pytest.mark.parametrize("with_state,output_final_state", [(False, False), (True, True), (False, True)])
def test_gla_chunk_matches_naive(t, dk, dv, chunk_size, with_state, output_final_state, assert_rel_close):
    inputs = make_inputs(2, t, 2, dk, dv, with_state=with_state)
    expected = naive_results(t, dk, dv, with_state, output_final_state)
    actual = outputs_and_grads(gla_chunk, *inputs, output_final_state=output_final_state, chunk_size=chunk_size)
    assert len(actual) == len(expected)
    for i, (a, e) in enumerate(zip(actual, expected)):
        assert_rel_close(a, e, RATIO, f"T={t} dk={dk} dv={dv} C={chunk_size} state={with_state} result {i}")


def test_gla_fp64_is_exact():
    inputs = make_inputs(2, 130, 2, 16, 32, with_state=True, gate_scale=5.0, dtype=torch.float64)
    expected = outputs_and_grads(gla_naive, *inputs, output_final_state=True)
    actual = outputs_and_grads(gla_chunk, *inputs, output_final_state=True, chunk_size=32)
    for a, e in zip(actual, expected):
        assert a.dtype == torch.float64
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-10)


def test_gla_cu_seqlens(assert_rel_close):
    lengths = [17, 0, 63, 50]  # an empty sequence too
    cu_seqlens = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int64)
    q, k, v, g, s0 = make_inputs(1, sum(lengths), 2, 16, 32, with_state=True, n_seq=len(lengths))
    packed = {}
    for name, fn in (("naive", gla_naive), ("chunk", gla_chunk)):
        packed[name] = outputs_and_grads(fn, q, k, v, g, s0, output_final_state=True, cu_seqlens=cu_seqlens,
                                         **({"chunk_size": 16} if name == "chunk" else {}))
    for i, (a, e) in enumerate(zip(packed["chunk"], packed["naive"])):
        assert_rel_close(a, e, RATIO, f"packed result {i}")
    # the state restarts at every boundary: each sequence alone gives the same output and final state
    o, final = packed["naive"][:2]
    for n, (start, end) in enumerate(zip(cu_seqlens[:-1].tolist(), cu_seqlens[1:].tolist())):
        if end == start:
            torch.testing.assert_close(final[n], s0[n].detach())
            continue
        piece = (x[:, start:end] for x in (q, k, v, g))
        o_n, final_n = gla_naive(*piece, initial_state=s0[n : n + 1], output_final_state=True)
        assert_rel_close(o[:, start:end], o_n.detach(), 1e-6, f"sequence {n} output")
        assert_rel_close(final[n : n + 1], final_n.detach(), 1e-6, f"sequence {n} final state")


@pytest.mark.parametrize("gates", ["near -20", "mixed"])
def test_gla_strong_gates_are_finite(gates, assert_rel_close):
    """Gates near -20 (exp(-b) would be exp(1280) inside a 64-chunk in the naive chunked form),
    and mixed ones (some near 0, some down to -60): finite and equal to the reference."""
    q, k, v, g, s0 = make_inputs(1, 200, 2, 16, 16, with_state=True, gate_scale=20.0)
    if gates == "near -20":
        g = (-20.0 + torch.rand(g.shape, generator=torch.Generator().manual_seed(1))).requires_grad_()
    expected = outputs_and_grads(gla_naive, q, k, v, g, s0, output_final_state=True)
    actual = outputs_and_grads(gla_chunk, q, k, v, g, s0, output_final_state=True, chunk_size=64)
    for i, (a, e) in enumerate(zip(actual, expected)):
        assert torch.isfinite(a).all(), f"result {i} is not finite with gates {gates}"
        assert_rel_close(a, e, RATIO, f"gates {gates} result {i}")


def test_chunk_gla_dispatch(assert_rel_close, monkeypatch):
    q, k, v, g, _ = make_inputs(1, 40, 2, 16, 16, with_state=False)
    reference = gla_naive(q, k, v, g)[0].detach()
    for impl in ("auto", "naive", "chunk"):
        o, final = chunk_gla(q, k, v, g, impl=impl, chunk_size=16)
        assert final is None
        assert_rel_close(o.detach(), reference, RATIO, f"impl={impl}")
    with pytest.raises(ValueError, match="impl='cuda' is unknown"):
        chunk_gla(q, k, v, g, impl="cuda")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="needs CUDA tensors.*TRITON_INTERPRET=1"):
        chunk_gla(q, k, v, g, impl="triton")


@pytest.mark.parametrize("fn", [gla_naive, gla_chunk, chunk_gla])
def test_chunk_gla_bad_inputs_are_clear_errors(fn):
    q, k, v, g, _ = make_inputs(2, 10, 2, 16, 8, with_state=False)
    with pytest.raises(ValueError, match=r"q must be a 4-D tensor \[batch, time, heads, dim\]"):
        fn(q[0], k, v, g)
    with pytest.raises(ValueError, match="k must have the shape of q"):
        fn(q, k[..., :8], v, g)
    with pytest.raises(ValueError, match="v must be"):
        fn(q, k, v[:, :5], g)
    with pytest.raises(ValueError, match="g must be a float tensor of log forget gates shaped like q"):
        fn(q, k, v, g[..., :1])
    with pytest.raises(ValueError, match=r"initial_state must be \[N=2, H=2, K=16, V=8\]"):
        fn(q, k, v, g, initial_state=torch.zeros(1, 2, 16, 8))
    with pytest.raises(ValueError, match="batch must be 1"):
        fn(q, k, v, g, cu_seqlens=torch.tensor([0, 4, 10]))


def test_gla_chunk_size_must_be_a_power_of_two():
    q, k, v, g, _ = make_inputs(1, 10, 2, 16, 8, with_state=False)
    with pytest.raises(ValueError, match=r"chunk_size=48 \(allowed: a power of two"):
        gla_chunk(q, k, v, g, chunk_size=48)
    with pytest.raises(ValueError, match="chunk_size must be a positive int"):
        gla_chunk(q, k, v, g, chunk_size=0)
