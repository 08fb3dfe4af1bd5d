"""Which tokens a clip keeps: policies that map a batch of frames to a bool mask (B, N), and the packing of that mask
into token ids + cu_seqlens for the encoder. Rows may keep different numbers of tokens; every row keeps at least one.

Spellings accepted by parse_keep (the canonical form is what `.spec` returns and what outputs record):
    all                     every token (same as keep=None)
    tube:R                  keep a fraction R in (0, 1] of the spatial positions, the same ones in every time slice,
                            spread evenly by an ordered-dither (Bayer) ranking: R=0.5 is a checkerboard
    tube:R:random[:SEED]    the same, positions drawn at random with SEED (default 0); identical for every clip
    motion:R                keep the fraction R of tubelets that change most from the tubelet before them in time
    motion:t=X              keep the tubelets whose mean absolute change exceeds X (pixel units in [0, 1])
For motion the first time slice has no predecessor and is always ranked first (kept in full when the budget allows),
so a static clip still keeps one complete view of the scene.

Host syncs: tube:R and motion:R keep a count per clip fixed by the ratio and the shape, so `select` builds the token ids
and cu_seqlens on the frames' device with no host sync (a CUDA graph can capture it); motion:t=X and bool masks keep
a data-dependent count, so packing them reads the counts on the host once per batch (`pack`).

Public API (`__all__`): parse_keep, the policies KeepPolicy (the base a custom policy subclasses), KeepAll,
TubeKeep, MotionKeep, and pack / fixed_count_ids (a mask or a fixed count -> token ids + cu_seqlens).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ._options import KeepSpelling, check_keep_ratio, check_motion_threshold, parse_keep_spelling


class KeepPolicy:
    """Base of the keep policies: `mask(frames, config)` -> bool (B, N) on frames' device, True = kept.
    Policies whose count per clip is fixed (`kept_per_clip` not None) also give `select(frames, config)`: the packed
    (token_ids, cu_seqlens, max_seqlen) built on the device without a host sync."""

    spec: str = ""

    def mask(self, frames: torch.Tensor, config) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def kept_per_clip(self, config) -> int | None:
        """Tokens every clip keeps when the policy and the shape fix the count; None when it depends on the data."""
        return None

    def select(self, frames: torch.Tensor, config) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(token_ids int64 (B*k,), cu_seqlens int32 (B+1,), max_seqlen k) as pack(self.mask(...)) gives them; the
        base class packs the mask (one host sync), fixed-count policies override it without one."""
        return pack(self.mask(frames, config))

    def __str__(self) -> str:
        return self.spec


