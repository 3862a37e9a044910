"""``seqmix vision predict --ckpt <ckpt> <image files> [--explain routing.png]``.

Prints the top-5 classes with probabilities for each image. With ``--explain`` (BiFormer
checkpoints) it writes a PNG of bi-level routing attention's routing for the first image
(:func:`seqmix.apps.vision.explain.draw_routing`): the region grid of block ``--block`` of stage
``--stage`` over the image, the query region ``--query-region`` (raster index) in red and the
``topk`` regions it routes to in green; an ``--explain`` path that is an input is refused before
anything is written. Images are read with Pillow (its decompression-bomb guard on: an image whose
header claims more pixels than ``PIL.Image.MAX_IMAGE_PIXELS`` allows is refused); a colour image for a
greyscale model needs ``--convert``, an image of another size needs ``--resize`` (both say so when
missing). The checkpoint is read as data (``weights_only=True``; :func:`seqmix.apps.module.load_trained`).
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import numpy as np
import torch

from seqmix.apps.files import check_outputs, input_file
from seqmix.apps.module import load_trained
from seqmix.apps.vision.explain import draw_routing


def load_classifier(ckpt: str | Path):
    """The trained :class:`ImageClassifier` and the data description (normalisation, class names) saved with it."""
    from seqmix.apps.vision.model import ImageClassifier

    model, checkpoint = load_trained(ImageClassifier, ckpt, "vision", "train one with `seqmix vision fit --config "
                                     "configs/vision/<exp>.yaml` or use checkpoints/vision/<model>.ckpt",
                                     needs=("ImageDataModule",))
    return model, checkpoint["ImageDataModule"]


def read_image(path: str | Path, *, in_chans: int, img_size: int, convert: bool, resize: bool) -> np.ndarray:
    """An image file as floats in [0, 1], ``[in_chans, img_size, img_size]``, or a clear error."""
    from PIL import Image, UnidentifiedImageError

    path = input_file(path, "image")
    try:
        with warnings.catch_warnings():  # Pillow only warns up to twice its limit: refuse from the limit on
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(path)
            image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:  # from the header, no pixel decoded
        raise ValueError(f"{path}: refused by Pillow's decompression-bomb guard: {e}") from None
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"{path}: is not an image Pillow can read (PNG, JPEG, ...): {e}") from None
    mode = "L" if in_chans == 1 else "RGB"
    channels = len(image.getbands()) - ("A" in image.getbands())
    if channels != in_chans and not convert:
        raise ValueError(f"{path}: has {channels} channel(s) ({image.mode}) but the model takes {in_chans}; "
                         f"pass --convert to convert it to {mode}")
    image = image.convert(mode)
    if image.size != (img_size, img_size):
        if not resize:
            raise ValueError(f"{path}: is {image.size[0]}x{image.size[1]} but the model takes {img_size}x{img_size}; "
                             "pass --resize to resize it")
        image = image.resize((img_size, img_size), Image.BILINEAR)
    array = np.asarray(image, dtype=np.float32) / 255.0
    return array[None] if in_chans == 1 else array.transpose(2, 0, 1)  # [H, W, C] -> [C, H, W]


def predict_command(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="seqmix vision predict", description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", required=True, help="a checkpoint of `seqmix vision fit`")
    parser.add_argument("images", nargs="+", help="image files (PNG, JPEG, ...)")
    parser.add_argument("--convert", action="store_true", help="convert colour <-> greyscale to the model's channels")
    parser.add_argument("--resize", action="store_true", help="resize images to the model's input size")
    parser.add_argument("--explain", default=None, help="write a PNG of BRA's routed regions for the first image")
    parser.add_argument("--stage", type=int, default=0, help="BiFormer stage of the pictured block")
    parser.add_argument("--block", type=int, default=0, help="block within the stage")
    parser.add_argument("--query-region", type=int, default=None, help="raster index of the query region "
                        "(default: the centre region)")
    args = parser.parse_args(argv)
    check_outputs([("--explain", args.explain)], [("--ckpt", args.ckpt), *(("image", p) for p in args.images)])
    model, info = load_classifier(args.ckpt)
    backbone = model.backbone
    if args.explain:  # refused before any prediction is printed
        from seqmix.apps.vision.biformer import BiFormer

        if not isinstance(backbone, BiFormer):
            raise ValueError(f"--explain pictures BiFormer's routing; this checkpoint's backbone is "
                             f"{type(backbone).__name__}")
        if not 0 <= args.stage < len(backbone.stages) or not 0 <= args.block < len(backbone.stages[args.stage]):
            raise ValueError(f"--stage {args.stage} --block {args.block} is not a block of this BiFormer (stages: "
                             f"{[len(s) for s in backbone.stages]} blocks)")
    in_chans, img_size = backbone.in_chans, backbone.img_size
    raw = np.stack([read_image(p, in_chans=in_chans, img_size=img_size, convert=args.convert, resize=args.resize)
                    for p in args.images])  # [N, C, S, S]
    x = (torch.from_numpy(raw) - info["mean"]) / info["std"]
    names = info["class_names"]
    with torch.no_grad():
        probs = model(x).softmax(-1)  # [N, n_classes]
    for path, p in zip(args.images, probs):
        top = p.topk(min(5, len(p)))
        print(path)
        for prob, k in zip(top.values.tolist(), top.indices.tolist()):
            print(f"  {names[k]:<12} {prob:.3f}")
    if args.explain:
        with torch.no_grad():
            index, attn = backbone.routing(x[:1], args.stage, args.block)  # [1, R, topk]
        if attn.regions == 1:
            raise ValueError(f"stage {args.stage} has a single region (n_win=1): nothing is routed; pick a stage "
                             "with n_win > 1 (stage 0 of biformer_tiny_28)")
        query = attn.regions // 2 if args.query_region is None else args.query_region
        if not 0 <= query < attn.regions:
            raise ValueError(f"--query-region {query} must be in 0..{attn.regions - 1} "
                             f"({attn.n_win}x{attn.n_win} regions)")
        title = (f"{Path(args.images[0]).name}: stage {args.stage} block {args.block}, query region {query} (red), "
                 f"top-{index.shape[-1]} routed (green)")
        draw_routing(raw[0], index[0, query], attn.spatial_shape, attn.n_win, query, Path(args.explain), title)
        print(f"wrote {args.explain}")
    return 0
