"""The decoder-only language model: token embedding (+ positions), a causal :class:`MixerStack`, tied output.

A GPT in the nanoGPT mould with the mixer injected: ``mixer`` is one factory ``d_model -> Mixer`` for every
layer, or a list of ``n_layers`` factories, one per layer, for hybrids (BASED's linear attention beside a
sliding window; every fourth layer softmax), which LightningCLI builds from the config (the app's
LanguageModel takes the list as ``layer_mixers``)::

    mixer:                                   # every layer
      class_path: seqmix.core.mixers.softmax.SoftmaxAttention
      init_args: {n_heads: 4, rotary: true}
    layer_mixers:                            # one entry per layer
      - {class_path: seqmix.core.mixers.gla.GatedLinearAttention, init_args: {n_heads: 4}}
      - {class_path: seqmix.core.mixers.softmax.SoftmaxAttention, init_args: {n_heads: 4, rotary: true}}

The output projection is the input embedding (tied: ``logits = h E^T``, Press & Wolf 2017). Positions
(``positions``):

- ``learned``: a learned vector per position added to the token embedding, up to ``max_len`` (the
  training context): the model cannot see, nor generate, past ``max_len`` tokens.
- ``rotary``: rotary positions inside the attention mixers (RoFormer); the model adds none. Every mixer
  that has the option (a ``rotary`` argument) must have it on, and at least one must; the others
  (recurrent, convolutional) order tokens by themselves. No length limit (quality past the training
  context is another matter: the extrapolation question).
- ``none``: no positions at all (recurrent mixers; NoPE attention). No length limit.

It is a :class:`seqmix.core.decoding.Decoder` (``embed_tokens``, ``stack``, ``token_logits``), so
generation runs through :func:`seqmix.core.decoding.generate`: the prompt prefilled by one forward, then one
``step`` per token in each mixer (a KV cache for attention, a constant-size state for recurrent mixers).
"""

from __future__ import annotations

import inspect
from typing import Literal

import torch
from torch import Tensor, nn

from seqmix.core.blocks import ChannelMixerKind, MixerFactory, MixerStack, NormKind
from seqmix.core.mixer import Mixer, check_int

Positions = Literal["learned", "rotary", "none"]


def has_rotary_option(mixer: Mixer) -> bool:
    """Whether the mixer's class takes a ``rotary`` argument (softmax, sliding window, ... attention)."""
    return "rotary" in inspect.signature(type(mixer).__init__).parameters


def layer_factory(mixer: MixerFactory | list[MixerFactory], n_layers: int) -> MixerFactory:
    """One factory for :class:`MixerStack`, which calls it once per layer in order: ``mixer`` itself, or for a
    per-layer list a factory that builds layer ``i`` with ``mixer[i]`` (used for that one construction)."""
    if not isinstance(mixer, (list, tuple)):
        return mixer
    if len(mixer) != n_layers:
        raise ValueError(f"CausalLM: mixer is a list of {len(mixer)} per-layer mixers but n_layers={n_layers}; give "
                         f"one entry per layer, or one mixer (not a list) for every layer")
    per_layer = iter(mixer)
    return lambda d_model: next(per_layer)(d_model)


def check_positions(positions: str, mixers: list[Mixer]) -> None:
    """``positions`` against the mixers' own rotary option (module docstring), or a ``ValueError`` with the fix."""
    if positions not in ("learned", "rotary", "none"):
        raise ValueError(f"CausalLM: positions={positions!r} is unknown; choose 'learned', 'rotary' or 'none'")
    capable = [(i, m) for i, m in enumerate(mixers) if has_rotary_option(m)]
    rotating = [i for i, m in capable if getattr(m, "rotary", None) is not None]
    if positions == "rotary":
        if not capable:
            raise ValueError(f"CausalLM: positions='rotary' but no layer's mixer has a rotary option "
                             f"({type(mixers[0]).__name__}); use positions: none (a recurrent mixer orders tokens by "
                             f"itself) or positions: learned")
        off = [i for i, _ in capable if i not in rotating]
        if off:
            raise ValueError(f"CausalLM: positions='rotary' but the mixer of layer(s) {off} "
                             f"({type(mixers[off[0]]).__name__}) has rotary off; set rotary: true in its init_args")
    elif rotating:
        raise ValueError(f"CausalLM: positions={positions!r} but the mixer of layer(s) {rotating} adds rotary positions; "
                         f"set positions: rotary (or rotary: false in the mixer's init_args)")