def fixed_count_ids(row_ids: torch.Tensor, batch: int, num_tokens: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Packing when every clip keeps k tokens: row_ids (B, k) or (k,) (the same for every clip), token ids in [0, N)
    sorted within each row -> (flat ids b*N + n (B*k,), cu_seqlens = arange(B+1) * k, k). Device arithmetic only:
    no host sync, capturable in a CUDA graph."""
    k = row_ids.shape[-1]
    offsets = torch.arange(batch, device=row_ids.device, dtype=torch.int64).unsqueeze(1) * num_tokens  # (B, 1)
    token_ids = (offsets + row_ids).reshape(-1)  # (B*k,)
    cu_seqlens = torch.arange(batch + 1, device=row_ids.device, dtype=torch.int32) * k
    return token_ids, cu_seqlens, k


_ON_DEVICE: dict = {}  # (what, ..., device) -> tensors already on that device


def _on_device(key: tuple, device: torch.device, make):
    """make() -> host tensor(s), copied to `device` once and kept: later uses (a CUDA-graph capture among them) copy
    nothing. Tracing stand-ins (fake or functional tensors under torch.compile / make_fx) are used, never kept."""
    device = torch.device(device)
    cached = _ON_DEVICE.get((*key, device))
    if cached is None:
        with _eager():  # host constants computed for real, also while something traces the caller
            made = make()
        cached = tuple(t.to(device) for t in made) if isinstance(made, tuple) else made.to(device)
        if all(_is_real(t) for t in (cached if isinstance(cached, tuple) else (cached,))):
            _ON_DEVICE[(*key, device)] = cached
    return cached


def _eager():
    """Leave tracing modes (FakeTensorMode, make_fx) for a host-side constant computation."""
    from torch.utils._python_dispatch import _disable_current_modes

    return _disable_current_modes()


def _is_real(t: torch.Tensor) -> bool:
    """A tensor with memory of its own: not a FakeTensor, nor a functional wrapper (what tracing hands around)."""
    if type(t) is not torch.Tensor or torch._is_functional_tensor(t):
        return False
    try:
        t.data_ptr()
    except RuntimeError:  # no storage
        return False
    return True


def _device_constant(values: tuple, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """A small constant tensor on `device` (per-channel statistics), copied there once."""
    return _on_device(("constant", values, dtype), device, lambda: torch.tensor(values, dtype=dtype))


@dataclass(frozen=True)
class KeepAll(KeepPolicy):
    """Every token; the model treats it exactly like keep=None (no host sync)."""

    @property
    def spec(self) -> str:
        return "all"

    def mask(self, frames, config):
        return torch.ones(frames.shape[0], config.num_tokens, dtype=torch.bool, device=frames.device)


def _bayer_rank(n_h: int, n_w: int) -> torch.Tensor:
    """Ordered-dither value of each spatial position (n_h * n_w,), int64: taking positions in increasing value spreads
    them evenly at any ratio (the first half is a checkerboard)."""
    bits = max(1, math.ceil(math.log2(max(n_h, n_w))))
    i = torch.arange(n_h).view(-1, 1).expand(n_h, n_w)
    j = torch.arange(n_w).view(1, -1).expand(n_h, n_w)
    value = torch.zeros(n_h, n_w, dtype=torch.int64)
    for b in range(bits):  # least significant bit of (i, j) decides the most significant digit of the rank
        bi, bj = (i >> b) & 1, (j >> b) & 1
        value += (2 * (bi ^ bj) + bi) << (2 * (bits - 1 - b))
    return value.flatten()


@dataclass(frozen=True)
class TubeKeep(KeepPolicy):
    """Keep round(ratio * n_h * n_w) (at least 1) spatial positions in every time slice ("tube masking" kept side)."""

    ratio: float
    random: bool = False
    seed: int = 0

    def __post_init__(self):
        check_keep_ratio("tube", self.ratio)

    @property
    def spec(self) -> str:
        return KeepSpelling("tube", ratio=self.ratio, random=self.random, seed=self.seed).spec

    def spatial_positions(self, n_h: int, n_w: int) -> torch.Tensor:
        """Sorted int64 ids (k,) of the kept positions in the n_h x n_w grid."""
        k = max(1, round(self.ratio * n_h * n_w))
        if self.random:
            order = torch.randperm(n_h * n_w, generator=torch.Generator().manual_seed(self.seed))
        else:
            order = torch.argsort(_bayer_rank(n_h, n_w), stable=True)
        return order[:k].sort().values

    def kept_per_clip(self, config) -> int:
        n_t, n_h, n_w = config.grid
        return n_t * max(1, round(self.ratio * n_h * n_w))

    def row(self, grid: tuple[int, int, int], device) -> tuple[torch.Tensor, torch.Tensor]:
        """(kept mask (N,) bool, kept token ids (k,) int64 sorted) of one clip on `device`, built once per grid,
        policy and device (later calls, a CUDA-graph capture among them, copy nothing)."""
        grid = tuple(grid)

        def build():
            n_t, n_h, n_w = grid
            positions = self.spatial_positions(n_h, n_w)  # (k,) sorted
            ids = (torch.arange(n_t).unsqueeze(1) * (n_h * n_w) + positions).reshape(-1)  # (n_t * k,), (t, h, w)
            row_mask = torch.zeros(n_t * n_h * n_w, dtype=torch.bool).index_fill_(0, ids, True)  # (N,)
            return row_mask, ids

        return _on_device(("tube", self, grid), device, build)

    def mask(self, frames, config):
        row_mask, _ = self.row(config.grid, frames.device)  # (N,), tokens in (t, h, w) order
        return row_mask.unsqueeze(0).expand(frames.shape[0], -1).clone()

    def select(self, frames, config):
        _, ids = self.row(config.grid, frames.device)
        return fixed_count_ids(ids, frames.shape[0], config.num_tokens)


@dataclass(frozen=True)
class MotionKeep(KeepPolicy):
    """Keep the tubelets that change most from the previous time slice (in the spirit of run-length tokenization):
    score = mean |x - x_prev| over a tubelet's pixels, x in [0, 1] units, x_prev the co-located tubelet one slice
    earlier. Exactly one of ratio (fraction kept, in (0, 1]) or threshold (keep score > threshold) is set."""

    ratio: float | None = None
    threshold: float | None = None

    def __post_init__(self):
        if (self.ratio is None) == (self.threshold is None):
            raise ValueError("MotionKeep needs exactly one of ratio or threshold")
        if self.ratio is not None:
            check_keep_ratio("motion", self.ratio)
        if self.threshold is not None:
            check_motion_threshold(self.threshold)

    @property
    def spec(self) -> str:
        return KeepSpelling("motion", ratio=self.ratio, threshold=self.threshold).spec

    def scores(self, frames: torch.Tensor, config) -> torch.Tensor:
        """frames uint8 (B, T, H, W, C) or normalized float (B, T, C, H, W) -> float32 (B, N) change per tubelet;
        the first time slice scores +inf."""
        if frames.dtype == torch.uint8:
            x = frames.permute(0, 1, 4, 2, 3).float() / 255.0  # (B, T, C, H, W) in [0, 1]
        else:  # undo the normalization so thresholds mean the same for both input kinds
            mean = _device_constant(tuple(config.image_mean), frames.device, torch.float32).view(1, 1, -1, 1, 1)
            std = _device_constant(tuple(config.image_std), frames.device, torch.float32).view(1, 1, -1, 1, 1)
            x = frames.float() * std + mean
        B, C = x.shape[0], x.shape[2]
        n_t, n_h, n_w = config.grid
        ts, P = config.tubelet_size, config.patch_size
        tubes = x.reshape(B, n_t, ts, C, n_h, P, n_w, P)
        change = tubes.diff(dim=1).abs().mean(dim=(2, 3, 5, 7))  # (B, n_t - 1, n_h, n_w): x[t] - x[t - 1]
        first = change.new_full((B, 1, n_h, n_w), math.inf)
        return torch.cat([first, change], dim=1).reshape(B, -1)

    def kept_per_clip(self, config) -> int | None:
        return None if self.ratio is None else max(1, round(self.ratio * config.num_tokens))

    def _ranked(self, frames, config) -> torch.Tensor:
        """(B, k) ids of the k highest-scoring tokens of each clip (ratio policies)."""
        scores = self.scores(frames, config)  # (B, N)
        # stable sort: ties (e.g. a static clip) resolve to the earliest tokens, so the result is deterministic
        order = torch.sort(scores, dim=1, descending=True, stable=True).indices  # (B, N)
        return order.narrow(1, 0, self.kept_per_clip(config))

    def mask(self, frames, config):
        if self.threshold is not None:
            return self.scores(frames, config) > self.threshold  # the first slice (+inf) keeps every row non-empty
        keep = torch.zeros(frames.shape[0], config.num_tokens, dtype=torch.bool, device=frames.device)
        return keep.scatter_(1, self._ranked(frames, config), True)

    def select(self, frames, config):
        if self.threshold is not None:  # a data-dependent count: packing reads it on the host
            return super().select(frames, config)
        ids = self._ranked(frames, config).sort(dim=1).values  # (B, k) in token order, as pack(mask) gives them
        return fixed_count_ids(ids, frames.shape[0], config.num_tokens)


def parse_keep(spec) -> KeepPolicy | None:
    """None -> None; a KeepPolicy (or any object with `.mask(frames, config)` and a `.spec` string) -> itself;
    a string (see module doc) -> the policy. Raises ValueError on a bad spelling, saying which forms are accepted."""
    if spec is None or isinstance(spec, KeepPolicy):
        return spec
    if callable(getattr(spec, "mask", None)) and isinstance(getattr(spec, "spec", None), str):
        return spec  # a user policy with the same interface
    if not isinstance(spec, str):
        raise TypeError(f"keep must be None, a policy string or a KeepPolicy, got {type(spec).__name__}")
    spelling = parse_keep_spelling(spec)  # the grammar (and its checks) lives in _options.py, without torch
    if spelling.kind == "all":
        return KeepAll()
    if spelling.kind == "tube":
        return TubeKeep(spelling.ratio, random=spelling.random, seed=spelling.seed)
    return MotionKeep(ratio=spelling.ratio, threshold=spelling.threshold)


def pack(keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """bool (B, N) mask -> (token_ids int64 (N_kept,) flat ids b*N + n in row order, cu_seqlens int32 (B+1,),
    max_seqlen). Syncs with the device once (the kept count is data-dependent)."""
    counts = keep.sum(dim=1)  # (B,)
    token_ids = keep.flatten().nonzero().squeeze(1)
    cu_seqlens = torch.zeros(keep.shape[0] + 1, dtype=torch.int32, device=keep.device)
    cu_seqlens[1:] = counts.cumsum(0)
    return token_ids, cu_seqlens, int(counts.max())


__all__ = ["KeepAll", "KeepPolicy", "MotionKeep", "TubeKeep", "fixed_count_ids", "pack", "parse_keep"]
