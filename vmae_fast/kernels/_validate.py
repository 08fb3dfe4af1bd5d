"""Input checks shared by the ops that take packed variable-length batches (`cu_seqlens`, flash-attention convention).
Shape, dtype and device checks cost nothing; value checks need the offsets on the host, which is free for CPU
tensors and one device-to-host copy (a sync) for CUDA tensors, so callers on the hot path can turn them off."""

from __future__ import annotations

from itertools import pairwise

import torch


def _host_read_allowed(tensor: torch.Tensor) -> bool:
    """False while torch.compile traces (fake tensors carry no values) or while a CUDA graph is being captured
    (a device-to-host copy is illegal inside a capture)."""
    if torch.compiler.is_compiling():
        return False
    return not (tensor.device.type == "cuda" and torch.cuda.is_current_stream_capturing())


def check_cu_seqlens(cu_seqlens, total_tokens: int, device: torch.device, name: str = "cu_seqlens", *,
                     check_values: bool = True) -> list[int] | None:
    """Check `cu_seqlens`: an int32 (B+1,) tensor on `device`, B >= 1, starting at 0, non-decreasing, ending at
    `total_tokens`. Raises TypeError (type/dtype) or ValueError (shape/device/values) naming expected vs got.

    Values are read on the host when the tensor is on the CPU (always) or when `check_values` is True (a sync on
    CUDA); never while torch.compile traces or a CUDA graph is captured. Returns the offsets as a Python list when
    they were read, else None (only the shape, dtype and device were checked)."""
    if not isinstance(cu_seqlens, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of int32 offsets, got {type(cu_seqlens).__name__}")
    if cu_seqlens.dtype != torch.int32:
        raise TypeError(f"{name} must be int32 (flash-attention convention), got {cu_seqlens.dtype}; "
                        f"use {name}.to(torch.int32)")
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2:
        raise ValueError(f"{name} must be 1-D with B+1 >= 2 entries (0, end of clip 0, ...), "
                         f"got shape {tuple(cu_seqlens.shape)}")
    device = torch.device(device)
    if cu_seqlens.device.type != device.type or (
            device.index is not None and cu_seqlens.device.index is not None and cu_seqlens.device != device):
        raise ValueError(f"{name} must be on the same device as the data ({device}), got {cu_seqlens.device}")
    if cu_seqlens.device.type != "cpu" and not check_values:
        return None
    if not _host_read_allowed(cu_seqlens):
        return None
    bounds = cu_seqlens.tolist()
    if bounds[0] != 0:
        raise ValueError(f"{name} must start at 0, got {name}[0] = {bounds[0]}")
    for i, (a, b) in enumerate(pairwise(bounds)):
        if b < a:
            raise ValueError(f"{name} must be non-decreasing, got {name}[{i}] = {a} > {name}[{i + 1}] = {b}")
    if bounds[-1] != total_tokens:
        raise ValueError(f"{name}[-1] must equal the number of tokens ({total_tokens}), got {bounds[-1]}")
    return bounds


def check_max_seqlen(max_seqlen, bounds: list[int] | None, name: str = "max_seqlen") -> None:
    """`max_seqlen` must be a non-negative int; when the offsets were read (`bounds`), at least the longest segment."""
    if isinstance(max_seqlen, bool) or not isinstance(max_seqlen, int):
        raise TypeError(f"{name} must be a Python int (longest segment), got {type(max_seqlen).__name__}")
    if max_seqlen < 0:
        raise ValueError(f"{name} must be >= 0, got {max_seqlen}")
    if bounds is not None:
        longest = max((b - a for a, b in pairwise(bounds)), default=0)
        if max_seqlen < longest:
            raise ValueError(f"{name} = {max_seqlen} is smaller than the longest segment of cu_seqlens ({longest})")
