"""TTS models (issue 32): train under a time budget, then score on test sentences; time a training step each.

Four parts, each cached in ``benchmarks/results/tts_runs.json`` and rendered into ``benchmarks/results/tts.md``
(+ ``tts.png``: target vs synthesised mel and the alignment of test-0000 for each model):

- ``--train NAME=CONFIG``: ``seqmix tts fit --config CONFIG`` in this process until ``--cpu-minutes`` of process
  CPU time (a budget that others' jobs on the 2 shared cores do not shrink, unlike wall clock) or
  ``--max-steps`` (the cosine's span), with ``--fit-args`` passed on; records the steps, wall and CPU
  seconds, the best checkpoint (by val/mel_l1);
- ``--score NAME`` (a trained run): on the first ``--limit`` test sentences, teacher forced (mel L1 after the
  post-net, stop accuracy, attention diagonality) and free running, one sentence at a time (mel L1 over the
  common length, duration ratio, share stopped by the stop token, MCD-DTW of the Griffin-Lim audio against
  espeak-ng's, seconds of synthesis + vocoder per second of audio) and ``predict``'s real-time factor on a
  10-word sentence;
- ``--score-teacher-forced NAME``: the teacher-forced mels of the first ``--limit`` test sentences through the
  vocoders and the recogniser (:func:`score_teacher_forced`): the PER of a frame predictor given the true
  history, beside free running's in the intelligibility table;
- ``--time-steps NAME...``: seconds per training step (forward, backward, AdamW) of each trained run's network
  on one fixed batch of 16 training sentences, interleaved (run it under /tmp/quiet/quiet.sh: a paused machine).

    python -m benchmarks.tts --train transformer_tts=configs/tts/transformer_tts.yaml --cpu-minutes 6 \\
        --fit-args "--data.max_frames 400"
    python -m benchmarks.tts --score transformer_tts tacotron --limit 20
    python -m benchmarks.tts --time-steps transformer_tts tacotron
    python -m benchmarks.tts --render
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
from pytorch_lightning import Callback

from benchmarks.common import (RESULTS_DIR, Stopwatch, add_cached_run, file_digest, git_commit, header,
                               markdown_table, read_run_cache, save_figure, time_calls, utc_now, write_result)
from seqmix.apps.tts.audio import HOP, SAMPLE_RATE, griffin_lim, mel_spectrogram, read_wav
from seqmix.apps.tts.commands import load_model, synthesise
from seqmix.apps.tts.data import PhonemeVocabulary, TTSDataModule, collate
from seqmix.apps.tts.metrics import mcd_dtw
from seqmix.apps.tts.module import diagonality, step_targets
from seqmix.apps.tts.recognizer import load_recognizer, phoneme_error_rate, recognition_symbols

RUNS = RESULTS_DIR / "tts_runs.json"
RECOGNIZER = Path("checkpoints/tts/recognizer.pt")  # benchmarks/tts_recognizer.py
TEN_WORDS = "The model reads a short sentence and speaks it aloud."  # 10 words
PAPER_SPEEDUP = 4.25  # Li et al. 2019: Transformer TTS trains 4.25x faster per step than Tacotron 2


class CPUBudget(Callback):
    """Stops training once this process has used ``minutes`` of CPU time (all its threads): a budget that the
    other jobs on the shared cores (and /tmp/quiet/quiet.sh pausing every python process) do not shrink."""

    def __init__(self, minutes: float) -> None:
        self.seconds, self.start = 60.0 * minutes, 0.0

    def on_train_start(self, trainer, pl_module) -> None:
        self.start = time.process_time()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if time.process_time() - self.start >= self.seconds:
            trainer.should_stop = True


def train(name: str, config: str, cpu_minutes: float, max_steps: int, fit_args: list[str], seed: int) -> dict:
    from seqmix.cli import app_cli, load_app

    run_dir = Path("runs") / "tts_bench" / name
    argv = ["--config", config, "--seed_everything", str(seed), "--trainer.max_steps", str(max_steps),
            "--trainer.max_epochs", "-1", "--trainer.default_root_dir", str(run_dir),
            "--trainer.logger.init_args.save_dir", str(run_dir), *fit_args]
    cli = app_cli(load_app("tts"), argv, run=False)
    cli.trainer.callbacks.append(CPUBudget(cpu_minutes))
    with Stopwatch() as watch:
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    callback = cli.trainer.checkpoint_callback
    checkpoint = callback.best_model_path or callback.last_model_path
    run = {"name": name, "config": config, "config_sha": file_digest(Path(config)), "cpu_minutes": cpu_minutes,
           "max_steps": max_steps, "fit_args": fit_args, "seed": seed, "steps": int(cli.trainer.global_step),
           "wall_s": watch.wall_s, "cpu_s": watch.cpu_s, "checkpoint": checkpoint,
           "best_val_mel_l1": float(callback.best_model_score) if callback.best_model_score is not None else None,
           "commit": git_commit(), "date": utc_now(), "command": "seqmix tts fit " + shlex.join(argv),
           "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    add_cached_run(RUNS, f"train:{name}", run)
    print(f"{name}: {run['steps']} steps, {watch.wall_s:.0f} s wall, {watch.cpu_s:.0f} s CPU -> {checkpoint}")
    return run


def test_data(limit: int, symbols: list[str]) -> TTSDataModule:
    """The first ``limit`` sentences of each split, encoded with a checkpoint's phoneme vocabulary ``symbols``."""
    data = TTSDataModule(batch_size=1, max_sentences=limit)
    data.setup("test")
    for split in data.splits.values():
        split.vocabulary = PhonemeVocabulary(symbols)
    return data


def transcribe(recognizer, audio: torch.Tensor) -> str:
    """The recogniser's greedy transcript of ``audio [N]`` (its log-mels, as the training audio's)."""
    mel = mel_spectrogram(audio).T[None]  # [80, T] -> [1, T, 80]
    return "".join(recognizer.transcribe(mel, torch.tensor([mel.shape[1]]))[0])


