"""Train the small Fashion-MNIST checkpoints of the vision app (BiFormer-T and MambaOut-Femto, scaled).

    python scripts/train_vision_checkpoints.py [--models biformer_tiny_28 mambaout_femto_28]
        [--max-minutes 30] [--max-epochs 30] [--threads 2]

Fits ``configs/vision/<model>.yaml`` (seed 0) within the budget, tests on the 10k test images,
and writes ``checkpoints/vision/<model>.ckpt`` atomically: weights in fp16 (loaded back into
fp32), hyper-parameters and the data description (normalisation, class names), no optimizer
state, so each stays under 5 MB. Prints the test accuracy and the training time.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
KEEP = ("state_dict", "hyper_parameters", "hparams_name", "datamodule_hyper_parameters",
        "datamodule_hparams_name", "ImageDataModule", "pytorch-lightning_version", "epoch", "global_step")
MAX_BYTES = 5_000_000


def duration(minutes: float) -> str:
    """Lightning's ``DD:HH:MM:SS`` for a number of minutes."""
    seconds = int(round(minutes * 60))
    return f"{seconds // 86400:02d}:{seconds // 3600 % 24:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def train(name: str, args) -> None:
    from seqmix.apps.vision.app import APP
    from seqmix.cli import app_cli

    with tempfile.TemporaryDirectory(prefix="seqmix_vision_") as tmp:
        cli = app_cli(APP, ["--config", str(REPO / f"configs/vision/{name}.yaml"),
                            "--trainer.max_epochs", str(args.max_epochs),
                            "--trainer.max_time", duration(args.max_minutes),
                            "--trainer.default_root_dir", tmp, "--trainer.logger", "false",
                            "--trainer.callbacks.init_args.dirpath", tmp,
                            "--trainer.enable_progress_bar", "false"], run=False)
        start = time.perf_counter()
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
        minutes = (time.perf_counter() - start) / 60
        result = cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)[0]
        full = torch.load(Path(tmp) / "last.ckpt", map_location="cpu", weights_only=False)
    small = {k: v for k, v in full.items() if k in KEEP}
    small["state_dict"] = {k: v.half() if v.is_floating_point() else v for k, v in small["state_dict"].items()}
    out = REPO / "checkpoints" / "vision" / f"{name}.ckpt"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    torch.save(small, tmp_out)
    if tmp_out.stat().st_size > MAX_BYTES:
        size = tmp_out.stat().st_size
        tmp_out.unlink()
        raise SystemExit(f"{name}: checkpoint is {size / 1e6:.1f} MB > 5 MB; use a smaller model")
    os.replace(tmp_out, out)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB): test acc {result['test/acc']:.4f} after "
          f"{minutes:.1f} min, {small['epoch'] + 1} epoch(s), seed 0")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["biformer_tiny_28", "mambaout_femto_28"],
                        choices=["biformer_tiny_28", "mambaout_femto_28"])
    parser.add_argument("--max-epochs", type=int, default=30)
    parser.add_argument("--max-minutes", type=float, default=30.0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    for name in args.models:
        train(name, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
