"""Reading an output's rows back for comparisons, and the tolerance they are compared with; a run dict and a
video's rows for the store's tests without a model."""

from __future__ import annotations

import numpy as np

from vmae_fast import store

# fp32 on CPU, the same clip in batches of other shapes or thread counts: BLAS sums in another order, which moves
# embeddings of the tiny test models by up to a few 1e-6 (never more than 1e-5 in any run seen here)
ATOL = 1e-5


def clip_rows(out) -> list[dict]:
    """Every clip row of OUT as a dict, sorted by the row key (video_id, clip_index, crop_index)."""
    return sorted(store.read_clips(out).to_pylist(), key=lambda r: (r["video_id"], r["clip_index"], r["crop_index"]))


def fails_with(error: BaseException):
    """A stand-in for any function: raises `error` when called (to put a fault where a test needs it)."""
    def fail(*args, **kwargs):
        raise error

    return fail


def make_run(dim: int = 6, num_labels: int = 3, embedding_dtype: str = "float32", frame_step: int = 4) -> dict:
    config = {
        "model": {"weights_sha256": "ab" * 32, "config": {"hidden_size": dim}, "preprocessing": {}},
        "sampling": {"num_frames": 4, "frame_step": frame_step},
        "image_size": 32,
        "keep": "all",
        "dtype": "fp32",
        "device_type": "cpu",
        "embedding_dtype": embedding_dtype,
        "embedding_dim": dim,
        "num_labels": num_labels,
    }
    return {
        "format": store.FORMAT,
        "library_version": "test",
        "config_hash": store.config_hash(config),
        "config": config,
        "model": {
            "source": "/models/x",
            "weights_sha256": "ab" * 32,
            "config": {},
            "preprocessing": {},
            "id2label": {"0": "a", "1": "b", "2": "c"},
        },
        "device": "cpu",
    }


def video_rows(video_id: str, n: int, dim: int = 6, num_labels: int = 3, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "video_id": [video_id] * n,
        "path": [f"/v/{video_id}"] * n,
        "clip_index": list(range(n)),
        "start_frame": [8 * i for i in range(n)],
        "end_frame": [8 * i + 8 for i in range(n)],
        "start_s": [0.25 * i for i in range(n)],
        "end_s": [0.25 * i + 0.25 for i in range(n)],
        "padded_frames": [0] * n,
        "num_tokens": [8] * n,
        "embedding": rng.standard_normal((n, dim)).astype(np.float32),
        "logits": rng.standard_normal((n, num_labels)).astype(np.float32),
    }
