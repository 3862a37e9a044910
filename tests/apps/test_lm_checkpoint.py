"""The shipped language model (checkpoints/lm/shakespeare_char_long.ckpt, written by ``python -m benchmarks.lm
--configs shakespeare_char_long --seeds 0 --save-checkpoint``): small, its tokenizer inside, trained (a slice of
the held-out plays under 2.6 bits per byte), and ``seqmix lm generate`` on it: sampling, greedy = the forward's
argmax, and each of its one-line errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from seqmix.apps.lm.module import LanguageModel
from seqmix.apps.lm.tokenizer import bytes_tokenizer
from seqmix.apps.module import load_trained
from seqmix.cli import main

REPO = Path(__file__).resolve().parents[2]
CKPT = REPO / "checkpoints" / "lm" / "shakespeare_char_long.ckpt"
TEXT = ("MACBETH:\nIf it were done when 'tis done, then 'twere well\nIt were done quickly: if the assassination\n"
        "Could trammel up the consequence, and catch\nWith his surcease success; that but this blow\n"
        "Might be the be-all and the end-all here,\nBut here, upon this bank and shoal of time,\n"
        "We'ld jump the life to come. But in these cases\nWe still have judgment here; that we but teach\n")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def module():
    return load_trained(LanguageModel, CKPT, "lm", "")[0]


def test_the_shipped_checkpoint_is_small_carries_its_tokenizer_and_has_no_optimizer_state():
    assert CKPT.stat().st_size <= 20_000_000
    checkpoint = torch.load(CKPT, map_location="cpu", weights_only=True)
    assert checkpoint["seqmix_app"] == "lm" and "optimizer_states" not in checkpoint
    assert json.loads(checkpoint["hyper_parameters"]["tokenizer_json"])["kind"] == "bytes"


def test_the_shipped_model_is_trained(module):
    """Macbeth's lines (a test play) in consecutive windows of the training context (128 bytes; RoPE is not
    trained beyond it): well under the 8 bits of a uniform guess."""
    ids = torch.tensor([module.tokenizer.encode(TEXT)])
    context = module.hparams.max_len
    nats, counted = 0.0, 0
    with torch.no_grad():
        for start in range(0, ids.shape[1] - 1, context):
            window = ids[:, start:start + context + 1]  # [1, <= context + 1]
            nats += float(torch.nn.functional.cross_entropy(module(window[:, :-1])[0], window[0, 1:], reduction="sum"))
            counted += window.shape[1] - 1
    assert counted == ids.shape[1] - 1 and nats / counted / math.log(2) < 2.6


def test_generate_samples_and_greedy_is_the_forward_argmax(module, capsys):
    capsys.readouterr()
    assert main(["lm", "generate", "--ckpt", str(CKPT), "--prompt", "ROMEO:", "--max-new-tokens", "24",
                 "--temperature", "0.8", "--top-k", "40", "--seed", "0"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("ROMEO:") and len(out) > len("ROMEO:") and "24 tokens in" in err and "tokens/s" in err
    assert main(["lm", "generate", "--ckpt", str(CKPT), "--prompt", "ROMEO:", "--max-new-tokens", "16",
                 "--strategy", "greedy"]) == 0
    out = capsys.readouterr().out
    tokens = torch.tensor([module.tokenizer.encode("ROMEO:")])
    with torch.no_grad():
        for _ in range(16):
            tokens = torch.cat([tokens, module(tokens)[:, -1].argmax(-1, keepdim=True)], 1)
    assert out == module.tokenizer.decode(tokens[0].tolist()) + "\n"


def test_generate_errors_on_the_shipped_checkpoint_are_one_line(module, tmp_path):
    def refused(pattern: str, *argv: str) -> None:
        with pytest.raises(SystemExit, match=f"^seqmix lm generate: error: {pattern}") as stop:
            main(["lm", "generate", "--ckpt", str(CKPT), *argv])
        assert str(stop.value).count("\n") == 1  # the error line, then the SEQMIX_TRACEBACK hint

    unseen = sorted(module.tokenizer.unseen)
    assert ord("{") in unseen and ord("a") not in unseen  # the plays hold no brace
    refused("--prompt is empty", "--prompt", "")
    refused(r"--prompt holds text the model never saw in training: '\{' \(7b\)", "--prompt", "ROMEO: {")
    refused(r"--max-new-tokens must be >= 1, got 0", "--prompt", "ROMEO:", "--max-new-tokens", "0")
    (tmp_path / "other.json").write_text(bytes_tokenizer(["another text"]).to_json())
    refused(r"--tokenizer .*other.json \(.*\) is not the tokenizer of .*give that run's tokenizer.json",
            "--prompt", "ROMEO:", "--tokenizer", str(tmp_path / "other.json"))
    assert module.net.max_positions is None  # rotary: no position limit (learned-position limit: test_lm.py)


BPE_CKPT = REPO / "checkpoints" / "lm" / "shakespeare_bpe.ckpt"


def test_the_shipped_bpe_model_carries_its_bpe_and_is_trained():
    """The BPE base of the reversal probe (lm_reversal_bico_mirror_bpe*.md; weights of `seqmix lm fit --config
    configs/lm/shakespeare_bpe.yaml`): its byte-level BPE inside, and Macbeth's lines in windows of its 54-token
    context well under the 8 bits per byte of a uniform byte guess."""
    assert BPE_CKPT.stat().st_size <= 20_000_000
    bpe = load_trained(LanguageModel, BPE_CKPT, "lm", "")[0]
    assert bpe.tokenizer.kind == "bpe" and bpe.tokenizer.vocab_size == 1024
    ids = torch.tensor([bpe.tokenizer.encode(TEXT)])
    assert bpe.tokenizer.decode(ids[0].tolist()) == TEXT
    context, nats = bpe.hparams.max_len, 0.0
    with torch.no_grad():
        for start in range(0, ids.shape[1] - 1, context):
            window = ids[:, start:start + context + 1]  # [1, <= context + 1]
            nats += float(torch.nn.functional.cross_entropy(bpe(window[:, :-1])[0], window[0, 1:], reduction="sum"))
    predicted_bytes = len(TEXT.encode()) - len(bpe.tokenizer.token_bytes[ids[0, 0]])  # all but the first token's
    assert nats / predicted_bytes / math.log(2) < 2.6
