"""Embeddings shared by every model: positional encodings, sinusoidal (absolute), rotary and LRPE-d
(relative); LMUFormer's convolutional patch embedding (:class:`ConvPatchEmbedding`)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seqmix.core.mixer import check_int


def sinusoidal_table(length: int, dim: int, *, base: float = 10000.0) -> Tensor:
    """The Transformer's fixed table ``[length, dim]`` (sin on even, cos on odd channels)."""
    if dim % 2 != 0:
        raise ValueError(f"sinusoidal encodings need an even dim, got {dim}")
    position = torch.arange(length, dtype=torch.float32)[:, None]  # [L, 1]
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(base) / dim))  # [dim/2]
    table = torch.zeros(length, dim)
    table[:, 0::2] = torch.sin(position * freq)
    table[:, 1::2] = torch.cos(position * freq)
    return table


class SinusoidalPositionalEncoding(nn.Module):
    """Adds the fixed sinusoidal table to ``x: [B, T, D]``; positions start at ``offset``."""

    def __init__(self, d_model: int, max_len: int = 8192):
        super().__init__()
        self.max_len = max_len
        self.register_buffer("table", sinusoidal_table(max_len, d_model), persistent=False)

    def forward(self, x: Tensor, offset: int = 0) -> Tensor:
        t = x.shape[1]
        if offset + t > self.max_len:
            raise ValueError(f"sequence of {offset + t} positions exceeds max_len={self.max_len}; raise max_len")
        return x + self.table[offset : offset + t].to(x.dtype)


class RotaryEmbedding(nn.Module):
    """Rotary position embedding (RoFormer) applied to ``[B, H, T, K]`` queries or keys."""

    def __init__(self, head_dim: int, base: float = 10000.0):
        super().__init__()
        if head_dim % 2 != 0:
            raise ValueError(f"rotary embeddings need an even head_dim, got {head_dim}")
        inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, x: Tensor, offset: int = 0, mirrored: bool = False) -> Tensor:
        """``x`` at positions ``offset .. offset + T - 1``. ``mirrored``: the sine negated (each position rotated by
        minus its angle), BICO's positions for future keys: a mirrored query ``i`` and key ``j`` score as an
        ordinary pair at offset ``i - j`` instead of ``j - i`` (:func:`seqmix.core.mixers.softmax.mirrored_attention`)."""
        t = x.shape[-2]
        position = torch.arange(offset, offset + t, device=x.device, dtype=torch.float32)
        angles = position[:, None] * self.inv_freq[None, :]  # [T, K/2]
        cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
        if mirrored:
            sin = -sin
        x1, x2 = x[..., 0::2], x[..., 1::2]  # [B, H, T, K/2] each
        rotated = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)  # [B, H, T, K/2, 2]
        return rotated.flatten(-2)  # [B, H, T, K]


class LRPE(nn.Module):
    """The rotation part of TransNormerLLM's LRPE-d (Qin et al. 2023), for linear attention.

    The paper's score ``a_ts = q_t^T k_s lambda^(t-s) exp(i theta (t-s))`` in its real form: each
    channel ``j`` of ``x: [B, T, H, K]`` at position ``t`` becomes the pair ``x_j cos(theta_j t)``,
    ``x_j sin(theta_j t)``, ``[B, T, H, 2K]``, so that for encoded q and k

        q~_t . k~_s = sum_j q_j k_j cos(theta_j (t - s))

    depends on ``t - s`` only, and linear attention over q~, k~ stays a recurrence (the decay
    ``lambda`` is the mixer's ``decay``). ``theta`` is fixed, one frequency per head and channel,
    ``theta_{h,j} = base^(-(h K + j) / (H K))``; the paper's learnable variant is left out.
    """

    def __init__(self, n_heads: int, head_dim: int, base: float = 10000.0):
        super().__init__()
        if n_heads < 1 or head_dim < 1:
            raise ValueError(f"LRPE: n_heads and head_dim must be >= 1, got {n_heads} and {head_dim}")
        width = n_heads * head_dim
        theta = base ** (-torch.arange(width, dtype=torch.float64) / width)  # [H*K]
        self.register_buffer("theta", theta.view(n_heads, head_dim), persistent=False)  # [H*K] -> [H, K]

    def forward(self, x: Tensor, offset: int = 0) -> Tensor:
        """``x: [B, T, H, K]`` at positions ``offset .. offset + T - 1`` -> ``[B, T, H, 2K]``."""
        t = x.shape[1]
        position = torch.arange(offset, offset + t, dtype=torch.float64, device=x.device)  # [T]
        angles = position[:, None, None] * self.theta  # [T, H, K], in float64: exact phases at long offsets
        return torch.cat((x * angles.cos().to(x.dtype), x * angles.sin().to(x.dtype)), -1)  # [B, T, H, 2K]


