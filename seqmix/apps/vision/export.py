"""Small shipped checkpoints: a trained :class:`ImageClassifier` as an fp16 Lightning checkpoint
without optimizer state (``seqmix vision predict --ckpt`` loads it back into fp32). The backbone is
stored as LightningCLI stores it (class path and init args), so the file loads with
``weights_only=True``, also in ``seqmix vision test --ckpt_path``; it names its app (``seqmix_app``)
as every checkpoint of a seqmix trainer does."""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl

from seqmix.apps.files import save_checkpoint
from seqmix.apps.module import APP_KEY, app_of, cli_hyperparameters

MAX_BYTES = 5_000_000


def save_small_checkpoint(trainer: pl.Trainer, path: str | Path, max_bytes: int = MAX_BYTES, *,
                          trained: tuple[int, int] | None = None) -> int:
    """Write the trainer's model and datamodule to ``path`` atomically, weights in fp16, as plain data (the
    hyper-parameters in LightningCLI's form, :func:`seqmix.apps.module.cli_hyperparameters`; the app named);
    returns the size in bytes, or raises (writing nothing) when it would exceed ``max_bytes``. ``trained``:
    ``(epoch, global_step)`` of the training, when ``trainer`` is not the one that trained the
    weights (e.g. an evaluation trainer after a data-parallel fit)."""
    model, data = trainer.lightning_module, trainer.datamodule
    if data is None or type(data).__name__ != "ImageDataModule":
        raise ValueError("save_small_checkpoint: the trainer has no ImageDataModule attached (normalisation and "
                         "class names); fit with datamodule=ImageDataModule(...)")
    epoch, step = trained if trained is not None else (trainer.current_epoch, trainer.global_step)
    state = trainer.strategy.lightning_module_state_dict()
    checkpoint = {"state_dict": {k: v.half() if v.is_floating_point() else v for k, v in state.items()},
                  "hyper_parameters": cli_hyperparameters(dict(model.hparams)), "hparams_name": model._hparams_name,
                  "ImageDataModule": data.state_dict(), "pytorch-lightning_version": pl.__version__,
                  "epoch": epoch, "global_step": step, APP_KEY: app_of(type(model))}
    return save_checkpoint(checkpoint, path, max_bytes=max_bytes,
                           too_big="use a smaller model (fewer channels or blocks)")
