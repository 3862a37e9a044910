"""Future Token Prediction (Walker 2024, "Future Token Prediction -- Causal Language Modelling with Per-Token
Semantic State Vector for Multi-Token Prediction"): the LM's objective ``objective: ftp``.

The top-layer vector ``h_t`` of the causal stack at each position ``t`` is the *only* context of a small
decoder that predicts the next ``N`` tokens ``x_{t+1} .. x_{t+N}``:

- pseudo-sequence: ``P_t = reshape(W h_t + b)``, ``W: D -> L D`` (the paper's linear, expansive projection),
  ``L`` pseudo-tokens of width ``D`` that the decoder cross-attends to;
- decoder: ``n_layers`` pre-norm blocks of causal softmax self-attention over its own inputs
  ``[s, e(x_{t+1}), .., e(x_{t+N-1})]`` (``s`` a learned start vector, ``e`` the LM's tied embedding, plus a
  learned position per offset), cross attention to ``P_t`` and an MLP; its output ``n`` gives the logits of
  ``x_{t+n}`` through the tied embedding;
- loss (the paper's down-weighting of tokens far ahead): ``L_FTP = sum_{t,n} g^(n-1) CE(x_{t+n}) /
  sum_{t,n} g^(n-1)`` over the targets inside the window (the last ``N - 1`` positions of a window have
  fewer than ``N`` future tokens there; the missing ones are :data:`IGNORE_INDEX`).

Left out / ours: the paper's GPT-2-sized encoder and decoder, its ``N``, ``L`` and ``g`` (ours are config
values, defaults ``N = 8, L = 4, g = 0.8``); ``sample_positions`` (FTP on a random subset of each batch's
positions, for the CPU budget) is ours. The LanguageModel keeps its tied next-token head and trains it on
the *detached* top-layer vectors (the head shapes the embedding, not the stack), so next-token bits per
byte are still measured with the LM head while the stack is shaped by FTP alone; :func:`adjacent_cosine` is
the paper's smoothness measure (cosine of adjacent top-layer vectors).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seqmix.apps.lm.data import IGNORE_INDEX
from seqmix.core.blocks import MixerStack, mixer_factory
from seqmix.core.mixer import check_int


def future_targets(targets: Tensor, n_future: int) -> Tensor:
    """``targets: [B, T]`` (``targets[:, t] = x_{t+1}``) -> ``[B, T, N]`` with ``[b, t, n] = x_{t+1+n}``
    (``targets[b, t + n]``), :data:`IGNORE_INDEX` past the window's end."""
    check_int("future_targets", "n_future", n_future, meaning="tokens predicted ahead")
    padded = F.pad(targets, (0, n_future - 1), value=IGNORE_INDEX)  # [B, T + N - 1]
    return padded.unfold(1, n_future, 1)  # [B, T + N - 1] -> [B, T, N]


def adjacent_cosine(hidden: Tensor, valid: Tensor | None = None) -> Tensor:
    """Mean cosine similarity of adjacent vectors ``cos(h_t, h_{t+1})`` of ``hidden: [B, T, D]`` (pairs where
    both are ``valid: [B, T]``, when given): the paper's smoothness of the top-layer vectors."""
    cos = F.cosine_similarity(hidden[:, 1:].float(), hidden[:, :-1].float(), dim=-1)  # [B, T - 1]
    if valid is None:
        return cos.mean()
    pair = valid[:, 1:] & valid[:, :-1]  # [B, T - 1]
    return (cos * pair).sum() / pair.sum().clamp(min=1)


