"""A plain ViT whose token mixer is any registered mixer (softmax, linear, GLA in non-causal form,
BRA, ...; a causal-only one such as the LMU with ``causal=True``), for the cross-mixer comparison on
the same images.

    patch embedding + learned positions -> MixerStack (pre-norm blocks, MLP ratio 4, final norm)
    -> mean pool -> linear

Patch embedding (``patch_embed``): ``"linear"`` is ViT's (one linear map of each ``patch x patch``
patch, a strided Conv2d); ``"conv"`` is LMUFormer's convolutional patch embedding
(:class:`seqmix.core.embeddings.ConvPatchEmbedding`, before the first block): the patches, flattened
to ``C patch^2`` features and read in raster order as a sequence, go through ``conv_layers`` causal
1-D convolutions of ``conv_kernel`` patches with BatchNorm (ReLU between them), so a token also sees
the patches just before it in raster order (left padding: a causal mixer stays causal end to end).
LMUFormer runs it on a raw 1-D sequence (its stride makes the patches); here the 2-D patches are the
sequence's steps (stride 1), its relative-position convolution is left out and the ViT's learned
positions are kept.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
import torch.nn.functional as F
from timm.layers import trunc_normal_
from torch import Tensor, nn

from seqmix.apps.vision.common import check_images, init_weights, timm_variant
from seqmix.core.blocks import MixerFactory, MixerStack, mixer_factory
from seqmix.core.embeddings import ConvPatchEmbedding
from seqmix.core.mixer import check_int

PatchEmbed = Literal["linear", "conv"]


class ViT(nn.Module):
    """ViT over ``(img_size / patch)^2`` tokens; ``mixer`` builds each block's token mixer from ``d_model``.

    Args:
        patch_embed: ``"linear"`` (ViT's) or ``"conv"`` (LMUFormer's convolutional patch embedding,
            module docstring); ``conv_kernel`` / ``conv_layers``: its kernel (in patches) and depth.
        causal: the mixers' pattern: False (every patch reads every patch, the default) or True for a
            causal-only mixer such as ``lmu``, which reads the patches in raster order.
    """

    def __init__(self, in_chans: int = 1, num_classes: int = 10, img_size: int = 28, *,
                 mixer: MixerFactory = mixer_factory("softmax", n_heads=4, causal=False),
                 patch: int = 4, d_model: int = 128, depth: int = 6, mlp_ratio: float = 4.0, dropout: float = 0.0,
                 patch_embed: PatchEmbed = "linear", conv_kernel: int = 3, conv_layers: int = 4,
                 causal: bool = False):
        super().__init__()
        if img_size % patch:
            raise ValueError(f"ViT: patch={patch} must divide img_size={img_size}")
        if in_chans < 1 or num_classes < 1:
            raise ValueError(f"ViT: in_chans and num_classes must be positive, got {in_chans}, {num_classes}")
        if patch_embed not in get_args(PatchEmbed):
            raise ValueError(f"ViT: patch_embed={patch_embed!r} is unknown; choose one of {list(get_args(PatchEmbed))}")
        check_int("ViT", "conv_kernel", conv_kernel, meaning="patches each convolution of patch_embed='conv' reads")
        check_int("ViT", "conv_layers", conv_layers, meaning="convolutions of patch_embed='conv', e.g. 4")
        self.in_chans, self.img_size, self.num_classes, self.patch = in_chans, img_size, num_classes, patch
        self.grid = (img_size // patch, img_size // patch)
        if patch_embed == "linear":
            self.patch_embed = nn.Conv2d(in_chans, d_model, patch, stride=patch)
        else:
            self.patch_embed = ConvPatchEmbedding(in_chans * patch * patch, d_model, kernel_size=conv_kernel,
                                                  n_layers=conv_layers, stride=1)
        self.pos = nn.Parameter(torch.zeros(1, self.grid[0] * self.grid[1], d_model))  # [1, T, D]
        trunc_normal_(self.pos, std=0.02)
        try:
            self.blocks = MixerStack(d_model, depth, mixer, causal=causal, mlp_ratio=mlp_ratio, mlp="mlp",
                                     dropout=dropout)
        except ValueError as e:
            if "this stack needs causal=" not in str(e):
                raise
            raise ValueError(f"ViT(causal={causal}): {e}; or, for a mixer that is causal only (e.g. lmu), set "
                             f"causal: {str(not causal).lower()} on the ViT (its init_args) to match the mixer"
                             ) from None
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
        if isinstance(self.patch_embed, ConvPatchEmbedding):  # the patches as a raster-ordered sequence
            patches = F.unfold(x, self.patch, stride=self.patch).transpose(1, 2)  # [B, C p^2, h*w] -> [B, h*w, C p^2]
            t = self.patch_embed(patches)  # [B, h*w, D]
        else:
            t = self.patch_embed(x).flatten(2).transpose(1, 2)  # [B, D, h, w] -> [B, h*w, D]
        return self.head(self.blocks(t + self.pos).mean(1))


timm_variant("seqmix_vit_28", ViT, {}, "ViT for 28 x 28 grey images (7 x 7 patches of 4), softmax mixer by default; "
             "pass mixer=seqmix.core.blocks.mixer_factory(name, ...) for another registered mixer.")
