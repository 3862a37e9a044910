"""Forward+backward time of the CPU fast forms against their naive references: head-wise
LSTM / GRU / sLSTM (``chunk`` = fused loop with a hand-written BPTT vs ``naive`` = autograd
through a step loop), Aaren's softmax scan (``chunk`` vs the token loop) and ProbSparse
attention (``sparse`` vs the dense ``naive``).

    python -m benchmarks.rnn_cpu            # -> benchmarks/results/rnn_cpu.md

Each time is the best of ``--repeats`` runs, the two implementations interleaved, with
``--threads`` torch threads (1 by default: the machine is shared).
"""

from __future__ import annotations

import argparse
import os

import torch

from benchmarks.common import header, markdown_table, time_calls, write_result
from seqmix.core.mixers.probsparse import probsparse_attention
from seqmix.kernels.rnn import N_GATES, gru_headwise, lstm_headwise, slstm_headwise
from seqmix.kernels.scan import softmax_scan

RNN_OPS = {"lstm": lstm_headwise, "gru": gru_headwise, "slstm": slstm_headwise}


def compare(make_run, impls: tuple[str, str], repeats: int) -> tuple[float, float]:
    """Best fwd+bwd seconds of the two impls, interleaved so that machine load hits both alike (no warm-up)."""
    timings = time_calls({impl: make_run(impl) for impl in impls}, warmup=0, repeats=repeats)
    return timings[impls[0]].min_s, timings[impls[1]].min_s


def rnn_case(cell: str, b: int, t: int, h: int, k: int):
    gen = torch.Generator().manual_seed(0)
    g = N_GATES[cell]
    gates_x = torch.randn(b, t, h, g, k, generator=gen).requires_grad_()
    R = (torch.randn(h, k, g, k, generator=gen) / k ** 0.5).requires_grad_()
    extra = [torch.zeros(h, k, requires_grad=True)] if cell == "gru" else []

    def make_run(impl):
        def run():
            y, _ = RNN_OPS[cell](gates_x, R, *extra, impl=impl)
            y.sum().backward()
        return run
    return make_run


def scan_case(b: int, t: int, h: int, v_dim: int):
    gen = torch.Generator().manual_seed(0)
    s = torch.randn(b, t, h, generator=gen).requires_grad_()
    v = torch.randn(b, t, h, v_dim, generator=gen).requires_grad_()

    def make_run(impl):
        def run():
            o, _ = softmax_scan(s, v, impl=impl)
            o.sum().backward()
        return run
    return make_run


def probsparse_case(b: int, t: int, h: int, d: int, causal: bool):
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(b, h, t, d, generator=gen).requires_grad_() for _ in range(3))

    def make_run(impl):
        def run():
            o = probsparse_attention(q, k, v, factor=5, causal=causal, seed=0, impl=impl)
            o.sum().backward()
        return run
    return make_run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for cell in ("lstm", "gru", "slstm"):
        for b, t, h, k in ((4, 256, 4, 16), (8, 256, 8, 64)):
            naive, fast = compare(rnn_case(cell, b, t, h, k), ("naive", "chunk"), args.repeats)
            rows.append((f"{cell}_headwise", f"B={b} T={t} H={h} K={k}", "chunk", f"{naive * 1e3:.0f}",
                         f"{fast * 1e3:.0f}", f"{naive / fast:.2f}x"))
            print(rows[-1], flush=True)
    for b, t, h, v_dim in ((4, 1024, 4, 32), (1, 4096, 8, 64)):
        naive, fast = compare(scan_case(b, t, h, v_dim), ("naive", "chunk"), args.repeats)
        rows.append(("softmax_scan (Aaren)", f"B={b} T={t} H={h} V={v_dim}", "chunk", f"{naive * 1e3:.0f}",
                     f"{fast * 1e3:.0f}", f"{naive / fast:.2f}x"))
        print(rows[-1], flush=True)
    for causal in (False, True):
        b, t, h, d = 1, 2048, 8, 64
        naive, fast = compare(probsparse_case(b, t, h, d, causal), ("naive", "sparse"), args.repeats)
        rows.append((f"probsparse_attention causal={causal}", f"B={b} T={t} H={h} K={d} factor=5", "sparse",
                     f"{naive * 1e3:.0f}", f"{fast * 1e3:.0f}", f"{naive / fast:.2f}x"))
        print(rows[-1], flush=True)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    text = header("CPU fast forms vs naive references: RNNs, Aaren scan, ProbSparse (forward + backward)",
                  seeds=[0], notes=[f"best of {args.repeats} interleaved runs, fp32, {args.threads} torch thread(s)",
                                    f"load average at the end (1, 5, 15 min): {load} (the machine is shared)"])
    text += markdown_table(("op", "size", "fast impl", "naive ms", "fast ms", "speed-up"), rows)
    print(write_result("rnn_cpu", text))


if __name__ == "__main__":
    main()
