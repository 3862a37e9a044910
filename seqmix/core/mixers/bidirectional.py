"""A non-causal mixer made of two causal ones: one reads the sequence forwards, one backwards.

The standard bidirectional construction of Schuster & Paliwal ("Bidirectional Recurrent Neural
Networks", 1997, the forward and backward states of their Fig. 3 / the BiLSTM) and of Vision Mamba
(Zhu et al. 2024, "Vision Mamba", Algorithm 1: a forward and a backward SSM over the same tokens,
their outputs summed). With ``f`` and ``b`` two instances of the same causal mixer and ``R`` the time
reversal ``(R x)_t = x_{T-1-t}``:

    merge="add":    y = f(x) + R b(R x)                  (Vision Mamba's sum)
    merge="concat": y = W [f(x) ; R b(R x)] + c          (the BiLSTM's concatenated states, projected
                                                          back to d_model by one linear map)

so ``y_t`` depends on ``x_0 .. x_t`` through ``f`` and on ``x_t .. x_{T-1}`` through ``b``: every token
sees the whole sequence. The two directions have their own weights (as the BiLSTM and Vim).

Left out: Vision Mamba's shared input projection and SiLU gate around the two scans (each inner mixer
keeps its own projections and gates), weight sharing between the directions, and key-padding masks
(reversing a right-padded batch would put the padding first; the wrapper refuses a mask).

Not registered in the mixer registry: it is a wrapper around a mixer factory, built from a config as

    mixer:
      class_path: seqmix.core.mixers.bidirectional.Bidirectional
      init_args:
        merge: add
        mixer:
          class_path: seqmix.core.mixers.mamba.Mamba
          init_args: {d_state: 16}
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from torch import Tensor, nn

from seqmix.core.blocks import MixerFactory
from seqmix.core.mixer import Mixer, State

Merge = Literal["add", "concat"]


class Bidirectional(Mixer):
    """Two instances of a causal mixer, over the sequence and over its reverse, merged (non-causal).

    Args:
        mixer: a factory ``d_model -> Mixer`` of a causal self-mixing mixer (one with the ``causal_self``
            pattern, built with ``causal=True``); it is called twice, once per direction.
        merge: ``"add"``: the sum of the two directions (Vision Mamba); ``"concat"``: their concatenation
            mapped back to ``d_model`` by a linear layer (the BiLSTM's states, projected).
    """

    patterns: ClassVar[frozenset[str]] = frozenset({"noncausal_self"})

    def __init__(self, d_model: int, mixer: MixerFactory, *, merge: Merge = "add"):
        super().__init__(d_model, causal=False)
        if merge not in ("add", "concat"):
            raise ValueError(f"Bidirectional: merge={merge!r} is unknown; choose 'add' (the sum of the two "
                             "directions) or 'concat' (both, projected back to d_model)")
        self.forward_mixer = self._check(mixer(d_model), d_model)
        self.backward_mixer = self._check(mixer(d_model), d_model)
        self.n_heads = self.forward_mixer.n_heads  # for tables; the inner mixers do the mixing
        self.head_dim = self.forward_mixer.head_dim
        self.merge = merge
        self.out = nn.Linear(2 * d_model, d_model) if merge == "concat" else None

    @staticmethod
    def _check(inner: object, d_model: int) -> Mixer:
        """``inner`` if it is a causal self-mixing Mixer of width ``d_model``, else an error naming the fix."""
        if not isinstance(inner, Mixer):
            raise TypeError(f"Bidirectional: mixer must build a seqmix Mixer (a factory d_model -> Mixer, e.g. "
                            f"mixer_factory('mamba') or a class_path), got {type(inner).__name__}")
        name = type(inner).__name__
        if isinstance(inner, Bidirectional):
            raise ValueError("Bidirectional: the inner mixer is already Bidirectional (non-causal); wrap the causal "
                             "mixer once")
        if "causal_self" not in inner.patterns:
            raise ValueError(f"Bidirectional: {name} has no causal_self pattern (it supports {sorted(inner.patterns)}); "
                             "the wrapper reads the sequence with a causal mixer in each direction")
        if not inner.causal:
            raise ValueError(f"Bidirectional: {name} was built with causal=False, so it already sees the whole "
                             f"sequence; use it directly, or build it with causal: true to wrap it")
        if inner.d_model != d_model:
            raise ValueError(f"Bidirectional: the inner {name} has d_model={inner.d_model}, the wrapper "
                             f"d_model={d_model}; leave d_model to the factory")
        return inner

    def _forward(self, x: Tensor, *, context: Tensor | None, mask: Tensor | None, state: State | None,
                 return_state: bool) -> Tensor:
        ahead = self.forward_mixer(x)  # [B, T, D]: y_t from x_0 .. x_t
        behind = self.backward_mixer(x.flip(1)).flip(1)  # [B, T, D], time reversed twice: y_t from x_t .. x_T-1
        if self.out is None:
            return ahead + behind
        return self.out(torch.cat([ahead, behind], dim=-1))  # [B, T, 2D] -> [B, T, D]

    def state_size(self, seq_len: int) -> int:
        raise ValueError("Bidirectional: a non-causal mixer keeps no state between tokens (it needs the whole "
                         "sequence); use the inner causal mixer for incremental decoding")

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, merge={self.merge!r}"

