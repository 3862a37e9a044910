"""BICO (Lv et al. 2023, "Are We Falling in a Middle-Intelligence Trap? An Analysis and Mitigation of the Reversal
Curse"): fine-tune a causal LM with bidirectional attention and mask denoising; the LM's ``objective: bico``.

What is implemented (the abstract's two changes, in our notation):

1. Bidirectional attention: during BICO's forward every layer's mixer runs with ``causal = False``
   (:func:`bidirectional`): position ``i`` sees the whole window ``x_0 .. x_{T-1}``. Positions stay rotary
   (relative, so they hold in both directions). Only mixers that have the ``noncausal_self`` pattern can;
   a recurrent mixer is refused with a one-line error (its state is causal by construction).
2. Mask denoising: spans of the window (about ``mask_ratio`` of its tokens, spans of ``span`` tokens)
   have their input embeddings replaced by one learned vector ``m`` (:func:`span_mask`): ``x~``. The output
   at position ``i - 1`` predicts the original token at a masked position ``i``, the causal LM's shift kept
   so the pretrained head is reused::

       L_BICO = - 1/|M| sum_{i in M} log p(x_i | h_{i-1}(x~)),   h = bidirectional stack(x~)

Ours, off by default (``end_ratio``): a fraction of the rows is trained in the layout that BICO's mode is
scored in, a single mask at a random position ``k`` with everything after it hidden (key mask):
``x_0 .. x_{k-1} [m]`` predicts ``x_k`` from ``h_{k-1}``. Span masks alone always leave text on the right of
a span, so a model fine-tuned with them meets a mask at the end of the input only at test time.

Inference in BICO's mode (:func:`bidirectional_nats`): a continuation ``c`` of a prompt ``p`` is scored token
by token as in training: ``p c_{<j} [m]`` read at the position before ``[m]``, all in one batch with a key
mask over the padding. The model's ordinary causal mode (next-token generation) is untouched.

Left out: the paper's Llama scale, its exact masking schedule (ours: uniform span starts), and the GLM-style
blank-infilling variants the paper compares with.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seqmix.apps.lm.data import IGNORE_INDEX
from seqmix.core.blocks import MixerStack
from seqmix.core.mixer import check_int


def check_bidirectional(stack: MixerStack) -> None:
    """Every layer's mixer can run non-causally, or a ``ValueError`` naming the first that cannot."""
    for i, block in enumerate(stack.blocks):
        mixer = block.mixer
        if "noncausal_self" not in mixer.patterns:
            raise ValueError(f"BICO needs bidirectional attention, but layer {i}'s {type(mixer).__name__} supports "
                             f"only {sorted(mixer.patterns)}; use an attention mixer (softmax, sliding_window, ...) "
                             "or objective: next_token")
        if getattr(mixer, "recurrent", False):
            raise ValueError(f"BICO needs bidirectional attention, but layer {i}'s {type(mixer).__name__} is a "
                             "recurrent mixer (a non-causal one would be another network); use an attention mixer "
                             "or objective: next_token")


@contextlib.contextmanager
def bidirectional(stack: MixerStack):
    """Within the block, every mixer of ``stack`` attends to the whole sequence (``causal = False``)."""
    check_bidirectional(stack)
    before = [block.mixer.causal for block in stack.blocks]
    try:
        for block in stack.blocks:
            block.mixer.causal = False
        yield stack
    finally:
        for block, causal in zip(stack.blocks, before):
            block.mixer.causal = causal


def span_mask(batch: int, length: int, *, ratio: float, span: int, generator: torch.Generator | None = None,
              device: torch.device | str | None = None) -> Tensor:
    """``[B, T]`` bool: ``round(ratio T / span)`` spans of ``span`` positions per row at uniform starts in
    ``1 .. T - 1`` (position 0 is never masked: the first target needs an output before it), at least one."""
    n_spans = max(1, round(ratio * length / span))
    starts = torch.randint(1, max(2, length), (batch, n_spans), generator=generator).to(device)  # [B, S]
    offsets = torch.arange(span, device=starts.device)  # [span]
    covered = (starts[..., None] + offsets).clamp(max=length - 1).flatten(1)  # [B, S, span] -> [B, S span]
    mask = torch.zeros(batch, length, dtype=torch.bool, device=starts.device)
    return mask.scatter_(1, covered, True)


