"""The plain quadratic attention, the reference for every attention mixer.

Shapes follow ``[B, H, T, K]`` for queries and ``[B, H, S, K]`` / ``[B, H, S, V]`` for
keys and values. Causal masking is aligned bottom-right: query ``i`` of ``T`` sees key
``j`` of ``S`` iff ``j <= i + (S - T)`` (for self attention ``S == T`` and this is the
usual lower triangle; with a cache of past keys it is what decoding needs).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def visible_keys_mask(
    t: int,
    s: int,
    *,
    causal: bool,
    window: int | None = None,
    key_mask: Tensor | None = None,
    device: torch.device | None = None,
) -> Tensor:
    """Bool ``[B or 1, 1, T, S]``: True where query i may attend key j.

    ``window`` keeps only the last ``window`` keys up to the query (sliding window,
    causal) or keys within ``window // 2`` on each side (non-causal).
    ``key_mask: [B, S]`` (True = keep) removes padded keys.
    """
    i = torch.arange(t, device=device)[:, None] + (s - t)  # [T, 1] query position on the key axis
    j = torch.arange(s, device=device)[None, :]  # [1, S]
    visible = torch.ones(t, s, dtype=torch.bool, device=device)
    if causal:
        visible &= j <= i
        if window is not None:
            visible &= j > i - window
    elif window is not None:
        half = window // 2
        visible &= (j - i).abs() <= half
    visible = visible[None, None]  # [1, 1, T, S]
    if key_mask is not None:
        visible = visible & key_mask[:, None, None, :]  # [B, 1, T, S]
    return visible


def attention_naive(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    causal: bool,
    normalizer: str = "softmax",
    scale: float | None = None,
    window: int | None = None,
    key_mask: Tensor | None = None,
) -> Tensor:
    """Quadratic attention ``[B, H, T, K] x [B, H, S, K] x [B, H, S, V] -> [B, H, T, V]``.

    ``normalizer``:
    - ``"softmax"``: softmax over the visible keys (a query with no visible key gives 0);
    - ``"sigmoid"``: ``sigmoid(score - log n_i)``, no normalisation across keys, where
      ``n_i`` is the number of keys query ``i`` sees (the sink-free form);
    - ``"relu"``: ``relu(score) / n_i``.
    """
    scale = scale if scale is not None else 1.0 / math.sqrt(q.shape[-1])
    t, s = q.shape[-2], k.shape[-2]
    visible = visible_keys_mask(t, s, causal=causal, window=window, key_mask=key_mask, device=q.device)
    scores = torch.einsum("bhtk,bhsk->bhts", q, k) * scale  # [B, H, T, S]
    if normalizer == "softmax":
        scores = scores.masked_fill(~visible, float("-inf"))
        weights = torch.softmax(scores, dim=-1).nan_to_num(0.0)  # rows with no visible key -> 0
    else:
        n_visible = visible.sum(-1, keepdim=True).clamp(min=1).to(q.dtype)  # [B|1, 1, T, 1]
        if normalizer == "sigmoid":
            weights = torch.sigmoid(scores - n_visible.log())
        elif normalizer == "relu":
            weights = torch.relu(scores) / n_visible
        else:
            raise ValueError(f"normalizer={normalizer!r} is unknown; choose 'softmax', 'sigmoid' or 'relu'")
        weights = weights * visible
    return torch.einsum("bhts,bhsv->bhtv", weights, v)
