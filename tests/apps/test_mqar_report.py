"""The report side of ``python -m benchmarks.mqar``: a table that merges points of several runs names where each ran."""

import pytest


@pytest.fixture(scope="module")
def bench():
    import benchmarks.mqar as module

    return module


def test_provenance_counts_points_per_cpu_and_commit_with_their_dates(bench):
    rows = [{"cpu": "AMD EPYC"}, {"cpu": "AMD EPYC"},
            {"cpu": "Intel Xeon", "commit": "abc1234", "date": "2026-11-30 10:00 UTC"},
            {"cpu": "Intel Xeon", "commit": "abc1234", "date": "2026-11-30 09:00 UTC"},
            {}]
    assert bench.provenance(rows) == (
        "points ran: 2 points on AMD EPYC at commit not recorded; "
        "1 point on CPU not recorded at commit not recorded; "
        "2 points on Intel Xeon at abc1234, 2026-11-30 09:00 UTC to 2026-11-30 10:00 UTC")



def test_read_twice_points_stand_beside_the_read_once_ones(bench):
    once = {"mixer": "gla", "d_model": 64}  # stored before the option: read once
    twice = {"mixer": "gla", "d_model": 64, "read_twice": True}
    assert bench.point_key(once) != bench.point_key(twice)
    assert bench.point_key(once) == bench.point_key({**once, "read_twice": False})
    assert (bench.series(once), bench.series(twice)) == ("gla", "gla (read twice)")


def test_stored_read_twice_points_load_beside_the_read_once_ones(bench, tmp_path):
    import json

    setting = {"seq_len": 64}
    rows = [{"mixer": "gla", "d_model": 64, "lr": 0.003, "seq_len": 64, "acc": 0.2},
            {"mixer": "gla", "d_model": 64, "lr": 0.003, "seq_len": 64, "acc": 0.3, "read_twice": True},
            {"mixer": "gla", "d_model": 64, "lr": 0.003, "seq_len": 64, "acc": 0.9}]  # a second copy: the first counts
    path = tmp_path / "points.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    loaded = bench.load_points(path, setting, None)
    assert sorted((bench.series(r), r["acc"]) for r in loaded) == [("gla", 0.2), ("gla (read twice)", 0.3)]


def test_prompt_read_twice_points_stand_apart_and_show_side_by_side(bench):
    rows = [{"mixer": "gla", "d_model": 64, "acc": 0.25},
            {"mixer": "gla", "d_model": 64, "acc": 0.5, "read_twice": True},
            {"mixer": "gla", "d_model": 64, "acc": 0.125, "read_twice": "prompt"},
            {"mixer": "mamba", "d_model": 64, "acc": 0.0625}]
    assert len({bench.point_key(r) for r in rows}) == 4
    assert bench.series(rows[2]) == "gla (prompt read twice)"
    lines = bench.jrt_table(rows).splitlines()
    assert lines[0].startswith("| mixer | d_model | read once | context read twice | change | prompt read twice")
    assert lines[2] == "| gla | 64 | 0.2500 | 0.5000 | +0.2500 | 0.1250 | -0.1250 |", lines[2]
    assert lines[3] == "| mamba | 64 | 0.0625 | – | – | – | – |", lines[3]
    assert bench.jrt_table(rows[:1] + rows[3:]) == ""  # read once only: no side-by-side table
    with pytest.raises(SystemExit, match="is not a JRT-Prompt setting"):
        bench.point_key({"mixer": "gla", "d_model": 64, "read_twice": "twice"})
