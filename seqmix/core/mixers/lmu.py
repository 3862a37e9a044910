"""The Legendre Memory Unit as LMUFormer's token mixer.

Papers: Voelker, Kajić & Eliasmith 2019, "Legendre Memory Units: Continuous-Time Representation in
Recurrent Neural Networks" (the memory); Chilkuri & Eliasmith 2021, "Parallelizing Legendre Memory
Unit Training" (LMU-FFT: no recurrent connections into u, so the memory trains as a convolution);
Liu, Datta, Gupta, ... 2024, "LMUFormer: Low Complexity Yet Powerful Spiking Model With Legendre
Memory Units" (the LMU as a transformer block's mixer).

Per head h (``n_heads`` memories, each of ``order`` N Legendre coefficients):

    u_t = W_u x_t + b_u                            [B, T, H]   one scalar input per head
    m_t = Ab m_{t-1} + Bb u_t                       [B, T, H, N]  (Voelker et al. eq. 1-2, zero-order hold)
    y_t = ReLU(W_h [m_t ; x_t] + b_h)              [B, T, D]   (LMU-FFT / LMUFormer's hidden state h_t)

``(A, B)`` is the Legendre delay system of window ``theta`` tokens, discretised once in float64
(:mod:`seqmix.kernels.lmu`): fixed buffers, not parameters, and kept in float64 when the module is
cast (``.to(torch.bfloat16)`` casts the projections only). The memory runs through
:func:`seqmix.kernels.lmu.lmu_memory`: ``naive`` is the recurrence loop; ``chunk`` (``"auto"``'s form)
the causal convolution with the impulse response blocked into matmuls over chunks (linear in T);
``fft`` the same convolution by one FFT (LMU-FFT's form). ``step`` is the recurrence, one token.
``W_h [m_t ; x_t]`` is computed as ``W_h^m m_t + W_h^x x_t`` (column blocks of the one ``hidden`` weight),
without building the concatenation.

Choices and what is left out: the input is projected per head (H scalars, not one per channel:
the memory is ``H N`` floats and ``W_h`` is ``(H N + D) x D``); ``u`` is linear (Voelker's encoder
``e_x^T x``; LMU-FFT's ReLU on u is dropped, it would let the memory see only positive input); no
encoders from ``h_{t-1}`` or ``m_{t-1}`` into u (LMU-FFT drops them too: they would make the memory
non-linear and sequential); LMUFormer's convolutional patch embedding
(:class:`seqmix.core.embeddings.ConvPatchEmbedding`, before the first block), its channel mixer and
the spiking variant are not part of the mixer. Only ``causal_self``: the memory is a causal system.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seqmix.core.mixer import Mixer, State, register_mixer
from seqmix.kernels.lmu import LMU, legendre_delay, lmu_memory, zero_order_hold


@register_mixer("lmu")
class LegendreMemoryUnit(Mixer):
    """LMU mixer: a fixed Legendre delay memory per head, read by a learned projection.

    Args:
        n_heads: independent memories, each fed one learned scalar of ``x_t`` per token.
        order: N, Legendre coefficients per memory (the paper's d; more = finer detail of the window).
        theta: the window the memory represents, in tokens (> 0; it need not be an integer).
    """

    patterns = frozenset({"causal_self"})
    impls = LMU.impls
    recurrent = True
    paper = ("Voelker et al. 2019 (Legendre Memory Units); Chilkuri & Eliasmith 2021 (LMU-FFT); "
             "Liu et al. 2024 (LMUFormer)")
    complexity = "O(T log T H N + T D (H N + D))"
    test_configs = ({"n_heads": 2, "order": 8, "theta": 16.0}, {"n_heads": 4, "order": 16, "theta": 50.0})

    def __init__(self, d_model: int, *, n_heads: int = 4, causal: bool = True, impl: str = "auto",
                 order: int = 64, theta: float = 64.0):
        super().__init__(d_model, n_heads=n_heads, causal=causal, impl=impl)
        name = type(self).__name__
        if not isinstance(order, int) or not 1 <= order <= 1024:
            raise ValueError(f"{name}: order must be an int in 1 .. 1024 (Legendre coefficients per memory), "
                             f"got {order!r}")
        if not isinstance(theta, (int, float)) or not 0 < theta < float("inf"):
            raise ValueError(f"{name}: theta must be a finite number > 0 (the memory's window in tokens), "
                             f"got {theta!r}")
        self.order = order
        self.theta = float(theta)
        a_bar, b_bar = zero_order_hold(*legendre_delay(order, self.theta))  # float64
        self.register_buffer("a_bar", a_bar, persistent=False)  # [N, N]; rebuilt from order and theta
        self.register_buffer("b_bar", b_bar, persistent=False)  # [N]
        self.u_proj = nn.Linear(d_model, n_heads)
        self.hidden = nn.Linear(n_heads * order + d_model, d_model)

    def _apply(self, fn, recurse=True):
        """Parameters follow ``.to()`` / ``.half()``; the memory's fixed system stays float64 (on the new device)."""
        system = self.a_bar, self.b_bar
        super()._apply(fn, recurse)
        self.a_bar, self.b_bar = (s.to(device=new.device) for s, new in zip(system, (self.a_bar, self.b_bar)))
        return self

    def _forward(self, x, *, context, mask, state, return_state):
        b, t, _ = x.shape
        u = self.u_proj(x)  # [B, T, H]
        m, final = lmu_memory(u, self.a_bar, self.b_bar, initial_state=state, output_final_state=return_state,
                              impl=self.resolve_impl(x))  # [B, T, H, N]
        y = self._read(m.reshape(b, t, -1), x)  # [B, T, H, N] -> [B, T, H*N] -> [B, T, D]
        return (y, final) if return_state else y

    def _read(self, m: Tensor, x: Tensor) -> Tensor:
        """``ReLU(W_h [m ; x] + b_h)`` for ``m: [..., H*N]``, ``x: [..., D]``, without the concatenation."""
        weight, split = self.hidden.weight, self.n_heads * self.order
        return F.relu(F.linear(x, weight[:, split:], self.hidden.bias) + F.linear(m, weight[:, :split]))

    def _step(self, x_t: Tensor, state: State) -> tuple[Tensor, State]:
        """The recurrence for one token ``x_t: [B, D]`` (whatever ``impl``: one matmul, no tables)."""
        m, final = lmu_memory(self.u_proj(x_t)[:, None], self.a_bar, self.b_bar, initial_state=state,
                              output_final_state=True, impl="naive")  # [B, 1, H] -> [B, 1, H, N]
        return self._read(m.reshape(x_t.shape[0], -1), x_t), final  # [B, 1, H, N] -> [B, H*N] -> [B, D]

    def init_state(self, batch_size: int, device: torch.device | str | None = None,
                   dtype: torch.dtype = torch.float32) -> State:
        state_dtype = torch.float64 if dtype == torch.float64 else torch.float32
        return torch.zeros(batch_size, self.n_heads, self.order, device=device, dtype=state_dtype)  # [B, H, N]

    def state_size(self, seq_len: int) -> int:
        return self.n_heads * self.order  # m: [H, N], whatever the length

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, order={self.order}, theta={self.theta}"
