"""The forms of the Legendre memory (``lmu_memory``); no form has a size limit (no Triton form yet)."""

from seqmix.kernels.common import KernelOp

LMU = KernelOp("lmu", impls=("naive", "chunk", "fft"))
