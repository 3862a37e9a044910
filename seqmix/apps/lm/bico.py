"""BICO (Lv et al. 2023, "Are We Falling in a Middle-Intelligence Trap? An Analysis and Mitigation of the Reversal
Curse"): fine-tune a causal LM with bidirectional attention and mask denoising; the LM's ``objective: bico``.

What is implemented (the abstract's two changes, in the form of the authors' code, in our notation):

1. BICO's mode, bidirectional attention with mirrored positions (:func:`bidirectional`): every layer's softmax
   attention runs as :func:`~seqmix.core.mixers.softmax.mirrored_attention`. Query ``i`` scores a past or its
   own key ``j <= i`` with the ordinary rotary (relative offset ``j - i``) and a future key ``j > i`` with the
   rotary whose sine is negated for ``q`` and ``k`` (offset ``i - j``), so a score depends on the distance
   ``|i - j|`` and not on its side: what "A ... B" taught about B seen from A is reused when A is asked from B.
2. Mask denoising: about ``mask_ratio`` of a row's tokens (token-level, ``span = 1``, as the paper's 15%) have
   their input embeddings replaced by one learned vector ``m`` and are **hidden as keys** (no query attends to
   a masked position, on top of the key mask over padding): ``x~``, ``K = keys minus M``. The output at position
   ``i - 1`` predicts the original token at a masked position ``i``, the causal LM's shift kept so the
   pretrained head is reused::

       L_mask = - 1/|M| sum_{i in M} log p(x_i | h_{i-1}(x~)),   h = BICO-mode stack(x~, keys K)

3. Mixed objectives: each call (a batch) is, with probability ``causal_ratio`` (1/2 in the authors' code),
   plain next-token training in the causal mode instead, ``L_next = - 1/T sum_t log p(x_{t+1} | x_{<=t})``, so
   the causal LM is kept. The draw is made with the call's ``generator`` (seeded runs repeat).
4. Inference in BICO's mode (:func:`bidirectional_nats`): a continuation ``c`` of a prompt ``p`` is scored in one
   forward pass with a prefix-LM mask, as the authors' generation reads a prompt bidirectionally and then
   decodes after it: prompt positions attend to every prompt position (future ones mirrored), continuation
   positions causally to everything before them; ``c``'s log-likelihood is read from the outputs at positions
   ``len(p) - 1 .. len(p) + len(c) - 2``. No mask vector is appended.

Ours, off by default: ``segment_ratio``, the probability that a denoising row also has a marked segment
(``segments``, e.g. a fact's name) masked whole, so that the segment must be recalled from the rest of the row.

Superseded (removed) by the paper's form: plain ``causal = False`` attention with unmirrored rotary, span masks
as the default (``span > 1`` remains an option: spans start with probability ``mask_ratio / span``), scoring by
appending a mask vector after ``p c_{<j}``, and ``end_ratio`` (rows trained in that old scoring layout).

Left out: the paper's Llama scale and LoRA, the 80/10/10 replacement of BERT (the authors' code masks 100%),
and the GLM-style blank-infilling variants the paper compares with. BICO's mode needs softmax attention without a
window (the paper's Llama); other mixers are refused with a one-line error.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seqmix.apps.lm.data import IGNORE_INDEX
from seqmix.core.blocks import MixerStack
from seqmix.core.mixer import check_int
from seqmix.core.mixers.softmax import AttentionMixer, SoftmaxAttention


def check_bidirectional(stack: MixerStack) -> None:
    """Every layer's mixer can run in BICO's mode (softmax attention, no window, its own q/k), or a
    ``ValueError`` naming the first that cannot."""
    for i, block in enumerate(stack.blocks):
        mixer = block.mixer
        name = type(mixer).__name__
        if getattr(mixer, "recurrent", False) and not isinstance(mixer, AttentionMixer):
            raise ValueError(f"BICO needs bidirectional attention, but layer {i}'s {name} is a recurrent mixer (a "
                             "non-causal one would be another network); use softmax attention or objective: next_token")
        if not isinstance(mixer, AttentionMixer) or mixer.normalizer != "softmax" or mixer.window is not None:
            raise ValueError(f"BICO needs bidirectional attention with mirrored positions, implemented for softmax "
                             f"attention without a window, but layer {i}'s mixer is {name}; use softmax attention "
                             "or objective: next_token")
        if isinstance(mixer, SoftmaxAttention) and mixer.shares_attention:
            raise ValueError(f"BICO needs every layer's own attention, but layer {i} shares another layer's "
                             "(EchoAtt); build the stack without share_attention or use objective: next_token")


@contextlib.contextmanager
def bidirectional(stack: MixerStack, prefix: int | None = None):
    """Within the block, every mixer of ``stack`` is in BICO's mode (module docstring, 1): the first ``prefix``
    positions (``None``: all) attend in both directions, future keys with mirrored rotary; later positions
    attend causally (a prefix LM). Restored on exit, error or not."""
    check_bidirectional(stack)
    if prefix is not None:
        check_int("bidirectional", "prefix", prefix, minimum=0, meaning="positions read both ways")
    mixers = [block.mixer for block in stack.blocks]
    before = [(m.mirrored_bidirectional, m.bidirectional_prefix) for m in mixers]
    try:
        for mixer in mixers:
            mixer.mirrored_bidirectional, mixer.bidirectional_prefix = True, prefix
        yield stack
    finally:
        for mixer, (mode, kept) in zip(mixers, before):
            mixer.mirrored_bidirectional, mixer.bidirectional_prefix = mode, kept


def span_mask(batch: int, length: int, *, ratio: float, span: int, generator: torch.Generator | None = None,
              device: torch.device | str | None = None) -> Tensor:
    """``[B, T]`` bool: each position ``1 .. T - 1`` starts a masked span of ``span`` positions with probability
    ``ratio / span`` (``span = 1``: each token masked with probability ``ratio``, the paper's form); position 0 is
    never masked (the first target needs an output before it), and a row with no start gets one, uniformly."""
    starts = torch.rand(batch, length, generator=generator) < ratio / span  # [B, T]
    starts[:, 0] = False
    forced = torch.randint(1, max(2, length), (batch,), generator=generator)  # [B]
    empty = ~starts.any(1)
    starts[empty, forced[empty].clamp(max=length - 1)] = length > 1
    mask = starts.clone()
    for offset in range(1, span):
        mask[:, offset:] |= starts[:, :-offset]  # a start at s covers s .. s + span - 1
    return mask.to(device)


def causal_loss(net: nn.Module, inputs: Tensor, targets: Tensor) -> Tensor:
    """The next-token cross-entropy of ``net`` in its causal mode (IGNORE_INDEX targets skipped)."""
    logits = net(inputs)  # [B, T, V]
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE_INDEX)


class BICOObjective(nn.Module):
    """The mask vector ``m`` and BICO's mixed loss (module docstring, 2 and 3).

    Args:
        d_model: D, the LM's width.
        mask_ratio: the fraction of each row's tokens masked, in (0, 1); 0.15 as the authors.
        span: tokens per masked span; 1 = token-level masking, the paper's form.
        causal_ratio: the probability that a call is plain next-token training in the causal mode, in [0, 1);
            0.5 as the authors' code, 0 = mask denoising only.
        segment_ratio: ours, the probability that a denoising row also has its marked segment (``segments`` of
            :meth:`forward`) masked whole, in [0, 1]; 0 = off.
    """

    def __init__(self, d_model: int, *, mask_ratio: float = 0.15, span: int = 1, causal_ratio: float = 0.5,
                 segment_ratio: float = 0.0):
        super().__init__()
        name = type(self).__name__
        check_int(name, "span", span, meaning="tokens per masked span, 1 = token-level (the paper's)")
        if not 0 < mask_ratio < 1:
            raise ValueError(f"{name}: mask_ratio must lie in (0, 1) (the fraction of tokens masked), got {mask_ratio}")
        if not 0 <= causal_ratio < 1:
            raise ValueError(f"{name}: causal_ratio must lie in [0, 1) (the probability of a next-token batch; 0.5 "
                             f"as the paper's code, 0 = denoising only), got {causal_ratio}")
        if not 0 <= segment_ratio <= 1:
            raise ValueError(f"{name}: segment_ratio must lie in [0, 1] (the probability of masking a row's marked "
                             f"segment whole; 0 = off), got {segment_ratio}")
        self.mask_ratio, self.span = mask_ratio, span
        self.causal_ratio, self.segment_ratio = causal_ratio, segment_ratio
        self.mask_vector = nn.Parameter(torch.randn(d_model) * 0.02)  # m: [D]

    def masked_hidden(self, net: nn.Module, tokens: Tensor, masked: Tensor, key_mask: Tensor | None = None) -> Tensor:
        """``net``'s top-layer vectors ``[B, T, D]`` in BICO's mode over ``tokens: [B, T]`` with the ``masked: [B, T]``
        inputs replaced by ``m`` and hidden as keys; ``key_mask: [B, T]`` (True = a real token) hides padding."""
        x = net.embed_tokens(tokens)  # [B, T, D]
        x = torch.where(masked[..., None], self.mask_vector.to(x.dtype), x)
        keys = ~masked if key_mask is None else key_mask & ~masked  # [B, T]
        with bidirectional(net.stack):
            return net.stack(x, mask=keys)

    def draws_causal(self, generator: torch.Generator | None = None) -> bool:
        """Whether this call is a next-token batch (probability ``causal_ratio``), drawn from ``generator``."""
        return bool(torch.rand((), generator=generator) < self.causal_ratio)

    def masks(self, inputs: Tensor, segments: Tensor | None = None,
              generator: torch.Generator | None = None) -> Tensor:
        """The masked positions ``[B, T]`` of a denoising batch: :func:`span_mask`, and with ``segment_ratio`` each
        row's ``segments: [B, T]`` (bool) masked whole with that probability."""
        b, t = inputs.shape
        masked = span_mask(b, t, ratio=self.mask_ratio, span=self.span, generator=generator, device=inputs.device)
        if segments is not None and self.segment_ratio > 0:
            rows = (torch.rand(b, generator=generator) < self.segment_ratio).to(inputs.device)  # [B]
            masked = masked | (segments & rows[:, None])
            masked[:, 0] = False  # position 0 has no output before it
        return masked

    def denoising_loss(self, net: nn.Module, inputs: Tensor, targets: Tensor, masked: Tensor,
                       key_mask: Tensor | None = None) -> Tensor:
        """``L_mask`` of ``inputs, targets: [B, T]`` with the ``masked: [B, T]`` positions (module docstring, 2)."""
        hidden = self.masked_hidden(net, inputs, masked, key_mask=key_mask)  # [B, T, D]
        # the output at i - 1 predicts the masked input i: targets[:, i - 1] == inputs[:, i]
        predicting = masked[:, 1:] & (targets[:, :-1] != IGNORE_INDEX)  # [B, T - 1]: output i - 1 of masked input i
        logits = net.token_logits(hidden[:, :-1][predicting])  # [M, V]
        return F.cross_entropy(logits.float(), targets[:, :-1][predicting])

    def forward(self, net: nn.Module, inputs: Tensor, targets: Tensor, generator: torch.Generator | None = None,
                key_mask: Tensor | None = None, segments: Tensor | None = None) -> Tensor:
        """BICO's loss of a batch ``inputs, targets: [B, T]`` (``targets[:, t] = inputs[:, t + 1]``; padding has
        IGNORE_INDEX targets and ``key_mask: [B, T]`` False): ``L_next`` with probability ``causal_ratio``, else
        ``L_mask`` (module docstring, 3); ``segments: [B, T]`` for ``segment_ratio``."""
        if self.draws_causal(generator):
            return causal_loss(net, inputs, targets)
        return self.denoising_loss(net, inputs, targets, self.masks(inputs, segments, generator), key_mask)


def bidirectional_nats(net: nn.Module, prompt: list[int], continuations: list[list[int]],
                       batch_rows: int = 64) -> list[Tensor]:
    """Each continuation's ``[len(c)]`` nats in BICO's mode (module docstring, 4): ``prompt + c`` in one forward
    with the prompt read both ways and ``c`` causally, token ``j`` of ``c`` read at position ``len(prompt) + j - 1``
    (right-padded batches of ``batch_rows`` continuations, a key mask over the padding)."""
    if not prompt or not continuations or not all(continuations):
        raise ValueError("bidirectional_nats: the prompt and every continuation need at least one token")
    p = len(prompt)
    device = net.embed.weight.device
    out: list[Tensor] = []
    for start in range(0, len(continuations), batch_rows):
        chunk = continuations[start:start + batch_rows]
        length = p + max(len(c) for c in chunk) - 1  # the last token of c is a target only
        tokens = torch.zeros(len(chunk), length, dtype=torch.long, device=device)  # [R, L]
        keys = torch.zeros(len(chunk), length, dtype=torch.bool, device=device)
        for r, c in enumerate(chunk):
            tokens[r, :p + len(c) - 1] = torch.tensor(prompt + c[:-1], device=device)
            keys[r, :p + len(c) - 1] = True
        with bidirectional(net.stack, prefix=p):
            hidden = net.stack(net.embed_tokens(tokens), mask=keys)  # [R, L, D]
        logits = net.token_logits(hidden[:, p - 1:])  # [R, L - p + 1, V]: the outputs that predict c
        for r, c in enumerate(chunk):
            out.append(F.cross_entropy(logits[r, :len(c)].float(), torch.tensor(c, device=device), reduction="none"))
    return out
