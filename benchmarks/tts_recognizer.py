"""The TTS intelligibility check (issue 32): train the CTC phoneme recogniser, score it on the real audio.

- ``--train``: :class:`seqmix.apps.tts.recognizer.PhonemeRecognizer` on the log-mels of the corpus's espeak-ng
  **training** audio (``seqmix tts prepare``), AdamW, linear warm-up then a cosine to 10% over a budget of
  ``--cpu-minutes`` of this process's CPU time (a budget others' jobs on the shared cores do not shrink; the
  mels are computed inside it), batches of sentences of similar length; written to ``--out`` (default
  ``checkpoints/tts/recognizer.pt``) and recorded in ``benchmarks/results/tts_runs.json`` (``recognizer``);
- ``--score-real``: its greedy transcripts of the first ``--limit`` test sentences' real espeak-ng audio, of
  that audio through Griffin-Lim (the vocoder floor), and of the first ``--hifigan-limit`` through HiFi-GAN
  (``per:real``, ``per:griffin-lim``, ``per:hifigan`` in the same cache; benchmarks/tts.py renders them beside
  each TTS system's PER).

    python -m benchmarks.tts_recognizer --train --cpu-minutes 9 --threads 1
    python -m benchmarks.tts_recognizer --score-real --limit 200 --hifigan-limit 40
"""

from __future__ import annotations

import argparse
import math
import random
import time
from pathlib import Path

import torch

from benchmarks.common import RESULTS_DIR, Stopwatch, add_cached_run, file_digest, git_commit, utc_now
from seqmix.apps.tts.audio import SAMPLE_RATE, decode_wav, griffin_lim, mel_spectrogram
from seqmix.apps.tts.corpus import check_wav, default_root, read_manifest
from seqmix.apps.tts.recognizer import (PhonemeRecognizer, inventory, load_recognizer, phoneme_error_rate,
                                        recognition_symbols, save_recognizer)
from seqmix.core.blocks import mixer_factory

RUNS = RESULTS_DIR / "tts_runs.json"
DEFAULT_OUT = Path("checkpoints/tts/recognizer.pt")


def split_entries(split: str, limit: int | None = None):
    manifest = default_root() / "manifest.jsonl"
    return [e for e in read_manifest(manifest) if e.split == split][:limit], manifest.parent


def entry_mel(entry, root: Path) -> torch.Tensor:
    """The log-mel ``[T, 80]`` of a corpus sentence's WAV (sha256 checked)."""
    wav, rate = decode_wav(check_wav(entry, root), entry.wav)
    assert rate == SAMPLE_RATE, f"{entry.wav}: {rate} Hz"
    return mel_spectrogram(wav).T.contiguous()  # [80, T] -> [T, 80]