def listen(mel: torch.Tensor, reference: torch.Tensor, recognizer, generator=None) -> dict:
    """A log-mel ``[80, T]`` heard as every scored system is: its Griffin-Lim audio's MCD-DTW against the espeak-ng
    ``reference`` waveform, the recogniser's transcript and the Griffin-Lim seconds; with a HiFi-GAN ``generator``
    also that vocoder's MCD-DTW and transcript."""
    start = time.perf_counter()
    audio = griffin_lim(mel)
    heard = {"vocoder_s": time.perf_counter() - start, "mcd": mcd_dtw(audio, reference),
             "gl_transcript": transcribe(recognizer, audio)}
    if generator is not None:
        with torch.inference_mode():
            audio = generator(mel)
        heard.update({"hifigan_mcd": mcd_dtw(audio, reference), "hifigan_transcript": transcribe(recognizer, audio)})
    return heard


def scoring_parts(name: str, hifigan: bool) -> tuple[dict, object, object, object]:
    """``(run record, model, recogniser, HiFi-GAN generator or None)`` for scoring the trained run ``name``."""
    from seqmix.apps.tts.vocoder import load_hifigan

    run = read_run_cache(RUNS)[f"train:{name}"]
    return (run, load_model(run["checkpoint"]), load_recognizer(RECOGNIZER),
            load_hifigan("universal") if hifigan else None)


def score(name: str, limit: int, hifigan_limit: int = 0, resume: bool = False) -> dict:
    """Scores of ``name``'s checkpoint on the first ``limit`` test sentences (module docstring); the first
    ``hifigan_limit`` also through HiFi-GAN (MCD-DTW and the recogniser's transcript). ``resume``: keep the
    sentences a previous score of the same checkpoint has, score only the rest (each sentence is scored alone,
    so the rows do not depend on the order; the pre-net's inference dropout draws from a seed per run)."""
    run, model, recognizer, generator = scoring_parts(name, hifigan_limit > 0)
    start_wall, start_cpu = time.perf_counter(), time.process_time()
    network = model.network
    data = test_data(limit, network.symbols)
    entries = data.splits["test"].entries
    rows, spent = [], {"wall_s": 0.0, "cpu_s": 0.0}
    previous = read_run_cache(RUNS).get(f"score:{name}")
    if resume and previous and previous["checkpoint_sha"] == file_digest(Path(run["checkpoint"])):
        rows = previous["rows"][:limit]  # the first sentences, scored before (same checkpoint): kept
        spent = previous.get("scoring", spent)
        print(f"{name}: keeping the {len(rows)} sentences scored before", flush=True)
    torch.manual_seed(0)
    for n, entry in enumerate(entries):
        if n < len(rows):
            continue
        batch = collate([data.splits["test"][n]])
        with torch.no_grad():
            out = network(batch.phonemes, batch.phoneme_lengths, batch.mels)
            frames = int(batch.mel_lengths[0])
            tf_l1 = float((out.mel_after[0, :frames] - batch.mels[0, :frames]).abs().mean())
            stop, valid = step_targets(batch.mel_lengths, out.stop_logits.shape[1], network.frames_per_step)
            stop_acc = float((((out.stop_logits > 0).float() == stop).float() * valid).sum() / valid.sum())
            diag = (float(diagonality(out.alignment, batch.phoneme_lengths, valid.sum(1)))
                    if out.alignment is not None else float("nan"))
            start = time.perf_counter()
            synthesis = network.infer(batch.phonemes, batch.phoneme_lengths,
                                      max_frames=min(network.max_frames, 2 * frames + 30))
            synth_s = time.perf_counter() - start
        length = int(synthesis.lengths[0])
        common = min(length, frames)
        reference, _ = read_wav(data.manifest.parent / entry.wav)
        rows.append({"id": entry.id, "tf_mel_l1": tf_l1, "stop_acc": stop_acc, "diagonality": diag,
                     "free_mel_l1": float((synthesis.mels[0, :common] - batch.mels[0, :common]).abs().mean()),
                     "duration_ratio": length / frames, "stopped": bool(synthesis.stopped[0]), "synth_s": synth_s,
                     "seconds": length * HOP / SAMPLE_RATE, "reference": "".join(recognition_symbols(entry.phonemes)),
                     **listen(synthesis.mels[0, :length].T, reference, recognizer,
                              generator if n < hifigan_limit else None)})
        print(f"{name} {n + 1}/{len(entries)} {entry.id}: MCD-DTW {rows[-1]['mcd']:.2f} dB, duration ratio "
              f"{rows[-1]['duration_ratio']:.2f}, {time.process_time() - start_cpu:.0f} CPU s", flush=True)
    scoring = {"wall_s": spent["wall_s"] + time.perf_counter() - start_wall,
               "cpu_s": spent["cpu_s"] + time.process_time() - start_cpu}
    start_wall, start_cpu = time.perf_counter(), time.process_time()
    _, synthesis = synthesise(model, TEN_WORDS)
    length = int(synthesis.lengths[0])
    griffin_lim(synthesis.mels[0, :length].T)
    predict = {"text": TEN_WORDS, "wall_s": time.perf_counter() - start_wall, "cpu_s": time.process_time() - start_cpu,
               "audio_s": length * HOP / SAMPLE_RATE, "stopped": bool(synthesis.stopped[0])}
    result = {"name": name, "limit": limit, "hifigan_limit": min(hifigan_limit, len(rows)),
              "checkpoint_sha": file_digest(Path(run["checkpoint"])), "recognizer_sha": file_digest(RECOGNIZER),
              "rows": rows, "predict": predict, "scoring": scoring, "threads": torch.get_num_threads(),
              "load": list(os.getloadavg()), "commit": git_commit(), "date": utc_now()}
    add_cached_run(RUNS, f"score:{name}", result)
    return result


