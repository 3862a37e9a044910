"""The forms of flow attention (no size limits beyond a positive ``chunk_size``; no Triton form)."""

from seqmix.kernels.common import KernelOp

FLOW = KernelOp("flow", impls=("naive", "chunk"))
