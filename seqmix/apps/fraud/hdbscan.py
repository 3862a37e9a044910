"""pHDBSCAN: HDBSCAN over a FAISS k-NN graph, for the CPU and the GPU.

The idea of FinDeepBehaviorCluster's pHDBSCAN: HDBSCAN needs the minimum spanning tree
(MST) of the *mutual-reachability* graph, ``mr(a, b) = max(core(a), core(b), d(a, b))``,
but almost every MST edge joins near neighbours, so the MST can be taken over the k-NN
graph instead of all ``n^2 / 2`` pairs. The pipeline:

1. k-NN of every point (``knn_index``: ``"exact"`` FAISS brute force, ``"hnsw"`` a FAISS
   graph index, ``"ivf"`` inverted lists; on ``device="cuda"`` a FAISS GPU index). On the
   CPU, ``"ivf"`` is a batched IVF self-join (:func:`ivf_self_knn`): every point probes its
   own ``nprobe`` nearest k-means lists, as in a per-query IVF search, but the work is done
   list by list (all queries probing a list against it, one BLAS block), threads over
   lists, and the partial results are merged. ``core(a)`` = distance to the
   ``min_samples``-th neighbour (the point itself not counted, as in the hdbscan library).
2. Mutual-reachability weights on the k-NN edges, MST with scipy's
   ``minimum_spanning_tree`` on the sparse graph.
3. The k-NN graph of well-separated clusters is disconnected; the components are joined
   Boruvka-style (:func:`join_components`): each round, every component is linked to its
   nearest components (by centroid) through the cheapest mutual-reachability edge between
   their facing points, and the MST is recomputed, until one tree spans every point.
4. Library tree routines turn the MST into the single-linkage tree (scikit-learn's
   ``single_linkage_label``, the same union-find as hdbscan's ``label`` but ~30x faster)
   and the hdbscan library's condensed tree (``condense_tree``). They crash (segmentation
   fault) on malformed input instead of raising, so the MST is checked first
   (:func:`check_spanning_tree`).
5. Stabilities, EOM / leaf selection, labels, probabilities and GLOSH outlier scores with
   :mod:`seqmix.apps.fraud.hdbscan_tree`: the library's results value for value, numpy over
   the points instead of its per-row loops (0.4 CPU-s at 100k points there, 0.004 here).

Partitioned mode (``partitions > 1``), for data larger than memory (``X`` may be a
``numpy.memmap``): the points are split by k-means into parts; each part is loaded alone
and gets its own k-NN graph, core distances and spanning tree; the union of the part
trees is then joined across parts with the same Boruvka step and the hierarchy is built
once. Only one part's points, the ``n - 1`` tree edges and ``n`` core distances are held
at a time. Its cost in accuracy: k-NN and core distances near part borders only see
their own part (measured in ``benchmarks/results/hdbscan.md``, ARI against the
non-partitioned result).

Documented behaviour on degenerate input (see ``tests/apps/test_fraud_hdbscan.py``):
``fit`` validates its parameters and ``X`` with scikit-learn's own checks (``validate_data``:
lists and object arrays of numbers are accepted; sparse, complex, 1-D, empty or one-row
``X`` raise a ``ValueError``; ``check_estimator`` passes: ``tests/apps/test_phdbscan_estimator.py``);
NaN / inf rows and fewer points than ``min_cluster_size`` raise a ``ValueError`` that names
the problem. Any finite magnitude clusters (:class:`Rows` scales by powers of two before the
float32 cast; values whose distances overflow float64, ``|x|`` near 1e308, are refused);
all-identical points have no density structure and are all noise (label -1, probability 0,
outlier score 0), as in the hdbscan library, or one cluster with
``allow_single_cluster=True``; d = 1 is supported.
"""

from __future__ import annotations

import math
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from numbers import Integral
from typing import Literal

import faiss
import numpy as np
import scipy.sparse as sp
from hdbscan._hdbscan_tree import condense_tree
from scipy.sparse.csgraph import connected_components, minimum_spanning_tree
from sklearn.base import BaseEstimator, ClusterMixin
from sklearn.cluster._hierarchical_fast import single_linkage_label
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import validate_data
from threadpoolctl import threadpool_limits

from seqmix.apps.fraud.hdbscan_tree import CondensedTree, flat_clusters, glosh_scores, select_clusters, stabilities

KnnIndex = Literal["exact", "ivf", "hnsw"]
Metric = Literal["euclidean", "cosine"]
_CHUNK = 65536  # rows per chunk when streaming over X (memmap-friendly)
_TINY = np.finfo(np.float64).tiny  # stands for a zero weight: scipy drops explicit zeros as "no edge"


