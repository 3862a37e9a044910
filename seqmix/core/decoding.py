"""The one generation loop: greedy, sampling (temperature, top-k, top-p) and beam search.

It drives any :class:`Decoder`: token embedding -> :class:`~seqmix.core.blocks.MixerStack` ->
logits, whatever its mixers (KV-cache attention, recurrent, cross attention in a decoder).
The prompt ``[B, T0]`` is prefilled with one ``forward(..., return_state=True)``; then each
new token goes through ``MixerStack.step`` (one token, every layer), so a step costs what
the mixers' ``step`` costs (a KV cache read, or a constant-size recurrent update).

Generation stops at ``max_new_tokens``, or earlier once every sequence has ended: it
produced ``end_token``, or ``stop(generated)`` said so. An ended sequence is padded with
``pad_token``; :attr:`Generation.lengths` says how many tokens each produced (its end
token included).

    out = generate(model, prompt, max_new_tokens=20)                                    # greedy
    out = generate(model, prompt, max_new_tokens=20, strategy="sample", top_p=0.9, seed=0)
    out = generate(model, prompt, max_new_tokens=20, strategy="beam", num_beams=4, length_penalty=1.0)
    out = generate(decoder, bos, max_new_tokens=50, context=memory, context_mask=memory_mask)  # seq2seq
"""

from __future__ import annotations

from typing import Callable, Literal, NamedTuple, Protocol, get_args

import torch
from torch import Tensor

from seqmix.core.blocks import MixerStack
from seqmix.core.mixer import State

Strategy = Literal["greedy", "sample", "beam"]
STRATEGIES: tuple[str, ...] = get_args(Strategy)
StopPredicate = Callable[[Tensor], Tensor]  # the generated tokens [B, n] -> bool [B]: this sequence has ended


class Decoder(Protocol):
    """What :func:`generate` drives: a causal model made of an embedding, a mixer stack and a head."""

    stack: MixerStack

    def embed_tokens(self, tokens: Tensor, offset: int) -> Tensor:
        """``tokens: [B, T]`` at positions ``offset .. offset + T - 1`` -> ``[B, T, D]``."""
        ...

    def token_logits(self, hidden: Tensor) -> Tensor:
        """The stack's output ``[..., D]`` -> next-token logits ``[..., V]``."""
        ...


class Generation(NamedTuple):
    """What :func:`generate` returns (the prompt not repeated)."""

    tokens: Tensor  # [B, N] int64, N <= max_new_tokens; pad_token after a sequence ended
    lengths: Tensor  # [B] int64: tokens each sequence generated, its end token included
    scores: Tensor  # [B] float: summed log-probabilities of its tokens (beam: divided by length ** length_penalty)


def select_batch(state: State, index: Tensor) -> State:
    """``state`` with its batch rows ``index: [B']`` (every tensor of dimension >= 1 is batch-first).

    Used to expand a state to the beams and to reorder it after each beam step.
    """
    if isinstance(state, Tensor):
        return state if state.dim() == 0 else state.index_select(0, index)  # a 0-dim counter is shared
    if isinstance(state, tuple) and hasattr(state, "_fields"):  # a NamedTuple state (KVCache, ...)
        return type(state)(*(select_batch(s, index) for s in state))
    if isinstance(state, (tuple, list)):
        return type(state)(select_batch(s, index) for s in state)
    if state is None or isinstance(state, (bool, int, float)):
        return state
    raise TypeError(f"select_batch: a state holds tensors, tuples, lists and numbers, got {type(state).__name__}")


def filter_logits(logits: Tensor, *, top_k: int | None, top_p: float | None) -> Tensor:
    """``logits: [B, V]`` with every token outside the top ``k`` and outside the nucleus set to ``-inf``.

    The nucleus (top-p) is the smallest set of most likely tokens whose probability reaches ``top_p``.
    """
    if top_k is not None:
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]  # [B, 1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None:
        sorted_logits, order = logits.sort(dim=-1, descending=True)  # [B, V]
        probs = sorted_logits.softmax(-1)
        outside = probs.cumsum(-1) - probs >= top_p  # the tokens before reach top_p already; never the first
        logits = logits.masked_fill(torch.zeros_like(outside).scatter(-1, order, outside), float("-inf"))
    return logits


