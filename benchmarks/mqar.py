"""MQAR recall against state size: the recall-memory frontier of Zoology / BASED, for every mixer.

Each point trains the recall app from ``configs/recall/<mixer>.yaml`` (``base.yaml`` + the mixer) with the model width,
sequence length and number of key-value pairs overridden, then measures test accuracy on
the queried positions. The state size is ``mixer.state_size(T)`` summed over layers: the
floats a sequence keeps at inference (the KV cache for attention, the recurrent state for
the linear family and RNNs).

    python -m benchmarks.mqar                                # every mixer with a config, widths 64 128 256
    python -m benchmarks.mqar --mixers softmax gla --widths 64 128 --max-steps 300   # a budgeted run
    python -m benchmarks.mqar --demo                         # `make demo`: softmax vs gla, T=64, 4 pairs
    python -m benchmarks.mqar --configs titans_mag titans_mac --widths 32 64   # rows named by their config file
    python -m benchmarks.mqar --mixers deltanet --seed 0 1 --read-twice        # two seeds, context read twice

A row is a registered mixer (``--mixers``: ``configs/recall/<mixer>.yaml``, which must build that mixer) or a
config file (``--configs``: ``configs/recall/<stem>.yaml``, the row named by the stem, e.g. ``titans_mag``), so
that config variants of one mixer (a layout, a block option) are rows of their own.

Every finished point is appended to ``benchmarks/results/<name>_points.jsonl`` with its full
setting; a rerun with the same setting skips the points already there, so a long sweep can be
stopped and resumed, or split over processes (``--mixers`` subsets, same ``--name``). The table
is rendered from every stored point of the current setting (``--render`` renders only). A point made
stale by a change of its mixer is rerun with ``--replace``: its stored line is dropped when the new one
is written (the stale point stays if the rerun fails).

Writes ``benchmarks/results/mqar.md`` and ``mqar.png`` (``mqar_demo.*`` with ``--demo``). The demo
also keeps its trained models in a new ``runs/recall/demo/version_N/`` folder (``<mixer>.ckpt``) and
answers MQAR queries with the softmax model by decoding (``seqmix recall generate``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
from pathlib import Path

import pytorch_lightning as pl
import torch
from tqdm import tqdm

from benchmarks.common import (REPO_ROOT, Stopwatch, atomic_write_text, cpu_model, git_commit, header, markdown_table,
                               results_lock, save_figure, utc_now, write_result)

CONFIG_DIR = REPO_ROOT / "configs" / "recall"
DEMO_MIXERS = ("softmax", "gla")


def configured_mixers() -> list[str]:
    """Mixers that have a recall config named after them (``configs/recall/<mixer>.yaml``, each complete: it
    includes base.yaml). Other configs there (``base.yaml``, variants such as ``tnl.yaml``) are no mixer's."""
    from seqmix.core import list_mixers

    registered = set(list_mixers())
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml") if p.stem in registered)


def check_mixers(names: list[str]) -> None:
    from seqmix.core import list_mixers

    registered, configured = set(list_mixers()), set(configured_mixers())
    unknown = [n for n in names if n not in registered]
    if unknown:
        raise SystemExit(f"mqar.py: unknown mixer(s) {unknown}; registered mixers: {sorted(registered)}")
    no_config = [n for n in names if n not in configured]
    if no_config:
        raise SystemExit(f"mqar.py: no recall config for {no_config}; write configs/recall/<name>.yaml "
                         f"(configs exist for {sorted(configured)})")


def check_configs(names: list[str]) -> None:
    """``--configs`` names: stems of ``configs/recall/<stem>.yaml`` files other than ``base.yaml`` (which builds
    no model of its own)."""
    available = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml") if p.stem != "base")
    missing = [n for n in names if n not in available]
    if missing:
        raise SystemExit(f"mqar.py: no config configs/recall/<name>.yaml for --configs {missing}; give a file "
                         f"stem (without .yaml) of {available}, or write the config")


