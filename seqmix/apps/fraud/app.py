"""The fraud app as the CLI sees it.

    seqmix fraud fit --config configs/fraud/synthetic.yaml              # train the autoencoder
    seqmix fraud cluster --config configs/fraud/synthetic_cluster.yaml  # embed, cluster, report

``cluster`` rebuilds the data and the model from the *fit* config named in its own config
(``fit_config``), loads the trained weights (``checkpoint``), embeds every event's window,
clusters the features with pHDBSCAN, ranks the clusters (fraud rate when labels exist, else
the risk score of :mod:`seqmix.apps.fraud.report`), extracts a rule per risky cluster and
writes the markdown report and its 2-D projection plot (both atomically).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

import numpy as np
import torch
import yaml

from seqmix.apps.fraud.data import EXPERT_NAMES, FraudDataModule
from seqmix.apps.fraud.hdbscan import PHDBSCAN
from seqmix.apps.fraud.model import SequenceAutoencoder
from seqmix.apps.files import atomic_write
from seqmix.apps.fraud.report import projection_plot, rank_clusters, render_report, with_rules
from seqmix.apps.spec import AppSpec


def build_from_fit_config(path: str) -> tuple[FraudDataModule, SequenceAutoencoder]:
    """The datamodule and (untrained) model a fit config describes."""
    from jsonargparse import ArgumentParser

    if not Path(path).is_file():
        raise SystemExit(f"seqmix fraud cluster: fit_config {path!r} does not exist; give the YAML used with "
                         "`seqmix fraud fit --config ...`")
    fit = yaml.safe_load(Path(path).read_text()) or {}
    if "model" not in fit:
        raise SystemExit(f"seqmix fraud cluster: {path} has no `model:` section; is it a fraud fit config?")
    data_parser = ArgumentParser(exit_on_error=False)
    data_parser.add_class_arguments(FraudDataModule, "data")
    data = data_parser.instantiate_classes(data_parser.parse_object({"data": fit.get("data") or {}})).data
    if "n_features" in fit["model"] or "max_len" in fit["model"]:
        raise SystemExit(f"{path}: model.n_features and model.max_len come from the data (links); remove them")
    model_parser = ArgumentParser(exit_on_error=False)
    model_parser.add_class_arguments(SequenceAutoencoder, "model")
    linked = {**fit["model"], "n_features": data.n_step_features, "max_len": data.window}
    model = model_parser.instantiate_classes(model_parser.parse_object({"model": linked})).model
    return data, model


@torch.no_grad()
def embed_all(model: SequenceAutoencoder, features: dict[str, np.ndarray], batch_size: int) -> np.ndarray:
    """The embedding of every window, ``[N, E]``."""
    model.eval()
    steps, mask = torch.from_numpy(features["steps"]), torch.from_numpy(features["mask"])
    return torch.cat([model.embed(steps[i:i + batch_size], mask[i:i + batch_size])
                      for i in range(0, len(steps), batch_size)]).numpy()


def standardise(x: np.ndarray) -> np.ndarray:
    std = x.std(0)
    return ((x - x.mean(0)) / np.where(std > 0, std, 1.0)).astype(np.float32)


def cluster_features(embedding: np.ndarray, expert: np.ndarray,
                     kind: Literal["hybrid", "embedding", "expert"]) -> np.ndarray:
    """Standardised embedding, expert features (``sign * log1p |x|`` first: counts and amounts are
    heavy-tailed), or both."""
    parts = {"embedding": [embedding], "expert": [np.sign(expert) * np.log1p(np.abs(expert))]}
    parts["hybrid"] = parts["embedding"] + parts["expert"]
    if kind not in parts:
        raise ValueError(f"features={kind!r} is unknown; choose 'hybrid', 'embedding' or 'expert'")
    return np.concatenate([standardise(p) for p in parts[kind]], axis=1)


def cluster_command(argv: list[str]) -> int:
    from jsonargparse import ActionConfigFile, ArgumentParser

    parser = ArgumentParser(prog="seqmix fraud cluster", description=__doc__)
    parser.add_argument("--config", action=ActionConfigFile)
    parser.add_argument("--fit_config", type=str, required=True, help="the YAML given to `seqmix fraud fit`")
    parser.add_argument("--checkpoint", type=str, required=True, help="the trained weights (.ckpt)")
    parser.add_argument("--features", type=Literal["hybrid", "embedding", "expert"], default="hybrid")
    parser.add_class_arguments(PHDBSCAN, "clusterer")
    parser.add_argument("--report", type=str, required=True, help="the markdown report to write")
    parser.add_argument("--title", type=str, default="Risky behaviour clusters")
    parser.add_argument("--top", type=int, default=5, help="how many risky clusters get a rule")
    parser.add_argument("--rule_depth", type=int, default=3, help="depth of the rule's decision tree")
    parser.add_argument("--batch_size", type=int, default=4096, help="windows per embedding batch")
    parser.add_argument("--features_out", type=Optional[str], default=None,
                        help="also save the clustered features as .npy (e.g. for benchmarks/hdbscan.py)")
    parser.add_argument("--features_in", type=Optional[str], default=None,
                        help="cluster this .npy (a features_out of the same data and model) instead of embedding again")
    parser.add_argument("--seed", type=int, default=0)
    cfg = parser.parse_args(argv)
    if cfg.top < 1 or cfg.rule_depth < 1 or cfg.batch_size < 1:
        raise SystemExit("seqmix fraud cluster: top, rule_depth and batch_size must be >= 1")
    clusterer = parser.instantiate_classes(cfg).clusterer

    data, model = build_from_fit_config(cfg.fit_config)
    if not Path(cfg.checkpoint).is_file():
        raise SystemExit(f"seqmix fraud cluster: checkpoint {cfg.checkpoint!r} does not exist; train first with "
                         f"`seqmix fraud fit --config {cfg.fit_config}`")
    state = torch.load(cfg.checkpoint, map_location="cpu", weights_only=False)
    model.load_state_dict(state["state_dict"])
    data.setup("predict")
    feats = data.features
    if cfg.features_in:
        points = np.load(cfg.features_in)
        if points.shape[0] != len(feats["label"]):
            raise SystemExit(f"seqmix fraud cluster: {cfg.features_in} has {points.shape[0]} rows but the data has "
                             f"{len(feats['label'])} events; it was saved for other data")
        n_embed = points.shape[1] - (len(EXPERT_NAMES) if cfg.features == "hybrid" else 0)
    else:
        points = cluster_features(embed_all(model, feats, cfg.batch_size), feats["expert"], cfg.features)
        n_embed = points.shape[1] - (len(EXPERT_NAMES) if cfg.features == "hybrid" else 0)
    if cfg.features_out:
        atomic_write(Path(cfg.features_out), lambda tmp: np.save(tmp, points))
    labels = clusterer.fit(points).labels_

    fraud = feats["label"].astype(np.float64)
    kinds = data.events["fraud_type"].to_numpy() if "fraud_type" in data.events else None
    ranked = rank_clusters(labels, feats["expert"], fraud)
    top = with_rules(ranked, labels, feats["expert"], EXPERT_NAMES, fraud, kinds, top=cfg.top,
                     max_depth=cfg.rule_depth, seed=cfg.seed)
    report = Path(cfg.report)
    plot = report.with_suffix(".png")
    projection_plot(points, labels, [s.cluster for s in top], plot, title=cfg.title, seed=cfg.seed)
    timings = ", ".join(f"{k} {v:.1f} s" for k, v in clusterer.timings_.items())
    notes = [f"data: {data.source}, window {data.window} events; features: {cfg.features} "
             f"({points.shape[1]} dims"
             f"{f': embedding {n_embed} + expert {len(EXPERT_NAMES)}' if cfg.features == 'hybrid' else ''})"
             + (f", read from {cfg.features_in}" if cfg.features_in else ""),
             f"model: {cfg.fit_config} weights {cfg.checkpoint}",
             f"pHDBSCAN: min_cluster_size={clusterer.min_cluster_size}, min_samples={clusterer.resolved_min_samples}, "
             f"knn_index={clusterer.knn_index}, cluster_selection_method={clusterer.cluster_selection_method}, "
             f"{clusterer.n_join_rounds_} join rounds; stages: {timings}"]
    text = render_report(title=cfg.title, summaries=top, labels=labels, fraud=fraud, notes=notes,
                         plot_name=plot.name)
    atomic_write(report, lambda tmp: tmp.write_text(text))
    print(text)
    return 0


APP = AppSpec(
    name="fraud",
    description="Behaviour-sequence fraud clustering: Bi-LSTM autoencoder embeddings, pHDBSCAN, cluster rules",
    model_class=SequenceAutoencoder,
    datamodule_class=FraudDataModule,
    links=(("data.n_step_features", "model.n_features"), ("data.window", "model.max_len")),
    commands={"cluster": cluster_command},
)
