#!/usr/bin/env python
"""Model benchmark: vmae_fast against transformers VideoMAE / VJEPA2 (eager, SDPA) and torch.compile of it.

Same random weights everywhere (every parameter drawn at random, written once by vmae_fast.checkpoint.save_hf to a
temporary folder that vmae_fast.load_model and transformers' from_pretrained both read), same device, dtype, batch
and inputs, one process, providers alternated round by round so drift (clocks, other load) hits all of them alike.
Reports clips/s, useful TFLOP/s (FLOPs of the kept tokens only, the same formula for every provider), first-call time
(compile/autotune/capture) apart, peak GPU memory, and the embedding cosine against an fp32 run of the same inputs.
Speed-ups against transformers/torch.compile are filled only for rows doing the same work (all tokens); rows that
keep fewer tokens report `speedup_vs_all_tokens` against the same provider keeping all. transformers 5.6-5.17 drop
VideoMAE's q/v biases: there it is a speed baseline only and vmae_fast's cosine is taken against vmae_fast fp32
(`cosine_reference` says which). Imports torch, triton, transformers (and matplotlib for the optional plot) only.

    python tools/bench_model.py --smoke                               # CPU, tiny config, seconds (CI)
    python tools/bench_model.py --models base --out bench/results/model_base.json   # one GPU, bf16
    python tools/bench_model.py --models vjepa2-vitl --frames 16 --batches 16     # V-JEPA 2 ViT-L 16x256

V-JEPA 2 models (vjepa2-vitl, -vith, -vitg, -vitg-384, and vjepa2-tiny for smoke runs) are transformers' own
VJEPA2Model with every parameter randomized, written by save_pretrained (the real hub layout) and read by both; the
embedding compared is the mean of the last-layer tokens (what vmae_fast stores for an encoder). Without transformers
they run as random:<preset> (vmae_fast rows only).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.util
import json
import math
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_env import ROOT, environment, import_vmae_fast

MODELS = ("small", "base", "large", "huge", "giant")
VJEPA2_MODELS = ("vjepa2-vitl", "vjepa2-vith", "vjepa2-vitg", "vjepa2-vitg-384")  # vmae_fast.config.VJEPA2_PRESETS
VJEPA2_TINY = {"image_size": 32, "num_frames": 4, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
               "intermediate_size": 128}
PROVIDERS = ("vmae_fast", "vmae_fast-cudagraph", "transformers-eager", "transformers-sdpa", "torch-compile")
TINY = {"image_size": 32, "patch_size": 16, "num_frames": 4, "tubelet_size": 2, "hidden_size": 64,
        "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128}
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
# aten ops behind F.scaled_dot_product_attention, by the backend that runs them
SDPA_BACKENDS = {"aten::_scaled_dot_product_flash_attention": "flash",
                 "aten::_scaled_dot_product_efficient_attention": "efficient",
                 "aten::_scaled_dot_product_cudnn_attention": "cudnn",
                 "aten::_scaled_dot_product_flash_attention_for_cpu": "cpu-flash",
                 "aten::_scaled_dot_product_attention_math": "math"}
# equal-work speed-up columns: rows keeping all tokens against these baselines
BASELINES = (("transformers-sdpa", "speedup_vs_sdpa"), ("transformers-eager", "speedup_vs_eager"),
             ("torch-compile", "speedup_vs_compile"))


# --- models ------------------------------------------------------------------------------------------------------


def model_config(name: str, vmae_fast) -> dict:
    """Architecture of a preset (or the tiny smoke config) as VideoMAEConfig size fields."""
    if name == "tiny":
        return dict(TINY)
    c = vmae_fast.VideoMAEConfig.from_name(name)
    return {k: getattr(c, k) for k in ("image_size", "patch_size", "num_frames", "tubelet_size", "hidden_size",
                                       "num_hidden_layers", "num_attention_heads", "intermediate_size")}


def randomize_(model: torch.nn.Module, seed: int) -> None:
    """Random weights for every parameter (biases and LayerNorm gains too, so none is a no-op): matrices N(0, 0.02),
    LayerNorm gains 1 + N(0, 0.1), biases N(0, 0.1); the fused qkv's key third stays zero (VideoMAE has no key
    bias)."""
    g = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g, device=p.device, dtype=p.dtype)
            if p.dim() >= 2:
                p.copy_(noise * 0.02)
            elif name.endswith("weight"):
                p.copy_(1.0 + 0.1 * noise)
            else:
                p.copy_(0.1 * noise)
            if name.endswith("attn.wqkv.bias"):
                D = p.shape[0] // 3
                p[D:2 * D].zero_()


def is_vjepa2(name: str) -> bool:
    return name.startswith("vjepa2")


def vjepa2_config(name: str, vmae_fast, frames: int):
    """A VJEPA2Config of a preset (vjepa2-tiny: the smoke sizes) for clips of `frames` frames."""
    if name == "vjepa2-tiny":
        return vmae_fast.config.VJEPA2Config(**VJEPA2_TINY, frames_per_clip=4)
    return vmae_fast.config.VJEPA2Config.from_name(name, num_frames=frames, frames_per_clip=frames)


def write_vjepa2_checkpoint(config, seed: int, path: Path) -> Path:
    """transformers' VJEPA2Model of that architecture, every parameter randomized (randomize_), saved with
    save_pretrained: the folder the hub's encoders have (predictor included: a 1-layer one, never run)."""
    import transformers

    hf_config = transformers.VJEPA2Config(
        crop_size=config.image_size, patch_size=config.patch_size, frames_per_clip=config.num_frames,
        tubelet_size=config.tubelet_size, hidden_size=config.hidden_size, num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads, mlp_ratio=config.intermediate_size / config.hidden_size,
        pred_hidden_size=64, pred_num_attention_heads=4, pred_num_hidden_layers=1, pred_num_mask_tokens=1)
    model = transformers.VJEPA2Model(hf_config).eval()
    randomize_(model, seed)
    model.save_pretrained(path)
    return path