class CausalLM(nn.Module):
    """Token embedding (+ learned positions) -> ``n_layers`` pre-norm blocks of any causal mixer -> tied logits.

    Args:
        mixer: the mixer factory of every layer, or a list of ``n_layers`` factories (a hybrid).
        vocab_size: V, the tokenizer's vocabulary.
        max_len: the positions a learned table holds (the training context); unused by ``rotary`` / ``none``.
        positions: ``learned``, ``rotary`` or ``none`` (module docstring).
        d_model, n_layers, mlp_ratio, mlp, norm, dropout: the stack (:class:`MixerStack`).
    """

    def __init__(self, mixer: MixerFactory | list[MixerFactory], *, vocab_size: int, max_len: int, d_model: int = 128,
                 n_layers: int = 4, positions: Positions = "rotary", mlp_ratio: float = 4.0,
                 mlp: ChannelMixerKind = "glu", norm: NormKind = "layernorm", dropout: float = 0.0):
        super().__init__()
        name = type(self).__name__
        check_int(name, "vocab_size", vocab_size, meaning="the tokenizer's vocabulary")
        check_int(name, "max_len", max_len, meaning="the training context, the learned positions' length")
        check_int(name, "d_model", d_model, meaning="the width, e.g. 128")
        check_int(name, "n_layers", n_layers, meaning="blocks, e.g. 4")
        self.vocab_size, self.max_len, self.positions = vocab_size, max_len, positions
        self.embed = nn.Embedding(vocab_size, d_model)
        nn.init.normal_(self.embed.weight, std=0.02)
        self.pos = nn.Parameter(torch.randn(max_len, d_model) * 0.02) if positions == "learned" else None  # [L, D]
        self.drop = nn.Dropout(dropout)
        self.stack = MixerStack(d_model, n_layers, layer_factory(mixer, n_layers), causal=True, mlp_ratio=mlp_ratio,
                                mlp=mlp, norm=norm, dropout=dropout)
        check_positions(positions, [block.mixer for block in self.stack.blocks])

    @property
    def max_positions(self) -> int | None:
        """The longest sequence (prompt and generated tokens) the model can take: ``max_len`` with learned
        positions, None (no limit) with rotary or no positions."""
        return self.max_len if self.positions == "learned" else None

    def embed_tokens(self, tokens: Tensor, offset: int = 0) -> Tensor:
        """``tokens: [B, T]`` at positions ``offset .. offset + T - 1`` -> ``[B, T, D]``."""
        if tokens.dim() != 2 or tokens.dtype != torch.long:
            raise ValueError(f"CausalLM: tokens must be int64 [batch, time], got {tokens.dtype} {tuple(tokens.shape)}")
        if tokens.numel() and (tokens.min() < 0 or tokens.max() >= self.vocab_size):
            raise ValueError(f"CausalLM: token ids must lie in [0, vocab_size={self.vocab_size}), got "
                             f"[{int(tokens.min())}, {int(tokens.max())}]; the tokenizer is not the model's")
        end = offset + tokens.shape[1]
        if self.pos is not None and end > self.max_len:
            raise ValueError(f"CausalLM: {end} tokens exceed the {self.max_len} learned positions (max_len); "
                             f"use at most {self.max_len} tokens, or train with positions: rotary / none")
        x = self.embed(tokens)  # [B, T, D]
        if self.pos is not None:
            x = x + self.pos[offset:end]  # [T, D] broadcast over B
        return self.drop(x)

    def token_logits(self, hidden: Tensor) -> Tensor:
        """Final hidden states ``[..., D]`` -> logits ``[..., V]`` through the tied embedding."""
        return nn.functional.linear(hidden, self.embed.weight)

    def forward(self, tokens: Tensor) -> Tensor:
        """Next-token logits at every position: ``[B, T] -> [B, T, V]``."""
        return self.token_logits(self.stack(self.embed_tokens(tokens)))
