"""What every Triton kernel in seqmix shares: interpreter detection, autotuning that falls
back to one config under the interpreter, device checks, output allocation that can poison
outputs with NaN for the tests, the host-side preparation of a linear-recurrence call, and
the ``@triton.jit`` helpers (inlined by Triton) that the chunked kernels' walks share.

Triton decides at *import* time whether a ``@triton.jit`` function is compiled for the
GPU or run by its interpreter (``TRITON_INTERPRET=1``, numpy underneath, any device).
So on the CPU set ``TRITON_INTERPRET=1`` before the first ``import triton``; the
kernels' modules record the mode they were built in (:data:`INTERPRET`) and refuse CPU
tensors when they were built for the GPU, with a message that says how to fix it.
"""

from __future__ import annotations

import os
from typing import Sequence

import torch
import triton
import triton.language as tl
from torch import Tensor

from seqmix.kernels.common import KernelOp, Recurrence

INTERPRET: bool = os.environ.get("TRITON_INTERPRET") == "1"
"""Whether kernels built now run in Triton's interpreter (read once, when this module is imported)."""

POISON_ENV = "SEQMIX_TRITON_POISON"
"""Set to ``1`` (the tests do) to fill every kernel output with NaN before the kernel writes it."""


def autotune(configs: Sequence[triton.Config], key: Sequence[str], reset_to_zero: Sequence[str] = ()):
    """``triton.autotune(configs, key, reset_to_zero)`` on the GPU; under the interpreter (which
    cannot benchmark) the first config's meta-parameters are fixed with ``triton.heuristics``.

    ``reset_to_zero`` names the outputs that configs fill only partly (per-value-block partial
    sums, whose number depends on the config): the tuner zeroes them before every trial and
    before the real run, so no trial's leftovers are summed in."""
    if not configs:
        raise ValueError("autotune: give at least one triton.Config")
    if INTERPRET:
        first = dict(configs[0].kwargs)
        return triton.heuristics({name: (lambda args, value=value: value) for name, value in first.items()})
    return triton.autotune(configs=list(configs), key=list(key), reset_to_zero=list(reset_to_zero) or None)


def check_tensors(op: str, x: Tensor, *tensors: Tensor | None) -> torch.device:
    """All given tensors on one device that the kernels can run on, the main input ``x`` not in
    fp64; returns that device. CUDA tensors need kernels compiled for the GPU; CPU tensors need
    the interpreter.
    """
    if x.dtype == torch.float64:
        raise ValueError(f"{op}: fp64 is not supported by the Triton kernels; use impl='naive' or 'chunk' for fp64")
    present = [t for t in (x, *tensors) if t is not None]
    devices = {t.device for t in present}
    if len(devices) != 1:
        raise ValueError(f"{op}: all tensors must be on one device, got {sorted(map(str, devices))}")
    device = devices.pop()
    if device.type == "cpu" and not INTERPRET:
        raise ValueError(
            f"{op}: impl='triton' got CPU tensors but Triton was imported without its interpreter; "
            "move the tensors to a CUDA device, or set TRITON_INTERPRET=1 before importing triton "
            "(i.e. before importing seqmix's Triton kernels), or use impl='chunk' on the CPU"
        )
    if device.type == "cuda" and INTERPRET:
        raise ValueError(
            f"{op}: TRITON_INTERPRET=1 is set, so the kernels run in Triton's interpreter and cannot take "
            "CUDA tensors efficiently; unset TRITON_INTERPRET for the GPU"
        )
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"{op}: impl='triton' runs on CUDA (or the CPU interpreter), got device {device}")
    return device


def new_output(shape: Sequence[int], *, device: torch.device, dtype: torch.dtype) -> Tensor:
    """An uninitialised output, or one full of NaN when ``SEQMIX_TRITON_POISON=1`` (tests),
    so that an element the kernel forgets to write shows up as NaN instead of as a stale 0."""
    if os.environ.get(POISON_ENV) == "1":
        return torch.full(tuple(shape), float("nan"), device=device, dtype=dtype)
    return torch.empty(tuple(shape), device=device, dtype=dtype)


def block_size(n: int, *, minimum: int = 16) -> int:
    """The power-of-two block that holds a whole head dimension ``n`` (at least ``minimum``,
    the smallest ``tl.dot`` operand)."""
    return max(minimum, triton.next_power_of_2(n))


