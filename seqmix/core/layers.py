"""Layers shared by the mixers: head splitting, the q/k/v projections, the head-norm output
gate (linear attention, RetNet, GLA), the non-causal form of a causal scan, the short causal
convolution (DeltaNet) and the depthwise convolution (MambaOut's gated CNN, BiFormer's LCE)."""

from __future__ import annotations

from typing import Callable, Literal, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable


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


def srms_norm(dim: int) -> nn.RMSNorm:
    """TransNormerLLM's SRMSNorm (simple RMSNorm): ``x / (||x|| / sqrt(dim))`` over the last ``dim``
    channels, with no learned scale (``x / sqrt(mean(x^2) + eps)``, eps the dtype's)."""
    return nn.RMSNorm(dim, elementwise_affine=False)


class HeadNormGate(nn.Module):
    """The output path: per-head RMSNorm of ``o: [B, T, H, V]`` (``norm="srmsnorm"``: without its
    learned scale, TransNormerLLM), times ``swish(W_r x)`` when gated (RetNet, GLA), then the
    output projection to ``d_model``."""

    def __init__(self, d_model: int, n_heads: int, value_dim: int, *, gate: bool,
                 norm: Literal["rmsnorm", "srmsnorm"] = "rmsnorm"):
        super().__init__()
        if norm not in ("rmsnorm", "srmsnorm"):
            raise ValueError(f"HeadNormGate: norm={norm!r} is unknown; choose 'rmsnorm' or 'srmsnorm'")
        self.norm = nn.RMSNorm(value_dim // n_heads) if norm == "rmsnorm" else srms_norm(value_dim // n_heads)
        self.gate = nn.Linear(d_model, value_dim, bias=False) if gate else None
        self.out = nn.Linear(value_dim, d_model, bias=False)

    def forward(self, o: Tensor, x: Tensor) -> Tensor:
        b, t, h, dv = o.shape
        y = self.norm(o).reshape(b, t, h * dv)  # [B, T, H, V] -> [B, T, H*V]
        if self.gate is not None:
            y = y * F.silu(self.gate(x))
        return self.out(y)


def bidirectional(scan: Callable[[Tensor, Tensor, Tensor, Tensor | None], Tensor], q: Tensor, k: Tensor,
                  v: Tensor, g: Tensor | None) -> Tensor:
    """Non-causal form of a causal scan ``o = scan(q, k, v, g)`` (``[B, T, H, *]``, scale K^-0.5).

    A forward scan plus a scan over the reversed sequence, minus the token itself, which
    both count. The backward scan takes the gate of the *next* token, so a pair ``a < b``
    is weighted by the gates of ``a+1 .. b`` in both directions (symmetric).
    """
    forward = scan(q, k, v, g)
    g_next = None if g is None else F.pad(g[:, 1:], (0, 0, 0, 0, 0, 1))  # [B, T, H, K], 0 after the end
    flip = lambda x: None if x is None else x.flip(1)  # noqa: E731  (reverse time)
    backward = scan(flip(q), flip(k), flip(v), flip(g_next)).flip(1)
    itself = (q * k).sum(-1, keepdim=True) * v * q.shape[-1] ** -0.5  # [B, T, H, V]
    return forward + backward - itself


class _ConvSiLU(torch.autograd.Function):
    """``silu(sum_j padded[:, j : j + T] * weight[j])``: a causal depthwise conv and SiLU, fused.

    Written out (a few multiply-adds over ``[B, T, C]``) because ``F.conv1d``'s depthwise
    path on the CPU costs several times more, its backward most of all.
    """

    @staticmethod
    def forward(ctx, padded: Tensor, weight: Tensor) -> Tensor:  # [B, size - 1 + T, C], [size, C]
        size = weight.shape[0]
        t = padded.shape[1] - size + 1
        pre = padded[:, :t] * weight[0]  # [B, T, C]
        for j in range(1, size):
            pre.addcmul_(padded[:, j : j + t], weight[j])
        ctx.save_for_backward(padded, weight, pre)
        return F.silu(pre)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor]:
        padded, weight, pre = ctx.saved_tensors
        size, t = weight.shape[0], grad.shape[1]
        grad = torch.ops.aten.silu_backward(grad.contiguous(), pre)  # [B, T, C], gradient of the conv output
        d_padded = torch.zeros_like(padded)
        d_weight = torch.empty_like(weight)
        product = torch.empty_like(grad)  # one buffer for the four products (fresh ones cost page faults)
        for j in range(size):
            d_padded[:, j : j + t].addcmul_(grad, weight[j])
            torch.mul(grad, padded[:, j : j + t], out=product)
            d_weight[j] = product.view(-1, product.shape[-1]).sum(0)  # a 2-D column sum is the fast one
        return d_padded, d_weight


