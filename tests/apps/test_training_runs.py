"""Every app's ``fit`` (seqmix.apps.training through seqmix.cli): a new run never writes over an earlier one,
a non-finite loss stops it with one line and no checkpoint, SIGTERM saves a resumable checkpoint and says how to
resume, and resuming from ``last.ckpt`` ends where the uninterrupted run of the same seed ends."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from seqmix.cli import main

REPO = Path(__file__).resolve().parents[2]
RECALL = ["--config", str(REPO / "configs/recall/softmax.yaml"), "--trainer.enable_progress_bar", "false",
          "--trainer.log_every_n_steps", "1", "--data.num_train", "64", "--data.num_val", "32", "--data.num_test", "32",
          "--model.d_model", "16", "--trainer.val_check_interval", "2", "--trainer.limit_val_batches", "1"]
DATA_DIR = os.environ.get("SEQMIX_DATA", str(REPO / "data"))
FORECASTING = ["--config", str(REPO / "configs/forecasting/transformer.yaml"), "--model.network.init_args.d_model", "16",
               "--data.data_dir", DATA_DIR, "--data.seq_len", "24", "--data.label_len", "12", "--data.pred_len", "12",
               "--trainer.limit_train_batches", "3", "--trainer.limit_val_batches", "2", "--trainer.log_every_n_steps", "1",
               "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    """The configs' relative ``runs/`` folders land in ``tmp_path``; one torch thread for these tiny models."""
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def last_metrics(version: Path) -> dict[str, float]:
    """The last value of every column of a CSVLogger ``metrics.csv``."""
    found: dict[str, float] = {}
    with open(version / "metrics.csv") as f:
        for row in csv.DictReader(f):
            found.update({k: float(v) for k, v in row.items() if v not in ("", None)})
    return found


def first_step(version: Path) -> int:
    with open(version / "metrics.csv") as f:
        return int(next(csv.DictReader(f))["step"])


# ------------------------------------------------------------------ item 3: never over an earlier run
def test_a_second_run_never_overwrites_the_first(tmp_path, capsys):
    for app, args in (("recall", [*RECALL, "--trainer.max_steps", "2"]),  # no dirpath: runs/<app>/<name>/version_N
                      ("forecasting", [*FORECASTING, "--trainer.max_epochs", "1"])):
        main([app, "fit", *args])
        main([app, "fit", *args])
        runs = tmp_path / "runs" / app / ("softmax" if app == "recall" else "transformer")
        versions = sorted(runs.iterdir())
        assert [v.name for v in versions] == ["version_0", "version_1"]
        for version in versions:
            assert (version / "config.yaml").is_file() and (version / "checkpoints/last.ckpt").is_file()

    fixed = [*RECALL, "--trainer.max_steps", "2", "--trainer.callbacks.init_args.dirpath", "fixed"]  # a named folder
    main(["recall", "fit", *fixed])
    ckpt = tmp_path / "fixed/last.ckpt"
    before = ckpt.read_bytes()
    with pytest.raises(SystemExit) as err:
        main(["recall", "fit", *fixed])
    message = str(err.value.code)
    assert message.startswith("seqmix recall fit: error: checkpoint folder ") and "earlier run's checkpoints" in message
    assert f"--ckpt_path {ckpt}" in message and "--trainer.callbacks.init_args.dirpath" in message
    assert ckpt.read_bytes() == before

    no_logger = [*RECALL, "--trainer.max_steps", "1", "--trainer.logger", "false", "--trainer.default_root_dir", "plain",
                 "--trainer.callbacks.init_args.dirpath", "plain/ckpt"]
    main(["recall", "fit", *no_logger])
    config = (tmp_path / "plain/config.yaml").read_text()
    with pytest.raises(SystemExit, match="config.yaml holds an earlier run's config; a new run never replaces it"):
        main(["recall", "fit", *no_logger, "--model.lr", "1e-3"])
    assert (tmp_path / "plain/config.yaml").read_text() == config


# ------------------------------------------------------------------ item 5: a non-finite loss stops fit
def test_a_non_finite_loss_stops_fit_with_one_line_and_no_checkpoint(tmp_path):
    with pytest.raises(SystemExit) as err:  # the first update throws every weight to ~1e28
        main(["recall", "fit", *RECALL, "--trainer.max_steps", "4", "--model.lr", "1e30"])
    message = str(err.value.code)
    assert message.startswith("seqmix recall fit: error: training loss is nan at step 2 (epoch 0, batch 1)"), message
    assert "\n" not in message.split("(SEQMIX_TRACEBACK")[0].strip()
    assert not list(tmp_path.rglob("*.ckpt"))


