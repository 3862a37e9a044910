"""Sparse attention on a trained softmax model: HiP (issue 29, item 4, training-free) and SEA (item 5).

    python -m benchmarks.hip_sea                                       # the newest make-demo softmax checkpoint
    python -m benchmarks.hip_sea --ckpt runs/recall/demo/version_0/softmax.ckpt --block-sizes 2 4 --top-ks 1 2
    python -m benchmarks.hip_sea --query-blocks L                      # HiP's default query blocks only
    python -m benchmarks.hip_sea --methods sea --sea-block-sizes 4 --sea-top-ks 2 4 --sea-steps 300   # SEA only

Loads the trained softmax MQAR model of ``make demo`` (T=64, 4 key-value pairs), swaps each block's
:class:`SoftmaxAttention` for a :class:`HiPAttention` holding the same state dict (no retraining), and
measures on the checkpoint's own test split: MQAR accuracy (queried positions answered exactly) and the
fraction of visible keys attended (summed over every position of every test sequence, every layer and head:
``keys_attended / keys_visible`` of the mixers), per block size ``L``, ``top_k`` (key blocks) and query block
``b_q`` (``L``: the mixers' default, the first query of each block of ``L`` queries selects; ``1``: every query
selects its own blocks). Writes ``benchmarks/results/hip.md``.

SEA: swaps in a :class:`SEAAttention` per block (softmax's state dict, ``strict=False``: only the estimator
is new), distils every block's estimator on the checkpoint's training split (``estimator_loss`` on the input
each mixer sees, the rest of the model frozen), then measures the same two figures per block size ``L``, query
block ``b_q`` and ``top_k`` (key blocks), before and after the distillation. Writes ``benchmarks/results/sea.md``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from benchmarks.common import REPO_ROOT, header, markdown_table, write_result
from seqmix.apps.module import load_trained
from seqmix.apps.recall.data import MQARDataModule
from seqmix.apps.recall.model import RecallLM
from seqmix.core.mixers.hip import HiPAttention
from seqmix.core.mixers.sea import SEAAttention
from seqmix.core.mixers.softmax import SoftmaxAttention

DEMO_DIR = REPO_ROOT / "runs" / "recall" / "demo"
HINT = "run `make demo` (it trains runs/recall/demo/version_N/softmax.ckpt) or pass --ckpt"
TARGET_POINTS, TARGET_FRACTION = 2.0, 0.5  # issue 29: within 2 points of dense softmax, at most half of the keys


def meets_target(acc: float, dense: float, fraction: float) -> bool:
    """Issue 29's target; the accuracy drop is compared in points rounded to 1e-6 (accuracies are counts over the
    queried positions: a drop of exactly 2.00 points meets it, not a float's 2.0000000000000018)."""
    return round((dense - acc) * 100, 6) <= TARGET_POINTS and fraction <= TARGET_FRACTION


def newest_demo_checkpoint() -> Path:
    """``runs/recall/demo/version_N/softmax.ckpt`` of the largest N that has one (``make demo`` makes a new
    version folder per run); the version_0 path when there is none (load_trained then names the fix)."""
    found = [(int(p.parent.name.split("_")[1]), p) for p in DEMO_DIR.glob("version_*/softmax.ckpt")
             if p.parent.name.split("_")[1].isdigit()]
    return max(found)[1] if found else DEMO_DIR / "version_0" / "softmax.ckpt"


def query_block_arg(text: str) -> int | None:
    """``--query-blocks`` values: ``L`` (the block size, the mixers' default: ``None``) or a positive integer."""
    if text == "L":
        return None
    if text.isdigit() and int(text) > 0:
        return int(text)
    raise argparse.ArgumentTypeError(f"a query block is L (the block size) or a positive integer, e.g. 1; got {text!r}")


def shown_query_block(query_block: int | None, block_size: int) -> int:
    return block_size if query_block is None else query_block


def softmax_blocks(model: RecallLM) -> list:
    """The model's blocks, each checked to hold a softmax mixer (whose state dict HiP and SEA take)."""
    for block in model.stack.blocks:
        if not isinstance(block.mixer, SoftmaxAttention):
            raise ValueError(f"hip_sea: the checkpoint's mixer is {type(block.mixer).__name__}, not SoftmaxAttention; "
                             "pass a softmax recall checkpoint (--ckpt)")
    return list(model.stack.blocks)


