"""The GLA Triton kernel under Triton's interpreter against ``naive.py``: outputs, final
state and every gradient (q, k, v, g, initial state), NaN-poisoned outputs, packed batches."""

import os
from functools import partial

os.environ["TRITON_INTERPRET"] = "1"  # before anything imports triton
os.environ["SEQMIX_TRITON_POISON"] = "1"  # kernel outputs start as NaN

import pytest
import torch
import torch.nn.functional as F

from seqmix.kernels.gla import chunk_gla
from tests.kernels.triton_checks import compare, outputs_and_grads, require_interpreter

gla_triton = partial(chunk_gla, impl="triton")


def make_inputs(b, t, h, dk, dv, *, with_state, n_seq=None, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(b, t, h, dk, generator=gen).requires_grad_() for _ in range(2))
    v = torch.randn(b, t, h, dv, generator=gen).requires_grad_()
    g = F.logsigmoid(torch.randn(b, t, h, dk, generator=gen)).requires_grad_()  # log gates, mean ~ -0.8
    s0 = torch.randn(n_seq or b, h, dk, dv, generator=gen).requires_grad_() if with_state else None
    return q, k, v, g, s0


def run_both(q, k, v, g, s0, **options):
    inputs = [x for x in (q, k, v, g, s0) if x is not None]
    return {impl: outputs_and_grads(lambda: chunk_gla(q, k, v, g, initial_state=s0, impl=impl, **options), inputs)
            for impl in ("naive", "triton")}


@pytest.mark.parametrize("t", [1, 63, 130])
@pytest.mark.parametrize("dk,dv", [(16, 32), (32, 16)])
@pytest.mark.parametrize("with_state", [False, True])
def test_gla_triton_matches_naive(t, dk, dv, with_state, assert_rel_close):
    require_interpreter()
    q, k, v, g, s0 = make_inputs(2, t, 2, dk, dv, with_state=with_state)
    results = run_both(q, k, v, g, s0, output_final_state=True)
    names = ["o", "final_state", "dq", "dk", "dv", "dg"] + (["d_state"] if with_state else [])
    compare(results["triton"], results["naive"], names, assert_rel_close)


@pytest.mark.parametrize("chunk_size", [16, 32])
def test_gla_triton_packed_sequences(chunk_size, assert_rel_close):
    require_interpreter()
    cu_seqlens = torch.tensor([0, 5, 5, 70, 100])  # includes an empty sequence
    q, k, v, g, s0 = make_inputs(1, 100, 1, 16, 16, with_state=True, n_seq=4)
    results = run_both(q, k, v, g, s0, output_final_state=True, cu_seqlens=cu_seqlens, chunk_size=chunk_size)
    compare(results["triton"], results["naive"], ["o", "final_state", "dq", "dk", "dv", "dg", "d_state"],
            assert_rel_close)


def test_gla_triton_strong_gates_stay_finite(assert_rel_close):
    """Gates near log(1e-6) per step: every exponent in the kernel is <= 0, so nothing overflows."""
    require_interpreter()
    q, k, v, _, s0 = make_inputs(1, 40, 1, 16, 16, with_state=True)
    g = torch.full((1, 40, 1, 16), -14.0).requires_grad_()
    results = run_both(q, k, v, g, s0)
    compare(results["triton"], results["naive"], ["o", "dq", "dk", "dv", "dg", "d_state"], assert_rel_close)


def test_gla_triton_rejects_bad_chunk_size():
    q = torch.randn(1, 8, 1, 16)
    with pytest.raises(ValueError, match=r"chunk_size=48 \(allowed: 16, 32, 64, 128\)"):
        gla_triton(q, q, q, -torch.ones_like(q), chunk_size=48)
