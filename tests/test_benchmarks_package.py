"""benchmarks/ is a package: each benchmark imports as ``benchmarks.<name>``, its command line says
``python -m benchmarks.<name>``, one timing helper serves them all, and the docs equal the results files."""

import importlib
import time
import types
from pathlib import Path

import pytest

import benchmarks.common
from benchmarks.common import Stopwatch, command_line, time_call, time_calls

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
NAMES = sorted(p.stem for p in BENCHMARKS.glob("*.py") if p.stem != "__init__")


@pytest.mark.parametrize("name", NAMES)
def test_every_benchmark_imports_as_a_module_of_the_package(name):
    if name == "kernels_compile_check":
        pytest.importorskip("triton")
    module = importlib.import_module(f"benchmarks.{name}")
    assert Path(module.__file__).resolve().parent == BENCHMARKS


def test_no_benchmark_shadows_the_hdbscan_library():
    import hdbscan

    assert "hdbscan" not in NAMES
    assert Path(hdbscan.__file__).resolve().parent.parent != BENCHMARKS


@pytest.mark.parametrize("name", ["rnn_cpu", "update_docs"])
def test_help_works_in_process(name, capsys, monkeypatch):
    monkeypatch.setattr("sys.argv", [str(BENCHMARKS / f"{name}.py"), "--help"])
    with pytest.raises(SystemExit) as done:
        importlib.import_module(f"benchmarks.{name}").main()
    assert done.value.code == 0
    assert "usage:" in capsys.readouterr().out


def test_a_results_file_records_the_module_command():
    assert command_line([str(BENCHMARKS / "mqar.py"), "--demo", "--name", "a b"]) == \
        "python -m benchmarks.mqar --demo --name 'a b'"
    assert command_line(["scripts/train_vision_checkpoints.py", "--x"]) == "python scripts/train_vision_checkpoints.py --x"


def test_time_calls_interleaves_keeps_warmups_apart_and_reports_median_and_min():
    order = []
    timings = time_calls({"a": lambda: order.append("a"), "b": lambda: order.append("b")}, warmup=1, repeats=3)
    assert order == ["a", "b"] + ["a", "b"] * 3  # warm-ups first, then round-robin
    assert [len(t.warmup_s) for t in timings.values()] == [1, 1]
    assert [len(t.times_s) for t in timings.values()] == [3, 3]
    assert timings["a"].min_s <= timings["a"].median_s
    with pytest.raises(ValueError, match="repeats >= 1"):
        time_call(lambda: None, repeats=0)


def test_min_repeat_s_records_seconds_per_call_and_before_runs_off_the_clock(monkeypatch):
    """On a fake clock (a loaded machine makes real sleeps overshoot): each call takes 1 ms, ``before`` 2 ms."""
    now = [0.0]

    def advance(seconds: float) -> None:
        now[0] += seconds

    monkeypatch.setattr(benchmarks.common, "time", types.SimpleNamespace(perf_counter=lambda: now[0]))
    calls = []
    timing = time_call(lambda: calls.append(advance(0.001)), warmup=0, repeats=1, min_repeat_s=0.0035,
                       before=lambda: advance(0.002))
    assert len(calls) == 4  # called again until 0.0035 s had passed on the clock ...
    assert timing.times_s[0] == pytest.approx(0.001)  # ... per call, without the 2 ms of `before`


def test_stopwatch_times_a_block_and_refuses_stop_before_start():
    with Stopwatch() as watch:
        time.sleep(0.01)
    assert watch.wall_s >= 0.01 and watch.cpu_s < watch.wall_s
    with pytest.raises(ValueError, match="before start"):
        Stopwatch().stop()


def test_readme_and_results_page_equal_the_results_files():
    """`python -m benchmarks.update_docs --check`: every block of docs/results.md and README.md's headlines."""
    from benchmarks.update_docs import stale_pages

    assert stale_pages() == [], "run python -m benchmarks.update_docs"


def test_readme_is_a_front_page():
    readme = (BENCHMARKS.parent / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    assert "<!-- headlines -->" in readme and "docs/results.md" in readme
