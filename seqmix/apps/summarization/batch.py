"""ACLSum examples as tensors: one example per (paper, aspect), its source as sentences of word ids.

Only torch is imported here (no Lightning): ``predict`` encodes a paper with this module, and
:mod:`.datamodule` batches the splits with it.

Limits (the model's input size) and how a longer paper is cut: at most ``max_sentences`` sentences and
``max_words`` words per sentence. The abstract and the conclusion are kept whole and the introduction is cut
from its end (the introduction is the longest section and its tail is the least often highlighted); if the
abstract and conclusion alone exceed the limit, the conclusion is cut from its end too. A sentence longer than
``max_words`` keeps its first ``max_words`` words. ``sentence_ids`` maps every kept sentence to its index in
the paper, so predictions always name the paper's own sentence ids. The summary is cut to ``max_summary_len``
words (ACLSum's are at most 25) and ends with ``</s>``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from seqmix.apps.summarization.data import ASPECTS, Paper
from seqmix.apps.summarization.vocab import BOS_ID, EOS_ID, PAD_ID, Vocabulary, tokenize

SECTION_IDS = {"abstract": 0, "introduction": 1, "conclusion": 2}


def kept_sentences(paper: Paper, max_sentences: int) -> list[int]:
    """The sentence ids kept under ``max_sentences`` (module docstring: the introduction is cut first)."""
    if len(paper.sentences) <= max_sentences:
        return list(range(len(paper.sentences)))
    abstract, intro, conclusion = (paper.section_indices(s) for s in ("abstract", "introduction", "conclusion"))
    room = max_sentences - len(abstract) - len(conclusion)
    if room >= 0:
        return abstract + intro[:room] + conclusion
    return (abstract + conclusion)[:max_sentences]


@dataclass
class Example:
    """One (paper, aspect) example, unpadded."""

    paper_id: str
    aspect: int
    words: list[list[int]]  # [S][W] vocabulary ids (<unk> for rare words)
    words_ext: list[list[int]]  # [S][W] ids with the example's out-of-vocabulary words numbered after the vocabulary
    oovs: list[str]
    sentence_ids: list[int]  # [S] index of each kept sentence in the paper
    sections: list[int]  # [S]
    highlights: list[float]  # [S] the aspect's gold labels
    target: list[int]  # summary ids (extended) + </s>


def encode_example(paper: Paper, aspect: str, vocab: Vocabulary, *, max_sentences: int, max_words: int,
                   max_summary_len: int) -> Example:
    keep = kept_sentences(paper, max_sentences)
    oovs: list[str] = []
    tokens = [tokenize(paper.sentences[i])[:max_words] or [paper.sentences[i][:1] or "."] for i in keep]
    words_ext = [vocab.encode_source(t, oovs) for t in tokens]
    summary = tokenize(paper.summaries[aspect])[:max_summary_len]
    return Example(
        paper_id=paper.id, aspect=ASPECTS.index(aspect), words=[vocab.encode(t) for t in tokens],
        words_ext=words_ext, oovs=oovs, sentence_ids=keep, sections=[SECTION_IDS[paper.sections[i]] for i in keep],
        highlights=[float(paper.highlights[aspect][i]) for i in keep],
        target=vocab.encode_target(summary, oovs) + [EOS_ID])


@dataclass
class Batch:
    """A padded batch. ``words``/``words_ext``: [B, S, W]; ``word_mask``: [B, S, W]; ``sentence_mask``,
    ``sections``, ``highlights``, ``sentence_ids`` (-1 padded): [B, S]; ``aspect``: [B]; ``target``
    (extended ids, ``</s>`` last, <pad> padded) and ``target_input`` (``<s>`` + target[:-1], out-of-vocabulary
    ids folded to ``<unk>``): [B, L]; ``n_oov``: [B]; ``oovs`` and ``paper_ids``: one list per example."""

    words: Tensor
    words_ext: Tensor
    word_mask: Tensor
    sentence_mask: Tensor
    sections: Tensor
    highlights: Tensor
    sentence_ids: Tensor
    aspect: Tensor
    target: Tensor
    target_input: Tensor
    n_oov: Tensor
    oovs: list[list[str]]
    paper_ids: list[str]

    def to(self, device: torch.device | str) -> "Batch":
        return Batch(**{k: (v.to(device) if isinstance(v, Tensor) else v) for k, v in vars(self).items()})


def collate(items: Sequence[Example], vocab_size: int) -> Batch:
    b = len(items)
    s = max(len(e.words) for e in items)
    w = max(len(sent) for e in items for sent in e.words)
    length = max(len(e.target) for e in items)
    words = torch.full((b, s, w), PAD_ID, dtype=torch.long)  # [B, S, W]
    words_ext = torch.full((b, s, w), PAD_ID, dtype=torch.long)  # [B, S, W]
    sentence_ids = torch.full((b, s), -1, dtype=torch.long)  # [B, S]
    sections = torch.zeros(b, s, dtype=torch.long)  # [B, S]
    highlights = torch.zeros(b, s)  # [B, S]
    target = torch.full((b, length), PAD_ID, dtype=torch.long)  # [B, L]
    for i, e in enumerate(items):
        for j, (ids, ext) in enumerate(zip(e.words, e.words_ext)):
            words[i, j, : len(ids)] = torch.tensor(ids)
            words_ext[i, j, : len(ext)] = torch.tensor(ext)
        n = len(e.words)
        sentence_ids[i, :n] = torch.tensor(e.sentence_ids)
        sections[i, :n] = torch.tensor(e.sections)
        highlights[i, :n] = torch.tensor(e.highlights)
        target[i, : len(e.target)] = torch.tensor(e.target)
    target_input = torch.cat((torch.full((b, 1), BOS_ID), target[:, :-1]), 1)  # [B, L]
    target_input = torch.where(target_input >= vocab_size, 1, target_input)  # extended ids -> <unk> as inputs
    return Batch(words=words, words_ext=words_ext, word_mask=words != PAD_ID, sentence_mask=sentence_ids >= 0,
                 sections=sections, highlights=highlights, sentence_ids=sentence_ids,
                 aspect=torch.tensor([e.aspect for e in items]), target=target, target_input=target_input,
                 n_oov=torch.tensor([len(e.oovs) for e in items]), oovs=[e.oovs for e in items],
                 paper_ids=[e.paper_id for e in items])
