"""Flow attention (Wu et al. 2022, "Flowformer: Linearizing Transformers with Conservation
Flows") as the explicit ``T x T`` flow matrix: the reference.

With ``a_i = phi(q_i)``, ``b_j = phi(k_j)`` (``phi = sigmoid + eps``), the flow from source
(key) j to sink (query) i is ``F_ij = a_i . b_j``. ``vis(i, j)``: the keys query i reads
(all; causal: ``j <= i``). ``out(i, j)``: the queries over which key j's outgoing flow is
measured (all; causal: ``i <= j``, the paper's causal form, which cannot see later queries).
``n_i``: the number of keys query i reads = the number of queries key i's flow is measured
over (T; causal: the 1-based position). Then, per head:

    I_i  = sum_{j: vis} F_ij                     incoming flow of sink i
    O_j  = sum_{i: out} F_ij                     outgoing flow of source j
    I^_i = (1 / n_i) sum_{j: vis} F_ij n_j / O_j    conservation: sink i with every source's outgoing flow fixed
    O^_j = (1 / n_j) sum_{i: out} F_ij n_i / I_i    conservation: source j with every sink's incoming flow fixed
    c_j  = n_j exp(O^_j) / sum_{j' in P(j)} exp(O^_j')    competition (P(j): all; causal: j' <= j)
    o_i  = sigmoid(I^_i) / I_i  sum_{j: vis} F_ij c_j v_j    allocation times the normalised aggregation

Non-causal, ``n = T`` and this is the paper's Flow-Attention (its code: softmax(O^) * T,
sigmoid(I^ * T / S) with S = T). Causal, it is the paper's causal Flowformer (its code):
prefix sums everywhere, flows divided by the token counts, the competition normalised over
the key's own prefix. The paper's code clamps ``O^`` to [-1, 1] "for stability"; here the
competition is a log-sum-exp and needs no clamp, so there is none.

A causal piece continues from a :class:`FlowState`: the sums over the tokens before it.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from seqmix.kernels.common import compute_dtype

EPS = 1e-6  # added to the features, so that no flow is zero (the paper's code adds 1e-6 to each factor)


def features(x: Tensor) -> Tensor:
    """The non-negative feature map ``phi(x) = sigmoid(x) + eps`` (the paper's choice), in the compute dtype."""
    return torch.sigmoid(x.to(compute_dtype(x))) + EPS


class FlowState(NamedTuple):
    """The causal flow attention's state: sums over the tokens seen so far (constant size, fp32 or fp64)."""

    key_sum: Tensor  # [B, H, K]  sum_j b_j
    query_sum: Tensor  # [B, H, K]  sum_i a_i
    key_conserved: Tensor  # [B, H, K]  sum_j b_j n_j / O_j
    query_conserved: Tensor  # [B, H, K]  sum_i a_i n_i / I_i
    log_competition: Tensor  # [B, H]  log sum_j exp(O^_j)
    kv: Tensor  # [B, H, K, V]  sum_j b_j^T c_j v_j
    seen: int  # tokens seen so far

    @classmethod
    def empty(cls, b: int, h: int, dk: int, dv: int, device: torch.device | str | None,
              dtype: torch.dtype) -> FlowState:
        zeros = torch.zeros(b, h, dk, device=device, dtype=dtype)  # [B, H, K]
        no_competition = torch.full((b, h), float("-inf"), device=device, dtype=dtype)  # log 0
        return cls(zeros, zeros, zeros, zeros, no_competition, zeros.new_zeros(b, h, dk, dv), 0)

    def advance(self, a: Tensor, b: Tensor, key_weights: Tensor, query_weights: Tensor, log_competition: Tensor,
                kv: Tensor, t: int) -> FlowState:
        """The state after ``t`` more tokens: ``a, b: [B, T, H, K]``, ``key_weights = n / O`` and
        ``query_weights = n / I``: ``[B, T, H]``, the last log-sum-exp ``[B, H]`` and the new ``kv``."""
        return FlowState(self.key_sum + b.sum(1), self.query_sum + a.sum(1),
                         self.key_conserved + (b * key_weights[..., None]).sum(1),
                         self.query_conserved + (a * query_weights[..., None]).sum(1),
                         log_competition, kv, self.seen + t)


def token_counts(t: int, seen: int, causal: bool, like: Tensor) -> Tensor:
    """``n: [T, 1]``: keys each query reads (= queries each key's flow is measured over)."""
    if causal:
        return torch.arange(seen + 1, seen + t + 1, device=like.device, dtype=like.dtype)[:, None]  # [T, 1]
    return torch.full((t, 1), float(t), device=like.device, dtype=like.dtype)  # [T, 1]


def flow_naive(q: Tensor, k: Tensor, v: Tensor, *, causal: bool, state: FlowState,
               chunk_size: int) -> tuple[Tensor, FlowState]:
    """The formula above with the flow matrix ``F: [B, H, T, T]`` written out, plus the state's sums
    for the tokens before the piece; the arguments and results of :func:`seqmix.kernels.flow.flow_attention`
    (``chunk_size`` is not used)."""
    a, b = features(q), features(k)  # [B, T, H, K]
    v = v.to(a.dtype)  # [B, T, H, V]
    t = a.shape[1]
    n = token_counts(t, state.seen, causal, a)  # [T, 1]
    flows = torch.einsum("bihk,bjhk->bhij", a, b)  # [B, H, T(sink i), T(source j)]
    ones = torch.ones(t, t, dtype=torch.bool, device=a.device)
    vis = ones.tril() if causal else ones  # [T, T] (i, j): query i reads key j
    flows_in, flows_out = flows * vis, flows * vis.T  # out(i, j) = vis(j, i)
    incoming = flows_in.sum(-1).transpose(1, 2) + torch.einsum("bihk,bhk->bih", a, state.key_sum)  # [B, T, H]
    outgoing = flows_out.sum(-2).transpose(1, 2) + torch.einsum("bjhk,bhk->bjh", b, state.query_sum)  # [B, T, H]
    key_weights, query_weights = n / outgoing, n / incoming  # [B, T, H]
    conserved_in = (torch.einsum("bhij,bjh->bih", flows_in, key_weights)
                    + torch.einsum("bihk,bhk->bih", a, state.key_conserved)) / n  # [B, T, H]
    conserved_out = (torch.einsum("bhij,bih->bjh", flows_out, query_weights)
                     + torch.einsum("bjhk,bhk->bjh", b, state.query_conserved)) / n  # [B, T, H]
    # competition: log sum over P(j) of exp(O^), written as a [T, T] masked log-sum-exp
    pairs = conserved_out[:, None, :, :].masked_fill(~vis[None, :, :, None], float("-inf"))  # [B, T(j), T(j'), H]
    log_norm = torch.logaddexp(state.log_competition[:, None], pairs.logsumexp(2))  # [B, T, H]
    competition = n * torch.exp(conserved_out - log_norm)  # [B, T, H]
    weighted = competition[..., None] * v  # [B, T, H, V]
    aggregated = (torch.einsum("bhij,bjhv->bihv", flows_in, weighted)
                  + torch.einsum("bihk,bhkv->bihv", a, state.kv))  # [B, T, H, V]
    o = torch.sigmoid(conserved_in)[..., None] / incoming[..., None] * aggregated  # [B, T, H, V]
    kv = state.kv + torch.einsum("bjhk,bjhv->bhkv", b, weighted)  # [B, H, K, V]
    return o.to(q.dtype), state.advance(a, b, key_weights, query_weights, log_norm[:, -1], kv, t)
