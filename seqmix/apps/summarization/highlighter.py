"""The highlighter: the extractive "highlight" step of Read-Highlight-Summarize, scoring every sentence of a
paper for one aspect and selecting the summary's sentences.

    z        = HierarchicalEncoder(paper, aspect)                [B, S, D]  (the aspect is an encoder input)
    p_s      = P_first[min(i_s, 15)] + P_last[min(j_s, 15)]      [B, S, D]  i_s / j_s: the sentence's place from
                                                                            the start / end of its section
    score_s  = w . GELU(W (z_s + p_s) + b) + c                   [B, S]     one logit per sentence
    L_high   = BCE(score, highlight; pos_weight)                 masked mean over the kept sentences

The encoder's mixers see no order (a softmax sentence mixer is permutation-equivariant), yet where a sentence
stands says much (the challenge is often the abstract's first sentence, the outcome its last): ``positions``
adds learned embeddings of the place within the section, from its start and from its end (capped at 15).
``pos_weight`` weighs the positives' term (ACLSum highlights about 5 of 38 sentences per aspect: a weight
near 38 / 5 - 1 balances them). Selection:

- ``top_k``: the ``top_k`` highest-scoring sentences (all of them when the paper has fewer);
- ``pointer``: a Pointer Network (:class:`~seqmix.apps.summarization.pointer.PointerDecoder`, Vinyals et al.
  2015) over the same sentence states picks sentences until it points to STOP, at most ``max_select``;
  its teacher-forced loss is added to ``L_high`` (``loss = bce + pointer``).

The summary is the selected sentences joined in document order; :class:`Output.sentence_scores` are
``sigmoid(score)``. Left out: Read-Highlight-Summarize's joint training with the abstractive summarizer
(:mod:`.summarizer` reads the scores as a prior instead).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seqmix.apps.summarization.batch import Batch
from seqmix.apps.summarization.encoder import HierarchicalEncoder
from seqmix.apps.summarization.network import Output, SummarizationNetwork
from seqmix.apps.summarization.pointer import PointerDecoder
from seqmix.core.blocks import MixerFactory, mixer_factory
from seqmix.core.mixer import check_int

MAX_PLACE = 15  # places within a section beyond this share one embedding


class Highlighter(SummarizationNetwork):
    """Sentence scores per aspect, trained against the gold highlights (module docstring).

    Args:
        vocab_words: the vocabulary (linked from the datamodule by the training module).
        d_model, word_mixer, sentence_mixer, word_layers, sentence_layers, glove, dropout: the
            :class:`~seqmix.apps.summarization.encoder.HierarchicalEncoder`'s.
        pos_weight: weight of the positive (highlighted) sentences in the BCE (1 = unweighted).
        selection: ``top_k`` by score, or ``pointer`` (a Pointer Network decoder, trained beside the scores).
        top_k: sentences selected with ``selection: top_k``.
        max_select: the most sentences the pointer picks (``selection: pointer``).
        positions: add the within-section position embeddings to the sentence states (module docstring).
    """

    def __init__(self, vocab_words: list[str], d_model: int = 128,
                 word_mixer: MixerFactory = mixer_factory("softmax", n_heads=4, causal=False),
                 sentence_mixer: MixerFactory = mixer_factory("softmax", n_heads=4, causal=False),
                 word_layers: int = 1, sentence_layers: int = 2, glove: bool = True, dropout: float = 0.1,
                 pos_weight: float = 6.0, selection: Literal["top_k", "pointer"] = "top_k", top_k: int = 1,
                 max_select: int = 3, positions: bool = True):
        super().__init__()
        if selection not in ("top_k", "pointer"):
            raise ValueError(f"Highlighter: selection={selection!r} is unknown; choose 'top_k' or 'pointer'")
        if not pos_weight > 0:
            raise ValueError(f"Highlighter: pos_weight must be > 0 (1 = unweighted BCE), got {pos_weight}")
        check_int("Highlighter", "top_k", top_k, meaning="sentences selected by score")
        self.selection, self.top_k, self.pos_weight = selection, top_k, float(pos_weight)
        self.encoder = HierarchicalEncoder(vocab_words, d_model, word_mixer, sentence_mixer, word_layers,
                                           sentence_layers, glove, dropout)
        self.score = nn.Sequential(nn.Linear(d_model, d_model), nn.GELU(), nn.Linear(d_model, 1))
        self.pointer = PointerDecoder(d_model, max_select) if selection == "pointer" else None
        self.from_start = nn.Embedding(MAX_PLACE + 1, d_model) if positions else None
        self.from_end = nn.Embedding(MAX_PLACE + 1, d_model) if positions else None

    def places(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """Each sentence's place in its section from the start and from the end, capped: ``[B, S]`` each."""
        sections, mask = batch.sections, batch.sentence_mask
        same = (sections[:, :, None] == sections[:, None, :]) & mask[:, None, :] & mask[:, :, None]  # [B, S, S]
        before = torch.ones_like(same).tril(-1) & same  # [B, S, S]: j < i in the same section
        after = torch.ones_like(same).triu(1) & same
        return before.sum(2).clamp(max=MAX_PLACE), after.sum(2).clamp(max=MAX_PLACE)

    def forward(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """Sentence logits ``[B, S]`` (-inf on padding) and the sentence states ``[B, S, D]``."""
        z = self.encoder(batch).sentences  # [B, S, D]
        if self.from_start is not None:
            start, end = self.places(batch)
            z = z + self.from_start(start) + self.from_end(end)  # [B, S, D]
        logits = self.score(z).squeeze(-1)  # [B, S]
        return logits.masked_fill(~batch.sentence_mask, float("-inf")), z

    def loss(self, batch: Batch) -> dict[str, Tensor]:
        logits, z = self(batch)
        mask = batch.sentence_mask
        weight = torch.tensor(self.pos_weight, device=logits.device)
        bce = F.binary_cross_entropy_with_logits(logits[mask], batch.highlights[mask], pos_weight=weight)
        parts = {"bce": bce}
        if self.pointer is not None:
            parts["pointer"] = self.pointer.loss(z, mask, batch.highlights)
        return {"loss": sum(parts.values()), **parts}

    def select(self, logits: Tensor, z: Tensor, mask: Tensor) -> list[list[int]]:
        """Positions (into the kept sentences) selected per example: top-k by logit, or the pointer's."""
        if self.pointer is not None:
            return self.pointer.decode(z, mask)
        out = []
        for row, valid in zip(logits, mask):
            k = min(self.top_k, int(valid.sum()))
            out.append(row.topk(k).indices.tolist())
        return out

    def generate(self, batch: Batch) -> list[Output]:
        logits, z = self(batch)
        probs = torch.sigmoid(logits)  # [B, S]; 0 on padding
        outputs = []
        for i, positions in enumerate(self.select(logits, z, batch.sentence_mask)):
            n = int(batch.sentence_mask[i].sum())
            ids = batch.sentence_ids[i]
            outputs.append(Output(selected=sorted(int(ids[p]) for p in positions), tokens=None,
                                  sentence_scores=probs[i, :n].tolist()))
        return outputs
