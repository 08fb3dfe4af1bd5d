"""Precision and recall of `vmae-fast dedup` on a test set with planted near-duplicates (public API + ffmpeg).

The set: SOURCES distinct synthetic source videos (FFmpeg's lavfi generators: Conway's life, cellular automata,
Mandelbrot zooms, gradients, Sierpinski patterns, formula plasmas, test cards; 6 s, 320x240, 30 fps), each with four
planted near-duplicates made from it as people make them: re-encoded at a far lower bitrate (crf 40), at half the
resolution, cropped to the central 85 % (scaled back), and trimmed (its first 1.5 s cut). Beside each source a
look-alike: the same generator with another seed or parameters, which looks alike but is another video. A pair of
videos is a true near-duplicate pair iff both come from the same source.

Extracted with random weights (the demo's ViT-S-width model, 8 frames of 112 px: no real weights can be downloaded
here), then `vmae-fast dedup OUT` chooses its threshold from the output; the script reports precision and recall
over every pair at that threshold, per kind of planted copy, and the whole curve over thresholds (groups as connected
components at each threshold: dedup's own rule, checked against find_groups at a few thresholds).

    python tools/bench_dedup.py [--work /tmp/dedup-bench] [--seeds 0 1] [--json bench/results/dedup-planted.json]
    python tools/bench_dedup.py --memory-rows 1000000 [--json bench/results/dedup-memory-1m.json]
    flock -x /tmp/vmae-cpu.lock python tools/bench_dedup.py --video-memory 100000 1000000 --dim 768 --kind ivfpq \
        --before /tmp/videoindex-before [--json bench/results/dedup-video-memory.json]

--video-memory: the peak RSS of `vmae-fast index OUT --level video` and `vmae-fast dedup OUT --level video`, each in
a fresh process, over synthetic outputs of that many videos with their video table (tests/helpers/synthetic_out.py
write_video_output), beside a process that only loads the built index (the floor: the index and its id map). Each
process imports first (torch, faiss: ~480 MB), then resets its peak (Linux: /proc/self/clear_refs "5" resets
VmHWM) and reports the step's peak above the RSS left after the imports, so that no peak of the imports can hide a
smaller step. With --before DIR the same commands run the code of another checkout too (e.g. a worktree of main before a
change), in their own processes, on the same outputs; --steps picks the processes (e.g. `--steps imports index load`
to leave out dedup's long neighbour search at 10^6).

What it can show: whether the pipeline (embedding, neighbours, the threshold rule, components) separates copies of
a video from other videos that look alike, with these weights. What it cannot: how a real checkpoint behaves, or
where its threshold falls (the rule reads the output, so it adapts; this curve does not transfer).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from contextlib import redirect_stdout
from itertools import combinations
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from vmae_fast import cli  # noqa: E402
from vmae_fast.demo import write_random_checkpoint  # noqa: E402
from vmae_fast.extraction import extract  # noqa: E402
from vmae_fast.retrieval import find_groups  # noqa: E402
from vmae_fast.testing.retrieval import stream_rows  # noqa: E402

SIZE, FPS, SECONDS = "320x240", 30, 6
# (source, look-alike): lavfi graphs; the look-alike changes a seed or a parameter of the same generator
PAIRS = {
    "life": ("life=s={s}:r={r}:seed=11:ratio=0.1:mold=10:life_color=#44dd44:death_color=#aa2222",
             "life=s={s}:r={r}:seed=12:ratio=0.1:mold=10:life_color=#44dd44:death_color=#aa2222"),
    "life_sparse": ("life=s={s}:r={r}:seed=21:ratio=0.03:life_color=#ffffff:death_color=#202060",
                    "life=s={s}:r={r}:seed=22:ratio=0.03:life_color=#ffffff:death_color=#202060"),
    "cellauto": ("cellauto=s={s}:r={r}:rule=30:scroll=1:full=1", "cellauto=s={s}:r={r}:rule=110:scroll=1:full=1"),
    "cellauto_b": ("cellauto=s={s}:r={r}:rule=90:scroll=1:full=1", "cellauto=s={s}:r={r}:rule=150:scroll=1:full=1"),
    "mandelbrot": ("mandelbrot=s={s}:r={r}:start_x=-0.743643887:start_y=-0.131825904:start_scale=3",
                   "mandelbrot=s={s}:r={r}:start_x=-0.7453:start_y=0.1127:start_scale=3"),
    "mandelbrot_b": ("mandelbrot=s={s}:r={r}:start_x=0.001643721971153:start_y=-0.822467633298876:start_scale=2",
                     "mandelbrot=s={s}:r={r}:start_x=-1.25066:start_y=0.02012:start_scale=2"),
    "gradients": ("gradients=s={s}:r={r}:seed=1:speed=0.03", "gradients=s={s}:r={r}:seed=2:speed=0.03"),
    "gradients_b": ("gradients=s={s}:r={r}:seed=3:speed=0.08:type=radial",
                    "gradients=s={s}:r={r}:seed=4:speed=0.08:type=radial"),
    "sierpinski": ("sierpinski=s={s}:r={r}:seed=1:jump=2:type=carpet",
                   "sierpinski=s={s}:r={r}:seed=2:jump=2:type=carpet"),
    "sierpinski_t": ("sierpinski=s={s}:r={r}:seed=3:jump=3:type=triangle",
                     "sierpinski=s={s}:r={r}:seed=4:jump=3:type=triangle"),
    "plasma": ("nullsrc=s={s}:r={r},geq=r='128+127*sin(X/23+T*2)':g='128+127*sin(Y/17+T*3)'"
               ":b='128+127*sin((X+Y)/29+T)'",
               "nullsrc=s={s}:r={r},geq=r='128+127*sin(X/19+T*2)':g='128+127*sin(Y/21+T*3)'"
               ":b='128+127*sin((X+Y)/25+T)'"),
    "rings": ("nullsrc=s={s}:r={r},geq=lum='128+127*sin(hypot(X-160,Y-120)/6-T*4)':cb=128:cr=128",
              "nullsrc=s={s}:r={r},geq=lum='128+127*sin(hypot(X-100,Y-80)/6-T*4)':cb=128:cr=128"),
    "testsrc2": ("testsrc2=s={s}:r={r}", "testsrc2=s={s}:r={r},hue=h=120,hflip"),
    "bars": ("smptebars=s={s}:r={r},drawbox=x='mod(t*80,320)':y=90:w=40:h=60:color=white@0.9:t=fill",
             "smptehdbars=s={s}:r={r},drawbox=x='mod(t*80,320)':y=90:w=40:h=60:color=white@0.9:t=fill"),
}
# near-duplicates of a source, as ffmpeg arguments applied to its file
VARIANTS = {
    "reencode": ["-c:v", "libx264", "-crf", "40", "-preset", "veryfast"],
    "half_resolution": ["-vf", "scale=160:120", "-c:v", "libx264", "-crf", "26", "-preset", "veryfast"],
    "crop": ["-vf", "crop=iw*0.85:ih*0.85,scale=320:240", "-c:v", "libx264", "-crf", "23", "-preset", "veryfast"],
    "trim": ["-ss", "1.5", "-c:v", "libx264", "-crf", "23", "-preset", "veryfast"],
}
MODEL = {"image_size": 112, "num_frames": 8}  # the demo's random ViT-S-width model (vmae_fast.demo.DEMO_MODEL)


def ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-v", "error", "-y", *args], check=True, timeout=300)


def make_set(videos: Path) -> dict[str, dict]:
    """The videos of the set: {file name: {"source": source name, "kind": source | look-alike | variant}}."""
    videos.mkdir(parents=True, exist_ok=True)
    truth = {}
    for name, graphs in PAIRS.items():
        for graph, kind, file in ((graphs[0], "source", f"{name}.mp4"), (graphs[1], "look-alike", f"{name}_alike.mp4")):
            path = videos / file
            if not path.exists():
                ffmpeg("-f", "lavfi", "-i", graph.format(s=SIZE, r=FPS), "-t", str(SECONDS), "-pix_fmt", "yuv420p",
                       "-c:v", "libx264", "-crf", "18", "-preset", "veryfast", str(path))
            truth[file] = {"source": name if kind == "source" else f"{name}_alike", "kind": kind}
        for variant, args in VARIANTS.items():
            file = f"{name}__{variant}.mp4"
            if not (videos / file).exists():
                ffmpeg("-i", str(videos / f"{name}.mp4"), *args, "-pix_fmt", "yuv420p", str(videos / file))
            truth[file] = {"source": name, "kind": variant}
    return truth


def components(sims: np.ndarray, threshold: float) -> np.ndarray:
    """Group label per video: connected components of sims >= threshold (the smallest member index)."""
    n = len(sims)
    label = np.arange(n)
    linked = sims >= threshold
    np.fill_diagonal(linked, True)
    changed = True
    while changed:  # min-label propagation until stable (small n)
        new = np.array([label[linked[i]].min() for i in range(n)])
        changed = not np.array_equal(new, label)
        label = new
    return label


def pair_scores(label: np.ndarray, same: np.ndarray) -> dict:
    """Precision, recall and F1 over all pairs: predicted = same group, true = same source."""
    iu = np.triu_indices(len(label), 1)
    predicted = (label[:, None] == label[None, :])[iu]
    true = same[iu]
    tp = int((predicted & true).sum())
    precision = tp / predicted.sum() if predicted.sum() else 1.0
    recall = tp / true.sum()
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": round(float(precision), 4), "recall": round(float(recall), 4), "f1": round(float(f1), 4),
            "pairs_predicted": int(predicted.sum()), "pairs_true": int(true.sum()), "true_positives": tp}


def environment() -> dict:
    import faiss
    import torch

    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True,
                           text=True).stdout.strip()
    return {"device": f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)",
            "python": platform.python_version(), "torch": torch.__version__, "faiss": faiss.__version__,
            "numpy": np.__version__, "ffmpeg": subprocess.run(["ffmpeg", "-version"], capture_output=True,
                                                             text=True).stdout.split("\n")[0],
            "commit": commit + ("-dirty" if dirty else "")}


def per_kind(label: np.ndarray, ids: list[str], truth: dict) -> dict:
    """For each kind of planted copy (and the look-alikes): how many landed in the group of their source."""
    found = {}
    for kind in (*VARIANTS, "look-alike"):
        hits = [bool(label[i] == label[ids.index(f"{truth[v]['source'].removesuffix('_alike')}.mp4")])
                for i, v in enumerate(ids) if truth[v]["kind"] == kind]
        found[kind] = {"with_its_source": int(sum(hits)), "of": len(hits)}
    return found


def evaluate(work: Path, truth: dict, seed: int) -> dict:
    """Extract the set with random weights of this seed, run `vmae-fast dedup`, measure it and the whole curve."""
    model = write_random_checkpoint(work / f"model-{seed}", seed=seed, **MODEL)
    out = work / f"out-{seed}"
    t0 = time.perf_counter()
    summary = extract([str(work / "videos")], out, model=str(model), progress=False)
    extract_s = time.perf_counter() - t0
    assert summary["videos_ok"] + summary["videos_skipped"] == len(truth), summary  # a rerun resumes
    # what a user gets: `vmae-fast dedup OUT`, its threshold chosen from the output
    print(_run_text(out, []))
    report = json.loads(_run_text(out, ["--json"]))

    ids, vectors = [], []
    for _, x, meta in stream_rows(out, "video"):
        vectors.append(x)
        ids += meta.column("video_id").to_pylist()
    x = np.concatenate(vectors)
    sims = x @ x.T
    np.fill_diagonal(sims, -2)
    source = np.array([truth[i]["source"] for i in ids])
    same = source[:, None] == source[None, :]
    np.fill_diagonal(same, False)
    observed = np.unique(np.round(sims[np.triu_indices(len(x), 1)], 6))
    picks = np.unique(np.quantile(observed[observed > 0], np.linspace(0, 1, 200)))  # 200 points over what is seen
    curve = [{"threshold": round(float(t), 6), **pair_scores(components(sims, t), same)} for t in picks]
    best = max(curve, key=lambda c: (c["f1"], c["threshold"]))
    for t in (report["threshold"], best["threshold"]):  # the curve's rule is dedup's own
        if t is not None:
            lib, ours = find_groups(out, "video", threshold=t, exact=True), components(sims, t)
            assert all((lib.root[i] == lib.root[j]) == (ours[i] == ours[j])
                       for i, j in combinations(range(len(x)), 2)), t
    auto = None
    if report["threshold"] is not None:
        label = components(sims, report["threshold"])
        auto = {"threshold": report["threshold"], **pair_scores(label, same), "per_kind": per_kind(label, ids, truth)}
    to_source = {kind: [] for kind in (*VARIANTS, "look-alike")}  # each planted copy's similarity to its source
    for i, vid in enumerate(ids):
        if truth[vid]["kind"] in to_source:
            j = ids.index(f"{truth[vid]['source'].removesuffix('_alike')}.mp4")
            to_source[truth[vid]["kind"]].append(float(sims[i, j]))
    distinct = [(float(sims[i, j]), ids[i], ids[j]) for i, j in combinations(range(len(x)), 2)
                if not same[i, j]]
    distinct.sort(reverse=True)
    values = np.array([d[0] for d in distinct])
    return {
        "seed": seed, "auto_threshold": report["threshold_rule"], "at_auto_threshold": auto,
        "best_f1": {**best, "per_kind": per_kind(components(sims, best["threshold"]), ids, truth)},
        "similarity_to_source": {k: {"min": round(min(v), 5), "median": round(float(np.median(v)), 5),
                                     "max": round(max(v), 5)} for k, v in to_source.items()},
        "distinct_pairs": {"median": round(float(np.median(values)), 5),
                           "p99": round(float(np.quantile(values, 0.99)), 5),
                           "most_similar": [[round(d[0], 5), d[1], d[2]] for d in distinct[:6]]},
        "dedup_summary": {k: report[k] for k in ("rows", "groups", "members", "kept", "histogram", "search")},
        "curve": curve, "extract_s": round(extract_s, 1),
    }


MEMORY_CHILD = """
import resource, sys, time
sys.path.insert(0, {root!r})
out, mode = {out!r}, {mode!r}
t0 = time.perf_counter()
if mode == "index":
    from vmae_fast.retrieval import Index
    Index.load(out, "clip")
