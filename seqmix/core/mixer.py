"""The one Mixer contract and the registry every mixer goes through.

A mixer maps ``x: [B, T, D] -> y: [B, T, D]``. Each subclass declares

- ``patterns``: the CAB patterns it supports (a subset of :data:`PATTERNS`);
- ``impls``: the implementations it carries, the first being the plain reference
  (``"naive"``); ``impl="auto"`` picks the fast one for the tensor's device;
- ``recurrent``: whether its state has a constant size (the linear family, RNNs, a
  sliding window); attention mixers step too, with a growing KV cache (:class:`KVCache`);
  ``step_matches_forward``: whether ``step`` token by token equals ``forward`` (True but for
  ProbSparse, whose query selection needs the whole sequence);
- ``test_configs``: tiny constructor arguments for the generic tests
  (``tests/core/test_mixers_generic.py``), so registering a mixer adds its tests;
  ``test_dtypes``: the dtypes it claims to run in (fp32 and bf16 unless it says less);
- ``supports_mask``: whether ``forward`` takes a key-padding ``mask``.

Incremental decoding: every mixer with the ``causal_self`` pattern offers ``init_state`` /
``step`` and a ``forward`` that takes and returns a state (so a prompt is prefilled with one
``forward(..., return_state=True)`` and continued by ``step``); a cross-attention mixer takes
its context once, in ``init_state(..., context=...)``, and keeps it as a :class:`ContextCache`.
Every tensor of dimension >= 1 in a state is batch-first (beam search reorders states by
indexing dimension 0).

Subclasses implement ``_forward`` and ``init_state`` (and ``_step`` when one token needs
another path than ``_forward``); the public ``forward`` / ``step`` check shapes, patterns,
masks and states first so that a bad call fails here with a message that names the
problem, not deep inside torch. A batch of zero sequences gives an empty output here,
without reaching any kernel.
"""

from __future__ import annotations

import difflib
import inspect
from typing import Any, ClassVar, Mapping, NamedTuple, Sequence

import torch
from torch import Tensor, nn

from seqmix.kernels.common import resolve_impl  # the one impl rule, which the kernels' entry points use too

PATTERNS: tuple[str, ...] = ("causal_self", "noncausal_self", "causal_cross", "noncausal_cross")

State = Any  # a tensor or a tuple of tensors, whatever the mixer carries between pieces


def state_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a recurrent state accumulates in for inputs of ``dtype``: float64 kept, else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


class KVCache(NamedTuple):
    """Self attention's state: the keys and values of the tokens seen so far (it grows).

    ``init_state`` gives an empty cache; ``forward(..., return_state=True)`` and ``step`` append
    one key and one value per token (a windowed attention keeps its last ``window``), which is
    what ``state_size(T)`` counts. Rotary positions continue from ``seen``.
    """

    keys: Tensor  # [B, H, S, K]
    values: Tensor  # [B, H, S, V]
    key_mask: Tensor | None  # [B, S] bool, True = attend; None: every key
    seen: int  # tokens seen so far (S, unless a window dropped the oldest)

    def append(self, k: Tensor, v: Tensor, mask: Tensor | None) -> KVCache:
        """The cache with ``k: [B, H, T, K]``, ``v: [B, H, T, V]`` (and their ``mask: [B, T]``) after it."""
        keys = torch.cat([self.keys.to(k.dtype), k], 2)  # [B, H, S + T, K]
        values = torch.cat([self.values.to(v.dtype), v], 2)  # [B, H, S + T, V]
        key_mask = None
        if self.key_mask is not None or mask is not None:
            b, s, t = k.shape[0], self.keys.shape[2], k.shape[2]
            old = self.key_mask if self.key_mask is not None else k.new_ones(b, s, dtype=torch.bool)
            new = mask if mask is not None else k.new_ones(b, t, dtype=torch.bool)
            key_mask = torch.cat([old, new], 1)  # [B, S + T]
        return KVCache(keys, values, key_mask, self.seen + k.shape[2])

    def last(self, n: int) -> KVCache:
        """The cache of the last ``n`` keys (a sliding window forgets the rest)."""
        mask = None if self.key_mask is None else self.key_mask[:, -n:]
        return KVCache(self.keys[:, :, -n:], self.values[:, :, -n:], mask, self.seen)


class ContextCache(NamedTuple):
    """Cross attention's state: the context's projected keys and values, fixed after ``init_state``."""

    keys: Tensor  # [B, H, S, K]
    values: Tensor  # [B, H, S, V]
    key_mask: Tensor | None  # [B, S] bool, True = attend (the context's padding); None: every key


