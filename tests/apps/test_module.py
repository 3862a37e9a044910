"""What the apps share: loading a trained module with its data description, clear errors."""

from __future__ import annotations

import pytest
import torch

from seqmix.apps.module import load_trained
from seqmix.apps.vision.model import ImageClassifier


def test_missing_checkpoint_names_the_path_and_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.ckpt does not exist; train one with `seqmix vision fit"):
        load_trained(ImageClassifier, tmp_path / "nope.ckpt", "ImageDataModule", "train one with `seqmix vision fit`")


def test_checkpoint_without_the_data_description_is_refused(tmp_path):
    path = tmp_path / "bare.ckpt"
    torch.save({"state_dict": {}}, path)
    with pytest.raises(ValueError, match=r"bare\.ckpt: has no ImageDataModule state"):
        load_trained(ImageClassifier, path, "ImageDataModule", "train one with `seqmix vision fit`")
