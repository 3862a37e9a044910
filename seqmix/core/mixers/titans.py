"""Titans' neural long-term memory as a mixer (Behrouz, Zhong, Mirrokni 2024, "Titans: Learning to
Memorize at Test Time"), in the three layouts of the paper's section 4: MAL, MAG and MAC.

The memory (every layout):

    q, k, v = SiLU(W_q x), SiLU(W_k x), SiLU(W_v x)      [B, T, H, K]; q, k (and v: see below) l2-normalised per head
    eta_t, alpha_t = sigmoid(W_eta x), sigmoid(W_alpha x); theta_t = max_lr sigmoid(W_theta x) (1 - eta_t)  per head
    S_t = eta_t S_{t-1} - theta_t grad l(M; k_t, v_t) ,  l = ||M(k_t) - v_t||^2     (eqs. 10, 12)
    M_t = (1 - alpha_t) M_{t-1} + S_t                                               (eq. 13)
    M(x)_t = M_t(q_t)   (the memory after token t's update)                          (eq. 15)

``M`` is a per-head MLP of ``memory_depth`` layers (SiLU between them, hidden width
``memory_expansion * head_dim``) whose initial weights are learned; the outer training
backpropagates through the inner updates. Gradients are taken at the memory at the start of
each chunk of ``chunk_size`` tokens (the paper's chunk-parallel training, section 3.2), chunks
aligned to the absolute position, so ``step`` and pieces equal ``forward`` for any chunk size;
``chunk_size=1`` is exact per-token gradient descent. Op: :func:`seqmix.kernels.titans.titans_memory`.

Layouts (``P`` the ``n_persistent`` learned persistent-memory tokens, eq. 19; ``gate(m, y) =
W_o (RMSNorm_head(m) * SiLU(W_r y))``, the non-linear gating that stands for the paper's ``y ⊗ m``:
the memory's read normalised per head with a learned scale, times a learned SiLU gate of the other branch):

- ``MAL`` (memory as a layer, eqs. 29-31 without the attention): ``out = gate(M([P, x]), x)``; the memory
  reads ``P`` before the sequence (a learned prefix, so ``init_state`` is the memory after them). The paper's
  MAL block is this mixer followed by a ``sliding_window`` mixer in the stack.
- ``MAG`` (memory as a gate, eqs. 26-28): ``y = SW-Attn([P, x])`` (the ``sliding_window`` mixer, ``window``
  keys), ``out = gate(M([P, x]), y)``. Both branches read ``P`` first; the state is the memory and the
  attention's KV window.
- ``MAC`` (memory as context, eqs. 21-25): ``x`` is cut into segments of ``segment_size`` tokens (aligned to the
  absolute position). For segment ``i``: ``h = M_{i-1}(q)`` (eq. 21, the memory as it was when the segment
  began, read without updating it); ``y = Attn([P, h, x_i])`` (eqs. 22-23, softmax attention with queries from
  the segment's tokens, every persistent token visible, ``h_j`` and ``x_j`` visible to token ``t`` for
  ``j <= t``); the memory then learns the attention outputs, ``M_t = M_{t-1}(y_t)`` (eq. 24, its q, k, v
  projected from ``y``), and ``out = gate(M_t(y_t), y)`` (eq. 25). The state is the memory, its weights at the
  segment's start and the attention keys and values of the segment so far (at most ``2 * segment_size``
  tokens, the persistent ones recomputed from the parameters): constant in T.

Short convolutions (``conv_size``, MAL and MAG): the paper puts a 1-D depthwise convolution after each of the q, k
and v projections (section 4.4, "following recent modern linear recurrent models"); with ``conv_size`` set, q, k and
v each pass a causal depthwise convolution of ``conv_size`` taps and SiLU (the :class:`ShortConvolution` GLA and
DeltaNet use) instead of the SiLU alone, and the state also carries the last ``conv_size - 1`` projections
(:class:`ConvMemory`). Off by default (the layer as first built here, its checkpoints and configs); refused for
MAC, whose memory reads the attention outputs of a segment.

Left out / changed: the short convolutions in MAC; the inner step theta_t is
dampened by ``1 - eta_t`` (still a data-dependent step, so within the paper's family of theta_t): momentum alone
multiplies the steady step by ``1 / (1 - eta)``, 8 at the initial eta, and a chunk adds its gradients at one base, so
undamped a chunk of aligned keys overshot and the memory diverged (the d_model 64 MQAR run: NaN at step ~126);
dampened, a chunk moves the memory by at most about ``2 max_lr chunk_size`` along a key, stable for ``max_lr *
chunk_size <= 1`` whatever eta learns (docs/titans.md, "Stability"); unlike the paper, v is
l2-normalised too (a deep memory's inner gradients grow with the targets and diverged on inputs of magnitude 100;
the output's head RMSNorm discards the scale anyway); the paper's parallel associative scan for the momentum (the
chunk form loops over chunks and uses closed-form [C, C] decay matrices inside each). MAC: the paper lets every
token of a segment attend to all of ``h``, but ``h_j`` reads ``x_j`` (a later token's query): that is a future
leak, so here token ``t`` sees ``h_{<=t}``; ``M*_t(y_t)`` of eq. 25 is read per token after its own update (the
segment's final memory would leak too). MAG: the paper's SW-Attn* keeps ``P`` visible to every query; here they
are the first keys of the window, seen by the first ``window - 1`` tokens only (the sliding-window kernel has no
always-visible prefix).
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seqmix.core.layers import HeadNormGate, QKVProjection, ShortConvs, merge_heads, split_heads
from seqmix.core.mixer import Mixer, State, check_int, register_mixer, state_dtype
from seqmix.core.mixers.sliding_window import SlidingWindowAttention, WindowState
from seqmix.kernels.titans import TITANS, MemoryState, memory_apply, titans_memory

LAYOUTS = ("MAL", "MAG", "MAC")


class ConvMemory(NamedTuple):
    """The memory of a layer with short convolutions (``conv_size``): its state and the convolutions' cache."""

    memory: MemoryState
    conv: Tensor  # [B, conv_size - 1, 3 D]: the last q, k, v projections, side by side


