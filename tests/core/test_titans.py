"""The titans mixer: its arguments, persistent memory as a learned prefix, a frozen memory, a linear memory with
small chunks (chunk = naive outputs and gradients, step = forward across chunk boundaries), constant state; the MAG
and MAC layouts against their equations written out, causal to the gradient, steps and pieces across segments."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from seqmix.core import build_mixer
from seqmix.core.layers import merge_heads, split_heads
from seqmix.kernels.attention import attention_naive
from seqmix.kernels.titans import memory_apply
from tests.core.mixer_checks import impl_outputs_and_grads

D = 16
LAYOUTS = {"MAL": {}, "MAG": {"window": 5}, "MAC": {"segment_size": 6}}


def _mixer(seed=0, **arguments):
    torch.manual_seed(seed)
    return build_mixer("titans", D, **{"n_heads": 2, "chunk_size": 4, **arguments})


@pytest.mark.parametrize("arguments,match", [
    ({"layout": "mal"}, "layout must be one of"),
    ({"window": 8}, "window sizes MAG's sliding-window attention; layout='MAL' has none"),
    ({"layout": "MAC", "window": 8}, "layout='MAC' has none: leave it None or set layout='MAG'"),
    ({"layout": "MAG", "segment_size": 8}, "layout='MAG' has none: leave it None or set layout='MAC'"),
    ({"layout": "MAG", "window": 0}, "window must be an int >= 1"),
    ({"layout": "MAC", "segment_size": 0}, "segment_size must be an int >= 1"),
    ({"memory_depth": 3}, "memory_depth must be 1 .* or 2"),
    ({"max_lr": 1.5}, "max_lr must be in \\[0, 1\\]"),
    ({"n_persistent": -1}, "n_persistent must be an int >= 0"),
    ({"memory_expansion": 0}, "memory_expansion must be a positive int"),
    ({"memory_depth": 1, "memory_expansion": 4}, "a linear memory \\(memory_depth=1\\) has none"),
    ({"chunk_size": 0}, "chunk_size must be a positive int"),
    ({"causal": False}, "supports only \\['causal_self'\\]"),
    ({"conv_size": 1}, "conv_size must be an int >= 2"),
    ({"layout": "MAC", "conv_size": 4}, "conv_size is for MAL and MAG.*leave conv_size None"),
])
def test_bad_arguments_name_the_fix(arguments, match):
    with pytest.raises(ValueError, match=match):
        _mixer(**arguments)


def test_persistent_tokens_are_a_learned_prefix(assert_rel_close):
    """With n_persistent tokens the mixer equals its memory reading [persistent, x] from the learned initial
    memory, the prefix's outputs dropped; the tokens get gradients."""
    mixer = _mixer(n_persistent=3)
    x = torch.randn(2, 9, D)
    y = mixer(x)
    prefixed = torch.cat([mixer.persistent.detach().expand(2, 3, D), x], 1)  # [B, 3 + T, D]
    y_prefixed = mixer(prefixed, state=mixer.memory_state(2))[:, 3:]
    assert_rel_close(y.detach(), y_prefixed.detach(), 1e-6, "persistent prefix")
    y.square().sum().backward()
    assert mixer.persistent.grad is not None and mixer.persistent.grad.abs().sum() > 0


def _freeze_memory(mixer):
    """max_lr is 0 already; shut the forgetting gate: alpha = 0, so the memory stays its learned initial MLP."""
    with torch.no_grad():
        mixer.gates.weight[2 * 2 :] = 0  # the alpha logits: rows [2H, 3H)
        mixer.gates.bias[2 * 2 :] = -200.0  # log(1 - alpha) = logsigmoid(200) = 0 in fp32


def test_learning_rate_zero_and_no_forgetting_is_a_fixed_mlp(assert_rel_close):
    """max_lr 0 and alpha 0 (its gate forced shut): the memory stays its learned initial MLP."""
    mixer = _mixer(max_lr=0.0, n_persistent=0)
    _freeze_memory(mixer)
    x = torch.randn(2, 11, D)
    y, state = mixer(x, return_state=True)
    q = mixer._memory_inputs(x, None)[0][0]  # [B, T, H, K]
    fixed = memory_apply(tuple(w[None] for w in mixer.memory), q.transpose(1, 2)).transpose(1, 2)  # [B, T, H, V]
    assert_rel_close(y.detach(), mixer.output(fixed, x).detach(), 1e-6, "frozen memory")
    for w, w0 in zip(state.weights, mixer.memory):
        assert torch.equal(w[0], w0.detach())