def transformers_available() -> bool:
    return importlib.util.find_spec("transformers") is not None


def transformers_reference_ok() -> bool:
    """transformers can be the numerical reference: not 5.6-5.17, which drop VideoMAE's q/v biases."""
    from transformers import __version__

    m = re.match(r"(\d+)\.(\d+)", __version__)
    return not (m and (5, 6) <= (int(m.group(1)), int(m.group(2))) <= (5, 17))


def weights_bytes(module: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])


def write_checkpoint(name: str, vmae_fast, seed: int, path: Path, num_labels: int = 0) -> Path:
    """A random-weight checkpoint of the architecture in Hugging Face format (our writer, save_hf): mean pooling +
    fc_norm, headless by default (transformers reads it as VideoMAEForVideoClassification with num_labels=0, whose
    "logits" are the pooled embedding), transformers' conventions (LayerNorm eps 1e-12, fc_norm 1e-5, mean/std
    0.5)."""
    from vmae_fast.checkpoint import save_hf
    from vmae_fast.config import HF_DEFAULT_MEAN, HF_DEFAULT_STD
    from vmae_fast.model import VideoMAE

    config = vmae_fast.VideoMAEConfig(**model_config(name, vmae_fast), num_labels=num_labels, use_mean_pooling=True,
                                      layer_norm_eps=1e-12, fc_norm_eps=1e-5, image_mean=HF_DEFAULT_MEAN,
                                      image_std=HF_DEFAULT_STD)
    model = VideoMAE(config, backend="torch")  # CPU fp32 weights: the same numbers on every machine
    randomize_(model, seed)
    return save_hf(model, path)


