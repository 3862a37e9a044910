"""ACLSum reading, the ROUGE / extraction metrics and the untrained baselines of the summarization app."""

from __future__ import annotations

import copy
import re
import json

import pytest

from seqmix.apps.summarization.baselines import (
    Prediction, evaluate, extract, first_sentence, gold_highlights, greedy_oracle, last_sentence, read_predictions,
    write_predictions)
from seqmix.apps.summarization.data import ASPECTS, SECTIONS, check_aspect, parse_paper, read_papers, read_split
from seqmix.apps.summarization.metrics import Rouge, extraction_score

RECORD = {
    "id": "P00-0001", "title": "A paper",
    "summary": {"challenge": "parsing long sentences is slow", "approach": "we prune the chart",
                "outcome": "parsing is ten times faster"},
    "sentences": {"abstract": ["We study parsing .", "Parsing long sentences is slow ."],
                  "introduction": ["We prune the chart with a classifier ."],
                  "conclusion": ["Parsing is ten times faster ."]},
    "highlights": {"challenge": {"abstract": [0, 1], "introduction": [0], "conclusion": [0]},
                   "approach": {"abstract": [0, 0], "introduction": [1], "conclusion": [0]},
                   "outcome": {"abstract": [0, 0], "introduction": [0], "conclusion": [1]}},
}


@pytest.fixture(scope="module")
def rouge() -> Rouge:
    return Rouge()


def test_a_record_becomes_sentences_in_section_order_with_aligned_labels():
    paper = parse_paper(RECORD, "x:1")
    assert paper.sentences[0] == "We study parsing ." and paper.sentences[-1] == "Parsing is ten times faster ."
    assert paper.sections == ("abstract", "abstract", "introduction", "conclusion")
    assert paper.highlighted("challenge") == [1] and paper.highlighted("approach") == [2]
    assert paper.highlighted("outcome") == [3]


@pytest.mark.parametrize("break_it, message", [
    (lambda r: r.pop("summary"), "missing field 'summary'"),
    (lambda r: r["sentences"].pop("conclusion"), "sentences.conclusion must be a list of strings"),
    (lambda r: r["highlights"]["approach"].update(introduction=[1, 0]),
     "highlights.approach.introduction must hold one 0/1 label per sentence (1 sentences)"),
    (lambda r: r["highlights"]["outcome"].update(conclusion=[2]), "highlights.outcome.conclusion"),
    (lambda r: r["summary"].update(challenge="  "), "summary.challenge must be a non-empty string"),
])
def test_a_malformed_record_fails_naming_file_line_and_field(break_it, message, tmp_path):
    record = copy.deepcopy(RECORD)
    break_it(record)
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps(RECORD) + "\n" + json.dumps(record))
    with pytest.raises(ValueError, match=re.escape(f"train.jsonl:2: {message}")):
        read_papers(path)


def test_missing_file_bad_json_and_unknown_aspect_or_split_fail_in_one_line(tmp_path):
    with pytest.raises(FileNotFoundError, match="test.jsonl does not exist.*aclsum==0.1.2"):
        read_split("test", tmp_path)
    (tmp_path / "val.jsonl").write_text("{not json\n")
    with pytest.raises(ValueError, match="val.jsonl:1: not valid JSON"):
        read_split("val", tmp_path)
    with pytest.raises(ValueError, match="unknown ACLSum split 'dev'"):
        read_split("dev", tmp_path)
    with pytest.raises(ValueError, match="unknown aspect 'method'; choose one of challenge, approach, outcome"):
        check_aspect("method")


def test_the_shipped_splits_read_whole_with_labels_lined_up():
    sizes = {split: len(read_split(split)) for split in ("train", "val", "test")}
    assert sizes == {"train": 100, "val": 50, "test": 100}
    for paper in read_split("val"):
        assert set(paper.sections) <= set(SECTIONS)
        assert all(len(paper.highlights[a]) == len(paper.sentences) for a in ASPECTS)


def test_extraction_score_counts_hits():
    assert extraction_score([1, 2], [2, 3]).f1 == pytest.approx(0.5)
    assert extraction_score([1], [1]).precision == 1.0
    assert extraction_score([], [1]).f1 == 0.0 and extraction_score([], []).f1 == 1.0


def test_rouge_is_one_for_the_reference_and_zero_for_nothing(rouge):
    assert rouge("we prune the chart", "we prune the chart") == {"rouge1": 1.0, "rouge2": 1.0, "rougeL": 1.0}
    assert rouge("", "we prune the chart")["rouge1"] == 0.0
    assert 0 < rouge("we pruned charts quickly", "we prune the chart")["rouge1"] < 1  # stemming: pruned ~ prune


def test_baselines_pick_the_stated_sentences_and_the_oracle_beats_them(rouge):
    paper = parse_paper(RECORD, "x:1")
    assert first_sentence(paper, "challenge").selected == (0,)
    assert last_sentence(paper, "challenge").selected == (1,)
    assert gold_highlights(paper, "approach").selected == (2,)
    oracle = greedy_oracle(paper, "outcome", rouge)
    assert oracle.selected == (3,)  # the sentence that is the summary; adding any other lowers ROUGE
    for aspect in ASPECTS:
        best = max(rouge(rule(paper, aspect).summary, paper.summaries[aspect])["rouge1"]
                   for rule in (first_sentence, last_sentence))
        assert rouge(greedy_oracle(paper, aspect, rouge).summary, paper.summaries[aspect])["rouge1"] >= best


def test_evaluate_scores_per_aspect_and_refuses_unknown_or_repeated_examples(rouge):
    paper = parse_paper(RECORD, "x:1")
    perfect = [extract(paper, a, paper.highlighted(a)) for a in ASPECTS]
    result = evaluate(perfect, [paper], rouge)
    assert result.extraction["all"].f1 == 1.0 and result.n_examples == 3
    assert result.rouge["outcome"]["rouge1"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="paper 'nope', which is not in the evaluated split"):
        evaluate([Prediction("nope", "challenge", "x", (0,))], [paper], rouge)
    with pytest.raises(ValueError, match="two predictions for paper 'P00-0001', aspect 'challenge'"):
        evaluate([perfect[0], perfect[0]], [paper], rouge)


def test_predictions_round_trip_through_their_file(tmp_path):
    predictions = [Prediction("a", "challenge", "one summary", (0, 2)), Prediction("b", "outcome", "other", ())]
    path = tmp_path / "model_test.jsonl"
    write_predictions(predictions, path)
    assert read_predictions(path) == predictions
    path.write_text('{"paper_id": "a"}\n')
    with pytest.raises(ValueError, match="model_test.jsonl:1: not a prediction line"):
        read_predictions(path)