# ------------------------------------------------------------------ item 9: SIGTERM saves and says how to resume
def test_sigterm_saves_a_resumable_checkpoint_and_exits_non_zero(tmp_path):
    cmd = [sys.executable, "-m", "seqmix.cli", "recall", "fit", *RECALL, "--trainer.max_steps", "1000000"]
    run = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = Path("runs/recall/softmax/version_0/checkpoints/last.ckpt")  # the logger's folder, named from the cwd
    deadline = time.monotonic() + 120
    while not first.exists() and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(0.5)  # a few more steps
    run.send_signal(signal.SIGTERM)
    out, err = run.communicate(timeout=120)
    assert run.returncode == 1, out[-2000:] + err[-2000:]
    line = err.strip().splitlines()[-1]
    assert line.startswith("seqmix recall fit: interrupted at step "), err[-2000:]
    step = int(line.split("interrupted at step ")[1].split(";")[0])
    assert f"saved a resumable checkpoint {first}; resume with: seqmix recall fit --config " in line
    assert line.endswith(f"--trainer.max_steps 1000000 --ckpt_path {first}")
    state = torch.load(first, weights_only=True)  # data only, the training state included
    assert state["global_step"] == step and state["optimizer_states"]


# ------------------------------------------------------------------ item 10: resume exactly
def test_recall_stopped_by_ctrl_c_then_resumed_equals_the_uninterrupted_run(tmp_path, monkeypatch):
    from seqmix.apps.recall.model import RecallLM

    main(["recall", "fit", *RECALL, "--trainer.max_steps", "4", "--trainer.callbacks.init_args.dirpath", "whole"])

    def ctrl_c_after_step_2(self, outputs, batch, batch_idx):
        if self.global_step == 2:
            raise KeyboardInterrupt

    sigint = signal.getsignal(signal.SIGINT)  # Lightning ignores SIGINT once it has caught a KeyboardInterrupt
    stopped = ["recall", "fit", *RECALL, "--trainer.max_steps", "4", "--trainer.callbacks.init_args.dirpath", "half"]
    with monkeypatch.context() as patch, pytest.raises(SystemExit) as err:
        patch.setattr(RecallLM, "on_train_batch_end", ctrl_c_after_step_2)
        main(stopped)
    signal.signal(signal.SIGINT, sigint)
    message, last = str(err.value.code), tmp_path / "half/last.ckpt"
    assert message.startswith(f"seqmix recall fit: interrupted at step 2; saved a resumable checkpoint {last}; "
                              f"resume with: seqmix recall fit --config "), message
    main(["recall", "fit", *message.split("resume with: seqmix recall fit ")[1].split()])  # the line, as printed
    runs = tmp_path / "runs/recall/softmax"
    whole, resumed = last_metrics(runs / "version_0"), last_metrics(runs / "version_2")
    assert first_step(runs / "version_2") == 2 and resumed["step"] == whole["step"] == 3
    for key in ("train/loss", "val/loss", "val/acc"):
        assert resumed[key] == pytest.approx(whole[key], abs=1e-6), key


def test_forecasting_resumed_from_last_equals_the_uninterrupted_run(tmp_path):
    main(["forecasting", "fit", *FORECASTING, "--trainer.max_epochs", "2"])
    main(["forecasting", "fit", *FORECASTING, "--trainer.max_epochs", "1"])
    main(["forecasting", "fit", *FORECASTING, "--trainer.max_epochs", "2", "--ckpt_path", "last"])  # version_1's
    logs = tmp_path / "runs/forecasting/transformer"
    whole, resumed = last_metrics(logs / "version_0"), last_metrics(logs / "version_2")
    assert first_step(logs / "version_2") > 0 and resumed["epoch"] == whole["epoch"] == 1  # resumed, not rerun
    for key in ("train/loss", "val/mse", "val/mae"):
        assert resumed[key] == pytest.approx(whole[key], abs=1e-6), key
    with pytest.raises(SystemExit, match="--ckpt_path last: no last.ckpt in "):
        main(["forecasting", "fit", *FORECASTING, "--trainer.max_epochs", "1", "--ckpt_path", "last",
              "--trainer.logger.init_args.name", "nothing_yet"])
