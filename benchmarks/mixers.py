"""Forward+backward time and peak memory of every registered mixer on the CPU, against length.

Setting (issue 2): causal self pattern, B=1, D=512, 8 heads (for mixers that take
``n_heads``), fp32, ``impl="auto"`` (the chunked form on the CPU where a mixer has one;
SDPA for softmax), ``torch.set_num_threads(2)``, T in 512 ... 8192 and 16384.

Each (mixer, impl, T) runs in a fresh Python process (``--worker``), so that one point's
allocations and caches do not leak into the next. In it: build the mixer, one warm-up
forward+backward, then ``--repeats`` timed ones (median reported). Memory is the peak
resident set size of that process (``getrusage(RUSAGE_SELF).ru_maxrss``) minus its
resident size just before the input tensor was made: the extra memory the forward +
backward needed, allocator caching included (torch's CPU allocations are invisible to
``tracemalloc``).

A mixer's larger lengths are skipped once a length's median exceeds ``--cap`` seconds (that
length is then timed by its warm-up run alone), when its process ran past ``--timeout``, or
when the previous length's memory, grown as T^2, would exceed ``--mem-cap`` GB.

Constructor overrides: a mixer in ``--mixers`` may carry typed constructor arguments,
``name[key=value,key=value]``, checked against the mixer's signature (an unknown mixer or
key, or a value of the wrong type, is an error naming it); the row is labelled
``name (key=value, ...)``. ``--impls`` times each mixer once per implementation (rows
``name (impl=naive)``); ``--naive-lengths`` keeps the slow references to a few lengths.

    python -m benchmarks.mixers                              # everything (run on a quiet machine)
    python -m benchmarks.mixers --mixers softmax gla --lengths 512 1024 --repeats 2
    python -m benchmarks.mixers --mixers landmark 'landmark[retrieval_k=4]' --lengths 4096 8192
    python -m benchmarks.mixers --chunk-vs-naive             # issue 30: chunked form vs naive reference

Writes ``benchmarks/results/mixers_cpu.md`` and ``mixers_cpu.png`` (log-log time against T),
with issue 2's targets at T=8192 evaluated: linear_attention, gla and deltanet at least
3x faster than softmax (SDPA, causal), and at most 2.5x slower from T=4096 to T=8192.

``--chunk-vs-naive`` (issue 30) is the same sweep with other defaults: issue 30's mixers
(``ISSUE30_MIXERS``; names not registered yet are skipped with a note), ``impl="naive"`` at
T=4096 and ``impl="chunk"`` at T=4096 and 8192, written to ``mixers_chunk_vs_naive.md`` with
the table "naive ms / chunk ms / speed-up / growth 4096->8192 / target met" for the targets:
each chunked form at least 5x faster than its naive reference at T=4096 and at most 2.5x
slower from T=4096 to 8192. A naive run past ``--timeout`` gives a lower bound on the
speed-up (``> timeout / chunk``), which meets the target only when that bound does.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import types
import typing
from dataclasses import dataclass

from benchmarks.common import REPO_ROOT, header, markdown_table, save_figure, time_call, write_result

LENGTHS = (512, 1024, 2048, 4096, 8192, 16384)
TARGET_MIXERS = ("linear_attention", "gla", "deltanet")
BASELINE = "softmax"
TARGET_T, PREV_T = 8192, 4096
MIN_SPEEDUP, MAX_GROWTH = 3.0, 2.5

# issue 30's mixers (chunk vs naive here, step decoding in benchmarks/step_decode.py); the TNL row is
# linear_attention with the pieces of configs/recall/tnl.yaml (its n_heads aside: the benchmarks set the heads)
TNL = "linear_attention[feature_map=silu,decay=retnet,positional=lrpe,output_norm=srmsnorm]"
ISSUE30_MIXERS = ("mamba", "mlstm", "lightnet", "lmu", "titans", "jrt_rnn", TNL)
MIN_CHUNK_SPEEDUP = 5.0  # issue 30: each chunked form >= 5x faster than its naive reference at T=PREV_T, fwd+bwd
CHUNK_VS_NAIVE = {"impls": ["naive", "chunk"], "lengths": [PREV_T, TARGET_T], "naive_lengths": [PREV_T],
                  "name": "mixers_chunk_vs_naive"}

# constructor arguments the benchmarks set themselves, and where the user sets them instead
FIXED_ARGUMENTS = {"causal": "the benchmarks measure the causal self pattern (causal=True)",
                   "impl": "choose implementations with --impls", "d_model": "set it with --d-model"}
SPEC = re.compile(r"(?P<name>[A-Za-z0-9_.-]+)(?:\[(?P<args>[^\[\]]*)\])?")


@dataclass(frozen=True)
class MixerSpec:
    """A registered mixer and typed constructor overrides, parsed from ``name`` or ``name[key=value,...]``."""

    name: str
    overrides: tuple[tuple[str, object], ...] = ()
    text: str = ""  # as written on the command line: what a worker process is given

    def label(self, impl: str = "auto") -> str:
        """``name``, or ``name (key=value, ..., impl=naive)`` when arguments or an impl other than auto are set."""
        pairs = [*self.overrides, *([("impl", impl)] if impl != "auto" else [])]
        return self.name if not pairs else f"{self.name} ({', '.join(f'{k}={v}' for k, v in pairs)})"

    def build(self, d_model: int, heads: int, impl: str = "auto"):
        """The mixer for the causal self pattern: ``heads`` where it takes ``n_heads`` (an override wins)."""
        from seqmix.core import build_mixer, get_mixer_class, mixer_arguments

        takes = mixer_arguments(get_mixer_class(self.name))
        arguments: dict[str, object] = {"causal": True, "impl": impl}
        if "n_heads" in takes:
            arguments["n_heads"] = heads
        arguments.update(self.overrides)
        return build_mixer(self.name, d_model, **arguments)


def parse_value(where: str, hint: object, text: str) -> object:
    """``text`` as a value of the annotation ``hint``: bool (true/false), int, float, str, a ``Literal``, or a
    union of these (``none`` for a union with ``None``); a ``ValueError`` naming ``where`` otherwise."""
    origin, options = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Literal:
        for option in options:
            if str(option) == text:
                return option
        raise ValueError(f"{where}: {text!r} is not one of {list(options)}")
    if origin in (typing.Union, types.UnionType):
        if text.lower() == "none" and type(None) in options:
            return None
        for option in options:
            if option is not type(None):
                try:
                    return parse_value(where, option, text)
                except ValueError:
                    pass
        raise ValueError(f"{where}: {text!r} is not of type {hint}")
    if hint is bool:
        if text.lower() in ("true", "false"):
            return text.lower() == "true"
        raise ValueError(f"{where}: {text!r} is not a bool; write true or false")
    if hint in (int, float):
        try:
            return hint(text)
        except ValueError:
            raise ValueError(f"{where}: {text!r} is not of type {hint.__name__}") from None
    if hint is str:
        return text
    raise ValueError(f"{where}: arguments of type {hint} cannot be given on the command line; "
                     "give bool, int, float, str or Literal arguments only")


def parse_spec(text: str) -> MixerSpec:
    """``name`` or ``name[key=value,key=value]``: a registered mixer and typed constructor overrides, each
    key checked against the mixer's signature and each value parsed by its annotation (a clear ``ValueError``
    naming the mixer, the key and what it takes otherwise)."""
    from seqmix.core import get_mixer_class, list_mixers, mixer_arguments

    match = SPEC.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"mixer {text!r}: write a registered name, or name[key=value,key=value] for constructor "
                         "arguments, e.g. landmark[retrieval_k=4]")
    name, registered = match["name"], list_mixers()
    if name not in registered:
        raise ValueError(f"mixer {text!r}: {name!r} is not a registered mixer; registered: {registered}")
    cls = get_mixer_class(name)
    takes = mixer_arguments(cls)
    hints = typing.get_type_hints(cls.__init__)
    overrides: dict[str, object] = {}
    for item in (s.strip() for s in (match["args"] or "").split(",")):
        if not item:
            continue
        key, equals, value = (part.strip() for part in item.partition("="))
        if not equals or not key or not value:
            raise ValueError(f"mixer {text!r}: {item!r} is not key=value")
        if key in FIXED_ARGUMENTS:
            raise ValueError(f"mixer {text!r}: {key} is not a constructor override here; {FIXED_ARGUMENTS[key]}")
        if key not in takes:
            settable = sorted(set(takes) - set(FIXED_ARGUMENTS))
            raise ValueError(f"mixer {text!r}: {name} takes no argument {key!r}; it takes {settable}")
        if key in overrides:
            raise ValueError(f"mixer {text!r}: {key} is given twice")
        if key not in hints:
            raise ValueError(f"mixer {text!r}: {name}'s argument {key} has no type annotation to parse it by")
        overrides[key] = parse_value(f"mixer {text!r}: {key}", hints[key], value)
    return MixerSpec(name, tuple(overrides.items()), text.strip())


def default_specs(names: typing.Iterable[str]) -> tuple[list[MixerSpec], list[str]]:
    """The specs of a default list, the names not registered (yet) skipped: ``(specs, notes)``."""
    from seqmix.core import list_mixers

    registered, specs, notes = list_mixers(), [], []
    for text in names:
        name = SPEC.fullmatch(text)["name"]
        if name in registered:
            specs.append(parse_spec(text))
        else:
            notes.append(f"{name} is not a registered mixer (yet): skipped")
    return specs, notes


def rss_bytes() -> int:
    """Current resident set size of this process."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def worker(spec_text: str, seq_len: int, impl: str, args: argparse.Namespace) -> dict[str, object]:
    """One (mixer, impl, T) point, in this process; returns times (s) and the peak extra memory (bytes)."""
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    spec = parse_spec(spec_text)
    mixer = spec.build(args.d_model, args.heads, impl)
    resolved = mixer.resolve_impl(torch.empty(0))
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
    return {"mixer": spec.label(impl), "T": seq_len, "impl": resolved, "warmup_s": warmup,
            "times_s": timing.times_s if timing else [],
            "median_s": timing.median_s if timing else warmup, "peak_bytes": max(0, peak - base)}


