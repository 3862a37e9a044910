"""Positional encodings shared by every model: sinusoidal (absolute), rotary and LRPE-d (relative)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


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

    def forward(self, x: Tensor, offset: int = 0) -> Tensor:
        t = x.shape[-2]
        position = torch.arange(offset, offset + t, device=x.device, dtype=torch.float32)
        angles = position[:, None] * self.inv_freq[None, :]  # [T, K/2]
        cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
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
