"""The CPU-checkable parts of ``python -m benchmarks.kernels_gpu``: arguments, FLOP formulas, no-GPU exit."""

import pytest
import torch


@pytest.fixture(scope="module")
def bench():
    import benchmarks.kernels_gpu as module

    return module


def test_flop_formulas(bench):
    # causal SDPA: 2 B H T^2 d forward, x3.5 with the backward
    assert bench.flops("sdpa", 2, 8, 3, 4, backward=False) == 2 * 2 * 3 * 8 * 8 * 4
    assert bench.flops("sdpa", 2, 8, 3, 4, backward=True) == 3.5 * 2 * 2 * 3 * 8 * 8 * 4
    # chunked linear attention / GLA, chunk 64, d = 4: per token 2*64*(4+4) + 4*4*4 = 1088
    assert bench.flops("gla", 1, 10, 2, 4, backward=False) == 1 * 10 * 2 * 1088
    assert bench.flops("linear_attn", 1, 10, 2, 4, backward=True) == 3 * 1 * 10 * 2 * 1088
    # delta rule, d = 4: per token 6*64*4 + 4*64*4 + 6*16 = 2656
    assert bench.flops("delta_rule", 1, 10, 2, 4, backward=False) == 10 * 2 * 2656
    # the softmax scan, d = 4: per token 2*64*4 = 512
    assert bench.flops("scan", 1, 10, 2, 4, backward=True) == 3 * 10 * 2 * 512
    with pytest.raises(ValueError, match="unknown op"):
        bench.flops("mamba", 1, 1, 1, 1, backward=False)


def test_arguments(bench):
    args = bench.parse_args([])
    assert args.seq_lens == [1024, 2048, 4096, 8192, 16384, 32768] and args.head_dims == [128, 64]
    assert all(args.tokens // t * t == args.tokens for t in args.seq_lens)
    with pytest.raises(SystemExit):
        bench.parse_args(["--seq-lens", "1000"])  # does not divide 32k tokens
    with pytest.raises(SystemExit):
        bench.parse_args(["--head-dims", "512"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given when no GPU is present")
def test_exits_clearly_without_a_gpu(bench, capsys):
    assert bench.main([]) == 2
    assert "no CUDA device" in capsys.readouterr().err
