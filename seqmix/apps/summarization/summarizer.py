"""The abstractive Summarizer of Read-Highlight-Summarize: a hierarchical encoder, a Neural Semantic
Encoder memory over the sentences, and a pointer-generator decoder with coverage and a highlight prior.

Read. :class:`~seqmix.apps.summarization.encoder.HierarchicalEncoder` gives word states ``h[b, s, w]`` and
sentence states ``z[b, s]`` (any registered non-causal mixer at each level).

NSE memory (Munkhdalai & Yu 2017, "Neural Semantic Encoders", section 2; :class:`NSEMemory`). The memory
``M_0 = z`` (one slot per sentence); ``passes`` times, the sentences are read in order and for each one

    o_t = LSTM_read(x_t)                                   read   (x: the sentence states, or the last memory)
    q_t = softmax(o_t M_{t-1}^T)        r_t = q_t M_{t-1}          (attention over the memory slots)
    c_t = MLP([o_t; r_t])                                  compose
    h_t = LSTM_write(c_t)                                  write
    M_t = (1 - q_t) * M_{t-1} + q_t h_t                    (each slot i moved towards h_t by q_t[i])

The sentence representation is ``LayerNorm(M_S)``. Left out: NSE's shared / multiple memories, and the paper's
lemma / PoS factors and self-critical RL. The written memory feeds the decoder twice: the highlight head reads
it, and every word state gets its sentence's memory row (projected) added before the decoder sees it.

Highlight. A linear head on the memory scores each sentence (BCE on ``batch.highlights``, weight
``highlight_weight``, as the highlighter); ``prior_weight * log sigmoid(score)`` is added to the copy
attention's logits of every word of that sentence.

Summarize. The decoder is a :class:`~seqmix.core.blocks.MixerStack` whose blocks are a causal self mixer
(CAB ``causal_self``) and a cross mixer (``noncausal_cross``, softmax by default) over the source's word
states, flattened with the padding removed (``[B, N, D]``, N = the longest source in words, with its mask).
On top, the pointer-generator of See et al. 2017 ("Get To The Point"), section 2.2-2.3, with one change:
the copy attention is a separate single-head scaled dot-product attention (not the last layer's cross
attention, so that the coverage and the prior act on the distribution that is copied from) with coverage as
a learned linear term instead of inside See et al.'s tanh (their eq. 11), which keeps the teacher-forced
pass parallel except for a loop over ``[B, N]`` vectors:

    e_t = (W_q s_t) . (W_k h_i) / sqrt(A) + w_c c_t[i] + prior_weight log p_hl(sent(i))     (eqs. 1, 11)
    a_t = softmax(e_t)          h*_t = sum_i a_t[i] h_i          c_t = sum_{t' < t} a_t'    (eqs. 2, 3, 10)
    P_vocab = softmax(E W_o [s_t; h*_t] + b)         (eq. 4; E the tied embedding matrix)
    p_gen = sigmoid(w_h . h*_t + w_s . s_t + w_x . x_t + b_ptr)                              (eq. 8)
    P(w) = p_gen P_vocab(w) + (1 - p_gen) sum_{i: w_i = w} a_t[i]     over the extended ids  (eq. 9)
    loss = -mean_t log P(w*_t) + coverage_weight mean_t sum_i min(a_t[i], c_t[i]) + highlight_weight BCE (eqs. 6, 13)

Decoding: :meth:`Summarizer.step` carries the stack's states (KV caches or recurrent states, the context
projected once), the coverage and the source; beam search with trigram blocking and a length penalty
(:mod:`seqmix.apps.summarization.search`). ``<unk>`` is never generated. ``Output.selected``: the
``select_top`` sentences with the highest highlight score (for the extraction scores; 0: none).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seqmix.apps.summarization.batch import Batch
from seqmix.apps.summarization.encoder import HierarchicalEncoder
from seqmix.apps.summarization.network import Output, SummarizationNetwork
from seqmix.apps.summarization.search import beam_search, greedy_search
from seqmix.apps.summarization.vocab import BOS_ID, EOS_ID, PAD_ID, UNK_ID, Vocabulary
from seqmix.core.blocks import MixerFactory, MixerStack, mixer_factory
from seqmix.core.mixer import State, build_mixer, check_int

EPS = 1e-10


class NSEMemory(nn.Module):
    """Read, compose, write over a memory initialised from the sentence states (module docstring)."""

    def __init__(self, d_model: int, passes: int = 1):
        super().__init__()
        self.passes = check_int("NSEMemory", "passes", passes, minimum=1, meaning="read-compose-write passes")
        self.read = build_mixer("lstm", d_model, n_heads=1, causal=False, bidirectional=False)
        self.compose = nn.Sequential(nn.Linear(2 * d_model, d_model), nn.ReLU())
        self.write = nn.LSTMCell(d_model, d_model)
        self.norm = nn.LayerNorm(d_model)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """``x: [B, S, D]`` sentence states, ``mask: [B, S]`` -> the written memory ``[B, S, D]``."""
        b, s, d = x.shape
        memory, inputs = x, x
        for _ in range(self.passes):
            o = self.read(inputs, mask=mask)  # [B, S, D]
            h, c = x.new_zeros(b, d), x.new_zeros(b, d)
            for t in range(s):
                scores = torch.einsum("bd,bsd->bs", o[:, t], memory).masked_fill(~mask, float("-inf"))  # [B, S]
                q = scores.softmax(-1)  # [B, S]
                r = torch.einsum("bs,bsd->bd", q, memory)  # [B, D]
                h, c = self.write(self.compose(torch.cat((o[:, t], r), -1)), (h, c))
                written = (1 - q[..., None]) * memory + q[..., None] * h[:, None]  # [B, S, D]
                memory = torch.where(mask[:, t, None, None], written, memory)  # a padded sentence writes nothing
            inputs = memory
        return self.norm(memory) * mask[..., None]


class Source(NamedTuple):
    """The encoded source as the decoder sees it: packed words (padding removed) and the highlight scores."""

    words: Tensor  # [B, N, D] word states (with their sentence's memory row added)
    mask: Tensor  # [B, N] bool
    ext_ids: Tensor  # [B, N] extended vocabulary ids (out-of-vocabulary words numbered per example)
    prior: Tensor  # [B, N] prior_weight * log sigmoid(highlight score of the word's sentence); 0 at padding
    highlight_logits: Tensor  # [B, S]


class DecodeState(NamedTuple):
    """:meth:`Summarizer.step`'s state; every tensor batch-first (beam search reorders it)."""

    stack: list  # the decoder stack's per-block states
    keys: Tensor  # [B, N, A] the copy attention's keys
    words: Tensor  # [B, N, D]
    mask: Tensor  # [B, N]
    ext_ids: Tensor  # [B, N]
    prior: Tensor  # [B, N]
    coverage: Tensor  # [B, N]
    position: Tensor  # [B] the next token's position


