"""The Legendre memory in parallel, chunk by chunk: the impulse-response convolution as matmuls.

The memory is linear and time-invariant, so (Chilkuri & Eliasmith 2021, LMU-FFT) it is the causal
convolution of the input with the impulse response ``H_k = Ab^k Bb`` plus the free response of the
initial state:

    m_t = sum_{j <= t} H_{t-j} u_j  +  Ab^(t+1) m_0

Here the convolution is blocked into chunks of C = :data:`CHUNK_SIZE` tokens (the chunked form of the
linear-recurrence ops). With ``s_c`` the memory after chunk c and ``s_{-1} = m_0``, token i of chunk c is

    m_{cC+i} = sum_{j <= i} H_{i-j} u_{cC+j}  +  Ab^(i+1) s_{c-1}          (within the chunk | carried in)
    s_c      = Ab^C s_{c-1} + e_c,   e_c = sum_j H_{C-1-j} u_{cC+j}        (one step per chunk)

The chunk states come from a doubling scan over the chunks (log2(T / C) matmuls with ``(Ab^C)^(2^k)``),
then one matmul per chunk gives all its tokens: ``[u_chunk ; s_{c-1}] @ K``, ``K: [C + N, C N]`` the
Toeplitz block of ``H`` stacked on the powers ``Ab^1 .. Ab^C``. Time and memory are linear in T,
``O(T (C + N) N)`` per channel, all of it in matmuls (no FFT, no ``[T, N]`` response).

The tables (``K``, ``H_{C-1-j}``, the scan's powers) are built in float64 from the float64 ``Ab, Bb``
and cast to the compute dtype once; for fixed systems (no gradient wanted for ``Ab, Bb``, as in the
mixer, whose system is a buffer) they are cached per (system, dtype, device, scan depth).
"""

from __future__ import annotations

import weakref
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from seqmix.kernels.common import compute_dtype

CHUNK_SIZE = 32  # tokens per chunk: the work per token is (C + N) N, the scan's depth log2(T / C)
_CACHE_SIZE = 32  # tables kept (systems x dtypes x devices x scan depths); the oldest goes first


def powers(a: Tensor, v: Tensor, n: int) -> Tensor:
    """``[a^0 v, a^1 v, ..., a^(n-1) v]``: ``a: [N, N]``, ``v: [..., N]`` -> ``[..., n, N]``, by doubling
    (the first L terms times ``a^L`` are the next L: log2(n) matmuls)."""
    out = v[..., None, :]  # [..., 1, N]
    power = a  # a^L, L = the terms so far
    while out.shape[-2] < n:
        out = torch.cat([out, out @ power.T], -2)  # [..., 2L, N]
        power = power @ power
    return out[..., :n, :]


class ChunkTables(NamedTuple):
    """What the chunked form multiplies by, in the compute dtype (``C`` tokens per chunk, order N)."""

    kernel: Tensor  # [C + N, C N]: rows j < C: H_{i-j} (0 for j > i) at column (i, n); rows C + j: (Ab^(i+1))_{n j}
    last: Tensor  # [C, N]: H_{C-1-j}, the chunk's input into its end state
    chunk_power: Tensor  # [N, N]: (Ab^C)^T, the initial state's step over the first chunk
    scan: tuple[Tensor, ...]  # ((Ab^C)^(2^k))^T, k = 0 .. depth - 1: the doubling scan's steps


def chunk_tables(a_bar: Tensor, b_bar: Tensor, chunk: int, depth: int, dtype: torch.dtype) -> ChunkTables:
    """The tables above from ``a_bar: [N, N]``, ``b_bar: [N]``, built in float64 (differentiable)."""
    a, b = a_bar.double(), b_bar.double()
    n = a.shape[0]
    response = powers(a, b, chunk)  # [C, N]: H_k = Ab^k Bb
    lag = torch.arange(chunk, device=a.device)[:, None] - torch.arange(chunk, device=a.device)  # [C(i), C(j)]: i - j
    toeplitz = torch.where((lag >= 0)[..., None], response[lag.clamp(min=0)], 0.0)  # [C(i), C(j), N]
    rows = toeplitz.transpose(0, 1).reshape(chunk, chunk * n)  # [C(j), C(i), N] -> [C(j), C*N]
    carried = powers(a, a.T, chunk).reshape(n, chunk * n)  # [N(j), C(i), N] -> [N(j), C*N]: (Ab^(i+1))[:, j]
    step = torch.linalg.matrix_power(a, chunk)  # [N, N]: Ab^C
    scan = []
    for _ in range(depth):
        scan.append(step.T.to(dtype))
        step = step @ step
    return ChunkTables(torch.cat([rows, carried]).to(dtype), toeplitz[-1].to(dtype),
                       torch.linalg.matrix_power(a, chunk).T.to(dtype), tuple(scan))


