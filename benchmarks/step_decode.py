"""Step decoding on the CPU: memory and throughput of generating one token at a time (issue 30).

Issue 30's target: ``step`` decoding of each of its mixers keeps its memory flat from 1k to 16k
generated tokens. For each mixer, in a fresh Python process (``--worker``, as in
``benchmarks/mixers.py``): build it (causal, B=1, D=512, 8 heads where it takes ``n_heads``, fp32,
eval mode), ``init_state(1)``, then ``step`` ``--tokens`` (16384) tokens under ``torch.no_grad()``,
each input a row of a pool of 1024 random tokens made before decoding starts (so that the inputs
add no memory as it goes). Recorded at each of ``--readings`` (1024, 2048, 4096, 8192, 16384
tokens):

- the resident set size of the process (VmRSS of /proc/self/status);
- the state's floats (the numel of every tensor in it) and what ``mixer.state_size(t)`` says;

and the throughput: tokens/s over the tokens after the ``--warmup`` first ones.

Verdict "flat": RSS at the last reading minus RSS at the first at most ``--max-growth-mb`` (16 MiB
by default: 1 KiB a token over the 15360 tokens between 1024 and 16384; softmax's KV cache at D=512
grows 4 KiB a token) AND the same state float count at every reading. softmax (a KV cache, which
grows by design) is the contrast row, not a target. Mixers may carry constructor arguments as in
``benchmarks/mixers.py`` (``name[key=value,...]``); names of the default list that are not
registered are skipped with a note.

    python -m benchmarks.step_decode                          # issue 30's mixers + softmax (a quiet machine)
    python -m benchmarks.step_decode --mixers lmu softmax --tokens 2048 --readings 256 1024 2048

Writes ``benchmarks/results/step_decode.md``, ``.json`` (every reading) and ``.png`` (RSS growth
against tokens generated, per mixer).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from typing import Sequence

from benchmarks import common
from benchmarks.common import REPO_ROOT, header, markdown_table, save_figure, write_result
from benchmarks.mixers import ISSUE30_MIXERS, MixerSpec, default_specs, parse_spec

READINGS = (1024, 2048, 4096, 8192, 16384)
CONTRAST = ("softmax",)  # KV-cache mixers shown beside the targets: their state grows by design
POOL = 1024  # random input tokens, cycled


def rss_bytes() -> int:
    """VmRSS of this process (``/proc/self/status``), in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024  # kB
    raise OSError("no VmRSS line in /proc/self/status: this benchmark reads the RSS of a Linux process")


def state_numel(state: object) -> int:
    """Floats held by a state: the numel of every tensor in it (tuples, named tuples, lists, dicts, dataclasses);
    counters and other plain values count nothing."""
    import torch

    if isinstance(state, torch.Tensor):
        return state.numel()
    if isinstance(state, (tuple, list)):
        return sum(state_numel(s) for s in state)
    if isinstance(state, dict):
        return sum(state_numel(s) for s in state.values())
    if dataclasses.is_dataclass(state) and not isinstance(state, type):
        return sum(state_numel(getattr(state, f.name)) for f in dataclasses.fields(state))
    return 0


def decode(mixer, tokens: int, readings: Sequence[int], warmup: int, *, seed: int = 0) -> dict[str, object]:
    """Step ``mixer`` through ``tokens`` random tokens (batch 1) from ``init_state``; at each token count of
    ``readings``: RSS, the state's floats and ``state_size``; tokens/s after the ``warmup`` first tokens."""
    import torch

    if not 0 <= warmup < tokens or not readings or not all(1 <= r <= tokens for r in readings):
        raise ValueError(f"step_decode: need 0 <= warmup={warmup} < tokens={tokens} and readings {list(readings)} "
                         f"within 1..{tokens}; lower --warmup or the --readings, or raise --tokens")
    generator = torch.Generator().manual_seed(seed)
    pool = torch.randn(min(POOL, tokens), mixer.d_model, generator=generator)  # [P, D]
    marks = set(readings)
    points, start = [], time.perf_counter()
    mixer.eval()
    with torch.no_grad():
        state = mixer.init_state(1)
        for t in range(1, tokens + 1):
            if t == warmup + 1:
                start = time.perf_counter()
            _, state = mixer.step(pool[(t - 1) % len(pool)][None], state)  # [1, D] -> [1, D]
            if t in marks:
                points.append({"tokens": t, "rss_bytes": rss_bytes(), "state_numel": state_numel(state),
                               "state_size": mixer.state_size(t)})
    elapsed = time.perf_counter() - start
    return {"readings": points, "timed_tokens": tokens - warmup, "seconds": elapsed,
            "tokens_per_s": (tokens - warmup) / elapsed}


