"""What every app's LightningModule shares: one ``shared_step`` for train / val / test, and
the loss / accuracy logging of the classifying apps."""

from __future__ import annotations

import atexit
import functools
import io
import math
import time
from pathlib import Path, PurePath
from typing import Any, Literal, Sequence

import pytorch_lightning as pl
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

# the checkpoint check, re-exported here (it imports no Lightning: seqmix.apps.checkpoint)
from seqmix.apps.checkpoint import (APP_KEY, checked_checkpoint, checkpoint_error, class_paths,  # noqa: F401
                                   read_checkpoint)
from seqmix.apps.files import input_file

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



class TimeBudgetSchedule:
    """Mixed into an app's LightningModule whose decay may end with a wall-clock budget
    (``hparams.budget_minutes``, None: the decay spans the steps after warm-up): :meth:`schedule_progress`
    is the fraction of the decay done, from rank 0's clock under data parallelism so every rank steps the same
    learning rate."""

    fit_start: float | None = None  # budget_clock() when training started

    def budget_clock(self) -> float:
        """The clock the budget counts: wall time here; an app may count its process's CPU time instead."""
        return time.perf_counter()

    def on_train_start(self) -> None:
        self.fit_start = self.budget_clock()

    def schedule_progress(self, step: int, warmup: int, total: int) -> float:
        """Fraction of the cosine done: of the steps after warm-up, or of ``budget_minutes`` of training."""
        if self.hparams.budget_minutes is None:
            return step_progress(step, warmup, total)
        elapsed = 0.0 if self.fit_start is None else self.budget_clock() - self.fit_start
        if self._trainer is not None and self.trainer.world_size > 1:
            elapsed = self.trainer.strategy.broadcast(elapsed)  # rank 0's clock: every rank steps the same lr
        return elapsed / (60 * self.hparams.budget_minutes)

def weight_decay_groups(module: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW parameter groups of the apps that group: ``weight_decay`` on matrices and kernels (``dim >= 2``)
    except position embeddings (a parameter whose own name contains ``pos``); none on biases, norm gains and
    other vectors. Parameters keep ``named_parameters`` order within each group."""
    decay: list[nn.Parameter] = []
    other: list[nn.Parameter] = []
    for name, p in module.named_parameters():
        (decay if p.dim() >= 2 and "pos" not in name.rsplit(".", 1)[-1] else other).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": other, "weight_decay": 0.0}]


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
    ``"train" | "val" | "test"`` and log keys like ``f"{stage}/loss"``. Every checkpoint its trainer
    saves, weights-only ones included, is plain data that names its app (:meth:`on_save_checkpoint`);
    a subclass that overrides that hook calls ``super().on_save_checkpoint(checkpoint)``.
    """

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """``checkpoint[APP_KEY]`` names the app (a loader refuses another app's checkpoint by name) and the
        hyper-parameters are in LightningCLI's form (:func:`cli_hyperparameters`: a directly built module's
        ``partial`` backbone is no pickled object). A module hook, not a callback: Lightning calls it for
        every save, ``save_weights_only`` ones too."""
        checkpoint[APP_KEY] = app_of(type(self))
        if "hyper_parameters" in checkpoint:
            checkpoint["hyper_parameters"] = cli_hyperparameters(checkpoint["hyper_parameters"])

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


def app_of(module_cls: type) -> str:
    """The app a LightningModule class belongs to: ``<app>`` of the first class in its MRO defined in
    ``seqmix.apps.<app>.*`` (``seqmix.apps.vision.model.ImageClassifier`` -> ``"vision"``)."""
    for klass in module_cls.__mro__:
        parts = klass.__module__.split(".")
        if parts[:2] == ["seqmix", "apps"] and len(parts) > 3:
            return parts[2]
    raise ValueError(f"{module_cls.__qualname__} is not a class of a seqmix app (seqmix.apps.<app>.*); its "
                     "checkpoints could not name their app: subclass the app's LightningModule")


INSTANTIATOR = "pytorch_lightning.cli.instantiate_module"  # what LightningCLI records, so loading rebuilds the same way


def cli_form(value: object) -> object:
    """A hyper-parameter as LightningCLI writes it: ``partial(Class, **kw)`` -> ``{"class_path", "init_args"}``
    (recursively; tuples become lists, paths strings). Raises on a callable it cannot name (a lambda, a
    partial with positional arguments): a checkpoint must be rebuildable from plain data."""
    if isinstance(value, functools.partial):
        if value.args or not isinstance(value.func, type):
            raise ValueError(f"cannot store {value!r} as class_path/init_args: give the class and keyword "
                             "arguments only (partial(Class, key=value, ...))")
        return {"class_path": f"{value.func.__module__}.{value.func.__qualname__}",
                "init_args": {k: cli_form(v) for k, v in value.keywords.items()}}
    if isinstance(value, (tuple, list)):
        return [cli_form(v) for v in value]
    if isinstance(value, dict):
        return {k: cli_form(v) for k, v in value.items()}
    if isinstance(value, PurePath):
        return str(value)
    if callable(value):
        raise ValueError(f"cannot store the callable {value!r} in a checkpoint as plain data; pass partial(Class, ...)")
    return value


def cli_hyperparameters(hparams: dict) -> dict:
    """``hyper_parameters`` of a directly built module in LightningCLI's form (see :func:`cli_form`), so
    ``load_from_checkpoint(..., weights_only=True)`` rebuilds it from plain data."""
    if "_instantiator" in hparams:  # built by LightningCLI: already in that form
        return dict(hparams)
    return {**{k: cli_form(v) for k, v in hparams.items()}, "_instantiator": INSTANTIATOR}


def load_trained(module_cls: type[pl.LightningModule], ckpt: str | Path, app: str, hint: str, *,
                 needs: Sequence[str] = ()) -> tuple[pl.LightningModule, dict]:
    """A trained module of app ``app`` in eval mode and the checkpoint's plain data: what the datamodule
    saved (its ``state_dict`` under its class name, ``datamodule_hyper_parameters``) and the rest.

    The one checkpoint loader of every app: :func:`read_checkpoint` (``weights_only=True``; another
    app's checkpoint refused by name; ``needs``: keys the caller reads), then the module rebuilt from its
    hyper-parameters, also read with ``weights_only=True``. ``hint``: how to get a checkpoint, for errors.
    """
    path = input_file(ckpt, "checkpoint", hint)
    data = path.read_bytes()  # checked, then rebuilt from: the same bytes, even if the file changes meanwhile
    checkpoint = checked_checkpoint(data, path, app, hint, needs)
    model = module_cls.load_from_checkpoint(io.BytesIO(data), map_location="cpu", weights_only=True)
    return model.eval(), checkpoint
