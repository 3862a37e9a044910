"""The mLSTM recurrence chunkwise-parallel, in PyTorch: the fast path on the CPU.

The sequence is cut into N chunks of C tokens. Within a chunk, with the forget gates summed
directly over each range, ``F_ij = sum_{j < r <= i} log_f_r`` (-inf for ``j > i``; a segment sum,
never the difference of two cumulated sums), ``b_i = F_i0 + log_f_0`` the gates from the chunk
start to i, and the state ``(C_s, n_s, m_s)`` entering the chunk, the true (unstabilised) memory
read by query i is

    q_i C_i = exp(b_i + m_s) q_i C_s + sum_{j <= i} exp(D_ij) (q_i . k_j) v_j,   D_ij = F_ij + log_i_j

and likewise ``q_i . n_i`` with ``n_s`` and ``k_j`` for ``v_j``. The gate matrix ``D`` is
stabilised row by row: ``m_i = max(b_i + m_s, max_j D_ij)`` is the recurrence's own stabiliser
m_i (the maximum over the same terms), so every exponent is <= 0 and

    h_i = (exp(b_i + m_s - m_i) q_i C_s + sum_j exp(D_ij - m_i) (q_i . k_j) v_j) / max(|same with n|, exp(-m_i))

Across chunks the state is carried: with ``u = max_j D_Cj`` (the last row) and
``U = sum_j exp(D_Cj - u) k_j^T v_j``, ``m' = max(b_C + m_s, u)``, ``C' = exp(b_C + m_s - m') C_s +
exp(u - m') U`` (the scalar m loop, then :func:`~seqmix.kernels.linear_attn.chunk.scan_chunks`).
The normaliser rides along as one more value column: ``v`` gets a column of ones, so ``[C | n]``
is one ``[K, V + 1]`` memory and the numerator and ``q . n`` come out of the same matmuls.

Padding: the last chunk is padded with tokens that neither forget (``log_f = 0``) nor write
(``log_i = -inf``), so the state at the chunk's end is the state after the last real token;
the padded rows are dropped before the division. Gradients: autograd through these batched
tensors (the loops run over chunks, not tokens), every stabiliser chosen without gradient but the
given ``m_0``, as in ``naive.py``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from seqmix.kernels.common import compute_dtype, from_chunks, to_chunks
from seqmix.kernels.linear_attn.chunk import scan_chunks
from seqmix.kernels.mlstm.naive import MLSTMInput, MLSTMState
from seqmix.kernels.threads import single_threaded


def gate_chunks(gate: Tensor, chunk: int, dtype: torch.dtype, fill: float) -> Tensor:
    """``[B, T, H] -> [B, H, N, C]``, the padding past T filled with ``fill``."""
    b, t, h = gate.shape
    n = math.ceil(t / chunk)
    padded = F.pad(gate.to(dtype).transpose(1, 2), (0, n * chunk - t), value=fill)  # [B, H, N*C]
    return padded.reshape(b, h, n, chunk)  # [B, H, N*C] -> [B, H, N, C]


def segment_sums(log_f: Tensor) -> Tensor:
    """``[..., C] -> [..., C, C]``: entry ``(i, j)`` is ``sum_{j < r <= i} log_f_r`` (0 on the
    diagonal, -inf above it), each summed directly over its own range."""
    c = log_f.shape[-1]
    rows = log_f[..., :, None].expand(*log_f.shape, c)  # [..., C, C]: entry (r, j) is log_f_r
    ones = torch.ones(c, c, dtype=torch.bool, device=log_f.device)
    sums = rows.masked_fill(~ones.tril(-1), 0.0).cumsum(-2)  # [..., C, C]: the sum over j < r <= i
    return sums.masked_fill(~ones.tril(), -math.inf)


def carry_stabilisers(chunk_gates: Tensor, u: Tensor, m0: Tensor) -> Tensor:
    """The stabiliser entering each chunk and after the last: ``m_{n+1} = max(chunk_gates_n + m_n, u_n)``.

    ``chunk_gates, u: [B, H, N]``, ``m0: [B, H]`` -> ``[B, H, N + 1]``.
    """
    m = [m0]
    with single_threaded():  # [B, H] maxima: too small to share out
        for a, u_n in zip(chunk_gates.unbind(-1), u.unbind(-1)):
            m.append(torch.maximum(a + m[-1], u_n))
    return torch.stack(m, -1)


def mlstm_chunk(x: MLSTMInput) -> tuple[Tensor, MLSTMState | None]:
    """The chunked form above; the arguments and results of :func:`seqmix.kernels.mlstm.chunk_mlstm`."""
    dtype = compute_dtype(x.q)
    t, dv = x.q.shape[1], x.v.shape[-1]
    c = min(x.chunk_size, t)
    qc, kc = to_chunks(x.q, c, dtype), to_chunks(x.k, c, dtype) * x.scale  # [B, H, N, C, K]
    vc = to_chunks(F.pad(x.v.to(dtype), (0, 1), value=1.0), c, dtype)  # [B, H, N, C, V + 1]: a ones column for n
    log_f = gate_chunks(x.log_f, c, dtype, 0.0)  # [B, H, N, C]: padding forgets nothing
    log_i = gate_chunks(x.log_i, c, dtype, -math.inf)  # [B, H, N, C]: ... and writes nothing
    C0, n0, m0 = x.start(dtype)

    b_in = log_f.cumsum(-1)  # [B, H, N, C] forget gates from the chunk start to i
    log_d = segment_sums(log_f) + log_i[..., None, :]  # [B, H, N, C, C] key j's log weight at query i

    # inter-chunk: the memory [C | n] and its stabiliser entering each chunk
    u = log_d[..., -1, :].amax(-1).detach()  # [B, H, N] the largest log weight at the chunk's end
    m = carry_stabilisers(b_in[..., -1].detach(), u, m0.detach())  # [B, H, N + 1]
    m_in, m_out = torch.cat((m0[..., None], m[..., 1:-1]), -1), m[..., 1:]  # [B, H, N] each; m0 keeps its gradient
    written = torch.exp(log_d[..., -1, :] - u[..., None])[..., None] * kc  # [B, H, N, C, K]
    updates = torch.exp(u - m_out)[..., None, None] * (written.transpose(-1, -2) @ vc)  # [B, H, N, K, V + 1]
    decays = torch.exp(b_in[..., -1] + m_in - m_out)[..., None, None]  # [B, H, N, 1, 1]
    s0 = torch.cat((C0, n0[..., None]), -1)  # [B, H, K, V + 1]
    states, final = scan_chunks(decays, updates, s0)  # [B, H, N, K, V + 1], [B, H, K, V + 1]

    # intra-chunk, each row stabilised by its own m_i
    m_row = torch.maximum(b_in + m_in[..., None], log_d.amax(-1)).detach()  # [B, H, N, C]
    scores = (qc @ kc.transpose(-1, -2)) * torch.exp(log_d - m_row[..., None])  # [B, H, N, C, C]
    carried = torch.exp(b_in + m_in[..., None] - m_row)[..., None] * qc  # [B, H, N, C, K]
    o = from_chunks(carried @ states + scores @ vc, t)  # [B, H, N, C, V + 1] -> [B, T, H, V + 1]
    m_row = from_chunks(m_row[..., None], t)  # [B, H, N, C] -> [B, T, H, 1]
    h = o[..., :dv] / torch.maximum(o[..., dv:].abs(), torch.exp(-m_row))  # [B, T, H, V]
    return x.finish(h, MLSTMState(final[..., :dv], final[..., dv], m[..., -1]))