def verdict(readings: Sequence[dict], max_growth_bytes: float) -> tuple[bool, str]:
    """``(flat, words)``: flat when RSS grew at most ``max_growth_bytes`` from the first reading to the last and
    the state's float count never changed."""
    first, last = readings[0], readings[-1]
    growth = last["rss_bytes"] - first["rss_bytes"]
    reasons = []
    if growth > max_growth_bytes:
        reasons.append(f"RSS +{growth / 2**20:.1f} MB > {max_growth_bytes / 2**20:g} MB")
    if len({r["state_numel"] for r in readings}) > 1:
        reasons.append(f"state {first['state_numel']:,} -> {last['state_numel']:,} floats")
    return (not reasons), ("flat" if not reasons else "grows: " + "; ".join(reasons))


def worker(spec_text: str, args: argparse.Namespace) -> dict[str, object]:
    """One mixer, in this process."""
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    spec = parse_spec(spec_text)
    mixer = spec.build(args.d_model, args.heads)
    result = decode(mixer, args.tokens, args.readings, args.warmup, seed=args.seed)
    return {"mixer": spec.label(), "name": spec.name, **result}


def run_mixer(spec: MixerSpec, args: argparse.Namespace) -> dict[str, object]:
    """One mixer in a fresh process (``--worker``); a timeout or a failure is a result with an ``error``."""
    cmd = [sys.executable, "-m", "benchmarks.step_decode", "--worker", spec.text, "--tokens", str(args.tokens),
           "--readings", *map(str, args.readings), "--warmup", str(args.warmup), "--d-model", str(args.d_model),
           "--heads", str(args.heads), "--threads", str(args.threads), "--seed", str(args.seed)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, cwd=REPO_ROOT)
    except subprocess.TimeoutExpired:
        return {"mixer": spec.label(), "name": spec.name, "error": f"timeout (> {args.timeout:g} s)"}
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"mixer": spec.label(), "name": spec.name, "error": f"failed: {last}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def table_rows(results: Sequence[dict], readings: Sequence[int], max_growth_bytes: float) -> list[list[str]]:
    """One row per mixer: state floats, whether ``state_size`` agrees, RSS at each reading, growth, tokens/s,
    verdict (a contrast row says so)."""
    rows = []
    for r in results:
        contrast = " (contrast: KV cache, not a target)" if r["name"] in CONTRAST else ""
        if "error" in r:
            rows.append([r["mixer"], *["-"] * (len(readings) + 4), str(r["error"]) + contrast])
            continue
        points = r["readings"]
        first, last = points[0], points[-1]
        floats = (f"{first['state_numel']:,}" if first["state_numel"] == last["state_numel"]
                  else f"{first['state_numel']:,} -> {last['state_numel']:,}")
        disagree = [p for p in points if p["state_numel"] != p["state_size"]]
        agrees = "yes" if not disagree else f"no (state_size({disagree[0]['tokens']}) = {disagree[0]['state_size']:,})"
        _, words = verdict(points, max_growth_bytes)
        rows.append([r["mixer"], floats, agrees, *[f"{p['rss_bytes'] / 2**20:,.1f}" for p in points],
                     f"{(last['rss_bytes'] - first['rss_bytes']) / 2**20:+.1f}", f"{r['tokens_per_s']:,.0f}",
                     words + contrast])
    return rows


