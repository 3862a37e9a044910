"""Bits per byte: the language model's metric that compares tokenisers.

``bits_per_byte = total nats / UTF-8 bytes of the predicted text / ln 2``. With the byte tokenizer each token
is one byte, so it is the mean cross-entropy in bits; with a BPE each token stands for several bytes, and the
same text gets the same denominator, so the two compare. On ASCII text (the plays, but for 64 em dashes)
bytes are characters: this is the bits per character of the char-level literature (nanoGPT reports nats
per character: divide by ln 2).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torchmetrics import Metric


def bits_per_byte(nats: Tensor | float, nbytes: Tensor | int) -> Tensor:
    """``nats / nbytes / ln 2``: the summed negative log-likelihood (natural log) over text of ``nbytes`` bytes."""
    return torch.as_tensor(nats, dtype=torch.float64) / torch.as_tensor(nbytes, dtype=torch.float64) / math.log(2)


class BitsPerByte(Metric):
    """Bits per byte over an epoch: the summed nats and bytes of every batch, divided once at the end (not a
    mean of per-batch ratios); summed across data-parallel ranks."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("nats", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("nbytes", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, nats: Tensor, nbytes: Tensor) -> None:
        """``nats``: the summed negative log-likelihood of a batch's targets; ``nbytes``: their bytes."""
        self.nats += nats.detach().double().sum()
        self.nbytes += nbytes.detach().long().sum()

    def compute(self) -> Tensor:
        return bits_per_byte(self.nats, self.nbytes).float()