class BICOObjective(nn.Module):
    """The mask vector ``m`` and BICO's loss (module docstring).

    Args:
        d_model: D, the LM's width.
        mask_ratio: about this fraction of each window's tokens is masked, in (0, 1).
        span: tokens per masked span.
        end_ratio: the fraction of rows trained with one mask at a random position and the rest hidden (the
            layout BICO's mode is scored in; ours, module docstring), in [0, 1); 0 = span masks only.
    """

    def __init__(self, d_model: int, *, mask_ratio: float = 0.3, span: int = 4, end_ratio: float = 0.0):
        super().__init__()
        check_int(type(self).__name__, "span", span, meaning="tokens per masked span, e.g. 4")
        if not 0 < mask_ratio < 1:
            raise ValueError(f"BICOObjective: mask_ratio must lie in (0, 1) (the fraction of tokens masked), got "
                             f"{mask_ratio}")
        if not 0 <= end_ratio < 1:
            raise ValueError(f"BICOObjective: end_ratio must lie in [0, 1) (the fraction of rows masked at a random "
                             f"end; 0 = span masks only), got {end_ratio}")
        self.mask_ratio, self.span, self.end_ratio = mask_ratio, span, end_ratio
        self.mask_vector = nn.Parameter(torch.randn(d_model) * 0.02)  # m: [D]

    def masked_hidden(self, net: nn.Module, tokens: Tensor, masked: Tensor, key_mask: Tensor | None = None) -> Tensor:
        """``net``'s bidirectional top-layer vectors ``[B, T, D]`` of ``tokens: [B, T]`` with the ``masked: [B, T]``
        inputs replaced by ``m``; ``key_mask: [B, T]`` (True = a real token) hides padding."""
        x = net.embed_tokens(tokens)  # [B, T, D]
        x = torch.where(masked[..., None], self.mask_vector.to(x.dtype), x)
        with bidirectional(net.stack):
            return net.stack(x, mask=key_mask)

    def end_masks(self, masked: Tensor, key_mask: Tensor | None,
                  generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """``end_ratio`` of the rows of ``masked, key_mask: [B, T]`` replaced by one mask at a random position
        ``k`` in ``1 .. n - 1`` (``n`` the row's real tokens, right padding) and the key mask ending there."""
        b, t = masked.shape
        keys = key_mask if key_mask is not None else torch.ones_like(masked)
        rows = (torch.rand(b, generator=generator) < self.end_ratio).to(masked.device)  # [B]
        real = keys.sum(1)  # [B]
        cut = 1 + (torch.rand(b, generator=generator).to(masked.device) * (real - 1).clamp(min=1)).long()  # [B]
        cut = torch.minimum(cut, (real - 1).clamp(min=1))
        position = torch.arange(t, device=masked.device)  # [T]
        end_masked = position == cut[:, None]  # [B, T]
        end_keys = (position <= cut[:, None]) & keys  # [B, T]
        return torch.where(rows[:, None], end_masked, masked), torch.where(rows[:, None], end_keys, keys)

    def forward(self, net: nn.Module, inputs: Tensor, targets: Tensor,
                generator: torch.Generator | None = None, key_mask: Tensor | None = None) -> Tensor:
        """``L_BICO`` of a window: ``inputs, targets: [B, T]`` (``targets[:, t] = inputs[:, t + 1]``; padding has
        IGNORE_INDEX targets and, with ``key_mask: [B, T]`` (True = a real token), is hidden from attention)."""
        b, t = inputs.shape
        masked = span_mask(b, t, ratio=self.mask_ratio, span=self.span, generator=generator, device=inputs.device)
        if self.end_ratio > 0:
            masked, key_mask = self.end_masks(masked, key_mask, generator)
        hidden = self.masked_hidden(net, inputs, masked, key_mask=key_mask)  # [B, T, D]
        # the output at i - 1 predicts the masked input i: targets[:, i - 1] == inputs[:, i]
        predicting = masked[:, 1:] & (targets[:, :-1] != IGNORE_INDEX)  # [B, T - 1]: output i - 1 of masked input i
        logits = net.token_logits(hidden[:, :-1][predicting])  # [M, V]
        return F.cross_entropy(logits.float(), targets[:, :-1][predicting])


def bidirectional_nats(net: nn.Module, objective: BICOObjective, prompt: list[int],
                       continuations: list[list[int]], batch_rows: int = 256) -> list[Tensor]:
    """Each continuation's ``[len(c)]`` nats in BICO's mode: token ``j`` of ``c`` from the input
    ``prompt + c[:j] + [m]``, read at the position before ``[m]`` (right-padded batches of ``batch_rows`` inputs,
    a key mask over the padding)."""
    if not prompt or not continuations or not all(continuations):
        raise ValueError("bidirectional_nats: the prompt and every continuation need at least one token")
    p = len(prompt)
    rows = [(c, j) for c in range(len(continuations)) for j in range(len(continuations[c]))]
    device = objective.mask_vector.device
    nats = torch.empty(len(rows), device=device)
    for start in range(0, len(rows), batch_rows):
        chunk = rows[start:start + batch_rows]
        length = p + max(j for _, j in chunk) + 1  # the prompt, j continuation tokens, the mask
        tokens = torch.zeros(len(chunk), length, dtype=torch.long, device=device)  # [R, L]
        masked = torch.zeros(len(chunk), length, dtype=torch.bool, device=device)
        keys = torch.zeros(len(chunk), length, dtype=torch.bool, device=device)
        for r, (c, j) in enumerate(chunk):
            tokens[r, :p + j] = torch.tensor(prompt + continuations[c][:j], device=device)
            masked[r, p + j] = True
            keys[r, :p + j + 1] = True
        hidden = objective.masked_hidden(net, tokens, masked, key_mask=keys)  # [R, L, D]
        before = torch.tensor([p + j - 1 for _, j in chunk], device=device)  # the position before each mask
        logits = net.token_logits(hidden[torch.arange(len(chunk), device=device), before])  # [R, V]
        wanted = torch.tensor([continuations[c][j] for c, j in chunk], device=device)
        nats[start:start + len(chunk)] = F.cross_entropy(logits.float(), wanted, reduction="none")
    out, at = [], 0
    for c in continuations:
        out.append(nats[at:at + len(c)])
        at += len(c)
    return out