def score_teacher_forced(name: str, limit: int, hifigan_limit: int = 0) -> dict:
    """What ``name``'s frame predictor says when the history is right: each of the first ``limit`` test sentences'
    teacher-forced mel (every decoder step fed the espeak-ng frames before it, the post-net's output, the reference's
    own length) through Griffin-Lim (the first ``hifigan_limit`` also through HiFi-GAN), scored like a synthesis
    (MCD-DTW, the recogniser's transcript). Set beside free running's PER, it separates a weak frame predictor from
    one that fails only on its own output (exposure bias). An optimistic bound: the true frames are a crutch that
    free running never has."""
    run, model, recognizer, generator = scoring_parts(name, hifigan_limit > 0)
    network = model.network
    data = test_data(limit, network.symbols)
    start_wall, start_cpu = time.perf_counter(), time.process_time()
    rows = []
    torch.manual_seed(0)  # the pre-net's inference dropout (prenet_always_dropout) draws: a seeded run repeats
    for n, entry in enumerate(data.splits["test"].entries):
        batch = collate([data.splits["test"][n]])
        frames = int(batch.mel_lengths[0])
        with torch.no_grad():
            mel = network(batch.phonemes, batch.phoneme_lengths, batch.mels).mel_after[0, :frames].T  # [80, T]
        reference, _ = read_wav(data.manifest.parent / entry.wav)
        rows.append({"id": entry.id, "reference": "".join(recognition_symbols(entry.phonemes)),
                     **listen(mel, reference, recognizer, generator if n < hifigan_limit else None)})
        print(f"{name} teacher forced {n + 1}/{len(data.splits['test'].entries)} {entry.id}: MCD-DTW "
              f"{rows[-1]['mcd']:.2f} dB", flush=True)
    result = {"name": name, "limit": limit, "hifigan_limit": min(hifigan_limit, len(rows)),
              "checkpoint_sha": file_digest(Path(run["checkpoint"])), "recognizer_sha": file_digest(RECOGNIZER),
              "rows": rows, "scoring": {"wall_s": time.perf_counter() - start_wall,
                                        "cpu_s": time.process_time() - start_cpu},
              "threads": torch.get_num_threads(), "commit": git_commit(), "date": utc_now(),
              "command": "python -m benchmarks.tts " + shlex.join(sys.argv[1:])}
    add_cached_run(RUNS, f"teacher_forced:{name}", result)
    return result


def score_mean_spectrum(limit: int, train_sentences: int = 400) -> dict:
    """A reference "system" that has learned nothing but the voice's average: every test sentence is the mean
    log-mel frame of the first ``train_sentences`` training sentences, repeated for the reference's own number of
    frames (its duration given), through Griffin-Lim; scored like a model (MCD-DTW, the recogniser's transcript).
    What MCD-DTW gives a constant spectrum says how far from the floor it still ranks closeness."""
    recognizer = load_recognizer(RECOGNIZER)
    data = TTSDataModule(batch_size=1, max_sentences=max(limit, train_sentences))
    data.setup("test")
    start_wall, start_cpu = time.perf_counter(), time.process_time()
    frames = [data.splits["train"][i][2] for i in range(min(train_sentences, len(data.splits["train"])))]
    mean_frame = torch.cat(frames).mean(0)  # N x [T_i, 80] -> [sum T_i, 80] -> [80]
    rows = []
    for n, entry in enumerate(data.splits["test"].entries[:limit]):
        reference, _ = read_wav(data.manifest.parent / entry.wav)
        length = len(data.splits["test"][n][2])
        mel = mean_frame[:, None].expand(-1, length).contiguous()  # [80] -> [80, T]
        rows.append({"id": entry.id, "reference": "".join(recognition_symbols(entry.phonemes)),
                     **listen(mel, reference, recognizer)})
        print(f"mean spectrum {n + 1}/{limit} {entry.id}: MCD-DTW {rows[-1]['mcd']:.2f} dB", flush=True)
    result = {"limit": limit, "train_sentences": len(frames), "rows": rows, "recognizer_sha": file_digest(RECOGNIZER),
              "scoring": {"wall_s": time.perf_counter() - start_wall, "cpu_s": time.process_time() - start_cpu},
              "threads": torch.get_num_threads(), "commit": git_commit(), "date": utc_now(),
              "command": "python -m benchmarks.tts " + shlex.join(sys.argv[1:])}
    add_cached_run(RUNS, "reference:mean_spectrum", result)
    return result


def mean_spectrum_note(runs: dict) -> str:
    """One paragraph: the constant mean spectrum's MCD-DTW and PER on the scored test sentences."""
    result = runs.get("reference:mean_spectrum")
    if result is None:
        return ""
    rows = result["rows"]
    mcd = np.array([r["mcd"] for r in rows])
    per = rows_per(rows, "gl_transcript")
    return (f"\nA constant spectrum for reference (`--score-mean-spectrum`: the mean log-mel frame of "
            f"{result['train_sentences']} training sentences, repeated for each test sentence's own number of frames, "
            f"Griffin-Lim; commit {result['commit']}, {result['date']}): MCD-DTW **{mcd.mean():.2f} ± "
            f"{mcd.std(ddof=1) if len(mcd) > 1 else 0:.2f} dB**, PER {per:.3f}, on the first {len(rows)} test "
            "sentences. It says nothing, so an MCD-DTW near it does not rank closeness to the speech.\n")


def paired_mcd(a: dict, b: dict) -> str:
    """The paired MCD-DTW difference of two scored runs over their common sentences: mean, its standard error,
    the share of sentences where ``a`` is lower and the two-sided sign test's p-value."""
    from scipy.stats import binomtest

    b_by_id = {r["id"]: r["mcd"] for r in b["rows"]}
    d = np.array([r["mcd"] - b_by_id[r["id"]] for r in a["rows"] if r["id"] in b_by_id])
    lower = int((d < 0).sum())
    return (f"paired difference {d.mean():+.2f} dB (standard error {d.std(ddof=1) / np.sqrt(len(d)):.2f}), lower in "
            f"{lower} of {len(d)} sentences (sign test p = {binomtest(lower, len(d)).pvalue:.3g})")


