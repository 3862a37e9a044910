import os

# The Triton kernels are tested on CPU tensors through Triton's interpreter. It must be on
# before anything imports triton: a @triton.jit function made without it cannot run under it,
# and under pytest-xdist any test module (a mixer with a "triton" impl, the GPU benchmark's
# tests) may be the first to import a kernel module.
os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
import torch

# Under pytest-xdist (`make test` runs `-n 2`) each worker gets one intra-op thread, so two
# workers never oversubscribe two cores; a plain `pytest` run uses two threads.
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else max(1, min(2, os.cpu_count() or 1)))


def rel_rms(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Relative RMS error ||a - e|| / ||e|| (flash-linear-attention's ``assert_close`` ratio)."""
    actual, expected = actual.double(), expected.double()
    denom = expected.pow(2).mean().sqrt().clamp_min(1e-12)
    return float((actual - expected).pow(2).mean().sqrt() / denom)


@pytest.fixture
def assert_rel_close():
    def check(actual, expected, ratio, what=""):
        assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
        assert torch.isfinite(actual).all(), f"{what}: non-finite values"
        err = rel_rms(actual, expected)
        assert err <= ratio, f"{what}: relative RMS error {err:.3e} > {ratio:.0e}"

    return check

