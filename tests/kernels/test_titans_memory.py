"""titans_memory: the chunked form against the autograd loop (outputs and every gradient, fp64, relative RMS
<= 1e-9), exact per-token descent at chunk_size 1, the paper's chunk approximation written out, frozen memory."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from seqmix.kernels.titans import MemoryState, memory_apply, titans_memory

B, H, K = 2, 2, 4


def _inputs(t, depth, seed=0, position=0):
    """q, k, v, gates and a state whose chunk base differs from its weights (as mid-chunk), all fp64 leaves."""
    g = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64)  # noqa: E731
    q, k = F.normalize(rand(B, t, H, K), dim=-1), F.normalize(rand(B, t, H, K), dim=-1)
    v = rand(B, t, H, K)
    log_eta, theta, log_keep = F.logsigmoid(rand(B, t, H) + 1), 0.3 * torch.sigmoid(rand(B, t, H)), F.logsigmoid(
        rand(B, t, H) + 3)
    widths = [K] + [2 * K] * (depth - 1) + [K]
    weights = tuple(rand(B, H, i, o) / i**0.5 for i, o in zip(widths[:-1], widths[1:]))
    momentum = tuple(0.1 * rand(*w.shape) for w in weights)
    base = tuple(w + 0.1 * rand(*w.shape) for w in weights) if position else weights
    leaves = [t.requires_grad_() for t in (q, k, v, log_eta, theta, log_keep, *weights, *momentum)]
    if position:
        leaves += [w.requires_grad_() for w in base]
    return (q, k, v, log_eta, theta, log_keep), MemoryState(weights, momentum, base, position), leaves


def _run(impl, t, depth, chunk_size, position):
    args, state, leaves = _inputs(t, depth, position=position)
    o, final = titans_memory(*args, state, chunk_size=chunk_size, impl=impl)
    loss = (o * torch.sin(torch.arange(o.numel(), dtype=o.dtype)).view_as(o)).sum()
    loss = loss + sum((w * torch.cos(w)).sum() for w in (*final.weights, *final.momentum))
    return o.detach(), final, torch.autograd.grad(loss, leaves)


@pytest.mark.parametrize("depth", [1, 2])
@pytest.mark.parametrize("chunk_size,t,position", [(1, 7, 0), (4, 13, 0), (4, 13, 2), (8, 23, 5)])
def test_chunk_equals_naive(depth, chunk_size, t, position, assert_rel_close):
    """Same chunk approximation both ways: outputs, final state and the gradients of every input (a piece that
    starts mid-chunk at ``position`` finishes that chunk at its base first)."""
    o_ref, s_ref, g_ref = _run("naive", t, depth, chunk_size, position)
    o, s, g = _run("chunk", t, depth, chunk_size, position)
    what = f"depth {depth} chunk {chunk_size} T={t} position {position}"
    assert_rel_close(o, o_ref, 1e-9, f"{what}: output")
    for a, b in zip((*s.weights, *s.momentum, *s.base), (*s_ref.weights, *s_ref.momentum, *s_ref.base)):
        assert_rel_close(a.detach(), b.detach(), 1e-9, f"{what}: final state")
    assert s.position == s_ref.position == position + t
    for i, (a, b) in enumerate(zip(g, g_ref)):
        assert_rel_close(a, b, 1e-9, f"{what}: gradient of input {i}")


def test_chunk_size_one_is_per_token_descent(assert_rel_close):
    """chunk_size 1: every gradient at the memory just before its token, written here without the op."""
    (q, k, v, log_eta, theta, log_keep), state, _ = _inputs(9, 1)
    o, _ = titans_memory(q, k, v, log_eta, theta, log_keep, state, chunk_size=1)
    w, s = state.weights[0], state.momentum[0]
    expected = []
    for t in range(9):
        grad = 2 * k[:, t, :, :, None] * (torch.einsum("bhk,bhkv->bhv", k[:, t], w) - v[:, t])[:, :, None]
        s = log_eta[:, t, :, None, None].exp() * s - theta[:, t, :, None, None] * grad
        w = log_keep[:, t, :, None, None].exp() * w + s
        expected.append(torch.einsum("bhk,bhkv->bhv", q[:, t], w))
    assert_rel_close(o.detach(), torch.stack(expected, 1).detach(), 1e-9, "chunk_size 1 vs online descent")


def test_one_chunk_takes_every_gradient_at_its_start(assert_rel_close):
    """The paper's approximation for a linear memory, no momentum carried (eta 0) and no forgetting:
    y_t = q_t (M_0 - sum_{s<=t} theta_s grad l(M_0; k_s, v_s)); it differs from per-token descent."""
    (q, k, v, _, theta, _), state, _ = _inputs(6, 1)
    zeros = torch.zeros_like(theta)
    no_momentum = MemoryState(state.weights, tuple(torch.zeros_like(w) for w in state.weights), state.weights, 0)
    o, _ = titans_memory(q, k, v, zeros - 1e4, theta, zeros, no_momentum, chunk_size=8)
    w0 = state.weights[0]
    residual = torch.einsum("bthk,bhkv->bthv", k, w0) - v  # [B, T, H, V] at M_0
    steps = (2 * theta[..., None, None] * k[..., :, None] * residual[..., None, :]).cumsum(1)  # [B, T, H, K, V]
    expected = torch.einsum("bthk,bthkv->bthv", q, w0[:, None] - steps)
    assert_rel_close(o.detach(), expected.detach(), 1e-9, "one chunk at M_0")
    exact, _ = titans_memory(q, k, v, zeros - 1e4, theta, zeros, no_momentum, chunk_size=1)
    assert (exact - o).abs().max() > 1e-3, "chunk 8 should differ from per-token descent"


@pytest.mark.parametrize("impl", ["naive", "chunk"])
def test_learning_rate_zero_is_a_fixed_mlp(impl, assert_rel_close):
    """theta 0 and no forgetting (alpha 0): the memory never changes, y_t = M_0(q_t)."""
    (q, k, v, log_eta, theta, _), state, _ = _inputs(11, 2)
    state = MemoryState(state.weights, tuple(torch.zeros_like(w) for w in state.weights), state.weights, 0)
    o, final = titans_memory(q, k, v, log_eta, torch.zeros_like(theta), torch.zeros_like(theta), state,
                             chunk_size=4, impl=impl)
    expected = memory_apply(state.weights, q.transpose(1, 2)).transpose(1, 2)  # [B, H, T, V] -> [B, T, H, V]
    assert_rel_close(o.detach(), expected.detach(), 1e-12, f"{impl}: frozen memory")
    for a, b in zip(final.weights, state.weights):
        assert torch.equal(a.detach(), b.detach())


def test_bad_inputs_name_the_problem():
    (q, k, v, log_eta, theta, log_keep), state, _ = _inputs(5, 1)
    with pytest.raises(ValueError, match="theta must be \\[B, T, H\\]"):
        titans_memory(q, k, v, log_eta, theta[..., :1], log_keep, state)
    with pytest.raises(ValueError, match="k must be shaped like q"):
        titans_memory(q, k[:, :2], v, log_eta, theta, log_keep, state)
    with pytest.raises(ValueError, match="init_state"):
        titans_memory(q, k, v, log_eta, theta, log_keep, state._replace(weights=(state.weights[0][:1],)))
    with pytest.raises(ValueError, match="init_state"):
        titans_memory(q, k, v, log_eta, theta, log_keep, state.weights)
    with pytest.raises(ValueError, match="chunk_size must be a positive int"):
        titans_memory(q, k, v, log_eta, theta, log_keep, state, chunk_size=0)
