"""Forecasting app: splits, scaler, time features, data errors, model shapes, CLI fit/test, predict, determinism."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from seqmix.apps.forecasting.data import (
    ForecastDataModule,
    clean_frame,
    resolve_csv,
    split_borders,
    time_features,
)
from seqmix.apps.forecasting.model import (
    DLinear,
    Distilling,
    Encoder,
    ForecastShape,
    Informer,
    LastValue,
    PatchTST,
    TrainingMean,
    RevIN,
    Transformer,
)
from seqmix.core import list_mixers
from seqmix.core.blocks import mixer_factory
from seqmix.core.mixers.probsparse import ProbSparseAttention

REPO = Path(__file__).resolve().parents[2]
DATA_DIR = Path(os.environ["SEQMIX_DATA"]) if os.environ.get("SEQMIX_DATA") else REPO / "data"
HAVE_ETT = (DATA_DIR / "ett" / "ETTh1.csv").is_file()
needs_ett = pytest.mark.skipif(not HAVE_ETT, reason=f"ETTh1.csv not under {DATA_DIR} (set SEQMIX_DATA; CI does)")




@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models gain nothing from a second thread; on a shared 2-core machine it costs a lot."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ------------------------------------------------------------------ data
def write_csv(path: Path, n: int = 400, freq: str = "h", drop: tuple[int, ...] = (), **overrides) -> Path:
    dates = pd.date_range("2020-01-01", periods=n, freq=freq)
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"date": dates.strftime("%Y-%m-%d %H:%M:%S"), "a": rng.normal(size=n),
                       "b": rng.normal(size=n), "OT": np.sin(np.arange(n) / 5.0)})
    for col, values in overrides.items():
        df[col] = values
    df = df.drop(index=list(drop))
    df.to_csv(path, index=False)
    return path


def test_split_borders_follow_the_papers():
    hour = pd.Timedelta(hours=1)
    assert split_borders("ETTh1", 17420, 96, hour) == [(0, 8640), (8640 - 96, 11520), (11520 - 96, 14400)]
    assert split_borders("ETTm1", 69680, 96, pd.Timedelta(minutes=15)) == [
        (0, 34560), (34560 - 96, 46080), (46080 - 96, 57600)]
    # 70 / 10 / 20 elsewhere: train int(0.7 n), test int(0.2 n), val the rest
    assert split_borders("weather", 1000, 24, hour) == [(0, 700), (676, 800), (776, 1000)]


@needs_ett
def test_scaler_is_fitted_on_train_rows_only():
    dm = ForecastDataModule("ETTh1", str(DATA_DIR), seq_len=96, label_len=48, pred_len=24)
    values = dm.frame[dm.columns].to_numpy()
    np.testing.assert_allclose(dm.scaler.mean, values[:8640].mean(0), rtol=1e-10)
    np.testing.assert_allclose(dm.scaler.std, values[:8640].std(0), rtol=1e-10)
    assert not np.allclose(dm.scaler.mean, values.mean(0), rtol=1e-3)  # the full-file mean differs
    dm.setup("fit")
    test = dm.split("test")
    assert len(test) == (14400 - 11424) - 96 - 24 + 1
    # the first test target is the split's first row (row 11520), scaled with the train statistics
    expected = (values[11520] - dm.scaler.mean) / dm.scaler.std
    np.testing.assert_allclose(test[0]["y"][0].numpy(), expected, rtol=1e-5, atol=1e-6)
    assert dm.columns[-1] == "OT" and dm.n_vars == 7 and dm.n_out == 7 and dm.n_time_features == 4


def test_features_S_and_MS(tmp_path):
    path = write_csv(tmp_path / "toy.csv")
    s = ForecastDataModule(str(path), features="S", seq_len=24, label_len=12, pred_len=8)
    ms = ForecastDataModule(str(path), features="MS", target="a", seq_len=24, label_len=12, pred_len=8)
    assert (s.n_vars, s.n_out, s.columns) == (1, 1, ["OT"])
    assert (ms.n_vars, ms.n_out, ms.columns) == (3, 1, ["b", "OT", "a"])  # the target moves last
    item = ms.split("train")[0]
    assert item["x"].shape == (24, 3) and item["y"].shape == (8, 1) and item["y_mark"].shape == (20, 4)


def test_time_features_hourly_and_15_minutes():
    dates = pd.DatetimeIndex(["2016-07-01 01:00:00", "2016-12-31 23:00:00"])
    f = time_features(dates, pd.Timedelta(hours=1))
    assert f.shape == (2, 4)
    np.testing.assert_allclose(f[0], [6 / 11 - 0.5, 0 - 0.5, 4 / 6 - 0.5, 1 / 23 - 0.5], rtol=1e-6)  # a Friday
    np.testing.assert_allclose(f[1], [0.5, 0.5, 5 / 6 - 0.5, 0.5], rtol=1e-6)
    g = time_features(pd.DatetimeIndex(["2016-07-01 00:45:00"]), pd.Timedelta(minutes=15))
    assert g.shape == (1, 5) and abs(g[0, 4] - (45 / 59 - 0.5)) < 1e-6
    assert time_features(dates, pd.Timedelta(days=7)).shape == (2, 3)  # weekly ILI: no hour


def test_embedded_vic_elec_needs_no_file():
    dm = ForecastDataModule("vic_elec", features="MS", seq_len=48, label_len=24, pred_len=24)
    assert dm.columns == ["Temperature", "Holiday", "Demand"] and dm.n_time_features == 5  # half-hourly
    assert len(dm.frame) == 52608


def test_missing_file_names_the_path_and_the_source(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"ETTh1\.csv does not exist.*github.*zhouhaoyi/ETDataset"):
        resolve_csv("ETTh1", tmp_path)
    with pytest.raises(FileNotFoundError, match="neither a known name"):
        resolve_csv("nonexistent_set", tmp_path)


def test_missing_dates_error_or_interpolate(tmp_path):
    path = write_csv(tmp_path / "gaps.csv", drop=(10, 11))
    with pytest.raises(ValueError, match="2 missing dates.*--data.missing interpolate"):
        ForecastDataModule(str(path), seq_len=24, label_len=12, pred_len=8).frame
    dm = ForecastDataModule(str(path), seq_len=24, label_len=12, pred_len=8, missing="interpolate")
    with pytest.warns(UserWarning, match="filled 2 missing dates"):
        frame = dm.frame
    assert len(frame) == 400 and not frame.isna().any().any()
    # the filled value lies between its neighbours (linear in time)
    ot = frame["OT"].to_numpy()
    assert min(ot[9], ot[12]) <= ot[10] <= max(ot[9], ot[12])


def test_repeated_dates_error_or_keep_first(tmp_path):
    path = write_csv(tmp_path / "dup.csv")
    df = pd.read_csv(path)
    df = pd.concat([df.iloc[:11], df.iloc[10:11].assign(a=99.0), df.iloc[11:]])  # row 10's date twice
    df.to_csv(path, index=False)
    with pytest.raises(ValueError, match="1 repeated dates.*--data.duplicates first"):
        ForecastDataModule(str(path), seq_len=24, label_len=12, pred_len=8).frame
    dm = ForecastDataModule(str(path), seq_len=24, label_len=12, pred_len=8, duplicates="first")
    with pytest.warns(UserWarning, match="dropped 1 repeated dates"):
        frame = dm.frame
    assert len(frame) == 400 and frame["date"].is_monotonic_increasing and 99.0 not in frame["a"].to_numpy()
    unsorted = write_csv(tmp_path / "unsorted.csv")
    pd.read_csv(unsorted).iloc[::-1].to_csv(unsorted, index=False)
    with pytest.raises(ValueError, match="unsorted dates"):
        ForecastDataModule(str(unsorted), seq_len=24, label_len=12, pred_len=8).frame


def test_nan_values_error(tmp_path):
    values = np.ones(400)
    values[5] = np.nan
    path = write_csv(tmp_path / "nan.csv", a=values)
    with pytest.raises(ValueError, match="1 NaN values"):
        ForecastDataModule(str(path)).frame


def test_inf_values_are_refused_even_when_nan_gaps_are_filled(tmp_path):
    values = np.ones(400)
    values[7] = -np.inf
    path = write_csv(tmp_path / "inf.csv", b=values)
    for missing in ("error", "interpolate"):
        with pytest.raises(ValueError, match=r"inf.csv: column 'b' row 7 \(0-based data row\) is -inf, not a finite "
                                             r"number \(1 such values in all\)"):
            ForecastDataModule(str(path), missing=missing).frame


def test_header_only_empty_file_and_directory_errors(tmp_path):
    header = tmp_path / "header.csv"
    header.write_text("date,a,OT\n")
    with pytest.raises(ValueError, match=r"header.csv: no rows, only the header \['date', 'a', 'OT'\]"):
        ForecastDataModule(str(header)).frame
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(ValueError, match=r"empty.csv: is empty \(no header and no rows\)"):
        ForecastDataModule(str(empty)).frame
    (tmp_path / "folder.csv").mkdir()
    with pytest.raises(ValueError, match=r"folder.csv is a directory, not a file"):
        ForecastDataModule(str(tmp_path / "folder.csv")).frame


def test_non_numeric_column_error(tmp_path):
    path = write_csv(tmp_path / "text.csv", a=["x"] * 400)
    with pytest.raises(ValueError, match=r"non-numeric columns \['a'\]"):
        ForecastDataModule(str(path)).frame


def test_short_series_error(tmp_path):
    path = write_csv(tmp_path / "short.csv", n=50)
    with pytest.raises(ValueError, match="shorter than seq_len \\+ pred_len = 144"):
        ForecastDataModule(str(path), seq_len=96, pred_len=48).frame
    # long enough overall but a split too short for the window
    path = write_csv(tmp_path / "medium.csv", n=400)
    with pytest.raises(ValueError, match="the val split has"):
        ForecastDataModule(str(path), seq_len=96, pred_len=48).borders


def test_unknown_target_error(tmp_path):
    path = write_csv(tmp_path / "toy.csv")
    with pytest.raises(ValueError, match=r"target column 'price' is not in the file; choose --data.target among"):
        ForecastDataModule(str(path), target="price").frame


def test_bad_dates_error(tmp_path):
    path = write_csv(tmp_path / "dates.csv", date=["not a date"] * 400)
    with pytest.raises(ValueError, match="not dates"):
        clean_frame(pd.read_csv(path), source="dates.csv", missing="error")


# ----------------------------------------------------------------- models
SHAPE = ForecastShape(n_vars=5, n_out=5, n_time_features=4, seq_len=32, label_len=16, pred_len=8)
ATTENTION_MIXERS = [m for m in ("softmax", "probsparse", "gla") if m in list_mixers()]


def batch(shape: ForecastShape, b: int = 2):
    return (torch.randn(b, shape.seq_len, shape.n_vars), torch.rand(b, shape.seq_len, shape.n_time_features) - 0.5,
            torch.rand(b, shape.label_len + shape.pred_len, shape.n_time_features) - 0.5)


def decoder_factory():
    name = "probsparse" if "probsparse" in list_mixers() else "softmax"
    return mixer_factory(name, n_heads=2, causal=True)


@pytest.mark.parametrize("encoder", ATTENTION_MIXERS)
@pytest.mark.parametrize("cls", [Informer, Transformer])
def test_encoder_decoder_shapes_with_swapped_mixers(cls, encoder):
    torch.manual_seed(0)
    net = cls(SHAPE, d_model=16, encoder_mixer=mixer_factory(encoder, n_heads=2, causal=False),
              decoder_mixer=decoder_factory())
    y = net(*batch(SHAPE))
    assert y.shape == (2, SHAPE.pred_len, SHAPE.n_out) and torch.isfinite(y).all()
    y.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters() if p.requires_grad)


@pytest.mark.parametrize("mixer", [m for m in ("softmax", "gla", "linear_attention", "bra") if m in list_mixers()])
def test_patchtst_shapes_and_gradients_with_swapped_mixers(mixer):
    torch.manual_seed(0)
    kwargs = {"n_win": 5, "topk": 2, "pad": True} if mixer == "bra" else {}
    net = PatchTST(SHAPE, patch_len=8, stride=4, d_model=16, n_layers=2,
                   mixer=mixer_factory(mixer, n_heads=2, causal=False, **kwargs))
    assert net.n_patches == (32 - 8) // 4 + 2
    y = net(*batch(SHAPE, b=3))
    assert y.shape == (3, SHAPE.pred_len, SHAPE.n_out) and torch.isfinite(y).all()
    y.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())


def test_patchtst_patches_pad_the_end_with_the_last_value():
    net = PatchTST(ForecastShape(2, 2, 4, 12, 6, 4), patch_len=4, stride=2, d_model=8, n_layers=1)
    x = torch.arange(24.0).reshape(1, 12, 2)  # [B, L, C]: variable c at step t is 2t + c
    patches = net.patches(x)  # [1, 2, N, 4]
    assert patches.shape == (1, 2, (12 - 4) // 2 + 2, 4) == (1, 2, net.n_patches, 4)
    for k in range(net.n_patches - 1):
        torch.testing.assert_close(patches[0, 1, k], x[0, 2 * k: 2 * k + 4, 1])
    # the last patch: the last two steps, then two copies of the last value
    torch.testing.assert_close(patches[0, 0, -1], torch.tensor([20.0, 22.0, 22.0, 22.0]))


def test_patchtst_forecasts_each_variable_on_its_own():
    """Channel independence: in eval mode (BatchNorm on its running statistics) changing one
    variable's history changes that variable's forecast only."""
    torch.manual_seed(0)
    net = PatchTST(SHAPE, patch_len=8, stride=4, d_model=16, n_layers=2).eval()
    x, xm, ym = batch(SHAPE)
    y = net(x, xm, ym)
    x2 = x.clone()
    x2[..., 1] += torch.randn_like(x2[..., 1])
    y2 = net(x2, xm, ym)
    changed = (y2 - y).abs().amax(dim=(0, 1)) > 1e-6  # [C]
    assert changed.tolist() == [False, True, False, False, False]
    ms = ForecastShape(5, 1, 4, 32, 16, 8)
    assert PatchTST(ms, patch_len=8, stride=4, d_model=16, n_layers=1).eval()(x, xm, ym).shape == (2, 8, 1)


def test_patchtst_bad_arguments_are_named():
    with pytest.raises(ValueError, match="patch_len <= seq_len"):
        PatchTST(SHAPE, patch_len=64)
    with pytest.raises(ValueError, match="stride <= patch_len"):
        PatchTST(SHAPE, patch_len=8, stride=9)
    with pytest.raises(ValueError, match="mixer must be causal=False"):
        PatchTST(SHAPE, patch_len=8, mixer=mixer_factory("softmax", n_heads=2, causal=True))


def test_ms_and_baseline_shapes():
    ms = ForecastShape(5, 1, 4, 32, 16, 8)
    x, xm, ym = batch(ms)
    assert Informer(ms, d_model=16).forward(x, xm, ym).shape == (2, 8, 1)
    assert DLinear(ms).forward(x, xm, ym).shape == (2, 8, 1)
    assert DLinear(SHAPE, individual=True).forward(*batch(SHAPE)).shape == (2, 8, 5)
    last = LastValue(ms).forward(x, xm, ym)
    assert torch.equal(last, x[:, -1:, -1:].expand(-1, 8, -1))
    assert torch.equal(TrainingMean(ms).forward(x, xm, ym), torch.zeros(2, 8, 1))


def test_distilling_halves_the_length():
    x = torch.randn(2, 96, 16)
    assert Distilling(16)(x).shape == (2, 48, 16)
    assert Distilling(16)(torch.randn(2, 25, 16)).shape == (2, 13, 16)
    enc = Encoder(16, 3, mixer_factory("softmax", n_heads=2, causal=False), distil=True, ffn_ratio=2, dropout=0)
    assert enc(x).shape == (2, 24, 16)  # two distilling steps between three layers
    plain = Encoder(16, 3, mixer_factory("softmax", n_heads=2, causal=False), distil=False, ffn_ratio=2, dropout=0)
    assert plain(x).shape == (2, 96, 16)


def test_stack_of_replicas_on_halved_inputs():
    net = Informer(SHAPE, d_model=16, stack=[2, 1])
    assert net(*batch(SHAPE)).shape == (2, 8, 5)
    memory_len = sum(enc(torch.randn(1, n, 16)).shape[1] for enc, n in zip(net.encoders, (32, 16)))
    assert memory_len == 16 + 16  # 32 -> 16 (one distil) and 16 (one layer, no distil)


def test_decoder_mixer_must_be_causal():
    with pytest.raises(ValueError, match="decoder_mixer must be causal=True"):
        Informer(SHAPE, d_model=16, decoder_mixer=mixer_factory("softmax", n_heads=2, causal=False))


def test_revin_round_trip():
    revin = RevIN(5)
    x = torch.randn(3, 32, 5) * 7 + 3
    z, stats = revin.normalize(x)
    assert z.mean(1).abs().max() < 1e-5
    torch.testing.assert_close(revin.denormalize(z, stats), x, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------ CLI, predict
def tiny_argv(root: Path, seed: int = 0, config: str = "transformer.yaml") -> list[str]:
    return ["--config", str(REPO / "configs/forecasting" / config), "--seed_everything", str(seed),
            "--model.network.init_args.d_model", "16", "--data.data_dir", str(DATA_DIR),
            "--data.seq_len", "24", "--data.label_len", "12", "--data.pred_len", "12",
            "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "4", "--trainer.limit_val_batches", "2",
            "--trainer.limit_test_batches", "2", "--trainer.default_root_dir", str(root),
            "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
            "--trainer.enable_model_summary", "false"]


def fit_and_test(root: Path, seed: int, config: str = "transformer.yaml"):
    from seqmix.apps.forecasting.app import APP
    from seqmix.cli import app_cli

    cli = app_cli(APP, tiny_argv(root, seed, config), run=False)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    result = cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path="best", verbose=False)[0]
    return result, cli.trainer.checkpoint_callback.best_model_path


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    if not HAVE_ETT:
        pytest.skip(f"ETTh1.csv not under {DATA_DIR} (set SEQMIX_DATA; CI does)")
    return fit_and_test(tmp_path_factory.mktemp("fc_a"), seed=0)


def test_cli_fit_and_test_in_process(tiny_run, tmp_path):
    from seqmix.cli import main

    result, ckpt = tiny_run
    assert set(result) >= {"test/mse", "test/mae", "test/mse_orig", "test/mae_orig"}
    assert 0 < result["test/mse"] < 10 and result["test/mse_orig"] > result["test/mse"]  # OT-scale units
    assert Path(ckpt).is_file()
    # the console entry point in-process: `seqmix forecasting test --ckpt_path ...`
    assert main(["forecasting", "test", *tiny_argv(tmp_path), "--ckpt_path", ckpt]) == 0


@needs_ett
def test_patchtst_config_fits_and_tests_through_the_cli(tmp_path):
    result, ckpt = fit_and_test(tmp_path, seed=0, config="patchtst.yaml")
    assert 0 < result["test/mse"] < 10 and Path(ckpt).is_file()


def test_same_seed_same_test_mse_and_forecast_with_the_default_informer(tmp_path):
    """The default config (ProbSparse drawing a new key sample at every training step) twice from
    seed 0: the same test MSE; and its checkpoint forecasts the same values at every call."""
    from seqmix.cli import main

    if not HAVE_ETT:
        pytest.skip(f"ETTh1.csv not under {DATA_DIR} (set SEQMIX_DATA; CI does)")
    first, ckpt = fit_and_test(tmp_path / "a", seed=0, config="informer_etth1.yaml")
    again, _ = fit_and_test(tmp_path / "b", seed=0, config="informer_etth1.yaml")
    assert abs(again["test/mse"] - first["test/mse"]) <= 1e-6
    other, _ = fit_and_test(tmp_path / "c", seed=1, config="informer_etth1.yaml")
    assert abs(other["test/mse"] - first["test/mse"]) > 1e-6, "another seed trains another model"
    csv = tmp_path / "recent.csv"
    pd.read_csv(DATA_DIR / "ett" / "ETTh1.csv").iloc[:200].to_csv(csv, index=False)
    forecasts = []
    for i in range(2):
        out = tmp_path / f"forecast{i}.csv"
        assert main(["forecasting", "predict", "--ckpt", ckpt, "--csv", str(csv), "--out", str(out)]) == 0
        forecasts.append(pd.read_csv(out))
    pd.testing.assert_frame_equal(forecasts[0], forecasts[1])


def test_the_paper_size_config_is_the_default_informer_at_the_papers_width(tmp_path):
    """configs/forecasting/informer_etth1_paper.yaml: the default config's Informer at d_model 512 with
    8 heads and lr 1e-4 (the paper's), and it trains (one step on short windows)."""
    from seqmix.apps.forecasting.app import APP
    from seqmix.cli import app_cli

    if not HAVE_ETT:
        pytest.skip(f"ETTh1.csv not under {DATA_DIR} (set SEQMIX_DATA; CI does)")
    argv = tiny_argv(tmp_path, config="informer_etth1_paper.yaml")
    i = argv.index("--model.network.init_args.d_model")
    del argv[i:i + 2]  # keep the config's width
    cli = app_cli(APP, [*argv, "--trainer.limit_train_batches", "1", "--trainer.limit_val_batches", "1"], run=False)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    network = cli.model.network
    assert network.projection.in_features == 512 and cli.model.lr == 1e-4
    assert {m.n_heads for m in network.modules() if isinstance(m, ProbSparseAttention)} == {8}
    default = yaml.safe_load((REPO / "configs/forecasting/informer_etth1.yaml").read_text())
    paper = yaml.safe_load((REPO / "configs/forecasting/informer_etth1_paper.yaml").read_text())
    assert paper["data"] == default["data"] and paper["trainer"] == default["trainer"]


def test_predict_writes_csv_and_png(tiny_run, tmp_path, monkeypatch):
    from seqmix.cli import main

    _, ckpt = tiny_run
    csv = tmp_path / "recent.csv"
    pd.read_csv(DATA_DIR / "ett" / "ETTh1.csv").iloc[:200].to_csv(csv, index=False)
    out, png = tmp_path / "fc.csv", tmp_path / "fc.png"
    assert main(["forecasting", "predict", "--ckpt", ckpt, "--csv", str(csv), "--origin", "-12",
                 "--out", str(out), "--png", str(png)]) == 0
    forecast = pd.read_csv(out)
    assert len(forecast) == 12 and list(forecast.columns[:2]) == ["date", "HUFL"]
    assert "true_OT" in forecast and np.isfinite(forecast["OT"]).all()
    # the truth columns hold the file's last 12 rows, in original units
    np.testing.assert_allclose(forecast["true_OT"], pd.read_csv(csv)["OT"].iloc[-12:], rtol=1e-6)
    assert pd.Timestamp(forecast["date"].iloc[0]) == pd.Timestamp(pd.read_csv(csv)["date"].iloc[-12])
    assert png.stat().st_size > 1000
    # beyond the end of the file: no truth columns
    main(["forecasting", "predict", "--ckpt", ckpt, "--csv", str(csv), "--out", str(out)])
    assert "true_OT" not in pd.read_csv(out)
    # without --out: the working folder, never beside the (perhaps shared, read-only) data file
    workdir = tmp_path / "work"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    assert main(["forecasting", "predict", "--ckpt", ckpt, "--csv", str(csv)]) == 0
    assert sorted(p.name for p in workdir.iterdir()) == ["recent_forecast.csv", "recent_forecast.png"]
    assert not (tmp_path / "recent_forecast.csv").exists()
    # --dataset: the series read as fit reads it (here ETTh1 from SEQMIX_DATA), the outputs named after it
    assert main(["forecasting", "predict", "--ckpt", ckpt, "--dataset", "ETTh1", "--origin", "-12"]) == 0
    by_name = pd.read_csv(workdir / "ETTh1_forecast.csv")
    np.testing.assert_allclose(by_name["true_OT"], pd.read_csv(DATA_DIR / "ett" / "ETTh1.csv")["OT"].iloc[-12:],
                               rtol=1e-6)
    with pytest.raises(SystemExit):  # argparse: one of --csv / --dataset, not both
        main(["forecasting", "predict", "--ckpt", ckpt, "--dataset", "ETTh1", "--csv", str(csv)])
    # too short a file, an origin without its lookback before it: one line each, naming the sizes
    short = tmp_path / "short.csv"
    pd.read_csv(csv).iloc[:20].to_csv(short, index=False)
    with pytest.raises(SystemExit, match=r"error: the CSV has 20 rows; the model forecasts from its last \d+"):
        main(["forecasting", "predict", "--ckpt", ckpt, "--csv", str(short), "--out", str(out)])
    with pytest.raises(SystemExit, match=r"error: origin row 3 is out of range: .* choose \d+ <= origin <= 200"):
        main(["forecasting", "predict", "--ckpt", ckpt, "--csv", str(csv), "--origin", "3", "--out", str(out)])
    # an output on an input, or on the other output: refused before anything is written
    before = csv.read_bytes()
    for argv, message in ((["--out", str(csv)], rf"--out {csv} is the input --csv {csv}: writing it would destroy"),
                          (["--out", str(tmp_path / "d.csv"), "--png", str(tmp_path / "sub/../d.csv")],
                           "and --out .*d.csv are the same file"),
                          (["--out", str(tmp_path / "f.png")], r"--png .*f.png and --out .*f.png are the same file"),
                          (["--out", str(tmp_path)], "is a directory; name a file to write")):
        with pytest.raises(SystemExit, match=message):
            main(["forecasting", "predict", "--ckpt", ckpt, "--csv", str(csv), *argv])
    assert csv.read_bytes() == before and not (tmp_path / "d.csv").exists() and not (tmp_path / "f.png").exists()
