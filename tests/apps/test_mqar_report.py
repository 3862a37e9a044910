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
