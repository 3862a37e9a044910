"""Greedy and beam search for the summarization decoders, with trigram blocking and a length penalty.

Why not :func:`seqmix.core.decoding.generate`: that loop drives a :class:`~seqmix.core.decoding.Decoder`
whose next-token logits are a function of the stack's hidden state alone (``token_logits(hidden)``), and
its state is the stack's. The pointer-generator's next-token distribution also needs the coverage vector
(the sum of the earlier copy attentions, a state of its own), the source's extended ids (a vocabulary that
differs per example) and the highlight prior; and trigram blocking needs each hypothesis' history when its
candidates are scored. So this module drives a plain step function ``(tokens, state) -> (log_probs, state)``
whose state is any nest of batch-first tensors, reordered with the core's
:func:`~seqmix.core.decoding.select_batch` as in the core loop; the ranking rule is the core's (summed
log-probabilities, the best ended hypothesis by ``score / length ** length_penalty``).

Trigram blocking (Paulus et al. 2018): a hypothesis may not produce a token that would make a trigram it
already contains; ``min_length`` forbids ``</s>`` before that many tokens; ``forbid`` lists tokens never
produced (``<unk>``: a summary with it scores no word).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor

from seqmix.core.decoding import select_batch
from seqmix.core.mixer import State, check_int

StepFn = Callable[[Tensor, State], tuple[Tensor, State]]  # tokens [B] -> (log-probabilities [B, V'], state)


def repeated_trigram_tokens(history: Sequence[int]) -> set[int]:
    """The tokens ``c`` for which ``history + [c]`` would contain a trigram twice."""
    if len(history) < 2:
        return set()
    a, b = history[-2], history[-1]
    return {history[i + 2] for i in range(len(history) - 2) if history[i] == a and history[i + 1] == b}


def _check(beam_size: int, max_length: int, min_length: int, length_penalty: float) -> None:
    check_int("beam search", "beam_size", beam_size, minimum=1, meaning="hypotheses kept per example")
    check_int("beam search", "max_length", max_length, minimum=1, meaning="tokens generated at most, </s> included")
    check_int("beam search", "min_length", min_length, minimum=0, meaning="tokens before </s> may end a summary")
    if min_length >= max_length:
        raise ValueError(f"beam search: min_length={min_length} must be below max_length={max_length}")
    if length_penalty < 0:
        raise ValueError(f"beam search: length_penalty must be >= 0 (0: no length normalisation), got {length_penalty}")


def _mask_candidates(log_probs: Tensor, histories: list[list[int]], ended: Tensor, n: int, *, eos: int, pad: int,
                     min_length: int, block_trigrams: bool, forbid: Sequence[int]) -> Tensor:
    """``log_probs [N, V']`` with forbidden continuations at ``-inf``; an ended hypothesis continues with
    ``pad`` only, at no cost."""
    log_probs = log_probs.float().clone()
    for token in forbid:
        log_probs[:, token] = float("-inf")
    if n < min_length:
        log_probs[:, eos] = float("-inf")
    if block_trigrams:
        for row, history in enumerate(histories):
            blocked = repeated_trigram_tokens(history)
            if blocked:
                log_probs[row, list(blocked)] = float("-inf")
    pad_only = torch.full_like(log_probs, float("-inf"))
    pad_only[:, pad] = 0.0
    return torch.where(ended[:, None], pad_only, log_probs)


@torch.no_grad()
def greedy_search(step: StepFn, state: State, *, batch_size: int, bos: int, eos: int, pad: int, max_length: int,
                  min_length: int = 0, block_trigrams: bool = True, forbid: Sequence[int] = (),
                  device: torch.device | str | None = None) -> list[list[int]]:
    """The most likely allowed token at each step; one token list per example (``</s>`` and padding cut)."""
    _check(1, max_length, min_length, 1.0)
    tokens = torch.full((batch_size,), bos, dtype=torch.long, device=device)
    ended = torch.zeros(batch_size, dtype=torch.bool, device=device)
    histories: list[list[int]] = [[] for _ in range(batch_size)]
    for n in range(max_length):
        log_probs, state = step(tokens, state)
        log_probs = _mask_candidates(log_probs, histories, ended, n, eos=eos, pad=pad, min_length=min_length,
                                     block_trigrams=block_trigrams, forbid=forbid)
        tokens = log_probs.argmax(-1)  # [B]
        for row, token in enumerate(tokens.tolist()):
            if not ended[row]:
                histories[row].append(token)
        ended |= tokens == eos
        if bool(ended.all()):
            break
    return [[t for t in h if t != eos] for h in histories]


@torch.no_grad()
def beam_search(step: StepFn, state: State, *, batch_size: int, bos: int, eos: int, pad: int, beam_size: int,
                max_length: int, length_penalty: float = 1.0, min_length: int = 0, block_trigrams: bool = True,
                forbid: Sequence[int] = (), device: torch.device | str | None = None) -> list[list[int]]:
    """``beam_size`` hypotheses per example ranked by summed log-probability; the answer is the one with the
    best ``score / length ** length_penalty`` (length counts ``</s>``). ``state`` holds ``batch_size`` rows;
    one token list per example (``</s>`` and padding cut)."""
    _check(beam_size, max_length, min_length, length_penalty)
    k = beam_size
    rows = torch.arange(batch_size, device=device)
    state = select_batch(state, rows.repeat_interleave(k))  # [B * K] rows: each example's state per beam
    scores = torch.full((batch_size, k), float("-inf"), device=device)
    scores[:, 0] = 0.0  # one live hypothesis per example at first: the beams start identical
    tokens = torch.full((batch_size * k,), bos, dtype=torch.long, device=device)
    ended = torch.zeros(batch_size * k, dtype=torch.bool, device=device)
    lengths = torch.zeros(batch_size * k, dtype=torch.long, device=device)
    histories: list[list[int]] = [[] for _ in range(batch_size * k)]
    for n in range(max_length):
        log_probs, state = step(tokens, state)  # [B * K, V']
        log_probs = _mask_candidates(log_probs, histories, ended, n, eos=eos, pad=pad, min_length=min_length,
                                     block_trigrams=block_trigrams, forbid=forbid)
        vocab = log_probs.shape[-1]
        candidates = scores[:, :, None] + log_probs.view(batch_size, k, vocab)  # [B, K, V']
        scores, best = candidates.view(batch_size, k * vocab).topk(k, dim=-1)  # [B, K] each
        origin = (rows[:, None] * k + best // vocab).flatten()  # [B * K] the hypothesis each candidate extends
        tokens = (best % vocab).flatten()  # [B * K]
        histories = [histories[o] + ([] if ended[o] else [t]) for o, t in zip(origin.tolist(), tokens.tolist())]
        lengths = lengths[origin] + (~ended[origin]).long()
        ended = ended[origin] | (tokens == eos)
        if bool(ended.all()) or n == max_length - 1:
            break
        state = select_batch(state, origin)
    penalised = scores / lengths.view(batch_size, k).clamp(min=1).float() ** length_penalty  # [B, K]
    choice = (rows * k + penalised.argmax(-1)).tolist()  # the best hypothesis of each example
    return [[t for t in histories[c] if t != eos] for c in choice]
