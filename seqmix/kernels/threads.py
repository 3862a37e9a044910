"""CPU threading for the kernels' per-step / per-chunk loops."""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch


@contextlib.contextmanager
def single_threaded() -> Iterator[None]:
    """Torch ops on one intra-op thread inside the block (the count is restored after).

    For loops over time steps or chunks: each iteration's ops (a step of an RNN, a 64 x 64
    matmul of the delta rule's chunk loop) are too small to split across threads, and an
    OpenMP barrier per op made such loops up to 30x slower with 2 threads on a busy machine.
    The batched work outside the loops keeps all threads.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
