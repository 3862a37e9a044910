"""Issue 30 at the op level: each mixer's chunked form against its sequential reference, the kernel alone.

The issue's target ("each chunked form at least 5x faster than its sequential reference at T=4096,
forward+backward on the CPU, and at most 2.5x slower from T=4096 to 8192") is about the kernel op;
``python -m benchmarks.mixers --chunk-vs-naive`` times whole mixers, whose projections, convolutions
and norms are shared by both impls and cap the ratio (Amdahl). Here each (mixer, impl, T) point, in a
fresh Python process (``--worker``, as ``benchmarks/mixers.py``):

1. builds the mixer as ``benchmarks.mixers`` does (causal self, B=1, D=512, 8 heads where it takes
   ``n_heads``, fp32, ``impl`` naive or chunk, ``torch.set_num_threads(--threads)``);
2. runs one forward with the op wrapped where the mixer's module looks it up (:data:`OPS`), recording
   the call with the longest input: the exact function the mixer calls for that impl, with the shapes,
   dtypes and keyword arguments it passes (jrt_rnn calls another function per impl);
3. times the whole mixer, forward + backward (median of ``--repeats`` after one warm-up), and the op
   alone on copies of the recorded arguments (leaves wherever the mixer's argument required a
   gradient), forward + backward of its first output against a fixed random gradient, likewise.

The op's share of the mixer time is what step 1 of the issue's profile asks: the rest is shared.
A point whose warm-up took over ``--cap`` seconds is that run alone. Each point is added to the run
cache ``benchmarks/results/kernels_chunk_vs_naive.json`` (with its commit and date: a run of some
mixers replaces only their points, so a slow sweep can be split over several quiet runs), and
``benchmarks/results/kernels_chunk_vs_naive.md`` is written from the cached points of ``--mixers``:
the targets table (op speed-up >= 5x at T=4096, chunk growth 4096 -> 8192 <= 2.5x, PASS/FAIL) with
the mixer-level ratio beside it, and every point with its op's share of the mixer time.

    python -m benchmarks.kernels_chunk_vs_naive                       # all 7 (run it under quiet.sh)
    python -m benchmarks.kernels_chunk_vs_naive --mixers mamba lmu --lengths 1024 2048 --name scratch
    python -m benchmarks.kernels_chunk_vs_naive --run mamba lmu         # rerun these, table of all 7
"""

from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys

from benchmarks.common import (REPO_ROOT, RESULTS_DIR, add_cached_run, git_commit, header, markdown_table,
                               read_run_cache, time_call, utc_now, write_result)
from benchmarks.mixers import ISSUE30_MIXERS, MAX_GROWTH, MIN_CHUNK_SPEEDUP, PREV_T, TARGET_T, parse_spec

# where each mixer looks up its kernel op: (module, names it calls); the module attribute is wrapped
OPS = {
    "mamba": ("seqmix.core.mixers.mamba", ("selective_scan",)),
    "mlstm": ("seqmix.core.mixers.mlstm", ("chunk_mlstm",)),
    "lightnet": ("seqmix.core.mixers.lightnet", ("chunk_gla",)),
    "lmu": ("seqmix.core.mixers.lmu", ("lmu_memory",)),
    "titans": ("seqmix.core.mixers.titans", ("titans_memory",)),
    "jrt_rnn": ("seqmix.core.mixers.jrt_rnn", ("prefix_linear_attn_naive", "prefix_linear_attn_chunk")),
    "linear_attention": ("seqmix.core.mixers.linear", ("linear_attn",)),
}


def tensors_in(value) -> list:
    """Every tensor in a (nested) tuple / list / named tuple, in order."""
    import torch

    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for item in value for t in tensors_in(item)]
    return []


def fresh(value):
    """A copy of a recorded argument: tensors detached and cloned, leaves needing a gradient where the mixer's
    argument did (nested tuples and named tuples rebuilt), anything else as it is."""
    import torch

    if isinstance(value, torch.Tensor):
        return value.detach().clone().requires_grad_(value.requires_grad)
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return type(value)(*(fresh(v) for v in value))
    if isinstance(value, (tuple, list)):
        return type(value)(fresh(v) for v in value)
    return value