@pytest.mark.parametrize("layout", ["MAG", "MAC"])
def test_learning_rate_zero_freezes_the_memory_in_every_layout(layout):
    """MAG and MAC with max_lr 0 and no forgetting: the memory after a sequence is still the initial MLP, while a
    learning memory moves."""
    frozen = _mixer(max_lr=0.0, n_persistent=2, layout=layout, **LAYOUTS[layout])
    _freeze_memory(frozen)
    x = torch.randn(2, 13, D)
    _, state = frozen(x, return_state=True)
    _, learning = _mixer(n_persistent=2, layout=layout, **LAYOUTS[layout])(x, return_state=True)
    for w, moved, w0 in zip(state.memory.weights, learning.memory.weights, frozen.memory):
        assert torch.equal(w[0], w0.detach())
        assert not torch.allclose(moved[0], w0.detach())


def test_linear_memory_small_chunks_chunk_equals_naive_and_steps(assert_rel_close):
    """A linear memory (depth 1) in chunks of 4, T = 19: chunk = naive (outputs, all gradients), and
    step token by token equals forward across the chunk boundaries."""
    mixer = _mixer(memory_depth=1, n_persistent=2)
    x = torch.randn(2, 19, D)
    results = impl_outputs_and_grads(mixer, x)
    assert_rel_close(results["chunk"][0], results["naive"][0], 1e-5, "output")
    for n, g in results["naive"][1].items():
        assert_rel_close(results["chunk"][1][n], g, 1e-5, f"grad {n}")
    with torch.no_grad():
        state, steps = mixer.init_state(2), []
        for t in range(x.shape[1]):
            y_t, state = mixer.step(x[:, t], state)
            steps.append(y_t)
        assert_rel_close(torch.stack(steps, 1), results["chunk"][0], 1e-5, "step vs forward")
    assert state.position == 2 + 19


# ------------------------------------------------------------------------------ MAG and MAC
def _mag_written_out(mixer, x):
    """Eqs. 26-28: y = SW-Attn([P, x]) and M([P, x]) over the prefixed sequence, the prefix's outputs dropped."""
    b, n = x.shape[0], mixer.n_persistent
    prefixed = torch.cat([mixer.persistent.expand(b, n, D), x], 1)  # [B, N + T, D]
    q, k, v = mixer.attention.qkv(prefixed)  # [B, H, N + T, K] each
    y = mixer.attention.out(merge_heads(attention_naive(q, k, v, causal=True, window=mixer.window)))[:, n:]
    m, _ = mixer._run(prefixed, mixer.memory_state(b))  # [B, N + T, H, V]
    return mixer.output(m[:, n:], y)


def _mac_written_out(mixer, x):
    """Eqs. 21-25 segment by segment, the attention one query at a time over [P, h_<=t, x_<=t]."""
    b, h, size = x.shape[0], mixer.n_heads, mixer.segment_size
    memory, outputs = mixer.memory_state(b), []
    p = mixer.persistent.expand(b, -1, -1)  # [B, N, D]
    for start in range(0, x.shape[1], size):
        segment = x[:, start : start + size]  # [B, L, D]
        q = mixer._memory_queries(segment).transpose(1, 2)  # [B, T, H, K] -> [B, H, L, K]
        retrieved = merge_heads(memory_apply(memory.weights, q))  # eq. 21: M_{i-1}(q), [B, H, L, V] -> [B, L, D]
        ys = []
        for t in range(segment.shape[1]):
            context = torch.cat([p, retrieved[:, : t + 1], segment[:, : t + 1]], 1)  # [B, N + 2 (t + 1), D]
            query = split_heads(mixer.attention.q(segment[:, t : t + 1]), h)  # [B, H, 1, K]
            keys, values = split_heads(mixer.attention.k(context), h), split_heads(mixer.attention.v(context), h)
            weights = torch.softmax(query @ keys.transpose(-1, -2) / keys.shape[-1] ** 0.5, -1)  # [B, H, 1, S]
            ys.append(mixer.attention_out(merge_heads(weights @ values)))  # [B, H, 1, V] -> [B, 1, D]
        y = torch.cat(ys, 1)  # eqs. 22-23: [B, L, D]
        m, memory = mixer._run(y, memory)  # eq. 24
        outputs.append(mixer.output(m, y))  # eq. 25
    return torch.cat(outputs, 1)