else:
    from vmae_fast.retrieval import find_groups
    r = find_groups(out, "clip", threshold=0.99)
    print("groups", r.groups, "members", r.members, file=sys.stderr)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, round(time.perf_counter() - t0, 1))
"""


def memory(work: Path, rows: int, dim: int = 32) -> dict:
    """Peak RSS of find_groups over `rows` clips with an IVF index, beside a process that only loads that index:
    the difference is what dedup itself holds (fresh processes, one after the other)."""
    from tests.helpers import index_data
    from tests.helpers.synthetic_out import write_dataset
    from vmae_fast.retrieval import Index

    out = work / f"memory-{rows}"
    if not (out / "index" / "clip.json").is_file():
        x = index_data.collection(rows, dim, seed=0)
        write_dataset(out, x, np.arange(rows) // 10, parts=8)
        del x
        Index.build(out, level="clip", tune_queries=200)
    peaks = {}
    for mode in ("index", "dedup"):
        code = MEMORY_CHILD.format(root=str(ROOT), out=str(out), mode=mode)
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=3600)
        kb, seconds = done.stdout.split()
        peaks[mode] = {"peak_rss_mb": round(int(kb) / 1024, 1), "s": float(seconds), "log": done.stderr.strip()}
    extra = peaks["dedup"]["peak_rss_mb"] - peaks["index"]["peak_rss_mb"]
    return {"rows": rows, "dim": dim, "index_kind": Index.load(out, "clip").describe(),
            "load_index_only": peaks["index"], "find_groups": peaks["dedup"],
            "dedup_extra_mb": round(extra, 1), "bytes_per_row": round(extra * 2 ** 20 / rows, 1)}


VIDEO_CHILD = """
import json, resource, sys, time, io, contextlib
sys.path.insert(0, {code!r})
out, mode, argv = {out!r}, {mode!r}, {argv!r}
t0 = time.perf_counter()
import faiss, numpy, pyarrow  # noqa: the libraries every mode loads
import vmae_fast
from vmae_fast import cli
from vmae_fast.retrieval import Index, find_groups  # noqa