def record_op_call(mixer, name: str, x) -> tuple[str, object, tuple, dict]:
    """Run ``mixer(x)`` once with its op(s) wrapped; the call with the longest first input:
    ``(function name, function, args, kwargs)``, the arguments as :func:`fresh` copies (the recording
    forward's graph is freed before anything is timed)."""
    module_name, names = OPS[name]
    module = importlib.import_module(module_name)
    calls, originals = [], {n: getattr(module, n) for n in names}

    def wrapper(op_name, fn):
        def recording(*args, **kwargs):
            calls.append((op_name, fn, fresh(args), fresh(kwargs)))  # copies: the forward's graph is not kept
            return fn(*args, **kwargs)
        return recording

    try:
        for n, fn in originals.items():
            setattr(module, n, wrapper(n, fn))
        mixer(x)
    finally:
        for n, fn in originals.items():
            setattr(module, n, fn)
    if not calls:
        raise RuntimeError(f"kernels_chunk_vs_naive: {name} called none of {module_name}.{names}; update OPS")
    return max(calls, key=lambda call: tensors_in(call[2])[0].shape[1])


def worker(spec_text: str, seq_len: int, impl: str, args: argparse.Namespace) -> dict[str, object]:
    """One (mixer, impl, T) point in this process: the mixer's and its op's forward+backward seconds."""
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    spec = parse_spec(spec_text)
    mixer = spec.build(args.d_model, args.heads, impl)
    x = torch.randn(1, seq_len, args.d_model, requires_grad=True)  # [B, T, D]
    grad = torch.randn(1, seq_len, args.d_model)  # [B, T, D]
    op_name, op, op_args, op_kwargs = record_op_call(mixer, spec.name, x)

    def clear_mixer() -> None:
        x.grad = None
        mixer.zero_grad(set_to_none=True)

    def timed(fn, before) -> dict[str, object]:
        """Warm-up, then the median of --repeats when the warm-up took at most --cap seconds."""
        warmup = time_call(fn, warmup=0, repeats=1, before=before).min_s
        timing = time_call(fn, warmup=0, repeats=args.repeats, before=before) if warmup <= args.cap else None
        return {"warmup_s": warmup, "times_s": timing.times_s if timing else [],
                "median_s": timing.median_s if timing else warmup}

    mixer_time = timed(lambda: mixer(x).backward(grad), clear_mixer)
    del mixer
    leaves = [t for t in tensors_in((op_args, op_kwargs)) if t.requires_grad]  # where the mixer's graph was
    inputs = fresh((op_args, op_kwargs))
    out_grad = torch.randn_like(tensors_in(op(*inputs[0], **inputs[1]))[0])

    def op_fwd_bwd() -> None:
        tensors_in(op(*inputs[0], **inputs[1]))[0].backward(out_grad)

    def clear_op() -> None:
        for t in tensors_in(inputs):
            t.grad = None

    op_time = timed(op_fwd_bwd, clear_op)
    shapes = {k: list(v.shape) for k, v in zip(("arg0", "arg1", "arg2"), tensors_in(op_args))}
    return {"mixer": spec.label(), "T": seq_len, "impl": impl, "op": op_name, "op_shapes": shapes,
            "op_grads": len(leaves), "mixer_s": mixer_time, "op_s": op_time, "commit": git_commit(),
            "date": utc_now()}


def run_point(spec_text: str, impl: str, seq_len: int, args: argparse.Namespace) -> dict[str, object]:
    """One point in a fresh process; a timeout or a failure is a point with an ``error``."""
    cmd = [sys.executable, "-m", "benchmarks.kernels_chunk_vs_naive", "--worker", spec_text, str(seq_len), impl,
           "--repeats", str(args.repeats), "--threads", str(args.threads), "--d-model", str(args.d_model),
           "--heads", str(args.heads), "--cap", str(args.cap)]
    label = parse_spec(spec_text).label()
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, cwd=REPO_ROOT)
    except subprocess.TimeoutExpired:
        return {"mixer": label, "T": seq_len, "impl": impl, "error": f"timeout (> {args.timeout:g} s)"}
    if done.returncode < 0:  # a signal: SIGKILL is what the kernel's out-of-memory killer sends
        why = " (out of memory?)" if done.returncode == -9 else ""
        return {"mixer": label, "T": seq_len, "impl": impl, "error": f"killed by signal {-done.returncode}{why}"}
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"mixer": label, "T": seq_len, "impl": impl, "error": f"failed: {last}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def ms(timing: dict | None) -> str:
    if timing is None:
        return "-"
    return f"{timing['median_s'] * 1e3:,.0f}" + ("" if timing["times_s"] else " (1 run, > cap)")


