"""Softmax-family attention: the quadratic reference and the masks every attention mixer shares."""

from seqmix.kernels.attention.naive import attention_naive, visible_keys_mask

__all__ = ["attention_naive", "visible_keys_mask"]
