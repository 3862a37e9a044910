"""benchmarks/common.py's run cache: a rerun's record replaces the cached one, and the replaced record is kept in
the cache's history file (a new run never loses an earlier one); the same record again leaves no history."""

import json

import benchmarks.common as common


def test_a_replaced_record_is_kept_in_the_history(tmp_path, monkeypatch):
    monkeypatch.setattr(common, "RESULTS_DIR", tmp_path)  # the lock file's folder
    cache = tmp_path / "demo_runs.json"
    common.add_cached_run(cache, "train:a", {"steps": 100})
    common.add_cached_run(cache, "train:b", {"steps": 7})
    common.add_cached_run(cache, "train:a", {"steps": 100})  # the same record: nothing replaced
    history = common.history_path(cache)
    assert history == tmp_path / "demo_runs.history.jsonl" and not history.exists()
    runs = common.add_cached_run(cache, "train:a", {"steps": 200})
    assert runs == {"train:a": {"steps": 200}, "train:b": {"steps": 7}} == json.loads(cache.read_text())
    common.add_cached_run(cache, "train:a", {"steps": 300})
    kept = [json.loads(line) for line in history.read_text().splitlines()]
    assert [(k["key"], k["record"]) for k in kept] == [("train:a", {"steps": 100}), ("train:a", {"steps": 200})]
    assert all(k["replaced_at"].endswith("UTC") for k in kept)
