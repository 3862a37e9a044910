"""What every app's LightningModule shares: one ``shared_step`` for train / val / test."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
from torch import Tensor


class StagedModule(pl.LightningModule):
    """A LightningModule whose training, validation and test steps are one ``shared_step``.

    Subclasses implement ``shared_step(batch, stage)`` with ``stage`` in
    ``"train" | "val" | "test"`` and log keys like ``f"{stage}/loss"``.
    """

    def shared_step(self, batch: Any, stage: str) -> Tensor:
        raise NotImplementedError

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self.shared_step(batch, "train")

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.shared_step(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self.shared_step(batch, "test")
