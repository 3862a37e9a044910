"""pHDBSCAN against the hdbscan library, scikit-learn's HDBSCAN and fast_hdbscan.

    python -m benchmarks.clustering                                  # blobs, n 10k/100k, d 16/64
    python -m benchmarks.clustering --sizes 1000000 --methods phdbscan   # the 1M rows, added to the table
    python -m benchmarks.clustering --embeddings runs/fraud/embeddings.npy   # fraud embeddings
    python -m benchmarks.clustering --profile --sizes 100000 --dims 16   # pHDBSCAN alone, 1 thread: stages, k-NN recall

Every (method, data, n, d) run is its own subprocess (``--worker``) under a wall-clock cap:
the parent records wall time of ``fit`` (imports, data generation and a warm-up fit on
2,000 points excluded, so numba's first compile in fast_hdbscan is not counted), the peak
resident memory of the process (``VmHWM``, data included) and the labels; ARI is taken
against the hdbscan library's labels on the same data (and against the generating blob).
A run past the cap is killed and reported as "did not finish (> cap)"; a method that did
not finish at some n is not run at larger n for the same d ("skipped").

Parameters are the same for every method: ``min_cluster_size``, and ``min_samples`` in the
hdbscan library's sense (neighbours, self excluded); scikit-learn counts the point itself,
so it gets ``min_samples + 1`` (checked: identical labels on small blobs).
Rows accumulate in ``benchmarks/results/hdbscan.json`` (one per run, with its commit and
date) so the slow 1M rows can be added later; the markdown table is rebuilt from it.
The results keep their names (``hdbscan.md``, ``hdbscan.json``, ``hdbscan_profile*.md``): this module was
``benchmarks/hdbscan.py`` until its name shadowed the hdbscan library.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from benchmarks.common import (REPO_ROOT, RESULTS_DIR, Stopwatch, atomic_write_text, command_line, git_commit, header,
                               markdown_table, utc_now, write_result)

METHODS = ("phdbscan", "phdbscan_parts", "hdbscan", "sklearn", "fast_hdbscan")
PARTS = 8  # partitions of the partitioned (out-of-core) mode
RUNS_FILE = RESULTS_DIR / "hdbscan.json"


# ------------------------------------------------------------------ data
def make_data(source: str, n: int, d: int, seed: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Gaussian blobs (20 centres in [-20, 20]^d, std 1), or the first n rows of an embeddings file."""
    if source == "blobs":
        from sklearn.datasets import make_blobs

        x, y = make_blobs(n, d, centers=20, cluster_std=1.0, center_box=(-20, 20), random_state=seed)
        return x.astype(np.float32), y
    x = np.load(source, mmap_mode="r")
    if n > len(x):
        raise SystemExit(f"{source} has {len(x)} rows; asked for n={n}")
    return np.ascontiguousarray(x[:n], dtype=np.float32), None


def make_model(method: str, min_cluster_size: int, min_samples: int, threads: int):
    if method == "phdbscan":
        from seqmix.apps.fraud.hdbscan import PHDBSCAN

        return PHDBSCAN(min_cluster_size=min_cluster_size, min_samples=min_samples)
    if method == "phdbscan_parts":
        from seqmix.apps.fraud.hdbscan import PHDBSCAN

        return PHDBSCAN(min_cluster_size=min_cluster_size, min_samples=min_samples, partitions=PARTS)
    if method == "hdbscan":
        import hdbscan

        return hdbscan.HDBSCAN(min_cluster_size=min_cluster_size, min_samples=min_samples, core_dist_n_jobs=threads)
    if method == "sklearn":
        from sklearn.cluster import HDBSCAN

        return HDBSCAN(min_cluster_size=min_cluster_size, min_samples=min_samples + 1, n_jobs=threads)
    if method == "fast_hdbscan":
        import fast_hdbscan

        return fast_hdbscan.HDBSCAN(min_cluster_size=min_cluster_size, min_samples=min_samples)
    raise SystemExit(f"unknown method {method!r}; choose from {METHODS}")