class Setup:
    """Every model of one architecture from one checkpoint: vmae_fast fp32 (reference for kept subsets, and for all
    tokens where transformers cannot be one) and in `dtype`; transformers fp32 (the all-token reference) and in
    `dtype` (eager, SDPA, compiled) when it is installed."""

    def __init__(self, name: str, args, device: torch.device, dtype: torch.dtype, vmae_fast, workdir: Path):
        self.name, self.device, self.dtype = name, device, dtype
        self.vjepa2 = is_vjepa2(name)
        self.compiled, self.compile_mode = None, args.compile_mode  # compiled on first use
        self.compile_backend = args.compile_backend
        self.graph_runners: dict[tuple, object] = {}
        self.hf32 = self.hf_sdpa = self.hf_eager = None
        if self.vjepa2:
            config = vjepa2_config(name, vmae_fast, args.frames)
            source = (write_vjepa2_checkpoint(config, args.seed, workdir / name) if transformers_available()
                      else f"random:{name if name in VJEPA2_MODELS else 'vjepa2-vitl'}:{args.seed}")
            # (no transformers: vmae_fast rows only, random:<preset> weights sized by `config`)
            self.path, overrides = source, (None if transformers_available() else config)
        else:
            self.path, overrides = write_checkpoint(name, vmae_fast, args.seed, workdir / name), None
        self.vmae32 = vmae_fast.load_model(self.path, device=device, dtype=torch.float32, config=overrides)
        self.vmae = self.vmae32 if dtype == torch.float32 else vmae_fast.load_model(self.path, device=device,
                                                                                    dtype=dtype, config=overrides)
        self.config = self.vmae.config
        self.reference_ok = False
        if transformers_available():
            self.reference_ok = True if self.vjepa2 else transformers_reference_ok()
            # each attention implementation chosen at load time, as users do (transformers 4.x and 5.x)
            self.hf32 = self.load_hf("sdpa", torch.float32)
            self.hf_sdpa = self.load_hf("sdpa")
            if "transformers-eager" in args.providers:
                self.hf_eager = self.load_hf("eager")

    def load_hf(self, attn_implementation: str, dtype: torch.dtype | None = None):
        from transformers import VideoMAEForVideoClassification, VJEPA2Model

        cls = VJEPA2Model if self.vjepa2 else VideoMAEForVideoClassification
        model = cls.from_pretrained(self.path, attn_implementation=attn_implementation)
        return model.to(self.device, dtype or self.dtype).eval()

    def hf_embedding(self, model, pixel_values: torch.Tensor) -> torch.Tensor:
        """transformers' (B, D) embedding: VideoMAE's pooled output (a headless classifier's logits), or for
        V-JEPA 2 the mean of the encoder's last_hidden_state (the predictor skipped)."""
        if self.vjepa2:
            return model(pixel_values, skip_predictor=True).last_hidden_state.mean(1)
        return model(pixel_values).logits

    def compiled_model(self):
        if self.compiled is None:  # its own copy: dynamo guards then see only this model's config
            module = self.load_hf("sdpa")
            inductor = self.compile_backend == "inductor"  # mode applies to inductor only
            self.compiled = torch.compile(module, backend=self.compile_backend,
                                          mode=self.compile_mode if inductor else None, dynamic=False)
            self.compiled_weights = weights_bytes(module)
        return self.compiled

    def pixel_values(self, frames: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """uint8 (B, T, H, W, 3) -> normalized (B, T, 3, H, W) in dtype, with the checkpoint's mean/std."""
        x = frames.permute(0, 1, 4, 2, 3).float().div(255.0)
        x = (x - self.vmae.pixel_mean.view(1, 1, 3, 1, 1)) / self.vmae.pixel_std.view(1, 1, 3, 1, 1)
        return x.to(dtype).contiguous()


def model_flops(config, kept_per_clip: list[int]) -> float:
    """Forward FLOPs (2 per multiply-add) of the encoder over each clip's kept tokens: patch embedding GEMM, per block
    qkv (3 D^2), attention (QK^T and PV: 4 n^2 D), output projection (D^2) and MLP (2 D M); norms, GELU and the
    pooled head are left out (< 1 %)."""
    D, L, M, P = config.hidden_size, config.num_hidden_layers, config.intermediate_size, config.patch_dim
    total = 0.0
    for n in kept_per_clip:
        total += 2 * n * P * D + L * (2 * n * 3 * D * D + 4 * n * n * D + 2 * n * D * D + 4 * n * D * M)
    return total


# --- timing ------------------------------------------------------------------------------------------------------


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn, iters: int, device: torch.device) -> float:
    """Mean milliseconds per call over `iters` back-to-back calls (CUDA events on a GPU, perf_counter on CPU)."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iters):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / iters
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - t0) * 1e3 / iters


def sdpa_backend_used(fn) -> str:
    """Which SDPA backend one call runs, read from the aten ops a profiler records (not assumed)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    names = {event.name for event in prof.events()}
    found = sorted({backend for op, backend in SDPA_BACKENDS.items() if op in names})
    return "+".join(found) if found else "none recorded"


