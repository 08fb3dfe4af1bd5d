"""What a run is: the model it loads, its sampling, its keep policy, and the content of OUT/_run.json, built in one
place for every engine (and for `search --video`, which must embed a query as the run did)."""

from __future__ import annotations

import os
import re
import time
from typing import Any

import torch

from .. import __version__
from ..checkpoint import load_model
from ..store import FORMAT, config_hash
from ..tokens import parse_keep
from ..video.crop import check_crops

_VIEWS_RE = re.compile(r"^\s*(\d+)\s*[xX×]\s*(\d+)\s*$")


_DTYPE_NAMES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}


def load_run_model(model: Any, device: torch.device, dtype: torch.dtype, backend: str, config: dict | None = None):
    if isinstance(model, torch.nn.Module):
        return model
    source = str(model)
    if os.path.exists(os.path.expanduser(source)):
        source = os.path.abspath(os.path.expanduser(source))  # _run.json must name it from any working directory
    try:
        return load_model(source, device=device, dtype=dtype, backend=backend, config=config)
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ValueError(f"cannot load model {str(model)!r}: {first}") from e


def parse_keep_spec(keep: Any):
    """(policy for the model or None for all tokens, canonical spec recorded in the output)."""
    if keep is None or keep == "all":
        return None, "all"
    policy = parse_keep(keep)
    if policy is None:
        return None, "all"
    return policy, policy.spec


def build_run(model, sampling, keep_spec: str, dtype: torch.dtype, device: torch.device, embedding_dtype: str,
              shard: tuple[int, int]) -> dict:
    """The content of _run.json; `config` holds everything that changes the rows and is what config_hash covers."""
    described = model.describe()
    cfg = model.config
    model_part = {key: described.get(key) for key in ("weights_sha256", "config", "preprocessing")}
    if not described.get("weights_sha256"):
        model_part["source"] = described.get("source")  # no checksum: the source is the identity
    config = {
        "model": model_part,
        "sampling": sampling.to_dict(),
        "image_size": int(cfg.image_size),
        "keep": keep_spec,
        "dtype": _DTYPE_NAMES[dtype],
        "device_type": device.type,
        "embedding_dtype": embedding_dtype,
        "embedding_dim": int(cfg.hidden_size),
        "num_labels": int(cfg.num_labels or 0) if _has_head(model) else 0,
    }
    return {
        "format": FORMAT,
        "library_version": __version__,
        "config_hash": config_hash(config),
        "config": config,
        "model": described,
        "device": str(device),
        "num_shards": shard[1],
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _has_head(model) -> bool:
    return getattr(model, "head", None) is not None


def parse_views(spec: str) -> tuple[int, int]:
    """'5x3' -> (clips_per_video 5, crops 3); ValueError naming the value when it is not CLIPSxCROPS with crops 1|3."""
    m = _VIEWS_RE.match(str(spec))
    if not m:
        raise ValueError(f"--views must look like CLIPSxCROPS, e.g. 5x3 (5 clips per video x 3 crops), got {spec!r}")
    clips, crops = int(m.group(1)), int(m.group(2))
    if clips < 1:
        raise ValueError(f"--views {spec}: the number of clips per video must be >= 1")
    try:
        check_crops(crops)
    except ValueError:
        raise ValueError(f"--views {spec}: crops must be 1 or 3, got {crops}") from None
    return clips, crops
