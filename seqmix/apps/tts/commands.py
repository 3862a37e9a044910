"""``seqmix tts predict --ckpt <ckpt> --text "..." --out speech.wav [--vocoder griffin-lim|hifigan] [--plot mel.png]
[--stream [--chunk-frames N]]``: one sentence spoken by a trained TTS model.

The text is read as the corpus was made: espeak-ng (``en-us``) turns it into IPA phonemes (:mod:`.espeak`),
the checkpoint's phoneme vocabulary turns those into ids, the network generates log-mel frames step by step
until its stop token fires or it reaches ``--max-seconds`` (default: the network's ``max_frames``), and the
vocoder (Griffin-Lim, 60 iterations, or HiFi-GAN's published universal generator) turns them into a 22,050 Hz
16-bit WAV, written atomically. ``--plot`` also writes the mel spectrogram (and the encoder-decoder alignment,
when the network has one) as a PNG. The timing line gives the real-time factor (seconds of computation per
second of audio; < 1: faster than real time).

``--stream`` (:mod:`.streaming`): the audio is vocoded and written chunk by chunk (``--chunk-frames`` mel frames
each, default 32 = 0.37 s) while the decoder generates, to ``<out>.partial`` (a valid WAV after every chunk),
renamed to ``<out>`` at the end (removed on an error); it also prints the latency to the first chunk. The
post-net and HiFi-GAN are exact in chunks, Griffin-Lim an approximation (:mod:`.streaming`). ``--plot`` needs
the whole mel and alignment, which streaming does not keep: the two are refused together.

One-line errors (``ValueError`` / ``FileNotFoundError``, turned into ``seqmix tts predict: error: ...``):
an empty text; characters espeak-ng's English voice cannot phonemise as English words (anything but letters,
digits, white space and ``,.;:'"()-?!%&/``: it spells other characters by name, e.g. "chinese letter", or
reads nothing; curly quotes and dashes are straightened first); a text whose phonemes the model never saw;
a text longer than the model's ``max_phonemes``; an output path that cannot be written (a directory, a
missing or read-only folder, the checkpoint itself); a checkpoint of another app (refused by name:
:func:`seqmix.apps.module.load_trained`, ``weights_only=True``); ``--chunk-frames`` below 1 or without
``--stream``; ``--stream`` with ``--plot``.
"""

from __future__ import annotations

import argparse
import os
import re
import time
from pathlib import Path

import torch

from seqmix.apps.files import check_outputs, pyplot, save_figure
from seqmix.apps.module import load_trained
from seqmix.apps.tts.audio import HOP, SAMPLE_RATE, PartialWav, griffin_lim, write_wav
from seqmix.apps.tts.data import PhonemeVocabulary
from seqmix.apps.tts.module import TTSModule
from seqmix.apps.tts.network import Synthesis
from seqmix.apps.tts.streaming import CHUNK_FRAMES, VOCODERS, SpeechStreamer

HINT = "train one with `seqmix tts fit --config configs/tts/transformer_tts.yaml` (it lands in runs/tts/.../checkpoints/)"
_SPEAKABLE = re.compile(r"[A-Za-z0-9 ,.;:'\"()\-?!%&/]")
_STRAIGHTEN = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "\u2013": "-",
                             "\u2014": "-", "\t": " ", "\n": " ", "\r": " "})


def load_model(ckpt: str | Path) -> TTSModule:
    """The trained module (eval mode) of a ``seqmix tts fit`` checkpoint."""
    model, _ = load_trained(TTSModule, ckpt, "tts", HINT)
    return model


def clean_text(text: str) -> str:
    """``text`` with curly quotes and dashes straightened and white space folded; a ValueError when it is empty
    or holds characters espeak-ng cannot phonemise as English (module docstring)."""
    text = " ".join(text.translate(_STRAIGHTEN).split())
    if not text:
        raise ValueError("--text is empty; give a sentence to speak, e.g. --text \"Speech synthesis turns text into "
                         "audio.\"")
    bad = sorted({c for c in text if not _SPEAKABLE.fullmatch(c)})
    if bad:
        shown = ", ".join(repr(c) for c in bad[:8])
        raise ValueError(f"--text has characters espeak-ng's English voice cannot phonemise as English words ({shown}; "
                         "it would spell them by name or skip them); use letters, digits and ,.;:'\"()-?!%&/")
    return text


