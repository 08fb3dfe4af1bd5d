"""Synthetic embedding sets of different shapes for recall tests and tools/bench_index.py (numpy only).

Each generator returns unit float32 vectors (n, dim). They are the shapes on which fixed index parameters failed:

- `isotropic`: k round clusters whose points spread as far from their center as the centers are from the origin, so
  a point's 10 nearest neighbours are near-ties inside its cluster (the issue's 50k x 768, 200 clusters: 0.57).
- `anisotropic`: clusters stretched along a few directions of their own (low rank, decaying variance) inside a
  low-dimensional subspace of the space: most dimensions carry nothing, a few carry everything (what OPQ is for).
- `near_duplicates`: videos whose clips overlap: each video a slow random walk, consecutive clips at cosine ~0.97,
  so a clip's neighbours are the clips next to it in time, separated by tiny score gaps.
- `collection`: topics -> videos of 1..20 clips -> clips (the old tests' "clustered vectors").
`queries_near(x, n)` draws queries close to (not equal to) random data points.
"""

from __future__ import annotations

import numpy as np

SHAPES = ("isotropic", "anisotropic", "near_duplicates", "collection")


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)).astype(np.float32)


def _chunked(n: int, dim: int, rng, make, chunk: int = 100_000) -> np.ndarray:
    """Fill a float32 (n, dim) array chunk by chunk (1M x 768 never holds a float64 copy)."""
    out = np.empty((n, dim), np.float32)
    for s in range(0, n, chunk):
        out[s:s + chunk] = unit(make(s, min(chunk, n - s)))
    return out


def isotropic(n: int, dim: int, *, clusters: int = 200, spread: float = 1.0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = unit(rng.standard_normal((clusters, dim), dtype=np.float32))
    label = rng.integers(0, clusters, n)

    def make(s, m):
        return centers[label[s:s + m]] + spread / np.sqrt(dim) * rng.standard_normal((m, dim), dtype=np.float32)

    return _chunked(n, dim, rng, make)


def anisotropic(n: int, dim: int, *, clusters: int = 100, rank: int = 8, subspace: int = 64,
                seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    sub = min(subspace, dim)
    basis = np.linalg.qr(rng.standard_normal((dim, sub)))[0].T.astype(np.float32)  # (sub, dim) orthonormal rows
    centers = unit(rng.standard_normal((clusters, sub), dtype=np.float32))
    axes = np.stack([np.linalg.qr(rng.standard_normal((sub, rank)))[0].T for _ in range(clusters)]).astype(np.float32)
    scale = (1.5 / np.sqrt(np.arange(1, rank + 1))).astype(np.float32)  # variance decays along the cluster's axes
    label = rng.integers(0, clusters, n)

    def make(s, m):
        lab = label[s:s + m]
        z = rng.standard_normal((m, rank), dtype=np.float32) * scale
        local = centers[lab] + np.einsum("mr,mrs->ms", z, axes[lab]) / np.sqrt(rank)
        local += 0.02 * rng.standard_normal((m, sub), dtype=np.float32)
        return local @ basis

    return _chunked(n, dim, rng, make)


def near_duplicates(n: int, dim: int, *, topics: int = 300, step: float = 0.25, min_clips: int = 5,
                    max_clips: int = 60, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(min_clips, max_clips + 1, n // min_clips + 1)
    lengths = lengths[: np.searchsorted(np.cumsum(lengths), n) + 1]
    centers = unit(rng.standard_normal((topics, dim), dtype=np.float32))
    out = np.empty((n, dim), np.float32)
    start = 0
    for length in lengths:
        m = min(int(length), n - start)
        if m <= 0:
            break
        base = centers[rng.integers(0, topics)] + rng.standard_normal(dim, dtype=np.float32) / np.sqrt(dim)
        walk = np.cumsum(step / np.sqrt(dim) * rng.standard_normal((m, dim), dtype=np.float32), axis=0)
        out[start:start + m] = unit(base + walk)
        start += m
    return out


def collection(n: int, dim: int, *, topics: int = 1000, clip_noise: float = 0.5, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 21, n)
    lengths = lengths[: np.searchsorted(np.cumsum(lengths), n) + 1]
    video = np.repeat(np.arange(len(lengths)), lengths)[:n]
    centers = unit(rng.standard_normal((topics, dim), dtype=np.float32))
    videos = unit(centers[rng.integers(0, topics, len(lengths))]
                  + rng.standard_normal((len(lengths), dim), dtype=np.float32) / np.sqrt(dim))

    def make(s, m):
        return videos[video[s:s + m]] + clip_noise / np.sqrt(dim) * rng.standard_normal((m, dim), dtype=np.float32)

    return _chunked(n, dim, rng, make)


def make(shape: str, n: int, dim: int, seed: int = 0) -> np.ndarray:
    if shape not in SHAPES:
        raise ValueError(f"shape must be one of {', '.join(SHAPES)}, got {shape!r}")
    return globals()[shape](n, dim, seed=seed)


def queries_near(x: np.ndarray, count: int, *, noise: float = 0.3, seed: int = 1) -> np.ndarray:
    """`count` unit queries, each a random data point moved by `noise` (relative norm) in a random direction."""
    rng = np.random.default_rng(seed)
    picked = x[rng.choice(len(x), count, replace=False)]
    dim = x.shape[1]
    return unit(picked + noise / np.sqrt(dim) * rng.standard_normal(picked.shape, dtype=np.float32))


def exact_top_k(x: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Row ids (len(queries), k) of the exact top-k by inner product, computed 8192 rows at a time."""
    best_s = np.full((len(queries), k), -np.inf, np.float32)
    best_i = np.zeros((len(queries), k), np.int64)
    for s in range(0, len(x), 8192):
        scores = queries @ x[s:s + 8192].T
        cand_s = np.concatenate([best_s, scores], axis=1)
        cand_i = np.concatenate([best_i, np.arange(s, s + scores.shape[1])[None].repeat(len(queries), 0)], axis=1)
        top = np.argpartition(-cand_s, k - 1, axis=1)[:, :k]
        best_s, best_i = np.take_along_axis(cand_s, top, 1), np.take_along_axis(cand_i, top, 1)
    return best_i


def recall_at_k(found: np.ndarray, exact: np.ndarray) -> float:
    """Mean over queries of |found ∩ exact| / k (found rows may contain -1 for missing results)."""
    k = exact.shape[1]
    return float(np.mean([len(set(f.tolist()) & set(e.tolist())) / k for f, e in zip(found, exact, strict=True)]))
