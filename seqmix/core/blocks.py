"""Blocks that take any mixer: the pre-norm residual block and encoder / decoder stacks.

A model is built from a *mixer factory* ``Callable[[int], Mixer]`` (given ``d_model``,
it returns a new mixer), which is what LightningCLI builds from a config entry
``{class_path: seqmix.core.mixers.gla.GatedLinearAttention, init_args: {n_heads: 4}}``,
or from a registry name with :func:`mixer_factory`.

``gating="gru"`` replaces the residual sum by GTrXL's GRU-type gate (Parisotto et al.,
"Stabilizing Transformers for Reinforcement Learning"), initialised close to identity.

Decoding: a block's state is its mixer's state, or for a decoder block (one with a cross
mixer) a :class:`DecoderBlockState` that also holds the cross mixer's projected context.
``MixerStack.forward(..., return_state=True)`` prefills a prompt, ``MixerStack.step``
continues token by token; ``seqmix.core.decoding.generate`` drives both.

EchoAtt (Rajabzadeh et al. 2024, "Attend, Copy, then Adjust"): ``MixerStack(share_attention={2: 1, 3: 1})``
makes layers 2 and 3 reuse the softmax probabilities of layer 1 (each applies them to its own values; its
q/k projections are deleted), in ``forward`` and in ``step`` (the shared layers cache their values only).
The paper's distillation loss from the unshared teacher is :func:`seqmix.core.distill.echo_distill_loss`;
``MixerStack.hidden_states`` gives the per-layer outputs it compares. docs/echoatt.md.
"""

from __future__ import annotations

from functools import partial
from typing import Callable, Literal, NamedTuple

import torch
from torch import Tensor, nn

from seqmix.core.layers import srms_norm
from seqmix.core.mixer import ContextCache, Mixer, State, build_mixer, check_int

MixerFactory = Callable[[int], Mixer]


class DecoderBlockState(NamedTuple):
    """A decoder block's state: its self mixer's state and its cross mixer's projected context."""

    mixer: State
    cross: ContextCache


def mixer_factory(name: str, **arguments: object) -> MixerFactory:
    """A factory for the registered mixer ``name``: ``mixer_factory("gla", n_heads=4)(256)``."""
    return partial(build_mixer, name, **arguments)


NormKind = Literal["layernorm", "rmsnorm", "srmsnorm"]  # srmsnorm: TransNormerLLM's simple RMSNorm (no scale)
ChannelMixerKind = Literal["mlp", "glu", "sglu"]  # sglu: TransNormerLLM's simple GLU (no activation)


def make_norm(kind: NormKind, d_model: int) -> nn.Module:
    if kind == "layernorm":
        return nn.LayerNorm(d_model)
    if kind == "rmsnorm":
        return nn.RMSNorm(d_model)
    if kind == "srmsnorm":  # TransNormerLLM's simple RMSNorm: no learned scale
        return srms_norm(d_model)
    raise ValueError(f"norm={kind!r} is unknown; choose 'layernorm', 'rmsnorm' or 'srmsnorm'")