def pad_batch(mels: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([m.shape[0] for m in mels])
    out = torch.zeros(len(mels), int(lengths.max()), mels[0].shape[1])  # [B, T, 80]
    for b, m in enumerate(mels):
        out[b, : m.shape[0]] = m.float()
    return out, lengths


def transcripts(model: PhonemeRecognizer, mels: list[torch.Tensor], batch_size: int = 8) -> list[list[str]]:
    out = []
    for i in range(0, len(mels), batch_size):
        out.extend(model.transcribe(*pad_batch(mels[i: i + batch_size])))
    return out


def train(args) -> dict:
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    with Stopwatch() as watch:
        cpu_start = time.process_time()
        entries, root = split_entries("train", args.train_sentences)
        symbols = inventory([e.phonemes for e in entries])
        config = {"symbols": symbols, "d_model": args.d_model, "n_layers": args.layers, "stride": 2,
                  "mixer": {"name": args.mixer, "args": {"n_heads": 4, "causal": False,
                                                         **({"rotary": True} if args.mixer == "softmax" else {})}}}
        model = PhonemeRecognizer(symbols, d_model=args.d_model, n_layers=args.layers, stride=2,
                                  mixer=mixer_factory(args.mixer, **config["mixer"]["args"]))
        mels = [entry_mel(e, root).half() for e in entries]  # [T, 80] each, float16 to halve the memory
        targets = [torch.tensor(model.encode(e.phonemes)) for e in entries]
        val_entries, _ = split_entries("val", args.val_sentences)
        val_mels = [entry_mel(e, root) for e in val_entries]
        val_refs = [recognition_symbols(e.phonemes) for e in val_entries]
        print(f"recogniser: {len(entries)} training sentences, {len(symbols) - 1} symbols, mels in "
              f"{time.process_time() - cpu_start:.0f} CPU s", flush=True)
        opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
        budget = 60.0 * args.cpu_minutes
        order = sorted(range(len(entries)), key=lambda i: mels[i].shape[0])
        step, log = 0, []
        while time.process_time() - cpu_start < budget:
            # batches of neighbours in length (little padding), in random order
            batches = [order[i: i + args.batch_size] for i in range(0, len(order), args.batch_size)]
            rng.shuffle(batches)
            for batch in batches:
                elapsed = time.process_time() - cpu_start
                if elapsed >= budget:
                    break
                warm = min(1.0, (step + 1) / args.warmup)
                progress = min(1.0, elapsed / budget)
                lr = args.lr * warm * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))
                for group in opt.param_groups:
                    group["lr"] = lr
                model.train()
                x, lengths = pad_batch([mels[i] for i in batch])
                y = torch.nn.utils.rnn.pad_sequence([targets[i] for i in batch], batch_first=True)
                loss = model.loss(x, lengths, y, torch.tensor([len(targets[i]) for i in batch]))
                opt.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                step += 1
                if step % args.eval_every == 0:
                    model.eval()
                    per = phoneme_error_rate(val_refs, transcripts(model, val_mels))
                    log.append({"step": step, "cpu_s": time.process_time() - cpu_start, "loss": float(loss),
                                "val_per": per})
                    print(f"step {step} ({time.process_time() - cpu_start:.0f} CPU s): CTC loss {float(loss):.3f}, "
                          f"val PER ({len(val_refs)} sentences) {per:.3f}", flush=True)
        model.eval()
        val_per = phoneme_error_rate(val_refs, transcripts(model, val_mels))
    path = save_recognizer(model, args.out, {k: v for k, v in config.items()})
    run = {"steps": step, "wall_s": watch.wall_s, "cpu_s": watch.cpu_s, "cpu_minutes": args.cpu_minutes,
           "val_per": val_per, "val_sentences": len(val_refs), "log": log, "checkpoint": str(path),
           "checkpoint_sha": file_digest(path), "params": sum(p.numel() for p in model.parameters()),
           "config": {k: v for k, v in config.items() if k != "symbols"}, "n_symbols": len(symbols) - 1,
           "seed": args.seed, "lr": args.lr,
           "batch_size": args.batch_size, "threads": torch.get_num_threads(), "commit": git_commit(),
           "date": utc_now(), "command": "python -m benchmarks.tts_recognizer " + " ".join(args.argv)}
    add_cached_run(RUNS, "recognizer", run)
    print(f"recogniser: {step} steps, {watch.cpu_s:.0f} CPU s, {watch.wall_s:.0f} wall s, val PER {val_per:.3f} "
          f"-> {path}")
    return run


def score_real(args) -> None:
    """PER of the real test audio, and of it through Griffin-Lim and HiFi-GAN (module docstring)."""
    from seqmix.apps.tts.vocoder import load_hifigan

    model = load_recognizer(args.out)
    entries, root = split_entries("test", args.limit)
    generator = load_hifigan("universal") if args.hifigan_limit else None
    kinds = {"real": [], "griffin-lim": [], "hifigan": []}
    for n, entry in enumerate(entries):
        mel = entry_mel(entry, root)  # [T, 80]
        kinds["real"].append(mel)
        kinds["griffin-lim"].append(mel_spectrogram(griffin_lim(mel.T)).T)
        if n < args.hifigan_limit:
            with torch.inference_mode():
                kinds["hifigan"].append(mel_spectrogram(generator(mel.T[None])[0]).T)
        if (n + 1) % 20 == 0:
            print(f"vocoded {n + 1}/{len(entries)}", flush=True)
    for kind, mels in kinds.items():
        refs = [recognition_symbols(e.phonemes) for e in entries[: len(mels)]]
        hyps = transcripts(model, mels)
        per = phoneme_error_rate(refs, hyps)
        add_cached_run(RUNS, f"per:{kind}", {
            "ids": [e.id for e in entries[: len(mels)]], "hypotheses": ["".join(h) for h in hyps],
            "references": ["".join(r) for r in refs], "per": per,
            "recognizer_sha": file_digest(Path(args.out)), "commit": git_commit(), "date": utc_now()})
        print(f"PER {kind} ({len(mels)} test sentences): {per:.3f}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", action="store_true")
    parser.add_argument("--score-real", action="store_true")
    parser.add_argument("--cpu-minutes", type=float, default=9.0)
    parser.add_argument("--mixer", default="softmax", help="a registered non-causal mixer")
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup", type=int, default=150)
    parser.add_argument("--eval-every", type=int, default=150)
    parser.add_argument("--train-sentences", type=int, default=None, help="only the first N (quick checks)")
    parser.add_argument("--val-sentences", type=int, default=40)
    parser.add_argument("--limit", type=int, default=200, help="test sentences scored (--score-real)")
    parser.add_argument("--hifigan-limit", type=int, default=40, help="of which also through HiFi-GAN")
    parser.add_argument("--out", default=str(DEFAULT_OUT))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    import sys
    args.argv = sys.argv[1:] if argv is None else argv
    torch.set_num_threads(args.threads)
    if args.train:
        train(args)
    if args.score_real:
        score_real(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