def row_names(mixers: list[str], configs: list[str]) -> list[tuple[str, bool]]:
    """The rows to run, in order: ``(name, by_config)``, ``by_config`` when the row is named by its config file
    (``--configs``) rather than by the registered mixer its config must build (``--mixers``). A name given
    twice (or as both) would make two rows with one key: refused."""
    names = [*mixers, *configs]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise SystemExit(f"mqar.py: {twice} named twice (--mixers and --configs together name each row once); "
                         "drop the repeats")
    return [(n, False) for n in mixers] + [(n, True) for n in configs]


class StepBar(pl.Callback):
    """A tqdm bar over training steps (Lightning's own bar is off so the sweep's output stays readable)."""

    def __init__(self, total: int, desc: str):
        self.bar = tqdm(total=total, desc=desc, leave=False, unit="step", dynamic_ncols=True)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.bar.update(1)
        if trainer.global_step % 25 == 0 and outputs is not None:
            self.bar.set_postfix(loss=f"{float(outputs['loss']):.3f}")

    def on_train_end(self, trainer, pl_module):
        self.bar.close()


def run_point(mixer: str, width: int | None, args: argparse.Namespace, keep: Path | None = None, *,
              seed: int = 0, by_config: bool = False) -> dict[str, object]:
    """Train and test one (row, width, seed); ``None`` for a setting keeps the config's value. The row is a
    registered mixer, or with ``by_config`` a config stem (``configs/recall/<mixer>.yaml`` either way). With
    ``keep`` (a folder), the trained model is saved there as ``<mixer>.ckpt``."""
    with tempfile.TemporaryDirectory(prefix="mqar_") as scratch:  # Lightning's config.yaml goes there, not runs/
        return train_and_test(mixer, width, args, scratch, keep, seed=seed, by_config=by_config)


def new_run_folder(parent: Path) -> Path:
    """A new, empty ``parent/version_N`` (N one more than the largest there): a run never overwrites another's."""
    parent.mkdir(parents=True, exist_ok=True)
    taken = [int(p.name.split("_")[1]) for p in parent.glob("version_*") if p.name.split("_")[1].isdigit()]
    folder = parent / f"version_{max(taken, default=-1) + 1}"
    folder.mkdir()  # fails rather than reuse a folder another process made meanwhile
    return folder


def train_and_test(mixer: str, width: int | None, args: argparse.Namespace, root_dir: str,
                   keep: Path | None = None, *, seed: int = 0, by_config: bool = False) -> dict[str, object]:
    from seqmix.cli import app_cli, load_app

    argv = ["--config", str(CONFIG_DIR / f"{mixer}.yaml"), "--seed_everything", str(seed),
            "--trainer.default_root_dir", root_dir,
            "--data.seed", str(seed),
            "--trainer.logger", "false", "--trainer.enable_checkpointing", "false", "--trainer.callbacks", "[]",
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
            "--trainer.limit_val_batches", "0", "--trainer.num_sanity_val_steps", "0"]
    overrides = {"model.d_model": width, "data.seq_len": args.seq_len, "data.num_kv_pairs": args.kv_pairs,
                 "data.vocab_size": args.vocab_size, "data.batch_size": args.batch_size,
                 "data.num_train": args.num_train, "trainer.max_steps": args.max_steps, "model.lr": args.lr,
                 "model.mlp_ratio": args.mlp_ratio, "model.positions": args.positions,
                 "data.train_kv_pairs": None if args.train_kv_pairs is None else json.dumps(args.train_kv_pairs),
                 "data.read_twice": args.read_twice}
    for key, value in overrides.items():
        if value is not None:
            argv += [f"--{key}", str(value)]
    cli = app_cli(load_app("recall"), argv, run=False)
    model, data, trainer = cli.model, cli.datamodule, cli.trainer
    mixers = [block.mixer for block in model.stack.blocks]
    if not by_config and mixers[0].registry_name != mixer:
        raise SystemExit(f"mqar.py: configs/recall/{mixer}.yaml builds {type(mixers[0]).__name__} "
                         f"(registered as {mixers[0].registry_name!r}), not {mixer!r}; fix its class_path")
    steps = trainer.max_steps
    desc = f"{mixer} d={model.hparams.d_model}"
    trainer.callbacks.append(StepBar(steps, desc))
    with Stopwatch() as watch:
        trainer.fit(model, datamodule=data)
    train_s = watch.wall_s
    if keep is not None:
        trainer.save_checkpoint(keep / f"{mixer}.ckpt")  # names its app and the data (seqmix recall generate)
    result = trainer.test(model, datamodule=data, verbose=False)[0]
    seq_len = data.hparams.seq_len
    return {
        "mixer": mixer, "registered": mixers[0].registry_name, "config": f"configs/recall/{mixer}.yaml",
        "d_model": model.hparams.d_model, "acc": float(result["test/acc"]),
        "state": sum(m.state_size(seq_len) for m in mixers),
        "params": sum(p.numel() for p in model.parameters()), "train_s": train_s, "steps": trainer.global_step,
        "seq_len": seq_len, "kv_pairs": data.hparams.num_kv_pairs, "vocab": data.hparams.vocab_size,
        "batch": data.hparams.batch_size, "lr": model.hparams.lr, "mlp_ratio": model.hparams.mlp_ratio,
        "train_kv_pairs": data.hparams.train_kv_pairs, "read_twice": STORED_READ[read_mode(data.hparams.read_twice)],
        "positions": model.hparams.positions, "max_steps": args.max_steps, "seed": seed,
        "threads": torch.get_num_threads(), "load_1min": round(os.getloadavg()[0], 2),
        "cpu": cpu_model(), "commit": git_commit(), "date": utc_now(),  # points merge across runs and machines
    }


