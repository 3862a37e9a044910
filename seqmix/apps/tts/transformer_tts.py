"""Transformer TTS (Li et al. 2019, "Neural Speech Synthesis with Transformer Network"), any mixer inside.

Implemented (the paper's Section 3 and Fig. 3):

    x_i   = EncoderPrenet(E phoneme_i)                       3 convolutions (kernel 5) + BN + ReLU, then a
                                                             linear projection to d_model   (Section 3.2)
    x_i  += alpha_enc PE(i)                                  scaled positional encoding, alpha trainable,
                                                             initialised to 1              (Section 3.3, eq. 3)
    h     = EncoderStack(x)                                  n_encoder_layers pre-norm blocks, any mixer,
                                                             non-causal self (CAB's noncausal_self)
    y_s   = DecoderPrenet(frame_{s-1}) + alpha_dec PE(s)     2 FC + ReLU, dropout 0.5 kept at inference, a
                                                             linear projection              (Section 3.4)
    z_s   = DecoderStack(y_{<=s}, h)                         causal self (causal_self) + cross attention
                                                             to h (noncausal_cross) + MLP  (Section 3.5)
    mel_s = W_mel z_s  (r frames)     stop_s = w_stop z_s    mel and stop linear projections (Section 3.6)
    mel'  = mel + Postnet(mel)                               5 convolutions                (Section 3.6)

Training is teacher forced (all steps at once); inference steps the decoder one step at a time through
:meth:`~seqmix.core.blocks.MixerStack.step`: a KV cache for attention, a constant-size state for
recurrent mixers, the encoder output projected once into each cross mixer's state
(:meth:`~seqmix.core.blocks.MixerStack.init_states` with ``context``). It stops when every sentence's
stop probability passed ``stop_threshold`` or at ``max_frames``.

Alignment: the cross attention probabilities of decoder layer ``alignment_layer`` (heads averaged), which
the guided-attention loss and the figures use; computed when the cross mixer is softmax attention (from
its own q/k projections of the cross mixer's input), None otherwise.

Departures from the paper: pre-norm blocks (the paper is post-norm) with seqmix's MLP (GLU by default),
a reduction factor ``frames_per_step`` (the paper: 1), one stop logit per step of r frames, the encoder
pre-net's and decoder's widths small enough for a 2-core CPU (paper: 512, 6 layers, 8 heads).
Left out: the paper's Noam learning-rate schedule (the app's warm-up + cosine is used), WaveNet.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from seqmix.apps.tts.audio import N_MELS
from seqmix.apps.tts.network import (ConvStack, DecoderPrenet, DecoderStep, DecoderSteps, Postnet, TTSNetwork,
                                     TTSOutput, check_dropout)
from seqmix.core.blocks import MixerStack, MixerFactory, mixer_factory
from seqmix.core.embeddings import sinusoidal_table
from seqmix.core.layers import split_heads
from seqmix.core.mixer import check_int


class ScaledPositionalEncoding(nn.Module):
    """``x + alpha * PE[offset : offset + T]`` with a trainable scalar ``alpha`` (Li et al. 2019, eq. 3)."""

    def __init__(self, d_model: int, max_len: int):
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(1))
        self.register_buffer("table", sinusoidal_table(max_len, d_model), persistent=False)

    def forward(self, x: Tensor, offset: int = 0) -> Tensor:
        t = x.shape[1]
        if offset + t > self.table.shape[0]:
            raise ValueError(f"{offset + t} positions exceed the positional table's {self.table.shape[0]}; raise "
                             "max_frames / max_phonemes")
        return x + self.alpha * self.table[offset: offset + t].to(x.dtype)


class TransformerTTS(TTSNetwork):
    """Phoneme ids -> log-mel frames (module docstring).

    Args:
        symbols: the phoneme vocabulary (linked from the datamodule; saved in the checkpoint).
        d_model: the encoder's and decoder's width.
        n_encoder_layers, n_decoder_layers: blocks in each stack.
        encoder_mixer: a non-causal self mixer factory; decoder_mixer: a causal one; cross_mixer: a mixer with
            the ``noncausal_cross`` pattern (softmax attention gives the alignment).
        conv_channels: the encoder pre-net's width; prenet_hidden: the decoder pre-net's; postnet_channels.
        dropout: in the blocks and the post-net; prenet_dropout: the decoder pre-net's (on at inference too,
            unless ``prenet_always_dropout=False``); encoder_prenet_dropout.
        frames_per_step: r, mel frames per decoder step; max_phonemes / max_frames: input / output limits.
        alignment_layer: the decoder layer whose cross attention is the alignment (-1: the last).
    """

    def __init__(self, symbols: list[str], d_model: int = 128, n_encoder_layers: int = 3, n_decoder_layers: int = 3,
                 encoder_mixer: MixerFactory = mixer_factory("softmax", n_heads=4, causal=False),
                 decoder_mixer: MixerFactory = mixer_factory("softmax", n_heads=4, causal=True),
                 cross_mixer: MixerFactory = mixer_factory("softmax", n_heads=4, causal=False),
                 conv_channels: int = 256, prenet_hidden: int = 128, postnet_channels: int = 256,
                 mlp_ratio: float = 4.0, dropout: float = 0.1, encoder_prenet_dropout: float = 0.2,
                 prenet_dropout: float = 0.5, prenet_always_dropout: bool = True, frames_per_step: int = 3,
                 max_phonemes: int = 256, max_frames: int = 1500, alignment_layer: int = -1,
                 mel_mean: float = -5.25, mel_std: float = 2.73):
        super().__init__()
        owner = "TransformerTTS"
        self.setup_common(owner, symbols, frames_per_step, max_phonemes, max_frames, mel_mean, mel_std)
        for name, value in (("d_model", d_model), ("n_encoder_layers", n_encoder_layers),
                            ("n_decoder_layers", n_decoder_layers), ("conv_channels", conv_channels),
                            ("prenet_hidden", prenet_hidden), ("postnet_channels", postnet_channels)):
            check_int(owner, name, value)
        if d_model % 2:
            raise ValueError(f"{owner}: d_model must be even (sinusoidal positions), got {d_model}")
        for name, value in (("dropout", dropout), ("encoder_prenet_dropout", encoder_prenet_dropout),
                            ("prenet_dropout", prenet_dropout)):
            check_dropout(owner, name, value)
        if not -n_decoder_layers <= alignment_layer < n_decoder_layers:
            raise ValueError(f"{owner}: alignment_layer={alignment_layer} is not a decoder layer; choose one in "
                             f"{-n_decoder_layers}..{n_decoder_layers - 1}")
        self.embed = nn.Embedding(len(self.symbols), conv_channels, padding_idx=0)
        self.encoder_prenet = ConvStack(conv_channels, conv_channels, 3, 5, encoder_prenet_dropout)
        self.encoder_project = nn.Linear(conv_channels, d_model)
        self.encoder_position = ScaledPositionalEncoding(d_model, max_phonemes)
        self.encoder = MixerStack(d_model, n_encoder_layers, encoder_mixer, causal=False, mlp_ratio=mlp_ratio,
                                  dropout=dropout)
        self.decoder_prenet = DecoderPrenet(N_MELS, prenet_hidden, d_model, prenet_dropout, prenet_always_dropout)
        self.decoder_position = ScaledPositionalEncoding(d_model, self.steps_of(max_frames))
        self.decoder = MixerStack(d_model, n_decoder_layers, decoder_mixer, causal=True, cross_mixer=cross_mixer,
                                  mlp_ratio=mlp_ratio, dropout=dropout)
        self.mel_out = nn.Linear(d_model, N_MELS * frames_per_step)
        self.stop_out = nn.Linear(d_model, 1)
        self.postnet = Postnet(postnet_channels, 5, 5, dropout=dropout)
        self.dropout = nn.Dropout(dropout)
        self.alignment_layer = alignment_layer % n_decoder_layers
        cross = self.decoder.blocks[self.alignment_layer].cross_mixer
        self.has_alignment = hasattr(cross, "attention_probs") and not getattr(cross, "shares_attention", False)
        self.encoder_masks = bool(self.encoder.blocks[0].mixer.supports_mask)

    # ------------------------------------------------------------------ encoder
    def encode(self, phonemes: Tensor, phoneme_lengths: Tensor) -> tuple[Tensor, Tensor]:
        """``(h [B, L, D], key mask [B, L])``."""
        mask = self.check_phonemes(phonemes, phoneme_lengths)
        x = self.encoder_project(self.encoder_prenet(self.embed(phonemes), mask))  # [B, L, D]
        x = self.dropout(self.encoder_position(x))
        h = self.encoder(x, mask=mask if self.encoder_masks else None)  # [B, L, D]
        return h * mask[..., None].to(h.dtype), mask

    # ------------------------------------------------------------------ alignment
    def _record_cross_input(self) -> tuple[list[Tensor], torch.utils.hooks.RemovableHandle]:
        """Hook the alignment layer's ``norm_cross``, whose output is its cross mixer's query input."""
        recorded: list[Tensor] = []
        block = self.decoder.blocks[self.alignment_layer]
        handle = block.norm_cross.register_forward_hook(lambda _m, _i, out: recorded.append(out))
        return recorded, handle

    def _alignment(self, queries: Tensor, h: Tensor, mask: Tensor) -> Tensor:
        """Heads-averaged cross attention ``[B, S, L]`` of the query inputs ``[B, S, D]`` over ``h [B, L, D]``."""
        cross = self.decoder.blocks[self.alignment_layer].cross_mixer
        q = split_heads(cross.qkv.q(queries), cross.n_heads)  # [B, S, D] -> [B, H, S, K]
        k = split_heads(cross.qkv.k(h), cross.n_heads)  # [B, L, D] -> [B, H, L, K]
        return cross.attention_probs(q, k, mask).mean(1)  # [B, H, S, L] -> [B, S, L]

    # ------------------------------------------------------------------ teacher forcing
    def forward(self, phonemes: Tensor, phoneme_lengths: Tensor, mels: Tensor) -> TTSOutput:
        h, mask = self.encode(phonemes, phoneme_lengths)
        inputs, steps = self.teacher_inputs(mels)  # [B, S, 80]
        if steps > self.decoder_position.table.shape[0]:
            raise ValueError(f"a target of {mels.shape[1]} frames is longer than max_frames={self.max_frames}; "
                             "raise max_frames or drop longer sentences (data.max_frames)")
        y = self.dropout(self.decoder_position(self.decoder_prenet(inputs)))  # [B, S, D]
        recorded, handle = self._record_cross_input() if self.has_alignment else ([], None)
        try:
            z = self.decoder(y, context=h, context_mask=mask)  # [B, S, D]
        finally:
            if handle is not None:
                handle.remove()
        b = z.shape[0]
        before = self.mel_out(z).view(b, steps * self.frames_per_step, N_MELS)  # [B, S, r*80] -> [B, S*r, 80]
        after = before + self.postnet(before)
        alignment = self._alignment(recorded[0], h, mask) if recorded else None
        return TTSOutput(self.denormalise(before), self.denormalise(after), self.stop_out(z)[..., 0], alignment)

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def infer_steps(self, phonemes: Tensor, phoneme_lengths: Tensor, max_frames: int | None = None,
                    stop_threshold: float = 0.5, *, alignment: bool = False) -> DecoderSteps:
        """Free running, one decoder step at a time through :meth:`MixerStack.step` (module docstring; see
        :meth:`TTSNetwork.infer_steps`); the alignment layer's query inputs are recorded only when ``alignment``."""
        max_steps = min(self.step_limit(max_frames), self.decoder_position.table.shape[0])
        h, mask = self.encode(phonemes, phoneme_lengths)
        b = h.shape[0]
        states = self.decoder.init_states(b, h.device, h.dtype, context=h, context_mask=mask)
        previous = h.new_zeros(b, N_MELS)  # the go frame
        ended = torch.zeros(b, dtype=torch.bool, device=h.device)
        recorded, handle = self._record_cross_input() if alignment and self.has_alignment else ([], None)
        try:
            for s in range(max_steps):
                y = self.decoder_position(self.decoder_prenet(previous)[:, None], offset=s)[:, 0]  # [B, 1, D] -> [B, D]
                z, states = self.decoder.step(y, states)  # [B, D]
                out = self.mel_out(z).view(b, self.frames_per_step, N_MELS)  # [B, r*80] -> [B, r, 80]
                fired = torch.sigmoid(self.stop_out(z)[:, 0]) > stop_threshold
                yield DecoderStep(out, fired)
                ended |= fired
                previous = out[:, -1]
                if bool(ended.all()):
                    break
        finally:
            if handle is not None:
                handle.remove()
        return self._alignment(torch.stack(recorded, 1), h, mask) if recorded else None  # S x [B, D]
