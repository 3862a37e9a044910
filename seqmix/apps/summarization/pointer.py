"""A Pointer Network decoder over a paper's sentence states (Vinyals, Fortunato and Jaitly 2015), the
highlighter's ``selection: pointer``: it points to one sentence at a time and ends by pointing to a learned
STOP position.

Implemented (the paper's eq. 3, the "Ptr-Net" attention used as the output distribution)::

    e_j        = z_j for the S sentences, e_S = STOP (a learned vector): the S + 1 positions
    d_0        = LSTMCell(start, (tanh(W_h mean_j z_j), 0))        start: a learned input vector
    d_t        = LSTMCell(e_{y_{t-1}}, d_{t-1})                     the previously pointed position's state
    u^t_j      = v^T tanh(W_1 e_j + W_2 d_t)                        additive attention, j = 0..S
    p(y_t | y_<t, z) = softmax_j(u^t_j)                             the attention IS the output distribution

Positions that are padding, or were already pointed to, are masked out of the softmax (a highlight is
never picked twice). Training: teacher forcing on the gold highlighted sentences in document order, then
STOP (a paper without a highlight for the aspect is the one-step target ``[STOP]``); the loss is the mean
negative log-likelihood per target step. Inference: greedy, at most ``max_select`` sentences, ending at
STOP. Left out: the paper's beam search and its convex-hull / TSP-specific input embeddings.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from seqmix.core.mixer import check_int


class PointerDecoder(nn.Module):
    """Points to sentences one at a time until STOP (module docstring).

    Args:
        d_model: width of the sentence states it reads (the encoder's).
        max_select: the most sentences one greedy decoding picks before it is cut off (STOP usually
            comes first).
    """

    def __init__(self, d_model: int, max_select: int = 3):
        super().__init__()
        check_int("PointerDecoder", "d_model", d_model)
        check_int("PointerDecoder", "max_select", max_select, meaning="sentences picked at most per example, e.g. 3")
        self.d_model, self.max_select = d_model, max_select
        self.stop = nn.Parameter(torch.randn(d_model) * 0.02)
        self.start = nn.Parameter(torch.randn(d_model) * 0.02)
        self.init_h = nn.Linear(d_model, d_model)
        self.cell = nn.LSTMCell(d_model, d_model)
        self.w_enc = nn.Linear(d_model, d_model, bias=False)
        self.w_dec = nn.Linear(d_model, d_model)
        self.v = nn.Linear(d_model, 1, bias=False)

    def memory(self, states: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """``states [B, S, D]``, ``mask [B, S]`` -> positions ``[B, S + 1, D]`` (STOP last) and their mask."""
        b = states.shape[0]
        positions = torch.cat((states, self.stop.expand(b, 1, self.d_model)), 1)  # [B, S + 1, D]
        valid = torch.cat((mask, mask.new_ones(b, 1)), 1)  # [B, S + 1]
        return positions, valid

    def initial(self, states: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        m = mask[..., None].to(states.dtype)  # [B, S, 1]
        mean = (states * m).sum(1) / m.sum(1).clamp(min=1)  # [B, D]
        h = torch.tanh(self.init_h(mean))
        return h, torch.zeros_like(h)

    def scores(self, keys: Tensor, h: Tensor, allowed: Tensor) -> Tensor:
        """``u^t``: ``keys = W_1 e [B, S + 1, D]``, decoder state ``h [B, D]`` -> log-probabilities ``[B, S + 1]``."""
        u = self.v(torch.tanh(keys + self.w_dec(h)[:, None])).squeeze(-1)  # [B, S + 1]
        return torch.log_softmax(u.masked_fill(~allowed, float("-inf")), -1)

    def loss(self, states: Tensor, mask: Tensor, highlights: Tensor) -> Tensor:
        """Teacher-forced NLL per target step: targets are each example's highlighted positions in order, then STOP.

        ``states [B, S, D]``, ``mask [B, S]``, ``highlights [B, S]`` (0/1; padding 0)."""
        b, s, _ = states.shape
        positions, valid = self.memory(states, mask)
        keys = self.w_enc(positions)  # [B, S + 1, D]
        gold = (highlights > 0.5) & mask  # [B, S]
        steps = int(gold.sum(1).max()) + 1
        targets = torch.full((b, steps), -1, dtype=torch.long, device=states.device)  # [B, L], -1 after STOP
        for i in range(b):
            chosen = gold[i].nonzero().flatten()  # document order (positions are in document order)
            targets[i, : len(chosen)] = chosen
            targets[i, len(chosen)] = s  # STOP
        h, c = self.initial(states, mask)
        x = self.start.expand(b, self.d_model)
        picked = torch.zeros_like(valid)  # [B, S + 1]
        total, count = states.new_zeros(()), 0
        rows = torch.arange(b, device=states.device)
        for t in range(steps):
            h, c = self.cell(x, (h, c))
            logp = self.scores(keys, h, valid & ~picked)  # [B, S + 1]
            target = targets[:, t]
            live = target >= 0
            if live.any():
                total = total - logp[rows[live], target[live]].sum()
                count += int(live.sum())
            safe = target.clamp(min=0)
            x = positions[rows, safe]  # [B, D] the gold position's state (teacher forcing)
            picked = picked | (nn.functional.one_hot(safe, s + 1).bool() & live[:, None])
        return total / max(count, 1)

    @torch.no_grad()
    def decode(self, states: Tensor, mask: Tensor) -> list[list[int]]:
        """Greedy pointing: per example the positions (indices into the S sentences) picked before STOP,
        at most ``max_select``, never one twice, in the order pointed."""
        b, s, _ = states.shape
        positions, valid = self.memory(states, mask)
        keys = self.w_enc(positions)  # [B, S + 1, D]
        h, c = self.initial(states, mask)
        x = self.start.expand(b, self.d_model)
        picked = torch.zeros_like(valid)  # [B, S + 1]
        done = torch.zeros(b, dtype=torch.bool, device=states.device)
        out: list[list[int]] = [[] for _ in range(b)]
        rows = torch.arange(b, device=states.device)
        for _ in range(self.max_select):
            h, c = self.cell(x, (h, c))
            choice = self.scores(keys, h, valid & ~picked).argmax(-1)  # [B]
            for i in range(b):
                if not done[i]:
                    if int(choice[i]) == s:
                        done[i] = True
                    else:
                        out[i].append(int(choice[i]))
            if bool(done.all()):
                break
            x = positions[rows, choice]  # [B, D]
            picked = picked | nn.functional.one_hot(choice, s + 1).bool()
        return out
