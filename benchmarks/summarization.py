"""Summarization benchmark (issue 31): ACLSum test ROUGE of the trained models beside the untrained rows.

Every trained run is ``configs/summarization/<config>.yaml`` at one seed, trained with ``fit`` (the best
epoch kept by the config's ModelCheckpoint) and tested from that checkpoint, in-process through the app's own
LightningCLI (``seqmix.cli.app_cli``). Runs are cached in ``benchmarks/results/summarization_runs.json`` keyed
``<config>|seed<n>`` (each with its commit, date, CPU, wall and CPU seconds, parameters and the sha256 of its
config file: a run of a config file that has changed since is stale, left out of the tables and run again).
The untrained rows (first / last abstract sentence, gold highlights, greedy oracle of <= 3 sentences) are
scored once and cached under ``baseline|<name>``; ``predict`` timings under ``predict|<checkpoint>``.

Written: ``benchmarks/results/summarization.md`` (+ ``summarization.png``: test ROUGE-L per aspect per model),
``benchmarks/results/summarization_predictions/<model>_test.jsonl`` (the baselines', and each trained
config's seed-0 run's), and with ``--save-checkpoint`` the seed-0 run's weights (no optimizer state) in
``checkpoints/summarization/<config>.ckpt``.

    python -m benchmarks.summarization --configs highlighter --seeds 0 1 2 --save-checkpoint
    python -m benchmarks.summarization --configs highlighter_gla highlighter_lstm highlighter_lightnet --seeds 0
    python -m benchmarks.summarization --time-predict checkpoints/summarization/highlighter.ckpt \
        --paper-id E09-1056 --note "other jobs paused (quiet.sh)"
    python -m benchmarks.summarization --report-only
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import (RESULTS_DIR, Stopwatch, add_cached_run, atomic_write_text, command_line, cpu_model,
                               file_digest, git_commit, header, markdown_table, read_run_cache, save_figure, utc_now)

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "configs" / "summarization"
RUNS = RESULTS_DIR / "summarization_runs.json"
PREDICTIONS = RESULTS_DIR / "summarization_predictions"
CHECKPOINTS = REPO / "checkpoints" / "summarization"
SEEDS = (0, 1, 2)
ASPECTS = ("challenge", "approach", "outcome")
ROUGE_KEYS = ("rouge1", "rouge2", "rougeL")
MAX_CHECKPOINT_BYTES = 30_000_000

# the trained models of the main table: config -> row name
MODELS = {"highlighter": "highlighter (softmax encoder, top-1)",
          "summarizer_small": "summarizer (small config)",
          "summarizer": "summarizer (full config)",
          "seq2seq": "seq2seq LSTM + attention"}
# the mixer-swap table: the highlighter's encoder (word and sentence mixers) swapped; config -> mixer
MIXER_SWAPS = {"highlighter": "softmax", "highlighter_gla": "gla", "highlighter_lstm": "lstm (bidirectional)",
               "highlighter_lightnet": "lightnet (non-causal)"}
BASELINE_ROWS = ("first abstract sentence", "last abstract sentence", "gold highlights", "greedy oracle (<= 3)")
HEURISTICS = ("first abstract sentence", "last abstract sentence")
BASELINE_FILES = {"first abstract sentence": "first_sentence", "last abstract sentence": "last_sentence",
                  "gold highlights": "gold_highlights", "greedy oracle (<= 3)": "oracle"}
FIT_TARGET_MIN, PREDICT_TARGET_S = 30.0, 10.0



def config_digest(config: str) -> str:
    return file_digest(CONFIGS / f"{config}.yaml")


def split_stale(runs: dict) -> tuple[dict, dict]:
    """(current, stale) trained runs: stale when the config file changed since the run (other records: current)."""
    current, stale = {}, {}
    for key, r in runs.items():
        if "config" in r and r.get("config_sha256") != config_digest(r["config"]):
            stale[key] = r
        else:
            current[key] = r
    return current, stale


def scores(predictions, papers) -> dict:
    """Plain-data ROUGE F1 per aspect and "all", extraction P / R / F1 (None for a purely abstractive model)."""
    from seqmix.apps.summarization.baselines import evaluate

    result = evaluate(predictions, papers)
    extraction = None if result.extraction is None else {
        g: {"precision": e.precision, "recall": e.recall, "f1": e.f1} for g, e in result.extraction.items()}
    return {"rouge": result.rouge, "extraction": extraction, "n_examples": result.n_examples}


def load_avg() -> float:
    return round(os.getloadavg()[0], 2)


def save_weights(best_ckpt: str, path: Path) -> int:
    """The best checkpoint without optimizer, scheduler, loop and callback state (weights as trained, fp32;
    fp16 only if fp32 would exceed the 30 MB budget); returns the size in bytes."""
    from seqmix.apps.files import save_checkpoint

    checkpoint = torch.load(best_ckpt, map_location="cpu", weights_only=True)
    slim = {k: v for k, v in checkpoint.items() if k not in ("optimizer_states", "lr_schedulers", "loops", "callbacks")}
    size = sum(v.numel() * v.element_size() for v in slim["state_dict"].values())
    if size > MAX_CHECKPOINT_BYTES * 0.9:
        slim["state_dict"] = {k: v.half() if v.is_floating_point() else v for k, v in slim["state_dict"].items()}
    return save_checkpoint(slim, path, max_bytes=MAX_CHECKPOINT_BYTES, too_big="use a smaller config")


def run_one(config: str, seed: int, max_epochs: int | None, save_checkpoint: bool) -> dict:
    """Fit one config at one seed, test its best checkpoint; scores, times, and the seed-0 predictions file."""
    from seqmix.apps.summarization.app import APP
    from seqmix.apps.summarization.baselines import write_predictions
    from seqmix.apps.summarization.data import read_split
    from seqmix.cli import app_cli

    with tempfile.TemporaryDirectory(prefix="seqmix_sum_") as tmp:
        argv = ["--config", str(CONFIGS / f"{config}.yaml"), "--seed_everything", str(seed),
                "--trainer.default_root_dir", tmp, "--trainer.logger", "false",
                "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
        if max_epochs is not None:
            argv += ["--trainer.max_epochs", str(max_epochs)]
        load_start, digest = load_avg(), config_digest(config)  # the config as it was read
        total = Stopwatch().start()
        cli = app_cli(APP, argv, run=False)
        fit = Stopwatch().start()
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
        fit.stop()
        best_path = cli.trainer.checkpoint_callback.best_model_path
        best_epoch = int(torch.load(best_path, map_location="cpu", weights_only=True)["epoch"])
        best_val = float(cli.trainer.checkpoint_callback.best_model_score)
        test = Stopwatch().start()
        cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path="best", verbose=False)
        test.stop()
        predictions = cli.model.predictions["test"]
        result = scores(predictions, read_split("test"))
        if seed == 0:
            write_predictions(predictions, PREDICTIONS / f"{config}_test.jsonl")
        checkpoint = None
        if save_checkpoint and seed == 0:
            path = CHECKPOINTS / f"{config}.ckpt"
            size = save_weights(best_path, path)
            checkpoint = f"{path.relative_to(REPO)} ({size / 1e6:.2f} MB)"
        total.stop()
    return {"config": config, "seed": seed, "max_epochs": cli.trainer.max_epochs, "epochs_run": cli.trainer.current_epoch,
            "best_epoch": best_epoch, "monitor": cli.trainer.checkpoint_callback.monitor, "best_val": best_val,
            **result, "params": sum(p.numel() for p in cli.model.parameters() if p.requires_grad),
            "fit_wall_s": round(fit.wall_s, 1), "fit_cpu_s": round(fit.cpu_s, 1),
            "test_wall_s": round(test.wall_s, 1), "wall_s": round(total.wall_s, 1), "cpu_s": round(total.cpu_s, 1),
            "threads": torch.get_num_threads(), "load_start": load_start, "load_end": load_avg(),
            "checkpoint": checkpoint, "config_sha256": digest, "cpu": cpu_model(),
            "commit": git_commit(), "date": utc_now(), "command": command_line()}


def run_baselines() -> dict[str, dict]:
    """Score (and write the test predictions of) every untrained row; records keyed ``baseline|<name>``."""
    from seqmix.apps.summarization.baselines import BASELINES, greedy_oracle, predict_all, write_predictions
    from seqmix.apps.summarization.data import read_split
    from seqmix.apps.summarization.metrics import Rouge

    papers, rouge, out = read_split("test"), Rouge(), {}
    rules = {**BASELINES, "greedy oracle (<= 3)": lambda paper, aspect: greedy_oracle(paper, aspect, rouge, 3)}
    for name in BASELINE_ROWS:
        watch = Stopwatch().start()
        predictions = predict_all(rules[name], papers)
        write_predictions(predictions, PREDICTIONS / f"{BASELINE_FILES[name]}_test.jsonl")
        out[f"baseline|{name}"] = {"baseline": name, **scores(predictions, papers), "wall_s": round(watch.stop().wall_s, 1),
                                   "commit": git_commit(), "date": utc_now(), "command": command_line()}
    return out


def write_paper_json(paper_id: str | None, path: Path) -> str:
    """One ACLSum test paper (the first, or ``paper_id``) as the JSON object ``predict --paper`` reads."""
    from seqmix.apps.summarization.data import split_file

    for line in split_file("test").read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        if paper_id is None or str(record.get("id")) == paper_id:
            path.write_text(json.dumps(record), encoding="utf-8")
            return str(record.get("id"))
    raise SystemExit(f"--paper-id {paper_id}: no such paper in ACLSum's test split")


def time_predict(ckpt: Path, repeats: int, paper_id: str | None, note: str | None) -> dict:
    """Wall seconds of ``seqmix summarization predict --ckpt <ckpt> --paper <one test paper> --aspect all``, a
    fresh process each time (Python and torch start-up included), the best and the median of ``repeats``;
    ``note``: how the machine was held meanwhile (recorded and reported)."""
    paper = Path(tempfile.gettempdir()) / "seqmix_summarization_paper.json"
    pid = write_paper_json(paper_id, paper)
    exe = Path(sys.executable).with_name("seqmix")
    cmd = [str(exe), "summarization", "predict", "--ckpt", str(ckpt), "--paper", str(paper), "--aspect", "all"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    times, cpus, loads = [], [], []
    for _ in range(repeats):
        loads.append(load_avg())
        used = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        times.append(round(time.perf_counter() - start, 2))
        now = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(round(now.ru_utime + now.ru_stime - used.ru_utime - used.ru_stime, 2))
        if done.returncode != 0:
            raise SystemExit(f"predict failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    return {"checkpoint": str(ckpt.relative_to(REPO) if ckpt.is_absolute() else ckpt), "paper_id": pid,
            "times_s": times, "best_s": min(times), "median_s": float(np.median(times)), "loads": loads,
            "cpu_s": cpus, "median_cpu_s": float(np.median(cpus)), "note": note,
            "output": done.stdout.strip().splitlines()[:6],
            "command": " ".join(["seqmix", *cmd[1:]]).replace(str(paper), "<paper.json>"),
            "cpu": cpu_model(), "commit": git_commit(), "date": utc_now()}


# ------------------------------------------------------------------ report
def trained(runs: dict, config: str) -> list[dict]:
    return sorted((r for r in runs.values() if r.get("config") == config), key=lambda r: r["seed"])


def mean_std(values: list[float]) -> str:
    if not values:
        return "—"
    return f"{np.mean(values):.3f}" + (f" ± {np.std(values):.3f}" if len(values) > 1 else "")


def rouge_of(r: dict, group: str, key: str) -> float:
    return r["rouge"][group][key]


def best_heuristic(runs: dict, key: str) -> dict[str, tuple[float, str]]:
    """Per aspect: the higher of the first / last abstract sentence's test ``key`` F1, and which it is."""
    out = {}
    for a in ASPECTS:
        cands = [(runs[f"baseline|{h}"]["rouge"][a][key], h) for h in HEURISTICS if f"baseline|{h}" in runs]
        if cands:
            out[a] = max(cands)
    return out


