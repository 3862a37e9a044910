"""Vision benchmark -> ``benchmarks/results/vision.md``: Fashion-MNIST test accuracy, parameters,
GFLOPs (multiply-adds, fvcore's convention, counted with ``torch.utils.flop_counter``) and CPU
images/s (inference and training) of BiFormer-T (scaled), MambaOut-Femto (scaled), ViT(softmax),
ViT(GLA), ViT(LightNet), ViT(LightNet, MD-TPE), ViT(linear), ViT(LMU, conv patch), and our MambaOut-Femto
beside timm's own ``mambaout_femto`` at the same configuration.

    # the targets: 30 minutes of training each, one after the other with the 2 cores each (BiFormer as
    # 2 data-parallel processes of 1 thread), each run also writing checkpoints/vision/<model>.ckpt
    python -m benchmarks.vision --models 'BiFormer-T (scaled)' --ranks 2 --threads 1 --lr 1.5e-3 \
        --max-minutes 29.5 --save-checkpoints
    python -m benchmarks.vision --models 'MambaOut-Femto (scaled)' --threads 2 --max-minutes 30 --save-checkpoints
    # the ViT rows, the cross-mixer comparison: 20 minutes each at 1 thread, one core each (taskset), two at a time
    python -m benchmarks.vision --models 'ViT(softmax)' --max-minutes 20 --threads 1   # also 'ViT(GLA)', 'ViT(linear)'
    python -m benchmarks.vision --models 'ViT(LightNet)' --max-minutes 20 --threads 1
    # on a loaded, shared machine: the same 20 minutes as this process's CPU time (the cosine follows it too)
    python -m benchmarks.vision --models 'ViT(LightNet, MD-TPE)' --max-minutes 20 --threads 1 --budget-clock cpu
    python -m benchmarks.vision --models 'ViT(LMU, conv patch)' --max-minutes 20 --threads 1 --budget-clock cpu
    # timm's mambaout_femto beside ours at the paper's configuration (sizes and throughput)
    python -m benchmarks.vision --models 'MambaOut-Femto (ours, paper config)' 'timm mambaout_femto (paper config)' \
        --no-train --threads 1
    # a candidate architecture: its own row ('BiFormer-T (scaled) + pos_kernel=7') in a file of its own
    python -m benchmarks.vision --models 'BiFormer-T (scaled)' --model-args '{"pos_kernel": 7}' --out vision_rejected ...

Training goes through the app's own classes (ImageDataModule, ImageClassifier, Lightning's
Trainer) on the 55k training images (5k held out for validation), AdamW with a cosine that ends
when the time budget ends (``budget_minutes``), seed ``--seed``; the test accuracy is on the
official 10k test images. Throughput is the best of ``--repeats`` timed runs (the machine is
shared; the best run is the least disturbed), ours and timm's measured alternately.

Each run merges its rows into ``benchmarks/results/vision.json`` (by model name, under a file
lock, so concurrent runs keep each other's rows) and renders the table from all stored rows;
every row states its own budget, threads, load average, epochs, seed, date, commit and command.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import threading
import time
from functools import partial
from pathlib import Path
from typing import Callable

import pytorch_lightning as pl
import torch
from torch import nn

from benchmarks.common import (RESULTS_DIR, Stopwatch, atomic_write_text, command_line, cpu_model, git_commit,
                               header, markdown_table, results_lock, save_figure, time_call, utc_now, write_result)

import seqmix.apps.vision  # noqa: F401  (registers the timm models)
from seqmix.apps.vision.biformer import TINY_28, BiFormer
from seqmix.apps.vision.mambaout import FEMTO, FEMTO_28, MambaOut
from seqmix.apps.vision.vit import ViT
from seqmix.core.blocks import mixer_factory

SIZES = ("in_chans", "num_classes", "img_size")
REPO = Path(__file__).resolve().parent.parent
STORE = RESULTS_DIR / "vision.json"  # every run's rows, merged (--out changes it)


def timm_mambaout_femto(in_chans: int, num_classes: int, img_size: int) -> nn.Module:
    import timm

    return timm.create_model("mambaout_femto", in_chans=in_chans, num_classes=num_classes)  # any input size


def without_sizes(cfg: dict) -> dict:
    return {k: v for k, v in cfg.items() if k not in SIZES}


MODELS = {
    "BiFormer-T (scaled)": partial(BiFormer, **without_sizes(TINY_28)),
    "MambaOut-Femto (scaled)": partial(MambaOut, **without_sizes(FEMTO_28)),
    "ViT(softmax)": partial(ViT, mixer=mixer_factory("softmax", n_heads=4, causal=False)),
    "ViT(GLA)": partial(ViT, mixer=mixer_factory("gla", n_heads=4, causal=False)),
    # LightNet: one non-causal pass over the 7 x 7 patch grid (28 / 4), MD-LRPE by patch row and column
    "ViT(LightNet)": partial(ViT, mixer=mixer_factory("lightnet", n_heads=4, causal=False, positional="md_lrpe",
                                                      grid_width=7)),
    # the same with MD-TPE (Toeplitz mixing along the patch rows and columns) in place of MD-LRPE
    "ViT(LightNet, MD-TPE)": partial(ViT, mixer=mixer_factory("lightnet", n_heads=4, causal=False,
                                                              positional="md_tpe", grid_width=7)),
    "ViT(linear)": partial(ViT, mixer=mixer_factory("linear_attention", n_heads=4, causal=False)),
    # LMUFormer's layout (configs/vision/vit_fashion_lmu_convpatch.yaml): its convolutional patch embedding, and the
    # LMU reading the 7 x 7 patches causally in raster order (theta 49: the whole image)
    "ViT(LMU, conv patch)": partial(ViT, mixer=mixer_factory("lmu", n_heads=4, causal=True, order=32, theta=49.0),
                                    causal=True, patch_embed="conv", conv_kernel=3, conv_layers=4),
    "MambaOut-Femto (ours, paper config)": partial(MambaOut, **FEMTO),
    "timm mambaout_femto (paper config)": timm_mambaout_femto,
}
CHECKPOINTS = {"BiFormer-T (scaled)": "biformer_tiny_28", "MambaOut-Femto (scaled)": "mambaout_femto_28"}
DEFAULT_LR = 2e-3  # the peak learning rate of models without a config of their own
# what a results file other than vision.md holds: a note line of its own (--out NAME writes NAME.md)
FILE_PURPOSE = {
    "vision_rejected": "this file: runs of `benchmarks/vision.py` whose rows were NOT kept in `vision.json` (a lower "
                       "validation accuracy than the shipped row), rendered from each run's own record "
                       "(`vision_rejected.json`); each run's command and commit are on its line below",
    "vision_rerun_xeon": "this file: the MambaOut row of `vision.md` rerun on another CPU (its line below names it): "
                         "its command unchanged, and with the batch that trains fastest there (the row's label), to "
                         "show how many epochs the 30-minute budget buys on that CPU",
    "vision_probes": "this file: candidate training recipes and budgets (each row's `--label`; its threads and "
                     "budget in its columns) compared on the VALIDATION split, to choose the recipe of the shipped "
                     "rows; their test accuracy is shown but chose nothing",
}


def json_object(text: str) -> dict:
    """``--model-args``: a JSON object of constructor keyword arguments."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not JSON ({e}); write e.g. '{{\"pos_kernel\": 7}}'") from None
    if not isinstance(value, dict) or not value:
        raise argparse.ArgumentTypeError(f"want a non-empty JSON object of keyword arguments, got {text!r}")
    return value


