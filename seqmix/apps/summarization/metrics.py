"""The summarization metrics: ROUGE-1/2/L F1 with stemming (Lin 2004, Google's ``rouge-score`` package,
which works offline) against the abstractive aspect summary, and the extractive precision / recall / F1 of
the selected sentences against the gold highlights.

ROUGE-L here is the sentence-level longest common subsequence (``rougeL``); every ACLSum summary is one
sentence, so the summary-level ``rougeLsum`` (which needs NLTK's sentence splitter) would add nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

ROUGE_KEYS: tuple[str, ...] = ("rouge1", "rouge2", "rougeL")


def rouge_scorer():
    try:
        from rouge_score import rouge_scorer as scorer_module
    except ImportError as error:
        raise ModuleNotFoundError(f"ROUGE needs the `rouge-score` package ({error}); install it with "
                                  "`pip install rouge-score==0.1.2` (or `pip install -e .[summarization]`)") from None
    return scorer_module.RougeScorer(list(ROUGE_KEYS), use_stemmer=True)


class Rouge:
    """ROUGE F1 of predictions against references, one scorer reused (building one loads the stemmer)."""

    def __init__(self):
        self.scorer = rouge_scorer()

    def __call__(self, prediction: str, reference: str) -> dict[str, float]:
        """``{"rouge1": f1, "rouge2": f1, "rougeL": f1}`` of one prediction (an empty prediction scores 0)."""
        if not prediction.strip():
            return {key: 0.0 for key in ROUGE_KEYS}
        scores = self.scorer.score(reference, prediction)  # rouge-score's order: (target, prediction)
        return {key: scores[key].fmeasure for key in ROUGE_KEYS}

    def mean(self, pairs: Iterable[tuple[str, str]]) -> dict[str, float]:
        """Mean F1 over ``(prediction, reference)`` pairs."""
        totals, n = {key: 0.0 for key in ROUGE_KEYS}, 0
        for prediction, reference in pairs:
            for key, value in self(prediction, reference).items():
                totals[key] += value
            n += 1
        if n == 0:
            raise ValueError("ROUGE of no examples: give at least one (prediction, reference) pair")
        return {key: value / n for key, value in totals.items()}


@dataclass(frozen=True)
class ExtractionScore:
    precision: float
    recall: float
    f1: float


def extraction_score(selected: Sequence[int], gold: Sequence[int]) -> ExtractionScore:
    """Precision, recall and F1 of the selected sentence ids against the gold highlighted ids of one example.
    No gold sentence and none selected counts as perfect; one side empty, the other not, as 0."""
    chosen, truth = set(selected), set(gold)
    if not chosen and not truth:
        return ExtractionScore(1.0, 1.0, 1.0)
    hits = len(chosen & truth)
    precision = hits / len(chosen) if chosen else 0.0
    recall = hits / len(truth) if truth else 0.0
    f1 = 2 * precision * recall / (precision + recall) if hits else 0.0
    return ExtractionScore(precision, recall, f1)


def mean_extraction(scores: Sequence[ExtractionScore]) -> ExtractionScore:
    """The macro average over examples."""
    if not scores:
        raise ValueError("extraction score of no examples")
    n = len(scores)
    return ExtractionScore(sum(s.precision for s in scores) / n, sum(s.recall for s in scores) / n,
                           sum(s.f1 for s in scores) / n)
