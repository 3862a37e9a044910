"""The fused head-wise LSTM / GRU / sLSTM Triton kernels under Triton's interpreter against
``naive.py``: outputs, final states and every gradient (gates_x, R, bias_n, initial state),
NaN-poisoned outputs."""

import os

os.environ["TRITON_INTERPRET"] = "1"  # before anything imports triton
os.environ["SEQMIX_TRITON_POISON"] = "1"  # kernel outputs start as NaN

import pytest
import torch

from seqmix.kernels.rnn import N_GATES, N_STATES, gru_headwise, lstm_headwise, slstm_headwise, zero_state
from seqmix.kernels.rnn.triton import lstm_triton
from tests.kernels.triton_checks import RATIO, require_interpreter

OPS = {"lstm": lstm_headwise, "gru": gru_headwise, "slstm": slstm_headwise}


def make_inputs(cell, b, t, h, k, *, state, seed=0):
    gen = torch.Generator().manual_seed(seed)
    gates_x = torch.randn(b, t, h, N_GATES[cell], k, generator=gen).requires_grad_()
    R = (torch.randn(h, k, N_GATES[cell], k, generator=gen) / k ** 0.5).requires_grad_()
    extra = [torch.randn(h, k, generator=gen).requires_grad_()] if cell == "gru" else []  # bias_n
    initial = None
    if state == "random":
        initial = [torch.randn(b, h, k, generator=gen) for _ in range(N_STATES[cell])]
        if cell == "slstm":
            initial[2] = torch.rand(b, h, k, generator=gen) + 0.5  # the normaliser n stays positive
        initial = tuple(s.requires_grad_() for s in initial)
    elif state == "zero":  # the explicit "nothing seen yet" state (m = -inf for the sLSTM)
        initial = tuple(s.requires_grad_() for s in zero_state(cell, b, h, k))
    return [gates_x, R, *extra], initial


def outputs_and_grads(cell, impl, args, initial):
    y, final = OPS[cell](*args, initial_state=initial, output_final_state=True, impl=impl)
    gen = torch.Generator().manual_seed(1)
    loss = (y * torch.randn(y.shape, generator=gen)).sum()
    finite_final = [s for s in final if torch.isfinite(s).all()]  # m = -inf never enters a loss
    for s in finite_final:
        loss = loss + (s * torch.randn(s.shape, generator=gen)).sum()
    inputs = [*args, *(initial or ())]
    return [y.detach(), *(s.detach() for s in finite_final), *torch.autograd.grad(loss, inputs)]


def compare(cell, args, initial, assert_rel_close):
    expected = outputs_and_grads(cell, "naive", args, initial)
    actual = outputs_and_grads(cell, "triton", args, initial)
    assert len(actual) == len(expected)
    for i, (a, e) in enumerate(zip(actual, expected)):
        if e.abs().max() == 0:  # e.g. c0 after m0 = -inf: nothing flows back, exactly
            assert torch.isfinite(a).all() and a.abs().max() == 0, f"{cell} result {i}: expected 0"
        else:
            assert_rel_close(a, e, RATIO, f"{cell} result {i}")


@pytest.mark.parametrize("cell", ["lstm", "gru", "slstm"])
@pytest.mark.parametrize("t", [1, 63, 130])
@pytest.mark.parametrize("k,state", [(16, None), (32, "random")])
def test_rnn_triton_matches_naive(cell, t, k, state, assert_rel_close):
    require_interpreter()
    args, initial = make_inputs(cell, 2, t, 1, k, state=state)
    compare(cell, args, initial, assert_rel_close)


@pytest.mark.parametrize("cell", ["lstm", "gru", "slstm"])
def test_rnn_triton_two_batch_blocks_and_zero_state(cell, assert_rel_close):
    """17 sequences need two blocks of 16 batch rows; the explicit zero state (m = -inf)."""
    require_interpreter()
    args, initial = make_inputs(cell, 17, 20, 1, 16, state="zero")
    compare(cell, args, initial, assert_rel_close)


def test_rnn_triton_rejects_fp64():
    args, _ = make_inputs("lstm", 1, 3, 1, 16, state=None)
    with pytest.raises(ValueError, match="fp64"):
        lstm_triton(args[0].double(), args[1].double())
