"""The Aaren softmax-scan Triton kernel under Triton's interpreter against ``naive.py``:
outputs, final state (m, u, w) and every gradient (s, v, initial state), NaN-poisoned outputs."""

import os

os.environ["TRITON_INTERPRET"] = "1"  # before anything imports triton
os.environ["SEQMIX_TRITON_POISON"] = "1"  # kernel outputs start as NaN

import pytest
import torch

from seqmix.kernels.scan import empty_state, softmax_scan
from seqmix.kernels.scan.triton import softmax_scan_triton
from tests.kernels.triton_checks import RATIO, require_interpreter


def make_inputs(b, t, h, dv, *, with_state, score_scale=3.0, seed=0):
    gen = torch.Generator().manual_seed(seed)
    s = (torch.randn(b, t, h, generator=gen) * score_scale).requires_grad_()
    v = torch.randn(b, t, h, dv, generator=gen).requires_grad_()
    state = None
    if with_state:
        state = tuple(x.requires_grad_() for x in (torch.randn(b, h, generator=gen) * score_scale,
                                                    torch.randn(b, h, dv, generator=gen),
                                                    torch.rand(b, h, generator=gen) + 0.5))
    return s, v, state


def outputs_and_grads(impl, s, v, state, *, final, chunk_size=64):
    o, final_state = softmax_scan(s, v, initial_state=state, output_final_state=final, chunk_size=chunk_size,
                                  impl=impl)
    gen = torch.Generator().manual_seed(1)
    loss = (o * torch.randn(o.shape, generator=gen)).sum()
    results = [o.detach()]
    if final:
        for x in final_state:
            loss = loss + (x * torch.randn(x.shape, generator=gen)).sum()
        results += [x.detach() for x in final_state]
    inputs = [s, v, *(state or ())]
    return results + list(torch.autograd.grad(loss, inputs))


@pytest.mark.parametrize("t", [1, 63, 130])
@pytest.mark.parametrize("dv", [16, 32])
@pytest.mark.parametrize("with_state", [False, True])
def test_softmax_scan_triton_matches_naive(t, dv, with_state, assert_rel_close):
    require_interpreter()
    s, v, state = make_inputs(2, t, 2, dv, with_state=with_state)
    expected = outputs_and_grads("naive", s, v, state, final=True)
    actual = outputs_and_grads("triton", s, v, state, final=True)
    names = ["o", "m_T", "u_T", "w_T", "ds", "dv"] + (["dm0", "du0", "dw0"] if with_state else [])
    for a, e, name in zip(actual, expected, names, strict=True):
        assert_rel_close(a, e, RATIO, name)


def test_softmax_scan_triton_without_final_state_and_small_chunks(assert_rel_close):
    require_interpreter()
    s, v, state = make_inputs(1, 70, 2, 16, with_state=True)
    expected = outputs_and_grads("naive", s, v, state, final=False)
    actual = outputs_and_grads("triton", s, v, state, final=False, chunk_size=16)
    for a, e, name in zip(actual, expected, ["o", "ds", "dv", "dm0", "du0", "dw0"], strict=True):
        assert_rel_close(a, e, RATIO, name)


def test_softmax_scan_triton_empty_state_and_large_scores(assert_rel_close):
    """The empty prefix (m = -inf) as an explicit state, and scores of magnitude ~300: finite, exact."""
    require_interpreter()
    s, v, _ = make_inputs(1, 40, 1, 16, with_state=False, score_scale=100.0)
    state = tuple(x.requires_grad_() for x in empty_state(1, 1, 16))
    expected = outputs_and_grads("naive", s, v, state, final=True)
    actual = outputs_and_grads("triton", s, v, state, final=True)
    for a, e, name in zip(actual[:6], expected[:6], ["o", "m_T", "u_T", "w_T", "ds", "dv"], strict=True):
        assert_rel_close(a, e, RATIO, name)
    for a, name in zip(actual[6:], ["dm0", "du0", "dw0"], strict=True):  # nothing flows into an empty prefix
        assert torch.isfinite(a).all() and a.abs().max() == 0, name


def test_softmax_scan_triton_rejects_bad_chunk_size():
    s, v, _ = make_inputs(1, 8, 1, 16, with_state=False)
    with pytest.raises(ValueError, match=r"chunk_size=48 \(allowed: 16, 32, 64, 128\)"):
        softmax_scan_triton(s, v, chunk_size=48)