class ChannelMixer(nn.Module):
    """The position-wise feed-forward: ``"mlp"`` (Linear-GELU-Linear), ``"glu"`` (SwiGLU) or ``"sglu"``
    (TransNormerLLM's simple GLU, no activation: ``(x W1 * x W2) W3``)."""

    def __init__(self, d_model: int, *, hidden_ratio: float = 4.0, kind: ChannelMixerKind = "glu",
                 dropout: float = 0.0):
        super().__init__()
        if kind not in ("mlp", "glu", "sglu"):
            raise ValueError(f"channel mixer kind={kind!r} is unknown; choose 'mlp', 'glu' or 'sglu'")
        hidden = int(d_model * hidden_ratio)
        if kind != "mlp":
            hidden = int(2 * hidden / 3)  # keep the parameter count of the plain MLP
        self.kind = kind
        self.up = nn.Linear(d_model, hidden if kind == "mlp" else 2 * hidden)
        self.down = nn.Linear(hidden, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        h = self.up(x)
        if self.kind != "mlp":
            a, b = h.chunk(2, dim=-1)
            h = (nn.functional.silu(a) if self.kind == "glu" else a) * b
        else:
            h = nn.functional.gelu(h)
        return self.down(self.dropout(h))


class GRUGate(nn.Module):
    """GTrXL's gate ``g(x, y)``: a GRU update of the stream ``x`` by the sublayer output ``y``."""

    def __init__(self, d_model: int, bias_init: float = 2.0):
        super().__init__()
        self.w_r, self.u_r = nn.Linear(d_model, d_model, bias=False), nn.Linear(d_model, d_model, bias=False)
        self.w_z, self.u_z = nn.Linear(d_model, d_model, bias=False), nn.Linear(d_model, d_model, bias=False)
        self.w_g, self.u_g = nn.Linear(d_model, d_model, bias=False), nn.Linear(d_model, d_model, bias=False)
        self.bias_z = nn.Parameter(torch.full((d_model,), bias_init))  # z ~ 0 at init: identity map

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        r = torch.sigmoid(self.w_r(y) + self.u_r(x))
        z = torch.sigmoid(self.w_z(y) + self.u_z(x) - self.bias_z)
        h = torch.tanh(self.w_g(y) + self.u_g(r * x))
        return (1 - z) * x + z * h


class Residual(nn.Module):
    """``x + dropout(y)``, or the GRU gate when ``gating="gru"``."""

    def __init__(self, d_model: int, gating: Literal["residual", "gru"], dropout: float):
        super().__init__()
        if gating not in ("residual", "gru"):
            raise ValueError(f"gating={gating!r} is unknown; choose 'residual' or 'gru'")
        self.gate = GRUGate(d_model) if gating == "gru" else None
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        y = self.dropout(y)
        return x + y if self.gate is None else self.gate(x, y)


class MixerBlock(nn.Module):
    """Pre-norm block: ``x + mixer(norm(x))`` [``+ cross(norm(x), context)``] ``+ mlp(norm(x))``."""

    def __init__(self, d_model: int, mixer: Mixer, *, cross_mixer: Mixer | None = None,
                 mlp_ratio: float = 4.0, mlp: ChannelMixerKind = "glu", dropout: float = 0.0,
                 norm: NormKind = "layernorm",
                 gating: Literal["residual", "gru"] = "residual"):
        super().__init__()
        for role, m in (("mixer", mixer), ("cross_mixer", cross_mixer)):
            if m is not None and m.d_model != d_model:
                raise ValueError(f"{role} has d_model={m.d_model} but the block has d_model={d_model}")
        self.mixer = mixer
        self.norm_mix = make_norm(norm, d_model)
        self.res_mix = Residual(d_model, gating, dropout)
        self.cross_mixer = cross_mixer
        if cross_mixer is not None:
            self.norm_cross = make_norm(norm, d_model)
            self.res_cross = Residual(d_model, gating, dropout)
        self.mlp = ChannelMixer(d_model, hidden_ratio=mlp_ratio, kind=mlp, dropout=dropout) if mlp_ratio > 0 else None
        if self.mlp is not None:
            self.norm_mlp = make_norm(norm, d_model)
            self.res_mlp = Residual(d_model, gating, dropout)

    def init_state(self, batch_size: int, device: torch.device | str | None = None,
                   dtype: torch.dtype = torch.float32, *, context: Tensor | None = None,
                   context_mask: Tensor | None = None) -> State:
        """The state before the first token; a decoder block projects ``context: [B, S, D]`` once here."""
        own = self.mixer.init_state(batch_size, device, dtype)
        if self.cross_mixer is None:
            if context is not None:
                raise ValueError("this block has no cross mixer; pass context=None")
            return own
        if context is None:
            raise ValueError("this block has a cross mixer: pass context=[B, S, D] to init_state")
        return DecoderBlockState(own, self.cross_mixer.init_state(batch_size, device, dtype, context=context,
                                                                  context_mask=context_mask))

    def _split_state(self, state: State | None) -> tuple[State | None, ContextCache | None]:
        """``(self mixer's state, cross mixer's state)`` of a block state."""
        if self.cross_mixer is None or state is None:
            return state, None
        if not isinstance(state, DecoderBlockState):
            raise ValueError(f"a decoder block's state is a DecoderBlockState (from init_state(context=...) or "
                             f"forward(..., return_state=True)), got {type(state).__name__}")
        return state.mixer, state.cross

    def forward(self, x: Tensor, *, context: Tensor | None = None, mask: Tensor | None = None,
                context_mask: Tensor | None = None, state: State | None = None,
                return_state: bool = False) -> Tensor | tuple[Tensor, State]:
        """``x: [B, T, D]``; a decoder block attends to ``context: [B, S, D]``, or to the context in its state.

        With ``return_state=True`` a decoder block's state holds the context projected once.
        """
        x, state, _ = self.forward_echo(x, context=context, mask=mask, context_mask=context_mask, state=state,
                                        return_state=return_state)
        return (x, state) if return_state else x

    def forward_echo(self, x: Tensor, *, probs: Tensor | None = None, return_probs: bool = False,
                     context: Tensor | None = None, mask: Tensor | None = None,
                     context_mask: Tensor | None = None, state: State | None = None,
                     return_state: bool = False) -> tuple[Tensor, State | None, Tensor | None]:
        """:meth:`forward` with EchoAtt's probabilities: ``(x [B, T, D], state or None, probs or None)``.

        ``probs: [B, H, T, S]``: a source layer's softmax probabilities, which this block's shared mixer applies
        to its own values; ``return_probs``: this block's own probabilities (it is a source layer).
        """
        own, cross = self._split_state(state)
        carry = return_state or state is not None
        if probs is not None or return_probs:
            y, probs, own = self.mixer.forward_echo(self.norm_mix(x), probs=probs, mask=mask, state=own,
                                                    return_state=carry)
        elif carry:
            y, own = self.mixer(self.norm_mix(x), mask=mask, state=own, return_state=True)
        else:
            y = self.mixer(self.norm_mix(x), mask=mask)
        x = self.res_mix(x, y)
        if self.cross_mixer is not None:
            if cross is not None and context is not None:
                raise ValueError("this block's state already holds the context; pass context=None with it")
            if cross is None and context is None:
                raise ValueError("this block has a cross mixer: pass context=[B, S, D]")
            if cross is None and return_state:
                cross = self.cross_mixer.init_state(x.shape[0], x.device, x.dtype, context=context,
                                                    context_mask=context_mask)
            h = self.norm_cross(x)
            y = (self.cross_mixer(h, state=cross) if cross is not None
                 else self.cross_mixer(h, context=context, mask=context_mask))
            x = self.res_cross(x, y)
        if self.mlp is not None:
            x = self.res_mlp(x, self.mlp(self.norm_mlp(x)))
        if not return_state:
            return x, None, probs
        return x, own if self.cross_mixer is None else DecoderBlockState(own, cross), probs

    def step(self, x_t: Tensor, state: State) -> tuple[Tensor, State]:
        """One token ``x_t: [B, D]`` through the block (self mixer, cross mixer, MLP)."""
        x_t, state, _ = self.step_echo(x_t, state)
        return x_t, state

    def step_echo(self, x_t: Tensor, state: State, *, probs: Tensor | None = None,
                  return_probs: bool = False) -> tuple[Tensor, State, Tensor | None]:
        """:meth:`step` with EchoAtt's probabilities of this token, ``probs: [B, H, 1, S]`` (see :meth:`forward_echo`)."""
        own, cross = self._split_state(state)
        if self.cross_mixer is not None and cross is None:
            raise ValueError("this block has a cross mixer: step needs the state of init_state(context=...)")
        if probs is not None or return_probs:
            y, probs, own = self.mixer.forward_echo(self.norm_mix(x_t)[:, None], probs=probs, state=own,
                                                    return_state=True)  # [B, D] -> [B, 1, D]
            y = y[:, 0]  # [B, 1, D] -> [B, D]
        else:
            y, own = self.mixer.step(self.norm_mix(x_t), own)
        x_t = self.res_mix(x_t, y)
        if self.cross_mixer is not None:
            y, cross = self.cross_mixer.step(self.norm_cross(x_t), cross)
            x_t = self.res_cross(x_t, y)
        if self.mlp is not None:
            x_t = self.res_mlp(x_t, self.mlp(self.norm_mlp(x_t)))
        return x_t, own if self.cross_mixer is None else DecoderBlockState(own, cross), probs


class MixerStack(nn.Module):
    """``n_layers`` blocks, a final norm. Encoder (``cross=None``) or decoder (with a cross factory).

    ``causal`` is checked against each mixer the factory builds, so a config that asks
    for a causal decoder with a non-causal mixer fails here with a clear message.

    ``share_attention`` (EchoAtt, Rajabzadeh et al. 2024): ``{layer: source layer}`` (0-based), e.g.
    ``{2: 1, 3: 1}``: layers 2 and 3 apply layer 1's softmax probabilities to their own values and own no
    q/k projections. A source is an earlier, unshared layer; both mixers are :class:`SoftmaxAttention` of
    the same ``n_heads``, causality and window. YAML: ``share_attention: {2: 1, 3: 1}``.
    """

    def __init__(self, d_model: int, n_layers: int, mixer: MixerFactory, *, causal: bool | None = None,
                 cross_mixer: MixerFactory | None = None, mlp_ratio: float = 4.0,
                 mlp: ChannelMixerKind = "glu", dropout: float = 0.0,
                 norm: NormKind = "layernorm",
                 gating: Literal["residual", "gru"] = "residual",
                 share_attention: dict[int, int] | None = None):
        super().__init__()
        if n_layers < 1:
            raise ValueError(f"n_layers must be >= 1, got {n_layers}")
        blocks = []
        for _ in range(n_layers):
            m = mixer(d_model)
            if causal is not None and m.causal != causal:
                raise ValueError(
                    f"this stack needs causal={causal} mixers but the mixer config builds "
                    f"{type(m).__name__}(causal={m.causal}); set causal: {str(causal).lower()} in its init_args"
                )
            blocks.append(MixerBlock(d_model, m, cross_mixer=cross_mixer(d_model) if cross_mixer else None,
                                     mlp_ratio=mlp_ratio, mlp=mlp, dropout=dropout, norm=norm, gating=gating))
        self.blocks = nn.ModuleList(blocks)
        self.norm = make_norm(norm, d_model)
        self.share_attention = check_share_attention(share_attention, [b.mixer for b in blocks])
        self.attention_sources = frozenset(self.share_attention.values())  # layers whose probabilities are reused
        for layer in self.share_attention:
            self.blocks[layer].mixer.drop_queries_and_keys()

    def _run(self, x: Tensor, *, context: Tensor | None, mask: Tensor | None, context_mask: Tensor | None,
             states: list[State] | None, carry: bool) -> tuple[list[Tensor], list[State]]:
        """Every block's output ``[B, T, D]`` (before the final norm) and, when ``carry``, every block's state."""
        outputs, new_states, probs = [], [], {}
        for i, block in enumerate(self.blocks):
            source, state = self.share_attention.get(i), None if states is None else states[i]
            if source is None and i not in self.attention_sources:  # no sharing here: the block's own call
                out = block(x, context=context, mask=mask, context_mask=context_mask, state=state, return_state=carry)
                x, s = out if carry else (out, None)
            else:
                x, s, probs[i] = block.forward_echo(x, probs=None if source is None else probs[source],
                                                    return_probs=i in self.attention_sources, context=context,
                                                    mask=mask, context_mask=context_mask, state=state,
                                                    return_state=carry)
            outputs.append(x)
            new_states.append(s)
        return outputs, new_states

    def forward(self, x: Tensor, *, context: Tensor | None = None, mask: Tensor | None = None,
                context_mask: Tensor | None = None, states: list[State] | None = None,
                return_state: bool = False) -> Tensor | tuple[Tensor, list[State]]:
        outputs, new_states = self._run(x, context=context, mask=mask, context_mask=context_mask, states=states,
                                        carry=return_state or states is not None)
        x = self.norm(outputs[-1])
        return (x, new_states) if return_state else x

    def hidden_states(self, x: Tensor, *, context: Tensor | None = None, mask: Tensor | None = None,
                      context_mask: Tensor | None = None) -> tuple[Tensor, list[Tensor]]:
        """``(forward's output [B, T, D], each block's output [B, T, D])``: what distillation compares layer by layer."""
        outputs, _ = self._run(x, context=context, mask=mask, context_mask=context_mask, states=None, carry=False)
        return self.norm(outputs[-1]), outputs

    def init_states(self, batch_size: int, device: torch.device | str | None = None,
                    dtype: torch.dtype = torch.float32, *, context: Tensor | None = None,
                    context_mask: Tensor | None = None) -> list[State]:
        """Each block's state before the first token (a decoder's blocks project ``context: [B, S, D]`` here)."""
        return [b.init_state(batch_size, device, dtype, context=context, context_mask=context_mask)
                for b in self.blocks]

    def step(self, x_t: Tensor, states: list[State]) -> tuple[Tensor, list[State]]:
        """One token ``x_t: [B, D]`` through every block, layer by layer: ``(y_t: [B, D], new states)``.

        A shared layer (``share_attention``) applies its source layer's probabilities of this token."""
        new_states, probs = [], {}
        for i, (block, s) in enumerate(zip(self.blocks, states)):
            source = self.share_attention.get(i)
            if source is None and i not in self.attention_sources:
                x_t, s = block.step(x_t, s)
            else:
                x_t, s, probs[i] = block.step_echo(x_t, s, probs=None if source is None else probs[source],
                                                   return_probs=i in self.attention_sources)
            new_states.append(s)
        return self.norm(x_t), new_states


def check_share_attention(share_attention: dict[int, int] | None, mixers: list[Mixer]) -> dict[int, int]:
    """EchoAtt's ``{layer: source layer}`` checked against the stack's ``mixers``: a plain dict, or a
    ``ValueError`` that names the layer and the fix."""
    if share_attention is None:
        return {}
    from seqmix.core.mixers.softmax import SoftmaxAttention  # here: seqmix.core.mixers imports this module

    owner = "MixerStack"
    if not isinstance(share_attention, dict):
        raise ValueError(f"{owner}: share_attention must be a dict {{layer: source layer}} such as {{2: 1, 3: 1}} "
                         f"(layers 2 and 3 reuse layer 1's attention), got {share_attention!r}")
    n = len(mixers)
    checked = {}
    for layer, source in share_attention.items():
        layer = check_int(owner, "share_attention's layer", layer, minimum=1,
                          meaning=f"a 0-based layer index; layer 0 has no earlier layer to share from")
        source = check_int(owner, f"share_attention[{layer}]", source, minimum=0, meaning="the source layer index")
        if layer >= n:
            raise ValueError(f"{owner}: share_attention names layer {layer}, but the stack has n_layers={n} "
                             f"(layers 0..{n - 1}); drop it or raise n_layers")
        if source >= layer:
            raise ValueError(f"{owner}: share_attention[{layer}]={source}: a layer reuses the attention of an "
                             f"earlier layer; choose a source in 0..{layer - 1}")
        checked[layer] = source
    for layer, source in checked.items():
        if source in checked:
            raise ValueError(f"{owner}: share_attention[{layer}]={source}, but layer {source} itself shares layer "
                             f"{checked[source]}'s attention; set share_attention[{layer}]={checked[source]}")
        for role, index in (("layer", layer), ("source layer", source)):
            m = mixers[index]
            if type(m) is not SoftmaxAttention:
                raise ValueError(f"{owner}: share_attention: {role} {index} has a {type(m).__name__} mixer; EchoAtt "
                                 "shares softmax probabilities, so both layers need SoftmaxAttention "
                                 "(class_path: seqmix.core.mixers.softmax.SoftmaxAttention)")
        a, b = mixers[source], mixers[layer]
        for what in ("n_heads", "causal", "window"):
            if getattr(a, what) != getattr(b, what):
                raise ValueError(f"{owner}: share_attention[{layer}]={source}: layer {layer} has {what}="
                                 f"{getattr(b, what)!r} but its source has {getattr(a, what)!r}; give both the same "
                                 f"{what}")
    return dict(sorted(checked.items()))
