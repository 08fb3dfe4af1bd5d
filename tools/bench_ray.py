"""Ray engine benchmark: what Ray costs at one node. `extract --engine ray` vs the local engine, same videos, same
model.

Each side runs in a fresh process (sides alternating, round by round) on the same generated H.264 videos with the
same HF-format weights (ViT-S at 112 px, 8 frames by default: model-bound on a CPU). The Ray side starts a local
cluster with every core (`ray.init(num_cpus=cores)`): one actor with every CPU, the local engine's core plan inside
it. Reported per side: clips/s end to end (Ray: cluster start included) and over extract() alone (Ray: the job
on a running cluster), and the time split.

--decode: the other way to decode near an actor, measured: the clips of the same videos through a DecodePool in
the process (shared-memory slots, what the actor does) vs Ray CPU tasks on the node, one per video, returning
its frames through the object store; clips/s with every core decoding.

    python tools/bench_ray.py --rounds 2 --decode --json bench/results/ray-overhead-cpu.json

--warm adds the side ray-warm: the same Ray engine on a cluster that has run a job before (one video, from another
driver process, untimed): Ray Data's helper actors (detached, named: they outlive a job) and Ray's worker pool are
then up, as on a cluster that stays up; the clock starts after that first job.

--helpers adds two sides that take a piece of Ray's start off the clock, to say what it costs: ray-data (the
driver imports `ray.data` before the clock) and ray-helpers (that, and Ray Data's three helper actors, which a job
creates when a cluster has none: `_StatsActor`, `_AutoscalingCoordinatorActor`, `ActorLocationTracker`, created
and ready before the clock through Ray Data's own get-or-create functions). Both wait 3 s before the clock, as does
the plain ray side then (and ray-warm, after its first job), so that all of them start from a quiet cluster.

--before-tree PATH adds two sides, the Ray engine (ray-before) and the local engine (local-before) of another source
tree (a worktree of an earlier commit: the side's process and its cluster's workers import vmae_fast from PATH),
alternating with the others: a change that moves both engines is then measured as both ratios, before and after:

    python tools/bench_ray.py --videos 48 --rounds 2 --before-tree /tmp/wt-e23aa2f \
        --json bench/results/ray-overhead-cpu-48videos-after.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TOOLS = Path(__file__).resolve().parent
sys.path.insert(0, str(TOOLS))
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # every Ray process of this benchmark on 127.0.0.1 only


def _steal_s() -> float | None:
    """CPU time the hypervisor gave other guests (all cores, seconds since boot; /proc/stat's steal column)."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
        return int(fields[8]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


_WARM_UP = """
import sys, tempfile, ray, vmae_fast
ray.init(address=sys.argv[1], logging_level="WARNING")
with tempfile.TemporaryDirectory() as out:
    vmae_fast.extract([sys.argv[2]], out, model=sys.argv[3], engine="ray", progress=False)
"""


def _warm_up(ray, videos: Path, model: Path) -> float:
    """One job of one video on this cluster, from another driver process (untimed): the cluster has then run a job,
    as one that stays up has; returns the time it ended."""
    first = sorted(videos.glob("*.mp4"))[0]
    subprocess.run([sys.executable, "-c", _WARM_UP, ray.get_runtime_context().gcs_address, str(first), str(model)],
                   check=True, capture_output=True, text=True)
    return time.perf_counter()


def _before_clock(ray, kind: str, quiet_s: float) -> float:
    """--helpers: take `ray.data`'s import (ray-data) and also Ray Data's helper actors (ray-helpers) off the clock,
    then let the cluster settle for quiet_s (every Ray side of that run but ray-before: the plain ray one, ray-warm
    after its first job); returns the time the clock starts. The helpers are made by the functions Ray Data's
    executor calls (Ray 2.60's private layout: this is a measurement, not something the engine does)."""
    if kind in ("ray-data", "ray-helpers"):
        import ray.data  # noqa: F401
    if kind == "ray-helpers":
        from ray.data._internal.cluster_autoscaler import get_or_create_autoscaling_coordinator
        from ray.data._internal.execution.node_trackers import get_or_create_actor_location_tracker
        from ray.data._internal.stats import get_or_create_stats_actor

        helpers = [get_or_create_stats_actor(), get_or_create_actor_location_tracker(),
                   get_or_create_autoscaling_coordinator()]
        ray.get([h.__ray_ready__.remote() for h in helpers])
    time.sleep(quiet_s)
    return time.perf_counter()


def side(kind: str, videos: Path, model: Path, batch_size: int | None, quiet_s: float | None = None) -> dict:
    """One measurement in this (fresh) process: kind 'local' (or 'local-before') or one of the Ray sides (ray,
    ray-before, ray-warm, ray-data, ray-helpers; quiet_s: see _before_clock)."""
    load_before = os.getloadavg()[0]  # the machine must be otherwise idle for a figure to mean anything
    steal_before = _steal_s()  # a virtual machine's cores may be taken by other guests: recorded with each figure
    t0 = time.perf_counter()
    started = t0
    options = {} if batch_size is None else {"batch_size": batch_size}
    if kind.startswith("ray"):
        import ray

        # address="local": a cluster of its own, even while another one runs on the machine (without it, ray.init
        # joins the last one started here, e.g. a test's, and refuses num_cpus)
        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, logging_level="WARNING",
                 _node_ip_address="127.0.0.1")
        started = time.perf_counter()
        options.update(engine="ray")
        if kind == "ray-warm":
            started = _warm_up(ray, videos, model)
        if quiet_s is not None:  # (ray-warm: its first job's teardown off the clock too)
            started = _before_clock(ray, kind, quiet_s)
    import vmae_fast

    with tempfile.TemporaryDirectory(prefix="vmae_bench_ray_") as out:
        summary = vmae_fast.extract([videos], out, model=str(model), progress=False, **options)
    end = time.perf_counter()
    keys = ("clips", "videos_ok", "compute_s", "wait_s", "write_s", "decode_cpu_s", "workers", "batch_size")
    row = {"side": kind, "total_s": end - t0, "extract_s": end - started, **{k: summary.get(k) for k in keys}}
    row["load_1min"] = [load_before, os.getloadavg()[0]]
    steal_after = _steal_s()
    row["steal_s"] = None if steal_before is None or steal_after is None else steal_after - steal_before
    row["clips_per_s_total"] = row["clips"] / row["total_s"]
    row["clips_per_s_extract"] = row["clips"] / row["extract_s"]
    if kind.startswith("ray"):
        row["actors"] = summary["actors"]
        row["ray_timing"] = summary["ray"]
        ray.shutdown()
    return row


def decode_side(videos: Path, image_size: int, num_frames: int, rounds: int) -> list[dict]:
    """Decode + deliver every clip: DecodePool in this process vs Ray tasks on the node (both with every core)."""
    import numpy as np
    import ray

    from vmae_fast.video import DecodePool, DoneEvent, Sampling, VideoTask, decode_clips

    cores = os.cpu_count() or 2
    sampling = Sampling(num_frames=num_frames)
    tasks = [VideoTask(str(p), p.name) for p in sorted(videos.glob("*.mp4"))]
    rows = []
    ray.init(address="local", num_cpus=cores, include_dashboard=False, logging_level="WARNING",
             _node_ip_address="127.0.0.1")

    @ray.remote(num_cpus=1)
    def decode_video(task):
        return np.stack([c.frames for c in decode_clips(task, sampling, image_size, threads=1)])

    ray.get([decode_video.remote(tasks[0])] * cores)  # Ray's workers started and warm, as an actor's pool is
    with DecodePool(cores, sampling, image_size, threads=1, zero_copy=True) as pool:
        for event in pool.run(tasks[:cores]):  # the pool's workers started and warm too
            if hasattr(event, "clips"):
                pool.release(event.clips)
        for repeat in range(rounds):  # alternating
            t0 = time.perf_counter()
            clips = 0
            for event in pool.run(tasks):
                if isinstance(event, DoneEvent):
                    clips += event.num_clips
                elif hasattr(event, "clips"):
                    pool.release(event.clips)
            rows.append({"decode": "DecodePool", "round": repeat, "workers": cores, "clips": clips,
                         "seconds": time.perf_counter() - t0})
            t0 = time.perf_counter()
            clips = 0
            for ref in [decode_video.remote(t) for t in tasks]:
                frames = ray.get(ref)  # zero-copy view of the object store (same node)
                clips += len(frames)
                del frames
            rows.append({"decode": "ray tasks", "round": repeat, "workers": cores, "clips": clips,
                         "seconds": time.perf_counter() - t0})
    ray.shutdown()
    for row in rows:
        row["clips_per_s"] = row["clips"] / row["seconds"]
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--videos", type=int, default=12, help="sample videos (default %(default)s)")
    p.add_argument("--seconds", type=float, default=8, help="length of each (default %(default)s)")
    p.add_argument("--size", default="640x360")
    p.add_argument("--model", default="random:small", help="load_model source, saved once in HF format")
    p.add_argument("--image-size", type=int, default=112)
    p.add_argument("--num-frames", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=None, help="default: the engines' own")
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds; the best of each side is kept")
    p.add_argument("--decode", action="store_true", help="also: DecodePool vs Ray tasks for decoding")
    p.add_argument("--videos-dir", type=Path, default=Path(tempfile.gettempdir()) / "vmae_bench_videos")
    p.add_argument("--json", type=Path)
    p.add_argument("--before-tree", type=Path,
                   help="also: the Ray and the local engine of this source tree (sides ray-before, local-before)")
    p.add_argument("--warm", action="store_true", help="also: Ray on a cluster that has run a job (ray-warm)")
    p.add_argument("--helpers", action="store_true",
                   help="also: ray-data, ray-helpers (ray.data's import, and Ray Data's helper actors, off the clock)")
    p.add_argument("--side", choices=("local", "ray", "local-before", "ray-before", "ray-warm", "ray-data",
                                      "ray-helpers", "decode"),
                   help=argparse.SUPPRESS)  # one fresh-process side
    p.add_argument("--model-dir", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--quiet-s", type=float, help=argparse.SUPPRESS)
    p.add_argument("--dir", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.side == "decode":
        print(json.dumps(decode_side(args.dir, args.image_size, args.num_frames, args.rounds)))
        return 0
    if args.side:
        print(json.dumps(side(args.side, args.dir, args.model_dir, args.batch_size, args.quiet_s)))
        return 0

    import torch
    from bench_env import environment, git_commit, version
    from bench_pipeline import make_videos, video_facts

    from vmae_fast.checkpoint import load_model, save_hf

    width, height = (int(x) for x in args.size.split("x"))
    directory = args.videos_dir / f"ray_{width}x{height}_{args.seconds:g}s_{args.videos}"
    paths = make_videos(directory, args.videos, args.seconds, width, height, 30)
    for stale in set(directory.iterdir()) - set(paths):
        stale.unlink()
    frames, seconds = video_facts(paths)
    work = Path(tempfile.mkdtemp(prefix="vmae_bench_ray_model_"))
    # fc_norm eps 1e-5: what an HF checkpoint holds (save_hf refuses another)
    overrides = {"image_size": args.image_size, "num_frames": args.num_frames, "fc_norm_eps": 1e-5}
    model_dir = save_hf(load_model(args.model, device="cpu", config=overrides), work / "model")

    def run(kind: str) -> dict:
        cmd = [sys.executable, __file__, "--side", kind, "--dir", str(directory), "--model-dir", str(model_dir),
               "--image-size", str(args.image_size), "--num-frames", str(args.num_frames)]
        if args.batch_size:
            cmd += ["--batch-size", str(args.batch_size)]
        if args.helpers and kind in ("ray", "ray-warm", "ray-data", "ray-helpers"):
            cmd += ["--quiet-s", "3"]
        env = dict(os.environ)
        if kind.endswith("-before"):
            env["PYTHONPATH"] = str(args.before_tree.resolve())
        # cwd outside every source tree: Ray gives its workers the driver's sys.path, whose '' is the cwd (from
        # this checkout, the ray-before side's workers imported this tree's vmae_fast instead of --before-tree's)
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tempfile.gettempdir())
        if done.returncode != 0:
            raise RuntimeError(f"side {kind} exited {done.returncode}:\n{done.stderr[-4000:]}")
        return json.loads(done.stdout.strip().splitlines()[-1])

    kinds = ("local", "ray", *(("local-before", "ray-before") if args.before_tree else ()),
             *(("ray-warm",) if args.warm else ()),
             *(("ray-data", "ray-helpers") if args.helpers else ()))
    rows = []
    for r in range(args.rounds):
        for kind in kinds:
            row = {"round": r, **run(kind)}
            rows.append(row)
            print(f"round {r} {kind:5s}: {row['clips']} clips, {row['clips_per_s_total']:.2f} clips/s end to end "
                  f"({row['total_s']:.1f} s), {row['clips_per_s_extract']:.2f} clips/s in extract "
                  f"({row['extract_s']:.1f} s); model {row['compute_s']:.1f} s, waiting {row['wait_s']:.1f} s"
                  + (f"; probe {row['ray_timing'].get('probe_s') or 0:.1f} s, OUT ready at "
                     f"{row['ray_timing'].get('ready_s') or 0:.1f} s, first report at "
                     f"{row['ray_timing']['first_report_s']:.1f} s, actor busy "
                     f"{sum(a['busy_s'] for a in row['actors']):.1f} s" if kind.startswith("ray") else ""),
                  flush=True)
    best = {kind: max((r for r in rows if r["side"] == kind), key=lambda r: r["clips_per_s_extract"])
            for kind in kinds}
    # the median of each side too, and each round's ratio: on a shared 2-core VM one fast round can make the best
    median = {kind: statistics.median(r["clips_per_s_extract"] for r in rows if r["side"] == kind) for kind in kinds}

    def over_local(kind: str, key: str = "clips_per_s_extract") -> float:  # best of a side / best of the local side
        return best[kind][key] / best["local"][key]

    per_round = [{kind: next(r["clips_per_s_extract"] for r in rows if r["round"] == n and r["side"] == kind)
                  / next(r["clips_per_s_extract"] for r in rows if r["round"] == n and r["side"] == "local")
                  for kind in kinds if kind != "local"} for n in range(args.rounds)]
    result = {
        "bench": "ray_overhead",
        "environment": {**environment(torch.device("cpu"), git_commit()), "ray": version("ray"),
                        "cores": os.cpu_count()},
        "videos": len(paths), "frames": frames, "video_seconds": seconds, "size": args.size,
        "model": args.model, "image_size": args.image_size, "num_frames": args.num_frames, "rounds": rows,
        "best": best,
        "ray_over_local_extract": over_local("ray"),
        "ray_over_local_total": over_local("ray", "clips_per_s_total"),
        "median_clips_per_s_extract": median,
        "ray_over_local_extract_median": median["ray"] / median["local"],
        "ray_over_local_extract_per_round": per_round,
    }
    if args.warm:
        result["ray_warm_over_local_extract"] = over_local("ray-warm")
        print(f"Ray on a cluster that has run a job / local: {result['ray_warm_over_local_extract']:.3f}x in extract")
    if args.helpers:
        for kind in ("ray-data", "ray-helpers"):
            result[f"{kind.replace('-', '_')}_over_local_extract"] = over_local(kind)
        # the job's fixed part: extract minus the actor's busy time (what is not the loop)
        result["fixed_s_median"] = {kind: statistics.median(
            r["extract_s"] - sum(a["busy_s"] for a in r["actors"]) for r in rows if r["side"] == kind)
            for kind in kinds if kind.startswith("ray") and kind != "ray-before"}
        print("fixed part (extract - actor busy), median: " + ", ".join(
            f"{kind} {value:.2f} s" for kind, value in result["fixed_s_median"].items()))
    if args.before_tree:
        result["before_tree"] = {"path": str(args.before_tree), "commit": subprocess.run(
            ["git", "-C", str(args.before_tree), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()}
        result["ray_before_over_local_extract"] = over_local("ray-before")
        result["ray_before_over_local_total"] = over_local("ray-before", "clips_per_s_total")
        # the before tree's own ratio: its Ray engine over its local engine, best of each and medians
        result["ray_before_over_local_before_extract"] = (best["ray-before"]["clips_per_s_extract"]
                                                          / best["local-before"]["clips_per_s_extract"])
        result["ray_before_over_local_before_extract_median"] = median["ray-before"] / median["local-before"]
        print(f"before tree, its Ray / its local: {result['ray_before_over_local_before_extract']:.3f}x in extract "
              f"(best), {result['ray_before_over_local_before_extract_median']:.3f}x (medians)")
        print(f"Ray before ({result['before_tree']['commit'][:7]}) / local: "
              f"{result['ray_before_over_local_extract']:.3f}x in extract, "
              f"{result['ray_before_over_local_total']:.3f}x with the cluster start")
    print(f"Ray / local (best of {args.rounds}): {result['ray_over_local_extract']:.3f}x in extract, "
          f"{result['ray_over_local_total']:.3f}x with the cluster start; medians: "
          + ", ".join(f"{kind} {median[kind] / median['local']:.3f}x" for kind in kinds if kind != "local")
          + "; per round: " + " ".join(f"{r['ray']:.2f}" for r in per_round))
    if args.decode:
        result["decode"] = json.loads(subprocess.run(
            [sys.executable, __file__, "--side", "decode", "--dir", str(directory), "--image-size",
             str(args.image_size), "--num-frames", str(args.num_frames), "--rounds", str(args.rounds)],
            check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
        for row in result["decode"]:
            print(f"round {row['round']} decode via {row['decode']:10s}: {row['clips']} clips, "
                  f"{row['clips_per_s']:.1f} clips/s ({row['workers']} workers)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0



if __name__ == "__main__":
    sys.exit(main())
