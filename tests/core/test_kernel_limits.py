"""Kernel limits are declared per form (``seqmix/kernels/<op>/limits.py``) and checked where a
mixer is built: a size the Triton kernel cannot take fails in ``__init__`` on the CPU already,
and ``impl="auto"`` on CUDA falls back to the chunked form with one warning (no GPU here: the
resolution is tested with a fake device flag)."""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import pytest
import torch

import seqmix.kernels.common as common
from seqmix.core import build_mixer, list_mixers
from seqmix.core.mixer import get_mixer_class, mixer_arguments
from seqmix.kernels.common import resolve_impl
from seqmix.kernels.delta_rule import chunk_delta_rule
from seqmix.kernels.sliding_window import SLIDING_WINDOW

TRITON_MIXERS = [name for name in list_mixers() if "triton" in get_mixer_class(name).impls]
ON_CUDA = SimpleNamespace(is_cuda=True)  # what resolve_impl reads of a tensor
WIDE = 512  # a head dim above every Triton kernel's 256


@pytest.fixture(autouse=True)
def fresh_warnings(monkeypatch):
    """Each test starts with no fallback said yet (the rule says each one once per process)."""
    monkeypatch.setattr(common, "_SAID", set())


def config(name: str, **change: object) -> dict:
    return {**get_mixer_class(name).test_configs[0], **change}


def test_every_triton_backed_mixer_is_covered():
    assert {"gla", "linear_attention", "deltanet", "aaren", "lstm", "gru", "slstm"} <= set(TRITON_MIXERS)


@pytest.mark.parametrize("name", TRITON_MIXERS)
def test_explicit_triton_refuses_a_wide_head_in_init(name):
    with pytest.raises(ValueError, match=rf"impl='triton': .*head dim .* = {WIDE} \(allowed: up to 256; use more heads"):
        build_mixer(name, WIDE, **config(name, n_heads=1, impl="triton"))


@pytest.mark.parametrize("name", [n for n in TRITON_MIXERS if "chunk_size" in mixer_arguments(get_mixer_class(n))])
def test_explicit_triton_refuses_a_chunk_size_in_init(name):
    with pytest.raises(ValueError, match=r"impl='triton': .*chunk_size=256 \(allowed: 16, 32, 64(, 128)?\); "
                                         r"choose an allowed value or impl='chunk'"):
        build_mixer(name, 16, **config(name, chunk_size=256, impl="triton"))


@pytest.mark.parametrize("name", TRITON_MIXERS)
def test_supported_sizes_construct_with_triton(name):
    sizes = {"chunk_size": 32} if "chunk_size" in mixer_arguments(get_mixer_class(name)) else {}
    mixer = build_mixer(name, 64, **config(name, n_heads=2, impl="triton", **sizes))
    assert mixer.triton_refusal is None
    assert mixer.resolve_impl(ON_CUDA) == "triton"


def test_auto_keeps_unsupported_sizes_off_triton_and_says_so_once():
    mixer = build_mixer("deltanet", 16, **config("deltanet", chunk_size=128))  # the chunk form takes any size
    assert mixer.resolve_impl(torch.zeros(1)) == "chunk"
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        assert [mixer.resolve_impl(ON_CUDA) for _ in range(3)] == ["chunk"] * 3
    assert len(said) == 1, [str(w.message) for w in said]
    assert "DeltaNet: impl='auto' runs the chunk form on CUDA" in str(said[0].message)
    assert "chunk_size=128 (allowed: 16, 32, 64)" in str(said[0].message)


def test_auto_refuses_sizes_its_cpu_form_cannot_take():
    with pytest.raises(ValueError, match=r"impl='auto': the chunk form of gla cannot take chunk_size=48 "
                                         r"\(allowed: a power of two"):
        build_mixer("gla", 16, **config("gla", chunk_size=48))


def test_triton_set_after_init_is_refused_when_asked_for():
    mixer = build_mixer("aaren", 16, **config("aaren", chunk_size=256))
    mixer.impl = "triton"
    with pytest.raises(ValueError, match=r"Aaren: impl='triton': the triton form of scan cannot take chunk_size=256"):
        mixer.resolve_impl(ON_CUDA)


def test_resolve_impl_rule():
    impls = ("naive", "chunk", "triton")
    assert resolve_impl("op", "auto", impls, cuda=True) == "triton"
    assert resolve_impl("op", "auto", impls, cuda=False) == "chunk"
    assert resolve_impl("op", "naive", impls, cuda=True) == "naive"
    assert resolve_impl("op", "auto", ("naive", "conv"), cuda=True) == "conv"  # no chunk: the last CPU form
    with pytest.raises(ValueError, match=r"op: impl='fast' is unknown; choose one of \('auto', 'naive', 'chunk', "):
        resolve_impl("op", "fast", impls, cuda=False)
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        for _ in range(2):
            assert resolve_impl("op", "auto", impls, cuda=True, triton_refusal="a limit") == "chunk"
        assert resolve_impl("op", "auto", impls, cuda=False, triton_refusal="a limit") == "chunk"
    assert [str(w.message) for w in said] == ["op: impl='auto' runs the chunk form on CUDA: a limit"]


def test_sliding_window_auto_on_cuda_is_its_chunk_form():
    assert SLIDING_WINDOW.resolve("sliding_window_attention", "auto", ON_CUDA) == "chunk"


def test_kernel_entry_refuses_before_loading_triton():
    q = torch.randn(1, 8, 1, 16)
    with pytest.raises(ValueError, match=r"chunk_delta_rule: impl='triton': .*chunk_size=128 \(allowed: 16, 32, 64\)"):
        chunk_delta_rule(q, q, q, torch.rand(1, 8, 1), chunk_size=128, impl="triton")
