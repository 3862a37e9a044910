"""The forms of sliding-window attention (no Triton form: ``"auto"`` is ``"chunk"`` on every device)."""

from seqmix.kernels.common import KernelOp

SLIDING_WINDOW = KernelOp("sliding_window", impls=("naive", "chunk"))