def swap_in_hip(model: RecallLM, *, block_size: int, top_k: int, query_block: int | None) -> list[HiPAttention]:
    """Replace every block's softmax mixer by a HiP mixer with its state dict (strict load); return the new mixers."""
    mixers = []
    for block in softmax_blocks(model):
        softmax = block.mixer
        hip = HiPAttention(softmax.d_model, n_heads=softmax.n_heads, causal=softmax.causal,
                           rotary=softmax.rotary is not None, block_size=block_size, top_k=top_k,
                           query_block=query_block)
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


def verdicts(best: dict, dense: float, what: str) -> str:
    """One line per query-block setting: the sparsest setting that meets the target, or that none does."""
    parts = []
    for label, found in best.items():
        if found is None:
            parts.append(f"- {label}: no {what}setting meets the target")
        else:
            setting, fraction, acc = found
            parts.append(f"- {label}: the sparsest {what}setting that meets it: {setting}: accuracy {acc:.4f} vs dense "
                         f"{dense:.4f}, {fraction:.3f} of the visible keys attended")
    return "\n".join(parts)


def query_block_label(query_block: int | None) -> str:
    return ("query blocks b_q = L (the default: a block's first query selects)" if query_block is None else
            f"query blocks b_q = {query_block}" + (" (every query selects its own blocks)" if query_block == 1 else ""))


def run_hip(args: argparse.Namespace, data: MQARDataModule, h: dict, dense: float, shown: Path) -> None:
    """HiP's sweep over query blocks, block sizes and top_k: prints each setting and writes results/hip.md."""
    rows, best = [], {query_block_label(qb): None for qb in args.query_blocks}
    for query_block in args.query_blocks:
        label = query_block_label(query_block)
        for block_size in args.block_sizes:
            for top_k in args.top_ks:
                trained, _ = load_trained(RecallLM, args.ckpt, "recall", HINT)
                mixers = swap_in_hip(trained, block_size=block_size, top_k=top_k, query_block=query_block)
                acc = accuracy(trained, data)
                fraction = sum(m.keys_attended for m in mixers) / sum(m.keys_visible for m in mixers)
                meets = meets_target(acc, dense, fraction)
                b_q = shown_query_block(query_block, block_size)
                if meets and (best[label] is None or fraction < best[label][1]):
                    best[label] = (f"L={block_size}, b_q={b_q}, top_k={top_k}", fraction, acc)
                rows.append((b_q, block_size, top_k, f"{acc:.4f}", f"{(acc - dense) * 100:+.2f}", f"{fraction:.3f}",
                             "yes" if meets else "no"))
                print(f"L={block_size} b_q={b_q} k={top_k}: accuracy {acc:.4f} (dense {dense:.4f}), "
                      f"keys attended {fraction:.3f}")
    notes = [f"checkpoint: `{shown}` (softmax, trained by `make demo`), its test split: {h['num_test']} sequences, "
             f"T={h['seq_len']}, {h['num_kv_pairs']} pairs, data seed {h['seed']}; no retraining",
             "keys attended: keys attended / keys visible (causal), summed over every position of every test "
             "sequence, both layers and every head; the first query of each query block of b_q queries keeps top_k "
             "key blocks of L keys found by the hierarchical search, and every query of the block attends them and "
             "its local blocks (those overlapping the query block, up to the query); b_q = 1: per-query selection",
             f"target (issue 29): accuracy within {TARGET_POINTS:g} points of dense softmax while attending to at most "
             f"{TARGET_FRACTION:g} of the visible keys"]
    text = (header("HiP attention on the trained softmax MQAR model (training-free)", seeds=[args.seed], notes=notes)
            + f"Dense softmax test accuracy: {dense:.4f}. Result per query block:\n\n{verdicts(best, dense, '')}\n\n"
            + markdown_table(["query block b_q", "block size L", "top_k", "accuracy", "vs dense (points)",
                              "keys attended", "target"], rows))
    print(f"wrote {write_result('hip', text)}")


