"""Index build time, query latency and recall for vmae_fast.index on synthetic clip embeddings (public API only).

For each size (default 100k and 1M vectors of 768-d) and kind (flat, ivfpq; hnsw optional): build time (from an
in-memory array: normalize + train + add), single-query latency p50/p99 over --queries queries one at a time,
batch throughput, recall@10 against the flat index, and bytes per vector of the index. The vectors look like a
video collection (topics -> videos of 1..20 clips -> clips; see tests/test_index.py), generated in chunks.

    python tools/bench_index.py [--sizes 100000 1000000] [--kinds flat ivfpq] [--queries 200] [--threads T]
                                [--json out.json]

Prints one JSON object per result row (and all rows to --json). The machine's other load disturbs timings: say
so when quoting them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from vmae_fast.index import Index


def clustered_vectors(n: int, dim: int, seed: int = 0, topics: int = 1000, clip_noise: float = 0.5) -> np.ndarray:
    """float32 (n, dim) unit vectors: topics -> videos (1..20 clips) -> clips, built 100k rows at a time."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 21, n)
    lengths = lengths[: np.searchsorted(np.cumsum(lengths), n) + 1]
    video = np.repeat(np.arange(len(lengths)), lengths)[:n]
    centers = rng.standard_normal((topics, dim), dtype=np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    videos = centers[rng.integers(0, topics, len(lengths))]
    videos += rng.standard_normal(videos.shape, dtype=np.float32) / np.sqrt(dim)
    videos /= np.linalg.norm(videos, axis=1, keepdims=True)
    out = np.empty((n, dim), np.float32)
    for s in range(0, n, 100_000):
        chunk = videos[video[s:s + 100_000]] + clip_noise / np.sqrt(dim) * rng.standard_normal(
            (min(100_000, n - s), dim), dtype=np.float32)
        out[s:s + len(chunk)] = chunk / np.linalg.norm(chunk, axis=1, keepdims=True)
    return out


def bytes_per_vector(index: Index) -> float:
    """Index memory per vector: codes (+ re-ranking codes) + 8-byte ids for IVF; FAISS's own structures only."""
    d, p = index.dim, index.params
    if index.kind == "flat":
        return 4.0 * d
    if index.kind == "hnsw":
        return 4.0 * d + 2 * p["hnsw_m"] * 4  # vectors + ~2M links of int32 on level 0
    refine = {"sq8": d, "fp16": 2 * d, "flat": 4 * d, "none": 0}[p["refine"]]
    return p["m"] * p["nbits"] / 8 + 8 + refine


def bench(vectors: np.ndarray, queries: np.ndarray, kind: str, exact_rows: list[list[int]] | None, k: int) -> dict:
    t0 = time.perf_counter()
    index = Index.from_vectors(vectors, kind=kind)
    build_s = time.perf_counter() - t0
    index.search(queries[:5], k)  # warm-up: first-call allocations
    latencies = []
    rows = []
    for q in queries:
        t = time.perf_counter()
        result = index.search(q, k)[0]
        latencies.append(time.perf_counter() - t)
        rows.append([m.row for m in result])
    t = time.perf_counter()
    index.search(queries, k)
    batch_s = time.perf_counter() - t
    ms = np.array(latencies) * 1e3
    row = {
        "n": len(vectors), "dim": vectors.shape[1], "kind": kind, "params": index.params,
        "build_s": round(build_s, 2), "query_p50_ms": round(float(np.percentile(ms, 50)), 3),
        "query_p99_ms": round(float(np.percentile(ms, 99)), 3), "queries": len(queries),
        "batch_qps": round(len(queries) / batch_s, 1), "bytes_per_vector": bytes_per_vector(index), "k": k,
    }
    if exact_rows is not None:
        row["recall_at_k"] = round(float(np.mean([len(set(a) & set(e)) / k for a, e in zip(rows, exact_rows)])), 4)
    return row, rows


def environment() -> dict:
    import faiss

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False,
                                cwd=Path(__file__).resolve().parents[1]).stdout.strip()
    except OSError:
        commit = None
    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "faiss": faiss.__version__, "faiss_threads": faiss.omp_get_max_threads(), "numpy": np.__version__,
            "git_commit": commit, "load_avg_1m": os.getloadavg()[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--kinds", nargs="+", default=["flat", "ivfpq"], choices=["flat", "ivfpq", "hnsw"])
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--threads", type=int, help="FAISS OpenMP threads (default: FAISS's, all cores)")
    parser.add_argument("--json", help="also write all rows to this file")
    args = parser.parse_args()
    if args.threads:
        import faiss

        faiss.omp_set_num_threads(args.threads)
    env = environment()
    print(json.dumps({"environment": env}), flush=True)
    results = []
    for n in args.sizes:
        vectors = clustered_vectors(n, args.dim)
        rng = np.random.default_rng(1)
        queries = vectors[rng.choice(n, args.queries, replace=False)] + 0.02 * rng.standard_normal(
            (args.queries, args.dim), dtype=np.float32) / np.sqrt(args.dim)  # near, not equal to, stored clips
        exact = None
        for kind in sorted(args.kinds, key=lambda kd: kd != "flat"):  # flat first: it is the recall reference
            row, rows = bench(vectors, queries, kind, exact, args.k)
            if kind == "flat":
                exact = rows
            row["environment"] = env | {"load_avg_1m": os.getloadavg()[0]}
            results.append(row)
            print(json.dumps(row), flush=True)
        del vectors
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
