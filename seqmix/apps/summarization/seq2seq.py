"""The seq2seq LSTM baseline (Sutskever et al. 2014, "Sequence to Sequence Learning with Neural Networks"),
with Luong et al. 2015's global attention, for the summarization table.

    source = the paper's words in order (sentences concatenated), the first ``max_source_len`` kept,
             then REVERSED (Sutskever et al. section 3.3: the source's start lands next to the target's)
    e_i    = E source_i + aspect                               (the aspect is an input, as for every model)
    h_i    = LSTM_enc(e)_i                                     (deep: ``layers`` blocks)
    v      = W_b h_N                                           (the encoder's last output: the paper's vector)
    s_t    = LSTM_dec(E y_{t-1} + aspect + v + pos_t)_t
    a_t    = softmax_i(s_t W_a h_i)       c_t = sum_i a_t[i] h_i        (Luong's "general" score)
    P(y_t) = softmax(E tanh(W_c [c_t; s_t]) + b)               (the output layer tied to the embedding)

Both LSTMs are seqmix's registered ``lstm`` mixer (``n_heads=1``: a full LSTM), in
:class:`~seqmix.core.blocks.MixerStack` s of pre-norm residual blocks without MLP (the encoder
``causal=False, bidirectional=False``: one left-to-right pass over the reversed source, padding skipped; the
decoder causal, stepping its recurrent state). The masked encoder returns no LSTM state, so the paper's
hand-over of the encoder's final state is the vector ``v`` added to every decoder input instead. Left out: Luong's input feeding (the attentional vector fed
to the next step), which would make teacher forcing sequential; the paper's 4 x 1000 units and ensembles.
There is no copying: an out-of-vocabulary target word is ``<unk>`` in the loss, and ``<unk>`` is never
generated. Decoding: greedy or beam search with trigram blocking (:mod:`seqmix.apps.summarization.search`).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seqmix.apps.summarization.data import ASPECTS
from seqmix.apps.summarization.batch import Batch
from seqmix.apps.summarization.encoder import glove_rows
from seqmix.apps.summarization.network import Output, SummarizationNetwork
from seqmix.apps.summarization.search import beam_search, greedy_search
from seqmix.apps.summarization.summarizer import pack_words
from seqmix.apps.summarization.vocab import BOS_ID, EOS_ID, PAD_ID, UNK_ID, Vocabulary
from seqmix.core.blocks import MixerStack, mixer_factory
from seqmix.core.mixer import State, check_int


class Seq2SeqState(NamedTuple):
    """The decoding state; every tensor batch-first (beam search reorders it)."""

    stack: list  # the decoder LSTMs' states
    memory: Tensor  # [B, N, D] encoder outputs
    keys: Tensor  # [B, N, D] W_a h_i
    mask: Tensor  # [B, N]
    condition: Tensor  # [B, D] aspect + bridged encoder vector
    position: Tensor  # [B]


def reversed_source(batch: Batch, max_source_len: int) -> tuple[Tensor, Tensor]:
    """``(ids [B, N], mask [B, N])``: each example's words in order, the first ``max_source_len`` kept, reversed,
    left-aligned (padding after)."""
    b, s, w = batch.words.shape
    flat_mask = batch.word_mask.reshape(b, s * w) & batch.sentence_mask[..., None].expand(b, s, w).reshape(b, s * w)
    index, mask = pack_words(flat_mask, flat_mask)  # [B, N] the words in order
    index, mask = index[:, :max_source_len], mask[:, :max_source_len]  # [B, N'] truncated
    lengths = mask.sum(1, keepdim=True)  # [B, 1]
    steps = torch.arange(index.shape[1], device=index.device)[None]  # [1, N']
    flip = torch.where(steps < lengths, lengths - 1 - steps, steps)  # [B, N'] reverses each row's kept prefix
    ids = batch.words.reshape(b, s * w).gather(1, index.gather(1, flip))  # [B, N']
    return ids.masked_fill(~mask, PAD_ID), mask


class Seq2Seq(SummarizationNetwork):
    """LSTM encoder-decoder with attention over the reversed source (module docstring).

    Args:
        vocab_words: the vocabulary (linked from the datamodule).
        d_model: embedding and LSTM width.
        layers: LSTM blocks in the encoder and in the decoder.
        max_source_len: source words kept (the first ones, before reversal).
        reverse_source: reverse the source (the paper's trick; False to measure it).
        glove: start the embedding from GloVe 6B 50d (projected), as the hierarchical encoder does.
        max_length, min_length, beam_size, length_penalty, block_trigrams: decoding (``beam_size=1``: greedy).
    """

    def __init__(self, vocab_words: list[str], d_model: int = 128, layers: int = 2, max_source_len: int = 400,
                 reverse_source: bool = True, glove: bool = True, dropout: float = 0.2, max_length: int = 40,
                 min_length: int = 0, beam_size: int = 4, length_penalty: float = 1.0, block_trigrams: bool = True):
        super().__init__()
        owner = "Seq2Seq"
        check_int(owner, "d_model", d_model)
        check_int(owner, "layers", layers)
        self.max_source_len = check_int(owner, "max_source_len", max_source_len, meaning="source words kept")
        self.max_length = check_int(owner, "max_length", max_length, meaning="summary tokens, </s> included")
        self.min_length = check_int(owner, "min_length", min_length, minimum=0)
        if self.min_length >= self.max_length:
            raise ValueError(f"{owner}: min_length={min_length} must be below max_length={max_length}")
        self.beam_size = check_int(owner, "beam_size", beam_size, meaning="1 = greedy")
        if length_penalty < 0:
            raise ValueError(f"{owner}: length_penalty must be >= 0, got {length_penalty}")
        self.vocab = Vocabulary(vocab_words)
        self.reverse_source, self.length_penalty, self.block_trigrams = reverse_source, length_penalty, block_trigrams
        if glove:
            rows, known = glove_rows(vocab_words, 50)
            rows[~known] = torch.randn(int((~known).sum()), rows.shape[1]) * rows[known].std()
            self.embed = nn.Sequential(nn.Embedding.from_pretrained(rows, freeze=False, padding_idx=0),
                                       nn.Linear(rows.shape[1], d_model))
        else:
            self.embed = nn.Embedding(len(vocab_words), d_model, padding_idx=0)
        self.aspect = nn.Embedding(len(ASPECTS), d_model)
        self.position = nn.Embedding(max_length, d_model)
        self.encoder = MixerStack(d_model, layers, mixer_factory("lstm", n_heads=1, causal=False, bidirectional=False),
                                  causal=False, mlp_ratio=0, dropout=dropout)
        self.decoder = MixerStack(d_model, layers, mixer_factory("lstm", n_heads=1, causal=True), causal=True,
                                  mlp_ratio=0, dropout=dropout)
        self.bridge = nn.Linear(d_model, d_model)  # the encoder's last output -> every decoder input
        self.score = nn.Linear(d_model, d_model, bias=False)  # W_a
        self.combine = nn.Linear(2 * d_model, d_model)  # W_c
        self.vocab_bias = nn.Parameter(torch.zeros(len(vocab_words)))
        self.dropout = nn.Dropout(dropout)

    def _table(self) -> Tensor:
        return self.embed(torch.arange(len(self.vocab), device=self.vocab_bias.device))  # [V, D]

    def _embed(self, tokens: Tensor, positions: Tensor, condition: Tensor, table: Tensor) -> Tensor:
        tokens = torch.where(tokens >= len(self.vocab), UNK_ID, tokens)
        return self.dropout(table[tokens] + condition + self.position(positions.clamp(max=self.max_length - 1)))

    def encode(self, batch: Batch, table: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(memory [B, N, D], mask [B, N], condition [B, D])``: the condition (added to every decoder input) is
        the aspect's embedding plus the encoder's last output projected (the paper's fixed-size vector)."""
        if self.reverse_source:
            ids, mask = reversed_source(batch, self.max_source_len)
        else:
            b, s, w = batch.words.shape
            flat = batch.word_mask.reshape(b, s * w)  # [B, S*W]
            index, mask = pack_words(flat, flat)
            index, mask = index[:, : self.max_source_len], mask[:, : self.max_source_len]
            ids = batch.words.reshape(b, s * w).gather(1, index).masked_fill(~mask, PAD_ID)  # [B, N]
        aspect = self.aspect(batch.aspect)  # [B, D]
        e = self.dropout(table[ids] + aspect[:, None]) * mask[..., None]  # [B, N, D]
        memory = self.encoder(e, mask=mask) * mask[..., None]  # [B, N, D]
        last = (mask.sum(1) - 1).clamp(min=0)  # [B] the encoder's last step
        final = memory.gather(1, last[:, None, None].expand(-1, 1, memory.shape[-1]))[:, 0]  # [B, D]
        return memory, mask, aspect + self.bridge(final)

    def _logits(self, s: Tensor, memory: Tensor, keys: Tensor, mask: Tensor, table: Tensor) -> Tensor:
        """Log-probabilities ``[B, (L,) V]`` from decoder states ``s: [B, (L,) D]``."""
        one = s.dim() == 2
        q = s[:, None] if one else s  # [B, L, D]
        a = (q @ keys.transpose(1, 2)).masked_fill(~mask[:, None], float("-inf")).softmax(-1)  # [B, L, N]
        context = a @ memory  # [B, L, D]
        hidden = torch.tanh(self.combine(torch.cat((context, q), -1)))  # [B, L, D]
        out = (self.dropout(hidden) @ table.T + self.vocab_bias).log_softmax(-1)  # [B, L, V]
        return out[:, 0] if one else out

    def forward(self, batch: Batch) -> Tensor:
        """Teacher forcing: log-probabilities ``[B, L, V]`` of each next token."""
        table = self._table()
        memory, mask, condition = self.encode(batch, table)
        b, length = batch.target_input.shape
        positions = torch.arange(length, device=table.device).expand(b, length)  # [B, L]
        s = self.decoder(self._embed(batch.target_input, positions, condition[:, None], table))  # [B, L, D]
        return self._logits(s, memory, self.score(memory), mask, table)

    def loss(self, batch: Batch) -> dict[str, Tensor]:
        log_probs = self(batch)
        target = torch.where(batch.target >= len(self.vocab), UNK_ID, batch.target)  # no copying: OOV -> <unk>
        nll = F.nll_loss(log_probs.transpose(1, 2), target, ignore_index=PAD_ID)
        return {"loss": nll, "nll": nll}

    def step(self, tokens: Tensor, state: Seq2SeqState, table: Tensor) -> tuple[Tensor, Seq2SeqState]:
        x = self._embed(tokens, state.position, state.condition, table)  # [B, D]
        s, stack = self.decoder.step(x, state.stack)
        log_probs = self._logits(s, state.memory, state.keys, state.mask, table)  # [B, V]
        return log_probs, state._replace(stack=stack, position=state.position + 1)

    @torch.no_grad()
    def decode(self, batch: Batch, beam_size: int | None = None) -> list[list[int]]:
        table = self._table()
        memory, mask, condition = self.encode(batch, table)
        b = memory.shape[0]
        state = Seq2SeqState(self.decoder.init_states(b, memory.device, memory.dtype), memory, self.score(memory),
                             mask, condition, torch.zeros(b, dtype=torch.long, device=memory.device))

        def step(tokens: Tensor, state: State) -> tuple[Tensor, State]:
            return self.step(tokens, state, table)

        k = self.beam_size if beam_size is None else beam_size
        common = dict(batch_size=b, bos=BOS_ID, eos=EOS_ID, pad=PAD_ID, max_length=self.max_length,
                      min_length=self.min_length, block_trigrams=self.block_trigrams, forbid=(UNK_ID, PAD_ID, BOS_ID),
                      device=memory.device)
        if k == 1:
            return greedy_search(step, state, **common)
        return beam_search(step, state, beam_size=k, length_penalty=self.length_penalty, **common)

    @torch.no_grad()
    def generate(self, batch: Batch) -> list[Output]:
        return [Output(tokens=self.vocab.decode(ids, batch.oovs[i])) for i, ids in enumerate(self.decode(batch))]
