"""The forms of linear attention and the sizes each takes (checked by the mixers in ``__init__``)."""

from seqmix.kernels.common import KernelOp, Limits

LINEAR_ATTN = KernelOp(
    "linear_attn",
    impls=("naive", "chunk", "triton"),
    # triton: the [BT, BT] intra-chunk tile is a tl.dot operand (>= 16, a power of two); K and V are held whole.
    # BT = 256 compiles for sm_90 but its backward needs 256 KB of shared memory (bf16, K = V = 128), over the
    # H100's 227 KB; BT = 128 needs 160 KB at K = V = 256 (benchmarks/kernels_compile_check.py's compiler).
    limits={"triton": Limits(chunk_sizes=(16, 32, 64, 128), max_head_dim=256)},
)
