"""Fixtures of the retrieval tests: an extract output of four bundled sample videos with both indexes, and
`vmae-fast serve` running on it."""

from __future__ import annotations

import os
import shutil

import pytest

from vmae_fast import cli
from vmae_fast.demo import sample_dir, write_random_checkpoint

TINY = {"image_size": 32, "num_frames": 4, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
        "intermediate_size": 128}
SERVED_VIDEOS = ("orbit_red.mp4", "bars_scroll.mp4", "checker_spin.mp4", "orbit_red_copy.mp4", "bounce_blue.mp4")
SECRET = b"not a video: the server must never send this\n"


@pytest.fixture(scope="session")
def served_out(tmp_path_factory):
    """OUT of five sample videos (4.5 s each, 8 clips of 4 frames) copied to ROOT/videos and embedded by a tiny random
    checkpoint, with clip- and video-level indexes. Then, as an attacker with write access to the videos folder
    would: bounce_blue.mp4 (named by the rows) becomes a symlink to ROOT/outside/secret.txt, videos/escape a symlink
    to /, and videos/unlisted.mp4 a video no row names."""
    from vmae_fast.extraction import extract

    root = tmp_path_factory.mktemp("served")
    videos = root / "videos"
    videos.mkdir()
    for name in SERVED_VIDEOS:
        shutil.copy(sample_dir() / name, videos / name)
    model = write_random_checkpoint(root / "model", **TINY)
    out = root / "out"
    summary = extract([str(videos)], out, model=str(model), workers=0, progress=False)
    assert summary["videos_ok"] == len(SERVED_VIDEOS), summary
    assert cli.main(["index", str(out)]) == 0
    assert cli.main(["index", str(out), "--level", "video"]) == 0
    (root / "outside").mkdir()
    (root / "outside" / "secret.txt").write_bytes(SECRET)
    (videos / "bounce_blue.mp4").unlink()
    os.symlink(root / "outside" / "secret.txt", videos / "bounce_blue.mp4")
    os.symlink("/", videos / "escape")
    shutil.copy(sample_dir() / "plasma.mp4", videos / "unlisted.mp4")
    return out


@pytest.fixture(scope="session")
def server(served_out, tmp_path_factory):
    """`vmae-fast serve OUT --port 0 --max-upload-mb 1` in its own process; yields the Served (its .url)."""
    from tests.helpers.server import Served

    served = Served(served_out, "--max-upload-mb", "1", "--upload-timeout-s", "120",
                    log=tmp_path_factory.mktemp("serve-log") / "serve.log")
    yield served
    alive = served.alive()
    code = served.stop()
    assert alive, f"the server died during the tests: {served.log.read_text()[-3000:]}"
    assert code == 143, f"the server's exit status after SIGTERM was {code}: {served.log.read_text()[-3000:]}"
