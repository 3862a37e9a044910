"""``seqmix summarization predict --ckpt <ckpt> (--paper <paper.json> | --text <file.txt>) [--aspect ...] [--html out.html]``:
one summary per aspect of a paper or a text, printed; ``--html`` also writes the source with each sentence
shaded by its highlight score (one column per aspect).

- ``--paper``: one paper in ACLSum's format (a JSON object; the first line of a JSON-lines file too), with
  ``sentences: {abstract, introduction, conclusion}`` (lists of sentences). ``summary`` and ``highlights``
  are optional here (a file with all of ACLSum's fields is checked as the dataset's are; when it has the
  reference summaries they are printed beside the predictions).
- ``--text``: a plain UTF-8 text, split into sentences by a simple regular expression (a sentence ends at
  ``.``, ``!`` or ``?`` followed by white space and an upper-case letter, a digit or an opening bracket /
  quote; blank lines end a sentence too): abbreviations such as "e.g. The" can split wrongly. Every
  sentence is given to the model as part of the **abstract** (the section embedding the model learned for
  it), since a plain text has no section marks.

A source longer than the model's limit (``max_sentences`` sentences, ``max_words`` words a sentence, the
training datamodule's) is cut as training cut it (:mod:`.batch`: abstract and conclusion kept, the
introduction cut from its end; a plain text keeps its first ``max_sentences`` sentences; long sentences keep
their first ``max_words`` words) and a ``note:`` line says what was dropped. The checkpoint is read as data
(``weights_only=True``; :func:`seqmix.apps.checkpoint.checked_checkpoint`), and refused if another app wrote it.

Start-up: the command imports neither Lightning nor ROUGE (:func:`load_model` rebuilds only the network, from
the checkpoint's hyper-parameters as LightningCLI would, and loads its weights), and reads nothing but the
checkpoint and the paper: the vocabulary and the input limits are in the checkpoint, and the GloVe rows of the
embedding are its trained weights (:func:`~seqmix.apps.summarization.encoder.weights_follow`).
"""

from __future__ import annotations

import argparse
import html
import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from seqmix.apps.checkpoint import checked_checkpoint, checkpoint_error
from seqmix.apps.files import atomic_write, check_outputs, input_file
from seqmix.apps.summarization.batch import collate, encode_example, kept_sentences
from seqmix.apps.summarization.data import ASPECTS, SECTIONS, Paper, check_aspect, parse_paper
from seqmix.apps.summarization.encoder import weights_follow
from seqmix.apps.summarization.network import NetworkFactory, Output, SummarizationNetwork, to_prediction
from seqmix.apps.summarization.vocab import Vocabulary, tokenize

