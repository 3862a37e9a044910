"""The Tacotron-2-style baseline (Shen et al. 2018, "Natural TTS Synthesis by Conditioning WaveNet on Mel
Spectrogram Predictions"): the recurrent model Transformer TTS is compared with (Li et al. 2019, Section 4).

Implemented (Tacotron 2's Section 2.2 and Fig. 1):

    x_i   = BiLSTM(ConvStack(E phoneme_i))_i                   3 convolutions (kernel 5) + BN + ReLU, then one
                                                               bidirectional LSTM (padding skipped: packed)
    p_s   = DecoderPrenet(frame_{s-1})                         the same pre-net as Transformer TTS (dropout on
                                                               at inference)
    a_s   = LSTM_att([p_s; c_{s-1}])                           the attention LSTM
    e_s,i = v^T tanh(W a_s + V x_i + U (F * [alpha_{s-1}; sum_{<s} alpha])_i)   location-sensitive attention
    alpha_s = softmax_i(e_s,i)      c_s = sum_i alpha_s,i x_i  (Chorowski et al. 2015, with Tacotron 2's
                                                               cumulative weights as the location features)
    d_s   = LSTM_dec([a_s; c_s])                               the decoder LSTM
    mel_s = W_mel [d_s; c_s]  (r frames)   stop_s = w_stop [d_s; c_s]
    mel'  = mel + Postnet(mel)                                 the same 5-convolution post-net

The decoder is one recurrence: training runs it step by step over the teacher frames (the cost per step the
Transformer's parallel decoder avoids); :meth:`Tacotron2.infer_steps` (which :meth:`~.network.TTSNetwork.infer`
consumes) runs the same ``_step`` on its own frames and stops at the stop token or ``max_frames``. The same
losses as Transformer TTS (:mod:`.module`); the alignment is the attention weights ``alpha``.

Departures: widths for a 2-core CPU (paper: 512-wide encoder, 1024-unit LSTMs, 256-unit pre-net); dropout
``rnn_dropout`` on the two LSTMs' outputs in place of zoneout (as NVIDIA's reference implementation does);
a reduction factor ``frames_per_step`` (paper: 1). Left out: zoneout, the WaveNet vocoder.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seqmix.apps.tts.audio import N_MELS
from seqmix.apps.tts.network import (ConvStack, DecoderPrenet, DecoderStep, DecoderSteps, Postnet, TTSNetwork,
                                     TTSOutput, check_dropout)
from seqmix.core.mixer import check_int


class LocationSensitiveAttention(nn.Module):
    """``e_i = v^T tanh(W q + V x_i + U f_i)``, ``f = conv([previous weights; cumulative weights])`` (Chorowski et
    al. 2015, eq. 8-9, as Tacotron 2 uses it)."""

    def __init__(self, query_dim: int, memory_dim: int, attention_dim: int, n_filters: int, kernel_size: int):
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError(f"LocationSensitiveAttention: location_kernel must be odd (centred), got {kernel_size}")
        self.query = nn.Linear(query_dim, attention_dim, bias=False)
        self.memory = nn.Linear(memory_dim, attention_dim, bias=False)
        self.location_conv = nn.Conv1d(2, n_filters, kernel_size, padding=(kernel_size - 1) // 2, bias=False)
        self.location = nn.Linear(n_filters, attention_dim, bias=False)
        self.v = nn.Linear(attention_dim, 1)

    def forward(self, query: Tensor, keys: Tensor, memory: Tensor, previous: Tensor, cumulative: Tensor,
                mask: Tensor) -> tuple[Tensor, Tensor]:
        """``query [B, Q]``, ``keys = self.memory(memory) [B, L, A]``, ``memory [B, L, E]``, weights ``[B, L]``
        -> ``(context [B, E], weights [B, L])``."""
        features = self.location_conv(torch.stack([previous, cumulative], 1))  # [B, 2, L] -> [B, F, L]
        location = self.location(features.transpose(1, 2))  # [B, L, F] -> [B, L, A]
        energies = self.v(torch.tanh(self.query(query)[:, None] + keys + location))[..., 0]  # [B, L]
        weights = torch.softmax(energies.masked_fill(~mask, float("-inf")), dim=-1)
        context = torch.bmm(weights[:, None], memory)[:, 0]  # [B, 1, L] x [B, L, E] -> [B, E]
        return context, weights


class Tacotron2(TTSNetwork):
    """Phoneme ids -> log-mel frames with an LSTM decoder and location-sensitive attention (module docstring).

    Args:
        symbols: the phoneme vocabulary (linked from the datamodule).
        encoder_dim: embedding, convolution and BiLSTM output width.
        prenet_hidden: the decoder pre-net's width; attention_rnn_dim, decoder_rnn_dim: the two LSTMs';
        attention_dim, location_filters, location_kernel: the attention's; postnet_channels.
        encoder_dropout, prenet_dropout (on at inference unless ``prenet_always_dropout=False``), rnn_dropout,
        postnet_dropout.
        frames_per_step, max_phonemes, max_frames, mel_mean, mel_std: as :class:`~.transformer_tts.TransformerTTS`.
    """

    has_alignment = True

    def __init__(self, symbols: list[str], encoder_dim: int = 256, prenet_hidden: int = 128,
                 attention_rnn_dim: int = 256, decoder_rnn_dim: int = 256, attention_dim: int = 128,
                 location_filters: int = 32, location_kernel: int = 31, postnet_channels: int = 256,
                 encoder_dropout: float = 0.5, prenet_dropout: float = 0.5, prenet_always_dropout: bool = True,
                 rnn_dropout: float = 0.1, postnet_dropout: float = 0.5, frames_per_step: int = 3,
                 max_phonemes: int = 256, max_frames: int = 1500, mel_mean: float = -5.25, mel_std: float = 2.73):
        super().__init__()
        owner = "Tacotron2"
        self.setup_common(owner, symbols, frames_per_step, max_phonemes, max_frames, mel_mean, mel_std)
        for name, value in (("encoder_dim", encoder_dim), ("prenet_hidden", prenet_hidden),
                            ("attention_rnn_dim", attention_rnn_dim), ("decoder_rnn_dim", decoder_rnn_dim),
                            ("attention_dim", attention_dim), ("location_filters", location_filters),
                            ("location_kernel", location_kernel), ("postnet_channels", postnet_channels)):
            check_int(owner, name, value)
        if encoder_dim % 2:
            raise ValueError(f"{owner}: encoder_dim must be even (two LSTM directions of encoder_dim / 2), got "
                             f"{encoder_dim}")
        for name, value in (("encoder_dropout", encoder_dropout), ("prenet_dropout", prenet_dropout),
                            ("rnn_dropout", rnn_dropout), ("postnet_dropout", postnet_dropout)):
            check_dropout(owner, name, value)
        self.embed = nn.Embedding(len(self.symbols), encoder_dim, padding_idx=0)
        self.encoder_convs = ConvStack(encoder_dim, encoder_dim, 3, 5, encoder_dropout)
        self.encoder_rnn = nn.LSTM(encoder_dim, encoder_dim // 2, batch_first=True, bidirectional=True)
        self.prenet = DecoderPrenet(N_MELS, prenet_hidden, prenet_hidden, prenet_dropout, prenet_always_dropout)
        self.attention_rnn = nn.LSTMCell(prenet_hidden + encoder_dim, attention_rnn_dim)
        self.attention = LocationSensitiveAttention(attention_rnn_dim, encoder_dim, attention_dim, location_filters,
                                                    location_kernel)
        self.decoder_rnn = nn.LSTMCell(attention_rnn_dim + encoder_dim, decoder_rnn_dim)
        self.mel_out = nn.Linear(decoder_rnn_dim + encoder_dim, N_MELS * frames_per_step)
        self.stop_out = nn.Linear(decoder_rnn_dim + encoder_dim, 1)
        self.postnet = Postnet(postnet_channels, 5, 5, postnet_dropout)
        self.rnn_dropout = rnn_dropout

    def encode(self, phonemes: Tensor, phoneme_lengths: Tensor) -> tuple[Tensor, Tensor]:
        """``(x [B, L, E], key mask [B, L])``."""
        mask = self.check_phonemes(phonemes, phoneme_lengths)
        h = self.encoder_convs(self.embed(phonemes), mask)  # [B, L, E]
        packed = nn.utils.rnn.pack_padded_sequence(h, phoneme_lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, _ = self.encoder_rnn(packed)
        x, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=phonemes.shape[1])  # [B, L, E]
        return x, mask

    def initial_state(self, memory: Tensor) -> tuple[Tensor, ...]:
        """``(att_h, att_c, dec_h, dec_c, weights [B, L], cumulative [B, L], context [B, E])``, all zeros."""
        b, length, e = memory.shape
        zeros = memory.new_zeros
        return (zeros(b, self.attention_rnn.hidden_size), zeros(b, self.attention_rnn.hidden_size),
                zeros(b, self.decoder_rnn.hidden_size), zeros(b, self.decoder_rnn.hidden_size),
                zeros(b, length), zeros(b, length), zeros(b, e))

    def _step(self, p: Tensor, state: tuple[Tensor, ...], memory: Tensor, keys: Tensor,
              mask: Tensor) -> tuple[Tensor, Tensor, Tensor, tuple[Tensor, ...]]:
        """One decoder step from the pre-net output ``p [B, P]``: ``(frames [B, r, 80] normalised, stop logit [B],
        weights [B, L], new state)``."""
        att_h, att_c, dec_h, dec_c, weights, cumulative, context = state
        att_h, att_c = self.attention_rnn(torch.cat([p, context], -1), (att_h, att_c))
        att_h = F.dropout(att_h, self.rnn_dropout, self.training)
        context, weights = self.attention(att_h, keys, memory, weights, cumulative, mask)
        cumulative = cumulative + weights
        dec_h, dec_c = self.decoder_rnn(torch.cat([att_h, context], -1), (dec_h, dec_c))
        dec_h = F.dropout(dec_h, self.rnn_dropout, self.training)
        out = torch.cat([dec_h, context], -1)  # [B, D + E]
        frames = self.mel_out(out).view(out.shape[0], self.frames_per_step, N_MELS)  # [B, r*80] -> [B, r, 80]
        return frames, self.stop_out(out)[:, 0], weights, (att_h, att_c, dec_h, dec_c, weights, cumulative, context)

    def forward(self, phonemes: Tensor, phoneme_lengths: Tensor, mels: Tensor) -> TTSOutput:
        memory, mask = self.encode(phonemes, phoneme_lengths)
        keys = self.attention.memory(memory)  # [B, L, A]
        inputs, steps = self.teacher_inputs(mels)  # [B, S, 80]
        prenet = self.prenet(inputs)  # [B, S, P]
        state = self.initial_state(memory)
        frames, stops, weights = [], [], []
        for s in range(steps):
            f, stop, w, state = self._step(prenet[:, s], state, memory, keys, mask)
            frames.append(f)
            stops.append(stop)
            weights.append(w)
        before = torch.cat(frames, 1)  # S x [B, r, 80] -> [B, S * r, 80]
        after = before + self.postnet(before)
        return TTSOutput(self.denormalise(before), self.denormalise(after), torch.stack(stops, 1),
                         torch.stack(weights, 1))  # [B, S], [B, S, L]

    @torch.no_grad()
    def infer_steps(self, phonemes: Tensor, phoneme_lengths: Tensor, max_frames: int | None = None,
                    stop_threshold: float = 0.5, *, alignment: bool = False) -> DecoderSteps:
        """Free running through :meth:`_step` (see :meth:`TTSNetwork.infer_steps`); the attention weights are
        kept only when ``alignment``."""
        max_steps = self.step_limit(max_frames)
        memory, mask = self.encode(phonemes, phoneme_lengths)
        keys = self.attention.memory(memory)
        b = memory.shape[0]
        state = self.initial_state(memory)
        previous = memory.new_zeros(b, N_MELS)  # the go frame
        ended = torch.zeros(b, dtype=torch.bool, device=memory.device)
        weights = []
        for _ in range(max_steps):
            f, stop, w, state = self._step(self.prenet(previous), state, memory, keys, mask)
            fired = torch.sigmoid(stop) > stop_threshold
            if alignment:
                weights.append(w)
            yield DecoderStep(f, fired)
            ended |= fired
            previous = f[:, -1]
            if bool(ended.all()):
                break
        return torch.stack(weights, 1) if alignment else None  # S x [B, L] -> [B, S, L]