def swap_in_sea(model: RecallLM, *, top_k: int, block_size: int, query_block: int | None, width: int,
                features: int) -> list[SEAAttention]:
    """Replace every block's softmax mixer by a SEA mixer with its state dict (``strict=False``: the estimator is
    the only new parameter, checked); return the new mixers."""
    mixers = []
    for block in softmax_blocks(model):
        softmax = block.mixer
        sea = SEAAttention(softmax.d_model, n_heads=softmax.n_heads, causal=softmax.causal,
                           rotary=softmax.rotary is not None, top_k=top_k, block_size=block_size,
                           query_block=query_block, width=width, features=features)
        missing, unexpected = sea.load_state_dict(softmax.state_dict(), strict=False)
        if missing != ["estimator"] or unexpected:
            raise ValueError(f"hip_sea: SEA expected only the estimator to be new, got missing {missing}, "
                             f"unexpected {unexpected}; pass a softmax recall checkpoint (--ckpt)")
        block.mixer = sea.eval()
        mixers.append(sea)
    return mixers


def distill_sea(model: RecallLM, mixers: list[SEAAttention], data: MQARDataModule, *, steps: int,
                lr: float = 1e-2) -> list[float]:
    """Train every mixer's estimator by its ``estimator_loss`` on the inputs it sees in the dense model (the
    checkpoint's training split, ``steps`` batches; nothing else learns). Returns the summed loss per step."""
    model.requires_grad_(False)
    estimators = [m.estimator.requires_grad_() for m in mixers]
    optimizer = torch.optim.Adam(estimators, lr=lr)
    seen: dict[int, torch.Tensor] = {}
    hooks = [m.register_forward_pre_hook(lambda mod, args, i=i: seen.__setitem__(i, args[0].detach()))
             for i, m in enumerate(mixers)]
    losses = []
    try:
        for m in mixers:
            m.sparse = False  # the teacher: the dense model gives each layer its input
        batches = iter(data.train_dataloader())
        for _ in range(steps):
            inputs, _ = next(batches)
            with torch.no_grad():
                model.hidden(inputs)
            loss = sum(m.estimator_loss(seen[i]) for i, m in enumerate(mixers))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
    finally:
        for hook in hooks:
            hook.remove()
        for m in mixers:
            m.sparse = True
            m.keys_attended = m.keys_visible = 0
    return losses