def peak_rss_mib() -> float:
    """This process's peak resident memory (``VmHWM``; unlike ``ru_maxrss`` it is not inherited across exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def worker(args) -> None:
    """One timed fit in this process; prints one JSON line and saves the labels."""
    x, _ = make_data(args.source, args.n, args.d, args.seed)
    warm, _ = make_data("blobs", 2000, x.shape[1], args.seed + 1) if args.source == "blobs" else (x[:2000], None)
    make_model(args.method, args.min_cluster_size, args.min_samples, args.threads).fit(warm)
    rss_before = peak_rss_mib()
    model = make_model(args.method, args.min_cluster_size, args.min_samples, args.threads)
    with Stopwatch() as watch:
        model.fit(x)
    wall, cpu = watch.wall_s, watch.cpu_s
    peak = peak_rss_mib()
    np.save(args.labels_out, np.asarray(model.labels_))
    print(json.dumps({"wall_s": wall, "cpu_s": cpu, "peak_mib": peak, "before_fit_mib": rss_before,
                      "stages": getattr(model, "timings_", None)}))


# ---------------------------------------------------------------- parent
def run_one(method: str, source: str, n: int, d: int, args, labels_path: Path) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), OPENBLAS_NUM_THREADS=str(args.threads),
               MKL_NUM_THREADS=str(args.threads), NUMBA_NUM_THREADS=str(args.threads),
               OMP_WAIT_POLICY="PASSIVE")
    command = [sys.executable, "-m", "benchmarks.clustering", "--worker", "--method", method, "--source", source, "--n", str(n),
               "--d", str(d), "--seed", str(args.seed), "--min-cluster-size", str(args.min_cluster_size),
               "--min-samples", str(args.min_samples), "--threads", str(args.threads),
               "--labels-out", str(labels_path)]
    load = os.getloadavg()[0]  # others' jobs on this machine: their load stretches wall time
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=args.cap, env=env, cwd=REPO_ROOT)
    except subprocess.TimeoutExpired:
        return {"status": f"did not finish (> {args.cap:.0f} s cap)", "load": load}
    if done.returncode != 0:
        last = done.stderr.strip().splitlines()[-1][:120]
        return {"status": f"failed (exit {done.returncode}): {last}", "load": load}
    return {"status": "ok", "load": load, **json.loads(done.stdout.strip().splitlines()[-1])}


def load_runs() -> list[dict]:
    return json.loads(RUNS_FILE.read_text()) if RUNS_FILE.exists() else []


def fmt(value, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def speedup_of_phdbscan(row: dict, runs: list[dict]) -> str | None:
    """``row``'s wall time / pHDBSCAN's on the same data in the same invocation (the load changes between)."""
    invocation = lambda r: r.get("run_id", r["commit"])  # noqa: E731  (rows before run_id: one commit per invocation)
    ours = next((r for r in runs if r["method"] == "phdbscan" and r["status"] == "ok"
                 and (r["source"], r["n"], r["d"]) == (row["source"], row["n"], row["d"])
                 and invocation(r) == invocation(row)), None)
    if ours is None or row["method"] == "phdbscan":
        return None
    if row["status"] == "ok":
        return f"{row['wall_s'] / ours['wall_s']:.1f}x"
    if row["status"].startswith("did not finish"):
        cap = float(row["status"].split("> ")[1].split(" s")[0])
        return f"> {cap / ours['wall_s']:.0f}x"
    return None


def render(runs: list[dict], args) -> str:
    rows = []
    order = {m: i for i, m in enumerate(METHODS)}
    for r in sorted(runs, key=lambda r: (r["source"] != "blobs", r["source"], r["d"], r["n"], order[r["method"]])):
        ok = r["status"] == "ok"
        speedup = speedup_of_phdbscan(r, runs)
        rows.append([
            "blobs" if r["source"] == "blobs" else Path(r["source"]).name, f"{r['n']:,}", r["d"], r["method"],
            fmt(r.get("wall_s"), ".2f") if ok else r["status"], fmt(r.get("cpu_s"), ".1f") if ok else "–",
            fmt(r.get("peak_mib"), ".0f") if ok else "–",
            fmt(r.get("ari_vs_hdbscan"), ".4f"), fmt(r.get("ari_vs_truth"), ".4f"), fmt(r.get("ari_vs_phdbscan"), ".4f"),
            fmt(r.get("n_clusters"), "d"), speedup or "–", fmt(r.get("load"), ".1f"), f"{r['commit']}, {r['date']}",
        ])
    columns = ["data", "n", "d", "method", "fit wall s", "fit CPU s", "peak RSS MiB", "ARI vs hdbscan", "ARI vs blobs", "ARI vs pHDBSCAN",
               "clusters", "speed-up of pHDBSCAN", "load", "commit, date"]
    notes = [f"parameters: min_cluster_size={args.min_cluster_size}, min_samples={args.min_samples} "
             "(scikit-learn gets min_samples + 1: it counts the point itself)",
             f"threads per run: {args.threads} (OMP/BLAS/numba; hdbscan core_dist_n_jobs, sklearn n_jobs), "
             "OMP_WAIT_POLICY=PASSIVE for every method (idle OpenMP threads sleep instead of spinning on a shared "
             "machine); "
             "cap per run: stated in each 'did not finish' cell (600 s for d = 16, 300 s for d = 64: the issue "
             "allows 30 min, but this 2-core machine is shared by 8 engineers)",
             "fit wall s: `fit` only (imports, data generation and a 2,000-point warm-up fit excluded; "
             "the warm-up absorbs numba's first compile in fast_hdbscan)",
             "fit CPU s: user + system seconds of the run's process over all its threads, a measure less "
             "sensitive to the machine's load than wall time; the hdbscan library's core-distance worker "
             "processes (joblib) are not included, which flatters it",
             "speed-up of pHDBSCAN: the method's fit wall time / pHDBSCAN's, same (n, d), same invocation "
             "(rows run back to back under similar load)",
             "peak RSS: the run's process, VmHWM (imports, data and warm-up included: the input alone is n*d*4 "
             "bytes; joblib worker processes of the hdbscan library not included)",
             "load: the machine's 1-minute load average when the run started (2 cores: above 2, other jobs "
             "took CPU from the run and its wall time is stretched; '–': not recorded)",
             "pHDBSCAN: defaults of seqmix.apps.fraud.hdbscan.PHDBSCAN: knn_index='ivf' (batched IVF self-join, "
             "nlist sqrt(n), nprobe 3), k = max(min_samples, 10); its stages are in the second table",
             f"phdbscan_parts: pHDBSCAN's partitioned (out-of-core) mode with partitions={PARTS}; "
             "'ARI vs pHDBSCAN' is its accuracy cost against the non-partitioned result",
             "the machine is shared: wall times carry the load of other jobs at that moment; the rows of one "
             "(n, d) ran back to back"]
    commands = sorted({r["command"] for r in runs if "command" in r})
    notes.append("rows come from these invocations (each row names its commit and date): "
                 + "; ".join(f"`{c}`" for c in commands))
    text = header("HDBSCAN implementations: wall time, memory, agreement", seeds=[args.seed], notes=notes)
    text += markdown_table(columns, rows)
    staged = [r for r in runs if r["method"].startswith("phdbscan") and r["status"] == "ok" and r.get("stages")]
    if staged:
        stages = list(dict.fromkeys(k for r in staged for k in r["stages"]))
        text += ("\n\n## pHDBSCAN fit, stage by stage (wall seconds, from `timings_`)\n\n"
                 + markdown_table(["data", "n", "d", "method", *stages, "load", "commit"],
                                  [[r["source"] if r["source"] == "blobs" else Path(r["source"]).name, f"{r['n']:,}",
                                    r["d"], r["method"], *(fmt(r["stages"].get(k), ".2f") for k in stages),
                                    fmt(r.get("load"), ".1f"), r["commit"]] for r in sorted(
                                        staged, key=lambda r: (r["source"] != "blobs", r["d"], r["n"], r["method"]))]))
    return text


def profile(args, source: str, dims: list[int], sizes: list[int]) -> None:
    """pHDBSCAN alone, 1 thread, in this process: CPU and wall seconds per stage, and the k-NN's
    recall@k against brute force on 2,000 sampled points for a few index settings."""
    import faiss
    from threadpoolctl import threadpool_limits

    from seqmix.apps.fraud.hdbscan import PHDBSCAN, knn

    faiss.omp_set_num_threads(1)
    stage_rows, knn_rows = [], []
    with threadpool_limits(limits=1):
        for d in dims:
            for n in sizes:
                x, _ = make_data(source, n, d, args.seed)
                tag = "blobs" if source == "blobs" else Path(source).name
                params = dict(min_cluster_size=args.min_cluster_size, min_samples=args.min_samples)
                PHDBSCAN(**params).fit(x[:2000])  # warm-up
                load = os.getloadavg()[0]
                model = PHDBSCAN(**params).fit(x)
                stages = list(model.cpu_timings_)
                stage_rows.append([tag, f"{n:,}", d, *(f"{model.cpu_timings_[k]:.3f}" for k in stages),
                                   f"{sum(model.cpu_timings_.values()):.2f}", f"{sum(model.timings_.values()):.2f}",
                                   f"{load:.1f}"])
                k = model.resolved_k
                sample = np.random.default_rng(args.seed).choice(n, size=min(n, 2000), replace=False)
                _, truth = faiss.knn(x[sample], x, k + 1)  # the point itself included
                variants = [("ivf", 3), ("ivf", 4), ("ivf", 6)] + ([("hnsw", 0)] if n <= 200_000 else [])
                for kind, nprobe in variants:
                    with Stopwatch() as watch:
                        _, ids = knn(x, k, kind=kind, device="cpu", nlist=None, nprobe=max(nprobe, 1), hnsw_m=32,
                                     seed=args.seed)
                    cpu = watch.cpu_s
                    found = np.concatenate([sample[:, None], ids[sample]], axis=1)  # [2000, k+1]
                    recall = np.mean([len(np.intersect1d(a, b)) for a, b in zip(found, truth)]) / (k + 1)
                    knn_rows.append([tag, f"{n:,}", d, kind + (f", nprobe {nprobe}" if kind == "ivf" else ", M 32"),
                                     f"{cpu:.2f}", f"{recall:.3f}", f"{os.getloadavg()[0]:.1f}"])
                print(f"[hdbscan profile] {tag} n={n} d={d}: {stage_rows[-1]}", flush=True)
    notes = [f"pHDBSCAN defaults, min_cluster_size={args.min_cluster_size}, min_samples={args.min_samples}; "
             "1 thread (FAISS OpenMP and BLAS), in one process, after a 2,000-point warm-up fit",
             "stage CPU seconds from `PHDBSCAN.cpu_timings_` (process CPU time, steadier than wall time on a "
             "shared machine); 'wall s': the sum of `timings_`; load: 1-minute load average before the fit",
             "k-NN: `seqmix.apps.fraud.hdbscan.knn` alone (core distances not included), CPU seconds; recall@k: "
             "share of the true k+1 nearest (the point itself included) found, on 2,000 sampled points, "
             "against FAISS brute force; ivf = the batched IVF self-join with sqrt(n) lists (nprobe 3 is "
             "the default); hnsw only up to n = 200k (its build is slow)"]
    text = header("pHDBSCAN profile: stages and k-NN settings (1 thread)", seeds=[args.seed], notes=notes)
    text += markdown_table(["data", "n", "d", *stages, "total CPU s", "wall s", "load"], stage_rows)
    text += "\n" + markdown_table(["data", "n", "d", "k-NN", "CPU s", "recall@k", "load"], knn_rows)
    write_result(args.profile_name, text)
    print(f"wrote {RESULTS_DIR / (args.profile_name + '.md')}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="10000,100000")
    p.add_argument("--dims", default="16,64")
    p.add_argument("--methods", default="phdbscan,hdbscan,sklearn,fast_hdbscan")
    p.add_argument("--embeddings", default=None, help="an [n, d] .npy of embeddings to cluster instead of blobs")
    p.add_argument("--cap", type=float, default=600.0, help="wall seconds per run")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--min-cluster-size", type=int, default=50)
    p.add_argument("--min-samples", type=int, default=5)
    # worker-only
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--method", help=argparse.SUPPRESS)
    p.add_argument("--source", default="blobs", help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, help=argparse.SUPPRESS)
    p.add_argument("--d", type=int, help=argparse.SUPPRESS)
    p.add_argument("--labels-out", help=argparse.SUPPRESS)
    p.add_argument("--render", action="store_true", help="only rebuild the markdown from the stored runs")
    p.add_argument("--profile", action="store_true",
                   help="pHDBSCAN only, 1 thread: CPU per stage and k-NN recall, "
                        "to benchmarks/results/<--profile-name>.md")
    p.add_argument("--profile-name", default="hdbscan_profile")
    args = p.parse_args()
    if args.worker:
        worker(args)
        return
    if args.render:
        write_result("hdbscan", render(load_runs(), args))
        return

    methods = args.methods.split(",")
    for m in methods:
        if m not in METHODS:
            raise SystemExit(f"unknown method {m!r}; choose from {METHODS}")
    if args.embeddings:
        source = args.embeddings
        dims = [int(np.load(source, mmap_mode="r").shape[1])]
    else:
        source, dims = "blobs", [int(v) for v in args.dims.split(",")]
    sizes = [int(v) for v in args.sizes.split(",")]
    if args.profile:
        profile(args, source, dims, sizes)
        return
    runs = load_runs()
    commit, run_id = git_commit(), utc_now()
    tmp = REPO_ROOT / "runs" / "hdbscan_bench"  # labels of every run, kept so a later invocation can compare
    tmp.mkdir(parents=True, exist_ok=True)
    for d in dims:
        for n in sizes:
            truth = make_data(source, n, d, args.seed)[1]
            tag = "blobs" if source == "blobs" else Path(source).stem

            def label_file(method: str) -> Path:
                return tmp / f"{tag}_n{n}_d{d}_seed{args.seed}_m{args.min_cluster_size}_s{args.min_samples}_{method}.npy"

            # earlier invocations' labels stand as references when this one does not rerun them
            labels = {m: np.load(label_file(m)) for m in ("hdbscan", "phdbscan") if label_file(m).exists()}
            # the library first: its labels are the reference for everyone else; pHDBSCAN before its partitioned mode
            for method in sorted(methods, key=lambda m: (m != "hdbscan", m != "phdbscan")):
                earlier = [r for r in runs if (r["method"], r["source"], r["d"]) == (method, source, d)
                           and r["n"] < n and r["status"].startswith(("did not finish", "skipped"))]
                if earlier:
                    result = {"status": f"skipped (did not finish at n={min(r['n'] for r in earlier):,})"}
                else:
                    print(f"[hdbscan bench] {method} n={n} d={d} ...", flush=True)
                    result = run_one(method, source, n, d, args, label_file(method))
                row = {"method": method, "source": source, "n": n, "d": d, "commit": commit, "date": utc_now(),
                       "run_id": run_id, "command": command_line(),
                       "threads": args.threads, "min_cluster_size": args.min_cluster_size,
                       "min_samples": args.min_samples, **result}
                if result["status"] == "ok":
                    from sklearn.metrics import adjusted_rand_score

                    labels[method] = np.load(label_file(method))
                    row["n_clusters"] = int(labels[method].max() + 1)
                    if truth is not None:
                        row["ari_vs_truth"] = float(adjusted_rand_score(truth, labels[method]))
                    if "hdbscan" in labels:
                        row["ari_vs_hdbscan"] = float(adjusted_rand_score(labels["hdbscan"], labels[method]))
                    if method == "phdbscan_parts" and "phdbscan" in labels:
                        row["ari_vs_phdbscan"] = float(adjusted_rand_score(labels["phdbscan"], labels[method]))
                print(f"[hdbscan bench]   {json.dumps({k: v for k, v in row.items() if k != 'stages'})}", flush=True)
                runs = [r for r in runs if (r["method"], r["source"], r["n"], r["d"]) != (method, source, n, d)]
                runs.append(row)
            atomic_write_text(RUNS_FILE, json.dumps(runs, indent=1))
            write_result("hdbscan", render(runs, args))
    print(f"wrote {RESULTS_DIR / 'hdbscan.md'}")


if __name__ == "__main__":
    main()