def expanded_widths(owner: str, d_model: int, n_heads: int, expand_k: float, expand_v: float) -> tuple[int, int]:
    """``(key width, value width) = (int(d_model * expand_k), int(d_model * expand_v))`` of a linear-attention
    style mixer, each a positive multiple of ``n_heads``, else a ``ValueError`` naming ``owner``'s argument."""
    widths = int(d_model * expand_k), int(d_model * expand_v)
    for arg, value, width in (("expand_k", expand_k, widths[0]), ("expand_v", expand_v, widths[1])):
        if width < n_heads or width % n_heads:
            raise ValueError(
                f"{owner}: {arg}={value} gives a width int(d_model * {arg}) = {width} that n_heads={n_heads} "
                "does not divide into heads; pick it so the width is a positive multiple of n_heads"
            )
    return widths

def check_int(owner: str, argument: str, value: object, *, minimum: int = 1, meaning: str = "") -> int:
    """``value`` if it is an int (not a bool) ``>= minimum``, else a ``ValueError`` naming ``owner``'s argument,
    its range and ``meaning`` (what it counts, e.g. ``"keys per block, e.g. 16"``): the size check of every mixer."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        what = f" ({meaning})" if meaning else ""
        raise ValueError(f"{owner}: {argument} must be an int >= {minimum}{what}, got {value!r}")
    return value


def _pattern(causal: bool, cross: bool) -> str:
    return ("causal" if causal else "noncausal") + ("_cross" if cross else "_self")


class Mixer(nn.Module):
    """Base class of every token mixer. See the module docstring for the contract."""

    patterns: ClassVar[frozenset[str]] = frozenset()
    impls: ClassVar[tuple[str, ...]] = ("naive",)
    recurrent: ClassVar[bool] = False
    step_matches_forward: ClassVar[bool] = True  # False: its step is another computation (ProbSparse's)
    supports_mask: ClassVar[bool] = False
    # why the mixer's sizes do not fit its Triton kernel (set in __init__ from its op's KernelOp.check); None: they do
    triton_refusal: str | None = None
    test_configs: ClassVar[Sequence[Mapping[str, object]]] = ({},)
    test_dtypes: ClassVar[tuple[torch.dtype, ...]] = (torch.float32, torch.bfloat16)
    registry_name: ClassVar[str] = ""
    paper: ClassVar[str] = ""  # the paper(s) it implements, for the README's mixers table
    complexity: ClassVar[str] = ""  # training cost in T, e.g. "O(T^2 D)" or "O(T D K)"

    def __init__(self, d_model: int, *, n_heads: int = 1, causal: bool = True, impl: str = "auto"):
        super().__init__()
        name = type(self).__name__
        if not isinstance(d_model, int) or d_model <= 0:
            raise ValueError(f"{name}: d_model must be a positive int, got {d_model!r}")
        if not isinstance(n_heads, int) or n_heads <= 0:
            raise ValueError(f"{name}: n_heads must be a positive int, got {n_heads!r}")
        if d_model % n_heads != 0:
            raise ValueError(
                f"{name}: d_model={d_model} is not divisible by n_heads={n_heads}; "
                f"choose n_heads among {[h for h in range(1, d_model + 1) if d_model % h == 0][:12]}"
            )
        supported_causality = {p.split("_")[0] for p in self.patterns}
        wanted = "causal" if causal else "noncausal"
        if wanted not in supported_causality:
            raise ValueError(
                f"{name}: causal={causal} asks for {wanted} patterns, but this mixer supports "
                f"only {sorted(self.patterns)}"
            )
        self.d_model = d_model
        self.n_heads = n_heads
        self.head_dim = d_model // n_heads
        self.causal = causal
        self.impl = impl  # validated by the property setter

    # ------------------------------------------------------------------ impl
    @property
    def impl(self) -> str:
        return self._impl

    @impl.setter
    def impl(self, value: str) -> None:
        allowed = ("auto", *self.impls)
        if value not in allowed:
            raise ValueError(f"{type(self).__name__}: impl={value!r} is unknown; choose one of {allowed}")
        self._impl = value

    def resolve_impl(self, x: Tensor) -> str:
        """The implementation used for ``x``, by the one rule of :func:`seqmix.kernels.common.resolve_impl`:
        ``impl`` unless it is ``"auto"``, which is ``"triton"`` on CUDA tensors when the mixer has a
        Triton kernel that takes its sizes, else the fastest CPU form (``"chunk"`` when present, then
        the last non-Triton impl), with a warning, once, when a kernel limit kept it off Triton.

        A Triton-backed mixer sets ``self.triton_refusal`` in ``__init__`` from its op's
        ``KernelOp.check`` (why its sizes do not fit the Triton kernel, or None).
        """
        refusal = self.triton_refusal if "triton" in self.impls else None
        return resolve_impl(type(self).__name__, self._impl, self.impls, cuda=x.is_cuda, triton_refusal=refusal)

    # --------------------------------------------------------------- forward
    def forward(
        self,
        x: Tensor,
        *,
        context: Tensor | None = None,
        mask: Tensor | None = None,
        state: State | None = None,
        return_state: bool = False,
    ) -> Tensor | tuple[Tensor, State]:
        """Mix ``x: [B, T, D]`` (with ``context: [B, S, D]`` for cross attention).

        ``mask: [B, S]`` bool marks the keys that may be attended (True = keep), where
        ``S`` is the context length (or ``T`` for self attention). ``state`` is an initial
        state from ``init_state``/a previous piece (causal self pattern), or a cross
        mixer's :class:`ContextCache` in place of ``context``; with ``return_state=True`` the
        result is ``(y, final_state)``.
        """
        self.check_input(x, context=context, mask=mask, state=state, return_state=return_state)
        if x.shape[0] == 0:  # no sequence: nothing to mix, nothing to remember
            y = x.new_zeros(x.shape)  # [0, T, D]
            if return_state and state is None:
                state = (self.init_state(0, x.device, x.dtype) if context is None
                         else self.init_state(0, x.device, x.dtype, context=context, context_mask=mask))
            return (y, state) if return_state else y
        return self._forward(x, context=context, mask=mask, state=state, return_state=return_state)

    def _forward(
        self,
        x: Tensor,
        *,
        context: Tensor | None,
        mask: Tensor | None,
        state: State | None,
        return_state: bool,
    ) -> Tensor | tuple[Tensor, State]:
        raise NotImplementedError

    def check_input(
        self,
        x: Tensor,
        *,
        context: Tensor | None = None,
        mask: Tensor | None = None,
        state: State | None = None,
        return_state: bool = False,
    ) -> None:
        name = type(self).__name__
        if not isinstance(x, Tensor) or x.dim() != 3 or x.shape[-1] != self.d_model:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(
                f"{name}: x must be [batch, time, d_model={self.d_model}], got {shape}; "
                "add a batch dimension with x.unsqueeze(0) or project to d_model first"
            )
        if x.shape[1] == 0:
            raise ValueError(f"{name}: x has zero time steps; give at least one token")
        context_state = isinstance(state, ContextCache)
        pattern = _pattern(self.causal, context is not None or context_state)
        if pattern not in self.patterns:
            raise ValueError(
                f"{name}: pattern {pattern!r} is not supported; this mixer supports {sorted(self.patterns)}"
            )
        if context_state and (context is not None or mask is not None):
            raise ValueError(f"{name}: the state already holds the context and its key mask "
                             "(init_state(context=..., context_mask=...)); pass context=None and mask=None with it")
        if (state is not None or return_state) and pattern == "noncausal_self":
            raise ValueError(f"{name}: a carried state needs causal=True (a non-causal mixer sees the whole "
                             "sequence at once); pass state=None and return_state=False")
        if context is not None:
            if context.dim() != 3 or context.shape[0] != x.shape[0] or context.shape[-1] != self.d_model:
                raise ValueError(
                    f"{name}: context must be [batch={x.shape[0]}, S, d_model={self.d_model}], "
                    f"got {tuple(context.shape)}"
                )
        if mask is not None:
            if not self.supports_mask:
                raise ValueError(f"{name}: does not take a key mask; pass mask=None or use an attention mixer")
            keys = context.shape[1] if context is not None else x.shape[1]
            if mask.dtype != torch.bool or tuple(mask.shape) != (x.shape[0], keys):
                raise ValueError(
                    f"{name}: mask must be a bool tensor [batch={x.shape[0]}, keys={keys}] "
                    f"(True = attend), got {mask.dtype} {tuple(mask.shape)}"
                )

    # ------------------------------------------------------------- decoding
    def init_state(self, batch_size: int, device: torch.device | str | None = None,
                   dtype: torch.dtype = torch.float32, *, context: Tensor | None = None,
                   context_mask: Tensor | None = None) -> State:
        """The state before the first token (self), or with ``context: [B, S, D]`` and its key mask
        ``context_mask: [B, S]`` the cross-attention state that :meth:`step` attends to."""
        raise ValueError(f"{type(self).__name__}: has no state: it supports {sorted(self.patterns)}, none of which "
                         "steps (causal_self or noncausal_cross); use forward over the whole sequence")

    def refuse_context(self, context: Tensor | None, context_mask: Tensor | None) -> None:
        """For the ``init_state`` of a mixer without cross attention: a ``context`` is a clear error."""
        if context is not None or context_mask is not None:
            raise ValueError(f"{type(self).__name__}: has no cross attention, it is self attention only (patterns "
                             f"{sorted(self.patterns)}); pass context=None and context_mask=None")

    def step(self, x_t: Tensor, state: State) -> tuple[Tensor, State]:
        """One token ``x_t: [B, D]`` -> ``(y_t: [B, D], new_state)``.

        Self attention (``causal=True``): ``state`` from ``init_state`` or a ``forward(...,
        return_state=True)`` over the prompt. Cross attention (``causal=False``): the
        :class:`ContextCache` of ``init_state(..., context=...)``.
        """
        name = type(self).__name__
        if x_t.dim() != 2 or x_t.shape[-1] != self.d_model:
            raise ValueError(f"{name}: x_t must be [batch, d_model={self.d_model}], got {tuple(x_t.shape)}")
        pattern = _pattern(self.causal, isinstance(state, ContextCache))
        if pattern == "noncausal_self":
            raise ValueError(f"{name}: step needs causal=True (a non-causal mixer sees the future), or for cross "
                             "attention the state of init_state(context=...)")
        if pattern == "causal_cross":
            raise ValueError(f"{name}: causal cross attention lines query i up with key i + S - T, which depends on "
                             "the whole query length T; step cross attention with causal=False")
        if pattern not in self.patterns:
            raise ValueError(f"{name}: pattern {pattern!r} is not supported; it supports {sorted(self.patterns)}")
        if x_t.shape[0] == 0:  # no sequence: nothing to mix
            return x_t.new_zeros(x_t.shape), state  # [0, D]
        return self._step(x_t, state)

    def _step(self, x_t: Tensor, state: State) -> tuple[Tensor, State]:
        """One token as a piece of length one: ``forward`` with the state carried."""
        y, state = self._forward(x_t[:, None], context=None, mask=None, state=state, return_state=True)  # [B, 1, D]
        return y[:, 0], state

    def state_size(self, seq_len: int) -> int:
        """Floats per sequence kept at inference after ``seq_len`` tokens (KV cache or state)."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, n_heads={self.n_heads}, causal={self.causal}, impl={self.impl!r}"