def setting_of(args: argparse.Namespace) -> dict[str, object]:
    """The sweep-wide setting a stored point must match to be reused (the lr is per point: configs differ). The
    seeds are a tuple: a point of any of them matches (``matches``)."""
    return {"seq_len": args.seq_len, "kv_pairs": args.kv_pairs, "vocab": args.vocab_size, "batch": args.batch_size,
            "mlp_ratio": args.mlp_ratio, "train_kv_pairs": args.train_kv_pairs, "positions": args.positions,
            "max_steps": args.max_steps,
            "seed": tuple(args.seed)}


def matches(row: dict[str, object], setting: dict[str, object]) -> bool:
    """Whether a stored point is of ``setting``: equal values, ``None`` = any, a tuple = one of (the seeds)."""
    return all(value is None or (row.get(key) in value if isinstance(value, tuple) else row.get(key) == value)
               for key, value in setting.items())


def load_points(path: Path, setting: dict[str, object], lr: float | None) -> list[dict[str, object]]:
    """Stored points of this setting (and of this lr override, when one is given)."""
    if not path.exists():
        return []
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise SystemExit(f"mqar.py: {path}:{number} is not a JSON line ({err}); delete that line and rerun")
        if matches(row, setting) and (lr is None or row["lr"] == lr):
            rows.append(row)
    first = {}  # two processes may finish the same point: the first stored one counts
    for row in rows:
        first.setdefault((*point_key(row), row["lr"]), row)
    return list(first.values())


