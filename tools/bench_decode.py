"""Decode cost per clip: clips/s PER CORE of decord, PyAV, torchcodec and vmae_fast's decode_clips on the same clips.

Every provider decodes the same clips (default 16 frames at step 4, sliding windows without overlap, planned from the
frame timestamps) of each video with ONE decoder thread, the whole process pinned to one core, the providers
alternating round by round; clips/s = clips / wall seconds (median of the rounds), opening the file included;
clips/cpu-s the same per CPU second of the process (less disturbed by a busy machine). Providers:

  decord native     decord.VideoReader(num_threads=1).get_batch(clip) per clip, frames at the coded size (the resize
                    to 224 a user still needs is NOT counted: generous to decord)
  decord scaled     the same with VideoReader(width=, height=): decord scales to the decode size while decoding
  pyav plain        every frame decoded in order, the clip frames converted + scaled by swscale (to_ndarray)
  torchcodec        VideoDecoder(num_ffmpeg_threads=1).get_frames_at(clip) per clip (when it loads; else one line)
  ours <backend>    vmae_fast.video.decode_clips(..., backend, threads=1): model-ready (T, 224, 224, 3) clips
  ours pyav, no X   (--ablation) the same with one shortcut of the PyAV backend switched off: what each one buys
  ours pyav, 3 crops (--crops) decode_clips with Sampling(crops=3): three views of each clip (clips/s counts clips,
                    each with its three views); plus the per-frame cost of the ways to cut three crops from a
                    decoded frame: whole frame scaled once then cut (what the PyAV backend does), three squares
                    scaled each, and the one center square of --crops 1

    python tools/bench_decode.py --make /tmp/vmae-bench                      # the three H.264 test files (ffmpeg)
    python tools/bench_decode.py /tmp/vmae-bench/h264_*.mp4 --rounds 3 --out bench/results/decode.json
    python tools/bench_decode.py /tmp/vmae-bench/h264_*.mp4 --decode-device cuda --out bench/results/decode-gpu.json

Test media (--make): one ffmpeg run, split three ways, 16 s at 30 fps, libx264 defaults (preset medium: 3 B-frames,
b-pyramid normal, adaptive B placement, 3 refs, keyint 250):

  ffmpeg -f lavfi -t 16 -i testsrc2=size=2880x1620:rate=30 -filter_complex
    "[0]noise=alls=40:allf=0,gblur=sigma=1.2,crop=1920:1080:x='480+420*sin(2*PI*t/9)':y='270+250*sin(2*PI*t/7)',
     noise=alls=4:allf=t,split=3[a][b][c];[b]scale=1280:720[b2];[c]scale=640:360[c2]"
    -map [a] -c:v libx264 -pix_fmt yuv420p h264_1080p.mp4 -map [b2] ... h264_720p.mp4 -map [c2] ... h264_360p.mp4

i.e. a large textured test pattern (static grain blurred into texture) seen through a camera that pans smoothly in
two directions (sub-pixel global motion everywhere), testsrc2's own moving objects, and light temporal sensor noise:
~7 Mbit/s at 1080p, about 2/3 of the frames B.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

_MAKE_FILTER = ("[0]noise=alls=40:allf=0,gblur=sigma=1.2,"
                "crop=1920:1080:x='480+420*sin(2*PI*t/9)':y='270+250*sin(2*PI*t/7)',noise=alls=4:allf=t,"
                "split=3[a][b][c];[b]scale=1280:720[b2];[c]scale=640:360[c2]")
MEDIA = {"1080p": "[a]", "720p": "[b2]", "360p": "[c2]"}


def make_media(directory: str, seconds: float = 16) -> list[Path]:
    """Write h264_{360p,720p,1080p}.mp4 under `directory` (see the module doc); files already there are kept."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    paths = {name: out / f"h264_{name}.mp4" for name in MEDIA}
    if all(p.exists() for p in paths.values()):
        return list(paths.values())
    if shutil.which("ffmpeg") is None:
        raise SystemExit("bench_decode --make needs the ffmpeg command line tool")
    cmd = ["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-t", str(seconds), "-i", "testsrc2=size=2880x1620:rate=30",
           "-filter_complex", _MAKE_FILTER]
    tmp = {name: p.with_suffix(".tmp.mp4") for name, p in paths.items()}
    for name, label in MEDIA.items():
        cmd += ["-map", label, "-c:v", "libx264", "-pix_fmt", "yuv420p", str(tmp[name])]
    subprocess.run(cmd, check=True)
    for name in MEDIA:
        tmp[name].replace(paths[name])
    return list(paths.values())


