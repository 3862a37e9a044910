"""The recall app: MQAR generator invariants, the datamodule, and tiny fits through the CLI."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from seqmix.apps.recall.data import IGNORE_INDEX, MQARDataModule, generate_mqar, query_slot_probs, repeated_part
from seqmix.cli import main

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "recall"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ------------------------------------------------------------------ generator
def test_generate_mqar_queries_point_to_their_values():
    v, t, p = 64, 40, 5
    batch = generate_mqar(200, vocab_size=v, seq_len=t, num_kv_pairs=p, seed=3)
    assert batch.inputs.shape == batch.targets.shape == (200, t)
    assert batch.inputs.min() >= 0 and batch.inputs.max() < v
    for inputs, targets in zip(batch.inputs.tolist(), batch.targets.tolist()):
        keys, values = inputs[0 : 2 * p : 2], inputs[1 : 2 * p : 2]
        assert len(set(keys)) == p and all(1 <= k < v // 2 for k in keys)
        assert len(set(values)) == p and all(v // 2 <= x < v for x in values)
        pair = dict(zip(keys, values))
        queried = [i for i, y in enumerate(targets) if y != IGNORE_INDEX]
        assert len(queried) == p
        assert sorted(inputs[i] for i in queried) == sorted(keys)  # every key is asked exactly once
        for i in queried:
            assert i >= 2 * p and (i - 2 * p) % 2 == 0  # after the pairs, on a query slot
            assert targets[i] == pair[inputs[i]]


def test_generate_mqar_is_seeded():
    kw = dict(vocab_size=128, seq_len=64, num_kv_pairs=4)
    a, b, c = generate_mqar(50, seed=1, **kw), generate_mqar(50, seed=1, **kw), generate_mqar(50, seed=2, **kw)
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.targets, b.targets)
    assert not torch.equal(a.inputs, c.inputs)


def test_query_gaps_follow_the_power_law():
    t, p, a = 256, 8, 0.01
    n_slots = (t - 2 * p) // 2
    batch = generate_mqar(2000, vocab_size=256, seq_len=t, num_kv_pairs=p, power_a=a, seed=0)
    slots = ((batch.targets != IGNORE_INDEX).nonzero()[:, 1] - 2 * p) // 2
    assert slots.min() >= 0 and slots.max() < n_slots
    counts = torch.bincount(slots, minlength=n_slots).double()
    assert counts[: n_slots // 4].sum() > 2 * counts[-n_slots // 4 :].sum()  # early slots are far more common
    probs = query_slot_probs(n_slots, a)
    assert torch.isclose(probs.sum(), torch.tensor(1.0, dtype=torch.float64))
    assert (probs[1:] < probs[:-1]).all()
    uniform = generate_mqar(2000, vocab_size=256, seq_len=t, num_kv_pairs=p, power_a=1.0, seed=0)
    u_slots = ((uniform.targets != IGNORE_INDEX).nonzero()[:, 1] - 2 * p) // 2
    assert u_slots.double().mean() > slots.double().mean() + 10


@pytest.mark.parametrize("kw, message", [
    (dict(vocab_size=256, seq_len=15, num_kv_pairs=4), "seq_len=15 is too short"),
    (dict(vocab_size=8, seq_len=64, num_kv_pairs=4), "vocab_size=8"),
    (dict(vocab_size=256, seq_len=64, num_kv_pairs=0), "num_kv_pairs must be >= 1"),
    (dict(vocab_size=256, seq_len=64, num_kv_pairs=4, power_a=0.0), "power_a"),
])
def test_impossible_settings_fail_clearly(kw, message):
    with pytest.raises(ValueError, match=message):
        generate_mqar(4, **kw)
    with pytest.raises(ValueError, match=message):
        MQARDataModule(**kw)


def test_datamodule_splits_are_deterministic_and_distinct():
    dm, dm2 = MQARDataModule(num_train=64, num_val=32, num_test=32, seed=5), MQARDataModule(
        num_train=64, num_val=32, num_test=32, seed=5)
    dm.setup("fit"), dm2.setup("fit")
    assert dm.vocab_size == 256 and dm.seq_len == 64
    assert torch.equal(dm.splits["val"].tensors[0], dm2.splits["val"].tensors[0])
    assert not torch.equal(dm.splits["val"].tensors[0], dm.splits["test"].tensors[0])
    inputs, targets = next(iter(dm.train_dataloader()))
    assert inputs.shape == (64, 64) and (targets != IGNORE_INDEX).sum(1).eq(4).all()


def test_training_mixture_spreads_pair_counts_and_leaves_test_alone():
    dm = MQARDataModule(num_train=90, num_val=8, num_test=8, num_kv_pairs=8, train_kv_pairs=[2, 4, 8], seed=1)
    dm.setup("fit")
    queries_per_row = (dm.splits["train"].tensors[1] != IGNORE_INDEX).sum(1)  # [N]
    assert sorted(queries_per_row.unique().tolist()) == [2, 4, 8]
    assert [int(queries_per_row.eq(p).sum()) for p in (2, 4, 8)] == [30, 30, 30]
    assert (dm.splits["test"].tensors[1] != IGNORE_INDEX).sum(1).eq(8).all()
    plain = MQARDataModule(num_train=90, num_val=8, num_test=8, num_kv_pairs=8, seed=1)
    plain.setup("fit")
    assert torch.equal(plain.splits["test"].tensors[0], dm.splits["test"].tensors[0])


@pytest.mark.parametrize("train_kv_pairs, message", [([], "train_kv_pairs is empty"),
                                                     ([4, 40], "too short for num_kv_pairs=40")])
def test_bad_training_mixture_fails_clearly(train_kv_pairs, message):
    with pytest.raises(ValueError, match=message):
        MQARDataModule(train_kv_pairs=train_kv_pairs)


def test_read_twice_repeats_the_context_and_shifts_the_queries():
    kw = dict(vocab_size=64, seq_len=40, num_kv_pairs=5, seed=3)
    once, twice = generate_mqar(20, **kw), generate_mqar(20, read_twice=True, **kw)
    assert twice.inputs.shape == twice.targets.shape == (20, 50)
    assert torch.equal(twice.inputs[:, :10], once.inputs[:, :10])  # the repeated block is the context
    assert torch.equal(twice.inputs[:, 10:], once.inputs)  # then the example as read once, 2P positions later
    assert torch.equal(twice.targets[:, 10:], once.targets) and (twice.targets[:, :10] == IGNORE_INDEX).all()


def test_read_twice_context_is_the_old_true():
    kw = dict(vocab_size=64, seq_len=40, num_kv_pairs=5, seed=3)
    old, named = generate_mqar(6, read_twice=True, **kw), generate_mqar(6, read_twice="context", **kw)
    assert torch.equal(old.inputs, named.inputs) and torch.equal(old.targets, named.targets)
    assert [repeated_part(v) for v in (False, True, "context", "prompt")] == ["none", "context", "context", "prompt"]


def test_read_twice_prompt_repeats_the_whole_example():
    """The paper's A(C, Q, C, Q): the example read once without targets, then again with them."""
    kw = dict(vocab_size=64, seq_len=40, num_kv_pairs=5, seed=3)
    once, twice = generate_mqar(20, **kw), generate_mqar(20, read_twice="prompt", **kw)
    assert twice.inputs.shape == twice.targets.shape == (20, 80)
    assert torch.equal(twice.inputs[:, :40], once.inputs) and torch.equal(twice.inputs[:, 40:], once.inputs)
    assert (twice.targets[:, :40] == IGNORE_INDEX).all() and torch.equal(twice.targets[:, 40:], once.targets)


