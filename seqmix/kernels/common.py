"""What every op under ``seqmix/kernels/`` shares: the forms each op has and the sizes each
form takes (:class:`KernelOp`, :class:`Limits`), the one ``impl`` rule (:func:`resolve_impl`,
also behind ``Mixer.resolve_impl``), input checks, the chunk layout of the chunked forms,
and running a packed batch (``cu_seqlens``) one sequence at a time.

The linear-recurrence ops (linear attention, GLA, the delta rule) carry a matrix state
``S: [B, H, K, V]`` in fp32 (fp64 when given fp64) and read ``q, k: [B, T, H, K]``, ``v: [B, T, H, V]``.
"""

from __future__ import annotations

import importlib
import math
import os
import warnings
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

NO_SIZES: Mapping[str, int] = MappingProxyType({})


@dataclass(frozen=True)
class Limits:
    """The sizes one form of an op takes beyond "a positive int"; None / False: no such limit."""

    chunk_sizes: tuple[int, ...] | None = None  # the only chunk sizes (tiles) it takes
    chunk_power_of_two: bool = False  # chunk_size must be a power of two
    max_head_dim: int | None = None  # the widest head (K or V) it holds on chip

    def refusal(self, chunk_size: int | None, head_dims: Mapping[str, int]) -> str | None:
        """The first size outside these limits with the allowed values, or None when all fit."""
        if chunk_size is not None and self.chunk_sizes is not None and chunk_size not in self.chunk_sizes:
            return f"chunk_size={chunk_size} (allowed: {', '.join(map(str, self.chunk_sizes))})"
        if chunk_size is not None and self.chunk_power_of_two and chunk_size & (chunk_size - 1):
            return f"chunk_size={chunk_size} (allowed: a power of two: 16, 32, 64, ...)"
        for name, size in head_dims.items():
            if self.max_head_dim is not None and size > self.max_head_dim:
                return f"head dim {name} = {size} (allowed: up to {self.max_head_dim}; use more heads)"
        return None


@dataclass(frozen=True)
class KernelOp:
    """One op of ``seqmix/kernels/<package>/`` (declared in its ``limits.py``): the forms it has,
    reference first, and the :class:`Limits` of each form that has some."""

    package: str
    impls: tuple[str, ...]
    limits: Mapping[str, Limits] = field(default_factory=dict)

    def refusal(self, impl: str, *, chunk_size: int | None = None,
                head_dims: Mapping[str, int] = NO_SIZES) -> str | None:
        """Why the form ``impl`` cannot take these sizes, or None when it can."""
        limits = self.limits.get(impl)
        reason = None if limits is None else limits.refusal(chunk_size, head_dims)
        return None if reason is None else f"the {impl} form of {self.package} cannot take {reason}"

    def check(self, owner: str, impl: str, *, chunk_size: int | None = None,
              head_dims: Mapping[str, int] = NO_SIZES) -> str | None:
        """Checks the sizes against every form ``impl`` may dispatch to (a mixer's ``__init__``, an
        op's entry point): an explicit form, or ``"auto"``'s CPU form, that cannot take them is a
        ValueError naming the size and the allowed values. Returns why ``"auto"`` cannot use the
        Triton form on CUDA (None when it can), for :func:`resolve_impl`'s ``triton_refusal``."""
        if chunk_size is not None:
            check_chunk_size(owner, chunk_size)
        reason = self.refusal(impl if impl != "auto" else fastest_cpu_impl(self.impls), chunk_size=chunk_size,
                              head_dims=head_dims)
        if reason is not None:
            raise refused(owner, impl, reason)
        return self.refusal("triton", chunk_size=chunk_size, head_dims=head_dims) if "triton" in self.impls else None

    def resolve(self, owner: str, impl: str, x: Tensor, *, chunk_size: int | None = None,
                head_dims: Mapping[str, int] = NO_SIZES) -> str:
        """The form an op's entry point runs for ``x``: :meth:`check`, then :func:`resolve_impl`."""
        refusal = self.check(owner, impl, chunk_size=chunk_size, head_dims=head_dims)
        return resolve_impl(owner, impl, self.impls, cuda=x.is_cuda, triton_refusal=refusal)

    def form(self, owner: str, impl: str, x: Tensor, *, name: str, chunk_size: int | None = None,
             head_dims: Mapping[str, int] = NO_SIZES) -> Callable[..., tuple[Tensor, object]]:
        """The function ``<name>_<form>`` of ``seqmix.kernels.<package>.<form>`` for the form that
        :meth:`resolve` picks for ``x`` (imported when asked for: the Triton one imports triton)."""
        choice = self.resolve(owner, impl, x, chunk_size=chunk_size, head_dims=head_dims)
        if choice == "triton":
            return self.triton(f"{name}_triton", x)
        return getattr(importlib.import_module(f"seqmix.kernels.{self.package}.{choice}"), f"{name}_{choice}")

    def triton(self, function: str, x: Tensor) -> Callable[..., tuple[Tensor, object]]:
        """The Triton form ``seqmix.kernels.<package>.triton.<function>``, imported lazily (importing
        it imports triton, which reads ``TRITON_INTERPRET`` once)."""
        if not x.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
            raise ValueError(
                f"impl='triton' needs CUDA tensors (got {x.device}); on the CPU set TRITON_INTERPRET=1 to run the "
                "Triton interpreter, or use impl='chunk'"
            )
        return getattr(importlib.import_module(f"seqmix.kernels.{self.package}.triton"), function)