# --- providers: each decodes the frames of `clips` (list of int64 index arrays) of one file ---------------------------
def run_decord(path: str, clips, size) -> int:
    import decord

    w, h = size if size else (-1, -1)
    vr = decord.VideoReader(path, ctx=decord.cpu(0), width=w, height=h, num_threads=1)
    n = 0
    for idx in clips:
        n += len(vr.get_batch(idx.tolist()).asnumpy())
    return n


def run_pyav_plain(path: str, clips, size) -> int:
    import av
    import numpy as np

    wanted = set(np.unique(np.concatenate(clips)).tolist())
    last, n = max(wanted), 0
    with av.open(path) as c:
        stream = c.streams.video[0]
        stream.codec_context.thread_count = 1
        for i, frame in enumerate(c.decode(stream)):
            if i in wanted:
                frame.to_ndarray(width=size[0], height=size[1], format="rgb24", interpolation="BILINEAR")
                n += 1
            if i >= last:
                break
    return n


def run_torchcodec(path: str, clips, size, device: str = "cpu") -> int:
    from torchcodec.decoders import VideoDecoder

    decoder = VideoDecoder(path, num_ffmpeg_threads=1, dimension_order="NHWC", seek_mode="exact", device=device)
    n = 0
    for idx in clips:
        n += len(decoder.get_frames_at(idx.tolist()).data)
    _sync(device)
    return n


def run_ours(path: str, sampling, image_size: int, backend: str, device: str = "cpu") -> int:
    from vmae_fast.video import VideoTask, decode_clips

    n = sum(len(c.frames) for c in decode_clips(VideoTask(path), sampling, image_size, backend, threads=1,
                                                device=device))
    _sync(device)
    return n // sampling.crops  # frames of the clips, each clip counted once whatever its number of views


def _sync(device: str) -> None:
    if device != "cpu":
        import torch

        torch.cuda.synchronize(device)


# --ablation: decode_clips with one shortcut of the PyAV backend switched off (vmae_fast.testing.video.PYAV_SHORTCUTS)
ABLATIONS = {"no NONREF skip": "skip_nonref", "scale whole frame, then crop": "crop_before_scale",
             "probe by decoding at open": "probe_without_decoding"}


def run_ours_without(path: str, sampling, image_size: int, shortcut: str) -> int:
    from vmae_fast.testing.video import pyav_without

    with pyav_without(shortcut):
        return run_ours(path, sampling, image_size, "pyav")


# --crops: per-frame cost of cutting three crops from a decoded frame, on the file's own frames
def crop_scaler_costs(path: str, image_size: int, rounds: int, frames: int = 60) -> dict:
    """ms per frame (best of `rounds`) of: the whole frame scaled once to the decode size then cut into three views
    (the PyAV backend with crops=3), three squares each scaled to S x S, and the center square alone (crops=1).
    Every way is an FFmpeg filter graph (swscale bilinear) built once, fed the same decoded frames."""
    from itertools import islice, pairwise

    import av

    from vmae_fast.testing.video import crop_offsets, decode_size

    with av.open(path) as c:
        stream = c.streams.video[0]
        stream.codec_context.thread_count = 1
        decoded = list(islice(c.decode(stream), frames))  # the first `frames` (zip(..., strict=True) refused more)
    f0, s = decoded[0], image_size
    w, h = f0.width, f0.height
    dw, dh = decode_size(w, h, s)

    def graph(filters):
        g = av.filter.Graph()
        nodes = [g.add_buffer(width=w, height=h, format=f0.format.name, time_base=f0.time_base),
                 *(g.add(n, a) for n, a in filters), g.add("format", "rgb24"), g.add("buffersink")]
        for a, b in pairwise(nodes):
            a.link_to(b)
        g.configure()
        return g

    side = min(w, h)
    boxes = [(x, 0) if w >= h else (0, x) for x in crop_offsets(max(w, h), side, 3)]
    whole = graph([("scale", f"{dw}:{dh}:flags=bilinear")])
    squares = [graph([("crop", f"{side}:{side}:{x}:{y}"), ("scale", f"{s}:{s}:flags=bilinear")]) for x, y in boxes]

    def run(g, frame):
        g.push(frame)
        return g.pull().to_ndarray()

    def cut_whole(frame):
        img = run(whole, frame)
        offsets = crop_offsets(max(dw, dh), s, 3)
        return [img[:, x : x + s].copy() if dw >= dh else img[x : x + s].copy() for x in offsets]

    ways = {
        "whole frame scaled once, 3 crops cut": cut_whole,
        "3 squares scaled": lambda frame: [run(g, frame) for g in squares],
        "center square only (1 crop)": lambda frame: run(squares[1], frame),
    }
    best = {name: float("inf") for name in ways}
    for _ in range(rounds):
        for name, way in ways.items():
            t0 = time.perf_counter()
            for frame in decoded:
                way(frame)
            best[name] = min(best[name], (time.perf_counter() - t0) / len(decoded) * 1e3)
    return {
        "frames": len(decoded),
        "size": [w, h],
        "decode_size": [dw, dh],
        "ms_per_frame": {k: round(v, 4) for k, v in best.items()},
        "three_squares_over_whole": round(best["3 squares scaled"] / best["whole frame scaled once, 3 crops cut"], 3),
    }


