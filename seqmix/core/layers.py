"""Small layers shared by the mixers: head splitting and the q/k/v/o projections."""

from __future__ import annotations

from torch import Tensor, nn


def split_heads(x: Tensor, n_heads: int) -> Tensor:
    """``[B, T, H*K] -> [B, H, T, K]``."""
    b, t, d = x.shape
    return x.view(b, t, n_heads, d // n_heads).transpose(1, 2)  # [B, T, H, K] -> [B, H, T, K]


def merge_heads(x: Tensor) -> Tensor:
    """``[B, H, T, K] -> [B, T, H*K]``."""
    b, h, t, k = x.shape
    return x.transpose(1, 2).reshape(b, t, h * k)  # [B, H, T, K] -> [B, T, H*K]


class QKVProjection(nn.Module):
    """Query from ``x``, key and value from ``context`` (or ``x``), split into heads.

    ``key_dim`` / ``value_dim`` are the total widths over heads (default ``d_model``).
    """

    def __init__(self, d_model: int, n_heads: int, *, key_dim: int | None = None,
                 value_dim: int | None = None, bias: bool = False):
        super().__init__()
        self.n_heads = n_heads
        key_dim = key_dim or d_model
        value_dim = value_dim or d_model
        self.q = nn.Linear(d_model, key_dim, bias=bias)
        self.k = nn.Linear(d_model, key_dim, bias=bias)
        self.v = nn.Linear(d_model, value_dim, bias=bias)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        source = x if context is None else context
        q = split_heads(self.q(x), self.n_heads)  # [B, H, T, K]
        k = split_heads(self.k(source), self.n_heads)  # [B, H, S, K]
        v = split_heads(self.v(source), self.n_heads)  # [B, H, S, V]
        return q, k, v
