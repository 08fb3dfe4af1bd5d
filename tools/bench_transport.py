"""Frame transport alone: how many ready-made clips per second DecodePool moves from its workers into the model's
batch buffer, with no decoding at all.

Each worker runs `ready_frames` as its decode function: it "decodes" a clip by writing a prepared uint8 array
(num_frames x size x size x 3; ViT-B 16x224x224x3 = 2.4 MB by default) into the buffer the pool gives it, then
the main process copies every clip into a batch buffer as extract's model runner does, and gives the clip back.
What is timed is everything between "frames ready in the worker" and "frames in the batch buffer".

    python tools/bench_transport.py                       # 2 workers, 16x224, 2000 clips, 3 rounds
    python tools/bench_transport.py --workers 1,2 --clips 4000 --json bench/results/transport-cpu.json

The pool's decode= argument carries `ready_frames` into the workers. bench/results/transport-cpu-before.json was
measured on the pool before decode= existed (4a18c26, an mp.Queue of pickled frames) by this tool as of 5edec3a,
which swapped the decoder in through the pool's module globals; that path is gone (tools use public names only).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

# Only the standard library at module level: forkserver workers re-import this main module.

_READY = {}  # (num_frames, size) -> the prepared clip, one per worker process


def ready_frames(task, sampling, image_size, backend="auto", *, threads=0, info=None, alloc=None, **_):
    """A decode function for DecodePool that yields int(task.video_id.split(':')[1]) ready clips of `task`."""
    import numpy as np

    from vmae_fast.video import Clip

    shape = (sampling.num_frames, image_size, image_size, 3)
    ready = _READY.get(shape)
    if ready is None:
        ready = _READY[shape] = np.random.default_rng(0).integers(0, 255, shape, dtype=np.uint8)
    if info is not None:
        info["backend"] = "ready"
    indices = np.arange(sampling.num_frames, dtype=np.int64)
    for i in range(int(task.video_id.split(":")[1])):
        if alloc is None:
            frames = ready
        else:
            frames = alloc()
            np.copyto(frames, ready)
            frames[0, 0, 0, 0] = i % 251  # lets the consumer check it got this clip, not a stale slot
        yield Clip(i, i * 16, i * 16 + 16, i / 2, i / 2 + 0.5, 0, frames, indices)


def run_once(workers: int, num_frames: int, size: int, clips: int, per_task: int, batch_size: int) -> dict:
    import numpy as np
    import torch

    from vmae_fast.video import ClipsEvent, DecodePool, DoneEvent, Sampling, VideoTask

    options = {"max_pending_clips": 4 * max(1, workers), "timeout_s": 60.0}
    options.update(decode=ready_frames, zero_copy=True, slots=options["max_pending_clips"] + batch_size)
    tasks = [VideoTask(f"ready-{i}", f"ready:{per_task}:{i}") for i in range(-(-clips // per_task))]
    batch = torch.zeros((batch_size, num_frames, size, size, 3), dtype=torch.uint8)
    received, wrong, filled, held = 0, 0, 0, []
    with DecodePool(workers, Sampling(num_frames=num_frames), size, **options) as pool:
        for event in pool.run(tasks[:workers]):  # warm-up: workers started, buffers touched
            if isinstance(event, ClipsEvent):
                pool.release(event.clips)
        t0 = time.perf_counter()
        for event in pool.run(tasks):
            if isinstance(event, ClipsEvent):
                for clip in event.clips:
                    wrong += int(clip.frames[0, 0, 0, 0]) != clip.clip_index % 251
                    held.append(clip)
                    filled += 1
                    received += 1
                    if filled == batch_size:  # the runner's gather of the batch's slot views, then the slots go back
                        torch.stack([torch.from_numpy(c.frames) for c in held], out=batch)
                        pool.release(held)
                        held = []
                        filled = 0
            elif not isinstance(event, DoneEvent):
                raise TypeError(f"unexpected event {event}")
        if held:
            torch.stack([torch.from_numpy(c.frames) for c in held], out=batch[: len(held)])
            pool.release(held)
        seconds = time.perf_counter() - t0
    clip_bytes = int(np.prod((num_frames, size, size, 3)))
    return {"workers": workers, "clips": received, "seconds": seconds, "clips_per_s": received / seconds,
            "gb_per_s": received * clip_bytes / seconds / 1e9, "wrong_clips": wrong}


def main(argv: list[str] | None = None) -> int:
    import numpy as np
    import torch
    from bench_env import git_commit  # imports torch: not at module level (workers re-import this file)

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", default="2", help="worker counts, comma separated (default %(default)s)")
    p.add_argument("--num-frames", type=int, default=16)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--clips", type=int, default=2000, help="clips per measurement (default %(default)s)")
    p.add_argument("--clips-per-task", type=int, default=25, help="clips per 'video' (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3, help="rounds (worker counts alternate); the best is kept")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)

    counts = [int(w) for w in args.workers.split(",")]
    runs = {w: [] for w in counts}
    for r in range(args.rounds):
        for w in counts if r % 2 == 0 else counts[::-1]:
            runs[w].append(run_once(w, args.num_frames, args.size, args.clips, args.clips_per_task,
                                    args.batch_size))
    best = {w: max(rs, key=lambda x: x["clips_per_s"]) for w, rs in runs.items()}
    api = "shared-memory slots (decode=, zero_copy=)"
    clip_mb = np.prod((args.num_frames, args.size, args.size, 3)) / 1e6
    print(f"transport: {api}; clips {args.num_frames}x{args.size}x{args.size}x3 uint8 ({clip_mb:.2f} MB), "
          f"batch {args.batch_size}, {args.clips} clips per run, best of {args.rounds}; "
          f"{os.cpu_count()} cores, commit {git_commit()}")
    for w in counts:
        b = best[w]
        rounds = ", ".join(f"{x['clips_per_s']:.0f}" for x in runs[w])
        print(f"  {w} workers: {b['clips_per_s']:8.1f} clips/s  {b['gb_per_s']:5.2f} GB/s  (all rounds: {rounds})"
              + (f"  WRONG CLIPS {b['wrong_clips']}" if b["wrong_clips"] else ""))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "benchmark": "transport", "transport": api, "device": platform.processor() or "cpu",
            "cores": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "numpy": np.__version__, "commit": git_commit(), "num_frames": args.num_frames, "size": args.size,
            "batch_size": args.batch_size, "clips_per_run": args.clips, "rounds": args.rounds,
            "best": {str(w): best[w] for w in counts}, "runs": {str(w): runs[w] for w in counts}}, indent=2))
    return 0 if all(b["wrong_clips"] == 0 for b in best.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
