"""The forms of the head-wise RNNs and the sizes each takes (checked by the mixers in ``__init__``)."""

from seqmix.kernels.common import KernelOp, Limits

RNN = KernelOp(
    "rnn",
    impls=("naive", "chunk", "triton"),
    limits={"triton": Limits(max_head_dim=256)},  # a head's state and its R[h] tiles stay on chip
)
