"""LightNet's additive linear recurrence (Qin, Mao, Shen, Sun, Zhong et al. 2024, "You Only Scan Once:
Efficient Multi-dimension Sequential Modeling with LightNet"), with its MD-LRPE and MD-TPE positional
encodings.

The multiplicative recurrence of GLA / Mamba, ``S_t = lambda_t S_{t-1} + k_t v_t^T``, weighs a pair
``s < t`` by the product of the decays between them, so the weight depends on the scan order and a
2-D input needs several scans (rows, columns, both directions). LightNet's additive form draws the
decay from a cumulative sum of input-dependent terms ``exp(f_t)``, per head and key channel:

    q_t = silu(W_q x_t),  f_t = W_k x_t,  v_t = W_v x_t          [B, T, H, K], [B, T, H, K], [B, T, H, V]
    z_t = z_{t-1} + exp(f_t)                                      the cumulative normaliser (z_0 = 0)
    lambda_t = z_{t-1} / z_t,   k~_t = 1 - lambda_t = exp(f_t) / z_t    the decay and the key are tied
    S_t = diag(lambda_t) S_{t-1} + k~_t^T v_t                     so  S_t = sum_{s <= t} exp(f_s) v_s^T / z_t
    o_t = q_t S_t / sqrt(K'),   y = W_o ( RMSNorm_head(o) * swish(W_r x) )

``S_t`` is a softmax-weighted mean of the values seen so far (the weights ``exp(f_s) / z_t`` of a
pair do not depend on the tokens between them), which is why one scan serves any order. Computed
in log space: ``log z_t = logcumsumexp(f)_t``; the gate ``log lambda_t = -softplus(f_t - log z_{t-1})``
and the key ``k~_t = sigmoid(f_t - log z_{t-1})`` are both taken from the one difference
``f_t - log z_{t-1}`` (never as ``log z_{t-1} - log z_t``, whose digits cancel once z is large), and
at the first token (``z_0 = 0``) the gate is ``0`` and the key ``1`` (:func:`additive_decay`). The
chunked forms take the same ``log z`` by chunks, without a ``logcumsumexp`` over T
(:func:`additive_decay_chunked`, :func:`chunked_log_z`); ``impl="naive"`` keeps :func:`additive_decay`.
After that frontend the recurrence IS gated linear attention with a per-channel data-dependent
decay, so the three forms are GLA's (:func:`seqmix.kernels.gla.chunk_gla`): ``impl="naive"`` its
token-by-token loop, ``"chunk"`` its stable chunked form, ``"triton"`` its GPU kernel.

The state a piece carries is ``S`` and ``log z`` (and the position reached, for the encoding):
constant in size (:class:`LightNetState`).

Non-causal (``causal=False``, the ViT's pattern): every token reads the whole sequence, normalised
by the total, ``S = sum_s exp(f_s) v_s^T / sum_s exp(f_s)`` (a softmax over all tokens per key
channel), ``o_t = q_t S / sqrt(K')``: the causal state at the last token, shared by every query, so
it is order-free, "one scan" for a 2-D grid. ``impl="naive"`` is the quadratic form (each query
against each normalised key), ``"chunk"`` (and ``"triton"``, which has no kernel to add to two
matmuls) the two matmuls through ``S``.

MD-LRPE (``positional="md_lrpe"``): LRPE's rotation (:class:`seqmix.core.embeddings.LRPE`, one fixed
frequency ``theta_j`` per head and channel) with a position per axis: token ``t`` of a raster-ordered
grid ``grid_width`` wide sits at ``(row, col) = (t // W, t % W)``; even key channels turn with the
row, odd ones with the column (:class:`MDLRPE`), so ``q~_t . k~_s = sum_j q_j k_j cos(theta_j
(p_t - p_s)_axis(j))`` depends on the 2-D offset only. Keys widen to ``K' = 2K`` (``[x cos, x sin]``)
and the gate is repeated over both halves. Without ``grid_width`` the grid is one row (1-D LRPE).

MD-TPE (``positional="md_tpe"``): the paper's multi-dimensional Toeplitz positional encoding, TNN's
Toeplitz neural operator (Qin et al. 2023, "Toeplitz Neural Network for Sequence Modeling") along each
axis of the grid, summed over the axes, added to the mixer's input (:class:`MDTPE`). Along axis ``a``
(rows: the patch row ``p_0 = t // W``; columns: ``p_1 = t % W``; one axis, the index, without
``grid_width``), with ``n_a`` cells, channel ``c`` of ``x: [B, T, D]`` is mixed by a Toeplitz matrix,
an entry per relative offset ``r = i - j`` (TNN eq. 4 and its RPE, the kernel's exponential decay):

    T_a[i, j, c] = RPE_a(i - j)_c  lambda^|i - j|,   RPE_a(r) = W_2 silu(W_1 r + b_1) + b_2,  r in -(n_a-1) .. n_a-1
    x~ = x + sum_a  T_a x  (along axis a)               the projections q, f, v and the gate read x~

``RPE_a`` is a small network of the offset (one per axis, ``tpe_dim`` hidden units, one output per
channel), ``lambda = tpe_decay`` TNN's fixed decay. Each axis is computed as a convolution by FFT
(``O(T log n_a)`` per channel: TNN's Toeplitz-as-circulant embedding in ``2 n_a`` points,
:func:`toeplitz_fft`); ``impl="naive"`` builds the explicit ``[n_a, n_a]`` matrix per axis and channel
(:func:`toeplitz_naive`), the reference. A sequence that does not fill its last row is padded with
zeros to whole rows (the missing cells add nothing; their outputs are dropped). Simplifications: one
two-layer RPE per axis (TNN's has more layers and a norm), a fixed decay, the encoding inside each
lightnet mixer (a residual before the projections) rather than once at the network's input. MD-TPE
mixes both ways along every axis, so it is non-causal only (``causal=False``, the ViT's pattern; a
causal one-sided kernel would need every earlier row of a column, a state that grows): ``causal=True``
with it is refused in ``__init__``, and, like every non-causal lightnet, it has no ``step`` or state.

The paper's short convolutions are an option (``conv_size``, off by default): the q, f and v projections each
pass a causal depthwise convolution of ``conv_size`` taps and SiLU (the shared ``ShortConvolution``, as GLA's and
DeltaNet's), and q's SiLU is the convolution's (so ``q_t = silu(conv(W_q x)_t)``; f and v also get the SiLU, which
the paper's convolutions do not apply). The causal state is then ``(LightNetState, conv_cache)``.

Left out: the paper's low-rank output gate (the gate here is a full
``swish(W_r x)``), its group norm over heads (per-head RMSNorm here), and the learnable LRPE
frequencies. No cross attention: the normaliser runs over one sequence's tokens.
"""