def time_steps(names: list[str], batch_size: int, repeats: int) -> dict:
    data = TTSDataModule(batch_size=batch_size, max_sentences=batch_size)
    data.setup("fit")
    batch = collate([data.splits["train"][i] for i in range(batch_size)])
    calls, models = {}, {}
    for name in names:
        model = load_model(read_run_cache(RUNS)[f"train:{name}"]["checkpoint"]).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        models[name] = model

        def step(model=model, optimizer=optimizer) -> None:
            optimizer.zero_grad()
            model.loss_parts(batch)["loss"].backward()
            optimizer.step()

        calls[name] = step
    timings = time_calls(calls, warmup=1, repeats=repeats)
    result = {"batch_size": batch_size, "frames": int(batch.mel_lengths.sum()), "repeats": repeats,
              "median_s": {n: t.median_s for n, t in timings.items()}, "times_s": {n: t.times_s for n, t in timings.items()},
              "threads": torch.get_num_threads(), "load": list(os.getloadavg()), "commit": git_commit(),
              "date": utc_now()}
    add_cached_run(RUNS, "time_steps_swap" if all(n.startswith("swap_") for n in names) else "time_steps", result)
    print(json.dumps(result["median_s"]))
    return result


def time_predict(names: list[str], repeats: int) -> dict:
    """Wall seconds of ``predict``'s work on the 10-word sentence (phonemes, free-running synthesis, Griffin-Lim),
    each model's median of ``repeats`` interleaved runs (run it under /tmp/quiet/quiet.sh: a paused machine)."""
    models = {n: load_model(read_run_cache(RUNS)[f"train:{n}"]["checkpoint"]) for n in names}
    audio_s = {}

    def call(model, name):
        def run() -> None:
            torch.manual_seed(0)
            _, synthesis = synthesise(model, TEN_WORDS)
            length = int(synthesis.lengths[0])
            griffin_lim(synthesis.mels[0, :length].T)
            audio_s[name] = length * HOP / SAMPLE_RATE
        return run

    timings = time_calls({n: call(m, n) for n, m in models.items()}, warmup=1, repeats=repeats)
    result = {"text": TEN_WORDS, "repeats": repeats, "median_s": {n: t.median_s for n, t in timings.items()},
              "audio_s": audio_s, "threads": torch.get_num_threads(), "load": list(os.getloadavg()),
              "commit": git_commit(), "date": utc_now()}
    add_cached_run(RUNS, "time_predict", result)
    print(json.dumps({n: (result["median_s"][n], audio_s[n]) for n in names}))
    return result


def ship(name: str, path: Path) -> dict:
    """``name``'s best checkpoint without optimizer, scheduler, loop and callback state, at ``path`` (<= 40 MB)."""
    from seqmix.apps.files import save_checkpoint

    run = read_run_cache(RUNS)[f"train:{name}"]
    checkpoint = torch.load(run["checkpoint"], map_location="cpu", weights_only=True)
    slim = {k: v for k, v in checkpoint.items() if k not in ("optimizer_states", "lr_schedulers", "loops", "callbacks")}
    size = save_checkpoint(slim, path, max_bytes=40_000_000, too_big="train a smaller model")
    result = {"name": name, "path": str(path), "bytes": size, "sha": file_digest(path),
              "source": run["checkpoint"], "commit": git_commit(), "date": utc_now()}
    add_cached_run(RUNS, "shipped", result)
    print(f"shipped {name} -> {path} ({size / 1e6:.1f} MB)")
    return result


def figure(names: list[str]) -> Path | None:
    from seqmix.apps.files import pyplot

    runs = read_run_cache(RUNS)
    names = [n for n in names if f"train:{n}" in runs]
    if not names:
        return None
    networks = {n: load_model(runs[f"train:{n}"]["checkpoint"]).network for n in names}
    data = test_data(1, networks[names[0]].symbols)
    plt = pyplot()
    fig, axes = plt.subplots(len(names) + 1, 2, figsize=(13, 3 * (len(names) + 1)), squeeze=False)
    batch = collate([data.splits["test"][0]])
    target = batch.mels[0].T.numpy()
    axes[0, 0].imshow(target, origin="lower", aspect="auto", cmap="magma")
    axes[0, 0].set(title=f"{batch.ids[0]}: espeak-ng (target) log-mel", ylabel="mel band")
    axes[0, 1].axis("off")
    torch.manual_seed(0)
    for row, name in enumerate(names, 1):
        network = networks[name]
        data.splits["test"].vocabulary = PhonemeVocabulary(network.symbols)
        batch = collate([data.splits["test"][0]])
        synthesis = network.infer(batch.phonemes, batch.phoneme_lengths,
                                  max_frames=min(network.max_frames, 2 * int(batch.mel_lengths[0]) + 30))
        n = int(synthesis.lengths[0])
        axes[row, 0].imshow(synthesis.mels[0, :n].T.numpy(), origin="lower", aspect="auto", cmap="magma")
        axes[row, 0].set(title=f"{name}: synthesised (free running)", ylabel="mel band", xlabel="frame")
        if synthesis.alignment is not None:
            axes[row, 1].imshow(synthesis.alignment[0].T.numpy(), origin="lower", aspect="auto", cmap="viridis")
            axes[row, 1].set(title=f"{name}: encoder-decoder alignment", xlabel="decoder step", ylabel="phoneme")
    return save_figure(fig, "tts")


def per_on(kind: dict, ids: list[str]) -> float:
    """The recogniser's PER over the sentences ``ids`` of a ``per:*`` record."""
    hyps = dict(zip(kind["ids"], kind["hypotheses"]))
    refs = dict(zip(kind["ids"], kind["references"]))
    return phoneme_error_rate([refs[i] for i in ids], [hyps[i] for i in ids])


