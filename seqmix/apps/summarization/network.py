"""What every summarization network gives the training module: a loss on a batch, and an output per example.

The app's LightningModule trains any :class:`SummarizationNetwork` (the highlighter, the summarizer, the
seq2seq baseline) chosen by ``model.network.class_path`` in the config; it turns :class:`Output` s into
:class:`~seqmix.apps.summarization.baselines.Prediction` s with the paper's text and scores them all one way
(:func:`~seqmix.apps.summarization.baselines.evaluate`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from torch import Tensor, nn

from seqmix.apps.summarization.baselines import Prediction, extract
from seqmix.apps.summarization.batch import Batch
from seqmix.apps.summarization.data import Paper


@dataclass
class Output:
    """One example's result. ``selected``: the paper's sentence ids an extractive model chose (empty for a
    purely abstractive one); ``tokens``: the generated summary's words (None for an extractive model, whose
    summary is its selected sentences); ``sentence_scores``: a highlight score per kept sentence, in
    ``batch.sentence_ids`` order (None when the model has none) — the HTML page of ``predict`` shades by it."""

    selected: list[int] = field(default_factory=list)
    tokens: list[str] | None = None
    sentence_scores: list[float] | None = None


class SummarizationNetwork(nn.Module):
    """Base class: :meth:`loss` for training, :meth:`generate` for evaluation and ``predict``."""

    def loss(self, batch: Batch) -> dict[str, Tensor]:
        """``{"loss": scalar, <named parts>...}``; every part is logged."""
        raise NotImplementedError

    def generate(self, batch: Batch) -> list[Output]:
        """One :class:`Output` per example of ``batch`` (called under ``torch.no_grad`` in eval mode)."""
        raise NotImplementedError


# what the config's ``model.network`` builds: the network of a vocabulary (LightningCLI makes it a partial)
NetworkFactory = Callable[[list[str]], SummarizationNetwork]


def to_prediction(output: Output, paper: Paper, aspect: str) -> Prediction:
    """An extractive output's selected sentences of ``paper``, or an abstractive output's words."""
    if output.tokens is None:
        return extract(paper, aspect, output.selected)
    return Prediction(paper.id, aspect, " ".join(output.tokens), tuple(output.selected))