def _check(prompt: Tensor, max_new_tokens: int, strategy: str, temperature: float, top_k: int | None,
           top_p: float | None, seed: int | None, num_beams: int, length_penalty: float) -> None:
    if prompt.dim() != 2 or prompt.dtype != torch.long or prompt.shape[1] == 0:
        raise ValueError(f"generate: prompt must be int64 [batch, time >= 1], got {prompt.dtype} "
                         f"{tuple(prompt.shape)}; start a sequence with a start token")
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"generate: max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
    if strategy not in STRATEGIES:
        raise ValueError(f"generate: strategy={strategy!r} is unknown; choose one of {STRATEGIES}")
    sampling = {"temperature": temperature != 1.0, "top_k": top_k is not None, "top_p": top_p is not None,
                "seed": seed is not None}
    beam = {"num_beams": num_beams != 1, "length_penalty": length_penalty != 1.0}
    for option, wanted in (("sample", sampling), ("beam", beam)):
        given = [name for name, set_ in wanted.items() if set_]
        if given and strategy != option:
            raise ValueError(f"generate: {', '.join(given)} apply to strategy={option!r}, not {strategy!r}; "
                             f"set strategy={option!r} or leave them at their defaults")
    if temperature <= 0:
        raise ValueError(f"generate: temperature must be > 0 (strategy='greedy' is the limit 0), got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"generate: top_k must be >= 1 or None, got {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"generate: top_p must be in (0, 1] or None, got {top_p}")
    if num_beams < 1:
        raise ValueError(f"generate: num_beams must be >= 1, got {num_beams}")


@torch.no_grad()
def generate(model: Decoder, prompt: Tensor, *, max_new_tokens: int, strategy: Strategy = "greedy",
             temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
             seed: int | None = None, num_beams: int = 1, length_penalty: float = 1.0,
             end_token: int | None = None, stop: StopPredicate | None = None, pad_token: int = 0,
             context: Tensor | None = None, context_mask: Tensor | None = None) -> Generation:
    """Continue ``prompt: [B, T0]`` by up to ``max_new_tokens`` tokens.

    Args:
        strategy: ``"greedy"`` (the most likely token), ``"sample"`` (from the softmax of
            ``logits / temperature`` restricted to the ``top_k`` tokens and the ``top_p``
            nucleus, drawn by a ``torch.Generator`` seeded with ``seed``; ``None``: torch's
            global generator) or ``"beam"`` (``num_beams`` hypotheses ranked by their summed
            log-probability; the best one by ``score / length ** length_penalty``).
        end_token: a sequence ends after producing it; ``stop(generated [B, n]) -> bool [B]``
            ends sequences too; after its end a sequence is padded with ``pad_token``.
        context, context_mask: the encoder output ``[B, S, D]`` and its key mask ``[B, S]``
            for a decoder stack with cross attention (projected once, kept in the state).
    """
    _check(prompt, max_new_tokens, strategy, temperature, top_k, top_p, seed, num_beams, length_penalty)
    x = model.embed_tokens(prompt, 0)  # [B, T0, D]
    hidden, states = model.stack(x, context=context, context_mask=context_mask, return_state=True)  # prefill
    logits = model.token_logits(hidden[:, -1])  # [B, V]
    step = _Stepper(model, states, offset=prompt.shape[1])
    if strategy == "beam":
        return _beam_search(step, logits, max_new_tokens, num_beams, length_penalty, end_token, stop, pad_token)
    generator = None
    if seed is not None:
        generator = torch.Generator(device=logits.device).manual_seed(seed)
    batch = prompt.shape[0]
    ended = torch.zeros(batch, dtype=torch.bool, device=prompt.device)
    lengths = torch.zeros(batch, dtype=torch.long, device=prompt.device)
    scores = torch.zeros(batch, device=prompt.device)
    # written in place: stacking a list of every token so far for each step made step n cost O(n)
    tokens = torch.full((batch, max_new_tokens), pad_token, dtype=torch.long, device=prompt.device)  # [B, N]
    for n in range(max_new_tokens):
        log_probs = logits.float().log_softmax(-1)  # [B, V]
        if strategy == "greedy":
            token = log_probs.argmax(-1)  # [B]
        else:
            filtered = filter_logits(logits.float() / temperature, top_k=top_k, top_p=top_p)
            token = torch.multinomial(filtered.softmax(-1), 1, generator=generator)[:, 0]  # [B]
        token = token.masked_fill(ended, pad_token)
        scores += log_probs.gather(-1, token[:, None])[:, 0].masked_fill(ended, 0.0)
        lengths += (~ended).long()
        tokens[:, n] = token
        ended |= _ended(tokens[:, : n + 1], token, end_token, stop)
        if bool(ended.all()) or n == max_new_tokens - 1:
            break
        logits = step(token)
    return Generation(tokens[:, : n + 1], lengths, scores)


class _Stepper:
    """One new token per call through embedding, the stack's ``step`` and the head; tracks the position."""

    def __init__(self, model: Decoder, states: list[State], offset: int):
        self.model, self.states, self.offset = model, states, offset

    def __call__(self, token: Tensor) -> Tensor:
        """``token: [B]`` -> the next logits ``[B, V]``."""
        x_t = self.model.embed_tokens(token[:, None], self.offset)[:, 0]  # [B, 1, D] -> [B, D]
        hidden, self.states = self.model.stack.step(x_t, self.states)
        self.offset += 1
        return self.model.token_logits(hidden)

    def select(self, index: Tensor) -> None:
        """Keep the batch rows ``index`` of the states (beam expansion and reordering)."""
        self.states = select_batch(self.states, index)


def _ended(generated: Tensor, token: Tensor, end_token: int | None, stop: StopPredicate | None) -> Tensor:
    """Bool ``[B]``: the sequences that end with this token."""
    ended = torch.zeros_like(token, dtype=torch.bool)
    if end_token is not None:
        ended |= token == end_token
    if stop is not None:
        verdict = stop(generated)
        if not isinstance(verdict, Tensor) or verdict.dtype != torch.bool or verdict.shape != token.shape:
            raise ValueError(f"generate: stop must return a bool tensor [batch={token.shape[0]}] "
                             f"(True = this sequence ended), got {verdict!r}")
        ended |= verdict
    return ended


def _beam_search(step: _Stepper, logits: Tensor, max_new_tokens: int, num_beams: int, length_penalty: float,
                 end_token: int | None, stop: StopPredicate | None, pad_token: int) -> Generation:
    """Beam search from the prompt's logits ``[B, V]``.

    Hypotheses are ranked by their summed log-probability; an ended one stays in the beam,
    extended by ``pad_token`` at no cost. The best hypothesis at the end is the one with the
    highest ``score / length ** length_penalty``.
    """
    batch, vocab, k = logits.shape[0], logits.shape[-1], num_beams
    device = logits.device
    rows = torch.arange(batch, device=device)
    step.select(rows.repeat_interleave(k))  # [B * K] states: each prompt's state copied to its beams
    logits = logits.repeat_interleave(k, 0)  # [B * K, V]
    scores = torch.full((batch, k), float("-inf"), device=device)
    scores[:, 0] = 0.0  # one live hypothesis per prompt at first: the beams start identical
    ended = torch.zeros(batch * k, dtype=torch.bool, device=device)
    lengths = torch.zeros(batch * k, dtype=torch.long, device=device)
    tokens = torch.zeros(batch * k, 0, dtype=torch.long, device=device)  # [B * K, n]
    for n in range(max_new_tokens):
        log_probs = logits.float().log_softmax(-1)  # [B * K, V]
        pad_only = torch.full_like(log_probs, float("-inf"))
        pad_only[:, pad_token] = 0.0  # an ended hypothesis continues with pad_token only, at no cost
        log_probs = torch.where(ended[:, None], pad_only, log_probs)
        candidates = scores[:, :, None] + log_probs.view(batch, k, vocab)  # [B, K, V]
        scores, best = candidates.view(batch, k * vocab).topk(k, dim=-1)  # [B, K] each
        origin = (rows[:, None] * k + best // vocab).flatten()  # [B * K] the beam each candidate extends
        token = (best % vocab).flatten()  # [B * K]
        tokens = torch.cat([tokens[origin], token[:, None]], 1)  # [B * K, n + 1]
        ended, lengths = ended[origin], lengths[origin] + (~ended[origin]).long()
        ended |= _ended(tokens, token, end_token, stop)
        if bool(ended.all()) or n == max_new_tokens - 1:
            break
        step.select(origin)
        logits = step(token)
    penalised = scores / lengths.view(batch, k).clamp(min=1).float() ** length_penalty  # [B, K]
    choice = rows * k + penalised.argmax(-1)  # [B] the best hypothesis of each prompt
    return Generation(tokens[choice], lengths[choice], penalised.flatten()[choice])
