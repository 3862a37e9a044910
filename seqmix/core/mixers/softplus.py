"""Softplus attention with re-weighting (Gao & Spratling 2025, "Softplus Attention with
Re-weighting Boosts Length Extrapolation in Large Language Models").

The paper splits softmax into a non-linearity (exp) and an l1 normalisation, keeps the
normalisation, and replaces exp by softplus, with a length-dependent scale on the scores:

    s_ij = lambda_i (q_i . k_j) / sqrt(K),     lambda_i = log(n_i) / log(L0)       (the length scale)
    w_ij = softplus(s_ij) / sum_{j' visible} softplus(s_ij')                   (l1 normalisation)
    w'_ij = w_ij^p / sum_{j' visible} w_ij'^p                                  (re-weighting, p >= 1)
    o_i = sum_j w'_ij v_j

``n_i`` is the number of keys query i sees (causal: its 1-based position; with a window or a
key mask, the visible ones). The abstract names the scale "a dynamic scale factor for different
token lengths based on invariance entropy" without its formula; the factor used here is the
entropy-invariance scale ``log_{L0} n`` (Su 2021; Chiang & Cholak 2022's log-length scaling),
which is 1 at ``n = L0`` (``length_base``, the training length) and grows with the length;
``length_base=None`` leaves the scores unscaled. The re-weighting is the abstract's
"fine-tuning-free re-weighting that amplifies significant attention weights while diminishing
weaker ones", as the issue states it: a power ``p`` of the weights, renormalised, so ``p = 1``
is the identity; it can be switched on a trained model (``mixer.reweight_power = 4.0``).

Computed in log space: ``w' = softmax(p log softplus(s))`` over the visible keys, which is the
formula above exactly (``log softplus(s) = s`` to fp64 precision below s = -40, where softplus
would underflow), so no row divides by zero, whatever the scores' magnitude.

Patterns, rotary positions, windows and the KV-cache step come from
:class:`~seqmix.core.mixers.softmax.AttentionMixer`, as for softmax attention.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from seqmix.core.mixer import register_mixer
from seqmix.core.mixers.softmax import AttentionMixer
from seqmix.kernels.attention import visible_keys_mask
from seqmix.kernels.common import compute_dtype


def log_softplus(s: Tensor) -> Tensor:
    """``log(softplus(s))``, finite for every finite ``s`` (``s`` itself below -40, where ``softplus(s) = e^s``
    to fp64 precision)."""
    return torch.where(s < -40.0, s, F.softplus(s.clamp(min=-40.0)).log())


def length_scale(visible: Tensor, length_base: int) -> Tensor:
    """``lambda_i = log(n_i) / log(L0)``: fp64 ``[B|1, 1, T, 1]`` from ``visible: [B|1, 1, T, S]``, with ``n_i``
    the number of keys query i sees (at least 1)."""
    n = visible.sum(-1, keepdim=True).clamp(min=1)  # [B|1, 1, T, 1]
    return n.double().log() / math.log(length_base)


def softplus_weights(scores: Tensor, visible: Tensor, *, power: float) -> Tensor:
    """The re-weighted l1-normalised softplus weights ``w'`` of ``scores: [B, H, T, S]`` (already scaled)
    over the ``visible: [B|1, 1, T, S]`` keys, in fp32 (fp64 for fp64); a query that sees no key gets 0."""
    logits = power * log_softplus(scores.to(compute_dtype(scores)))  # [B, H, T, S]
    has_keys = visible.any(-1, keepdim=True)  # [B|1, 1, T, 1]
    weights = torch.softmax(logits.masked_fill(~(visible | ~has_keys), float("-inf")), dim=-1)  # no 0/0 row
    return weights if bool(has_keys.all()) else weights * has_keys  # rows with no visible key -> 0


@register_mixer("softplus")
class SoftplusAttention(AttentionMixer):
    """Length-scaled softplus attention with switchable re-weighting.

    Args:
        length_base: ``L0`` of the length scale ``log_{L0} n`` (>= 2; the scale is 1 at ``n = L0``);
            None: no length scale.
        reweight_power: the re-weighting power ``p`` (>= 1; 1 = off), settable at inference.
    """

    impls = ("naive",)
    paper = "Gao & Spratling 2025, Softplus Attention with Re-weighting Boosts Length Extrapolation in LLMs"
    complexity = "O(T^2 D)"
    # every option on; one head halves the T x T work of the generic T = 4096 case (heads: test_softplus.py)
    test_configs = ({"n_heads": 1, "rotary": True, "length_base": 16, "reweight_power": 3.0},)

    def __init__(self, d_model: int, *, n_heads: int = 4, causal: bool = True, impl: str = "auto",
                 rotary: bool = False, window: int | None = None, length_base: int | None = 512,
                 reweight_power: float = 1.0):
        super().__init__(d_model, n_heads=n_heads, causal=causal, impl=impl, rotary=rotary, window=window)
        if length_base is not None and (not isinstance(length_base, int) or length_base < 2):
            raise ValueError(f"{type(self).__name__}: length_base must be an int >= 2 (the length where the scale "
                             f"is 1, e.g. the training length) or None for no length scale, got {length_base!r}")
        self.length_base = length_base
        self.reweight_power = reweight_power  # checked by the property

    @property
    def reweight_power(self) -> float:
        return self._reweight_power

    @reweight_power.setter
    def reweight_power(self, value: float) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 1.0 <= value < math.inf:
            raise ValueError(f"{type(self).__name__}: reweight_power must be a finite number >= 1 (1 = no "
                             f"re-weighting, larger sharpens the strong weights), got {value!r}")
        self._reweight_power = float(value)

    def attend(self, q: Tensor, k: Tensor, v: Tensor, key_mask: Tensor | None) -> Tensor:
        t, s = q.shape[-2], k.shape[-2]
        visible = visible_keys_mask(t, s, causal=self.causal, window=self.window, key_mask=key_mask,
                                    device=q.device)  # [B|1, 1, T, S]
        q = q / math.sqrt(q.shape[-1])  # [B, H, T, K]
        if self.length_base is not None:
            q = q * length_scale(visible, self.length_base).to(q.dtype)  # lambda_i on query i's scores
        scores = torch.einsum("bhtk,bhsk->bhts", q, k)  # [B, H, T, S]
        weights = softplus_weights(scores, visible, power=self.reweight_power)
        return torch.einsum("bhts,bhsv->bhtv", weights.to(v.dtype), v)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, length_base={self.length_base}, reweight_power={self.reweight_power}"
