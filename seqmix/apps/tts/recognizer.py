"""A small CTC phoneme recogniser: the intelligibility check of the TTS app (issue 32).

Trained on the espeak-ng **training** audio's log-mels (:func:`seqmix.apps.tts.audio.mel_spectrogram`), it
transcribes any audio's log-mels into phonemes; its phoneme error rate (PER) on a TTS system's vocoded output,
beside its PER on the real espeak-ng test audio, says how intelligible the synthesis is (to this listener).

Model (:class:`PhonemeRecognizer`, non-causal): the log-mels, normalised by the corpus' global mean and
standard deviation, through a convolutional front-end (two 1-D convolutions of kernel 5 over time, GELU, the
second of stride ``stride``: the frame rate is divided by ``stride``), a :class:`~seqmix.core.blocks.MixerStack`
of any registered non-causal mixer (default: softmax attention with rotary positions), and a linear layer to
the phoneme inventory + the CTC blank (index 0). Loss: CTC (Graves et al. 2006), ``torch.nn.functional.ctc_loss``
over the log-softmax, mean over the batch of the per-sentence loss divided by its target length. Training-time
SpecAugment-style masking (Park et al. 2019: ``time_masks`` spans of at most ``time_mask`` frames and
``freq_masks`` of at most ``freq_mask`` mel bands set to the mean) makes it lean less on any one band; no time
warping. Decoding: greedy (best path: the argmax per frame, repeats merged, blanks dropped); no beam search,
no language model.

Targets (:func:`recognition_symbols`): espeak-ng's IPA string of the sentence, one symbol per character as the
TTS input has it, **without** the stress marks (ˈ ˌ), the word spaces and punctuation (they are not sounds);
length marks (ː) and the other diacritics stay symbols. PER (:func:`phoneme_error_rate`): the Levenshtein
distance (:func:`edit_distance`: substitutions, insertions, deletions, each 1) summed over sentences, divided by
the summed reference lengths (so it can exceed 1).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seqmix.apps.tts.audio import N_MELS
from seqmix.apps.tts.network import MEL_MEAN, MEL_STD, check_dropout, lengths_mask
from seqmix.core.blocks import MixerFactory, MixerStack, mixer_factory
from seqmix.core.mixer import check_int

BLANK = "<blank>"
NOT_SOUNDS = frozenset("ˈˌ ,.;:?!-'\"")  # stress marks, word spaces, punctuation: not recognition targets


def recognition_symbols(phonemes: str) -> list[str]:
    """espeak-ng's IPA string -> the recogniser's target symbols (module docstring: stress, spaces and
    punctuation dropped; every other character one symbol)."""
    return [c for c in phonemes if c not in NOT_SOUNDS]


def inventory(phoneme_strings: Sequence[str]) -> list[str]:
    """``<blank>`` then every target symbol of ``phoneme_strings`` (the training sentences), sorted."""
    return [BLANK, *sorted({c for text in phoneme_strings for c in recognition_symbols(text)})]


def edit_distance(reference: Sequence, hypothesis: Sequence) -> int:
    """Levenshtein distance: the fewest substitutions, insertions and deletions (each 1) turning
    ``reference`` into ``hypothesis`` (dynamic programming over one row)."""
    previous = list(range(len(hypothesis) + 1))
    for i, r in enumerate(reference, 1):
        current = [i]
        for j, h in enumerate(hypothesis, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (r != h)))
        previous = current
    return previous[-1]


def phoneme_error_rate(references: Sequence[Sequence], hypotheses: Sequence[Sequence]) -> float:
    """Summed :func:`edit_distance` over summed reference lengths (corpus-level PER; may exceed 1)."""
    if len(references) != len(hypotheses):
        raise ValueError(f"phoneme_error_rate: {len(references)} references but {len(hypotheses)} hypotheses")
    total = sum(len(r) for r in references)
    if total == 0:
        raise ValueError("phoneme_error_rate: the references hold no symbols; give at least one non-empty one")
    return sum(edit_distance(r, h) for r, h in zip(references, hypotheses)) / total


def ctc_greedy_decode(log_probs: Tensor, lengths: Tensor, blank: int = 0) -> list[list[int]]:
    """Best-path decoding of ``log_probs [B, T, V]`` within ``lengths [B]``: per-frame argmax, runs of one
    symbol merged, blanks dropped."""
    best = log_probs.argmax(-1)  # [B, T]
    out = []
    for b in range(best.shape[0]):
        path = best[b, : int(lengths[b])].tolist()
        out.append([s for t, s in enumerate(path) if s != blank and (t == 0 or s != path[t - 1])])
    return out


class PhonemeRecognizer(nn.Module):
    """Log-mels ``[B, T, 80]`` -> CTC log-probabilities over ``symbols`` (module docstring).

    Args:
        symbols: ``<blank>`` then the target symbols (:func:`inventory` of the training phonemes).
        d_model, n_layers, mixer: the stack (a non-causal mixer factory, the config's ``class_path``).
        conv_channels: the front-end's hidden channels; stride: its time downsampling (CTC needs at least
            as many frames left as target symbols, plus one between repeats).
        dropout: of the stack and after the front-end.
        time_masks, time_mask, freq_masks, freq_mask: training-time masking (0 masks: none).
    """

    def __init__(self, symbols: Sequence[str], d_model: int = 128, n_layers: int = 4,
                 mixer: MixerFactory = mixer_factory("softmax", n_heads=4, causal=False, rotary=True),
                 conv_channels: int = 192, stride: int = 2, dropout: float = 0.1, time_masks: int = 2,
                 time_mask: int = 20, freq_masks: int = 2, freq_mask: int = 10) -> None:
        super().__init__()
        owner = "PhonemeRecognizer"
        if len(symbols) < 2 or symbols[0] != BLANK or len(set(symbols)) != len(symbols):
            raise ValueError(f"{owner}: symbols must be {BLANK!r} then distinct target symbols (see inventory())")
        for name, value in (("d_model", d_model), ("n_layers", n_layers), ("conv_channels", conv_channels),
                            ("stride", stride)):
            check_int(owner, name, value)
        for name, value in (("time_masks", time_masks), ("time_mask", time_mask), ("freq_masks", freq_masks),
                            ("freq_mask", freq_mask)):
            check_int(owner, name, value, minimum=0)
        check_dropout(owner, "dropout", dropout)
        self.symbols, self.stride = list(symbols), stride
        self.masking = (time_masks, time_mask, freq_masks, freq_mask)
        self.conv1 = nn.Conv1d(N_MELS, conv_channels, 5, padding=2)
        self.conv2 = nn.Conv1d(conv_channels, d_model, 5, stride=stride, padding=2)
        self.dropout = nn.Dropout(dropout)
        self.stack = MixerStack(d_model, n_layers, mixer, causal=False, dropout=dropout)
        self.masks_keys = bool(self.stack.blocks[0].mixer.supports_mask)
        self.head = nn.Linear(d_model, len(self.symbols))

    def output_lengths(self, lengths: Tensor) -> Tensor:
        """Frames left after the strided convolution (kernel 5, padding 2)."""
        return (lengths + 4 - 5) // self.stride + 1

    def augment(self, x: Tensor, lengths: Tensor) -> Tensor:
        """Training-time masking of normalised log-mels ``x [B, T, 80]`` (0 = the mean)."""
        time_masks, time_mask, freq_masks, freq_mask = self.masking
        x = x.clone()
        for b in range(x.shape[0]):
            length = int(lengths[b])
            for _ in range(time_masks if time_mask > 0 else 0):
                width = int(torch.randint(0, time_mask + 1, ()))
                start = int(torch.randint(0, max(1, length - width), ()))
                x[b, start: start + width] = 0.0
            for _ in range(freq_masks if freq_mask > 0 else 0):
                width = int(torch.randint(0, freq_mask + 1, ()))
                start = int(torch.randint(0, N_MELS - width + 1, ()))
                x[b, :, start: start + width] = 0.0
        return x

    def forward(self, mels: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """``mels [B, T, 80]`` (log-mel; frames past ``lengths [B]`` ignored) -> ``(log_probs [B, T', V],
        lengths [B])`` with ``T' = ceil(T / stride)``."""
        if mels.dim() != 3 or mels.shape[-1] != N_MELS:
            raise ValueError(f"PhonemeRecognizer: mels must be [B, T, {N_MELS}] log-mels, got {tuple(mels.shape)}")
        x = (mels - MEL_MEAN) / MEL_STD  # [B, T, 80]
        x = x * lengths_mask(lengths, x.shape[1])[..., None].to(x.dtype)
        if self.training:
            x = self.augment(x, lengths)
        h = F.gelu(self.conv1(x.transpose(1, 2)))  # [B, C, T]
        h = h * lengths_mask(lengths, h.shape[2])[:, None].to(h.dtype)  # padding frames stay 0 for conv2
        h = F.gelu(self.conv2(h)).transpose(1, 2)  # [B, C, T'] -> [B, T', D]
        out_lengths = self.output_lengths(lengths).clamp(max=h.shape[1])
        mask = lengths_mask(out_lengths, h.shape[1])
        h = self.stack(self.dropout(h), mask=mask if self.masks_keys else None)  # [B, T', D]
        return self.head(h).log_softmax(-1), out_lengths

    def encode(self, phonemes: str) -> list[int]:
        """Target ids of an IPA string (symbols outside the inventory dropped)."""
        index = {s: i for i, s in enumerate(self.symbols)}
        return [index[c] for c in recognition_symbols(phonemes) if c in index]

    def loss(self, mels: Tensor, lengths: Tensor, targets: Tensor, target_lengths: Tensor) -> Tensor:
        """CTC loss (mean over sentences of the loss per target symbol); ``targets [B, S]`` padded ids."""
        log_probs, out_lengths = self(mels, lengths)
        return F.ctc_loss(log_probs.transpose(0, 1), targets, out_lengths, target_lengths, blank=0,
                          reduction="mean", zero_infinity=True)  # [T', B, V] as ctc_loss takes it

    @torch.no_grad()
    def transcribe(self, mels: Tensor, lengths: Tensor) -> list[list[str]]:
        """Greedy CTC transcripts (symbol lists) of ``mels [B, T, 80]``."""
        log_probs, out_lengths = self(mels, lengths)
        return [[self.symbols[i] for i in ids] for ids in ctc_greedy_decode(log_probs, out_lengths)]


def save_recognizer(model: PhonemeRecognizer, path: str | Path, config: dict) -> Path:
    """``{config, state}`` to ``path``; ``config`` holds the constructor's arguments (the mixer as its
    registered name + arguments under ``mixer``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"app": "tts-recognizer", "config": config, "state": model.state_dict()}, path)
    return path


def load_recognizer(path: str | Path) -> PhonemeRecognizer:
    """The :class:`PhonemeRecognizer` that :func:`save_recognizer` wrote, in eval mode."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"recogniser checkpoint {path} does not exist; train one with "
                                "`python -m benchmarks.tts_recognizer`")
    saved = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(saved, dict) or saved.get("app") != "tts-recognizer":
        raise ValueError(f"{path} is not a TTS phoneme-recogniser checkpoint (written by save_recognizer)")
    config = dict(saved["config"])
    mixer = config.pop("mixer")
    model = PhonemeRecognizer(mixer=mixer_factory(mixer["name"], **mixer["args"]), **config)
    model.load_state_dict(saved["state"])
    return model.eval()
