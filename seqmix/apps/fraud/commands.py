"""``seqmix fraud cluster --config configs/fraud/synthetic_cluster.yaml``: embed, cluster, report.

``cluster`` builds the data and the model from the *fit* config named in its own config
(``fit_config``) exactly as ``seqmix fraud fit`` builds them (the app's LightningCLI and links), loads
the trained weights (``checkpoint``, read as data: ``weights_only=True``), embeds every event's window
(or reads ``features_in``, checked against the data's rows and the model's width), clusters the
features with pHDBSCAN, ranks the clusters (fraud rate when labels exist, else the risk score of
:mod:`seqmix.apps.fraud.report`), extracts a rule per risky cluster and writes the markdown report
and its 2-D projection plot (both atomically). An output path that is an input, or two outputs on
one path (``--report x.png``), is refused before anything is written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

import numpy as np
import torch

from seqmix.apps.files import atomic_write, check_outputs, input_file, refuse_non_finite
from seqmix.apps.fraud.data import EXPERT_NAMES, FraudDataModule
from seqmix.apps.fraud.hdbscan import PHDBSCAN
from seqmix.apps.fraud.model import SequenceAutoencoder
from seqmix.apps.fraud.report import projection_plot, rank_clusters, render_report, with_rules
from seqmix.apps.module import read_checkpoint


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


def build_from_fit_config(path: str) -> tuple[FraudDataModule, SequenceAutoencoder]:
    """The datamodule and (untrained) model that ``seqmix fraud fit --config <path>`` builds: the same
    LightningCLI parse and argument links (:data:`seqmix.apps.fraud.app.APP`)."""
    from seqmix.apps.fraud.app import APP
    from seqmix.cli import app_cli

    cli = app_cli(APP, ["--config", str(input_file(path, "--fit_config", "give the YAML used with `seqmix fraud fit "
                                                    "--config ...`")), "--trainer.logger", "false"], run=False)
    return cli.datamodule, cli.model


def load_weights(model: SequenceAutoencoder, ckpt: dict, checkpoint: str, fit_config: str) -> None:
    """The trained weights of ``ckpt`` (read from ``checkpoint`` by :func:`seqmix.apps.module.read_checkpoint`)
    into ``model``, which ``fit_config`` built; a checkpoint of another model is refused naming what differs."""
    hint = f"train one with `seqmix fraud fit --config {fit_config}`"
    trained = {k: v for k, v in ckpt.get("hyper_parameters", {}).items() if not k.startswith("_")}
    differ = {k: (v, model.hparams.get(k)) for k, v in trained.items() if model.hparams.get(k) != v}
    if differ:
        raise ValueError(f"checkpoint {checkpoint} was trained with other settings than {fit_config} gives "
                         f"({', '.join(f'{k}: {a} vs {b}' for k, (a, b) in differ.items())}); {hint}")
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as err:  # e.g. another recurrence mixer: other weight names or shapes
        raise ValueError(f"checkpoint {checkpoint}: its weights do not fit the model of {fit_config} "
                         f"({' '.join(str(err).split())[:200]}); {hint}") from None


def read_features(path: str, rows: int, width: int, features: str) -> np.ndarray:
    """``--features_in``: a 2-D ``.npy`` of ``rows`` x ``width`` finite values, or a one-line error."""
    file = input_file(path, "--features_in", "give a --features_out of an earlier run")
    try:
        points = np.load(file)  # allow_pickle=False: an object array is refused, never unpickled
    except (ValueError, OSError, EOFError) as err:
        raise ValueError(f"--features_in {file}: is not a .npy array of numbers ({err})") from None
    if points.ndim != 2 or not np.issubdtype(points.dtype, np.number):
        raise ValueError(f"--features_in {file}: is a {points.ndim}-D {points.dtype} array; cluster features are "
                         f"2-D numbers [events, {width}]: give a --features_out of an earlier run")
    if points.shape != (rows, width):
        raise ValueError(f"--features_in {file}: is {points.shape[0]} x {points.shape[1]} but this data and model "
                         f"give {rows} events x {width} {features} features; it was saved for other data, another "
                         "model or other --features")
    refuse_non_finite(points, [str(i) for i in range(width)], f"--features_in {file}")
    return points


def cluster_command(argv: list[str]) -> int:
    """``seqmix fraud cluster``: see the module docstring."""
    from jsonargparse import ActionConfigFile, ArgumentParser

    parser = ArgumentParser(prog="seqmix fraud cluster", description=__doc__)
    parser.add_argument("--config", action=ActionConfigFile)
    parser.add_argument("--fit_config", type=str, required=True, help="the YAML given to `seqmix fraud fit`")
    parser.add_argument("--checkpoint", type=str, required=True, help="the trained weights (.ckpt)")
    parser.add_argument("--features", type=Literal["hybrid", "embedding", "expert"], default="hybrid")
    parser.add_class_arguments(PHDBSCAN, "clusterer")
    parser.add_argument("--report", type=str, required=True, help="the markdown report to write (and its .png plot)")
    parser.add_argument("--title", type=str, default="Risky behaviour clusters")
    parser.add_argument("--top", type=int, default=5, help="how many risky clusters get a rule")
    parser.add_argument("--rule_depth", type=int, default=3, help="depth of the rule's decision tree")
    parser.add_argument("--batch_size", type=int, default=4096, help="windows per embedding batch")
    parser.add_argument("--features_out", type=Optional[str], default=None,
                        help="also save the clustered features as .npy (e.g. for the clustering benchmark)")
    parser.add_argument("--features_in", type=Optional[str], default=None,
                        help="cluster this .npy (a features_out of the same data and model) instead of embedding again")
    parser.add_argument("--seed", type=int, default=0)
    cfg = parser.parse_args(argv)
    if cfg.top < 1 or cfg.rule_depth < 1 or cfg.batch_size < 1:
        raise ValueError(f"top, rule_depth and batch_size must be >= 1, got {cfg.top}, {cfg.rule_depth}, "
                         f"{cfg.batch_size}")
    report = Path(cfg.report)
    plot = report.with_suffix(".png")
    check_outputs([("--report", report), ("the plot (--report with .png)", plot),
                   ("--features_out", cfg.features_out)],
                  [("--features_in", cfg.features_in), ("--checkpoint", cfg.checkpoint),
                   ("--fit_config", cfg.fit_config), *(("--config", str(c)) for c in cfg.get("config") or [])])
    clusterer = parser.instantiate_classes(cfg).clusterer

    ckpt = read_checkpoint(cfg.checkpoint, "fraud", f"train one with `seqmix fraud fit --config {cfg.fit_config}`")
    data, model = build_from_fit_config(cfg.fit_config)
    load_weights(model, ckpt, cfg.checkpoint, cfg.fit_config)
    data.setup("predict")
    feats = data.features
    n_embed = 0 if cfg.features == "expert" else model.hparams.d_embed
    width = n_embed + (0 if cfg.features == "embedding" else len(EXPERT_NAMES))
    if cfg.features_in:
        points = read_features(cfg.features_in, len(feats["label"]), width, cfg.features)
    else:
        points = cluster_features(embed_all(model, feats, cfg.batch_size), feats["expert"], cfg.features)
    if cfg.features_out:
        atomic_write(Path(cfg.features_out), lambda tmp: np.save(tmp, points))
    labels = clusterer.fit(points).labels_

    fraud = feats["label"].astype(np.float64)
    kinds = data.events["fraud_type"].to_numpy() if "fraud_type" in data.events else None
    ranked = rank_clusters(labels, feats["expert"], fraud)
    top = with_rules(ranked, labels, feats["expert"], EXPERT_NAMES, fraud, kinds, top=cfg.top,
                     max_depth=cfg.rule_depth, seed=cfg.seed)
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
