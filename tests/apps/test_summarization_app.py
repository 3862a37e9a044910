"""The summarization app: the highlighter and its pointer network, the training module, `seqmix summarization
fit` on a few papers and `predict` on its checkpoint, every one-line error of predict."""

from __future__ import annotations

import json
import re
from functools import partial
from pathlib import Path

import pytest
import torch

from seqmix.apps.summarization.data import split_file
from seqmix.apps.summarization.datamodule import SummarizationDataModule
from seqmix.apps.summarization.highlighter import Highlighter
from seqmix.apps.summarization.pointer import PointerDecoder
from seqmix.cli import main
from seqmix.core.mixers.softmax import SoftmaxAttention

N_PAPERS = 3  # per split, in the tiny ACLSum folder
SOFTMAX = partial(SoftmaxAttention, n_heads=2, causal=False)


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory) -> Path:
    """A folder in ACLSum's layout holding the first papers of each shipped split."""
    root = tmp_path_factory.mktemp("aclsum")
    for split in ("train", "val", "test"):
        lines = [line for line in split_file(split).read_text(encoding="utf-8").splitlines() if line.strip()]
        (root / f"{split}.jsonl").write_text("\n".join(lines[:N_PAPERS]) + "\n", encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def datamodule(tiny_root) -> SummarizationDataModule:
    return SummarizationDataModule(root=str(tiny_root), max_sentences=24, max_words=16, batch_size=3, vocab_size=500)


def highlighter(dm: SummarizationDataModule, **overrides) -> Highlighter:
    torch.manual_seed(0)
    args = dict(d_model=16, word_mixer=SOFTMAX, sentence_mixer=SOFTMAX, word_layers=1, sentence_layers=1,
                glove=False, dropout=0.0)
    return Highlighter(dm.vocab_words, **{**args, **overrides})


@pytest.mark.parametrize("selection", ["top_k", "pointer"])
def test_the_loss_falls_in_a_few_steps(datamodule, selection):
    net = highlighter(datamodule, selection=selection)
    batch = next(iter(datamodule.loader("train")))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    first = None
    for _ in range(12):
        parts = net.loss(batch)
        assert set(parts) == ({"loss", "bce"} | ({"pointer"} if selection == "pointer" else set()))
        assert torch.allclose(parts["loss"], sum(v for k, v in parts.items() if k != "loss"))
        opt.zero_grad()
        parts["loss"].backward()
        opt.step()
        first = float(parts["loss"]) if first is None else first
    assert float(net.loss(batch)["loss"]) < 0.7 * first


def test_top_k_picks_the_k_best_scores_and_maps_them_to_paper_ids(datamodule):
    net = highlighter(datamodule, top_k=2).eval()
    batch = next(iter(datamodule.loader("val")))
    logits, _ = net(batch)
    outputs = net.generate(batch)
    for i, out in enumerate(outputs):
        n = int(batch.sentence_mask[i].sum())
        best = logits[i, :n].argsort(descending=True)[:2]
        assert out.selected == sorted(int(batch.sentence_ids[i, j]) for j in best)
        assert len(out.sentence_scores) == n
        assert out.sentence_scores == pytest.approx(torch.sigmoid(logits[i, :n]).tolist())


def test_the_pointer_stops_at_stop_and_never_repeats():
    torch.manual_seed(0)
    pointer = PointerDecoder(8, max_select=6)
    states, mask = torch.randn(4, 5, 8), torch.ones(4, 5, dtype=torch.bool)
    mask[1, 3:] = False
    for row, valid in zip(pointer.decode(states, mask), mask):  # untrained: whatever it picks, no repeat, no padding
        assert len(row) == len(set(row)) <= 6 and all(bool(valid[p]) for p in row)
    with torch.no_grad():  # u_j = sum(tanh(e_j)): the STOP vector decides whether STOP beats every sentence
        pointer.v.weight.fill_(1.0)
        pointer.w_enc.weight.copy_(torch.eye(8))
        pointer.w_dec.weight.zero_()
        pointer.w_dec.bias.zero_()
        pointer.stop.fill_(10.0)
    assert pointer.decode(states, mask) == [[], [], [], []]  # STOP first: nothing selected
    with torch.no_grad():
        pointer.stop.fill_(-10.0)  # STOP last: every valid sentence once, then STOP (6 steps for 5 sentences)
    picks = pointer.decode(states, mask)
    assert [sorted(row) for row in picks] == [[0, 1, 2, 3, 4], [0, 1, 2], [0, 1, 2, 3, 4], [0, 1, 2, 3, 4]]
    assert all(len(row) == len(set(row)) for row in picks)
    pointer.max_select = 2  # cut off before STOP
    assert all(len(row) == 2 for row in pointer.decode(states, mask))


def test_the_pointer_learns_to_point_at_the_highlights_then_stop():
    torch.manual_seed(0)
    pointer = PointerDecoder(8, max_select=4)
    states = torch.randn(2, 6, 8)
    mask = torch.ones(2, 6, dtype=torch.bool)
    highlights = torch.tensor([[0, 1, 0, 0, 1, 0], [1, 0, 0, 0, 0, 0]], dtype=torch.float)
    opt = torch.optim.Adam(pointer.parameters(), lr=3e-2)
    for _ in range(150):
        loss = pointer.loss(states, mask, highlights)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss) < 0.05
    assert pointer.decode(states, mask) == [[1, 4], [0]]


