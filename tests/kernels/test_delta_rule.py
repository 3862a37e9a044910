"""chunk_delta_rule: the WY/UT chunked form (with its hand-written backward) against the
token-by-token reference, outputs, final states and every gradient (q, k, v, beta,
initial_state), odd lengths, packed batches; and the errors bad inputs raise."""

from functools import partial

import pytest
import torch
import torch.nn.functional as F

from seqmix.kernels.delta_rule import chunk_delta_rule

delta_rule_naive, delta_rule_chunk = (partial(chunk_delta_rule, impl=impl) for impl in ("naive", "chunk"))

RATIO = 1e-5  # relative RMS error allowed between chunk and naive in fp32


def make_inputs(b, t, h, dk, dv, *, with_state, n_seq=None, seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(b, t, h, dk, generator=gen, dtype=dtype).requires_grad_()
    k = F.normalize(torch.randn(b, t, h, dk, generator=gen, dtype=dtype), dim=-1).requires_grad_()
    v = torch.randn(b, t, h, dv, generator=gen, dtype=dtype).requires_grad_()
    beta = torch.rand(b, t, h, generator=gen, dtype=dtype).requires_grad_()
    s0 = torch.randn(n_seq or b, h, dk, dv, generator=gen, dtype=dtype).requires_grad_() if with_state else None
    return q, k, v, beta, s0


def outputs_and_grads(fn, q, k, v, beta, s0, *, output_final_state, **kwargs):
    """``fn``'s output (and final state) and the gradients of every input under fixed random cotangents."""
    o, final = fn(q, k, v, beta, initial_state=s0, output_final_state=output_final_state, **kwargs)
    gen = torch.Generator().manual_seed(123)
    loss = (o * torch.randn(o.shape, generator=gen, dtype=o.dtype)).sum()
    if output_final_state:
        loss = loss + (final * torch.randn(final.shape, generator=gen, dtype=final.dtype)).sum()
    else:
        assert final is None, "output_final_state=False must return None as the final state"
    inputs = [x for x in (q, k, v, beta, s0) if x is not None]
    grads = torch.autograd.grad(loss, inputs)
    return [o.detach()] + ([final.detach()] if output_final_state else []) + list(grads)


@pytest.mark.parametrize("t,dk,dv,with_state,output_final_state", [
    (1, 16, 32, False, False), (1, 32, 16, True, True), (63, 16, 32, True, True), (63, 32, 16, False, True),
    (130, 16, 32, False, False), (130, 32, 16, True, True), (200, 16, 32, True, True), (200, 32, 16, False, True),
])
def test_chunk_delta_rule_chunk_matches_naive(t, dk, dv, with_state, output_final_state, assert_rel_close):
    inputs = make_inputs(2, t, 2, dk, dv, with_state=with_state)
    expected = outputs_and_grads(chunk_delta_rule, *inputs, output_final_state=output_final_state, impl="naive")
    actual = outputs_and_grads(chunk_delta_rule, *inputs, output_final_state=output_final_state, impl="chunk",
                               chunk_size=16)
    assert len(actual) == len(expected)
    for i, (a, e) in enumerate(zip(actual, expected)):
        assert_rel_close(a, e, RATIO, f"T={t} dk={dk} dv={dv} state={with_state} result {i}")


@pytest.mark.parametrize("chunk_size", [1, 7, 64, 256])
def test_delta_rule_chunk_any_chunk_size(chunk_size, assert_rel_close):
    inputs = make_inputs(1, 100, 2, 16, 16, with_state=True)
    expected = outputs_and_grads(delta_rule_naive, *inputs, output_final_state=True)
    actual = outputs_and_grads(delta_rule_chunk, *inputs, output_final_state=True, chunk_size=chunk_size)
    for i, (a, e) in enumerate(zip(actual, expected)):
        assert_rel_close(a, e, RATIO, f"chunk_size={chunk_size} result {i}")


def test_delta_rule_chunk_backward_gradcheck():
    """The chunked form's backward is written by hand: check it against finite differences in fp64."""
    q, k, v, beta, s0 = make_inputs(1, 9, 1, 3, 2, with_state=True, dtype=torch.float64)

    def fn(q, k, v, beta, s0):
        return delta_rule_chunk(q, k, v, beta, initial_state=s0, output_final_state=True, chunk_size=4)

    assert torch.autograd.gradcheck(fn, (q, k, v, beta, s0))


@pytest.mark.parametrize("h", [1, 2])
def test_delta_rule_chunk_leaves_its_inputs_alone(h):
    """The chunked form works in place on its own buffers only: the inputs, the initial state and
    the incoming gradients are unchanged after forward + backward (one head: chunking is a no-op view)."""
    inputs = make_inputs(1, 32, h, 8, 8, with_state=True)
    d_o, d_final = torch.randn(1, 32, h, 8), torch.randn(1, h, 8, 8)
    before = [x.detach().clone() for x in (*inputs, d_o, d_final)]
    o, final = delta_rule_chunk(*inputs[:4], initial_state=inputs[4], output_final_state=True, chunk_size=32)
    torch.autograd.backward((o, final), (d_o, d_final))
    for i, (x, x0) in enumerate(zip((*inputs, d_o, d_final), before)):
        assert torch.equal(x.detach(), x0), f"input {i} was modified"


def test_chunk_delta_rule_packed_sequences(assert_rel_close):
    """cu_seqlens: the state restarts at every boundary (an empty sequence included); each
    packed sequence equals the same sequence run on its own."""
    cu_seqlens = torch.tensor([0, 17, 17, 60, 90])
    q, k, v, beta, s0 = make_inputs(1, 90, 2, 16, 16, with_state=True, n_seq=4)
    expected = outputs_and_grads(chunk_delta_rule, q, k, v, beta, s0, output_final_state=True,
                                 cu_seqlens=cu_seqlens, impl="naive")
    actual = outputs_and_grads(chunk_delta_rule, q, k, v, beta, s0, output_final_state=True,
                               cu_seqlens=cu_seqlens, impl="chunk", chunk_size=16)
    for i, (a, e) in enumerate(zip(actual, expected)):
        assert_rel_close(a, e, RATIO, f"packed result {i}")
    with torch.no_grad():
        o, final = actual[0], actual[1]
        for n, (start, end) in enumerate(zip(cu_seqlens[:-1].tolist(), cu_seqlens[1:].tolist())):
            if end == start:  # an empty sequence: its state passes through
                assert torch.equal(final[n], s0[n]), f"empty sequence {n}: the state changed"
                continue
            o_n, s_n = delta_rule_naive(q[:, start:end], k[:, start:end], v[:, start:end], beta[:, start:end],
                                        initial_state=s0[n : n + 1], output_final_state=True)
            assert_rel_close(o[:, start:end], o_n, RATIO, f"sequence {n} output")
            assert_rel_close(final[n : n + 1], s_n, RATIO, f"sequence {n} final state")


def test_delta_rule_naive_stores_and_recalls():
    """With beta = 1 a write replaces what the memory held at k: reading k back gives v exactly,
    and a key orthogonal to k reads nothing."""
    dk, dv = 8, 5
    keys = torch.eye(dk)[:2]  # two orthogonal unit keys
    k = torch.stack([keys[0], keys[0], keys[0], keys[1]])[None, :, None]  # [1, 4, 1, K]
    q = torch.stack([keys[0], keys[0], keys[0], keys[0]])[None, :, None]
    v = torch.randn(1, 4, 1, dv)
    beta = torch.tensor([1.0, 0.5, 1.0, 1.0])[None, :, None]
    o, state = delta_rule_naive(q, k, v, beta, scale=1.0, output_final_state=True)
    assert torch.allclose(o[0, 0, 0], v[0, 0, 0], atol=1e-6)  # stored, then read back
    assert torch.allclose(o[0, 1, 0], 0.5 * v[0, 0, 0] + 0.5 * v[0, 1, 0], atol=1e-6)  # half-way towards v_1
    assert torch.allclose(o[0, 2, 0], v[0, 2, 0], atol=1e-6)  # beta = 1 overwrites
    assert torch.allclose(o[0, 3, 0], v[0, 2, 0], atol=1e-6)  # an orthogonal write leaves k_0's value alone
    assert torch.allclose(keys[1] @ state[0, 0], v[0, 3, 0], atol=1e-6)


def test_chunk_delta_rule_impls_and_dtypes():
    q, k, v, beta, _ = make_inputs(1, 20, 2, 8, 8, with_state=False)
    with torch.no_grad():
        o_auto, _ = chunk_delta_rule(q, k, v, beta)  # "auto" is "chunk" on the CPU
        o_chunk, _ = chunk_delta_rule(q, k, v, beta, impl="chunk")
        assert torch.equal(o_auto, o_chunk)
        o_bf16, s_bf16 = chunk_delta_rule(q.bfloat16(), k.bfloat16(), v.bfloat16(), beta.bfloat16(),
                                          output_final_state=True)
    assert o_bf16.dtype == torch.bfloat16 and s_bf16.dtype == torch.float32
    assert (o_bf16.float() - o_chunk).abs().max() < 0.05


def test_chunk_delta_rule_triton_needs_cuda_or_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    q, k, v, beta, _ = make_inputs(1, 4, 1, 8, 8, with_state=False)
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        chunk_delta_rule(q, k, v, beta, impl="triton")


@pytest.mark.parametrize("change,message", [
    (dict(impl="fast"), "impl='fast' is unknown"),
    (dict(beta=torch.rand(2, 9, 3)), "beta must be a float tensor \\[B=2, T=9, H=2\\]"),
    (dict(k=torch.randn(2, 9, 2, 4)), "k must have the shape of q"),
    (dict(v=torch.randn(2, 8, 2, 8)), "v must be \\[B, T, H, V\\]"),
    (dict(initial_state=torch.zeros(2, 2, 8, 8)), "initial_state must be \\[N=2, H=2, K=8, V=6\\]"),
    (dict(cu_seqlens=torch.tensor([0, 9])), "batch must be 1"),
    (dict(chunk_size=0, impl="chunk"), "chunk_size must be a positive int"),
    (dict(scale=-1.0), "scale must be > 0"),
])
def test_chunk_delta_rule_bad_inputs(change, message):
    args = dict(q=torch.randn(2, 9, 2, 8), k=torch.randn(2, 9, 2, 8), v=torch.randn(2, 9, 2, 6),
                beta=torch.rand(2, 9, 2))
    options = {key: val for key, val in change.items() if key not in args}
    args.update({key: val for key, val in change.items() if key in args})
    with pytest.raises(ValueError, match=message):
        chunk_delta_rule(args["q"], args["k"], args["v"], args["beta"], **options)


def test_chunk_delta_rule_bad_cu_seqlens():
    q, k, v, beta, _ = make_inputs(1, 9, 2, 8, 8, with_state=False)
    with pytest.raises(ValueError, match="cu_seqlens must rise from 0 to T=9"):
        chunk_delta_rule(q, k, v, beta, cu_seqlens=torch.tensor([0, 4, 8]))
    with pytest.raises(ValueError, match="initial_state must be \\[N=2"):
        chunk_delta_rule(q, k, v, beta, cu_seqlens=torch.tensor([0, 4, 9]), initial_state=torch.zeros(1, 2, 8, 8))