def plot(results: Sequence[dict], max_growth_bytes: float):
    from seqmix.apps.files import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    colors, markers = [*plt.get_cmap("tab10").colors, *plt.get_cmap("Dark2").colors], "osD^v<>pPX*hH8d"
    for i, r in enumerate(x for x in results if "error" not in x):
        points = r["readings"]
        ax.plot([p["tokens"] for p in points], [(p["rss_bytes"] - points[0]["rss_bytes"]) / 2**20 for p in points],
                marker=markers[i % len(markers)], color=colors[i % len(colors)], linewidth=1,
                linestyle="--" if r["name"] in CONTRAST else "-", label=r["mixer"])
    ax.axhline(max_growth_bytes / 2**20, color="grey", linestyle=":", linewidth=1, label="flat threshold")
    ax.set_xscale("log", base=2)
    ticks = sorted({p["tokens"] for r in results if "error" not in r for p in r["readings"]})
    ax.set_xticks(ticks, [f"{t:,}" for t in ticks])
    ax.set_xlabel("tokens generated by step")
    ax.set_ylabel("RSS growth since the first reading (MB)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=6)
    ax.set_title("CPU step decoding, B=1, fp32: resident memory against tokens generated", fontsize=9)
    return fig


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mixers", nargs="+", metavar="MIXER",
                        help="registered mixers, each optionally name[key=value,...] (default: issue 30's "
                             f"{list(ISSUE30_MIXERS)} and the contrast {list(CONTRAST)}; unregistered ones skipped)")
    parser.add_argument("--tokens", type=int, default=READINGS[-1], help="tokens generated per mixer")
    parser.add_argument("--readings", nargs="+", type=int,
                        help=f"token counts at which RSS and the state are read (default: {list(READINGS)})")
    parser.add_argument("--warmup", type=int, default=64, help="first tokens left out of tokens/s")
    parser.add_argument("--max-growth-mb", type=float, default=16.0,
                        help="MiB: the RSS growth from the first reading to the last that still counts as flat")
    parser.add_argument("--d-model", type=int, default=512)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per mixer process")
    parser.add_argument("--name", default="step_decode", help="results file stem")
    parser.add_argument("--worker", metavar="MIXER", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.readings = sorted(set(args.readings or [r for r in READINGS if r <= args.tokens]))
    if args.worker:
        print(json.dumps(worker(args.worker, args)))
        return 0

    import torch

    from seqmix.core import get_mixer_class

    torch.set_num_threads(args.threads)  # as in the workers, so the header states their thread count
    load = os.getloadavg()
    if not args.readings or args.readings[-1] > args.tokens or not 0 <= args.warmup < args.tokens:
        raise SystemExit(f"step_decode.py: need readings {args.readings} within 1..--tokens={args.tokens} and "
                         f"0 <= --warmup={args.warmup} < --tokens; give --readings up to {args.tokens}")
    try:
        specs, skipped = (([parse_spec(m) for m in args.mixers], []) if args.mixers
                          else default_specs([*ISSUE30_MIXERS, *CONTRAST]))
    except ValueError as error:
        raise SystemExit(f"step_decode.py: {error}") from None
    for note in skipped:
        print(f"step_decode.py: {note}")
    no_step = [s.name for s in specs if "causal_self" not in get_mixer_class(s.name).patterns]
    if no_step:
        raise SystemExit(f"step_decode.py: {no_step} have no causal_self pattern, so no step decoding")

    results = []
    for spec in specs:
        print(f"step_decode.py: {spec.label()} ...", flush=True)
        results.append(run_mixer(spec, args))
    max_growth = args.max_growth_mb * 2**20
    columns = ["mixer", "state floats", "= state_size()", *[f"RSS MB at {t}" for t in args.readings],
               f"RSS growth MB {args.readings[0]}->{args.readings[-1]}", "tokens/s", "verdict"]
    table = markdown_table(columns, table_rows(results, args.readings, max_growth))
    targets = [r for r in results if r["name"] not in CONTRAST]
    flat = [r["mixer"] for r in targets if "error" not in r and verdict(r["readings"], max_growth)[0]]
    summary = (f"Issue 30 target (memory flat from {args.readings[0]} to {args.readings[-1]} tokens): "
               f"{len(flat)} of {len(targets)} mixers flat"
               + (f"; not flat: {', '.join(r['mixer'] for r in targets if r['mixer'] not in flat)}"
                  if len(flat) < len(targets) else "") + ".\n")
    notes = [f"setting: causal self, B=1, D={args.d_model}, {args.heads} heads where the mixer takes n_heads, fp32, "
             f"eval mode, torch.no_grad(), torch threads {args.threads}, each mixer in a fresh process",
             f"inputs: a pool of {min(POOL, args.tokens)} random tokens (seed {args.seed}), cycled, made before "
             f"decoding; {args.tokens} tokens; tokens/s over the last {args.tokens - args.warmup} (after "
             f"{args.warmup} warm-up tokens)",
             "RSS: VmRSS of /proc/self/status in the worker; state floats: numel of every tensor in the state",
             f"flat: RSS growth from {args.readings[0]} to {args.readings[-1]} tokens <= {args.max_growth_mb:g} MiB "
             "and the same state floats at every reading",
             "load average (1, 5, 15 min) at the start: " + ", ".join(f"{x:.2f}" for x in load), *skipped]
    text = (header("Step decoding on the CPU: resident memory and tokens/s", seeds=[args.seed], notes=notes)
            + table + "\n" + summary + f"\n![RSS vs tokens]({args.name}.png)\n")
    write_result(args.name, text)
    common.atomic_write_text(common.RESULTS_DIR / f"{args.name}.json", json.dumps(
        {"machine": common.machine(), "command": common.command_line(), "commit": common.git_commit(),
         "date": common.utc_now(), "seed": args.seed, "load_average_start": load, "d_model": args.d_model,
         "heads": args.heads, "threads": args.threads, "tokens": args.tokens, "warmup": args.warmup,
         "max_growth_mb": args.max_growth_mb, "results": results}, indent=1) + "\n")
    save_figure(plot(results, max_growth), args.name)
    print(table)
    print(summary)
    print(f"wrote benchmarks/results/{args.name}.md, .json and .png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