# --- facts about a file -------------------------------------------------------------------------------------------
def video_facts(path: str) -> dict:
    """Size, rate, bitrate, frame types and the share of frames no other frame references (what skip_frame=NONREF
    drops), read with PyAV."""
    import av

    types: dict[str, int] = {}
    with av.open(path) as c:
        s = c.streams.video[0]
        facts = {
            "path": path,
            "width": s.codec_context.width,
            "height": s.codec_context.height,
            "fps": float(s.average_rate),
            "codec": s.codec_context.name,
            "profile": s.codec_context.profile,
            "bit_rate": c.bit_rate,
            "has_b_frames": s.codec_context.has_b_frames,
        }
        for frame in c.decode(s):
            kind = av.video.frame.PictureType(frame.pict_type).name
            types[kind] = types.get(kind, 0) + 1
    with av.open(path) as c:
        s = c.streams.video[0]
        s.codec_context.skip_frame = "NONREF"
        kept = sum(1 for _ in c.decode(s))
    total = sum(types.values())
    facts.update(frames=total, pict_types=types, nonref_fraction=round(1 - kept / total, 4))
    return facts


def corpus_check(backends: list[str], rounds: int) -> dict:
    """Every backend over the test corpus (tests/helpers/videos.py: 17 awkward good files, 7 bad ones), 4x32 clips: a
    good file passes when its clips, indices, times and frame numbers are right (check_clips there), a bad one
    when it ends as a VideoError of the right stage (a crash, wrong pixels or clips from a damaged file fail).
    Seconds: the whole corpus once, median of `rounds`."""
    import tempfile

    from tests.helpers.videos import BAD_STAGES, check_clips, make_bad_files, make_video_zoo
    from vmae_fast.video import Sampling, VideoError, VideoTask, decode_clips

    sampling = Sampling(num_frames=4)
    root = Path(tempfile.mkdtemp(prefix="vmae-corpus-"))
    zoo, bad = make_video_zoo(root / "zoo"), make_bad_files(root / "bad")
    out = {}
    for backend in backends:
        failures, seconds = {}, []
        for _ in range(rounds):
            t0 = time.perf_counter()
            for name, (path, exp) in zoo.items():
                try:
                    info: dict = {}
                    check_clips(
                        list(decode_clips(VideoTask(path), sampling, 32, backend, threads=1, info=info)), exp, sampling
                    )
                except (AssertionError, VideoError, RuntimeError) as e:
                    failures[name] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:160]
            for name, path in bad.items():
                try:
                    list(decode_clips(VideoTask(path), sampling, 32, backend, threads=1))
                    failures[name] = "gave clips instead of an error"
                except VideoError as e:
                    if e.stage != BAD_STAGES[name]:
                        failures[name] = f"stage {e.stage}, expected {BAD_STAGES[name]}"
            seconds.append(time.perf_counter() - t0)
        out[backend] = {
            "files": len(zoo) + len(bad),
            "failures": failures,
            "passes_all": not failures,
            "seconds": round(statistics.median(seconds), 3),
        }
        print(
            f"corpus {backend:10s} {len(zoo) + len(bad) - len(failures):2d}/{len(zoo) + len(bad)} pass, "
            f"{out[backend]['seconds']:.2f} s" + (f"  failures: {failures}" if failures else ""),
            flush=True,
        )
    return out


