"""Choosing, measuring and tuning a FAISS index for unit vectors (inner product = cosine), used by vmae_fast.index.

- `plan_index(n, dim, kind, max_memory)`: the index family and its size from the row count, the dimension and a
  memory budget, after FAISS's "Guidelines to choose an index" and autofaiss's `get_optimal_index_keys_v2` (not a
  dependency: autofaiss 2.18.0 pins numpy<2, and pyarrow 26 does not import with numpy 1.26). A FAISS
  index_factory string describes every index, so an expert may pass one instead.
- `tune(index, queries, exact, target, n)`: the cheapest search setting (nprobe, k_factor, ef_search) whose
  recall@10 on held-out queries, against their exact top-10, meets the target; when none does, the best one and a
  suggestion for the next index.
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any

import faiss
import numpy as np

from ..faults import InvalidOption

KINDS = ("auto", "flat", "ivf", "ivfpq", "opq", "hnsw")
RECALL_K = 10  # recall@10: the fraction of the exact top 10 an approximate search returns
TARGET_RECALL = 0.95
TUNE_QUERIES = 1000  # held-out queries for tuning: recall@10 +- ~0.005 (one standard error) around 0.95
FLAT_MAX_ROWS = 20_000  # auto: exact search up to here (5.1 ms a 768-d query, p50): at 100k rows flat took 35 ms,
# IVF-Flat 0.28 ms at recall@10 0.99 (bench/results/index_100k.json, 2 cores)
HNSW_QUANTIZER_NLIST = 4096  # IVF with this many lists or more finds its lists through an HNSW graph
NPROBES = tuple(2 ** i for i in range(21))
K_FACTORS = (1, 2, 4, 8, 16, 32, 64)
EF_SEARCHES = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
PLAN_PARAMS = {"nlist", "m", "nbits", "hnsw_m", "ef_construction", "train_size", "factory"}
SEARCH_PARAMS = {"nprobe", "k_factor", "ef_search"}


# --- choosing an index -----------------------------------------------------------------------------------------------
def parse_memory(text: str | float | None) -> int | None:
    """'16G', '512M', '2.5GB', '800000000' -> bytes (powers of 1024); None stays None."""
    if text is None or isinstance(text, (int, float)):
        return None if text is None else int(text)
    s = str(text).strip().upper().removesuffix("B").removesuffix("I")
    units = {"K": 2 ** 10, "M": 2 ** 20, "G": 2 ** 30, "T": 2 ** 40}
    try:
        value = float(s[:-1]) * units[s[-1]] if s and s[-1] in units else float(s)
    except ValueError:
        raise InvalidOption(f"memory must be a size like 16G, 512M or a byte count, got {text!r}") from None
    if not value > 0:
        raise InvalidOption(f"memory must be positive, got {text!r}")
    return int(value)


def default_memory() -> int:
    """Half of this machine's physical memory (the default --max-memory)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
    except (ValueError, OSError, AttributeError):
        return 8 * 2 ** 30


def human_bytes(nbytes: float) -> str:
    for unit, size in (("TB", 2 ** 40), ("GB", 2 ** 30), ("MB", 2 ** 20), ("KB", 2 ** 10)):
        if nbytes >= size:
            return f"{nbytes / size:.1f} {unit}"
    return f"{nbytes:.0f} B"


