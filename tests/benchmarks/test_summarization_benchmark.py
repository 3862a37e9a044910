"""benchmarks/summarization.py's report: mean ± std over seeds, the targets' met / missed verdicts against the
best single-sentence heuristic, stale runs (config changed) left out, and the "not run" list."""

from __future__ import annotations

from benchmarks import summarization as bench

ASPECTS = bench.ASPECTS


def rouge(values: dict[str, float]) -> dict[str, dict[str, float]]:
    """Every ROUGE key of an aspect at the aspect's one value; "all" at their mean."""
    out = {a: {k: v for k in bench.ROUGE_KEYS} for a, v in values.items()}
    mean = sum(values.values()) / len(values)
    return {**out, "all": {k: mean for k in bench.ROUGE_KEYS}}


def baseline(name: str, values: dict[str, float]) -> dict:
    ext = {g: {"precision": 0.5, "recall": 0.2, "f1": 0.25} for g in (*ASPECTS, "all")}
    return {"baseline": name, "rouge": rouge(values), "extraction": ext, "n_examples": 300, "wall_s": 0.1,
            "commit": "abc", "date": "today", "command": "python -m benchmarks.summarization"}


def run(config: str, seed: int, values: dict[str, float], *, extractive: bool = True, sha: str | None = None) -> dict:
    ext = {g: {"precision": 0.4, "recall": 0.3, "f1": 0.3} for g in (*ASPECTS, "all")} if extractive else None
    return {"config": config, "seed": seed, "max_epochs": 8, "epochs_run": 8, "best_epoch": 5,
            "monitor": "val/rougeL", "best_val": 0.25, "rouge": rouge(values), "extraction": ext, "n_examples": 300,
            "params": 1000, "fit_wall_s": 300.0 + seed, "fit_cpu_s": 200.0, "test_wall_s": 10.0, "wall_s": 320.0,
            "cpu_s": 220.0, "threads": 1, "load_start": 2.0, "load_end": 3.0, "checkpoint": None,
            "config_sha256": sha or bench.config_digest(config), "cpu": "test CPU", "commit": "abc",
            "date": "today", "command": "python -m benchmarks.summarization"}


def cached(highlighter_challenge: tuple[float, float, float]) -> dict:
    runs = {"baseline|first abstract sentence": baseline("first abstract sentence",
                                                         {"challenge": 0.20, "approach": 0.18, "outcome": 0.12}),
            "baseline|last abstract sentence": baseline("last abstract sentence",
                                                        {"challenge": 0.10, "approach": 0.12, "outcome": 0.25})}
    for seed, c in enumerate(highlighter_challenge):
        runs[f"highlighter|seed{seed}"] = run("highlighter", seed, {"challenge": c, "approach": 0.3, "outcome": 0.27})
    for seed in range(3):  # above the heuristic's ROUGE-1 on approach and outcome only
        runs[f"summarizer_small|seed{seed}"] = run("summarizer_small", seed,
                                                   {"challenge": 0.15, "approach": 0.30, "outcome": 0.30},
                                                   extractive=False)
    return runs


def test_the_targets_are_met_on_the_mean_of_three_seeds_and_missed_below_the_heuristic():
    text = bench.report(cached((0.21, 0.22, 0.23)))
    line = next(ln for ln in text.splitlines() if ln.startswith("- Highlighter test ROUGE-L"))
    assert "**met**" in line and "challenge 0.220 vs 0.200 (first abstract sentence, +0.020)" in line
    summ = next(ln for ln in text.splitlines() if ln.startswith("- Summarizer"))
    assert "**met** (2 of 3)" in summ and "challenge 0.150 vs 0.200" in summ
    assert "0.220 ± 0.008" in text  # the challenge ROUGE of the three seeds, mean ± population std
    missed = bench.report(cached((0.19, 0.20, 0.19)))  # mean 0.193 < 0.200 on challenge
    line = next(ln for ln in missed.splitlines() if ln.startswith("- Highlighter test ROUGE-L"))
    assert "**missed**" in line and "-0.007" in line


def test_a_run_of_a_changed_config_is_stale_and_its_seed_is_listed_as_not_run():
    runs = cached((0.21, 0.22, 0.23))
    runs["highlighter|seed2"] = run("highlighter", 2, {"challenge": 0.9, "approach": 0.9, "outcome": 0.9},
                                    sha="000000000000")
    current, stale = bench.split_stale(runs)
    assert set(stale) == {"highlighter|seed2"} and "baseline|first abstract sentence" in current
    text = bench.report(runs)
    assert "0.900" not in text.split("## Stale runs")[0]
    assert "- `highlighter.yaml`: seeds [2]" in text
    assert "met on fewer than 3 seeds" in text
