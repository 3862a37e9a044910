"""Softmax attention of one query over every prefix, chunk-parallel (``impl="chunk"``).

The same ``(m, u, w)`` scan as ``naive.py``, without a loop over tokens:

1. the running max of every prefix, ``M_t = max(m_0, s_1..s_t)``, is one ``cummax``;
2. inside each chunk of ``C`` tokens the prefix sums are a masked ``[C, C]`` matrix product,
   ``A[t, j] = exp(s_j - M_t)`` for ``j <= t`` (every entry <= 1, so nothing overflows), giving
   ``u_t^in = A v`` and ``w_t^in = A 1``;
3. the state entering each chunk comes from merging the chunks' end states with the
   associative :func:`~seqmix.kernels.scan.naive.combine` (a loop over ``T / C`` chunks);
4. ``u_t = exp(m_b - M_t) u_b + u_t^in`` and ``w_t`` alike, with ``(m_b, u_b, w_b)`` the
   state entering the chunk; ``o_t = u_t / w_t``.

Work ``O(T C V)``, all in batched matrix products; autograd differentiates it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from seqmix.kernels.scan.naive import ScanState, check_scan_inputs, combine, prepare_scan


def softmax_scan_chunk(s: Tensor, v: Tensor, *, initial_state: ScanState | None = None,
                       output_final_state: bool = False, chunk_size: int = 64) -> tuple[Tensor, ScanState | None]:
    """Chunk-parallel form of :func:`~seqmix.kernels.scan.naive.softmax_scan_naive` (same contract)."""
    check_scan_inputs("softmax_scan_chunk", s, v, initial_state)
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"softmax_scan_chunk: chunk_size must be a positive int (64 is a good default), "
                         f"got {chunk_size!r}")
    s_, v_, (m0, u0, w0) = prepare_scan(s, v, initial_state)
    b, t_len, h, dv = v_.shape
    c = min(chunk_size, t_len)
    n_chunks = -(-t_len // c)
    pad = n_chunks * c - t_len
    s_ = s_.transpose(1, 2)  # [B, T, H] -> [B, H, T]
    v_ = v_.transpose(1, 2)  # [B, T, H, V] -> [B, H, T, V]
    running_max = torch.maximum(torch.cummax(s_, dim=2).values, m0[..., None])  # [B, H, T]
    if pad:  # padded keys get s = -inf (weight 0); padded rows are dropped at the end
        s_ = torch.cat((s_, s_.new_full((b, h, pad), float("-inf"))), 2)
        v_ = torch.cat((v_, v_.new_zeros(b, h, pad, dv)), 2)
        running_max = torch.cat((running_max, running_max[..., -1:].expand(b, h, pad)), 2)
    s_c = s_.view(b, h, n_chunks, c)  # [B, H, N, C]
    v_c = v_.view(b, h, n_chunks, c, dv)  # [B, H, N, C, V]
    max_c = running_max.view(b, h, n_chunks, c)  # [B, H, N, C]

    # 2. within each chunk: A[t, j] = exp(s_j - M_t), j <= t
    causal = torch.ones(c, c, dtype=torch.bool, device=s.device).tril()  # [C (t), C (j)]
    exponent = (s_c[..., None, :] - max_c[..., :, None]).masked_fill(~causal, float("-inf"))  # [B, H, N, C, C]
    weights = torch.exp(exponent)
    u_in = weights @ v_c  # [B, H, N, C, V]
    w_in = weights.sum(-1)  # [B, H, N, C]

    # 3. the state entering each chunk: merge the chunk end states in order
    m, u, w = m0, u0, w0
    entering = []
    for m_end, u_end, w_end in zip(max_c[..., -1].unbind(2), u_in[..., -1, :].unbind(2), w_in[..., -1].unbind(2)):
        entering.append((m, u, w))
        m, u, w = combine(m, u, w, m_end, u_end, w_end)
    m_b, u_b, w_b = (torch.stack(x, 2) for x in zip(*entering))  # [B, H, N], [B, H, N, V], [B, H, N]

    # 4. every prefix = (state entering the chunk) + (prefix inside the chunk), referenced to M_t
    scale = torch.exp(m_b[..., None] - max_c)  # [B, H, N, C]
    u_all = scale[..., None] * u_b[..., None, :] + u_in  # [B, H, N, C, V]
    w_all = scale * w_b[..., None] + w_in  # [B, H, N, C]
    o = (u_all / w_all[..., None]).view(b, h, n_chunks * c, dv)[:, :, :t_len]  # [B, H, T, V]
    o = o.transpose(1, 2).to(v.dtype)  # [B, H, T, V] -> [B, T, H, V]
    if not output_final_state:
        return o, None
    last = t_len - 1
    u_flat = u_all.view(b, h, n_chunks * c, dv)  # [B, H, N*C, V]
    w_flat = w_all.view(b, h, n_chunks * c)  # [B, H, N*C]
    return o, (running_max[..., last], u_flat[:, :, last], w_flat[:, :, last])
