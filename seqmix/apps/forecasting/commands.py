"""``seqmix forecasting predict --ckpt <ckpt> --csv <file>``: forecast the next ``pred_len`` steps.

Reads the checkpoint of a ``seqmix forecasting fit`` run (the model, its training scaler and
the training data's columns), takes the ``seq_len`` rows before ``--origin`` (default: the
end of the file) as history, and writes

- ``--out`` (default ``<csv stem>_forecast.csv`` in the working folder, not beside the data): ``date``
  and the forecast of each output variable in original units, plus ``true_<name>`` columns where
  the file has the truth;
- ``--png`` (default the same name with ``.png``): history, forecast and (when known) truth
  of the target variable.

Both files are written atomically (a temporary file, then a rename); an output path that is an
input (``--out d.csv --csv d.csv``) or the other output (``--out f.png``) is refused before anything
is written. ``--dataset <name>`` reads a dataset as ``fit`` does instead of ``--csv`` (e.g. the
embedded ``vic_elec``, which has no CSV in the training layout); the outputs are then named after it.
The checkpoint is read as data (``weights_only=True``; :func:`seqmix.apps.module.load_trained`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from seqmix.apps.forecasting.data import (EMBEDDED, clean_frame, infer_freq, read_csv, read_dataset, resolve_csv,
                                          time_features)
from seqmix.apps.files import atomic_write, check_outputs, input_file, pyplot, save_figure
from seqmix.apps.module import load_trained


def load_forecaster(ckpt: str | Path):
    """The trained :class:`Forecaster` and the data description (columns, frequency, scaler) saved with it."""
    from seqmix.apps.forecasting.model import Forecaster

    model, checkpoint = load_trained(Forecaster, ckpt, "forecasting",
                                     "train one with `seqmix forecasting fit --config configs/forecasting/<exp>.yaml` "
                                     "or use checkpoints/forecasting/informer_etth1.ckpt",
                                     needs=("ForecastDataModule",))
    return model, checkpoint["ForecastDataModule"]


def forecast_frame(model, info: dict, frame: pd.DataFrame, origin: int | None = None):
    """Forecast from the ``seq_len`` rows of ``frame`` before row ``origin``.

    Returns ``(history [seq_len] frame, forecast frame with true_* columns where known)``.
    """
    s = model.shape
    columns, out_columns = info["columns"], info["columns"][-s.n_out:]
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"the CSV lacks the columns {missing} that the model was trained on ({columns})")
    origin = len(frame) if origin is None else (origin + len(frame) if origin < 0 else origin)
    if len(frame) < s.seq_len:
        raise ValueError(f"the CSV has {len(frame)} rows; the model forecasts from its last {s.seq_len} "
                         f"(its lookback), so give it at least {s.seq_len} rows")
    if not s.seq_len <= origin <= len(frame):
        raise ValueError(f"origin row {origin} is out of range: the forecast needs the {s.seq_len} rows before its "
                         f"origin, so choose {s.seq_len} <= origin <= {len(frame)} (the file's rows; a negative "
                         f"--origin counts back from the end)")
    freq = pd.Timedelta(seconds=info["freq_seconds"])
    if infer_freq(frame["date"]) != freq:
        raise ValueError(f"the CSV steps every {infer_freq(frame['date'])}, the model was trained on {freq} data")
    mean, std = np.asarray(info["mean"]), np.asarray(info["std"])
    history = frame.iloc[origin - s.seq_len: origin]
    x = (history[columns].to_numpy() - mean) / std  # [seq_len, C]
    last = frame["date"].iloc[origin - 1]
    future = pd.DatetimeIndex([last + (k + 1) * freq for k in range(s.pred_len)])
    mark_dates = pd.DatetimeIndex(list(history["date"].iloc[s.seq_len - s.label_len:]) + list(future))
    x_mark = torch.as_tensor(time_features(pd.DatetimeIndex(history["date"]), freq))[None]  # [1, seq_len, F]
    y_mark = torch.as_tensor(time_features(mark_dates, freq))[None]  # [1, label_len + pred_len, F]
    with torch.no_grad():
        y = model.predict_step({"x": torch.as_tensor(x, dtype=torch.float32)[None], "x_mark": x_mark,
                                "y_mark": y_mark}, 0)[0]  # [pred_len, n_out]
    out = pd.DataFrame(y.numpy(), columns=out_columns)
    out.insert(0, "date", future)
    truth = frame.iloc[origin: origin + s.pred_len]
    if len(truth):
        for c in out_columns:
            out[f"true_{c}"] = list(truth[c].to_numpy()) + [np.nan] * (s.pred_len - len(truth))
    return history, out


def plot(history: pd.DataFrame, forecast: pd.DataFrame, target: str, path: Path) -> None:
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(10, 3.5))
    ax.plot(history["date"], history[target], color="0.3", label="history")
    if f"true_{target}" in forecast:
        ax.plot(forecast["date"], forecast[f"true_{target}"], color="tab:green", label="truth")
    ax.plot(forecast["date"], forecast[target], color="tab:red", label="forecast")
    ax.axvline(forecast["date"].iloc[0], color="0.7", linestyle="--", linewidth=0.8)
    ax.set_title(f"{target}: {len(history)} steps of history, {len(forecast)}-step forecast")
    ax.legend(loc="upper left")
    fig.autofmt_xdate()
    save_figure(fig, path, dpi=110)


def predict_command(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="seqmix forecasting predict", description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", required=True, help="checkpoint written by `seqmix forecasting fit`")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--csv", help="CSV in the training layout (date + the same variables)")
    source.add_argument("--dataset", help="instead of --csv: a dataset by name, read as `fit` reads it (ETTh1, "
                                          f"weather, ... from $SEQMIX_DATA, else ./data; {EMBEDDED}: embedded)")
    parser.add_argument("--origin", type=int, default=None,
                        help="forecast from this row (negative counts from the end); default: after the last row")
    parser.add_argument("--out", default=None,
                        help="forecast CSV (default ./<csv stem or dataset>_forecast.csv: the working folder, "
                             "not beside the data)")
    parser.add_argument("--png", default=None, help="plot (default: --out with .png)")
    parser.add_argument("--missing", choices=("error", "interpolate"), default="error",
                        help="what to do with missing dates / NaNs in the CSV")
    parser.add_argument("--duplicates", choices=("error", "first"), default="error",
                        help="what to do with repeated dates in the CSV (first: keep the first row of each)")
    args = parser.parse_args(argv)
    if args.csv:
        csv, stem = input_file(args.csv, "--csv"), Path(args.csv).stem
    else:  # a dataset's file (none for the embedded one)
        csv, stem = None if args.dataset == EMBEDDED else resolve_csv(args.dataset, None), Path(args.dataset).stem
    out = Path(args.out) if args.out else Path(f"{stem}_forecast.csv")  # the working folder, not the data's
    png = Path(args.png) if args.png else out.with_suffix(".png")
    check_outputs([("--out", out), ("--png", png)],
                  [("--ckpt", args.ckpt), ("--csv" if args.csv else "--dataset", csv)])
    model, info = load_forecaster(args.ckpt)
    raw, source = (read_csv(csv), str(csv)) if csv is not None else read_dataset(args.dataset, None)
    frame = clean_frame(raw, source=source, missing=args.missing, duplicates=args.duplicates, options="--")
    history, forecast = forecast_frame(model, info, frame, args.origin)
    atomic_write(out, lambda p: forecast.to_csv(p, index=False))
    plot(history, forecast, info["columns"][-1], png)
    print(f"wrote {out} ({len(forecast)} steps x {model.shape.n_out} variables) and {png}")
    return 0
