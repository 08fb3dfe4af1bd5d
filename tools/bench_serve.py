"""Load test of `vmae-fast serve` on loopback: latency of clip queries (POST /api/search/clip) at 1, 8 and 32
concurrent clients against a 100k-row index (public API + the CLI's server in its own process).

The output: --rows synthetic clip embeddings (tests/helpers/index_data.py `collection`: topics -> videos of 10 clips,
--dim 768 as ViT-B) written as an extract output, indexed by `vmae-fast index` (auto: IVF-Flat at 100k rows, tuned to
recall@10 0.95). The server: `vmae-fast serve OUT --port 0`. The clients: one asyncio process with httpx, each client
sending its next query as soon as the last one answered, queries drawn at random from the stored clips; every level
is bounded: --requests requests or --seconds seconds, whichever comes first, after --warmup requests not counted.
Baselines in the same run, in this process: the same queries through Catalog.search_clip (lookup + FAISS search, no
HTTP) and Index.search alone, one at a time. Both processes share this machine's cores (the clients' CPU time counts
against the server's), and other work on the machine disturbs the figures: the load average is recorded.

    python tools/bench_serve.py [--rows 100000] [--dim 768] [--clients 1 8 32] [--requests 3000] [--seconds 30]
                                [--work /tmp/vmae-serve-bench] [--json bench/results/serve-load-100k.json]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import json
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.helpers import index_data  # noqa: E402 - the synthetic data shapes of the tests
from tests.helpers.server import Served  # noqa: E402 - the CLI's server in its own process, on a free port
from tests.helpers.synthetic_out import write_dataset  # noqa: E402
from vmae_fast.retrieval import Index  # noqa: E402
from vmae_fast.testing.retrieval import Catalog  # noqa: E402

CLIPS_PER_VIDEO = 10


def make_output(out: Path, rows: int, dim: int) -> dict:
    """The synthetic extract output and its clip index (reused when --work already holds them)."""
    if not (out / "index" / "clip.json").is_file():
        vectors = index_data.collection(rows, dim, seed=0)
        video = np.arange(rows) // CLIPS_PER_VIDEO
        write_dataset(out, vectors, video, parts=4)
        del vectors
        t0 = time.perf_counter()
        Index.build(out, level="clip")
        print(f"index built in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    index = Index.load(out, "clip")
    return index.stats


def percentiles(ms: list[float]) -> dict:
    a = np.asarray(ms)
    return {"p50_ms": round(float(np.percentile(a, 50)), 3), "p90_ms": round(float(np.percentile(a, 90)), 3),
            "p99_ms": round(float(np.percentile(a, 99)), 3), "max_ms": round(float(a.max()), 3), "n": len(a)}


def in_process(out: Path, queries: list[tuple[str, int]], k: int) -> dict:
    """The same queries without HTTP, one at a time: Catalog.search_clip, and Index.search of the query vectors."""
    catalog = Catalog(out)
    vectors = [catalog.clip_vector(v, c)[0] for v, c in queries[:50]]
    for v, c in queries[:50]:  # warm-up
        catalog.search_clip(v, c, k=k)
    lookup, search = [], []
    for v, c in queries:
        t = time.perf_counter()
        catalog.search_clip(v, c, k=k)
        lookup.append((time.perf_counter() - t) * 1e3)
    index = catalog.levels["clip"].index
    for i in range(len(queries)):
        x = vectors[i % len(vectors)]
        t = time.perf_counter()
        index.search(x, k)
        search.append((time.perf_counter() - t) * 1e3)
    return {"catalog_search_clip": percentiles(lookup), "index_search": percentiles(search)}


async def load(url: str, queries: list[tuple[str, int]], clients: int, requests: int, seconds: float, warmup: int,
               k: int) -> dict:
    import httpx

    rng = np.random.default_rng(clients)
    order = rng.integers(0, len(queries), requests + warmup + clients)
    latencies: list[float] = []
    status: dict[int, int] = {}
    issued = 0
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    # TCP_NODELAY as browsers, curl and urllib3 set it: httpx writes a request's headers and body separately, and
    # without it Nagle's algorithm holds the body until the server's delayed ACK (~40 ms a request on Linux)
    transport = httpx.AsyncHTTPTransport(limits=limits, socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)])
    async with httpx.AsyncClient(base_url=url, transport=transport, timeout=60) as client:
        async def one(i: int, record: bool) -> None:
            v, c = queries[order[i]]
            t = time.perf_counter()
            response = await client.post("/api/search/clip", json={"video_id": v, "clip_index": c, "k": k})
            elapsed = (time.perf_counter() - t) * 1e3
            status[response.status_code] = status.get(response.status_code, 0) + 1
            if record:
                latencies.append(elapsed)

        for i in range(warmup):  # connections opened, first-call costs paid; not counted
            await one(i, False)
        status.clear()
        deadline = time.perf_counter() + seconds
        t0 = time.perf_counter()

        async def worker() -> None:
            nonlocal issued
            while issued < requests and time.perf_counter() < deadline:
                issued += 1
                await one(warmup + issued, True)

        cpu0 = os.times()
        await asyncio.gather(*(worker() for _ in range(clients)))
        wall = time.perf_counter() - t0
        cpu1 = os.times()
    return {"clients": clients, **percentiles(latencies), "requests_per_s": round(len(latencies) / wall, 1),
            "wall_s": round(wall, 2), "status": status, "stopped_by": "count" if issued >= requests else "time",
            "client_cpu_s": round((cpu1.user - cpu0.user) + (cpu1.system - cpu0.system), 2)}


def environment() -> dict:
    def version(name: str) -> str | None:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return None

    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True,
                           text=True).stdout.strip()
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return {"device": f"cpu ({cpu}, {os.cpu_count()} cores)", "python": platform.python_version(),
            **{name: version(name) for name in ("fastapi", "starlette", "uvicorn", "httpx", "faiss-cpu", "numpy")},
            "commit": commit + ("-dirty" if dirty else "")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--requests", type=int, default=3000, help="requests per level at most (default 3000)")
    parser.add_argument("--seconds", type=float, default=30.0, help="seconds per level at most (default 30)")
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--work", default="/tmp/vmae-serve-bench")
    parser.add_argument("--json", help="write the results here (e.g. bench/results/serve-load-100k.json)")
    args = parser.parse_args()
    work = Path(args.work)
    out = work / f"out-{args.rows}x{args.dim}"
    work.mkdir(parents=True, exist_ok=True)
    stats = make_output(out, args.rows, args.dim)
    catalog = Catalog(out)
    meta = catalog.levels["clip"].index.metadata
    rng = np.random.default_rng(0)
    picks = rng.choice(meta.num_rows, min(5000, meta.num_rows), replace=False)
    queries = list(zip(meta.column("video_id").take(picks).to_pylist(),
                       meta.column("clip_index").take(picks).to_pylist(), strict=True))
    del catalog
    load_before = os.getloadavg()
    baseline = in_process(out, queries[:2000], args.k)
    served = Served(out, log=work / "serve.log")
    levels = []
    try:
        for clients in args.clients:
            row = asyncio.run(load(served.url, queries, clients, args.requests, args.seconds, args.warmup, args.k))
            levels.append(row)
            print(json.dumps(row), flush=True)
        assert served.alive(), "the server died under load"
    finally:
        served.stop()
    result = {
        "what": "vmae-fast serve: latency of POST /api/search/clip on loopback, closed-loop clients (httpx, asyncio)",
        "rows": args.rows, "dim": args.dim, "k": args.k,
        "index": {key: stats.get(key) for key in ("kind", "factory", "rows", "recall_at_10", "queries", "setting",
                                                  "latency_ms_p50", "latency_ms_p99")},
        "bounds": {"requests": args.requests, "seconds": args.seconds, "warmup": args.warmup},
        "levels": levels, "in_process_baseline": baseline,
        "loadavg_before": [round(x, 2) for x in load_before], "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        **environment(), "command": "python tools/bench_serve.py " + " ".join(sys.argv[1:]),
    }
    print(json.dumps({k: v for k, v in result.items() if k != "levels"}, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