def rows_per(rows: list[dict], transcript: str) -> float:
    """The recogniser's PER over scored sentences ``rows``, reading the transcript under the key ``transcript``
    (``gl_transcript`` or ``hifigan_transcript``) against each row's ``reference``."""
    return phoneme_error_rate([r["reference"] for r in rows], [r[transcript] for r in rows])


def transcripts(rows: list[dict], transcript: str) -> dict:
    """A ``per:*``-shaped record (``ids``, ``references``, ``hypotheses``) of the scored ``rows`` that have the
    transcript ``transcript`` (``gl_transcript`` or ``hifigan_transcript``)."""
    kept = [r for r in rows if transcript in r]
    return {"ids": [r["id"] for r in kept], "references": [r["reference"] for r in kept],
            "hypotheses": [r[transcript] for r in kept]}


def intelligibility(runs: dict, names: list[str]) -> str:
    """The PER table: real audio, the vocoder floors and each system, on the same sentences."""
    rec = runs.get("recognizer")
    real = runs.get("per:real")
    if rec is None or real is None:
        return ""
    sets = {}
    for n in names:
        result = runs.get(f"score:{n}")
        if result and "gl_transcript" in result["rows"][0]:
            sets.setdefault("gl", [r["id"] for r in result["rows"]])
            hifi = transcripts(result["rows"], "hifigan_transcript")["ids"]
            if hifi:
                sets.setdefault("hifigan", hifi)
    if not sets:
        return ""
    gl_ids, hifi_ids = sets["gl"], sets.get("hifigan", [])
    rows = []

    def cell(kind: dict | None, ids: list[str]) -> str:
        if kind is None or not ids or not set(ids) <= set(kind["ids"]):
            return "-"
        return f"{per_on(kind, ids):.3f}"

    rows.append(["espeak-ng test audio (real)", cell(real, gl_ids), cell(real, hifi_ids)])
    rows.append(["real -> mel -> Griffin-Lim (floor)", cell(runs.get("per:griffin-lim"), gl_ids),
                 cell(runs.get("per:griffin-lim"), hifi_ids)])
    rows.append(["real -> mel -> HiFi-GAN (floor)", "-", cell(runs.get("per:hifigan"), hifi_ids)])
    for n in names:
        result = runs.get(f"score:{n}")
        if not result or "gl_transcript" not in result["rows"][0]:
            continue
        gl, hifi = transcripts(result["rows"], "gl_transcript"), transcripts(result["rows"], "hifigan_transcript")
        rows.append([f"{n} -> Griffin-Lim", cell(gl, gl_ids), cell(gl, hifi_ids)])
        rows.append([f"{n} -> HiFi-GAN", "-", cell(hifi, hifi_ids)])
        forced = runs.get(f"teacher_forced:{n}")
        if forced is not None:
            forced_gl = transcripts(forced["rows"], "gl_transcript")
            rows.append([f"{n}, teacher forced -> Griffin-Lim", cell(forced_gl, gl_ids), cell(forced_gl, hifi_ids)])
            rows.append([f"{n}, teacher forced -> HiFi-GAN", "-",
                         cell(transcripts(forced["rows"], "hifigan_transcript"), hifi_ids)])
    config = rec["config"]
    return ("\n## Intelligibility: the CTC phoneme recogniser's PER\n\n"
            f"Recogniser (seqmix/apps/tts/recognizer.py; `{rec['command']}`): conv front-end (stride 2) + "
            f"{config['n_layers']} x {config['mixer']['name']} blocks (d_model {config['d_model']}, non-causal), "
            f"{rec['params'] / 1e6:.2f}M parameters, CTC over {rec.get('n_symbols', 'the')} IPA symbols + "
            f"blank, greedy decoding; trained on the 4,000 training sentences' espeak-ng audio for "
            f"{rec['cpu_minutes']:g} CPU minutes ({rec['steps']} steps of {rec['batch_size']}, {rec['cpu_s']:.0f} CPU s, "
            f"{rec['wall_s']:.0f} wall s, seed {rec['seed']}, commit {rec['commit']}); its PER on the first "
            f"{rec['val_sentences']} val sentences: {rec['val_per']:.3f}. PER: edit distance over the reference's "
            "IPA characters without stress marks, word spaces and punctuation, summed over the sentences / their "
            "length. Each column is one set of test sentences (the first N), the same for every row. \"teacher "
            "forced\": the model's mel when every decoder step is fed the espeak-ng frames before it (`--score-teacher-"
            "forced`), the reference's own length: what the frame predictor says given the true history, an "
            "optimistic bound that separates a weak predictor from one that drifts on its own output.\n\n"
            + markdown_table(["audio", f"PER, first {len(gl_ids)}", f"PER, first {len(hifi_ids)}"], rows))


def swap_label(name: str, cpu_minutes: float) -> str:
    """The mixer of a swap run's name: ``swap_MIXER`` or, at another budget, ``swap_MIXER_<minutes>``."""
    return name.removeprefix("swap_").removesuffix(f"_{cpu_minutes:g}")


