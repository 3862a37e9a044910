"""The files a command reads and writes.

Data: :func:`data_root` is where every app looks for its data by default (``$SEQMIX_DATA``, else
``./data``); :func:`writable_data_root` is the variant for data an app downloads or caches.
Inputs: :func:`input_file` checks a path the user gave (missing, or a directory) with one line;
:func:`refuse_non_finite` refuses inf / NaN values read from a file, naming file, column and row.
Outputs: :func:`check_outputs` refuses, before anything is written, an output path that is an input
or another output (or a directory); files are written whole or not at all (:func:`atomic_write`: into
a temporary file beside the target, then renamed onto it), so a crash or an error never leaves a
half-written file under the target's name.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np


def data_root(subfolder: str = "") -> Path:
    """The default data folder of every app: ``$SEQMIX_DATA`` when set, else ``./data``; an app's own files
    lie in its ``subfolder`` of it (``data_root("fashion-mnist")``)."""
    return Path(os.environ.get("SEQMIX_DATA") or "data") / subfolder


def writable_data_root(subfolder: str) -> Path:
    """Where an app downloads and caches data by default: ``data_root(subfolder)`` when ``$SEQMIX_DATA`` is
    writable, else ``./data/<subfolder>`` (``$SEQMIX_DATA`` is often a shared, read-only folder)."""
    root = data_root()
    return (root if os.access(root, os.W_OK) else Path("data")) / subfolder


def input_file(path: str | Path, what: str, fix: str = "") -> Path:
    """``path`` as a :class:`Path` if it is a file; else a one-line ``FileNotFoundError`` (missing) or
    ``ValueError`` (a directory), naming ``what`` (e.g. ``"--csv"``) and ending with ``fix`` when given."""
    path = Path(path)
    tail = f"; {fix}" if fix else ""
    if path.is_dir():
        raise ValueError(f"{what} {path} is a directory, not a file{tail}")
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist{tail}")
    return path


Named = Sequence[tuple[str, "str | Path | None"]]  # (how the command line names it, e.g. "--out"; its path)


def check_outputs(outputs: Named, inputs: Named) -> None:
    """Refuse (``ValueError``, before anything is written) an output that is one of the ``inputs``, the same
    file as another output, or a directory. Each is ``(name, path)``, the name as the command line spells
    it (``"--out"``); a ``None`` path is skipped. Paths are compared resolved (``a/../d.csv`` is ``d.csv``)
    and as files (a link to an input is that input)."""
    def same(a: Path, b: Path) -> bool:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and os.path.samefile(a, b))

    given_inputs = [(name, Path(p)) for name, p in inputs if p is not None]
    seen: list[tuple[str, Path]] = []
    for name, out in ((n, Path(p)) for n, p in outputs if p is not None):
        if out.is_dir():
            raise ValueError(f"{name} {out} is a directory; name a file to write")
        for in_name, src in given_inputs:
            if same(out, src):
                raise ValueError(f"{name} {out} is the input {in_name} {src}: writing it would destroy the input; "
                                 "name another output file")
        for other_name, other in seen:
            if same(out, other):
                raise ValueError(f"{name} {out} and {other_name} {other} are the same file: one would overwrite "
                                 "the other; name two different files")
        seen.append((name, out))


def refuse_non_finite(values: np.ndarray, columns: Sequence[str], source: str, fix: str = "", *,
                      include_nan: bool = True) -> None:
    """``values [rows, columns]`` read from ``source``: a ``ValueError`` naming the first non-finite value
    (inf, -inf, or NaN unless ``include_nan=False``, for a reader that fills NaN gaps on request) by
    column and 0-based data row, with how many there are; ``fix`` (what to do) ends the message."""
    bad = np.isinf(values) | (np.isnan(values) if include_nan else False)
    if bad.any():
        row, col = (int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"{source}: column {columns[col]!r} row {row} (0-based data row) is {values[row, col]}, "
                         f"not a finite number ({int(bad.sum())} such values in all); "
                         + (fix or "a model fed one returns non-finite outputs: fix or remove those rows"))


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """``write(tmp)`` then rename ``tmp`` onto ``path``; returns ``path``. ``tmp`` keeps the suffix of
    ``path`` (matplotlib and numpy choose the format by it); it is removed if ``write`` raises."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def save_checkpoint(checkpoint: dict, path: str | Path, *, max_bytes: int | None = None, too_big: str = "") -> int:
    """``torch.save(checkpoint)`` to ``path`` atomically; its size in bytes. Over ``max_bytes`` it raises
    (writing nothing) with ``too_big`` as the fix."""
    import torch

    def write(tmp: Path) -> None:
        torch.save(checkpoint, tmp)
        size = tmp.stat().st_size
        if max_bytes is not None and size > max_bytes:
            raise ValueError(f"{Path(path).name}: the checkpoint would be {size / 1e6:.2f} MB > "
                             f"{max_bytes / 1e6:g} MB; {too_big}")

    return atomic_write(path, write).stat().st_size


def pyplot():
    """``matplotlib.pyplot`` on the non-interactive Agg backend (files only, no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | Path, *, dpi: int = 120) -> Path:
    """A matplotlib figure to ``path`` (the format from its suffix), atomically; the figure is closed
    afterwards, also when writing fails. Returns ``path``."""
    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=dpi, bbox_inches="tight"))
    finally:
        pyplot().close(fig)
