"""Wall and CPU time of one training epoch of the default forecasting config (issue 4's target: < 60 s on 2 cores).

    python -m benchmarks.forecasting_epoch                  # configs/forecasting/informer_etth1.yaml, 2 threads
    python -m benchmarks.forecasting_epoch --epochs 2 --threads 1
    python -m benchmarks.forecasting_epoch --config configs/forecasting/informer_etth1_paper.yaml --epochs 1 \
        --out forecasting_epoch_paper          # the paper's size, for scale (not a target)

Runs ``seqmix forecasting fit`` in-process on ``--config`` (the default config unless given) for
``--epochs`` full epochs (no validation pass: the time is the training epoch alone), and writes
``benchmarks/results/<out>.md`` and ``.json`` (``forecasting_epoch.json`` by default, which ``forecasting.py``
cites for the target): per-epoch wall and CPU seconds, batches per epoch, the model's parameters, the
machine's load average before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import torch

from benchmarks.common import (REPO_ROOT, RESULTS_DIR, atomic_write_text, command_line, file_digest, git_commit,
                               header, markdown_table, utc_now, write_result)
from benchmarks.forecasting import EpochTimer

DEFAULT_CONFIG = REPO_ROOT / "configs" / "forecasting" / "informer_etth1.yaml"
TARGET_S = 60.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    parser.add_argument("--epochs", type=int, default=2, help="full training epochs to time")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="forecasting_epoch",
                        help="results name: benchmarks/results/<out>.md and .json (forecasting.py reads the default)")
    args = parser.parse_args(argv)
    if not args.config.exists():
        raise SystemExit(f"forecasting_epoch.py: no config at {args.config}")
    torch.set_num_threads(args.threads)

    from seqmix.apps.forecasting.app import APP
    from seqmix.cli import app_cli

    load_before = os.getloadavg()[0]
    timer = EpochTimer()
    with tempfile.TemporaryDirectory(prefix="seqmix_epoch_") as tmp:
        cli = app_cli(APP, ["--config", str(args.config), "--seed_everything", str(args.seed),
                            "--trainer.max_epochs", str(args.epochs), "--trainer.callbacks", "[]",
                            "--trainer.default_root_dir", tmp, "--trainer.logger", "false",
                            "--trainer.enable_checkpointing", "false", "--trainer.enable_progress_bar", "false",
                            "--trainer.enable_model_summary", "false", "--trainer.limit_val_batches", "0"], run=False)
        cli.trainer.callbacks.append(timer)
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
        batches = cli.trainer.num_training_batches
        params = sum(p.numel() for p in cli.model.parameters())
    load_after = os.getloadavg()[0]

    config = args.config.resolve().relative_to(REPO_ROOT) if args.config.resolve().is_relative_to(REPO_ROOT) else args.config
    is_default = args.config.resolve() == DEFAULT_CONFIG.resolve()
    rows = [[i + 1, batches, f"{wall:.1f}", f"{cpu:.1f}", "yes" if wall < TARGET_S else "no"]
            for i, (wall, cpu) in enumerate(zip(timer.wall, timer.cpu))]
    notes = [f"config: `{config}` (full epochs, the config's own batch size and model: {params / 1e6:.2f}M parameters)",
             f"torch threads: {args.threads}; load average (1 min) {load_before:.2f} before, {load_after:.2f} after",
             "epoch time: wall and process CPU seconds from the start to the end of the training epoch "
             "(validation off: limit_val_batches 0)",
             f"target: one epoch of the default config under {TARGET_S:.0f} s wall on 2 cores"
             + ("" if is_default else " (another config here: the column is for scale only)")]
    title = "the default config" if is_default else f"`{config.name}`"
    text = header(f"Forecasting: one training epoch of {title}", seeds=[args.seed], notes=notes)
    text += markdown_table(["epoch", "batches", "wall s", "CPU s", f"< {TARGET_S:.0f} s"], rows)
    path = write_result(args.out, text)
    summary = {"config": str(config), "config_sha256": file_digest(args.config), "threads": args.threads,
               "params": params, "epochs_wall_s": timer.wall, "epochs_cpu_s": timer.cpu,
               "batches": batches, "load_before": round(load_before, 2), "load_after": round(load_after, 2),
               "command": command_line(), "commit": git_commit(), "date": utc_now(), "seed": args.seed}
    # the default name is the target's record, read by forecasting.py
    atomic_write_text(RESULTS_DIR / f"{args.out}.json", json.dumps(summary, indent=1) + "\n")
    print(text)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
