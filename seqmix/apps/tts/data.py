"""The TTS datamodule: phoneme ids in, log-mel frames and stop targets out, from the corpus manifest.

- Phonemes: espeak-ng's IPA string (:mod:`.corpus`) cut into Unicode characters (stress marks, length
  marks, the space between words and the ``,`` between clauses are tokens too), as Piper / VITS feed
  espeak-ng IPA; the vocabulary (:class:`PhonemeVocabulary`) is every character of the **training**
  sentences, sorted, after ``<pad>`` (0), ``<unk>`` (1) and ``<eos>`` (2); a sentence's ids end with
  ``<eos>``. A character met only outside the training split maps to ``<unk>``.
- Targets: :func:`seqmix.apps.tts.audio.mel_spectrogram` of the WAV (``[frames, 80]``, frames = samples //
  256), computed when an item is read, after the WAV's sha256 is checked against the manifest; the stop
  target is 1 on the last frame, 0 before.
- Batches (:func:`collate`, a :class:`TTSBatch`): phonemes padded with ``<pad>``, mels with the log-mel of
  silence (``log 1e-5``), stop targets with 1 (past the end the decoder should keep saying "stop"), and
  both lengths, so that losses can mask the padding.

A missing manifest or WAV, or a WAV whose sha256 differs from the manifest's, is a one-line error naming
``seqmix tts prepare``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from seqmix.apps.tts.audio import HOP, LOG_SILENCE, N_MELS, SAMPLE_RATE, decode_wav, mel_spectrogram
from seqmix.apps.tts.corpus import MANIFEST, PREPARE_HINT, Entry, check_wav, default_root, read_manifest
from seqmix.core.mixer import check_int

PAD, UNK, EOS = "<pad>", "<unk>", "<eos>"
SPECIALS = (PAD, UNK, EOS)


class PhonemeVocabulary:
    """Phoneme characters <-> ids; ids 0, 1, 2 are ``<pad>``, ``<unk>``, ``<eos>``."""

    def __init__(self, symbols: Sequence[str]) -> None:
        if tuple(symbols[:3]) != SPECIALS or len(set(symbols)) != len(symbols):
            raise ValueError(f"a phoneme vocabulary starts with {SPECIALS} and lists each symbol once")
        self.symbols = list(symbols)
        self.index = {s: i for i, s in enumerate(self.symbols)}

    @classmethod
    def from_phonemes(cls, phoneme_strings: Sequence[str]) -> "PhonemeVocabulary":
        return cls([*SPECIALS, *sorted({c for text in phoneme_strings for c in text})])

    def __len__(self) -> int:
        return len(self.symbols)

    def encode(self, phonemes: str) -> list[int]:
        """The ids of ``phonemes``' characters, then ``<eos>``."""
        return [self.index.get(c, self.index[UNK]) for c in phonemes] + [self.index[EOS]]

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(self.symbols[i] for i in ids if i >= len(SPECIALS))


@dataclass
class TTSBatch:
    """A padded batch: ``phonemes [B, L]`` (``<pad>`` = 0), ``mels [B, T, 80]``, ``stops [B, T]``."""

    ids: list[str]
    phonemes: torch.Tensor
    phoneme_lengths: torch.Tensor
    mels: torch.Tensor
    mel_lengths: torch.Tensor
    stops: torch.Tensor


class TTSDataset(Dataset):
    """``(id, phoneme ids [L], log-mel [T, 80], stop [T])`` per manifest entry (module docstring)."""

    def __init__(self, entries: Sequence[Entry], root: Path, vocabulary: PhonemeVocabulary,
                 verify_sha256: bool = True) -> None:
        self.entries, self.root, self.vocabulary, self.verify = list(entries), Path(root), vocabulary, verify_sha256

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> tuple[str, torch.Tensor, torch.Tensor, torch.Tensor]:
        entry = self.entries[index]
        path = self.root / entry.wav
        if not path.is_file():
            raise FileNotFoundError(f"TTS audio {path} of sentence {entry.id!r} does not exist; {PREPARE_HINT}")
        data = path.read_bytes()
        if self.verify:
            check_wav(entry, self.root, data)
        wav, rate = decode_wav(data, str(path))
        if rate != SAMPLE_RATE:
            raise ValueError(f"TTS audio {path} is at {rate} Hz, not {SAMPLE_RATE}; {PREPARE_HINT}")
        mel = mel_spectrogram(wav).T.contiguous()  # [80, T] -> [T, 80]
        stop = torch.zeros(mel.shape[0])
        stop[-1] = 1.0
        return entry.id, torch.tensor(self.vocabulary.encode(entry.phonemes)), mel, stop