def target_rows(points: dict, labels: list[str], t_ref: int, t_next: int) -> list[list[str]]:
    """Per mixer: op naive / chunk ms at t_ref, op speed-up, op chunk ms at t_next, growth, PASS/FAIL (both
    targets on the op), and the mixer-level speed-up beside it (shared projections included)."""
    rows = []
    for label in labels:
        naive, c4, c8 = (points.get((label, impl, t)) for impl, t in (("naive", t_ref), ("chunk", t_ref),
                                                                      ("chunk", t_next)))
        ok = [p is not None and "error" not in p for p in (naive, c4, c8)]
        speedup = naive["op_s"]["median_s"] / c4["op_s"]["median_s"] if ok[0] and ok[1] else None
        growth = c8["op_s"]["median_s"] / c4["op_s"]["median_s"] if ok[1] and ok[2] else None
        mixer_speedup = naive["mixer_s"]["median_s"] / c4["mixer_s"]["median_s"] if ok[0] and ok[1] else None
        failed = [what for what, bad in ((f"speed-up < {MIN_CHUNK_SPEEDUP:g}x",
                                          speedup is not None and speedup < MIN_CHUNK_SPEEDUP),
                                         (f"growth > {MAX_GROWTH:g}x", growth is not None and growth > MAX_GROWTH))
                  if bad]
        verdict = ("FAIL (" + ", ".join(failed) + ")" if failed else
                   "NOT EVALUATED" if speedup is None or growth is None else "PASS")
        op = " / ".join(dict.fromkeys(p["op"] for p in (naive, c4) if p is not None and "op" in p)) or "?"
        rows.append([label, f"`{op}`", ms(naive["op_s"]) if ok[0] else cell_error(naive), ms(c4["op_s"]) if ok[1]
                     else cell_error(c4), f"{speedup:.1f}x" if speedup else "-", ms(c8["op_s"]) if ok[2]
                     else cell_error(c8), f"{growth:.2f}x" if growth else "-", verdict,
                     f"{mixer_speedup:.1f}x" if mixer_speedup else "-"])
    return rows