def variant(name: str, model_args: dict | None) -> tuple[str, Callable[..., nn.Module]]:
    """The row name and model factory of ``name`` with ``--model-args`` applied (a candidate
    architecture gets a row of its own, e.g. ``BiFormer-T (scaled) + pos_kernel=7``)."""
    factory = MODELS[name]
    if not model_args:
        return name, factory
    try:
        inspect.signature(factory).bind_partial(**model_args)
    except TypeError as e:
        raise SystemExit(f"--model-args {model_args} do not fit {name!r}: {e}") from None
    row = f"{name} + " + ", ".join(f"{k}={v}" for k, v in model_args.items())
    return row, partial(factory, **model_args)


def recipe_lr(name: str) -> float:
    """The peak learning rate of a model's recipe: ``model.lr`` of its ``configs/vision/<checkpoint>.yaml``
    (chosen on the validation split), so the benchmark and ``seqmix vision fit`` train alike."""
    if name not in CHECKPOINTS:
        return DEFAULT_LR
    import yaml

    return float(yaml.safe_load((REPO / "configs" / "vision" / f"{CHECKPOINTS[name]}.yaml").read_text())["model"]["lr"])


def gmacs(model: nn.Module, x: torch.Tensor) -> float:
    """Multiply-adds of one forward (GFLOPs in fvcore's / the papers' convention: FLOP counter / 2).

    Attention runs through ``scaled_dot_product_attention``'s math backend here: torch's flop counter
    has no formula for the fused CPU kernel and would count its two matmuls as zero.
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), counter:
        model(x)
    return counter.get_total_flops() / 2 / 1e9 / len(x)


def recount_gmacs(records: dict[str, dict]) -> dict[str, dict]:
    """``--recount-gmacs``: each stored row's GMACs counted again from its model (``model`` and
    ``model_args`` of the record; rows of the shipped models by name) -- a function of the
    architecture only, so no run is repeated. A row whose model cannot be rebuilt is an error."""
    for name, r in records.items():
        base = r.get("model", name)
        if base not in MODELS:
            raise SystemExit(f"--recount-gmacs: row {name!r} names no model of {list(MODELS)} (record key 'model')")
        _, factory = variant(base, r.get("model_args"))
        r["gmacs"] = gmacs(factory(1, 10, 28).eval(), torch.randn(1, 1, 28, 28))
    return records


def images_per_second(model: nn.Module, batch: int, train: bool, repeats: int, min_seconds: float = 1.0) -> float:
    x, y = torch.randn(batch, 1, 28, 28), torch.randint(0, 10, (batch,))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4) if train else None
    model.train(train)

    def step():
        if train:
            loss = nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        else:
            with torch.no_grad():
                model(x)

    # one warm-up step, then the best of `repeats` runs of >= min_seconds each (seconds per step: their mean)
    return batch / time_call(step, warmup=1, repeats=repeats, min_repeat_s=min_seconds).min_s


class LoadMonitor:
    """The 1-minute load average, sampled about once a minute by a background thread of this process
    while training runs (in this process or in data-parallel workers): others' jobs slow us."""

    def __init__(self, every_s: float = 60.0):
        self.every_s, self.samples, self.stop = every_s, [], threading.Event()
        self.thread = threading.Thread(target=self.sample, daemon=True)

    def sample(self) -> None:
        while True:
            self.samples.append(os.getloadavg()[0])
            if self.stop.wait(self.every_s):
                return

    def __enter__(self) -> "LoadMonitor":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()


