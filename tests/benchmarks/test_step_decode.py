"""benchmarks/step_decode.py: the state's float count, the flat verdict (it flags an RSS leak and a growing state),
decoding a real recurrent mixer and a KV cache in this process, and the command end to end at a tiny size."""

import json
import mmap

import pytest
import torch

from benchmarks import step_decode as bench
from benchmarks.step_decode import decode, state_numel, verdict
from seqmix.core import build_mixer
from seqmix.core.mixer import KVCache, Mixer

MB = 2**20


class LeakyMixer(Mixer):
    """A recurrent mixer of constant state that keeps 256 KiB per token elsewhere (a leak only RSS can see)."""

    patterns = frozenset({"causal_self"})
    recurrent = True

    def __init__(self, d_model: int):
        super().__init__(d_model)
        self.kept: list[mmap.mmap] = []

    def init_state(self, batch_size, device=None, dtype=torch.float32, *, context=None, context_mask=None):
        return torch.zeros(batch_size, self.d_model)  # [B, D]

    def _step(self, x_t, state):
        page = mmap.mmap(-1, 2**18)  # 256 KiB of fresh anonymous pages (an allocator could reuse freed heap pages
        page.write(b"\1" * 2**18)  # that are resident already, and RSS would not move); written: resident
        self.kept.append(page)
        return x_t, state + x_t

    def state_size(self, seq_len: int) -> int:
        return self.d_model


def test_state_numel_counts_every_tensor_of_a_nested_state_and_no_counter():
    cache = KVCache(torch.zeros(1, 2, 5, 4), torch.zeros(1, 2, 5, 3), None, 5)
    assert state_numel(cache) == 40 + 30
    assert state_numel((cache, [torch.zeros(2)], {"a": torch.zeros(3, 3)}, 7)) == 70 + 2 + 9


def readings(rss_mb, floats):
    return [{"tokens": 2**i, "rss_bytes": int(r * MB), "state_numel": f, "state_size": f}
            for i, (r, f) in enumerate(zip(rss_mb, floats))]


def test_verdict_is_flat_only_without_rss_growth_and_without_state_growth():
    assert verdict(readings([500, 510, 515.9], [64, 64, 64]), 16 * MB) == (True, "flat")
    assert verdict(readings([500, 500, 520], [64, 64, 64]), 16 * MB) == (False, "grows: RSS +20.0 MB > 16 MB")
    assert verdict(readings([500, 500, 500], [64, 128, 4096]), 16 * MB) == (False, "grows: state 64 -> 4,096 floats")


def test_a_recurrent_mixer_decodes_flat_and_a_kv_cache_or_a_leak_is_flagged():
    marks = [16, 32, 64]
    linear = decode(build_mixer("linear_attention", 16, n_heads=2), 64, marks, 4)
    assert [r["tokens"] for r in linear["readings"]] == marks and linear["timed_tokens"] == 60
    assert linear["tokens_per_s"] > 0
    assert all(r["state_numel"] == r["state_size"] == 128 for r in linear["readings"])  # 2 heads x 8 x 8
    assert verdict(linear["readings"], 16 * MB)[0]

    softmax = decode(build_mixer("softmax", 16, n_heads=2), 64, marks, 4)
    assert [r["state_numel"] for r in softmax["readings"]] == [2 * 16 * t for t in marks]  # keys and values
    assert all(r["state_numel"] == r["state_size"] for r in softmax["readings"])
    assert verdict(softmax["readings"], 16 * MB) == (False, "grows: state 512 -> 2,048 floats")

    leaky = LeakyMixer(16)
    leak = decode(leaky, 64, marks, 4)
    assert len({r["state_numel"] for r in leak["readings"]}) == 1  # the state alone looks flat ...
    flat, words = verdict(leak["readings"], 4 * MB)  # ... 48 tokens x 256 KiB = 12 MiB of RSS does not
    assert not flat and words.startswith("grows: RSS +"), words


def test_decode_refuses_readings_past_the_tokens():
    with pytest.raises(ValueError, match="readings .* within 1..64"):
        decode(build_mixer("lmu", 16, n_heads=2, order=4), 64, [16, 128], 4)
    with pytest.raises(SystemExit, match="--readings up to 64"):
        bench.main(["--mixers", "lmu", "--tokens", "64", "--readings", "16", "128"])


def test_the_command_end_to_end_at_a_tiny_size(tmp_path, monkeypatch):
    """Two mixers through main, written to .md/.json/.png; the first one in a real worker process."""
    monkeypatch.setattr("benchmarks.common.RESULTS_DIR", tmp_path)
    real_run = bench.run_mixer
    runs = []

    def run(spec, args):  # the first mixer in a worker process (the command's path), the rest in this one
        runs.append(spec.text)
        return real_run(spec, args) if len(runs) == 1 else bench.worker(spec.text, args)

    monkeypatch.setattr(bench, "run_mixer", run)
    threads = str(torch.get_num_threads())
    assert bench.main(["--mixers", "lmu[order=4]", "softmax", "--tokens", "64", "--readings", "16", "64",
                       "--warmup", "4", "--d-model", "16", "--heads", "2", "--threads", threads,
                       "--name", "tiny"]) == 0
    assert runs == ["lmu[order=4]", "softmax"]
    text = (tmp_path / "tiny.md").read_text()
    assert "| lmu (order=4) | 8 | yes |" in text  # a memory of order 4 per head, as state_size says
    lmu_row = next(line for line in text.splitlines() if line.startswith("| lmu (order=4) |"))
    assert lmu_row.endswith("| flat |")
    assert "grows: state 512 -> 2,048 floats (contrast: KV cache, not a target) |" in text
    assert "Issue 30 target (memory flat from 16 to 64 tokens): 1 of 1 mixers flat." in text
    assert "- seed(s): 0" in text and "load average (1, 5, 15 min) at the start:" in text
    saved = json.loads((tmp_path / "tiny.json").read_text())
    assert [r["mixer"] for r in saved["results"]] == ["lmu (order=4)", "softmax"]
    assert [r["tokens"] for r in saved["results"][0]["readings"]] == [16, 64] and saved["seed"] == 0
    assert (tmp_path / "tiny.png").stat().st_size > 0
