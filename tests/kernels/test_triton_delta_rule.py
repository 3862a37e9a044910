"""The delta-rule Triton kernel under Triton's interpreter against ``naive.py``: outputs,
final state and every gradient (q, k, v, beta, initial state), NaN-poisoned outputs,
packed batches."""

import os
from functools import partial

os.environ["TRITON_INTERPRET"] = "1"  # before anything imports triton
os.environ["SEQMIX_TRITON_POISON"] = "1"  # kernel outputs start as NaN

import pytest
import torch
import torch.nn.functional as F

from seqmix.kernels.delta_rule import chunk_delta_rule
from tests.kernels.triton_checks import compare, outputs_and_grads, require_interpreter

delta_rule_triton = partial(chunk_delta_rule, impl="triton")


def make_inputs(b, t, h, dk, dv, *, with_state, n_seq=None, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(b, t, h, dk, generator=gen).requires_grad_()
    k = F.normalize(torch.randn(b, t, h, dk, generator=gen), dim=-1).requires_grad_()  # the caller normalises k
    v = torch.randn(b, t, h, dv, generator=gen).requires_grad_()
    beta = torch.rand(b, t, h, generator=gen).requires_grad_()
    s0 = torch.randn(n_seq or b, h, dk, dv, generator=gen).requires_grad_() if with_state else None
    return q, k, v, beta, s0


def run_both(q, k, v, beta, s0, **options):
    inputs = [x for x in (q, k, v, beta, s0) if x is not None]
    return {impl: outputs_and_grads(
        lambda: chunk_delta_rule(q, k, v, beta, initial_state=s0, impl=impl, **options), inputs)
        for impl in ("naive", "triton")}


@pytest.mark.parametrize("t", [1, 63, 130])
@pytest.mark.parametrize("dk,dv", [(16, 32), (32, 16)])
@pytest.mark.parametrize("with_state", [False, True])
def test_delta_rule_triton_matches_naive(t, dk, dv, with_state, assert_rel_close):
    require_interpreter()
    q, k, v, beta, s0 = make_inputs(2, t, 1, dk, dv, with_state=with_state)
    results = run_both(q, k, v, beta, s0, output_final_state=True)
    names = ["o", "final_state", "dq", "dk", "dv", "dbeta"] + (["d_state"] if with_state else [])
    compare(results["triton"], results["naive"], names, assert_rel_close)


def test_delta_rule_triton_packed_sequences(assert_rel_close):
    require_interpreter()
    cu_seqlens = torch.tensor([0, 5, 5, 50, 90])  # includes an empty sequence
    q, k, v, beta, s0 = make_inputs(1, 90, 1, 16, 16, with_state=True, n_seq=4)
    results = run_both(q, k, v, beta, s0, output_final_state=True, cu_seqlens=cu_seqlens, chunk_size=32)
    compare(results["triton"], results["naive"], ["o", "final_state", "dq", "dk", "dv", "dbeta", "d_state"],
            assert_rel_close)


def test_delta_rule_triton_rejects_bad_chunk_size():
    q = torch.randn(1, 8, 1, 16)
    with pytest.raises(ValueError, match=r"chunk_size=128 \(allowed: 16, 32, 64\)"):
        delta_rule_triton(q, q, q, torch.rand(1, 8, 1), chunk_size=128)