def swap_table(runs: dict) -> str:
    """The mixer-swap tables (``--train swap_MIXER[_<minutes>]=...``): encoder and decoder self mixers swapped,
    equal budget; one table per budget. Time per step is the network's, from ``--time-steps`` of the budget's runs
    or, where those were not timed, of the same mixer's ``swap_MIXER`` run (the same network)."""
    names = [k.split(":", 1)[1] for k in runs if k.startswith("train:swap_")]
    if not names:
        return ""
    steps = runs.get("time_steps_swap", {}).get("median_s", {})
    budgets = sorted({runs[f"train:{n}"]["cpu_minutes"] for n in names})
    text = ("\n## Mixer swap (encoder and decoder self mixers; cross attention stays softmax)\n\n"
            "Each budget's runs at 1 thread, side by side, fit args as the main runs but validation every 40 steps "
            "and the cosine over the budget; scored on the first N test sentences with Griffin-Lim; time per step "
            "as above (paused machine, one fixed batch of 16); peak RSS: the training process's maximum resident "
            "memory (data, model, activations). Commands: `python -m benchmarks.tts --threads 1 --train "
            "swap_MIXER[_MINUTES]=CONFIG --cpu-minutes MINUTES --max-steps 100000 --fit-args '<the main runs' with "
            "--trainer.val_check_interval 40 --model.budget_minutes MINUTES>'`, `--score swap_MIXER[_MINUTES] --limit "
            "N`, under quiet.sh `--time-steps swap_softmax swap_gla swap_lstm swap_lightnet --repeats 3`; each run's "
            "exact command is in tts_runs.json.\n")
    for budget in budgets:
        group = [n for n in names if runs[f"train:{n}"]["cpu_minutes"] == budget]
        rows = []
        for n in group:
            r, result, label = runs[f"train:{n}"], runs.get(f"score:{n}"), swap_label(n, budget)
            cells = [label, r["config"], r["steps"], f"{r['cpu_s']:.0f}",
                     f"{r['best_val_mel_l1']:.3f}" if r["best_val_mel_l1"] is not None else "-"]
            if result:
                rows_ = result["rows"]
                cells += [len(rows_), f"{np.mean([x['mcd'] for x in rows_]):.2f}",
                          f"{rows_per(rows_, 'gl_transcript'):.3f}",
                          f"{np.mean([x['free_mel_l1'] for x in rows_]):.3f}",
                          f"{np.nanmean([x['diagonality'] for x in rows_]):.3f}",
                          f"{sum(x['stopped'] for x in rows_)}/{len(rows_)}"]
            else:
                cells += ["-"] * 6
            step_s = steps.get(n, steps.get(f"swap_{label}"))
            cells += [f"{step_s:.3f}" if step_s is not None else "-",
                      f"{r['peak_rss_mb']:.0f}" if "peak_rss_mb" in r else "-"]
            rows.append(cells)
        trained = [runs[f"train:{n}"] for n in group]
        commits = ", ".join(sorted({r["commit"] for r in trained}))
        dates = sorted(r["date"] for r in trained)
        when = dates[0] if dates[0] == dates[-1] else f"{dates[0]} to {dates[-1]}"
        text += (f"\n### {budget:g} CPU minutes each\n\nTrained at {commits}; ended {when}.\n\n"
                 + markdown_table(["mixer", "config", "steps", "CPU s", "best val mel L1", "N", "MCD-DTW dB",
                                   "PER (GL)", "mel L1 (free)", "diagonality", "stopped", "s / step", "peak RSS MB"],
                                  rows))
    return text


def pairs(runs: dict) -> list[tuple[str, str]]:
    """The compared pairs: ``transformer_tts<S>`` and ``tacotron<S>`` trained with the same suffix ``S`` (one budget,
    e.g. ``_45``), both scored; in the order of their budgets."""
    found = [(f"transformer_tts{suffix}", f"tacotron{suffix}") for suffix in
             (k.removeprefix("train:transformer_tts") for k in runs if k.startswith("train:transformer_tts"))
             if f"score:transformer_tts{suffix}" in runs and f"score:tacotron{suffix}" in runs]
    return sorted(found, key=lambda pair: runs[f"train:{pair[0]}"]["cpu_minutes"])


def verdicts(runs: dict) -> str:
    """The issue's targets, met or not, with their figures: targets 1 and 2 for each budget's pair."""
    lines = []
    steps = runs.get("time_steps", {}).get("median_s", {})
    ratio = steps["tacotron"] / steps["transformer_tts"] if {"tacotron", "transformer_tts"} <= set(steps) else None
    for transformer, tacotron in pairs(runs):
        a, b = runs[f"score:{transformer}"], runs[f"score:{tacotron}"]
        budget = runs[f"train:{transformer}"]["cpu_minutes"]
        n = min(len(a["rows"]), len(b["rows"]))
        ma, mb = (np.mean([r["mcd"] for r in x["rows"][:n]]) for x in (a, b))
        met = ma < mb and (ratio is None or ratio > 1)
        lines.append(f"- **Target 1** at {budget:g} CPU minutes each ({transformer} vs {tacotron}; Transformer TTS "
                     f"reaches a lower MCD-DTW (Griffin-Lim) than the Tacotron-style baseline at the same budget, and "
                     f"its step is faster): **{'met' if met else 'not met'}**: MCD-DTW {ma:.2f} vs {mb:.2f} dB on the "
                     f"first {n} test sentences ({'lower' if ma < mb else 'not lower'}; {paired_mcd(a, b)})"
                     + (f"; Tacotron / Transformer time per step {ratio:.2f}x (paper: {PAPER_SPEEDUP}x: "
                        f"{'faster' if ratio > 1 else 'not faster'})" if ratio else "")
                     + f"; the budget: {budget:g} process-CPU minutes at 1 thread each, the two side by side on the "
                     "2 cores (the issue allows 45 minutes each on 2 cores).")
    real = runs.get("per:real")
    for transformer, _ in pairs(runs):
        a = runs[f"score:{transformer}"]
        rows = [r for r in a["rows"] if "hifigan_transcript" in r]
        if not real or not rows:
            continue
        ids = [r["id"] for r in rows]
        tts = rows_per(rows, "hifigan_transcript")
        base = per_on(real, ids)
        lines.append(f"- **Target 2** ({transformer}: PER on Transformer TTS + HiFi-GAN at most twice the PER on the "
                     f"real audio): **{'met' if tts <= 2 * base else 'not met'}**: {tts:.3f} vs 2 x {base:.3f} = "
                     f"{2 * base:.3f} on the first {len(ids)} test sentences.")
    predict = runs.get("time_predict")
    shipped = runs.get("shipped", {}).get("name", "transformer_tts")  # the model `predict` users get
    if predict and shipped in predict["median_s"]:
        rtf = predict["median_s"][shipped] / predict["audio_s"][shipped]
        lines.append(f"- **Target 3** (predict faster than real time with Griffin-Lim, 10 words, CPU): "
                     f"**{'met' if rtf < 1 else 'not met'}**: real-time factor {rtf:.2f} "
                     f"({shipped}, the shipped checkpoint; {predict['threads']} threads, paused machine).")
    return "\n## Targets\n\n" + "\n".join(lines) + "\n" if lines else ""


