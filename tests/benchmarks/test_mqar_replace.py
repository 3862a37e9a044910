"""benchmarks/mqar.py --replace: a rerun point replaces the stored point of its setting, mixer, width and
read-twice mode, and nothing else (no training here: the points file only)."""

import json

import pytest

from benchmarks.mqar import load_points, main, replace_point

SETTING = {"seq_len": 64, "kv_pairs": 4, "vocab": 256, "batch": 32, "mlp_ratio": None, "train_kv_pairs": None,
           "positions": None, "max_steps": 600, "seed": 0}


def point(mixer, d_model, acc, **changes):
    row = {"mixer": mixer, "d_model": d_model, "acc": acc, "lr": 3e-3, "read_twice": False, "seq_len": 64,
           "kv_pairs": 4, "vocab": 256, "batch": 32, "max_steps": 600, "seed": 0}
    return {**row, **changes}


def test_replace_point_drops_only_the_stale_point_of_the_same_setting(tmp_path):
    path = tmp_path / "x_points.jsonl"
    stored = [point("hip", 32, 0.1), point("hip", 64, 0.2), point("sea", 32, 0.3),
              point("hip", 32, 0.4, read_twice=True), point("hip", 32, 0.5, max_steps=800)]
    path.write_text("".join(json.dumps(r) + "\n" for r in stored))
    assert replace_point(path, point("hip", 32, 0.9), SETTING, None) == 1
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(r["mixer"], r["d_model"], r["acc"]) for r in rows] == [
        ("hip", 64, 0.2), ("sea", 32, 0.3), ("hip", 32, 0.4), ("hip", 32, 0.5), ("hip", 32, 0.9)]
    current = {(r["mixer"], r["d_model"]): r["acc"] for r in load_points(path, SETTING, None)
               if not r["read_twice"]}
    assert current == {("hip", 32): 0.9, ("hip", 64): 0.2, ("sea", 32): 0.3}


def test_replace_point_with_an_lr_override_keeps_the_other_lr(tmp_path):
    path = tmp_path / "x_points.jsonl"
    path.write_text(json.dumps(point("hip", 32, 0.1, lr=1e-3)) + "\n" + json.dumps(point("hip", 32, 0.2)) + "\n")
    assert replace_point(path, point("hip", 32, 0.9), SETTING, 3e-3) == 1
    assert sorted(json.loads(line)["acc"] for line in path.read_text().splitlines()) == [0.1, 0.9]


@pytest.mark.parametrize("argv", [["--replace", "--render", "--mixers", "hip"], ["--replace", "--demo"],
                                  ["--replace"]])
def test_replace_needs_named_mixers_and_a_run(argv):
    with pytest.raises(SystemExit, match="--replace reruns"):
        main(argv + ["--name", "never_written"])