class ConvPatchEmbedding(nn.Module):
    """LMUFormer's convolutional patch embedding (Liu et al. 2024), made causal: raw ``[B, T, C_in]``
    -> ``[B, T // stride, D]`` tokens for a stack of LMU (or any causal) blocks.

    ``n_layers`` 1-D convolutions of ``kernel_size`` k, each followed by BatchNorm, ReLU between them
    (the last layer ends at its BatchNorm: the tokens are the blocks' residual stream). The widths
    grow as LMUFormer's, doubling up to ``d_model`` (``ceil(D / 2^(n_layers-1-i))`` channels after layer i).
    The first layer has stride s and is left padded by ``k - s``: token j is its patch
    ``x[j s .. (j + 1) s - 1]`` and the ``k - s`` steps before it, so it is complete as soon as its
    patch is (the ``T mod s`` steps after the last whole patch make no token). The later layers have
    stride 1 and are left padded by ``k - 1``. Left padding only: token j depends on inputs before
    ``(j + 1) s`` alone, so the LMU stack after it stays streaming (on a buffer of
    :attr:`receptive_field` inputs). BatchNorm is causal in eval mode (running statistics); in training
    its batch statistics span the batch, as everywhere.

    Left out: LMUFormer's relative-position convolution after the stack and the spiking (LIF) neurons
    of its spiking variant; its symmetric padding (not causal) is replaced by left padding.

    Args:
        in_channels: C_in, features per input step (e.g. 1 for a raw waveform, 40 for filterbanks).
        d_model: D, the token width.
        kernel_size: k of every layer (>= stride, so that every input step is seen).
        n_layers: convolutions in the stack.
        stride: s, input steps per token (the first layer's stride).
    """

    def __init__(self, in_channels: int, d_model: int, *, kernel_size: int = 3, n_layers: int = 4, stride: int = 1):
        super().__init__()
        name = type(self).__name__
        check_int(name, "in_channels", in_channels, meaning="features per input step")
        check_int(name, "d_model", d_model, meaning="the token width")
        check_int(name, "n_layers", n_layers, meaning="convolutions in the stack, e.g. 4")
        check_int(name, "stride", stride, meaning="input steps per token")
        check_int(name, "kernel_size", kernel_size, minimum=stride,
                  meaning=f"at least stride={stride}, so that every input step is seen")
        self.in_channels, self.d_model, self.kernel_size, self.stride = in_channels, d_model, kernel_size, stride
        widths = [in_channels] + [-(-d_model // 2 ** (n_layers - 1 - i)) for i in range(n_layers)]
        self.convs = nn.ModuleList(nn.Conv1d(c_in, c_out, kernel_size, stride=stride if i == 0 else 1, bias=False)
                                   for i, (c_in, c_out) in enumerate(zip(widths, widths[1:])))
        self.norms = nn.ModuleList(nn.BatchNorm1d(c) for c in widths[1:])

    @property
    def receptive_field(self) -> int:
        """Input steps one token depends on: its ``k`` first-layer steps, ``(k - 1) s`` more per later layer."""
        return self.kernel_size + (len(self.convs) - 1) * (self.kernel_size - 1) * self.stride

    def forward(self, x: Tensor) -> Tensor:
        """``x: [B, T, C_in]`` -> ``[B, T // stride, D]``."""
        name = type(self).__name__
        if x.dim() != 3 or x.shape[-1] != self.in_channels:
            raise ValueError(f"{name}: x must be [batch, time, in_channels={self.in_channels}], got {tuple(x.shape)}")
        if x.shape[1] < self.stride:
            raise ValueError(f"{name}: a sequence of {x.shape[1]} steps is shorter than one patch "
                             f"(stride={self.stride}); give at least {self.stride} steps")
        h = x.transpose(1, 2)  # [B, T, C_in] -> [B, C_in, T]
        for i, (conv, norm) in enumerate(zip(self.convs, self.norms)):
            h = norm(conv(F.pad(h, (conv.kernel_size[0] - conv.stride[0], 0))))  # [B, C_i, T_i] -> [B, C_i+1, T // s]
            if i < len(self.convs) - 1:
                h = F.relu(h)
        return h.transpose(1, 2)  # [B, D, T // s] -> [B, T // s, D]

    def extra_repr(self) -> str:
        return f"in_channels={self.in_channels}, d_model={self.d_model}, kernel_size={self.kernel_size}, " \
               f"n_layers={len(self.convs)}, stride={self.stride}"
