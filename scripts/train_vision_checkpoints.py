"""Train the small Fashion-MNIST checkpoints of the vision app (BiFormer-T and MambaOut-Femto, scaled).

    python scripts/train_vision_checkpoints.py [--max-minutes 30] [--threads 1] [--ranks 1] [--lr LR]

One run per model: with one thread in one process both at once (one per core of a 2-core
machine), otherwise one after the other (each run then has the machine to itself; ``--ranks 2
--threads 1`` trains data-parallel, one process per core). Each is ``python -m benchmarks.vision --models
<model> --threads T --ranks R --max-minutes M --save-checkpoints``, which
trains within the budget (the learning-rate schedule ends with it), tests on the 10k test images,
writes ``checkpoints/vision/<model>.ckpt`` (fp16 weights, hyper-parameters and the data
description, no optimizer state: <= 5 MB) and its row of ``benchmarks/results/vision.md``.
So a checkpoint always comes with the accuracy, time and epochs measured on it.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MODELS = ("BiFormer-T (scaled)", "MambaOut-Femto (scaled)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--max-minutes", type=float, default=30.0, help="training budget of each model")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads per process; 1 (and --ranks 1) runs the models side by side")
    parser.add_argument("--ranks", type=int, default=1, help="data-parallel training processes per run")
    parser.add_argument("--batch-size", type=int, default=64, help="images per process per step")
    parser.add_argument("--lr", type=float, default=None, help="peak lr (default: each model's config)")
    args = parser.parse_args(argv)
    if args.threads < 1 or args.ranks < 1:
        parser.error(f"--threads and --ranks must be >= 1, got {args.threads}, {args.ranks}")

    def start(name: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "benchmarks.vision", "--models", name,
                                 "--threads", str(args.threads), "--ranks", str(args.ranks),
                                 "--batch-size", str(args.batch_size), "--max-minutes", str(args.max_minutes),
                                 "--seed", str(args.seed), "--save-checkpoints",
                                 *([] if args.lr is None else ["--lr", str(args.lr)])], cwd=REPO)

    if args.threads * args.ranks == 1:
        runs = [start(name) for name in args.models]
        codes = [run.wait() for run in runs]
    else:
        codes = [start(name).wait() for name in args.models]
    failed = [name for name, code in zip(args.models, codes) if code != 0]
    if failed:
        print(f"failed: {failed}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
