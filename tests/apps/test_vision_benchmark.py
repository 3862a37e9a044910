"""The CPU-cheap parts of ``python -m benchmarks.vision``: a candidate architecture's row and its errors."""

import argparse
import json
import sys

import pytest


# one stored row of vision.json, as a throughput-only run writes it
ROW = {"params": 1_100_000, "gmacs": 0.0134, "infer": 2000.0, "train": 700.0, "threads": 1, "seed": 0,
       "load_now": 0.5, "budget_minutes": 30, "command": "python benchmarks/vision.py", "commit": "abc",
       "date": "2026-11-30 08:00 UTC", "data": "throughput only"}


@pytest.fixture(scope="module")
def bench():
    import benchmarks.vision as module

    return module


@pytest.fixture
def render_stored(bench, tmp_path, monkeypatch):
    """``render_stored(name)``: ``vision.py --render --out <name>`` over ``tmp_path/<name>.json``; the
    markdown it wrote. The module's results folder, writer and store are restored afterwards."""
    monkeypatch.setattr(bench, "RESULTS_DIR", tmp_path)
    monkeypatch.setattr(bench, "write_result", lambda name, text: (tmp_path / f"{name}.md").write_text(text))
    monkeypatch.setattr(bench, "STORE", bench.STORE)  # main() rebinds it

    def render(name: str, *extra: str) -> str:
        monkeypatch.setattr(sys, "argv", ["vision.py", "--render", "--out", name, *extra])
        bench.main()
        return (tmp_path / f"{name}.md").read_text()

    return render


def test_model_args_make_a_row_of_their_own(bench):
    row, factory = bench.variant("BiFormer-T (scaled)", bench.json_object('{"pos_kernel": 5}'))
    assert row == "BiFormer-T (scaled) + pos_kernel=5"
    model = factory(1, 10, 28)
    assert model.stages[0][0].pos.kernel_size == (5, 5)
    assert bench.variant("BiFormer-T (scaled)", None)[0] == "BiFormer-T (scaled)"


def test_model_args_that_do_not_fit_are_refused(bench):
    with pytest.raises(SystemExit, match="do not fit 'MambaOut-Femto \\(scaled\\)'.*pos_kernel"):
        bench.variant("MambaOut-Femto (scaled)", {"pos_kernel": 5})
    for text in ("[1]", "{}", "pos_kernel=5"):
        with pytest.raises(argparse.ArgumentTypeError):
            bench.json_object(text)


def test_each_row_names_the_cpu_it_ran_on(bench):
    """Rows merge across runs, maybe across machines: each run's line names its CPU."""
    text = bench.render({"MambaOut-Femto (scaled)": {**ROW, "cpu": "Intel Xeon"}, "ViT(softmax)": ROW})
    assert "- MambaOut-Femto (scaled): `python benchmarks/vision.py` (commit `abc`, 2026-11-30 08:00 UTC, Intel Xeon;" in text
    assert "- ViT(softmax): `python benchmarks/vision.py` (commit `abc`, 2026-11-30 08:00 UTC, CPU not recorded;" in text


def test_render_rewrites_the_table_from_the_stored_rows_only(bench, tmp_path, render_stored):
    (tmp_path / "t.json").write_text(json.dumps({"ViT(softmax)": {**ROW, "cpu": "Intel Xeon", "cpu_affinity": [0, 1]}}))
    text = render_stored("t")
    assert "| ViT(softmax) | - | - | 1.10 |" in text and "ran on CPUs [0, 1] (affinity)" in text
    with pytest.raises(SystemExit):
        render_stored("missing")


def test_a_results_file_of_rejected_runs_says_what_it_holds(tmp_path, render_stored):
    """``--out vision_rejected`` writes a file with a note saying its rows were not kept; vision.md has none."""
    for name in ("vision_rejected", "vision"):
        (tmp_path / f"{name}.json").write_text(json.dumps({"ViT(softmax)": {**ROW, "cpu": "Intel Xeon"}}))
    rejected = render_stored("vision_rejected")
    assert "\n- this file: runs of `benchmarks/vision.py` whose rows were NOT kept in `vision.json`" in rejected
    assert "this file:" not in render_stored("vision")


def test_gmacs_count_the_matmuls_of_fused_attention(bench):
    """torch's flop counter has no formula for the fused CPU attention kernel: the count goes through
    the math backend, so an attention layer's two matmuls count (2 x H x L x L x D multiply-adds)."""
    import torch
    from torch import nn

    class Attention(nn.Module):
        def forward(self, x):  # [B, 1, 28, 28] as [B, H=4, L=49, D=16]
            q = x.reshape(x.shape[0], 4, 49, 4).repeat(1, 1, 1, 4)  # [B, 4, 49, 16]
            return torch.nn.functional.scaled_dot_product_attention(q, q, q)

    assert bench.gmacs(Attention(), torch.randn(2, 1, 28, 28)) == pytest.approx(2 * 4 * 49 * 49 * 16 / 1e9)


def test_recount_gmacs_rebuilds_each_row_from_its_model(bench, tmp_path, render_stored):
    import torch

    rows = {"BiFormer-T (scaled)": {**ROW, "gmacs": 0.0},  # a shipped row: rebuilt by its name
            "probe": {**ROW, "gmacs": 0.0, "model": "BiFormer-T (scaled)", "model_args": {"topks": [16, -1, -1, -1]}}}
    (tmp_path / "t.json").write_text(json.dumps(rows))
    render_stored("t", "--recount-gmacs")
    stored = json.loads((tmp_path / "t.json").read_text())
    plain = bench.gmacs(bench.MODELS["BiFormer-T (scaled)"](1, 10, 28).eval(), torch.randn(1, 1, 28, 28))
    assert stored["BiFormer-T (scaled)"]["gmacs"] == pytest.approx(plain)
    assert stored["probe"]["gmacs"] > plain  # 16 routed regions of 4 tokens attend to more keys than 4
    (tmp_path / "u.json").write_text(json.dumps({"a renamed row": ROW}))
    with pytest.raises(SystemExit, match="names no model"):
        render_stored("u", "--recount-gmacs")