# ---------------------------------------------------------------- registry
_REGISTRY: dict[str, type[Mixer]] = {}


def register_mixer(name: str):
    """Class decorator: ``@register_mixer("gla")`` makes the class buildable by name."""

    def wrap(cls: type[Mixer]) -> type[Mixer]:
        if not (isinstance(cls, type) and issubclass(cls, Mixer)):
            raise TypeError(f"register_mixer({name!r}) decorates Mixer subclasses, got {cls!r}")
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"mixer name {name!r} is already registered by {_REGISTRY[name].__qualname__}")
        bad = set(cls.patterns) - set(PATTERNS)
        if not cls.patterns or bad:
            raise ValueError(f"{cls.__name__}.patterns must be a non-empty subset of {PATTERNS}, bad: {sorted(bad)}")
        cls.registry_name = name
        _REGISTRY[name] = cls
        return cls

    return wrap


def _ensure_builtin_mixers() -> None:
    import seqmix.core.mixers  # noqa: F401  (imports every mixer module, which registers it)


def list_mixers() -> list[str]:
    """Names of every registered mixer, sorted."""
    _ensure_builtin_mixers()
    return sorted(_REGISTRY)


def get_mixer_class(name: str) -> type[Mixer]:
    _ensure_builtin_mixers()
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, _REGISTRY, n=3)
        hint = f" Did you mean {close}?" if close else ""
        raise KeyError(f"unknown mixer {name!r}.{hint} Registered mixers: {sorted(_REGISTRY)}")
    return _REGISTRY[name]


