"""benchmarks/mixers.py: typed constructor overrides (name[key=value,...]), the chunk-vs-naive table of issue 30
and its verdicts, and the sweep end to end at a tiny size (one point in a real worker process)."""

import argparse
from pathlib import Path

import pytest
import torch
import yaml

from benchmarks import mixers as bench
from benchmarks.mixers import ISSUE30_MIXERS, TNL, MixerSpec, chunk_vs_naive_rows, default_specs, parse_spec

REPO = Path(__file__).resolve().parents[2]


def test_overrides_are_parsed_by_the_constructor_annotations_and_label_the_row():
    spec = parse_spec("landmark[retrieval_k=4, block_size=16]")
    assert spec.overrides == (("retrieval_k", 4), ("block_size", 16))
    assert spec.label() == "landmark (retrieval_k=4, block_size=16)"
    assert spec.label("naive") == "landmark (retrieval_k=4, block_size=16, impl=naive)"
    assert parse_spec("landmark").label("auto") == "landmark" and parse_spec("landmark[]").overrides == ()
    assert parse_spec("linear_attention[output_gate=false]").overrides == (("output_gate", False),)  # bool
    assert parse_spec("mlstm[layout=block]").overrides == (("layout", "block"),)  # Literal
    assert parse_spec("titans[memory_expansion=none]").overrides == (("memory_expansion", None),)  # int | None
    assert parse_spec("mlstm[proj_factor=2]").overrides == (("proj_factor", 2.0),)  # float | None
    mixer = spec.build(16, 2, "naive")
    assert (mixer.retrieval_k, mixer.block_size, mixer.impl, mixer.causal, mixer.n_heads) == (4, 16, "naive", True, 2)


@pytest.mark.parametrize("text, message", [
    ("no_such_mixer", "'no_such_mixer' is not a registered mixer"),
    ("landmark[foo=1]", "landmark takes no argument 'foo'; it takes"),
    ("landmark[retrieval_k=x]", "retrieval_k: 'x' is not of type int | None"),
    ("landmark[block_size=1.5]", "block_size: '1.5' is not of type int"),
    ("landmark[causal=false]", "causal is not a constructor override here"),
    ("landmark[impl=naive]", "choose implementations with --impls"),
    ("mlstm[layout=diag]", r"layout: 'diag' is not one of \['cell', 'block'\]"),
    ("linear_attention[output_gate=yes]", "'yes' is not a bool; write true or false"),
    ("landmark[retrieval_k=4,retrieval_k=5]", "retrieval_k is given twice"),
    ("landmark[retrieval_k]", "'retrieval_k' is not key=value"),
    ("landmark(retrieval_k=4)", r"write a registered name, or name\[key=value"),
])
def test_a_bad_override_is_an_error_naming_it(text, message):
    with pytest.raises(ValueError, match=message):
        parse_spec(text)


def test_main_refuses_bad_mixers_before_any_worker_runs(monkeypatch):
    monkeypatch.setattr(bench, "run_point", lambda *a: pytest.fail("no point may run"))
    tiny = ["--lengths", "16", "--d-model", "16", "--heads", "2"]
    with pytest.raises(SystemExit, match="landmark takes no argument 'retrival_k'"):
        bench.main(["--mixers", "landmark[retrival_k=4]", *tiny])
    with pytest.raises(SystemExit, match=r"landmark \(retrieval_k=0\) cannot be built: .*retrieval_k must be"):
        bench.main(["--mixers", "landmark[retrieval_k=0]", *tiny])
    with pytest.raises(SystemExit, match=r"softmax \(impl=chunk\) cannot be built: .*impl='chunk' is unknown"):
        bench.main(["--mixers", "softmax", "--impls", "chunk", *tiny])
    with pytest.raises(SystemExit, match=r"--naive-lengths \[32\] must be among --lengths \[16\]"):
        bench.main(["--mixers", "lmu", "--impls", "naive", "--naive-lengths", "32", *tiny])


def test_default_list_skips_unregistered_names_with_a_note():
    specs, notes = default_specs(["lmu", "not_written_yet", TNL])
    assert [s.name for s in specs] == ["lmu", "linear_attention"]
    assert notes == ["not_written_yet is not a registered mixer (yet): skipped"]


def test_the_tnl_row_has_the_pieces_of_the_tnl_recall_config():
    config = yaml.safe_load((REPO / "configs/recall/tnl.yaml").read_text())["model.mixer"]
    from seqmix.core import get_mixer_class

    spec = parse_spec(TNL)
    assert config["class_path"].endswith("." + get_mixer_class(spec.name).__name__)
    assert dict(spec.overrides) == {k: v for k, v in config["init_args"].items() if k != "n_heads"}
    assert TNL in ISSUE30_MIXERS


def point(label, t, seconds=None, error=None, **extra):
    if error is not None:
        return {"mixer": label, "T": t, "error": error, **extra}
    return {"mixer": label, "T": t, "impl": "x", "median_s": seconds, "times_s": [seconds], "peak_bytes": 1, **extra}