def main_table(runs: dict) -> str:
    cols = ["model", "seeds", *[f"{a} R-1 / R-2 / R-L" for a in ASPECTS], "all R-1 / R-2 / R-L",
            "extraction P / R / F1", "params", "fit min (wall / CPU)"]
    rows = []
    for name in BASELINE_ROWS:
        r = runs.get(f"baseline|{name}")
        if r is None:
            rows.append([name, "—", *["not run"] * 4, "—", "0", "—"])
            continue
        cells = [" / ".join(f"{r['rouge'][g][k]:.3f}" for k in ROUGE_KEYS) for g in (*ASPECTS, "all")]
        e = r["extraction"]["all"] if r["extraction"] else None
        ext = "—" if e is None else f"{e['precision']:.3f} / {e['recall']:.3f} / {e['f1']:.3f}"
        rows.append([name, "—", *cells, ext, "0", "—"])
    for config, name in MODELS.items():
        got = trained(runs, config)
        if not got:
            continue
        cells = [" / ".join(mean_std([rouge_of(r, g, k) for r in got]) for k in ROUGE_KEYS) for g in (*ASPECTS, "all")]
        if all(r["extraction"] for r in got):
            ext = " / ".join(mean_std([r["extraction"]["all"][k] for r in got]) for k in ("precision", "recall", "f1"))
        else:
            ext = "— (abstractive)"
        minutes = f"{np.mean([r['fit_wall_s'] for r in got]) / 60:.1f} / {np.mean([r['fit_cpu_s'] for r in got]) / 60:.1f}"
        rows.append([f"{name} (`{config}.yaml`)", ", ".join(str(r["seed"]) for r in got), *cells, ext,
                     f"{got[0]['params']:,}", minutes])
    return markdown_table(cols, rows)


