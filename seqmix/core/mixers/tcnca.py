"""TCNCA (Terzić, Hersche, Karunaratne, Benini, Sebastian, Rahimi 2023, "TCNCA: Temporal Convolution
Network with Chunked Attention for Scalable Sequence Processing"): MEGA's gated chunked attention with
its linear recurrence (the multi-dimensional damped EMA) replaced by a dilated temporal convolution
network (TCN), which makes the layer O(T) and its receptive field grow exponentially with depth.

The TCN, ``L = n_levels`` levels of causal depthwise convolutions of ``k = kernel_size`` taps with
dilations ``d_l = b^l`` (``b = dilation_base``, default ``k``), each with a residual connection:

    h_0 = x,    h_{l+1} = h_l + silu(sum_{j<k} w_{l,j} * h_l[t - (k-1-j) d_l] + c_l),    x' = h_L

so ``x'_t`` depends on exactly the ``x_{t-o}`` with ``o`` in ``{sum_l j_l d_l : 0 <= j_l < k}``
(with ``b = k``: every ``o < k^L``, no gap). ``x'`` takes the place of MEGA's ``EMA(x)`` in its gated
attention (MEGA eqs. 8-16, the TCN output forming the queries and keys and the gates):

    z = silu(x' W_z + b_z),   q = kappa_q * z + mu_q,   k = kappa_k * z + mu_k       (shared q/k basis)
    v = silu(x W_v + b_v)
    o = softmax(q k^T / sqrt(K), causal inside each chunk of C tokens, none across) v   (chunked attention)
    gamma = silu(x' W_g + b_g)
    y = silu(x' W_h + (gamma * o) U_h + b_h)

Left out: MEGA's reset gate and residual ``phi * y + (1 - phi) * x`` (the block around the mixer adds
the residual), its relative position bias (the TCN already sees positions) and its EMA expansion
dimension; heads split ``q, k, v`` as in multi-head attention (MEGA has one head).

Forms (``impl``): ``"naive"``, the TCN by explicit loops over the taps and the attention as a masked
T x T block-diagonal softmax in fp32; ``"chunk"``, ``F.conv1d`` with dilation and the attention on the
sequence cut into chunks ``[B, H, T/C, C, K]`` (one causal C x C softmax per chunk). Causal only: the
chunks and the convolutions look back (``causal_self``). The state carries each level's last
``(k-1) d_l`` inputs and the current, unfinished chunk's keys and values: a constant size.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seqmix.core.layers import merge_heads, split_heads
from seqmix.core.mixer import Mixer, State, register_mixer


class TCNCAState(NamedTuple):
    """The state between pieces: every tensor batch-first, the size bounded whatever the length."""

    inputs: tuple[Tensor, ...]  # per level l: its last (k-1) d_l inputs [B, (k-1) d_l, D]
    keys: Tensor  # [B, H, r, K]: the current chunk's r = seen % C keys
    values: Tensor  # [B, H, r, K]: and values


def dilated_causal_conv(padded: Tensor, weight: Tensor, bias: Tensor, dilation: int, impl: str) -> Tensor:
    """``y_t = sum_j weight[:, j] x_{t - (k-1-j) dilation} + bias``, depthwise, ``weight: [D, k]``, over
    ``padded: [B, (k-1) dilation + T, D]`` (the ``(k-1) dilation`` inputs before ``x_0``, then ``x``),
    giving ``[B, T, D]``."""
    k = weight.shape[1]
    t = padded.shape[1] - (k - 1) * dilation
    if impl == "naive":
        y = bias.expand(padded.shape[0], t, -1)  # [B, T, D]
        for j in range(k):  # one shifted copy of the input per tap
            y = y + weight[:, j] * padded[:, j * dilation : j * dilation + t]
        return y
    y = F.conv1d(padded.transpose(1, 2), weight[:, None], bias, dilation=dilation, groups=padded.shape[2])  # [B, D, T]
    return y.transpose(1, 2)  # [B, D, T] -> [B, T, D]


def chunked_attention(q: Tensor, k: Tensor, v: Tensor, chunk_size: int, impl: str) -> Tensor:
    """Softmax attention ``[B, H, S, K] x3 -> [B, H, S, K]`` in which query i sees key j iff both lie in the
    same chunk of ``chunk_size`` tokens (counted from position 0) and ``j <= i``; scale ``K^-0.5``."""
    b, h, s, d = q.shape
    if impl == "naive":  # the T x T block-diagonal lower triangle
        i = torch.arange(s, device=q.device)
        visible = (i[:, None] // chunk_size == i[None, :] // chunk_size) & (i[None, :] <= i[:, None])  # [S, S]
        scores = torch.einsum("bhik,bhjk->bhij", q.float(), k.float()) / math.sqrt(d)  # [B, H, S, S]
        weights = torch.softmax(scores.masked_fill(~visible, float("-inf")), dim=-1)
        return torch.einsum("bhij,bhjk->bhik", weights, v.float()).to(q.dtype)
    n = -(-s // chunk_size)
    pad = (0, 0, 0, n * chunk_size - s)  # zeros after the end: only padded queries see them
    chunks = [F.pad(x, pad).reshape(b, h * n, chunk_size, d) for x in (q, k, v)]  # [B, H, N*C, K] -> [B, H*N, C, K]
    o = F.scaled_dot_product_attention(*chunks, is_causal=True)  # [B, H*N, C, K]
    return o.view(b, h, n * chunk_size, d)[:, :, :s]  # [B, H*N, C, K] -> [B, H, S, K]


@register_mixer("tcnca")
class TCNCA(Mixer):
    """MEGA's gated chunked attention over a dilated TCN (see the module docstring for the equations).

    Args:
        chunk_size: tokens per attention chunk ``C`` (>= 1); a token attends to the earlier tokens of its chunk.
        kernel_size: taps ``k`` of every TCN convolution (>= 2).
        n_levels: TCN depth ``L`` (>= 1).
        dilation_base: level ``l`` dilates by ``dilation_base ** l`` (>= 1); None: ``kernel_size``, which
            covers a gapless receptive field of ``kernel_size ** n_levels`` tokens.
    """

    patterns = frozenset({"causal_self"})
    impls = ("naive", "chunk")
    recurrent = True
    paper = "Terzić et al. 2023, TCNCA: Temporal Convolution Network with Chunked Attention"
    complexity = "O(T C D + T L k D)"
    test_configs = ({"n_heads": 2, "chunk_size": 8, "kernel_size": 3, "n_levels": 2, "dilation_base": 4},)

    def __init__(self, d_model: int, *, n_heads: int = 2, causal: bool = True, impl: str = "auto",
                 chunk_size: int = 64, kernel_size: int = 3, n_levels: int = 4, dilation_base: int | None = None):
        super().__init__(d_model, n_heads=n_heads, causal=causal, impl=impl)
        name = type(self).__name__
        dilation_base = kernel_size if dilation_base is None else dilation_base
        for arg, value, low in (("chunk_size", chunk_size, 1), ("kernel_size", kernel_size, 2),
                                ("n_levels", n_levels, 1), ("dilation_base", dilation_base, 1)):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"{name}: {arg} must be an int >= {low}, got {value!r}")
        self.chunk_size, self.kernel_size = chunk_size, kernel_size
        self.dilations = tuple(dilation_base ** level for level in range(n_levels))
        bound = kernel_size ** -0.5
        self.conv_weight = nn.Parameter(torch.empty(n_levels, d_model, kernel_size).uniform_(-bound, bound))
        self.conv_bias = nn.Parameter(torch.zeros(n_levels, d_model))
        self.from_tcn = nn.Linear(d_model, 3 * d_model)  # W_z, W_g, W_h over x'
        self.qk_scale = nn.Parameter(torch.ones(2, d_model) + 0.1 * torch.randn(2, d_model))  # kappa_q, kappa_k
        self.qk_shift = nn.Parameter(torch.zeros(2, d_model))  # mu_q, mu_k
        self.value = nn.Linear(d_model, d_model)
        self.out = nn.Linear(d_model, d_model, bias=False)  # U_h

    def receptive_field(self) -> list[int]:
        """The offsets ``o`` with ``x'_t`` depending on ``x_{t-o}``: every ``sum_l j_l d_l``, ``0 <= j_l < k``."""
        offsets = {0}
        for d in self.dilations:
            offsets = {o + j * d for o in offsets for j in range(self.kernel_size)}
        return sorted(offsets)

    def tcn(self, x: Tensor, inputs: tuple[Tensor, ...], impl: str) -> tuple[Tensor, tuple[Tensor, ...]]:
        """``x' = h_L`` of ``x: [B, T, D]`` given each level's past ``inputs``, and each level's new past."""
        h, new = x, []
        for level, (d, past) in enumerate(zip(self.dilations, inputs)):
            padded = torch.cat([past, h], 1)  # [B, (k-1) d + T, D]
            new.append(padded[:, -past.shape[1]:])  # [B, (k-1) d, D]
            h = h + F.silu(dilated_causal_conv(padded, self.conv_weight[level], self.conv_bias[level], d, impl))
        return h, tuple(new)

    def _forward(self, x, *, context, mask, state, return_state):
        b, t, dm = x.shape
        impl = self.resolve_impl(x)
        state = self.init_state(b, x.device, x.dtype) if state is None else state
        x_tcn, inputs = self.tcn(x, tuple(p.to(x.dtype) for p in state.inputs), impl)
        z, gamma, h = self.from_tcn(x_tcn).split(dm, -1)  # [B, T, 3D] -> 3 x [B, T, D]
        qk = F.silu(z)[:, :, None] * self.qk_scale + self.qk_shift  # [B, T, 2, D]
        q, k = split_heads(qk[:, :, 0], self.n_heads), split_heads(qk[:, :, 1], self.n_heads)  # [B, H, T, K]
        v = split_heads(F.silu(self.value(x)), self.n_heads)  # [B, H, T, K]
        r = state.keys.shape[2]  # the unfinished chunk's tokens: they start the first chunk here
        keys = torch.cat([state.keys.to(k.dtype), k], 2)  # [B, H, r + T, K]
        values = torch.cat([state.values.to(v.dtype), v], 2)  # [B, H, r + T, K]
        queries = F.pad(q, (0, 0, r, 0))  # [B, H, r + T, K]: the cached tokens' queries are not asked again
        o = merge_heads(chunked_attention(queries, keys, values, self.chunk_size, impl)[:, :, r:])  # [B, T, D]
        y = F.silu(h + self.out(F.silu(gamma) * o))
        if not return_state:
            return y
        keep = (r + t) % self.chunk_size
        return y, TCNCAState(inputs, keys[:, :, r + t - keep:], values[:, :, r + t - keep:])

    def init_state(self, batch_size: int, device: torch.device | str | None = None,
                   dtype: torch.dtype = torch.float32) -> State:
        past = tuple(torch.zeros(batch_size, (self.kernel_size - 1) * d, self.d_model, device=device, dtype=dtype)
                     for d in self.dilations)
        empty = torch.zeros(batch_size, self.n_heads, 0, self.head_dim, device=device, dtype=dtype)  # [B, H, 0, K]
        return TCNCAState(past, empty, empty)

    def state_size(self, seq_len: int) -> int:
        """At most: each level's ``(k-1) d_l`` inputs and ``C - 1`` keys and values (a full chunk is dropped)."""
        return (self.kernel_size - 1) * sum(self.dilations) * self.d_model + 2 * (self.chunk_size - 1) * self.d_model

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, chunk_size={self.chunk_size}, kernel_size={self.kernel_size}, "
                f"dilations={self.dilations}")
