"""The shipped summarization checkpoint (checkpoints/summarization/highlighter.ckpt, written by
``python -m benchmarks.summarization --configs highlighter --save-checkpoint``): it loads as data, fits the
30 MB budget, and ``seqmix summarization predict`` on one shipped ACLSum test paper picks, per aspect, the
sentence that the benchmark's seed-0 test predictions (benchmarks/results/summarization_predictions/) list."""

from __future__ import annotations

import json
import re
import subprocess
import sys
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


def test_predict_starts_without_lightning_rouge_or_glove(paper):
    """The start-up that makes predict fast (docs/summarization.md: under 10 s): a fresh interpreter runs it
    without importing Lightning, torchmetrics or rouge-score, and never opens GloVe or ACLSum's split files."""
    code = ("import builtins, io, sys\n"
            "opened = []\n"
            "real_open = io.open\n"
            "def spy(file, *a, **k):\n"
            "    opened.append(str(file))\n"
            "    return real_open(file, *a, **k)\n"
            "builtins.open = io.open = spy\n"
            "from seqmix.cli import main\n"
            f"main(['summarization', 'predict', '--ckpt', {str(CKPT)!r}, '--paper', {str(paper['path'])!r}])\n"
            "heavy = [m for m in ('pytorch_lightning', 'lightning_fabric', 'torchmetrics', 'rouge_score')\n"
            "         if m in sys.modules]\n"
            "read = [f for f in opened if 'glove' in f.lower() and '.dist-info' not in f\n"
            "        or f.endswith(('train.jsonl', 'val.jsonl', 'test.jsonl'))]\n"
            "print('HEAVY', heavy, 'READ', read)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "HEAVY [] READ []" in done.stdout, done.stdout
