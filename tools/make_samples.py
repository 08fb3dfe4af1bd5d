"""Generate the sample videos shipped in vmae_fast/data for `vmae-fast demo` (run once; the outputs are committed).

Seven short synthetic scenes (H.264 in MP4, 30 fps, 4.5 s, two 16-frame clips each at the default sampling): five
distinct ones (moving shapes, scrolling colour bars, a spinning checkerboard, a colour plasma, bouncing squares)
and two near-duplicates (`orbit_red_copy`: the orbit scene shifted in time, smaller, brighter and re-encoded at a
lower quality; `plasma_small`: the plasma at a quarter of the pixels), so that a search has an answer a person can
check by eye even with random model weights.

    python tools/make_samples.py [--out vmae_fast/data]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

FPS = 30
SECONDS = 4.5
W, H = 320, 240


def _grid(w: int, h: int):
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    return x / w, y / h  # 0..1


def orbit(t: float, w: int, h: int) -> np.ndarray:
    """A red disc orbiting the centre and a white square spinning around it, on dark blue."""
    x, y = _grid(w, h)
    img = np.empty((h, w, 3), np.float32)
    img[:] = (20, 30, 70)
    cx, cy = 0.5 + 0.3 * np.cos(2 * np.pi * t / 3), 0.5 + 0.3 * np.sin(2 * np.pi * t / 3)
    disc = ((x - cx) * w) ** 2 + ((y - cy) * h) ** 2 < (0.12 * h) ** 2
    img[disc] = (220, 40, 40)
    sx, sy = 0.5 + 0.15 * np.cos(-2 * np.pi * t), 0.5 + 0.15 * np.sin(-2 * np.pi * t)
    square = (np.abs(x - sx) * w < 0.05 * h) & (np.abs(y - sy) * h < 0.05 * h)
    img[square] = (240, 240, 240)
    return img


def bars(t: float, w: int, h: int) -> np.ndarray:
    """Vertical rainbow bars scrolling to the right."""
    x, _ = _grid(w, h)
    phase = 2 * np.pi * (4 * x - 0.5 * t)
    return 127.5 + 127.5 * np.stack([np.sin(phase), np.sin(phase + 2.1), np.sin(phase + 4.2)], -1)


def checker(t: float, w: int, h: int) -> np.ndarray:
    """A black and white checkerboard spinning about the centre."""
    x, y = _grid(w, h)
    a = 0.6 * t
    u = (x - 0.5) * w * np.cos(a) - (y - 0.5) * h * np.sin(a)
    v = (x - 0.5) * w * np.sin(a) + (y - 0.5) * h * np.cos(a)
    cells = (np.floor(u / 30) + np.floor(v / 30)) % 2
    return np.repeat(cells[..., None] * 230 + 10, 3, -1)


def plasma(t: float, w: int, h: int) -> np.ndarray:
    """A smooth colour plasma (sums of moving sinusoids)."""
    x, y = _grid(w, h)
    v = (
        np.sin(9 * x + t)
        + np.sin(7 * y - 1.3 * t)
        + np.sin(6 * (x + y) + 0.7 * t)
        + np.sin(11 * np.hypot(x - 0.5, y - 0.5) - 2 * t)
    )
    return 127.5 + 120 * np.stack([np.sin(v), np.sin(v + 2.0), np.cos(1.5 * v)], -1)


def bounce(t: float, w: int, h: int) -> np.ndarray:
    """Three blue squares bouncing off the walls on light grey."""
    x, y = _grid(w, h)
    img = np.full((h, w, 3), 200, np.float32)
    for i, (vx, vy) in enumerate(((0.31, 0.47), (0.53, 0.23), (0.19, 0.61))):
        px = np.abs(((0.2 * i + vx * t) % 2) - 1) * 0.8 + 0.1  # triangle wave in 0.1..0.9
        py = np.abs(((0.3 * i + vy * t) % 2) - 1) * 0.8 + 0.1
        img[(np.abs(x - px) * w < 18) & (np.abs(y - py) * h < 18)] = (30, 60 + 40 * i, 200)
    return img


# name -> (scene, time offset s, size, brightness added, crf)
SAMPLES = {
    "orbit_red": (orbit, 0.0, (W, H), 0, 26),
    "orbit_red_copy": (orbit, 0.4, (256, 192), 12, 34),
    "bars_scroll": (bars, 0.0, (W, H), 0, 26),
    "checker_spin": (checker, 0.0, (W, H), 0, 26),
    "plasma": (plasma, 0.0, (W, H), 0, 26),
    "plasma_small": (plasma, 0.0, (160, 120), 0, 30),
    "bounce_blue": (bounce, 0.0, (W, H), 0, 26),
}


def write_video(path: Path, scene, offset: float, size: tuple[int, int], brightness: int, crf: int) -> None:
    import av

    w, h = size
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"crf": str(crf), "preset": "slow"}
        for i in range(round(SECONDS * FPS)):
            img = np.clip(scene(offset + i / FPS, w, h) + brightness, 0, 255).astype(np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "vmae_fast" / "data"))
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    info = {}
    for name, (scene, offset, size, brightness, crf) in SAMPLES.items():
        path = out / f"{name}.mp4"
        write_video(path, scene, offset, size, brightness, crf)
        info[name + ".mp4"] = {
            "scene": scene.__name__,
            "time_offset_s": offset,
            "size": list(size),
            "brightness": brightness,
            "crf": crf,
            "bytes": path.stat().st_size,
        }
        print(f"{path}: {path.stat().st_size / 1e3:.0f} kB")
    # the near-duplicate pairs the demo points at
    info["_near_duplicates"] = [["orbit_red.mp4", "orbit_red_copy.mp4"], ["plasma.mp4", "plasma_small.mp4"]]
    (out / "samples.json").write_text(json.dumps(info, indent=1) + "\n")
    print(f"total {sum(p.stat().st_size for p in out.glob('*.mp4')) / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
