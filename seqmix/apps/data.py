"""What the apps' LightningDataModules share: one way to build their loaders, with a training order that a
resumed fit draws again exactly."""

from __future__ import annotations

from typing import Literal

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

Split = Literal["train", "val", "test", "predict"]


class SplitLoaders(pl.LightningDataModule):
    """A LightningDataModule whose four loaders are built one way: the dataset of a split
    (:meth:`split_data`, which each app implements) in batches of ``batch_size`` read by ``num_workers``
    workers, the training split shuffled.

    The shuffle draws from the datamodule's own generator, seeded with ``seed`` (None: torch's global seed,
    the one ``seed_everything`` set, read without drawing from it). Every checkpoint carries the
    generator's state (:meth:`state_dict`), so a fit resumed from a checkpoint taken at the end of an
    epoch draws the order the uninterrupted run would (docs/training.md). A subclass that saves more
    extends ``state_dict`` / ``load_state_dict`` through ``super()``.
    """

    def __init__(self, *, batch_size: int, num_workers: int, seed: int | None):
        super().__init__()
        if batch_size < 1 or num_workers < 0:
            raise ValueError(f"{type(self).__name__}: need batch_size >= 1 and num_workers >= 0, got "
                             f"{batch_size} and {num_workers}")
        self.batch_size, self.num_workers = batch_size, num_workers
        self.shuffle = torch.Generator().manual_seed(torch.initial_seed() if seed is None else seed)

    def __getstate__(self) -> dict:
        # a torch.Generator does not survive torch.multiprocessing's pickling (ddp_spawn sends the datamodule to
        # every rank: its state tensor is shared by a file descriptor and freed before the rank reads it): bytes
        return {**self.__dict__, "shuffle": self.shuffle.get_state().numpy().tobytes()}

    def __setstate__(self, state: dict) -> None:
        shuffle = torch.Generator()
        shuffle.set_state(torch.frombuffer(bytearray(state["shuffle"]), dtype=torch.uint8))
        self.__dict__.update({**state, "shuffle": shuffle})

    def split_data(self, split: Split) -> Dataset:
        """The dataset of ``split``; raises a one-line ``ValueError`` for a split the app does not have."""
        raise NotImplementedError

    def loader(self, split: Split, *, shuffle: bool = False) -> DataLoader:
        return DataLoader(self.split_data(split), batch_size=self.batch_size, shuffle=shuffle,
                          generator=self.shuffle if shuffle else None, num_workers=self.num_workers)

    def train_dataloader(self) -> DataLoader:
        return self.loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self.loader("val")

    def test_dataloader(self) -> DataLoader:
        return self.loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self.loader("predict")

    def state_dict(self) -> dict:
        """Saved in every checkpoint: the shuffle generator's state."""
        return {"shuffle": self.shuffle.get_state()}

    def load_state_dict(self, state_dict: dict) -> None:
        """Restores the shuffle state; a checkpoint exported for predict / test only (no optimizer, no
        ``"shuffle"``: the shipped ones) leaves the freshly seeded generator."""
        if "shuffle" in state_dict:
            self.shuffle.set_state(state_dict["shuffle"])
