"""The forms of the Titans neural-memory op (no Triton form yet, so no size limits beyond a positive chunk)."""

from seqmix.kernels.common import KernelOp

TITANS = KernelOp("titans", impls=("naive", "chunk"))
