"""GPU benchmark of seqmix's Triton kernels against PyTorch SDPA (flash) and, where installed,
flash-linear-attention's chunk kernels. Writes ``benchmarks/results/kernels_gpu.md``.

    python -m benchmarks.kernels_gpu              # on a CUDA machine, about 5-8 minutes
    python -m benchmarks.kernels_gpu --dry-run    # anywhere: the correctness check under Triton's
                                                  # CPU interpreter at a tiny size, and the plan

Needs torch and triton, and the repository checkout: run from its root, ``python -m`` puts the
root on ``sys.path``, so ``pip install -e .`` is not required. flash-linear-attention (``fla``) is optional:
its kernels are timed when ``import fla`` works.

What it does, in this order:

1. correctness: every kernel in bf16 against the chunked PyTorch form (``impl="chunk"``) in
   fp32 on the same device, outputs and all input gradients, relative RMS <= 2e-2 (bf16);
   a kernel that fails is reported and not timed;
2. timing (``triton.testing.do_bench``, median): forward, and forward+backward, in bf16,
   for T in 1k..32k at a constant 32k tokens per batch (B = 32k / T), 16 heads of dim 128,
   then dim 64; the run stops starting new measurements after ``--budget-s`` seconds and
   marks the rest as skipped, so it finishes in about 8 minutes;
3. achieved TFLOP/s from the formulas in ``flops()`` (the matmul work of each algorithm,
   the same formula for seqmix's and fla's kernels of one op, so their ratio is the time ratio).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

REPO_ROOT = Path(__file__).resolve().parent.parent

TOKENS = 32 * 1024
SEQ_LENS = (1024, 2048, 4096, 8192, 16384, 32768)
CHUNK = 64  # the chunk the FLOP formulas assume (seqmix's and fla's default tile)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true",
                        help="no GPU needed: correctness under TRITON_INTERPRET=1 at a tiny size, print the plan")
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--head-dims", type=int, nargs="+", default=[128, 64])
    parser.add_argument("--seq-lens", type=int, nargs="+", default=list(SEQ_LENS))
    parser.add_argument("--tokens", type=int, default=TOKENS, help="tokens per batch, B = tokens / T")
    parser.add_argument("--budget-s", type=float, default=400.0,
                        help="stop starting new timings after this many seconds (the rest is marked skipped)")
    parser.add_argument("--rnn-batch", type=int, default=16)
    parser.add_argument("--rnn-len", type=int, default=1024)
    parser.add_argument("--rnn-heads", type=int, default=4, help="head-wise LSTM heads (FlashRNN's 4 heads of 256)")
    parser.add_argument("--rnn-dim", type=int, default=256)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results" / "kernels_gpu.md")
    args = parser.parse_args(argv)
    for t in args.seq_lens:
        if t <= 0 or args.tokens % t:
            parser.error(f"--seq-lens: every T must divide --tokens={args.tokens}, got {t}")
    if args.heads <= 0 or any(d <= 0 or d > 256 for d in args.head_dims):
        parser.error("--heads must be positive and --head-dims in 1..256")
    return args


def flops(op: str, b: int, t: int, h: int, d: int, *, backward: bool) -> float:
    """Matmul FLOPs of one call (forward, or forward + backward), head dims K = V = d.

    - ``sdpa`` (causal): QK^T and PV over the causal half, 2 * B H T^2 d; the backward is
      2.5x the forward (the FlashAttention-2 convention).
    - ``linear_attn`` / ``gla`` (chunks of C): per token 2 C (K + V) for the intra-chunk
      QK^T and AV, 4 K V for the state read and update; the backward is 2x the forward.
    - ``delta_rule`` (chunks of C, WY form): per token 6 C K (KK^T, W = M beta K, QK^T)
      + 4 C V (U' = M beta V, PU) + 6 K V (WS, QS, K^T U); the backward is 2x the forward.
    - ``scan`` (Aaren's softmax scan, chunks of C): per token 2 C V (PV); the backward is 2x.
    """
    c = CHUNK
    if op == "sdpa":
        forward = 2.0 * b * h * t * t * d
        return forward * (3.5 if backward else 1.0)
    if op in ("linear_attn", "gla"):
        per_token = 2 * c * (d + d) + 4 * d * d
    elif op == "delta_rule":
        per_token = 6 * c * d + 4 * c * d + 6 * d * d
    elif op == "scan":
        per_token = 2 * c * d
    else:
        raise ValueError(f"flops: unknown op {op!r}; choose sdpa, linear_attn, gla, delta_rule or scan")
    forward = float(b * h * t * per_token)
    return forward * (3.0 if backward else 1.0)


@dataclass
class Kernel:
    """One timed implementation: ``run(inputs) -> output tensor`` of op ``op``."""

    name: str
    op: str
    make_inputs: Callable  # (b, t, h, d, dtype, device, requires_grad) -> tuple of tensors
    run: Callable


def kernels(torch) -> tuple[list[Kernel], list[str]]:
    """seqmix's Triton kernels, SDPA, and fla's chunk kernels when importable; plus notes."""
    import torch.nn.functional as F

    from seqmix.kernels.delta_rule import chunk_delta_rule
    from seqmix.kernels.gla import chunk_gla
    from seqmix.kernels.linear_attn import linear_attn
    from seqmix.kernels.scan import softmax_scan

    def qkv(b, t, h, d, device):
        gen = torch.Generator(device=device).manual_seed(0)
        q, k, v = (torch.randn(b, t, h, d, generator=gen, device=device) for _ in range(3))
        return q, k, v, gen

    def inputs_linear(b, t, h, d, dtype, device, grad):
        q, k, v, _ = qkv(b, t, h, d, device)
        decay = torch.log(1 - 2.0 ** (-5.0 - torch.arange(h, device=device)))  # RetNet's decays, [H]
        return tuple(x.to(dtype).requires_grad_(grad) for x in (q * d ** -0.5, k * d ** -0.5, v)) + (decay,)

    def inputs_gla(b, t, h, d, dtype, device, grad):
        q, k, v, gen = qkv(b, t, h, d, device)
        g = F.logsigmoid(torch.randn(b, t, h, d, generator=gen, device=device)) / 16  # GLA's normaliser
        return tuple(x.to(dtype).requires_grad_(grad) for x in (q, k, v, g))

    def inputs_delta(b, t, h, d, dtype, device, grad):
        q, k, v, gen = qkv(b, t, h, d, device)
        beta = torch.rand(b, t, h, generator=gen, device=device)
        return tuple(x.to(dtype).requires_grad_(grad) for x in (q, F.normalize(k, dim=-1), v, beta))

    def inputs_scan(b, t, h, d, dtype, device, grad):
        q, k, v, _ = qkv(b, t, h, d, device)
        s = (q * k).sum(-1) * d ** -0.5  # one query's scores per head, [B, T, H]
        return tuple(x.to(dtype).requires_grad_(grad) for x in (s, v))

    def inputs_sdpa(b, t, h, d, dtype, device, grad):
        q, k, v, _ = qkv(b, t, h, d, device)
        return tuple(x.transpose(1, 2).contiguous().to(dtype).requires_grad_(grad) for x in (q, k, v))  # [B,H,T,d]

    def sdpa(q, k, v):
        from torch.nn.attention import SDPBackend, sdpa_kernel

        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)

    found = [
        Kernel("seqmix linear_attn (triton)", "linear_attn", inputs_linear,
               lambda q, k, v, decay, impl="triton": linear_attn(q, k, v, decay=decay, impl=impl)[0]),
        Kernel("seqmix chunk_gla (triton)", "gla", inputs_gla,
               lambda q, k, v, g, impl="triton": chunk_gla(q, k, v, g, impl=impl)[0]),
        Kernel("seqmix chunk_delta_rule (triton)", "delta_rule", inputs_delta,
               lambda q, k, v, beta, impl="triton": chunk_delta_rule(q, k, v, beta, impl=impl)[0]),
        Kernel("seqmix softmax_scan (triton)", "scan", inputs_scan,
               lambda s, v, impl="triton": softmax_scan(s, v, impl=impl)[0]),
        Kernel("torch SDPA (flash, causal)", "sdpa", inputs_sdpa, sdpa),
    ]
    notes = []
    try:
        import fla  # noqa: F401
        from fla.ops.delta_rule import chunk_delta_rule as fla_delta
        from fla.ops.gla import chunk_gla as fla_gla
        from fla.ops.simple_gla import chunk_simple_gla as fla_simple_gla

        found += [
            Kernel("fla chunk_simple_gla", "linear_attn", inputs_linear,
                   lambda q, k, v, decay: fla_simple_gla(q, k, v, g=decay.expand(*q.shape[:3]).contiguous())[0]),
            Kernel("fla chunk_gla", "gla", inputs_gla, lambda q, k, v, g: fla_gla(q, k, v, g)[0]),
            Kernel("fla chunk_delta_rule", "delta_rule", inputs_delta,
                   lambda q, k, v, beta: fla_delta(q, k, v, beta)[0]),
        ]
        notes.append(f"flash-linear-attention {getattr(fla, '__version__', '?')} found: its chunk kernels are timed")
    except ImportError as error:
        notes.append(f"flash-linear-attention not installed ({error}): only seqmix and SDPA are timed")
    return found, notes


def rel_rms(actual, expected) -> float:
    actual, expected = actual.detach().double(), expected.detach().double()
    return float((actual - expected).pow(2).mean().sqrt() / expected.pow(2).mean().sqrt().clamp_min(1e-12))


def check(torch, kernel: Kernel, device, dtype, *, b: int, t: int, h: int, d: int, tol: float) -> tuple[bool, str]:
    """``kernel`` in ``dtype`` against the op's chunked PyTorch form in fp32: output and gradients."""
    if kernel.op == "sdpa":
        return True, "reference kernel"
    chunk_form = chunk_forms()[kernel.op]
    gen = torch.Generator(device=device).manual_seed(1)
    results = []
    for run, run_dtype in ((kernel.run, dtype), (chunk_form, torch.float32)):
        inputs = kernel.make_inputs(b, t, h, d, run_dtype, device, True)
        o = run(*inputs)
        weight = torch.randn(o.shape, generator=gen.manual_seed(2), device=device)
        grads = torch.autograd.grad((o.float() * weight).sum(), [x for x in inputs if x.requires_grad])
        results.append([o, *grads])
    errors = [rel_rms(a, e) for a, e in zip(*results)]
    ok = all(err <= tol for err in errors) and all(torch.isfinite(a).all() for a in results[0])
    return ok, "rel. RMS (o, grads): " + ", ".join(f"{err:.1e}" for err in errors)


def chunk_forms() -> dict[str, Callable]:
    """The chunked PyTorch forms, the correctness reference."""
    from seqmix.kernels.delta_rule import chunk_delta_rule
    from seqmix.kernels.gla import chunk_gla
    from seqmix.kernels.linear_attn import linear_attn
    from seqmix.kernels.scan import softmax_scan

    return {
        "linear_attn": lambda q, k, v, decay: linear_attn(q, k, v, decay=decay, impl="chunk")[0],
        "gla": lambda q, k, v, g: chunk_gla(q, k, v, g, impl="chunk")[0],
        "delta_rule": lambda q, k, v, beta: chunk_delta_rule(q, k, v, beta, impl="chunk")[0],
        "scan": lambda s, v: softmax_scan(s, v, impl="chunk")[0],
    }


def time_kernel(torch, kernel: Kernel, *, b: int, t: int, h: int, d: int, backward: bool) -> float:
    """Median milliseconds of one forward (or forward + backward) call in bf16."""
    from triton.testing import do_bench

    inputs = kernel.make_inputs(b, t, h, d, torch.bfloat16, "cuda", backward)
    if not backward:
        with torch.no_grad():
            return do_bench(lambda: kernel.run(*inputs), warmup=25, rep=100, return_mode="median")
    grad_inputs = [x for x in inputs if x.requires_grad]
    o = kernel.run(*inputs)
    do = torch.randn_like(o)
    del o

    def step():
        kernel.run(*inputs).backward(do)

    return do_bench(step, warmup=25, rep=100, grad_to_none=grad_inputs, return_mode="median")


def rnn_inputs(torch, cell: str, b: int, t: int, h: int, k: int, dtype, device, grad: bool):
    """``gates_x [B, T, H, 4, K]`` and ``R [H, K, 4, K]`` for a head-wise LSTM / sLSTM."""
    gen = torch.Generator(device=device).manual_seed(0)
    gates_x = torch.randn(b, t, h, 4, k, generator=gen, device=device)
    R = torch.randn(h, k, 4, k, generator=gen, device=device) / k ** 0.5
    return gates_x.to(dtype).requires_grad_(grad), R.to(dtype).requires_grad_(grad)


def rnn_section(torch, args: argparse.Namespace, device, started: float) -> tuple[list[str], str]:
    """The fused head-wise LSTM / sLSTM against the same recurrence as a PyTorch loop over time
    steps (``impl="naive"``) and the hand-written fused PyTorch loop (``impl="chunk"``)."""
    from seqmix.kernels.rnn import lstm_headwise, slstm_headwise

    b, t, h, k = args.rnn_batch, args.rnn_len, args.rnn_heads, args.rnn_dim
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    lines, rows = [], []
    for cell, op in (("lstm", lstm_headwise), ("slstm", slstm_headwise)):
        # correctness first, short sequence: the kernel in bf16 (fp32 on the CPU) against the fused loop in fp32
        results = []
        for impl, run_dtype in (("triton", dtype), ("chunk", torch.float32)):
            gates_x, R = rnn_inputs(torch, cell, 4, 64, h if device == "cuda" else 1, k if device == "cuda" else 16,
                                    run_dtype, device, True)
            y = op(gates_x, R, impl=impl)[0]
            weight = torch.randn(y.shape, generator=torch.Generator(device=device).manual_seed(2), device=device)
            results.append([y, *torch.autograd.grad((y.float() * weight).sum(), [gates_x, R])])
        errors = [rel_rms(a, e) for a, e in zip(*results)]
        tol = 2e-2 if device == "cuda" else 1e-4
        ok = all(err <= tol for err in errors)
        lines.append(f"- correctness, seqmix {cell}_headwise (triton): {'ok' if ok else 'FAILED (not timed)'}; "
                     "rel. RMS (h, d gates_x, dR): " + ", ".join(f"{err:.1e}" for err in errors))
        print(lines[-1], flush=True)
        if device != "cuda" or not ok:
            continue
        from triton.testing import do_bench

        times = {}
        for impl in ("naive", "chunk", "triton"):  # naive first: the others' speed-ups are against it
            cells = [cell, impl]
            for backward in (False, True):
                if time.time() - started > args.budget_s:
                    cells.append("skipped (time budget)")
                    continue
                gates_x, R = rnn_inputs(torch, cell, b, t, h, k, dtype, device, backward)
                if backward:
                    dy = torch.randn_like(op(gates_x, R, impl=impl)[0])
                    ms = do_bench(lambda: op(gates_x, R, impl=impl)[0].backward(dy), warmup=25, rep=100,
                                  grad_to_none=[gates_x, R], return_mode="median")
                else:
                    with torch.no_grad():
                        ms = do_bench(lambda: op(gates_x, R, impl=impl)[0], warmup=25, rep=100, return_mode="median")
                times[impl, backward] = ms
                cells.append(f"{ms:.2f}")
            for backward in (False, True):
                ratio = times.get(("naive", backward), float("nan")) / times.get((impl, backward), float("nan"))
                cells.append(f"{ratio:.1f}x")
            rows.append(cells)
            print(" | ".join(cells), flush=True)
    from benchmarks.common import markdown_table

    table = (f"## Head-wise RNNs: B={b}, T={t}, {h} heads of {k}, bf16 inputs\n\n"
             "`naive` is the recurrence as a PyTorch loop over time steps (fp32 math, autograd); `chunk` the fused "
             "PyTorch loop with a hand-written backward; `triton` one kernel launch for the whole sequence.\n\n"
             + markdown_table(["cell", "impl", "fwd ms", "fwd+bwd ms", "fwd speed-up vs naive",
                               "fwd+bwd speed-up vs naive"], rows))
    return lines, table


def dry_run(args: argparse.Namespace) -> int:
    import torch

    found, notes = kernels(torch)
    print("dry run: Triton interpreter on the CPU, fp32, tiny size; no timings")
    failed = 0
    for kernel in found:
        if kernel.op == "sdpa" or not kernel.name.startswith("seqmix"):
            continue
        ok, message = check(torch, kernel, "cpu", torch.float32, b=1, t=40, h=2, d=16, tol=1e-4)
        failed += not ok
        print(f"  {kernel.name:36s} {'ok' if ok else 'FAILED'}  {message}")
    print("plan (B = tokens / T), GFLOP per call, forward / forward+backward:")
    for d in args.head_dims:
        for t in args.seq_lens:
            b = args.tokens // t
            cells = [f"{op} {flops(op, b, t, args.heads, d, backward=False) / 1e9:.0f}/"
                     f"{flops(op, b, t, args.heads, d, backward=True) / 1e9:.0f}"
                     for op in ("sdpa", "linear_attn", "gla", "delta_rule", "scan")]
            print(f"  d={d} T={t} B={b}: " + ", ".join(cells))
    for note in notes:
        print("  note:", note)
    rnn_lines, _ = rnn_section(torch, args, "cpu", time.time())
    failed += sum("FAILED" in line for line in rnn_lines)
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.dry_run:
        os.environ["TRITON_INTERPRET"] = "1"  # before anything imports triton
        return dry_run(args)
    import torch

    if not torch.cuda.is_available():
        print("kernels_gpu.py: no CUDA device is visible (torch.cuda.is_available() is False); this benchmark "
              "needs an NVIDIA GPU. Run `python -m benchmarks.kernels_gpu --dry-run` to check the kernels on the "
              "CPU under Triton's interpreter.", file=sys.stderr)
        return 2
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("kernels_gpu.py: TRITON_INTERPRET=1 is set; unset it to time the compiled kernels", file=sys.stderr)
        return 2
    from benchmarks.common import atomic_write_text, header, markdown_table  # benchmarks/common.py

    started = time.time()
    found, notes = kernels(torch)
    h = args.heads
    lines = []
    correct = {}
    for kernel in found:
        try:
            ok, message = check(torch, kernel, "cuda", torch.bfloat16, b=2, t=300, h=4, d=64, tol=2e-2)
        except Exception as error:  # a kernel that cannot even run is reported, and the others still timed
            ok, message = False, f"{type(error).__name__}: {str(error).splitlines()[0][:200] if str(error) else ''}"
        correct[kernel.name] = ok
        lines.append(f"- correctness, {kernel.name}: {'ok' if ok else 'FAILED (not timed)'}; {message}")
        print(lines[-1], flush=True)
    rnn_lines, rnn_table = rnn_section(torch, args, "cuda", started)  # small: before the long sweep
    lines += rnn_lines

    tables = []
    for d in args.head_dims:
        rows = []
        for t in args.seq_lens:
            b = args.tokens // t
            for kernel in found:
                cells = [kernel.name, t, b]
                for backward in (False, True):
                    if not correct[kernel.name]:
                        cells += ["failed check", ""]
                        continue
                    if time.time() - started > args.budget_s:
                        cells += ["skipped (time budget)", ""]
                        continue
                    try:
                        ms = time_kernel(torch, kernel, b=b, t=t, h=h, d=d, backward=backward)
                        tflops = flops(kernel.op, b, t, h, d, backward=backward) / (ms * 1e-3) / 1e12
                        cells += [f"{ms:.2f}", f"{tflops:.1f}"]
                    except torch.OutOfMemoryError:
                        torch.cuda.empty_cache()
                        cells += ["out of memory", ""]
                    except Exception as error:  # e.g. no flash backend for this shape: say so in the table
                        first_line = str(error).splitlines()[0][:60] if str(error) else ""
                        cells += [f"error: {type(error).__name__}: {first_line}", ""]
                rows.append(cells)
                print(f"d={d} " + " | ".join(map(str, cells)), flush=True)
        tables.append(f"## {h} heads of dim {d}, {args.tokens} tokens per batch, bf16\n\n" + markdown_table(
            ["kernel", "T", "B", "fwd ms", "fwd TFLOP/s", "fwd+bwd ms", "fwd+bwd TFLOP/s"], rows))

    text = header(f"Triton kernels on the GPU ({torch.cuda.get_device_name(0)})", seeds=[0], notes=[
        f"triton {__import__('triton').__version__}, CUDA {torch.version.cuda}",
        "times: triton.testing.do_bench median (warmup 25 ms, rep 100 ms); TFLOP/s from `flops()` in the script "
        f"(matmul work of each algorithm, chunk {CHUNK}); SDPA counts the causal half",
        *notes, f"wall time {time.time() - started:.0f} s"])
    text += "\n".join(lines) + "\n\n" + "\n".join(tables) + "\n" + rnn_table
    print(f"wrote {atomic_write_text(args.out, text)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