class MAGState(NamedTuple):
    """MAG's state: the memory (a :class:`ConvMemory` with short convolutions) and the attention's KV window."""

    memory: MemoryState | ConvMemory
    window: WindowState


class MACState(NamedTuple):
    """MAC's state: constant in T (a segment's keys at most)."""

    memory: MemoryState  # the memory, trained on the attention outputs
    retrieval: tuple[Tensor, ...]  # M_{i-1}: the memory's weights when the current segment began, [B, H, in, out]
    keys: Tensor  # [B, H, 2, n, K]: the attention keys of the segment's n tokens so far: of h (0) and of x (1)
    values: Tensor  # [B, H, 2, n, V]


@register_mixer("titans")
class TitansMemory(Mixer):
    """Titans' neural memory in the MAL, MAG or MAC layout (the module docstring has the equations).

    Args:
        memory_depth: layers of the per-head memory MLP (1: a linear memory; 2: the paper's deep memory).
        memory_expansion: hidden width of a deep memory as a multiple of the head dim (None: 2; refused with
            memory_depth=1).
        n_persistent: learned persistent-memory tokens (0: none): read by the memory before every sequence
            (MAL, MAG), and the first keys of the attention (MAG: of its window; MAC: of every segment).
        max_lr: the inner learning rate's upper bound (theta_t = max_lr * sigmoid(.) * (1 - eta_t)); 0 stops the
            memory learning (it then only decays by alpha). A chunk's gradients add up at one base, so the stable
            max_lr falls with chunk_size: keep max_lr * chunk_size <= 1 when keys may align (measured, T = 256, every
            key the same, the step gate open: 0.1 with chunks of 8 stays bounded for eta 0.5 to 0.98; 0.1 with chunks
            of 16 grows without bound at eta 0.5 for a linear memory). The default, 0.05 with the default chunks of
            16, keeps the product at 0.8.
        chunk_size: tokens whose gradients share one base memory (1: exact per-token descent).
        layout: "MAL" (memory as a layer), "MAG" (memory gated with sliding-window attention) or "MAC" (memory
            as the context of segment-wise attention).
        window: MAG's sliding-window attention: keys each query sees (None: 64; refused with another layout).
        segment_size: MAC's segments: tokens attended together (None: 64; refused with another layout).
        conv_size: taps of the short causal convolutions on the memory's q, k and v (the paper's; module
            docstring), or None for none. MAL and MAG only.
    """

    patterns = frozenset({"causal_self"})
    impls = TITANS.impls
    recurrent = True
    paper = "Behrouz, Zhong, Mirrokni 2024, Titans: Learning to Memorize at Test Time"
    complexity = "O(T C D + T D E)"
    # one tiny config per layout (deep memory, persistent tokens; MAG with short convolutions); depth 1 and small chunks: tests/core/test_titans.py
    test_configs = ({"n_heads": 2, "chunk_size": 16, "n_persistent": 3, "memory_expansion": 1},
                    {"n_heads": 2, "chunk_size": 16, "n_persistent": 3, "memory_expansion": 1, "layout": "MAG",
                     "window": 16, "conv_size": 3},
                    {"n_heads": 2, "chunk_size": 8, "n_persistent": 2, "memory_expansion": 1, "layout": "MAC",
                     "segment_size": 24})

    def __init__(self, d_model: int, *, n_heads: int = 4, causal: bool = True, impl: str = "auto",
                 memory_depth: int = 2, memory_expansion: int | None = None, n_persistent: int = 4, max_lr: float = 0.05,
                 chunk_size: int = 16, layout: Literal["MAL", "MAG", "MAC"] = "MAL", window: int | None = None,
                 segment_size: int | None = None, conv_size: int | None = None):
        super().__init__(d_model, n_heads=n_heads, causal=causal, impl=impl)
        name = type(self).__name__
        if layout not in LAYOUTS:
            raise ValueError(f"{name}: layout must be one of {LAYOUTS}, got {layout!r}")
        if window is not None and layout != "MAG":
            raise ValueError(f"{name}: window sizes MAG's sliding-window attention; layout={layout!r} has none: "
                             "leave it None or set layout='MAG'")
        if segment_size is not None and layout != "MAC":
            raise ValueError(f"{name}: segment_size cuts the sequence for MAC's attention; layout={layout!r} has none: "
                             "leave it None or set layout='MAC'")
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
                             f"at one base: larger steps diverge; 0.05 is the default), got {max_lr!r}")
        if conv_size is not None:
            check_int(name, "conv_size", conv_size, minimum=2, meaning="taps of the short convolutions; None for none")
            if layout == "MAC":
                raise ValueError(f"{name}: conv_size is for MAL and MAG, whose memory reads the layer's input; MAC's "
                                 "memory reads the attention outputs: leave conv_size None or set layout='MAL'/'MAG'")
        TITANS.check(name, impl, chunk_size=chunk_size)
        self.conv_size = conv_size
        self.memory_depth, self.n_persistent, self.max_lr = memory_depth, n_persistent, max_lr
        self.chunk_size = chunk_size
        self.layout = layout
        self.window = (check_int(name, "window", 64 if window is None else window,
                                 meaning="keys each query of MAG's sliding-window attention sees, e.g. 64")
                       if layout == "MAG" else None)
        self.segment_size = (check_int(name, "segment_size", 64 if segment_size is None else segment_size,
                                       meaning="tokens per MAC segment, e.g. 64") if layout == "MAC" else None)
        k = self.head_dim
        widths = [k, *([memory_expansion * k] * (memory_depth - 1)), k]  # in and out of each memory layer
        self.memory = nn.ParameterList(
            nn.Parameter(torch.randn(n_heads, i, o) / i**0.5) for i, o in zip(widths[:-1], widths[1:])
        )  # the learned initial memory, [H, in, out] per layer
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.convs = ShortConvs((d_model,) * 3, conv_size) if conv_size is not None else None  # on q, k, v
        self.gates = nn.Linear(d_model, 3 * n_heads)  # eta, theta, alpha logits per head
        with torch.no_grad():
            self.gates.bias.copy_(torch.tensor([2.0, 0.0, -6.0]).repeat_interleave(n_heads))
        self.persistent = nn.Parameter(torch.randn(n_persistent, d_model) * 0.02) if n_persistent else None
        self.output = HeadNormGate(d_model, n_heads, d_model, gate=True)
        if layout == "MAG":
            self.attention = SlidingWindowAttention(d_model, n_heads=n_heads, window=self.window)
        elif layout == "MAC":
            self.attention = QKVProjection(d_model, n_heads)
            self.attention_out = nn.Linear(d_model, d_model, bias=False)

    # ------------------------------------------------------------------ the memory
    def _memory_queries(self, x: Tensor) -> Tensor:
        """``x: [B, T, D]`` -> the memory's queries ``[B, T, H, K]`` (MAC's retrieval, eq. 21)."""
        b, t, _ = x.shape
        q = F.silu(F.linear(x, self.qkv.weight[: self.d_model])).view(b, t, self.n_heads, self.head_dim)  # [B, T, H, K]
        return F.normalize(q, dim=-1)

    def _memory_inputs(self, x: Tensor, conv: Tensor | None):
        """``x: [B, T, D]`` (and the short convolutions' cache) -> q, k, v ``[B, T, H, K]``, log eta, theta,
        log(1 - alpha) ``[B, T, H]`` and the convolutions' new cache (None without them)."""
        b, t, _ = x.shape
        projections = self.qkv(x).chunk(3, -1)  # q, k, v: [B, T, D] each
        if self.convs is None:
            projections = [F.silu(y) for y in projections]
        else:
            projections, conv = self.convs(projections, conv)  # conv + SiLU; cache [B, size - 1, 3 D]
        q, k, v = (F.normalize(y.view(b, t, self.n_heads, self.head_dim), dim=-1)
                   for y in projections)  # [B, T, D] -> [B, T, H, K] each
        eta, theta, alpha = self.gates(x).float().view(b, t, 3, self.n_heads).unbind(2)  # [B, T, H] each
        theta = self.max_lr * torch.sigmoid(theta) * torch.sigmoid(-eta)  # dampened: times 1 - eta_t
        return (q, k, v, F.logsigmoid(eta), theta, F.logsigmoid(-alpha)), conv

    def memory_state(self, batch_size: int, device: torch.device | str | None = None,
                     dtype: torch.dtype = torch.float32) -> MemoryState:
        """The learned initial memory, before the persistent tokens: ``S = 0``, weights ``[B, H, in, out]``."""
        weights = tuple(w.to(device=device, dtype=state_dtype(dtype))[None].expand(batch_size, *w.shape)
                        for w in self.memory)  # [H, in, out] -> [B, H, in, out]
        return MemoryState(weights, tuple(torch.zeros_like(w) for w in weights), weights, 0)

    def _run(self, x: Tensor, state: MemoryState | ConvMemory) -> tuple[Tensor, MemoryState | ConvMemory]:
        """The memory over ``x: [B, T, D]``: reads ``[B, T, H, V]`` and the state after (a :class:`ConvMemory` with
        short convolutions, a :class:`MemoryState` without)."""
        memory, conv = state if self.convs is not None else (state, None)
        inputs, conv = self._memory_inputs(x, conv)
        o, memory = titans_memory(*inputs, memory, chunk_size=self.chunk_size, impl=self.resolve_impl(x))
        return o, (memory if self.convs is None else ConvMemory(memory, conv))

    def _memory_after_persistent(self, batch_size: int, device, dtype) -> MemoryState | ConvMemory:
        """The memory after reading the persistent tokens (computed once, shared by the batch)."""
        n = 1 if self.persistent is not None else batch_size
        state = self.memory_state(n, device, dtype)
        if self.convs is not None:
            state = ConvMemory(state, self.convs.empty_cache(n, device, dtype))  # [B, size - 1, 3 D]
        if self.persistent is None:
            return state
        _, state = self._run(self.persistent.to(device=device)[None], state)  # the prefix: [1, N, D]
        memory = state.memory if self.convs is not None else state
        memory = MemoryState(*(tuple(w.expand(batch_size, *w.shape[1:]) for w in ws) for ws in memory[:3]),
                             memory.position)  # [1, H, in, out] -> [B, H, in, out]
        if self.convs is None:
            return memory
        return ConvMemory(memory, state.conv.expand(batch_size, -1, -1))  # [1, size - 1, 3 D] -> [B, ...]

    # ------------------------------------------------------------------ the layouts
    def init_state(self, batch_size: int, device: torch.device | str | None = None,
                   dtype: torch.dtype = torch.float32) -> State:
        """MAL: the memory after the persistent tokens; MAG: that and the attention's window after them; MAC: the
        learned initial memory (the persistent tokens are attention keys there) and an empty segment."""
        if self.layout == "MAC":
            memory = self.memory_state(batch_size, device, dtype)
            empty = torch.zeros(batch_size, self.n_heads, 2, 0, self.head_dim, device=device, dtype=dtype)
            return MACState(memory, memory.weights, empty, empty.clone())  # [B, H, 2, 0, K]
        memory = self._memory_after_persistent(batch_size, device, dtype)
        if self.layout == "MAL":
            return memory
        window = self.attention.init_state(batch_size, device, dtype)
        if self.persistent is not None:
            prefix = self.persistent.to(device=device)[None].expand(batch_size, -1, -1)  # [B, N, D]
            _, window = self.attention.mix(prefix, mask=None, state=window, return_state=True,
                                           impl=self.resolve_impl(prefix))
        return MAGState(memory, window)

    def _forward(self, x, *, context, mask, state, return_state):
        if state is None:
            state = self.init_state(x.shape[0], x.device, x.dtype)
        y, final = {"MAL": self._mal, "MAG": self._mag, "MAC": self._mac}[self.layout](x, state)
        return (y, final) if return_state else y

    def _mal(self, x: Tensor, state: MemoryState | ConvMemory) -> tuple[Tensor, MemoryState | ConvMemory]:
        o, final = self._run(x, state)
        return self.output(o.to(x.dtype), x), final

    def _mag(self, x: Tensor, state: MAGState) -> tuple[Tensor, MAGState]:
        o, memory = self._run(x, state.memory)  # M([P, x]): [B, T, H, V]
        y, window = self.attention.mix(x, mask=None, state=state.window, return_state=True,
                                       impl=self.resolve_impl(x))  # SW-Attn([P, x]): [B, T, D]
        return self.output(o.to(x.dtype), y), MAGState(memory, window)

    def _mac(self, x: Tensor, state: MACState) -> tuple[Tensor, MACState]:
        outputs, start, length = [], 0, x.shape[1]
        while start < length:  # the rest of the current segment, then whole segments
            cut = min(length - start, self.segment_size - state.memory.position % self.segment_size)
            y, state = self._mac_segment(x[:, start : start + cut], state)
            outputs.append(y)
            start += cut
        return torch.cat(outputs, 1), state

    def _mac_segment(self, x: Tensor, state: MACState) -> tuple[Tensor, MACState]:
        """Eqs. 21-25 on ``x: [B, L, D]``, the tokens of one segment (or the rest of one) after ``state``."""
        memory, retrieval, keys, values = state
        if memory.position % self.segment_size == 0:  # a new segment: read the memory it starts with, attend afresh
            retrieval, keys, values = memory.weights, keys[:, :, :, :0], values[:, :, :, :0]
        b, t, _ = x.shape
        h = self.n_heads
        q = self._memory_queries(x).transpose(1, 2).to(retrieval[0].dtype)  # [B, T, H, K] -> [B, H, T, K]
        retrieved = merge_heads(memory_apply(retrieval, q)).to(x.dtype)  # eq. 21: [B, H, T, V] -> [B, T, D]
        keys = torch.cat([keys.to(x.dtype), torch.stack([split_heads(self.attention.k(s), h) for s in (retrieved, x)],
                                                        2)], 3)  # [B, H, 2, n + T, K]
        values = torch.cat([values.to(x.dtype), torch.stack([split_heads(self.attention.v(s), h)
                                                             for s in (retrieved, x)], 2)], 3)  # [B, H, 2, n + T, V]
        n = keys.shape[3] - t  # the segment's tokens before this piece
        seen = torch.ones(t, n + t, dtype=torch.bool, device=x.device).tril(n)  # [T, n + T]: n + i sees j <= n + i
        visible = torch.cat([seen, seen], 1)  # [T, 2 (n + T)]: h_j and x_j alike
        k_all, v_all = keys.flatten(2, 3), values.flatten(2, 3)  # [B, H, 2 (n + T), K]: the h block, then the x block
        if self.persistent is not None:
            p = self.persistent.to(x.dtype)[None].expand(b, -1, -1)  # [B, N, D]
            k_all = torch.cat([split_heads(self.attention.k(p), h), k_all], 2)  # [B, H, N + 2 (n + T), K]
            v_all = torch.cat([split_heads(self.attention.v(p), h), v_all], 2)  # [B, H, N + 2 (n + T), V]
            visible = torch.cat([visible.new_ones(t, self.n_persistent), visible], 1)  # [T, N + 2 (n + T)]
        q = split_heads(self.attention.q(x), h)  # [B, H, T, K]
        scores = (q @ k_all.transpose(-1, -2) * self.head_dim**-0.5).masked_fill(~visible, float("-inf"))
        o = torch.softmax(scores, -1) @ v_all  # eqs. 22-23: [B, H, T, S] @ [B, H, S, V]; every token sees itself
        # (not F.scaled_dot_product_attention: its fused CPU backward has no derivative, and the naive memory
        # differentiates through it twice)
        y = self.attention_out(merge_heads(o))  # [B, H, T, V] -> [B, T, D]
        m, memory = self._run(y, memory)  # eq. 24: the memory learns y; m_t = M_t(q(y_t)) after token t's update
        return self.output(m.to(x.dtype), y), MACState(memory, retrieval, keys, values)  # eq. 25

    def state_size(self, seq_len: int) -> int:
        memory = sum(w.numel() for w in self.memory)  # one copy of the memory's weights: [H, in, out] per layer
        conv = 0 if self.convs is None else self.convs.state_size  # the q, k, v conv cache
        if self.layout == "MAG":
            return 3 * memory + conv + self.attention.state_size(seq_len)  # weights, momentum, base; conv; KV window
        if self.layout == "MAC":  # and the weights at the segment's start; a segment's keys and values of h and x
            return 4 * memory + 2 * 2 * self.segment_size * self.d_model
        return 3 * memory + conv

    def extra_repr(self) -> str:
        layout = {"MAL": "", "MAG": f", window={self.window}", "MAC": f", segment_size={self.segment_size}"}
        return (f"{super().extra_repr()}, memory_depth={self.memory_depth}, n_persistent={self.n_persistent}, "
                f"chunk_size={self.chunk_size}, layout={self.layout!r}{layout[self.layout]}, conv_size={self.conv_size}")
