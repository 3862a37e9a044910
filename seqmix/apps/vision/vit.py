"""A plain ViT whose token mixer is any registered non-causal mixer (softmax, linear, GLA in
non-causal form, BRA, ...), for the cross-mixer comparison on the same images.

    patch embedding (conv patch x patch) + learned positions -> MixerStack (pre-norm blocks,
    MLP ratio 4, final norm) -> mean pool -> linear
"""

from __future__ import annotations

import torch
from timm.layers import trunc_normal_
from torch import Tensor, nn

from seqmix.apps.vision.common import check_images, init_weights, timm_variant
from seqmix.core.blocks import MixerFactory, MixerStack, mixer_factory


class ViT(nn.Module):
    """ViT over ``(img_size / patch)^2`` tokens; ``mixer`` builds each block's token mixer from ``d_model``."""

    def __init__(self, in_chans: int = 1, num_classes: int = 10, img_size: int = 28, *,
                 mixer: MixerFactory = mixer_factory("softmax", n_heads=4, causal=False),
                 patch: int = 4, d_model: int = 128, depth: int = 6, mlp_ratio: float = 4.0, dropout: float = 0.0):
        super().__init__()
        if img_size % patch:
            raise ValueError(f"ViT: patch={patch} must divide img_size={img_size}")
        if in_chans < 1 or num_classes < 1:
            raise ValueError(f"ViT: in_chans and num_classes must be positive, got {in_chans}, {num_classes}")
        self.in_chans, self.img_size, self.num_classes = in_chans, img_size, num_classes
        self.grid = (img_size // patch, img_size // patch)
        self.patch_embed = nn.Conv2d(in_chans, d_model, patch, stride=patch)
        self.pos = nn.Parameter(torch.zeros(1, self.grid[0] * self.grid[1], d_model))  # [1, T, D]
        trunc_normal_(self.pos, std=0.02)
        self.blocks = MixerStack(d_model, depth, mixer, causal=False, mlp_ratio=mlp_ratio, mlp="mlp", dropout=dropout)
        for block in self.blocks.blocks:  # a 2-D positional mixer (lightnet's md_lrpe) must see this grid
            width = getattr(block.mixer, "grid_width", None)
            if width is not None and width != self.grid[1]:
                raise ValueError(f"ViT: the mixer's grid_width={width} but the image gives a {self.grid[0]} x "
                                 f"{self.grid[1]} grid of patches (img_size {img_size} / patch {patch}); set "
                                 f"grid_width: {self.grid[1]} in the mixer's init_args")
        self.head = nn.Linear(d_model, num_classes)
        self.apply(init_weights)

    def forward(self, x: Tensor) -> Tensor:
        """Images ``[B, C_in, S, S]`` -> logits ``[B, num_classes]``."""
        check_images(x, self.in_chans, self.img_size, type(self).__name__)
        t = self.patch_embed(x).flatten(2).transpose(1, 2)  # [B, D, h, w] -> [B, h*w, D]
        return self.head(self.blocks(t + self.pos).mean(1))


timm_variant("seqmix_vit_28", ViT, {}, "ViT for 28 x 28 grey images (7 x 7 patches of 4), softmax mixer by default; "
             "pass mixer=seqmix.core.blocks.mixer_factory(name, ...) for another registered mixer.")