def phoneme_ids(text: str, symbols: list[str], max_phonemes: int) -> tuple[str, list[int]]:
    """``(IPA phonemes, ids ending with <eos>)`` of a cleaned text, checked against the model's vocabulary and
    limit."""
    from seqmix.apps.tts.espeak import engine

    phonemes = engine().phonemize(text)
    if not phonemes.strip():
        raise ValueError(f"espeak-ng reads no words in --text {text!r} (only punctuation?); give a sentence with words")
    vocabulary = PhonemeVocabulary(symbols)
    unknown = sorted({c for c in phonemes if c not in vocabulary.index})
    if unknown:
        raise ValueError(f"--text gives phonemes the model never saw in training ({', '.join(map(repr, unknown))}, "
                         f"from {phonemes!r}); rephrase it with plain English words")
    ids = vocabulary.encode(phonemes)
    if len(ids) > max_phonemes:
        raise ValueError(f"--text is {len(ids)} phonemes long (with <eos>) and the model reads at most "
                         f"{max_phonemes}; split it into shorter sentences (about 25 words each)")
    return phonemes, ids


def check_writable(named: list[tuple[str, str | None]]) -> None:
    """A ValueError for an output whose folder is missing or not writable, or which is a read-only file."""
    for name, path in named:
        if path is None:
            continue
        target = Path(path)
        folder = target.parent if str(target.parent) else Path(".")
        if not folder.is_dir():
            raise ValueError(f"{name} {target} cannot be written: its folder {folder} does not exist; create it or "
                             "name a file in an existing folder")
        if not os.access(folder, os.W_OK) or (target.exists() and not os.access(target, os.W_OK)):
            raise ValueError(f"{name} {target} cannot be written (no write permission); name a file in a writable "
                             "folder")


def vocode(mels: torch.Tensor, vocoder: str) -> torch.Tensor:
    """Log-mel ``[T, 80]`` -> waveform ``[T * 256]``."""
    if vocoder == "hifigan":
        from seqmix.apps.tts.vocoder import load_hifigan

        with torch.no_grad():
            return load_hifigan("universal")(mels.T[None])[0]  # [1, 80, T] -> [T * 256]
    return griffin_lim(mels.T)


def plot(path: str, synthesis: Synthesis, text: str) -> None:
    """The synthesised mel (and the alignment when there is one) as a PNG."""
    plt = pyplot()
    n = int(synthesis.lengths[0])
    rows = 2 if synthesis.alignment is not None else 1
    fig, axes = plt.subplots(rows, 1, figsize=(10, 3.2 * rows), squeeze=False)
    axes[0, 0].imshow(synthesis.mels[0, :n].T.cpu().numpy(), origin="lower", aspect="auto", cmap="magma")
    axes[0, 0].set(title=f"log-mel: {text[:80]}", xlabel="frame (11.6 ms)", ylabel="mel band")
    if synthesis.alignment is not None:
        axes[1, 0].imshow(synthesis.alignment[0].T.cpu().numpy(), origin="lower", aspect="auto", cmap="viridis")
        axes[1, 0].set(title="encoder-decoder alignment", xlabel="decoder step", ylabel="phoneme")
    save_figure(fig, path)


def synthesise(model: TTSModule, text: str, *, max_frames: int | None = None) -> tuple[str, Synthesis]:
    """``(phonemes, synthesis of batch 1)`` of one sentence (checked: :func:`clean_text`, :func:`phoneme_ids`)."""
    network = model.network
    phonemes, ids = phoneme_ids(clean_text(text), network.symbols, network.max_phonemes)
    with torch.no_grad():
        synthesis = network.infer(torch.tensor([ids]), torch.tensor([len(ids)]), max_frames=max_frames)
    return phonemes, synthesis


def check_streaming(stream: bool, chunk_frames: int | None, plot: str | None) -> int:
    """The chunk size of ``--stream`` (default :data:`~.streaming.CHUNK_FRAMES`); a ValueError for a bad
    ``--chunk-frames``, one without ``--stream``, or ``--stream`` with ``--plot``."""
    if chunk_frames is not None and not stream:
        raise ValueError("--chunk-frames only applies to streaming; add --stream or drop --chunk-frames")
    if chunk_frames is not None and chunk_frames < 1:
        raise ValueError(f"--chunk-frames must be >= 1 (mel frames per streamed chunk, 256 samples each), got "
                         f"{chunk_frames}; e.g. --chunk-frames {CHUNK_FRAMES}")
    if stream and plot is not None:
        raise ValueError("--plot needs the whole mel and alignment, which --stream does not keep; drop --plot or "
                         "--stream")
    return CHUNK_FRAMES if chunk_frames is None else chunk_frames


