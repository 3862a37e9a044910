"""The forms of gated linear attention and the sizes each takes (checked by the mixers in ``__init__``)."""

from seqmix.kernels.common import KernelOp, Limits

GLA = KernelOp(
    "gla",
    impls=("naive", "chunk", "triton"),
    limits={
        "chunk": Limits(chunk_power_of_two=True),  # the chunk is halved recursively down to single tokens
        "triton": Limits(chunk_sizes=(16, 32, 64, 128), max_head_dim=256),  # whole 16-row sub-chunks; K, V on chip
    },
)