def cosine(got: torch.Tensor, want: torch.Tensor) -> tuple[float, float]:
    """(mean, min) over clips of the cosine similarity of two (B, D) embeddings, computed in float64."""
    cos = torch.nn.functional.cosine_similarity(got.double().cpu(), want.double().cpu(), dim=1)
    return cos.mean().item(), cos.min().item()


def is_oom(error: BaseException) -> bool:
    return isinstance(error, torch.OutOfMemoryError) or "out of memory" in str(error).lower()


# --- one (model, batch) setting ----------------------------------------------------------------------------------


def build_runs(setup: Setup, args, batch: int, frames: torch.Tensor, pixel_values: torch.Tensor, vmae_fast):
    """[(provider, keep ratio, keep spec, make_fn)]: make_fn() builds what the provider needs (compile, capture) and
    returns the timed callable, which returns the (batch, D) embedding."""
    runs = []
    dev = setup.device
    if "vmae_fast" in args.providers:
        for ratio in args.keeps:
            spec = None if ratio >= 1.0 else f"tube:{ratio:g}"
            runs.append(("vmae_fast", ratio, spec,
                         lambda spec=spec: (lambda: setup.vmae(frames, keep=spec).embeddings)))
    if "vmae_fast-cudagraph" in args.providers and dev.type == "cuda" and batch in args.graph_batches:
        for ratio in args.keeps:  # tube:R is captured too (no host sync)
            spec = None if ratio >= 1.0 else f"tube:{ratio:g}"

            def make_graph(spec=spec):
                from vmae_fast.cuda_graphs import CUDAGraphRunner

                key = (batch, spec)
                runner = setup.graph_runners.get(key) or CUDAGraphRunner(setup.vmae, batch, keep=spec, clone=False)
                setup.graph_runners[key] = runner
                return lambda: runner(frames).embeddings
            runs.append(("vmae_fast-cudagraph", ratio, spec, make_graph))
    if "transformers-eager" in args.providers:
        runs.append(("transformers-eager", 1.0, None,
                     lambda: (lambda: setup.hf_embedding(setup.hf_eager, pixel_values))))
    if "transformers-sdpa" in args.providers:
        runs.append(("transformers-sdpa", 1.0, None, lambda: (lambda: setup.hf_embedding(setup.hf_sdpa, pixel_values))))
    if "torch-compile" in args.providers:  # first_call_s of its row is the compile time (+ one call)
        def make_compiled():
            compiled = setup.compiled_model()

            def call():
                if dev.type == "cuda":  # max-autotune replays CUDA graphs: mark each call as a new step
                    torch.compiler.cudagraph_mark_step_begin()
                return setup.hf_embedding(compiled, pixel_values)
            return call
        runs.append(("torch-compile", 1.0, None, make_compiled))
    return runs


def provider_weights(setup: Setup, provider: str) -> int:
    if provider.startswith("vmae_fast"):
        return weights_bytes(setup.vmae)
    if provider == "torch-compile":
        return getattr(setup, "compiled_weights", weights_bytes(setup.hf_sdpa))
    return weights_bytes(setup.hf_sdpa)


def reference_for(setup: Setup, provider: str, spec: str | None) -> str:
    """Which fp32 run a row's cosine is taken against: transformers SDPA fp32 for transformers' own rows and for
    vmae_fast keeping all tokens where transformers is a valid reference; vmae_fast fp32 with the same keep policy
    otherwise (transformers cannot drop tokens per clip; vmae_fast fp32 matches it to ~1e-6, tests/model/test_model*.py;
    transformers 5.6-5.17 or none installed)."""
    if setup.hf32 is not None and (not provider.startswith("vmae_fast") or (spec is None and setup.reference_ok)):
        return "transformers-fp32"
    return "vmae_fast-fp32"


@torch.no_grad()
def fp32_reference(setup: Setup, frames: torch.Tensor, spec: str | None, chunk: int, which: str) -> torch.Tensor:
    """(B, D) fp32 embeddings of the same frames by `which` (reference_for), in chunks to bound the fp32 activation
    memory."""
    outs = []
    for i in range(0, frames.shape[0], chunk):
        part = frames[i:i + chunk]
        if which == "transformers-fp32":
            outs.append(setup.hf_embedding(setup.hf32, setup.pixel_values(part, torch.float32)).float())
        else:
            outs.append(setup.vmae32(part, keep=spec).embeddings.float())
    return torch.cat(outs)