def speedup_rows(naive, chunk4, chunk8):
    spec = MixerSpec("lmu")
    points = {("lmu (impl=naive)", 4096): naive, ("lmu (impl=chunk)", 4096): chunk4, ("lmu (impl=chunk)", 8192): chunk8}
    points = {k: v for k, v in points.items() if v is not None}
    return chunk_vs_naive_rows(points, [spec])[0]


def test_chunk_vs_naive_verdicts_can_pass_fail_and_bound_a_timed_out_reference():
    n, c4, c8 = "lmu (impl=naive)", "lmu (impl=chunk)", "lmu (impl=chunk)"
    assert speedup_rows(point(n, 4096, 1.0), point(c4, 4096, 0.1), point(c8, 8192, 0.2)) == [
        "lmu", "1,000", "100", "10.0x", "200", "2.00x", "PASS"]
    assert speedup_rows(point(n, 4096, 0.3), point(c4, 4096, 0.1), point(c8, 8192, 0.2))[-1] == \
        "FAIL (speed-up < 5x)"
    assert speedup_rows(point(n, 4096, 1.0), point(c4, 4096, 0.1), point(c8, 8192, 0.3))[-1] == \
        "FAIL (growth > 2.5x)"
    timed_out = point(n, 4096, error="timeout (> 600 s)", timeout_s=600.0)
    row = speedup_rows(timed_out, point(c4, 4096, 10.0), point(c8, 8192, 20.0))
    assert row[1:4] == ["timeout (> 600 s)", "10,000", "> 60.0x"] and row[-1] == "PASS"  # the bound meets 5x
    row = speedup_rows(timed_out, point(c4, 4096, 200.0), point(c8, 8192, 400.0))
    assert row[3] == "> 3.0x" and row[-1] == "NOT EVALUATED (speed-up)"  # a bound under 5x says nothing
    one_run = dict(point(n, 4096, 40.0), times_s=[])  # its warm-up took over --cap: timed by that run alone
    assert speedup_rows(one_run, point(c4, 4096, 1.0), None)[1:] == [
        "40,000 (1 run, > cap)", "1,000", "40.0x", "not run", "not measured", "NOT EVALUATED (growth)"]
    failed = speedup_rows(point(n, 4096, error="failed: boom"), point(c4, 4096, 1.0), point(c8, 8192, 2.0))
    assert failed[1] == "failed: boom" and failed[-1] == "NOT EVALUATED (speed-up)"


def test_chunk_vs_naive_sweep_end_to_end_at_a_tiny_size(tmp_path, monkeypatch):
    """The sweep, tables and figure with each point's worker run in this process (no interpreter per point)."""
    monkeypatch.setattr("benchmarks.common.RESULTS_DIR", tmp_path)
    monkeypatch.setattr(bench, "run_point", lambda spec, impl, t, args: bench.worker(spec.text, t, impl, args))
    threads = str(torch.get_num_threads())
    assert bench.main(["--chunk-vs-naive", "--mixers", "lmu[order=4]", "--lengths", "16", "32", "--d-model", "16",
                       "--heads", "2", "--repeats", "1", "--threads", threads, "--name", "tiny"]) == 0
    text = (tmp_path / "tiny.md").read_text()
    assert "| lmu (order=4, impl=naive) | naive |" in text and "| lmu (order=4, impl=chunk) | chunk |" in text
    assert "## Chunk vs naive (issue 30)" in text and "here at T=16 -> 32" in text
    row = next(line for line in text.splitlines() if line.startswith("| lmu (order=4) |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert len(cells) == 7 and cells[3].endswith("x") and cells[5].endswith("x")
    assert cells[-1] in ("PASS", "FAIL (speed-up < 5x)", "FAIL (growth > 2.5x)",
                         "FAIL (speed-up < 5x, growth > 2.5x)")
    assert "impl=naive only at T in [16]" in text  # the shortest length when T=4096 is not swept
    assert (tmp_path / "tiny.png").stat().st_size > 0


def test_one_point_runs_in_a_worker_process_with_its_overrides_and_a_timeout_is_a_point():
    args = argparse.Namespace(repeats=1, threads=1, d_model=16, heads=2, cap=30.0, timeout=300.0)
    p = bench.run_point(parse_spec("lmu[order=4]"), "naive", 16, args)
    assert "error" not in p, p
    assert (p["mixer"], p["T"], p["impl"]) == ("lmu (order=4, impl=naive)", 16, "naive")
    assert p["median_s"] > 0 and len(p["times_s"]) == 1
    args.timeout = 0.05
    p = bench.run_point(parse_spec("lmu[order=4]"), "naive", 16, args)
    assert p == {"mixer": "lmu (order=4, impl=naive)", "T": 16, "error": "timeout (> 0.05 s)", "timeout_s": 0.05}
