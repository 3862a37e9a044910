"""What every TTS network shares: the pre-nets, the post-net, frame grouping, and the two calls the module uses.

A :class:`TTSNetwork` maps phoneme ids to log-mel frames (the features of :mod:`seqmix.apps.tts.audio`):

- :meth:`TTSNetwork.forward` (teacher forcing): ``phonemes [B, L]``, ``phoneme_lengths [B]``, target ``mels
  [B, T, 80]`` -> a :class:`TTSOutput` (the mel before and after the post-net, one stop logit per decoder step,
  the encoder-decoder alignment when the network has one);
- :meth:`TTSNetwork.infer_steps` (free running, one step at a time): a generator of :class:`DecoderStep`s, each
  step's ``r`` normalised frames and stop decision, generated from the network's own frames until every
  sentence's stop token fired or ``max_frames`` is reached: at most ``max_frames // r`` whole steps (at least
  one), so never more than ``max_frames`` frames for ``max_frames >= r``; it returns the alignment when asked;
- :meth:`TTSNetwork.infer` (free running, whole sentences): the steps of :meth:`~TTSNetwork.infer_steps`
  gathered into a :class:`Synthesis` (the post-net run over the whole mel); :mod:`seqmix.apps.tts.streaming`
  consumes the same generator chunk by chunk.

Layers shared by Transformer TTS (Li et al. 2019, :mod:`.transformer_tts`) and the Tacotron-2-style baseline
(Shen et al. 2018, :mod:`.tacotron`), both from Tacotron 2's Section 2:

- :class:`ConvStack` (the encoder pre-net): 3 convolutions (kernel 5) with batch norm, ReLU and dropout;
- :class:`DecoderPrenet`: 2 fully connected ReLU layers whose dropout (0.5) stays on at inference, as
  Tacotron 2 has it ("to introduce output variation at inference time");
- :class:`Postnet`: 5 convolutions (kernel 5, batch norm, tanh on all but the last) predicting a residual
  added to the decoder's mel;
- reduction factor ``frames_per_step`` (r; Tacotron 1's, Wang et al. 2017): each decoder step emits r frames
  and is fed the last frame of the previous step; r = 1 is the two papers' setting, a larger r shortens the
  decoder's sequence r times (the 2-core CPU runs use r = 3). The first step is fed a zero "go" frame.

Frames are normalised inside the network by one global mean and standard deviation of the training log-mels
(``mel_mean``, ``mel_std``, measured on 100 training sentences: -5.25 and 2.73); everything a network
returns is in log-mel units.
"""

from __future__ import annotations

import math
from collections.abc import Generator
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from seqmix.apps.tts.audio import LOG_SILENCE, N_MELS
from seqmix.core.mixer import check_int

MEL_MEAN, MEL_STD = -5.25, 2.73  # the training log-mels' mean and standard deviation (module docstring)


@dataclass
class TTSOutput:
    """Teacher-forced outputs over ``S`` decoder steps of ``r`` frames (``S * r >= T``, the last step padded)."""

    mel_before: Tensor  # [B, S * r, 80] log-mel, the decoder's projection
    mel_after: Tensor  # [B, S * r, 80] log-mel, after the post-net's residual
    stop_logits: Tensor  # [B, S]: step s is the last one (its r frames hold the sentence's last frame)
    alignment: Tensor | None  # [B, S, L] encoder-decoder attention (heads averaged), None if the network has none


@dataclass
class Synthesis:
    """Free-running outputs: ``mels [B, T, 80]`` (log-mel, after the post-net), frames per sentence, alignment."""

    mels: Tensor  # [B, T, 80]; frames past a sentence's length are the log-mel of silence
    lengths: Tensor  # [B] int64 frames (a multiple of r)
    stopped: Tensor  # [B] bool: the stop token fired (False: cut at max_frames)
    alignment: Tensor | None  # [B, S, L]
    before: Tensor  # [B, S * r, 80] log-mel, the decoder's frames before the post-net (what it was fed back)


@dataclass
class DecoderStep:
    """One free-running decoder step of a batch: its ``r`` frames and whether each sentence's stop token fired."""

    frames: Tensor  # [B, r, 80] normalised log-mel (what is fed back: frames[:, -1])
    stopped: Tensor  # [B] bool: the stop probability passed the threshold at this step


# what infer_steps returns when exhausted: the alignment [B, S, L] when asked for (and the network has one), else None
DecoderSteps = Generator[DecoderStep, None, "Tensor | None"]


def check_dropout(owner: str, name: str, value: float) -> float:
    if not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ValueError(f"{owner}: {name} must be a probability in [0, 1), got {value!r}")
    return float(value)


