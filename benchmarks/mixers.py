"""Forward+backward time and peak memory of every registered mixer on the CPU, against length.

Setting (issue 2): causal self pattern, B=1, D=512, 8 heads (for mixers that take
``n_heads``), fp32, ``impl="auto"`` (the chunked form on the CPU where a mixer has one;
SDPA for softmax), ``torch.set_num_threads(2)``, T in 512 ... 8192 and 16384.

Each (mixer, T) runs in a fresh Python process (``--worker``), so that one point's
allocations and caches do not leak into the next. In it: build the mixer, one warm-up
forward+backward, then ``--repeats`` timed ones (median reported). Memory is the peak
resident set size of that process (``getrusage(RUSAGE_SELF).ru_maxrss``) minus its
resident size just before the input tensor was made: the extra memory the forward +
backward needed, allocator caching included (torch's CPU allocations are invisible to
``tracemalloc``).

A mixer's larger lengths are skipped once a length's median exceeds ``--cap`` seconds, or
when the previous length's memory, grown as T^2, would exceed ``--mem-cap`` GB.

    python -m benchmarks.mixers                              # everything (run on a quiet machine)
    python -m benchmarks.mixers --mixers softmax gla --lengths 512 1024 --repeats 2

Writes ``benchmarks/results/mixers_cpu.md`` and ``mixers_cpu.png`` (log-log time against T),
with issue 2's targets at T=8192 evaluated: linear_attention, gla and deltanet at least
3x faster than softmax (SDPA, causal), and at most 2.5x slower from T=4096 to T=8192.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys

from benchmarks.common import REPO_ROOT, header, markdown_table, save_figure, time_call, write_result

LENGTHS = (512, 1024, 2048, 4096, 8192, 16384)
TARGET_MIXERS = ("linear_attention", "gla", "deltanet")
BASELINE = "softmax"
TARGET_T, PREV_T = 8192, 4096
MIN_SPEEDUP, MAX_GROWTH = 3.0, 2.5


def rss_bytes() -> int:
    """Current resident set size of this process."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def worker(name: str, seq_len: int, args: argparse.Namespace) -> dict[str, object]:
    """One (mixer, T) point, in this process; returns times (s) and the peak extra memory (bytes)."""
    import torch

    from seqmix.core import build_mixer, get_mixer_class, mixer_arguments

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cls = get_mixer_class(name)
    kwargs: dict[str, object] = {"causal": True}
    if "n_heads" in mixer_arguments(cls):
        kwargs["n_heads"] = args.heads
    mixer = build_mixer(name, args.d_model, **kwargs)
    impl = mixer.resolve_impl(torch.empty(0))
    base = rss_bytes()
    x = torch.randn(1, seq_len, args.d_model, requires_grad=True)  # [B, T, D]
    grad = torch.randn(1, seq_len, args.d_model)  # [B, T, D]

    def fwd_bwd() -> None:
        mixer(x).backward(grad)

    def clear_grads() -> None:
        x.grad = None
        mixer.zero_grad(set_to_none=True)

    # one warm-up call; the median of --repeats calls when the warm-up took at most --cap seconds
    warmup = time_call(fwd_bwd, warmup=0, repeats=1, before=clear_grads).min_s
    timing = time_call(fwd_bwd, warmup=0, repeats=args.repeats, before=clear_grads) if warmup <= args.cap else None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    return {"mixer": name, "T": seq_len, "impl": impl, "warmup_s": warmup,
            "times_s": timing.times_s if timing else [],
            "median_s": timing.median_s if timing else warmup, "peak_bytes": max(0, peak - base)}


def run_point(name: str, seq_len: int, args: argparse.Namespace) -> dict[str, object]:
    cmd = [sys.executable, "-m", "benchmarks.mixers", "--worker", name, str(seq_len), "--repeats", str(args.repeats),
           "--threads", str(args.threads), "--d-model", str(args.d_model), "--heads", str(args.heads),
           "--cap", str(args.cap)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, cwd=REPO_ROOT)
    except subprocess.TimeoutExpired:
        return {"mixer": name, "T": seq_len, "error": f"timeout (> {args.timeout} s)"}
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"mixer": name, "T": seq_len, "error": f"failed: {last}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def cell(point: dict[str, object] | None) -> str:
    if point is None:
        return "-"
    if "error" in point:
        return str(point["error"])
    return f"{point['median_s'] * 1e3:,.0f} ms / {point['peak_bytes'] / 2**20:,.0f} MB"


