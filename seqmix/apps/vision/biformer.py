"""BiFormer (Zhu et al., CVPR 2023): a 4-stage pyramid of blocks whose token mixer is
bi-level routing attention (:class:`~seqmix.core.mixers.biformer.BiLevelRoutingAttention`).

    stem: conv3x3/2 - BN - GELU - conv3x3/(2 or 1) - BN     (overlapping patch embedding)
    stage i: [downsample conv3x3/2 - BN], depth_i x block
    block: x + dwconv(x)  (position, pos_kernel: the paper's 3);  x + BRA(LN(x));  x + MLP(LN(x))  (MLP ratio 3)
    head: BN - global average pool - linear

blocks -> model -> variants (timm names): ``biformer_tiny`` / ``_small`` / ``_base`` are the
paper's 224 x 224 definitions (n_win 7; top-k 1, 4, 16, all); ``biformer_tiny_28`` is the
scaled variant for 28 x 28 grey images (stem stride 2: grids 14, 7, 4, 2; routing in stage 0,
whose 14 x 14 grid is the only one with regions of more than one token).
"""

from __future__ import annotations

import torch
from timm.layers import DropPath, Mlp
from torch import Tensor, nn

from seqmix.apps.vision.common import check_images, conv_out, init_weights, pyramid_plan, timm_variant
from seqmix.core.mixers.biformer import BiLevelRoutingAttention


class BiFormerBlock(nn.Module):
    """One BiFormer block over a ``[B, C, H, W]`` map of the grid it was built for."""

    def __init__(self, dim: int, grid: tuple[int, int], *, n_heads: int, n_win: int, topk: int,
                 mlp_ratio: float = 3.0, lce_kernel: int = 5, pos_kernel: int = 3, drop_path: float = 0.0):
        super().__init__()
        self.pos = nn.Conv2d(dim, dim, pos_kernel, padding=pos_kernel // 2, groups=dim)
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = BiLevelRoutingAttention(dim, n_heads=n_heads, causal=False, n_win=n_win, topk=topk,
                                            lce_kernel=lce_kernel, spatial_shape=grid)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(mlp_ratio * dim))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        x = x + self.pos(x)
        t = x.flatten(2).transpose(1, 2)  # [B, C, H, W] -> [B, H*W, C]
        t = t + self.drop_path(self.attn(self.norm1(t)))
        t = t + self.drop_path(self.mlp(self.norm2(t)))
        return t.transpose(1, 2).reshape(b, c, h, w)  # [B, H*W, C] -> [B, C, H, W]


