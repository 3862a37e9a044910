"""The forms of the selective scan and the sizes each takes (checked by the mixers in ``__init__``)."""

from seqmix.kernels.common import KernelOp

# naive: the token loop; chunk: the two-level chunked scan, any positive chunk_size (no Triton form yet)
SELECTIVE_SCAN = KernelOp("selective_scan", impls=("naive", "chunk"))
