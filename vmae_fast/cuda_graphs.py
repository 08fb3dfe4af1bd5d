"""CUDA-graph replay of an encoder's forward (VideoMAE or V-JEPA 2) for one fixed batch shape.

At batch 1 a ViT forward is a few hundred small kernel launches whose CPU launch cost exceeds their GPU time; a CUDA
graph records them once and replays them with one launch. The model's forward makes no host sync with all tokens
(cu_seqlens = arange(B+1) * N) and with the fixed-count keep policies tube:R and motion:R (ids and offsets computed
on the device, vmae_fast.tokens), and the kernels skip their value checks while a graph is captured, so it is
captured as is. motion:t=X and keep masks keep a data-dependent count, which packing reads on the host: those batches
use the eager model (one sync per batch there).

    runner = CUDAGraphRunner(model, batch_size=8)                   # model from load_model(..., device="cuda")
    runner = CUDAGraphRunner(model, batch_size=8, keep="tube:0.5")  # or motion:0.5
    out = runner(frames)                                    # uint8 (b, T, H, W, 3) with b <= 8, CPU or CUDA

Public API (`__all__`): CUDAGraphRunner, and check_batch (the input check it applies).
"""

from __future__ import annotations

import torch

from .model import VideoEncoder, VideoMAEOutput
from .tokens import KeepAll, KeepPolicy, parse_keep


def check_batch(frames, static_shape: tuple[int, ...], dtype: torch.dtype) -> int:
    """Check a batch for a runner whose static input has shape `static_shape` (batch_size, ...) and `dtype`;
    returns the batch's row count b (1 <= b <= batch_size). Raises TypeError / ValueError naming expected vs got."""
    batch_size, per_clip = static_shape[0], tuple(static_shape[1:])
    expected = f"{dtype} (b, {', '.join(map(str, per_clip))}) with 1 <= b <= {batch_size}"
    if not isinstance(frames, torch.Tensor):
        raise TypeError(f"frames must be a torch.Tensor, {expected}; got {type(frames).__name__}")
    if frames.dtype != dtype:
        raise TypeError(f"frames must be {expected}; got dtype {frames.dtype} (the graph was captured for {dtype})")
    if frames.dim() != len(static_shape) or tuple(frames.shape[1:]) != per_clip:
        raise ValueError(f"frames must be {expected}; got shape {tuple(frames.shape)}")
    b = frames.shape[0]
    if not 1 <= b <= batch_size:
        raise ValueError(f"frames must be {expected}; got {b} clips (capture a runner with a larger batch_size)")
    return b