def per_run_table(runs: dict) -> str:
    cols = ["config", "seed", "best epoch / run", "best val (monitor)", "test R-L challenge / approach / outcome",
            "test R-1 all", "fit wall / CPU s", "load at start / end", "commit", "date"]
    rows = []
    for config in list(MODELS) + [c for c in MIXER_SWAPS if c not in MODELS]:
        for r in trained(runs, config):
            rows.append([config, r["seed"], f"{r['best_epoch'] + 1} / {r['epochs_run']}",
                         f"{r['best_val']:.3f} ({r['monitor']})",
                         " / ".join(f"{rouge_of(r, a, 'rougeL'):.3f}" for a in ASPECTS),
                         f"{rouge_of(r, 'all', 'rouge1'):.3f}", f"{r['fit_wall_s']:.0f} / {r['fit_cpu_s']:.0f}",
                         f"{r['load_start']:.1f} / {r['load_end']:.1f}", f"`{r['commit']}`", r["date"]])
    return markdown_table(cols, rows)


def swap_table(runs: dict) -> str:
    seeds = sorted({r["seed"] for c in MIXER_SWAPS for r in trained(runs, c)})
    text = ("## Mixer swap: the highlighter's encoder\n\n"
            "`configs/summarization/highlighter_<mixer>.yaml`: `highlighter.yaml` with its word and sentence mixers "
            "both swapped (everything else the same: d_model 64, GloVe 50d, top-1, 8 epochs, best epoch by "
            f"val ROUGE-L). Test ROUGE F1, mean ± std over the seeds run (seeds per row below; {seeds} in all: "
            "where a row has one seed, that is because the shared machine's time ran short).\n\n")
    cols = ["encoder mixer", "seeds", *[f"R-L {a}" for a in ASPECTS], "R-1 / R-2 / R-L all", "extraction F1",
            "params", "fit min (wall / CPU)"]
    rows = []
    for config, mixer in MIXER_SWAPS.items():
        got = trained(runs, config)
        if not got:
            rows.append([mixer, "not run", *["—"] * 6, "—"])
            continue
        rows.append([mixer, ", ".join(str(r["seed"]) for r in got),
                     *[mean_std([rouge_of(r, a, "rougeL") for r in got]) for a in ASPECTS],
                     " / ".join(mean_std([rouge_of(r, "all", k) for r in got]) for k in ROUGE_KEYS),
                     mean_std([r["extraction"]["all"]["f1"] for r in got]), f"{got[0]['params']:,}",
                     f"{np.mean([r['fit_wall_s'] for r in got]) / 60:.1f} / "
                     f"{np.mean([r['fit_cpu_s'] for r in got]) / 60:.1f}"])
    return text + markdown_table(cols, rows) + "\n"