def test_positions_count_places_within_each_section_from_both_ends(datamodule):
    net = highlighter(datamodule)
    batch = next(iter(datamodule.loader("val")))
    start, end = net.places(batch)
    for i in range(len(batch.paper_ids)):
        n = int(batch.sentence_mask[i].sum())
        sections = batch.sections[i, :n].tolist()
        for j in range(n):
            same = [k for k in range(n) if sections[k] == sections[j]]
            assert int(start[i, j]) == min(same.index(j), 15)
            assert int(end[i, j]) == min(len(same) - 1 - same.index(j), 15)
    shuffled = highlighter(datamodule, positions=False).eval()  # without them a sentence's score ignores its place
    assert shuffled.from_start is None and net.from_start is not None


def test_highlighter_refuses_bad_arguments(datamodule):
    with pytest.raises(ValueError, match="selection='beam' is unknown; choose 'top_k' or 'pointer'"):
        highlighter(datamodule, selection="beam")
    with pytest.raises(ValueError, match="top_k must be an int >= 1"):
        highlighter(datamodule, top_k=0)
    with pytest.raises(ValueError, match="pos_weight must be > 0"):
        highlighter(datamodule, pos_weight=0.0)


# ---------------------------------------------------------------- the CLI: fit, then predict on its checkpoint
FIT_ARGS = ["--model.network.init_args.d_model", "16", "--model.network.init_args.glove", "false",
            "--model.network.init_args.sentence_layers", "1", "--model.warmup_steps", "0",
            "--data.max_sentences", "24", "--data.max_words", "16", "--data.batch_size", "3",
            "--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false", "--trainer.logger", "false"]


@pytest.fixture(scope="module")
def checkpoint(tiny_root, tmp_path_factory) -> Path:
    """A highlighter trained one epoch on the tiny folder by `seqmix summarization fit`."""
    config = Path(__file__).resolve().parents[2] / "configs" / "summarization" / "highlighter.yaml"
    run = tmp_path_factory.mktemp("run")
    assert main(["summarization", "fit", "--config", str(config), "--data.root", str(tiny_root),
                 "--trainer.default_root_dir", str(run), *FIT_ARGS]) == 0
    found = sorted(run.rglob("*.ckpt"))
    assert found, "fit wrote no checkpoint"
    return found[0]


def test_fit_logs_rouge_and_extraction_scores(tiny_root, tmp_path):
    from seqmix.apps.summarization.app import APP
    from seqmix.cli import app_cli

    config = Path(__file__).resolve().parents[2] / "configs" / "summarization" / "highlighter.yaml"
    cli = app_cli(APP, ["--config", str(config), "--data.root", str(tiny_root), "--trainer.default_root_dir",
                        str(tmp_path), *FIT_ARGS], run=False)
    cli.trainer.validate(cli.model, datamodule=cli.datamodule)
    metrics = cli.trainer.callback_metrics
    for key in ("val/rougeL", "val/rouge1", "val/rouge2", "val/extraction_f1", "val/rougeL_outcome", "val/bce"):
        assert key in metrics and 0.0 <= float(metrics[key]) <= (1.0 if "rouge" in key or "f1" in key else 100.0)
    assert len(cli.model.predictions["val"]) == N_PAPERS * 3
    assert all(len(p.selected) == 1 for p in cli.model.predictions["val"])  # top_k: 1


def test_predict_a_paper_prints_one_summary_per_aspect_and_writes_the_html(checkpoint, tiny_root, tmp_path, capsys):
    paper = tmp_path / "paper.json"
    record = json.loads((tiny_root / "val.jsonl").read_text().splitlines()[0])
    paper.write_text(json.dumps(record))
    page = tmp_path / "out.html"
    assert main(["summarization", "predict", "--ckpt", str(checkpoint), "--paper", str(paper), "--html", str(page)]) == 0
    out = capsys.readouterr().out
    for aspect in ("challenge", "approach", "outcome"):
        assert re.search(rf"^{aspect}: .+\[sentences \d+\]$", out, re.M), out
        assert f"{aspect} (reference): {record['summary'][aspect]}" in out
    text = page.read_text()
    assert text.count("rgba(255, 200, 0,") >= 3 * 20  # every read sentence shaded, per aspect
    assert "not read" in text and "note: the source has" in out  # the paper is longer than 24 sentences


def test_predict_a_text_splits_it_and_reads_one_aspect(checkpoint, tmp_path, capsys):
    text = tmp_path / "abstract.txt"
    text.write_text("Parsing long sentences is slow. We prune the chart with a classifier!\n\n"
                    "Parsing becomes ten times faster ( 3.5 % loss ).")
    assert main(["summarization", "predict", "--ckpt", str(checkpoint), "--text", str(text), "--aspect",
                 "outcome"]) == 0
    out = capsys.readouterr().out
    assert re.fullmatch(r"outcome: .+\[sentences [0-2]\]\n", out), out
    assert "note:" not in out


