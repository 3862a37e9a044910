"""What the apps share: loading a trained module with its data description, clear errors."""

from __future__ import annotations

from functools import partial

import pytest
import torch

from seqmix.apps.module import APP_KEY, StagedModule, app_of, load_trained
from seqmix.apps.vision.model import ImageClassifier


def test_missing_checkpoint_names_the_path_and_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.ckpt does not exist; train one with `seqmix vision fit"):
        load_trained(ImageClassifier, tmp_path / "nope.ckpt", "vision", "train one with `seqmix vision fit`")


def test_checkpoint_without_the_data_description_is_refused(tmp_path):
    path = tmp_path / "bare.ckpt"
    torch.save({"state_dict": {}, APP_KEY: "vision"}, path)
    with pytest.raises(ValueError, match=r"bare\.ckpt: has no \['ImageDataModule'\]: it was not written by `seqmix "
                                         r"vision fit`; train one"):
        load_trained(ImageClassifier, path, "vision", "train one with `seqmix vision fit`", needs=("ImageDataModule",))


def test_every_checkpoint_a_trainer_saves_names_the_app_of_its_module(tmp_path):
    from seqmix.apps.recall.model import RecallLM

    assert (app_of(ImageClassifier), app_of(RecallLM)) == ("vision", "recall")
    with pytest.raises(ValueError, match="is not a class of a seqmix app"):
        app_of(StagedModule)


@pytest.mark.parametrize("weights_only", [False, True])
def test_a_saved_checkpoint_names_its_app_also_when_weights_only(tmp_path, weights_only):
    import pytorch_lightning as pl

    from seqmix.apps.recall.data import MQARDataModule
    from seqmix.apps.recall.model import RecallLM
    from seqmix.core.mixers.softmax import SoftmaxAttention

    model = RecallLM(partial(SoftmaxAttention, n_heads=2), vocab_size=32, max_len=16, d_model=16, n_layers=1)
    data = MQARDataModule(vocab_size=32, seq_len=16, num_kv_pairs=2, num_train=8, num_val=8, num_test=8, batch_size=4)
    trainer = pl.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0, default_root_dir=tmp_path)
    trainer.fit(model, datamodule=data)
    path = tmp_path / "saved.ckpt"
    trainer.save_checkpoint(path, weights_only=weights_only)
    loaded, checkpoint = load_trained(RecallLM, path, "recall", "train one")
    assert checkpoint[APP_KEY] == "recall" and ("optimizer_states" in checkpoint) is not weights_only
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))


GROUP_AT_EXIT = """
import atexit, socket
import torch.distributed as dist
from seqmix.apps.module import StagedModule

with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
# registered first, so it runs last: after every handler the module's setup registered
atexit.register(lambda: print("group alive at exit:", dist.is_initialized(), flush=True))
dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
StagedModule().setup("fit")
StagedModule().setup("test")  # registers once per process
"""


def test_a_data_parallel_process_group_ends_before_interpreter_exit():
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", GROUP_AT_EXIT], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "group alive at exit: False", done.stdout
