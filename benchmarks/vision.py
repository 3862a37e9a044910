"""Vision benchmark -> ``benchmarks/results/vision.md``: Fashion-MNIST test accuracy, parameters,
GFLOPs (multiply-adds, fvcore's convention, counted with ``torch.utils.flop_counter``) and CPU
images/s (inference and training) of BiFormer-T (scaled), MambaOut-Femto (scaled), ViT(softmax),
ViT(GLA), and our MambaOut-Femto beside timm's own ``mambaout_femto`` at the same configuration.

    python benchmarks/vision.py                                   # 30 epochs / 30 min per model
    python benchmarks/vision.py --epochs 1 --max-minutes 0.5      # a short run (label says so)

Training goes through the app's own classes (ImageDataModule, ImageClassifier, Lightning's
Trainer), AdamW + cosine, seed ``--seed``; the test accuracy is on the official 10k test images.
Throughput is the best of ``--repeats`` timed runs (the machine is shared; the best run is the
least disturbed), ours and timm's measured alternately.
"""

from __future__ import annotations

import argparse
import sys
import time
from functools import partial
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import header, markdown_table, write_result  # noqa: E402

import seqmix.apps.vision  # noqa: E402,F401  (registers the timm models)
from seqmix.apps.vision.biformer import TINY_28, BiFormer  # noqa: E402
from seqmix.apps.vision.mambaout import FEMTO, FEMTO_28, MambaOut  # noqa: E402
from seqmix.apps.vision.vit import ViT  # noqa: E402
from seqmix.core.blocks import mixer_factory  # noqa: E402

SIZES = ("in_chans", "num_classes", "img_size")


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
    "MambaOut-Femto (ours, paper config)": partial(MambaOut, **FEMTO),
    "timm mambaout_femto (paper config)": timm_mambaout_femto,
}


def gmacs(model: nn.Module, x: torch.Tensor) -> float:
    """Multiply-adds of one forward (GFLOPs in fvcore's / the papers' convention: FLOP counter / 2)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(x)
    return counter.get_total_flops() / 2 / 1e9 / len(x)


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

    step()  # warm-up
    best = 0.0
    for _ in range(repeats):
        n, start = 0, time.perf_counter()
        while n == 0 or time.perf_counter() - start < min_seconds:
            step()
            n += 1
        best = max(best, n * batch / (time.perf_counter() - start))
    return best


def train_and_test(name: str, factory, args) -> tuple[float, float, int]:
    """(test accuracy, training minutes, epochs run) through the app's classes."""
    import pytorch_lightning as pl

    from seqmix.apps.vision.data import ImageDataModule
    from seqmix.apps.vision.model import ImageClassifier

    pl.seed_everything(args.seed, verbose=False)
    data = ImageDataModule(dataset=args.dataset, data_dir=args.data_dir, batch_size=args.batch_size,
                           train_limit=args.train_limit, seed=args.seed,
                           val_size=5000 if args.dataset == "fashion_mnist" else 200)
    model = ImageClassifier(factory, in_chans=1, n_classes=10, img_size=28, lr=args.lr, warmup_steps=args.warmup)
    trainer = pl.Trainer(max_epochs=args.epochs, max_time={"seconds": args.max_minutes * 60}, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         limit_val_batches=0, deterministic=False,
                         limit_test_batches=1.0 if args.test_limit is None
                         else max(1, args.test_limit // args.batch_size))
    start = time.perf_counter()
    trainer.fit(model, datamodule=data)
    minutes = (time.perf_counter() - start) / 60
    result = trainer.test(model, datamodule=data, verbose=False)[0]
    print(f"{name}: test acc {result['test/acc']:.4f} after {minutes:.1f} min ({trainer.current_epoch} epochs)",
          flush=True)
    return result["test/acc"], minutes, trainer.current_epoch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS), metavar="NAME")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--max-minutes", type=float, default=30.0, help="training budget per model")
    parser.add_argument("--train-limit", type=int, default=None, help="first N training images only")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--dataset", default="fashion_mnist", choices=["fashion_mnist", "digits"])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--throughput-batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--test-limit", type=int, default=None, help="first N test images only (short runs)")
    parser.add_argument("--train-models", nargs="*", default=None, choices=list(MODELS), metavar="NAME",
                        help="train only these (default: all of --models); the others get sizes and throughput")
    parser.add_argument("--no-train", action="store_true", help="sizes and throughput only")
    parser.add_argument("--out", default="vision")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    rows = []
    for name in args.models:
        torch.manual_seed(args.seed)
        model = MODELS[name](1, 10, 28)
        params = sum(p.numel() for p in model.parameters())
        macs = gmacs(model.eval(), torch.randn(1, 1, 28, 28))
        infer = images_per_second(model, args.throughput_batch, False, args.repeats)
        train = images_per_second(model, args.throughput_batch, True, args.repeats)
        print(f"{name}: {params / 1e6:.2f}M params, {macs:.4f} GMACs, {infer:.0f} / {train:.0f} img/s", flush=True)
        trained = not args.no_train and (args.train_models is None or name in args.train_models)
        acc, minutes, epochs = train_and_test(name, MODELS[name], args) if trained else (None, 0.0, 0)
        rows.append([name, "-" if acc is None else f"{100 * acc:.2f}", f"{params / 1e6:.2f}", f"{macs:.3f}",
                     f"{infer:.0f}", f"{train:.0f}", f"{minutes:.1f}", epochs])

    budget = f"{args.epochs} epoch(s) or {args.max_minutes:g} min per model, whichever ends first"
    short = (args.no_train or args.max_minutes < 30 or args.epochs < 30 or args.train_limit is not None
             or args.test_limit is not None)
    test = "the official 10k test images" if args.test_limit is None else \
        f"the first {max(1, args.test_limit // args.batch_size) * args.batch_size} of the official 10k test images"
    notes = [f"data: {args.dataset} (test: {test}), batch {args.batch_size}, AdamW lr "
             f"{args.lr}, cosine, {args.warmup} warm-up steps, label smoothing 0.1, crop (pad 2) + flip",
             f"training budget: {budget}" + (f", first {args.train_limit} training images" if args.train_limit else ""),
             f"throughput: 1x28x28 images, batch {args.throughput_batch}, {args.threads} threads, best of "
             f"{args.repeats} runs of >= 1 s; training = forward + backward + AdamW step",
             "GMACs: multiply-adds of one 28x28 image (torch.utils.flop_counter FLOPs / 2; matmuls and convolutions "
             "only, as fvcore)"]
    if short:
        notes.insert(0, "**SHORT RUN** (budget below): accuracies are far from converged and are not the 30-minute "
                        "results the targets ask for")
    table = markdown_table(["model", "test acc %", "params (M)", "GMACs", "infer img/s", "train img/s",
                            "train min", "epochs"], rows)
    path = write_result(args.out, header("Fashion-MNIST: BiFormer, MambaOut, ViT", seeds=[args.seed], notes=notes)
                        + table)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