def test_predict_says_how_a_long_text_is_cut(checkpoint, tmp_path, capsys):
    text = tmp_path / "long.txt"
    text.write_text(" ".join(f"Sentence number {i} is here." for i in range(30)) + " " + "Word " * 40 + ".")
    assert main(["summarization", "predict", "--ckpt", str(checkpoint), "--text", str(text), "--aspect",
                 "challenge"]) == 0
    out = capsys.readouterr().out
    assert ("note: the source has 31 sentences and the model reads at most 24: the first 24 are read; "
            "sentences 24..30 (7) are not read") in out
    assert "1 sentence(s) have more than 16 words (e.g. sentence 30): each is read up to its 16th word" in out


def error_of(argv: list[str]) -> str:
    """The one-line error of a command (the CLI adds one line: how to see the traceback)."""
    with pytest.raises(SystemExit) as stop:
        main(argv)
    lines = str(stop.value.code).splitlines()
    assert len(lines) == 2 and lines[1] == "(SEQMIX_TRACEBACK=1 shows the traceback)", lines
    return lines[0]


def test_predict_errors_are_one_line_each(checkpoint, tmp_path):
    base = ["summarization", "predict", "--ckpt", str(checkpoint)]
    assert re.search(r"predict: error: --paper .*nope.json does not exist", error_of([*base, "--paper",
                                                                                      str(tmp_path / "nope.json")]))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert "not valid JSON" in error_of([*base, "--paper", str(bad)])
    bad.write_text(json.dumps({"id": "x", "sentences": {"abstract": "one string"}}))
    assert "sentences.abstract must be a list of strings" in error_of([*base, "--paper", str(bad)])
    bad.write_text(json.dumps({"id": "x", "title": "t"}))
    assert "no \"sentences\" object" in error_of([*base, "--paper", str(bad)])
    text = tmp_path / "empty.txt"
    text.write_text("  \n\n ")
    assert "is empty (no sentence in it)" in error_of([*base, "--text", str(text)])
    text.write_text("A sentence.")
    assert "unknown aspect 'method'; choose one of challenge, approach, outcome" in error_of(
        [*base, "--text", str(text), "--aspect", "method"])


def test_predict_refuses_another_apps_checkpoint(checkpoint, tmp_path):
    from seqmix.apps.module import APP_KEY

    data = torch.load(checkpoint, map_location="cpu", weights_only=True)
    data[APP_KEY] = "text"
    other = tmp_path / "text.ckpt"
    torch.save(data, other)
    text = tmp_path / "t.txt"
    text.write_text("A sentence.")
    message = error_of(["summarization", "predict", "--ckpt", str(other), "--text", str(text)])
    assert "this is a checkpoint of `seqmix text fit`, not summarization" in message


def test_predict_refuses_a_missing_or_broken_checkpoint_and_a_paper_without_sentences(checkpoint, tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("A sentence.")
    assert re.search(r"predict: error: checkpoint .*none.ckpt does not exist", error_of(
        ["summarization", "predict", "--ckpt", str(tmp_path / "none.ckpt"), "--text", str(text)]))
    broken = tmp_path / "broken.ckpt"
    broken.write_bytes(checkpoint.read_bytes()[:1000])
    assert "is not a torch checkpoint file (truncated" in error_of(
        ["summarization", "predict", "--ckpt", str(broken), "--text", str(text)])
    data = torch.load(checkpoint, map_location="cpu", weights_only=True)
    data["hyper_parameters"]["network"]["init_args"]["d_model"] = 8  # weights of width 16
    misfit = tmp_path / "misfit.ckpt"
    torch.save(data, misfit)
    assert "its weights do not fit its network config" in error_of(
        ["summarization", "predict", "--ckpt", str(misfit), "--text", str(text)])
    paper = tmp_path / "empty.json"
    paper.write_text(json.dumps({"id": "x", "sentences": {"abstract": [" "], "introduction": [], "conclusion": []}}))
    assert "the paper has no sentences" in error_of(
        ["summarization", "predict", "--ckpt", str(checkpoint), "--paper", str(paper)])


def test_fit_on_a_missing_or_malformed_data_file_fails_in_one_line_naming_it(tiny_root, tmp_path):
    config = Path(__file__).resolve().parents[2] / "configs" / "summarization" / "highlighter.yaml"
    root = tmp_path / "aclsum"
    root.mkdir()
    for split in ("train", "val"):
        (root / f"{split}.jsonl").write_text((tiny_root / f"{split}.jsonl").read_text())
    argv = ["summarization", "fit", "--config", str(config), "--data.root", str(root), *FIT_ARGS]
    assert re.search(r"fit: error: ACLSum file .*test.jsonl does not exist", error_of(argv))
    (root / "test.jsonl").write_text((tiny_root / "test.jsonl").read_text().replace('"highlights"', '"labels"', 1))
    assert re.search(r"fit: error: .*test.jsonl:1: missing field 'highlights'", error_of(argv))