# ---------------------------------------------------------------- input
def check_data(X: np.ndarray, *, metric: Metric, min_cluster_size: int) -> float:
    """Fail with a clear message on input pHDBSCAN cannot cluster; return the largest ``|x|``.

    ``X`` has been through scikit-learn's ``validate_data`` (2-D, real, >= 2 rows); this
    streams over it for what that does not check.
    """
    n, d = X.shape
    if n < min_cluster_size:
        raise ValueError(f"X has {n} points but min_cluster_size={min_cluster_size}: no cluster can form; "
                         f"give at least min_cluster_size points or lower min_cluster_size")
    if metric == "cosine" and d < 2:
        raise ValueError("metric='cosine' on 1 feature only sees the sign of each value; use metric='euclidean'")
    largest = 0.0
    for start in range(0, n, _CHUNK):
        size = np.abs(np.asarray(X[start:start + _CHUNK]))  # [m, d]
        finite = np.isfinite(size).all(axis=1)
        if not finite.all():
            bad = start + np.flatnonzero(~finite)
            raise ValueError(f"X has {len(bad)}+ rows with NaN or inf (first rows {bad[:5].tolist()}); "
                             "drop or impute them before clustering")
        if metric == "cosine":
            zero = size.max(axis=1) == 0
            if zero.any():
                bad = start + np.flatnonzero(zero)
                raise ValueError(f"metric='cosine' is undefined for all-zero rows (rows {bad[:5].tolist()}); "
                                 "drop them or use metric='euclidean'")
        largest = max(largest, float(size.max()))
    if metric == "euclidean" and not math.isfinite(2.0 * largest * math.sqrt(d)):
        raise ValueError(f"X holds values up to {largest:.3g}, so distances between points overflow float64; "
                         "divide X by its largest |value| first (the clusters do not depend on the scale)")
    return largest


@dataclass(frozen=True)
class Rows:
    """``X: [n, d]`` (an array or a memmap) as the stages read it: blocks of contiguous float32 rows.

    Rows are scaled by powers of two before the float32 cast, which is exact, so that squared
    distances neither overflow nor underflow float32 whatever the magnitude of ``X`` (FAISS aborts
    on overflowing ones). ``"euclidean"``: when the largest ``|x|`` is outside ``[2**-30, 2**30]``
    (about 1e-9 to 1e9) every row is divided by ``2**exponent`` (largest ``|x| < 2**exponent``),
    distances come out in units of ``2**exponent``, and :meth:`unscale` makes them bit for bit the
    unscaled ones; inside that range rows load as they are (``exponent = 0``, no copy of float32
    input). ``"cosine"``: each row is divided by its own power of two, then L2-normalised
    (euclidean order on unit vectors = cosine order), into a new array (``X`` is never written).
    """

    X: np.ndarray
    metric: Metric
    exponent: int

    @classmethod
    def of(cls, X: np.ndarray, metric: Metric, largest: float) -> "Rows":
        exponent = math.frexp(largest)[1]  # largest |x| < 2**exponent
        return cls(X, metric, exponent if metric == "euclidean" and abs(exponent) > 30 else 0)

    @property
    def shape(self) -> tuple[int, int]:
        return self.X.shape

    def load(self, rows: np.ndarray | slice) -> np.ndarray:
        """``X[rows]`` scaled, as contiguous float32 ``[m, d]``."""
        block = np.asarray(self.X[rows])  # [m, d], X's dtype
        if self.metric == "cosine":
            exponent = np.frexp(np.abs(block).max(axis=1, keepdims=True))[1]  # [m, 1]: row max |x| < 2**exponent
            block = np.ascontiguousarray(np.ldexp(block, -exponent), dtype=np.float32)
            block /= np.linalg.norm(block, axis=1, keepdims=True)
            return block
        if self.exponent:
            block = np.ldexp(block, -self.exponent)
        return np.ascontiguousarray(block, dtype=np.float32)

    def unscale(self, values: np.ndarray, power: int = 1) -> np.ndarray:
        """Distances (``power=1``) or lambdas = 1 / distance (``power=-1``) between loaded rows, in ``X``'s units
        (exact: a power of two)."""
        return np.ldexp(values, power * self.exponent)


def to_metric(squared_l2: np.ndarray, metric: Metric) -> np.ndarray:
    """FAISS returns squared L2 distances; on unit vectors cosine distance = ||a - b||^2 / 2."""
    squared_l2 = np.maximum(squared_l2, 0.0)
    return squared_l2 / 2.0 if metric == "cosine" else np.sqrt(squared_l2)


# ---------------------------------------------------------------- FAISS
def gpu_resources():
    """FAISS GPU resources, or a clear error when this FAISS build or machine has no GPU."""

    if not hasattr(faiss, "StandardGpuResources"):
        raise RuntimeError("device='cuda' needs a GPU build of FAISS (pip install faiss-gpu-cu12), "
                           "but the installed faiss is CPU-only; use device='cpu'")
    if faiss.get_num_gpus() < 1:
        raise RuntimeError("device='cuda': FAISS sees no GPU on this machine; use device='cpu'")
    return faiss.StandardGpuResources()


