"""benchmarks/tts.py's verdicts: one target-1 line per budget's pair (transformer_tts<S> vs tacotron<S>, both
scored), met only when the Transformer's MCD-DTW is lower and its step faster; pairs in the order of their budgets."""

from benchmarks.tts import pairs, verdicts


def _runs(**mcd_by_name: float) -> dict:
    runs = {"time_steps": {"median_s": {"transformer_tts": 1.0, "tacotron": 2.0}}}
    for name, mcd in mcd_by_name.items():
        runs[f"train:{name}"] = {"cpu_minutes": 45 if name.endswith("_45") else 12}
        runs[f"score:{name}"] = {"rows": [{"mcd": mcd, "id": "test-0000"}, {"mcd": mcd + 2, "id": "test-0001"}]}
    return runs


def test_each_budget_gets_its_own_target_line_in_budget_order():
    runs = _runs(transformer_tts_45=90.0, tacotron_45=100.0, transformer_tts=121.0, tacotron=104.0)
    assert pairs(runs) == [("transformer_tts", "tacotron"), ("transformer_tts_45", "tacotron_45")]
    lines = [line for line in verdicts(runs).splitlines() if line.startswith("- **Target 1**")]
    assert len(lines) == 2
    assert lines[0].startswith("- **Target 1** at 12 CPU minutes each") and "**not met**: MCD-DTW 122.00 vs 105.00" in lines[0]
    assert lines[1].startswith("- **Target 1** at 45 CPU minutes each") and "**met**: MCD-DTW 91.00 vs 101.00" in lines[1]
    assert "time per step 2.00x" in lines[1]


def test_a_pair_needs_both_scores_and_a_slower_transformer_step_fails():
    runs = _runs(transformer_tts_45=90.0, tacotron_45=100.0)
    del runs["score:tacotron_45"]
    assert pairs(runs) == [] and "Target 1" not in verdicts(runs)
    runs = _runs(transformer_tts_45=90.0, tacotron_45=100.0)
    runs["time_steps"]["median_s"]["transformer_tts"] = 3.0
    assert "**not met**" in verdicts(runs) and "not faster" in verdicts(runs)


def _swap_run(minutes: float, steps: int) -> dict:
    return {"cpu_minutes": minutes, "config": "configs/tts/x.yaml", "steps": steps, "cpu_s": 60.0 * minutes,
            "best_val_mel_l1": 1.0, "commit": "abc1234", "date": "2026-12-07", "peak_rss_mb": 2000.0}


def test_swap_runs_are_one_table_per_budget_with_the_mixer_named():
    from benchmarks.tts import swap_label, swap_table

    assert swap_label("swap_gla", 4) == "gla" and swap_label("swap_gla_12", 12) == "gla"
    assert swap_label("swap_lstm_2.5", 2.5) == "lstm"
    runs = {"train:swap_softmax": _swap_run(4, 98), "train:swap_gla": _swap_run(4, 84),
            "train:swap_gla_12": _swap_run(12, 250),
            "time_steps_swap": {"median_s": {"swap_softmax": 2.5, "swap_gla": 3.0}}}
    text = swap_table(runs)
    four, twelve = text.split("### 4 CPU minutes each")[1].split("### 12 CPU minutes each")
    assert "| softmax |" in four and "| gla |" in four and "| 250 |" not in four
    gla_12 = next(line for line in twelve.splitlines() if line.startswith("| gla |"))
    assert "| 250 |" in gla_12 and "| 3.000 |" in gla_12  # the step time of the same network, timed at 4 minutes
    assert "| softmax |" not in twelve
    assert swap_table({}) == ""


def test_teacher_forced_pers_stand_beside_the_free_running_ones_on_the_same_sentences():
    from benchmarks.tts import intelligibility

    def row(i: int, hyp: str, hifi: str | None = None) -> dict:
        r = {"id": f"test-{i:04d}", "reference": "abcd", "gl_transcript": hyp, "mcd": 100.0}
        return r | ({"hifigan_transcript": hifi} if hifi is not None else {})

    ids = ["test-0000", "test-0001"]
    real = {"ids": ids, "references": ["abcd", "abcd"], "hypotheses": ["abcd", "abcd"]}
    runs = {"recognizer": {"config": {"n_layers": 4, "mixer": {"name": "softmax"}, "d_model": 128}, "params": 1e6,
                           "command": "x", "cpu_minutes": 10, "steps": 600, "batch_size": 16, "cpu_s": 600.0,
                           "wall_s": 900.0, "seed": 0, "commit": "abc", "val_sentences": 40, "val_per": 0.0},
            "per:real": real,
            "score:transformer_tts": {"rows": [row(0, "xxxx", "xxxx"), row(1, "xxxx")]},
            "teacher_forced:transformer_tts": {"rows": [row(0, "abcx", "abcd"), row(1, "abxx")]}}
    table = intelligibility(runs, ["transformer_tts"])
    lines = {line.split(" | ")[0].lstrip("| "): line for line in table.splitlines() if line.startswith("| ")}
    assert lines["transformer_tts -> Griffin-Lim"].endswith("| 1.000 | 1.000 |")
    assert lines["transformer_tts, teacher forced -> Griffin-Lim"].endswith("| 0.375 | 0.250 |")  # 3 of 8, 1 of 4
    assert lines["transformer_tts, teacher forced -> HiFi-GAN"].endswith("| - | 0.000 |")
    del runs["teacher_forced:transformer_tts"]
    assert "| transformer_tts, teacher forced" not in intelligibility(runs, ["transformer_tts"])