def cell_error(point: dict | None) -> str:
    return "not run" if point is None else str(point.get("error", "?"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mixers", nargs="+", metavar="MIXER", default=list(ISSUE30_MIXERS),
                        help="the table's mixers (name or name[key=value,...], as benchmarks.mixers; default: "
                             "issue 30's)")
    parser.add_argument("--run", nargs="*", metavar="MIXER",
                        help="time only these of --mixers (names as given there; no names: none, only rewrite "
                             "the table from the cache); default: all of --mixers")
    parser.add_argument("--lengths", nargs=2, type=int, default=[PREV_T, TARGET_T], metavar=("T_REF", "T_NEXT"),
                        help="naive and chunk at T_REF, chunk at T_NEXT (the issue's 4096 and 8192)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs after one warm-up (median)")
    parser.add_argument("--cap", type=float, default=30.0, help="seconds: a slower warm-up is the point's only run")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per (mixer, impl, T) process")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--d-model", type=int, default=512)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--name", default="kernels_chunk_vs_naive", help="results file stem")
    parser.add_argument("--worker", nargs=3, metavar=("MIXER", "T", "IMPL"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        print(json.dumps(worker(args.worker[0], int(args.worker[1]), args.worker[2], args)))
        return 0

    import torch

    torch.set_num_threads(args.threads)  # as in the workers, so the header states their thread count
    try:
        specs = [parse_spec(text) for text in args.mixers]
    except ValueError as error:
        raise SystemExit(f"kernels_chunk_vs_naive.py: {error}") from None
    unknown = [s.name for s in specs if s.name not in OPS]
    if unknown:
        raise SystemExit(f"kernels_chunk_vs_naive.py: no op recorded for {unknown}; OPS has {sorted(OPS)}")
    t_ref, t_next = args.lengths
    run = specs if args.run is None else [s for s in specs if s.text in args.run or s.name in args.run]
    if args.run and len(run) != len(set(args.run)):
        raise SystemExit(f"kernels_chunk_vs_naive.py: --run {args.run} must name mixers of --mixers "
                         f"{[s.text for s in specs]}")
    cache = RESULTS_DIR / f"{args.name}.json"
    for spec in run:
        for impl, t in (("naive", t_ref), ("chunk", t_ref), ("chunk", t_next)):
            p = run_point(spec.text, impl, t, args)
            add_cached_run(cache, f"{spec.label()} | {impl} | {t}", p)
            shown = p.get("error") or f"op {ms(p['op_s'])} ms, mixer {ms(p['mixer_s'])} ms"
            print(f"{spec.label():>24} {impl:>5} T={t:<6} {shown}", flush=True)
    cached = read_run_cache(cache)
    points = {(s.label(), impl, t): cached[key] for s in specs for impl, t in (("naive", t_ref), ("chunk", t_ref),
                                                                                ("chunk", t_next))
              if (key := f"{s.label()} | {impl} | {t}") in cached}

    labels = [s.label() for s in specs]
    point_rows = []
    for (label, impl, t), p in points.items():
        if "error" in p:
            point_rows.append([label, impl, t, "-", p["error"], "-", "-", "-"])
            continue
        share = p["op_s"]["median_s"] / p["mixer_s"]["median_s"]
        shapes = ", ".join(f"{list(s)}" for s in p["op_shapes"].values())
        point_rows.append([label, impl, t, f"`{p['op']}` {shapes}", ms(p["op_s"]), ms(p["mixer_s"]),
                           f"{share:.0%}", f"`{p['commit']}` {p['date']}"])
    notes = [f"setting: causal self, B=1, D={args.d_model}, {args.heads} heads where the mixer takes n_heads, fp32, "
             f"torch threads {args.threads}; impl naive at T={t_ref}, chunk at T={t_ref} and {t_next}",
             "op: the kernel function the mixer calls for that impl (recorded from one mixer forward, wrapped "
             "where the mixer's module looks it up), on copies of the recorded arguments; forward + backward of "
             "its first output (gradients to every argument the mixer's graph differentiates)",
             f"time: median of {args.repeats} forward+backward runs after one warm-up, each (mixer, impl, T) in a "
             f"fresh process; a warm-up over {args.cap:g} s is the point's only run",
             "points from the run cache (benchmarks/results/" + cache.name + "): each with the commit and date of "
             "its run (the header's command and commit are those of the last run, which may have rerun only some)",
             "mixer: the whole mixer forward+backward in the same process (as benchmarks.mixers); the op's share "
             "of it is the part the chunked form can speed up, the rest (projections, conv, norms) is shared"]
    text = header("Kernel ops on the CPU: chunked form vs sequential reference (issue 30)", notes=notes)
    text += (f"## Targets (issue 30, op level)\n\nEach chunked form >= {MIN_CHUNK_SPEEDUP:g}x faster than its "
             f"sequential reference at T={t_ref} (forward+backward, the op alone) and chunk time growth "
             f"T={t_ref}->{t_next} <= {MAX_GROWTH:g}x. The last column is the same ratio for the whole mixer "
             "(benchmarks/results/mixers_chunk_vs_naive.md is that view, run by benchmarks.mixers).\n\n")
    columns = ["mixer", "op (naive / chunk)", f"naive ms (T={t_ref})", f"chunk ms (T={t_ref})", "op speed-up",
               f"chunk ms (T={t_next})", f"growth {t_ref}->{t_next}", "target met (op)", "mixer speed-up"]
    targets = markdown_table(columns, target_rows(points, labels, t_ref, t_next))
    text += targets
    text += "\n## Points\n\n" + markdown_table(["mixer", "impl", "T", "op and its input shapes", "op ms",
                                                 "mixer ms", "op share", "commit, date"], point_rows)
    write_result(args.name, text)
    print(targets)
    print(f"wrote benchmarks/results/{args.name}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
