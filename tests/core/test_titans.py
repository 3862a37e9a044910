"""The titans mixer: its arguments, persistent memory as a learned prefix, a frozen memory, a linear memory with
small chunks (chunk = naive outputs and gradients, step = forward across chunk boundaries), constant state."""

from __future__ import annotations

import pytest
import torch

from seqmix.core import build_mixer
from seqmix.kernels.titans import memory_apply

D = 16


def _mixer(seed=0, **arguments):
    torch.manual_seed(seed)
    return build_mixer("titans", D, **{"n_heads": 2, "chunk_size": 4, **arguments})


@pytest.mark.parametrize("arguments,match", [
    ({"layout": "MAC"}, "layout='MAC' is not implemented; only 'MAL'"),
    ({"layout": "MAG"}, "layout='MAG' is not implemented; only 'MAL'"),
    ({"layout": "mal"}, "layout must be one of"),
    ({"memory_depth": 3}, "memory_depth must be 1 .* or 2"),
    ({"max_lr": 1.5}, "max_lr must be in \\[0, 1\\]"),
    ({"n_persistent": -1}, "n_persistent must be an int >= 0"),
    ({"memory_expansion": 0}, "memory_expansion must be a positive int"),
    ({"memory_depth": 1, "memory_expansion": 4}, "a linear memory \\(memory_depth=1\\) has none"),
    ({"chunk_size": 0}, "chunk_size must be a positive int"),
    ({"causal": False}, "supports only \\['causal_self'\\]"),
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


def test_learning_rate_zero_and_no_forgetting_is_a_fixed_mlp(assert_rel_close):
    """max_lr 0 and alpha 0 (its gate forced shut): the memory stays its learned initial MLP."""
    mixer = _mixer(max_lr=0.0, n_persistent=0)
    with torch.no_grad():
        mixer.gates.weight[2 * 2 :] = 0  # the alpha logits: rows [2H, 3H)
        mixer.gates.bias[2 * 2 :] = -200.0  # log(1 - alpha) = logsigmoid(200) = 0 in fp32
    x = torch.randn(2, 11, D)
    y, state = mixer(x, return_state=True)
    q = mixer._memory_inputs(x)[0]  # [B, T, H, K]
    fixed = memory_apply(tuple(w[None] for w in mixer.memory), q.transpose(1, 2)).transpose(1, 2)  # [B, T, H, V]
    assert_rel_close(y.detach(), mixer.output(fixed, x).detach(), 1e-6, "frozen memory")
    for w, w0 in zip(state.weights, mixer.memory):
        assert torch.equal(w[0], w0.detach())


def test_linear_memory_small_chunks_chunk_equals_naive_and_steps(assert_rel_close):
    """A linear memory (depth 1) in chunks of 4, T = 19: chunk = naive (outputs, all gradients), and
    step token by token equals forward across the chunk boundaries."""
    mixer = _mixer(memory_depth=1, n_persistent=2)
    x = torch.randn(2, 19, D)
    results = {}
    for impl in ("naive", "chunk"):
        mixer.impl = impl
        mixer.zero_grad()
        y = mixer(x)
        y.backward(torch.cos(torch.arange(y.numel(), dtype=y.dtype)).view_as(y))
        results[impl] = y.detach(), {n: p.grad.clone() for n, p in mixer.named_parameters()}
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


def test_state_size_counts_the_state():
    mixer = _mixer(memory_depth=2, memory_expansion=2)
    state = mixer.init_state(1)
    floats = sum(t.numel() for part in state[:3] for t in part)
    assert mixer.state_size(10) == mixer.state_size(10_000) == floats
