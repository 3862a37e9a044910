"""The report side of ``python -m benchmarks.forecasting``: which seeds each table cell rests on."""

import pytest


@pytest.fixture(scope="module")
def bench():
    import benchmarks.forecasting as module

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


def test_a_run_whose_config_file_changed_since_is_stale(bench, tmp_path, monkeypatch):
    (tmp_path / "informer_etth1.yaml").write_text("model: {lr: 2.0e-3}\n")
    (tmp_path / "dlinear.yaml").write_text("model: {lr: 1.0e-2}\n")
    monkeypatch.setattr(bench, "CONFIGS", tmp_path)
    runs = {f"informer|ETTh1|{m}|{h}|seed0": {**run(m, "ETTh1", h, 0), "config_sha256": bench.config_digest(m)}
            for m in ("informer_etth1", "dlinear") for h in (24, 48)}
    runs["informer|ETTh1|dlinear|168|seed0"] = run("dlinear", "ETTh1", 168, 0)  # recorded before the field
    current, stale = bench.split_stale(runs)
    assert len(current) == 4 and list(stale) == ["informer|ETTh1|dlinear|168|seed0"]
    (tmp_path / "informer_etth1.yaml").write_text("model: {lr: 1.0e-3}\n")  # the config changes: its runs go stale
    current, stale = bench.split_stale(runs)
    assert sorted(r["model"] for r in current.values()) == ["dlinear", "dlinear"]
    assert bench.stale_lines(stale) == [
        "informer protocol, ETTh1, DLinear: H=168 seeds [0]",
        "informer protocol, ETTh1, Informer (ProbSparse): H=24 seeds [0]; H=48 seeds [0]"]


def test_the_epoch_time_of_an_earlier_config_is_stale(bench, tmp_path, monkeypatch):
    import json

    config = tmp_path / "informer.yaml"
    config.write_text("model: {lr: 2.0e-3}\n")
    monkeypatch.setattr(bench, "RESULTS_DIR", tmp_path)
    monkeypatch.setattr(bench, "REPO", tmp_path)
    timed = {"config": "informer.yaml", "config_sha256": bench.file_digest(config), "threads": 2,
             "epochs_wall_s": [28.5], "batches": 266, "load_before": 0.4, "command": "python x.py", "commit": "abc",
             "date": "today"}
    (tmp_path / "forecasting_epoch.json").write_text(json.dumps(timed))
    assert "28.5 s wall, the slowest of 1 full epochs of 266 batches at 2 torch threads" in bench.targets({})
    config.write_text("model: {lr: 1.0e-3}\n")
    assert "stale (forecasting_epoch.json timed an earlier version of informer.yaml" in bench.targets({})


def test_cpu_sets_say_which_cpu_ran_which_runs(bench):
    amd = [{**run(m, "ETTh1", h, 0), "cpu": "AMD EPYC"} for m in ("dlinear", "informer_etth1") for h in (24, 48, 168)]
    xeon = [{**run(m, "ETTh1", 336, s), "cpu": "Intel Xeon"} for m in ("dlinear", "informer_etth1") for s in (1, 2)]
    legacy = [run("dlinear", "ETTh2", 24, 0)]  # cached before runs recorded their CPU
    assert bench.cpu_sets(xeon + amd + legacy) == (
        "AMD EPYC: 6 runs; Intel Xeon: 4 runs (DLinear: ETTh1 H=336 seeds [1, 2]; Informer (ProbSparse): ETTh1 "
        "H=336 seeds [1, 2]); not recorded: 1 run (DLinear: ETTh2 H=24 seeds [0])")
    assert bench.cpu_sets(amd) == "AMD EPYC: 6 runs"


def test_the_lookback_96_target_counts_only_models_built_on_a_mixer(bench):
    """DLinear + RevIN has no token mixer: a lower mean of its own does not meet the seqmix-model target."""
    def modern(model: str, mse: float, seeds=(0, 1)) -> dict:
        return {f"modern|ETTh1|{model}|{h}|seed{s}": {**run(model, "ETTh1", h, s), "test_mse": mse}
                for h in (96, 192, 336, 720) for s in seeds}

    line = next(x for x in bench.targets({**modern("dlinear_revin", 0.40), **modern("transformer_revin", 0.60)})
                .splitlines() if "lookback 96" in x)
    assert ": Transformer + RevIN 0.600 (mean of 2 seeds per horizon; MISSED)" in line
    assert "with or without a mixer: DLinear + RevIN (no mixer) 0.400, Transformer + RevIN 0.600" in line
    line = next(x for x in bench.targets({**modern("dlinear_revin", 0.40), **modern("patchtst", 0.44, seeds=(0,))})
                .splitlines() if "lookback 96" in x)
    assert ": PatchTST (softmax) + RevIN 0.440 (mean of 1 seed per horizon; met)" in line
    line = next(x for x in bench.targets(modern("dlinear_revin", 0.40)).splitlines() if "lookback 96" in x)
    assert line.endswith("no model with a mixer has all four horizons")
