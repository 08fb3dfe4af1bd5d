"""The Ray driver at scale: what a long list costs `extract --engine ray` before its first video is committed.

For each list size N: a Parquet list of N entries (unique video_id; every entry points at one 1 s 64x48 H.264
video), run as `python -m vmae_fast.cli extract LIST -o OUT --engine ray --ray-actors 1` in a fresh process (the
driver) against a fresh local Ray cluster that this script starts (2 CPUs, every process on 127.0.0.1) and stops
after each measurement, with a tiny HF-format model (the same files for every run). Measured from the driver's
start: the time until the first new clips part appears in OUT (the first committed video: --part-rows 1
--commit-interval-s 0.001) and the driver's peak RSS (VmHWM) at that moment and AFTER_S seconds later (the driver
keeps running its job), then the driver is SIGKILLed. "Extra" figures subtract the same measurement on the
200-entry list of the same tree (same process layout, same cluster). With --resume-rows M: the same on the
largest list into an OUT already holding M committed clip rows of its entries (every entry but one in 50,000: the
first video to do sits ~50,000 entries in), written as Ray group parts (zero embeddings; only ids are read).

--tree runs the driver (and the cluster's workers) from another source tree, e.g. a worktree of 16c2a40 for the
figures before the streaming driver. Targets (issue 20 item 1): at 10M entries <= 300 MB extra peak RSS and
<= 20 s extra to the first committed video.

    python tools/bench_ray_driver.py --sizes 200,2000000 --tree /tmp/wt-16c2a40 \
        --json bench/results/ray-driver-before.json
    python tools/bench_ray_driver.py --sizes 200,2000000,10000000 --resume-rows 10000000 \
        --json bench/results/ray-driver-after.json
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # every Ray process of this benchmark on 127.0.0.1 only

TOOLS = Path(__file__).resolve().parent
REPO = TOOLS.parent
sys.path.insert(0, str(TOOLS))
AFTER_S = 10.0  # the driver keeps running this long after its first commit: its peak then
SKIP_EVERY = 50_000  # --resume-rows: one entry in this many is not committed
TINY = {"image_size": 32, "num_frames": 4, "hidden_size": 64, "num_hidden_layers": 1, "num_attention_heads": 4,
        "intermediate_size": 128, "fc_norm_eps": 1e-5}


def make_list(path: Path, n: int, video: Path) -> Path:
    """Parquet list (path, video_id) of n unique ids `v/<i>.mp4`, every path the same video; reused when present."""
    if path.exists():
        return path
    import pyarrow as pa
    import pyarrow.parquet as pq

    tmp = path.with_suffix(".tmp")
    with pq.ParquetWriter(tmp, pa.schema([("path", pa.string()), ("video_id", pa.string())])) as writer:
        for start in range(0, n, 1_000_000):
            ids = [f"v/{i:09d}.mp4" for i in range(start, min(n, start + 1_000_000))]
            writer.write_table(pa.table({"path": pa.array([str(video)] * len(ids)), "video_id": ids}))
    tmp.replace(path)
    return path


def make_committed(out: Path, template: Path, list_path: Path, rows: int) -> int:
    """OUT (a copy of `template`'s _run.json and schema) holding `rows` committed clip rows: the list's first
    `rows` entries but one in SKIP_EVERY, one clip each, in Ray group parts of 1M rows. Returns the rows written."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from vmae_fast.store import RUN_FILE, list_parts

    out.mkdir(parents=True)
    for folder in ("clips", "videos", "errors"):
        (out / folder).mkdir()
    (out / RUN_FILE).write_bytes((template / RUN_FILE).read_bytes())
    schema = pq.read_schema(template / "clips" / list_parts(template / "clips")[0].name)
    ids = pq.read_table(list_path, columns=["video_id"]).column("video_id")
    keep = np.ones(min(rows, len(ids)), bool)
    keep[SKIP_EVERY // 2::SKIP_EVERY] = False
    written = 0
    for g, start in enumerate(range(0, len(keep), 1_000_000)):
        mask = keep[start:start + 1_000_000]
        chunk = ids.slice(start, len(mask)).filter(pa.array(mask))
        n = len(chunk)
        columns = {}
        for field in schema:
            if field.name == "video_id":
                columns[field.name] = chunk.cast(field.type)
            elif field.name == "path":
                columns[field.name] = pa.array(["/v.mp4"] * n, field.type)
            elif pa.types.is_fixed_size_list(field.type):
                size = field.type.list_size
                values = pa.array(np.zeros(n * size, field.type.value_type.to_pandas_dtype()))
                columns[field.name] = pa.FixedSizeListArray.from_arrays(values, size)
            else:
                columns[field.name] = pa.array(np.zeros(n, field.type.to_pandas_dtype()))
        table = pa.table(columns, schema=schema)
        pq.write_table(table, out / "clips" / f"part-g{g:06d}-000000.parquet", compression="zstd",
                       row_group_size=16384, use_dictionary=["video_id", "path"])
        written += n
    return written


def _status(pid: int) -> dict:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    return {line.split(":")[0]: int(line.split()[1]) / 1024 for line in text.splitlines()
            if line.startswith(("VmHWM", "VmRSS"))}


def _ray_process(name: str, root: int) -> int | None:
    """The pid of a process of this benchmark's cluster whose command line starts with `name`."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if not (entry / "cmdline").read_bytes().startswith(name.encode()):
                continue
            pid = int(entry.name)
            for _ in range(10):  # descends from this script?
                pid = int((Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split())[1])
                if pid == root:
                    return int(entry.name)
                if pid <= 1:
                    break
        except (OSError, ValueError, IndexError):
            continue
    return None


def measure(tree: Path, list_path: Path, out: Path, model: Path, timeout_s: float) -> dict:
    """One driver run on a fresh cluster: seconds to the first new clips part, peak RSS then and AFTER_S later."""
    import ray

    os.environ["PYTHONPATH"] = str(tree)  # the cluster's workers import the same tree as the driver
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", _node_ip_address="127.0.0.1")
    # after ray.init: the driver needs what it put in the environment (Ray 2.60's cluster auth token, when the
    # cluster has token authentication on; without it the first run of a process was refused: InvalidAuthToken)
    env = {**os.environ, "PYTHONPATH": str(tree)}
    address = ray.get_runtime_context().gcs_address
    before = {p.name for p in (out / "clips").glob("*.parquet")} if (out / "clips").is_dir() else set()
    load = os.getloadavg()[0]
    cmd = [sys.executable, "-m", "vmae_fast.cli", "extract", str(list_path), "-o", str(out), "--model", str(model),
           "--engine", "ray", "--ray-address", address, "--ray-actors", "1", "--workers", "1", "--part-rows", "1",
           "--commit-interval-s", "0.001", "--no-progress"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=tempfile.gettempdir())
    row: dict = {"tree": str(tree), "entries": None, "load_1min_before": load}
    first = None
    peak = {}
    try:
        while time.perf_counter() - t0 < timeout_s and proc.poll() is None:
            peak = _status(proc.pid) or peak
            if first is None and (out / "clips").is_dir():
                new = {p.name for p in (out / "clips").glob("*.parquet")} - before
                if new:
                    first = time.perf_counter() - t0
                    row["first_commit_s"] = first
                    row["peak_rss_mb_at_first"] = peak.get("VmHWM")
            if first is not None and time.perf_counter() - t0 >= first + AFTER_S:
                break
            time.sleep(0.02)
        row["peak_rss_mb"] = peak.get("VmHWM")
        row["rss_mb_end"] = peak.get("VmRSS")
        coordinator = _ray_process("ray::_Coordinator", os.getpid())
        if coordinator is not None:
            row["coordinator_peak_rss_mb"] = _status(coordinator).get("VmHWM")
        row["exited"] = proc.poll()
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        err = proc.communicate()[1].decode(errors="replace")
        ray.shutdown()
    if first is None:
        row["error"] = err[-3000:]
    row["load_1min_after"] = os.getloadavg()[0]
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="200,2000000,10000000", help="list sizes; the first is the baseline")
    p.add_argument("--resume-rows", type=int, default=0, help="also: the largest list into an OUT holding this many")
    p.add_argument("--tree", type=Path, default=REPO, help="source tree of the driver (default: this one)")
    p.add_argument("--timeout-s", type=float, default=900)
    p.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "vmae_bench_ray_driver")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)

    import shutil

    import torch
    from bench_env import environment, version
    from bench_inputs import make_video

    from vmae_fast.checkpoint import load_model, save_hf

    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    video = make_video(work / "one.mp4")
    model = work / "model"
    if not (model / "config.json").exists():
        save_hf(load_model("random:small", device="cpu", config=TINY), model)
    tree = args.tree.resolve()
    commit = subprocess.run(["git", "-C", str(tree), "rev-parse", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(tree), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    sizes = [int(s) for s in args.sizes.split(",")]
    rows = []
    for n in sizes:
        list_path = make_list(work / f"list-{n}.parquet", n, video)
        out = work / f"out-{n}"
        shutil.rmtree(out, ignore_errors=True)
        row = {"entries": n, **{k: v for k, v in measure(tree, list_path, out, model, args.timeout_s).items()
                                if k != "entries"}}
        rows.append(row)
        print(json.dumps(row), flush=True)
        if n == sizes[0]:
            template = out
    if args.resume_rows:
        n = sizes[-1]
        out = work / f"out-{n}-resume"
        shutil.rmtree(out, ignore_errors=True)
        committed = make_committed(out, template, work / f"list-{n}.parquet", args.resume_rows)
        row = {"entries": n, "committed_rows": committed,
               **{k: v for k, v in measure(tree, work / f"list-{n}.parquet", out, model, args.timeout_s).items()
                  if k != "entries"}}
        rows.append(row)
        print(json.dumps(row), flush=True)
        shutil.rmtree(out, ignore_errors=True)
    base = rows[0]
    for row in rows[1:]:
        if "first_commit_s" in row and "first_commit_s" in base:
            row["extra_first_commit_s"] = row["first_commit_s"] - base["first_commit_s"]
            row["extra_peak_rss_mb"] = row["peak_rss_mb"] - base["peak_rss_mb"]
    result = {"bench": "ray_driver", "environment": {**environment(torch.device("cpu"), commit + ("-dirty" if dirty
                                                                                                   else "")),
                                                      "ray": version("ray"), "cores": os.cpu_count(),
                                                      "tree": str(tree)},
              "after_s": AFTER_S, "rows": rows}
    for row in rows:
        print(f"{row['entries']:>10,} entries" + (f" + {row['committed_rows']:,} committed" if "committed_rows" in row
                                                   else "")
              + f": first commit {row.get('first_commit_s', float('nan')):.1f} s, driver peak "
              f"{row.get('peak_rss_mb') or float('nan'):.0f} MB"
              + (f" (extra {row['extra_first_commit_s']:+.1f} s, {row['extra_peak_rss_mb']:+.0f} MB)"
                 if "extra_first_commit_s" in row else ""))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0



if __name__ == "__main__":
    sys.exit(main())
