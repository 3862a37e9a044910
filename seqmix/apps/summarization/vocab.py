"""Words of the summarization app: one tokeniser for sources, summaries and raw text, and the vocabulary
built from the training papers only (their sentences and summaries), so nothing of validation or test leaks.

ACLSum's sentences are already tokenised (``"results , which"``); summaries and user text are not, so the
one tokeniser lower-cases and splits words from punctuation (``"Results, which"`` -> ``results , which``);
on ACLSum's sentences it is the identity up to case.

Pointer-generator copying (See et al. 2017) needs words outside the vocabulary: :meth:`Vocabulary.encode_source`
gives each out-of-vocabulary source word a temporary id ``len(vocab) + j`` for the ``j``-th distinct one
in that example, and :meth:`Vocabulary.encode_target` maps summary words to those ids when they occur in the
source, so a copied rare word is scored and decoded as itself.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Iterable, Sequence

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<s>", "</s>"
SPECIALS: tuple[str, ...] = (PAD, UNK, BOS, EOS)
PAD_ID, UNK_ID, BOS_ID, EOS_ID = range(4)
_TOKEN = re.compile(r"[a-z0-9]+(?:[-'.][a-z0-9]+)*|[^\sa-z0-9]")


def tokenize(text: str) -> list[str]:
    """Lower-cased words and punctuation marks: ``"Results, e.g. 3.5%"`` -> ``results , e.g 3.5 %``-like tokens."""
    return _TOKEN.findall(text.lower())


class Vocabulary:
    """Word <-> id; ids 0-3 are ``<pad> <unk> <s> </s>``."""

    def __init__(self, words: Sequence[str]):
        if tuple(words[: len(SPECIALS)]) != SPECIALS:
            raise ValueError(f"a vocabulary starts with {SPECIALS}; got {tuple(words[:4])}")
        if len(set(words)) != len(words):
            raise ValueError("a vocabulary lists each word once")
        self.words = list(words)
        self.ids = {w: i for i, w in enumerate(self.words)}

    @classmethod
    def build(cls, texts: Iterable[str], *, max_size: int, min_count: int) -> "Vocabulary":
        """The ``max_size`` most frequent tokens seen at least ``min_count`` times (ties: alphabetical)."""
        if max_size <= len(SPECIALS) or min_count < 1:
            raise ValueError(f"vocabulary: need max_size > {len(SPECIALS)} and min_count >= 1, got {max_size}, "
                             f"{min_count}")
        counts = Counter(tok for text in texts for tok in tokenize(text))
        ranked = sorted((w for w, c in counts.items() if c >= min_count and w not in SPECIALS),
                        key=lambda w: (-counts[w], w))
        return cls([*SPECIALS, *ranked[: max_size - len(SPECIALS)]])

    def __len__(self) -> int:
        return len(self.words)

    def encode(self, tokens: Sequence[str]) -> list[int]:
        return [self.ids.get(t, UNK_ID) for t in tokens]

    def encode_source(self, tokens: Sequence[str], oovs: list[str]) -> list[int]:
        """Ids with each out-of-vocabulary token numbered after the vocabulary; new ones are appended to ``oovs``."""
        out = []
        for t in tokens:
            i = self.ids.get(t)
            if i is None:
                if t not in oovs:
                    oovs.append(t)
                i = len(self.words) + oovs.index(t)
            out.append(i)
        return out

    def encode_target(self, tokens: Sequence[str], oovs: Sequence[str]) -> list[int]:
        """Ids of a summary: a word outside the vocabulary gets its source id when the source has it, else ``<unk>``."""
        return [self.ids.get(t, len(self.words) + oovs.index(t) if t in oovs else UNK_ID) for t in tokens]

    def decode(self, ids: Iterable[int], oovs: Sequence[str] = ()) -> list[str]:
        """Tokens of ids (extended ids through ``oovs``), stopping at ``</s>`` and skipping ``<pad>`` / ``<s>``."""
        out = []
        for i in ids:
            if i == EOS_ID:
                break
            if i in (PAD_ID, BOS_ID):
                continue
            out.append(self.words[i] if i < len(self.words) else oovs[i - len(self.words)])
        return out