def machine_facts() -> dict:
    import av
    import numpy as np

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "av": av.__version__,
        "ffmpeg (PyAV)": str(getattr(av, "ffmpeg_version_info", None)),
    }
    try:
        import decord

        versions["decord"] = decord.__version__
    except ImportError:
        versions["decord"] = None
    try:
        import torchcodec

        versions["torchcodec"] = getattr(torchcodec, "__version__", "?")
    except Exception:  # noqa: BLE001
        versions["torchcodec"] = None
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        check=False,
        capture_output=True,
        text=True,
        cwd=os.path.dirname(os.path.abspath(__file__)),
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--", "vmae_fast/video", "tools/bench_decode.py"],
        check=False,
        capture_output=True,
        text=True,
        cwd=os.path.dirname(os.path.abspath(__file__)),
    ).stdout.strip()
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "versions": versions,
        "commit": commit,
        "uncommitted_video_changes": bool(dirty),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("videos", nargs="*")
    ap.add_argument("--make", metavar="DIR", help="write the H.264 test files h264_{360p,720p,1080p}.mp4 here, exit")
    ap.add_argument("--seconds", type=float, default=16, help="length of the --make files (default %(default)s)")
    ap.add_argument("--num-frames", type=int, default=16)
    ap.add_argument("--frame-step", type=int, default=4)
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--core", type=int, help="pin the process to this CPU (default: the last one allowed)")
    ap.add_argument("--only", default="", help="comma-separated substrings: run only the cases matching one")
    ap.add_argument("--backends", default="auto,decord", help="decode_clips backends to measure (default %(default)s)")
    ap.add_argument(
        "--ablation",
        action="store_true",
        help="also decode_clips (PyAV) with each shortcut switched off, one at a time",
    )
    ap.add_argument(
        "--crops",
        action="store_true",
        help="also decode_clips (PyAV) with three crops per clip, and the per-frame cost of the ways to "
        "cut three crops",
    )
    ap.add_argument(
        "--decode-device",
        default="cpu",
        help="also measure torchcodec and decode_clips decoding on this CUDA device (NVDEC)",
    )
    ap.add_argument(
        "--corpus",
        action="store_true",
        help="also run every backend over the test corpus (tests/helpers/videos.py): pass/fail and time",
    )
    ap.add_argument("--label", default="", help="free text stored in the JSON (e.g. before/after)")
    ap.add_argument("--out", help="write the results as JSON here")
    args = ap.parse_args(argv)
    if args.make:
        for p in make_media(args.make, args.seconds):
            print(p)
        return 0
    if not args.videos and not args.corpus:
        ap.error("give video files (or --make DIR, or --corpus)")
    allowed = sorted(os.sched_getaffinity(0))
    core = args.core if args.core is not None else allowed[-1]
    os.sched_setaffinity(0, {core})  # before any decoder library starts a thread: they all inherit one core

    from vmae_fast.testing.video import PyAVReader, decode_size, torchcodec_status
    from vmae_fast.video import Sampling

    sampling = Sampling(num_frames=args.num_frames, frame_step=args.frame_step)
    tc_status = torchcodec_status()
    filters = [f for f in args.only.split(",") if f]
    report = {
        "tool": "tools/bench_decode.py",
        "label": args.label,
        **machine_facts(),
        "pinned_to_core": core,
        "decoder_threads": 1,
        "rounds": args.rounds,
        "image_size": args.image_size,
        "sampling": sampling.to_dict(),
        "torchcodec": tc_status or "loaded",
        "videos": [],
    }
    if tc_status:
        print(f"torchcodec: not measured, it does not load here ({tc_status})")
    plans = {}
    for path in args.videos:
        from vmae_fast.video import plan_clips

        reader = PyAVReader(path, args.image_size, threads=1)
        clip_plans = plan_clips(reader.timestamps, sampling, last_duration=reader.last_duration)
        size = decode_size(reader.display_width, reader.height, args.image_size)
        clips = [p.frame_indices for p in clip_plans]
        cases = {
            "decord native": lambda p=path, c=clips: run_decord(p, c, None),
            f"decord scaled {size[0]}x{size[1]}": lambda p=path, c=clips, s=size: run_decord(p, c, s),
            f"pyav plain {size[0]}x{size[1]}": lambda p=path, c=clips, s=size: run_pyav_plain(p, c, s),
        }
        if not tc_status:
            cases["torchcodec native"] = lambda p=path, c=clips: run_torchcodec(p, c, None)
        if args.decode_device != "cpu":  # NVDEC: the GPU decodes, the pinned core only feeds it
            d = args.decode_device
            cases[f"torchcodec native {d}"] = lambda p=path, c=clips, d=d: run_torchcodec(p, c, None, d)
            cases[f"ours torchcodec {d}"] = lambda p=path, d=d: run_ours(p, sampling, args.image_size, "torchcodec", d)
        for backend in args.backends.split(","):
            cases[f"ours {backend}"] = lambda p=path, b=backend: run_ours(p, sampling, args.image_size, b)
        if args.ablation:
            for label, shortcut in ABLATIONS.items():
                cases[f"ours pyav, {label}"] = lambda p=path, k=shortcut: run_ours_without(
                    p, sampling, args.image_size, k
                )
        if args.crops:
            three = Sampling(**{**sampling.to_dict(), "crops": 3})
            cases["ours pyav, 3 crops"] = lambda p=path, t=three: run_ours(p, t, args.image_size, "pyav")
        cases = {k: v for k, v in cases.items() if not filters or any(f in k for f in filters)}
        facts = video_facts(path)
        if args.crops:
            facts["crop_scalers"] = crop_scaler_costs(path, args.image_size, args.rounds)
        facts.update(
            clips=len(clips),
            clip_frames=int(sum(len(c) for c in clips)),
            source_frames_spanned=int(clips[-1].max()) + 1,
            decode_size=list(size),
        )
        plans[path] = (cases, facts, {k: [] for k in cases}, {k: [] for k in cases})
        print(
            f"{Path(path).name}: {facts['width']}x{facts['height']} {facts['bit_rate'] / 1e6:.1f} Mbit/s, "
            f"{facts['frames']} frames {facts['pict_types']}, non-reference {facts['nonref_fraction']:.0%}, "
            f"{len(clips)} clips",
            flush=True,
        )
    for r in range(args.rounds):
        for path, (cases, facts, times, cpu) in plans.items():
            names = list(cases) if r % 2 == 0 else list(reversed(cases))  # alternate the order too
            for name in names:
                t0, c0 = time.perf_counter(), time.process_time()
                frames = cases[name]()
                times[name].append(time.perf_counter() - t0)
                cpu[name].append(time.process_time() - c0)
                if frames != facts["clip_frames"]:
                    raise SystemExit(f"{name} on {path} returned {frames} frames, expected {facts['clip_frames']}")
    for path, (cases, facts, times, cpu) in plans.items():
        rows = {}
        for name in cases:
            med = statistics.median(times[name])
            rows[name] = {
                "seconds": [round(t, 4) for t in times[name]],
                "cpu_seconds": [round(t, 4) for t in cpu[name]],
                "clips_per_s": round(facts["clips"] / med, 3),
                "clips_per_s_best": round(facts["clips"] / min(times[name]), 3),
                "clips_per_cpu_s": round(facts["clips"] / statistics.median(cpu[name]), 3),
            }
        decord_best = max((v["clips_per_s"] for k, v in rows.items() if k.startswith("decord")), default=None)
        for row in rows.values():
            if decord_best:
                row["vs_best_decord"] = round(row["clips_per_s"] / decord_best, 3)
        facts["cases"] = rows
        report["videos"].append(facts)
        print(
            f"\n{Path(path).name} ({facts['width']}x{facts['height']}, {facts['clips']} clips of "
            f"{args.num_frames}x{args.image_size}, step {args.frame_step}, 1 thread on core {core})"
        )
        print(f"  {'case':44s} {'clips/s':>9s} {'best':>9s} {'/cpu-s':>9s} {'x best decord':>14s}")
        for name, row in rows.items():
            print(
                f"  {name:44s} {row['clips_per_s']:9.2f} {row['clips_per_s_best']:9.2f} "
                f"{row['clips_per_cpu_s']:9.2f} {row.get('vs_best_decord', float('nan')):14.2f}"
            )
        for name, ms in facts.get("crop_scalers", {}).get("ms_per_frame", {}).items():
            print(f"  per frame: {name:40s} {ms:7.3f} ms")
    if args.corpus:
        backends = ["pyav", "decord"] + (["torchcodec"] if not tc_status else [])
        report["corpus"] = corpus_check(backends, args.rounds)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
        print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
