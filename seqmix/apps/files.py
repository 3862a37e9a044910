"""Output files are written whole or not at all: into a temporary file beside the target, then
renamed onto it, so a crash or an error never leaves a half-written file under the target's name."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable


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
