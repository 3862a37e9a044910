"""The selective scan as a two-level chunked scan in PyTorch: the fast form on the CPU.

The sequence is cut into N chunks of C tokens. Per chunk n, with the log decays
``delta_t A <= 0`` and their sum over the chunk ``L_n = (sum_t delta_t) A`` (a cumulative
sum in log space, taken over ``[E]`` and expanded to ``[E, N]`` once)::

    S_n     = the state a chunk leaves when it starts from zero     (local scan, all chunks at once)
    H_{n+1} = exp(L_n) * H_n + S_n                                   (inter-chunk: the carried state)
    h_t     = exp(delta_t A) * h_{t-1} + delta_t B_t u_t from h = H_n (every chunk at once), y_t = C_t . h_t

Both scans inside a chunk step through its C positions with many chunks at once (``[G, N_s, E]``
per step, G chunks: as many as keep a step's tensors in the L2 cache, :func:`row_groups`), so a
sequence costs ``2 C (B N / G) + N`` small steps instead of T, and the time grows linearly in T;
every decay is ``exp`` of a value <= 0, so nothing overflows, whatever delta.

Why not the SSD / segment-sum matrix form (``exp(L_i - L_j)`` masked to ``i >= j``): Mamba-1's
decay differs per channel e *and* state index n, so that form needs a ``[C, C, E, N]`` pair
tensor per chunk, ``C`` times the work and memory of the scan (Mamba-2 makes A a scalar per
head precisely so that the pair factor is ``[C, C]``). The scan does ``O(T E N)`` work.

Forward and backward are one autograd Function (:class:`_ChunkScan`); the backward is the
same two-level scan run in reverse (the gradient of a linear recurrence is a linear
recurrence), so autograd records none of the per-position steps. The channels never meet, so
they are cut into one run per torch thread (:func:`channel_parts`), each scanned by a Python
thread of its own on one intra-op thread (:func:`over_channels`, inside
:func:`~seqmix.kernels.threads.single_threaded`): a step's ``[G, N_s, E]`` ops are too small to
share out op by op (with an OpenMP barrier per op, 2 threads on a busy machine ran 7x slower).

CPU costs (issue 30): every decay is ``exp2(A log2(e) delta)``, the same value as ``exp(A delta)``
to fp32 rounding and ~3x cheaper than ``exp`` on the CPU; the sums over E (``dB``, ``dC``) are
``[G, 1, E] @ [G, E, N_s]`` products, ~10x faster than ``[G, N_s, E] @ [G, E, 1]``. The forward keeps
the state entering every :data:`SEGMENT`-th position (``[T / S, N_s, E]``, S = 16: 1/16 of the
states); the backward restarts there and scans one segment forward again into a small
``[S, G, N_s, E]`` buffer of states and decays, reused for every segment, then back through it
(no ``[T, E, N]`` tensor is ever held: a ``[C, G, N_s, E]`` buffer per group, as before, was written
to fresh pages in main memory, ~20% of the whole op; the decays of the reverse scan are the
buffer's, not ``exp2`` again). Measured (issue 30, ``benchmarks/kernels_chunk_vs_naive.py``,
D=512 so E=1024, N=16, T=4096, 2 threads): the op forward+backward from ~290 ms to ~250 ms.
"""

from __future__ import annotations

import concurrent.futures
import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from seqmix.kernels.selective_scan.naive import ScanInputs
from seqmix.kernels.threads import single_threaded


def to_chunks(x: Tensor, chunk: int) -> Tensor:
    """``[B, T, K] -> [C, B*N, K]`` (position in the chunk first), zero-padding T up to ``N * C``: a
    strided view of x when C divides T (no copy of a ``[T, E]`` input; each position's rows stay
    contiguous runs of K)."""
    b, t, k = x.shape
    n = math.ceil(t / chunk)
    if n * chunk > t:
        x = F.pad(x, (0, 0, 0, n * chunk - t))  # [B, N*C, K], a padded copy
    return x.reshape(b, n, chunk, k).permute(2, 0, 1, 3).flatten(1, 2)  # [B, N, C, K] -> [C, B*N, K], a view


def chunked_like(x: Tensor) -> Tensor:
    """An empty ``[C, M, K]`` like ``x``, laid out in memory as ``[M, C, K]`` (= ``[B, N*C, K]``, the order
    of the sequence), so that :func:`from_chunks` of it is a view, not a copy (the runs write into it)."""
    c, m, k = x.shape
    return x.new_empty(m, c, k).transpose(0, 1)  # [M, C, K] -> [C, M, K], a view


