"""Titans' neural long-term memory as a mixer (Behrouz, Zhong, Mirrokni 2024, "Titans: Learning to
Memorize at Test Time"), in the MAL layout (memory as a layer).

    q, k, v = SiLU(W_q x), SiLU(W_k x), SiLU(W_v x)      [B, T, H, K]; q, k (and v: see below) l2-normalised per head
    eta_t, theta_t, alpha_t = sigmoid(W_eta x), max_lr * sigmoid(W_theta x), sigmoid(W_alpha x)   per head
    S_t = eta_t S_{t-1} - theta_t grad l(M; k_t, v_t) ,  l = ||M(k_t) - v_t||^2     (eqs. 10, 12)
    M_t = (1 - alpha_t) M_{t-1} + S_t                                               (eq. 13)
    y_t = M_t(q_t)   (the memory after token t's update)                             (eq. 15)
    out = W_o ( RMSNorm_head(y) * SiLU(W_r x) )

``M`` is a per-head MLP of ``memory_depth`` layers (SiLU between them, hidden width
``memory_expansion * head_dim``) whose initial weights are learned; the outer training
backpropagates through the inner updates. Gradients are taken at the memory at the start of
each chunk of ``chunk_size`` tokens (the paper's chunk-parallel training, section 3.2), chunks
aligned to the absolute position, so ``step`` and pieces equal ``forward`` for any chunk size;
``chunk_size=1`` is exact per-token gradient descent. Op: :func:`seqmix.kernels.titans.titans_memory`.

Persistent memory (eq. 19): ``n_persistent`` learned tokens are read by the memory before the
sequence (a learned prefix), so the state a sequence starts from (``init_state``) is the memory
after them.

Layouts: only ``MAL`` exists here: the memory is one mixer, and the paper's MAL block is this
mixer followed by a sliding-window attention mixer in the stack (``sliding_window``). ``MAC`` (memory
as context: segment-wise attention over [persistent, retrieved memory, segment]) and ``MAG``
(memory gated with sliding-window attention) are refused with a ValueError. Left out: the short
depthwise convolutions after the q/k/v projections; unlike the paper, v is l2-normalised too (a deep
memory's inner gradients grow with the targets and diverged on inputs of magnitude 100; the output's head
RMSNorm discards the scale anyway); and the paper's parallel associative scan for the
momentum (the chunk form loops over chunks and uses closed-form [C, C] decay matrices inside each).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from seqmix.core.layers import HeadNormGate
from seqmix.core.mixer import Mixer, State, register_mixer, state_dtype
from seqmix.kernels.titans import TITANS, MemoryState, titans_memory

LAYOUTS = ("MAL", "MAC", "MAG")


@register_mixer("titans")
class TitansMemory(Mixer):
    """Titans' neural memory, MAL layout.

    Args:
        memory_depth: layers of the per-head memory MLP (1: a linear memory; 2: the paper's deep memory).
        memory_expansion: hidden width of a deep memory as a multiple of the head dim (None: 2; refused with
            memory_depth=1).
        n_persistent: learned persistent-memory tokens read before every sequence (0: none).
        max_lr: the inner learning rate's upper bound (theta_t = max_lr * sigmoid(.)); 0 stops the memory learning
            (it then only decays by alpha). A chunk's gradients add up at one base, so the stable max_lr falls
            with chunk_size; measured at T = 4096 (d_model 32, 2 heads): 0.1 with chunks of 16 stays finite, 0.1 with
            chunks of 64 and 0.2 with chunks of 16 diverge.
        chunk_size: tokens whose gradients share one base memory (1: exact per-token descent).
        layout: "MAL" (memory as a layer); "MAC" and "MAG" are not implemented.
    """

    patterns = frozenset({"causal_self"})
    impls = TITANS.impls
    recurrent = True
    paper = "Behrouz, Zhong, Mirrokni 2024, Titans: Learning to Memorize at Test Time"
    complexity = "O(T C D + T D E)"
    # one tiny config (a deep memory, persistent tokens); depth 1 and small chunks: tests/core/test_titans.py
    test_configs = ({"n_heads": 2, "chunk_size": 16, "n_persistent": 3, "memory_expansion": 1},)

    def __init__(self, d_model: int, *, n_heads: int = 4, causal: bool = True, impl: str = "auto",
                 memory_depth: int = 2, memory_expansion: int | None = None, n_persistent: int = 4, max_lr: float = 0.1,
                 chunk_size: int = 16, layout: Literal["MAL", "MAC", "MAG"] = "MAL"):
        super().__init__(d_model, n_heads=n_heads, causal=causal, impl=impl)
        name = type(self).__name__
        if layout not in LAYOUTS:
            raise ValueError(f"{name}: layout must be one of {LAYOUTS}, got {layout!r}")
        if layout != "MAL":
            raise ValueError(f"{name}: layout={layout!r} is not implemented; only 'MAL' (memory as a layer) exists: "
                             "stack titans with a sliding_window mixer for the paper's MAL block")
        if not isinstance(memory_depth, int) or memory_depth not in (1, 2):
            raise ValueError(f"{name}: memory_depth must be 1 (linear memory) or 2 (MLP), got {memory_depth!r}")
        if memory_expansion is not None and memory_depth == 1:
            raise ValueError(f"{name}: memory_expansion sizes a deep memory's hidden layer; a linear memory "
                             "(memory_depth=1) has none: leave it None")
        memory_expansion = 2 if memory_expansion is None else memory_expansion
        if not isinstance(memory_expansion, int) or memory_expansion < 1:
            raise ValueError(f"{name}: memory_expansion must be a positive int, got {memory_expansion!r}")
        if not isinstance(n_persistent, int) or n_persistent < 0:
            raise ValueError(f"{name}: n_persistent must be an int >= 0, got {n_persistent!r}")
        if not (isinstance(max_lr, (int, float)) and 0 <= max_lr <= 1):
            raise ValueError(f"{name}: max_lr must be in [0, 1] (keys are unit vectors and a chunk's gradients add up "
                             f"at one base: larger steps diverge; 0.1 is the default), got {max_lr!r}")
        TITANS.check(name, impl, chunk_size=chunk_size)
        self.memory_depth, self.n_persistent, self.max_lr = memory_depth, n_persistent, max_lr
        self.chunk_size = chunk_size
        self.layout = layout
        k = self.head_dim
        widths = [k, *([memory_expansion * k] * (memory_depth - 1)), k]  # in and out of each memory layer
        self.memory = nn.ParameterList(
            nn.Parameter(torch.randn(n_heads, i, o) / i**0.5) for i, o in zip(widths[:-1], widths[1:])
        )  # the learned initial memory, [H, in, out] per layer
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.gates = nn.Linear(d_model, 3 * n_heads)  # eta, theta, alpha logits per head
        with torch.no_grad():
            self.gates.bias.copy_(torch.tensor([2.0, 0.0, -6.0]).repeat_interleave(n_heads))
        self.persistent = nn.Parameter(torch.randn(n_persistent, d_model) * 0.02) if n_persistent else None
        self.output = HeadNormGate(d_model, n_heads, d_model, gate=True)

    def _memory_inputs(self, x):
        """``x: [B, T, D]`` -> q, k, v ``[B, T, H, K]`` and log eta, theta, log(1 - alpha) ``[B, T, H]``."""
        b, t, _ = x.shape
        q, k, v = F.silu(self.qkv(x)).view(b, t, 3, self.n_heads, self.head_dim).unbind(2)  # [B, T, H, K] each
        q, k, v = F.normalize(q, dim=-1), F.normalize(k, dim=-1), F.normalize(v, dim=-1)
        eta, theta, alpha = self.gates(x).float().view(b, t, 3, self.n_heads).unbind(2)  # [B, T, H] each
        return q, k, v, F.logsigmoid(eta), self.max_lr * torch.sigmoid(theta), F.logsigmoid(-alpha)

    def memory_state(self, batch_size: int, device: torch.device | str | None = None,
                     dtype: torch.dtype = torch.float32) -> MemoryState:
        """The learned initial memory, before the persistent tokens: ``S = 0``, weights ``[B, H, in, out]``."""
        weights = tuple(w.to(device=device, dtype=state_dtype(dtype))[None].expand(batch_size, *w.shape)
                        for w in self.memory)  # [H, in, out] -> [B, H, in, out]
        return MemoryState(weights, tuple(torch.zeros_like(w) for w in weights), weights, 0)

    def _run(self, x, state: MemoryState):
        return titans_memory(*self._memory_inputs(x), state, chunk_size=self.chunk_size, impl=self.resolve_impl(x))

    def init_state(self, batch_size: int, device: torch.device | str | None = None,
                   dtype: torch.dtype = torch.float32) -> State:
        """The memory after reading the persistent tokens (computed once, shared by the batch)."""
        if self.persistent is None:
            return self.memory_state(batch_size, device, dtype)
        prefix = self.persistent.to(device=device)[None]  # [1, N, D]
        _, state = self._run(prefix, self.memory_state(1, device, dtype))
        return MemoryState(*(tuple(w.expand(batch_size, *w.shape[1:]) for w in ws) for ws in state[:3]),
                           state.position)  # [1, H, in, out] -> [B, H, in, out]

    def _forward(self, x, *, context, mask, state, return_state):
        if state is None:
            state = self.init_state(x.shape[0], x.device, x.dtype)
        o, final = self._run(x, state)
        y = self.output(o.to(x.dtype), x)
        return (y, final) if return_state else y

    def state_size(self, seq_len: int) -> int:
        return 3 * sum(w.numel() for w in self.memory)  # weights, momentum, chunk base: [H, in, out] each

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, memory_depth={self.memory_depth}, n_persistent={self.n_persistent}, "
                f"chunk_size={self.chunk_size}, layout={self.layout!r}")