def targets(runs: dict) -> str:
    lines = ["## Targets (issue 31)\n"]
    heur_l, heur_1 = best_heuristic(runs, "rougeL"), best_heuristic(runs, "rouge1")
    hl = trained(runs, "highlighter")
    if hl and len(heur_l) == 3:
        parts, ok = [], True
        for a in ASPECTS:
            m = np.mean([rouge_of(r, a, "rougeL") for r in hl])
            ok &= m > heur_l[a][0]
            parts.append(f"{a} {m:.3f} vs {heur_l[a][0]:.3f} ({heur_l[a][1]}, {m - heur_l[a][0]:+.3f})")
        lines.append(f"- Highlighter test ROUGE-L above the best single-sentence heuristic for every aspect, mean of "
                     f"{len(hl)} seed(s): **{'met' if ok and len(hl) >= 3 else 'missed' if not ok else 'met on fewer than 3 seeds'}**"
                     f" — {'; '.join(parts)}.")
    else:
        lines.append("- Highlighter ROUGE-L target: not run.")
    for config in ("summarizer_small", "summarizer"):
        sm = trained(runs, config)
        if not sm or len(heur_1) < 3:
            continue
        parts, wins = [], 0
        for a in ASPECTS:
            m = np.mean([rouge_of(r, a, "rouge1") for r in sm])
            wins += m > heur_1[a][0]
            parts.append(f"{a} {m:.3f} vs {heur_1[a][0]:.3f} ({heur_1[a][1]}, {m - heur_1[a][0]:+.3f})")
        verdict = "met" if wins >= 2 and len(sm) >= 3 else "missed" if wins < 2 else "met on fewer than 3 seeds"
        lines.append(f"- Summarizer (`{config}.yaml`) test ROUGE-1 above the best heuristic for >= 2 of 3 aspects, mean "
                     f"of {len(sm)} seed(s): **{verdict}** ({wins} of 3) — {'; '.join(parts)}.")
    fits = []
    for config in MODELS:
        got = trained(runs, config)
        if got:
            worst = max(got, key=lambda r: r["fit_wall_s"])
            best = min(got, key=lambda r: r["fit_wall_s"])
            fits.append(f"`{config}` {best['fit_wall_s'] / 60:.1f}-{worst['fit_wall_s'] / 60:.1f} min wall "
                        f"({min(r['fit_cpu_s'] for r in got) / 60:.1f}-{max(r['fit_cpu_s'] for r in got) / 60:.1f} min "
                        f"CPU; 1-min load {min(r['load_start'] for r in got):.1f}-"
                        f"{max(max(r['load_start'], r['load_end']) for r in got):.1f} on 2 cores)")
    if fits:
        hl_ok = hl and max(r["fit_wall_s"] for r in hl) / 60 < FIT_TARGET_MIN
        lines.append(f"- A full training run of the best configuration under {FIT_TARGET_MIN:.0f} minutes on 2 cores "
                     f"(1 torch thread, fit only, the test pass excluded): highlighter "
                     f"**{'met' if hl_ok else 'missed'}** — " + "; ".join(fits) + ". Wall time on the shared machine "
                     "includes other users' load and the coordinator's SIGSTOP pauses; CPU time is this process's.")
    pred = [r for k, r in runs.items() if k.startswith("predict|")]
    for p in pred:
        lines.append(f"- `predict` on one paper (ACLSum test paper {p['paper_id']}, all 3 aspects) under "
                     f"{PREDICT_TARGET_S:.0f} s on the CPU: **{'met' if p['median_s'] < PREDICT_TARGET_S else 'missed'}**"
                     f" — median {p['median_s']:.2f} s, best {p['best_s']:.2f} s of {len(p['times_s'])} fresh processes "
                     f"(start-up and checkpoint load included; 1-min load {min(p['loads']):.1f}-{max(p['loads']):.1f} on 2 "
                     f"cores{'; median CPU time of the process ' + format(p['median_cpu_s'], '.2f') + ' s' if 'cpu_s' in p else ''}"
                     f"{'; ' + p['note'] if p.get('note') else ''}): "
                     f"`{p['command']}` ({p['cpu']}, commit `{p['commit']}`).")
    if not pred:
        lines.append("- `predict` time: not measured.")
    return "\n".join(lines) + "\n\n"