def pack_words(words: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """``(index [B, N], packed_mask [B, N])``: the positions of the kept words of ``mask: [B, M]``, in order,
    padded to the longest row (padding points at position 0, masked)."""
    order = torch.sort((~mask).to(torch.int8), dim=1, stable=True).indices  # [B, M] kept positions first
    n = max(int(mask.sum(1).max()), 1)
    index = order[:, :n]  # [B, N]
    return index, mask.gather(1, index)


class Summarizer(SummarizationNetwork):
    """Hierarchical encoder + NSE memory + pointer-generator decoder with coverage (module docstring).

    Args:
        vocab_words: the vocabulary (linked from the datamodule; saved with the model).
        d_model, word_mixer, sentence_mixer, word_layers, sentence_layers, glove, dropout: the encoder's
            (:class:`~seqmix.apps.summarization.encoder.HierarchicalEncoder`); the decoder shares the word
            embedding, which is also the output layer (tied).
        memory_passes: read-compose-write passes of the NSE memory over the sentences.
        decoder_mixer: a causal registered mixer (``causal: true``): the decoder's self mixer.
        cross_mixer: a mixer with the ``noncausal_cross`` pattern (``causal: false``): attention to the words.
        decoder_layers: blocks of the decoder stack.
        attention_dim: width of the copy attention's queries and keys.
        coverage_weight, highlight_weight: weights of the coverage loss and of the highlight BCE.
        prior_weight: scale of the highlight log-prior in the copy attention (0: no prior).
        max_length: the longest summary generated (``</s>`` included; also the positions learned).
        min_length: tokens before ``</s>`` may end a summary.
        beam_size, length_penalty, block_trigrams: the search (``beam_size=1``: greedy).
        select_top: the sentences reported as selected (highest highlight score; 0: none).
    """

    def __init__(self, vocab_words: list[str], d_model: int = 128,
                 word_mixer: MixerFactory = mixer_factory("softmax", n_heads=4, causal=False),
                 sentence_mixer: MixerFactory = mixer_factory("softmax", n_heads=4, causal=False),
                 word_layers: int = 1, sentence_layers: int = 1, glove: bool = True, dropout: float = 0.1,
                 memory_passes: int = 1,
                 decoder_mixer: MixerFactory = mixer_factory("softmax", n_heads=4, causal=True),
                 cross_mixer: MixerFactory = mixer_factory("softmax", n_heads=4, causal=False),
                 decoder_layers: int = 2, attention_dim: int = 128, coverage_weight: float = 1.0,
                 highlight_weight: float = 0.5, prior_weight: float = 1.0, max_length: int = 40,
                 min_length: int = 0, beam_size: int = 4, length_penalty: float = 1.0, block_trigrams: bool = True,
                 select_top: int = 2):
        super().__init__()
        owner = "Summarizer"
        check_int(owner, "d_model", d_model, meaning="width of every state")
        check_int(owner, "decoder_layers", decoder_layers)
        check_int(owner, "attention_dim", attention_dim, meaning="width of the copy attention")
        self.max_length = check_int(owner, "max_length", max_length, meaning="summary tokens, </s> included")
        self.min_length = check_int(owner, "min_length", min_length, minimum=0)
        if self.min_length >= self.max_length:
            raise ValueError(f"{owner}: min_length={min_length} must be below max_length={max_length}")
        self.beam_size = check_int(owner, "beam_size", beam_size, meaning="1 = greedy")
        self.select_top = check_int(owner, "select_top", select_top, minimum=0, meaning="0 = select none")
        for name, value in (("coverage_weight", coverage_weight), ("highlight_weight", highlight_weight),
                            ("prior_weight", prior_weight), ("length_penalty", length_penalty)):
            if value < 0:
                raise ValueError(f"{owner}: {name} must be >= 0, got {value}")
        self.vocab = Vocabulary(vocab_words)
        self.coverage_weight, self.highlight_weight, self.prior_weight = coverage_weight, highlight_weight, prior_weight
        self.length_penalty, self.block_trigrams = length_penalty, block_trigrams
        self.encoder = HierarchicalEncoder(vocab_words, d_model, word_mixer, sentence_mixer, word_layers,
                                           sentence_layers, glove=glove, dropout=dropout)
        self.memory = NSEMemory(d_model, memory_passes)
        self.memory_to_words = nn.Linear(d_model, d_model)
        self.highlight = nn.Linear(d_model, 1)
        cross = cross_mixer(d_model)
        if "noncausal_cross" not in cross.patterns:
            raise ValueError(f"{owner}: cross_mixer builds {type(cross).__name__}, which does not support the "
                             f"noncausal_cross pattern (it supports {sorted(cross.patterns)}); use an attention "
                             "mixer such as softmax with causal: false")
        self.decoder = MixerStack(d_model, decoder_layers, decoder_mixer, causal=True, cross_mixer=cross_mixer,
                                  dropout=dropout)
        self.cross_takes_mask = self.decoder.blocks[0].cross_mixer.supports_mask
        self.position = nn.Embedding(max_length, d_model)
        self.dropout = nn.Dropout(dropout)
        self.query = nn.Linear(d_model, attention_dim)
        self.key = nn.Linear(d_model, attention_dim)
        self.coverage_gain = nn.Parameter(torch.tensor(-1.0))  # w_c: the coverage term of the copy scores
        self.vocab_hidden = nn.Linear(2 * d_model, d_model)
        self.vocab_bias = nn.Parameter(torch.zeros(len(vocab_words)))
        self.p_gen = nn.Linear(3 * d_model, 1)

    # ------------------------------------------------------------ encoder
    def encode(self, batch: Batch) -> Source:
        enc = self.encoder(batch)
        memory = self.memory(enc.sentences, enc.sentence_mask)  # [B, S, D]
        highlight_logits = self.highlight(memory)[..., 0]  # [B, S]
        b, s, w, d = enc.words.shape
        words = enc.words + self.memory_to_words(memory)[:, :, None]  # [B, S, W, D]
        flat_mask = enc.word_mask.reshape(b, s * w)  # [B, S*W]
        index, mask = pack_words(flat_mask, flat_mask)  # [B, N] each
        packed = words.reshape(b, s * w, d).gather(1, index[..., None].expand(-1, -1, d)) * mask[..., None]  # [B, N, D]
        ext_ids = batch.words_ext.reshape(b, s * w).gather(1, index)  # [B, N]
        log_prior = F.logsigmoid(highlight_logits).gather(1, index // w)  # [B, N] the word's sentence
        prior = (self.prior_weight * log_prior).masked_fill(~mask, 0.0)
        return Source(packed, mask, ext_ids, prior, highlight_logits)

    def n_extended(self, batch: Batch) -> int:
        return len(self.vocab) + int(batch.n_oov.max()) if len(batch.oovs) else len(self.vocab)

    # ------------------------------------------------------------ decoder
    def _embedding_matrix(self) -> Tensor:
        """``[V, D]``: every vocabulary word through the encoder's embedding (the decoder's input and output)."""
        return self.encoder.embed(torch.arange(len(self.vocab), device=self.vocab_bias.device))

    def _embed(self, tokens: Tensor, positions: Tensor, table: Tensor) -> Tensor:
        """``tokens`` (extended ids folded to ``<unk>``) at ``positions`` -> ``[..., D]``."""
        tokens = torch.where(tokens >= len(self.vocab), UNK_ID, tokens)
        return self.dropout(table[tokens] + self.position(positions.clamp(max=self.max_length - 1)))

    def _final(self, s: Tensor, x: Tensor, a: Tensor, source_words: Tensor, ext_ids: Tensor, table: Tensor,
               n_ext: int) -> Tensor:
        """The pointer-generator's distribution ``[..., V_ext]`` from the decoder state ``s``, its input ``x``,
        the copy attention ``a [..., N]`` (leading dims ``[B]`` or ``[B, L]``)."""
        context = torch.einsum("bn,bnd->bd" if a.dim() == 2 else "bln,bnd->bld", a, source_words)  # h*_t: [B, (L,) D]
        hidden = self.vocab_hidden(torch.cat((s, context), -1))  # [..., D]
        p_vocab = (hidden @ table.T + self.vocab_bias).softmax(-1)  # [..., V]
        p_gen = torch.sigmoid(self.p_gen(torch.cat((context, s, x), -1)))  # [..., 1]
        final = F.pad(p_gen * p_vocab, (0, n_ext - len(self.vocab)))  # [..., V_ext]
        index = ext_ids if a.dim() == 2 else ext_ids[:, None].expand_as(a)  # [..., N]
        return final.scatter_add(-1, index, (1 - p_gen) * a)

    def _copy_scores(self, s: Tensor, keys: Tensor, prior: Tensor, mask: Tensor) -> Tensor:
        """``e`` without the coverage term: ``[B, L, N]`` (or ``[B, N]`` for one step), masked with ``-inf``."""
        q = self.query(s)  # [..., A]
        scores = (q @ keys.transpose(1, 2) if s.dim() == 3 else torch.einsum("ba,bna->bn", q, keys))
        scores = scores / math.sqrt(keys.shape[-1])
        if s.dim() == 3:
            return (scores + prior[:, None]).masked_fill(~mask[:, None], float("-inf"))
        return (scores + prior).masked_fill(~mask, float("-inf"))

    def forward(self, batch: Batch, source: Source | None = None) -> tuple[Tensor, Tensor, Tensor, Source]:
        """Teacher forcing on ``batch.target_input``: ``(P [B, L, V_ext], attention [B, L, N], coverage
        before each step [B, L, N], source)``."""
        source = source if source is not None else self.encode(batch)
        table = self._embedding_matrix()
        b, length = batch.target_input.shape
        positions = torch.arange(length, device=table.device).expand(b, length)  # [B, L]
        x = self._embed(batch.target_input, positions, table)  # [B, L, D]
        s = self.decoder(x, context=source.words, context_mask=source.mask if self.cross_takes_mask else None)
        base = self._copy_scores(s, self.key(source.words), source.prior, source.mask)  # [B, L, N]
        coverage = torch.zeros_like(source.prior)  # [B, N]
        attentions, coverages = [], []
        for t in range(length):  # coverage is sequential; everything else is parallel over t
            a = (base[:, t] + self.coverage_gain * coverage).softmax(-1)  # [B, N]
            attentions.append(a)
            coverages.append(coverage)
            coverage = coverage + a
        a, c = torch.stack(attentions, 1), torch.stack(coverages, 1)  # [B, L, N] each
        probs = self._final(s, x, a, source.words, source.ext_ids, table, self.n_extended(batch))
        return probs, a, c, source

    def loss(self, batch: Batch) -> dict[str, Tensor]:
        probs, a, c, source = self(batch)
        keep = batch.target != PAD_ID  # [B, L]
        n = keep.sum().clamp(min=1)
        nll = -(probs.gather(-1, batch.target[..., None])[..., 0] + EPS).log()  # [B, L]
        nll = (nll * keep).sum() / n
        coverage = (torch.minimum(a, c).sum(-1) * keep).sum() / n
        sentence_mask = batch.sentence_mask
        bce = F.binary_cross_entropy_with_logits(source.highlight_logits, batch.highlights, reduction="none")
        bce = (bce * sentence_mask).sum() / sentence_mask.sum().clamp(min=1)
        total = nll + self.coverage_weight * coverage + self.highlight_weight * bce
        return {"loss": total, "nll": nll, "coverage": coverage, "highlight_bce": bce}

    # ------------------------------------------------------------ decoding
    def init_decoding(self, source: Source) -> DecodeState:
        b = source.words.shape[0]
        stack = self.decoder.init_states(b, source.words.device, source.words.dtype, context=source.words,
                                         context_mask=source.mask if self.cross_takes_mask else None)
        return DecodeState(stack, self.key(source.words), source.words, source.mask, source.ext_ids, source.prior,
                           torch.zeros_like(source.prior), torch.zeros(b, dtype=torch.long, device=source.words.device))

    def step(self, tokens: Tensor, state: DecodeState, n_ext: int) -> tuple[Tensor, DecodeState]:
        """``tokens: [B]`` -> ``(P [B, V_ext] of the next token, state)``."""
        table = self._embedding_matrix()
        x = self._embed(tokens, state.position, table)  # [B, D]
        s, stack = self.decoder.step(x, state.stack)
        a = (self._copy_scores(s, state.keys, state.prior, state.mask) + self.coverage_gain * state.coverage).softmax(-1)
        probs = self._final(s, x, a, state.words, state.ext_ids, table, n_ext)
        return probs, state._replace(stack=stack, coverage=state.coverage + a, position=state.position + 1)

    @torch.no_grad()
    def decode(self, batch: Batch, beam_size: int | None = None, source: Source | None = None) -> list[list[int]]:
        """The summary's extended ids per example (``</s>`` cut); ``beam_size=1`` is greedy."""
        source = source if source is not None else self.encode(batch)
        n_ext = self.n_extended(batch)

        def step(tokens: Tensor, state: State) -> tuple[Tensor, State]:
            probs, state = self.step(tokens, state, n_ext)
            return (probs + EPS).log(), state

        k = self.beam_size if beam_size is None else beam_size
        common = dict(batch_size=batch.words.shape[0], bos=BOS_ID, eos=EOS_ID, pad=PAD_ID,
                      max_length=self.max_length, min_length=self.min_length, block_trigrams=self.block_trigrams,
                      forbid=(UNK_ID, PAD_ID, BOS_ID), device=batch.words.device)
        if k == 1:
            return greedy_search(step, self.init_decoding(source), **common)
        return beam_search(step, self.init_decoding(source), beam_size=k, length_penalty=self.length_penalty,
                           **common)

    @torch.no_grad()
    def generate(self, batch: Batch) -> list[Output]:
        source = self.encode(batch)
        ids = self.decode(batch, source=source)
        scores = torch.sigmoid(source.highlight_logits)  # [B, S]
        outputs = []
        for i, tokens in enumerate(ids):
            n = int(batch.sentence_mask[i].sum())
            row = scores[i, :n]
            top = row.topk(min(self.select_top, n)).indices.tolist() if self.select_top else []
            outputs.append(Output(selected=sorted(int(batch.sentence_ids[i, j]) for j in top),
                                  tokens=self.vocab.decode(tokens, batch.oovs[i]), sentence_scores=row.tolist()))
        return outputs
