"""The forms of the mLSTM recurrence and the sizes each takes (checked by the mixer in ``__init__``)."""

from seqmix.kernels.common import KernelOp

# no Triton form yet; the chunked form takes any positive chunk_size (the last chunk is padded)
MLSTM_OP = KernelOp("mlstm", impls=("naive", "chunk"))