def status(key):
    line = [s for s in open("/proc/self/status").read().splitlines() if s.startswith(key + ":")][0]
    return round(int(line.split()[1]) / 1024, 1)


# importing peaks above what stays resident (torch, faiss): measure the step from here, not from that peak
result = {{"code": vmae_fast.__file__, "import_peak_rss_mb": status("VmHWM"), "rss_after_imports_mb": status("VmRSS")}}
open("/proc/self/clear_refs", "w").write("5")  # Linux: resets VmHWM (the peak RSS) to the current RSS
if mode == "load":
    index = Index.load(out, "video")
    result.update(rows=len(index), metadata_bytes=index.metadata.nbytes, describe=index.describe())
elif mode in ("index", "dedup"):
    screen = io.StringIO()
    with contextlib.redirect_stdout(screen):
        status_code = cli.main([mode, out, "--level", "video", *argv])
    result.update(status=status_code, stdout=screen.getvalue()[-600:])
    if mode == "dedup":  # --json: the summary
        summary = json.loads(screen.getvalue())
        result.update(stdout=None, found={{k: summary[k] for k in ("rows", "groups", "members", "search")}})
result.update(peak_rss_mb=status("VmHWM"), s=round(time.perf_counter() - t0, 1),
              ru_maxrss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1))