class ConvStack(nn.Module):
    """``n`` x (Conv1d(kernel) -> BatchNorm -> ReLU -> dropout) over ``x: [B, T, C]``; padding kept at zero."""

    def __init__(self, in_channels: int, channels: int, n: int = 3, kernel_size: int = 5, dropout: float = 0.5):
        super().__init__()
        layers = []
        for i in range(n):
            layers.append(nn.ModuleDict({
                "conv": nn.Conv1d(in_channels if i == 0 else channels, channels, kernel_size,
                                  padding=(kernel_size - 1) // 2),
                "norm": nn.BatchNorm1d(channels)}))
        self.layers = nn.ModuleList(layers)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """``x: [B, T, C_in]``, ``mask: [B, T]`` (True = a token) -> ``[B, T, C]``."""
        keep = mask[:, None].to(x.dtype)  # [B, 1, T]
        h = x.transpose(1, 2) * keep  # [B, T, C] -> [B, C, T]
        for layer in self.layers:
            h = self.dropout(torch.relu(layer["norm"](layer["conv"](h)))) * keep
        return h.transpose(1, 2)  # [B, C, T] -> [B, T, C]


class DecoderPrenet(nn.Module):
    """2 x (Linear -> ReLU -> dropout ``p``), the dropout applied in training **and** at inference (Tacotron 2),
    then a linear projection to ``out_dim``. ``always_dropout=False`` turns it off outside training (tests)."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int, dropout: float = 0.5, always_dropout: bool = True):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(in_dim, hidden), nn.Linear(hidden, hidden)
        self.project = nn.Linear(hidden, out_dim)
        self.p, self.always = dropout, always_dropout

    def forward(self, x: Tensor) -> Tensor:
        active = self.training or self.always
        for fc in (self.fc1, self.fc2):
            x = nn.functional.dropout(torch.relu(fc(x)), self.p, training=active)
        return self.project(x)


class Postnet(nn.Module):
    """5 convolutions over the mel ``[B, T, 80]`` (batch norm; tanh on all but the last; dropout): a residual."""

    def __init__(self, channels: int = 256, n: int = 5, kernel_size: int = 5, dropout: float = 0.5):
        super().__init__()
        check_int("Postnet", "n", n, minimum=2, meaning="convolutions, 5 in Tacotron 2")
        sizes = [N_MELS] + [channels] * (n - 1) + [N_MELS]
        self.convs = nn.ModuleList(nn.Conv1d(a, b, kernel_size, padding=(kernel_size - 1) // 2)
                                   for a, b in zip(sizes, sizes[1:]))
        self.norms = nn.ModuleList(nn.BatchNorm1d(b) for b in sizes[1:])
        self.dropout = nn.Dropout(dropout)

    def forward(self, mel: Tensor) -> Tensor:
        h = mel.transpose(1, 2)  # [B, T, 80] -> [B, 80, T]
        for i, (conv, norm) in enumerate(zip(self.convs, self.norms)):
            h = norm(conv(h))
            h = self.dropout(torch.tanh(h) if i < len(self.convs) - 1 else h)
        return h.transpose(1, 2)  # [B, 80, T] -> [B, T, 80]


def lengths_mask(lengths: Tensor, size: int) -> Tensor:
    """``[B]`` lengths -> bool ``[B, size]``, True before each length."""
    return torch.arange(size, device=lengths.device)[None] < lengths[:, None]


class TTSNetwork(nn.Module):
    """Base class of the TTS networks (module docstring). Subclasses set the attributes below in ``__init__``
    (through :meth:`setup_common`), own a :class:`Postnet` ``postnet``, and implement :meth:`forward` and
    :meth:`infer_steps`; :meth:`infer` is shared."""

    symbols: list[str]
    frames_per_step: int
    max_phonemes: int
    max_frames: int
    has_alignment: bool = False
    postnet: Postnet

    def setup_common(self, owner: str, symbols: list[str], frames_per_step: int, max_phonemes: int,
                     max_frames: int, mel_mean: float, mel_std: float) -> None:
        if not isinstance(symbols, (list, tuple)) or len(symbols) < 4 or not all(isinstance(s, str) for s in symbols):
            raise ValueError(f"{owner}: symbols must be the phoneme vocabulary (a list of strings, linked from "
                             f"data.symbols), got {type(symbols).__name__}")
        self.symbols = list(symbols)
        self.frames_per_step = check_int(owner, "frames_per_step", frames_per_step,
                                         meaning="mel frames per decoder step (reduction factor r)")
        self.max_phonemes = check_int(owner, "max_phonemes", max_phonemes,
                                      meaning="the longest phoneme input, <eos> included")
        self.max_frames = check_int(owner, "max_frames", max_frames,
                                    meaning="the most frames inference generates before it stops")
        if not mel_std > 0:
            raise ValueError(f"{owner}: mel_std must be > 0, got {mel_std}")
        self.mel_mean, self.mel_std = float(mel_mean), float(mel_std)

    def normalise(self, mel: Tensor) -> Tensor:
        return (mel - self.mel_mean) / self.mel_std

    def denormalise(self, mel: Tensor) -> Tensor:
        return mel * self.mel_std + self.mel_mean

    def steps_of(self, n_frames: int) -> int:
        return math.ceil(n_frames / self.frames_per_step)

    def teacher_inputs(self, mels: Tensor) -> tuple[Tensor, int]:
        """``(decoder inputs [B, S, 80], S)``: the normalised last frame of each previous step (zeros first)."""
        b, t, _ = mels.shape
        steps, r = self.steps_of(t), self.frames_per_step
        padded = nn.functional.pad(mels, (0, 0, 0, steps * r - t), value=LOG_SILENCE)  # [B, S * r, 80]
        grouped = self.normalise(padded).view(b, steps, r, N_MELS)  # [B, S * r, 80] -> [B, S, r, 80]
        go = grouped.new_zeros(b, 1, N_MELS)  # [B, 1, 80]
        return torch.cat([go, grouped[:, :-1, -1]], 1), steps  # [B, S, 80]

    def check_phonemes(self, phonemes: Tensor, phoneme_lengths: Tensor) -> Tensor:
        """The key mask ``[B, L]`` of a phoneme batch; a ValueError for a batch over ``max_phonemes``."""
        if phonemes.dim() != 2 or phonemes.dtype != torch.long:
            raise ValueError(f"phonemes must be int64 [batch, length], got {phonemes.dtype} {tuple(phonemes.shape)}")
        longest = int(phoneme_lengths.max()) if phoneme_lengths.numel() else 0
        if longest > self.max_phonemes:
            raise ValueError(f"a sentence of {longest} phonemes is longer than the model's limit of max_phonemes="
                             f"{self.max_phonemes}; split the text into shorter sentences")
        return lengths_mask(phoneme_lengths, phonemes.shape[1])

    def forward(self, phonemes: Tensor, phoneme_lengths: Tensor, mels: Tensor) -> TTSOutput:
        raise NotImplementedError

    def step_limit(self, max_frames: int | None) -> int:
        """Decoder steps free running may take: ``max_frames // r`` whole steps (at least one); ``max_frames``
        defaults to the network's."""
        limit = self.max_frames if max_frames is None else check_int(f"{type(self).__name__}.infer", "max_frames",
                                                                     max_frames)
        return max(1, limit // self.frames_per_step)

    def infer_steps(self, phonemes: Tensor, phoneme_lengths: Tensor, max_frames: int | None = None,
                    stop_threshold: float = 0.5, *, alignment: bool = False) -> DecoderSteps:
        """Free running, one :class:`DecoderStep` at a time (module docstring), until every sentence's stop
        probability passed ``stop_threshold`` or :meth:`step_limit` steps; returns the alignment ``[B, S, L]``
        when ``alignment`` is True and the network has one, else None. Run it under ``torch.no_grad()``."""
        raise NotImplementedError

    @torch.no_grad()
    def infer(self, phonemes: Tensor, phoneme_lengths: Tensor, max_frames: int | None = None,
              stop_threshold: float = 0.5) -> Synthesis:
        """Free running (module docstring): at most ``max_frames`` (default: the network's) frames, the steps of
        :meth:`infer_steps` with the post-net over the whole mel."""
        steps = self.infer_steps(phonemes, phoneme_lengths, max_frames, stop_threshold, alignment=True)
        frames, stops = [], []
        while True:
            try:
                step = next(steps)
            except StopIteration as end:
                return finish_synthesis(self, self.postnet, frames, stops, end.value)
            frames.append(step.frames)
            stops.append(step.stopped)


def finish_synthesis(network: TTSNetwork, postnet: Postnet, frames: list[Tensor], stops: list[Tensor],
                     alignment: Tensor | None) -> Synthesis:
    """The :class:`Synthesis` of normalised frames ``[B, r, 80]`` and stop probabilities ``[B]``, one per step:
    each sentence ends at its first step whose stop probability passed the threshold (``stops`` holds bools)."""
    b, r = frames[0].shape[0], network.frames_per_step
    before = torch.cat(frames, 1)  # S x [B, r, 80] -> [B, S * r, 80]
    mel = before + postnet(before)
    fired = torch.stack(stops, 1)  # [B, S] bool
    stopped = fired.any(1)
    first = torch.where(stopped, fired.float().argmax(1), torch.full_like(stopped, len(stops) - 1, dtype=torch.long))
    lengths = (first + 1) * r  # [B]
    out = network.denormalise(mel).masked_fill(~lengths_mask(lengths, mel.shape[1])[..., None], LOG_SILENCE)
    return Synthesis(out, lengths, stopped, alignment, network.denormalise(before))
