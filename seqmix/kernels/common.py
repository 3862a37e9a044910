"""What every linear-recurrence op (linear attention, GLA, the delta rule) shares: input
checks, the ``impl`` dispatch, the chunk layout of the chunked forms, and running a packed
batch (``cu_seqlens``) one sequence at a time.

The ops all carry a matrix state ``S: [B, H, K, V]`` in fp32 (fp64 when given fp64)
and read ``q, k: [B, T, H, K]``, ``v: [B, T, H, V]``.
"""

from __future__ import annotations

import importlib
import math
import os
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

IMPLS: tuple[str, ...] = ("auto", "naive", "chunk", "triton")


def compute_dtype(x: Tensor) -> torch.dtype:
    """fp64 when given fp64 (for gradient checks), fp32 for everything else."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def check_qkv(op: str, q: Tensor, k: Tensor, v: Tensor) -> None:
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not isinstance(x, Tensor) or x.dim() != 4:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"{op}: {name} must be a 4-D tensor [batch, time, heads, dim], got {shape}")
        if not x.is_floating_point():
            raise ValueError(f"{op}: {name} must be a floating-point tensor, got {x.dtype}")
    if k.shape != q.shape:
        raise ValueError(f"{op}: k must have the shape of q {tuple(q.shape)} [B, T, H, K], got {tuple(k.shape)}")
    if v.shape[:3] != q.shape[:3]:
        raise ValueError(
            f"{op}: v must be [B, T, H, V] with B, T, H of q {tuple(q.shape[:3])}, got {tuple(v.shape)}"
        )


def check_state_and_offsets(op: str, q: Tensor, v: Tensor, initial_state: Tensor | None,
                            cu_seqlens: Tensor | None) -> int:
    """Checks ``initial_state`` and ``cu_seqlens``; returns the number of sequences N."""
    b, t, h, dk = q.shape
    dv = v.shape[-1]
    n = b
    if cu_seqlens is not None:
        if not isinstance(cu_seqlens, Tensor) or cu_seqlens.dim() != 1 or cu_seqlens.dtype not in (
            torch.int64, torch.int32
        ) or cu_seqlens.numel() < 2:
            raise ValueError(
                f"{op}: cu_seqlens must be a 1-D int64 tensor [N + 1] of sequence offsets, got "
                f"{cu_seqlens.dtype if isinstance(cu_seqlens, Tensor) else type(cu_seqlens).__name__} "
                f"{tuple(cu_seqlens.shape) if isinstance(cu_seqlens, Tensor) else ''}"
            )
        if b != 1:
            raise ValueError(f"{op}: with cu_seqlens the sequences are packed along time, so batch must be 1, got {b}")
        offsets = cu_seqlens.tolist()
        if offsets[0] != 0 or offsets[-1] != t or any(a > c for a, c in zip(offsets, offsets[1:])):
            raise ValueError(
                f"{op}: cu_seqlens must rise from 0 to T={t} (non-decreasing), got {offsets[:8]}"
                f"{'...' if len(offsets) > 8 else ''}"
            )
        n = len(offsets) - 1
    if initial_state is not None:
        want = (n, h, dk, dv)
        if not isinstance(initial_state, Tensor) or tuple(initial_state.shape) != want:
            got = tuple(initial_state.shape) if isinstance(initial_state, Tensor) else type(initial_state).__name__
            raise ValueError(f"{op}: initial_state must be [N={n}, H={h}, K={dk}, V={dv}], got {got}")
    return n


def check_chunk_size(op: str, chunk_size: int) -> None:
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"{op}: chunk_size must be a positive int (64 is a good default), got {chunk_size!r}")


def to_chunks(x: Tensor, chunk: int, dtype: torch.dtype) -> Tensor:
    """``[B, T, H, K] -> [B, H, N, C, K]``, zero-padding T up to ``N * C``: a new contiguous
    tensor (one copy, never a view of x, so callers may write into it)."""
    b, t, h, d = x.shape
    n = math.ceil(t / chunk)
    x = x.transpose(1, 2)  # [B, H, T, K]
    padded = n * chunk > t
    if padded:
        x = F.pad(x, (0, 0, 0, n * chunk - t))  # [B, H, N*C, K], a new tensor
    x = x.to(dtype, memory_format=torch.contiguous_format, copy=not padded)  # [B, H, N*C, K]
    return x.view(b, h, n, chunk, d)  # [B, H, N*C, K] -> [B, H, N, C, K]


def from_chunks(x: Tensor, t: int) -> Tensor:
    """``[B, H, N, C, V] -> [B, T, H, V]``, contiguous (one copy), dropping the padding."""
    b, h, n, c, d = x.shape
    return x.permute(0, 2, 3, 1, 4).reshape(b, n * c, h, d)[:, :t]  # [B, H, N, C, V] -> [B, T, H, V]


def bmm(a: Tensor, b: Tensor, *, add_to: Tensor | None = None, alpha: float = 1.0, beta: float = 1.0) -> Tensor:
    """``a @ b`` over batches ``[..., M, K] x [..., K, N]`` whose leading dims flatten without a
    copy (chunked tensors, their transposes, one chunk of them). With ``add_to``:
    ``add_to = beta * add_to + alpha * (a @ b)`` in place, one fused GEMM and no new tensor,
    returned (``add_to`` must be one the caller may overwrite)."""
    a3, b3 = a.flatten(0, -3), b.flatten(0, -3)  # [batch, M, K], [batch, K, N]
    if add_to is None:
        return torch.bmm(a3, b3).view(*a.shape[:-1], b.shape[-1])  # [..., M, N]
    add_to.view(-1, *add_to.shape[-2:]).baddbmm_(a3, b3, beta=beta, alpha=alpha)  # [batch, M, N], a view: in place
    return add_to


def resolve_impl(op: str, impl: str, x: Tensor) -> str:
    """``"auto"`` -> ``"triton"`` for CUDA tensors, ``"chunk"`` elsewhere; unknown names fail."""
    if impl not in IMPLS:
        raise ValueError(f"{op}: impl={impl!r} is unknown; choose one of {IMPLS}")
    if impl == "auto":
        return "triton" if x.is_cuda else "chunk"
    return impl


def load_triton(op_package: str, function: str, x: Tensor) -> Callable[..., tuple[Tensor, Tensor | None]]:
    """The Triton form ``seqmix.kernels.<op_package>.triton.<function>``, imported lazily."""
    if not x.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError(
            f"impl='triton' needs CUDA tensors (got {x.device}); on the CPU set TRITON_INTERPRET=1 to run the "
            "Triton interpreter, or use impl='chunk'"
        )
    module_name = f"seqmix.kernels.{op_package}.triton"
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name != module_name:
            raise
        raise ValueError(
            f"impl='triton': {module_name} does not exist yet (no Triton kernel for this op); use impl='chunk'"
        ) from None
    if not hasattr(module, function):
        raise ValueError(f"impl='triton': {module_name} has no function {function!r}")
    return getattr(module, function)


def per_sequence(
    run: Callable[..., tuple[Tensor, Tensor]],
    over_time: Sequence[Tensor],
    initial_state: Tensor | None,
    cu_seqlens: Tensor | None,
    state_shape: tuple[int, int, int],
    dtype: torch.dtype,
) -> tuple[Tensor, Tensor]:
    """Calls ``run(*tensors, s0) -> (o, s_T)`` on the whole batch, or, with ``cu_seqlens``,
    on each packed sequence (``[1, T_n, ...]``) with its own initial state, so the state
    resets at every boundary. ``over_time`` are the ``[B, T, ...]`` inputs split along time.
    """
    b = over_time[0].shape[0]
    device = over_time[0].device
    if cu_seqlens is None:
        s0 = initial_state if initial_state is not None else torch.zeros(b, *state_shape, device=device)
        return run(*over_time, s0.to(dtype))
    lengths = cu_seqlens.diff().tolist()
    outputs, finals = [], []
    for n, pieces in enumerate(zip(*(x.split(lengths, dim=1) for x in over_time))):
        s0 = initial_state[n : n + 1] if initial_state is not None else torch.zeros(1, *state_shape, device=device)
        s0 = s0.to(dtype)
        if lengths[n] == 0:  # an empty sequence: no output, the state passes through
            outputs.append(pieces[2].new_zeros((1, 0, *pieces[2].shape[2:]), dtype=dtype))  # v is the 3rd input
            finals.append(s0)
            continue
        o, s = run(*pieces, s0)
        outputs.append(o)
        finals.append(s)
    return torch.cat(outputs, 1), torch.cat(finals, 0)

