"""Train the small pretrained ETTh1 Informer used in the docs' predict example.

    python scripts/train_informer_etth1.py [--max-epochs N] [--limit-train-batches 1.0] [--threads T]

Fits ``configs/forecasting/informer_etth1.yaml`` (seed 0, early stopping on val/mse), tests the
best checkpoint, and writes it to ``checkpoints/forecasting/informer_etth1.ckpt`` without the
optimizer state (what ``seqmix forecasting predict`` needs: weights, hyper-parameters, the
data description and training scaler), atomically. Prints the test metrics.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import torch

from seqmix.apps.files import save_checkpoint
from seqmix.apps.module import APP_KEY

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "checkpoints" / "forecasting" / "informer_etth1.ckpt"
KEEP = ("state_dict", "hyper_parameters", "hparams_name", "datamodule_hyper_parameters",
        "datamodule_hparams_name", "ForecastDataModule", "pytorch-lightning_version", "epoch", "global_step", APP_KEY)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-epochs", type=int, default=None, help="default: the config's trainer.max_epochs")
    parser.add_argument("--limit-train-batches", type=float, default=1.0, help="fraction of each training epoch")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    if args.max_epochs is not None and args.max_epochs < 1:
        parser.error(f"--max-epochs must be >= 1, got {args.max_epochs}")
    torch.set_num_threads(args.threads)
    os.environ.setdefault("SEQMIX_DATA", str(REPO.parent / "shared" / "data"))

    from seqmix.apps.forecasting.app import APP
    from seqmix.cli import app_cli

    with tempfile.TemporaryDirectory(prefix="seqmix_informer_") as tmp:
        cli = app_cli(APP, ["--config", str(REPO / "configs/forecasting/informer_etth1.yaml"),
                            *(["--trainer.max_epochs", str(args.max_epochs)] if args.max_epochs is not None else []),
                            "--trainer.limit_train_batches", str(args.limit_train_batches),
                            "--trainer.default_root_dir", tmp,
                            "--trainer.logger", "false", "--trainer.enable_progress_bar", "false"], run=False)
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
        result = cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path="best", verbose=False)[0]
        full = torch.load(cli.trainer.checkpoint_callback.best_model_path, map_location="cpu", weights_only=True)
    small = {k: v for k, v in full.items() if k in KEEP}
    save_checkpoint(small, OUT)
    print(f"wrote {OUT} ({OUT.stat().st_size / 1e6:.2f} MB, epoch {small['epoch']}); "
          f"test MSE {result['test/mse']:.4f} MAE {result['test/mae']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