@torch.no_grad()
def bench_setting(setup: Setup, args, batch: int, env: dict, vmae_fast) -> list[dict]:
    c, dev = setup.config, setup.device
    g = torch.Generator().manual_seed(args.seed + batch)
    frames = torch.randint(0, 256, (batch, c.num_frames, c.image_size, c.image_size, c.num_channels),
                           dtype=torch.uint8, generator=g).to(dev)
    pixel_values = setup.pixel_values(frames, setup.dtype)
    runs = build_runs(setup, args, batch, frames, pixel_values, vmae_fast)
    results = []
    for provider, ratio, spec, make in runs:
        row = {**env, "model": setup.name, "dtype": str(setup.dtype).removeprefix("torch."), "batch": batch,
               "shape": {"T": c.num_frames, "H": c.image_size, "W": c.image_size, "D": c.hidden_size,
                         "layers": c.num_hidden_layers, "heads": c.num_attention_heads},
               "keep": ratio, "provider": provider, "clips_per_s": None, "tflops": None, "cosine_vs_fp32": None,
               "peak_mem_gb": None, "keep_spec": spec or "all",
               "input": "uint8 (B,T,H,W,3)" if provider.startswith("vmae_fast") else "normalized float (B,T,3,H,W)"}
        if provider == "torch-compile":
            row["compile"] = {"backend": setup.compile_backend, "mode": setup.compile_mode, "dynamic": False}
        policy = vmae_fast.tokens.parse_keep(spec)
        kept = [c.num_tokens] * batch if policy is None else policy.mask(frames, c).sum(1).tolist()
        row["tokens_per_clip"], row["kept_tokens_mean"] = c.num_tokens, sum(kept) / batch
        row["flops_per_batch"] = model_flops(c, kept)
        try:
            synchronize(dev)
            base = torch.cuda.memory_allocated(dev) if dev.type == "cuda" else 0
            if dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats(dev)
            t0 = time.perf_counter()
            fn = make()
            out = fn()
            synchronize(dev)
            row["first_call_s"] = time.perf_counter() - t0  # compile / autotune / capture + one call
            embedding = out.float().clone()
            fn()  # steady-state call: its activations count in the peak too
            synchronize(dev)
            if dev.type == "cuda":
                peak = torch.cuda.max_memory_allocated(dev) - base + provider_weights(setup, provider)
                row["peak_mem_gb"] = peak / 2**30
            row["cosine_reference"] = reference_for(setup, provider, spec)
            row["cosine_vs_fp32"], row["cosine_min_vs_fp32"] = cosine(
                embedding, fp32_reference(setup, frames, spec, args.reference_chunk, row["cosine_reference"]))
            if provider == "vmae_fast-cudagraph":  # the replay must compute exactly what eager computes
                row["bit_equal_to_eager"] = bool(torch.equal(out, setup.vmae(frames, keep=spec).embeddings))
            if provider == "transformers-sdpa":
                row["sdpa_backend"] = sdpa_backend_used(fn)
            warm_ms = time_calls(fn, 1, dev)
            iters = max(1, min(args.max_iters, math.ceil(args.min_time_ms / max(warm_ms, 1e-3))))
            results.append((row, fn, iters))
        except Exception as error:  # an OOM (or a provider that cannot run) is a row, not the end of the run
            if not is_oom(error) and not args.keep_going:
                raise
            row["error"] = f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
            results.append((row, None, 0))
            if dev.type == "cuda":
                torch.cuda.empty_cache()

    timed = [(row, fn, iters) for row, fn, iters in results if fn is not None]
    samples = {id(row): [] for row, _, _ in timed}
    for r in range(args.rounds):  # alternate: forward order on even rounds, reversed on odd ones
        for row, fn, iters in (timed if r % 2 == 0 else timed[::-1]):
            samples[id(row)].append(time_calls(fn, iters, dev))
    rows = []
    for row, fn, iters in results:
        if fn is not None:
            ms = sorted(samples[id(row)])
            median = statistics.median(ms)
            row.update(ms_per_batch=median, ms_min=ms[0], ms_max=ms[-1], rounds=args.rounds, iters_per_round=iters,
                       clips_per_s=batch * 1e3 / median, tflops=row["flops_per_batch"] / (median * 1e-3) / 1e12)
        rows.append(row)
    fill_speedups(rows)
    return rows


