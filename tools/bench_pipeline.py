"""Pipeline benchmark: is `vmae-fast extract` as fast as its slower half (decoding or the model) allows?

On the same generated H.264 clips, in one process and alternating the measurements round by round:
  decode-only  DecodePool with 1..N workers, no model: clips/s and source frames/s (the decode ceiling)
  model-only   pre-decoded uint8 clips in memory through the model (H2D copy included): clips/s
  end-to-end   vmae_fast.extract on the files: clips/s and video-seconds/s
and prints which side bounds the pipeline and the ratio end-to-end / min(decode ceiling, model-only) (goal >= 0.9).

    python tools/bench_pipeline.py                                   # CPU: small model at 112 px, 8 frames
    python tools/bench_pipeline.py --model random:base --device cuda --dtype bf16 --image-size 224 --num-frames 16 \
        --videos 32 --workers 1,4,8,15 --batch-size 64              # GPU (needs decord or PyAV on that machine)

Decoding needs decord or PyAV (and ffmpeg to generate the sample videos); a GPU box without them cannot run it.
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

# Only the standard library at module level: DecodePool's forkserver workers re-import this main module, and torch
# there would add seconds to every worker's start. numpy, torch and vmae_fast are imported where they are used.


def make_videos(directory: Path, count: int, seconds: float, width: int, height: int, fps: int) -> list[Path]:
    """`count` H.264 files (ffmpeg testsrc2 + temporal noise, a realistic bitrate); reused when already there."""
    directory.mkdir(parents=True, exist_ok=True)
    if shutil.which("ffmpeg") is None:
        raise SystemExit("bench_pipeline: ffmpeg is needed to generate the sample videos (or pass --videos-dir)")
    paths = []
    for i in range(count):
        path = directory / f"bench_{width}x{height}_{fps}fps_{seconds:g}s_{i:03d}.mp4"
        if not path.exists():
            tmp = path.with_suffix(".tmp.mp4")
            subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i",
                            f"testsrc2=size={width}x{height}:rate={fps}", "-t", str(seconds), "-vf",
                            f"noise=alls=6:allf=t,hue=H={i}*0.7", "-c:v", "libx264", "-preset", "veryfast",
                            "-pix_fmt", "yuv420p", str(tmp)], check=True)
            tmp.replace(path)
        paths.append(path)
    return paths


def video_facts(paths: list[Path]) -> tuple[int, float]:
    """(total frames, total seconds) of the files, read from the containers."""
    import av

    frames, seconds = 0, 0.0
    for path in paths:
        with av.open(str(path)) as c:
            stream = c.streams.video[0]
            frames += stream.frames or 0
            seconds += float(stream.duration * stream.time_base) if stream.duration else float(c.duration / 1e6)
    return frames, seconds


def _timestamps(path: Path):
    """Frame presentation times (s) of a generated constant-rate file: index / fps from the container."""
    import av
    import numpy as np

    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        return np.arange(stream.frames) / float(stream.average_rate)


def bench_decode(tasks, sampling, image_size: int, workers: int, batch_size: int, threads: int | None) -> dict:
    """threads: decoder threads per worker, as extract gives them (None: the pool's default)."""
    from vmae_fast.video import DecodePool, DoneEvent

    t0 = time.perf_counter()
    clips = 0
    with DecodePool(workers, sampling, image_size, max_pending_clips=max(2 * batch_size, 4 * workers),
                    threads=threads) as pool:
        for event in pool.run(tasks):
            if isinstance(event, DoneEvent):
                clips += event.num_clips
    return {"clips": clips, "seconds": time.perf_counter() - t0}


def bench_model(model, clips, batch_size: int, keep: str, device, repeats: int) -> dict:
    """clips: uint8 numpy (n, T, S, S, 3) in host memory (pinned on CUDA); every batch is copied to the device."""
    import torch

    host = torch.from_numpy(clips)
    if device.type == "cuda":
        host = host.pin_memory()
    batches = [host[i:i + batch_size] for i in range(0, len(host) - batch_size + 1, batch_size)] or [host]
    keep_arg = None if keep == "all" else keep

    def once():
        outs = []
        for batch in batches:
            with torch.inference_mode():
                outs.append(model(batch.to(device, non_blocking=True), keep=keep_arg).embeddings)
        result = [o.float().cpu() for o in outs]  # readback included, as the pipeline does it
        if device.type == "cuda":
            torch.cuda.synchronize()
        return result

    t0 = time.perf_counter()
    once()  # first call: kernels compile / autotune
    first_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(repeats):
        once()
    seconds = time.perf_counter() - t0
    return {"clips": repeats * sum(len(b) for b in batches), "seconds": seconds, "first_call_s": first_s}


def bench_end_to_end(paths_dir: Path, model, batch_size: int, workers: int, keep: str) -> dict:
    import vmae_fast

    with tempfile.TemporaryDirectory(prefix="vmae_bench_out_") as out:
        summary = vmae_fast.extract([paths_dir], out, model=model, batch_size=batch_size, workers=workers,
                                    keep=keep, progress=False, overwrite=True)
    return dict(summary)  # JSON-ready (extract returns a RunSummary)


def main(argv: list[str] | None = None) -> int:
    import numpy as np
    import torch
    from bench_env import git_commit  # imports torch: not at module level (workers re-import this file)

    from vmae_fast.checkpoint import load_model
    from vmae_fast.video import Sampling, VideoTask, decode_clips, plan_clips

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="random:small", help="load_model source (default %(default)s)")
    p.add_argument("--image-size", type=int, default=112, help="model input size override (default %(default)s)")
    p.add_argument("--num-frames", type=int, default=8, help="frames per clip override (default %(default)s)")
    p.add_argument("--device", default=None, help="cpu | cuda[:i] (default: cuda when available)")
    p.add_argument("--dtype", default=None, help="bf16 | fp16 | fp32 (default: bf16 on CUDA, fp32 on CPU)")
    p.add_argument("--keep", default="all")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--workers", default=None, help="decode worker counts, comma separated; the largest is used "
                                                   "end to end (default 1..cores-1)")
    p.add_argument("--videos", type=int, default=6, help="sample videos to generate (default %(default)s)")
    p.add_argument("--seconds", type=float, default=10, help="length of each (default %(default)s)")
    p.add_argument("--size", default="640x360", help="their frame size (default %(default)s)")
    p.add_argument("--videos-dir", type=Path, default=Path(tempfile.gettempdir()) / "vmae_bench_videos")
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds; the best of each is kept")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)

    cores = os.cpu_count() or 2
    worker_counts = ([int(w) for w in args.workers.split(",")] if args.workers
                     else list(range(1, max(2, cores))))
    e2e_workers = max(worker_counts)
    width, height = (int(x) for x in args.size.split("x"))
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    overrides = {"image_size": args.image_size, "num_frames": args.num_frames}
    model = load_model(args.model, device=device, dtype=args.dtype, config=overrides)
    cfg = model.config
    sampling = Sampling(num_frames=cfg.num_frames)

    video_dir = args.videos_dir / f"{width}x{height}_{args.seconds:g}s"
    paths = make_videos(video_dir, args.videos, args.seconds, width, height, 30)
    for stale in set(video_dir.iterdir()) - set(paths):  # extract reads the whole folder: only this run's files
        stale.unlink()
    total_frames, total_seconds = video_facts(paths)
    tasks = [VideoTask(str(path), path.name) for path in paths]
    clips = [c.frames for c in decode_clips(tasks[0], sampling, cfg.image_size)]
    clips = np.stack((clips * (2 * args.batch_size // max(1, len(clips)) + 1))[: 2 * args.batch_size])

    # extract on CPU gives the model every core (its decoders, niced, take what the model leaves) and each decode
    # worker one thread: the model-only and decode-only measurements get the same
    threads = torch.get_num_threads()
    results = {"decode": {w: [] for w in worker_counts}, "model": [], "e2e": []}
    # model-only runs over about as many clips as the videos give, so each measurement spans a similar time
    total_clips = sum(len(plan_clips(_timestamps(p), sampling)) for p in paths)
    repeats = max(3, -(-total_clips // len(clips)))

    def measure(kind: str) -> None:
        if kind == "decode":
            for w in worker_counts:
                decode_threads = 1 if device.type == "cpu" else None
                results["decode"][w].append(bench_decode(tasks, sampling, cfg.image_size, w, args.batch_size,
                                                         decode_threads))
        elif kind == "model":
            torch.set_num_threads(threads)
            results["model"].append(bench_model(model, clips, args.batch_size, args.keep, device, repeats))
        else:
            results["e2e"].append(bench_end_to_end(video_dir, model, args.batch_size, e2e_workers, args.keep))

    for i in range(args.rounds):  # alternate (and reverse every other round) so load drift hits all alike
        for kind in ("decode", "model", "e2e") if i % 2 == 0 else ("e2e", "model", "decode"):
            measure(kind)

    num_clips = results["decode"][worker_counts[0]][0]["clips"]
    decode = {w: max(r["clips"] / r["seconds"] for r in runs) for w, runs in results["decode"].items()}
    model_rate = max(r["clips"] / r["seconds"] for r in results["model"])
    best_e2e = max(results["e2e"], key=lambda s: s["clips_per_s"])
    e2e_rate = best_e2e["clips_per_s"]
    decode_ceiling = decode[e2e_workers]
    bound = "decode" if decode_ceiling < model_rate else "model"
    ratio = e2e_rate / min(decode_ceiling, model_rate)

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    print(f"device {name} ({cores} cores), torch {torch.__version__}, commit {git_commit()}; model {args.model} "
          f"{cfg.image_size}px x {cfg.num_frames} frames, {model.dtype}, batch {args.batch_size}, keep {args.keep}; "
          f"{len(paths)} videos {width}x{height} 30 fps, {total_seconds:.0f} s, {total_frames} frames, "
          f"{num_clips} clips; best of {args.rounds} alternating rounds")
    for w in worker_counts:
        secs = min(r["seconds"] for r in results["decode"][w])
        print(f"  decode-only  {w:2d} workers: {decode[w]:8.1f} clips/s  {total_frames / secs:8.0f} source frames/s")
    first = results["model"][0]["first_call_s"]
    print(f"  model-only            : {model_rate:8.1f} clips/s  (first call {first:.2f} s, {threads} threads)")
    print(f"  end-to-end  {e2e_workers:2d} workers: {e2e_rate:8.1f} clips/s  "
          f"{total_seconds / best_e2e['wall_s']:8.1f} video-s/s  (model {best_e2e['compute_s']:.1f} s, "
          f"waiting {best_e2e['wait_s']:.1f} s, wall {best_e2e['wall_s']:.1f} s)")
    print(f"  {bound}-bound: end-to-end / min(decode ceiling, model-only) = {e2e_rate:.1f} / "
          f"{min(decode_ceiling, model_rate):.1f} = {ratio:.2f}  (goal >= 0.90)")
    if args.json:
        args.json.write_text(json.dumps({"device": name, "torch": torch.__version__, "commit": git_commit(),
                                         "model": args.model, "image_size": cfg.image_size,
                                         "num_frames": cfg.num_frames, "dtype": str(model.dtype),
                                         "batch_size": args.batch_size, "clips": num_clips,
                                         "decode_clips_per_s": decode, "model_clips_per_s": model_rate,
                                         "e2e_clips_per_s": e2e_rate, "e2e_summary": best_e2e,
                                         "bound": bound, "ratio": ratio}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