class FutureTokenHead(nn.Module):
    """The FTP decoder over every position's top-layer vector (module docstring).

    Args:
        d_model: D, the LM's width (the decoder's too).
        n_future: N, tokens predicted from each position.
        pseudo_len: L, the pseudo-sequence's length.
        n_layers: decoder blocks.
        n_heads: heads of its self and cross attention.
        gamma: the loss weight ``g^(n-1)`` of the ``n``-th token ahead, in (0, 1].
        sample_positions: FTP on this many random positions of each batch row (None: every position).
    """

    def __init__(self, d_model: int, *, n_future: int = 8, pseudo_len: int = 4, n_layers: int = 2, n_heads: int = 4,
                 gamma: float = 0.8, sample_positions: int | None = None):
        super().__init__()
        name = type(self).__name__
        self.n_future = check_int(name, "n_future", n_future, meaning="tokens predicted ahead, e.g. 8")
        self.pseudo_len = check_int(name, "pseudo_len", pseudo_len, meaning="pseudo-sequence length, e.g. 4")
        check_int(name, "n_layers", n_layers, meaning="decoder blocks, e.g. 2")
        if not 0 < gamma <= 1:
            raise ValueError(f"{name}: gamma must lie in (0, 1] (the weight g^(n-1) of the n-th token ahead), got {gamma}")
        if sample_positions is not None:
            check_int(name, "sample_positions", sample_positions, meaning="positions per row, or None for all")
        self.gamma, self.sample_positions = gamma, sample_positions
        self.expand = nn.Linear(d_model, pseudo_len * d_model)  # h_t -> P_t, [D] -> [L D]
        self.start = nn.Parameter(torch.randn(d_model) * 0.02)  # s: the decoder's first input
        self.pos = nn.Parameter(torch.randn(n_future, d_model) * 0.02)  # [N, D]
        self.decoder = MixerStack(d_model, n_layers, mixer_factory("softmax", n_heads=n_heads, causal=True),
                                  causal=True, cross_mixer=mixer_factory("softmax", n_heads=n_heads, causal=False))
        self.register_buffer("weights", gamma ** torch.arange(n_future, dtype=torch.float32), persistent=False)  # [N]

    def logits(self, hidden: Tensor, future: Tensor, embed: nn.Embedding) -> Tensor:
        """``hidden: [M, D]`` top-layer vectors, ``future: [M, N]`` their next N tokens (teacher forcing;
        IGNORE_INDEX allowed) -> logits ``[M, N, V]`` of those tokens."""
        m, d = hidden.shape
        pseudo = self.expand(hidden).view(m, self.pseudo_len, d)  # [M, L D] -> [M, L, D]
        previous = future[:, :-1].clamp(min=0)  # [M, N - 1]: an ignored token only feeds ignored targets
        inputs = torch.cat([self.start.expand(m, 1, d), embed(previous)], dim=1) + self.pos  # [M, N, D]
        out = self.decoder(inputs, context=pseudo)  # [M, N, D]
        return F.linear(out, embed.weight)  # [M, N, V]

    def forward(self, hidden: Tensor, targets: Tensor, embed: nn.Embedding) -> tuple[Tensor, Tensor]:
        """``hidden: [B, T, D]``, ``targets: [B, T]`` -> ``(L_FTP, per-offset mean nats [N])`` (module docstring)."""
        future = future_targets(targets, self.n_future)  # [B, T, N]
        b, t, d = hidden.shape
        if self.sample_positions is not None and self.sample_positions < t:
            index = torch.rand(b, t, device=hidden.device).argsort(dim=1)[:, :self.sample_positions]  # [B, S]
            hidden = hidden.gather(1, index[..., None].expand(-1, -1, d))  # [B, S, D]
            future = future.gather(1, index[..., None].expand(-1, -1, self.n_future))  # [B, S, N]
        flat_future = future.reshape(-1, self.n_future)  # [B, S, N] -> [B S, N]
        logits = self.logits(hidden.reshape(-1, d), flat_future, embed)  # [B S, N, V]
        nats = F.cross_entropy(logits.flatten(0, 1).float(), flat_future.flatten(), ignore_index=IGNORE_INDEX,
                               reduction="none").view_as(flat_future)  # [B S N] -> [B S, N]
        valid = (flat_future != IGNORE_INDEX).float()  # [B S, N]
        weighted = valid * self.weights
        loss = (nats * weighted).sum() / weighted.sum().clamp(min=1e-9)
        per_offset = (nats * valid).sum(0) / valid.sum(0).clamp(min=1)  # [N]
        return loss, per_offset.detach()