def run_point(spec: MixerSpec, impl: str, seq_len: int, args: argparse.Namespace) -> dict[str, object]:
    """One point in a fresh process (``--worker``); a timeout or a failure is a point with an ``error``."""
    label = spec.label(impl)
    cmd = [sys.executable, "-m", "benchmarks.mixers", "--worker", spec.text, str(seq_len), impl,
           "--repeats", str(args.repeats), "--threads", str(args.threads), "--d-model", str(args.d_model),
           "--heads", str(args.heads), "--cap", str(args.cap)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, cwd=REPO_ROOT)
    except subprocess.TimeoutExpired:
        return {"mixer": label, "T": seq_len, "error": f"timeout (> {args.timeout:g} s)", "timeout_s": args.timeout}
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"mixer": label, "T": seq_len, "error": f"failed: {last}"}
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


def chunk_vs_naive_rows(points: dict[tuple[str, int], dict], specs: list[MixerSpec], t_ref: int = PREV_T,
                        t_next: int = TARGET_T) -> list[list[str]]:
    """Issue 30's targets per mixer: naive ms / chunk ms at T=t_ref / speed-up (>= MIN_CHUNK_SPEEDUP) / chunk's
    growth t_ref -> t_next (<= MAX_GROWTH) / target met (the issue sets them at 4096 -> 8192). A naive run past
    the timeout bounds the speed-up from below (``> timeout / chunk``); a naive time of one run (its warm-up
    took over --cap) is marked."""

    def ms(p: dict | None) -> str:
        if p is None:
            return "not run"
        if "error" in p:
            return str(p["error"])
        return f"{p['median_s'] * 1e3:,.0f}" + ("" if p["times_s"] else " (1 run, > cap)")

    rows = []
    for spec in specs:
        naive = points.get((spec.label("naive"), t_ref))
        chunk4, chunk8 = points.get((spec.label("chunk"), t_ref)), points.get((spec.label("chunk"), t_next))
        ok4 = chunk4 is not None and "error" not in chunk4
        ok8 = chunk8 is not None and "error" not in chunk8
        if ok4 and naive is not None and "error" not in naive:
            value = naive["median_s"] / chunk4["median_s"]
            speedup, speed_ok = f"{value:.1f}x", value >= MIN_CHUNK_SPEEDUP
        elif ok4 and naive is not None and "timeout_s" in naive:  # the reference ran past the timeout
            value = naive["timeout_s"] / chunk4["median_s"]
            speedup, speed_ok = f"> {value:.1f}x", True if value >= MIN_CHUNK_SPEEDUP else None
        else:
            speedup, speed_ok = "not measured", None
        if ok4 and ok8:
            value = chunk8["median_s"] / chunk4["median_s"]
            growth, growth_ok = f"{value:.2f}x", value <= MAX_GROWTH
        else:
            growth, growth_ok = "not measured", None
        failed = [what for what, ok in ((f"speed-up < {MIN_CHUNK_SPEEDUP:g}x", speed_ok),
                                        (f"growth > {MAX_GROWTH:g}x", growth_ok)) if ok is False]
        unknown = [what for what, ok in (("speed-up", speed_ok), ("growth", growth_ok)) if ok is None]
        verdict = ("FAIL (" + ", ".join(failed) + ")" if failed
                   else f"NOT EVALUATED ({', '.join(unknown)})" if unknown else "PASS")
        rows.append([spec.label(), ms(naive), ms(chunk4), speedup, ms(chunk8), growth, verdict])
    return rows


