"""Every configs/forecasting/patchtst_<mixer>.yaml parses through the app's CLI, builds PatchTST with that mixer
(non-causal, in the Bidirectional wrapper where the mixer is causal only) and runs one tiny forward and backward;
and benchmarks/forecasting.py names each of them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from seqmix.apps.forecasting.model import PatchTST
from seqmix.core.mixer import Mixer, get_mixer_class
from seqmix.core.mixers.bidirectional import Bidirectional

REPO = Path(__file__).resolve().parents[2]
CONFIGS = sorted((REPO / "configs" / "forecasting").glob("patchtst_*.yaml"))
# parameters the task loss does not reach: SEA's estimator learns only from its distillation loss
# (SEAAttention.estimator_loss), which the forecasting app does not call
UNUSED = {"patchtst_sea": {"estimator"}}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def mixer_entry(config: Path) -> dict:
    return yaml.safe_load(config.read_text())["model"]["network"]["init_args"]["mixer"]


def test_there_is_a_config_per_newer_mixer():
    names = {c.stem.removeprefix("patchtst_") for c in CONFIGS}
    assert {"routing", "combiner", "landmark", "hip", "sea", "flow", "softplus", "cca", "tcnca", "mamba", "mlstm",
            "lmu", "titans", "jrt_rnn", "tnl", "softmax"} <= names


@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_the_config_builds_patchtst_with_its_mixer_and_runs_a_tiny_forward(config, tmp_path):
    from seqmix.apps.forecasting.app import APP
    from seqmix.cli import app_cli

    base = yaml.safe_load((REPO / "configs/forecasting/patchtst.yaml").read_text())
    own = yaml.safe_load(config.read_text())
    # only the mixer is swapped: every other setting is patchtst.yaml's
    for part in (own, base):
        part["model"]["network"]["init_args"].pop("mixer")
    assert own == base, f"{config.name} changes more than the mixer"

    entry = mixer_entry(config)
    # the configs' 12 patch tokens (lookback 96: the block and window sizes are chosen for them), one layer
    cli = app_cli(APP, ["--config", str(config), "--data.pred_len", "8", "--model.network.init_args.n_layers", "1",
                        "--trainer.logger", "false", "--trainer.default_root_dir", str(tmp_path)], run=False)
    net = cli.model.network
    assert isinstance(net, PatchTST) and net.n_patches == 12  # (96 - 16) // 8 + 2 tokens
    mixer = net.layers[0].mixer
    assert isinstance(mixer, Mixer) and not mixer.causal
    if entry["class_path"].endswith("Bidirectional"):
        inner = entry["init_args"]["mixer"]["class_path"]
        assert isinstance(mixer, Bidirectional) and type(mixer.forward_mixer).__name__ == inner.rsplit(".", 1)[1]
        assert "noncausal_self" not in type(mixer.forward_mixer).patterns  # wrapped only when it must be
    else:
        assert type(mixer).__name__ == entry["class_path"].rsplit(".", 1)[1]

    torch.manual_seed(0)
    n_vars = net.shape.n_vars
    x = torch.randn(2, 96, n_vars)
    y = net(x, torch.zeros(2, 96, net.shape.n_time_features), torch.zeros(2, 56, net.shape.n_time_features))
    assert y.shape == (2, 8, net.shape.n_out) and torch.isfinite(y).all()
    y.pow(2).mean().backward()
    no_grad = {n for n, p in mixer.named_parameters() if p.grad is None}
    assert no_grad == UNUSED.get(config.stem, set()), f"no gradient reaches {sorted(no_grad)}"
    assert all(torch.isfinite(p.grad).all() for p in mixer.parameters() if p.grad is not None)


def test_the_benchmark_names_every_config():
    from benchmarks.forecasting import MIXER_MODELS, MIXER_SWAPS, MODEL_NAMES

    for config in CONFIGS:
        assert config.stem in MIXER_SWAPS and config.stem in MODEL_NAMES and config.stem in MIXER_MODELS


def test_the_wrapped_mixers_are_the_causal_only_ones():
    """A config wraps its mixer in Bidirectional exactly when the mixer has no non-causal pattern."""
    from seqmix.core.mixer import _ensure_builtin_mixers, _REGISTRY

    _ensure_builtin_mixers()
    by_path = {f"{c.__module__}.{c.__name__}": c for c in _REGISTRY.values()}
    for config in CONFIGS:
        entry = mixer_entry(config)
        wrapped = entry["class_path"].endswith("Bidirectional")
        path = entry["init_args"]["mixer"]["class_path"] if wrapped else entry["class_path"]
        cls = by_path[path]
        assert get_mixer_class(cls.registry_name) is cls
        assert wrapped == ("noncausal_self" not in cls.patterns), config.name


def test_the_report_section_lists_each_mixer_beside_softmax_and_names_the_missing():
    from benchmarks.forecasting import MIXER_SWAPS, mixer_swaps, run_key

    def run(model: str, mse: float, max_epochs: int = 2) -> dict:
        return {"model": model, "test_mse": mse, "test_mae": mse + 0.01, "params": 1234, "cpu_s": 56.0,
                "epochs_run": max_epochs, "val_mse_best": 0.7, "max_epochs": max_epochs, "limit_train_batches": 1.0,
                "threads": 1, "cpu": "test CPU", "load_avg": 1.0}

    runs = {run_key("modern", "ETTh1", m, 96, 0): run(m, mse) for m, mse in
            (("patchtst_softmax", 0.395), ("patchtst_mamba", 0.390), ("patchtst_hip", 0.401))}
    runs[run_key("modern", "ETTh1", "patchtst", 96, 0)] = run("patchtst", 0.384, max_epochs=20)
    runs[run_key("modern", "ETTh1", "patchtst_lmu", 96, 1)] = run("patchtst_lmu", 0.1)  # another seed: left out
    text = mixer_swaps(runs)
    rows = [line for line in text.splitlines() if line.startswith("| PatchTST")]
    assert [r.split("|")[2].strip() for r in rows] == ["0.384", "0.390", "0.395", "0.401"]  # reference, then by MSE
    assert "up to 20 epochs" in rows[0] and "patchtst_mamba.yaml" in rows[1] and "1,234" in rows[1]
    assert "[(2, 1.0)]" in text  # the one cap of the section's rows
    missing = text.split("Not run: ")[1].split(".\n")[0].split(", ")
    assert set(missing) == set(MIXER_SWAPS) - {"patchtst_softmax", "patchtst_mamba", "patchtst_hip"}
