"""benchmarks/kernels_chunk_vs_naive.py: the op a mixer calls is recorded (function, arguments, which ones need a
gradient) and unwrapped afterwards; a worker point at a tiny size; the op-level verdicts of issue 30."""

import argparse
import importlib

import torch

from benchmarks import kernels_chunk_vs_naive as bench
from benchmarks.mixers import parse_spec


def test_the_recorded_call_is_the_mixers_op_with_copies_of_its_arguments_and_the_op_is_unwrapped():
    torch.manual_seed(0)
    mixer = parse_spec("mamba").build(16, 2, "chunk")
    module = importlib.import_module("seqmix.core.mixers.mamba")
    original = module.selective_scan
    x = torch.randn(1, 24, 16, requires_grad=True)  # [B, T, D]
    name, fn, args, kwargs = bench.record_op_call(mixer, "mamba", x)
    assert module.selective_scan is original and fn is original and name == "selective_scan"
    u, delta, A = args[:3]
    assert u.shape == (1, 24, 32) and A.shape == (32, 16) and kwargs["impl"] == "chunk"
    assert u.requires_grad and u.grad_fn is None  # a leaf copy: the mixer's graph is not kept
    assert A.requires_grad  # -exp(A_log): a parameter's function
    y, _ = fn(*args, **kwargs)
    assert y.shape == (1, 24, 32)


def test_jrt_rnn_records_the_function_of_each_impl():
    mixer = parse_spec("jrt_rnn").build(16, 2, "naive")
    assert bench.record_op_call(mixer, "jrt_rnn", torch.randn(1, 8, 16))[0] == "prefix_linear_attn_naive"
    mixer = parse_spec("jrt_rnn").build(16, 2, "chunk")
    assert bench.record_op_call(mixer, "jrt_rnn", torch.randn(1, 8, 16))[0] == "prefix_linear_attn_chunk"


def test_a_worker_point_times_the_op_and_the_mixer():
    args = argparse.Namespace(threads=1, d_model=16, heads=2, repeats=1, cap=30.0)
    point = bench.worker("lmu", 16, "chunk", args)
    assert point["op"] == "lmu_memory" and point["op_shapes"]["arg0"] == [1, 16, 2]
    assert point["op_s"]["median_s"] > 0 and point["mixer_s"]["median_s"] > 0 and len(point["op_s"]["times_s"]) == 1


def point(op_ms: float, mixer_ms: float) -> dict:
    timing = lambda ms: {"median_s": ms / 1e3, "times_s": [ms / 1e3], "warmup_s": ms / 1e3}  # noqa: E731
    return {"op": "f", "op_s": timing(op_ms), "mixer_s": timing(mixer_ms)}


def test_verdicts_need_both_targets_on_the_op():
    points = {("a", "naive", 4096): point(1000, 1200), ("a", "chunk", 4096): point(100, 300),
              ("a", "chunk", 8192): point(200, 600),  # 10x, growth 2.0: pass (mixer 4x does not count)
              ("b", "naive", 4096): point(1000, 1100), ("b", "chunk", 4096): point(250, 300),
              ("b", "chunk", 8192): point(700, 800),  # 4x and growth 2.8: both fail
              ("c", "naive", 4096): {"error": "killed by signal 9 (out of memory?)"},
              ("c", "chunk", 4096): point(100, 200), ("c", "chunk", 8192): point(200, 400)}
    rows = {row[0]: row for row in bench.target_rows(points, ["a", "b", "c"], 4096, 8192)}
    assert rows["a"][4:] == ["10.0x", "200", "2.00x", "PASS", "4.0x"]
    assert rows["b"][7] == "FAIL (speed-up < 5x, growth > 2.5x)"
    assert rows["c"][2] == "killed by signal 9 (out of memory?)" and rows["c"][7] == "NOT EVALUATED"
