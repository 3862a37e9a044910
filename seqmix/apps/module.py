"""What every app's LightningModule shares: one ``shared_step`` for train / val / test, and
the loss / accuracy logging of the classifying apps."""

from __future__ import annotations

import atexit
import functools
import math
from pathlib import Path
from typing import Any, Literal

import pytorch_lightning as pl
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

STAGES = ("train", "val", "test")


def lr_multiplier(step: int, *, warmup_steps: int, progress: float,
                  schedule: Literal["constant", "cosine", "linear"], final_ratio: float) -> float:
    """The learning-rate factor of every app: linear warm-up to 1 over ``warmup_steps``, then
    constant, or a cosine / linear decay to ``final_ratio`` as ``progress`` (the fraction of the
    decay done: of the steps after warm-up, or of a time budget) goes from 0 to 1."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    done = min(1.0, max(0.0, progress))
    shape = 0.5 * (1.0 + math.cos(math.pi * done)) if schedule == "cosine" else 1.0 - done
    return final_ratio + (1.0 - final_ratio) * shape


def step_progress(step: int, warmup_steps: int, total_steps: int) -> float:
    """Fraction of the decay done at ``step`` when it spans the steps after warm-up."""
    return (step - warmup_steps) / max(1, total_steps - warmup_steps)


def stage_accuracies(num_classes: int) -> nn.ModuleDict:
    """One micro-averaged accuracy per stage (``"train_acc"``, ...): metric state must not mix stages."""
    return nn.ModuleDict({f"{s}_acc": MulticlassAccuracy(num_classes=num_classes, average="micro") for s in STAGES})


def _end_process_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


@functools.cache
def end_process_group_at_exit() -> None:
    """Register (once per process) the end of the data-parallel process group at interpreter exit.

    Lightning does this only for NCCL; a gloo group left to interpreter finalisation can abort its
    rank after a run that succeeded ("terminate called without an active exception", exit status
    -6). atexit handlers run while the interpreter is whole, in ``ddp`` processes and ``ddp_spawn``
    workers alike."""
    atexit.register(_end_process_group)


class StagedModule(pl.LightningModule):
    """A LightningModule whose training, validation and test steps are one ``shared_step``.

    Subclasses implement ``shared_step(batch, stage)`` with ``stage`` in
    ``"train" | "val" | "test"`` and log keys like ``f"{stage}/loss"``.
    """

    def shared_step(self, batch: Any, stage: str) -> Tensor:
        raise NotImplementedError

    def setup(self, stage: str) -> None:
        if dist.is_available() and dist.is_initialized():  # the strategy started it before this hook
            end_process_group_at_exit()

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self.shared_step(batch, "train")

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.shared_step(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self.shared_step(batch, "test")

    def log_classification(self, stage: str, loss: Tensor, logits: Tensor, targets: Tensor) -> None:
        """Log ``{stage}/loss`` (per step in training, per epoch otherwise) and ``{stage}/acc`` (per epoch).

        ``logits: [N, C]``, ``targets: [N]``; needs ``self.acc = stage_accuracies(C)``.
        """
        acc = self.acc[f"{stage}_acc"]
        acc(logits.argmax(-1), targets)
        on_step, n = stage == "train", len(targets)
        # epoch means are averaged over data-parallel ranks (the accuracy, a torchmetrics Metric, syncs itself)
        self.log(f"{stage}/loss", loss, on_step=on_step, on_epoch=not on_step, prog_bar=True, batch_size=n,
                 sync_dist=not on_step)
        self.log(f"{stage}/acc", acc, on_step=False, on_epoch=True, prog_bar=stage != "train", batch_size=n)


def load_trained(module_cls: type[pl.LightningModule], ckpt: str | Path, datamodule_state: str,
                 train_hint: str) -> tuple[pl.LightningModule, dict]:
    """A trained module in eval mode and the data description its datamodule saved in the checkpoint.

    ``datamodule_state``: the datamodule's class name (Lightning stores its ``state_dict`` under it);
    ``train_hint``: how to get a checkpoint, for the error. Checkpoints hold hyper-parameters and are
    unpickled (``weights_only=False``): load only checkpoints you trust.
    """
    path = Path(ckpt)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist; {train_hint}")
    info = torch.load(path, map_location="cpu", weights_only=False).get(datamodule_state)
    if info is None:
        raise ValueError(f"{path}: has no {datamodule_state} state (the data description); it was not written "
                         f"by this app's `fit`: {train_hint}")
    model = module_cls.load_from_checkpoint(path, map_location="cpu", weights_only=False)
    return model.eval(), info