def targets(points: dict[tuple[str, int], dict]) -> list[list[str]]:
    """Issue 2's CPU targets as rows: target, mixer, numbers, PASS/FAIL (or why not evaluated)."""

    def seconds(name: str, t: int) -> float | None:
        p = points.get((name, t))
        return None if p is None or "error" in p else float(p["median_s"])

    rows = []
    base = seconds(BASELINE, TARGET_T)
    for name in TARGET_MIXERS:
        t8, t4 = seconds(name, TARGET_T), seconds(name, PREV_T)
        if t8 is None or base is None:
            rows.append([f">= {MIN_SPEEDUP:g}x faster than {BASELINE} at T={TARGET_T}", name,
                         f"not measured ({name} {cell(points.get((name, TARGET_T)))}, "
                         f"{BASELINE} {cell(points.get((BASELINE, TARGET_T)))})", "NOT EVALUATED"])
        else:
            speedup = base / t8
            rows.append([f">= {MIN_SPEEDUP:g}x faster than {BASELINE} at T={TARGET_T}", name,
                         f"{BASELINE} {base * 1e3:,.0f} ms / {name} {t8 * 1e3:,.0f} ms = {speedup:.2f}x",
                         "PASS" if speedup >= MIN_SPEEDUP else "FAIL"])
        if t8 is None or t4 is None:
            rows.append([f"time growth T={PREV_T}->{TARGET_T} <= {MAX_GROWTH:g}x", name, "not measured",
                         "NOT EVALUATED"])
        else:
            growth = t8 / t4
            rows.append([f"time growth T={PREV_T}->{TARGET_T} <= {MAX_GROWTH:g}x", name,
                         f"{t4 * 1e3:,.0f} ms -> {t8 * 1e3:,.0f} ms = {growth:.2f}x",
                         "PASS" if growth <= MAX_GROWTH else "FAIL"])
    return rows


def growth_rows(points: dict[tuple[str, int], dict], mixers: list[str], longest: int) -> list[list[str]]:
    """Every mixer's time growth from T=4096 to 8192 (what a declared complexity allows: linear <= 2.5x,
    T log T <= 2.7x, T^1.5 <= 3.2x) and, at the longest T, its time and memory against softmax (SDPA)."""

    def measured(name: str, t: int) -> dict | None:
        p = points.get((name, t))
        return None if p is None or "error" in p else p

    rows = []
    base = measured(BASELINE, longest)
    for name in mixers:
        t4, t8, tl = measured(name, PREV_T), measured(name, TARGET_T), measured(name, longest)
        growth = f"{t8['median_s'] / t4['median_s']:.2f}x" if t4 and t8 else "not measured"
        if tl and base:
            versus = (f"time {base['median_s'] / tl['median_s']:.2f}x, memory "
                      f"{base['peak_bytes'] / max(tl['peak_bytes'], 1):.2f}x")
        else:
            versus = f"not measured ({name} {cell(points.get((name, longest)))}, {BASELINE} {cell(base)})"
        rows.append([name, growth, versus])
    return rows