def collate(items: Sequence[tuple[str, torch.Tensor, torch.Tensor, torch.Tensor]]) -> TTSBatch:
    """Items of :class:`TTSDataset` padded into a :class:`TTSBatch` (module docstring for the pad values)."""
    ids, phonemes, mels, stops = zip(*items)
    phoneme_lengths = torch.tensor([len(p) for p in phonemes])
    mel_lengths = torch.tensor([len(m) for m in mels])
    batch, longest = len(items), int(mel_lengths.max())
    padded_phonemes = torch.zeros(batch, int(phoneme_lengths.max()), dtype=torch.long)  # [B, L], <pad> = 0
    padded_mels = torch.full((batch, longest, N_MELS), LOG_SILENCE)  # [B, T, 80]
    padded_stops = torch.ones(batch, longest)  # [B, T]
    for b, (p, m, s) in enumerate(zip(phonemes, mels, stops)):
        padded_phonemes[b, : len(p)] = p
        padded_mels[b, : len(m)] = m
        padded_stops[b, : len(s)] = s
    return TTSBatch(list(ids), padded_phonemes, phoneme_lengths, padded_mels, mel_lengths, padded_stops)


class TTSDataModule(pl.LightningDataModule):
    """The espeak-ng corpus (``seqmix tts prepare``) as train / val / test loaders of :class:`TTSBatch`.

    ``manifest``: the corpus's ``manifest.jsonl`` or its folder (default: :func:`.corpus.default_root`).
    ``max_sentences``: keep only the first N sentences of each split (quick runs, tests).
    ``verify_sha256``: check every WAV against the manifest when it is read.
    ``max_frames``: keep only the sentences of at most this many mel frames (``duration * 22050 // 256``) in
    every split (quick runs on short sentences; the vocabulary still comes from the whole train split).
    :attr:`symbols` (the phoneme vocabulary) is linked into the model."""

    def __init__(self, manifest: str | None = None, batch_size: int = 16, max_sentences: int | None = None,
                 num_workers: int = 0, verify_sha256: bool = True, max_frames: int | None = None) -> None:
        super().__init__()
        check_int("TTSDataModule", "batch_size", batch_size, meaning="sentences per batch")
        check_int("TTSDataModule", "num_workers", num_workers, minimum=0, meaning="loader processes")
        if max_sentences is not None:
            check_int("TTSDataModule", "max_sentences", max_sentences, meaning="sentences kept per split")
        if max_frames is not None:
            check_int("TTSDataModule", "max_frames", max_frames, meaning="mel frames of the longest sentence kept")
        self.max_frames = max_frames
        path = Path(manifest) if manifest is not None else default_root()
        self.manifest = path / MANIFEST if path.is_dir() or path.suffix != ".jsonl" else path
        self.batch_size, self.max_sentences = batch_size, max_sentences
        self.num_workers, self.verify_sha256 = num_workers, verify_sha256
        self.vocabulary: PhonemeVocabulary | None = None
        self.splits: dict[str, TTSDataset] = {}

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        entries = read_manifest(self.manifest)
        by_split = {split: [e for e in entries if e.split == split][: self.max_sentences]
                    for split in ("train", "val", "test")}
        if not by_split["train"]:
            raise ValueError(f"TTS manifest {self.manifest} has no train sentences (the phoneme vocabulary comes "
                             f"from them); {PREPARE_HINT}")
        self.vocabulary = PhonemeVocabulary.from_phonemes([e.phonemes for e in by_split["train"]])
        if self.max_frames is not None:
            by_split = {split: [e for e in part if int(e.duration * SAMPLE_RATE) // HOP <= self.max_frames]
                        for split, part in by_split.items()}
        self.splits = {split: TTSDataset(part, self.manifest.parent, self.vocabulary, self.verify_sha256)
                       for split, part in by_split.items()}

    @property
    def symbols(self) -> list[str]:
        """The phoneme vocabulary's symbols (read from the manifest's train split; linked into the model)."""
        self.setup()
        assert self.vocabulary is not None
        return self.vocabulary.symbols

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        self.setup()
        if not self.splits[split].entries:
            raise ValueError(f"TTS manifest {self.manifest} has no {split} sentences; {PREPARE_HINT}")
        return DataLoader(self.splits[split], batch_size=self.batch_size, shuffle=shuffle, collate_fn=collate,
                          num_workers=self.num_workers)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", False)
