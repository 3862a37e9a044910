"""The report side of ``benchmarks/forecasting.py``: which seeds each table cell rests on."""

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "forecasting.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("forecasting_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["forecasting_bench"] = module
    spec.loader.exec_module(module)
    return module


def run(model: str, dataset: str, horizon: int, seed: int) -> dict:
    return {"model": model, "dataset": dataset, "pred_len": horizon, "seed": seed}


def test_seed_sets_group_cells_and_name_a_model_that_lacks_seeds(bench):
    runs = [run(m, "ETTh1", h, s) for m in ("dlinear", "informer_etth1") for h in (24, 48) for s in (0, 1, 2)]
    runs += [run(m, "ETTh1", 168, 0) for m in ("dlinear", "informer_etth1")]
    runs += [run("dlinear", "ETTh2", 24, s) for s in (0, 1)] + [run("informer_etth1", "ETTh2", 24, 0)]
    text = bench.seed_sets(runs)
    assert text.startswith("[0] at ETTh1 H=168; [0, 1] at ETTh2 H=24; [0, 1, 2] at ETTh1 H=24/48")
    assert text.endswith("(uneven: Informer (ProbSparse) at ETTh2 H=24 has seeds [0] of [0, 1])")