def plot(points: dict[tuple[str, int], dict], mixers: list[str]):
    from seqmix.apps.files import pyplot

    plt = pyplot()

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    colors, markers = [*plt.get_cmap("tab10").colors, *plt.get_cmap("Dark2").colors], "osD^v<>pPX*hH8d"
    for i, name in enumerate(mixers):
        pts = sorted((t, p["median_s"]) for (m, t), p in points.items() if m == name and "error" not in p)
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=markers[i % len(markers)],
                    color=colors[i % len(colors)], label=name, linewidth=1)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("sequence length T")
    ax.set_ylabel("forward + backward time (s), median")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    ax.set_title("CPU forward+backward, causal self, B=1, D=512, fp32", fontsize=9)
    return fig


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mixers", nargs="+", help="registered mixer names (default: all with causal_self)")
    parser.add_argument("--lengths", nargs="+", type=int, default=list(LENGTHS))
    parser.add_argument("--repeats", type=int, default=3, help="timed runs after one warm-up (median)")
    parser.add_argument("--cap", type=float, default=30.0,
                        help="seconds: a length whose fwd+bwd takes longer ends that mixer's sweep")
    parser.add_argument("--mem-cap", type=float, default=8.0,
                        help="GB: skip a length when the previous one's memory grown as T^2 would exceed this")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per (mixer, T) process")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--d-model", type=int, default=512)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--name", default="mixers_cpu", help="results file stem")
    parser.add_argument("--worker", nargs=2, metavar=("MIXER", "T"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        print(json.dumps(worker(args.worker[0], int(args.worker[1]), args)))
        return 0

    import torch
    from tqdm import tqdm

    from seqmix.core import get_mixer_class, list_mixers

    torch.set_num_threads(args.threads)  # as in the workers, so the header states their thread count

    registered = list_mixers()
    mixers = args.mixers or [m for m in registered if "causal_self" in get_mixer_class(m).patterns]
    unknown = [m for m in mixers if m not in registered]
    if unknown:
        raise SystemExit(f"mixers.py: unknown mixer(s) {unknown}; registered: {registered}")
    no_causal = [m for m in mixers if "causal_self" not in get_mixer_class(m).patterns]
    if no_causal:
        raise SystemExit(f"mixers.py: {no_causal} do not support the causal_self pattern measured here")
    lengths = sorted(args.lengths)

    points: dict[tuple[str, int], dict] = {}
    bar = tqdm(total=len(mixers) * len(lengths), desc="mixer x T", unit="point", dynamic_ncols=True)
    for name in mixers:
        skip, last = None, None  # skip: why the remaining lengths of this mixer are not run
        for t in lengths:
            bar.set_postfix_str(f"{name} T={t}")
            # a quadratic mixer's memory grows with T^2: the bound that keeps a long T off a shared machine
            predicted_gb = None if last is None else last["peak_bytes"] * (t / last["T"]) ** 2 / 2**30
            if skip is None and predicted_gb is not None and predicted_gb > args.mem_cap:
                skip = f"skipped (T={t} may need {predicted_gb:.1f} GB > {args.mem_cap:g} GB)"
            if skip is not None:
                points[(name, t)] = {"mixer": name, "T": t, "error": skip}
            else:
                p = points[(name, t)] = run_point(name, t, args)
                if "error" in p:
                    skip = f"skipped (T={t} {p['error']})"
                elif p["median_s"] > args.cap:
                    skip = f"skipped (T={t} took > {args.cap:g} s)"
                last = p
            tqdm.write(f"{name:>18} T={t:<6} {cell(points[(name, t)])}")
            bar.update(1)
    bar.close()

    impls = {m: next((str(p["impl"]) for (n, _), p in points.items() if n == m and "impl" in p), "?")
             for m in mixers}
    table = markdown_table(["mixer", "impl", *[f"T={t}" for t in lengths]],
                           [[m, impls[m], *[cell(points.get((m, t))) for t in lengths]] for m in mixers])
    target_rows = targets(points)
    notes = [f"setting: causal self, B=1, D={args.d_model}, {args.heads} heads where the mixer takes n_heads, fp32, "
             f"impl=auto, torch threads {args.threads}",
             f"time: median of {args.repeats} forward+backward runs after one warm-up, each (mixer, T) in a fresh process",
             "memory: peak RSS (getrusage ru_maxrss) minus RSS before the input was made, in that process: "
             "extra memory of forward+backward, allocator caching included",
             f"a mixer's longer lengths are skipped once one length took over {args.cap:g} s, or when the "
             f"previous length's memory grown as T^2 would exceed {args.mem_cap:g} GB"]
    text = header("Mixers on the CPU: forward+backward time / peak extra memory", notes=notes)
    growth = growth_rows(points, mixers, lengths[-1])
    growth_header = ["mixer", f"time growth T={PREV_T}->{TARGET_T}",
                     f"{BASELINE} (SDPA) / mixer at T={lengths[-1]} (> 1: the mixer is cheaper)"]
    text += table + "\n## Growth and the longest length against softmax\n\n" + markdown_table(growth_header, growth)
    if any(m in mixers for m in TARGET_MIXERS):
        text += "\n## Issue 2 targets\n\n" + markdown_table(["target", "mixer", "measured", "result"], target_rows)
    text += f"\n![time vs T]({args.name}.png)\n"
    write_result(args.name, text)
    save_figure(plot(points, mixers), args.name)
    print(table)
    print(markdown_table(["target", "mixer", "measured", "result"], target_rows))
    print(f"wrote benchmarks/results/{args.name}.md and {args.name}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
