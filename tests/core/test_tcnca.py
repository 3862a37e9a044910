"""TCNCA's mechanism: the TCN's receptive field is exactly what its dilations give, the chunked attention is
attention inside each chunk, the state is as large as state_size says, and bad sizes fail in __init__.

The generic tests (test_mixers_generic.py) cover shapes, causality, pieces, step = forward and chunk = naive.
Tolerances: relative RMS 1e-6 in fp64 (chunk vs naive vs the per-chunk definition)."""

from __future__ import annotations

import pytest
import torch

from seqmix.core import build_mixer
from seqmix.core.mixers.tcnca import TCNCA, chunked_attention
from seqmix.kernels.attention import attention_naive

D = 8
T = 29


def _mixer(impl: str, **sizes) -> TCNCA:
    torch.manual_seed(0)
    return build_mixer("tcnca", D, n_heads=2, impl=impl, **sizes).double()


def _support(fn, x: torch.Tensor, t: int) -> set[int]:
    """The positions s with d fn(x)[0, t] / d x[0, s] != 0."""
    x = x.clone().requires_grad_()
    fn(x)[0, t].sum().backward()
    return set(torch.nonzero(x.grad[0].abs().sum(-1)).flatten().tolist())


@pytest.mark.parametrize("sizes,offsets", [
    ({"kernel_size": 2, "n_levels": 3}, list(range(8))),  # dilations 1, 2, 4: every offset below 2^3
    ({"kernel_size": 3, "n_levels": 2, "dilation_base": 4}, [0, 1, 2, 4, 5, 6, 8, 9, 10]),  # 1, 4: gaps
])
@pytest.mark.parametrize("impl", ["naive", "chunk"])
def test_tcn_receptive_field_is_what_the_dilations_give(sizes, offsets, impl):
    mixer = _mixer(impl, chunk_size=4, **sizes)
    assert mixer.receptive_field() == offsets
    x = torch.randn(1, T, D, dtype=torch.float64)
    state = mixer.init_state(1, x.device, x.dtype)
    tcn = lambda x: mixer.tcn(x, state.inputs, impl)[0]  # noqa: E731  x': [B, T, D]
    for t in (0, 5, T - 1):
        assert _support(tcn, x, t) == {t - o for o in offsets if t - o >= 0}, f"x'[{t}]"


@pytest.mark.parametrize("impl", ["naive", "chunk"])
def test_output_sees_the_receptive_fields_of_its_chunk(impl):
    """y[t] depends on x[s] iff s is in the receptive field of some j <= t in t's chunk (through j's key)."""
    chunk = 4
    mixer = _mixer(impl, chunk_size=chunk, kernel_size=3, n_levels=2, dilation_base=4)
    x = torch.randn(1, T, D, dtype=torch.float64)
    offsets = mixer.receptive_field()
    for t in (2, 13, T - 1):
        mates = range(t - t % chunk, t + 1)
        expected = {j - o for j in mates for o in offsets if j - o >= 0}
        assert _support(mixer, x, t) == expected, f"y[{t}]"


@pytest.mark.parametrize("length", [1, 8, 37])
def test_chunked_attention_is_attention_inside_each_chunk(length, assert_rel_close):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, length, 5, generator=g, dtype=torch.float64) for _ in range(3))
    chunk = 8
    expected = torch.cat([attention_naive(q[:, :, s:s + chunk], k[:, :, s:s + chunk], v[:, :, s:s + chunk], causal=True)
                          for s in range(0, length, chunk)], 2)  # [B, H, T, K], one causal attention per chunk
    for impl in ("naive", "chunk"):
        assert_rel_close(chunked_attention(q, k, v, chunk, impl), expected, 1e-6, f"impl={impl} T={length}")


def test_state_holds_what_state_size_says():
    """Constant size: each level's (k-1) d_l inputs and at most C - 1 keys and values (a full chunk is dropped)."""
    mixer = _mixer("chunk", chunk_size=4, kernel_size=3, n_levels=2)
    x = torch.randn(1, 11, D, dtype=torch.float64)
    with torch.no_grad():
        _, state = mixer(x, return_state=True)  # 11 = 2 chunks + 3 tokens
        assert state.keys.shape[2] == 3 and [p.shape[1] for p in state.inputs] == [2, 6]
        assert sum(p.numel() for p in (*state.inputs, state.keys, state.values)) == mixer.state_size(11)
        _, state = mixer.step(x[:, 0], state)  # the chunk is full: its keys are no longer needed
    assert state.keys.shape[2] == 0 and mixer.state_size(11) == mixer.state_size(10 ** 6)


@pytest.mark.parametrize("argument,value,message", [
    ("chunk_size", 0, "chunk_size must be an int >= 1"),
    ("kernel_size", 1, "kernel_size must be an int >= 2"),
    ("n_levels", 0, "n_levels must be an int >= 1"),
    ("dilation_base", 0, "dilation_base must be an int >= 1"),
    ("chunk_size", 2.5, "chunk_size must be an int"),
    ("causal", False, "supports only \\['causal_self'\\]"),
])
def test_bad_sizes_fail_in_init(argument, value, message):
    with pytest.raises(ValueError, match=message):
        build_mixer("tcnca", D, **{argument: value})
