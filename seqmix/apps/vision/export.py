"""Small shipped checkpoints: a trained :class:`ImageClassifier` as an fp16 Lightning checkpoint
without optimizer state (``seqmix vision predict --ckpt`` loads it back into fp32). The backbone is
stored as LightningCLI stores it (class path and init args), so the file loads with
``weights_only=True``, also in ``seqmix vision test --ckpt_path``; it names its app (``seqmix_app``)
as every checkpoint of a seqmix trainer does."""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path

import pytorch_lightning as pl
import torch

from seqmix.apps.files import save_checkpoint
from seqmix.apps.module import APP_KEY, app_of

# what ``ImageClassifier.load_from_checkpoint`` and ``predict`` need (the data description too)
KEEP = ("state_dict", "hyper_parameters", "hparams_name", "datamodule_hyper_parameters",
        "datamodule_hparams_name", "ImageDataModule", "pytorch-lightning_version", "epoch", "global_step")
MAX_BYTES = 5_000_000
INSTANTIATOR = "pytorch_lightning.cli.instantiate_module"  # what LightningCLI records, so loading rebuilds the same way


def cli_form(value: object) -> object:
    """A hyper-parameter as LightningCLI writes it: ``partial(Class, **kw)`` -> ``{"class_path", "init_args"}``
    (recursively; tuples become lists). Raises on a callable it cannot name (a lambda, a partial with
    positional arguments): a checkpoint must be rebuildable from plain data."""
    if isinstance(value, partial):
        if value.args or not isinstance(value.func, type):
            raise ValueError(f"cannot store {value!r} as class_path/init_args: give the class and keyword "
                             "arguments only (partial(Class, key=value, ...))")
        return {"class_path": f"{value.func.__module__}.{value.func.__qualname__}",
                "init_args": {k: cli_form(v) for k, v in value.keywords.items()}}
    if isinstance(value, (tuple, list)):
        return [cli_form(v) for v in value]
    if isinstance(value, dict):
        return {k: cli_form(v) for k, v in value.items()}
    if callable(value):
        raise ValueError(f"cannot store the callable {value!r} in a checkpoint as plain data; pass partial(Class, ...)")
    return value


def cli_hyperparameters(hparams: dict) -> dict:
    """``hyper_parameters`` of a directly built module in LightningCLI's form (see :func:`cli_form`)."""
    if "_instantiator" in hparams:  # built by LightningCLI: already in that form
        return dict(hparams)
    return {**{k: cli_form(v) for k, v in hparams.items()}, "_instantiator": INSTANTIATOR}


def save_small_checkpoint(trainer: pl.Trainer, path: str | Path, max_bytes: int = MAX_BYTES, *,
                          trained: tuple[int, int] | None = None) -> int:
    """Write the trainer's model and datamodule to ``path`` atomically, weights in fp16; returns the
    size in bytes, or raises (writing nothing) when it would exceed ``max_bytes``. ``trained``:
    ``(epoch, global_step)`` of the training, when ``trainer`` is not the one that trained the
    weights (e.g. an evaluation trainer after a data-parallel fit)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    full = path.with_name(f".{path.name}.{os.getpid()}.full.tmp")
    try:
        trainer.save_checkpoint(full, weights_only=True)
        checkpoint = torch.load(full, map_location="cpu", weights_only=True)
    finally:
        full.unlink(missing_ok=True)
    # a weights-only save skips the callbacks' on_save_checkpoint, AppTag's among them: name the app here
    kept = {**{k: v for k, v in checkpoint.items() if k in KEEP}, APP_KEY: app_of(type(trainer.lightning_module))}
    if trained is not None:
        kept["epoch"], kept["global_step"] = trained
    if "ImageDataModule" not in kept:
        raise ValueError("save_small_checkpoint: the trainer has no ImageDataModule attached (normalisation and "
                         "class names); fit with datamodule=ImageDataModule(...)")
    kept["state_dict"] = {k: v.half() if v.is_floating_point() else v for k, v in kept["state_dict"].items()}
    kept["hyper_parameters"] = cli_hyperparameters(kept["hyper_parameters"])
    return save_checkpoint(kept, path, max_bytes=max_bytes, too_big="use a smaller model (fewer channels or blocks)")

