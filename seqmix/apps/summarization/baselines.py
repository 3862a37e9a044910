"""The untrained rows of the summarization table, and the one evaluation every row goes through.

- ``first`` / ``last``: the first / last sentence of the abstract (the single-sentence heuristics the
  trained models must beat);
- ``gold_highlights``: the annotated highlight sentences concatenated (what a perfect highlighter
  extracts; not an upper bound of ROUGE, since the summaries are abstractive);
- ``oracle``: the greedy ROUGE oracle (Nallapati et al. 2017's labelling): add the sentence that raises
  ROUGE-1 + ROUGE-2 F1 against the reference the most, at most ``max_sentences`` of them, stopping when
  none raises it: the upper bound of extraction the table reports.

A :class:`Prediction` is what every model writes (paper id, aspect, summary, selected sentence ids), one
JSON line each, so anyone can re-score a model's file with :func:`evaluate`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

from seqmix.apps.files import atomic_write
from seqmix.apps.summarization.data import ASPECTS, Paper
from seqmix.apps.summarization.metrics import ROUGE_KEYS, ExtractionScore, Rouge, extraction_score, mean_extraction


@dataclass(frozen=True)
class Prediction:
    paper_id: str
    aspect: str
    summary: str
    selected: tuple[int, ...] = field(default=())  # source sentence ids; empty for a purely abstractive model


def extract(paper: Paper, aspect: str, selected: Sequence[int]) -> Prediction:
    """The extractive prediction of ``selected`` sentences, joined in document order."""
    ids = tuple(sorted(set(selected)))
    return Prediction(paper.id, aspect, " ".join(paper.sentences[i] for i in ids), ids)


def first_sentence(paper: Paper, aspect: str) -> Prediction:
    return extract(paper, aspect, paper.section_indices("abstract")[:1] or [0])


def last_sentence(paper: Paper, aspect: str) -> Prediction:
    return extract(paper, aspect, paper.section_indices("abstract")[-1:] or [len(paper.sentences) - 1])


def gold_highlights(paper: Paper, aspect: str) -> Prediction:
    return extract(paper, aspect, paper.highlighted(aspect))


def greedy_oracle(paper: Paper, aspect: str, rouge: Rouge, max_sentences: int = 3) -> Prediction:
    """At most ``max_sentences`` sentences chosen greedily by ROUGE-1 + ROUGE-2 F1 against the summary."""
    reference, chosen, best = paper.summaries[aspect], [], 0.0
    for _ in range(max_sentences):
        gains = []
        for i in range(len(paper.sentences)):
            if i in chosen:
                continue
            scores = rouge(extract(paper, aspect, [*chosen, i]).summary, reference)
            gains.append((scores["rouge1"] + scores["rouge2"], -i, i))
        if not gains:
            break
        score, _, i = max(gains)
        if score <= best:
            break
        chosen, best = [*chosen, i], score
    return extract(paper, aspect, chosen)


BASELINES: dict[str, Callable[[Paper, str], Prediction]] = {
    "first abstract sentence": first_sentence,
    "last abstract sentence": last_sentence,
    "gold highlights": gold_highlights,
}


def predict_all(rule: Callable[[Paper, str], Prediction], papers: Iterable[Paper],
                aspects: Sequence[str] = ASPECTS) -> list[Prediction]:
    return [rule(paper, aspect) for paper in papers for aspect in aspects]


@dataclass(frozen=True)
class Evaluation:
    """Mean ROUGE F1 per aspect and over all examples, and the extraction scores (None for a model that
    selects no sentences)."""

    rouge: dict[str, dict[str, float]]  # aspect (and "all") -> rouge key -> F1
    extraction: dict[str, ExtractionScore] | None  # aspect (and "all") -> P / R / F1
    n_examples: int


def evaluate(predictions: Sequence[Prediction], papers: Sequence[Paper], rouge: Rouge | None = None) -> Evaluation:
    """Score predictions against the papers' summaries and highlights; every prediction must name a paper
    of ``papers`` and a known aspect, and each (paper, aspect) may appear once."""
    rouge = rouge or Rouge()
    by_id = {paper.id: paper for paper in papers}
    seen: set[tuple[str, str]] = set()
    per_aspect: dict[str, list[tuple[dict[str, float], ExtractionScore]]] = {}
    extractive = all(p.selected for p in predictions)
    for p in predictions:
        if p.paper_id not in by_id:
            raise ValueError(f"prediction for paper {p.paper_id!r}, which is not in the evaluated split")
        if p.aspect not in ASPECTS:
            raise ValueError(f"prediction with unknown aspect {p.aspect!r}; choose one of {', '.join(ASPECTS)}")
        if (p.paper_id, p.aspect) in seen:
            raise ValueError(f"two predictions for paper {p.paper_id!r}, aspect {p.aspect!r}")
        seen.add((p.paper_id, p.aspect))
        paper = by_id[p.paper_id]
        scores = rouge(p.summary, paper.summaries[p.aspect])
        per_aspect.setdefault(p.aspect, []).append((scores, extraction_score(p.selected, paper.highlighted(p.aspect))))
    if not per_aspect:
        raise ValueError("no predictions to evaluate")
    groups = {**per_aspect, "all": [item for items in per_aspect.values() for item in items]}
    mean_rouge = {name: {key: sum(s[key] for s, _ in items) / len(items) for key in ROUGE_KEYS}
                  for name, items in groups.items()}
    extraction = ({name: mean_extraction([e for _, e in items]) for name, items in groups.items()}
                  if extractive else None)
    return Evaluation(mean_rouge, extraction, len(predictions))


def write_predictions(predictions: Sequence[Prediction], path: Path) -> None:
    """One JSON object per line (``paper_id``, ``aspect``, ``summary``, ``selected``), written whole or not at all."""
    lines = [json.dumps({**asdict(p), "selected": list(p.selected)}, ensure_ascii=False) for p in predictions]
    atomic_write(path, lambda tmp: tmp.write_text("\n".join(lines) + "\n", encoding="utf-8"))


def read_predictions(path: Path) -> list[Prediction]:
    out = []
    with open(path, encoding="utf-8") as file:
        for number, line in enumerate(file, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                out.append(Prediction(str(record["paper_id"]), str(record["aspect"]), str(record["summary"]),
                                      tuple(int(i) for i in record.get("selected", ()))))
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
                raise ValueError(f"{path}:{number}: not a prediction line ({type(error).__name__}: {error}); "
                                 "expected {\"paper_id\", \"aspect\", \"summary\", \"selected\"}") from None
    return out
