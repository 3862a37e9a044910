"""Blocks that take any mixer: the pre-norm residual block and encoder / decoder stacks.

A model is built from a *mixer factory* ``Callable[[int], Mixer]`` (given ``d_model``,
it returns a new mixer), which is what LightningCLI builds from a config entry
``{class_path: seqmix.core.mixers.gla.GatedLinearAttention, init_args: {n_heads: 4}}``,
or from a registry name with :func:`mixer_factory`.

``gating="gru"`` replaces the residual sum by GTrXL's GRU-type gate (Parisotto et al.,
"Stabilizing Transformers for Reinforcement Learning"), initialised close to identity.
"""

from __future__ import annotations

from functools import partial
from typing import Callable, Literal

import torch
from torch import Tensor, nn

from seqmix.core.mixer import Mixer, State, build_mixer

MixerFactory = Callable[[int], Mixer]


def mixer_factory(name: str, **arguments: object) -> MixerFactory:
    """A factory for the registered mixer ``name``: ``mixer_factory("gla", n_heads=4)(256)``."""
    return partial(build_mixer, name, **arguments)


def make_norm(kind: Literal["layernorm", "rmsnorm"], d_model: int) -> nn.Module:
    if kind == "layernorm":
        return nn.LayerNorm(d_model)
    if kind == "rmsnorm":
        return nn.RMSNorm(d_model)
    raise ValueError(f"norm={kind!r} is unknown; choose 'layernorm' or 'rmsnorm'")


class ChannelMixer(nn.Module):
    """The position-wise feed-forward: ``"mlp"`` (Linear-GELU-Linear) or ``"glu"`` (SwiGLU)."""

    def __init__(self, d_model: int, *, hidden_ratio: float = 4.0, kind: Literal["mlp", "glu"] = "glu",
                 dropout: float = 0.0):
        super().__init__()
        if kind not in ("mlp", "glu"):
            raise ValueError(f"channel mixer kind={kind!r} is unknown; choose 'mlp' or 'glu'")
        hidden = int(d_model * hidden_ratio)
        if kind == "glu":
            hidden = int(2 * hidden / 3)  # keep the parameter count of the plain MLP
        self.kind = kind
        self.up = nn.Linear(d_model, 2 * hidden if kind == "glu" else hidden)
        self.down = nn.Linear(hidden, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        h = self.up(x)
        if self.kind == "glu":
            a, b = h.chunk(2, dim=-1)
            h = nn.functional.silu(a) * b
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
                 mlp_ratio: float = 4.0, mlp: Literal["mlp", "glu"] = "glu", dropout: float = 0.0,
                 norm: Literal["layernorm", "rmsnorm"] = "layernorm",
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

    def forward(self, x: Tensor, *, context: Tensor | None = None, mask: Tensor | None = None,
                context_mask: Tensor | None = None, state: State | None = None,
                return_state: bool = False) -> Tensor | tuple[Tensor, State]:
        if return_state or state is not None:
            y, state = self.mixer(self.norm_mix(x), mask=mask, state=state, return_state=True)
        else:
            y = self.mixer(self.norm_mix(x), mask=mask)
        x = self.res_mix(x, y)
        if self.cross_mixer is not None:
            if context is None:
                raise ValueError("this block has a cross mixer: pass context=[B, S, D]")
            x = self.res_cross(x, self.cross_mixer(self.norm_cross(x), context=context, mask=context_mask))
        if self.mlp is not None:
            x = self.res_mlp(x, self.mlp(self.norm_mlp(x)))
        return (x, state) if return_state else x

    def step(self, x_t: Tensor, state: State) -> tuple[Tensor, State]:
        """One token ``[B, D]`` through a self-attention-only block with a recurrent mixer."""
        if self.cross_mixer is not None:
            raise ValueError("step is for decoder-only blocks; this block has a cross mixer")
        y, state = self.mixer.step(self.norm_mix(x_t), state)
        x_t = self.res_mix(x_t, y)
        if self.mlp is not None:
            x_t = self.res_mlp(x_t, self.mlp(self.norm_mlp(x_t)))
        return x_t, state


class MixerStack(nn.Module):
    """``n_layers`` blocks, a final norm. Encoder (``cross=None``) or decoder (with a cross factory).

    ``causal`` is checked against each mixer the factory builds, so a config that asks
    for a causal decoder with a non-causal mixer fails here with a clear message.
    """

    def __init__(self, d_model: int, n_layers: int, mixer: MixerFactory, *, causal: bool | None = None,
                 cross_mixer: MixerFactory | None = None, mlp_ratio: float = 4.0,
                 mlp: Literal["mlp", "glu"] = "glu", dropout: float = 0.0,
                 norm: Literal["layernorm", "rmsnorm"] = "layernorm",
                 gating: Literal["residual", "gru"] = "residual"):
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

    def forward(self, x: Tensor, *, context: Tensor | None = None, mask: Tensor | None = None,
                context_mask: Tensor | None = None, states: list[State] | None = None,
                return_state: bool = False) -> Tensor | tuple[Tensor, list[State]]:
        carry = return_state or states is not None
        new_states = []
        for i, block in enumerate(self.blocks):
            if carry:
                x, s = block(x, context=context, mask=mask, context_mask=context_mask,
                             state=None if states is None else states[i], return_state=True)
                new_states.append(s)
            else:
                x = block(x, context=context, mask=mask, context_mask=context_mask)
        x = self.norm(x)
        return (x, new_states) if return_state else x

    def init_states(self, batch_size: int, device: torch.device | str | None = None,
                    dtype: torch.dtype = torch.float32) -> list[State]:
        return [b.mixer.init_state(batch_size, device, dtype) for b in self.blocks]

    def step(self, x_t: Tensor, states: list[State]) -> tuple[Tensor, list[State]]:
        new_states = []
        for block, s in zip(self.blocks, states):
            x_t, s = block.step(x_t, s)
            new_states.append(s)
        return self.norm(x_t), new_states
