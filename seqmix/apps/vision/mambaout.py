"""MambaOut (Yu & Wang 2024, "MambaOut: Do We Really Need Mamba for Vision?"): a 4-stage
pyramid of gated CNN blocks (no SSM), channels-last as in the paper's code.

    stem: conv3x3/2 - LN - GELU - conv3x3/2 - LN
    stage i: [downsample conv3x3/2 - LN], depth_i x block
    block: x + GatedCNN(LN(x))   (the registered ``gated_cnn`` mixer, 2-D form: 7x7 depthwise
           conv on ``conv_ratio * dim`` channels of the value branch, GELU gate)
    head: global average pool - LN - linear(4x) - GELU - LN - linear

Variants (timm names; timm has its own ``mambaout_*``, so ours carry ``seqmix_``):
``seqmix_mambaout_femto`` / ``_kobe`` / ``_tiny`` (the paper's), and ``seqmix_mambaout_femto_28``,
the scaled variant for 28 x 28 grey images (stem stride 2: grids 14, 7, 4, 2).
"""

from __future__ import annotations

from timm.layers import DropPath, LayerNorm2d
from torch import Tensor, nn

from seqmix.apps.vision.common import check_images, conv_out, init_weights, pyramid_plan, timm_variant
from seqmix.core.mixers.gated_cnn import GatedCNN


class MambaOutBlock(nn.Module):
    """``x + GatedCNN(LN(x))`` over a channels-last map ``[B, H, W, C]`` of the grid it was built for."""

    def __init__(self, dim: int, grid: tuple[int, int], *, expansion_ratio: float = 8 / 3, kernel_size: int = 7,
                 conv_ratio: float = 1.0, drop_path: float = 0.0):
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.mixer = GatedCNN(dim, causal=False, expansion_ratio=expansion_ratio, kernel_size=kernel_size,
                              conv_ratio=conv_ratio, spatial_shape=grid)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        b, h, w, c = x.shape
        t = x.reshape(b, h * w, c)  # [B, H, W, C] -> [B, H*W, C]
        return (t + self.drop_path(self.mixer(self.norm(t)))).reshape(b, h, w, c)  # [B, H, W, C]


class Downsample(nn.Module):
    """conv3x3 / stride 2 then LayerNorm, channels-last in and out."""

    def __init__(self, dim: int, dim_out: int):
        super().__init__()
        self.conv = nn.Conv2d(dim, dim_out, 3, stride=2, padding=1)
        self.norm = nn.LayerNorm(dim_out, eps=1e-6)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x.permute(0, 3, 1, 2))  # [B, H, W, C] -> [B, C', H/2, W/2]
        return self.norm(x.permute(0, 2, 3, 1))  # -> [B, H/2, W/2, C']


class MambaOut(nn.Module):
    """MambaOut for ``img_size x img_size`` images with ``in_chans`` channels (first three args: the data's)."""

    def __init__(self, in_chans: int = 3, num_classes: int = 1000, img_size: int = 224, *,
                 depths: tuple[int, ...] = (3, 3, 9, 3), dims: tuple[int, ...] = (96, 192, 384, 576),
                 expansion_ratio: float = 8 / 3, kernel_size: int = 7, conv_ratio: float = 1.0,
                 stem_stride: int = 4, head_ratio: float = 4.0, drop_path_rate: float = 0.0,
                 drop_rate: float = 0.0):
        super().__init__()
        if len(depths) != len(dims) or not depths:
            raise ValueError(f"MambaOut: depths and dims need one entry per stage, got {len(depths)} and {len(dims)}")
        side, rates = pyramid_plan("MambaOut", in_chans, num_classes, img_size, stem_stride, depths, drop_path_rate)
        self.in_chans, self.img_size, self.num_classes = in_chans, img_size, num_classes
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, dims[0] // 2, 3, stride=2, padding=1), LayerNorm2d(dims[0] // 2, eps=1e-6),
            nn.GELU(), nn.Conv2d(dims[0] // 2, dims[0], 3, stride=stem_stride // 2, padding=1))
        self.stem_norm = nn.LayerNorm(dims[0], eps=1e-6)
        self.stages, self.grids = nn.ModuleList(), []
        for i, (depth, dim) in enumerate(zip(depths, dims)):
            layers = []
            if i > 0:
                layers.append(Downsample(dims[i - 1], dim))
                side = conv_out(side)
            self.grids.append((side, side))
            start = sum(depths[:i])
            layers += [MambaOutBlock(dim, (side, side), expansion_ratio=expansion_ratio, kernel_size=kernel_size,
                                     conv_ratio=conv_ratio, drop_path=rates[start + j]) for j in range(depth)]
            self.stages.append(nn.Sequential(*layers))
        hidden = int(head_ratio * dims[-1])
        self.head = nn.Sequential(nn.LayerNorm(dims[-1], eps=1e-6), nn.Linear(dims[-1], hidden), nn.GELU(),
                                  nn.LayerNorm(hidden, eps=1e-6), nn.Dropout(drop_rate), nn.Linear(hidden, num_classes))
        self.apply(init_weights)

    def forward_features(self, x: Tensor) -> Tensor:
        """``[B, C_in, S, S] -> [B, h, w, C_last]`` (channels-last)."""
        check_images(x, self.in_chans, self.img_size, type(self).__name__)
        x = self.stem_norm(self.stem(x).permute(0, 2, 3, 1))  # [B, C, H, W] -> [B, H, W, C]
        for stage in self.stages:
            x = stage(x)
        return x

    def forward(self, x: Tensor) -> Tensor:
        """Images ``[B, C_in, S, S]`` -> logits ``[B, num_classes]``."""
        return self.head(self.forward_features(x).mean((1, 2)))


FEMTO = {"depths": (3, 3, 9, 3), "dims": (48, 96, 192, 288)}
timm_variant("seqmix_mambaout_femto", MambaOut, FEMTO, "MambaOut-Femto (paper: 7.3M parameters).")
timm_variant("seqmix_mambaout_kobe", MambaOut, {"depths": (3, 3, 15, 3), "dims": (48, 96, 192, 288)},
             "MambaOut-Kobe (paper: 9.1M parameters).")
timm_variant("seqmix_mambaout_tiny", MambaOut, {"depths": (3, 3, 9, 3), "dims": (96, 192, 384, 576)},
             "MambaOut-Tiny (paper: 26.5M parameters).")
FEMTO_28 = {"in_chans": 1, "num_classes": 10, "img_size": 28, "depths": (2, 2, 4, 2), "dims": (24, 48, 96, 160),
            "stem_stride": 2}
timm_variant("seqmix_mambaout_femto_28", MambaOut, FEMTO_28,
             "MambaOut-Femto scaled for 28 x 28 grey images (sized to train ~10 epochs of Fashion-MNIST in 30 "
             "minutes on one core): stem stride 2 (grids 14, 7, 4, 2), depths (2, 2, 4, 2), widths (24, 48, 96, 160).")
