"""The report side of ``benchmarks/forecasting.py``: which seeds each table cell rests on."""

import pytest


@pytest.fixture(scope="module")
def bench(load_benchmark):
    return load_benchmark("forecasting")


def run(model: str, dataset: str, horizon: int, seed: int) -> dict:
    return {"model": model, "dataset": dataset, "pred_len": horizon, "seed": seed}


def test_seed_sets_group_cells_and_name_a_model_that_lacks_seeds(bench):
    runs = [run(m, "ETTh1", h, s) for m in ("dlinear", "informer_etth1") for h in (24, 48) for s in (0, 1, 2)]
    runs += [run(m, "ETTh1", 168, 0) for m in ("dlinear", "informer_etth1")]
    runs += [run("dlinear", "ETTh2", 24, s) for s in (0, 1)] + [run("informer_etth1", "ETTh2", 24, 0)]
    text = bench.seed_sets(runs)
    assert text.startswith("[0] at ETTh1 H=168; [0, 1] at ETTh2 H=24; [0, 1, 2] at ETTh1 H=24/48")
    assert text.endswith("(uneven: Informer (ProbSparse) at ETTh2 H=24 has seeds [0] of [0, 1])")