def plot(runs: dict) -> None:
    from seqmix.apps.files import pyplot

    plt = pyplot()
    bars = []  # (label, [mean per aspect], [std per aspect])
    for name in BASELINE_ROWS:
        r = runs.get(f"baseline|{name}")
        if r is not None:
            bars.append((name, [r["rouge"][a]["rougeL"] for a in ASPECTS], [0.0] * 3))
    for config in [*MODELS, *[c for c in MIXER_SWAPS if c not in MODELS]]:
        got = trained(runs, config)
        if got:
            label = MODELS.get(config, f"highlighter ({MIXER_SWAPS.get(config)})") + f" [{len(got)} seed(s)]"
            vals = [[rouge_of(r, a, "rougeL") for r in got] for a in ASPECTS]
            bars.append((label, [float(np.mean(v)) for v in vals], [float(np.std(v)) for v in vals]))
    if not bars:
        return
    fig, ax = plt.subplots(figsize=(11, 4.8))
    width = 0.8 / len(bars)
    x = np.arange(len(ASPECTS))
    for i, (label, means, stds) in enumerate(bars):
        ax.bar(x + (i - (len(bars) - 1) / 2) * width, means, width, yerr=stds, capsize=2, label=label)
    ax.set_xticks(x, ASPECTS)
    ax.set_ylabel("test ROUGE-L F1")
    ax.set_title("ACLSum test ROUGE-L per aspect (trained models: mean ± std over seeds)")
    ax.legend(fontsize=7, ncol=2, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    save_figure(fig, "summarization")


def report(all_runs: dict) -> str:
    runs, stale = split_stale(all_runs)
    seeds = sorted({r["seed"] for r in runs.values() if "seed" in r})
    text = header("Summarization: ACLSum test ROUGE (issue 31)", seeds=seeds or None, notes=[
        "ACLSum (`aclsum==0.1.2`): 100 / 50 / 100 train / val / test papers, one example per (paper, aspect); "
        "ROUGE-1/2/L F1 with stemming (`rouge-score`) against the aspect's one-sentence summary, mean over the 100 "
        "test papers; extraction P / R / F1 of the selected sentences against the gold highlights",
        "trained rows: mean ± std (population) over the seeds of the runs cached in "
        "`benchmarks/results/summarization_runs.json` (each run records its commit, date, CPU, wall and CPU seconds, "
        "the 1-min load at its start and end, and its config's sha256; only runs of the config files as they are now "
        "count); each tested from its best validation epoch",
        "one fit at a time, 1 torch thread, on a 2-core machine shared with other jobs (the 1-min loads are in the "
        "per-run table): wall minutes are inflated by that load and by the coordinator's SIGSTOP pauses",
        "predictions: `benchmarks/results/summarization_predictions/<model>_test.jsonl` (the baselines', and each "
        "trained config's seed-0 run's; re-score with `baselines.read_predictions` + `baselines.evaluate`)"])
    text += targets(runs)
    text += "## Test ROUGE F1 per aspect\n\n" + main_table(runs) + "\n"
    text += ("`summarizer_small.yaml` is `summarizer.yaml` with d_model 64 (attention_dim 64), 1 decoder layer and "
             "32 sentences x 32 words (the full config: 96, 2 layers, 48 x 40; both 15 epochs): the full config's "
             "epochs took ~3 min each on the loaded machine, too slow for three seeds. A first try of the small config "
             "at 6 epochs (seed 0, listed under stale runs) scored test ROUGE-1 0.169 / 0.280 / 0.258.\n\n")
    text += swap_table(runs)
    text += "## Every run\n\n" + per_run_table(runs) + "\n"
    commands = sorted({r.get("command", "?") for r in runs.values()})
    text += "## Commands that produced the cached records\n\n" + "\n".join(f"- `{c}`" for c in commands) + "\n\n"
    text += "## Not run\n\n" + not_run(runs) + "\n"
    text += ("## Stale runs (config changed since; cached, left out of every table)\n\n"
             + ("\n".join(f"- {k} (commit `{r['commit']}`, {r['date']}, {r['epochs_run']} epochs): test R-1 / R-L per aspect "
                          + ", ".join(f"{a} {rouge_of(r, a, 'rouge1'):.3f} / {rouge_of(r, a, 'rougeL'):.3f}"
                                      for a in ASPECTS) for k, r in sorted(stale.items())) or "- none")
             + "\n\n![summarization](summarization.png)\n")
    return text


def not_run(runs: dict) -> str:
    lines = []
    for config in dict.fromkeys([*MODELS, *MIXER_SWAPS]):  # a swap-only row: listed when it has no seed at all
        have = {r["seed"] for r in trained(runs, config)}
        missing = [s for s in SEEDS if s not in have]
        if missing and not (config not in MODELS and have):
            lines.append(f"- `{config}.yaml`: seeds {missing}")
    return "\n".join(lines) or "- nothing"


def write_report(runs: dict) -> None:
    atomic_write_text(RESULTS_DIR / "summarization.md", report(runs))
    plot(split_stale(runs)[0])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", default=[], choices=sorted({*MODELS, *MIXER_SWAPS}))
    parser.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    parser.add_argument("--max-epochs", type=int, default=None, help="override the config's max_epochs (recorded)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 on a shared machine)")
    parser.add_argument("--rerun", action="store_true", help="run again even when cached")
    parser.add_argument("--save-checkpoint", action="store_true",
                        help="write the seed-0 run's weights to checkpoints/summarization/<config>.ckpt")
    parser.add_argument("--baselines", action="store_true", help="(re)score the untrained rows")
    parser.add_argument("--time-predict", type=Path, default=None, help="a checkpoint: time `predict` on one paper")
    parser.add_argument("--paper-id", default=None, help="the test paper --time-predict reads (default: the first)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--note", default=None, help="with --time-predict: how the machine was held (recorded)")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    os.environ.setdefault("SEQMIX_DATA", str(REPO.parent / "shared" / "data"))
    runs = read_run_cache(RUNS)
    if not args.report_only:
        if args.baselines or not any(k.startswith("baseline|") for k in runs):
            for key, record in run_baselines().items():
                runs = add_cached_run(RUNS, key, record)
        if args.time_predict is not None:
            record = time_predict(args.time_predict, args.repeats, args.paper_id, args.note)
            print(f"predict: {record['times_s']} s", flush=True)
            runs = add_cached_run(RUNS, f"predict|{record['checkpoint']}", record)
        for config in args.configs:
            for seed in args.seeds:
                key = f"{config}|seed{seed}"
                if key in split_stale(runs)[0] and not args.rerun:
                    continue
                r = run_one(config, seed, args.max_epochs, args.save_checkpoint)
                rl = " / ".join(f"{rouge_of(r, a, 'rougeL'):.3f}" for a in ASPECTS)
                print(f"{key}: test R-L {rl} (best epoch {r['best_epoch'] + 1}, fit {r['fit_wall_s']:.0f} s wall)",
                      flush=True)
                runs = add_cached_run(RUNS, key, r)
                write_report(runs)
    write_report(runs)
    print(f"wrote {RESULTS_DIR / 'summarization.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