def render() -> Path:
    runs = read_run_cache(RUNS)
    names = [k.split(":", 1)[1] for k in runs if k.startswith("train:") and not k.startswith("train:swap_")]
    train_rows = []
    for n in names:
        r = runs[f"train:{n}"]
        best = "-" if r["best_val_mel_l1"] is None else f"{r['best_val_mel_l1']:.3f}"
        budget = (f"{r['cpu_minutes']:g} CPU min (the cosine over it)" if "--model.budget_minutes" in r["fit_args"]
                  else f"{r['cpu_minutes']:g} CPU min / {r['max_steps']} steps")
        step = torch.load(r["checkpoint"], map_location="cpu", weights_only=True)["global_step"]
        train_rows.append([n, r["config"], budget,
                           " ".join(r["fit_args"]) or "-", f"{r['steps']} (checkpoint: {step})", f"{r['wall_s']:.0f}", f"{r['cpu_s']:.0f}",
                           best, r["seed"], r["commit"]])
    text = header("TTS: Transformer TTS vs the Tacotron-2-style baseline on the espeak-ng corpus", notes=[
        "corpus: `seqmix tts prepare` (espeak-ng en-us speaking ACLSum sentences; docs/tts.md); vocoder Griffin-Lim "
        "60 iterations; MCD-DTW as benchmarks/results/tts_vocoder_floor.md (its Griffin-Lim floor: 16.63 dB)",
        "training runs share the 2 cores with other jobs: wall seconds depend on the load, CPU seconds less so",
        "budget: process CPU minutes at 1 torch thread, the same for the two models of a pair (transformer_tts<S> "
        "and tacotron<S>), run side by side: 12 CPU minutes (no suffix; 8 helpers shared the 2 cores, 46 minutes of "
        "wall clock each) and 45 CPU minutes (`_45`; two MQAR runs shared the cores, 74 minutes of wall clock each), "
        "both within the issue's 45 minutes x 2 cores",
        "pipeline (each part's own command, commit and date are in tts_runs.json and below): `python -m "
        "benchmarks.tts --threads 1 --train NAME=configs/tts/CONFIG.yaml --cpu-minutes M --max-steps 100000 "
        "--fit-args '--data.max_frames 700 --trainer.limit_val_batches 2 --trainer.val_check_interval 60 "
        "--trainer.enable_progress_bar false --trainer.log_every_n_steps 10 --model.budget_minutes M "
        "--model.budget_clock cpu'` with M = 12 or 45 (the two of a pair side by side); "
        "`python -m benchmarks.tts_recognizer --train "
        "--cpu-minutes 10 --threads 1 --lr 1.5e-3 --warmup 100 --eval-every 100`; `python -m "
        "benchmarks.tts_recognizer --score-real --limit 200 --hifigan-limit 20 --threads 1`; under "
        "/tmp/quiet/quiet.sh: `python -m benchmarks.tts --threads 1 --time-steps transformer_tts tacotron "
        "--time-predict transformer_tts tacotron --repeats 3`; `python -m benchmarks.tts --threads 1 --score NAME "
        "--limit 100 --hifigan-limit 20` (the two side by side), then the same with `--limit 200 --resume` (sentences "
        "100-199 added); the `_45` pair: `--score NAME --limit 200 --hifigan-limit 20` (side by side); "
        "`python -m benchmarks.tts --threads 2 --score-mean-spectrum --limit 200`; `python -m benchmarks.tts "
        "--threads 1 --score-teacher-forced transformer_tts_45 tacotron_45 --limit 20 --hifigan-limit 20`"])
    text += "## Training runs\n\n" + markdown_table(
        ["run", "config", "budget", "extra fit args", "steps (scored checkpoint: best val mel L1, validated every 60 steps)", "wall s", "CPU s", "best val mel L1", "seed",
         "commit"],
        train_rows)
    score_rows = []
    for n in names:
        result = runs.get(f"score:{n}")
        if result is None:
            continue
        rows = result["rows"]

        def mean(key: str) -> float:
            return float(np.nanmean([r[key] for r in rows]))

        rtf = sum(r["synth_s"] + r["vocoder_s"] for r in rows) / sum(r["seconds"] for r in rows)
        hifi = [r for r in rows if "hifigan_mcd" in r]
        mcd = np.array([r["mcd"] for r in rows])
        score_rows.append([n, len(rows), f"{mcd.mean():.2f} ± {mcd.std(ddof=1) if len(rows) > 1 else 0:.2f}",
                           f"{np.mean([r['hifigan_mcd'] for r in hifi]):.2f} ({len(hifi)})" if hifi else "-",
                           f"{mean('tf_mel_l1'):.3f}", f"{mean('free_mel_l1'):.3f}",
                           f"{mean('stop_acc'):.3f}", f"{mean('duration_ratio'):.2f}",
                           f"{sum(r['stopped'] for r in rows)}/{len(rows)}", f"{mean('diagonality'):.3f}",
                           f"{rtf:.2f}", f"{result['scoring']['cpu_s']:.0f} / {result['scoring']['wall_s']:.0f}"
                           if "scoring" in result else "-"])
    if score_rows:
        text += ("\n## Test sentences (the first N of the 200)\n\n" + markdown_table(
            ["run", "N", "MCD-DTW dB, Griffin-Lim (mean ± sd)", "MCD-DTW dB, HiFi-GAN (first N)",
             "mel L1 (teacher forced)", "mel L1 (free)", "stop acc", "duration ratio", "stopped", "diagonality",
             "RTF (synth + GL, loaded)", "scoring CPU s / wall s"], score_rows))
        text += ("\nmel L1: log-mel units after the post-net (free running: over the common length); stop acc: per "
                 "decoder step, teacher forced; duration ratio: generated / espeak-ng frames; stopped: sentences "
                 "ended by the stop token (the rest cut at 2x their length + 30 frames); diagonality: attention mass "
                 "within 0.1 of the diagonal, teacher forced (1 = diagonal, about 0.2 = uniform); RTF: wall seconds "
                 "per second of audio, on the loaded machine. Vocoder floors (espeak-ng audio -> mel -> vocoder): "
                 "Griffin-Lim 16.63 dB, HiFi-GAN 23.64 dB (benchmarks/results/tts_vocoder_floor.md).\n")
        text += mean_spectrum_note(runs)
        text += intelligibility(runs, names)
    steps = runs.get("time_steps")
    if steps:
        rows = [[n, f"{s:.3f}", f"{steps['batch_size'] * 1.0 / s:.1f}"] for n, s in steps["median_s"].items()]
        text += (f"\n## Time per training step\n\nOne fixed batch of {steps['batch_size']} training sentences "
                 f"({steps['frames']} mel frames), forward + backward + AdamW, median of {steps['repeats']} "
                 f"interleaved repeats, {steps['threads']} torch threads, load average {steps['load'][0]:.1f} when "
                 f"measured (commit {steps['commit']}, {steps['date']}).\n\n"
                 + markdown_table(["run", "s / step", "sentences / s"], rows))
        medians = steps["median_s"]
        if "transformer_tts" in medians and "tacotron" in medians:
            text += (f"\nTacotron / Transformer TTS time per step: {medians['tacotron'] / medians['transformer_tts']:.2f}x "
                     f"(the paper: {PAPER_SPEEDUP}x on a GPU, full size, r = 1).\n")
    predict = runs.get("time_predict")
    if predict:
        rows = [[n, f"{s:.2f}", f"{predict['audio_s'][n]:.2f}", f"{s / predict['audio_s'][n]:.2f}"]
                for n, s in predict["median_s"].items()]
        text += (f"\n## predict on a 10-word sentence (Griffin-Lim)\n\n\"{predict['text']}\": phonemes, free-running "
                 f"synthesis and 60 Griffin-Lim iterations, median of {predict['repeats']} interleaved runs, "
                 f"{predict['threads']} torch threads, load average {predict['load'][0]:.1f} (commit "
                 f"{predict['commit']}, {predict['date']}).\n\n"
                 + markdown_table(["run", "wall s", "audio s", "real-time factor"], rows))
    text += swap_table(runs)
    text += verdicts(runs)
    fig = figure(names)
    if fig is not None:
        text += f"\n![mels and alignments](tts.png)\n"
    return write_result("tts", text)