@pytest.mark.parametrize("bad", ["twice", "none", 2])
def test_read_twice_unknown_setting_fails_clearly(bad):
    with pytest.raises(ValueError, match="is not a JRT-Prompt setting; use false"):
        generate_mqar(2, vocab_size=64, seq_len=40, num_kv_pairs=5, read_twice=bad)
    with pytest.raises(ValueError, match="is not a JRT-Prompt setting"):
        MQARDataModule(read_twice=bad)


def test_read_twice_prompt_datamodule_doubles_every_example():
    dm = MQARDataModule(seq_len=32, num_kv_pairs=4, train_kv_pairs=[2, 6], num_train=8, num_val=4, num_test=4,
                        read_twice="prompt", seed=1)
    dm.setup("fit")
    assert dm.seq_len == 64
    for split in ("train", "val", "test"):
        inputs, targets = dm.splits[split].tensors
        assert inputs.shape == targets.shape == (len(inputs), 64)
        assert torch.equal(inputs[:, :32], inputs[:, 32:]) and (targets[:, :32] == IGNORE_INDEX).all()
        assert ((targets[:, 32:] != IGNORE_INDEX).sum(1) > 0).all()
    plain = MQARDataModule(seq_len=32, num_kv_pairs=4, num_test=4, seed=1)
    plain.setup("test")
    assert torch.equal(dm.splits["test"].tensors[0][:, 32:], plain.splits["test"].tensors[0])


