"""Audio in torch: log-mel spectrograms in HiFi-GAN's LJSpeech setting, Griffin-Lim from a log-mel, WAV files.

Mel (:func:`mel_spectrogram`), as HiFi-GAN's ``meldataset.mel_spectrogram`` computes it (Kong et al. 2020,
the features its published LJSpeech / universal generators were trained on; Tacotron 2 uses the same):
22,050 Hz, FFT 1024, hop 256, Hann window 1024, the signal reflect-padded by (1024 - 256) / 2 samples on each
side and framed without centring (so ``N`` samples give ``N // 256`` frames for ``N`` a multiple of 256),
magnitude ``sqrt(re^2 + im^2 + 1e-9)``, 80 mel bands from 0 to 8,000 Hz with librosa's default filterbank
(Slaney's mel scale: linear below 1 kHz, logarithmic above; each triangle normalised to unit area), then
``log(clamp(mel, min=1e-5))``. torchaudio is not used (no release pairs with this torch): the filterbank
is built here (:func:`mel_filterbank`) and checked against librosa's formulas in the tests.

Griffin-Lim (:func:`griffin_lim`): the mel's linear magnitude through the filterbank's pseudo-inverse
(negative values clamped to 0), then the fast Griffin-Lim of Perraudin et al. 2013 (momentum 0.99, as
torchaudio's), :data:`GRIFFIN_LIM_ITERS` = 60 iterations by default, the phase started from a seeded random
draw so the output is reproducible. It works on centred frames; the result is shifted by half a hop so
that its mel lines up with the input's frame for frame. With ``known`` (streaming, :mod:`.streaming`), the
waveform's first samples are already decided (the audio already played): they are written over the estimate
at every iteration and the frames they cover start from their phase, so the rest is estimated to continue
them (the idea of RTISI-LA, Zhu et al. 2007, on one window).

WAV (:func:`read_wav` / :func:`write_wav`): 16-bit PCM through the stdlib ``wave`` module;
:class:`PartialWav` writes one chunk by chunk to ``<path>.partial`` (a valid WAV after every chunk) and
renames it onto ``path`` at the end.
"""

from __future__ import annotations

import io
import math
import os
import wave
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from seqmix.apps.files import atomic_write, input_file

SAMPLE_RATE = 22050
N_FFT = 1024
HOP = 256
WIN = 1024
N_MELS = 80
F_MIN = 0.0
F_MAX = 8000.0
LOG_CLAMP = 1e-5  # HiFi-GAN's dynamic_range_compression clip value
LOG_SILENCE = math.log(LOG_CLAMP)  # the log-mel of silence (the padding value of a batch of mels)
GRIFFIN_LIM_ITERS = 60
GRIFFIN_LIM_MIN_FRAMES = N_FFT // (2 * HOP) + 2  # centred frames must span more than N_FFT / 2 samples


def hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney's mel scale (librosa's default, ``htk=False``): linear up to 1 kHz, logarithmic above."""
    hz = np.asarray(hz, dtype=np.float64)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, math.log(6.4) / 27.0
    return np.where(hz >= min_log_hz, min_log_mel + np.log(np.maximum(hz, 1e-12) / min_log_hz) / logstep, hz / f_sp)


def mel_to_hz(mel: np.ndarray) -> np.ndarray:
    """The inverse of :func:`hz_to_mel`."""
    mel = np.asarray(mel, dtype=np.float64)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, math.log(6.4) / 27.0
    return np.where(mel >= min_log_mel, min_log_hz * np.exp(logstep * (mel - min_log_mel)), f_sp * mel)


@lru_cache(maxsize=8)
def _filterbank(sample_rate: int, n_fft: int, n_mels: int, f_min: float, f_max: float) -> np.ndarray:
    mel_f = mel_to_hz(np.linspace(hz_to_mel(f_min), hz_to_mel(f_max), n_mels + 2))  # band edges in Hz
    fft_f = np.linspace(0, sample_rate / 2, 1 + n_fft // 2)
    ramps = mel_f[:, None] - fft_f[None, :]  # [n_mels + 2, n_freq]
    fdiff = np.diff(mel_f)
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))  # [n_mels, n_freq] triangles
    return weights * (2.0 / (mel_f[2:] - mel_f[:-2]))[:, None]  # Slaney normalisation: unit area


def mel_filterbank(sample_rate: int = SAMPLE_RATE, n_fft: int = N_FFT, n_mels: int = N_MELS,
                   f_min: float = F_MIN, f_max: float = F_MAX) -> torch.Tensor:
    """``[n_mels, n_fft // 2 + 1]`` float32: librosa's ``filters.mel`` with its defaults (Slaney scale and norm)."""
    if not 0 <= f_min < f_max <= sample_rate / 2:
        raise ValueError(f"mel band {f_min}-{f_max} Hz must satisfy 0 <= f_min < f_max <= {sample_rate / 2} "
                         "(half the sample rate)")
    return torch.from_numpy(_filterbank(sample_rate, n_fft, n_mels, float(f_min), float(f_max))).float()


@lru_cache(maxsize=1)
def _pseudo_inverse() -> torch.Tensor:
    """The filterbank's pseudo-inverse ``[n_fft // 2 + 1, 80]`` (float32, computed in float64 once: streaming
    calls Griffin-Lim once a chunk)."""
    return torch.linalg.pinv(mel_filterbank().double()).float()


def _window(device: torch.device) -> torch.Tensor:
    return torch.hann_window(WIN, device=device)


def linear_spectrogram(wav: torch.Tensor) -> torch.Tensor:
    """``wav [..., N]`` -> magnitude ``[..., n_fft // 2 + 1, frames]`` framed as HiFi-GAN does (module docstring)."""
    pad = (N_FFT - HOP) // 2
    if wav.shape[-1] <= pad:
        raise ValueError(f"audio of {wav.shape[-1]} samples is too short for a spectrogram; it needs more than "
                         f"{pad} samples ({pad / SAMPLE_RATE * 1000:.0f} ms at {SAMPLE_RATE} Hz)")
    lead = wav.shape[:-1]
    flat = wav.reshape(-1, 1, wav.shape[-1]).float()  # [B, 1, N]
    flat = torch.nn.functional.pad(flat, (pad, pad), mode="reflect").squeeze(1)  # [B, N + 2 pad]
    spec = torch.stft(flat, N_FFT, hop_length=HOP, win_length=WIN, window=_window(wav.device), center=False,
                      return_complex=True)  # [B, F, frames]
    magnitude = torch.sqrt(spec.real.pow(2) + spec.imag.pow(2) + 1e-9)
    return magnitude.reshape(*lead, *magnitude.shape[-2:])  # [..., F, frames]


def mel_spectrogram(wav: torch.Tensor) -> torch.Tensor:
    """``wav [..., N]`` (floats in [-1, 1] at 22,050 Hz) -> log-mel ``[..., 80, frames]`` (module docstring)."""
    magnitude = linear_spectrogram(wav)
    mel = mel_filterbank().to(magnitude.device) @ magnitude  # [..., 80, frames]
    return torch.log(torch.clamp(mel, min=LOG_CLAMP))


def spectral_convergence(wav: torch.Tensor, log_mel: torch.Tensor) -> float:
    """``||M(wav) - exp(log_mel)||_F / ||exp(log_mel)||_F``: how far the mel magnitude ``M`` (:func:`mel_spectrogram`
    before the log) of ``wav [N]`` is from the target ``log_mel [80, T]``'s, over their common frames (0: equal)."""
    mel = mel_filterbank().to(wav.device) @ linear_spectrogram(wav)  # [80, N // 256]
    target = torch.exp(log_mel.float())  # [80, T]
    n = min(mel.shape[-1], target.shape[-1])
    return float(torch.linalg.norm(mel[:, :n] - target[:, :n]) / torch.linalg.norm(target[:, :n]))


def griffin_lim(log_mel: torch.Tensor, n_iter: int = GRIFFIN_LIM_ITERS, *, momentum: float = 0.99,
                seed: int = 0, known: torch.Tensor | None = None) -> torch.Tensor:
    """A waveform ``[..., frames * 256]`` whose :func:`mel_spectrogram` approximates ``log_mel [..., 80, frames]``
    (module docstring: pseudo-inverse of the filterbank, fast Griffin-Lim, ``n_iter`` iterations). ``known
    [..., P]``: the waveform's first ``P`` samples, held fixed while iterating (module docstring); the returned
    waveform's first ``P`` samples are the estimate's, close to ``known`` but not equal."""
    if n_iter < 1:
        raise ValueError(f"n_iter must be >= 1, got {n_iter}")
    if log_mel.shape[-2] != N_MELS:
        raise ValueError(f"log_mel must be [..., {N_MELS}, frames], got shape {tuple(log_mel.shape)}")
    lead, frames = log_mel.shape[:-2], log_mel.shape[-1]
    if frames < GRIFFIN_LIM_MIN_FRAMES:
        raise ValueError(f"log_mel has {frames} frames; Griffin-Lim needs at least {GRIFFIN_LIM_MIN_FRAMES} for its "
                         f"{N_FFT}-sample FFT; give a longer mel")
    if known is not None and (known.shape[:-1] != lead or known.shape[-1] > frames * HOP):
        raise ValueError(f"known must be [..., P] with log_mel's leading axes {tuple(lead)} and P <= {frames * HOP} "
                         f"samples (256 a frame), got shape {tuple(known.shape)}")
    mel = torch.exp(log_mel.reshape(-1, N_MELS, frames).float())  # [B, 80, T]
    inverse = _pseudo_inverse().to(mel.device)  # [F, 80]
    magnitude = torch.clamp(inverse @ mel, min=0.0)  # [B, F, T]
    length = (frames - 1) * HOP  # centred frames 0..T-1 span this many samples
    window = _window(mel.device)
    generator = torch.Generator().manual_seed(seed)
    phase = torch.rand(magnitude.shape, generator=generator).to(mel.device) * (2 * math.pi)
    angles = torch.polar(torch.ones_like(magnitude), phase)

    def stft(audio: torch.Tensor) -> torch.Tensor:  # [B, length] -> [B, F, T]
        return torch.stft(audio, N_FFT, hop_length=HOP, win_length=WIN, window=window, return_complex=True)

    def hold(audio: torch.Tensor) -> torch.Tensor:  # [B, length]: the known samples written over the estimate
        if known is None:
            return audio
        fixed = known.reshape(-1, known.shape[-1])[:, HOP // 2: HOP // 2 + length].float()  # [B, P - hop / 2]
        return torch.cat([fixed, audio[:, fixed.shape[1]:]], 1)  # output sample n is centred sample n - hop / 2

    if known is not None:
        start = stft(hold(magnitude.new_zeros(magnitude.shape[0], length)))  # [B, F, T]
        covered = torch.arange(frames, device=mel.device) * HOP + WIN // 2 <= known.shape[-1] - HOP // 2  # [T]
        angles = torch.where(covered, start / (start.abs() + 1e-16), angles)  # frames wholly inside known
    previous = torch.zeros_like(angles)
    for _ in range(n_iter):
        audio = hold(torch.istft(magnitude * angles, N_FFT, hop_length=HOP, win_length=WIN, window=window,
                                 length=length))
        rebuilt = stft(audio)
        angles = rebuilt - previous * (momentum / (1 + momentum))
        angles = angles / (angles.abs() + 1e-16)
        previous = rebuilt
    audio = torch.istft(magnitude * angles, N_FFT, hop_length=HOP, win_length=WIN, window=window, length=length)
    # centred frame t is centred on sample t * hop; the analysis frame t on t * hop + hop / 2: shift by hop / 2
    audio = torch.nn.functional.pad(audio, (HOP // 2, frames * HOP - length - HOP // 2))  # [B, T * hop]
    return audio.reshape(*lead, frames * HOP)


def decode_wav(data: bytes, source: str = "audio") -> tuple[torch.Tensor, int]:
    """WAV bytes -> ``(float32 [N] in [-1, 1], sample rate)``; 16-bit PCM, channels averaged."""
    try:
        with wave.open(io.BytesIO(data), "rb") as file:
            width, channels, rate = file.getsampwidth(), file.getnchannels(), file.getframerate()
            frames = file.readframes(file.getnframes())
    except (wave.Error, EOFError) as error:
        raise ValueError(f"{source} is not a readable WAV file ({error}); give a 16-bit PCM WAV") from None
    if width != 2:
        raise ValueError(f"{source} has {8 * width}-bit samples; only 16-bit PCM WAV is read (convert it, e.g. with "
                         "`sox in.wav -b 16 out.wav`)")
    samples = np.frombuffer(frames, dtype="<i2").reshape(-1, channels)  # [N, C]
    return torch.from_numpy(samples.mean(axis=1).astype(np.float32) / 32768.0), rate


def read_wav(path: str | Path) -> tuple[torch.Tensor, int]:
    """A 16-bit PCM WAV file -> ``(float32 [N] in [-1, 1], sample rate)``."""
    path = input_file(path, "WAV file")
    return decode_wav(path.read_bytes(), str(path))


def pcm16(wav: torch.Tensor) -> bytes:
    """``wav [N]`` (floats, clipped to [-1, 1]) as little-endian 16-bit PCM bytes."""
    if wav.dim() != 1:
        raise ValueError(f"a WAV holds one mono waveform [N], got shape {tuple(wav.shape)}")
    pcm = (wav.detach().float().clamp(-1.0, 1.0) * 32767.0).round().to(torch.int16).cpu().numpy()
    return pcm.astype("<i2").tobytes()


def open_wav_writer(file, sample_rate: int) -> wave.Wave_write:
    """A ``wave`` writer of 16-bit mono audio at ``sample_rate`` on ``file`` (a path or a binary file)."""
    out = wave.open(file, "wb")
    out.setnchannels(1)
    out.setsampwidth(2)
    out.setframerate(sample_rate)
    return out


def write_wav(path: str | Path, wav: torch.Tensor, sample_rate: int = SAMPLE_RATE) -> Path:
    """``wav [N]`` (floats, clipped to [-1, 1]) as a 16-bit mono WAV, written atomically."""
    data = pcm16(wav)

    def write(tmp: Path) -> None:
        with open_wav_writer(str(tmp), sample_rate) as out:
            out.writeframes(data)

    return atomic_write(path, write)


class PartialWav:
    """A 16-bit mono WAV written chunk by chunk: to ``<path>.partial``, a valid WAV after every :meth:`write`
    (``wave`` patches the header's sizes after each chunk; the file is flushed), renamed onto ``path`` by
    :meth:`close`. As a context manager it closes on success and removes the ``.partial`` file on an error,
    so ``path`` is never half-written."""

    def __init__(self, path: str | Path, sample_rate: int = SAMPLE_RATE):
        self.path = Path(path)
        self.partial = self.path.with_name(self.path.name + ".partial")
        self.samples = 0
        self._file = open(self.partial, "wb")
        self._wav = open_wav_writer(self._file, sample_rate)

    def write(self, wav: torch.Tensor) -> None:
        """Append ``wav [N]`` (floats, clipped to [-1, 1])."""
        self._wav.writeframes(pcm16(wav))
        self._file.flush()
        self.samples += wav.shape[0]

    def close(self) -> Path:
        """Finish the header and rename ``<path>.partial`` onto ``path``; returns ``path``."""
        self._wav.close()
        self._file.close()
        os.replace(self.partial, self.path)
        return self.path

    def discard(self) -> None:
        """Stop and remove ``<path>.partial``."""
        try:
            self._wav.close()
        finally:
            self._file.close()
            self.partial.unlink(missing_ok=True)

    def __enter__(self) -> PartialWav:
        return self

    def __exit__(self, error_type, error, traceback) -> None:
        if error_type is None:
            self.close()
        else:
            self.discard()