@pytest.mark.parametrize("impl", ["naive", "chunk"])
@pytest.mark.parametrize("layout,written_out", [("MAG", _mag_written_out), ("MAC", _mac_written_out)])
def test_layout_equals_its_equations_written_out(layout, written_out, impl, assert_rel_close):
    """T = 17 over windows of 5 / segments of 6 (a partial last segment), memory chunks of 4 (MAC: chunks that
    straddle segments): the mixer equals its equations written out, outputs and every parameter's gradient."""
    mixer = _mixer(n_persistent=3, layout=layout, impl=impl, **LAYOUTS[layout])
    x = torch.randn(2, 17, D)
    cotangent = torch.cos(torch.arange(2 * 17 * D, dtype=x.dtype)).view(2, 17, D)
    grads = {}
    for name, run in (("mixer", mixer), ("written out", lambda x: written_out(mixer, x))):
        mixer.zero_grad()
        y = run(x)
        y.backward(cotangent)
        grads[name] = y.detach(), {n: p.grad.clone() for n, p in mixer.named_parameters() if p.grad is not None}
    (y, g), (y_ref, g_ref) = grads["mixer"], grads["written out"]
    assert_rel_close(y, y_ref, 1e-5, f"{layout} {impl} output")
    assert g.keys() == g_ref.keys() and "persistent" in g and "memory.0" in g
    for n in g_ref:
        assert_rel_close(g[n], g_ref[n], 1e-5, f"{layout} {impl} grad {n}")


@pytest.mark.parametrize("layout", ["MAG", "MAC"])
def test_layout_chunk_equals_naive_with_a_linear_memory(layout, assert_rel_close):
    """A linear memory in chunks of 4, T = 19: the chunked memory = the per-token autograd loop, outputs and all
    gradients (input included)."""
    mixer = _mixer(memory_depth=1, n_persistent=2, layout=layout, **LAYOUTS[layout])
    x = torch.randn(2, 19, D)
    results = impl_outputs_and_grads(mixer, x)
    assert_rel_close(results["chunk"][0], results["naive"][0], 1e-5, f"{layout} output")
    for n, g in results["naive"][1].items():
        assert_rel_close(results["chunk"][1][n], g, 1e-5, f"{layout} grad {n}")


@pytest.mark.parametrize("layout", ["MAL", "MAG", "MAC"])
def test_layout_steps_and_pieces_equal_forward(layout, assert_rel_close):
    """Step token by token, and pieces cut mid-segment and mid-chunk (5 + 8 + 6), equal one forward; the state
    keeps at most a segment (MAC) and holds what state_size says."""
    mixer = _mixer(n_persistent=2, layout=layout, **LAYOUTS[layout]).eval()
    x = torch.randn(2, 19, D)
    with torch.no_grad():
        y = mixer(x)
        state, steps = mixer.init_state(2), []
        for t in range(x.shape[1]):
            y_t, state = mixer.step(x[:, t], state)
            steps.append(y_t)
            if layout == "MAC":
                assert state.keys.shape[3] == t % 6 + 1  # the segment's tokens so far, never more
        assert_rel_close(torch.stack(steps, 1), y, 1e-5, f"{layout} step vs forward")
        pieces, state = [], mixer.init_state(2)
        for start, stop in ((0, 5), (5, 13), (13, 19)):
            y_piece, state = mixer(x[:, start:stop], state=state, return_state=True)
            pieces.append(y_piece)
        assert_rel_close(torch.cat(pieces, 1), y, 1e-5, f"{layout} pieces vs forward")
    if layout == "MAC":
        _, full = mixer(x[:, :18], return_state=True)  # a whole segment of keys kept (the largest state)
        floats = sum(t.numel() for t in (*full.memory.weights, *full.memory.momentum, *full.memory.base,
                                          *full.retrieval, full.keys, full.values))
        assert mixer.state_size(19) == mixer.state_size(1900) == floats // 2  # floats per sequence, B = 2


@pytest.mark.parametrize("layout", ["MAL", "MAG", "MAC"])
def test_layout_has_no_future_leak(layout):
    """The gradient of output t w.r.t. every later input is exactly zero, and w.r.t. input t not: for t at a
    segment's start, middle and end (MAC's retrieved tokens h_j read x_j, a later token, if attended too early)."""
    mixer = _mixer(n_persistent=2, layout=layout, **LAYOUTS[layout])
    x = torch.randn(1, 14, D, requires_grad=True)
    y = mixer(x)
    for t in (0, 3, 5, 6, 8, 12):
        (grad,) = torch.autograd.grad(y[0, t].sum(), x, retain_graph=True)
        assert grad[0, t + 1 :].abs().max() == 0, f"{layout}: output {t} depends on later inputs"
        assert grad[0, t].abs().max() > 0, f"{layout}: output {t} ignores its own input"


