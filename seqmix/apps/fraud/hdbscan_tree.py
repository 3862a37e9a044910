"""Flat clusters from an HDBSCAN condensed tree, vectorised over the points.

The hdbscan library's ``compute_stability``, ``get_clusters`` and ``outlier_scores`` are
compiled, but they visit every row of the condensed tree (one row per point) with Python
objects in the loop (set and dict look-ups, ``np.isfinite`` on scalars): at 100k points
they cost more than the k-NN search of pHDBSCAN. Here the per-point work is numpy over
whole columns and only the per-*cluster* work (a few thousand tree nodes at most) is a
Python loop. The results are the library's, value for value, for the options pHDBSCAN
exposes (``cluster_selection_method`` "eom" / "leaf", ``allow_single_cluster``; no
``cluster_selection_epsilon``, no ``max_cluster_size``): checked against the library in
``tests/apps/test_fraud_hdbscan.py``.

The condensed tree is the library's record array ``(parent, child, lambda_val,
child_size)`` from ``hdbscan._hdbscan_tree.condense_tree``: points are ids ``0..n-1``, the
root cluster is ``n``, and every cluster id is larger than its parent's (the loops below
rely on that order, as the library does).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np


@dataclass
class CondensedTree:
    """Columns of a condensed tree, with its clusters numbered ``0..n_clusters-1`` from the root."""

    parent: np.ndarray  # [rows] cluster id - root
    child: np.ndarray  # [rows] point id, or cluster id (>= root)
    lam: np.ndarray  # [rows] lambda = 1 / distance at which the child leaves the parent
    size: np.ndarray  # [rows] points in the child
    root: int  # number of points = id of the root cluster
    n_clusters: int

    @classmethod
    def of(cls, tree: np.ndarray) -> "CondensedTree":
        root = int(tree["parent"].min())
        parent = tree["parent"].astype(np.intp) - root
        return cls(parent, tree["child"].astype(np.intp), tree["lambda_val"].astype(np.float64),
                   tree["child_size"].astype(np.intp), root, int(parent.max()) + 1)

    @property
    def is_point(self) -> np.ndarray:
        return self.child < self.root

    def cluster_rows(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(cluster, parent, lambda)`` of every non-root cluster, by ascending cluster (top-down)."""
        rows = np.flatnonzero(~self.is_point)
        cluster = self.child[rows] - self.root
        order = np.argsort(cluster, kind="stable")
        return cluster[order], self.parent[rows][order], self.lam[rows][order]

    def max_child_lambda(self) -> np.ndarray:
        """Per cluster, the largest lambda among its direct children (the library's ``max_lambdas``)."""
        deaths = np.zeros(self.n_clusters)
        np.maximum.at(deaths, self.parent, self.lam)
        return deaths


def stabilities(tree: CondensedTree) -> np.ndarray:
    """Stability of each cluster: ``sum over children (lambda - lambda_birth) * child_size``.

    ``bincount`` adds in row order, as the library's loop, so the sums are bit-identical.
    """
    birth = np.zeros(tree.n_clusters)
    cluster, _, lam = tree.cluster_rows()
    birth[cluster] = lam  # the root is born at lambda 0
    weights = (tree.lam - birth[tree.parent]) * tree.size
    return np.bincount(tree.parent, weights=weights, minlength=tree.n_clusters)