result["above_imports_mb"] = round(result["peak_rss_mb"] - result["rss_after_imports_mb"], 1)
print(json.dumps(result))
"""


def _child(code: str, out: Path, mode: str, argv: list[str]) -> dict:
    """One fresh process running `mode` (imports, load, index, dedup) with the code of checkout `code`."""
    done = subprocess.run([sys.executable, "-c", VIDEO_CHILD.format(code=code, out=str(out), mode=mode, argv=argv)],
                          capture_output=True, text=True, timeout=7200)
    if done.returncode != 0:
        raise SystemExit(f"{mode} with {code} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["log"] = done.stderr.strip()[-600:]
    return result


def video_memory(work: Path, videos: int, dim: int, kind: str, threshold: float, codes: dict[str, str],
                 steps: list[str]) -> dict:
    """Peak RSS of `index --level video` and `dedup --level video` over `videos` synthetic videos for each checkout in
    `codes` ({"before": DIR, "after": DIR}), fresh processes, beside the import-only and load-only floors."""
    from tests.helpers.synthetic_out import write_video_output

    out = work / f"video-memory-{videos}-{dim}"
    ready = out / "clips" / ".complete"
    if not ready.is_file():
        shutil.rmtree(out, ignore_errors=True)
        t0 = time.perf_counter()
        planted = write_video_output(out, videos, dim, parts=8)
        ready.write_text(json.dumps({**planted, "write_s": round(time.perf_counter() - t0, 1)}))
    planted = json.loads(ready.read_text())
    runs = {}
    argv = {"imports": [], "index": ["--kind", kind, "--rebuild"], "load": [],
            "dedup": ["--threshold", str(threshold), "--use-index", "--json"]}
    for name, code in codes.items():
        run = {step: _child(code, out, step, argv[step]) for step in steps}
        for step, r in run.items():
            if step != "imports":
                r["above_imports_bytes_per_video"] = round(r["above_imports_mb"] * 2 ** 20 / videos, 1)
        if "load" in run:
            for step in ("index", "dedup"):
                if step in run:
                    run[step]["above_loaded_index_mb"] = round(run[step]["above_imports_mb"]
                                                               - run["load"]["above_imports_mb"], 1)
        runs[name] = run
    files = {p.name: p.stat().st_size for p in sorted((out / "index").glob("video.*"))}
    return {"videos": videos, "dim": dim, "kind": kind, "threshold": threshold, "parts": 8,
            "planted_copies": planted["copies"], "index_files_bytes": files, "runs": runs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", default="/tmp/vmae-dedup-bench", help="folder for the videos, models and OUTs")
    parser.add_argument("--json", help="write the results here (e.g. bench/results/dedup-planted.json)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="random weights, one run each")
    parser.add_argument("--memory-rows", type=int,
                        help="instead: dedup's peak memory over this many synthetic clips (IVF index, streamed)")
    parser.add_argument("--video-memory", type=int, nargs="+", metavar="VIDEOS",
                        help="instead: peak RSS of `index --level video` and `dedup --level video` at these sizes")
    parser.add_argument("--dim", type=int, default=768, help="--video-memory: embedding dimension")
    parser.add_argument("--kind", default="ivfpq", help="--video-memory: index kind (`vmae-fast index --kind`)")
    parser.add_argument("--threshold", type=float, default=0.99, help="--video-memory: dedup --threshold")
    parser.add_argument("--before", metavar="DIR", help="--video-memory: also run the code of this checkout")
    parser.add_argument("--steps", nargs="+", default=["imports", "index", "load", "dedup"],
                        choices=["imports", "index", "load", "dedup"],
                        help="--video-memory: the processes to run, in this order (dedup needs a built index)")
    args = parser.parse_args()
    work = Path(args.work)
    if args.video_memory:
        codes = {"before": str(Path(args.before).resolve())} if args.before else {}
        codes["after"] = str(ROOT)
        env = environment()
        if args.before:
            env["before_commit"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=args.before, capture_output=True,
                                                  text=True).stdout.strip()
        result = {"what": "peak RSS (ru_maxrss) of `vmae-fast index OUT --level video` and `vmae-fast dedup OUT "
                          "--level video --use-index --threshold T`, each in a fresh process, beside one that only "
                          "imports and one that only loads the built index",
                  "sizes": [], **env, "load_avg_1m_start": os.getloadavg()[0],
                  "command": "python tools/bench_dedup.py " + " ".join(sys.argv[1:])}
        for videos in args.video_memory:
            result["sizes"].append(video_memory(work, videos, args.dim, args.kind, args.threshold, codes, args.steps))
            result["load_avg_1m_end"] = os.getloadavg()[0]
            print(json.dumps(result["sizes"][-1], indent=1), flush=True)
            if args.json:
                Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
        return
    if args.memory_rows:
        result = {"what": "peak RSS of find_groups (clip level, threshold given, IVF index) minus loading the index",
                  **memory(work, args.memory_rows), **environment(),
                  "command": "python tools/bench_dedup.py " + " ".join(sys.argv[1:])}
        print(json.dumps(result, indent=1))
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
        return
    t0 = time.perf_counter()
    truth = make_set(work / "videos")
    runs = [evaluate(work, truth, seed) for seed in args.seeds]
    result = {
        "what": "precision/recall of vmae-fast dedup (video level) on planted near-duplicates, random weights",
        "set": {"videos": len(truth), "sources": len(PAIRS), "variants": list(VARIANTS), "look_alikes": len(PAIRS),
                "seconds": SECONDS, "size": SIZE, "true_pairs": 10 * len(PAIRS)},
        "model": {**MODEL, "weights": "random", "note": "vmae_fast.demo.DEMO_MODEL (ViT-S width, 6 blocks)"},
        "runs": runs, "total_s": round(time.perf_counter() - t0, 1), **environment(),
        "command": "python tools/bench_dedup.py " + " ".join(sys.argv[1:]),
    }
    brief = [{k: v for k, v in run.items() if k not in ("curve", "dedup_summary")} for run in runs]
    print(json.dumps(brief, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")


def _run_text(out: Path, options: list[str]) -> str:
    screen = io.StringIO()
    with redirect_stdout(screen):
        assert cli.main(["dedup", str(out), *options]) == 0
    return screen.getvalue()


if __name__ == "__main__":
    main()
