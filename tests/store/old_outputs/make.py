"""Makes the outputs in this folder with the code of vmae_fast 16c2a40 (the commit before the house move, whose Ray
runs put group numbers in the shard field of part names), for tests/store/test_old_outputs.py.

    git -C REPO archive 16c2a40 | tar -x -C /tmp/vmae-16c2a40
    python tests/store/old_outputs/make.py /tmp/vmae-16c2a40      (from the repository root, with ray[data])

The inputs are tests.helpers.videos.make_small_videos (eight short videos, three in sub/) plus `broken.mp4` (not a
video: one error row), which the tests make again with the same names. Each output is run by 16c2a40's own CLI
(`python -m vmae_fast.cli` with PYTHONPATH=OLD_CHECKOUT), `--model random:small` (deterministic weights, nothing to
download), one part per video (`--part-rows 1`):

    local/  two static shards (--shard 0/2, then 1/2): parts part-00000-*, part-00001-*
    ray/    --engine ray, a local Ray cluster, groups of 3 videos: the driver's groups numbered from 1 under shard
            names (part-00001-*, part-00002-*, ...)

Then each is left as a run killed before its last commit leaves it: the errors part (broken.mp4's error row) is
removed, so that video is not committed and a resume must do it (and only it: the model computes nothing, ViT-S
would take seconds a clip on a shared CPU). Absolute paths of the machine that made them stay in the `path` column
(the tests do not read them).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
COMMON = ["--model", "random:small", "--part-rows", "1", "--commit-interval-s", "0.001", "--no-progress"]


def make_inputs(directory: Path) -> Path:
    """The inputs every output here was made from, with the same names (the tests call this too)."""
    sys.path.insert(0, str(REPO))
    from tests.helpers.videos import make_small_videos

    make_small_videos(directory)
    (directory / "broken.mp4").write_bytes(b"not a video\n" * 64)
    return directory


def old_cli(old: Path, *args: str) -> None:
    if not (old / "vmae_fast" / "kernels").exists():  # 16c2a40 installed kernels/ as vmae_fast.kernels (package-dir)
        (old / "vmae_fast" / "kernels").symlink_to(old / "kernels", target_is_directory=True)
    env = {**os.environ, "PYTHONPATH": str(old)}
    subprocess.run([sys.executable, "-m", "vmae_fast.cli", *args], env=env, check=True, cwd=tempfile.gettempdir())


def leave_as_killed(out: Path) -> list[str]:
    """Remove the errors parts (broken.mp4's row): the state a kill right before that commit leaves."""
    parts = sorted(p.name for p in (out / "errors").glob("part-*.parquet"))
    for name in parts:
        (out / "errors" / name).unlink()
    return parts


def main(old: Path) -> None:
    if not (old / "vmae_fast" / "pipeline.py").is_file():
        raise SystemExit(f"{old} is not a checkout of 16c2a40 (no vmae_fast/pipeline.py)")
    with tempfile.TemporaryDirectory() as tmp:
        videos = make_inputs(Path(tmp) / "videos")
        for name in ("local", "ray"):
            shutil.rmtree(HERE / name, ignore_errors=True)
        for shard in ("0/2", "1/2"):
            old_cli(old, "extract", str(videos), "-o", str(HERE / "local"), "--workers", "0", "--shard", shard,
                    *COMMON)
        old_cli(old, "extract", str(videos), "-o", str(HERE / "ray"), "--workers", "0", "--engine", "ray",
                "--ray-actors", "2", "--ray-cpus-per-actor", "1", "--ray-group-videos", "3", *COMMON)
    for name in ("local", "ray"):
        shutil.rmtree(HERE / name / "_locks")  # the runs released their locks: nothing of theirs is left there
        print(name, "removed", leave_as_killed(HERE / name))


if __name__ == "__main__":
    main(Path(sys.argv[1]).resolve())
