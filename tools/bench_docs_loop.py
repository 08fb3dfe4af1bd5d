"""`vmae-fast extract` side by side with the loop from the transformers docs, on the same videos and weights.

The docs loop is what a user writes today: decord `VideoReader` + `get_batch` for each clip's 16 frames, the
`VideoMAEImageProcessor` (resize short side to 224, center crop, rescale, normalize) and
`VideoMAEForVideoClassification`, one clip at a time. extract runs the same clips (16 frames at step 4,
consecutive windows, every token kept, fp32) through `vmae_fast.extract` with its defaults, and again with
`workers=2`. Each side runs in a fresh process; sides alternate round by round (reversed every other round) so a
drifting machine disturbs them alike. Reported: clips/s (each side's clock starts once its model is loaded: the
docs loop's loop, the whole `extract()` call with the model passed in), the ratio, the split of time, and the
cosine of every clip's two embeddings.

    python tools/bench_docs_loop.py                            # 8 mixed H.264 videos, ViT-S 16x224, 2 rounds
    python tools/bench_docs_loop.py --rounds 1 --json bench/results/docs-loop-cpu.json

Needs ffmpeg (to make the videos), decord, transformers and PyAV. The checkpoint is ViT-S/16 (16 frames, 224 px)
with deterministic random weights, written in the Hugging Face format so both sides load the same file.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Only the standard library at module level: extract's forkserver workers re-import this main module.

NUM_FRAMES, STEP, SIZE = 16, 4, 224
SPAN = NUM_FRAMES * STEP  # source frames one clip covers; clips are consecutive, non-overlapping windows
# (width, height, seconds) at 30 fps: 360p to 1080p, one portrait file; 2-5 clips each, 34 in all (one full batch
# of 32 and a short one at the default --batch-size)
VIDEOS = [(640, 360, 9.0), (1280, 720, 7.0), (854, 480, 9.0), (640, 360, 12.0), (1280, 720, 7.0), (360, 640, 7.0),
          (960, 540, 9.0), (640, 480, 9.0), (1920, 1080, 5.0), (640, 480, 5.0)]
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def make_videos(directory: Path) -> list[Path]:
    """The VIDEOS as H.264 (x264 veryfast: B-frames) with moving content and noise; reused when already there."""
    if shutil.which("ffmpeg") is None:
        raise SystemExit("bench_docs_loop: ffmpeg is needed to generate the videos")
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (w, h, seconds) in enumerate(VIDEOS):
        path = directory / f"v{i}_{w}x{h}_{seconds:g}s.mp4"
        if not path.exists():
            tmp = path.with_suffix(".tmp.mp4")
            subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", f"testsrc2=size={w}x{h}:rate=30",
                            "-t", str(seconds), "-vf", f"noise=alls=6:allf=t,hue=H={i}*0.7", "-c:v", "libx264",
                            "-preset", "veryfast", "-pix_fmt", "yuv420p", str(tmp)], check=True)
            tmp.replace(path)
        paths.append(path)
    for stale in set(directory.iterdir()) - set(paths):  # extract reads the whole folder: only these files
        stale.unlink()
    return paths


def make_checkpoint(path: Path, seed: int = 0) -> Path:
    """ViT-S/16, 16 frames of 224 px, random weights (seed), 400 labels, ImageNet mean/std, in the HF format."""
    if (path / "config.json").exists():
        return path
    from vmae_fast import checkpoint

    arch = {"image_size": SIZE, "num_frames": NUM_FRAMES, "num_labels": 400, "image_mean": tuple(IMAGENET_MEAN),
            "image_std": tuple(IMAGENET_STD), "use_mean_pooling": True, "fc_norm_eps": 1e-5, "layer_norm_eps": 1e-12}
    if hasattr(checkpoint, "save_hf"):
        checkpoint.save_hf(checkpoint.load_model(f"random:small:{seed}", config=arch), path, note="bench_docs_loop")
    else:  # before checkpoint.save_hf existed
        from vmae_fast.config import VideoMAEConfig
        from vmae_fast.demo import write_random_checkpoint

        small = VideoMAEConfig.from_name("small")
        write_random_checkpoint(path, seed, image_size=SIZE, num_frames=NUM_FRAMES, hidden_size=small.hidden_size,
                                num_hidden_layers=small.num_hidden_layers,
                                num_attention_heads=small.num_attention_heads,
                                intermediate_size=small.intermediate_size, num_labels=400)
    pre = path / "preprocessor_config.json"
    if not pre.exists():
        pre.write_text(json.dumps({
            "image_processor_type": "VideoMAEImageProcessor", "do_resize": True, "size": {"shortest_edge": SIZE},
            "resample": 2, "do_center_crop": True, "crop_size": {"height": SIZE, "width": SIZE}, "do_rescale": True,
            "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": IMAGENET_MEAN,
            "image_std": IMAGENET_STD}, indent=1))
    return path


# --- the two sides, each run in its own process ---------------------------------------------------------------------
def side_docs(videos_dir: Path, ckpt: Path, result: Path) -> None:
    """The transformers-docs loop over every clip; writes timings and embeddings (npz) next to `result`."""
    import decord
    import numpy as np
    import torch
    from transformers import VideoMAEForVideoClassification, VideoMAEImageProcessor

    t_load = time.perf_counter()
    processor = VideoMAEImageProcessor.from_pretrained(ckpt)
    model = VideoMAEForVideoClassification.from_pretrained(ckpt, dtype=torch.float32).eval()
    captured = []  # the classifier's input is the embedding: fc_norm(mean of the last block's tokens)
    model.classifier.register_forward_hook(lambda mod, args, out: captured.append(args[0][0].clone()))
    load_s = time.perf_counter() - t_load
    split = {"decode_s": 0.0, "preprocess_s": 0.0, "model_s": 0.0}
    keys, embeddings = [], []
    t0 = time.perf_counter()
    for path in sorted(videos_dir.glob("*.mp4")):
        t = time.perf_counter()
        vr = decord.VideoReader(str(path), ctx=decord.cpu(0))
        split["decode_s"] += time.perf_counter() - t
        for k, start in enumerate(range(0, len(vr) - SPAN + 1, SPAN)):
            t = time.perf_counter()
            frames = vr.get_batch(list(range(start, start + SPAN, STEP))).asnumpy()
            t1 = time.perf_counter()
            inputs = processor(list(frames), return_tensors="pt")
            t2 = time.perf_counter()
            with torch.no_grad():
                model(**inputs)
            t3 = time.perf_counter()
            split["decode_s"] += t1 - t
            split["preprocess_s"] += t2 - t1
            split["model_s"] += t3 - t2
            keys.append(f"{path.name}#{k}")
            embeddings.append(captured.pop().numpy())
    seconds = time.perf_counter() - t0
    np.savez(result.with_suffix(".npz"), keys=np.array(keys), embeddings=np.stack(embeddings))
    result.write_text(json.dumps({"side": "docs", "clips": len(keys), "seconds": seconds, "load_s": load_s,
                                  "clips_per_s": len(keys) / seconds, "threads": torch.get_num_threads(),
                                  "processor": type(processor).__name__, **split}))


def side_extract(videos_dir: Path, ckpt: Path, result: Path, workers: int | None) -> None:
    """vmae_fast.extract with its defaults (workers=None) or the given workers; the output goes next to `result`."""
    import numpy as np

    import vmae_fast
    from vmae_fast import store

    out = result.with_suffix(".out")
    t_load = time.perf_counter()  # like the docs loop, the clock starts with the model in memory
    from vmae_fast.checkpoint import load_model

    net = load_model(ckpt, device="cpu")
    load_s = time.perf_counter() - t_load
    t0 = time.perf_counter()
    summary = vmae_fast.extract([videos_dir], out, model=net, frame_step=STEP, workers=workers, progress=False,
                                overwrite=True)
    seconds = time.perf_counter() - t0
    table = store.read_clips(out, columns=["video_id", "clip_index", "start_frame", "embedding"])
    rows = table.to_pylist()
    bad = [r for r in rows if r["start_frame"] != r["clip_index"] * SPAN]
    if bad:
        raise SystemExit(f"extract sampled other clips than the docs loop: {bad[:3]}")
    keys = [f"{r['video_id']}#{r['clip_index']}" for r in rows]
    np.savez(result.with_suffix(".npz"), keys=np.array(keys),
             embeddings=np.array([r["embedding"] for r in rows], dtype=np.float32))
    shutil.rmtree(out)
    result.write_text(json.dumps({"side": "extract", "clips": summary["clips"], "seconds": seconds, "load_s": load_s,
                                  "clips_per_s": summary["clips"] / seconds, "summary": dict(summary)}, default=str))


# --- the driver ------------------------------------------------------------------------------------------------------
def run_side(name: str, videos_dir: Path, ckpt: Path, work: Path, round_index: int) -> dict:
    result = work / f"{name}-{round_index}.json"
    cmd = [sys.executable, os.path.abspath(__file__), "--side", name, "--videos-dir", str(videos_dir),
           "--ckpt", str(ckpt), "--result", str(result)]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    data = json.loads(result.read_text())
    data["process_s"] = time.perf_counter() - t0
    data["npz"] = str(result.with_suffix(".npz"))
    return data


def cosines(a_npz: str, b_npz: str) -> list[float]:
    import numpy as np

    a, b = np.load(a_npz), np.load(b_npz)
    if sorted(a["keys"].tolist()) != sorted(b["keys"].tolist()):
        raise SystemExit(f"the sides embedded different clips: {sorted(a['keys'])} vs {sorted(b['keys'])}")
    bi = {k: i for i, k in enumerate(b["keys"].tolist())}
    ea, eb = a["embeddings"], b["embeddings"][[bi[k] for k in a["keys"].tolist()]]
    cos = (ea * eb).sum(1) / (np.linalg.norm(ea, axis=1) * np.linalg.norm(eb, axis=1))
    return cos.tolist()


def main(argv: list[str] | None = None) -> int:
    from bench_env import git_commit  # imports torch: not at module level (workers re-import this file)

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--videos-dir", type=Path, default=Path(tempfile.gettempdir()) / "vmae_bench_docs_videos")
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds; the best of each side is kept")
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--side", help=argparse.SUPPRESS)  # docs | extract | extract-w2: run one side (internal)
    p.add_argument("--ckpt", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.side == "docs":
        side_docs(args.videos_dir, args.ckpt, args.result)
        return 0
    if args.side in ("extract", "extract-w2"):
        side_extract(args.videos_dir, args.ckpt, args.result, None if args.side == "extract" else 2)
        return 0

    import statistics

    import decord
    import torch
    import transformers

    paths = make_videos(args.videos_dir)
    sides = ["docs", "extract", "extract-w2"]
    runs: dict[str, list[dict]] = {s: [] for s in sides}
    with tempfile.TemporaryDirectory(prefix="vmae_bench_docs_") as tmp:
        work = Path(tmp)
        ckpt = make_checkpoint(work / "vit-s-16x224")
        for r in range(args.rounds):
            for side in sides if r % 2 == 0 else sides[::-1]:
                runs[side].append(run_side(side, args.videos_dir, ckpt, work, r))
                print(f"round {r} {side:10s}: {runs[side][-1]['clips_per_s']:.3f} clips/s", flush=True)
        cos = {s: cosines(runs["docs"][0]["npz"], runs[s][0]["npz"]) for s in ("extract", "extract-w2")}
    best = {s: max(rs, key=lambda x: x["clips_per_s"]) for s, rs in runs.items()}
    docs = best["docs"]
    ratio = {s: best[s]["clips_per_s"] / docs["clips_per_s"] for s in ("extract", "extract-w2")}
    print(f"docs loop vs vmae-fast extract: {len(paths)} videos, {docs['clips']} clips (16 x 224, step 4, all tokens, "
          f"fp32), ViT-S random weights; {os.cpu_count()} cores, torch {torch.__version__}, transformers "
          f"{transformers.__version__} ({docs['processor']}), decord {decord.__version__}; commit {git_commit()}; "
          f"best of {args.rounds} alternating rounds")
    print(f"  docs loop         : {docs['clips_per_s']:.3f} clips/s  (decode {docs['decode_s']:.1f} s, preprocess "
          f"{docs['preprocess_s']:.1f} s, model {docs['model_s']:.1f} s, {docs['threads']} threads; load "
          f"{docs['load_s']:.1f} s not counted)")
    for s, label in (("extract", "extract (defaults)"), ("extract-w2", "extract --workers 2")):
        b, m = best[s], best[s]["summary"]
        print(f"  {label:18s}: {b['clips_per_s']:.3f} clips/s = {ratio[s]:.2f}x  (load {b['load_s']:.1f} s not "
              f"counted; wall {m['wall_s']:.1f} s: model "
              f"{m['compute_s']:.1f} s, waiting {m['wait_s']:.1f} s, writing {m['write_s']:.1f} s; decode "
              f"{m.get('decode_cpu_s') or m['decode_s']:.1f} s of worker CPU, {m['workers']} workers; "
              f"cosine min {min(cos[s]):.5f} "
              f"median {statistics.median(cos[s]):.5f})")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "benchmark": "docs_loop", "device": platform.processor() or "cpu", "cores": os.cpu_count(),
            "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "decord": decord.__version__, "commit": git_commit(),
            "videos": [f"{w}x{h} {s:g}s" for w, h, s in VIDEOS], "clips": docs["clips"], "rounds": args.rounds,
            "clips_per_s": {s: best[s]["clips_per_s"] for s in sides}, "ratio": ratio,
            "cosine_min": {s: min(c) for s, c in cos.items()}, "cosine": cos,
            "best": {s: {k: v for k, v in best[s].items() if k != "npz"} for s in sides},
            "runs": {s: [{k: v for k, v in x.items() if k != "npz"} for x in rs] for s, rs in runs.items()}},
            indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
