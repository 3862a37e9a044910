"""Bi-level routing attention (BRA) of BiFormer (Zhu et al., CVPR 2023, "BiFormer: Vision
Transformer with Bi-Level Routing Attention").

The tokens ``[B, H*W, D]`` are an image in raster order (``spatial_shape=(H, W)``), cut into
``n_win x n_win`` regions of ``(H / n_win) x (W / n_win)`` tokens:

1. region-level query and key: the mean of ``q`` / ``k`` over each region's tokens;
2. region affinity ``A = Q_r K_r^T`` (``[R, R]``, shared by the heads, as in the paper's code),
   and for each region the indices of its ``topk`` most affine regions (routing; not
   differentiated, as in the paper's default ``diff_routing=False``);
3. token-to-token attention of each region's queries over the keys / values of its routed
   regions only (gathered), per head;
4. local context enhancement (LCE): ``+ dwconv(v)``, a depthwise ``lce_kernel`` convolution of
   ``v`` over the image; then the output projection.

Without ``spatial_shape`` the sequence is a ``1 x T`` image cut into ``n_win`` 1-D regions along
time (the same mixer, so the generic tests and the text apps can use it).

A size that ``n_win`` does not divide is an error that names the sizes, unless ``pad=True``:
then the grid is zero-padded up to a multiple of ``n_win`` (as the paper's ``auto_pad``), the
padded keys are masked out of the token attention and out of the region means, and fully
padded regions are never routed to while a real region is left.

Implementations: ``"naive"`` — dense attention over all ``T`` keys with a ``[B, T, T]`` mask
built from the routing (the obviously correct reference); ``"gather"`` — the paper's form,
gathering the ``topk`` routed regions' keys/values per region (cost ``O(T * topk * T / R)``).
``topk=-1`` routes every region to every region, which is full attention plus LCE (``"gather"``
then runs it as one fused attention, nothing gathered).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seqmix.core.layers import depthwise_conv, merge_heads, split_heads
from seqmix.core.mixer import Mixer, register_mixer


@register_mixer("bra")
class BiLevelRoutingAttention(Mixer):
    """BiFormer's bi-level routing attention over a 2-D token grid (or 1-D regions along time).

    Args:
        n_heads: attention heads (BiFormer: ``d_model // 32``).
        n_win: regions per side (``n_win x n_win`` regions in 2-D, ``n_win`` along time in 1-D).
        topk: routed regions per region, in ``1..R`` (``R`` regions), or -1 for all regions.
        lce_kernel: kernel of the LCE depthwise convolution on ``v`` (odd; the paper: 5); 0 = none.
        spatial_shape: ``(H, W)`` of the token grid, or None for a ``1 x T`` grid.
        pad: zero-pad a grid that ``n_win`` does not divide (masking the padding) instead of failing.
    """

    patterns = frozenset({"noncausal_self"})
    impls = ("naive", "gather")
    test_configs = ({"n_heads": 2, "n_win": 4, "topk": 2, "pad": True},
                    {"n_heads": 1, "n_win": 3, "topk": -1, "lce_kernel": 3, "pad": True})
    paper = "BiFormer (Zhu et al. 2023)"
    complexity = "O(T^2 D topk / R)"

    def __init__(self, d_model: int, *, n_heads: int = 4, causal: bool = False, impl: str = "auto",
                 n_win: int = 7, topk: int = 4, lce_kernel: int = 5,
                 spatial_shape: tuple[int, int] | None = None, pad: bool = False):
        super().__init__(d_model, n_heads=n_heads, causal=causal, impl=impl)
        if not isinstance(n_win, int) or n_win < 1:
            raise ValueError(f"BiLevelRoutingAttention: n_win (regions per side) must be a positive int, got {n_win!r}")
        regions = n_win if spatial_shape is None else n_win * n_win
        if not isinstance(topk, int) or not (topk == -1 or 1 <= topk <= regions):
            raise ValueError(f"BiLevelRoutingAttention: topk={topk!r} must be in 1..{regions} (the number of "
                             f"regions for n_win={n_win}) or -1 for all regions")
        if not isinstance(lce_kernel, int) or lce_kernel < 0 or (lce_kernel > 0 and lce_kernel % 2 == 0):
            raise ValueError(f"BiLevelRoutingAttention: lce_kernel must be 0 (no LCE) or an odd int "
                             f"(the paper: 5), got {lce_kernel!r}")
        if spatial_shape is not None:
            if len(spatial_shape) != 2 or any(not isinstance(s, int) or s < 1 for s in spatial_shape):
                raise ValueError(f"BiLevelRoutingAttention: spatial_shape must be (height, width) of positive "
                                 f"ints, got {spatial_shape!r}")
            spatial_shape = tuple(spatial_shape)
            if not pad and (spatial_shape[0] % n_win or spatial_shape[1] % n_win):
                raise ValueError(f"BiLevelRoutingAttention: n_win={n_win} regions per side cannot divide the "
                                 f"{spatial_shape[0]}x{spatial_shape[1]} token grid; choose n_win dividing both "
                                 f"sides, change the input size, or set pad=True")
        self.n_win, self.topk, self.lce_kernel = n_win, topk, lce_kernel
        self.spatial_shape, self.pad = spatial_shape, pad
        self.regions = regions
        self.scale = self.head_dim ** -0.5
        self.qkv = nn.Linear(d_model, 3 * d_model)
        kernel = (lce_kernel, lce_kernel) if spatial_shape is not None else (lce_kernel,)
        if lce_kernel:
            self.lce_weight = nn.Parameter(torch.empty(d_model, *kernel))
            self.lce_bias = nn.Parameter(torch.zeros(d_model))
            bound = self.lce_weight[0].numel() ** -0.5  # PyTorch's default for a depthwise conv (fan-in = taps)
            nn.init.uniform_(self.lce_weight, -bound, bound)
        self.out = nn.Linear(d_model, d_model)

    # -------------------------------------------------------------- geometry
    def grid(self, t: int) -> tuple[int, int]:
        """``(H, W)`` of the token grid for ``t`` tokens (``1 x t`` without ``spatial_shape``)."""
        if self.spatial_shape is None:
            if t % self.n_win and not self.pad:
                raise ValueError(f"BiLevelRoutingAttention: n_win={self.n_win} regions cannot divide T={t} "
                                 "tokens; use a multiple of n_win or set pad=True")
            return 1, t
        height, width = self.spatial_shape
        if t != height * width:
            raise ValueError(f"BiLevelRoutingAttention: spatial_shape={self.spatial_shape} needs {height * width} "
                             f"tokens, got T={t}")
        return height, width

    def region_layout(self, t: int) -> tuple[int, int, int, int]:
        """``(Hp, Wp, rh, rw)``: the padded grid and a region's height and width in tokens."""
        height, width = self.grid(t)
        wins_h = 1 if self.spatial_shape is None else self.n_win
        rh, rw = math.ceil(height / wins_h), math.ceil(width / self.n_win)
        return rh * wins_h, rw * self.n_win, rh, rw

    def to_regions(self, x: Tensor, t: int) -> Tensor:
        """``[B, T, C] -> [B, R, n, C]``: zero-padded, region by region (``n`` tokens a region)."""
        b, _, c = x.shape
        height, width = self.grid(t)
        hp, wp, rh, rw = self.region_layout(t)
        x = x.reshape(b, height, width, c)  # [B, T, C] -> [B, H, W, C]
        x = F.pad(x, (0, 0, 0, wp - width, 0, hp - height))  # [B, Hp, Wp, C]
        x = x.reshape(b, hp // rh, rh, wp // rw, rw, c)  # [B, Sh, rh, Sw, rw, C]
        return x.permute(0, 1, 3, 2, 4, 5).reshape(b, -1, rh * rw, c)  # [B, R, n, C]

    def from_regions(self, x: Tensor, t: int) -> Tensor:
        """``[B, R, n, C] -> [B, T, C]``: the inverse of :meth:`to_regions`, padding dropped."""
        b, _, _, c = x.shape
        height, width = self.grid(t)
        hp, wp, rh, rw = self.region_layout(t)
        x = x.reshape(b, hp // rh, wp // rw, rh, rw, c)  # [B, Sh, Sw, rh, rw, C]
        x = x.permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, c)  # [B, Hp, Wp, C]
        return x[:, :height, :width].reshape(b, t, c)  # [B, H, W, C] -> [B, T, C]

    # --------------------------------------------------------------- routing
    @torch.no_grad()
    def route(self, q_r: Tensor, k_r: Tensor, valid: Tensor | None) -> Tensor:
        """Top-k routed regions ``[B, R, topk]`` from region means ``q_r, k_r: [B, R, D]``.

        ``valid: [R, n]`` marks real (not padded) tokens (None: no padding); fully padded regions rank last.
        """
        affinity = q_r @ k_r.transpose(1, 2)  # [B, R, R]
        if valid is not None:
            affinity = affinity.masked_fill(~valid.any(-1), float("-inf"))  # [R] empty regions
        topk = self.regions if self.topk == -1 else self.topk
        return affinity.topk(topk, dim=-1).indices  # [B, R, topk]

    def routing(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor | None, Tensor]:
        """Projections in regions and the routing: ``q, k, v: [B, R, n, D]``, ``valid: [R, n]`` (None
        when the grid needs no padding: decided by the sizes alone, no device sync), ``index: [B, R, topk]``."""
        t = x.shape[1]
        q, k, v = self.qkv(x).chunk(3, dim=-1)  # [B, T, D] each
        hp, wp, _, _ = self.region_layout(t)
        valid = None if hp * wp == t else self.to_regions(x.new_ones(1, t, 1), t)[0, ..., 0] > 0  # [R, n]
        q, k, v = (self.to_regions(z, t) for z in (q, k, v))  # [B, R, n, D]
        if valid is None:
            q_r, k_r = q.mean(2), k.mean(2)  # [B, R, D]
        else:
            count = valid.sum(-1).clamp(min=1)[:, None]  # [R, 1]
            q_r, k_r = q.sum(2) / count, k.sum(2) / count  # padded tokens are zeros: the mean of the real ones
        return q, k, v, valid, self.route(q_r, k_r, valid)

    # --------------------------------------------------------------- forward
    def _forward(self, x, *, context, mask, state, return_state):
        b, t, d = x.shape
        q, k, v, valid, index = self.routing(x)
        attend = self.attend_naive if self.resolve_impl(x) == "naive" else self.attend_gather
        o = attend(q, k, v, valid, index)  # [B, R, n, D]
        o = self.from_regions(o, t)  # [B, T, D]
        if self.lce_kernel:
            o = o + self.lce(self.from_regions(v, t))
        return self.out(o)

    def lce(self, v: Tensor) -> Tensor:
        """Local context enhancement: depthwise convolution of ``v: [B, T, D]`` over the grid."""
        b, t, d = v.shape
        impl = "naive" if self.resolve_impl(v) == "naive" else "conv"
        if self.spatial_shape is None:
            return depthwise_conv(v, self.lce_weight, self.lce_bias, causal=False, impl=impl)
        image = v.reshape(b, *self.spatial_shape, d)  # [B, T, D] -> [B, H, W, D]
        lce = depthwise_conv(image, self.lce_weight, self.lce_bias, causal=False, impl=impl)  # [B, H, W, D]
        return lce.reshape(b, t, d)  # [B, H, W, D] -> [B, T, D]

    def attend_naive(self, q: Tensor, k: Tensor, v: Tensor, valid: Tensor | None, index: Tensor) -> Tensor:
        """Dense reference: every query over all tokens, masked to its region's routed regions."""
        b, r, n, d = q.shape
        routed = torch.zeros(b, r, r, dtype=torch.bool, device=q.device)
        routed.scatter_(2, index, True)  # [B, R(query region), R(key region)]
        allowed = routed[:, :, None, :, None]  # [B, R, 1, R, 1]
        if valid is not None:
            allowed = allowed & valid[None, None, None]  # [B, R, 1, R, n]
        allowed = allowed.expand(b, r, n, r, n).reshape(b, 1, r * n, r * n)  # [B, 1, T', T']
        q, k, v = (split_heads(z.reshape(b, r * n, d), self.n_heads) for z in (q, k, v))  # [B, h, T', K]
        scores = (q * self.scale) @ k.transpose(-1, -2)  # [B, h, T', T']
        o = scores.masked_fill(~allowed, float("-inf")).softmax(-1) @ v  # [B, h, T', K]
        return merge_heads(o).reshape(b, r, n, d)  # [B, T', D] -> [B, R, n, D]

    def attend_gather(self, q: Tensor, k: Tensor, v: Tensor, valid: Tensor | None, index: Tensor) -> Tensor:
        """The paper's form: each region's queries over the gathered tokens of its routed regions."""
        b, r, n, d = q.shape
        topk = index.shape[-1]
        if topk == r:  # every region routed (topk=-1): all keys, nothing to gather
            q, k, v = (split_heads(z.reshape(b, r * n, d), self.n_heads) for z in (q, k, v))  # [B, h, T', K]
            keep = None if valid is None else valid.reshape(1, 1, 1, r * n)  # [1, 1, 1, T'] key mask (padding)
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=keep)  # [B, h, T', K]
            return merge_heads(o).reshape(b, r, n, d)  # [B, T', D] -> [B, R, n, D]
        # rows of the [B*R, n, D] region table: index_select (backward: index_add) is faster on the
        # CPU than gather with an expanded [B, R*topk, n, D] index (backward: scatter_add)
        rows = (index + torch.arange(b, device=index.device)[:, None, None] * r).reshape(-1)  # [B*R*topk]
        k_g, v_g = (z.reshape(b * r, n, d).index_select(0, rows).reshape(b * r, topk * n, d)
                    for z in (k, v))  # [B*R, n, D] -> [B*R*topk, n, D] -> [B*R, topk*n, D]
        qh = split_heads(q.reshape(b * r, n, d), self.n_heads)  # [B*R, h, n, K]
        kh, vh = split_heads(k_g, self.n_heads), split_heads(v_g, self.n_heads)  # [B*R, h, topk*n, K]
        # one fused kernel for the many tiny region-to-regions attentions; the key mask only with padding
        keep = None if valid is None else valid[index].reshape(b * r, 1, 1, topk * n)  # [B*R, 1, 1, topk*n]
        o = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=keep)  # [B*R, h, n, K]
        return merge_heads(o).reshape(b, r, n, d)  # [B*R, n, D] -> [B, R, n, D]

    def routed_regions(self, x: Tensor) -> Tensor:
        """The routing ``[B, R, topk]`` for ``x: [B, T, D]`` (for pictures of the routing)."""
        self.check_input(x)
        return self.routing(x)[-1]

    def state_size(self, seq_len: int) -> int:
        return 2 * seq_len * self.d_model  # keys and values of the whole grid (non-causal, no cache)

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, n_win={self.n_win}, topk={self.topk}, lce_kernel={self.lce_kernel}, "
                f"spatial_shape={self.spatial_shape}, pad={self.pad}")
