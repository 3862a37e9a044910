"""xLSTM's mLSTM cell (Beck et al. 2024, "xLSTM: Extended Long Short-Term Memory", section 2.3 and
the stabilisation of its appendix), one token at a time: the reference.

Per head, with the keys scaled (``k <- scale * k``, the paper's ``1 / sqrt(d)`` of eq. 23), the log
input gate ``log_i = i~`` (``i_t = exp(i~_t)``, eq. 25) and the log forget gate ``log_f``
(``logsigmoid(f~)`` for a sigmoid forget gate, ``f~`` itself for an exponential one, eq. 26):

    m_t  = max(log_f_t + m_{t-1}, log_i_t)                                the stabiliser
    i'_t = exp(log_i_t - m_t),   f'_t = exp(log_f_t + m_{t-1} - m_t)       both <= 1
    C_t  = f'_t C_{t-1} + i'_t k_t^T v_t                                  C: [K, V]
    n_t  = f'_t n_{t-1} + i'_t k_t                                        n: [K]
    h_t  = q_t C_t / max(|q_t . n_t|, exp(-m_t))

The stabilised ``(C, n)`` are the paper's ``(C, n)`` of eqs. 19-20 times ``exp(-m_t)``, so ``h_t`` is
exactly eq. 21's ``q_t C_t / max(|q_t . n_t|, 1)`` (C stored as ``[K, V]``, so ``C q`` reads ``q C``),
without its overflow: every exponent above is <= 0. ``h_t`` is the cell's ``h~_t``: the output gate
``o_t`` of eq. 21 belongs to the mixer. ``m`` is where the state's scale lives; any ``m_0`` gives
the same outputs for the same true state, and a zero state starts at ``m_0 = 0``.

Gradients: ``m_t`` is chosen without gradient (``detach``). Every output is the same whatever the
``m_t``, so its gradient with ``m_t`` held fixed is its exact gradient, minus paths that cancel to
rounding noise; the given ``m_0`` keeps its gradient (it is part of the true state). A carried
state stays exact: its ``(C, n)`` were computed with the same fixed ``m``.

Shapes: ``q, k: [B, T, H, K]``, ``v: [B, T, H, V]``, ``log_i, log_f: [B, T, H]``; the state
:class:`MLSTMState` ``(C [B, H, K, V], n [B, H, K], m [B, H])``. Computation and states are fp32
(fp64 for fp64 inputs); ``h: [B, T, H, V]`` comes back in the dtype of ``q``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from seqmix.kernels.common import check_chunk_size, check_qkv, compute_dtype


class MLSTMState(NamedTuple):
    """The mLSTM memory after a token: the paper's ``(C, n)`` times ``exp(-m)``, and ``m``."""

    C: Tensor  # [B, H, K, V] matrix memory
    n: Tensor  # [B, H, K] normaliser
    m: Tensor  # [B, H] stabiliser: the log scale of C and n

    @classmethod
    def zeros(cls, batch: int, heads: int, key_dim: int, value_dim: int, *, device: torch.device | str | None = None,
              dtype: torch.dtype = torch.float32) -> MLSTMState:
        """The empty memory (``m = 0``)."""
        return cls(torch.zeros(batch, heads, key_dim, value_dim, device=device, dtype=dtype),
                   torch.zeros(batch, heads, key_dim, device=device, dtype=dtype),
                   torch.zeros(batch, heads, device=device, dtype=dtype))