def fill_speedups(rows: list[dict]) -> None:
    """Equal work only: rows keeping all tokens get speedup_vs_sdpa / _eager / _compile against those baselines (same
    batch, same run); rows keeping fewer tokens get None there and speedup_vs_all_tokens against the same provider
    keeping all, so a kept-token row can never pass for a faster model."""
    for baseline, key in BASELINES:
        base = next((r["clips_per_s"] for r in rows if r["provider"] == baseline and r["clips_per_s"]), None)
        for row in rows:
            row[key] = row["clips_per_s"] / base if base and row["clips_per_s"] and row["keep"] >= 1.0 else None
    for row in rows:
        if row["keep"] < 1.0:
            full = next((r["clips_per_s"] for r in rows if r["provider"] == row["provider"] and r["keep"] >= 1.0
                         and r["clips_per_s"]), None)
            row["speedup_vs_all_tokens"] = row["clips_per_s"] / full if full and row["clips_per_s"] else None


# --- where the time goes -----------------------------------------------------------------------------------------
# kernel / op name patterns -> category, first match wins (Triton kernels by their function names; cuBLAS kernels are
# "nvjet_*", "sm90_xmma_*", "cutlass_*" on Hopper; aten op names on CPU)
OP_CATEGORIES = (
    ("patch_embed", r"patch_embed"),
    ("attention", r"varlen_attention|scaled_dot_product|flash|fmha|attention"),
    ("mean_pool + LayerNorm", r"segment_sum|mean_layernorm|mean_pool|index_add"),
    ("layer_norm", r"layer_norm|layernorm"),
    ("gelu", r"gelu"),
    ("GEMM (qkv, proj, MLP)", r"gemm|nvjet|xmma|cutlass|addmm|\bmm\b|matmul|linear"),
)


def op_category(name: str) -> str:
    for category, pattern in OP_CATEGORIES:
        if re.search(pattern, name, flags=re.IGNORECASE):
            return category
    return "other (copies, elementwise, ...)"


