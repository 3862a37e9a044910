"""Rank clusters by risk and write the markdown report with rules and a 2-D projection plot.

Ranking: by fraud rate when labels exist (share of the cluster's events labelled fraud);
otherwise by a *risk score*: how atypical the cluster's typical behaviour is, the mean over
expert features of ``|median_cluster - median_all| / IQR_all`` (features with zero IQR use
their standard deviation; zero spread counts 0). Noise (label -1) is never ranked.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from seqmix.apps.files import pyplot, save_figure
from seqmix.apps.fraud.rules import Rule, cluster_rule


@dataclass(frozen=True)
class ClusterSummary:
    cluster: int
    size: int
    fraud_rate: float | None
    risk: float
    rule: Rule | None = None
    top_types: str = ""


def risk_scores(expert: np.ndarray, labels: np.ndarray) -> dict[int, float]:
    """The label-free risk score of every cluster (see the module docstring)."""
    med = np.median(expert, 0)
    q75, q25 = np.percentile(expert, [75, 25], axis=0)
    scale = np.where(q75 - q25 > 0, q75 - q25, expert.std(0))
    scale = np.where(scale > 0, scale, np.inf)  # a constant feature says nothing
    return {int(c): float(np.mean(np.abs(np.median(expert[labels == c], 0) - med) / scale))
            for c in np.unique(labels) if c >= 0}


def rank_clusters(labels: np.ndarray, expert: np.ndarray, fraud: np.ndarray | None) -> list[ClusterSummary]:
    """Every non-noise cluster, riskiest first (fraud rate when known, else the risk score)."""
    risk = risk_scores(expert, labels)
    out = []
    for c, r in risk.items():
        members = labels == c
        out.append(ClusterSummary(cluster=c, size=int(members.sum()), risk=r,
                                  fraud_rate=None if fraud is None else float(fraud[members].mean())))
    key = (lambda s: (s.fraud_rate, s.size)) if fraud is not None else (lambda s: (s.risk, s.size))
    return sorted(out, key=key, reverse=True)


def with_rules(ranked: list[ClusterSummary], labels: np.ndarray, expert: np.ndarray, names: tuple[str, ...],
               fraud: np.ndarray | None, kinds: np.ndarray | None, *, top: int, max_depth: int,
               seed: int) -> list[ClusterSummary]:
    """The ``top`` riskiest clusters with their rule (and, when given, their commonest event kinds)."""
    out = []
    for s in ranked[:top]:
        members = labels == s.cluster
        rule = cluster_rule(expert, members, names, max_depth=max_depth, fraud=fraud, seed=seed)
        types = ""
        if kinds is not None:
            values, counts = np.unique(kinds[members], return_counts=True)
            order = np.argsort(-counts)[:3]
            types = ", ".join(f"{values[i]} {counts[i] / members.sum():.0%}" for i in order)
        out.append(ClusterSummary(s.cluster, s.size, s.fraud_rate, s.risk, rule, types))
    return out


def provenance() -> list[str]:
    """Command, commit, date and machine lines for a report."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    cpu = "unknown CPU"
    if Path("/proc/cpuinfo").exists():
        cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                    if ln.lower().startswith("model name")), cpu)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return [f"- command: `seqmix {' '.join(shlex.quote(a) for a in sys.argv[1:]) or 'fraud cluster'}`",
            f"- commit: `{commit}`", f"- date: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M UTC}",
            f"- machine: {cpu}, {cores} cores, Python {platform.python_version()}"]


def projection_plot(points: np.ndarray, labels: np.ndarray, highlight: list[int], path: Path, *,
                    title: str, max_points: int = 30000, seed: int = 0) -> None:
    """A PCA projection of ``points`` (a sample), grey noise, pale other clusters, the risky ones named."""
    plt = pyplot()
    from sklearn.decomposition import PCA

    rng = np.random.default_rng(seed)
    rows = np.arange(len(points))
    if len(rows) > max_points:
        rows = np.sort(rng.choice(rows, size=max_points, replace=False))
    xy = PCA(n_components=2, random_state=seed).fit(points[rows]).transform(points[rows])  # [S, 2]
    lab = labels[rows]
    fig, ax = plt.subplots(figsize=(7, 6))
    ax.scatter(*xy[lab < 0].T, s=2, c="#d0d0d0", label="noise")
    ax.scatter(*xy[lab >= 0].T, s=2, c=lab[lab >= 0] % 20, cmap="tab20", alpha=0.25)
    for rank, c in enumerate(highlight, 1):
        sel = lab == c
        ax.scatter(*xy[sel].T, s=8, label=f"#{rank}: cluster {c}")
    ax.set(title=title, xlabel="PC 1", ylabel="PC 2")
    ax.legend(markerscale=3, fontsize=8, loc="best")
    save_figure(fig, path)


def render_report(*, title: str, summaries: list[ClusterSummary], labels: np.ndarray, fraud: np.ndarray | None,
                  notes: list[str], plot_name: str | None) -> str:
    n = len(labels)
    n_clusters = int(labels.max() + 1) if (labels >= 0).any() else 0
    base = None if fraud is None else float(fraud.mean())
    lines = [f"# {title}", "", *provenance(), *[f"- {x}" for x in notes],
             f"- events: {n:,}; clusters: {n_clusters}; noise: {(labels < 0).mean():.1%}"
             + ("" if base is None else f"; base fraud rate: {base:.2%}"), ""]
    ranked_by = "fraud rate" if fraud is not None else "risk score (no labels; see seqmix/apps/fraud/report.py)"
    lines += [f"## The {len(summaries)} riskiest clusters, by {ranked_by}", ""]
    head = ["rank", "cluster", "size", "fraud rate", "x base", "risk score", "rule (expert features)",
            "rule precision / recall", "rule fraud rate", "commonest kinds"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for rank, s in enumerate(summaries, 1):
        r = s.rule
        rate = "–" if s.fraud_rate is None else f"{s.fraud_rate:.1%}"
        lift = "–" if s.fraud_rate is None or not base else f"{s.fraud_rate / base:.1f}"
        rule_rate = "–" if r is None or r.fraud_rate is None else f"{r.fraud_rate:.1%}"
        lines.append(f"| {rank} | {s.cluster} | {s.size:,} | {rate} | {lift} | {s.risk:.2f} | "
                     f"`{r.text if r else ''}` | {r.precision:.2f} / {r.recall:.2f} | {rule_rate} | {s.top_types} |")
    lines.append("")
    if plot_name:
        lines += [f"![2-D PCA projection of the clustered features]({plot_name})", ""]
    return "\n".join(lines)
