"""The metrics of readers'-emotion detection, on ``pred, gold: [N, K]`` distributions (numpy).

- ``acc@k``: the gold top emotion is among the ``k`` highest predicted emotions (ties in
  gold: the first column wins, as ``argmax`` does);
- ``rmse``: over all ``N * K`` cells;
- ``wasserstein``: earth mover's distance between the predicted and gold distributions
  *over the K emotion positions* (``scipy.stats.wasserstein_distance(range(K), range(K), p, g)``),
  averaged over headlines. The REDAffectiveLM code passes the two probability vectors as
  *samples* (``wasserstein_distance(p, g)``), which compares the sets of probability values
  and ignores which emotion holds them; reported as ``wasserstein_orig``, labelled.
- ``ap_document``: Pearson correlation across the K emotions of each headline, averaged;
  ``ap_emotion``: Pearson across the headlines for each emotion, averaged. A correlation
  with a constant side is undefined; such a headline counts as 0 (as in the original code).
- ``ap_document_x1.25`` / ``ap_emotion_orig``: the *original implementation's* formula,
  ``sum((x - mx)(y - my)) / ((n - 1) * std(x) * std(y))`` with numpy's population std
  (``ddof=0``). Its numerator is ``n`` times the population covariance, so it equals
  ``n / (n - 1)`` times Pearson: 1.25x for ``n = K = 5`` emotions (AP_document) and
  ``N / (N - 1)`` (about 1.004) for AP_emotion. Reported only for comparability, labelled.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import wasserstein_distance


def _check(pred: np.ndarray, gold: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred, gold = np.asarray(pred, np.float64), np.asarray(gold, np.float64)
    if pred.ndim != 2 or pred.shape != gold.shape or pred.shape[0] == 0:
        raise ValueError(f"pred and gold must both be [N>0, K], got {pred.shape} and {gold.shape}")
    if not (np.isfinite(pred).all() and np.isfinite(gold).all()):
        raise ValueError("pred and gold must be finite")
    return pred, gold


def top_k_hits(pred: np.ndarray, gold: np.ndarray, k: int) -> np.ndarray:
    """Per headline: is the gold top emotion among the ``k`` top predicted ones? ``[N]`` bool."""
    pred, gold = _check(pred, gold)
    if not 1 <= k <= pred.shape[1]:
        raise ValueError(f"k must be in [1, {pred.shape[1]}], got {k}")
    top_pred = np.argsort(-pred, axis=1, kind="stable")[:, :k]  # [N, k]
    return (top_pred == gold.argmax(1)[:, None]).any(1)


def row_rmse(pred: np.ndarray, gold: np.ndarray) -> np.ndarray:
    """Per-headline RMSE over the K emotions ``[N]`` (the paired test's unit)."""
    pred, gold = _check(pred, gold)
    return np.sqrt(((pred - gold) ** 2).mean(1))


def rmse(pred: np.ndarray, gold: np.ndarray) -> float:
    pred, gold = _check(pred, gold)
    return float(np.sqrt(((pred - gold) ** 2).mean()))


def wasserstein(pred: np.ndarray, gold: np.ndarray) -> float:
    pred, gold = _check(pred, gold)
    if (pred < 0).any() or (gold < 0).any():
        raise ValueError("wasserstein needs non-negative distributions; clip or softmax the predictions first")
    pos = np.arange(pred.shape[1])
    return float(np.mean([wasserstein_distance(pos, pos, p, g) for p, g in zip(pred, gold)]))


def pearson_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson correlation of each row pair ``[N]``; 0 where a row is constant (undefined)."""
    xc, yc = x - x.mean(1, keepdims=True), y - y.mean(1, keepdims=True)
    den = np.sqrt((xc ** 2).sum(1) * (yc ** 2).sum(1))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (xc * yc).sum(1) / den
    return np.where(den > 0, r, 0.0)


def original_ap_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The REDAffectiveLM formula per row: ``sum(dx*dy) / ((n-1) std(x) std(y))``, population std."""
    n = x.shape[1]
    num = ((x - x.mean(1, keepdims=True)) * (y - y.mean(1, keepdims=True))).sum(1)
    den = (n - 1) * x.std(1) * y.std(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = num / den
    return np.where(den > 0, r, 0.0)


def emotion_metrics(pred: np.ndarray, gold: np.ndarray) -> dict[str, float]:
    """Every metric of this module for one split, keyed as in the results tables."""
    pred, gold = _check(pred, gold)
    out = {f"acc@{k}": float(top_k_hits(pred, gold, k).mean()) for k in (1, 2, 3) if k <= pred.shape[1]}
    out["rmse"] = rmse(pred, gold)
    out["wasserstein"] = wasserstein(pred, gold)
    out["wasserstein_orig"] = float(np.mean([wasserstein_distance(p, g) for p, g in zip(pred, gold)]))
    out["ap_document"] = float(pearson_rows(pred, gold).mean())
    out["ap_emotion"] = float(pearson_rows(pred.T, gold.T).mean())
    out["ap_document_x1.25"] = float(original_ap_rows(pred, gold).mean())
    out["ap_emotion_orig"] = float(original_ap_rows(pred.T, gold.T).mean())
    return out
