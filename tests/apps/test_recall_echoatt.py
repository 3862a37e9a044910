"""EchoAtt in the recall app: a shared-attention student distilled from a trained unshared teacher."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest
import torch

from seqmix.apps.module import load_trained
from seqmix.apps.recall.model import RecallLM
from seqmix.cli import main
from seqmix.core.blocks import mixer_factory

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "recall" / "softmax.yaml"
SIZES = ["--model.d_model", "16", "--model.n_layers", "3", "--data.seq_len", "32", "--data.num_kv_pairs", "2",
         "--data.num_train", "64", "--data.num_val", "16", "--data.num_test", "16", "--data.batch_size", "16"]


def _fit(tmp_path: Path, *extra: str) -> Path:
    main(["recall", "fit", "--config", str(CONFIG), *SIZES, *extra, "--trainer.max_steps", "2",
          "--trainer.val_check_interval", "2", "--trainer.limit_val_batches", "1", "--trainer.log_every_n_steps", "1",
          "--trainer.enable_progress_bar", "false"])
    return tmp_path / "runs" / "recall" / "softmax" / "version_0" / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def teacher_ckpt(tmp_path_factory) -> Path:
    """A 3-layer softmax recall model fitted for 2 steps: the unshared teacher."""
    folder = tmp_path_factory.mktemp("teacher")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return Path(shutil.copy(_fit(folder), folder / "teacher.ckpt"))
        finally:
            torch.set_num_threads(threads)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_student_starts_from_the_teacher_and_trains_with_the_distillation_loss(tmp_path, monkeypatch, teacher_ckpt):
    monkeypatch.chdir(tmp_path)
    teacher, _ = load_trained(RecallLM, teacher_ckpt, "recall", "")

    student = RecallLM(mixer_factory("softmax", n_heads=1), vocab_size=256, max_len=32, d_model=16, n_layers=3,
                       share_attention={2: 1}, distill_from=str(teacher_ckpt))
    student.setup("fit")
    own = student.state_dict()
    assert "stack.blocks.2.mixer.qkv.q.weight" not in own and "stack.blocks.1.mixer.qkv.q.weight" in own
    for name, weight in own.items():  # every student weight is the teacher's
        torch.testing.assert_close(weight, teacher.state_dict()[name], msg=name)
    assert not any(name.startswith("_teacher") for name in own)

    _fit(tmp_path, "--model.share_attention", "{2: 1}", "--model.distill_from", str(teacher_ckpt),
         "--model.distill_weight", "0.5")
    rows = [row for path in tmp_path.rglob("metrics.csv") for row in csv.DictReader(path.open())]
    logged = {k: float(v) for row in rows for k, v in row.items() if v not in ("", None)}
    assert {"train/distill_kl", "train/distill_mse", "train/task_loss", "val/acc"} <= set(logged)
    assert all(torch.isfinite(torch.tensor(logged[k])) for k in ("train/distill_kl", "train/distill_mse"))
    trained, _ = load_trained(RecallLM, tmp_path / "runs" / "recall" / "softmax" / "version_0" / "checkpoints" / "last.ckpt",
                              "recall", "")
    assert trained.stack.share_attention == {2: 1} and trained.stack.blocks[2].mixer.qkv.q is None


def test_a_teacher_of_another_size_is_refused(teacher_ckpt):
    student = RecallLM(mixer_factory("softmax", n_heads=1), vocab_size=256, max_len=32, d_model=16, n_layers=2,
                       share_attention={1: 0}, distill_from=str(teacher_ckpt))
    with pytest.raises(ValueError, match="give the student the teacher's sizes"):
        student.setup("fit")
    with pytest.raises(ValueError, match="distill_temperature > 0"):
        RecallLM(mixer_factory("softmax", n_heads=1), distill_temperature=0.0)