class StepCount(pl.Callback):
    """Puts the optimizer steps into ``callback_metrics`` (``fit/steps``) when training ends: the one
    channel by which a data-parallel (spawned) fit reports back to this process."""

    def on_train_end(self, trainer, pl_module) -> None:
        trainer.callback_metrics["fit/steps"] = torch.tensor(float(trainer.global_step))


class CpuBudget(pl.Callback):
    """``--budget-clock cpu``: stops training once this process has spent ``minutes`` of CPU time on it (the
    budget of a quiet machine's wall clock at 1 thread, which a shared machine's load does not shrink)."""

    def __init__(self, minutes: float):
        self.seconds, self.start = 60 * minutes, None

    def on_train_start(self, trainer, pl_module) -> None:
        self.start = time.process_time()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if time.process_time() - self.start >= self.seconds:
            trainer.should_stop = True


def train_and_test(name: str, factory, args) -> dict:
    """Train within ``--max-minutes`` through the app's classes (``--ranks`` data-parallel processes,
    ``--batch-size`` images each per step); validation and test accuracy in this process, training
    minutes, epochs (images seen / training images), load; optionally the checkpoint."""
    from seqmix.apps.vision.data import ImageDataModule
    from seqmix.apps.vision.export import save_small_checkpoint
    from seqmix.apps.vision.model import ImageClassifier

    lr = args.lr if args.lr is not None else recipe_lr(name)
    pl.seed_everything(args.seed, verbose=False)
    data = ImageDataModule(dataset=args.dataset, data_dir=args.data_dir, batch_size=args.batch_size,
                           train_limit=args.train_limit, seed=args.seed, erase_prob=args.erase_prob,
                           val_size=5000 if args.dataset == "fashion_mnist" else 200)
    model = ImageClassifier(factory, in_chans=1, n_classes=10, img_size=28, lr=lr, warmup_steps=args.warmup,
                            weight_decay=args.weight_decay, label_smoothing=args.label_smoothing,
                            budget_minutes=args.max_minutes, budget_clock=args.budget_clock)
    cpu = args.budget_clock == "cpu"  # the budget in CPU minutes: the wall clock only caps the run (--max-wall-minutes)
    wall_cap = args.max_wall_minutes if cpu else args.max_minutes
    quiet = {"logger": False, "enable_progress_bar": False, "enable_model_summary": False}
    if args.ranks > 1:  # the spawned workers read their torch threads from the environment (as torchrun sets it)
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    trainer = pl.Trainer(accelerator="cpu", devices=args.ranks, strategy="ddp_spawn" if args.ranks > 1 else "auto",
                         max_epochs=-1, max_time=None if wall_cap is None else {"seconds": wall_cap * 60},
                         enable_checkpointing=False, limit_val_batches=0, num_sanity_val_steps=0,
                         callbacks=[StepCount()] + ([CpuBudget(args.max_minutes)] if cpu else []), **quiet)
    cpu_start = time.process_time()
    with LoadMonitor() as load, Stopwatch() as watch:
        trainer.fit(model, datamodule=data)
    minutes, cpu_minutes = watch.wall_s / 60, (time.process_time() - cpu_start) / 60
    # validation (the split any choice was made on) and test after the budget, in this process
    test_batches = 1.0 if args.test_limit is None else max(1, args.test_limit // args.batch_size)
    evaluator = pl.Trainer(accelerator="cpu", devices=1, limit_test_batches=test_batches, **quiet)
    val = evaluator.validate(model, datamodule=data, verbose=False)[0]["val/acc"]
    test = evaluator.test(model, datamodule=data, verbose=False)[0]["test/acc"]
    steps = int(trainer.callback_metrics["fit/steps"])
    epochs = steps * args.batch_size * args.ranks / len(data.train_set)
    n_test = len(data.test_set) if args.test_limit is None else \
        min(len(data.test_set), test_batches * args.batch_size)
    per_step = f"{args.ranks} processes x {args.batch_size}" if args.ranks > 1 else f"{args.batch_size}"
    out = {"test_acc": test, "val_acc": val, "minutes": minutes, "epochs": epochs, "steps": steps,
           "ranks": args.ranks, "clock": args.budget_clock, "cpu_minutes": cpu_minutes,
           "load_mean": sum(load.samples) / max(1, len(load.samples)), "load_max": max(load.samples, default=0.0),
           "data": f"{args.dataset}: {len(data.train_set)} training, {len(data.val_set)} validation, {n_test} test "
                   f"images; batch {per_step}, AdamW lr {lr} wd {args.weight_decay}, {args.warmup} "
                   f"warm-up steps, label smoothing {args.label_smoothing}"
                   + (f", random erasing {args.erase_prob}" if args.erase_prob else "")
                   + (f"; budget {args.max_minutes:g} CPU minutes of this process (--budget-clock cpu): "
                      f"{cpu_minutes:.1f} CPU min in {minutes:.1f} wall min" if cpu else "")}
    if args.save_checkpoints:
        if name not in CHECKPOINTS:
            raise SystemExit(f"--save-checkpoints: {name!r} has no shipped checkpoint; only {list(CHECKPOINTS)}")
        path = REPO / "checkpoints" / "vision" / f"{CHECKPOINTS[name]}.ckpt"
        size = save_small_checkpoint(evaluator, path, trained=(int(epochs), steps))
        out["checkpoint"] = f"{path.relative_to(REPO)} ({size / 1e6:.2f} MB)"
    return out


def update_store(change: Callable[[dict[str, dict]], dict[str, dict]]) -> dict[str, dict]:
    """Apply ``change`` to the stored rows under the file lock (concurrent runs, one per model, each
    add their row) and write them back atomically; returns all rows."""
    with results_lock(STORE.name):  # the file --out names, which this lock guards
        records = change(json.loads(STORE.read_text()) if STORE.exists() else {})
        atomic_write_text(STORE, json.dumps(records, indent=1) + "\n")
        return records


def merge_records(new: dict[str, dict]) -> dict[str, dict]:
    """Store ``new`` rows (replacing same-named rows), keeping the others; returns all rows."""
    return update_store(lambda records: {**records, **new})


def threads(row: dict) -> str:
    """``2`` (one process, 2 torch threads) or ``2 x 1`` (two data-parallel processes of 1 thread)."""
    ranks = row.get("ranks", 1)
    return f"{ranks} x {row['threads']}" if ranks > 1 else str(row["threads"])


def render(records: dict[str, dict]) -> str:
    """The results table over every stored row, in MODELS order, and each row's provenance."""
    names = [n for n in MODELS if n in records] + [n for n in records if n not in MODELS]
    rows, runs = [], []
    for name in names:
        r = records[name]
        trained = r.get("test_acc") is not None
        rows.append([name, f"{100 * r['test_acc']:.2f}" if trained else "-",
                     f"{100 * r['val_acc']:.2f}" if trained else "-", f"{r['params'] / 1e6:.2f}", f"{r['gmacs']:.4f}",
                     f"{r['infer']:.0f}", f"{r['train']:.0f}",
                     (f"{r['budget_minutes']:g}" + (" CPU" if r.get("clock") == "cpu" else "")) if trained else "-",
                     threads(r), f"{r['epochs']:.1f}" if trained else "-", f"{r['minutes']:.1f}" if trained else "-",
                     f"{r['load_mean']:.1f} / {r['load_max']:.1f}" if trained else f"{r['load_now']:.1f}",
                     r["seed"], r.get("checkpoint", "-")])
        affinity = f"; ran on CPUs {r['cpu_affinity']} (affinity)" if "cpu_affinity" in r else ""
        runs.append(f"- {name}: `{r['command']}` (commit `{r['commit']}`, {r['date']}, {r.get('cpu', 'CPU not recorded')}; "
                    f"{r['data']}{affinity})")
    table = markdown_table(["model", "test acc %", "val acc %", "params (M)", "GMACs", "infer img/s",
                            "train img/s", "budget (min)", "threads", "epochs", "train min", "load avg (mean / max)",
                            "seed", "checkpoint"], rows)
    notes = ["training: AdamW, linear warm-up then cosine to 1% ending when the time budget ends, label smoothing, "
             "random crop (pad 2) + horizontal flip, 55k training images (5k held out for validation); the test "
             "accuracy is on the official 10k test images unless the row's data says otherwise",
             "epochs: images seen / training images; budget: wall-clock training minutes, or `N CPU`: N minutes "
             "of the process's CPU time (`--budget-clock cpu`, for runs on a loaded machine; its line gives the "
             "wall minutes) (train min: wall minutes from the start of fit, including the start of data-parallel "
             "processes); threads: the process's torch threads, "
             "or processes x threads for data-parallel (DDP) training, whose throughput columns are one process at "
             "the row's threads; load avg: the 1-minute load average sampled each minute of training (mean / "
             "max; untrained rows: when measured) — the machine has 2 cores, other jobs slow the throughput",
             "throughput: 1x28x28 images, batch `--throughput-batch` (64 unless the row's command says otherwise), "
             "best of `--repeats` timed runs of >= 1 s (3 unless the row's command says otherwise), measured at the "
             "start of the row's run; training = forward + backward + AdamW step",
             "GMACs: multiply-adds of one 28x28 image (torch.utils.flop_counter FLOPs / 2; matmuls and convolutions "
             "only, as fvcore; attention counted through scaled_dot_product_attention's math backend)",
             f"rows come from separate runs (merged through benchmarks/results/{STORE.name}), each on the CPU its "
             "line names (the machine line above is where this file was written; throughput compares only within "
             "one CPU); each run's command:"]
    purpose = FILE_PURPOSE.get(STORE.stem)
    head = header("Fashion-MNIST: BiFormer, MambaOut, ViT", notes=([purpose] if purpose else []) + notes)
    return head[:-1] + "\n".join(runs) + "\n\n" + table


def plot_accuracy(records: dict[str, dict], out: str) -> str | None:
    """``results/<out>.png``: each trained row's test accuracy against the epochs its budget bought, with
    the issue's 93% line; returns the file name (None when no row is trained)."""
    trained = {name: r for name, r in records.items() if r.get("test_acc") is not None}
    if not trained:
        return None
    from seqmix.apps.files import pyplot

    plt = pyplot()

    fig, ax = plt.subplots(figsize=(8, 3.6 + 0.16 * len(trained)))
    markers = "osD^vP*Xhp"
    for i, (name, r) in enumerate(trained.items()):
        ax.scatter(r["epochs"], 100 * r["test_acc"], s=36, marker=markers[i % len(markers)], zorder=3,
                   label=f"{name} ({r['budget_minutes']:g} min, {threads(r)} thr.)")
    ax.axhline(93, color="tab:green", linestyle=":", label="issue target (93%, within 30 minutes on 2 cores)")
    ax.set_xlabel("epochs reached in the row's time budget (images seen / 55k)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Fashion-MNIST: accuracy against the epochs a time budget buys", fontsize=10)
    ax.set_xlim(0, max(r["epochs"] for r in trained.values()) * 1.1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(0, -0.16), frameon=False)
    save_figure(fig, out)
    return f"{out}.png"


def write_report(out: str, records: dict[str, dict]) -> Path:
    """``results/<out>.md`` (the table and each row's provenance) and its figure."""
    figure = plot_accuracy(records, out)
    text = render(records) + (f"\n![test accuracy against epochs]({figure})\n" if figure else "")
    return write_result(out, text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS), metavar="NAME")
    parser.add_argument("--max-minutes", type=float, default=30.0,
                        help="training budget per model (wall clock); the learning-rate schedule ends with it")
    parser.add_argument("--budget-clock", default="wall", choices=["wall", "cpu"],
                        help="count --max-minutes on the wall clock, or as this process's CPU time (a shared, "
                             "loaded machine: the cosine and the stop follow the CPU time)")
    parser.add_argument("--max-wall-minutes", type=float, default=None,
                        help="with --budget-clock cpu: stop anyway after this many wall-clock minutes")
    parser.add_argument("--train-limit", type=int, default=None, help="first N training images only")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=None,
                        help=f"peak learning rate (default: model.lr of the model's configs/vision/*.yaml, else {DEFAULT_LR})")
    parser.add_argument("--weight-decay", type=float, default=0.05)
    parser.add_argument("--label-smoothing", type=float, default=0.1)
    parser.add_argument("--warmup", type=int, default=200, help="linear warm-up steps")
    parser.add_argument("--erase-prob", type=float, default=0.0,
                        help="random erasing probability per training image (timm's, per-pixel noise; 0 = off)")
    parser.add_argument("--dataset", default="fashion_mnist", choices=["fashion_mnist", "digits"])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (of each process with --ranks)")
    parser.add_argument("--ranks", type=int, default=1,
                        help="data-parallel training processes (Lightning DDP over the CPU cores, --threads each; "
                             "--batch-size is per process): on 2 cores, 2 x 1 thread trains faster than 1 x 2")
    parser.add_argument("--throughput-batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--test-limit", type=int, default=None, help="first N test images only (short runs)")
    parser.add_argument("--train-models", nargs="*", default=None, choices=list(MODELS), metavar="NAME",
                        help="train only these (default: all of --models); the others get sizes and throughput")
    parser.add_argument("--no-train", action="store_true", help="sizes and throughput only")
    parser.add_argument("--save-checkpoints", action="store_true",
                        help="also write checkpoints/vision/<model>.ckpt (fp16, <= 5 MB) of each trained model "
                             f"({', '.join(CHECKPOINTS)})")
    parser.add_argument("--out", default="vision", help="results name: benchmarks/results/<out>.md and .json")
    parser.add_argument("--render", action="store_true",
                        help="only rewrite benchmarks/results/<out>.md from the rows stored in <out>.json")
    parser.add_argument("--recount-gmacs", action="store_true",
                        help="with --render: count every stored row's GMACs again from its model (no training)")
    parser.add_argument("--model-args", type=json_object, default=None, metavar="JSON",
                        help="keyword arguments for every selected model, e.g. '{\"pos_kernel\": 7}': a candidate "
                             "architecture, in a row of its own (with --out, a file of its own)")
    parser.add_argument("--label", default=None,
                        help="appended to the row name (a recipe variant gets a row of its own, e.g. 'erasing 0.25')")
    args = parser.parse_args()
    if args.recount_gmacs and not args.render:
        parser.error("--recount-gmacs rewrites stored rows: use it with --render")
    if args.budget_clock == "cpu" and args.ranks > 1:
        parser.error("--budget-clock cpu counts this process's CPU time: use it with --ranks 1")
    if args.model_args and args.save_checkpoints:
        parser.error("--save-checkpoints writes the shipped checkpoints of the shipped configs; drop --model-args")
    torch.set_num_threads(args.threads)
    global STORE
    STORE = RESULTS_DIR / f"{args.out}.json"
    if args.render:
        if not STORE.is_file():
            parser.error(f"--render: no stored rows in {STORE}; run the benchmark first")
        if args.recount_gmacs:  # the one stored column that is a function of the architecture alone
            records = update_store(recount_gmacs)
        else:  # reads only: the store stays as it is
            records = json.loads(STORE.read_text())
        print(f"wrote {write_report(args.out, records)}")
        return

    for name in args.models:
        row, factory = variant(name, args.model_args)
        row = f"{row}, {args.label}" if args.label else row
        torch.manual_seed(args.seed)
        model = factory(1, 10, 28)
        params = sum(p.numel() for p in model.parameters())
        macs = gmacs(model.eval(), torch.randn(1, 1, 28, 28))
        infer = images_per_second(model, args.throughput_batch, False, args.repeats)
        train = images_per_second(model, args.throughput_batch, True, args.repeats)
        print(f"{row}: {params / 1e6:.2f}M params, {macs:.4f} GMACs, {infer:.0f} / {train:.0f} img/s "
              f"(load {os.getloadavg()[0]:.1f})", flush=True)
        record = {"model": name, "model_args": args.model_args,  # what --recount-gmacs rebuilds
                  "params": params, "gmacs": macs, "infer": infer, "train": train, "threads": args.threads,
                  "seed": args.seed, "load_now": os.getloadavg()[0], "budget_minutes": args.max_minutes,
                  "cpu_affinity": sorted(os.sched_getaffinity(0)),  # pinned (taskset) runs have cores of their own
                  "cpu": cpu_model(),  # rows merge across runs, maybe across machines: throughput is per CPU
                  "command": command_line(), "commit": git_commit(), "date": utc_now(), "data": "throughput only"}
        if not args.no_train and (args.train_models is None or name in args.train_models):
            record.update(train_and_test(name, factory, args))
            print(f"{row}: test acc {record['test_acc']:.4f} (val {record['val_acc']:.4f}) after "
                  f"{record['minutes']:.1f} min, {record['epochs']:.1f} epochs", flush=True)
        path = write_report(args.out, merge_records({row: record}))  # each row as soon as it is done
        print(f"wrote {path}", flush=True)


if __name__ == "__main__":
    main()