def build_index(points: np.ndarray, *, kind: KnnIndex, device: str, nlist: int | None, nprobe: int,
                hnsw_m: int, seed: int):
    """A FAISS L2 index over ``points: [n, d]`` (float32), trained and filled."""

    n, d = points.shape
    if kind == "exact" or (kind == "ivf" and n < 39 * 4):  # too few points to train inverted lists
        index = faiss.IndexFlatL2(d)
    elif kind == "ivf":
        lists = nlist or int(np.clip(4 * np.sqrt(n), 1, n // 39))  # per-query search (GPU): more, shorter lists
        index = faiss.IndexIVFFlat(faiss.IndexFlatL2(d), d, lists)
        index.cp.max_points_per_centroid = 32  # train on <= 32 points per list: k-means cost stays small
        index.cp.niter = 10
        index.cp.seed = seed
        index.nprobe = min(nprobe, lists)
    elif kind == "hnsw":
        if device == "cuda":
            raise ValueError("knn_index='hnsw' has no FAISS GPU form; on device='cuda' use 'ivf' or 'exact'")
        index = faiss.IndexHNSWFlat(d, hnsw_m)
        index.hnsw.efConstruction = 40
        index.hnsw.efSearch = 64
    else:
        raise ValueError(f"knn_index={kind!r} is unknown; choose 'exact', 'ivf' or 'hnsw'")
    if device == "cuda":
        index = faiss.index_cpu_to_gpu(gpu_resources(), 0, index)
    if not index.is_trained:
        index.train(points)
    index.add(points)
    return index


@contextmanager
def faiss_blas_for_small_blocks():
    """Let ``faiss.knn`` use BLAS on small query blocks (restored on exit).

    This FAISS computes distances with BLAS only above 128,000 pairs per call and in
    database blocks of 1,024; below that it loops point by point. The blocks of
    :func:`ivf_self_knn` are a few hundred to a few thousand queries against one list of a
    few hundred points: with BLAS and 256-row database blocks a distance + top-k costs
    ~2-3 ns instead of ~6 ns (d = 16, 1 thread).
    """
    saved = faiss.cvar.distance_compute_blas_threshold, faiss.cvar.distance_compute_blas_database_bs
    faiss.cvar.distance_compute_blas_threshold, faiss.cvar.distance_compute_blas_database_bs = 20, 256
    try:
        yield
    finally:
        faiss.cvar.distance_compute_blas_threshold, faiss.cvar.distance_compute_blas_database_bs = saved


def ivf_lists(n: int, nlist: int | None) -> int:
    """Default ``sqrt(n)`` inverted lists, at most ``n / 39`` (FAISS's minimum training points per list)."""
    return int(np.clip(nlist or round(np.sqrt(n)), 1, n // 39))


def ivf_self_knn(points: np.ndarray, k: int, *, nlist: int, nprobe: int, seed: int,
                 threads: int) -> tuple[np.ndarray, np.ndarray]:
    """Approximate k-NN of every point among the points: ``(squared_l2, ids)``, ``[n, k]`` each, ascending.

    The same candidates as a per-query IVF search (FAISS k-means lists; each point searched
    in its own ``nprobe`` nearest lists), computed list by list: the queries that probe a
    list are searched against it as one BLAS block ``[queries, list]``, and every point's
    ``nprobe`` partial results are merged at the end. A per-query search pays the coarse
    quantiser, heap set-up and list dispatch per query; here those are per list. Threads
    take batches of lists as they free up (FAISS releases the GIL). Missing neighbours (all probed lists
    together smaller than ``k``) come back as id -1.
    """
    n, d = points.shape
    kmeans = faiss.Kmeans(d, nlist, niter=10, max_points_per_centroid=32, seed=seed)  # trains on <= 32 per list
    kmeans.train(points)
    nprobe = min(nprobe, nlist)
    _, probes = kmeans.index.search(points, nprobe)  # [n, nprobe], the nearest list first
    home = probes[:, 0]  # each point lives in its nearest list
    order = np.argsort(home, kind="stable")
    bounds = np.searchsorted(home[order], np.arange(nlist + 1))
    grouped = points[order]  # [n, d], list after list
    visits = np.argsort(probes.reshape(-1), kind="stable")  # (point, slot) pairs = point * nprobe + slot, by list
    visit_bounds = np.searchsorted(probes.reshape(-1)[visits], np.arange(nlist + 1))
    part_d = np.full((nprobe * n, k), np.inf, dtype=np.float32)  # row j * n + point: its j-th nearest list
    part_i = np.full((nprobe * n, k), -1, dtype=np.int64)
    # a point's home list holds most of its neighbours and another list rarely more than half:
    # keeping k // 2 + 1 there left the recall as it was (100k x 16 blobs) and saved ~20% of the time
    depth = {True: k, False: k // 2 + 1}

    def search(lists: range) -> None:
        for lst in lists:
            lo, hi = bounds[lst], bounds[lst + 1]
            pairs = visits[visit_bounds[lst]:visit_bounds[lst + 1]]
            if lo == hi or len(pairs) == 0:
                continue
            query, slot = pairs // nprobe, pairs % nprobe
            for home in (True, False):
                mine = (slot == 0) == home
                if not mine.any():
                    continue
                found = int(min(depth[home], hi - lo))
                dist, idx = faiss.knn(points[query[mine]], grouped[lo:hi], found)  # [queries, found] each
                rows = slot[mine] * n + query[mine]
                part_d[rows, :found], part_i[rows, :found] = dist, order[lo + idx]

    def one_thread(lists: range) -> None:
        saved = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1)  # the calling thread only: one BLAS/OpenMP thread per small block
        try:
            search(lists)
        finally:
            faiss.omp_set_num_threads(saved)

    with faiss_blas_for_small_blocks():
        if threads == 1:
            one_thread(range(nlist))
        else:
            with ThreadPoolExecutor(threads) as pool:  # batches of 8 lists, handed out as threads free up
                list(pool.map(one_thread, [range(start, min(start + 8, nlist)) for start in range(0, nlist, 8)]))
    return faiss.merge_knn_results(part_d.reshape(nprobe, n, k), part_i.reshape(nprobe, n, k))  # [n, k] each


def knn(points: np.ndarray, k: int, *, kind: KnnIndex, device: str, nlist: int | None, nprobe: int,
        hnsw_m: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest *other* points of every point: ``(squared_l2 [n, k], ids [n, k])``.

    On the CPU, ``"ivf"`` is :func:`ivf_self_knn`; the other kinds (and every kind on the
    GPU) search a FAISS index. The point itself is removed from its list (or, when an
    approximate search missed it, the farthest hit is dropped). Rows an approximate index
    left short (id -1) are searched again exactly, so every row has ``k`` real neighbours.
    """
    n = points.shape[0]
    if kind == "ivf" and device == "cpu" and n >= 39 * 4:
        dist, ids = ivf_self_knn(points, k + 1, nlist=ivf_lists(n, nlist), nprobe=nprobe, seed=seed,
                                 threads=faiss.omp_get_max_threads())
    else:
        index = build_index(points, kind=kind, device=device, nlist=nlist, nprobe=nprobe, hnsw_m=hnsw_m, seed=seed)
        dist, ids = index.search(points, k + 1)  # [n, k+1] each, ascending
    short = np.flatnonzero((ids < 0).any(axis=1))
    if len(short):
        exact = faiss.IndexFlatL2(points.shape[1])
        exact.add(points)
        dist[short], ids[short] = exact.search(points[short], k + 1)
    rows = np.arange(n)
    is_self = ids == rows[:, None]
    drop = np.where(is_self.any(axis=1), is_self.argmax(axis=1), k)  # the self hit, else the last one
    keep = np.ones_like(ids, dtype=bool)
    keep[rows, drop] = False
    return dist[keep].reshape(n, k), ids[keep].reshape(n, k)  # [n, k] each


# ---------------------------------------------------------------- graph -> MST
def spanning_forest(n: int, rows: np.ndarray, cols: np.ndarray, weights: np.ndarray,
                    indptr: np.ndarray | None = None) -> np.ndarray:
    """Minimum spanning forest of an edge list as ``[m, 3]`` rows ``(a, b, weight)``.

    ``indptr`` says the edges are already grouped by ``rows`` (CSR layout: row ``i``'s edges
    at ``indptr[i]:indptr[i+1]``), which skips scipy's COO -> CSR sort. Zero weights
    (duplicate points) are kept as edges: scipy reads an explicit zero as "no edge", so
    they travel as the smallest positive double and come back as 0.
    """
    w = np.maximum(weights.astype(np.float64), _TINY)
    if indptr is None:
        graph = sp.csr_matrix((w, (rows, cols)), shape=(n, n))  # directed entries = undirected edges to scipy
    else:
        graph = sp.csr_matrix((w, cols, indptr), shape=(n, n))
    tree = minimum_spanning_tree(graph).tocoo()
    out = np.empty((tree.nnz, 3), dtype=np.float64)
    out[:, 0], out[:, 1] = tree.row, tree.col
    out[:, 2] = np.where(tree.data <= _TINY, 0.0, tree.data)
    return out


def mutual_reachability_forest(dist: np.ndarray, ids: np.ndarray, core: np.ndarray) -> np.ndarray:
    """Spanning forest of the k-NN graph ``ids: [n, k]`` under mutual-reachability weights."""
    n, k = ids.shape
    w = np.maximum(np.maximum(dist, core[:, None]), core[ids])  # [n, k]
    return spanning_forest(n, None, ids.reshape(-1), w.reshape(-1), indptr=np.arange(0, n * k + 1, k))


def component_labels(n: int, edges: np.ndarray) -> tuple[int, np.ndarray]:
    graph = sp.csr_matrix((np.ones(len(edges)), (edges[:, 0].astype(np.int64), edges[:, 1].astype(np.int64))),
                          shape=(n, n))
    return connected_components(graph, directed=False)


def centroids_of(data: Rows, labels: np.ndarray, n_groups: int) -> np.ndarray:
    """Mean point of each group, streaming over ``X`` in chunks. ``[n_groups, d]`` float32."""
    n, d = data.shape
    sums = np.zeros((n_groups, d), dtype=np.float64)
    for start in range(0, n, _CHUNK):
        block = data.load(slice(start, start + _CHUNK))
        group = labels[start:start + _CHUNK]
        for j in range(d):
            sums[:, j] += np.bincount(group, weights=block[:, j], minlength=n_groups)
    counts = np.bincount(labels, minlength=n_groups).astype(np.float64)
    return (sums / counts[:, None]).astype(np.float32)


def facing_points(data: Rows, members: np.ndarray, target: np.ndarray, limit: int) -> np.ndarray:
    """The ``limit`` members closest to ``target`` (all members when there are fewer)."""
    if len(members) <= limit:
        return members
    pts = data.load(members)
    d2 = ((pts - target[None, :]) ** 2).sum(axis=1)
    return members[np.argpartition(d2, limit - 1)[:limit]]


def join_components(data: Rows, edges: np.ndarray, core: np.ndarray, *, candidates: int = 3,
                    sample: int = 256) -> tuple[np.ndarray, int]:
    """Join a spanning forest into one spanning tree, Boruvka-style. Returns ``(tree, rounds)``.

    Each round: components and their centroids; for every component, its ``candidates``
    nearest components by centroid; for each such pair, the ``sample`` points of each side
    closest to the other side's centroid, and among those ``sample^2`` pairs the cheapest
    mutual-reachability edge. The forest plus these edges is re-spanned. Every component
    gains at least one edge to another, so the number of components at least halves per
    round and the loop ends with one tree.
    """

    n = data.shape[0]
    rounds = 0
    while True:
        n_comp, labels = component_labels(n, edges)
        if n_comp == 1:
            return edges, rounds
        rounds += 1
        centres = centroids_of(data, labels, n_comp)  # [C, d]
        order = np.argsort(labels, kind="stable")
        bounds = np.searchsorted(labels[order], np.arange(n_comp + 1))
        members = [order[bounds[c]:bounds[c + 1]] for c in range(n_comp)]
        near = faiss.IndexFlatL2(centres.shape[1])
        near.add(centres)
        m = min(candidates, n_comp - 1)
        _, hits = near.search(centres, min(m + 1, n_comp))  # [C, m+1]
        pairs = set()
        for c in range(n_comp):
            others = [int(o) for o in hits[c] if o != c and o >= 0][:m]
            if not others:  # identical centroids crowded c out of its own list: take any other component
                others = [(c + 1) % n_comp]
            pairs.update((min(c, o), max(c, o)) for o in others)
        with threadpool_limits(limits=1, user_api="blas"):  # 256x256 blocks: BLAS threads only add waiting
            new_edges = [cheapest_edge(data, members[a], members[b], centres[a], centres[b], core, sample)
                         for a, b in sorted(pairs)]
        new = np.asarray(new_edges, dtype=np.float64)  # [P, 3]
        both = np.concatenate([edges, new])
        edges = spanning_forest(n, both[:, 0].astype(np.int64), both[:, 1].astype(np.int64), both[:, 2])


def cheapest_edge(data: Rows, members_a: np.ndarray, members_b: np.ndarray, centre_a: np.ndarray,
                  centre_b: np.ndarray, core: np.ndarray, sample: int) -> tuple[int, int, float]:
    """The cheapest mutual-reachability edge between the facing points of two components."""
    side_a = facing_points(data, members_a, centre_b, sample)
    side_b = facing_points(data, members_b, centre_a, sample)
    pa, pb = data.load(side_a), data.load(side_b)  # [Sa, d], [Sb, d]
    d2 = (pa ** 2).sum(1)[:, None] + (pb ** 2).sum(1)[None, :] - 2.0 * pa @ pb.T  # [Sa, Sb]
    mr = np.maximum(np.maximum(to_metric(d2, data.metric), core[side_a][:, None]), core[side_b][None, :])
    i, j = np.unravel_index(np.argmin(mr), mr.shape)
    return int(side_a[i]), int(side_b[j]), float(mr[i, j])


def check_spanning_tree(tree: np.ndarray, n: int) -> None:
    """Refuse anything but a finite spanning tree on ``n`` points before hdbscan's C routines see it."""
    if tree.ndim != 2 or tree.shape != (n - 1, 3) or tree.dtype != np.float64:
        raise RuntimeError(f"internal: spanning tree must be float64 [{n - 1}, 3], got {tree.dtype} {tree.shape}")
    if not np.isfinite(tree).all() or (tree[:, 2] < 0).any():
        raise RuntimeError("internal: spanning tree has negative or non-finite weights")
    ends = tree[:, :2]
    if (ends < 0).any() or (ends >= n).any() or (ends != np.round(ends)).any():
        raise RuntimeError("internal: spanning tree has point ids outside [0, n)")
    n_comp, _ = component_labels(n, tree)
    if n_comp != 1:
        raise RuntimeError(f"internal: spanning tree leaves {n_comp} components")


# ---------------------------------------------------------------- estimator
class StageClock:
    """Seconds per stage, summed over repeats: ``wall`` and ``cpu`` (this process, all its threads)."""

    def __init__(self):
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self.restart()

    def restart(self) -> None:
        self._wall, self._cpu = time.perf_counter(), time.process_time()

    def lap(self, stage: str) -> None:
        wall, cpu = time.perf_counter(), time.process_time()
        self.wall[stage] = self.wall.get(stage, 0.0) + wall - self._wall
        self.cpu[stage] = self.cpu.get(stage, 0.0) + cpu - self._cpu
        self._wall, self._cpu = wall, cpu


class PHDBSCAN(ClusterMixin, BaseEstimator):
    """HDBSCAN* on a FAISS k-NN graph (see the module docstring for the algorithm).

    Parameters follow the hdbscan library where they share a name:

    - ``min_cluster_size``: smallest group that counts as a cluster;
    - ``min_samples``: neighbours (self excluded) that set a point's core distance;
      default ``min_cluster_size``;
    - ``metric``: ``"euclidean"`` or ``"cosine"`` (``1 - cos``, on L2-normalised rows);
    - ``cluster_selection_method``: ``"eom"`` (excess of mass) or ``"leaf"``;
    - ``allow_single_cluster``: let EOM return the root as the only cluster;
    - ``knn_index``: ``"exact"``, ``"ivf"`` (``nlist`` k-means lists, every point searched in
      its ``nprobe`` nearest lists; default ``sqrt(n)`` lists on the CPU, ``4 sqrt(n)`` for the
      GPU index, capped at ``n / 39`` so each list has FAISS's minimum of 39 training points;
      under 156 points the search is exact) or ``"hnsw"`` (``hnsw_m`` links);
    - ``device``: ``"cpu"``, or ``"cuda"`` for a FAISS GPU index (needs a GPU build of
      FAISS; the tree stages stay on the CPU);
    - ``k``: neighbours per point in the candidate graph (self excluded), ``>= min_samples``;
      default ``max(min_samples, 10)``;
    - ``partitions``: ``> 1`` clusters part by part (out-of-core mode);
    - ``join_candidates`` / ``join_sample``: the component-joining step's nearest
      components per component and facing points per side;
    - ``random_state``: seed of the k-means in IVF training and partitioning.

    Fitted attributes: ``labels_`` (-1 = noise), ``probabilities_`` (membership strength),
    ``outlier_scores_`` (GLOSH), ``condensed_tree_`` (the hdbscan library's record array:
    ``parent, child, lambda_val, child_size``), ``single_linkage_tree_`` (scipy linkage
    layout), ``minimum_spanning_tree_`` (``[n-1, 3]``: a, b, mutual reachability),
    ``core_distances_``, ``cluster_persistence_``, ``n_join_rounds_`` and ``timings_``
    (wall seconds per stage: ``partition`` (partitioned mode), ``knn`` (with core distances),
    ``mst``, ``join``, ``single_linkage`` (with the tree check), ``condense``, ``select``
    (stabilities, selection, labels, probabilities), ``outlier_scores``) and
    ``cpu_timings_`` (the same stages in CPU seconds of this process, all threads).
    """

    def __init__(self, min_cluster_size: int = 5, min_samples: int | None = None, *, metric: Metric = "euclidean",
                 cluster_selection_method: Literal["eom", "leaf"] = "eom", allow_single_cluster: bool = False,
                 knn_index: KnnIndex = "ivf", device: Literal["cpu", "cuda"] = "cpu", k: int | None = None,
                 nlist: int | None = None, nprobe: int = 3, hnsw_m: int = 32, partitions: int = 1,
                 join_candidates: int = 3, join_sample: int = 256, random_state: int = 0):
        self.min_cluster_size = min_cluster_size
        self.min_samples = min_samples
        self.metric = metric
        self.cluster_selection_method = cluster_selection_method
        self.allow_single_cluster = allow_single_cluster
        self.knn_index = knn_index
        self.device = device
        self.k = k
        self.nlist = nlist
        self.nprobe = nprobe
        self.hnsw_m = hnsw_m
        self.partitions = partitions
        self.join_candidates = join_candidates
        self.join_sample = join_sample
        self.random_state = random_state

    # -------------------------------------------------------------- params
    _parameter_constraints: dict = {  # checked by scikit-learn's ``_validate_params`` at the start of ``fit``
        "min_cluster_size": [Interval(Integral, 2, None, closed="left")],
        "min_samples": [Interval(Integral, 1, None, closed="left"), None],
        "metric": [StrOptions({"euclidean", "cosine"})],
        "cluster_selection_method": [StrOptions({"eom", "leaf"})],
        "allow_single_cluster": ["boolean"],
        "knn_index": [StrOptions({"exact", "ivf", "hnsw"})],
        "device": [StrOptions({"cpu", "cuda"})],
        "k": [Interval(Integral, 1, None, closed="left"), None],
        "nlist": [Interval(Integral, 1, None, closed="left"), None],
        "nprobe": [Interval(Integral, 1, None, closed="left")],
        "hnsw_m": [Interval(Integral, 1, None, closed="left")],
        "partitions": [Interval(Integral, 1, None, closed="left")],
        "join_candidates": [Interval(Integral, 1, None, closed="left")],
        "join_sample": [Interval(Integral, 1, None, closed="left")],
        "random_state": [Interval(Integral, 0, 2**31 - 1, closed="both")],  # a FAISS (C int) seed
    }

    def _check_params(self) -> None:
        """Each parameter against ``_parameter_constraints``, then the combinations (in ``fit``, as scikit-learn
        asks: ``__init__`` and ``set_params`` only store)."""
        self._validate_params()
        if self.k is not None and self.k < self.resolved_min_samples:
            raise ValueError(f"PHDBSCAN: k={self.k} must be >= min_samples={self.resolved_min_samples} "
                             "(the core distance is the min_samples-th neighbour in the k-NN graph)")
        if self.device == "cuda" and self.knn_index == "hnsw":
            raise ValueError("PHDBSCAN: knn_index='hnsw' has no FAISS GPU form; on device='cuda' use 'ivf' or 'exact'")

    @property
    def resolved_min_samples(self) -> int:
        return self.min_cluster_size if self.min_samples is None else self.min_samples

    @property
    def resolved_k(self) -> int:
        return max(self.resolved_min_samples, 10) if self.k is None else self.k

    # ----------------------------------------------------------------- fit
    def fit(self, X, y=None):
        """Cluster ``X: [n, d]`` (array-like or a memmap, read without a copy when float32 / float64;
        ``y`` is ignored)."""
        self._check_params()
        if self.device == "cuda":
            gpu_resources()  # fail before any work
        if np.ndim(X) == 1:  # scikit-learn's own message for this spans three lines and prints X
            raise ValueError(f"X must be 2-D [n_samples, n_features], got shape {np.shape(X)}; "
                             "reshape a single feature with X.reshape(-1, 1)")
        X = validate_data(self, X, dtype=[np.float64, np.float32], ensure_all_finite=False, ensure_min_samples=2)
        data = Rows.of(X, self.metric, check_data(X, metric=self.metric, min_cluster_size=self.min_cluster_size))
        n = X.shape[0]
        clock = StageClock()
        self.timings_, self.cpu_timings_ = clock.wall, clock.cpu
        if self._all_identical(data):
            self._fit_identical(n)
            return self

        k = min(self.resolved_k, n - 1)
        min_samples = min(self.resolved_min_samples, k)
        if self.partitions == 1:
            points = data.load(slice(None))
            forest, core = self._part_forest(points, k, min_samples, clock)
            del points
        else:
            forest, core = self._partitioned_forest(data, k, min_samples, clock)
        clock.restart()
        tree, rounds = join_components(data, forest, core, candidates=self.join_candidates, sample=self.join_sample)
        clock.lap("join")
        tree = tree[np.argsort(tree[:, 2], kind="stable")]
        check_spanning_tree(tree, n)
        single_linkage = single_linkage_label(tree)  # hdbscan's own `label`, ~30x faster
        clock.lap("single_linkage")
        condensed = condense_tree(single_linkage, self.min_cluster_size)
        clock.lap("condense")
        columns = CondensedTree.of(condensed)
        selected, stability = select_clusters(columns, stabilities(columns), self.cluster_selection_method,
                                              self.allow_single_cluster)
        labels, probabilities, persistence = flat_clusters(columns, selected, stability)
        clock.lap("select")
        scores = glosh_scores(columns)
        clock.lap("outlier_scores")
        # the hierarchy is built in the loaded rows' units (float32 stabilities stay in range); report X's units
        tree[:, 2], single_linkage[:, 2] = data.unscale(tree[:, 2]), data.unscale(single_linkage[:, 2])
        condensed["lambda_val"] = data.unscale(condensed["lambda_val"], power=-1)

        self.labels_ = np.asarray(labels, dtype=np.intp)
        self.probabilities_ = np.asarray(probabilities, dtype=np.float64)
        self.outlier_scores_ = np.asarray(scores, dtype=np.float64)
        self.cluster_persistence_ = np.asarray(persistence, dtype=np.float64)
        self.condensed_tree_ = condensed
        self.single_linkage_tree_ = single_linkage
        self.minimum_spanning_tree_ = tree
        self.core_distances_ = data.unscale(core)
        self.n_join_rounds_ = rounds
        return self

    def _part_forest(self, points: np.ndarray, k: int, min_samples: int,
                     clock: StageClock) -> tuple[np.ndarray, np.ndarray]:
        """k-NN, core distances and the mutual-reachability spanning forest of one in-memory block."""
        clock.restart()
        d2, ids = knn(points, k, kind=self.knn_index, device=self.device, nlist=self.nlist, nprobe=self.nprobe,
                      hnsw_m=self.hnsw_m, seed=self.random_state)
        dist = to_metric(d2, self.metric)
        core = dist[:, min_samples - 1].astype(np.float64)
        clock.lap("knn")
        forest = mutual_reachability_forest(dist, ids, core)
        clock.lap("mst")
        return forest, core

    def _partitioned_forest(self, data: Rows, k: int, min_samples: int,
                            clock: StageClock) -> tuple[np.ndarray, np.ndarray]:
        """Partition by k-means, then one spanning forest per part (each part loaded alone)."""

        clock.restart()
        n, d = data.shape
        rng = np.random.default_rng(self.random_state)
        sample = np.sort(rng.choice(n, size=min(n, 256 * self.partitions), replace=False))
        kmeans = faiss.Kmeans(d, self.partitions, niter=20, seed=self.random_state)
        kmeans.train(data.load(sample))
        part = np.empty(n, dtype=np.int64)
        for s in range(0, n, _CHUNK):
            part[s:s + _CHUNK] = kmeans.index.search(data.load(slice(s, s + _CHUNK)), 1)[1][:, 0]
        # a part too small for a k-NN graph joins the part of the nearest centroid that is big enough
        sizes = np.bincount(part, minlength=self.partitions)
        small = sizes < k + 1
        if small.all():
            part[:] = 0
        elif small.any():
            big = np.flatnonzero(~small)
            centres = kmeans.centroids
            for p in np.flatnonzero(small & (sizes > 0)):
                target = big[np.argmin(((centres[big] - centres[p]) ** 2).sum(1))]
                part[part == p] = target
        clock.lap("partition")
        core = np.empty(n, dtype=np.float64)
        forests = []
        for p in np.unique(part):
            rows = np.flatnonzero(part == p)
            forest, core[rows] = self._part_forest(data.load(rows), k, min_samples, clock)
            forest[:, 0], forest[:, 1] = rows[forest[:, 0].astype(np.int64)], rows[forest[:, 1].astype(np.int64)]
            forests.append(forest)
        self.partition_labels_ = part
        return np.concatenate(forests), core

    # ------------------------------------------------------- degenerate case
    def _all_identical(self, data: Rows) -> bool:
        first = data.load(slice(0, 1))
        for start in range(0, data.shape[0], _CHUNK):
            if not (data.load(slice(start, start + _CHUNK)) == first).all():
                return False
        return True

    def _fit_identical(self, n: int) -> None:
        """All points equal: no density structure. Noise, or one cluster with ``allow_single_cluster``."""
        single = self.allow_single_cluster
        self.labels_ = np.full(n, 0 if single else -1, dtype=np.intp)
        self.probabilities_ = np.full(n, 1.0 if single else 0.0)
        self.outlier_scores_ = np.zeros(n)
        self.cluster_persistence_ = np.zeros(1 if single else 0)
        self.condensed_tree_ = np.zeros(0, dtype=[("parent", np.intp), ("child", np.intp),
                                                  ("lambda_val", np.float64), ("child_size", np.intp)])
        merged = np.concatenate([[0], n + np.arange(n - 2)])  # point 0, then the node the last row made
        self.single_linkage_tree_ = np.column_stack([merged, np.arange(1, n), np.zeros(n - 1),
                                                     np.arange(2, n + 1)]).astype(np.float64)  # [n-1, 4]
        self.minimum_spanning_tree_ = np.column_stack([np.zeros(n - 1), np.arange(1, n), np.zeros(n - 1)])
        self.core_distances_ = np.zeros(n)
        self.n_join_rounds_ = 0