def test_read_twice_datamodule_has_one_longer_length():
    dm = MQARDataModule(seq_len=32, num_kv_pairs=4, train_kv_pairs=[2, 6], num_train=8, num_val=4, num_test=4,
                        read_twice=True, seed=1)
    dm.setup("fit")
    assert dm.seq_len == 32 + 2 * 6  # the longest context, linked to the model's max_len
    for split in ("train", "val", "test"):
        inputs, targets = dm.splits[split].tensors
        assert inputs.shape == targets.shape == (len(inputs), 44)
        pairs = (targets != IGNORE_INDEX).sum(1)  # [N]
        for row, p in zip(inputs, pairs.tolist()):
            assert torch.equal(row[: 2 * p], row[2 * p : 4 * p])
    plain = MQARDataModule(seq_len=32, num_kv_pairs=4, num_train=8, num_val=4, num_test=4, seed=1)
    plain.setup("fit")
    assert plain.seq_len == 32 and plain.splits["test"].tensors[0].shape == (4, 32)


# ---------------------------------------------------------------- CLI fits
def _fit_and_test(tmp_path: Path, config: str, steps: int, extra: list[str] = ()) -> tuple[dict[str, float], Path]:
    """fit then test through ``seqmix.cli.main``; the config's relative ``runs/`` paths land in ``tmp_path``.
    Returns the last logged metrics and the checkpoint."""
    common = ["--config", str(CONFIGS / config), "--trainer.enable_progress_bar", "false", "--trainer.log_every_n_steps", "1",
              "--data.num_train", "512", "--data.num_val", "64", "--data.num_test", "64", *extra]
    main(["recall", "fit", *common, "--trainer.max_steps", str(steps), "--trainer.val_check_interval", str(steps),
          "--trainer.limit_val_batches", "1"])
    ckpt = tmp_path / "runs" / "recall" / config.removesuffix(".yaml") / "version_0" / "checkpoints" / "last.ckpt"
    assert ckpt.exists(), f"fit wrote no checkpoint at {ckpt}"
    main(["recall", "test", *common, "--ckpt_path", str(ckpt)])
    rows = [row for path in sorted(tmp_path.rglob("metrics.csv")) for row in csv.DictReader(path.open())]
    last = {}
    for row in rows:
        last.update({k: float(v) for k, v in row.items() if v not in ("", None)})
    return last, ckpt


def _generate(ckpt: Path, capsys, *options: str) -> tuple[list[str], float, float]:
    """``seqmix recall generate`` on ``ckpt``: its lines, the decoded and the full-forward accuracy."""
    capsys.readouterr()
    assert main(["recall", "generate", "--ckpt", str(ckpt), *options]) == 0
    lines = capsys.readouterr().out.splitlines()
    summary = next(line for line in lines if line.startswith("accuracy:"))
    decoded, forward = (float(summary.split(name)[1].split()[0].rstrip(",")) for name in ("decoded ", "argmax "))
    return lines, decoded, forward


