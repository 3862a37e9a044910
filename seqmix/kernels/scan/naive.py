"""Softmax attention of one query over every prefix, as a sequential scan: the reference.

Aaren (Feng et al. 2024, "Attention as an RNN"): for scores ``s_t = q . k_t`` of one query
and values ``v_t``, the causal attention output

    o_t = sum_{j <= t} exp(s_j) v_j / sum_{j <= t} exp(s_j)

is carried in a constant-size state ``(m, u, w)``: the running max ``m_t = max_{j<=t} s_j``,
the numerator ``u_t = sum_{j<=t} exp(s_j - m_t) v_j`` and the denominator
``w_t = sum_{j<=t} exp(s_j - m_t)``; ``o_t = u_t / w_t``. Two states merge associatively
(:func:`combine`), which is what makes a parallel prefix scan possible (``chunk.py``).

Shapes: ``s: [B, T, H]``, ``v: [B, T, H, V]``; state ``(m [B, H], u [B, H, V], w [B, H])``
in fp32 (fp64 for fp64 inputs); the default initial state is the empty prefix
``(m = -inf, u = 0, w = 0)``. The output ``o: [B, T, H, V]`` has the dtype of ``v``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from seqmix.kernels.common import compute_dtype
from seqmix.kernels.threads import single_threaded

ScanState = tuple[Tensor, Tensor, Tensor]


def combine(m_a: Tensor, u_a: Tensor, w_a: Tensor, m_b: Tensor, u_b: Tensor, w_b: Tensor) -> ScanState:
    """The associative merge ``(m_a, u_a, w_a) (+) (m_b, u_b, w_b)`` of two consecutive spans.

    ``m: [...]``, ``u: [..., V]``, ``w: [...]``; an empty span is ``(-inf, 0, 0)``.
    """
    m = torch.maximum(m_a, m_b)
    scale_a, scale_b = torch.exp(m_a - m), torch.exp(m_b - m)
    return m, scale_a[..., None] * u_a + scale_b[..., None] * u_b, scale_a * w_a + scale_b * w_b


def check_scan_inputs(op: str, s: Tensor, v: Tensor, initial_state: ScanState | None) -> None:
    if not isinstance(s, Tensor) or s.dim() != 3 or not s.is_floating_point():
        got = f"{s.dtype} {tuple(s.shape)}" if isinstance(s, Tensor) else type(s).__name__
        raise ValueError(f"{op}: s must be a float tensor [batch, time, heads] of scores, got {got}")
    if not isinstance(v, Tensor) or v.dim() != 4 or tuple(v.shape[:3]) != tuple(s.shape):
        got = tuple(v.shape) if isinstance(v, Tensor) else type(v).__name__
        raise ValueError(f"{op}: v must be [B, T, H, V] with B, T, H of s {tuple(s.shape)}, got {got}")
    if s.shape[1] == 0:
        raise ValueError(f"{op}: s has zero time steps; give at least one")
    if initial_state is not None:
        b, _, h = s.shape
        want = ((b, h), (b, h, v.shape[-1]), (b, h))
        if not isinstance(initial_state, (tuple, list)) or len(initial_state) != 3 or any(
            not isinstance(x, Tensor) or tuple(x.shape) != w for x, w in zip(initial_state, want)
        ):
            got = [tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__ for x in initial_state] \
                if isinstance(initial_state, (tuple, list)) else type(initial_state).__name__
            raise ValueError(f"{op}: initial_state must be (m {want[0]}, u {want[1]}, w {want[2]}), got {got}")


def empty_state(batch: int, heads: int, value_dim: int, *, device: torch.device | str | None = None,
                dtype: torch.dtype = torch.float32) -> ScanState:
    """The state of the empty prefix: ``m = -inf``, ``u = 0``, ``w = 0``."""
    return (torch.full((batch, heads), float("-inf"), device=device, dtype=dtype),
            torch.zeros(batch, heads, value_dim, device=device, dtype=dtype),
            torch.zeros(batch, heads, device=device, dtype=dtype))


def prepare_scan(s: Tensor, v: Tensor, initial_state: ScanState | None) -> tuple[Tensor, Tensor, ScanState]:
    dtype = compute_dtype(v)
    b, _, h, dv = v.shape
    if initial_state is None:
        state = empty_state(b, h, dv, device=v.device, dtype=dtype)
    else:
        state = tuple(x.to(dtype) for x in initial_state)
    return s.to(dtype), v.to(dtype), state


@single_threaded()
def softmax_scan_naive(s: Tensor, v: Tensor, *, initial_state: ScanState | None = None,
                       output_final_state: bool = False) -> tuple[Tensor, ScanState | None]:
    """``o_t = softmax(s_{<=t}) . v_{<=t}`` one token at a time, merging ``(s_t, v_t, 1)`` into the state."""
    check_scan_inputs("softmax_scan_naive", s, v, initial_state)
    s_, v_, (m, u, w) = prepare_scan(s, v, initial_state)
    outputs = []
    for s_t, v_t in zip(s_.unbind(1), v_.unbind(1)):  # [B, H], [B, H, V]
        m, u, w = combine(m, u, w, s_t, v_t, torch.ones_like(s_t))
        outputs.append(u / w[..., None])
    o = torch.stack(outputs, 1).to(v.dtype)  # [B, T, H, V]
    return o, ((m, u, w) if output_final_state else None)
