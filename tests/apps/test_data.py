"""What the apps' data and optimisers share: the data root, the loaders' own shuffle generator (its state in
checkpoints, so a resumed fit draws the next epoch's order), and one weight-decay grouping."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from seqmix.apps.data import SplitLoaders
from seqmix.apps.files import data_root, writable_data_root
from seqmix.apps.fraud.data import FraudDataModule
from seqmix.apps.module import weight_decay_groups
from seqmix.apps.recall.data import MQARDataModule
from seqmix.apps.vision.data import ImageDataModule


def test_data_root_is_seqmix_data_else_data(monkeypatch, tmp_path):
    monkeypatch.setenv("SEQMIX_DATA", str(tmp_path))
    assert data_root() == tmp_path and data_root("fashion-mnist") == tmp_path / "fashion-mnist"
    assert writable_data_root("fraud") == tmp_path / "fraud"
    monkeypatch.setattr("seqmix.apps.files.os.access", lambda path, mode: False)  # a shared, read-only folder
    assert writable_data_root("fraud") == Path("data/fraud")  # downloads and caches go to ./data
    monkeypatch.delenv("SEQMIX_DATA")
    assert data_root() == Path("data") and data_root("lexicons") == Path("data/lexicons")


@pytest.mark.parametrize("build", [
    lambda: MQARDataModule(vocab_size=16, seq_len=16, num_kv_pairs=2, num_train=8, num_val=2, num_test=2,
                           batch_size=1),
    lambda: ImageDataModule(dataset="digits", img_size=8, val_size=100, train_limit=8, batch_size=1, augment=False),
], ids=["recall", "vision"])
def test_a_restored_datamodule_draws_the_next_epoch_order(build):
    def labels(module: SplitLoaders) -> list:
        return [y.flatten().tolist() for _, y in module.train_dataloader()]

    first = build()
    first.setup("fit")
    epoch_0, state = labels(first), first.state_dict()
    epoch_1 = labels(first)
    assert epoch_1 != epoch_0  # each epoch a new order (the vision app re-seeded every epoch alike before)
    resumed = build()
    resumed.setup("fit")
    resumed.load_state_dict(state)
    assert labels(resumed) == epoch_1


def test_fraud_has_no_test_split():
    dm = FraudDataModule(n_accounts=10, days=2.0, batch_size=8)
    dm.setup("fit")
    assert len(dm.predict_dataloader().dataset) == len(dm.features["label"])
    with pytest.raises(ValueError, match="the fraud app has no test split .* run `seqmix fraud validate`"):
        dm.test_dataloader()


def test_weight_decay_groups_skip_vectors_and_position_embeddings():
    model = nn.Module()
    model.proj = nn.Linear(4, 4)
    model.pos = nn.Parameter(torch.zeros(8, 4))  # [L, D]: a position embedding, not decayed
    model.block = nn.Module()
    model.block.pos_embed = nn.Parameter(torch.zeros(1, 8, 4))
    model.block.conv = nn.Conv1d(4, 4, 3)
    decay, other = weight_decay_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and other["weight_decay"] == 0.0
    assert [p.shape for p in decay["params"]] == [(4, 4), (4, 4, 3)]
    assert {id(p) for p in other["params"]} == {id(model.proj.bias), id(model.pos), id(model.block.pos_embed),
                                                id(model.block.conv.bias)}