def sequence_offsets(cu_seqlens: Tensor | None, batch: int, seq_len: int, device: torch.device) -> tuple[Tensor, int]:
    """``(offsets [N + 1] int32, N)``: ``cu_seqlens`` when packed, else ``0, T, 2T, ...``
    (the batch seen as ``B`` packed sequences of length ``T``), so one kernel serves both."""
    if cu_seqlens is None:
        return torch.arange(0, (batch + 1) * seq_len, seq_len, device=device, dtype=torch.int32), batch
    return cu_seqlens.to(device=device, dtype=torch.int32), cu_seqlens.numel() - 1


def prepare(op: str, kernel_op: KernelOp, x: Recurrence,
            *more: Tensor | None) -> tuple[Tensor, Tensor, Tensor, Tensor, int]:
    """What every linear-recurrence kernel checks before it launches (its limits, one device, no
    fp64; ``more``: the op's own inputs) and its inputs as the kernels read them: ``q, k, v``
    contiguous in q's dtype, then the sequence offsets and their number (:func:`sequence_offsets`)."""
    kernel_op.check(op, "triton", chunk_size=x.chunk_size, head_dims=x.head_dims)
    device = check_tensors(op, x.q, x.k, x.v, x.initial_state, *more)
    offsets, n_seq = sequence_offsets(x.cu_seqlens, x.q.shape[0], x.q.shape[1], device)
    q = x.q.contiguous()
    return q, x.k.to(q.dtype).contiguous(), x.v.to(q.dtype).contiguous(), offsets, n_seq


def new_state(q: Tensor, v: Tensor, n_seq: int) -> Tensor:
    """An fp32 output ``[N, H, K, V]`` for a final state or its gradient (:func:`new_output`)."""
    return new_output((n_seq, q.shape[2], q.shape[3], v.shape[3]), device=q.device, dtype=torch.float32)


def new_outputs(q: Tensor, v: Tensor, n_seq: int, *, with_state: bool) -> tuple[Tensor, Tensor | None]:
    """``[B, T, H, V]`` in q's dtype (an output, or v's gradient) and, when asked for, an fp32 state
    ``[N, H, K, V]`` (the final state, or the initial state's gradient)."""
    values = new_output((*q.shape[:3], v.shape[3]), device=q.device, dtype=q.dtype)
    return values, (new_state(q, v, n_seq) if with_state else None)


def value_block_partials(configs: Sequence[triton.Config], n_values: int, *shape: int,
                         device: torch.device) -> Tensor:
    """Zeros ``[max value blocks, *shape]`` fp32: a gradient that every block of ``BV`` value columns
    adds its part to, with room for the most blocks any config uses (summed over dim 0 afterwards)."""
    blocks = triton.cdiv(n_values, min(c.kwargs["BV"] for c in configs))
    return torch.zeros((blocks, *shape), device=device, dtype=torch.float32)


def value_grid(V: int, NH: int):
    """The launch grid ``(value blocks, N * H)`` of a kernel that walks one head of one sequence."""
    return lambda meta: (triton.cdiv(V, meta["BV"]), NH)


def contiguous(x: Tensor | None) -> Tensor | None:
    return None if x is None else x.contiguous()


# ----------------------------------------------------------- @triton.jit helpers of the chunked walks
@triton.jit
def sequence_bounds(offsets, i_n):
    """The first row ``bos`` (int64) and the length (int32) of packed sequence ``i_n``."""
    bos = tl.load(offsets + i_n).to(tl.int64)
    return bos, (tl.load(offsets + i_n + 1) - bos).to(tl.int32)


@triton.jit
def state_tile(o_k, o_v, K: tl.constexpr, V: tl.constexpr):
    """Offsets and mask of the ``[BK, BV]`` block of one ``[K, V]`` state."""
    return o_k[:, None] * V + o_v[None, :], (o_k < K)[:, None] & (o_v < V)[None, :]


@triton.jit
def load_state(h0, p_state, m_state, HAS_H0: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr):
    """The ``[BK, BV]`` fp32 block of the state ``h0`` (zeros without one)."""
    state = tl.zeros([BK, BV], dtype=tl.float32)
    if HAS_H0:
        state += tl.load(h0 + p_state, mask=m_state, other=0.0).to(tl.float32)
    return state


@triton.jit
def chunk_rows(bos, start, seq_len, o_t, BT: tl.constexpr):
    """The chunk that starts at ``start``: its number of tokens n, the mask of its BT rows, their rows."""
    n = tl.minimum(seq_len - start, BT)
    return n, o_t < n, bos + start + o_t


@triton.jit
def token_tile(rows, m_rows, i_h, o_d, D: tl.constexpr, H: tl.constexpr):
    """Offsets and mask of head ``i_h``'s ``[rows, BD]`` tile of a ``[rows, H, D]`` tensor."""
    return rows[:, None] * (H * D) + i_h * D + o_d[None, :], m_rows[:, None] & (o_d < D)[None, :]
