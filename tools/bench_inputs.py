"""Input discovery at scale: what a long Parquet list costs a shard that owns only a handful of its entries.

For each list size N, a Parquet list of N entries (unique video_id; every entry points at one short real video)
of which exactly 7 belong to shard 0 of --num-shards. Each measurement runs in a fresh subprocess:

  discover  the shard's discovery alone (read the list, keep shard 0's entries): seconds and peak RSS
  extract   vmae_fast.extract(list, shard=0/num_shards) with a tiny random model: wall, seconds to the first
            clip (process start -> first clip event) and peak RSS
  resume    (--committed M) the committed-id set of one shard read from an output holding M committed rows

"Extra" figures subtract the same measurement on the list of the same 7 entries alone (same code, same
process layout): extra seconds per million entries and extra peak memory (ru_maxrss) are what the long list
costs. Targets (issue 15): a 10M-entry list costs a shard <= 5 s per million entries and <= 150 MB.

    python tools/bench_inputs.py --sizes 2000000,10000000 --json bench/results/inputs-after.json
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

OWN = 7  # entries of the measured shard


def _work_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def make_video(path: Path) -> Path:
    """A 1 s 64x48 H.264 file (ffmpeg testsrc2), reused when present."""
    if not path.exists():
        tmp = path.with_suffix(".tmp.mp4")
        subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=64x48:rate=30", "-t", "1",
                        "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p", str(tmp)], check=True)
        tmp.replace(path)
    return path


def make_list(path: Path, n: int, num_shards: int, video: Path) -> Path:
    """Parquet list (path, video_id) of n unique ids, exactly OWN of them in shard 0 (the first OWN such ids,
    spread over the list); reused when present."""
    if path.exists():
        return path
    import pyarrow as pa
    import pyarrow.parquet as pq

    from vmae_fast.ids import shard_of

    ids: list[str] = []
    own_at = {round(k * n / OWN) for k in range(OWN)}  # where the shard's own entries go
    i = 0
    own_pool: list[str] = []
    others: list[str] = []
    while len(others) < n - OWN or len(own_pool) < OWN:
        vid = f"videos/{i // 1000:06d}/{i:09d}.mp4"
        i += 1
        if shard_of(vid, num_shards) == 0:
            if len(own_pool) < OWN:
                own_pool.append(vid)
        elif len(others) < n - OWN:
            others.append(vid)
    own_iter, other_iter = iter(own_pool), iter(others)
    ids = [next(own_iter) if k in own_at else next(other_iter) for k in range(n)]
    table = pa.table({"path": pa.array([str(video)] * n), "video_id": pa.array(ids)})
    tmp = path.with_suffix(".tmp")
    pq.write_table(table, tmp)
    tmp.replace(path)
    return path


def own_list(path: Path, big: Path) -> Path:
    """The OWN shard-0 entries of `big`, listed alone."""
    import pyarrow.parquet as pq

    from vmae_fast.ids import shard_of

    if not path.exists():
        table = pq.read_table(big)
        ids = table.column("video_id").to_pylist()
        num_shards = int(big.stem.split("-s")[-1])
        keep = [k for k, v in enumerate(ids) if shard_of(v, num_shards) == 0]
        pq.write_table(table.take(keep), path)
    return path


# --- what runs in the child --------------------------------------------------------------------------------------
def _child(mode: str, list_path: str, num_shards: int, out: str) -> dict:
    t_start = time.perf_counter()
    import vmae_fast
    from vmae_fast import extraction

    result: dict = {"mode": mode}
    if mode == "discover":
        t0 = time.perf_counter()
        mine = list(extraction.iter_tasks([list_path], shard=(0, num_shards)))
        result["seconds"] = time.perf_counter() - t0
        result["tasks"] = len(mine)
    elif mode == "extract":
        model = vmae_fast.load_model("random:small", device="cpu", config={
            "image_size": 32, "num_frames": 4, "hidden_size": 64, "num_hidden_layers": 1, "num_attention_heads": 4,
            "intermediate_size": 128})
        t0 = time.perf_counter()
        summary = vmae_fast.extract([list_path], out, model=model, shard=(0, num_shards), workers=1, batch_size=4,
                                    progress=False, overwrite=True)
        result["seconds"] = time.perf_counter() - t0
        result["first_clip_s"] = summary["first_clip_s"]  # from the start of extract to the first decoded clip
        result["videos_ok"] = summary["videos_ok"]
    else:  # resume: the committed ids of shard 0 in `out`
        t0 = time.perf_counter()
        from vmae_fast.store import committed_ids

        done = committed_ids(out, 0, num_shards)
        result["seconds"] = time.perf_counter() - t0
        result["ids"] = len(done)
    result["maxrss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["process_s"] = time.perf_counter() - t_start
    return result


def run_child(mode: str, list_path: Path, num_shards: int, out: Path) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", mode, str(list_path), str(num_shards), str(out)],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"bench_inputs: child {mode} {list_path} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def make_committed(out: Path, rows: int, num_shards: int) -> Path:
    """An output whose clips parts hold `rows` committed rows (4 clips per video) as `num_shards` shards write
    them: part-<s>-<seq> holds shard s's videos (two parts per shard)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from vmae_fast.ids import shards_of

    clips = out / "clips"
    if (out / "_done").exists():
        return out
    clips.mkdir(parents=True, exist_ok=True)
    ids = np.array([f"videos/{i // 1000:06d}/{i:09d}.mp4" for i in range(rows // 4)], dtype=object)
    shards = shards_of(list(ids), num_shards)
    for s in range(num_shards):
        mine = ids[shards == s]
        for seq, half in enumerate(np.array_split(mine, 2)):
            table = pa.table({"video_id": pa.array(np.repeat(half, 4), pa.string()),
                              "clip_index": pa.array(np.tile(np.arange(4), len(half)), pa.int32())})
            pq.write_table(table, clips / f"part-{s:05d}-{seq:06d}.parquet", use_dictionary=["video_id"],
                           row_group_size=16384)
    (out / "errors").mkdir(exist_ok=True)
    (out / "_done").write_text("")
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="2000000", help="list sizes, comma separated (default %(default)s)")
    p.add_argument("--num-shards", type=int, default=64)
    p.add_argument("--modes", default="discover,extract", help="discover,extract (default %(default)s)")
    p.add_argument("--committed", type=int, default=0, help="also time the resume set at this many committed rows")
    p.add_argument("--resume-shards", default=None, help="shard counts of the resume measurement, comma separated "
                                                          "(default: --num-shards); 1 = one shard owns every id")
    p.add_argument("--work", type=Path, default=Path("/tmp/vmae_bench_inputs"))
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import torch
    from bench_env import environment

    work = _work_dir(args.work)
    video = make_video(work / "one_second.mp4")
    modes = args.modes.split(",") if args.modes else []
    rows = []
    for n in [int(s) for s in args.sizes.split(",") if s]:
        big = make_list(work / f"list-{n}-s{args.num_shards}.parquet", n, args.num_shards, video)
        small = own_list(work / f"own-{n}-s{args.num_shards}.parquet", big)
        for mode in modes:
            base = run_child(mode, small, args.num_shards, work / "out-base")
            full = run_child(mode, big, args.num_shards, work / "out-full")
            row = {"entries": n, "mode": mode, "num_shards": args.num_shards, "own_entries": OWN,
                   "base": base, "full": full,
                   "extra_s": full["seconds"] - base["seconds"],
                   "extra_s_per_million": (full["seconds"] - base["seconds"]) / (n / 1e6),
                   "extra_peak_mb": full["maxrss_mb"] - base["maxrss_mb"]}
            if mode == "extract":
                row["first_clip_s"] = full["first_clip_s"]
                row["first_clip_s_base"] = base["first_clip_s"]
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k not in ("base", "full")}), flush=True)
    if args.committed:
        empty = work / "committed-0"
        (empty / "clips").mkdir(parents=True, exist_ok=True)
        (empty / "errors").mkdir(parents=True, exist_ok=True)
        for n in [int(x) for x in (args.resume_shards or str(args.num_shards)).split(",")]:
            out = make_committed(work / f"committed-{args.committed}-s{n}", args.committed, n)
            base = run_child("resume", video, n, empty)
            full = run_child("resume", video, n, out)
            row = {"committed_rows": args.committed, "mode": "resume", "num_shards": n, "base": base, "full": full,
                   "extra_s": full["seconds"] - base["seconds"],
                   "extra_peak_mb": full["maxrss_mb"] - base["maxrss_mb"], "shard_ids": full["ids"]}
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k not in ("base", "full")}), flush=True)
    result = {"benchmark": "bench_inputs", "command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])]),
              "env": environment(torch.device("cpu")), "rows": rows}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        print(json.dumps(_child(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5])))
    else:
        main()
