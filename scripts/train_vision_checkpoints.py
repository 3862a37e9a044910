"""Train the small Fashion-MNIST checkpoints of the vision app (BiFormer-T and MambaOut-Femto, scaled).

    python scripts/train_vision_checkpoints.py [--max-minutes 30]

One run per model, both at once (1 torch thread each, one per core of a 2-core machine): each is
``benchmarks/vision.py --models <model> --threads 1 --max-minutes M --save-checkpoints``, which
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
    args = parser.parse_args(argv)
    runs = [subprocess.Popen([sys.executable, str(REPO / "benchmarks" / "vision.py"), "--models", name,
                              "--threads", "1", "--max-minutes", str(args.max_minutes), "--seed", str(args.seed),
                              "--save-checkpoints"], cwd=REPO) for name in args.models]
    failed = [name for name, run in zip(args.models, runs) if run.wait() != 0]
    if failed:
        print(f"failed: {failed}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
