"""What the Triton kernel tests share: run a forward form and its gradients, compare two runs.

Imported by ``tests/kernels/test_triton_*.py`` after they set ``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

from typing import Callable, Sequence

import pytest
import torch
from torch import Tensor

import seqmix.kernels.triton_utils as triton_utils

RATIO = 1e-4  # relative RMS error allowed against naive.py (issue 3)


def require_interpreter() -> None:
    """Fail loudly when the kernels were built for the GPU (triton imported before the env was set)."""
    if not triton_utils.INTERPRET:
        pytest.fail("seqmix.kernels.triton_utils was imported without TRITON_INTERPRET=1; the Triton tests "
                    "must set it before anything imports triton")


def outputs_and_grads(run: Callable[[], tuple[Tensor, Tensor | None]], inputs: Sequence[Tensor],
                      seed: int = 1) -> list[Tensor]:
    """``run()`` -> (o, final_state); returns [o, final_state, d(inputs)...] for a fixed random loss."""
    o, final = run()
    gen = torch.Generator().manual_seed(seed)
    w_o = torch.randn(o.shape, generator=gen, dtype=o.dtype)
    loss = (o * w_o).sum()
    results = [o.detach()]
    if final is not None:
        w_s = torch.randn(final.shape, generator=gen, dtype=final.dtype)
        loss = loss + (final * w_s).sum()
        results.append(final.detach())
    results += list(torch.autograd.grad(loss, list(inputs)))
    return results


def compare(actual: Sequence[Tensor], expected: Sequence[Tensor], names: Sequence[str], assert_rel_close) -> None:
    assert len(actual) == len(expected) == len(names)
    for a, e, name in zip(actual, expected, names):
        if e.abs().max() == 0:  # an exactly-zero reference (e.g. a decay's gradient at T = 1): absolute check
            assert torch.isfinite(a).all() and a.abs().max() <= 1e-5, f"{name}: expected 0, got max {a.abs().max()}"
        else:
            assert_rel_close(a, e, RATIO, name)
