"""Training-free sparse attention on a trained softmax model: HiP (issue 29, item 4).

    python -m benchmarks.hip_sea                                       # the make-demo softmax checkpoint
    python -m benchmarks.hip_sea --ckpt runs/recall/demo/version_0/softmax.ckpt --block-sizes 2 4 --top-ks 1 2

Loads the trained softmax MQAR model of ``make demo`` (T=64, 4 key-value pairs), swaps each block's
:class:`SoftmaxAttention` for a :class:`HiPAttention` holding the same state dict (no retraining), and
measures on the checkpoint's own test split: MQAR accuracy (queried positions answered exactly) and the
fraction of visible keys attended (summed over every position of every test sequence, every layer and head:
``keys_attended / keys_visible`` of the mixers). Writes ``benchmarks/results/hip.md``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from benchmarks.common import REPO_ROOT, header, markdown_table, write_result
from seqmix.apps.module import load_trained
from seqmix.apps.recall.data import MQARDataModule
from seqmix.apps.recall.model import RecallLM
from seqmix.core.mixers.hip import HiPAttention
from seqmix.core.mixers.softmax import SoftmaxAttention

DEMO_CKPT = REPO_ROOT / "runs" / "recall" / "demo" / "version_0" / "softmax.ckpt"
HINT = "run `make demo` (it trains runs/recall/demo/version_N/softmax.ckpt) or pass --ckpt"
TARGET_POINTS, TARGET_FRACTION = 2.0, 0.5  # issue 29: within 2 points of dense softmax, at most half of the keys


def swap_in_hip(model: RecallLM, *, block_size: int, top_k: int) -> list[HiPAttention]:
    """Replace every block's softmax mixer by a HiP mixer with its state dict (strict load); return the new mixers."""
    mixers = []
    for block in model.stack.blocks:
        softmax = block.mixer
        if not isinstance(softmax, SoftmaxAttention):
            raise ValueError(f"hip_sea: the checkpoint's mixer is {type(softmax).__name__}, not SoftmaxAttention; "
                             "pass a softmax recall checkpoint (--ckpt)")
        hip = HiPAttention(softmax.d_model, n_heads=softmax.n_heads, causal=softmax.causal,
                           rotary=softmax.rotary is not None, block_size=block_size, top_k=top_k)
        hip.load_state_dict(softmax.state_dict())
        block.mixer = hip.eval()
        mixers.append(hip)
    return mixers


@torch.no_grad()
def accuracy(model: RecallLM, data: MQARDataModule) -> float:
    """The fraction of queried test positions whose value is predicted exactly."""
    right = total = 0
    for inputs, targets in data.test_dataloader():
        logits, wanted = model.query_logits(inputs, targets)  # [Q, V], [Q]
        right += int((logits.argmax(-1) == wanted).sum())
        total += wanted.numel()
    return right / total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", type=Path, default=DEMO_CKPT, help="a trained softmax recall checkpoint")
    parser.add_argument("--block-sizes", type=int, nargs="+", default=[2, 4, 8], help="HiP block sizes L")
    parser.add_argument("--top-ks", type=int, nargs="+", default=[1, 2, 3, 4], help="blocks kept besides the own")
    parser.add_argument("--seed", type=int, default=0, help="torch seed (the test split is the checkpoint's own)")
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    model, checkpoint = load_trained(RecallLM, args.ckpt, "recall", HINT, needs=("datamodule_hyper_parameters",))
    h = {k: v for k, v in checkpoint["datamodule_hyper_parameters"].items() if k != "_instantiator"}
    data = MQARDataModule(**h)
    data.setup("test")
    dense = accuracy(model, data)
    rows, best = [], None
    for block_size in args.block_sizes:
        for top_k in args.top_ks:
            trained, _ = load_trained(RecallLM, args.ckpt, "recall", HINT)
            mixers = swap_in_hip(trained, block_size=block_size, top_k=top_k)
            acc = accuracy(trained, data)
            fraction = sum(m.keys_attended for m in mixers) / sum(m.keys_visible for m in mixers)
            meets = (dense - acc) * 100 <= TARGET_POINTS and fraction <= TARGET_FRACTION
            if meets and (best is None or fraction < best[1]):
                best = ((block_size, top_k), fraction, acc)
            rows.append((block_size, top_k, f"{acc:.4f}", f"{(acc - dense) * 100:+.2f}", f"{fraction:.3f}",
                         "yes" if meets else "no"))
            print(f"L={block_size} k={top_k}: accuracy {acc:.4f} (dense {dense:.4f}), keys attended {fraction:.3f}")
    shown = args.ckpt.resolve().relative_to(REPO_ROOT) if args.ckpt.resolve().is_relative_to(REPO_ROOT) else args.ckpt
    notes = [f"checkpoint: `{shown}` (softmax, trained by `make demo`), its test split: {h['num_test']} sequences, "
             f"T={h['seq_len']}, {h['num_kv_pairs']} pairs, data seed {h['seed']}; no retraining",
             "keys attended: keys attended / keys visible (causal), summed over every position of every test "
             "sequence, both layers and every head; a query keeps top_k blocks of L keys found by the hierarchical "
             "search plus its own block",
             f"target (issue 29): accuracy within {TARGET_POINTS:g} points of dense softmax while attending to at most "
             f"{TARGET_FRACTION:g} of the visible keys"]
    verdict = ("no setting meets the target" if best is None else
               f"the sparsest setting that meets it: L={best[0][0]}, top_k={best[0][1]}: accuracy {best[2]:.4f} vs "
               f"dense {dense:.4f}, {best[1]:.3f} of the visible keys attended")
    text = (header("HiP attention on the trained softmax MQAR model (training-free)", seeds=[args.seed], notes=notes)
            + f"Dense softmax test accuracy: {dense:.4f}. Result: {verdict}.\n\n"
            + markdown_table(["block size L", "top_k", "accuracy", "vs dense (points)", "keys attended", "target"],
                             rows))
    print(f"wrote {write_result('hip', text)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
