"""Index build time, tuned recall, query latency and memory for vmae_fast.index on synthetic embeddings (public API).

For each size (default 100k and 1M vectors of 768-d), data shape (tests/index_data.py) and kind (auto, ivf, ivfpq;
flat and hnsw optional): build time (from an in-memory array: normalize + train + add + measure/tune to
--target-recall), the recall@10 the build measured on its held-out rows and the tuned setting, then, separately,
recall@10 of --queries fresh queries near data points against exact search, single-query latency p50/p99, batch
throughput and bytes per vector of the index.

    python tools/bench_index.py [--sizes 100000 1000000] [--shapes collection] [--kinds auto ivf ivfpq]
                                [--max-memory 1G] [--queries 200] [--threads T] [--json out.json]

Prints one JSON object per result row (and all rows to --json). The machine's other load disturbs timings: run it
under an exclusive lock and say so when quoting them.
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.helpers import index_data  # noqa: E402 - after the path: the synthetic data shapes of the tests
from vmae_fast.retrieval import Index  # noqa: E402


def bench(vectors: np.ndarray, queries: np.ndarray, exact: np.ndarray, kind: str, k: int, target: float,
          max_memory: str | None) -> dict:
    t0 = time.perf_counter()
    index = Index.from_vectors(vectors, kind=kind, target_recall=target, max_memory=max_memory)
    build_s = time.perf_counter() - t0
    index.search(queries[:5], k)  # warm-up: first-call allocations
    latencies, rows = [], []
    for q in queries:
        t = time.perf_counter()
        result = index.search(q, k)[0]
        latencies.append(time.perf_counter() - t)
        rows.append([m.row for m in result] + [-1] * (k - len(result)))
    t = time.perf_counter()
    index.search(queries, k)
    batch_s = time.perf_counter() - t
    ms = np.array(latencies) * 1e3
    s = index.stats
    return {
        "n": len(vectors), "dim": vectors.shape[1], "kind": kind, "chosen": s["kind"], "factory": s["factory"],
        "setting": s["setting"], "target": target, "met": s["met"], "tuned_recall_at_10": s["recall_at_10"],
        "tuning_queries": s["queries"], "tried": index.quality["tried"], "suggestion": s["suggestion"],
        "build_s": round(build_s, 2), "fresh_recall_at_10": round(index_data.recall_at_k(np.array(rows), exact), 4),
        "query_p50_ms": round(float(np.percentile(ms, 50)), 3), "query_p99_ms": round(float(np.percentile(ms, 99)), 3),
        "queries": len(queries), "batch_qps": round(len(queries) / batch_s, 1),
        "bytes_per_vector": round(s["bytes"] / len(vectors), 1) if s["bytes"] else None, "k": k,
        "max_memory": max_memory,
    }


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
    parser.add_argument("--shapes", nargs="+", default=["collection"], choices=index_data.SHAPES)
    parser.add_argument("--kinds", nargs="+", default=["auto", "ivf", "ivfpq"],
                        choices=["auto", "flat", "ivf", "ivfpq", "opq", "hnsw"])
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--target-recall", type=float, default=0.95)
    parser.add_argument("--max-memory", help="memory budget for the auto kind (default: half the RAM)")
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
        for shape in args.shapes:
            vectors = index_data.make(shape, n, args.dim)
            queries = index_data.queries_near(vectors, args.queries)  # near, not equal to, stored clips
            exact = index_data.exact_top_k(vectors, queries, args.k)
            for kind in args.kinds:
                row = {"shape": shape, **bench(vectors, queries, exact, kind, args.k, args.target_recall,
                                                args.max_memory)}
                row["environment"] = env | {"load_avg_1m": os.getloadavg()[0]}
                results.append(row)
                print(json.dumps(row), flush=True)
                if args.json:
                    Path(args.json).write_text(json.dumps(results, indent=1))
            del vectors


if __name__ == "__main__":
    main()