@torch.no_grad()
def profile_forward(model, frames: torch.Tensor, keep=None, steps: int = 3) -> list[dict]:
    """Share of model time per kind of op (torch profiler): on CUDA the device time of every kernel, on CPU the
    self time of every op, summed by op_category over `steps` forwards after a warm-up one. Returns rows
    {"category", "ms_per_forward", "share", "top": [(name, ms per forward), ...]}, largest first."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    cuda = frames.device.type == "cuda"
    model(frames, keep=keep)  # compile / autotune outside the profile
    synchronize(frames.device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            model(frames, keep=keep)
        synchronize(frames.device)
    per_name: dict[str, float] = {}
    for event in prof.key_averages():
        if cuda:  # kernels (and copies) on the device; the CPU ops that launched them are not counted again
            if event.device_type != DeviceType.CUDA:
                continue
            us = getattr(event, "self_device_time_total", None) or getattr(event, "self_cuda_time_total", 0)
        else:  # self time: a parent op (aten::linear) never counts its children (aten::addmm) twice
            us = event.self_cpu_time_total
        if us > 0:
            per_name[event.key] = per_name.get(event.key, 0.0) + us / 1e3 / steps
    total = sum(per_name.values()) or float("nan")
    by_category: dict[str, list] = {}
    for name, ms in per_name.items():
        by_category.setdefault(op_category(name), []).append((name, ms))
    rows = []
    for category, items in by_category.items():
        ms = sum(m for _, m in items)
        top = sorted(items, key=lambda item: -item[1])[:3]
        rows.append({"category": category, "ms_per_forward": ms, "share": ms / total,
                     "top": [(name[:120], round(m, 4)) for name, m in top]})
    return sorted(rows, key=lambda row: -row["ms_per_forward"])


# --- output ------------------------------------------------------------------------------------------------------


def print_rows(rows: list[dict]) -> None:
    header = (f"{'model':6} {'dtype':8} {'batch':>5} {'keep':>5} {'provider':20} {'clips/s':>9} {'ms':>9} "
              f"{'TFLOP/s':>8} {'xSDPA':>6} {'xcomp':>6} {'xall':>6} {'cos':>8} {'memGB':>6} {'first_s':>8}")
    print(header)
    for r in rows:
        def f(key, fmt, r=r):
            return format(r[key], fmt) if r.get(key) is not None else "-".rjust(int(fmt.split(".")[0]))
        print(f"{r['model']:6} {r['dtype']:8} {r['batch']:>5} {r['keep']:>5} {r['provider']:20} "
              f"{f('clips_per_s', '9.2f')} {f('ms_per_batch', '9.2f')} {f('tflops', '8.3f')} "
              f"{f('speedup_vs_sdpa', '6.2f')} {f('speedup_vs_compile', '6.2f')} {f('speedup_vs_all_tokens', '6.2f')} "
              f"{f('cosine_vs_fp32', '8.5f')} {f('peak_mem_gb', '6.2f')} "
              f"{f('first_call_s', '8.2f')}" + (f"  {r['error']}" if r.get("error") else "")
              + ("  NOT bit-equal to eager" if r.get("bit_equal_to_eager") is False else "")
              + (f"  sdpa={r['sdpa_backend']}" if r.get("sdpa_backend") else ""))


def plot(rows: list[dict], path: Path) -> Path | None:
    """clips/s against batch per provider, one panel per model (all tokens; vmae_fast's kept ratios dashed).
    Needs matplotlib (pip install 'vmae-fast[bench]'); without it the plot is skipped with a message."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib)", file=sys.stderr)
        return None
    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plt.subplots(1, len(models), figsize=(5 * len(models), 4), squeeze=False)
    for ax, model in zip(axes[0], models, strict=True):
        series: dict[str, list] = {}
        for r in rows:
            if r["model"] == model and r.get("clips_per_s"):
                label = r["provider"] if r["keep"] >= 1.0 else f"{r['provider']} keep {r['keep']:g}"
                series.setdefault(label, []).append((r["batch"], r["clips_per_s"]))
        for label, points in sorted(series.items()):
            points.sort()
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o",
                    linestyle="--" if "keep" in label else "-", label=label)
        dtype = next(r["dtype"] for r in rows if r["model"] == model)
        ax.set(title=f"{model} ({dtype})", xlabel="batch (clips)", ylabel="clips/s", xscale="log", yscale="log")
        batches = sorted({r["batch"] for r in rows if r["model"] == model})
        ax.set_xticks(batches, [str(b) for b in batches])
        ax.minorticks_off()
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    device = rows[0]["device"] if rows else ""
    fig.suptitle(f"VideoMAE forward throughput on {device}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# --- main --------------------------------------------------------------------------------------------------------


def csv_list(kind):
    return lambda text: [kind(x) for x in text.split(",") if x]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="CPU, tiny config, fp32, batches 1,2, seconds (CI)")
    p.add_argument("--models", type=csv_list(str), default=list(MODELS),
                   help="presets: " + ",".join(MODELS + VJEPA2_MODELS))
    p.add_argument("--frames", type=int, default=16, help="frames per clip of the V-JEPA 2 models (any even count)")
    p.add_argument("--batches", type=csv_list(int), default=[1, 8, 32, 64])
    p.add_argument("--keeps", type=csv_list(float), default=[1.0, 0.7, 0.5, 0.25],
                   help="kept-token ratios for vmae_fast (tube policy); transformers always keeps all")
    p.add_argument("--providers", type=csv_list(str), default=list(PROVIDERS), help=",".join(PROVIDERS))
    p.add_argument("--graph-batches", type=csv_list(int), default=[1], help="batches with a CUDA-graph row")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    p.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    p.add_argument("--compile-mode", default="max-autotune")
    p.add_argument("--compile-backend", default="inductor", help="torch.compile backend (eager: dynamo only, for "
                                                                  "quick CPU checks of the code path)")
    p.add_argument("--rounds", type=int, default=7, help="alternating timing rounds (median reported)")
    p.add_argument("--min-time-ms", type=float, default=200.0, help="target time of one round per provider")
    p.add_argument("--max-iters", type=int, default=200)
    p.add_argument("--reference-chunk", type=int, default=8, help="clips per fp32 reference forward")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="JSON rows (default bench/results/model_<stamp>.json)")
    p.add_argument("--append", action="store_true", help="add to the rows already in --out (runs split in parts)")
    p.add_argument("--plot", type=Path, default=None, help="PNG (default: --out with .png)")
    p.add_argument("--commit", default=None, help="commit to record (default: git rev-parse HEAD)")
    p.add_argument("--merge", type=Path, nargs="+", default=None, metavar="JSON",
                   help="no benchmark: concatenate the rows of these files into --out and plot them")
    p.add_argument("--keep-going", action="store_true", help="record any provider error as a row and go on "
                                                              "(out-of-memory always is)")
    args = p.parse_args(argv)
    if args.smoke:
        tiny = "vjepa2-tiny" if all(is_vjepa2(m) for m in args.models) else "tiny"  # --smoke --models vjepa2-...
        args.models, args.batches, args.keeps = [tiny], [1, 2], [1.0, 0.5]
        args.device = args.device or "cpu"
        args.dtype, args.rounds, args.min_time_ms, args.max_iters = "fp32", 2, 5.0, 3
        if args.providers == list(PROVIDERS):  # compile on CPU takes a minute; no CUDA graphs on CPU
            args.providers = ["vmae_fast", "transformers-eager", "transformers-sdpa"]
    known = (*MODELS, *VJEPA2_MODELS, "tiny", "vjepa2-tiny")
    unknown = [x for x in args.providers if x not in PROVIDERS] + [x for x in args.models if x not in known]
    if unknown:
        p.error(f"unknown provider/model {unknown}; providers: {PROVIDERS}, models: {known}")
    if any(not 0 < k <= 1 for k in args.keeps):
        p.error(f"--keeps must be in (0, 1], got {args.keeps}")
    return args


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    if args.merge:  # runs split over several commands (a 10-minute limit per command, say) become one file
        if args.out is None:
            raise SystemExit("--merge needs --out")
        rows = [row for path in args.merge for row in json.loads(path.read_text())]
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(rows, indent=1))
        png = plot(rows, args.plot or args.out.with_suffix(".png"))
        print(
            f"merged {len(rows)} rows from {len(args.merge)} files into {args.out}" + (f", plot {png}" if png else ""),
            file=sys.stderr,
        )
        return rows
    vmae_fast = import_vmae_fast()

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = DTYPES[args.dtype]
    # fp32 means IEEE fp32 everywhere (the reference and --dtype fp32): cuDNN convolutions default to TF32 otherwise
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    env = environment(device, args.commit)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    out = args.out or ROOT / "bench" / "results" / f"model_{device.type}_{stamp}.json"
    rows = json.loads(out.read_text()) if args.append and out.exists() else []
    if not transformers_available():
        print(
            "note: transformers is not installed: vmae_fast rows only (cosine vs vmae_fast fp32); "
            "pip install 'vmae-fast[bench]' for the baselines",
            file=sys.stderr,
        )
        args.providers = [p for p in args.providers if p.startswith("vmae_fast")]
    elif not transformers_reference_ok():
        print(
            f"note: transformers {env['transformers']} drops VideoMAE's q/v biases: a speed baseline only; "
            f"vmae_fast's cosine is taken against vmae_fast fp32",
            file=sys.stderr,
        )
    skipped = [p for p in ("vmae_fast-cudagraph",) if p in args.providers and device.type != "cuda"]
    if skipped:
        print(f"note: {skipped} need CUDA; not run on {device}", file=sys.stderr)
    print(f"# {env} dtype={args.dtype} date={stamp}", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="bench_model_") as tmp:
        for name in args.models:
            setup = Setup(name, args, device, dtype, vmae_fast, Path(tmp))
            for batch in args.batches:
                new = bench_setting(setup, args, batch, {**env, "date": stamp}, vmae_fast)
                print_rows(new)
                rows.extend(new)
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_text(json.dumps(rows, indent=1))  # after every setting: a crash loses one setting
            del setup
            with contextlib.suppress(Exception):
                torch.cuda.empty_cache()
    print(f"wrote {len(rows)} rows to {out}", file=sys.stderr)
    png = plot(rows, args.plot or out.with_suffix(".png"))
    if png:
        print(f"plot: {png}", file=sys.stderr)
    return rows


if __name__ == "__main__":
    main()