@dataclass(frozen=True)
class MLSTMInput:
    """The checked arguments of :func:`seqmix.kernels.mlstm.chunk_mlstm`, built once by :meth:`check`
    and taken by every form (``naive``, ``chunk``); ``scale`` filled in (``K ** -0.5`` when None)."""

    q: Tensor  # [B, T, H, K]
    k: Tensor  # [B, T, H, K]
    v: Tensor  # [B, T, H, V]
    log_i: Tensor  # [B, T, H]
    log_f: Tensor  # [B, T, H]
    scale: float
    initial_state: MLSTMState | None
    output_final_state: bool
    chunk_size: int

    @classmethod
    def check(cls, op: str, q: Tensor, k: Tensor, v: Tensor, log_i: Tensor, log_f: Tensor, *, scale: float | None,
              initial_state: MLSTMState | None, output_final_state: bool, chunk_size: int) -> MLSTMInput:
        """Checks every shape (a ValueError naming the argument and the shape it needs)."""
        check_qkv(op, q, k, v)
        check_chunk_size(op, chunk_size)
        b, t, h, dk = q.shape
        if t == 0:
            raise ValueError(f"{op}: q has zero time steps; give at least one token")
        for name, gate in (("log_i", log_i), ("log_f", log_f)):
            if not isinstance(gate, Tensor) or tuple(gate.shape) != (b, t, h) or not gate.is_floating_point():
                got = f"{gate.dtype} {tuple(gate.shape)}" if isinstance(gate, Tensor) else type(gate).__name__
                raise ValueError(f"{op}: {name} must be a float tensor [B={b}, T={t}, H={h}] (one gate per token and "
                                 f"head), got {got}")
        if initial_state is not None:
            want = MLSTMState((b, h, dk, v.shape[-1]), (b, h, dk), (b, h))
            if not isinstance(initial_state, tuple) or len(initial_state) != 3 or any(
                not isinstance(s, Tensor) or tuple(s.shape) != w for s, w in zip(initial_state, want)
            ):
                got = [tuple(s.shape) if isinstance(s, Tensor) else type(s).__name__ for s in initial_state] \
                    if isinstance(initial_state, tuple) else type(initial_state).__name__
                raise ValueError(f"{op}: initial_state must be MLSTMState(C {want.C}, n {want.n}, m {want.m}), "
                                 f"got {got}; build it with MLSTMState.zeros or take it from output_final_state")
        scale = dk ** -0.5 if scale is None else float(scale)
        return cls(q, k, v, log_i, log_f, scale, initial_state, output_final_state, chunk_size)

    def start(self, dtype: torch.dtype) -> MLSTMState:
        """The initial state in the compute dtype (zeros when none was given)."""
        if self.initial_state is None:
            b, _, h, dk = self.q.shape
            return MLSTMState.zeros(b, h, dk, self.v.shape[-1], device=self.q.device, dtype=dtype)
        return MLSTMState(*(s.to(dtype) for s in self.initial_state))

    def finish(self, h: Tensor, final: MLSTMState) -> tuple[Tensor, MLSTMState | None]:
        """``h`` in q's dtype, and the final state when it was asked for."""
        return h.to(self.q.dtype), (final if self.output_final_state else None)


def mlstm_naive(x: MLSTMInput) -> tuple[Tensor, MLSTMState | None]:
    """The stabilised recurrence above, one token at a time; the arguments and results of
    :func:`seqmix.kernels.mlstm.chunk_mlstm`."""
    dtype = compute_dtype(x.q)
    C, n, m = x.start(dtype)
    outputs = []
    q, k, v, log_i, log_f = (y.to(dtype) for y in (x.q, x.k, x.v, x.log_i, x.log_f))
    # q_t, k_t: [B, H, K], v_t: [B, H, V], i_t, f_t: [B, H]
    for q_t, k_t, v_t, i_t, f_t in zip(*(y.unbind(1) for y in (q, k * x.scale, v, log_i, log_f))):
        m_t = torch.maximum(f_t + m, i_t).detach()  # a choice of scale: no gradient (see above)
        forget, write = torch.exp(f_t + m - m_t), torch.exp(i_t - m_t)  # [B, H] each
        C = forget[..., None, None] * C + write[..., None, None] * k_t[..., :, None] * v_t[..., None, :]  # [B, H, K, V]
        n = forget[..., None] * n + write[..., None] * k_t  # [B, H, K]
        m = m_t
        numerator = torch.einsum("bhk,bhkv->bhv", q_t, C)  # [B, H, V]
        denominator = torch.maximum((q_t * n).sum(-1).abs(), torch.exp(-m))  # [B, H]
        outputs.append(numerator / denominator[..., None])
    return x.finish(torch.stack(outputs, 1), MLSTMState(C, n, m))  # h: [B, T, H, V]