from __future__ import annotations

from typing import Literal, NamedTuple, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seqmix.core.embeddings import LRPE
from seqmix.core.layers import HeadNormGate, ShortConvs, split_conv_state
from seqmix.core.mixer import Mixer, State, check_int, expanded_widths, register_mixer, state_dtype
from seqmix.kernels.common import compute_dtype
from seqmix.kernels.gla import GLA, chunk_gla

Positional = Literal["none", "md_lrpe", "md_tpe"]


class LightNetState(NamedTuple):
    """What a piece carries: the memory, the log-normaliser and the position reached (constant size)."""

    memory: Tensor  # [B, H, K', V]  S_t (K' = 2K with MD-LRPE)
    log_z: Tensor  # [B, H, K]  log z_t, -inf before the first token
    seen: int  # tokens read so far: the next token's raster position


def additive_decay(f: Tensor, log_z0: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """LightNet's decay from the terms ``f: [B, T, H, K]`` (fp32/fp64) after ``log_z0: [B, H, K]``.

    Returns ``key = exp(f_t) / z_t = 1 - lambda_t``, ``log_decay = log lambda_t = log(z_{t-1} / z_t)``
    and ``log_z = log z_t``, each ``[B, T, H, K]``, with ``z_t = z_0 + sum_{s <= t} exp(f_s)``;
    ``log_z0=None`` (or ``-inf``) is ``z_0 = 0``: where ``z_{t-1} = 0`` the gate is 0 and the key 1.
    """
    log_z = f.logcumsumexp(1)  # [B, T, H, K]
    if log_z0 is not None:
        log_z = torch.logaddexp(log_z, log_z0[:, None].to(f.dtype))  # [B, T, H, K]
        first = log_z0[:, None].to(f.dtype)  # [B, 1, H, K]
    else:
        first = torch.full_like(f[:, :1], float("-inf"))  # [B, 1, H, K]
    previous = torch.cat([first, log_z[:, :-1]], 1)  # [B, T, H, K]: log z_{t-1}
    empty = torch.isneginf(previous)  # nothing read yet: S_{t-1} = 0, any gate will do
    ratio = f - torch.where(empty, torch.zeros_like(previous), previous)  # log(exp(f_t) / z_{t-1})
    log_decay = torch.where(empty, torch.zeros_like(f), -F.softplus(ratio))  # log(z_{t-1} / z_t) <= 0
    key = torch.where(empty, torch.ones_like(f), torch.sigmoid(ratio))  # exp(f_t) / z_t in (0, 1]
    return key, log_decay, log_z


def chunked_log_z(f: Tensor, log_z0: Tensor | None, chunk: int) -> Tensor | None:
    """``log z_t = logaddexp(log_z0, logcumsumexp(f)_t)`` (``f: [B, T, H, K]``) by chunks of ``chunk``
    tokens, without ``logcumsumexp`` over T (the slow part of the front end: one ``logaddexp`` per
    token, and two more scans in its backward).

    Chunk n starts from ``c_n = log z`` before it (a ``logcumsumexp`` over the N chunk totals only) and
    takes a reference ``r_n = max(c_n, max_{s in n} f_s)`` (detached: the result does not depend on it)::

        log z_t = r_n + log( exp(c_n - r_n) + sum_{s <= t in n} exp(f_s - r_n) )      every exponent <= 0

    The sum ``P_t`` is at most C + 1 and as precise as a cumulative sum of C positive terms (relative
    error ~ C eps, the log's absolute error the same). It underflows only where ``f`` jumps far above
    ``log z`` inside a chunk (``P_t`` under ``sqrt(tiny)``, e.g. > 43 nats in fp32): then None is
    returned and the caller takes the exact ``logcumsumexp`` (:func:`additive_decay`).
    """
    b, t, h, k = f.shape
    n = -(-t // chunk)
    fc = F.pad(f, (0, 0, 0, 0, 0, n * chunk - t), value=float("-inf")).view(b, n, chunk, h, k)  # [B, N, C, H, K]
    totals = fc.logsumexp(2)  # [B, N, H, K]: log of each chunk's sum of exp(f)
    before = totals.logcumsumexp(1)[:, :-1]  # [B, N - 1, H, K]: log z at the end of chunks 0 .. N-2
    if log_z0 is not None:
        before = torch.logaddexp(before, log_z0[:, None].to(f.dtype))  # [B, N - 1, H, K]
        first = log_z0[:, None].to(f.dtype)  # [B, 1, H, K]
    else:
        first = torch.full_like(totals[:, :1], float("-inf"))  # [B, 1, H, K]: z_0 = 0
    carry = torch.cat([first, before], 1)[:, :, None]  # [B, N, 1, H, K]: log z before each chunk
    ref = torch.maximum(carry, fc.amax(2, keepdim=True)).detach()  # [B, N, 1, H, K], finite
    partial = torch.exp(carry - ref) + torch.exp(fc - ref).cumsum(2)  # [B, N, C, H, K]: P_t, in (0, C + 1]
    if bool((partial < torch.finfo(f.dtype).tiny ** 0.5).any()):
        return None
    return (ref + partial.log()).view(b, n * chunk, h, k)[:, :t]  # [B, N, C, H, K] -> [B, T, H, K]


def additive_decay_chunked(f: Tensor, log_z0: Tensor | None, chunk: int) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`additive_decay` with ``log z`` by chunks (:func:`chunked_log_z`), the fast front end of the
    chunked form: same arguments, results and maths (the gate and key from ``f_t - log z_{t-1}``).

    Only the first token can find ``z_{t-1} = 0`` (``log z_t >= f_t`` is finite after it), so the
    ``where`` of :func:`additive_decay` is taken on that token alone; falls back to
    :func:`additive_decay` where :func:`chunked_log_z` declines (a huge jump of ``f``).
    """
    log_z = chunked_log_z(f, log_z0, chunk)
    if log_z is None:
        return additive_decay(f, log_z0)
    ratio = f[:, 1:] - log_z[:, :-1]  # [B, T - 1, H, K]: log(exp(f_t) / z_{t-1}), z_{t-1} > 0
    if log_z0 is None:  # z_0 = 0: the first token keeps nothing, gate 0 (log 0 = any) and key 1
        key0, log_decay0 = torch.ones_like(f[:, :1]), torch.zeros_like(f[:, :1])  # [B, 1, H, K] each
    else:
        key0, log_decay0, _ = additive_decay(f[:, :1], log_z0)  # [B, 1, H, K] each
    key = torch.cat([key0, torch.sigmoid(ratio)], 1)  # [B, T, H, K]
    log_decay = torch.cat([log_decay0, -F.softplus(ratio)], 1)  # [B, T, H, K]
    return key, log_decay, log_z


class MDLRPE(nn.Module):
    """MD-LRPE: LRPE's rotation with one position per axis of a grid (LightNet's multi-dimensional LRPE).

    Channel ``j`` of ``x: [B, T, H, K]`` turns by ``theta_{h,j} p_{axis(j)}`` with ``axis(j) = j mod A``
    (``A`` axes; the frequencies are :class:`~seqmix.core.embeddings.LRPE`'s), giving ``[x cos, x sin]``,
    ``[B, T, H, 2K]``: encoded q and k meet as ``sum_j q_j k_j cos(theta_j (p_t - p_s)_{axis(j)})``,
    a function of the offset only. With one axis it is LRPE itself.
    """

    def __init__(self, n_heads: int, head_dim: int, n_axes: int):
        super().__init__()
        self.n_axes = check_int("MDLRPE", "n_axes", n_axes, meaning="axes of the grid, e.g. 2 for images")
        self.lrpe = LRPE(n_heads, head_dim)  # its theta: [H, K] float64
        self.register_buffer("axis", torch.arange(head_dim) % n_axes, persistent=False)  # [K]

    def forward(self, x: Tensor, positions: Tensor) -> Tensor:
        """``x: [B, T, H, K]`` at ``positions: [T, A]`` (float64) -> ``[B, T, H, 2K]``."""
        if positions.dim() != 2 or positions.shape != (x.shape[1], self.n_axes):
            raise ValueError(f"MDLRPE: positions must be [T={x.shape[1]}, axes={self.n_axes}], "
                             f"got {tuple(positions.shape)}")
        angles = positions[:, None, self.axis] * self.lrpe.theta  # [T, 1, K] * [H, K] -> [T, H, K]
        return torch.cat((x * angles.cos().to(x.dtype), x * angles.sin().to(x.dtype)), -1)  # [B, T, H, 2K]


def grid_positions(start: int, t: int, grid_width: int | None, device: torch.device | None = None) -> Tensor:
    """Raster positions ``start .. start + t - 1`` as ``[T, 2]`` (row, column) of a grid ``grid_width``
    wide, or ``[T, 1]`` (the index) without a grid; float64, exact at long offsets."""
    p = torch.arange(start, start + t, dtype=torch.float64, device=device)  # [T]
    if grid_width is None:
        return p[:, None]  # [T, 1]
    return torch.stack((torch.div(p, grid_width, rounding_mode="floor"), torch.remainder(p, grid_width)), -1)  # [T, 2]


def toeplitz_naive(x: Tensor, kernel: Tensor, dim: int) -> Tensor:
    """The reference: ``y_i = sum_j kernel[i - j + n - 1] x_j`` along ``dim`` of ``x: [..., n, ..., D]`` by the
    explicit Toeplitz matrix ``[n, n, D]`` (one per channel); ``kernel: [2n - 1, D]``, offsets ``-(n-1) .. n-1``."""
    n = x.shape[dim]
    offsets = torch.arange(n, device=x.device)[:, None] - torch.arange(n, device=x.device)[None, :]  # [n, n]: i - j
    matrix = kernel[offsets + n - 1]  # [n, n, D]
    moved = x.movedim(dim, -2)  # [..., n, D]
    return torch.einsum("ijd,...jd->...id", matrix, moved).movedim(-2, dim)  # [..., n, D] -> x's layout


def toeplitz_fft(x: Tensor, kernel: Tensor, dim: int) -> Tensor:
    """:func:`toeplitz_naive` in ``O(n log n)``: the Toeplitz matrix embedded in a circulant of ``L = 2n``
    points, first column ``c = [k_0, k_1, .., k_{n-1}, 0, k_{-(n-1)}, .., k_{-1}]`` (``c[(i - j) mod L] =
    k_{i-j}`` for ``|i - j| < n``), so ``y = irfft(rfft(c) rfft(x padded to L))[:n]``."""
    n = x.shape[dim]
    size = 2 * n
    column = kernel.new_zeros(size, kernel.shape[-1])  # [L, D]
    column[:n] = kernel[n - 1:]  # offsets 0 .. n-1
    column[size - n + 1:] = kernel[:n - 1]  # offsets -(n-1) .. -1 at L - (n-1) .. L - 1
    moved = x.movedim(dim, -2)  # [..., n, D]
    spectrum = torch.fft.rfft(moved, n=size, dim=-2) * torch.fft.rfft(column, dim=0)  # [..., L/2 + 1, D]
    return torch.fft.irfft(spectrum, n=size, dim=-2)[..., :n, :].movedim(-2, dim)  # [..., n, D] -> x's layout


class MDTPE(nn.Module):
    """MD-TPE: a Toeplitz mixing of each channel along each axis of the grid, by a kernel of the relative
    offset (TNN's RPE network times ``decay^|r|``), summed over the axes (module docstring).

    Args:
        d_model: D, the channels (each has its own kernel).
        n_axes: 2 for a raster-ordered grid of ``grid_width`` columns, 1 for a sequence.
        hidden: the RPE network's hidden units.
        decay: lambda in (0, 1], the kernel's exponential decay per cell of offset.
    """

    def __init__(self, d_model: int, n_axes: int, *, hidden: int = 32, decay: float = 0.99):
        super().__init__()
        name = type(self).__name__
        check_int(name, "n_axes", n_axes, meaning="axes of the grid, e.g. 2 for images")
        check_int(name, "hidden", hidden, meaning="hidden units of the relative-position network, e.g. 32")
        if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0 < decay <= 1:
            raise ValueError(f"{name}: decay must be a number in (0, 1] (the kernel's decay per cell of offset), "
                             f"got {decay!r}")
        self.decay = float(decay)
        self.rpe = nn.ModuleList(nn.Sequential(nn.Linear(1, hidden), nn.SiLU(), nn.Linear(hidden, d_model))
                                 for _ in range(n_axes))
        for net in self.rpe:  # a small kernel at first: x~ starts near x (the offsets r enter unscaled)
            nn.init.trunc_normal_(net[-1].weight, std=0.02)
            nn.init.zeros_(net[-1].bias)

    def kernel(self, axis: int, n: int, dtype: torch.dtype, device: torch.device | None = None) -> Tensor:
        """``[2n - 1, D]``: ``RPE_axis(r) decay^|r|`` at the offsets ``r = -(n-1) .. n-1``."""
        r = torch.arange(1 - n, n, device=device, dtype=dtype)  # [2n - 1]
        net = self.rpe[axis]
        weights = net(r[:, None].to(net[0].weight.dtype)).to(dtype)  # [2n - 1, 1] -> [2n - 1, D]
        return weights * (self.decay ** r.abs())[:, None]  # [2n - 1, D]

    def forward(self, x: Tensor, grid_width: int | None, impl: str = "fft") -> Tensor:
        """``x: [B, T, D]`` (raster order, ``grid_width`` columns, or one axis) -> ``sum_a T_a x``, ``[B, T, D]``;
        ``impl``: ``"fft"`` or ``"naive"`` (explicit matrices)."""
        b, t, d = x.shape
        dtype = compute_dtype(x)
        mix = toeplitz_naive if impl == "naive" else toeplitz_fft
        if len(self.rpe) == 1:
            return mix(x.to(dtype), self.kernel(0, t, dtype, x.device), 1).to(x.dtype)  # [B, T, D]
        width = grid_width if grid_width is not None else t
        rows = -(-t // width)
        grid = F.pad(x.to(dtype), (0, 0, 0, rows * width - t)).view(b, rows, width, d)  # [B, T', D] -> [B, R, W, D]
        out = mix(grid, self.kernel(0, rows, dtype, x.device), 1)  # along the rows (down each column)
        out = out + mix(grid, self.kernel(1, width, dtype, x.device), 2)  # along the columns (within each row)
        return out.reshape(b, rows * width, d)[:, :t].to(x.dtype)  # [B, R, W, D] -> [B, T, D]

    def extra_repr(self) -> str:
        return f"axes={len(self.rpe)}, decay={self.decay}"


@register_mixer("lightnet")
class LightNet(Mixer):
    """LightNet's additive-recurrence token mixer (module docstring), optionally with MD-LRPE or MD-TPE.

    Args:
        expand_k / expand_v: key / value widths over heads as multiples of ``d_model``.
        positional: ``"none"``, ``"md_lrpe"`` (rotations by row and column of the grid) or ``"md_tpe"``
            (Toeplitz mixing along the rows and the columns of the grid; ``causal=False`` only).
        grid_width: with ``"md_lrpe"`` / ``"md_tpe"``, the width of the raster-ordered grid the tokens come
            from (the ViT's patches per row, e.g. 7 for 28x28 images in 4x4 patches); None: a 1-D sequence.
        tpe_dim / tpe_decay: MD-TPE's RPE hidden units and its kernel's decay per cell of offset, in (0, 1].
        chunk_size: tokens per chunk of GLA's chunked kernel (a power of two; Triton: 16 to 128).
        conv_size: taps of the short convolutions on q, f and v (module docstring), or None for none.
    """

    patterns = frozenset({"causal_self", "noncausal_self"})
    impls = GLA.impls
    recurrent = True
    paper = "Qin et al. 2024, You Only Scan Once: Efficient Multi-dimension Sequential Modeling with LightNet"
    complexity = "O(T C D + T D K)"
    test_configs = (
        {"n_heads": 2, "chunk_size": 16},
        {"n_heads": 2, "chunk_size": 16, "expand_k": 1.0, "positional": "md_lrpe", "grid_width": 7},
        {"n_heads": 2, "chunk_size": 16, "conv_size": 4},
    )

    def __init__(self, d_model: int, *, n_heads: int = 4, causal: bool = True, impl: str = "auto",
                 expand_k: float = 0.5, expand_v: float = 1.0, positional: Positional = "none",
                 grid_width: int | None = None, tpe_dim: int = 32, tpe_decay: float = 0.99, chunk_size: int = 64,
                 conv_size: int | None = None):
        super().__init__(d_model, n_heads=n_heads, causal=causal, impl=impl)
        name = type(self).__name__
        self.key_dim, self.value_dim = expanded_widths(name, d_model, n_heads, expand_k, expand_v)
        if positional not in get_args(Positional):
            raise ValueError(f"{name}: positional={positional!r} is unknown; "
                             f"choose one of {list(get_args(Positional))}")
        if grid_width is not None:
            check_int(name, "grid_width", grid_width, meaning="tokens per row of the grid, e.g. 7 for a 7x7 ViT")
            if positional == "none":
                raise ValueError(f"{name}: grid_width={grid_width} places the tokens for a 2-D positional encoding, "
                                 "but positional='none'; set positional='md_lrpe' or 'md_tpe', or drop grid_width")
        if positional == "md_tpe" and causal:
            raise ValueError(f"{name}: positional='md_tpe' mixes every axis of the grid both ways (non-causal), so "
                             "it needs causal=False; for a causal 2-D encoding that steps, use positional='md_lrpe'")
        if conv_size is not None:
            check_int(name, "conv_size", conv_size, minimum=2, meaning="taps of the short convolutions; None for none")
        head_k = self.key_dim // n_heads
        self.rotated_k = 2 * head_k if positional == "md_lrpe" else head_k  # MD-LRPE: [x cos, x sin]
        self.triton_refusal = GLA.check(name, impl, chunk_size=chunk_size,
                                        head_dims={"key dim": self.rotated_k, "value_dim / n_heads":
                                                   self.value_dim // n_heads})
        self.positional, self.grid_width, self.chunk_size = positional, grid_width, chunk_size
        self.mdlrpe = (MDLRPE(n_heads, head_k, 1 if grid_width is None else 2)
                       if positional == "md_lrpe" else None)
        self.mdtpe = (MDTPE(d_model, 1 if grid_width is None else 2, hidden=tpe_dim, decay=tpe_decay)
                      if positional == "md_tpe" else None)
        self.q_proj = nn.Linear(d_model, self.key_dim, bias=False)
        self.f_proj = nn.Linear(d_model, self.key_dim, bias=False)  # the additive terms f_t (LightNet's k)
        self.v_proj = nn.Linear(d_model, self.value_dim, bias=False)
        self.conv_size = conv_size
        self.convs = (ShortConvs((self.key_dim, self.key_dim, self.value_dim), conv_size)
                      if conv_size is not None else None)
        self.output = HeadNormGate(d_model, n_heads, self.value_dim, gate=True)

    # ------------------------------------------------------------------ the recurrence
    def encode(self, q: Tensor, key: Tensor, seen: int) -> tuple[Tensor, Tensor]:
        """MD-LRPE of ``q`` and ``key`` (``[B, T, H, K]``) from raster position ``seen``, or both unchanged."""
        if self.mdlrpe is None:
            return q, key
        positions = grid_positions(seen, q.shape[1], self.grid_width, q.device)  # [T, A]
        return self.mdlrpe(q, positions), self.mdlrpe(key, positions)  # [B, T, H, 2K] each

    def attend(self, q: Tensor, f: Tensor, v: Tensor, *, state: LightNetState | None = None,
               return_state: bool = False, impl: str = "chunk") -> tuple[Tensor, LightNetState | None]:
        """``q, f: [B, T, H, K]``, ``v: [B, T, H, V]`` -> ``o: [B, T, H, V]`` (and the final state):
        the causal recurrence from ``state``, or with ``causal=False`` the normalised global sum."""
        dtype = compute_dtype(q)
        f = f.to(dtype)
        if not self.causal:
            key = torch.softmax(f, 1).to(q.dtype)  # [B, T, H, K]: exp(f_s) / sum_s exp(f_s) per channel
            q, key = self.encode(q, key, 0)  # [B, T, H, K'] each
            scale = q.shape[-1] ** -0.5
            if impl == "naive":  # the quadratic form: each query against each normalised key
                scores = torch.einsum("bthk,bshk->bhts", q.to(dtype), key.to(dtype))  # [B, H, T, S]
                o = torch.einsum("bhts,bshv->bthv", scores, v.to(dtype)) * scale  # [B, T, H, V]
            else:  # through the one state S = sum_s key_s^T v_s
                memory = torch.einsum("bshk,bshv->bhkv", key.to(dtype), v.to(dtype))  # [B, H, K', V]
                o = torch.einsum("bthk,bhkv->bthv", q.to(dtype), memory) * scale  # [B, T, H, V]
            return o.to(q.dtype), None
        memory, log_z0, seen = (None, None, 0) if state is None else state
        if impl == "naive":  # the reference: logcumsumexp over the whole sequence
            key, log_decay, log_z = additive_decay(f, log_z0)  # [B, T, H, K] each
        else:  # the same by chunks (chunk / triton)
            key, log_decay, log_z = additive_decay_chunked(f, log_z0, self.chunk_size)  # [B, T, H, K] each
        q, key = self.encode(q, key.to(q.dtype), seen)  # [B, T, H, K'] each
        if self.mdlrpe is not None:
            log_decay = torch.cat((log_decay, log_decay), -1)  # [B, T, H, 2K]: both halves of a channel decay alike
        o, final = chunk_gla(q, key, v, log_decay, initial_state=memory, output_final_state=return_state,
                             chunk_size=self.chunk_size, impl=impl)
        if not return_state:
            return o, None
        return o, LightNetState(final, log_z[:, -1].to(state_dtype(q.dtype)), seen + q.shape[1])

    def _forward(self, x, *, context, mask, state, return_state):
        b, t, _ = x.shape
        h = self.n_heads
        conv_cache = None
        if self.convs is not None:
            state, conv_cache = split_conv_state(type(self).__name__, state, "LightNetState")
        if state is not None and not isinstance(state, LightNetState):
            raise ValueError(f"{type(self).__name__}: the state is a LightNetState (memory, log_z, seen) from "
                             f"init_state or forward(..., return_state=True), got {type(state).__name__}")
        impl = self.resolve_impl(x)
        if self.mdtpe is not None:  # MD-TPE: x + the Toeplitz mixing along each axis of the grid
            x = x + self.mdtpe(x, self.grid_width, "naive" if impl == "naive" else "fft")  # [B, T, D]
        q, f, v = self.q_proj(x), self.f_proj(x), self.v_proj(x)  # [B, T, H*K], [B, T, H*K], [B, T, H*V]
        if self.convs is None:
            q = F.silu(q)
        else:  # q's SiLU is the convolution's
            (q, f, v), conv_cache = self.convs((q, f, v), conv_cache)  # cache [B, size - 1, 2 H*K + H*V]
        q, f, v = q.view(b, t, h, -1), f.float().view(b, t, h, -1), v.view(b, t, h, -1)  # [B, T, H, K] (V for v)
        o, final = self.attend(q, f, v, state=state, return_state=return_state, impl=impl)
        if self.convs is not None and final is not None:
            final = (final, conv_cache)
        y = self.output(o.to(x.dtype), x)
        return (y, final) if return_state else y

    def init_state(self, batch_size: int, device: torch.device | str | None = None,
                   dtype: torch.dtype = torch.float32) -> State:
        h, memory_dtype = self.n_heads, state_dtype(dtype)
        memory = torch.zeros(batch_size, h, self.rotated_k, self.value_dim // h, device=device, dtype=memory_dtype)
        log_z = torch.full((batch_size, h, self.key_dim // h), float("-inf"), device=device, dtype=memory_dtype)
        lightnet = LightNetState(memory, log_z, 0)  # [B, H, K', V], [B, H, K]: z_0 = 0
        if self.convs is None:
            return lightnet
        return lightnet, self.convs.empty_cache(batch_size, device, dtype)  # [B, size - 1, 2 H*K + H*V]

    def state_size(self, seq_len: int) -> int:
        conv = 0 if self.convs is None else self.convs.state_size
        return self.n_heads * self.rotated_k * (self.value_dim // self.n_heads) + self.key_dim + conv  # S, log z
        # (+ the conv cache)

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, key_dim={self.key_dim}, value_dim={self.value_dim}, "
                f"positional={self.positional!r}, grid_width={self.grid_width}, conv_size={self.conv_size}")
