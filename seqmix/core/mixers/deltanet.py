"""DeltaNet: linear attention whose memory is written with the delta rule.

Papers: Schlag, Irie & Schmidhuber 2021, "Linear Transformers Are Secretly Fast Weight
Programmers" (the delta rule); Yang, Wang, Zhang, Shen & Kim 2024, "Parallelizing Linear
Transformers with the Delta Rule over Sequence Length" (the chunked WY/UT form, and this
layer: short convolutions, SiLU + L2-normalised q/k, per-head output RMSNorm).

Per head, with ``k_t`` L2-normalised and ``beta_t = sigmoid(W_beta x_t)`` in (0, 1)::

    S_t = S_{t-1} + beta_t k_t^T (v_t - k_t S_{t-1})        o_t = q_t S_t / sqrt(K)

The kernel is ``seqmix.kernels.delta_rule.chunk_delta_rule``; the mixer's ``impl`` goes
straight to it (``"naive"`` token by token, ``"chunk"`` the WY/UT form, ``"triton"`` the GPU
kernel, whose chunk sizes and head dims are checked in ``__init__``). Recurrent: the state is ``(S: [B, H, K, V] fp32, conv cache)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seqmix.core.layers import ShortConvs
from seqmix.core.mixer import Mixer, register_mixer, state_dtype
from seqmix.kernels.delta_rule import DELTA_RULE, chunk_delta_rule

# (memory S [B, H, K, V] in fp32, short-conv cache [B, conv_size - 1, 3D] or None)
DeltaState = tuple[Tensor, Tensor | None]


@register_mixer("deltanet")
class DeltaNet(Mixer):
    """DeltaNet layer: q/k/v projections (+ short conv), SiLU, L2-norm q/k, sigmoid beta, delta rule."""

    patterns = frozenset({"causal_self"})
    impls = DELTA_RULE.impls
    recurrent = True
    paper = ("Schlag et al. 2021 (fast weight programmers); Yang et al. 2024, "
             "Parallelizing Linear Transformers with the Delta Rule over Sequence Length")
    complexity = "O(T C D + T D K)"
    test_configs = ({"n_heads": 2, "chunk_size": 16}, {"n_heads": 4, "chunk_size": 16, "conv_size": None, "gate": True})

    def __init__(self, d_model: int, *, n_heads: int = 4, causal: bool = True, impl: str = "auto",
                 conv_size: int | None = 4, gate: bool = False, chunk_size: int = 64, norm_eps: float = 1e-5):
        super().__init__(d_model, n_heads=n_heads, causal=causal, impl=impl)
        self.triton_refusal = DELTA_RULE.check("DeltaNet", impl, chunk_size=chunk_size,
                                               head_dims={"d_model / n_heads": self.head_dim})
        if conv_size is not None and (not isinstance(conv_size, int) or conv_size < 2):
            raise ValueError(f"DeltaNet: conv_size must be an int >= 2 or None (no short conv), got {conv_size!r}")
        self.chunk_size = chunk_size
        self.conv_size = conv_size
        # Separate q, k, v projections and convs: [B, T, D] pieces rather than one [B, T, 3D]
        # tensor, which on the CPU is large enough to be page-faulted in afresh on every call.
        self.q, self.k, self.v = (nn.Linear(d_model, d_model, bias=False) for _ in range(3))
        self.convs = ShortConvs((d_model,) * 3, conv_size) if conv_size is not None else None
        self.beta = nn.Linear(d_model, n_heads, bias=False)
        self.norm = nn.RMSNorm(self.head_dim, eps=norm_eps)  # per head
        self.gate = nn.Linear(d_model, d_model, bias=False) if gate else None
        self.out = nn.Linear(d_model, d_model, bias=False)

    def _forward(self, x, *, context, mask, state, return_state):
        return self.mix(x, state=state, return_state=return_state, impl=self.resolve_impl(x))

    def mix(self, x: Tensor, *, state: DeltaState | None, return_state: bool,
            impl: str) -> Tensor | tuple[Tensor, DeltaState]:
        b, t, d = x.shape
        memory, conv_cache = state if state is not None else (None, None)
        branches = [self.q(x), self.k(x), self.v(x)]  # 3 x [B, T, D]
        if self.convs is None:
            branches = [F.silu(y) for y in branches]
        else:
            branches, conv_cache = self.convs(branches, conv_cache)  # causal conv + SiLU; [B, size-1, 3D]
        q, k, v = (y.view(b, t, self.n_heads, self.head_dim) for y in branches)  # [B, T, D] -> [B, T, H, K]
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        beta = torch.sigmoid(self.beta(x))  # [B, T, H]
        o, memory = chunk_delta_rule(q, k, v, beta, initial_state=memory, output_final_state=return_state,
                                     chunk_size=self.chunk_size, impl=impl)  # [B, T, H, V]
        o = self.norm(o).reshape(b, t, d)  # [B, T, H, V] -> [B, T, D]
        if self.gate is not None:
            o = o * F.silu(self.gate(x))
        y = self.out(o)
        return (y, (memory, conv_cache)) if return_state else y

    def init_state(self, batch_size: int, device: torch.device | str | None = None,
                   dtype: torch.dtype = torch.float32) -> DeltaState:
        memory = torch.zeros(batch_size, self.n_heads, self.head_dim, self.head_dim, device=device,
                             dtype=state_dtype(dtype))  # [B, H, K, V]
        conv_cache = None if self.convs is None else self.convs.empty_cache(batch_size, device, dtype)  # [B, size - 1, 3D]
        return memory, conv_cache

    def _step(self, x_t: Tensor, state: DeltaState) -> tuple[Tensor, DeltaState]:
        y, state = self.mix(x_t[:, None], state=state, return_state=True, impl="naive")  # one token: the recurrence
        return y[:, 0], state

    def state_size(self, seq_len: int) -> int:
        conv = 0 if self.convs is None else self.convs.state_size
        return self.n_heads * self.head_dim * self.head_dim + conv
