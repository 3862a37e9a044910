"""Mamba (Gu & Dao 2023, "Mamba: Linear-Time Sequence Modeling with Selective State Spaces"; the
survey Mamba-360, Patro & Agneeswaran 2024, places it among the selective SSMs): the Mamba-1 block.

With E = expand * d_model channels and N = d_state (Algorithm 2 of the paper, section 3.4's block)::

    x, z    = W_in u                                     [B, T, E] each
    x       = SiLU(causal depthwise conv_k(x))           (short convolution, k = conv_size)
    delta   = softplus(W_dt (W_delta x) + b_dt)          [B, T, E]   low-rank (dt_rank), input-dependent
    B, C    = W_B x, W_C x                               [B, T, N]   per token
    A       = -exp(A_log)                                [E, N]      diagonal, S4D-real init A_en = -(n + 1)
    h_t     = exp(delta_t A) h_{t-1} + delta_t B_t x_t   (eq. 2a with the ZOH A of eq. 4 and the Euler B of sec. 3.5)
    y_t     = C_t h_t + D x_t                            (eq. 2b plus the skip D)
    out     = W_out (y * SiLU(z))

``b_dt`` is initialised as in the paper (section 3.6 / its code): ``softplus(b_dt)`` log-uniform
in ``[dt_min, dt_max]``, floored at ``dt_init_floor``; ``W_dt`` uniform in ``+-dt_rank^-0.5``.
Left out: the exact ZOH for B (the paper's code uses the Euler step too), the residual
block with its RMSNorm (the model's blocks add their own), the conv bias (the shared
``ShortConvolution`` has none), complex A (S4D-Lin) and the fused GPU kernel.

The scan is :func:`seqmix.kernels.selective_scan.selective_scan` (``"naive"`` token by token,
``"chunk"`` the two-level chunked scan; ``"auto"`` is ``"chunk"``). Patterns: ``causal_self``
only (a bidirectional Mamba is another architecture). Recurrent: the state is the conv cache
``[B, conv_size - 1, E]`` and the SSM state ``[B, E, N]`` (fp32), the same size for any T.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seqmix.core.layers import ShortConvolution
from seqmix.core.mixer import Mixer, register_mixer
from seqmix.kernels.selective_scan import SELECTIVE_SCAN, selective_scan

# (short-conv cache [B, conv_size - 1, E] in the input dtype, SSM state [B, E, N] in fp32)
MambaState = tuple[Tensor, Tensor]


@register_mixer("mamba")
class Mamba(Mixer):
    """The Mamba-1 block's mixer, with the paper's defaults (d_state 16, expand 2, conv 4, dt_rank d_model / 16).

    Args:
        d_state: N, the state size per channel.
        expand: E = expand * d_model channels inside the block.
        conv_size: width of the causal depthwise convolution (>= 2).
        dt_rank: rank of the step-size projection; None: ceil(d_model / 16).
        dt_min / dt_max / dt_init_floor: range of the initial step sizes softplus(b_dt).
        chunk_size: tokens per chunk of the chunked scan (any positive int).
    """

    patterns = frozenset({"causal_self"})
    impls = SELECTIVE_SCAN.impls
    recurrent = True
    paper = "Gu & Dao 2023, Mamba: Linear-Time Sequence Modeling with Selective State Spaces"
    complexity = "O(T E N)"
    test_configs = (
        {"d_state": 4, "chunk_size": 16},
        {"d_state": 8, "expand": 1, "conv_size": 2, "dt_rank": 3, "chunk_size": 7},
    )

    def __init__(self, d_model: int, *, causal: bool = True, impl: str = "auto", d_state: int = 16, expand: int = 2,
                 conv_size: int = 4, dt_rank: int | None = None, dt_min: float = 0.001, dt_max: float = 0.1,
                 dt_init_floor: float = 1e-4, chunk_size: int = 256):
        super().__init__(d_model, causal=causal, impl=impl)
        name = type(self).__name__
        dt_rank = math.ceil(d_model / 16) if dt_rank is None else dt_rank
        for arg, value, low in (("d_state", d_state, 1), ("expand", expand, 1), ("conv_size", conv_size, 2),
                                ("dt_rank", dt_rank, 1)):
            if not isinstance(value, int) or value < low:
                raise ValueError(f"{name}: {arg} must be an int >= {low}, got {value!r}")
        if not (dt_init_floor > 0 and 0 < dt_min <= dt_max):
            raise ValueError(f"{name}: need 0 < dt_min <= dt_max and dt_init_floor > 0, got dt_min={dt_min}, "
                             f"dt_max={dt_max}, dt_init_floor={dt_init_floor}")
        SELECTIVE_SCAN.check(name, impl, chunk_size=chunk_size)
        self.d_state, self.inner, self.conv_size, self.chunk_size = d_state, expand * d_model, conv_size, chunk_size
        self.in_proj = nn.Linear(d_model, 2 * self.inner, bias=False)
        self.conv = ShortConvolution(self.inner, conv_size)
        self.x_proj = nn.Linear(self.inner, dt_rank + 2 * d_state, bias=False)  # delta (low rank), B, C
        self.dt_proj = nn.Linear(dt_rank, self.inner, bias=True)
        self.A_log = nn.Parameter(torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(self.inner, 1))
        self.D = nn.Parameter(torch.ones(self.inner))
        self.out_proj = nn.Linear(self.inner, d_model, bias=False)
        with torch.no_grad():
            nn.init.uniform_(self.dt_proj.weight, -dt_rank ** -0.5, dt_rank ** -0.5)
            log_dt = torch.rand(self.inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
            dt = log_dt.exp().clamp(min=dt_init_floor)
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # softplus^-1(dt)

    def _forward(self, x, *, context, mask, state, return_state):
        return self.mix(x, state=state, return_state=return_state, impl=self.resolve_impl(x))

    def mix(self, x: Tensor, *, state: MambaState | None, return_state: bool,
            impl: str) -> Tensor | tuple[Tensor, MambaState]:
        conv_cache, ssm = state if state is not None else (None, None)
        u, z = self.in_proj(x).chunk(2, -1)  # [B, T, 2E] -> 2 x [B, T, E]
        u, conv_cache = self.conv(u, conv_cache)  # causal depthwise conv + SiLU
        dt, B, C = self.x_proj(u).split([self.dt_proj.in_features, self.d_state, self.d_state], -1)
        delta = F.softplus(self.dt_proj(dt))  # [B, T, E]
        y, ssm = selective_scan(u, delta, -torch.exp(self.A_log), B, C, self.D, initial_state=ssm,
                                output_final_state=return_state, chunk_size=self.chunk_size, impl=impl)
        out = self.out_proj(y * F.silu(z))
        return (out, (conv_cache, ssm)) if return_state else out

    def init_state(self, batch_size: int, device: torch.device | str | None = None,
                   dtype: torch.dtype = torch.float32) -> MambaState:
        ssm_dtype = torch.float64 if dtype == torch.float64 else torch.float32
        return (torch.zeros(batch_size, self.conv_size - 1, self.inner, device=device, dtype=dtype),
                torch.zeros(batch_size, self.inner, self.d_state, device=device, dtype=ssm_dtype))

    def _step(self, x_t: Tensor, state: MambaState) -> tuple[Tensor, MambaState]:
        y, state = self.mix(x_t[:, None], state=state, return_state=True, impl="naive")  # one token: the recurrence
        return y[:, 0], state

    def state_size(self, seq_len: int) -> int:
        return self.inner * self.d_state + (self.conv_size - 1) * self.inner

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, d_state={self.d_state}, inner={self.inner}, conv_size={self.conv_size}, "
                f"chunk_size={self.chunk_size}")
