"""Long files are not hangs: the decode watchdog tells a file that is slow to index from a stalled decoder.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]



# --- 5. long files are not hangs -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def long_video(tmp_path_factory) -> Path:
    """Four hours of a 32x32 gray frame at 30 fps (432k packets, ~6 MB, made in ~3 s): opening it (the demux pass
    that reads every packet's timestamp) takes 2-6 s, longer than the watchdog's timeout below."""

    path = tmp_path_factory.mktemp("long") / "four_hours.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "color=c=gray:size=32x32:rate=30", "-t", "14400",
                    "-c:v", "libx264", "-preset", "ultrafast", "-g", "600", "-bf", "0", str(path)], check=True)
    return path


def test_a_long_file_outlasting_the_timeout_is_decoded_and_a_stalled_one_is_not(long_video, tmp_path):

    from tests.helpers.pool_faults import decode_with_faults
    from vmae_fast.video import DecodePool, DoneEvent, ErrorEvent, Sampling, VideoTask
    from vmae_fast.video.pyav_reader import PyAVReader

    t0 = time.perf_counter()
    reader = PyAVReader(str(long_video), 32, 1)
    open_s = time.perf_counter() - t0
    assert len(reader.timestamps) == 432_000
    # a quarter of the open's time (slower under load, like everything the worker does between two ticks)
    timeout_s = max(0.5, open_s / 4)
    stalled = tmp_path / "stalled_vmae-test-hang.mp4"  # decodes one clip, then hangs: still killed
    stalled.symlink_to(long_video)
    sampling = Sampling(num_frames=4, clips_per_video=2)
    with DecodePool(1, sampling, 32, timeout_s=timeout_s, max_attempts=1, decode=decode_with_faults) as pool:
        events = [e for e in pool.run([VideoTask(long_video), VideoTask(stalled)])
                  if isinstance(e, (DoneEvent, ErrorEvent))]
        replaced = pool.replaced
    by_name = {Path(e.task.path).name: e for e in events}
    assert isinstance(by_name[long_video.name], DoneEvent) and by_name[long_video.name].num_clips == 2, by_name
    assert isinstance(by_name[stalled.name], ErrorEvent) and "no progress" in by_name[stalled.name].error
    assert replaced == 1  # the stalled worker, not the one reading a long file
