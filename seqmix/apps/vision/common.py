"""What the vision backbones share: the input check, weight init, and timm registration."""

from __future__ import annotations

from typing import Callable, Mapping

from timm.layers import trunc_normal_
from timm.models import register_model
from torch import Tensor, nn


def check_images(x: Tensor, in_chans: int, img_size: int, name: str) -> None:
    """A clear error for a batch that is not ``[B, in_chans, img_size, img_size]``."""
    if x.dim() != 4:
        raise ValueError(f"{name}: images must be [batch, channels={in_chans}, {img_size}, {img_size}], got "
                         f"{tuple(x.shape)}; add a batch dimension with x.unsqueeze(0)")
    if x.shape[1] != in_chans:
        raise ValueError(f"{name}: the model takes {in_chans}-channel images, got {x.shape[1]} channels; "
                         f"convert the images (e.g. to {'greyscale' if in_chans == 1 else 'RGB'}) or build the "
                         f"model with in_chans={x.shape[1]}")
    if tuple(x.shape[2:]) != (img_size, img_size):
        raise ValueError(f"{name}: the model was built for {img_size}x{img_size} images, got "
                         f"{x.shape[2]}x{x.shape[3]}; resize them or build the model with that img_size")


def conv_out(size: int) -> int:
    """Side of a 3x3 / stride 2 / padding 1 convolution's output."""
    return (size + 1) // 2


def pyramid_plan(name: str, in_chans: int, num_classes: int, img_size: int, stem_stride: int,
                 depths: tuple[int, ...], drop_path_rate: float) -> tuple[int, list[float]]:
    """What every pyramid backbone checks and plans: the grid side after its stem (two 3x3 convolutions, the
    second of stride ``stem_stride // 2``) and each block's drop-path rate (linear in depth, 0 to the rate)."""
    if stem_stride not in (2, 4):
        raise ValueError(f"{name}: stem_stride must be 4 (the paper) or 2 (small images), got {stem_stride}")
    if in_chans < 1 or num_classes < 1 or img_size < 1:
        raise ValueError(f"{name}: in_chans, num_classes, img_size must be positive, got "
                         f"{in_chans}, {num_classes}, {img_size}")
    side = conv_out(img_size) if stem_stride == 2 else conv_out(conv_out(img_size))
    n_blocks = sum(depths)
    return side, [drop_path_rate * i / max(1, n_blocks - 1) for i in range(n_blocks)]


def init_weights(m: nn.Module) -> None:
    """timm's init for these families: truncated normal (std 0.02) linear / conv weights, zero biases."""
    if isinstance(m, (nn.Linear, nn.Conv2d)):
        trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


def timm_variant(name: str, build: Callable[..., nn.Module], defaults: Mapping[str, object], doc: str) -> Callable:
    """Register ``name`` in timm's registry: ``timm.create_model(name, num_classes=10)`` builds
    ``build(**{**defaults, **overrides})``; the typed constructor rejects unknown names."""

    def entry(pretrained: bool = False, pretrained_cfg: object = None, pretrained_cfg_overlay: object = None,
              cache_dir: object = None, **overrides: object) -> nn.Module:
        if pretrained:
            raise ValueError(f"{name}: seqmix ships no ImageNet weights; use pretrained=False (Fashion-MNIST "
                             "checkpoints load with `seqmix vision predict --ckpt`)")
        return build(**{**defaults, **overrides})

    entry.__name__ = entry.__qualname__ = name
    entry.__module__ = build.__module__
    entry.__doc__ = doc
    return register_model(entry)
