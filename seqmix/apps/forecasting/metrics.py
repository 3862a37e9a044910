"""MSE and MAE on the scaled data (the papers' convention) and in original units."""

from __future__ import annotations

from torch import Tensor, nn
from torchmetrics import MeanAbsoluteError, MeanSquaredError


class ForecastMetrics(nn.Module):
    """Accumulates ``mse``, ``mae`` (scaled) and ``mse_orig``, ``mae_orig`` (original units) over an epoch."""

    def __init__(self):
        super().__init__()
        self.mse, self.mae = MeanSquaredError(), MeanAbsoluteError()
        self.mse_orig, self.mae_orig = MeanSquaredError(), MeanAbsoluteError()

    def update(self, pred: Tensor, target: Tensor, pred_orig: Tensor, target_orig: Tensor) -> None:
        if pred.shape != target.shape or pred_orig.shape != target_orig.shape:
            raise ValueError(f"forecast {tuple(pred.shape)} and target {tuple(target.shape)} shapes differ")
        pred, target = pred.reshape(-1), target.reshape(-1)  # [B * pred_len * n_out]
        pred_orig, target_orig = pred_orig.reshape(-1), target_orig.reshape(-1)  # [B * pred_len * n_out]
        self.mse.update(pred, target)
        self.mae.update(pred, target)
        self.mse_orig.update(pred_orig, target_orig)
        self.mae_orig.update(pred_orig, target_orig)

    def compute(self) -> dict[str, Tensor]:
        return {"mse": self.mse.compute(), "mae": self.mae.compute(),
                "mse_orig": self.mse_orig.compute(), "mae_orig": self.mae_orig.compute()}

    def reset(self) -> None:
        for m in (self.mse, self.mae, self.mse_orig, self.mae_orig):
            m.reset()
