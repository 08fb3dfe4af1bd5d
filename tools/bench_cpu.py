"""CPU speed of vmae_fast's torch path against transformers (SDPA), same weights, same process, alternating runs.

ViT-B 16x224 (1568 tokens per clip), fp32, batch 2 by default. Providers run in turn within each repetition, so
load from other processes on a shared machine hits them alike; the report gives medians and ratios to HF.
Targets (issue 2): vmae_fast all tokens <= 1.0x the HF time, tube:0.5 <= 0.6x.
V-JEPA 2 (--preset vjepa2-vitl, the smallest published encoder; --frames 16 at 256 px = 2048 tokens): transformers'
VJEPA2Model with every parameter randomized (tools/bench_model.py write_vjepa2_checkpoint) against vmae_fast reading
the same folder; the compared output is the embedding (mean of the last-layer tokens).

    python tools/bench_cpu.py --reps 5      # writes bench/results/bench_cpu.json
    python tools/bench_cpu.py --preset vjepa2-vitl --batch 1 --reps 3   # writes bench/results/bench_cpu_vjepa2.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_env import git_commit, import_vmae_fast


def build_models(preset: str, num_labels: int):
    """A random-weight checkpoint of the preset written once by our writer (save_hf, every parameter random), read by
    transformers' VideoMAEForVideoClassification (SDPA attention) and by vmae_fast.load_model: the same weights."""
    from bench_model import write_checkpoint
    from transformers import VideoMAEForVideoClassification

    from vmae_fast import load_model

    vmae_fast = import_vmae_fast()
    with tempfile.TemporaryDirectory() as tmp:
        path = write_checkpoint(preset, vmae_fast, seed=0, path=Path(tmp) / preset, num_labels=num_labels)
        hf = VideoMAEForVideoClassification.from_pretrained(path, attn_implementation="sdpa").eval()
        ours = load_model(path, device="cpu", dtype=torch.float32)
    return hf, ours


def build_vjepa2_models(preset: str, frames: int):
    """transformers' VJEPA2Model (SDPA) and vmae_fast's VJEPA2 on the same random weights, read from one folder."""
    from bench_model import vjepa2_config, write_vjepa2_checkpoint
    from transformers import VJEPA2Model

    from vmae_fast import load_model

    vmae_fast = import_vmae_fast()
    with tempfile.TemporaryDirectory() as tmp:
        path = write_vjepa2_checkpoint(vjepa2_config(preset, vmae_fast, frames), seed=0, path=Path(tmp) / preset)
        hf = VJEPA2Model.from_pretrained(path, attn_implementation="sdpa").eval()
        ours = load_model(path, device="cpu", dtype=torch.float32)
    return hf, ours


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="base", help="a VideoMAE preset, or vjepa2-vitl / -vith / -vitg")
    parser.add_argument("--frames", type=int, default=16, help="frames per clip of a V-JEPA 2 preset")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--reps", type=int, default=5, help="timed repetitions per provider (alternating)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--json", default=None, help="where to write the results (default "
                                                     "bench/results/bench_cpu.json, or bench_cpu_vjepa2.json)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    vjepa2 = args.preset.startswith("vjepa2")
    args.json = args.json or f"bench/results/bench_cpu{'_vjepa2' if vjepa2 else ''}.json"

    if vjepa2:  # the output compared: the embedding (no head on the published encoders)
        hf, ours = build_vjepa2_models(args.preset, args.frames)
    else:
        hf, ours = build_models(args.preset, num_labels=400)
    c = ours.config
    pixel_values = torch.randn(args.batch, c.num_frames, 3, c.image_size, c.image_size,
                               generator=torch.Generator().manual_seed(1))
    if vjepa2:
        providers = {
            "hf_sdpa": lambda: hf(pixel_values, skip_predictor=True).last_hidden_state.mean(1),
            "vmae_fast_all": lambda: ours(pixel_values).embeddings,
            "vmae_fast_tube0.5": lambda: ours(pixel_values, keep="tube:0.5").embeddings,
        }
    else:
        providers = {
            "hf_sdpa": lambda: hf(pixel_values=pixel_values).logits,
            "vmae_fast_all": lambda: ours(pixel_values).logits,
            "vmae_fast_tube0.5": lambda: ours(pixel_values, keep="tube:0.5").logits,
        }
    output = "embedding" if vjepa2 else "logits"
    with torch.inference_mode():
        want = providers["hf_sdpa"]()
        err = ((providers["vmae_fast_all"]() - want).abs().max() / want.abs().max()).item()
        print(f"{output} rel max err vmae_fast vs HF: {err:.2e}")
        times = {name: [] for name in providers}
        cpu_times = {name: [] for name in providers}  # process CPU time: less sensitive to being descheduled
        for rep in range(args.warmup + args.reps):
            for name, run in providers.items():
                start, cpu_start = time.perf_counter(), time.process_time()
                run()
                elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
                if rep >= args.warmup:
                    times[name].append(elapsed)
                    cpu_times[name].append(cpu)
            print(f"rep {rep}: " + "  ".join(f"{n} {t[-1]:.3f}s" for n, t in times.items() if t))

    medians = {name: statistics.median(t) for name, t in times.items()}
    base = medians["hf_sdpa"]
    result = {
        "bench": "cpu_model", "preset": args.preset, "architecture": ours.describe()["architecture"],
        "frames": c.num_frames, "image_size": c.image_size, "batch": args.batch, "dtype": "float32",
        "tokens_per_clip": c.num_tokens, "reps": args.reps, "warmup": args.warmup,
        "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(), "torch": torch.__version__,
        "transformers": __import__("transformers").__version__, "git_commit": git_commit(),
        f"{output}_rel_err": err, "times_s": times, "median_s": medians, "cpu_times_s": cpu_times,
        "cpu_median_s": {name: statistics.median(t) for name, t in cpu_times.items()},
        "ratio_to_hf": {name: m / base for name, m in medians.items()},
        # per-repetition ratios (each provider against the HF run of the same repetition): robust to slow drifts
        "paired_ratio_median": {name: statistics.median(a / b for a, b in zip(t, times["hf_sdpa"], strict=True))
                                for name, t in times.items()},
        "clips_per_s": {name: args.batch / m for name, m in medians.items()},
        "targets": {"vmae_fast_all": 1.0, "vmae_fast_tube0.5": 0.6},
    }
    cpu_base = result["cpu_median_s"]["hf_sdpa"]
    print(f"\n{'provider':<20}{'median s':>10}{'x HF':>8}{'paired x HF':>13}{'CPU s':>9}{'x HF':>7}{'clips/s':>9}")
    for name, m in medians.items():
        paired, cpu = result["paired_ratio_median"][name], result["cpu_median_s"][name]
        print(f"{name:<20}{m:>10.3f}{m / base:>8.3f}{paired:>13.3f}{cpu:>9.2f}{cpu / cpu_base:>7.3f}"
              f"{args.batch / m:>9.2f}")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