def _nlist_for(n: int) -> int:
    """Power of two nearest 4 * sqrt(n), with >= 39 rows per list for k-means (FAISS warns below)."""
    nlist = 2 ** max(0, round(math.log2(max(1.0, 4 * math.sqrt(n)))))
    return int(min(nlist, 2 ** int(math.log2(max(1, n // 39)))))


def _pq_m(dim: int, dims_per_byte: int) -> int:
    """Largest divisor of dim that gives sub-vectors of >= dims_per_byte dimensions."""
    return max(d for d in range(1, max(1, dim // dims_per_byte) + 1) if dim % d == 0)


def estimate_bytes(kind: str, n: int, dim: int, p: dict) -> int:
    """Memory of an index of `kind` with plan p over n vectors: codes + 8-byte ids per vector, plus centroids."""
    per_vector = {"flat": 4 * dim, "hnsw": 4 * dim + 8 * p.get("hnsw_m", 32) + 16, "ivf": 4 * dim + 8,
                  "ivfpq": p.get("m", 0) + 8 + dim, "opq": p.get("m", 0) + 8}[kind]
    fixed = 4 * dim * p.get("nlist", 0) if kind in ("ivf", "ivfpq", "opq") else 0
    fixed += 4 * dim * 256 if kind in ("ivfpq", "opq") else 0
    fixed += 4 * dim * dim if kind == "opq" else 0
    return int(per_vector * n + fixed)


def plan_index(n: int, dim: int, kind: str = "auto", max_memory: int | str | None = None, **params) -> dict:
    """The index to build for n vectors of dim dimensions: {"kind", "factory", "bytes", "why", nlist, m, ...}.

    kind "auto" takes the first family that fits max_memory (bytes, or '16G'; default half the RAM): flat (up to
    FLAT_MAX_ROWS rows), ivf, ivfpq (PQ d/16 bytes + SQ8 re-ranking), opq (OPQ + PQ with the most bytes that fit).
    Explicit params (nlist, m, nbits, hnsw_m, ef_construction, train_size, or a whole FAISS `factory` string) win.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    unknown = set(params) - PLAN_PARAMS - SEARCH_PARAMS
    if unknown:
        raise TypeError(f"unknown index parameter(s): {', '.join(sorted(unknown))}")
    if n < 1:
        raise ValueError(f"cannot index {n} vectors")
    budget = parse_memory(max_memory) or default_memory()
    p = {k: v for k, v in params.items() if v is not None and k in PLAN_PARAMS}
    why = f"chosen: {kind}"
    if "factory" in p:  # the user's own FAISS index_factory string: built as given, tuned like any other
        p.setdefault("train_size", min(n, 100_000))
        return {**p, "kind": "factory", "bytes": None, "max_memory": budget, "why": "FAISS factory string given"}
    if kind == "auto":
        p.setdefault("nlist", _nlist_for(n))
        p_pq = {**p, "m": p.get("m") or _pq_m(dim, 16)}
        if n <= FLAT_MAX_ROWS and estimate_bytes("flat", n, dim, p) <= budget:
            kind, why = "flat", f"{n} rows <= {FLAT_MAX_ROWS}: exact search"
            p.pop("nlist")
        elif estimate_bytes("ivf", n, dim, p) <= budget:
            kind, why = "ivf", f"uncompressed vectors fit the {human_bytes(budget)} budget"
        elif estimate_bytes("ivfpq", n, dim, p_pq) <= budget:
            vectors = human_bytes(estimate_bytes("ivf", n, dim, p))
            why = f"vectors ({vectors}) exceed {human_bytes(budget)}: PQ + 8-bit re-ranking"
            kind, p = "ivfpq", p_pq
        else:
            fits = [m for m in range(dim, 0, -1) if dim % m == 0 and m <= dim // 2
                    and estimate_bytes("opq", n, dim, {**p, "m": m}) <= budget]
            if not fits:
                raise InvalidOption(f"--max-memory {human_bytes(budget)} is too small for {n} vectors of {dim} dims: "
                                    "the smallest index (OPQ + 1-byte PQ) needs "
                                    f"{human_bytes(estimate_bytes('opq', n, dim, {**p, 'm': 1}))}"
                                    f"; raise --max-memory")
            kind, why = "opq", f"even PQ + re-ranking exceeds the {human_bytes(budget)} budget: OPQ + PQ{fits[0]}"
            p["m"] = fits[0]
    if kind in ("ivf", "ivfpq", "opq"):
        p.setdefault("nlist", _nlist_for(n))
        p["nlist"] = int(max(1, min(p["nlist"], n)))
    if kind in ("ivfpq", "opq"):
        p.setdefault("m", _pq_m(dim, 16))
        p.setdefault("nbits", 8)
        if dim % p["m"]:
            raise InvalidOption(f"{kind} m={p['m']} must divide the vector dimension {dim}")
        if n < 2 ** p["nbits"]:
            raise InvalidOption(f"{kind} needs at least {2 ** p['nbits']} vectors to train, got {n}; use --kind flat")
    if kind == "hnsw":
        p.setdefault("hnsw_m", 32)
        p.setdefault("ef_construction", 80)
    if kind in ("ivf", "ivfpq", "opq"):
        # k-means wants >= 39 points a list (FAISS's floor; its guideline is 30-256); PQ's 256 centroids ~ 10k
        need = max(40 * p["nlist"], 40 * 2 ** p.get("nbits", 0) if kind != "ivf" else 0, 10_000)
        p.setdefault("train_size", min(n, need))
    coarse = f"IVF{p.get('nlist')}" + ("_HNSW32" if p.get("nlist", 0) >= HNSW_QUANTIZER_NLIST else "")
    p["factory"] = {"flat": "Flat", "hnsw": f"HNSW{p.get('hnsw_m')}", "ivf": f"{coarse},Flat",
                    "ivfpq": f"{coarse},PQ{p.get('m')}x{p.get('nbits')}np,Refine(SQ8)",
                    "opq": f"OPQ{p.get('m')},{coarse},PQ{p.get('m')}x{p.get('nbits')}np"}[kind]
    return {**p, "kind": kind, "bytes": estimate_bytes(kind, n, dim, p), "max_memory": budget, "why": why}


def new_faiss_index(dim: int, plan: dict):
    try:
        index = faiss.index_factory(dim, plan["factory"], faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as e:
        raise InvalidOption(f"FAISS cannot build {plan['factory']!r}: {str(e).strip().splitlines()[-1]}") from None
    if plan.get("ef_construction") and isinstance(faiss.downcast_index(index), faiss.IndexHNSW):
        faiss.downcast_index(index).hnsw.efConstruction = int(plan["ef_construction"])
    if isinstance(faiss.downcast_index(index), faiss.IndexPreTransform):  # OPQ: 10 rotation updates, not 50
        chain = faiss.downcast_index(index).chain
        for i in range(chain.size()):
            transform = faiss.downcast_VectorTransform(chain.at(i))
            if isinstance(transform, faiss.OPQMatrix):
                transform.niter = 10
    return index


# --- search parameters -----------------------------------------------------------------------------------------------
def _structure(index) -> dict:
    """What the FAISS index has that search parameters reach: {"ivf": nlist, "refine": bool, "hnsw": bool, ...}."""
    s: dict[str, Any] = {"ivf": 0, "refine": False, "hnsw": False, "code_bytes": 4 * index.d}
    idx = faiss.downcast_index(index)
    while True:
        if isinstance(idx, faiss.IndexPreTransform):
            idx = faiss.downcast_index(idx.index)
        elif isinstance(idx, faiss.IndexRefine):
            s["refine"] = True
            idx = faiss.downcast_index(idx.base_index)
        else:
            break
    if isinstance(idx, faiss.IndexIVF):
        s["ivf"] = int(idx.nlist)
        s["code_bytes"] = int(idx.code_size)
        s["hnsw_quantizer"] = isinstance(faiss.downcast_index(idx.quantizer), faiss.IndexHNSW)
    elif isinstance(idx, faiss.IndexHNSW):
        s["hnsw"] = True
    return s


def _search_parameters(index, setting: dict, k: int):
    """faiss SearchParameters for setting {nprobe, k_factor, ef_search}, nested the way the index is (thread-safe,
    nothing mutated). Returns (params or None, objects to keep alive while searching)."""
    keep = []

    def build(idx):
        idx = faiss.downcast_index(idx)
        if isinstance(idx, faiss.IndexPreTransform):
            inner = build(idx.index)
            return faiss.SearchParametersPreTransform(index_params=inner) if inner is not None else None
        if isinstance(idx, faiss.IndexRefine):
            base = build(idx.base_index)
            p = faiss.IndexRefineSearchParameters(k_factor=float(setting.get("k_factor", 1)))
            if base is not None:
                p.base_index_params = base
            return p
        if isinstance(idx, faiss.IndexIVF):
            nprobe = int(min(setting.get("nprobe", 1), idx.nlist))
            p = faiss.SearchParametersIVF(nprobe=nprobe)
            if isinstance(faiss.downcast_index(idx.quantizer), faiss.IndexHNSW):
                quantizer = faiss.SearchParametersHNSW(efSearch=max(2 * nprobe, 64))
                keep.append(quantizer)
                p.quantizer_params = quantizer
            return p
        if isinstance(idx, faiss.IndexHNSW):
            return faiss.SearchParametersHNSW(efSearch=max(int(setting.get("ef_search", 64)), k))
        return None

    params = build(index)
    keep.append(params)
    return params, keep


def faiss_search(index, x: np.ndarray, k: int, setting: dict) -> tuple[np.ndarray, np.ndarray]:
    params, _keep = _search_parameters(index, setting, k)
    return index.search(x, k, params=params)


def _setting_cost(s: dict, setting: dict, n: int, dim: int) -> float:
    """Estimated work of one query (byte-sized operations), for ranking settings that meet the target: codes scanned
    in the probed lists, vectors re-ranked, HNSW nodes visited."""
    cost = 0.0
    if s["ivf"]:
        cost += setting["nprobe"] * (n / s["ivf"]) * s["code_bytes"]
    if s["refine"]:
        cost += RECALL_K * setting["k_factor"] * dim
    if s["hnsw"]:
        cost += setting["ef_search"] * 32 * dim
    return cost


# --- recall measurement -----------------------------------------------------------------------------------------------
def exact_top_k(rows, queries: np.ndarray, k: int, progress=None) -> np.ndarray:
    """Row ids (nq, k) of the exact top-k by inner product over every row, streamed batch by batch (flat scans)."""
    heap = faiss.ResultHeap(len(queries), k, keep_max=True)
    for first, x, _ in rows.batches():
        scores, ids = faiss.knn(queries, x, min(k, len(x)), metric=faiss.METRIC_INNER_PRODUCT)
        if ids.shape[1] < k:  # a batch smaller than k: pad so the heap sees (nq, k)
            pad = k - ids.shape[1]
            scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
            ids = np.pad(ids, ((0, 0), (0, pad)), constant_values=-1)
        heap.add_result(np.ascontiguousarray(scores, np.float32), np.where(ids >= 0, ids + first, -1).astype(np.int64))
        if progress is not None:
            progress.update(len(x))
    heap.finalize()
    return heap.I


def _recall(found: np.ndarray, exact: np.ndarray) -> tuple[float, float]:
    """(mean recall@k over the queries, its one-sided 95 % lower confidence bound: mean - 1.645 standard errors)."""
    hits = np.array([len(set(f[f >= 0].tolist()) & set(e[e >= 0].tolist())) / max(1, (e >= 0).sum())
                     for f, e in zip(found, exact, strict=True)])
    low = hits.mean() - 1.645 * hits.std(ddof=1) / np.sqrt(len(hits)) if len(hits) > 1 else hits.mean()
    return float(hits.mean()), float(low)


def latency(index, queries: np.ndarray, setting: dict, k: int) -> dict:
    """Single-query latency p50/p99 (ms) over up to 200 queries searched one at a time, and batch ms a query."""
    single = []
    for q in queries[:200]:
        t = time.perf_counter()
        faiss_search(index, q[None], k, setting)
        single.append(time.perf_counter() - t)
    t = time.perf_counter()
    faiss_search(index, queries, k, setting)
    batch = (time.perf_counter() - t) / max(1, len(queries))
    ms = np.array(single) * 1e3
    return {"latency_ms_p50": round(float(np.percentile(ms, 50)), 3),
            "latency_ms_p99": round(float(np.percentile(ms, 99)), 3), "batch_ms_per_query": round(batch * 1e3, 4)}


def tune(index, queries: np.ndarray, exact: np.ndarray, target: float, n: int, fixed: dict | None = None) -> dict:
    """The cheapest search setting whose recall@10 on `queries` (against their exact top-k rows `exact`) meets the
    target with 95 % confidence: its one-sided lower bound (mean - 1.645 standard errors over the queries) >= target,
    so a setting that only scrapes past the target on this sample is not taken.

    Search parameters in `fixed` are not tuned. IVF: for k_factor from the largest down (with a re-ranking stage),
    the smallest power-of-two nprobe meeting the target (monotone: a smaller k_factor never needs fewer lists), then
    the cheapest of these by `_setting_cost`; HNSW: the smallest ef_search. Returns the stats dict stored with the
    index: recall_at_10, queries, target, met, setting, tried [[setting, recall]...], latency, suggestion.
    """
    fixed = {k: v for k, v in (fixed or {}).items() if v is not None}
    s = _structure(index)
    k = RECALL_K
    tried: list[tuple[dict, float]] = []
    lows: dict[str, float] = {}

    def evaluate(setting):  # -> mean recall; meets the target when its lower bound does
        _, rows = faiss_search(index, queries, k, setting)
        r, lows[json.dumps(setting, sort_keys=True)] = _recall(rows, exact)
        tried.append((setting, r))
        return r

    def meets(setting):
        return lows[json.dumps(setting, sort_keys=True)] >= target

    meeting = []
    if s["ivf"]:
        nprobes = [fixed["nprobe"]] if "nprobe" in fixed else [p for p in NPROBES if p < s["ivf"]] + [s["ivf"]]
        kfs = [fixed["k_factor"]] if "k_factor" in fixed else (list(K_FACTORS)[::-1] if s["refine"] else [1])
        i = 0
        for kf in kfs:
            previous = -1.0
            while i < len(nprobes):
                setting = {"nprobe": int(nprobes[i]), "k_factor": kf} if s["refine"] else {"nprobe": int(nprobes[i])}
                r = evaluate(setting)
                if meets(setting):
                    meeting.append(setting)
                    break
                if r - previous < 0.001:  # doubling nprobe gained nothing: the codes (or k_factor) limit recall
                    i = len(nprobes)
                    break
                previous = r
                i += 1
            if i == len(nprobes):
                break
    elif s["hnsw"]:
        efs = [fixed["ef_search"]] if "ef_search" in fixed else [e for e in EF_SEARCHES if e <= max(n, 16)]
        for ef in efs:
            evaluate({"ef_search": int(ef)})
            if meets({"ef_search": int(ef)}):
                meeting.append({"ef_search": int(ef)})
                break
    else:  # flat, or a factory string without search parameters: measure as it is
        evaluate({})
    recalls = {json.dumps(st, sort_keys=True): r for st, r in tried}
    if meeting:
        best = min(meeting, key=lambda st: (_setting_cost(s, {"k_factor": 1, **st}, n, index.d), json.dumps(st)))
    else:
        best = max(tried, key=lambda t: (t[1], -_setting_cost(s, {"k_factor": 1, "nprobe": 1, "ef_search": 16,
                                                                    **t[0]}, n, index.d)))[0]
    recall, low = recalls[json.dumps(best, sort_keys=True)], lows[json.dumps(best, sort_keys=True)]
    stats = {"recall_at_10": round(recall, 4), "recall_at_10_low95": round(low, 4), "queries": len(queries),
             "target": target, "met": bool(low >= target), "setting": best, "exact": "flat scan over all rows",
             "tried": [[st, round(r, 4)] for st, r in tried], **latency(index, queries, best, k)}
    stats["suggestion"] = None if stats["met"] else _suggest(s, best, recall, low, target)
    return stats


def _suggest(s: dict, best: dict, recall: float, low: float, target: float) -> str:
    setting = ", ".join(f"{k} {v}" for k, v in best.items())
    # the target is met by the lower bound, not the mean: a mean of 0.957 can miss 0.95 (0.935 at 95 % confidence)
    head = (f"recall@10 reaches at most {recall:.3f}, {low:.3f} at 95 % confidence: below the target {target}"
            + (f" ({setting})" if setting else "") + ": ")
    if s["ivf"] and s["refine"]:
        return head + ("the compressed codes (PQ scan, 8-bit re-ranking) cannot order these neighbours; rebuild with "
                       "--kind ivf (uncompressed vectors, 4*D+8 bytes a vector) or --kind flat (exact)")
    if s["ivf"] and s["code_bytes"] < 4 * 8:
        return head + ("the PQ codes are too coarse; rebuild with a larger --m, or --kind ivfpq (PQ + re-ranking, D "
                       "more bytes a vector: raise --max-memory)")
    if s["ivf"]:
        return head + "rebuild with more lists (--nlist) or --kind flat (exact)"
    if s["hnsw"]:
        return head + "rebuild with a larger --hnsw-m, or --kind ivf / flat"
    return head + "use --kind flat (exact)"