def append_point(path: Path, row: dict[str, object]) -> None:
    """One JSON line per point, appended in a single write (safe for parallel sweeps on one file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")


def replace_point(path: Path, row: dict[str, object], setting: dict[str, object], lr: float | None) -> int:
    """Store ``row`` in place of the stored points it reruns (same setting, mixer, width, read-twice mode and seed, and
    the same lr when ``lr`` overrides it); every other line is kept as it is. The file is rewritten under its
    lock and renamed into place: a process appending to it without ``--replace`` at that moment may lose its
    line (run ``--replace`` alone on a points file). Returns the number of lines dropped."""
    kept, dropped = [], 0
    with results_lock(path.name):
        lines = path.read_text().splitlines() if path.exists() else []
        for line in lines:
            try:
                old = json.loads(line) if line.strip() else None
            except json.JSONDecodeError:
                old = None  # not a point: kept (load_points names it)
            if (old is not None and matches(old, setting) and point_key(old) == point_key(row)
                    and (lr is None or old["lr"] == lr)):
                dropped += 1
                continue
            if line.strip():
                kept.append(line)
        atomic_write_text(path, "".join(f"{line}\n" for line in [*kept, json.dumps(row)]))
    return dropped


def provenance(rows: list[dict[str, object]]) -> str:
    """Which CPU and commit ran how many points, and when: a table merges points of several runs."""
    groups: dict[tuple[str, str], list[str]] = {}
    for r in rows:
        key = (str(r.get("cpu", "CPU not recorded")), str(r.get("commit", "commit not recorded")))
        groups.setdefault(key, []).append(str(r.get("date", "")))
    parts = []
    for (cpu, commit), dates in sorted(groups.items()):
        known = sorted(d for d in dates if d)
        when = "" if not known else f", {known[0]}" + (f" to {known[-1]}" if known[-1] != known[0] else "")
        parts.append(f"{len(dates)} point{'s' * (len(dates) != 1)} on {cpu} at {commit}{when}")
    return "points ran: " + "; ".join(parts)


READ_MODES = ("once", "context", "prompt")
STORED_READ = {"once": False, "context": True, "prompt": "prompt"}  # a point's "read_twice" (older points: bool)
READ_LABELS = {"once": "", "context": " (read twice)", "prompt": " (prompt read twice)"}


def read_mode(read_twice: object) -> str:
    """``"once"``, ``"context"`` (the key-value block read twice) or ``"prompt"`` (the whole example read twice,
    the paper's A(C, Q, C, Q)) for a point's or a datamodule's ``read_twice`` (JRT-Prompt; see recall/data.py)."""
    if read_twice is None or read_twice is False:
        return "once"
    if read_twice is True or read_twice == "context":
        return "context"
    if read_twice == "prompt":
        return "prompt"
    raise SystemExit(f"mqar.py: read_twice={read_twice!r} is not a JRT-Prompt setting (false, true, 'context', "
                     "'prompt'); fix or delete that stored point")


def point_key(row: dict[str, object]) -> tuple[str, int, str, int]:
    """What tells one stored point from another of the same setting: row name (mixer or config stem), width,
    what of the example was read twice (JRT-Prompt; points stored before the option are read once), and seed."""
    return row["mixer"], row["d_model"], read_mode(row.get("read_twice", False)), int(row.get("seed", 0))


def series(row: dict[str, object]) -> str:
    """A mixer's name, marked when its context (or whole prompt) was read twice (JRT-Prompt)."""
    return str(row["mixer"]) + READ_LABELS[read_mode(row.get("read_twice", False))]


def paired_p(once: dict[int, float], twice: dict[int, float]) -> str:
    """The one-sided Wilcoxon signed-rank p-value that reading twice raises accuracy, over the seeds both ran."""
    from scipy.stats import wilcoxon

    paired = set(once) & set(twice)
    changes = [twice[s] - once[s] for s in paired if twice[s] != once[s]]
    if len(paired) < 2 or not changes:
        return "–"
    return f"{wilcoxon(changes, alternative='greater', method='exact').pvalue:.3g}"


def jrt_table(rows: list[dict[str, object]]) -> str:
    """Read once and read twice side by side per (mixer, width), with the change; "" without read-twice points.

    One seed: the accuracies and their difference. Several: each cell is the mean over its seeds with the
    seeds' values after it, the change is the mean over the seeds both modes ran of (twice - once), and a
    column per mode says whether the change is beyond the seed spread: every read-twice seed above every
    read-once seed ("yes"), every one below ("lower"), else "no" ("–" with fewer than 2 seeds in either), and
    one gives the one-sided Wilcoxon signed-rank test's p-value of the paired changes (twice > once; exact,
    zero changes dropped; "–" with fewer than 2 paired seeds)."""
    acc = {point_key(r): r["acc"] for r in rows}
    modes = [m for m in READ_MODES[1:] if any(k[2] == m for k in acc)]
    if not modes:
        return ""
    several = any(len({k[3] for k in acc if k[:3] == key[:3]}) > 1 for key in acc)
    names = {"context": "context read twice", "prompt": "prompt read twice"}

    def seeds_of(mixer: str, width: int, mode: str) -> dict[int, float]:
        return {k[3]: a for k, a in sorted(acc.items()) if k[:3] == (mixer, width, mode)}

    def cell(values: dict[int, float]) -> str:
        if not values:
            return "–"
        mean = f"{sum(values.values()) / len(values):.4f}"
        return mean if len(values) == 1 else f"{mean} ({' / '.join(f'{v:.4f}' for v in values.values())})"

    body = []
    for mixer, width in sorted({k[:2] for k in acc}):
        once = seeds_of(mixer, width, "once")
        cells = [mixer, width, cell(once)]
        for mode in modes:
            twice = seeds_of(mixer, width, mode)
            paired = sorted(set(once) & set(twice))
            cells.append(cell(twice))
            cells.append(f"{sum(twice[s] - once[s] for s in paired) / len(paired):+.4f}" if paired else "–")
            if several:
                if min(len(once), len(twice)) < 2:
                    cells.append("–")
                else:
                    cells.append("yes" if min(twice.values()) > max(once.values()) else
                                 "lower" if max(twice.values()) < min(once.values()) else "no")
                cells.append(paired_p(once, twice))
        body.append(cells)
    head = ["mixer", "d_model", "read once"]
    for m in modes:
        head += [names[m], "change"] + (["beyond seed spread", "paired p"] if several else [])
    return markdown_table(head, body)


def plot(rows: list[dict[str, object]], title: str):
    from seqmix.apps.files import pyplot

    plt = pyplot()

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    markers = "osD^v<>pPX*hH8d"
    colors = [*plt.get_cmap("tab10").colors, *plt.get_cmap("Dark2").colors]
    for i, mixer in enumerate(sorted({series(r) for r in rows})):
        pts = sorted((r["state"], r["acc"], r["d_model"]) for r in rows if series(r) == mixer)
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        ax.plot(xs, ys, marker=markers[i % len(markers)], color=colors[i % len(colors)], label=mixer, linewidth=1)
        for x, y, d in pts:
            ax.annotate(str(d), (x, y), textcoords="offset points", xytext=(3, 3), fontsize=6, color=colors[i % len(colors)])
    ax.set_xscale("log")
    ax.margins(x=0.1)
    ax.set_xlabel("state size (floats per sequence, summed over layers)")
    ax.set_ylabel("MQAR test accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, ncol=2, loc="best")
    return fig


def report(rows: list[dict[str, object]], args: argparse.Namespace, name: str, title: str, skipped: list[str]) -> str:
    rows = sorted(rows, key=point_key)
    r0 = rows[0]
    budget = (f"budget: {args.max_steps if args.max_steps is not None else 'each config'} steps per point "
              f"(steps actually run are in the table), batch {r0['batch']}, T={r0['seq_len']}, "
              f"{r0['kv_pairs']} key-value pairs, vocab {r0['vocab']}, MLP ratio {r0['mlp_ratio']:g}, "
              "2 layers, other settings from configs/recall/<mixer>.yaml")
    if r0.get("train_kv_pairs"):
        budget += (f"; training examples spread evenly over {r0['train_kv_pairs']} key-value pairs at T={r0['seq_len']} "
                   f"(Zoology's mixture of easier settings), test on {r0['kv_pairs']} pairs only")
    notes = [budget, "accuracy: fraction of queried positions whose value is predicted exactly (test split, "
             "generated from its own seed stream)",
             "state: `mixer.state_size(T)` summed over layers (KV cache for attention, recurrent state otherwise)",
             "train time: wall clock of `trainer.fit` at the stated torch threads; load (1 min) is the machine's "
             "load average when the point finished: with a load above the 2 cores the point shared the CPU with "
             "other jobs, so its time is not a speed measurement"]
    notes.append(provenance(rows))
    if skipped:
        notes.append(f"registered mixers without a recall config, not run: {', '.join(skipped)}")
    notes += args.note
    table = markdown_table(
        ["mixer", "d_model", "test acc", "state (floats)", "params", "steps", "lr", "train time (s)", "threads",
         "load", "seed"],
        [[series(r), r["d_model"], f"{r['acc']:.4f}", f"{r['state']:,}", f"{r['params']:,}", r["steps"],
          f"{r['lr']:g}", f"{r['train_s']:.0f}", r.get("threads", "–"), r.get("load_1min", "–"), r["seed"]]
         for r in rows])
    text = header(title, seeds=sorted({int(r["seed"]) for r in rows}), notes=notes) + table
    side_by_side = jrt_table(rows)
    if side_by_side:
        text += ("\n## JRT-Prompt: read once and read twice, the same budget\n\n"
                 "Test accuracy of the rows above; change = read twice - read once (with several seeds: each "
                 "cell is the mean, the seeds' values in brackets, the change is the mean paired change, and "
                 "\"beyond seed spread\" is yes when every read-twice seed beats every read-once seed; \"paired p\": the "
                 "one-sided Wilcoxon signed-rank test of the paired changes, exact).\n\n"
                 + side_by_side)
    text += f"\n![accuracy vs state size]({name}.png)\n"
    write_result(name, text)
    save_figure(plot(rows, f"{title}\nT={r0['seq_len']}, {r0['kv_pairs']} pairs"), name)
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo", action="store_true",
                        help=f"`make demo`: train {' and '.join(DEMO_MIXERS)} as configured (T=64, 4 pairs, "
                             "d_model 64), print the table, save benchmarks/results/mqar_demo.{md,png}")
    parser.add_argument("--mixers", nargs="+", default=[],
                        help="mixer names (default, without --configs: every registered mixer with a config)")
    parser.add_argument("--configs", nargs="+", default=[],
                        help="rows named by a config file: stems of configs/recall/<stem>.yaml (e.g. titans_mag "
                             "titans_mac, config variants of one mixer); the row is the stem")
    parser.add_argument("--widths", nargs="+", type=int, default=[64, 128, 256], help="model widths (d_model)")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--kv-pairs", type=int, default=16)
    parser.add_argument("--vocab-size", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--num-train", type=int, default=32_000)
    parser.add_argument("--max-steps", type=int, default=2000, help="training steps per point")
    parser.add_argument("--lr", type=float, default=None, help="override every config's learning rate")
    parser.add_argument("--mlp-ratio", type=float, default=None,
                        help="override every config's MLP width ratio (0 = no MLP, as Zoology's MQAR models)")
    parser.add_argument("--train-kv-pairs", nargs="+", type=int, default=None,
                        help="spread the training examples over these pair counts (Zoology's mixture of easier "
                             "settings); test stays at --kv-pairs")
    parser.add_argument("--positions", choices=["learned", "sinusoidal", "none"], default=None,
                        help="override every config's position encoding")
    parser.add_argument("--read-twice", nargs="?", const="context", default=None, choices=["context", "prompt"],
                        help="JRT-Prompt (Arora et al. 2024): every example's key-value context (alone or "
                             "'context', C C Q) or whole example ('prompt', C Q C Q) is read twice "
                             "(data.read_twice); stored beside the read-once points of the same setting")
    parser.add_argument("--render", action="store_true", help="only render the table from the stored points")
    parser.add_argument("--replace", action="store_true",
                        help="rerun the --mixers x --widths points even if stored (e.g. after a change of the mixer) "
                             "and drop the stored points of the same setting they replace; without it stored points "
                             "are skipped. Run it alone on its points file (it rewrites the file)")
    parser.add_argument("--note", action="append", default=[],
                        help="a line added to the results file's notes (e.g. how the sweep was run); repeatable")
    parser.add_argument("--seed", type=int, nargs="+", default=[0],
                        help="seeds (model and data); each point runs once per seed")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--name", default=None, help="results file stem (default mqar, or mqar_demo with --demo)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from seqmix.core import list_mixers

    if args.demo:
        if args.configs or len(args.seed) > 1:
            raise SystemExit("mqar.py: --demo trains softmax and gla at one seed; drop --configs and extra --seed")
        mixers, widths = list(DEMO_MIXERS), [None]
        for key in ("seq_len", "kv_pairs", "vocab_size", "batch_size", "num_train", "max_steps"):
            setattr(args, key, None)  # the configs' own settings
        name, title = args.name or "mqar_demo", "MQAR demo: softmax attention vs GLA"
    else:
        mixers = args.mixers or ([] if args.configs else configured_mixers())
        widths = args.widths
        name, title = args.name or "mqar", "MQAR recall vs state size"
    check_mixers(mixers)
    check_configs(args.configs)
    rows_named = row_names(mixers, args.configs)
    if args.replace and (args.render or args.demo or not (args.mixers or args.configs)):
        raise SystemExit("mqar.py: --replace reruns the stored points of the named --mixers / --configs; pass them "
                         "and drop --render / --demo (they store or run no points)")
    named = args.mixers or args.configs
    skipped = [] if named or args.demo else sorted(set(list_mixers()) - set(configured_mixers()))
    if skipped:
        print(f"mqar.py: registered mixers without configs/recall/<name>.yaml, not run: {skipped}")

    points_file = Path(__file__).resolve().parent / "results" / f"{name}_points.jsonl"
    setting = setting_of(args)
    done = {point_key(r) for r in load_points(points_file, setting, args.lr)} if not args.demo else set()
    mode = read_mode(args.read_twice)
    if args.replace:
        stale = [k for k in done if (k[0], k[1], k[3]) in {(m, w, s) for m, _ in rows_named for w in widths
                                                           for s in args.seed} and k[2] == mode]
        print(f"mqar.py: --replace: {len(stale)} stored point(s) of this setting will be rerun and replaced: "
              f"{sorted(stale)}")
        done -= set(stale)
    points = [(m, by_config, w, s) for m, by_config in rows_named for w in widths for s in args.seed
              if (m, w, mode, s) not in done]
    if done and not args.render:
        print(f"mqar.py: {len(done)} point(s) of this setting already in {points_file.name}, "
              f"{len(points)} left to run")
    keep = new_run_folder(REPO_ROOT / "runs" / "recall" / "demo") if args.demo else None
    rows = []
    total = Stopwatch().start()
    for mixer, by_config, width, seed in ([] if args.render else
                                          tqdm(points, desc="MQAR points", unit="point", dynamic_ncols=True)):
        if not args.demo and not args.replace and (mixer, width, mode, seed) in {
                point_key(r) for r in load_points(points_file, setting, args.lr)}:
            continue  # another process of the same sweep stored it meanwhile
        row = run_point(mixer, width, args, keep, seed=seed, by_config=by_config)
        rows.append(row)
        if args.replace:
            dropped = replace_point(points_file, row, setting, args.lr)
            tqdm.write(f"mqar.py: {mixer} d={width} seed {seed}: replaced {dropped} stored point(s)")
        elif not args.demo:
            append_point(points_file, row)
        tqdm.write(f"{row['mixer']:>18} d={row['d_model']:<4} seed {seed} acc {row['acc']:.4f}  "
                   f"state {row['state']:>10,}  {row['train_s']:.0f} s")
    if not args.demo:
        rows = load_points(points_file, setting, args.lr)
    if not rows:
        raise SystemExit(f"mqar.py: no points of this setting in {points_file}; run without --render first")
    table = report(rows, args, name, title, skipped)
    print(table)
    print(f"total {math.ceil(total.stop().wall_s)} s; wrote benchmarks/results/{name}.md and {name}.png")
    if keep is not None:
        return decode_with_demo_model(keep / f"{DEMO_MIXERS[0]}.ckpt")
    return 0


def decode_with_demo_model(ckpt: Path) -> int:
    """The demo's last step: the softmax model answers MQAR queries by decoding (KV cache, greedy)."""
    from seqmix.cli import main as seqmix_main

    shown = os.path.relpath(ckpt)
    print(f"\ndecoding with the demo's softmax model: seqmix recall generate --ckpt {shown} --examples 8")
    return seqmix_main(["recall", "generate", "--ckpt", str(ckpt), "--examples", "8"])


if __name__ == "__main__":
    sys.exit(main())
