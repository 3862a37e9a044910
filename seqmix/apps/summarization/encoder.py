"""The hierarchical encoder every summarization model reads its source with ("read", the first step of
Read-Highlight-Summarize): a word-level mixer stack over each sentence, pooled to a sentence vector, then a
sentence-level mixer stack across the sentences of the paper (non-causal).

    e[b, s, w] = E word[b, s, w]                      (GloVe 6B 50d rows for the words GloVe knows, projected)
    h[b, s]    = WordStack(e[b, s])                   [W, D] per sentence, any non-causal registered mixer
    u[b, s]    = masked mean over w of h[b, s, w] + section[b, s] + aspect[b]
    z[b]       = SentenceStack(u[b])                  [S, D] per paper, any non-causal registered mixer

Padding: mixers that take a key mask (``supports_mask``: the attention family) get the word / sentence
mask; for the others (recurrent and convolutional mixers in their non-causal form) the padded positions
carry zeros into the mixer, and the pooling and every later use ignore them — a sentence's vector can then
depend slightly on how much padding its batch has (a batch-size effect, not a leak between examples).
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import Tensor, nn

from seqmix.apps.summarization.data import ASPECTS
from seqmix.apps.summarization.batch import Batch
from seqmix.core.blocks import MixerFactory, MixerStack, mixer_factory


@dataclass
class Encoded:
    """``words: [B, S, W, D]`` word states, ``sentences: [B, S, D]`` sentence states, with their masks."""

    words: Tensor
    word_mask: Tensor
    sentences: Tensor
    sentence_mask: Tensor


_WEIGHTS_FOLLOW: ContextVar[bool] = ContextVar("weights_follow", default=False)


@contextmanager
def weights_follow() -> Iterator[None]:
    """Within it, networks are built only to receive a checkpoint's weights: :func:`glove_rows` reads no GloVe
    file and gives zero rows of the same shape (the checkpoint overwrites them), so loading a trained model
    reads neither GloVe nor anything else than the checkpoint."""
    token = _WEIGHTS_FOLLOW.set(True)
    try:
        yield
    finally:
        _WEIGHTS_FOLLOW.reset(token)


def glove_rows(vocab_words: list[str], dim: int) -> tuple[Tensor, Tensor]:
    """``(rows [V, 50], known [V])``: GloVe 6B 50d vectors of the vocabulary (zeros where GloVe lacks a word).
    Inside :func:`weights_follow`: zero rows, all marked known, and no file read."""
    if _WEIGHTS_FOLLOW.get():
        return torch.zeros(len(vocab_words), dim), torch.ones(len(vocab_words), dtype=torch.bool)
    from seqmix.apps.text.embeddings import load_glove

    index, table = load_glove()
    rows, known = torch.zeros(len(vocab_words), table.shape[1]), torch.zeros(len(vocab_words), dtype=torch.bool)
    for i, word in enumerate(vocab_words):
        j = index.get(word)
        if j is not None:
            rows[i], known[i] = torch.tensor(table[j]), True
    return rows, known


class HierarchicalEncoder(nn.Module):
    """Words -> sentences -> paper (module docstring).

    Args:
        vocab_words: the vocabulary (from the datamodule; saved with the model).
        d_model: width of every state.
        word_mixer, sentence_mixer: factories of non-causal registered mixers (``causal: false``).
        word_layers, sentence_layers: depth of each stack.
        glove: start the word embedding from GloVe 6B 50d (a learned projection to ``d_model``; words
            GloVe lacks start from a small random row) instead of a random embedding.
    """

    def __init__(self, vocab_words: list[str], d_model: int = 128,
                 word_mixer: MixerFactory = mixer_factory("softmax", n_heads=4, causal=False),
                 sentence_mixer: MixerFactory = mixer_factory("softmax", n_heads=4, causal=False),
                 word_layers: int = 1, sentence_layers: int = 2, glove: bool = True, dropout: float = 0.1):
        super().__init__()
        if d_model < 1:
            raise ValueError(f"HierarchicalEncoder: d_model must be >= 1, got {d_model}")
        self.vocab_size, self.d_model = len(vocab_words), d_model
        if glove:
            rows, known = glove_rows(vocab_words, 50)
            rows[~known] = torch.randn(int((~known).sum()), rows.shape[1]) * rows[known].std()
            self.embed = nn.Sequential(nn.Embedding.from_pretrained(rows, freeze=False, padding_idx=0),
                                       nn.Linear(rows.shape[1], d_model))
        else:
            self.embed = nn.Embedding(len(vocab_words), d_model, padding_idx=0)
        self.word_stack = MixerStack(d_model, word_layers, word_mixer, causal=False, dropout=dropout)
        self.sentence_stack = MixerStack(d_model, sentence_layers, sentence_mixer, causal=False, dropout=dropout)
        self.section = nn.Embedding(3, d_model)
        self.aspect = nn.Embedding(len(ASPECTS), d_model)
        self.dropout = nn.Dropout(dropout)

    @staticmethod
    def _mask_for(stack: MixerStack, mask: Tensor) -> Tensor | None:
        return mask if stack.blocks[0].mixer.supports_mask else None

    def forward(self, batch: Batch) -> Encoded:
        b, s, w = batch.words.shape
        word_mask = batch.word_mask & batch.sentence_mask[..., None]  # [B, S, W]
        e = self.dropout(self.embed(batch.words)) * word_mask[..., None]  # [B, S, W, D]
        flat = e.reshape(b * s, w, self.d_model)  # [B*S, W, D]
        flat_mask = word_mask.reshape(b * s, w)  # [B*S, W]
        flat_mask = flat_mask | ~flat_mask.any(1, keepdim=True)  # padded sentences: attend anywhere (ignored later)
        h = self.word_stack(flat, mask=self._mask_for(self.word_stack, flat_mask))  # [B*S, W, D]
        h = h.reshape(b, s, w, self.d_model) * word_mask[..., None]  # [B, S, W, D]
        pooled = h.sum(2) / word_mask.sum(2, keepdim=True).clamp(min=1)  # [B, S, D]
        u = pooled + self.section(batch.sections) + self.aspect(batch.aspect)[:, None]  # [B, S, D]
        u = u * batch.sentence_mask[..., None]
        z = self.sentence_stack(u, mask=self._mask_for(self.sentence_stack, batch.sentence_mask))  # [B, S, D]
        return Encoded(words=h, word_mask=word_mask, sentences=z * batch.sentence_mask[..., None],
                       sentence_mask=batch.sentence_mask)