HINT = ("train one with `seqmix summarization fit --config configs/summarization/highlighter.yaml` "
        "(it lands in runs/summarization/.../checkpoints/)")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9(\[\"'])|\n\s*\n")


@dataclass
class Trained:
    """A trained network (eval mode) with the vocabulary and input limits it was trained with."""

    network: SummarizationNetwork
    vocab_words: list[str]
    limits: dict[str, int]


def build_network(config: object, vocab_words: list[str]) -> SummarizationNetwork:
    """The network of ``model.network`` in LightningCLI's form (``{"class_path", "init_args"}``, mixers nested
    the same way) built as LightningCLI builds it: jsonargparse makes the factory, called with the vocabulary."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--network", type=NetworkFactory)
    factory = parser.instantiate_classes(parser.parse_object({"network": config})).network
    return factory(vocab_words)


def load_model(ckpt: str | Path) -> Trained:
    """The trained network of a ``seqmix summarization fit`` checkpoint, without Lightning (module docstring):
    the checkpoint checked as data, the network rebuilt from its hyper-parameters (no GloVe read) and its
    weights loaded strictly."""
    path = input_file(ckpt, "checkpoint", HINT)
    checkpoint = checked_checkpoint(path.read_bytes(), path, "summarization", HINT, ("hyper_parameters",))
    hparams = checkpoint["hyper_parameters"]
    if not isinstance(hparams.get("network"), dict) or not isinstance(hparams.get("vocab_words"), list):
        raise checkpoint_error("has no network config or vocabulary in its hyper-parameters", path, HINT)
    with weights_follow():
        network = build_network(hparams["network"], hparams["vocab_words"])
    prefix = "network."
    weights = {k[len(prefix):]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}
    if len(weights) != len(checkpoint["state_dict"]):
        raise checkpoint_error("holds weights outside its network", path, HINT)
    try:
        network.load_state_dict(weights)
    except RuntimeError as error:  # missing / unexpected keys, or a shape the config does not give
        raise checkpoint_error(f"its weights do not fit its network config ({str(error).splitlines()[0]})", path,
                               HINT) from None
    return Trained(network=network.eval(), vocab_words=list(hparams["vocab_words"]),
                   limits=dict(hparams.get("limits") or {}))


def split_sentences(text: str) -> list[str]:
    """The regex sentence splitter of ``--text`` (module docstring); white space inside a sentence is folded."""
    return [" ".join(part.split()) for part in _SENTENCE_END.split(text) if part and part.strip()]


def text_paper(text: str, source: str) -> Paper:
    """A plain text as a :class:`Paper`: every sentence in the abstract, no summaries, no highlights."""
    sentences = split_sentences(text)
    if not sentences:
        raise ValueError(f"--text {source} is empty (no sentence in it); give a text to summarize")
    return Paper(id=Path(source).stem, title=Path(source).stem, sentences=tuple(sentences),
                 sections=("abstract",) * len(sentences), summaries={a: "" for a in ASPECTS},
                 highlights={a: (0,) * len(sentences) for a in ASPECTS})


def read_paper(path: str | Path) -> Paper:
    """One paper in ACLSum's format (``summary`` / ``highlights`` optional); one-line errors for a missing file,
    a file that is not JSON, or a record without the three sections' sentences."""
    path = input_file(path, "--paper", "give one paper in ACLSum's format (JSON)")
    text = path.read_text(encoding="utf-8", errors="replace").strip()
    fix = ("expected one JSON object in ACLSum's format: {\"id\", \"title\", \"sentences\": {\"abstract\": [...], "
           "\"introduction\": [...], \"conclusion\": [...]}}")
    try:
        record = json.loads(text)
    except json.JSONDecodeError as error:
        try:  # a JSON-lines file: its first paper
            record = json.loads(text.splitlines()[0]) if error.msg == "Extra data" else None
        except json.JSONDecodeError:
            record = None
        if record is None:
            raise ValueError(f"--paper {path}: not valid JSON ({error.msg} at line {error.lineno}); {fix}") from None
    if not isinstance(record, dict) or not isinstance(record.get("sentences"), dict):
        raise ValueError(f"--paper {path}: no \"sentences\" object; {fix}")
    if all(key in record for key in ("summary", "highlights")):
        return parse_paper({"id": "paper", "title": "", **record}, f"--paper {path}")
    sentences, sections = [], []
    for section in SECTIONS:
        part = record["sentences"].get(section, [])
        if not isinstance(part, list) or not all(isinstance(s, str) for s in part):
            raise ValueError(f"--paper {path}: sentences.{section} must be a list of strings; {fix}")
        sentences += [s for s in part if s.strip()]
        sections += [section] * len([s for s in part if s.strip()])
    if not sentences:
        raise ValueError(f"--paper {path}: the paper has no sentences; {fix}")
    return Paper(id=str(record.get("id", path.stem)), title=str(record.get("title", "")), sentences=tuple(sentences),
                 sections=tuple(sections), summaries={a: "" for a in ASPECTS},
                 highlights={a: (0,) * len(sentences) for a in ASPECTS})


def truncation_note(paper: Paper, limits: dict[str, int], plain_text: bool) -> str | None:
    """What the model's limits drop from ``paper`` (None when it reads it whole)."""
    max_sentences, max_words = limits.get("max_sentences"), limits.get("max_words")
    notes = []
    if max_sentences is not None and len(paper.sentences) > max_sentences:
        dropped = sorted(set(range(len(paper.sentences))) - set(kept_sentences(paper, max_sentences)))
        how = (f"the first {max_sentences} are read" if plain_text else
               f"the abstract and conclusion are kept and the introduction is cut from its end")
        notes.append(f"the source has {len(paper.sentences)} sentences and the model reads at most {max_sentences}: "
                     f"{how}; sentences {dropped[0]}..{dropped[-1]} ({len(dropped)}) are not read")
    if max_words is not None:
        long = [i for i, s in enumerate(paper.sentences) if len(tokenize(s)) > max_words]
        if long:
            notes.append(f"{len(long)} sentence(s) have more than {max_words} words (e.g. sentence {long[0]}): "
                         f"each is read up to its {max_words}th word")
    return "; ".join(notes) if notes else None


def summarize(model: Trained, paper: Paper, aspects: list[str]) -> list[tuple[str, Output, str]]:
    """``(aspect, output, summary)`` per aspect, the paper cut to the model's limits as in training."""
    vocab = Vocabulary(model.vocab_words)
    limits = {"max_sentences": 96, "max_words": 64, "max_summary_len": 32, **model.limits}
    batch = collate([encode_example(paper, a, vocab, **limits) for a in aspects], len(vocab))
    with torch.no_grad():
        outputs = model.network.generate(batch)
    return [(a, out, to_prediction(out, paper, a).summary) for a, out in zip(aspects, outputs)]


def highlight_html(paper: Paper, results: list[tuple[str, Output, str]], kept: list[int]) -> str:
    """The source, one row per sentence, one shaded cell per aspect (white 0 -> yellow 1); the selected
    sentences bold; a sentence the model did not read marked so."""
    position = {sid: j for j, sid in enumerate(kept)}
    head = "".join(f"<th>{html.escape(a)}</th>" for a, _, _ in results)
    rows = []
    for i, (sentence, section) in enumerate(zip(paper.sentences, paper.sections)):
        cells = []
        for _, out, _ in results:
            j = position.get(i)
            if j is None or out.sentence_scores is None:
                cells.append('<td class="unread">not read</td>' if j is None else "<td></td>")
                continue
            score = out.sentence_scores[j]
            alpha = f"{score:.3f}"
            chosen = " chosen" if i in out.selected else ""
            cells.append(f'<td class="score{chosen}" style="background: rgba(255, 200, 0, {alpha})" '
                         f'title="{alpha}">{score:.2f}</td>')
        selected = any(i in out.selected for _, out, _ in results)
        text = f"<b>{html.escape(sentence)}</b>" if selected else html.escape(sentence)
        rows.append(f"<tr><td class='id'>{i}</td><td class='sec'>{section}</td>{''.join(cells)}<td>{text}</td></tr>")
    summaries = "".join(f"<p><b>{html.escape(a)}</b>: {html.escape(s)}</p>" for a, _, s in results)
    return ("<!doctype html><html><head><meta charset='utf-8'><title>seqmix summarization: "
            f"{html.escape(paper.title or paper.id)}</title><style>body{{font-family:sans-serif;max-width:70em}}"
            "td{padding:2px 6px;vertical-align:top}td.score{text-align:right;font-family:monospace}"
            "td.chosen{outline:2px solid #c60}td.unread{color:#999}.id,.sec{color:#777}</style></head><body>"
            f"<h1>{html.escape(paper.title or paper.id)}</h1><h2>Summaries</h2>{summaries}"
            "<h2>Source, shaded by highlight score</h2><table><tr><th>#</th><th>section</th>"
            f"{head}<th>sentence</th></tr>{''.join(rows)}</table></body></html>\n")


def predict_command(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="seqmix summarization predict", description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", required=True, help="checkpoint written by `seqmix summarization fit`")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--paper", help="one paper in ACLSum's JSON format")
    source.add_argument("--text", help="a plain UTF-8 text file (split into sentences by a regex; read as an abstract)")
    parser.add_argument("--aspect", default="all", help=f"one of {', '.join(ASPECTS)}, or all (default)")
    parser.add_argument("--html", default=None, help="also write the source shaded by highlight score to this file")
    args = parser.parse_args(argv)
    aspects = list(ASPECTS) if args.aspect == "all" else [check_aspect(args.aspect)]
    check_outputs([("--html", args.html)], [("--ckpt", args.ckpt), ("--paper", args.paper), ("--text", args.text)])
    if args.paper is not None:
        paper = read_paper(args.paper)
    else:
        path = input_file(args.text, "--text", "give a UTF-8 text file to summarize")
        paper = text_paper(path.read_text(encoding="utf-8", errors="replace"), str(path))
    model = load_model(args.ckpt)
    note = truncation_note(paper, model.limits, plain_text=args.text is not None)
    if note:
        print(f"note: {note}")
    results = summarize(model, paper, aspects)
    for aspect, out, summary in results:
        chosen = f"  [sentences {', '.join(map(str, out.selected))}]" if out.selected else ""
        print(f"{aspect}: {summary}{chosen}")
        if paper.summaries[aspect]:
            print(f"{aspect} (reference): {paper.summaries[aspect]}")
    if args.html:
        kept = kept_sentences(paper, model.limits.get("max_sentences", 96))
        atomic_write(args.html, lambda tmp: tmp.write_text(highlight_html(paper, results, kept), encoding="utf-8"))
        print(f"wrote {args.html}")
    return 0