def from_chunks(x: Tensor, b: int, t: int) -> Tensor:
    """``[C, B*N, K] -> [B, T, K]``, dropping the padding."""
    c, _, k = x.shape
    return x.view(c, b, -1, k).permute(1, 2, 0, 3).reshape(b, -1, k)[:, :t]  # [C, B, N, K] -> [B, N*C, K]


def carry(decays: Tensor, local: Tensor, h0: Tensor) -> tuple[Tensor, Tensor]:
    """``H_{n+1} = decays[:, n] * H_n + local[:, n]`` over the chunks (``[B, N, ...]``) from ``h0: [B, ...]``:
    the states entering each chunk ``[B, N, ...]`` and the last one."""
    entering, h = [], h0
    for decay, update in zip(decays.unbind(1), local.unbind(1)):
        entering.append(h)
        h = torch.addcmul(update, decay, h)
    return torch.stack(entering, 1), h


STEP_FLOATS = 1 << 17  # floats in one step's [rows, N_s, E] tensor: 512 KB, so a step's few tensors stay in L2


def row_groups(rows: int, width: int) -> list[slice]:
    """The chunks (rows) that step together: as many as keep a step's ``[rows, N_s, E]`` tensors
    (``width = N_s * E`` floats a row) within :data:`STEP_FLOATS`, so the time stays linear in T."""
    size = max(1, STEP_FLOATS // width)
    return [slice(start, min(start + size, rows)) for start in range(0, rows, size)]


def local_states(A2: Tensor, delta: Tensor, x: Tensor, B: Tensor) -> Tensor:
    """The state each chunk leaves when it starts from zero: ``[G, N_s, E]`` from ``delta, x: [C, G, E]``,
    ``B: [C, G, N_s]``; ``A2 = A log2(e)``, so a decay is ``exp2(A2 delta) = exp(A delta)``."""
    deltas, xs, Bs = delta[:, :, None, :].unbind(0), x[:, :, None, :].unbind(0), B[..., None].unbind(0)
    decay = torch.empty_like(A2.expand(delta.shape[1], *A2.shape))  # [G, N_s, E]
    local = Bs[0] * xs[0]  # [G, N_s, E]
    for i in range(1, len(deltas)):
        local.mul_(torch.mul(A2, deltas[i], out=decay).exp2_()).addcmul_(Bs[i], xs[i])
    return local


SEGMENT = 16  # positions between the checkpoints the forward keeps for the backward (its restarts)


def scan(A2: Tensor, delta: Tensor, x: Tensor, B: Tensor, C: Tensor, entering: Tensor, y: Tensor | None,
         states: Tensor | None = None, checkpoints: Tensor | None = None, decays: Tensor | None = None) -> None:
    """The scan from the true ``entering: [G, N_s, E]`` states: ``y: [C, G, 1, E]`` written when given, every
    state into ``states: [C, G, N_s, E]`` and every decay into ``decays`` (the same shape) when given (else
    only two states and one decay are kept, in turn), and the state entering every :data:`SEGMENT`-th
    position into ``checkpoints: [ceil(C / SEGMENT), G, N_s, E]`` when given."""
    deltas, xs = delta[:, :, None, :].unbind(0), x[:, :, None, :].unbind(0)  # [G, 1, E] each
    Bs, Cs = B[..., None].unbind(0), C[:, :, None, :].unbind(0)  # [G, N_s, 1], [G, 1, N_s]
    kept = states.unbind(0) if states is not None else (torch.empty_like(entering), torch.empty_like(entering))
    decay, previous = torch.empty_like(entering), entering
    for i in range(len(deltas)):
        if checkpoints is not None and i % SEGMENT == 0:
            checkpoints[i // SEGMENT].copy_(previous)
        state = kept[i] if states is not None else kept[i % 2]
        if decays is not None:
            decay = decays[i]
        torch.mul(torch.mul(A2, deltas[i], out=decay).exp2_(), previous, out=state).addcmul_(Bs[i], xs[i])
        if y is not None:
            torch.bmm(Cs[i], state, out=y[i])  # [G, 1, N_s] @ [G, N_s, E]
        previous = state


def local_gradients(A2: Tensor, delta: Tensor, C: Tensor, dy: Tensor) -> Tensor:
    """The gradient each chunk's own outputs send to its entering state: ``[G, N_s, E]``."""
    deltas, Cs, dys = delta[:, :, None, :].unbind(0), C[..., None].unbind(0), dy[:, :, None, :].unbind(0)
    decay = torch.empty_like(A2.expand(delta.shape[1], *A2.shape))  # [G, N_s, E]
    local = Cs[-1] * dys[-1]  # [G, N_s, E]
    for i in range(len(deltas) - 2, -1, -1):
        local.mul_(torch.mul(A2, deltas[i + 1], out=decay).exp2_()).addcmul_(Cs[i], dys[i])
    return local.mul_(torch.mul(A2, deltas[0], out=decay).exp2_())


def scan_backward(A: Tensor, delta: Tensor, x: Tensor, B: Tensor, C: Tensor, dy: Tensor,
                  entering: Tensor, states: Tensor, decays: Tensor, d_state: Tensor,
                  grads: tuple[Tensor, Tensor, Tensor, Tensor], carry_out: bool = False) -> Tensor:
    """The reverse scan over a run of positions (a segment) from ``d_state: [G, N_s, E]`` (the gradient
    arriving at its last state), ``entering`` the state before it, ``states: [S, G, N_s, E]`` its states and
    ``decays`` (the same shape) its decays ``exp(delta_t A)`` (both from :func:`scan`), writing ``grads = (dx [S, G, 1, E], d_delta [S, G, E], dB [S, G, 1, N_s], dC [S, G, 1, N_s])``; returns
    this segment's ``dA: [N_s, E]``. ``carry_out``: leave in ``d_state`` what reaches the previous position
    (times the decay of the segment's first one), for the segment before. The sums over E are ``[G, 1, E] @
    [G, E, N_s]`` products (a row against the transposed state: ~10x faster on the CPU than
    ``[G, N_s, E] @ [G, E, 1]``)."""
    deltas, xs = delta[:, :, None, :].unbind(0), x[:, :, None, :].unbind(0)  # [G, 1, E] each
    Bs, Cs = B[:, :, None, :].unbind(0), C[..., None].unbind(0)  # [G, 1, N_s], [G, N_s, 1]
    dys = dy[:, :, None, :].unbind(0)  # [G, 1, E]
    dx, d_delta, dB, dC = grads
    z, dA = torch.empty_like(d_state), torch.zeros_like(d_state)
    for i in range(len(deltas) - 1, -1, -1):
        if i < len(deltas) - 1:
            d_state.mul_(decays[i + 1])
        d_state.addcmul_(Cs[i], dys[i])
        torch.bmm(dys[i], states[i].transpose(1, 2), out=dC[i])  # [G, 1, E] @ [G, E, N_s]
        torch.bmm(Bs[i], d_state, out=dx[i])  # [G, 1, N_s] @ [G, N_s, E]
        torch.bmm(xs[i], d_state.transpose(1, 2), out=dB[i])  # [G, 1, E] @ [G, E, N_s]
        torch.mul(d_state, decays[i], out=z).mul_(states[i - 1] if i > 0 else entering)
        dA.addcmul_(z, deltas[i])
        torch.sum(z.mul_(A), 1, out=d_delta[i])
    if carry_out:
        d_state.mul_(decays[0])  # the decay of the segment's first position
    return dA.sum(0)


LOG2_E = math.log2(math.e)


def channel_parts(e: int, threads: int) -> list[slice]:
    """The channels ``[0, E)`` cut into ``min(threads, E)`` near-equal runs: the scan of one channel
    never reads another's, so each run is scanned by its own thread (:func:`over_channels`)."""
    bounds = torch.linspace(0, e, min(threads, e) + 1).round().long().tolist()
    return [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])]