class CUDAGraphRunner:
    """Captures `model(frames)` for `batch_size` clips once, then replays it for each call.

    model: a vmae_fast VideoMAE or VJEPA2 on a CUDA device, backend "auto" or "triton" (the torch backend reads
        cu_seqlens on the host, which a capture forbids).
    batch_size: clips per replay; smaller batches are padded (the pad rows are zeros, their outputs dropped).
    keep: None / "all", or a policy with a fixed count per clip ("tube:R", "tube:R:random[:SEED]", "motion:R");
        not motion:t=X or a mask (see the module docstring).
    input_dtype: torch.uint8 (frames (B, T, H, W, 3), normalized inside; default) or the model's float dtype (frames
        (B, T, 3, H, W) already normalized).
    return_tokens: also capture the tokens (N_kept, D) output.
    clone: True (default) returns fresh tensors; False returns views of the graph's static outputs, valid until the
        next call (saves a copy, for callers that consume the result at once).
    pool: a torch.cuda.graph_pool_handle() to share memory between runners of different batch sizes.
    warmup: eager forwards on a side stream before capture (Triton autotuning and compilation happen there).
    """

    def __init__(self, model: VideoEncoder, batch_size: int, keep=None, *, input_dtype: torch.dtype = torch.uint8,
                 return_tokens: bool = False, clone: bool = True, pool=None, warmup: int = 2):
        if not isinstance(model, VideoEncoder):
            raise TypeError(f"model must be a vmae_fast VideoMAE or VJEPA2 (from load_model), got "
                            f"{type(model).__name__}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int):
            raise TypeError(f"batch_size must be an int >= 1, got {type(batch_size).__name__} {batch_size!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size}")
        policy = None if isinstance(keep, torch.Tensor) else parse_keep(keep)
        policy = None if isinstance(policy, KeepAll) else policy
        fixed = policy is None or (isinstance(policy, KeepPolicy) and policy.kept_per_clip(model.config) is not None)
        if isinstance(keep, torch.Tensor) or not fixed:
            raise ValueError(f"a CUDA graph needs keep=None, 'all' or a policy with a fixed count per clip ('tube:R', "
                             f"'motion:R'), got {keep!r}: packing a data-dependent count needs it on the host; run "
                             f"motion:t=X and keep masks through the eager model")
        if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 1:
            raise ValueError(f"warmup must be an int >= 1 (Triton compiles and autotunes there, never during the "
                             f"capture), got {warmup!r}")
        c = model.config
        if input_dtype == torch.uint8:
            shape = (batch_size, c.num_frames, c.image_size, c.image_size, c.num_channels)
        elif input_dtype == model.dtype:
            shape = (batch_size, c.num_frames, c.num_channels, c.image_size, c.image_size)
        else:
            raise TypeError(f"input_dtype must be torch.uint8 or the model's dtype {model.dtype}, got {input_dtype}")
        if model.device.type != "cuda":
            raise ValueError(f"CUDA graphs need a model on a CUDA device, got {model.device}; load it with "
                             f"load_model(..., device='cuda') (on CPU call the model directly)")
        if model.backend == "torch":
            raise ValueError("CUDA graphs need backend 'auto' or 'triton': the torch backend reads cu_seqlens on the "
                             "host, which a capture forbids")
        self.model, self.batch_size, self.return_tokens, self.clone = model, batch_size, return_tokens, clone
        self.keep = policy
        self.tokens_per_clip = c.num_tokens if policy is None else policy.kept_per_clip(c)
        self.static_input = torch.zeros(shape, dtype=input_dtype, device=model.device)
        if input_dtype == torch.uint8:  # mid-grey warmup frames: realistic values for autotuning
            self.static_input.fill_(128)

        # everything under the model's device: torch.cuda.graph captures on a stream of the current device, and
        # a replay runs on the current device's stream (a caller's current device may be another GPU)
        with torch.cuda.device(model.device):
            side = torch.cuda.Stream(device=model.device)
            side.wait_stream(torch.cuda.current_stream(model.device))
            with torch.cuda.stream(side):
                for _ in range(warmup):
                    model(self.static_input, keep=policy, return_tokens=return_tokens)
            torch.cuda.current_stream(model.device).wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph, pool=pool):
                self.static_output: VideoMAEOutput = model(self.static_input, keep=policy,
                                                           return_tokens=return_tokens)

    @property
    def pool(self):
        """The graph's memory pool, to pass to another runner."""
        return self.graph.pool()

    def __call__(self, frames: torch.Tensor) -> VideoMAEOutput:
        """frames: (b, ...) as the static input with 1 <= b <= batch_size, on the CPU (pinned memory makes the copy
        asynchronous) or the model's device. Returns VideoMAEOutput for the b clips: embeddings (b, D), logits (b, C)
        or None, tokens (b*k, D) or None (k tokens kept per clip), cu_seqlens int32 (b+1,)."""
        b = check_batch(frames, tuple(self.static_input.shape), self.static_input.dtype)
        with torch.cuda.device(self.model.device):
            self.static_input[:b].copy_(frames, non_blocking=True)
            if b < self.batch_size:
                self.static_input[b:].zero_()  # pad rows: each clip attends only within itself, never mix in
            self.graph.replay()
        out, n = self.static_output, self.tokens_per_clip

        def take(t, rows):
            if t is None:
                return None
            t = t[:rows]
            return t.clone() if self.clone else t

        return VideoMAEOutput(embeddings=take(out.embeddings, b), logits=take(out.logits, b),
                              tokens=take(out.tokens, b * n), cu_seqlens=take(out.cu_seqlens, b + 1))

    run = __call__


__all__ = ["CUDAGraphRunner", "check_batch"]
