"""What every Triton kernel in seqmix shares: interpreter detection, autotuning that falls
back to one config under the interpreter, device checks, and output allocation that can
poison outputs with NaN for the tests.

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
from torch import Tensor

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


def check_tensors(op: str, *tensors: Tensor | None) -> torch.device:
    """All given tensors on one device that the kernels can run on; returns that device.

    CUDA tensors need kernels compiled for the GPU; CPU tensors need the interpreter.
    """
    present = [t for t in tensors if t is not None]
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
