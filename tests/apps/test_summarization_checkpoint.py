"""The shipped summarization checkpoint (checkpoints/summarization/highlighter.ckpt, written by
``python -m benchmarks.summarization --configs highlighter --save-checkpoint``): it loads as data, fits the
30 MB budget, and ``seqmix summarization predict`` on one shipped ACLSum test paper picks, per aspect, the
sentence that the benchmark's seed-0 test predictions (benchmarks/results/summarization_predictions/) list."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from seqmix.apps.summarization.data import ASPECTS, split_file
from seqmix.cli import main

REPO = Path(__file__).resolve().parents[2]
CKPT = REPO / "checkpoints" / "summarization" / "highlighter.ckpt"
PREDICTIONS = REPO / "benchmarks" / "results" / "summarization_predictions" / "highlighter_test.jsonl"


@pytest.fixture(scope="module")
def paper(tmp_path_factory) -> dict:
    """The first paper of ACLSum's test split, as its own JSON file (what ``predict --paper`` reads)."""
    record = json.loads(split_file("test").read_text(encoding="utf-8").splitlines()[0])
    path = tmp_path_factory.mktemp("paper") / "paper.json"
    path.write_text(json.dumps(record), encoding="utf-8")
    return {"path": path, "record": record}


def test_the_shipped_checkpoint_is_small_and_has_no_optimizer_state():
    import torch

    assert CKPT.stat().st_size <= 30_000_000
    checkpoint = torch.load(CKPT, map_location="cpu", weights_only=True)
    assert checkpoint["seqmix_app"] == "summarization"
    assert "optimizer_states" not in checkpoint and checkpoint["hyper_parameters"]["limits"]["max_sentences"] == 96


def test_predict_one_test_paper_with_the_shipped_checkpoint_matches_the_benchmark(paper, capsys):
    assert main(["summarization", "predict", "--ckpt", str(CKPT), "--paper", str(paper["path"]),
                 "--aspect", "all"]) == 0
    out = capsys.readouterr().out
    expected = {(r["paper_id"], r["aspect"]): r for r in map(json.loads, PREDICTIONS.read_text().splitlines())}
    pid = str(paper["record"]["id"])
    for aspect in ASPECTS:
        line = re.search(rf"^{aspect}: (.*)  \[sentences ([0-9, ]+)\]$", out, re.M)
        assert line is not None, out
        want = expected[(pid, aspect)]
        assert [int(i) for i in line.group(2).split(", ")] == want["selected"]
        assert line.group(1) == want["summary"]
        assert f"{aspect} (reference): " in out  # the paper's own summary printed beside it
