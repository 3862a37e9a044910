"""Forecasting benchmark: the Informer paper's ETTh protocol and the modern lookback-96 protocol.

Every run is ``configs/forecasting/<model>.yaml`` with the dataset, lengths, seed and epoch
budget overridden, trained with ``fit`` (early stopping on ``val/mse``) and tested from the
best checkpoint, through the app's own LightningCLI (``seqmix.cli.app_cli``). Runs are cached
in ``benchmarks/results/forecasting_runs.json`` (so a budget can be spread over several
invocations); the report ``benchmarks/results/forecasting.md`` (+ ``forecasting.png``) is
rebuilt from every cached run each time, stating what was run and what was not.

    python -m benchmarks.forecasting --protocol informer --datasets ETTh1 --models dlinear transformer
    python -m benchmarks.forecasting --protocol modern --datasets ETTh1 ETTm1 --models dlinear --max-epochs 10
    python -m benchmarks.forecasting --report-only
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch

from benchmarks.common import (RESULTS_DIR, Stopwatch, add_cached_run, atomic_write_text, command_line, cpu_model,
                               file_digest, git_commit, header, markdown_table, read_run_cache, save_figure, utc_now)

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "configs" / "forecasting"
RUNS = RESULTS_DIR / "forecasting_runs.json"

# the Informer repository's ETTh1 scripts: horizon -> (seq_len, label_len)
INFORMER_LENGTHS = {24: (48, 48), 48: (96, 48), 168: (168, 168), 336: (168, 168), 720: (336, 336)}
MODERN_LENGTHS = {h: (96, 48) for h in (96, 192, 336, 720)}
# data options a file needs: the TSLib weather.csv repeats one date and lacks 9 ten-minute steps
# (the TSLib loaders ignore dates); here the repeat is dropped and the gaps filled linearly
DATA_OPTIONS = {"weather": ["--data.duplicates", "first", "--data.missing", "interpolate"]}
PROTOCOLS = {"informer": INFORMER_LENGTHS, "modern": MODERN_LENGTHS}
MODEL_NAMES = {"informer_etth1": "Informer (ProbSparse)", "informer_gla": "Informer + GLA encoder",
               "transformer": "Transformer", "transformer_revin": "Transformer + RevIN", "dlinear": "DLinear",
               "dlinear_revin": "DLinear + RevIN (no mixer)", "patchtst": "PatchTST (softmax) + RevIN",
               "last_value": "last value", "training_mean": "training mean (zero when scaled)"}
# PatchTST with its softmax attention swapped for each newer mixer (configs/forecasting/patchtst_<mixer>.yaml;
# the causal-only ones in the Bidirectional wrapper), compared in one section at one seed and horizon;
# patchtst_softmax is patchtst.yaml under its own name, run at that section's epoch cap
MIXER_SWAPS = {"patchtst_softmax": "softmax", "patchtst_routing": "routing", "patchtst_combiner": "combiner",
               "patchtst_hip": "hip", "patchtst_sea": "sea", "patchtst_cca": "cca", "patchtst_flow": "flow",
               "patchtst_softplus": "softplus", "patchtst_tnl": "TNL (linear_attention)",
               "patchtst_landmark": "landmark (bidirectional)", "patchtst_tcnca": "tcnca (bidirectional)",
               "patchtst_jrt_rnn": "jrt_rnn (bidirectional)", "patchtst_lmu": "lmu (bidirectional)",
               "patchtst_mamba": "mamba (bidirectional)", "patchtst_mlstm": "mlstm (bidirectional)",
               "patchtst_titans": "titans (bidirectional)", "patchtst_lightnet": "lightnet"}
MODEL_NAMES.update({m: f"PatchTST ({mixer}) + RevIN" for m, mixer in MIXER_SWAPS.items()})
# the section's setting: ETTh1, lookback 96, one horizon and seed, and an epoch cap for every row (the slowest
# mixers, 5-6x softmax's time per batch on CPU, cannot run the config's 20 epochs on the shared machine)
SWAP_PROTOCOL, SWAP_DATASET, SWAP_HORIZON, SWAP_SEED = "modern", "ETTh1", 96, 0
# the models built on a seqmix token mixer: the lookback-96 target is for the best of these
MIXER_MODELS = ("informer_etth1", "informer_gla", "transformer", "transformer_revin", "patchtst", *MIXER_SWAPS)

# published test MSE (scaled data). Informer: Zhou et al. AAAI 2021, Table 3 (multivariate).
# Lookback 96: the iTransformer paper's (Liu et al., ICLR 2024) table of baselines.
PAPER = {
    ("informer", "ETTh1", "Informer (ProbSparse)"): {24: 0.577, 48: 0.685, 168: 0.931, 336: 1.128, 720: 1.215},
    ("informer", "ETTh2", "Informer (ProbSparse)"): {24: 0.720, 48: 1.457, 168: 3.489, 336: 2.723, 720: 3.467},
    ("modern", "ETTh1", "DLinear"): {96: 0.386, 192: 0.437, 336: 0.481, 720: 0.519},
    ("modern", "ETTh2", "DLinear"): {96: 0.333, 192: 0.477, 336: 0.594, 720: 0.831},
    ("modern", "ETTm1", "DLinear"): {96: 0.345, 192: 0.380, 336: 0.413, 720: 0.474},
    ("modern", "weather", "DLinear"): {96: 0.196, 192: 0.237, 336: 0.283, 720: 0.345},
    ("modern", "exchange_rate", "DLinear"): {96: 0.088, 192: 0.176, 336: 0.313, 720: 0.839},
}
PAPER_MEANS_ETTH1 = {"iTransformer": 0.454, "PatchTST": 0.469, "DLinear": 0.456}



def run_key(protocol: str, dataset: str, model: str, horizon: int, seed: int) -> str:
    return f"{protocol}|{dataset}|{model}|{horizon}|seed{seed}"


def config_digest(model: str) -> str:
    """The first 12 hex digits of the sha256 of ``configs/forecasting/<model>.yaml`` as it is now."""
    return file_digest(CONFIGS / f"{model}.yaml")


def split_stale(runs: dict) -> tuple[dict, dict]:
    """(current, stale): a run is stale when its config file has changed since it ran (its recorded
    ``config_sha256`` differs from the file's now, or it has none). Stale runs stay in the cache, out of
    the tables, and are run again by the next invocation that asks for them."""
    digests = {m: config_digest(m) for m in {r["model"] for r in runs.values()}}
    current = {k: r for k, r in runs.items() if r.get("config_sha256") == digests[r["model"]]}
    return current, {k: r for k, r in runs.items() if k not in current}


class EpochTimer(pl.Callback):
    """Wall and CPU seconds of each training epoch (the validation pass excluded)."""

    def __init__(self):
        self.wall, self.cpu, self.watch = [], [], Stopwatch()

    def on_train_epoch_start(self, trainer, pl_module):
        self.watch.start()

    def on_train_epoch_end(self, trainer, pl_module):
        self.watch.stop()
        self.wall.append(round(self.watch.wall_s, 1))
        self.cpu.append(round(self.watch.cpu_s, 1))


def run_one(model: str, dataset: str, seq_len: int, label_len: int, pred_len: int, seed: int,
            max_epochs: int, limit_train_batches: float) -> dict:
    """Fit (early stopping on val/mse, best checkpoint) and test one config; CPU and wall time."""
    from seqmix.apps.forecasting.app import APP
    from seqmix.cli import app_cli

    with tempfile.TemporaryDirectory(prefix="seqmix_fc_") as tmp:
        argv = ["--config", str(CONFIGS / f"{model}.yaml"), "--seed_everything", str(seed),
                "--data.dataset", dataset, "--data.seq_len", str(seq_len), "--data.label_len", str(label_len),
                "--data.pred_len", str(pred_len), *DATA_OPTIONS.get(dataset, []),
                "--trainer.max_epochs", str(max_epochs),
                "--trainer.limit_train_batches", str(limit_train_batches),
                "--trainer.default_root_dir", tmp, "--trainer.logger", "false",
                "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
        watch = Stopwatch().start()
        cli = app_cli(APP, argv, run=False)
        trainable = any(p.requires_grad for p in cli.model.parameters())
        timer = EpochTimer()
        cli.trainer.callbacks.append(timer)
        if trainable:
            cli.trainer.fit(cli.model, datamodule=cli.datamodule)
            epochs = cli.trainer.current_epoch
            best_val = cli.trainer.checkpoint_callback.best_model_score  # the checkpoint the test reads
        else:
            epochs, best_val = 0, None
        result = cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path="best" if trainable else None,
                                  verbose=False)[0]
        cpu, wall = watch.stop().cpu_s, watch.wall_s
    return {"model": model, "dataset": dataset, "seq_len": seq_len, "label_len": label_len, "pred_len": pred_len,
            "seed": seed, "max_epochs": max_epochs, "epochs_run": epochs, "limit_train_batches": limit_train_batches,
            "val_mse_best": None if best_val is None else float(best_val),
            "test_mse": result["test/mse"], "test_mae": result["test/mae"],
            "test_mse_orig": result["test/mse_orig"], "test_mae_orig": result["test/mae_orig"],
            "params": sum(p.numel() for p in cli.model.parameters() if p.requires_grad),
            "cpu_s": round(cpu, 1), "wall_s": round(wall, 1), "threads": torch.get_num_threads(),
            "train_epoch_wall_s": timer.wall, "train_epoch_cpu_s": timer.cpu, "load_avg": os.getloadavg()[0],
            "config_sha256": config_digest(model), "cpu": cpu_model(), "commit": git_commit(), "date": utc_now(),
            "command": command_line()}


# ------------------------------------------------------------------ report
def fmt(x: float | None) -> str:
    return "—" if x is None else f"{x:.3f}"


def collect(runs: dict, protocol: str, dataset: str, model: str, horizon: int) -> list[dict]:
    return [r for k, r in runs.items() if k.startswith(f"{protocol}|{dataset}|{model}|{horizon}|")]


def table(runs: dict, protocol: str, datasets: list[str], models: list[str]) -> tuple[str, list[str]]:
    horizons = list(PROTOCOLS[protocol])
    rows, missing = [], []
    for ds in datasets:
        for model in models:
            name = MODEL_NAMES[model]
            ours, cells, cpu = [], [], []
            not_run = []
            for h in horizons:
                got = collect(runs, protocol, ds, model, h)
                if got:
                    mse = [r["test_mse"] for r in got]
                    ours.append(float(np.mean(mse)))
                    spread = f" ±{np.std(mse):.3f}" if len(mse) > 1 else ""
                    cells.append(f"{np.mean(mse):.3f}{spread} / {np.mean([r['test_mae'] for r in got]):.3f}")
                    cpu.append(f"{np.mean([r['cpu_s'] for r in got]):.0f}")
                else:
                    cells.append("not run")
                    cpu.append("—")
                    not_run.append(h)
            if not_run:
                missing.append(f"{protocol} protocol, {ds}, {name}: H = {', '.join(map(str, not_run))}")
            paper = PAPER.get((protocol, ds, name), {})
            mean = f"{np.mean(ours):.3f}" if len(ours) == len(horizons) else "—"
            rows.append([ds, name, *cells, mean, " / ".join(cpu)])
            if paper:
                rows.append([ds, f"{name}, paper", *[fmt(paper.get(h)) for h in horizons],
                             f"{np.mean(list(paper.values())):.3f}", ""])
    cols = ["data", "model", *[f"H={h} MSE / MAE" for h in horizons], "mean MSE", "CPU s per horizon"]
    return markdown_table(cols, rows), missing


def seed_sets(sel: list[dict]) -> str:
    """The seeds of each (dataset, horizon), grouped: e.g. "[0] at ETTh1 H=336/720; [0, 1, 2] at ETTh1 H=24/48".

    Every model of one (dataset, horizon) should share its seeds (the issue: the same seed set for every
    model); a model that does not is named."""
    cells: dict[tuple[str, int], dict[str, set[int]]] = {}
    for r in sel:
        cells.setdefault((r["dataset"], r["pred_len"]), {}).setdefault(r["model"], set()).add(r["seed"])
    groups: dict[tuple[int, ...], dict[str, list[int]]] = {}  # seeds -> dataset -> horizons
    uneven = []
    for (ds, h), by_model in sorted(cells.items()):
        union = set().union(*by_model.values())
        groups.setdefault(tuple(sorted(union)), {}).setdefault(ds, []).append(h)
        uneven += [f"{MODEL_NAMES[m]} at {ds} H={h} has seeds {sorted(s)} of {sorted(union)}"
                   for m, s in sorted(by_model.items()) if s != union]
    text = "; ".join(f"{list(seeds)} at " + ", ".join(f"{ds} H={'/'.join(map(str, hs))}" for ds, hs in where.items())
                     for seeds, where in sorted(groups.items()))
    return text + (" (uneven: " + "; ".join(uneven) + ")" if uneven else "")


def cpu_sets(sel: list[dict]) -> str:
    """Which CPU ran which runs: e.g. "AMD EPYC: 150 runs; Intel Xeon: 2 runs (DLinear: ETTh1 H=336 seeds [1, 2])".

    The same seed gives slightly different numbers on another CPU (its floating-point kernels differ),
    and CPU seconds compare only within one CPU. When several CPUs share a protocol, every CPU but
    the one with the most runs lists its runs: model, then dataset, horizon and seeds."""
    by_cpu: dict[str, list[dict]] = {}
    for r in sel:
        by_cpu.setdefault(r.get("cpu", "not recorded"), []).append(r)
    ranked = sorted(by_cpu.items(), key=lambda kv: -len(kv[1]))
    parts = []
    for i, (cpu, rs) in enumerate(ranked):
        cells: dict[str, dict[tuple[str, int], set[int]]] = {}  # model -> (dataset, horizon) -> seeds
        for r in rs:
            cells.setdefault(r["model"], {}).setdefault((r["dataset"], r["pred_len"]), set()).add(r["seed"])
        where = "; ".join(f"{MODEL_NAMES[m]}: " + ", ".join(f"{ds} H={h} seeds {sorted(seeds)}"
                                                           for (ds, h), seeds in sorted(by_cell.items()))
                          for m, by_cell in sorted(cells.items()))
        parts.append(f"{cpu}: {len(rs)} run{'s' * (len(rs) != 1)}" + (f" ({where})" if i > 0 else ""))
    return "; ".join(parts)


def seeds_and_epochs(runs: dict, protocol: str) -> str:
    sel = [r for k, r in runs.items() if k.startswith(protocol + "|")]
    if not sel:
        return "no runs"
    seeds = seed_sets(sel)
    budget = sorted({(r["model"], r["max_epochs"], r["limit_train_batches"]) for r in sel})
    epochs = {m: sorted({r["epochs_run"] for r in sel if r["model"] == m}) for m, _, _ in budget}
    return (f"seeds {seeds}; max epochs (model, max, train fraction): {budget}; epochs run before early "
            f"stopping / the cap: {epochs}; torch threads per run: {sorted({r['threads'] for r in sel})}; "
            f"CPUs: {cpu_sets(sel)}")


def plot(runs: dict) -> None:
    from seqmix.apps.files import pyplot

    plt = pyplot()

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6))
    for ax, protocol, ds in ((axes[0], "informer", "ETTh1"), (axes[1], "modern", "ETTh1")):
        horizons = list(PROTOCOLS[protocol])
        for model, name in MODEL_NAMES.items():
            if model in MIXER_SWAPS:  # one horizon each: their own section's table
                continue
            cells = [(h, [r["test_mse"] for r in collect(runs, protocol, ds, model, h)]) for h in horizons]
            cells = [(h, mses) for h, mses in cells if mses]
            if cells:  # the mean over seeds, and their standard deviation as a bar (none for one seed)
                ax.errorbar([h for h, _ in cells], [np.mean(m) for _, m in cells],
                            yerr=[np.std(m, ddof=1) if len(m) > 1 else 0.0 for _, m in cells],
                            marker="o", markersize=4, capsize=3, label=f"{name} (ours)")
        for (p, d, name), vals in PAPER.items():
            if p == protocol and d == ds:
                ax.plot(list(vals), list(vals.values()), linestyle="--", marker="x", label=f"{name} (paper)")
        ax.set_xscale("log")
        ax.set_xticks(horizons, [str(h) for h in horizons])
        ax.minorticks_off()
        ax.set_xlabel("horizon")
        ax.set_ylabel("test MSE (scaled)")
        ax.set_title(f"{ds}, {'Informer protocol' if protocol == 'informer' else 'lookback 96'}: "
                     "mean over seeds ± their std", fontsize=10)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False)
    save_figure(fig, "forecasting")


def targets(runs: dict) -> str:
    """The issue's targets, each with the figure from the cached runs (or 'not measured')."""
    lines = ["## Targets", ""]
    paper = PAPER[("informer", "ETTh1", "Informer (ProbSparse)")]
    got = {h: collect(runs, "informer", "ETTh1", "informer_etth1", h) for h in paper}
    cells = []
    for h, ref in paper.items():
        if got[h]:
            per_seed = [r["test_mse"] for r in got[h]]
            mse = float(np.mean(per_seed))
            spread = (f" (mean of {len(per_seed)} seeds, ±{np.std(per_seed):.3f}, "
                      f"{min(per_seed):.3f}-{max(per_seed):.3f})" if len(per_seed) > 1 else "")
            cells.append(f"H={h}: {mse:.3f}{spread} vs {ref} {'met' if mse <= ref else 'MISSED'}")
        else:
            cells.append(f"H={h}: not run")
    lines.append("- Informer (ProbSparse), ETTh1 multivariate, test MSE <= the paper's at every horizon: "
                 + "; ".join(cells))
    floor = {h: collect(runs, "informer", "ETTh1", "training_mean", h) for h in paper}
    if all(floor.values()):
        lines.append("  - for scale, forecasting the training mean (zero on the scaled data) scores "
                     + ", ".join(f"H={h}: {np.mean([r['test_mse'] for r in floor[h]]):.3f}" for h in paper)
                     + ": a test MSE above it has learned nothing usable at that horizon")
    complete = []  # (mean ETTh1 MSE over the four horizons, seeds per horizon, model)
    for model in MODEL_NAMES:
        per_h = [collect(runs, "modern", "ETTh1", model, h) for h in MODERN_LENGTHS]
        if all(per_h):
            complete.append((float(np.mean([np.mean([r["test_mse"] for r in g]) for g in per_h])),
                             min(len(g) for g in per_h), model))
    with_mixer = [c for c in complete if c[2] in MIXER_MODELS]
    goal = "- best seqmix model (one built on a token mixer), lookback 96, mean ETTh1 MSE over 96-720 <= 0.45: "
    if with_mixer:
        text = ", ".join(f"{MODEL_NAMES[n]} {m:.3f}" for m, _, n in sorted(complete))
        m, seeds, n = min(with_mixer)
        lines.append(f"{goal}{MODEL_NAMES[n]} {m:.3f} (mean of {seeds} seed{'s' if seeds > 1 else ''} per horizon; "
                     f"{'met' if m <= 0.45 else 'MISSED'}); every complete model, with or without a mixer: {text}")
    else:
        lines.append(f"{goal}no model with a mixer has all four horizons")
    epoch_file = RESULTS_DIR / "forecasting_epoch.json"  # written by benchmarks/forecasting_epoch.py
    e = json.loads(epoch_file.read_text()) if epoch_file.exists() else None
    if e is not None and e.get("config_sha256") != file_digest(REPO / e["config"]):
        lines.append(f"- one ETTh1 epoch of the default config < 60 s: stale (forecasting_epoch.json timed an earlier "
                     f"version of {e['config']}; run benchmarks/forecasting_epoch.py again)")
    elif e is not None:
        wall = max(e["epochs_wall_s"])
        lines.append(
            f"- one ETTh1 training epoch of the default config ({Path(e['config']).name}) < 60 s on 2 cores: "
            f"{wall:.1f} s wall, the slowest of {len(e['epochs_wall_s'])} full epochs of {e['batches']} batches at "
            f"{e['threads']} torch threads, load {e['load_before']:.1f} before ({'met' if wall < 60 else 'MISSED'}; "
            f"`{e['command']}`, commit {e['commit']}, {e['date']}: forecasting_epoch.md)")
    else:
        lines.append("- one ETTh1 epoch of the default config < 60 s: not measured (run benchmarks/forecasting_epoch.py)")
    lines.append("- the same seed twice gives the same test MSE to 1e-6: checked by `tests/apps/test_forecasting.py::"
                 "test_same_seed_same_test_mse_and_forecast_with_the_default_informer` (a tiny CLI fit + test of the "
                 "default config, twice)")
    return "\n".join(lines) + "\n\n"


def stale_lines(stale: dict) -> list[str]:
    """One line per (protocol, dataset, model): the horizons and seeds whose runs are stale."""
    groups: dict[tuple[str, str, str], dict[int, list[int]]] = {}
    for key, r in stale.items():
        cell = groups.setdefault((key.split("|")[0], r["dataset"], r["model"]), {})
        cell.setdefault(r["pred_len"], []).append(r["seed"])
    return [f"{protocol} protocol, {ds}, {MODEL_NAMES[m]}: "
            + "; ".join(f"H={h} seeds {sorted(seeds)}" for h, seeds in sorted(by_h.items()))
            for (protocol, ds, m), by_h in sorted(groups.items())]


def params_of(model: str) -> int:
    """Trainable parameters of ``configs/forecasting/<model>.yaml`` built at the swap section's setting."""
    from seqmix.apps.forecasting.app import APP
    from seqmix.cli import app_cli

    seq_len, label_len = MODERN_LENGTHS[SWAP_HORIZON]
    with tempfile.TemporaryDirectory(prefix="seqmix_fc_") as tmp:
        cli = app_cli(APP, ["--config", str(CONFIGS / f"{model}.yaml"), "--data.dataset", SWAP_DATASET,
                            "--data.seq_len", str(seq_len), "--data.label_len", str(label_len),
                            "--data.pred_len", str(SWAP_HORIZON), "--trainer.logger", "false",
                            "--trainer.default_root_dir", tmp], run=False)
        return sum(p.numel() for p in cli.model.parameters() if p.requires_grad)


def mixer_swaps(runs: dict) -> str:
    """The section "PatchTST with each mixer": test MSE / MAE, parameters, CPU seconds and epochs of every
    patchtst_<mixer> run at the section's dataset, horizon and seed, beside PatchTST (softmax)."""
    title = (f"## 3. PatchTST with each mixer ({SWAP_DATASET}, lookback 96, H={SWAP_HORIZON}, seed {SWAP_SEED})\n\n")
    key = lambda m: run_key(SWAP_PROTOCOL, SWAP_DATASET, m, SWAP_HORIZON, SWAP_SEED)  # noqa: E731
    got = {m: runs[key(m)] for m in MIXER_SWAPS if key(m) in runs}
    if not got:
        return title + "No run yet: `python -m benchmarks.forecasting --protocol modern --datasets ETTh1 --horizons 96 " \
                       "--seeds 0 --max-epochs 2 --models " + " ".join(MIXER_SWAPS) + "`\n\n"
    caps = sorted({(r["max_epochs"], r["limit_train_batches"]) for r in got.values()})
    rows = []
    reference = runs.get(key("patchtst"))
    if reference is not None:
        other_cpu = {reference.get("cpu", "not recorded")} - {r.get("cpu", "not recorded") for r in got.values()}
        where = f", on {other_cpu.pop()}" if other_cpu else ""  # its CPU seconds then compare with none below
        rows.append([f"{MODEL_NAMES['patchtst']} (patchtst.yaml, up to {reference['max_epochs']} epochs{where})",
                     f"{reference['test_mse']:.3f}", f"{reference['test_mae']:.3f}", f"{reference.get('params') or params_of('patchtst'):,}",
                     f"{reference['cpu_s']:.0f}", str(reference["epochs_run"]), fmt(reference["val_mse_best"])])
    for m, r in sorted(got.items(), key=lambda kv: kv[1]["test_mse"]):
        rows.append([f"{MODEL_NAMES[m]} ({m}.yaml)", f"{r['test_mse']:.3f}", f"{r['test_mae']:.3f}",
                     f"{r.get('params') or params_of(m):,}", f"{r['cpu_s']:.0f}", str(r["epochs_run"]), fmt(r["val_mse_best"])])
    cols = ["model", "test MSE", "test MAE", "params", "CPU s", "epochs", "best val MSE"]
    not_run = [m for m in MIXER_SWAPS if m not in got]
    cpus = sorted({r.get("cpu", "not recorded") for r in got.values()})
    loads = ", ".join(f"{r['load_avg']:.1f}" for r in got.values())
    text = (title + "PatchTST (`configs/forecasting/patchtst.yaml`: 12 patch tokens, d_model 16, 4 heads, 3 layers, "
            "RevIN) with only its mixer swapped (`configs/forecasting/patchtst_<mixer>.yaml`; the causal-only mixers "
            "run in `seqmix.core.mixers.bidirectional.Bidirectional`: a forward and a reversed instance, summed). "
            f"Every row of this section ran under one cap (max epochs, train fraction): {caps}, early stopping "
            "(patience 3) as the config, the best-validation checkpoint tested; `PatchTST (softmax)` of "
            "patchtst_softmax.yaml is patchtst.yaml under its own name at that cap, and the first row is "
            "patchtst.yaml's own run at its config's 20 epochs (section 2), for scale. Test MSE / MAE on the "
            "scaled data; CPU s of the whole run (fit + test) at "
            f"{sorted({r['threads'] for r in got.values()})} torch thread(s) on {cpus}, on a shared machine (its "
            f"1-minute load average when each run ended: {loads}): CPU seconds "
            "compare only roughly. At 12 tokens the sparse mixers (routing, combiner, hip, sea, cca, landmark, "
            "tcnca) are close to dense attention: see each config's comment for the block and window sizes.\n\n")
    text += markdown_table(cols, rows) + "\n"
    if not_run:
        text += "Not run: " + ", ".join(not_run) + ".\n"
    return text + "\n"


def report(all_runs: dict) -> None:
    runs, stale = split_stale(all_runs)
    swaps = {k: r for k, r in runs.items() if r["model"] in MIXER_SWAPS}
    runs = {k: r for k, r in runs.items() if k not in swaps}  # sections 1, 2 and the targets: the protocol models
    informer_models = ["informer_etth1", "informer_gla", "transformer", "dlinear", "last_value", "training_mean"]
    modern_models = ["patchtst", "transformer_revin", "dlinear_revin", "dlinear", "last_value", "training_mean"]
    t1, miss1 = table(runs, "informer", ["ETTh1", "ETTh2"], informer_models)
    t2, miss2 = table(runs, "modern", ["ETTh1", "ETTh2", "ETTm1", "weather", "exchange_rate"], modern_models)
    # drop the rows of models that were never run in a protocol from the "not run" list's noise
    text = header("Forecasting: Informer protocol and lookback-96 protocol",
                  seeds=sorted({r["seed"] for r in runs.values()}) or None,
                  notes=["every number below is the mean over the seeds of runs cached in "
                         "`benchmarks/results/forecasting_runs.json` (each run records its own commit, date, CPU, "
                         "CPU seconds, epochs, and the sha256 of its config file: only runs of the config files as "
                         "they are now count); test MSE / MAE on the scaled data (the papers' convention)",
                         "the machine line above is where this report was written; the runs came from the CPUs "
                         "that each protocol's Runs line lists (a seed's figures differ slightly from one CPU "
                         "to another, and CPU seconds compare only within one CPU)",
                         "models are the configs `configs/forecasting/<model>.yaml` at d_model 64 (the papers "
                         "use 512): sized for a shared 2-core CPU",
                         "data options per file (DATA_OPTIONS): " + "; ".join(
                             f"{k}: `{' '.join(v)}`" for k, v in DATA_OPTIONS.items())
                         + " (weather.csv repeats one date and lacks 9 ten-minute steps; TSLib ignores dates)"])
    text += targets(runs)
    text += ("## 1. Informer protocol (ETTh1, ETTh2, multivariate)\n\n"
             f"Lookback / start tokens per horizon (the Informer repository's ETTh1 scripts, used for ETTh2 too): "
             f"{ {h: f'{s}/{l}' for h, (s, l) in INFORMER_LENGTHS.items()} }.\n"
             f"Runs: {seeds_and_epochs(runs, 'informer')}.\n\n" + t1 + "\n")
    text += ("## 2. Lookback 96, horizons 96-720\n\n"
             f"Runs: {seeds_and_epochs(runs, 'modern')}.\n"
             f"Published ETTh1 means over 96-720: {PAPER_MEANS_ETTH1}.\n\n" + t2 + "\n")
    text += mixer_swaps({**runs, **swaps})
    commands = sorted({r.get("command", "?") for r in {**runs, **swaps}.values()})
    text += "## Commands that produced the cached runs\n\n" + "\n".join(f"- `{c}`" for c in commands) + "\n\n"
    text += "## Not run\n\n" + ("\n".join(f"- {m}" for m in miss1 + miss2) or "- nothing") + "\n\n"
    text += ("## Stale runs (their config file changed since; kept in the cache, left out of every table above)\n\n"
             + ("\n".join(f"- {line}" for line in stale_lines(stale)) or "- none") + "\n\n")
    text += "![forecasting](forecasting.png)\n"
    atomic_write_text(RESULTS_DIR / "forecasting.md", text)
    plot(runs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--protocol", choices=sorted(PROTOCOLS), default="informer")
    parser.add_argument("--datasets", nargs="+", default=["ETTh1"])
    parser.add_argument("--models", nargs="+", default=["dlinear"], choices=sorted(MODEL_NAMES))
    parser.add_argument("--horizons", nargs="+", type=int, default=None, help="default: every horizon of the protocol")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--max-epochs", type=int, default=6)
    parser.add_argument("--limit-train-batches", type=float, default=1.0, help="fraction of training batches/epoch")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 on a shared machine)")
    parser.add_argument("--rerun", action="store_true",
                        help="run again even when cached (a run whose config file has changed since runs again anyway)")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    os.environ.setdefault("SEQMIX_DATA", str(REPO.parent / "shared" / "data"))
    runs = read_run_cache(RUNS)
    if not args.report_only:
        lengths = PROTOCOLS[args.protocol]
        horizons = args.horizons or list(lengths)
        bad = [h for h in horizons if h not in lengths]
        if bad:
            parser.error(f"horizons {bad} are not in the {args.protocol} protocol: {list(lengths)}")
        current = split_stale(runs)[0]  # the cached runs of the config files as they are now
        for dataset in args.datasets:
            for h in horizons:
                for model in args.models:
                    for seed in args.seeds:
                        key = run_key(args.protocol, dataset, model, h, seed)
                        if key in current and not args.rerun:
                            continue
                        seq_len, label_len = lengths[h]
                        r = run_one(model, dataset, seq_len, label_len, h, seed, args.max_epochs,
                                    args.limit_train_batches)
                        print(f"{key}: test MSE {r['test_mse']:.4f} MAE {r['test_mae']:.4f} "
                              f"({r['epochs_run']} epochs, {r['cpu_s']:.0f} CPU s)", flush=True)
                        runs = add_cached_run(RUNS, key, r)
                        current = split_stale(runs)[0]  # side-by-side invocations may have added runs too
                        report(runs)
    report(runs)
    print(f"wrote {RESULTS_DIR / 'forecasting.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
