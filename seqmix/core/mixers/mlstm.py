"""xLSTM's mLSTM (Beck, Pöppel, Spanring, Auer, Prudnikova, Kopp, Klambauer, Brandstetter, Hochreiter
2024, "xLSTM: Extended Long Short-Term Memory"), section 2.3, as a causal mixer.

The cell (eqs. 19-27 of the paper, per head; the recurrence is :mod:`seqmix.kernels.mlstm`):

    q_t = W_q x_t + b_q,  k_t = (W_k x_t + b_k) / sqrt(K),  v_t = W_v x_t + b_v     eqs. 22-24
    i_t = exp(w_i^T x_t + b_i),  f_t = sigmoid(w_f^T x_t + b_f) or exp(...)          eqs. 25-26 (scalar per head)
    C_t = f_t C_{t-1} + i_t v_t k_t^T,  n_t = f_t n_{t-1} + i_t k_t                  eqs. 19-20
    h_t = o_t * C_t q_t / max(|n_t^T q_t|, 1),  o_t = sigmoid(W_o x_t + b_o)          eqs. 21, 27

computed with the paper's max-stabiliser ``m_t = max(log f_t + m_{t-1}, log i_t)`` (its appendix),
chunkwise-parallel for training, and followed by an output projection to ``d_model``.

``layout="block"`` is the paper's mLSTM block with pre-up-projection (its Figure 10), without the
block's pre-norm and residual, which the surrounding block provides:

    x_m, z = W_up x                                  up-projection by ``proj_factor`` (two branches)
    x_c = swish(causal_conv(x_m))                    the q/k path (``conv_size`` taps)
    q, k = W_q x_c, W_k x_c;  v = W_v x_m;  i~, f~ = W_g [q, k, v]
    h = (GroupNorm_heads(cell(q, k, v, i~, f~)) + s * x_c) * swish(z)     learnable skip s, output gate swish(z)
    y = W_down h                                     down-projection to ``d_model``

Left out: the block's q/k/v projections are dense here (the paper's are block-diagonal, blocks of
4 channels); the block carries no ``o_t`` of its own (``swish(z)`` gates it, as in the paper's block);
no Triton form. Patterns: ``causal_self`` only (the recurrence reads the past).
"""

from __future__ import annotations

from typing import Literal, NamedTuple, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seqmix.core.layers import ShortConvolution
from seqmix.core.mixer import Mixer, State, register_mixer
from seqmix.kernels.common import compute_dtype
from seqmix.kernels.mlstm import MLSTM_OP, MLSTMState, chunk_mlstm

Layout = Literal["cell", "block"]
ForgetGate = Literal["sigmoid", "exp"]


class MLSTMBlockState(NamedTuple):
    """The state of ``layout="block"``: the cell's memory and the causal convolution's cache."""

    memory: MLSTMState  # C [B, H, K, V], n [B, H, K], m [B, H]
    conv: Tensor  # [B, conv_size - 1, inner] the last inputs of the q/k path's convolution