class BiFormer(nn.Module):
    """The BiFormer pyramid for ``img_size x img_size`` inputs with ``in_chans`` channels.

    ``in_chans``, ``num_classes``, ``img_size`` come first (the data decides them; the vision
    app passes them). ``n_win`` / ``topks``: per stage; topk -1 = every region (full attention).
    """

    def __init__(self, in_chans: int = 3, num_classes: int = 1000, img_size: int = 224, *,
                 depths: tuple[int, ...] = (2, 2, 8, 2), dims: tuple[int, ...] = (64, 128, 256, 512),
                 head_dim: int = 32, n_win: tuple[int, ...] = (7, 7, 7, 7), topks: tuple[int, ...] = (1, 4, 16, -1),
                 mlp_ratio: float = 3.0, lce_kernel: int = 5, pos_kernel: int = 3, stem_stride: int = 4,
                 drop_path_rate: float = 0.0, drop_rate: float = 0.0):
        super().__init__()
        stages = len(depths)
        if not (len(dims) == len(n_win) == len(topks) == stages) or stages == 0:
            raise ValueError(f"BiFormer: depths, dims, n_win and topks need one entry per stage, got "
                             f"{len(depths)}, {len(dims)}, {len(n_win)}, {len(topks)}")
        if not isinstance(pos_kernel, int) or pos_kernel < 1 or pos_kernel % 2 == 0:
            raise ValueError(f"BiFormer: pos_kernel (the depthwise position convolution) must be an odd positive "
                             f"int (the paper: 3), got {pos_kernel!r}")
        side, rates = pyramid_plan("BiFormer", in_chans, num_classes, img_size, stem_stride, depths, drop_path_rate)
        if any(d % head_dim for d in dims):
            raise ValueError(f"BiFormer: every stage width {list(dims)} must be a multiple of head_dim={head_dim}")
        self.in_chans, self.img_size, self.num_classes = in_chans, img_size, num_classes
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, dims[0] // 2, 3, stride=2, padding=1), nn.BatchNorm2d(dims[0] // 2), nn.GELU(),
            nn.Conv2d(dims[0] // 2, dims[0], 3, stride=stem_stride // 2, padding=1), nn.BatchNorm2d(dims[0]))
        self.downsamples, self.stages, self.grids = nn.ModuleList(), nn.ModuleList(), []
        for i in range(stages):
            if i > 0:
                self.downsamples.append(nn.Sequential(nn.Conv2d(dims[i - 1], dims[i], 3, stride=2, padding=1),
                                                      nn.BatchNorm2d(dims[i])))
                side = conv_out(side)
            if side % n_win[i]:
                raise ValueError(f"BiFormer: stage {i} sees a {side}x{side} grid for img_size={img_size}, which "
                                 f"n_win={n_win[i]} regions per side cannot divide; choose an input size or n_win "
                                 f"so that every stage's grid is a multiple of its n_win")
            self.grids.append((side, side))
            start = sum(depths[:i])
            self.stages.append(nn.Sequential(*(
                BiFormerBlock(dims[i], (side, side), n_heads=dims[i] // head_dim, n_win=n_win[i], topk=topks[i],
                              mlp_ratio=mlp_ratio, lce_kernel=lce_kernel, pos_kernel=pos_kernel,
                              drop_path=rates[start + j])
                for j in range(depths[i]))))
        self.norm = nn.BatchNorm2d(dims[-1])
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(dims[-1], num_classes)
        self.apply(init_weights)
        # the convolutions (stem, position, downsampling) run channels-last: PyTorch's CPU backward of
        # depthwise convolutions is much faster in that layout, and the blocks' [B, C, H, W] <->
        # [B, H*W, C] reshapes become views
        self.to(memory_format=torch.channels_last)

    def check_images(self, x: Tensor) -> None:
        check_images(x, self.in_chans, self.img_size, type(self).__name__)

    def forward_features(self, x: Tensor) -> Tensor:
        """``[B, C_in, S, S] -> [B, C_last, h, w]``."""
        self.check_images(x)
        x = self.stem(x)
        for i, stage in enumerate(self.stages):
            if i > 0:
                x = self.downsamples[i - 1](x)
            x = stage(x)
        return self.norm(x)

    def forward(self, x: Tensor) -> Tensor:
        """Images ``[B, C_in, S, S]`` -> logits ``[B, num_classes]``."""
        return self.head(self.head_drop(self.forward_features(x).mean((2, 3))))

    def routing(self, x: Tensor, stage: int = 0, block: int = 0) -> tuple[Tensor, BiLevelRoutingAttention]:
        """The routed regions ``[B, R, topk]`` of block ``block`` in stage ``stage`` for images ``x``."""
        self.check_images(x)
        x = self.stem(x)
        for i in range(stage + 1):
            if i > 0:
                x = self.downsamples[i - 1](x)
            blocks = self.stages[i] if i < stage else self.stages[i][:block]
            x = blocks(x)
        target = self.stages[stage][block]
        x = x + target.pos(x)
        t = x.flatten(2).transpose(1, 2)  # [B, C, H, W] -> [B, H*W, C]
        return target.attn.routed_regions(target.norm1(t)), target.attn


TINY = {"depths": (2, 2, 8, 2), "dims": (64, 128, 256, 512)}
timm_variant("biformer_tiny", BiFormer, TINY, "BiFormer-T (paper: 13.1M parameters at 224 x 224).")
timm_variant("biformer_small", BiFormer, {"depths": (4, 4, 18, 4), "dims": (64, 128, 256, 512)},
             "BiFormer-S (paper: 25.5M parameters).")
timm_variant("biformer_base", BiFormer, {"depths": (4, 4, 18, 4), "dims": (96, 192, 384, 768)},
             "BiFormer-B (paper: 56.8M parameters).")
TINY_28 = {"in_chans": 1, "num_classes": 10, "img_size": 28, "depths": (1, 1, 3, 1), "dims": (32, 64, 128, 160),
           "n_win": (7, 1, 1, 1), "topks": (4, -1, -1, -1), "stem_stride": 2}
timm_variant("biformer_tiny_28", BiFormer, TINY_28,
             "BiFormer-T scaled for 28 x 28 grey images (sized to train ~10 epochs of Fashion-MNIST in 30 minutes "
             "on one core): stem stride 2, grids 14, 7, 4, 2; depths (1, 1, 3, 1), widths (32, 64, 128, 160); "
             "stage 0 routes each of the 49 regions of 2x2 tokens to its top-4 regions, the smaller grids are one "
             "region each (all routed: full attention, as the paper's last stage).")