def run_sea(args: argparse.Namespace, data: MQARDataModule, h: dict, dense: float, shown: Path) -> None:
    """SEA per block size, query block and top_k, before and after distilling its estimators (distilled once: the
    estimator does not depend on the blocks): prints each setting and writes results/sea.md."""
    trained, _ = load_trained(RecallLM, args.ckpt, "recall", HINT)
    mixers = swap_in_sea(trained, top_k=max(args.sea_top_ks), block_size=args.sea_block_sizes[0], query_block=None,
                         width=args.sea_width, features=args.sea_features)
    initial = [m.estimator.detach().clone() for m in mixers]
    start = time.perf_counter()
    losses = distill_sea(trained, mixers, data, steps=args.sea_steps)
    seconds = time.perf_counter() - start
    distilled = [m.estimator.detach().clone() for m in mixers]
    rows, best = [], {query_block_label(qb): None for qb in args.sea_query_blocks}
    for stage, estimators in (("untrained", initial), ("distilled", distilled)):
        for query_block in args.sea_query_blocks:
            label = query_block_label(query_block)
            for block_size in args.sea_block_sizes:
                for top_k in args.sea_top_ks:
                    model, _ = load_trained(RecallLM, args.ckpt, "recall", HINT)
                    swapped = swap_in_sea(model, top_k=top_k, block_size=block_size, query_block=query_block,
                                          width=args.sea_width, features=args.sea_features)
                    with torch.no_grad():
                        for m, w in zip(swapped, estimators):
                            m.estimator.copy_(w)
                    acc = accuracy(model, data)
                    fraction = sum(m.keys_attended for m in swapped) / sum(m.keys_visible for m in swapped)
                    meets = meets_target(acc, dense, fraction)
                    b_q = shown_query_block(query_block, block_size)
                    if stage == "distilled" and meets and (best[label] is None or fraction < best[label][1]):
                        best[label] = (f"L={block_size}, b_q={b_q}, top_k={top_k}", fraction, acc)
                    rows.append((stage, b_q, block_size, top_k, f"{acc:.4f}", f"{(acc - dense) * 100:+.2f}",
                                 f"{fraction:.3f}", "yes" if meets else "no"))
                    print(f"SEA {stage} L={block_size} b_q={b_q} k={top_k}: accuracy {acc:.4f} (dense {dense:.4f}), "
                          f"keys attended {fraction:.3f}")
    notes = [f"checkpoint: `{shown}` (softmax, trained by `make demo`), its test split: {h['num_test']} sequences, "
             f"T={h['seq_len']}, {h['num_kv_pairs']} pairs, data seed {h['seed']}; softmax's weights unchanged",
             f"estimator: R={args.sea_features} Performer features per head, learned projection; distilled "
             f"{args.sea_steps} steps (batches of {h['batch_size']} training sequences, Adam lr 1e-2, both layers' "
             f"KL(softmax rows || estimated rows) summed: {losses[0]:.3f} -> {losses[-1]:.3f}) in {seconds:.0f} s",
             f"keys attended: keys attended / keys visible (causal), summed over every position of every test "
             f"sequence, both layers and every head; the first query of each query block of b_q queries keeps the "
             f"top_k key blocks of L keys of its compressed estimate (width {args.sea_width}, refined to blocks), and "
             f"every query of the block attends them and its local blocks; b_q = 1: per-query selection",
             f"target (issue 29): accuracy within {TARGET_POINTS:g} points of dense softmax while attending to at most "
             f"{TARGET_FRACTION:g} of the visible keys"]
    text = (header("SEA attention on the trained softmax MQAR model (estimator distilled)", seeds=[args.seed],
                   notes=notes)
            + f"Dense softmax test accuracy: {dense:.4f}. Result per query block:\n\n"
            + f"{verdicts(best, dense, 'distilled ')}\n\n"
            + markdown_table(["estimator", "query block b_q", "block size L", "top_k", "accuracy", "vs dense (points)",
                              "keys attended", "target"], rows))
    print(f"wrote {write_result('sea', text)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", type=Path, default=None,
                        help="a trained softmax recall checkpoint (default: the newest "
                             "runs/recall/demo/version_N/softmax.ckpt)")
    parser.add_argument("--block-sizes", type=int, nargs="+", default=[2, 4, 8], help="HiP block sizes L")
    parser.add_argument("--top-ks", type=int, nargs="+", default=[1, 2, 3, 4],
                        help="HiP key blocks kept besides the local ones")
    parser.add_argument("--query-blocks", type=query_block_arg, nargs="+", default=[None, 1],
                        help="HiP query blocks b_q: L (the block size, the default) and/or integers (1: per query)")
    parser.add_argument("--methods", nargs="+", choices=["hip", "sea"], default=["hip", "sea"], help="which to run")
    parser.add_argument("--sea-block-sizes", type=int, nargs="+", default=[4, 8], help="SEA block sizes L")
    parser.add_argument("--sea-top-ks", type=int, nargs="+", default=[1, 2, 3, 4],
                        help="SEA key blocks kept per query block besides the local ones")
    parser.add_argument("--sea-query-blocks", type=query_block_arg, nargs="+", default=[None, 1],
                        help="SEA query blocks b_q: L (the block size, the default) and/or integers (1: per query)")
    parser.add_argument("--sea-width", type=int, default=64, help="SEA compressed estimate width W")
    parser.add_argument("--sea-features", type=int, default=32, help="SEA estimator features R per head")
    parser.add_argument("--sea-steps", type=int, default=300, help="SEA distillation steps (training batches)")
    parser.add_argument("--seed", type=int, default=0, help="torch seed (the test split is the checkpoint's own)")
    args = parser.parse_args(argv)
    args.ckpt = newest_demo_checkpoint() if args.ckpt is None else args.ckpt
    torch.manual_seed(args.seed)
    model, checkpoint = load_trained(RecallLM, args.ckpt, "recall", HINT, needs=("datamodule_hyper_parameters",))
    h = {k: v for k, v in checkpoint["datamodule_hyper_parameters"].items() if k != "_instantiator"}
    data = MQARDataModule(**h)
    data.setup("test")
    dense = accuracy(model, data)
    shown = args.ckpt.resolve().relative_to(REPO_ROOT) if args.ckpt.resolve().is_relative_to(REPO_ROOT) else args.ckpt
    if "hip" in args.methods:
        run_hip(args, data, h, dense, shown)
    if "sea" in args.methods:
        torch.manual_seed(args.seed)  # the estimators' initialisation, whether HiP ran first or not
        run_sea(args, data, h, dense, shown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
