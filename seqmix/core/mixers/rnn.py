"""Multi-head LSTM, GRU and sLSTM with head-wise (block-diagonal) recurrent weights.

Papers: FlashRNN (Pöppel et al. 2024, "FlashRNN: I/O-Aware Optimization of Traditional
RNNs on modern hardware") for the head-wise recurrence; xLSTM (Beck et al. 2024) for the
sLSTM cell (exponential input gate, normaliser state n, stabiliser state m); Hochreiter &
Schmidhuber 1997 (LSTM); Cho et al. 2014 (GRU, here in its cuDNN form).

Blocks -> mixers: :class:`HeadwiseRecurrence` is one direction (the input projection of all
steps in one matmul, then the recurrence ``h_t = cell(W x_t + b + h_{t-1} R)`` with ``R``
block-diagonal over ``n_heads`` heads, from :mod:`seqmix.kernels.rnn`); :class:`HeadwiseRNN`
stacks one direction (causal, recurrent: ``init_state`` / ``step`` / a carried state) or two
(``bidirectional=True``, non-causal: the forward and the time-reversed pass concatenated
and projected, the Bi-LSTM of encoders). The registered ``lstm``, ``gru``, ``slstm`` differ
only in the cell.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import Tensor, nn

from seqmix.core.mixer import Mixer, State, register_mixer, state_dtype
from seqmix.kernels.rnn import N_GATES, N_STATES, RNN, gru_headwise, lstm_headwise, slstm_headwise, zero_state


class HeadwiseRecurrence(nn.Module):
    """One direction of a head-wise RNN: ``x [B, T, D] -> h [B, T, D]`` (``D = n_heads * K``)."""

    def __init__(self, d_model: int, n_heads: int, cell: str):
        super().__init__()
        if cell not in N_GATES:
            raise ValueError(f"cell={cell!r} is unknown; choose one of {sorted(N_GATES)}")
        self.cell, self.n_heads, self.head_dim = cell, n_heads, d_model // n_heads
        g, k = N_GATES[cell], self.head_dim
        self.w = nn.Linear(d_model, g * d_model)  # all gates of all heads, bias included
        self.R = nn.Parameter(torch.empty(n_heads, k, g, k))
        self.bias_n = nn.Parameter(torch.zeros(n_heads, k)) if cell == "gru" else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.head_dim)
        nn.init.uniform_(self.R, -bound, bound)
        with torch.no_grad():
            bias = self.w.bias.view(self.n_heads, N_GATES[self.cell], self.head_dim)  # [H, G, K]
            if self.cell == "lstm":
                bias[:, 1] = 1.0  # forget gate open at the start
            elif self.cell == "slstm":
                bias[:, 1] = torch.linspace(3.0, 6.0, self.n_heads)[:, None]  # slow to fast forgetting heads
        if self.bias_n is not None:
            nn.init.zeros_(self.bias_n)

    def forward(self, x: Tensor, *, state: tuple[Tensor, ...] | None, return_state: bool,
                impl: str) -> tuple[Tensor, tuple[Tensor, ...] | None]:
        b, t, d = x.shape
        gates_x = self.w(x).view(b, t, self.n_heads, N_GATES[self.cell], self.head_dim)  # [B, T, H, G, K]
        arguments = dict(initial_state=state, output_final_state=return_state, impl=impl)
        if self.cell == "lstm":
            h, final = lstm_headwise(gates_x, self.R, **arguments)
        elif self.cell == "gru":
            h, final = gru_headwise(gates_x, self.R, self.bias_n, **arguments)
        else:
            h, final = slstm_headwise(gates_x, self.R, **arguments)
        return h.reshape(b, t, d), final  # [B, T, H, K] -> [B, T, D]


class HeadwiseRNN(Mixer):
    """A head-wise RNN mixer; a base, registered through its subclasses (``cell`` picks the cell).

    Args:
        n_heads: heads of the block-diagonal recurrent matrix (``d_model`` divisible by it).
        causal: True for the causal (left-to-right) pattern.
        bidirectional: add the time-reversed direction (needs ``causal=False``); default
            ``not causal``. ``causal=False, bidirectional=False`` is a plain left-to-right
            RNN used where the future may be seen (e.g. a seq2seq encoder).
    """

    cell: ClassVar[str] = ""
    patterns = frozenset({"causal_self", "noncausal_self"})
    impls = RNN.impls
    recurrent = True
    supports_mask = True  # masked tokens are skipped by the recurrence (``masked_forward``)
    test_configs = ({"n_heads": 2},)  # one config: the T = 4096 generic test runs 4096 steps per config

    def __init__(self, d_model: int, *, n_heads: int = 4, causal: bool = True, impl: str = "auto",
                 bidirectional: bool | None = None):
        super().__init__(d_model, n_heads=n_heads, causal=causal, impl=impl)
        self.triton_refusal = RNN.check(type(self).__name__, impl, head_dims={"d_model / n_heads": self.head_dim})
        bidirectional = (not causal) if bidirectional is None else bidirectional
        if bidirectional and causal:
            raise ValueError(f"{type(self).__name__}: bidirectional=True reads the future, so it needs causal=False "
                             "(or set bidirectional=False for a causal RNN)")
        self.bidirectional = bidirectional
        n_directions = 2 if bidirectional else 1
        self.directions = nn.ModuleList(HeadwiseRecurrence(d_model, n_heads, self.cell) for _ in range(n_directions))
        self.out = nn.Linear(n_directions * d_model, d_model, bias=False)

    def _forward(self, x, *, context, mask, state, return_state):
        if mask is not None:
            if state is not None or return_state:
                raise ValueError(f"{type(self).__name__}: a mask cannot be combined with a carried state; run the "
                                 "masked sequences without state / return_state")
            return self.masked_forward(x, mask)
        impl = self.resolve_impl(x)
        h, final = self.directions[0](x, state=state, return_state=return_state, impl=impl)
        if self.bidirectional:
            h_back, _ = self.directions[1](x.flip(1), state=None, return_state=False, impl=impl)
            h = torch.cat((h, h_back.flip(1)), -1)  # [B, T, 2D]
        y = self.out(h)
        return (y, final) if return_state else y

    def masked_forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """The recurrence over the kept tokens only (``mask`` True), as if the others were absent:
        each row's kept tokens are moved to the front in order (so left or right padding, or gaps,
        never reach the state), the backward direction reverses each row within its length, and
        the outputs go back to their positions; masked positions output zeros."""
        b, t, d = x.shape
        front = torch.sort((~mask).to(torch.int8), dim=1, stable=True).indices  # [B, T] kept positions first
        back = torch.argsort(front, dim=1)  # [B, T] the inverse permutation
        lengths = mask.sum(1, keepdim=True)  # [B, 1]
        steps = torch.arange(t, device=x.device)[None]  # [1, T]
        kept = steps < lengths  # [B, T] the compacted rows' valid prefix
        x_c = x.gather(1, front[..., None].expand(b, t, d))  # [B, T, D] kept tokens first; the rest is masked out below
        impl = self.resolve_impl(x)
        h, _ = self.directions[0](x_c, state=None, return_state=False, impl=impl)
        if self.bidirectional:
            flip = torch.where(kept, lengths - 1 - steps, steps)  # [B, T] reverses each row's valid prefix
            h_back, _ = self.directions[1](x_c.gather(1, flip[..., None].expand(b, t, d)), state=None,
                                           return_state=False, impl=impl)
            h_back = h_back.gather(1, flip[..., None].expand(b, t, d))  # [B, T, D] back in compacted order
            h = torch.cat((h, h_back), -1)  # [B, T, 2D]
        h = h.gather(1, back[..., None].expand(b, t, h.shape[-1])) * mask[..., None]  # [B, T, nD] in place
        return self.out(h)

    def init_state(self, batch_size: int, device: torch.device | str | None = None,
                   dtype: torch.dtype = torch.float32) -> State:
        """Zeros (sLSTM: ``m = -inf``), ``[B, H, K]`` each; fp32 whatever ``dtype`` (fp64 kept)."""
        return zero_state(self.cell, batch_size, self.n_heads, self.head_dim, device=device, dtype=state_dtype(dtype))

    def state_size(self, seq_len: int) -> int:
        per_direction = N_STATES[self.cell] * self.d_model
        if self.bidirectional:  # the backward direction needs the whole input first
            return 2 * per_direction + seq_len * self.d_model
        return per_direction

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, cell={self.cell!r}, bidirectional={self.bidirectional}"


@register_mixer("lstm")
class LSTM(HeadwiseRNN):
    """Head-wise LSTM (gates i, f, z, o; state h, c)."""

    cell = "lstm"
    paper = "Hochreiter & Schmidhuber 1997; Sutskever et al. 2014; head-wise as in FlashRNN (Pöppel et al. 2024)"
    complexity = "O(T D^2 / H), sequential in T"


@register_mixer("gru")
class GRU(HeadwiseRNN):
    """Head-wise GRU (gates r, z, n; state h)."""

    cell = "gru"
    paper = "Cho et al. 2014; head-wise as in FlashRNN (Pöppel et al. 2024)"
    complexity = "O(T D^2 / H), sequential in T"


@register_mixer("slstm")
class SLSTM(HeadwiseRNN):
    """Head-wise sLSTM (exponential input gate, normaliser and stabiliser; state h, c, n, m)."""

    cell = "slstm"
    paper = "Beck et al. 2024, xLSTM (sLSTM); head-wise as in FlashRNN"
    complexity = "O(T D^2 / H), sequential in T"
