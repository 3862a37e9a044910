"""The forms of the softmax scan and the sizes each takes (checked by the mixers in ``__init__``)."""

from seqmix.kernels.common import KernelOp, Limits

SCAN = KernelOp(
    "scan",
    impls=("naive", "chunk", "triton"),
    limits={"triton": Limits(chunk_sizes=(16, 32, 64, 128), max_head_dim=256)},  # the [BT, BT] tl.dot tile; V on chip
)
