"""The linear-attention Triton kernel under Triton's interpreter against ``naive.py``:
outputs, final state and every gradient, NaN-poisoned outputs, odd lengths, packed batches."""

import os

os.environ["TRITON_INTERPRET"] = "1"  # before anything imports triton
os.environ["SEQMIX_TRITON_POISON"] = "1"  # kernel outputs start as NaN

import subprocess
import sys
from functools import partial

import pytest
import torch

import seqmix.kernels.triton_utils as triton_utils
from seqmix.kernels.linear_attn import linear_attn
from tests.kernels.triton_checks import compare, outputs_and_grads, require_interpreter

linear_attn_triton = partial(linear_attn, impl="triton")


def make_inputs(b, t, h, dk, dv, *, decay, with_state, n_seq=None, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(b, t, h, dk, generator=gen).requires_grad_() for _ in range(2))
    v = torch.randn(b, t, h, dv, generator=gen).requires_grad_()
    log_decay = (-torch.rand(h, generator=gen) * 0.5).requires_grad_() if decay else None
    s0 = torch.randn(n_seq or b, h, dk, dv, generator=gen).requires_grad_() if with_state else None
    return q, k, v, log_decay, s0


@pytest.mark.parametrize("t", [1, 63, 130])
@pytest.mark.parametrize("dk,dv", [(16, 32), (32, 16)])
@pytest.mark.parametrize("decay,with_state", [(False, False), (True, True), (True, False)])
def test_linear_attn_triton_matches_naive(t, dk, dv, decay, with_state, assert_rel_close):
    require_interpreter()
    q, k, v, log_decay, s0 = make_inputs(2, t, 2, dk, dv, decay=decay, with_state=with_state)
    inputs = [x for x in (q, k, v, log_decay, s0) if x is not None]
    names = ["o", "final_state"] + [n for n, x in zip(("dq", "dk", "dv", "d_decay", "d_state"),
                                                       (q, k, v, log_decay, s0)) if x is not None]
    results = {}
    for impl in ("naive", "triton"):
        results[impl] = outputs_and_grads(
            lambda: linear_attn(q, k, v, decay=log_decay, initial_state=s0, output_final_state=True, impl=impl),
            inputs)
    compare(results["triton"], results["naive"], names, assert_rel_close)


@pytest.mark.parametrize("chunk_size", [16, 64])
def test_linear_attn_triton_packed_sequences(chunk_size, assert_rel_close):
    require_interpreter()
    cu_seqlens = torch.tensor([0, 5, 5, 70, 130])  # includes an empty sequence
    q, k, v, log_decay, s0 = make_inputs(1, 130, 2, 16, 32, decay=True, with_state=True, n_seq=4)
    inputs = [q, k, v, log_decay, s0]
    results = {}
    for impl in ("naive", "triton"):
        results[impl] = outputs_and_grads(
            lambda: linear_attn(q, k, v, decay=log_decay, initial_state=s0, output_final_state=True,
                                cu_seqlens=cu_seqlens, chunk_size=chunk_size, impl=impl), inputs)
    compare(results["triton"], results["naive"], ["o", "final_state", "dq", "dk", "dv", "d_decay", "d_state"],
            assert_rel_close)


def test_linear_attn_triton_without_final_state(assert_rel_close):
    require_interpreter()
    q, k, v, log_decay, s0 = make_inputs(1, 70, 1, 16, 16, decay=True, with_state=True)
    inputs = [q, k, v, log_decay, s0]
    results = {impl: outputs_and_grads(lambda: linear_attn(q, k, v, decay=log_decay, initial_state=s0,
                                                           impl=impl), inputs)
               for impl in ("naive", "triton")}
    compare(results["triton"], results["naive"], ["o", "dq", "dk", "dv", "d_decay", "d_state"], assert_rel_close)


def test_linear_attn_triton_rejects_bad_chunk_and_fp64():
    q = torch.randn(1, 8, 1, 16)
    with pytest.raises(ValueError, match=r"chunk_size=24 \(allowed: 16, 32, 64, 128\)"):
        linear_attn_triton(q, q, q, chunk_size=24)
    with pytest.raises(ValueError, match="fp64"):
        linear_attn_triton(q.double(), q.double(), q.double())


def test_cpu_tensors_without_interpreter_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(triton_utils, "INTERPRET", False)
    q = torch.randn(1, 8, 1, 16)
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        linear_attn_triton(q, q, q)


def test_public_ops_refuse_triton_on_cpu_without_interpreter():
    """In a fresh interpreter without TRITON_INTERPRET: every public op names the fix."""
    code = (
        "import torch\n"
        "from seqmix.kernels.linear_attn import linear_attn\n"
        "from seqmix.kernels.gla import chunk_gla\n"
        "from seqmix.kernels.delta_rule import chunk_delta_rule\n"
        "q = torch.randn(1, 8, 1, 16)\n"
        "calls = [lambda: linear_attn(q, q, q, impl='triton'),\n"
        "         lambda: chunk_gla(q, q, q, -torch.rand(1, 8, 1, 16), impl='triton'),\n"
        "         lambda: chunk_delta_rule(q, q, q, torch.rand(1, 8, 1), impl='triton')]\n"
        "for call in calls:\n"
        "    try:\n"
        "        call()\n"
        "    except ValueError as error:\n"
        "        assert 'TRITON_INTERPRET=1' in str(error), error\n"
        "    else:\n"
        "        raise SystemExit('no error')\n"
        "print('ok')\n"
    )
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stdout + done.stderr