def mixer_arguments(cls: type[Mixer]) -> dict[str, inspect.Parameter]:
    """The typed constructor arguments of a mixer (its config schema), d_model excluded."""
    params = dict(inspect.signature(cls.__init__).parameters)
    params.pop("self", None)
    params.pop("d_model", None)
    return params


def build_mixer(name: str, d_model: int, **arguments: object) -> Mixer:
    """Build a registered mixer: ``build_mixer("gla", 256, n_heads=4)``.

    Unknown argument names fail with the list of arguments the mixer takes.
    """
    cls = get_mixer_class(name)
    allowed = mixer_arguments(cls)
    unknown = sorted(set(arguments) - set(allowed))
    if unknown:
        raise TypeError(f"mixer {name!r} got unknown arguments {unknown}; it takes {sorted(allowed)}")
    return cls(d_model, **arguments)


def build_reference_mixer(name: str, d_model: int, n_heads: int) -> Mixer:
    """The mixer ``name`` at a reference size, for tables (``seqmix mixers``, the README's).

    Its first test config without the tiny sizes, causal when it supports a causal pattern,
    and ``n_heads`` where it takes heads (not every mixer has them).
    """
    cls = get_mixer_class(name)
    takes = mixer_arguments(cls)
    causal = any(p.startswith("causal") for p in cls.patterns)
    arguments = {k: v for k, v in dict(cls.test_configs[0]).items() if k not in ("n_heads", "causal")}
    arguments.update({k: v for k, v in (("n_heads", n_heads), ("causal", causal)) if k in takes})
    return cls(d_model, **arguments)