_TABLES: dict[tuple, tuple[weakref.ref, weakref.ref, ChunkTables]] = {}


def cached_tables(a_bar: Tensor, b_bar: Tensor, chunk: int, depth: int, dtype: torch.dtype) -> ChunkTables:
    """:func:`chunk_tables`, cached while the same ``a_bar``, ``b_bar`` tensors live unchanged (their
    version counters are in the key); built afresh, with their graph, when either needs a gradient.
    Tables built under ``torch.inference_mode`` are kept apart (autograd cannot save them)."""
    if torch.is_grad_enabled() and (a_bar.requires_grad or b_bar.requires_grad):
        return chunk_tables(a_bar, b_bar, chunk, depth, dtype)
    key = (id(a_bar), id(b_bar), a_bar._version, b_bar._version, chunk, depth, dtype, a_bar.device,
           torch.is_inference_mode_enabled())
    hit = _TABLES.get(key)
    if hit is not None and hit[0]() is a_bar and hit[1]() is b_bar:
        return hit[2]
    tables = chunk_tables(a_bar.detach(), b_bar.detach(), chunk, depth, dtype)
    _TABLES.pop(key, None)
    while len(_TABLES) >= _CACHE_SIZE:
        _TABLES.pop(next(iter(_TABLES)))
    _TABLES[key] = weakref.ref(a_bar), weakref.ref(b_bar), tables
    return tables


def lmu_chunk(u: Tensor, a_bar: Tensor, b_bar: Tensor, s0: Tensor | None) -> tuple[Tensor, Tensor]:
    """The chunked form above; the arguments and results of :func:`~seqmix.kernels.lmu.naive.lmu_naive`
    (``s0=None``: zeros)."""
    dtype = compute_dtype(u)
    b, t, h = u.shape
    n, c = a_bar.shape[0], CHUNK_SIZE
    n_chunks = -(-t // c)
    tables = cached_tables(a_bar, b_bar, c, (n_chunks - 1).bit_length(), dtype)
    u = F.pad(u.to(dtype), (0, 0, 0, n_chunks * c - t))  # [B, T', H], T' = n_chunks C (zeros after T: causal)
    u = u.view(b, n_chunks, c, h).transpose(2, 3)  # [B, T', H] -> [B, nc, C, H] -> [B, nc, H, C]
    states = u @ tables.last  # [B, nc, H, N]: e_c
    if s0 is not None:
        s0 = s0.to(dtype)
        states = torch.cat([states[:, :1] + (s0 @ tables.chunk_power)[:, None], states[:, 1:]], 1)  # [B, nc, H, N]
    span = 1
    for step in tables.scan:  # after it, states[c] = s_c (Hillis-Steele: each adds the one span chunks back)
        states = torch.cat([states[:, :span], states[:, span:] + states[:, :-span] @ step], 1)  # [B, nc, H, N]
        span *= 2
    first = s0[:, None] if s0 is not None else states.new_zeros(b, 1, h, n)  # [B, 1, H, N]
    carried = torch.cat([first, states[:, :-1]], 1)  # [B, nc, H, N]: s_{c-1}
    m = torch.cat([u, carried], -1) @ tables.kernel  # [B, nc, H, C + N] -> [B, nc, H, C*N]
    m = m.view(b, n_chunks, h, c, n).transpose(2, 3).reshape(b, n_chunks * c, h, n)[:, :t]  # -> [B, T, H, N]
    return m, m[:, -1]
