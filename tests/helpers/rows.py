"""Reading an output's rows back for comparisons, and the tolerance they are compared with."""

from __future__ import annotations

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