def main(argv: list[str] | None = None) -> int:
    global RECOGNIZER
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", nargs="*", default=[], metavar="NAME=CONFIG")
    parser.add_argument("--cpu-minutes", type=float, default=6.0, help="process-CPU budget of each --train run")
    parser.add_argument("--max-steps", type=int, default=400, help="step cap of each --train run (the cosine's span)")
    parser.add_argument("--fit-args", default="", help="extra `seqmix tts fit` arguments, one shell-quoted string")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--score", nargs="*", default=[], metavar="NAME")
    parser.add_argument("--limit", type=int, default=20, help="test sentences scored")
    parser.add_argument("--recognizer", default=str(RECOGNIZER), help="benchmarks/tts_recognizer.py's checkpoint")
    parser.add_argument("--resume", action="store_true", help="--score: keep the sentences scored before")
    parser.add_argument("--hifigan-limit", type=int, default=0, help="of which also vocoded by HiFi-GAN")
    parser.add_argument("--time-steps", nargs="*", default=[], metavar="NAME")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--time-predict", nargs="*", default=[], metavar="NAME",
                        help="time predict's work on the 10-word sentence (under /tmp/quiet/quiet.sh)")
    parser.add_argument("--ship", default=None, metavar="NAME", help="write NAME's slim checkpoint to --ship-path")
    parser.add_argument("--ship-path", default="checkpoints/tts/transformer_tts.ckpt")
    parser.add_argument("--render", action="store_true", help="(re)write tts.md and tts.png from the cache")
    parser.add_argument("--score-teacher-forced", nargs="*", default=[], metavar="NAME",
                        help="score NAME's teacher-forced mels on the first --limit test sentences (--hifigan-limit)")
    parser.add_argument("--score-mean-spectrum", action="store_true",
                        help="score the constant mean-spectrum reference on the first --limit test sentences")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    RECOGNIZER = Path(args.recognizer)
    for spec in args.train:
        name, _, config = spec.partition("=")
        if not config:
            raise SystemExit(f"--train takes NAME=CONFIG, got {spec!r}")
        train(name, config, args.cpu_minutes, args.max_steps, shlex.split(args.fit_args), args.seed)
    for name in args.score:
        score(name, args.limit, args.hifigan_limit, args.resume)
    for name in args.score_teacher_forced:
        score_teacher_forced(name, args.limit, args.hifigan_limit)
    if args.score_mean_spectrum:
        score_mean_spectrum(args.limit)
    if args.time_steps:
        time_steps(args.time_steps, args.batch_size, args.repeats)
    if args.time_predict:
        time_predict(args.time_predict, args.repeats)
    if args.ship:
        ship(args.ship, Path(args.ship_path))
    if (args.render or args.train or args.score or args.time_steps or args.score_mean_spectrum
            or args.score_teacher_forced):
        print(f"wrote {render()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
