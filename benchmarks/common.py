"""Helpers every benchmark script shares: what machine, which commit, when, how; atomic writes.

Usage in a script ``benchmarks/<name>.py``::

    from common import header, write_result   # benchmarks/ is on sys.path when run as a script

    text = header("MQAR sweep", seeds=[0]) + table_markdown
    write_result("mqar", text)                # -> benchmarks/results/mqar.md (atomic)

``header`` states the machine (CPU model, cores, torch threads, torch version), the git
commit, the date (UTC) and the exact command line, so every number in a results file
says where it came from.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import hashlib
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Iterable, Sequence

RESULTS_DIR = Path(__file__).resolve().parent / "results"
REPO_ROOT = Path(__file__).resolve().parent.parent


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
    """The command that produced the result, as one could retype it."""
    argv = sys.argv if argv is None else argv
    script = os.path.relpath(argv[0], REPO_ROOT) if argv and argv[0].endswith(".py") else (argv[0] if argv else "")
    return " ".join(["python", shlex.quote(script), *map(shlex.quote, argv[1:])])


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
