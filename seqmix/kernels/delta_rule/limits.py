"""The forms of the delta rule and the sizes each takes (checked by the mixers in ``__init__``)."""

from seqmix.kernels.common import KernelOp, Limits

DELTA_RULE = KernelOp(
    "delta_rule",
    impls=("naive", "chunk", "triton"),
    # triton: the chunk's (I + A)^-1 is inverted on chip row by row, up to 64 rows; K and V are held whole
    limits={"triton": Limits(chunk_sizes=(16, 32, 64), max_head_dim=256)},
)
