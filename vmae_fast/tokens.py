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
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


class KeepPolicy:
    """Base of the keep policies: `mask(frames, config)` -> bool (B, N) on frames' device, True = kept."""

    spec: str = ""

    def mask(self, frames: torch.Tensor, config) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def __str__(self) -> str:
        return self.spec


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
        if not 0 < self.ratio <= 1:
            raise ValueError(f"tube keep ratio must be in (0, 1], got {self.ratio}")

    @property
    def spec(self) -> str:
        return f"tube:{self.ratio:g}" + (f":random:{self.seed}" if self.random else "")

    def spatial_positions(self, n_h: int, n_w: int) -> torch.Tensor:
        """Sorted int64 ids (k,) of the kept positions in the n_h x n_w grid."""
        k = max(1, round(self.ratio * n_h * n_w))
        if self.random:
            order = torch.randperm(n_h * n_w, generator=torch.Generator().manual_seed(self.seed))
        else:
            order = torch.argsort(_bayer_rank(n_h, n_w), stable=True)
        return order[:k].sort().values

    def mask(self, frames, config):
        n_t, n_h, n_w = config.grid
        spatial = torch.zeros(n_h * n_w, dtype=torch.bool)
        spatial[self.spatial_positions(n_h, n_w)] = True
        row = spatial.repeat(n_t)  # (N,), tokens in (t, h, w) order
        return row.to(frames.device).unsqueeze(0).expand(frames.shape[0], -1).clone()


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
        if self.ratio is not None and not 0 < self.ratio <= 1:
            raise ValueError(f"motion keep ratio must be in (0, 1], got {self.ratio}")
        if self.threshold is not None and not self.threshold >= 0:
            raise ValueError(f"motion threshold must be >= 0, got {self.threshold}")

    @property
    def spec(self) -> str:
        return f"motion:{self.ratio:g}" if self.ratio is not None else f"motion:t={self.threshold:g}"

    def scores(self, frames: torch.Tensor, config) -> torch.Tensor:
        """frames uint8 (B, T, H, W, C) or normalized float (B, T, C, H, W) -> float32 (B, N) change per tubelet;
        the first time slice scores +inf."""
        if frames.dtype == torch.uint8:
            x = frames.permute(0, 1, 4, 2, 3).float() / 255.0  # (B, T, C, H, W) in [0, 1]
        else:  # undo the normalization so thresholds mean the same for both input kinds
            mean = torch.tensor(config.image_mean, device=frames.device).view(1, 1, -1, 1, 1)
            std = torch.tensor(config.image_std, device=frames.device).view(1, 1, -1, 1, 1)
            x = frames.float() * std + mean
        B, C = x.shape[0], x.shape[2]
        n_t, n_h, n_w = config.grid
        ts, P = config.tubelet_size, config.patch_size
        tubes = x.reshape(B, n_t, ts, C, n_h, P, n_w, P)
        change = (tubes[:, 1:] - tubes[:, :-1]).abs().mean(dim=(2, 3, 5, 7))  # (B, n_t - 1, n_h, n_w)
        first = torch.full((B, 1, n_h, n_w), math.inf, device=x.device)
        return torch.cat([first, change], dim=1).reshape(B, -1)

    def mask(self, frames, config):
        scores = self.scores(frames, config)  # (B, N)
        if self.threshold is not None:
            return scores > self.threshold  # the first slice (+inf) keeps every row non-empty
        k = max(1, round(self.ratio * scores.shape[1]))
        # stable sort: ties (e.g. a static clip) resolve to the earliest tokens, so the result is deterministic
        order = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]
        keep = torch.zeros_like(scores, dtype=torch.bool)
        return keep.scatter_(1, order, True)


def parse_keep(spec) -> KeepPolicy | None:
    """None -> None; a KeepPolicy (or any object with `.mask(frames, config)` and a `.spec` string) -> itself;
    a string (see module doc) -> the policy. Raises ValueError on a bad spelling, saying which forms are accepted."""
    if spec is None or isinstance(spec, KeepPolicy):
        return spec
    if callable(getattr(spec, "mask", None)) and isinstance(getattr(spec, "spec", None), str):
        return spec  # a user policy with the same interface
    if not isinstance(spec, str):
        raise TypeError(f"keep must be None, a policy string or a KeepPolicy, got {type(spec).__name__}")
    forms = "'all', 'tube:R', 'tube:R:random[:SEED]', 'motion:R', 'motion:t=X' (R in (0, 1])"
    parts = spec.strip().lower().split(":")
    try:
        if parts == ["all"]:
            return KeepAll()
        if parts[0] == "tube" and len(parts) == 2:
            return TubeKeep(float(parts[1]))
        if parts[0] == "tube" and len(parts) in (3, 4) and parts[2] == "random":
            return TubeKeep(float(parts[1]), random=True, seed=int(parts[3]) if len(parts) == 4 else 0)
        if parts[0] == "motion" and len(parts) == 2:
            if parts[1].startswith("t="):
                return MotionKeep(threshold=float(parts[1][2:]))
            return MotionKeep(ratio=float(parts[1]))
    except ValueError as e:
        raise ValueError(f"bad keep policy {spec!r}: {e}; expected one of {forms}") from None
    raise ValueError(f"unknown keep policy {spec!r}; expected one of {forms}")


def pack(keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """bool (B, N) mask -> (token_ids int64 (N_kept,) flat ids b*N + n in row order, cu_seqlens int32 (B+1,),
    max_seqlen). Syncs with the device once (the kept count is data-dependent)."""
    counts = keep.sum(dim=1)  # (B,)
    token_ids = keep.flatten().nonzero().squeeze(1)
    cu_seqlens = torch.zeros(keep.shape[0] + 1, dtype=torch.int32, device=keep.device)
    cu_seqlens[1:] = counts.cumsum(0)
    return token_ids, cu_seqlens, int(counts.max())


__all__ = ["KeepAll", "KeepPolicy", "MotionKeep", "TubeKeep", "pack", "parse_keep"]