def stream_to_wav(model: TTSModule, text: str, out: str, *, vocoder: str, chunk_frames: int,
                  max_frames: int | None) -> None:
    """Speak ``text`` into ``out`` chunk by chunk (module docstring: ``--stream``), printing the phonemes, the
    latency to the first chunk and the real-time factor."""
    start_wall, start_cpu = time.perf_counter(), time.process_time()
    network = model.network
    phonemes, ids = phoneme_ids(clean_text(text), network.symbols, network.max_phonemes)
    streamer = SpeechStreamer(model, chunk_frames=chunk_frames, vocoder=vocoder, max_frames=max_frames)
    first, chunks = None, 0
    with PartialWav(out) as wav:
        for chunk in streamer.stream(ids):
            wav.write(chunk)
            chunks += 1
            if first is None:
                first = time.perf_counter() - start_wall
    wall, cpu = time.perf_counter() - start_wall, time.process_time() - start_cpu
    seconds = streamer.frames * HOP / SAMPLE_RATE
    print(f"phonemes: {phonemes}")
    if not streamer.stopped:
        print(f"note: the stop token did not fire; generation was cut at {streamer.frames} frames ({seconds:.2f} s), "
              "the limit")
    print(f"first audio chunk after {first:.2f} s ({chunk_frames} frames = {chunk_frames * HOP / SAMPLE_RATE:.2f} s "
          "a chunk)")
    print(f"wrote {out}: {seconds:.2f} s of audio in {chunks} chunks, streamed; synthesis + {vocoder} {wall:.2f} s "
          f"wall, {cpu:.2f} s CPU: real-time factor {wall / seconds:.2f}")


def predict_command(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="seqmix tts predict", description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", required=True, help="checkpoint written by `seqmix tts fit`")
    parser.add_argument("--text", required=True, help="the sentence to speak (English, plain characters)")
    parser.add_argument("--out", required=True, help="the WAV file to write (22,050 Hz, 16-bit mono)")
    parser.add_argument("--vocoder", choices=VOCODERS, default="griffin-lim")
    parser.add_argument("--plot", default=None, help="also write the mel spectrogram (and alignment) to this PNG")
    parser.add_argument("--max-seconds", type=float, default=None,
                        help="stop generating after this much audio (default: the model's max_frames)")
    parser.add_argument("--seed", type=int, default=0, help="the seed of the pre-net's inference dropout")
    parser.add_argument("--stream", action="store_true",
                        help="vocode and write the audio chunk by chunk while generating (to <out>.partial, renamed "
                             "at the end); prints the latency to the first chunk")
    parser.add_argument("--chunk-frames", type=int, default=None,
                        help=f"with --stream: mel frames per chunk, 256 samples each (default {CHUNK_FRAMES})")
    args = parser.parse_args(argv)
    text = clean_text(args.text)
    chunk_frames = check_streaming(args.stream, args.chunk_frames, args.plot)
    check_outputs([("--out", args.out), ("--plot", args.plot)], [("--ckpt", args.ckpt)])
    check_writable([("--out", args.out), ("--plot", args.plot)])
    max_frames = None
    if args.max_seconds is not None:
        if not args.max_seconds > 0:
            raise ValueError(f"--max-seconds must be > 0, got {args.max_seconds}")
        max_frames = max(1, int(args.max_seconds * SAMPLE_RATE / HOP))
    model = load_model(args.ckpt)
    torch.manual_seed(args.seed)
    if args.stream:
        stream_to_wav(model, text, args.out, vocoder=args.vocoder, chunk_frames=chunk_frames, max_frames=max_frames)
        return 0
    start_wall, start_cpu = time.perf_counter(), time.process_time()
    phonemes, synthesis = synthesise(model, text, max_frames=max_frames)
    n = int(synthesis.lengths[0])
    wav = vocode(synthesis.mels[0, :n], args.vocoder)
    wall, cpu = time.perf_counter() - start_wall, time.process_time() - start_cpu
    write_wav(args.out, wav)
    seconds = n * HOP / SAMPLE_RATE
    print(f"phonemes: {phonemes}")
    if not bool(synthesis.stopped[0]):
        print(f"note: the stop token did not fire; generation was cut at {n} frames ({seconds:.2f} s), the limit")
    print(f"wrote {args.out}: {seconds:.2f} s of audio; synthesis + {args.vocoder} {wall:.2f} s wall, {cpu:.2f} s CPU: "
          f"real-time factor {wall / seconds:.2f}")
    if args.plot:
        plot(args.plot, synthesis, text)
        print(f"wrote {args.plot}")
    return 0
