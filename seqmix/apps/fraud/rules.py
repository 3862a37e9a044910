"""Human-readable rules for clusters: a shallow decision tree over the expert features.

For one cluster, a tree of depth ``max_depth`` learns "in this cluster vs not" from the
expert features (readable units: counts, amounts, hours); the leaf that best describes the
cluster (highest F1 of cluster membership) becomes a conjunction of the conditions on its
path, with repeated conditions on one feature merged, e.g.
``txn_count_1h > 12 and distinct_cards_24h >= 3``. Its precision (share of matched events in
the cluster), recall (share of the cluster matched) and the fraud rate of all matched
events are reported with it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.tree import DecisionTreeClassifier


@dataclass(frozen=True)
class Rule:
    text: str
    precision: float  # matched events that are in the cluster
    recall: float  # cluster events the rule matches
    matched: int  # events (of all) the rule matches
    fraud_rate: float | None  # fraud rate among matched events (None without labels)


def _fmt(value: float) -> str:
    return f"{value:.0f}" if abs(value - round(value)) < 1e-9 else f"{value:.6g}"


def _condition(name: str, low: float | None, high: float | None, column: np.ndarray) -> str:
    """``low < x <= high`` in words; integer features read ``x >= a``, ``x <= b`` or ``x == a``."""
    if not np.all(column == np.round(column)):
        parts = ([f"{name} > {_fmt(low)}"] if low is not None else []) + (
            [f"{name} <= {_fmt(high)}"] if high is not None else [])
        return " and ".join(parts)
    lo = None if low is None or np.floor(low) + 1 <= column.min() else np.floor(low) + 1
    hi = None if high is None or np.floor(high) >= column.max() else np.floor(high)
    if lo is not None and hi is not None and lo == hi:
        return f"{name} == {_fmt(lo)}"
    if lo is None and hi is not None and hi == column.min():
        return f"{name} == {_fmt(hi)}"
    if hi is None and lo is not None and lo == column.max():
        return f"{name} == {_fmt(lo)}"
    return " and ".join(([f"{name} >= {_fmt(lo)}"] if lo is not None else []) +
                        ([f"{name} <= {_fmt(hi)}"] if hi is not None else []))


def cluster_rule(expert: np.ndarray, in_cluster: np.ndarray, names: tuple[str, ...], *, max_depth: int = 3,
                 fraud: np.ndarray | None = None, max_rows: int = 60000, seed: int = 0) -> Rule:
    """The rule that best isolates ``in_cluster`` (bool ``[N]``) with ``expert [N, E]`` features."""
    if expert.ndim != 2 or expert.shape[1] != len(names) or in_cluster.shape != (len(expert),):
        raise ValueError(f"cluster_rule: expert must be [N, {len(names)}] and in_cluster [N]; "
                         f"got {expert.shape} and {in_cluster.shape}")
    if not in_cluster.any() or in_cluster.all():
        raise ValueError("cluster_rule: the cluster must be a proper, non-empty subset of the events")
    rng = np.random.default_rng(seed)
    rows = np.arange(len(expert))
    if len(rows) > max_rows:  # keep the cluster, sample the rest: the tree stays fast on 590k events
        inside, outside = rows[in_cluster], rows[~in_cluster]
        inside = rng.choice(inside, size=min(len(inside), max_rows // 2), replace=False)
        outside = rng.choice(outside, size=min(len(outside), max_rows - len(inside)), replace=False)
        rows = np.concatenate([inside, outside])
    weight = np.where(in_cluster[rows], 1.0 / in_cluster[rows].sum(), 1.0 / (~in_cluster[rows]).sum())
    tree = DecisionTreeClassifier(max_depth=max_depth, min_samples_leaf=5, random_state=seed)
    tree.fit(expert[rows], in_cluster[rows], sample_weight=weight)

    # the leaf with the best F1 for the cluster, measured on all events
    leaf_of = tree.apply(expert)
    best, best_f1 = None, -1.0
    for leaf in np.unique(leaf_of[in_cluster]):
        hit = leaf_of == leaf
        tp = (hit & in_cluster).sum()
        f1 = 2 * tp / (hit.sum() + in_cluster.sum())
        if f1 > best_f1:
            best, best_f1 = leaf, f1

    # the path to that leaf, merged into one interval per feature
    t = tree.tree_
    parent = {}
    for node in range(t.node_count):
        for child, side in ((t.children_left[node], "le"), (t.children_right[node], "gt")):
            if child != -1:
                parent[child] = (node, side)
    bounds: dict[int, list[float | None]] = {}
    node = best
    while node in parent:
        node, side = parent[node]
        f, thr = int(t.feature[node]), float(t.threshold[node])
        low, high = bounds.setdefault(f, [None, None])
        if side == "gt":
            bounds[f][0] = thr if low is None else max(low, thr)
        else:
            bounds[f][1] = thr if high is None else min(high, thr)
    conditions = [c for f in sorted(bounds) if (c := _condition(names[f], *bounds[f], expert[:, f]))]
    hit = leaf_of == best
    return Rule(text=" and ".join(conditions) or "(all events)",
                precision=float((hit & in_cluster).sum() / hit.sum()),
                recall=float((hit & in_cluster).sum() / in_cluster.sum()), matched=int(hit.sum()),
                fraud_rate=None if fraud is None else float(fraud[hit].mean()))
