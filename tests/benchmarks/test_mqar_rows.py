"""benchmarks/mqar.py rows named by a config file (``--configs titans_mag``: config variants of one mixer) and
points of several seeds (``--seed 0 1``): naming, storing and the JRT-Prompt table over seeds."""

import argparse
import json

import pytest

from benchmarks.mqar import check_configs, jrt_table, load_points, point_key, row_names, run_point


def test_rows_are_named_by_mixer_or_by_config_stem():
    assert row_names(["gla"], ["titans_mag", "titans_mac"]) == [
        ("gla", False), ("titans_mag", True), ("titans_mac", True)]
    with pytest.raises(SystemExit, match=r"\['gla'\] named twice"):
        row_names(["gla"], ["gla"])


def test_configs_must_be_recall_config_files_other_than_base():
    check_configs(["titans_mag", "titans_mac", "tnl"])  # variants: no mixer is registered under these names
    with pytest.raises(SystemExit, match=r"no config configs/recall/<name>.yaml for --configs \['titans_mxg'\]"):
        check_configs(["titans_mxg"])
    with pytest.raises(SystemExit, match=r"\['base'\]"):
        check_configs(["base"])


def tiny_args(**changes):
    values = {"seq_len": 16, "kv_pairs": 2, "vocab_size": 16, "batch_size": 4, "num_train": 8, "max_steps": 1,
              "lr": None, "mlp_ratio": 0.0, "positions": None, "train_kv_pairs": None, "read_twice": None}
    return argparse.Namespace(**{**values, **changes})


def test_a_config_row_is_named_by_its_stem_and_records_the_mixer_it_builds():
    row = run_point("titans_mag", 16, tiny_args(), seed=3, by_config=True)
    assert (row["mixer"], row["registered"], row["config"]) == ("titans_mag", "titans", "configs/recall/titans_mag.yaml")
    assert (row["d_model"], row["seed"], row["steps"], row["read_twice"]) == (16, 3, 1, False)
    assert point_key(row) == ("titans_mag", 16, "once", 3)
    with pytest.raises(SystemExit, match="registered as 'titans'"):  # as a mixer name it would be mislabelled
        run_point("titans_mag", 16, tiny_args(), by_config=False)


def test_points_of_several_seeds_load_apart_and_average_in_the_jrt_table(tmp_path):
    rows = [{"mixer": "gla", "d_model": 64, "lr": 0.003, "seq_len": 64, "acc": a, "seed": s, "read_twice": t}
            for a, s, t in [(0.25, 0, False), (0.5, 1, False), (0.75, 0, True), (1.0, 1, True),
                            (0.125, 2, False)]]
    path = tmp_path / "points.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    loaded = load_points(path, {"seq_len": 64, "seed": (0, 1)}, None)
    assert sorted(point_key(r) for r in loaded) == [
        ("gla", 64, "context", 0), ("gla", 64, "context", 1), ("gla", 64, "once", 0), ("gla", 64, "once", 1)]
    lines = jrt_table(loaded).splitlines()
    assert lines[0] == ("| mixer | d_model | read once | context read twice | change | beyond seed spread | "
                        "paired p |")
    # two seeds, both higher read twice: the exact one-sided Wilcoxon p is 1/4
    assert lines[2] == "| gla | 64 | 0.3750 (0.2500 / 0.5000) | 0.8750 (0.7500 / 1.0000) | +0.5000 | yes | 0.25 |", lines[2]
    overlapping = [{**r, "acc": 0.8} if r["seed"] == 1 and not r["read_twice"] else r for r in loaded]
    assert jrt_table(overlapping).splitlines()[2].endswith("| +0.3500 | no | 0.25 |")


def test_paired_p_is_the_exact_one_sided_wilcoxon_test():
    """Five seeds all higher read twice: p = 1/32; the smallest change lower: rank sum 2+3+4+5 = 14 of 15, reached by
    2 of the 32 sign patterns, p = 2/32; the largest lower: 1+2+3+4 = 10, reached by 10 patterns, p = 10/32;
    all lower: p = 1; no paired seeds or only ties: no test."""
    from benchmarks.mqar import paired_p

    once = {s: 0.5 for s in range(5)}
    up = {s: 0.5 + 0.01 * (s + 1) for s in range(5)}
    assert paired_p(once, up) == "0.0312"
    assert paired_p(once, {**up, 0: 0.5 - 0.005}) == "0.0625"
    assert paired_p(once, {**up, 4: 0.5 - 0.05}) == "0.312"
    down = {s: 0.5 - 0.01 * (s + 1) for s in range(5)}
    assert paired_p(once, down) == "1"
    assert paired_p(once, once) == "–" and paired_p(once, {0: up[0]}) == "–"  # only ties; one seed both ran
