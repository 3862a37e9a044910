"""ACLSum (Takeshita et al. 2024) read from the installed ``aclsum`` package, checked line by line.

``aclsum==0.1.2`` (PyPI, 5 MB) ships ``aclsum/dataset/{train,val,test}.jsonl``: 100 / 50 / 100 ACL
papers. A paper has the pre-tokenised sentences of its abstract, introduction and conclusion, a
one-sentence abstractive summary for each of three aspects (challenge, approach, outcome) and a 0/1
extractive highlight label per sentence per aspect. The source of an example is the abstract, then the
introduction, then the conclusion, in order, each sentence marked with its section; one example per
(paper, aspect), the aspect being an input of the models.

Every record is checked when read (fields present, the three sections and aspects, one 0/1 label per
sentence, non-empty summaries): a malformed file fails with one line naming the file, the line and the
field, never deep inside a model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Literal, Mapping

ASPECTS: tuple[str, ...] = ("challenge", "approach", "outcome")
SECTIONS: tuple[str, ...] = ("abstract", "introduction", "conclusion")
SPLITS: tuple[str, ...] = ("train", "val", "test")
Split = Literal["train", "val", "test"]
INSTALL_HINT = "install it with `pip install aclsum==0.1.2` (or `pip install -e .[summarization]`)"


@dataclass(frozen=True)
class Paper:
    """One ACLSum paper: its source sentences in order (abstract, introduction, conclusion) with the
    section of each, the aspect summaries, and per aspect one 0/1 highlight label per sentence."""

    id: str
    title: str
    sentences: tuple[str, ...]
    sections: tuple[str, ...]
    summaries: Mapping[str, str]
    highlights: Mapping[str, tuple[int, ...]]

    def highlighted(self, aspect: str) -> list[int]:
        """Indices of the gold highlighted sentences for ``aspect``."""
        return [i for i, label in enumerate(self.highlights[aspect]) if label]

    def section_indices(self, section: str) -> list[int]:
        return [i for i, s in enumerate(self.sections) if s == section]


def check_aspect(aspect: str) -> str:
    if aspect not in ASPECTS:
        raise ValueError(f"unknown aspect {aspect!r}; choose one of {', '.join(ASPECTS)}")
    return aspect


def aclsum_dir() -> Path:
    """The ``dataset`` folder of the installed ``aclsum`` package (a one-line error when it is missing)."""
    try:
        import aclsum  # the package's own module imports `sienna`; only its files are needed here
    except ImportError as error:
        raise ModuleNotFoundError(f"the ACLSum data comes with the `aclsum` package, which is not installed "
                                  f"({error}); {INSTALL_HINT}") from None
    return Path(aclsum.__file__).parent / "dataset"


def split_file(split: str, root: Path | None = None) -> Path:
    if split not in SPLITS:
        raise ValueError(f"unknown ACLSum split {split!r}; choose one of {', '.join(SPLITS)}")
    path = (root if root is not None else aclsum_dir()) / f"{split}.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"ACLSum file {path} does not exist; {INSTALL_HINT}, or point data.root at a "
                                f"folder holding train.jsonl, val.jsonl and test.jsonl")
    return path


def parse_paper(record: object, where: str) -> Paper:
    """A :class:`Paper` from one decoded JSON record; ``where`` (``file:line``) starts every error."""
    def fail(problem: str) -> ValueError:
        return ValueError(f"{where}: {problem}; the file is not in ACLSum's format (aclsum==0.1.2)")

    if not isinstance(record, dict):
        raise fail(f"a record must be a JSON object, got {type(record).__name__}")
    for key in ("id", "title", "summary", "sentences", "highlights"):
        if key not in record:
            raise fail(f"missing field {key!r}")
    sentences, sections = [], []
    for section in SECTIONS:
        part = record["sentences"].get(section) if isinstance(record["sentences"], dict) else None
        if not isinstance(part, list) or not all(isinstance(s, str) for s in part):
            raise fail(f"sentences.{section} must be a list of strings")
        sentences += part
        sections += [section] * len(part)
    if not sentences:
        raise fail("the paper has no sentences")
    summaries, highlights = {}, {}
    for aspect in ASPECTS:
        summary = record["summary"].get(aspect) if isinstance(record["summary"], dict) else None
        if not isinstance(summary, str) or not summary.strip():
            raise fail(f"summary.{aspect} must be a non-empty string")
        summaries[aspect] = summary
        labels: list[int] = []
        per_section = record["highlights"].get(aspect) if isinstance(record["highlights"], dict) else None
        if not isinstance(per_section, dict):
            raise fail(f"highlights.{aspect} must map each section to its labels")
        for section in SECTIONS:
            part = per_section.get(section)
            n = len(record["sentences"][section])
            if not isinstance(part, list) or len(part) != n or any(x not in (0, 1) for x in part):
                raise fail(f"highlights.{aspect}.{section} must hold one 0/1 label per sentence ({n} sentences)")
            labels += part
        highlights[aspect] = tuple(labels)
    return Paper(id=str(record["id"]), title=str(record["title"]), sentences=tuple(sentences),
                 sections=tuple(sections), summaries=summaries, highlights=highlights)


def read_papers(path: Path) -> list[Paper]:
    """Every paper of one ACLSum JSON-lines file (blank lines skipped; the package's files lack a final newline)."""
    papers = []
    with open(path, encoding="utf-8") as file:
        for number, line in enumerate(file, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{number}: not valid JSON ({error.msg} at column {error.colno}); "
                                 "the file is not in ACLSum's format (aclsum==0.1.2)") from None
            papers.append(parse_paper(record, f"{path}:{number}"))
    if not papers:
        raise ValueError(f"{path} holds no papers; expected one JSON object per line (aclsum==0.1.2)")
    return papers


def read_split(split: str, root: Path | None = None) -> list[Paper]:
    """The papers of ``split`` (train / val / test), from ``root`` or the installed package."""
    return read_papers(split_file(split, root))


def examples(papers: Iterable[Paper], aspects: Iterable[str] = ASPECTS) -> list[tuple[Paper, str]]:
    """One example per (paper, aspect), papers in file order, aspects in :data:`ASPECTS` order."""
    aspects = [check_aspect(a) for a in aspects]
    return [(paper, aspect) for paper in papers for aspect in aspects]
