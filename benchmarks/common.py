"""Helpers every benchmark shares: what machine, which commit, when, how; atomic writes; timing.

Usage in a benchmark ``benchmarks/<name>.py``, run as ``python -m benchmarks.<name>`` from the repository root::

    from benchmarks.common import header, time_call, write_result

    timing = time_call(run, warmup=1, repeats=5)   # timing.median_s, timing.min_s, timing.times_s
    text = header("MQAR sweep", seeds=[0]) + table_markdown
    write_result("mqar", text)                     # -> benchmarks/results/mqar.md (atomic)

``header`` states the machine (CPU model, cores, torch threads, torch version), the git
commit, the date (UTC) and the exact command line, so every number in a results file
says where it came from. ``time_call`` / ``time_calls`` time a call (warm-up, repeats,
optional CUDA synchronisation); ``Stopwatch`` times one block, such as a whole training run.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import hashlib
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

BENCHMARKS_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCHMARKS_DIR / "results"
REPO_ROOT = BENCHMARKS_DIR.parent


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (``platform.processor()`` elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine() -> str:
    """One line: CPU model, cores, torch threads, torch/python versions, OS, load (others' jobs slow timings)."""
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    load = ", load average (1 min) {:.1f} when written".format(os.getloadavg()[0]) if hasattr(os, "getloadavg") else ""
    return (f"{cpu_model()}, {cores} cores available, torch threads {torch.get_num_threads()}, "
            f"{gpu}, torch {torch.__version__}, Python {platform.python_version()}, {platform.system()}{load}")


def git_commit() -> str:
    """``git rev-parse --short HEAD``, with ``+dirty`` when tracked files differ from it."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", "seqmix", "benchmarks/*.py"],
                               cwd=REPO_ROOT).returncode != 0
        return commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"


def file_digest(path: Path) -> str:
    """The first 12 hex digits of the sha256 of a file's bytes: which version of a config a result ran."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:12]


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def command_line(argv: Sequence[str] | None = None) -> str:
    """The command that produced the result, as one could retype it: ``python -m benchmarks.<name> ...`` for a
    benchmark module (``sys.argv[0]`` is then the module's file), ``python <script> ...`` for any other script."""
    argv = sys.argv if argv is None else argv
    if not argv:
        return "python"
    script = Path(argv[0])
    if script.suffix == ".py" and script.resolve().parent == BENCHMARKS_DIR:
        program = ["-m", f"benchmarks.{script.stem}"]
    elif script.suffix == ".py":
        program = [os.path.relpath(script, REPO_ROOT)]
    else:
        program = [argv[0]]
    return " ".join(["python", *map(shlex.quote, [*program, *argv[1:]])])


def header(title: str, *, seeds: Iterable[int] | None = None, notes: Sequence[str] = ()) -> str:
    """The markdown heading every results file starts with."""
    lines = [f"# {title}", "",
             f"- machine: {machine()}",
             f"- command: `{command_line()}`",
             f"- commit: `{git_commit()}`",
             f"- date: {utc_now()}"]
    if seeds is not None:
        lines.append(f"- seed(s): {', '.join(str(s) for s in seeds)}")
    lines += [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n\n"


def atomic_write_text(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file in the same folder, then rename."""
    from seqmix.apps.files import atomic_write

    return atomic_write(path, lambda tmp: tmp.write_text(text))


@contextlib.contextmanager
def results_lock(name: str):
    """Hold an exclusive lock on ``benchmarks/results/.<name>.lock`` (concurrent runs that read, extend
    and rewrite one shared results file each keep the others' rows)."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    with open(RESULTS_DIR / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def read_run_cache(path: Path) -> dict:
    """A benchmark's cached runs (``{key: record}``) from its JSON file; empty when there is none yet."""
    return json.loads(path.read_text()) if path.is_file() else {}


def history_path(path: Path) -> Path:
    """Where the records that ``add_cached_run`` replaced in the cache ``path`` are kept: ``<stem>.history.jsonl``."""
    return path.with_name(f"{path.stem}.history.jsonl")


def add_cached_run(path: Path, key: str, run: dict) -> dict:
    """Add one run record under ``key`` to the JSON cache ``path`` under a file lock (several invocations may
    run side by side); returns every cached run. A different record already under ``key`` (a rerun) is not lost:
    it is appended, with its key and the time it was replaced, to :func:`history_path` before the cache is
    rewritten."""
    with results_lock(path.name):
        runs = read_run_cache(path)
        if key in runs and runs[key] != run:
            history = history_path(path)
            entry = json.dumps({"key": key, "replaced_at": utc_now(), "record": runs[key]}, sort_keys=True)
            previous = history.read_text() if history.is_file() else ""
            atomic_write_text(history, previous + entry + "\n")
        runs[key] = run
        atomic_write_text(path, json.dumps(runs, indent=1, sort_keys=True) + "\n")
    return runs


def write_result(name: str, text: str) -> Path:
    """``benchmarks/results/<name>.md``, written atomically; returns the path."""
    return atomic_write_text(RESULTS_DIR / f"{name}.md", text)


def save_figure(fig, name: str, *, dpi: int = 130) -> Path:
    """``benchmarks/results/<name>.png`` (matplotlib figure), written atomically; the figure is closed."""
    from seqmix.apps.files import save_figure as save

    return save(fig, RESULTS_DIR / f"{name}.png", dpi=dpi)


def markdown_table(columns: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A GitHub markdown table from column names and rows of cells (cells are ``str()``-ed)."""
    out = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out) + "\n"


# ------------------------------------------------------------------ timing
@dataclass
class Timing:
    """Seconds of each timed repeat (``times_s``) and of each warm-up call (``warmup_s``)."""

    times_s: list[float]
    warmup_s: list[float] = field(default_factory=list)

    @property
    def median_s(self) -> float:
        return statistics.median(self.times_s)

    @property
    def min_s(self) -> float:
        return min(self.times_s)

    @property
    def mean_s(self) -> float:
        return statistics.fmean(self.times_s)


def time_calls(calls: Mapping[str, Callable[[], object]], *, warmup: int = 1, repeats: int = 3,
               min_repeat_s: float = 0.0, before: Callable[[], object] | None = None,
               cuda_sync: bool = False) -> dict[str, Timing]:
    """Time each call of ``calls`` ``repeats`` times, the calls interleaved round-robin (machine load hits
    them alike), after ``warmup`` untimed-for-the-figure calls each (their times are kept in ``warmup_s``).

    One repeat calls a function once, or again and again until ``min_repeat_s`` seconds have passed, and
    records the seconds per call. ``before`` runs before each call, off the clock (e.g. clearing gradients);
    ``cuda_sync`` waits for the GPU before reading the clock, so that queued kernels are counted."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"time_calls: repeats={repeats} and warmup={warmup}; need repeats >= 1 and warmup >= 0")
    if cuda_sync:
        import torch

    def once(fn: Callable[[], object]) -> float:
        calls_made, elapsed = 0, 0.0
        while calls_made == 0 or elapsed < min_repeat_s:
            if before is not None:
                before()
            if cuda_sync:
                torch.cuda.synchronize()
            start = time.perf_counter()
            fn()
            if cuda_sync:
                torch.cuda.synchronize()
            elapsed += time.perf_counter() - start
            calls_made += 1
        return elapsed / calls_made

    timings = {name: Timing(times_s=[], warmup_s=[once(fn) for _ in range(warmup)]) for name, fn in calls.items()}
    for _ in range(repeats):
        for name, fn in calls.items():
            timings[name].times_s.append(once(fn))
    return timings


def time_call(fn: Callable[[], object], *, warmup: int = 1, repeats: int = 3, min_repeat_s: float = 0.0,
              before: Callable[[], object] | None = None, cuda_sync: bool = False) -> Timing:
    """``time_calls`` for one function."""
    return time_calls({"call": fn}, warmup=warmup, repeats=repeats, min_repeat_s=min_repeat_s, before=before,
                      cuda_sync=cuda_sync)["call"]


class Stopwatch:
    """Wall and process-CPU seconds of a block (all threads of this process; not of processes it spawns)::

        with Stopwatch() as watch:
            trainer.fit(model, data)
        watch.wall_s, watch.cpu_s

    ``start()`` / ``stop()`` do the same where the block's two ends are two callbacks."""

    def __init__(self) -> None:
        self.wall_s = self.cpu_s = 0.0
        self._start: tuple[float, float] | None = None

    def start(self) -> "Stopwatch":
        self._start = (time.perf_counter(), time.process_time())
        return self

    def stop(self) -> "Stopwatch":
        if self._start is None:
            raise ValueError("Stopwatch.stop() before start(); call start() (or use `with Stopwatch()`) first")
        self.wall_s = time.perf_counter() - self._start[0]
        self.cpu_s = time.process_time() - self._start[1]
        return self

    def __enter__(self) -> "Stopwatch":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