def over_channels(fn, parts: list[slice]) -> list:
    """``[fn(part) for part in parts]``, the parts in threads of their own when there are several (torch
    ops release the GIL; each op runs on its calling thread, as :func:`single_threaded` leaves one
    intra-op thread): the channel-parallel scan, without a barrier per small op."""
    if len(parts) == 1:
        return [fn(parts[0])]
    grad = torch.is_grad_enabled()  # thread-local: a new thread would record the in-place ops

    def in_thread(part):
        with torch.set_grad_enabled(grad):
            return fn(part)

    with concurrent.futures.ThreadPoolExecutor(len(parts)) as pool:
        return list(pool.map(in_thread, parts))


def forward_part(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, h0: Tensor, batch: int,
                 y: Tensor) -> tuple[Tensor, tuple[Tensor, ...]]:
    """The forward of :class:`_ChunkScan` on one run of channels (``u, delta: [C, M, E_p]``, ``A: [N_s, E_p]``,
    ``h0: [B, N_s, E_p]``), writing ``y: [C, M, 1, E_p]`` (a view of the whole output): ``h_T [B, N_s, E_p]``
    and what the backward needs."""
    (c, m, e), n = u.shape, A.shape[0]
    A2 = A * LOG2_E  # [N_s, E_p]: exp(A delta) = exp2(A2 delta), exp2 is ~3x cheaper than exp on the CPU
    x = delta * u  # [C, M, E_p]
    groups = row_groups(m, n * e)
    local = torch.cat([local_states(A2, delta[:, r], x[:, r], B[:, r]) for r in groups])  # [M, N_s, E_p]
    chunk_decays = torch.exp2(A2 * delta.sum(0)[:, None, :])  # [M, N_s, E_p] exp(L_n)
    entering, final = carry(chunk_decays.view(batch, -1, n, e), local.view(batch, -1, n, e), h0)
    entering = entering.view(m, n, e)  # [B, N, N_s, E_p] -> [M, N_s, E_p]
    # the states are not kept: the backward recomputes a segment's at a time
    checkpoints = u.new_empty(-(-c // SEGMENT), m, n, e)  # the state entering every SEGMENT-th position
    for r in groups:
        scan(A2, delta[:, r], x[:, r], B[:, r], C[:, r], entering[r], y[:, r], checkpoints=checkpoints[:, r])
    return final, (checkpoints, chunk_decays)


def backward_part(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, saved: tuple[Tensor, ...],
                  dy: Tensor, d_last: Tensor, batch: int, du: Tensor, d_delta: Tensor) -> tuple[Tensor, ...]:
    """The backward of :class:`_ChunkScan` on one run of channels (the shapes of :func:`forward_part`,
    ``dy: [C, M, E_p]``, ``d_last: [B, N_s, E_p]``), writing ``du, d_delta: [C, M, E_p]`` (views of the whole
    gradients): ``dA, dB, dC, dh0`` (dB, dC: this run's share)."""
    checkpoints, chunk_decays = saved
    (c, m, e), n = u.shape, A.shape[0]
    A2 = A * LOG2_E  # [N_s, E_p]
    x = delta * u  # [C, M, E_p]
    groups = row_groups(m, n * e)
    local = torch.cat([local_gradients(A2, delta[:, r], C[:, r], dy[:, r]) for r in groups])  # [M, N_s, E_p]
    # carried backwards over the chunks: the gradient arriving at each chunk's last state
    arriving, d_h0 = carry(chunk_decays.view(batch, -1, n, e).flip(1), local.view(batch, -1, n, e).flip(1), d_last)
    arriving = arriving.flip(1).reshape(m, n, e)  # [B, N, N_s, E_p] -> [M, N_s, E_p], a copy
    dx = u.new_empty(c, m, 1, e)
    dB, dC = B.new_empty(c, m, 1, n), C.new_empty(c, m, 1, n)
    states = u.new_empty(SEGMENT, groups[0].stop, n, e)  # [S, G, N_s, E]: one segment's states, refilled
    decays = torch.empty_like(states)  # and its decays
    dA = torch.zeros_like(A)  # [N_s, E_p]
    for r in groups:
        d_state = arriving[r]
        for k in range(len(checkpoints) - 1, -1, -1):  # segment by segment from the last
            p, g = slice(k * SEGMENT, min((k + 1) * SEGMENT, c)), r.stop - r.start
            kept, kept_decays = states[: p.stop - p.start, :g], decays[: p.stop - p.start, :g]  # [S, G_r, N_s, E_p]
            scan(A2, delta[p, r], x[p, r], B[p, r], C[p, r], checkpoints[k, r], None, kept,
                 decays=kept_decays)  # the forward's states and decays again
            dA += scan_backward(A, delta[p, r], x[p, r], B[p, r], C[p, r], dy[p, r], checkpoints[k, r], kept,
                                kept_decays, d_state, (dx[p, r], d_delta[p, r], dB[p, r], dC[p, r]), carry_out=k > 0)
    dx = dx.view(c, m, e)
    torch.mul(dx, delta, out=du)
    d_delta.addcmul_(dx, u)
    return dA, dB.view(c, m, n), dC.view(c, m, n), d_h0


class _ChunkScan(torch.autograd.Function):
    """The chunked scan on chunked inputs: ``u, delta: [C, M, E]`` (M = B * N chunks), ``A: [N_s, E]``,
    ``B, C: [C, M, N_s]``, ``h0: [B, N_s, E]`` -> ``y: [C, M, E]`` (no D term), ``h_T: [B, N_s, E]``.
    The chunks step in groups (:func:`row_groups`); the channels are cut into one run per torch thread
    (:func:`channel_parts`), each scanned, forward and backward, by its own thread on one intra-op
    thread (:func:`over_channels`).

    Backward (``dh`` the total gradient of ``h_t``, ``x = delta * u``)::

        dh_t     = C_t (x) dy_t + exp(delta_{t+1} A) * dh_{t+1}      (a reverse scan, chunked like the forward)
        z_t      = dh_t * exp(delta_t A) * h_{t-1}                    (the gradient of the log decay delta_t A)
        d delta_t = sum_n z_t A + u_t (B_t . dh_t),  dA = sum_t delta_t z_t,  du_t = delta_t (B_t . dh_t)
        dB_t     = sum_e x_t dh_t,  dC_t = sum_e dy_t h_t,  dh0 = exp(delta_0 A) * dh_0
    """

    @staticmethod
    def forward(ctx, u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, h0: Tensor) -> tuple[Tensor, Tensor]:
        batch, parts = h0.shape[0], channel_parts(u.shape[-1], torch.get_num_threads())
        y = chunked_like(u)  # [C, M, E], written by the runs in place

        def run(p: slice) -> tuple[Tensor, tuple[Tensor, ...]]:
            return forward_part(u[..., p], delta[..., p], A[:, p].contiguous(), B, C, h0[..., p].contiguous(), batch,
                                y[..., p].unsqueeze(2))

        with single_threaded():
            results = over_channels(run, parts)
        ctx.save_for_backward(u, delta, A, B, C, *(t for _, saved in results for t in saved))
        ctx.batch, ctx.parts = batch, parts
        return y, torch.cat([final for final, _ in results], -1)  # [B, N_s, E]

    @staticmethod
    @once_differentiable
    def backward(ctx, dy: Tensor, d_final: Tensor | None) -> tuple[Tensor, ...]:
        u, delta, A, B, C, *saved = ctx.saved_tensors
        n = A.shape[0]
        d_final = d_final if d_final is not None else u.new_zeros(ctx.batch, n, u.shape[-1])

        du, d_delta = chunked_like(u), chunked_like(u)  # [C, M, E], written by the runs in place

        def run(i: int) -> tuple[Tensor, ...]:
            p = ctx.parts[i]
            return backward_part(u[..., p], delta[..., p], A[:, p].contiguous(), B, C, tuple(saved[2 * i: 2 * i + 2]),
                                 dy[..., p], d_final[..., p].contiguous(), ctx.batch, du[..., p], d_delta[..., p])

        with single_threaded():
            results = over_channels(run, list(range(len(ctx.parts))))
        dA, d_h0 = (torch.cat([r[j] for r in results], -1) for j in (0, 3))  # cut along E
        dB, dC = sum(r[1] for r in results), sum(r[2] for r in results)
        return du, d_delta, dA, dB, dC, d_h0


def selective_scan_chunk(x: ScanInputs) -> tuple[Tensor, Tensor]:
    """The chunked scan above: ``(y [B, T, E] without D u, h_T [B, E, N])``, the arguments of
    :func:`seqmix.kernels.selective_scan.selective_scan`; a sequence shorter than ``chunk_size``
    is one chunk."""
    b, t, _ = x.u.shape
    chunk = min(x.chunk_size, t)
    # padded tokens have delta = 0 (decay 1) and u = B = C = 0: they leave the state as it is
    u, delta, B, C = (to_chunks(y, chunk) for y in (x.u, x.delta, x.B, x.C))  # [C, B*N, E | N_s]
    y, final = _ChunkScan.apply(u, delta, x.A.t().contiguous(), B, C, x.h0.transpose(1, 2).contiguous())
    return from_chunks(y, b, t), final.transpose(1, 2)  # [B, T, E], [B, N_s, E] -> [B, E, N_s]
