"""Decode speed of one video: decord (native size, reduced size, get_batch vs sequential reads) vs PyAV (threaded),
and vmae_fast.video.decode_clips end to end. Providers alternate round by round so a shared machine disturbs them
alike. Reports frames/s = source frames the decoder went through per second (every frame up to the last one used).

    python tools/bench_decode.py VIDEO [--frames 300] [--image-size 224] [--rounds 2] [--threads 0] [--only TEXT]
    python tools/bench_decode.py --make /tmp/bench/h264_1080p_30s.mp4   # 30 s 1080p30 H.264 test file (ffmpeg)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def decord_reader(path, size, threads):
    import decord

    w, h = size if size else (-1, -1)
    return decord.VideoReader(path, ctx=decord.cpu(0), width=w, height=h, num_threads=threads)


def bench_decord_batch(path, n, step, size, threads, chunk=32):
    vr = decord_reader(path, size, threads)
    idx = np.arange(0, n, step)
    for lo in range(0, len(idx), chunk):
        vr.get_batch(idx[lo : lo + chunk].tolist()).asnumpy()
    return n


def bench_decord_sequential(path, n, step, size, threads):
    vr = decord_reader(path, size, threads)
    for i in range(0, n, step):
        vr.next().asnumpy()
        if step > 1 and i + step < n:
            vr.skip_frames(step - 1)
    return n


def bench_pyav(path, n, step, size, threads):
    import av

    with av.open(path) as c:
        s = c.streams.video[0]
        s.thread_type = "AUTO"
        s.codec_context.thread_count = threads
        for i, frame in enumerate(c.decode(s)):
            if i >= n:
                break
            if i % step == 0:
                kw = {"width": size[0], "height": size[1], "interpolation": "BILINEAR"} if size else {}
                frame.to_ndarray(format="rgb24", **kw)
    return n


def bench_clips(path, n, backend, image_size, threads, fps):
    from vmae_fast.video import Sampling, VideoTask, decode_clips

    clips = list(decode_clips(VideoTask(path, end_s=n / fps), Sampling(), image_size, backend, threads=threads))
    return clips[-1].end_frame if clips else 0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("video", nargs="?")
    ap.add_argument("--make", help="write a 30 s 1080p30 H.264 test video here and exit")
    ap.add_argument("--frames", type=int, default=300, help="decode the first N frames")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="decoder threads (0: backend default)")
    ap.add_argument("--only", default="", help="run only the cases whose name contains this text")
    args = ap.parse_args(argv)
    if args.make:
        from tests.videos import make_long_video

        make_long_video(args.make)
        return 0
    import av

    from vmae_fast.video.crop import decode_size as _decode_size

    with av.open(args.video) as c:
        s = c.streams.video[0]
        width, height, fps = s.codec_context.width, s.codec_context.height, float(s.average_rate)
    small = _decode_size(width, height, args.image_size)
    n, t = args.frames, args.threads
    cases = {
        f"decord native {width}x{height}, all frames, get_batch": lambda: bench_decord_batch(args.video, n, 1, None, t),
        f"decord {small[0]}x{small[1]}, all frames, get_batch": lambda: bench_decord_batch(args.video, n, 1, small, t),
        f"decord {small[0]}x{small[1]}, step 4, get_batch(32)": lambda: bench_decord_batch(args.video, n, 4, small, t),
        f"decord {small[0]}x{small[1]}, step 4, next+skip": lambda: bench_decord_sequential(args.video, n, 4, small, t),
        f"pyav native {width}x{height}, all frames": lambda: bench_pyav(args.video, n, 1, None, t),
        f"pyav {small[0]}x{small[1]}, all frames": lambda: bench_pyav(args.video, n, 1, small, t),
        f"pyav {small[0]}x{small[1]}, step 4": lambda: bench_pyav(args.video, n, 4, small, t),
        "decode_clips auto (decord), 16x224 clips, step 4": lambda: bench_clips(args.video, n, "auto", args.image_size,
                                                                               t, fps),
        "decode_clips pyav, 16x224 clips, step 4": lambda: bench_clips(args.video, n, "pyav", args.image_size, t, fps),
    }
    cases = {k: v for k, v in cases.items() if args.only in k}
    times = {k: [] for k in cases}
    frames = {}
    for _ in range(args.rounds):
        for name, fn in cases.items():
            t0 = time.perf_counter()
            frames[name] = fn()
            times[name].append(time.perf_counter() - t0)
    print(json.dumps({"video": args.video, "size": f"{width}x{height}", "fps": fps, "frames": n,
                      "cpu_count": os.cpu_count(), "machine": platform.processor() or platform.machine(),
                      "threads": t, "rounds": args.rounds}))
    print(f"{'case':58s} {'frames/s (best)':>16s} {'frames/s (mean)':>16s}")
    for name in cases:
        best, mean = frames[name] / min(times[name]), frames[name] / np.mean(times[name])
        print(f"{name:58s} {best:16.1f} {mean:16.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
