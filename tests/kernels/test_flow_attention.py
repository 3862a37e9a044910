"""flow_attention: the linear prefix-sum form against the explicit T x T flow formula, outputs,
final states and every gradient (q, k, v and the initial state), causal and non-causal, odd
lengths; pieces with the state carried; errors. Relative RMS tolerance: 1e-5 in fp32."""

import functools

import pytest
import torch

from seqmix.kernels.flow import FlowState, flow_attention

RATIO = 1e-5  # relative RMS error allowed between chunk and naive in fp32


def make_inputs(t, *, seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    return tuple((torch.randn(2, t, 2, d, generator=gen, dtype=dtype) * 2).requires_grad_() for d in (8, 8, 4))


def prefix_state(dtype=torch.float32):
    """A state reached by 9 tokens, as leaf tensors (so the state's gradients are checked too)."""
    with torch.no_grad():
        _, state = flow_attention(*make_inputs(9, seed=5, dtype=dtype), causal=True, output_final_state=True,
                                  impl="naive")
    return FlowState(*(s.clone().requires_grad_() for s in state[:-1]), state.seen)


def outputs_and_grads(impl, q, k, v, state, *, causal, chunk_size):
    o, final = flow_attention(q, k, v, causal=causal, initial_state=state, output_final_state=causal,
                              chunk_size=chunk_size, impl=impl)
    gen = torch.Generator().manual_seed(123)
    results = [o] + (list(final[:-1]) if causal else [])
    loss = sum((r * torch.randn(r.shape, generator=gen, dtype=r.dtype)).sum() for r in results)
    inputs = [q, k, v] + ([] if state is None else list(state[:-1]))
    return [r.detach() for r in results] + list(torch.autograd.grad(loss, inputs))


@functools.lru_cache(maxsize=None)
def naive_results(t, causal, with_state):
    state = prefix_state() if with_state else None
    return outputs_and_grads("naive", *make_inputs(t), state, causal=causal, chunk_size=16)


@pytest.mark.parametrize("t", [2, 37, 130])
@pytest.mark.parametrize("causal,with_state", [(True, False), (True, True), (False, False)])
def test_flow_chunk_matches_naive(t, causal, with_state, assert_rel_close):
    state = prefix_state() if with_state else None
    actual = outputs_and_grads("chunk", *make_inputs(t), state, causal=causal, chunk_size=16)
    expected = naive_results(t, causal, with_state)
    assert len(actual) == len(expected) == (4 if not causal else 10 + 6 * with_state)  # o, [6 final], 3 + [6] grads
    for i, (a, e) in enumerate(zip(actual, expected)):
        assert_rel_close(a, e, RATIO, f"T={t} causal={causal} state={with_state} result {i}")


@pytest.mark.parametrize("impl", ["naive", "chunk"])
@pytest.mark.parametrize("causal", [True, False])
def test_flow_of_one_token(impl, causal, assert_rel_close):
    """One token alone: I = O = a.b, so I^ = O^ = 1, c = 1 and o = sigmoid(1) v, whatever q and k."""
    q, k, v = (x.detach() for x in make_inputs(1))
    o, _ = flow_attention(q, k, v, causal=causal, impl=impl)
    assert_rel_close(o, torch.sigmoid(torch.tensor(1.0)) * v, 1e-6, f"{impl} causal={causal}")


@pytest.mark.parametrize("impl", ["naive", "chunk"])
def test_flow_pieces_carry_the_state(impl, assert_rel_close):
    """Two pieces with the state carried equal one call, outputs and final state (fp64: exactly)."""
    q, k, v = (x.detach() for x in make_inputs(23, dtype=torch.float64))
    o, final = flow_attention(q, k, v, causal=True, output_final_state=True, impl=impl)
    o1, s1 = flow_attention(q[:, :10], k[:, :10], v[:, :10], causal=True, output_final_state=True, impl=impl)
    o2, s2 = flow_attention(q[:, 10:], k[:, 10:], v[:, 10:], causal=True, initial_state=s1, output_final_state=True,
                            impl=impl)
    assert_rel_close(torch.cat([o1, o2], 1), o, 1e-12, f"{impl} output")
    assert s2.seen == final.seen == 23
    for name, a, b in zip(FlowState._fields, s2, final[:-1]):
        assert_rel_close(a, b, 1e-12, f"{impl} final {name}")


def test_flow_large_inputs_stay_finite():
    """Saturated features (sigmoid of +-1e3) keep every flow positive: finite outputs and gradients."""
    q, k, v = (x.detach().mul(500).requires_grad_() for x in make_inputs(50))
    for causal in (True, False):
        o, _ = flow_attention(q, k, v, causal=causal)
        o.square().sum().backward()
        assert torch.isfinite(o).all() and all(torch.isfinite(x.grad).all() for x in (q, k, v)), f"causal={causal}"


def test_flow_errors_name_the_problem():
    q, k, v = (x.detach() for x in make_inputs(5))
    with pytest.raises(ValueError, match="a state needs causal=True"):
        flow_attention(q, k, v, causal=False, output_final_state=True)
    with pytest.raises(ValueError, match="initial_state must be a FlowState with kv \\[B=2, H=2, K=8, V=4\\]"):
        flow_attention(q, k, v, causal=True, initial_state=FlowState.empty(1, 2, 8, 4, None, torch.float32))
    with pytest.raises(ValueError, match="chunk_size must be a positive int"):
        flow_attention(q, k, v, causal=True, chunk_size=0)
    with pytest.raises(ValueError, match="impl='triton' is unknown"):
        flow_attention(q, k, v, causal=True, impl="triton")
