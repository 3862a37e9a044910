"""Small shipped checkpoints: a trained :class:`ImageClassifier` as an fp16 Lightning checkpoint
without optimizer state (``seqmix vision predict --ckpt`` loads it back into fp32)."""

from __future__ import annotations

import os
from pathlib import Path

import pytorch_lightning as pl
import torch

# what ``ImageClassifier.load_from_checkpoint`` and ``predict`` need (the data description too)
KEEP = ("state_dict", "hyper_parameters", "hparams_name", "datamodule_hyper_parameters",
        "datamodule_hparams_name", "ImageDataModule", "pytorch-lightning_version", "epoch", "global_step")
MAX_BYTES = 5_000_000


def save_small_checkpoint(trainer: pl.Trainer, path: str | Path, max_bytes: int = MAX_BYTES, *,
                          trained: tuple[int, int] | None = None) -> int:
    """Write the trainer's model and datamodule to ``path`` atomically, weights in fp16; returns the
    size in bytes, or raises (writing nothing) when it would exceed ``max_bytes``. ``trained``:
    ``(epoch, global_step)`` of the training, when ``trainer`` is not the one that trained the
    weights (e.g. an evaluation trainer after a data-parallel fit)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    full = path.with_name(f".{path.name}.{os.getpid()}.full.tmp")
    small = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        trainer.save_checkpoint(full, weights_only=True)
        checkpoint = torch.load(full, map_location="cpu", weights_only=False)
        kept = {k: v for k, v in checkpoint.items() if k in KEEP}
        if trained is not None:
            kept["epoch"], kept["global_step"] = trained
        if "ImageDataModule" not in kept:
            raise ValueError("save_small_checkpoint: the trainer has no ImageDataModule attached (normalisation and "
                             "class names); fit with datamodule=ImageDataModule(...)")
        kept["state_dict"] = {k: v.half() if v.is_floating_point() else v for k, v in kept["state_dict"].items()}
        torch.save(kept, small)
        size = small.stat().st_size
        if size > max_bytes:
            raise ValueError(f"{path.name}: the checkpoint would be {size / 1e6:.2f} MB > {max_bytes / 1e6:g} MB; "
                             "use a smaller model (fewer channels or blocks)")
        os.replace(small, path)
        return size
    finally:
        full.unlink(missing_ok=True)
        small.unlink(missing_ok=True)