@register_mixer("mlstm")
class MLSTM(Mixer):
    """The mLSTM cell (``layout="cell"``) or the mLSTM block (``layout="block"``) as a mixer.

    Args:
        n_heads: heads of the matrix memory (``d_model``, or the block's inner width, divisible by it).
        layout: ``"cell"`` (the cell's equations on ``d_model``) or ``"block"`` (pre-up-projection).
        forget_gate: ``"sigmoid"`` (the default) or ``"exp"``, both of the paper's eq. 26.
        proj_factor: the block's up-projection factor (inner width ``round(proj_factor * d_model)``);
            ``layout="block"`` only (default 2.0).
        conv_size: taps of the block's causal convolution (>= 2); ``layout="block"`` only (default 4).
        chunk_size: tokens per chunk of the chunkwise-parallel form (any positive int).
    """

    patterns = frozenset({"causal_self"})
    impls = MLSTM_OP.impls
    recurrent = True
    paper = "Beck et al. 2024, xLSTM: Extended Long Short-Term Memory (mLSTM)"
    complexity = "O(T C D + T D^2 / H)"
    test_configs = (
        {"n_heads": 2, "chunk_size": 16},
        {"n_heads": 2, "layout": "block", "forget_gate": "exp", "proj_factor": 1.5, "chunk_size": 16},
    )

    def __init__(self, d_model: int, *, n_heads: int = 4, causal: bool = True, impl: str = "auto",
                 layout: Layout = "cell", forget_gate: ForgetGate = "sigmoid", proj_factor: float | None = None,
                 conv_size: int | None = None, chunk_size: int = 64):
        super().__init__(d_model, n_heads=n_heads, causal=causal, impl=impl)
        name = type(self).__name__
        if layout not in get_args(Layout):
            raise ValueError(f"{name}: layout={layout!r} is unknown; choose one of {get_args(Layout)}")
        if forget_gate not in get_args(ForgetGate):
            raise ValueError(f"{name}: forget_gate={forget_gate!r} is unknown; choose one of {get_args(ForgetGate)}")
        if layout == "cell":
            for arg, value in (("proj_factor", proj_factor), ("conv_size", conv_size)):
                if value is not None:
                    raise ValueError(f"{name}: {arg}={value!r} applies to layout='block' only; "
                                     "drop it or set layout='block'")
        proj_factor = 2.0 if proj_factor is None else proj_factor
        conv_size = 4 if conv_size is None else conv_size
        if isinstance(proj_factor, bool) or not isinstance(proj_factor, (int, float)) or not proj_factor > 0:
            raise ValueError(f"{name}: proj_factor must be a positive number (the paper uses 2.0), got {proj_factor!r}")
        inner = round(proj_factor * d_model) if layout == "block" else d_model
        if inner < n_heads or inner % n_heads:
            raise ValueError(f"{name}: proj_factor={proj_factor!r} gives an inner width round(proj_factor * d_model) = "
                             f"{inner} that n_heads={n_heads} does not divide into heads; pick a factor that makes it "
                             "a multiple of n_heads")
        if not isinstance(conv_size, int) or conv_size < 2:
            raise ValueError(f"{name}: conv_size must be an int >= 2 (the paper uses 4), got {conv_size!r}")
        self.triton_refusal = MLSTM_OP.check(name, impl, chunk_size=chunk_size)
        self.layout, self.forget_gate, self.inner, self.chunk_size = layout, forget_gate, inner, chunk_size
        if layout == "cell":
            self.qkv = nn.Linear(d_model, 3 * d_model)  # eqs. 22-24, biases included
            self.gates = nn.Linear(d_model, 2 * n_heads)  # i~, f~ per head (eqs. 25-26)
            self.out_gate = nn.Linear(d_model, d_model)  # o_t (eq. 27)
            self.out = nn.Linear(d_model, d_model, bias=False)
        else:
            self.up = nn.Linear(d_model, 2 * inner, bias=False)  # x_m, z
            self.conv = ShortConvolution(inner, conv_size)  # causal conv + swish
            self.qk = nn.Linear(inner, 2 * inner, bias=False)
            self.v = nn.Linear(inner, inner, bias=False)
            self.gates = nn.Linear(3 * inner, 2 * n_heads)  # i~, f~ per head from [q, k, v]
            self.norm_weight = nn.Parameter(torch.ones(inner))  # the head-wise GroupNorm's scale
            self.skip = nn.Parameter(torch.ones(inner))  # the learnable skip from x_c
            self.down = nn.Linear(inner, d_model, bias=False)
        with torch.no_grad():  # as xLSTM: input gates start at exp(0); forget gates from 0.95 to 0.998 over the heads
            self.gates.bias[:n_heads] = 0.0
            forget = torch.linspace(3.0, 6.0, n_heads)
            self.gates.bias[n_heads:] = forget if forget_gate == "sigmoid" else F.logsigmoid(forget)

    def _forward(self, x, *, context, mask, state, return_state):
        b, t, _ = x.shape
        h = self.n_heads
        if self.layout == "cell":
            memory = state
            q, k, v = self.qkv(x).view(b, t, 3, h, -1).unbind(2)  # [B, T, 3D] -> [B, T, 3, H, K] -> [B, T, H, K] x3
            gates = self.gates(x)  # [B, T, 2H]
        else:
            memory, conv = (None, None) if state is None else self.check_block_state(state)
            x_m, z = self.up(x).chunk(2, -1)  # [B, T, inner] each
            x_c, conv = self.conv(x_m, conv)  # [B, T, inner], the new cache
            qk, v_flat = self.qk(x_c), self.v(x_m)  # [B, T, 2 inner], [B, T, inner]
            gates = self.gates(torch.cat((qk, v_flat), -1))  # [B, T, 3 inner] -> [B, T, 2H]
            q, k = qk.view(b, t, 2, h, -1).unbind(2)  # [B, T, 2, H, K] -> [B, T, H, K] x2
            v = v_flat.view(b, t, h, -1)  # [B, T, H, V]
        log_i, f_pre = gates.to(compute_dtype(gates)).view(b, t, 2, h).unbind(2)  # [B, T, 2, H] -> [B, T, H] x2
        log_f = F.logsigmoid(f_pre) if self.forget_gate == "sigmoid" else f_pre
        o, memory = chunk_mlstm(q, k, v, log_i, log_f, initial_state=memory, output_final_state=return_state,
                                chunk_size=self.chunk_size, impl=self.resolve_impl(x))  # [B, T, H, V]
        if self.layout == "cell":
            y = self.out(torch.sigmoid(self.out_gate(x)) * o.reshape(b, t, -1))  # [B, T, H, V] -> [B, T, D]
            final = memory
        else:
            normed = F.layer_norm(o, o.shape[-1:]).reshape(b, t, -1) * self.norm_weight  # [B, T, H, V] -> [B, T, inner]
            y = self.down((normed + self.skip * x_c) * F.silu(z))
            final = MLSTMBlockState(memory, conv) if return_state else None
        return (y, final) if return_state else y

    def check_block_state(self, state: State) -> MLSTMBlockState:
        if not isinstance(state, MLSTMBlockState):
            raise ValueError(f"{type(self).__name__}: layout='block' carries an MLSTMBlockState(memory, conv), got "
                             f"{type(state).__name__}; take it from init_state or forward(..., return_state=True)")
        return state

    def init_state(self, batch_size: int, device: torch.device | str | None = None,
                   dtype: torch.dtype = torch.float32) -> State:
        """The empty memory (fp32, fp64 kept) and, for the block, a zero convolution cache in ``dtype``."""
        state_dtype = torch.float64 if dtype == torch.float64 else torch.float32
        head = self.inner // self.n_heads
        memory = MLSTMState.zeros(batch_size, self.n_heads, head, head, device=device, dtype=state_dtype)
        if self.layout == "cell":
            return memory
        conv = torch.zeros(batch_size, self.conv.size - 1, self.inner, device=device, dtype=dtype)
        return MLSTMBlockState(memory, conv)

    def state_size(self, seq_len: int) -> int:
        memory = self.inner * self.inner // self.n_heads + self.inner + self.n_heads  # C, n, m over the heads
        return memory if self.layout == "cell" else memory + (self.conv.size - 1) * self.inner

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, layout={self.layout!r}, forget_gate={self.forget_gate!r}, inner={self.inner}"