def select_clusters(tree: CondensedTree, stability: np.ndarray, method: Literal["eom", "leaf"],
                    allow_single_cluster: bool) -> tuple[np.ndarray, np.ndarray]:
    """The selected clusters (ascending) and the stabilities after EOM's bottom-up pass."""
    stability = stability.copy()
    cluster, parent, _ = tree.cluster_rows()
    children: list[list[int]] = [[] for _ in range(tree.n_clusters)]
    for c, p in zip(cluster.tolist(), parent.tolist()):
        children[p].append(c)
    if method == "leaf":
        leaves = [c for c in cluster.tolist() if not children[c]]
        return np.asarray(leaves, dtype=np.intp), stability
    if method != "eom":
        raise ValueError(f"cluster_selection_method={method!r} is unknown; choose 'eom' or 'leaf'")
    lowest = 0 if allow_single_cluster else 1  # the root (cluster 0) competes only with allow_single_cluster
    chosen = np.zeros(tree.n_clusters, dtype=bool)
    for node in range(tree.n_clusters - 1, lowest - 1, -1):  # bottom-up: children have larger ids
        subtree = np.float32(0.0)  # the library sums in a C float: same rounding, same ties
        for c in children[node]:
            subtree = np.float32(np.float64(subtree) + stability[c])
        if subtree > stability[node]:
            stability[node] = subtree
        else:
            chosen[node] = True
    # a chosen node hides every chosen node below it: keep the topmost ones (top-down pass)
    hidden = np.zeros(tree.n_clusters, dtype=bool)
    for c, p in zip(cluster.tolist(), parent.tolist()):
        hidden[c] = hidden[p] or chosen[p]
    return np.flatnonzero(chosen & ~hidden), stability


def flat_clusters(tree: CondensedTree, selected: np.ndarray,
                  stability: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels (-1 = noise), membership probabilities and per-cluster persistence, as ``get_clusters``."""
    label_of = np.full(tree.n_clusters, -1, dtype=np.intp)  # cluster -> label of its selected ancestor (or self)
    label_of[selected] = np.arange(len(selected))
    cluster, parent, _ = tree.cluster_rows()
    for c, p in zip(cluster.tolist(), parent.tolist()):  # top-down
        if label_of[c] < 0:
            label_of[c] = label_of[p]
    points = tree.is_point
    point_id, point_parent, point_lam = tree.child[points], tree.parent[points], tree.lam[points]
    row_label = label_of[point_parent]
    if len(selected) == 1 and selected[0] == 0:  # the root alone (EOM with allow_single_cluster)
        # as the library: a point stays only if it leaves no earlier than the root's last direct child
        row_label = np.where(point_lam >= tree.lam[tree.parent == 0].max(), 0, -1)
    labels = np.full(tree.root, -1, dtype=np.intp)
    labels[point_id] = row_label

    deaths = tree.max_child_lambda()
    probabilities = np.zeros(tree.root)
    member = row_label >= 0
    death = deaths[selected[row_label[member]]]
    lam = point_lam[member]
    with np.errstate(divide="ignore", invalid="ignore"):
        strength = np.where((death == 0) | ~np.isfinite(lam), 1.0, np.minimum(lam, death) / death)
    probabilities[point_id[member]] = strength

    max_lambda = tree.lam.max()
    sizes = np.bincount(labels[labels >= 0], minlength=len(selected))
    with np.errstate(divide="ignore", invalid="ignore"):
        persistence = stability[selected] / (sizes * max_lambda)
    persistence = np.where(np.isinf(max_lambda) | (max_lambda == 0) | (sizes == 0), 1.0, persistence)
    return labels, probabilities, persistence


def glosh_scores(tree: CondensedTree) -> np.ndarray:
    """GLOSH outlier scores: ``(lambda_max of the point's cluster subtree - lambda) / lambda_max``."""
    deaths = tree.max_child_lambda()
    cluster, parent, _ = tree.cluster_rows()
    for c, p in zip(cluster[::-1].tolist(), parent[::-1].tolist()):  # bottom-up: subtree maxima
        if deaths[c] > deaths[p]:
            deaths[p] = deaths[c]
    points = tree.is_point
    lam = tree.lam[points]
    top = deaths[tree.parent[points]]
    scores = np.zeros(tree.root)
    with np.errstate(divide="ignore", invalid="ignore"):
        scores[tree.child[points]] = np.where((top == 0) | ~np.isfinite(lam), 0.0, (top - lam) / top)
    return scores
