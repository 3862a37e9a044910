"""The image classifier: any backbone (BiFormer, MambaOut, ViT with any mixer) behind one
LightningModule. The backbone is injected as a factory ``(in_chans, num_classes, img_size) ->
nn.Module``, which LightningCLI builds from a config entry such as::

    backbone:
      class_path: seqmix.apps.vision.biformer.BiFormer
      init_args: {depths: [2, 2, 4, 2], dims: [32, 64, 128, 256], ...}

and the three sizes come from the datamodule (``link_arguments``), never typed twice.
AdamW, linear warm-up then cosine decay, label smoothing; logs ``{stage}/loss``, ``{stage}/acc``.
The cosine runs over the trainer's steps (``max_epochs``), or, with ``budget_minutes``, over the
training wall-clock time: a run stopped by a time budget (``trainer.max_time``) then ends its
schedule when the budget ends instead of at an epoch count it never reaches. Data-parallel runs
(``--trainer.strategy ddp --trainer.devices 2`` on the CPU cores) follow rank 0's clock.
``budget_clock="cpu"`` counts the budget in this process's CPU time instead (a fair budget on a shared
machine; whatever stops the run must count it too, as ``benchmarks/vision.py --budget-clock cpu`` does).
"""

from __future__ import annotations

import math
import time
from typing import Callable, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seqmix.apps.module import (StagedModule, TimeBudgetSchedule, lr_multiplier, stage_accuracies,
                                weight_decay_groups)


class ImageClassifier(TimeBudgetSchedule, StagedModule):
    def __init__(self, backbone: Callable[[int, int, int], nn.Module], in_chans: int = 1, n_classes: int = 10,
                 img_size: int = 28, lr: float = 2e-3, weight_decay: float = 0.05, warmup_steps: int = 200,
                 label_smoothing: float = 0.1, budget_minutes: float | None = None,
                 budget_clock: Literal["wall", "cpu"] = "wall"):
        super().__init__()
        if lr <= 0 or weight_decay < 0 or warmup_steps < 0 or not 0 <= label_smoothing < 1:
            raise ValueError(f"ImageClassifier: need lr > 0, weight_decay >= 0, warmup_steps >= 0, 0 <= "
                             f"label_smoothing < 1; got {lr}, {weight_decay}, {warmup_steps}, {label_smoothing}")
        if budget_minutes is not None and budget_minutes <= 0:
            raise ValueError(f"ImageClassifier: budget_minutes must be positive or None, got {budget_minutes}")
        if budget_clock not in ("wall", "cpu"):
            raise ValueError(f"ImageClassifier: budget_clock must be 'wall' or 'cpu' (this process's CPU time), "
                             f"got {budget_clock!r}")
        self.save_hyperparameters()  # the backbone factory is a picklable partial: checkpoints rebuild the model
        self.backbone = backbone(in_chans, n_classes, img_size)
        self.acc = stage_accuracies(n_classes)

    def budget_clock(self) -> float:
        """``budget_clock="cpu"``: the cosine follows this process's CPU time (a budget on a shared machine,
        where other jobs take the cores; the run's stop must count the same clock), else wall time."""
        return time.process_time() if self.hparams.get("budget_clock", "wall") == "cpu" else time.perf_counter()

    def forward(self, images: Tensor) -> Tensor:
        """``[B, C, S, S]`` normalised images -> logits ``[B, n_classes]``."""
        return self.backbone(images)

    def shared_step(self, batch: tuple[Tensor, Tensor], stage: str) -> Tensor:
        images, labels = batch
        logits = self(images)
        loss = F.cross_entropy(logits, labels, label_smoothing=self.hparams.label_smoothing if stage == "train" else 0)
        self.log_classification(stage, loss, logits, labels)
        return loss

    def predict_step(self, batch, batch_idx) -> Tensor:
        images = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self(images).softmax(-1)

    def configure_optimizers(self):
        # fused: one kernel over all the many small tensors instead of a loop per tensor (faster on the CPU,
        # and the 28 x 28 models' time-budgeted runs count every step)
        optimizer = torch.optim.AdamW(weight_decay_groups(self, self.hparams.weight_decay), lr=self.hparams.lr,
                                      fused=True)
        if self.hparams.budget_minutes is None:
            total = self.trainer.estimated_stepping_batches
            if not math.isfinite(total):
                raise ValueError("ImageClassifier: the cosine schedule needs a step count (trainer.max_epochs or "
                                 "max_steps) or a time budget (model.budget_minutes with trainer.max_time)")
            total = max(1, int(total))
            warmup = min(self.hparams.warmup_steps, total // 2)
        else:
            total, warmup = 0, self.hparams.warmup_steps  # the time budget decides the length

        def multiplier(step: int) -> float:
            return lr_multiplier(step, warmup_steps=warmup, progress=self.schedule_progress(step, warmup, total),
                                 schedule="cosine", final_ratio=0.01)

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, multiplier)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