@pytest.mark.parametrize("config", ["softmax.yaml", "gla.yaml"])
def test_tiny_fit_and_test_through_the_cli(tmp_path, monkeypatch, capsys, config):
    monkeypatch.chdir(tmp_path)
    if not (CONFIGS / config).exists():
        pytest.fail(f"configs/recall/{config} is missing")
    metrics, ckpt = _fit_and_test(tmp_path, config, steps=3, extra=["--model.d_model", "32"])
    assert "train/loss" in metrics and "test/acc" in metrics and "val/acc" in metrics
    assert torch.isfinite(torch.tensor(metrics["train/loss"]))
    assert 0.0 <= metrics["test/acc"] <= 1.0
    lines, decoded, forward = _generate(ckpt, capsys, "--examples", "3")  # greedy: equal to the forward, query by query
    assert decoded == forward and lines[-1].endswith("decoded = forward argmax on 12/12")
    assert [line.split(":")[0] for line in lines[1:4]] == ["example   0", "example   1", "example   2"]


@pytest.mark.parametrize("read_twice, described", [("true", "T=32, 4 pairs, context read twice"),
                                                     ("prompt", "T=48, 4 pairs, whole prompt read twice")])
def test_tiny_read_twice_fit_and_generate(tmp_path, monkeypatch, capsys, read_twice, described):
    """JRT-Prompt through the CLI: the longer length reaches the model's max_len (learned positions
    refuse a longer sequence), and generate draws its examples with the context (or prompt) read twice."""
    monkeypatch.chdir(tmp_path)
    metrics, ckpt = _fit_and_test(tmp_path, "gla.yaml", steps=2, extra=[
        "--data.read_twice", read_twice, "--data.seq_len", "24", "--model.d_model", "16"])
    assert torch.isfinite(torch.tensor(metrics["train/loss"])) and 0.0 <= metrics["test/acc"] <= 1.0
    lines, decoded, forward = _generate(ckpt, capsys, "--examples", "2")
    assert described in lines[0], lines[0]
    assert decoded == forward and lines[-1].endswith("decoded = forward argmax on 8/8"), lines[-1]


def test_tiny_softmax_model_learns_mqar(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    # 2 pairs at T=16 and vocab 32: chance on a query is 1/16 (values are the upper half).
    metrics, ckpt = _fit_and_test(tmp_path, "softmax.yaml", steps=250, extra=[
        "--data.vocab_size", "32", "--data.seq_len", "16", "--data.num_kv_pairs", "2", "--data.batch_size", "32",
        "--model.d_model", "32", "--model.lr", "3e-3", "--model.warmup_steps", "20"])
    assert metrics["test/acc"] > 0.5, metrics
    # decoding answers the queries of the test split as the forward does (greedy, and beam 4 on one token)
    lines, decoded, forward = _generate(ckpt, capsys, "--examples", "32")
    assert decoded == forward > 0.5 and lines[-1].endswith("on 64/64"), lines[-1]
    _, beam, _ = _generate(ckpt, capsys, "--examples", "32", "--strategy", "beam")
    assert beam == decoded, "one token: the best beam is the argmax"
    _, sampled, _ = _generate(ckpt, capsys, "--examples", "32", "--strategy", "sample", "--top_k", "1", "--seed", "0")
    assert sampled == decoded, "top-k 1 sampling is greedy"


def test_generate_errors_are_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit, match="seqmix recall generate: error: .*nope.ckpt.*seqmix recall fit"):
        main(["recall", "generate", "--ckpt", str(tmp_path / "nope.ckpt")])


def test_predict_step_returns_values_at_the_queries():
    from seqmix.apps.recall.model import RecallLM
    from seqmix.core.blocks import mixer_factory

    batch = generate_mqar(3, vocab_size=32, seq_len=16, num_kv_pairs=2, seed=0)
    model = RecallLM(mixer_factory("softmax", n_heads=1), vocab_size=32, max_len=16, d_model=16, n_layers=1)
    out = model.predict_step((batch.inputs, batch.targets), 0)
    assert out["predicted"].shape == out["target"].shape == (6,)
    assert torch.equal(out["target"], batch.targets[out["example"], out["position"]])
    logits = model(batch.inputs)  # [B, T, V]
    assert torch.equal(out["predicted"], logits[out["example"], out["position"]].argmax(-1))
    with pytest.raises(ValueError, match="exceeds max_len=16"):
        model(torch.zeros(1, 17, dtype=torch.long))
    with pytest.raises(ValueError, match="vocab_size=32"):
        model(torch.full((1, 4), 32))