def refused(owner: str, impl: str, reason: str) -> ValueError:
    """The error for sizes that the form ``impl`` (or ``"auto"``'s CPU form) cannot take."""
    fix = " or impl='chunk'" if impl == "triton" else ""
    return ValueError(f"{owner}: impl={impl!r}: {reason}; choose an allowed value{fix}")


def fastest_cpu_impl(impls: Sequence[str]) -> str:
    """``"chunk"`` when present, else the last non-Triton form (the reference comes first)."""
    cpu_impls = [i for i in impls if i != "triton"]
    return "chunk" if "chunk" in cpu_impls else cpu_impls[-1]


_SAID: set[str] = set()  # the auto-on-CUDA fallbacks already warned about (each is said once)


def resolve_impl(owner: str, impl: str, impls: Sequence[str], *, cuda: bool,
                 triton_refusal: str | None = None) -> str:
    """The one rule for picking a form, for every op's entry point and ``Mixer.resolve_impl``.

    ``impl`` is ``"auto"`` or one of ``impls`` (else a ValueError naming the choices). An explicit
    form is itself, except ``"triton"`` when ``triton_refusal`` says the sizes do not fit it (a
    ValueError). ``"auto"`` is ``"triton"`` on CUDA when ``impls`` has it and nothing refuses it,
    else :func:`fastest_cpu_impl`; when a limit keeps it off Triton on CUDA it warns, once per
    owner and limit.
    """
    allowed = ("auto", *impls)
    if impl not in allowed:
        raise ValueError(f"{owner}: impl={impl!r} is unknown; choose one of {allowed}")
    if impl == "triton" and triton_refusal is not None:
        raise refused(owner, impl, triton_refusal)
    if impl != "auto":
        return impl
    if cuda and "triton" in impls:
        if triton_refusal is None:
            return "triton"
        fallback = fastest_cpu_impl(impls)
        message = f"{owner}: impl='auto' runs the {fallback} form on CUDA: {triton_refusal}"
        if message not in _SAID:
            _SAID.add(message)
            warnings.warn(message, stacklevel=3)
        return fallback
    return fastest_cpu_impl(impls)


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


@dataclass(frozen=True)
class Recurrence:
    """The checked arguments that the linear-recurrence ops (linear attention, GLA, the delta rule)
    share, built once by :meth:`check` in each op's public function; every form of the op
    (``naive``, ``chunk``, ``triton``) takes it with the op's own input (decay, gates, beta).

    - ``q, k: [B, T, H, K]``; ``v: [B, T, H, V]``.
    - ``scale`` multiplies the output; given as None it is ``K ** -0.5``.
    - ``initial_state: [N, H, K, V]`` (``N = B``, or the number of packed sequences); zeros when None.
    - ``output_final_state``: also return the state after the last token (fp32, fp64 for fp64 inputs).
    - ``cu_seqlens``: int64 ``[N + 1]`` offsets of N sequences packed along time (B must be 1); the
      state restarts at every boundary.
    - ``chunk_size``: tokens per chunk of the chunked forms (the tile BT of the Triton forms).

    Every form returns ``o: [B, T, H, V]`` in the dtype of q, and the final state or None.
    """

    q: Tensor
    k: Tensor
    v: Tensor
    scale: float
    initial_state: Tensor | None
    output_final_state: bool
    cu_seqlens: Tensor | None
    chunk_size: int

    @classmethod
    def check(cls, op: str, q: Tensor, k: Tensor, v: Tensor, *, scale: float | None, initial_state: Tensor | None,
              output_final_state: bool, cu_seqlens: Tensor | None, chunk_size: int) -> Recurrence:
        """Checks the shapes, the state, the packed offsets and the chunk size (a ValueError naming
        the argument); the default scale is filled in."""
        check_qkv(op, q, k, v)
        check_state_and_offsets(op, q, v, initial_state, cu_seqlens)
        check_chunk_size(op, chunk_size)
        scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
        return cls(q, k, v, scale, initial_state, output_final_state, cu_seqlens, chunk_size)

    @property
    def head_dims(self) -> dict[str, int]:
        return {"K": self.q.shape[-1], "V": self.v.shape[-1]}

    def per_sequence(self, run: Callable[..., tuple[Tensor, Tensor]],
                     *more_over_time: Tensor) -> tuple[Tensor, Tensor | None]:
        """``run(q, k, v, *more, s0) -> (o, s_T)`` in the compute dtype over the batch, or over each
        packed sequence (:func:`per_sequence`); ``o`` in q's dtype, the final state only when asked for."""
        q, v = self.q, self.v
        o, final = per_sequence(run, (q, self.k, v, *more_over_time), self.initial_state, self.cu_seqlens,
                                (q.shape[2], q.shape[3], v.shape[3]), compute_dtype(q))
        return o.to(q.dtype), (final if self.output_final_state else None)


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

