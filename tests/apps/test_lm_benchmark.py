"""benchmarks/lm.py's parts that decide numbers: the equal-parameter MLP width, windowed bits per byte, the
CPU-time calibration, and the generation verdicts (flat memory and tokens/s within 20% for a recurrent model;
the KV cache's growth against ``state_size`` for attention)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from benchmarks import lm


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("row", ["lstm", "based_hybrid"])
def test_every_row_gets_the_softmax_models_parameter_count(row):
    reference = lm.n_params(lm.build_net(*lm.ROWS["softmax"][:2], 4.0))
    ratio = lm.equal_mlp_ratio(*lm.ROWS[row][:2])
    assert ratio != 4.0 and (ratio * 128).is_integer()
    got = lm.n_params(lm.build_net(*lm.ROWS[row][:2], ratio))
    assert abs(got - reference) / reference < 0.005, (got, reference)


class Uniform(nn.Module):
    def forward(self, tokens):
        return torch.zeros(*tokens.shape, 256)


class Copy(nn.Module):
    """Puts all its mass on the token ``shift`` places back: right only where the window holds it."""

    def forward(self, tokens):
        logits = torch.full((*tokens.shape, 256), -30.0)
        logits.scatter_(-1, tokens[..., None], 30.0)
        return logits


def test_window_bits_per_byte_hand_cases():
    tokens, token_bytes = torch.randint(0, 256, (65,)), torch.ones(256, dtype=torch.long)
    assert lm.window_bpc(Uniform(), tokens, token_bytes, 16, 2) == pytest.approx(8.0)  # log2(256)
    token_bytes[:] = 2  # every token two bytes: half the bits per byte
    assert lm.window_bpc(Uniform(), tokens, token_bytes, 16, 3) == pytest.approx(4.0)
    repeat = torch.zeros(33, dtype=torch.long)  # the next token is the current one: Copy is right everywhere
    assert lm.window_bpc(Copy(), repeat, torch.ones(256, dtype=torch.long), 8, 4) < 1e-6


def test_cpu_calibration_counts_seconds_per_step():
    module = nn.Module()
    module.net = lm.build_net(*lm.ROWS["gla"][:2], 4.0)
    seconds = lm.cpu_per_step(module, torch.randint(0, 256, (lm.CONTEXT * 4,)), batch=2)
    assert 0 < seconds < 30


def points(rss_mb, floats, seconds):
    return [{"tokens": n, "rss_bytes": int(r * 2**20), "state_floats": f, "wall_s": s, "cpu_s": s}
            for n, r, f, s in zip(lm.READINGS, rss_mb, floats, seconds)]


def test_generation_verdicts():
    # 1,000 tokens/s throughout, memory flat: met
    flat = points([100] * 5, [8192] * 5, [1.024, 2.048, 4.096, 8.192, 16.384])
    # the last segment at half speed: missed
    slow = points([100] * 5, [8192] * 5, [1.024, 2.048, 4.096, 8.192, 16.384 + 8.192])
    # a KV cache: 2 * 4 layers * 128 floats a token; RSS grows by what state_size says
    kv = [8 * 128 * n for n in lm.READINGS]
    cache = points([100 + (f - kv[0]) * 4 / 2**20 for f in kv], kv, [1.024, 2.048, 4.096, 8.192, 16.384])
    text = lm.generation_section({"gla": {**common(), "points": flat}, "lstm": {**common(), "points": slow},
                                  "softmax": {**common(), "points": cache}})
    lines = {line.split(" |")[0].strip("| "): line for line in text.splitlines() if line.startswith("| ")}
    assert "met (flat memory: RSS +0.0 MB" in lines["gla"] and "1.00x" in lines["gla"]
    assert "missed" in lines["lstm"] and "0.50x" in lines["lstm"]
    growth = (kv[-1] - kv[0]) * 4 / 2**20
    assert f"KV cache: RSS grew {growth:.1f} MB, state_size says {growth:.1f} MB (1.00x)" in lines["softmax"]
    assert math.isclose(lm.segment_speeds(flat)[0], 1000.0)
    cut = {**common(), "points": cache[:3], "error": "timeout (> 280 s) after 4,096 tokens"}  # a timed-out run
    row = [line for line in lm.generation_section({"softmax": cut}).splitlines() if line.startswith("| softmax")][0]
    assert row.count("not reached") == 2 and "timeout (> 280 s) after 4,096 tokens; KV cache" in row


def common():
    return {"threads": 1, "command": "python -m benchmarks.lm --generation", "commit": "abc", "date": "today",
            "cpu": "CPU"}


def tokeniser_run(config, tokenizer, vocab, context, per_token):
    return {"config": config, "row": None, "seed": 0, "corpus": config.split("_")[0], "tokenizer": tokenizer,
            "vocab_size": vocab, "context": context, "bytes_per_token": {"train": per_token, "test": per_token},
            "params": 922_536, "embedding_params": vocab * 128, "steps": 2200, "best_step": 2200, "fit_cpu_s": 480.0,
            "fit_wall_s": 900.0, "val_bpc": 2.5, "test_bpc": 2.4, "train_tokens_per_cpu_s": 8000.0,
            "gen_tokens_per_cpu_s": 300.0, "threads": 1, "load_start": 1.0, "load_end": 1.0, "checkpoint": None,
            "command": "c", "commit": "abc", "tokenizer_saved": {"file": True, "beside_checkpoint": True,
                                                                 "same_as_checkpoint": tokenizer == "bpe"}}


def test_tokeniser_section_rows_and_the_target_leaves_them_out():
    runs = {"a": tokeniser_run("shakespeare_bpe", "bpe", 1024, 54, 2.36),
            "b": tokeniser_run("aclsum_char", "bytes", 256, 128, 1.0)}
    lines = {line.split(" |")[0].strip("| `"): line for line in lm.tokeniser_section(runs).splitlines()
             if line.startswith("| `")}
    assert set(lines) == set(lm.TOKENISER_CONFIGS)
    assert "| 54 (127) |" in lines["shakespeare_bpe"] and "| 922,536 (131,072) |" in lines["shakespeare_bpe"]
    assert "8,000 (18,880)" in lines["shakespeare_bpe"] and "beside the checkpoint, = its own" in lines["shakespeare_bpe"]
    assert "not the checkpoint's" in lines["aclsum_char"] and "not run" in lines["aclsum_bpe"]
    assert "shakespeare_bpe" not in lm.targets(runs, {}) and "not recorded yet" in lm.targets(runs, {})


class Sweep:
    """A datamodule's parts that ``val_bytes_per_token`` reads: 2-byte tokens after the first 6 targets."""

    context, hparams = 3, type("H", (), {"batch_size": 2})
    tokenizer = type("T", (), {"byte_lengths": torch.tensor([1, 2])})  # token 0: b"a", token 1: b"bc"

    def split_tokens(self, split):
        return torch.tensor([0] * 7 + [1] * 6)


def test_val_bytes_per_token_counts_the_swept_windows():
    assert lm.val_bytes_per_token(Sweep(), 1) == 1.0  # one batch: 2 windows x 3 targets, all 1-byte tokens
    assert lm.val_bytes_per_token(Sweep(), 2) == pytest.approx(1.5)  # 6 targets of 1 byte, 6 of 2
    assert lm.val_bytes_per_token(Sweep(), None) == pytest.approx(18 / 12)
