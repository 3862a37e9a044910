"""How every app's ``fit`` runs: never over an earlier run, never past a non-finite loss, resumable after
an interruption, and exactly resumable from its checkpoints.

``seqmix.cli`` gives every LightningCLI trainer :func:`run_callbacks` and :class:`RunConfig`; docs/training.md
states the rules for the user.
"""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.cli import SaveConfigCallback
from pytorch_lightning.utilities.exceptions import SIGTERMException

LAST = ModelCheckpoint.CHECKPOINT_NAME_LAST + ModelCheckpoint.FILE_EXTENSION  # "last.ckpt"


class TrainingInterrupted(Exception):
    """``fit`` was stopped by SIGTERM or Ctrl-C after saving a resumable checkpoint at ``path``."""

    def __init__(self, path: Path, step: int):
        super().__init__(f"interrupted at step {step}; saved a resumable checkpoint {path}")
        self.path, self.step = path, step


def checkpoint_folder(trainer: pl.Trainer) -> Path:
    """Where this run's checkpoints go: the first ModelCheckpoint's folder, else ``<log dir>/checkpoints``."""
    callback = trainer.checkpoint_callback
    if isinstance(callback, ModelCheckpoint) and callback.dirpath:
        return Path(callback.dirpath)
    return Path(trainer.log_dir or trainer.default_root_dir) / "checkpoints"


class FreshCheckpoints(pl.Callback):
    """A new run never writes over an earlier run's checkpoints, and every run keeps a ``last.ckpt``.

    A ModelCheckpoint without a ``dirpath`` writes into the logger's new ``version_N`` folder, which is empty;
    a folder that already holds ``.ckpt`` files (an explicit ``dirpath``, or ``--trainer.logger false``) is
    refused, unless this run resumes from a checkpoint in that very folder (it continues that run).
    """

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        resumed = Path(trainer.ckpt_path).resolve().parent if trainer.ckpt_path else None
        for callback in trainer.checkpoint_callbacks:
            if not isinstance(callback, ModelCheckpoint):
                continue
            folder = Path(callback.dirpath)
            earlier = sorted(p.name for p in folder.glob("*.ckpt")) if folder.is_dir() else []
            if earlier and folder.resolve() != resumed:
                raise ValueError(
                    f"checkpoint folder {folder} holds an earlier run's checkpoints ({', '.join(earlier[:3])}); a new "
                    f"run never writes over them: resume that run with --ckpt_path {folder / earlier[0]}, move them "
                    f"away, or pick another folder with --trainer.callbacks.init_args.dirpath <folder>")
            # a callback whose top-1 "latest" file is named last.ckpt already keeps one
            keeps_last = callback.monitor is None and callback.filename == ModelCheckpoint.CHECKPOINT_NAME_LAST
            if callback.save_last is None and not keeps_last:
                callback.save_last = True


def last_checkpoint(trainer: pl.Trainer) -> str:
    """``--ckpt_path last``: the newest ``last.ckpt`` of this run name (its ``version_*`` folders and the
    explicit checkpoint folders), since Lightning looks only in the new run's own, empty, version folder."""
    folders = [Path(cb.dirpath) for cb in trainer.checkpoint_callbacks
               if isinstance(cb, ModelCheckpoint) and cb.dirpath]
    if trainer.logger is not None:
        folders += Path(trainer.log_dir).parent.glob("*/checkpoints")  # <save_dir>/<name>/version_*/checkpoints
    else:
        folders.append(Path(trainer.default_root_dir) / "checkpoints")
    found = [folder / LAST for folder in folders if (folder / LAST).is_file()]
    if not found:
        searched = ", ".join(sorted({str(f) for f in folders})) or str(Path(trainer.log_dir).parent)
        raise ValueError(f"--ckpt_path last: no {LAST} in {searched}; pass the checkpoint's path to --ckpt_path, "
                         f"or drop --ckpt_path to train from scratch")
    return str(max(found, key=lambda p: p.stat().st_mtime))


class FiniteTraining(pl.Callback):
    """Stops ``fit`` with a one-line ``ValueError`` naming the step at the first non-finite training loss,
    validation metric or weight, before any checkpoint of that state is written (checkpoint callbacks run last)."""

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor) and not torch.isfinite(loss.detach()).all():
            raise ValueError(f"training loss is {float(loss.detach().float().mean())} at step {trainer.global_step} "
                             f"(epoch {trainer.current_epoch}, batch {batch_idx}); fit stopped before saving that "
                             f"state: lower model.lr, set --trainer.gradient_clip_val 1.0, or check the data")

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        bad = {k: float(v) for k, v in trainer.callback_metrics.items() if not math.isfinite(float(v))}
        if bad:
            raise ValueError(f"validation metrics {bad} are not finite after step {trainer.global_step}; fit stopped "
                             f"before saving that state: lower model.lr or set --trainer.gradient_clip_val 1.0")

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        bad = [name for name, p in pl_module.named_parameters() if not torch.isfinite(p.detach()).all()]
        if bad:
            raise ValueError(f"weights {bad[:3]} are not finite at step {trainer.global_step}; no checkpoint written: "
                             f"lower model.lr or set --trainer.gradient_clip_val 1.0")


class InterruptCheckpoint(pl.Callback):
    """On SIGTERM or Ctrl-C during ``fit``: save ``last.ckpt`` in the run's checkpoint folder (the state after
    the last finished batch); ``seqmix.cli`` then ends the command non-zero with the line that resumes it."""

    def __init__(self) -> None:
        self.saved: TrainingInterrupted | None = None

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if trainer.state.fn != "fit" or not isinstance(exception, (KeyboardInterrupt, SIGTERMException)):
            return
        path = checkpoint_folder(trainer) / LAST
        trainer.save_checkpoint(path)  # weights_only unset: the whole training state, optimizer included
        self.saved = TrainingInterrupted(path, trainer.global_step)


class RandomState(pl.Callback):
    """Every global random state (python, numpy, torch, CUDA) in the checkpoint, restored on resume: with the
    datamodule's own generators (its ``state_dict``), a resumed fit draws what the uninterrupted one would."""

    def state_dict(self) -> dict[str, Any]:
        name, keys, pos, has_gauss, gauss = np.random.get_state()
        return {"python": random.getstate(), "numpy": (name, keys.tolist(), pos, has_gauss, gauss),
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else []}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        random.setstate(state_dict["python"])
        name, keys, pos, has_gauss, gauss = state_dict["numpy"]
        np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
        torch.set_rng_state(state_dict["torch"])
        if state_dict["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state_dict["cuda"])


class RunConfig(SaveConfigCallback):
    """LightningCLI's ``config.yaml`` in the run's log folder, refusing (one line) to replace an earlier run's."""

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if not self.already_saved:
            path = Path(trainer.log_dir) / self.config_filename
            if trainer.strategy.broadcast(path.is_file() if trainer.is_global_zero else False):
                raise ValueError(f"{path} holds an earlier run's config; a new run never replaces it: keep a "
                                 "logger (each run opens its own version_N folder) or pick another "
                                 "--trainer.default_root_dir")
        super().setup(trainer, pl_module, stage)


def run_callbacks() -> list[pl.Callback]:
    """The callbacks every app's trainer gets (beside its config's)."""
    return [FreshCheckpoints(), FiniteTraining(), InterruptCheckpoint(), RandomState()]