def chunk_vs_naive_columns(t_ref: int = PREV_T, t_next: int = TARGET_T) -> list[str]:
    return ["mixer", f"naive ms (T={t_ref})", f"chunk ms (T={t_ref})", "speed-up", f"chunk ms (T={t_next})",
            f"growth {t_ref}->{t_next}", "target met"]


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
    ax.legend(fontsize=7, ncol=2 if max(map(len, mixers), default=0) < 30 else 1)
    ax.set_title("CPU forward+backward, causal self, B=1, D=512, fp32", fontsize=9)
    return fig


def sweep(rows: list[tuple[MixerSpec, str]], lengths: list[int], naive_lengths: list[int],
          args: argparse.Namespace) -> dict[tuple[str, int], dict]:
    """Every (row, T) point, each in its own process; a row's longer lengths are skipped once one took over
    --cap seconds, failed, or would need over --mem-cap GB (its previous length's memory grown as T^2)."""
    from tqdm import tqdm

    plan = [(spec, impl, [t for t in lengths if impl != "naive" or t in naive_lengths]) for spec, impl in rows]
    points: dict[tuple[str, int], dict] = {}
    bar = tqdm(total=sum(len(ts) for *_, ts in plan), desc="mixer x T", unit="point", dynamic_ncols=True)
    for spec, impl, row_lengths in plan:
        label = spec.label(impl)
        skip, last = None, None  # skip: why the remaining lengths of this row are not run
        for t in row_lengths:
            bar.set_postfix_str(f"{label} T={t}")
            # a quadratic mixer's memory grows with T^2: the bound that keeps a long T off a shared machine
            predicted_gb = None if last is None else last["peak_bytes"] * (t / last["T"]) ** 2 / 2**30
            if skip is None and predicted_gb is not None and predicted_gb > args.mem_cap:
                skip = f"skipped (T={t} may need {predicted_gb:.1f} GB > {args.mem_cap:g} GB)"
            if skip is not None:
                points[(label, t)] = {"mixer": label, "T": t, "error": skip}
            else:
                p = points[(label, t)] = run_point(spec, impl, t, args)
                if "error" in p:
                    skip = f"skipped (T={t} {p['error']})"
                else:
                    last = p
                    if p["median_s"] > args.cap:
                        skip = f"skipped (T={t} took > {args.cap:g} s)"
            tqdm.write(f"{label:>18} T={t:<6} {cell(points[(label, t)])}")
            bar.update(1)
    bar.close()
    return points


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mixers", nargs="+", metavar="MIXER",
                        help="registered mixer names, each optionally with constructor arguments "
                             "name[key=value,...] (default: all with causal_self; with --chunk-vs-naive "
                             "issue 30's mixers)")
    parser.add_argument("--chunk-vs-naive", action="store_true",
                        help=f"issue 30: defaults --impls naive chunk --lengths {PREV_T} {TARGET_T} --naive-lengths "
                             f"{PREV_T} --name {CHUNK_VS_NAIVE['name']}, mixers {list(ISSUE30_MIXERS)}")
    parser.add_argument("--impls", nargs="+", help="implementations to time, one row each (default: auto)")
    parser.add_argument("--lengths", nargs="+", type=int, help=f"default: {list(LENGTHS)}")
    parser.add_argument("--naive-lengths", nargs="+", type=int,
                        help="the lengths at which impl=naive rows run (default: all of --lengths)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs after one warm-up (median)")
    parser.add_argument("--cap", type=float, default=30.0,
                        help="seconds: a length whose fwd+bwd takes longer ends that mixer's sweep")
    parser.add_argument("--mem-cap", type=float, default=8.0,
                        help="GB: skip a length when the previous one's memory grown as T^2 would exceed this")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per (mixer, T) process")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--d-model", type=int, default=512)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--name", help="results file stem (default: mixers_cpu; mixers_chunk_vs_naive)")
    parser.add_argument("--worker", nargs=3, metavar=("MIXER", "T", "IMPL"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        print(json.dumps(worker(args.worker[0], int(args.worker[1]), args.worker[2], args)))
        return 0

    import torch

    from seqmix.core import get_mixer_class, list_mixers

    torch.set_num_threads(args.threads)  # as in the workers, so the header states their thread count

    preset = CHUNK_VS_NAIVE if args.chunk_vs_naive else {"impls": ["auto"], "lengths": list(LENGTHS),
                                                         "naive_lengths": None, "name": "mixers_cpu"}
    impls = args.impls or preset["impls"]
    lengths = sorted(args.lengths or preset["lengths"])
    naive_lengths = sorted(args.naive_lengths or [t for t in preset["naive_lengths"] or lengths if t in lengths]
                           or lengths[:1])  # the preset's T=4096 when swept, else the shortest length
    if not set(naive_lengths) <= set(lengths):
        raise SystemExit(f"mixers.py: --naive-lengths {naive_lengths} must be among --lengths {lengths}")
    args.name = args.name or preset["name"]
    skipped: list[str] = []
    try:
        if args.mixers:
            specs = [parse_spec(text) for text in args.mixers]
        elif args.chunk_vs_naive:
            specs, skipped = default_specs(ISSUE30_MIXERS)
        else:
            specs = [parse_spec(m) for m in list_mixers() if "causal_self" in get_mixer_class(m).patterns]
    except ValueError as error:
        raise SystemExit(f"mixers.py: {error}") from None
    for note in skipped:
        print(f"mixers.py: {note}")
    no_causal = [s.name for s in specs if "causal_self" not in get_mixer_class(s.name).patterns]
    if no_causal:
        raise SystemExit(f"mixers.py: {no_causal} do not support the causal_self pattern measured here")
    rows = [(spec, impl) for spec in specs for impl in impls]
    labels = [spec.label(impl) for spec, impl in rows]
    if len(set(labels)) != len(labels):
        raise SystemExit(f"mixers.py: a mixer is named twice with the same arguments: {labels}")
    for spec, impl in rows:  # a bad value (an impl the mixer lacks, an argument out of range) fails here, not later
        try:
            spec.build(args.d_model, args.heads, impl)
        except (ValueError, TypeError) as error:
            raise SystemExit(f"mixers.py: {spec.label(impl)} cannot be built: {error}") from None

    points = sweep(rows, lengths, naive_lengths, args)

    impl_of = {label: next((str(p["impl"]) for (n, _), p in points.items() if n == label and "impl" in p), "?")
               for label in labels}
    table = markdown_table(["mixer", "impl", *[f"T={t}" for t in lengths]],
                           [[m, impl_of[m], *[cell(points.get((m, t))) for t in lengths]] for m in labels])
    target_rows = targets(points)
    notes = [f"setting: causal self, B=1, D={args.d_model}, {args.heads} heads where the mixer takes n_heads, fp32, "
             f"impl {' / '.join(impls)}, torch threads {args.threads}",
             f"time: median of {args.repeats} forward+backward runs after one warm-up, each (mixer, T) in a fresh process",
             "memory: peak RSS (getrusage ru_maxrss) minus RSS before the input was made, in that process: "
             "extra memory of forward+backward, allocator caching included",
             f"a mixer's longer lengths are skipped once one length took over {args.cap:g} s (that length is then "
             f"its warm-up run alone) or its process over {args.timeout:g} s, or when the previous length's memory "
             f"grown as T^2 would exceed {args.mem_cap:g} GB",
             *([f"impl=naive only at T in {naive_lengths}"] if "naive" in impls and naive_lengths != lengths else []),
             *skipped]
    text = header("Mixers on the CPU: forward+backward time / peak extra memory", notes=notes)
    growth = growth_rows(points, labels, lengths[-1])
    growth_header = ["mixer", f"time growth T={PREV_T}->{TARGET_T}",
                     f"{BASELINE} (SDPA) / mixer at T={lengths[-1]} (> 1: the mixer is cheaper)"]
    text += table + "\n## Growth and the longest length against softmax\n\n" + markdown_table(growth_header, growth)
    if any(m in labels for m in TARGET_MIXERS):
        text += "\n## Issue 2 targets\n\n" + markdown_table(["target", "mixer", "measured", "result"], target_rows)
    if {"naive", "chunk"} <= set(impls):
        # the issue's lengths when they ran, else the shortest naive length and the next one (a small check run)
        t_ref = PREV_T if PREV_T in naive_lengths else min(naive_lengths)
        t_next = TARGET_T if t_ref == PREV_T else next((t for t in lengths if t > t_ref), t_ref)
        speedups = markdown_table(chunk_vs_naive_columns(t_ref, t_next), chunk_vs_naive_rows(points, specs, t_ref,
                                                                                            t_next))
        text += (f"\n## Chunk vs naive (issue 30)\n\nTargets (issue 30, at T={PREV_T} -> {TARGET_T}): chunk >= "
                 f"{MIN_CHUNK_SPEEDUP:g}x faster than naive at T={PREV_T}, chunk time growth <= {MAX_GROWTH:g}x "
                 f"(forward+backward); here at T={t_ref} -> {t_next}.\n\n" + speedups)
        print(speedups)
    text += f"\n![time vs T]({args.name}.png)\n"
    write_result(args.name, text)
    save_figure(plot(points, labels), args.name)
    print(table)
    print(markdown_table(["target", "mixer", "measured", "result"], target_rows))
    print(f"wrote benchmarks/results/{args.name}.md and {args.name}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