class ShortConvolution(nn.Module):
    """A causal depthwise convolution over time followed by SiLU, ``[B, T, C] -> [B, T, C]``.

    The cache holds the last ``size - 1`` inputs, so a sequence run in pieces (or one
    token at a time) gives the same result as one run over the whole sequence.
    """

    def __init__(self, channels: int, size: int):
        super().__init__()
        if not isinstance(size, int) or size < 2:
            raise ValueError(f"ShortConvolution: size must be an int >= 2, got {size!r}")
        self.size = size
        self.weight = nn.Parameter(torch.empty(size, channels).uniform_(-size ** -0.5, size ** -0.5))  # [size, C]

    def forward(self, x: Tensor, cache: Tensor | None = None) -> tuple[Tensor, Tensor]:
        b, _, c = x.shape
        if cache is None:
            cache = x.new_zeros(b, self.size - 1, c)
        padded = torch.cat([cache.to(x.dtype), x], 1)  # [B, size - 1 + T, C]
        return _ConvSiLU.apply(padded, self.weight.to(x.dtype)), padded[:, -(self.size - 1):]  # [B, T, C], cache


class ShortConvs(nn.ModuleList):
    """One :class:`ShortConvolution` (``size`` taps, then SiLU) per branch of a layer, e.g. its q, k, v of
    ``widths`` channels, with the branches' caches carried as one tensor ``[B, size - 1, sum widths]``: what a
    mixer's ``conv_size`` option builds, runs, starts its state with and counts in ``state_size``."""

    def __init__(self, widths: Sequence[int], size: int):
        super().__init__(ShortConvolution(width, size) for width in widths)
        self.size, self.width = size, sum(widths)

    def forward(self, branches: Sequence[Tensor], cache: Tensor | None) -> tuple[list[Tensor], Tensor]:
        """Each ``[B, T, C_i]`` branch through its convolution, the caches split from and joined into one tensor
        along the channels; a head-wise branch ``[B, T, H, K_i]`` is convolved over its ``H K_i`` channels and
        returned in its shape."""
        shapes = [y.shape for y in branches]
        flat = [y.flatten(2) for y in branches]  # each [B, T, C_i] (C_i = H K_i for a head-wise branch)
        caches = cache.split([y.shape[-1] for y in flat], -1) if cache is not None else [None] * len(flat)
        outputs, new_caches = zip(*(conv(y, c) for conv, y, c in zip(self, flat, caches)))  # caches [B, size - 1, C_i]
        return [y.view(shape) for y, shape in zip(outputs, shapes)], torch.cat(new_caches, -1)  # [B, size - 1, sum C_i]

    def empty_cache(self, batch_size: int, device: torch.device | str | None, dtype: torch.dtype) -> Tensor:
        """The cache before the first token: zeros ``[B, size - 1, sum widths]``."""
        return torch.zeros(batch_size, self.size - 1, self.width, device=device, dtype=dtype)

    @property
    def state_size(self) -> int:
        """Floats of the cache per sequence: ``(size - 1) * sum widths``."""
        return (self.size - 1) * self.width


def split_conv_state(owner: str, state: object, inner: str) -> tuple[object, Tensor | None]:
    """The ``(inner state, conv cache)`` pair that a mixer with short convolutions carries, split (``(None, None)``
    for no state); anything else is a clear error naming the pair (``inner`` names its first part)."""
    if state is None:
        return None, None
    if type(state) is not tuple or len(state) != 2:  # a NamedTuple state is the inner state alone
        raise ValueError(f"{owner}: with conv_size the state is ({inner}, conv_cache) from init_state or "
                         f"forward(..., return_state=True), got {type(state).__name__}")
    return state


def depthwise_conv(x: Tensor, weight: Tensor, bias: Tensor, *, causal: bool, impl: str,
                   cache: Tensor | None = None) -> Tensor:
    """Depthwise convolution along time (``x: [B, T, C]``, ``weight: [C, k]``) or over an image
    (``x: [B, H, W, C]``, ``weight: [C, kh, kw]``), cross-correlation as in ``F.conv*``.

    1-D causal: ``y_t = sum_j weight[:, j] x_{t - k + 1 + j}`` with ``cache: [B, k - 1, C]`` (or
    zeros) before ``x_0``; otherwise zero padding of ``k // 2`` on each side (odd kernels).
    """
    if x.dim() == 3:
        k = weight.shape[-1]
        if causal:
            past = cache if cache is not None else x.new_zeros(x.shape[0], k - 1, x.shape[2])
            padded = torch.cat((past, x), 1)  # [B, k - 1 + T, C]
        else:
            padded = F.pad(x, (0, 0, k // 2, k // 2))  # [B, T + k - 1, C]
        if impl == "naive":
            windows = padded.unfold(1, k, 1)  # [B, T, C, k]
            return (windows * weight).sum(-1) + bias
        y = F.conv1d(padded.transpose(1, 2), weight[:, None], bias, groups=x.shape[2])  # [B, C, T]
        return y.transpose(1, 2)  # [B, C, T] -> [B, T, C]
    kh, kw = weight.shape[-2:]
    if impl == "naive":
        padded = F.pad(x, (0, 0, kw // 2, kw // 2, kh // 2, kh // 2))  # [B, H + kh - 1, W + kw - 1, C]
        windows = padded.unfold(1, kh, 1).unfold(2, kw, 1)  # [B, H, W, C, kh, kw]
        return (windows * weight).sum((-2, -1)) + bias
    # the convolution pads itself: no padded copy of the image
    image = x.permute(0, 3, 1, 2)  # [B, H, W, C] -> [B, C, H, W]
    y = F.conv2d(image, weight[:, None], bias, padding=(kh // 2, kw // 2), groups=x.shape[3])  # [B, C, H, W]
    return y.permute(0, 2, 3, 1)  # [B, C, H, W] -> [B, H, W, C]