def test_state_size_counts_the_state():
    mixer = _mixer(memory_depth=2, memory_expansion=2)
    state = mixer.init_state(1)
    floats = sum(t.numel() for part in state[:3] for t in part)
    assert mixer.state_size(10) == mixer.state_size(10_000) == floats


def assert_bounded_on_one_repeated_token(mixer, eta_logit: float) -> None:
    """Every key the same unit vector (one token, 256 times: a chunk's gradients add up along one direction), the
    momentum gate at ``eta_logit`` and the inner step's gate open: outputs finite, memory under 10x its start."""
    with torch.no_grad():
        mixer.gates.weight.zero_()
        mixer.gates.bias.copy_(torch.tensor([eta_logit, 20.0, -6.0]).repeat_interleave(2))  # eta, theta ~ max_lr
    x = torch.randn(1, 1, D).expand(1, 256, D)  # [B, T, D]: one token, 256 times
    with torch.no_grad():
        y, state = mixer(x, return_state=True)
    assert torch.isfinite(y).all()
    assert max(w.abs().max().item() for w in state.weights) < 10 * max(w.abs().max().item() for w in mixer.memory)


@pytest.mark.parametrize("eta_logit", [0.0, 2.0, 6.0])
def test_aligned_keys_do_not_diverge(eta_logit):
    """One token repeated (every key the same unit vector: a chunk's gradients add up along one direction), a deep
    memory in chunks of 8 at max_lr 0.1 with the inner step's gate open: the memory stays bounded for weak and strong
    momentum. Undamped momentum (theta not scaled by 1 - eta) reached NaN here at eta = sigmoid(2)."""
    mixer = _mixer(chunk_size=8, n_persistent=0, max_lr=0.1)
    assert_bounded_on_one_repeated_token(mixer, eta_logit)


@pytest.mark.parametrize("eta_logit", [0.0, 2.0])
def test_default_step_is_bounded_for_aligned_keys(eta_logit):
    """The defaults (max_lr, chunk_size) sit in the bounded region (max_lr * chunk_size <= 1, docs/titans.md
    "Stability"): a linear memory fed one token 256 times with the inner step's gate open stays bounded. With the
    old default max_lr 0.1 (product 1.6) it grew without bound at eta = 0.5."""
    torch.manual_seed(0)
    mixer = build_mixer("titans", D, n_heads=2, n_persistent=0, memory_depth=1)
    assert mixer.max_lr * mixer.chunk_size <= 1
    assert_bounded_on_one_repeated_token(mixer, eta_logit)


@pytest.mark.parametrize("layout", ["MAL", "MAG"])
def test_identity_conv_taps_equal_the_layer_without_convolutions(layout):
    """With every short convolution's last tap 1 and the others 0, conv + SiLU is SiLU: the layer with conv_size
    equals the same weights without (the module docstring's form), persistent tokens and all."""
    arguments = {"n_persistent": 3, **LAYOUTS[layout], "layout": layout}
    plain, convolved = _mixer(**arguments), _mixer(conv_size=3, **arguments)
    missing, unexpected = convolved.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing and all(name.startswith("convs.") for name in missing)
    with torch.no_grad():
        for conv in convolved.convs:
            conv.weight.zero_()
            conv.weight[-1] = 1.0
    x = torch.randn(2, 13, D)
    torch.testing.assert_close(convolved(x), plain(x), atol=1e-5, rtol=1e-5)


def test_conv_cache_carries_the_preceding_tokens_and_is_counted():
    """Pieces with the carried state equal one pass; the state holds the last conv_size - 1 q, k, v projections
    (after the persistent tokens: a learned prefix for the convolutions too) and state_size counts them."""
    mixer = _mixer(conv_size=4, n_persistent=2)
    x = torch.randn(1, 11, D)
    first, state = mixer(x[:, :6], return_state=True)
    assert state.conv.shape == (1, 3, 3 * D)
    second = mixer(x[:, 6:], state=state)
    torch.testing.assert_close(torch.cat([first, second], 1), mixer(x), atol=1e-5, rtol=1e-5)
    initial = mixer.init_state(1)
    assert initial.conv.abs().sum() > 0  # the persistent tokens' projections
    floats = sum(t.numel() for part in initial.memory[:3] for t in part) + initial.conv.numel()
    assert mixer.state_size(10) == mixer.state_size(10_000) == floats
