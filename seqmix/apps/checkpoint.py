"""Reading a seqmix app's checkpoint as data, without Lightning: the one check every loader goes through.

:func:`read_checkpoint` / :func:`checked_checkpoint` load with ``weights_only=True`` (a checkpoint is data, never
code) and refuse another app's checkpoint by name. This module imports only torch, so a command that reads a
checkpoint (``seqmix summarization predict``) starts without importing Lightning; :mod:`seqmix.apps.module`
re-exports every name here.
"""

from __future__ import annotations

import io
import pickle
import re
from pathlib import Path
from typing import Sequence

import torch

from seqmix.apps.files import input_file

APP_KEY = "seqmix_app"  # every checkpoint a seqmix app's trainer saves names its app under this key


def checkpoint_error(problem: str, path: Path, hint: str) -> ValueError:
    return ValueError(f"checkpoint {path}: {problem}; {hint}")


def class_paths(value: object) -> list[str]:
    """Every ``class_path`` string in a hyper-parameter tree (LightningCLI's form)."""
    if isinstance(value, dict):
        own = [value["class_path"]] if isinstance(value.get("class_path"), str) else []
        return own + [c for v in value.values() for c in class_paths(v)]
    if isinstance(value, (list, tuple)):
        return [c for v in value for c in class_paths(v)]
    return []


def read_checkpoint(ckpt: str | Path, app: str, hint: str, *, needs: Sequence[str] = ()) -> dict:
    """The plain-data dictionary of a checkpoint that ``seqmix <app> fit`` wrote, read with
    ``weights_only=True``: a checkpoint is data, never code. One-line errors (``ValueError`` /
    ``FileNotFoundError``, each ending with ``hint``: how to get a good checkpoint) for a missing file or
    a directory, a truncated or foreign file, pickled objects that are not plain data (refused, never
    run), another app's checkpoint (named), a class outside seqmix in its hyper-parameters, or a
    missing key of ``needs``."""
    path = input_file(ckpt, "checkpoint", hint)
    return checked_checkpoint(path.read_bytes(), path, app, hint, needs)


def checked_checkpoint(data: bytes, path: Path, app: str, hint: str, needs: Sequence[str]) -> dict:
    """:func:`read_checkpoint` of the bytes ``data`` read from ``path``."""
    try:
        checkpoint = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as err:  # torch.load raises RuntimeError, EOFError, KeyError, ... for a non-checkpoint file
        refused = re.search(r"GLOBAL (\S+)", str(err)) if isinstance(err, pickle.UnpicklingError) else None
        if refused is None:
            raise checkpoint_error("is not a torch checkpoint file (truncated, or another kind of file)", path,
                                   hint) from None
        raise checkpoint_error(f"holds pickled Python objects ({refused.group(1)}), not only tensors and plain data: "
                               "refused unread (checkpoints are loaded as data, never as code)", path, hint) from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise checkpoint_error("is a torch file but not a Lightning checkpoint (no state_dict)", path, hint)
    written_by = checkpoint.get(APP_KEY)
    if written_by is None:
        raise checkpoint_error(f"names no seqmix app (no {APP_KEY!r}): it was not written by `seqmix {app} fit`, or "
                               "by a seqmix older than this check (python scripts/tag_checkpoint.py --app "
                               f"{app} <file> adds the name to a checkpoint you trust)", path, hint)
    if written_by != app:
        raise checkpoint_error(f"this is a checkpoint of `seqmix {written_by} fit`, not {app}", path, hint)
    foreign = [c for c in class_paths(checkpoint.get("hyper_parameters", {})) if not c.startswith("seqmix.")]
    if foreign:
        raise checkpoint_error(f"its hyper-parameters name classes outside seqmix ({foreign}): refused", path, hint)
    lacking = [k for k in needs if k not in checkpoint]
    if lacking:
        raise checkpoint_error(f"has no {lacking}: it was not written by `seqmix {app} fit`", path, hint)
    return checkpoint
