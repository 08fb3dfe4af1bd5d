"""vmae_fast.video on real encoded files (tests/helpers/videos.py): sampling plans, both decoders, bad files,
DecodePool."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.helpers.videos import (
    BAD_STAGES,
    PERIOD,
    check_clips,
    edge_markers,
    frame_image,
    frame_number,
    independent_views,
    make_video,
    marker_width,
)
from vmae_fast.video import (
    VIDEO_EXTENSIONS,
    DecodePool,
    Sampling,
    VideoError,
    VideoTask,
    decode_clips,
    plan_clips,
)

T, S = 4, 32  # small clips keep the suite fast; the logic does not depend on the size
SAMPLING = Sampling(num_frames=T)
ZOO_NAMES = [
    "h264_bframes",
    "vp9",
    "hevc",
    "mjpeg",
    "h264_10bit",
    "hevc_10bit",
    "gray",
    "tiny",
    "hd1080",
    "portrait",
    "rotated",
    "vfr",
    "short",
    "audio",
    "non_ascii",
    "upper_ext",
    "nested",
]


# --- sampling plans --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fps,step", [(30, 4), (29.97, 4), (25, 3), (24, 3), (60, 8), (7.5, 1), (2, 1)])
def test_default_step_spaces_frames_about_1_over_7_5_s(fps, step):
    assert Sampling().step_for(fps) == step
    assert Sampling(fps=15).step_for(fps) == max(1, round(fps / 15))
    assert Sampling(frame_step=5).step_for(fps) == 5


def test_plan_sliding_uniform_stride_range_and_padding():
    ts = np.arange(100) / 30.0
    plans = plan_clips(ts, Sampling(num_frames=4))  # step 4, span 16 frames, clip needs 13
    assert [p.start_frame for p in plans] == [0, 16, 32, 48, 64, 80]
    assert plans[1].frame_indices.tolist() == [16, 20, 24, 28] and plans[1].end_frame == 29
    assert plans[1].end_s == pytest.approx(29 / 30)
    plans = plan_clips(ts, Sampling(num_frames=4, clip_stride_s=0.5))  # 15 frames: overlapping windows
    assert [p.start_frame for p in plans] == [0, 15, 30, 45, 60, 75]
    plans = plan_clips(ts, Sampling(num_frames=4, clips_per_video=3))
    assert [p.start_frame for p in plans] == [0, 44, 87]  # uniform over starts 0..87
    plans = plan_clips(ts, Sampling(num_frames=4), start_s=1.0, end_s=2.0)  # frames 30..59
    assert [p.start_frame for p in plans] == [30, 46] and plans[-1].last_frame <= 59
    plans = plan_clips(ts[:7], Sampling(num_frames=4))
    assert len(plans) == 1 and plans[0].frame_indices.tolist() == [0, 4, 4, 4] and plans[0].padded_frames == 2
    assert plans[0].end_s == pytest.approx(5 / 30)
    with pytest.raises(VideoError) as e:
        plan_clips(ts, Sampling(), start_s=10.0)
    assert e.value.stage == "sample" and "no frame" in str(e.value)


def test_plan_vfr_uses_timestamps():
    ts = np.cumsum([0] + [0.02, 0.1] * 30)  # 61 frames, average 60 ms apart (16.4 fps): step 2
    plans = plan_clips(ts, Sampling(num_frames=4, clip_stride_s=1.0))
    assert plans[0].frame_indices.tolist() == [0, 2, 4, 6]
    for p in plans:  # each window starts at the first frame at or after k * 1 s
        k = p.clip_index
        assert ts[p.start_frame] >= k - 1e-9 and (p.start_frame == 0 or ts[p.start_frame - 1] < k)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"num_frames": 0},
        {"frame_step": 0},
        {"frame_step": 2, "fps": 5.0},
        {"fps": -1.0},
        {"clip_stride_s": 1.0, "clips_per_video": 2},
        {"clips_per_video": 0},
        {"clip_stride_s": float("nan")},
        {"crops": 2},
        {"crops": 0},
        {"crops": True},
        {"crops": "3"},
    ],
)
def test_sampling_rejects_bad_values(kwargs):
    with pytest.raises(ValueError):
        Sampling(**kwargs)


def test_sampling_to_dict_and_task_defaults():
    assert Sampling().to_dict() == {
        "num_frames": 16,
        "frame_step": None,
        "fps": None,
        "clip_stride_s": None,
        "clips_per_video": None,
        "crops": 1,
    }
    task = VideoTask(Path("/x/a.mp4"))
    assert task.path == "/x/a.mp4" and task.video_id == "/x/a.mp4"
    with pytest.raises(ValueError):
        VideoTask("a.mp4", start_s=2.0, end_s=1.0)
    assert {".mp4", ".mkv", ".webm", ".avi", ".mov"} <= VIDEO_EXTENSIONS
    assert all(e == e.lower() and e.startswith(".") for e in VIDEO_EXTENSIONS)


# --- decoding real files ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["auto", "decord"])
@pytest.mark.parametrize("name", ZOO_NAMES)
def test_good_video_clips(zoo, name, backend):
    path, exp = zoo[name]
    info = {}
    clips = list(decode_clips(VideoTask(path), SAMPLING, S, backend, info=info))
    check_clips(clips, exp, SAMPLING)
    # PyAV is the default; with decord asked for, gray (decord expands it as limited range) and rotated files go
    # to PyAV
    expected_backend = "decord" if backend == "decord" and name not in ("gray", "rotated") else "pyav"
    assert info["backend"] == expected_backend


def test_display_rotation_is_applied(zoo):
    """A phone video coded landscape with a 90 degree display rotation comes out upright, as players (and the
    ffmpeg CLI's autorotate, i.e. np.rot90 counter-clockwise) show it."""
    path, exp = zoo["rotated"]
    assert exp.rotation == 90
    frame = next(decode_clips(VideoTask(path), SAMPLING, S)).frames[0].astype(np.float64)
    # coded: red grows left -> right, green top -> bottom; turned a quarter counter-clockwise: red falls
    # top -> bottom, green grows left -> right
    assert frame[:4, :, 0].mean() - frame[-4:, :, 0].mean() > 40
    assert frame[:, -4:, 1].mean() - frame[:, :4, 1].mean() > 40


def test_vfr_timestamps_come_from_pts(zoo):
    _, exp = zoo["vfr"]
    gaps = np.diff(exp.timestamps)
    assert gaps.min() < 0.025 and gaps.max() > 0.075  # really irregular
    for backend in ("decord", "pyav"):
        clips = list(decode_clips(VideoTask(exp.path), SAMPLING, S, backend))
        starts = [c.start_s for c in clips]
        assert np.allclose(starts, [exp.timestamps[c.start_frame] for c in clips], atol=1e-3)
        # index / fps would be off by far more than a frame somewhere
        assert max(abs(s - c.start_frame / exp.fps) for s, c in zip(starts, clips, strict=True)) > 0.05


def test_tiny_frames_fall_back_to_pyav(zoo):
    path, exp = zoo["tiny"]  # 16x16 decoded at its native size: decord's NDArray copy fails
    info = {}
    clips = list(decode_clips(VideoTask(path), SAMPLING, 16, "decord", info=info))
    assert info["backend"] == "pyav"
    check_clips(clips, exp, SAMPLING, image_size=16)


def test_reduced_size_decoders_agree(zoo):
    """decord scaling while decoding and PyAV's swscale bilinear give nearly the same 224 crop of a 1080p frame."""
    path, _ = zoo["hd1080"]
    a = next(decode_clips(VideoTask(path), SAMPLING, 224, "decord")).frames.astype(np.float64)
    b = next(decode_clips(VideoTask(path), SAMPLING, 224, "pyav")).frames.astype(np.float64)
    assert np.abs(a - b).mean() < 1.0  # measured 0.02 (uint8 units); different scalers would differ by several


def test_time_range_uniform_overlap_and_at_s(zoo):
    path, exp = zoo["h264_bframes"]  # 80 frames at 30 fps
    clips = list(decode_clips(VideoTask(path, start_s=1.0, end_s=2.0), SAMPLING, S))
    assert [c.start_frame for c in clips] == [30, 46]
    assert all(exp.timestamps[c.end_frame - 1] < 2.0 for c in clips)
    check = [frame_number(f) for f in clips[1].frames]
    assert check == [i % PERIOD for i in (46, 50, 54, 58)]
    clips = list(decode_clips(VideoTask(path), Sampling(num_frames=T, clips_per_video=3), S, "pyav"))
    assert [c.start_frame for c in clips] == [0, 34, 67]
    clips = list(decode_clips(VideoTask(path), Sampling(num_frames=T, frame_step=1, clip_stride_s=0.05), S))
    assert [c.start_frame for c in clips[:3]] == [0, 2, 3]  # ceil of k * 1.5 frames: overlapping windows
    assert all(frame_number(c.frames[0]) == c.start_frame % PERIOD for c in clips)
    (clip,) = decode_clips(VideoTask(path), SAMPLING, S, at_s=1.2)
    assert clip.start_s <= 1.2 < clip.end_s and clip.clip_index == 2
    # clip 2 covers [32/30, 45/30) s, clip 3 starts at 48/30 s: between them the nearest wins
    assert [c.clip_index for t in (1.55, 1.59) for c in decode_clips(VideoTask(path), SAMPLING, S, at_s=t)] == [2, 3]


def test_info_reports_the_duration_the_clips_are_sampled_from(zoo):
    """info["duration_s"] (the video table's duration_s): first frame to the end of the last one, by timestamps;
    of the time range when the task has one; VFR files by their PTS."""
    for name in ("h264_bframes", "vfr", "short"):
        path, exp = zoo[name]
        info = {}
        list(decode_clips(VideoTask(path), SAMPLING, S, info=info))
        if name == "vfr":  # the last frame lasts what the muxer recorded (20..80 ms here)
            assert 0.02 - 1e-3 <= info["duration_s"] - exp.timestamps[-1] <= 0.08 + 1e-3
        else:
            assert info["duration_s"] == pytest.approx(exp.duration, abs=1e-3), name
    info = {}
    list(decode_clips(VideoTask(zoo["h264_bframes"][0], start_s=1.0, end_s=2.0), SAMPLING, S, info=info))
    assert info["duration_s"] == pytest.approx(1.0, abs=1e-3)  # frames 30..59 at 30 fps


def test_short_video_is_padded(zoo):
    path, _ = zoo["short"]  # 10 frames, clip needs 13
    (clip,) = decode_clips(VideoTask(path), SAMPLING, S)
    assert clip.frame_indices.tolist() == [0, 4, 8, 8] and clip.padded_frames == 1
    assert [frame_number(f) for f in clip.frames] == [0, 4, 8, 8]
    assert clip.end_s == pytest.approx(9 / 30)


@pytest.mark.parametrize("name", sorted(BAD_STAGES))
def test_bad_file_raises_video_error(bad, name):
    with pytest.raises(VideoError) as e:
        list(decode_clips(VideoTask(bad[name]), SAMPLING, S))
    assert e.value.stage == BAD_STAGES[name], str(e.value)
    assert str(bad[name].name) in str(e.value) or name == "dangling_symlink"


def test_garbage_mid_stream_is_local(bad):
    """PyAV skips damaged packets and frames until the next keyframe; a wanted frame there fails the video (no
    partial output), while a time range before the damage decodes normally."""
    clips = list(decode_clips(VideoTask(bad["garbage_mid"], end_s=0.6), SAMPLING, S))
    assert [c.start_frame for c in clips] == [0]
    assert [frame_number(f) for f in clips[0].frames] == [0, 4, 8, 12]


def test_bad_arguments():
    with pytest.raises(ValueError, match="backend"):
        next(decode_clips(VideoTask("x.mp4"), SAMPLING, S, "opencv"))
    with pytest.raises(ValueError, match="image_size"):
        next(decode_clips(VideoTask("x.mp4"), SAMPLING, 0))
    with pytest.raises(ValueError, match="workers"):
        DecodePool(-1, SAMPLING, S)


def test_make_video_vfr_and_audio(tmp_path):
    exp = make_video(tmp_path / "x.mkv", frames=5, pts_ms=[0, 10, 50, 60, 200], audio=True)
    assert exp.timestamps == (0.0, 0.01, 0.05, 0.06, 0.2) and math.isclose(exp.fps, 4 / 0.2)
    # AAC priming makes decord's FFmpeg start this mkv's clock 21 ms before the first video frame; times are
    # seconds since the first video frame with either decoder. The last frame lasts what the muxer recorded.
    for backend in ("decord", "pyav"):
        (clip,) = decode_clips(VideoTask(exp.path), Sampling(num_frames=5, frame_step=1), S, backend)
        assert clip.start_s == 0.0 and clip.end_s == pytest.approx(0.2 + 1 / 30, abs=1e-3), backend  # 1 ms time base


@pytest.fixture(scope="session")
def gop10(tmp_path_factory):
    """120 frames at 30 fps with a keyframe every 10 frames (B-frames on): long gaps between uniform clips."""
    return make_video(tmp_path_factory.mktemp("gop") / "gop10.mp4", "h264_bframes", frames=120, options={"g": "10"})


def test_pyav_seeks_across_gaps_and_recovers_from_bad_seeks(gop10, monkeypatch):
    from vmae_fast.video import pyav_reader

    sampling = Sampling(num_frames=T, clips_per_video=2)  # frames 0..12 and 107..119: seek to keyframe 100
    seeks = []
    real_open = pyav_reader.PyAVReader._open_stream

    class CountingContainer:
        def __init__(self, container):
            self.container = container

        def seek(self, *args, **kwargs):
            seeks.append(args[0])
            return self.container.seek(*args, **kwargs)

        def demux(self, *args, **kwargs):
            return self.container.demux(*args, **kwargs)

        def close(self):
            self.container.close()

    def counting_open(self):
        container, stream = real_open(self)
        return CountingContainer(container), stream

    monkeypatch.setattr(pyav_reader.PyAVReader, "_open_stream", counting_open)
    clips = list(decode_clips(VideoTask(gop10.path), sampling, S, "pyav"))
    assert [c.start_frame for c in clips] == [0, 107] and len(seeks) == 1
    assert [frame_number(f) for f in clips[1].frames] == [i % PERIOD for i in (107, 111, 115, 119)]
    # a seek that lands past the wanted frame (here: a wrong keyframe table) turns seeking off, same frames
    monkeypatch.setattr(pyav_reader.PyAVReader, "_key_before", lambda self, index: min(index + 5, len(self.pts) - 1))
    again = list(decode_clips(VideoTask(gop10.path), sampling, S, "pyav"))
    assert [c.frame_indices.tolist() for c in again] == [c.frame_indices.tolist() for c in clips]
    assert all(np.array_equal(a.frames, b.frames) for a, b in zip(again, clips, strict=True))


def test_raw_stream_without_timestamps(tmp_path):
    """A raw H.264 elementary stream has no packet timestamps: frames are matched by order and timed by the
    stream's guessed rate (FFmpeg assumes 25 fps), decord cannot open it: PyAV."""
    make_video(tmp_path / "raw.h264", "h264_bframes", frames=40)
    info = {}
    clips = list(decode_clips(VideoTask(tmp_path / "raw.h264"), SAMPLING, S, info=info))
    assert info["backend"] == "pyav"
    assert [c.frame_indices.tolist() for c in clips] == [[0, 3, 6, 9], [12, 15, 18, 21], [24, 27, 30, 33]]
    assert [c.start_s for c in clips] == pytest.approx([0.0, 0.48, 0.96])
    assert all(frame_number(f) == i % PERIOD for c in clips for f, i in zip(c.frames, c.frame_indices, strict=True))


def test_non_square_pixels_use_the_display_aspect(tmp_path):
    """32x48 coded with 2:1 pixels is shown 64x48: the numbered square (8x8 coded) must come out twice as wide as
    tall with either decoder (ignoring the pixel aspect would keep it square)."""
    from fractions import Fraction

    import av

    path = tmp_path / "anamorphic.mp4"
    with av.open(str(path), "w") as c:
        stream = c.add_stream("libx264", rate=30, options={"crf": "8"})
        stream.width, stream.height, stream.pix_fmt = 32, 48, "yuv420p"
        stream.codec_context.sample_aspect_ratio = Fraction(2, 1)
        for i in range(13):
            frame = av.VideoFrame.from_ndarray(frame_image(i, 32, 48), format="rgb24")
            frame.pts = i
            for packet in stream.encode(frame):
                c.mux(packet)
        for packet in stream.encode():
            c.mux(packet)
    for backend in ("decord", "pyav"):
        frame = next(decode_clips(VideoTask(path), SAMPLING, 48, backend)).frames[0].astype(np.int64)
        dark = np.abs(frame - 24).max(axis=-1) < 20  # frame 0's square has level 24, the background >= 40
        rows, cols = np.flatnonzero(dark.any(axis=1)), np.flatnonzero(dark.any(axis=0))
        ratio = (cols.max() - cols.min() + 1) / (rows.max() - rows.min() + 1)
        assert 1.6 < ratio < 2.4, (backend, ratio)


# --- every returned frame is its planned source frame: ours vs a full decode ------------------------------------------
@pytest.fixture(scope="session")
def bframes_video(tmp_path_factory):
    """150 frames of H.264 with 3 B-frames and b-pyramid (x264's default structure: 43 frames are non-reference),
    a keyframe every 40 frames (seeks between uniform clips)."""
    return make_video(
        tmp_path_factory.mktemp("bfull") / "bframes.mp4",
        "h264_bframes",
        width=96,
        height=64,
        frames=150,
        options={"g": "40"},
    )


def full_decode(path, image_size: int) -> list[np.ndarray]:
    """Every frame decoded in order, nothing skipped, no seeking, one thread, then the same center-square scaling
    as the PyAV backend (so equality is pixel-exact when the frames decoded are the same)."""
    import av

    from vmae_fast.video.pyav_reader import _SquareScaler

    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        stream.codec_context.thread_count = 1
        scale = _SquareScaler(image_size, 1.0, stream.time_base)
        return [scale(frame) for frame in c.decode(stream)]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("case", ["sliding", "uniform", "overlap", "range", "at_s"])
def test_frames_equal_a_full_decode(bframes_video, case, threads):
    """Skipping unwanted non-reference frames, seeking across gaps and frame threads change no pixel: each clip
    frame equals frame frame_indices[j] of a decode of every frame. Fails if a shortcut drops, repeats or
    corrupts a frame (a wrong reference after a skip or a seek shows as different pixels)."""
    exp = bframes_video
    ref = full_decode(exp.path, S)
    assert len(ref) == exp.num_frames
    task, sampling, at_s = VideoTask(exp.path), SAMPLING, None
    if case == "uniform":  # gaps of ~40 frames between clips: seeks to keyframes
        sampling = Sampling(num_frames=T, clips_per_video=3)
    elif case == "overlap":
        sampling = Sampling(num_frames=T, frame_step=2, clip_stride_s=0.2)
    elif case == "range":
        task = VideoTask(exp.path, start_s=1.7, end_s=4.1)
    elif case == "at_s":
        at_s = 3.0
    info = {}
    clips = list(decode_clips(task, sampling, S, "pyav", threads=threads, at_s=at_s, info=info))
    assert clips
    for clip in clips:
        for j, idx in enumerate(clip.frame_indices.tolist()):
            if not np.array_equal(clip.frames[j], ref[idx]):
                diff = np.abs(clip.frames[j].astype(int) - ref[idx]).max()
                raise AssertionError(
                    f"{case}: clip {clip.clip_index} slot {j} (frame {idx}) differs from the full "
                    f"decode by up to {diff} levels"
                )
        assert [frame_number(f) for f in clip.frames] == [i % PERIOD for i in clip.frame_indices]
    # the shortcuts really ran: fewer frames decoded than a full decode up to the last frame used
    last = max(int(c.frame_indices.max()) for c in clips)
    assert info["frames_decoded"] < last + 1, (case, info)


def test_nonref_skip_and_seek_save_decoding(bframes_video):
    """The default sliding clips at step 4 skip a non-reference frame whenever no clip wants it; uniform clips seek."""
    from vmae_fast.video import pyav_reader

    info = {}
    list(decode_clips(VideoTask(bframes_video.path), SAMPLING, S, "pyav", info=info))
    skipped = info["frames_decoded"]
    pyav_reader._SKIP_NONREF = False
    try:
        list(decode_clips(VideoTask(bframes_video.path), SAMPLING, S, "pyav", info=info))
    finally:
        pyav_reader._SKIP_NONREF = True
    assert skipped < info["frames_decoded"] - 20, (skipped, info["frames_decoded"])  # 43 non-ref frames, 1/4 wanted


@pytest.mark.parametrize(
    "pts,depth",
    [([0, 1, 2, 3], 0), ([0, 3, 1, 2], 1), ([0, 4, 2, 1, 3], 2), ([0, 4, 2, 1, 3, 8, 6, 5, 7], 2), ([], 0), ([5], 0)],
)
def test_reorder_depth_from_packet_order(pts, depth):
    from vmae_fast.video.pyav_reader import reorder_depth

    assert reorder_depth(np.array(pts)) == depth


def test_reorder_depth_matches_the_decoders_probe(bframes_video):
    """The depth read from packet timestamps equals what FFmpeg finds by decoding when it probes the file, so
    opening without that probe loses no B-frame."""
    import av

    from vmae_fast.video.pyav_reader import PyAVReader

    with av.open(str(bframes_video.path)) as c:
        probed = c.streams.video[0].codec_context.reorder_depth
    assert PyAVReader(str(bframes_video.path), S).reorder_depth == probed == 2


# --- spatial crops (Sampling.crops): where each view lands, and every view against an independent decode --------------
CROP_CASES = {  # name: (coded width, height, display rotation)
    "landscape": (96, 48, 0),
    "portrait": (48, 96, 0),
    "rotated90": (96, 48, 90),
    "rotated270": (96, 48, 270),
}
# edge markers each crop_index shows (tests/helpers/videos.py: START_COLOR at the coded left / top, END_COLOR at the
# coded
# right / bottom). A 90 degree display rotation turns the coded frame a quarter counter-clockwise: its right edge
# becomes the top of the upright (portrait) frame, so the top crop shows the END band; 270: the left edge is on top.
CROP_MARKERS = {
    "landscape": {0: {"left": "start"}, 1: {}, 2: {"right": "end"}},
    "portrait": {0: {"top": "start"}, 1: {}, 2: {"bottom": "end"}},
    "rotated90": {0: {"top": "end"}, 1: {}, 2: {"bottom": "start"}},
    "rotated270": {0: {"top": "start"}, 1: {}, 2: {"bottom": "end"}},
}
CROPS3 = Sampling(num_frames=T, crops=3)


@pytest.fixture(scope="session")
def crop_videos(tmp_path_factory):
    d = tmp_path_factory.mktemp("crops")
    return {
        name: make_video(d / f"{name}.mp4", "h264_bframes", width=w, height=h, frames=40, rotation=r, markers=True)
        for name, (w, h, r) in CROP_CASES.items()
    }


@pytest.mark.parametrize("backend", ["pyav", "decord", "torchcodec"])
@pytest.mark.parametrize("name", sorted(CROP_CASES))
def test_three_crops_land_at_the_start_center_and_end_of_the_long_side(crop_videos, name, backend, request):
    """Landscape: left / center / right; portrait: top / center / bottom; a rotated phone video is cut after turning
    upright. The center view is the one a single crop gives (frame numbers readable, no band)."""
    if backend == "torchcodec":
        request.getfixturevalue("fake_torchcodec")
    exp = crop_videos[name]
    clips = list(decode_clips(VideoTask(exp.path), CROPS3, S, backend))
    plans = plan_clips(np.array(exp.timestamps), SAMPLING)
    assert [(c.clip_index, c.crop_index) for c in clips] == [(p.clip_index, k) for p in plans for k in (0, 1, 2)]
    for clip in clips:
        for j, frame in enumerate(clip.frames):
            assert edge_markers(frame) == CROP_MARKERS[name][clip.crop_index], (
                name,
                clip.clip_index,
                clip.crop_index,
                j,
            )
        if clip.crop_index == 1:
            assert [frame_number(f) for f in clip.frames] == [i % PERIOD for i in clip.frame_indices]
    # the views of one clip share everything else
    for a, b, c in zip(clips[0::3], clips[1::3], clips[2::3], strict=True):
        fields = [
            (x.start_frame, x.end_frame, x.start_s, x.end_s, x.padded_frames, x.frame_indices.tolist())
            for x in (a, b, c)
        ]
        assert fields[0] == fields[1] == fields[2]
    (single,) = [c for c in decode_clips(VideoTask(exp.path), SAMPLING, S, backend)][:1]
    assert single.crop_index == 1 and edge_markers(single.frames[0]) == {}
    # one crop scales only the center square, three scale the whole frame once: the same view within resampling
    assert np.abs(single.frames.astype(np.float64) - clips[1].frames).mean() < 2.0


@pytest.mark.parametrize("resize", [None, 40], ids=["resize-S", "resize-40"])
@pytest.mark.parametrize("crops", [1, 3])
@pytest.mark.parametrize("name", sorted(CROP_CASES))
def test_every_view_equals_an_independent_decode_and_crop(crop_videos, name, crops, resize):
    """PyAV backend (skipping, seeking, frame threads): each view of each clip is pixel-identical to the test's own
    full decode, turn and crop (independent_views): a view cut from the wrong place, the wrong frame or before
    turning upright differs. resize 40 > S: V-JEPA 2's geometry (short side scaled to 40, then S x S crops centered
    across it)."""
    exp = crop_videos[name]
    ref = independent_views(exp, S, crops, resize)
    sampling = Sampling(num_frames=T, clips_per_video=3, crops=crops, resize=resize)
    clips = list(decode_clips(VideoTask(exp.path), sampling, S, "pyav", threads=2))
    assert len(clips) == 3 * crops
    order = (1,) if crops == 1 else (0, 1, 2)
    for clip in clips:
        v = order.index(clip.crop_index)
        for j, idx in enumerate(clip.frame_indices.tolist()):
            expected = ref[idx][v]
            if not np.array_equal(clip.frames[j], expected):
                diff = np.abs(clip.frames[j].astype(int) - expected).max()
                raise AssertionError(
                    f"{name} crops={crops} resize={resize}: clip {clip.clip_index} crop {clip.crop_index} slot {j} "
                    f"(frame {idx}) differs from the independent crop by up to {diff} levels"
                )


@pytest.mark.parametrize("backend", ["decord", "torchcodec"])
@pytest.mark.parametrize("name", ["landscape", "portrait"])
def test_resize_before_the_crop_with_every_backend(crop_videos, name, backend, request):
    """Sampling.resize (V-JEPA 2's short side before the crop) through decord and torchcodec: the same view as the
    PyAV path within resampling differences (each scales with its own filter), for one crop and three; and it is a
    zoomed view, not the center square at S (which differs by far more)."""
    if backend == "torchcodec":
        request.getfixturevalue("fake_torchcodec")
    exp = crop_videos[name]
    for crops in (1, 3):
        sampling = Sampling(num_frames=T, clips_per_video=2, crops=crops, resize=40)
        want = list(decode_clips(VideoTask(exp.path), sampling, S, "pyav"))
        got = list(decode_clips(VideoTask(exp.path), sampling, S, backend))
        assert [(c.clip_index, c.crop_index) for c in got] == [(c.clip_index, c.crop_index) for c in want]
        for a, b in zip(got, want, strict=True):
            diff = np.abs(np.asarray(a.frames, np.float64) - b.frames).mean()
            assert diff < 4.0, f"{backend} {name} crops={crops} view {b.crop_index}: mean abs diff {diff:.2f} levels"
    square = next(decode_clips(VideoTask(exp.path), Sampling(num_frames=T, clips_per_video=2), S, "pyav"))
    zoomed = next(decode_clips(VideoTask(exp.path), Sampling(num_frames=T, clips_per_video=2, resize=40), S, "pyav"))
    assert np.abs(square.frames.astype(np.float64) - zoomed.frames).mean() > 4.0


@pytest.mark.parametrize("size", [(288, 160), (160, 288)], ids=["landscape", "portrait"])
def test_resize_follows_transformers_processor_geometry(tmp_path, size):
    """Sampling.resize is VJEPA2VideoProcessor's geometry, written here from transformers' and torchvision's rules:
    short side R, long side int(R * long / short) (get_resize_output_image_size), the crop at
    int(round((L - S) / 2)) (torchvision's center_crop), resized with antialiased bilinear (torchvision on tensors).
    Only the filter differs (swscale's bilinear): about one intensity level on average (measured 1.07-1.15); the crop
    one pixel off is worse by 1.2-1.6x (what the floor offset gave before: 33 where torchvision takes 34 here, 131
    where it takes 132 for 1280x720 -> 292 -> 256)."""
    import av
    import torch
    import torch.nn.functional as F

    w, h = size
    exp = make_video(tmp_path / "v.mp4", "h264", width=w, height=h, frames=8)
    crop, resize = 64, int(64 * 256 / 224)  # 73: 131.4 x 73 -> 131 x 73, center offset round(33.5) = 34, not 33
    clip = next(decode_clips(VideoTask(exp.path), Sampling(num_frames=2, frame_step=3, resize=resize), crop))
    with av.open(str(exp.path)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    for j, idx in enumerate(clip.frame_indices.tolist()):
        img = torch.from_numpy(frames[idx]).permute(2, 0, 1)[None].float()
        nh, nw = (resize, int(resize * w / h)) if h <= w else (int(resize * h / w), resize)
        r = F.interpolate(img, size=(nh, nw), mode="bilinear", antialias=True).round().clamp(0, 255)[0]
        top, left = int(round((nh - crop) / 2.0)), int(round((nw - crop) / 2.0))

        def diff(dy, dx, j=j, r=r, top=top, left=left):
            ref = r[:, top + dy : top + dy + crop, left + dx : left + dx + crop].permute(1, 2, 0).numpy()
            return np.abs(clip.frames[j].astype(np.float64) - ref).mean()
        aligned = diff(0, 0)
        shifted = min(diff(0, -1), diff(0, 1)) if w > h else min(diff(-1, 0), diff(1, 0))
        assert aligned < 2.5, f"{size} frame {idx}: mean abs diff {aligned:.2f} levels"
        print(f"{size} frame {idx}: aligned {aligned:.2f}, one pixel off {shifted:.2f} levels")
        assert shifted > 1.15 * aligned, f"{size} frame {idx}: one pixel off {shifted:.2f} vs aligned {aligned:.2f}"


def test_resize_smaller_than_the_crop_is_refused(crop_videos):
    with pytest.raises(ValueError, match="sampling.resize 24 .* must be >= image_size 32"):
        next(decode_clips(VideoTask(crop_videos["landscape"].path), Sampling(num_frames=T, resize=24), S))
    with pytest.raises(ValueError, match="resize must be an int >= 1"):
        Sampling(resize=0)
    assert "resize" not in Sampling().to_dict() and Sampling(resize=292).to_dict()["resize"] == 292


def test_three_crops_of_a_wide_frame_and_a_square_one():
    """Geometry at full size: a 16:9 frame's crops start at x = 0, 87, 174 of its 398 x 224 resize (the end crop
    touches the right edge); a square frame gives the same view three times; the marker bands sit outside the center
    square on both orientations."""
    from vmae_fast.video.crop import CROP_INDICES, crop_offsets, views

    assert crop_offsets(398, 224, 3) == [0, 87, 174] and crop_offsets(398, 224, 1) == [87]
    assert CROP_INDICES == {1: (1,), 3: (0, 1, 2)}
    frame = np.arange(224 * 398 * 3, dtype=np.int64).reshape(224, 398, 3)
    a, b, c = views(frame, 224, 3)
    assert a[0, 0, 0] == frame[0, 0, 0] and b[0, 0, 0] == frame[0, 87, 0] and c[-1, -1, 2] == frame[-1, -1, 2]
    assert all(
        np.array_equal(v, views(frame.transpose(1, 0, 2), 224, 3)[k].transpose(1, 0, 2))
        for k, v in enumerate((a, b, c))
    )  # portrait: the same along the rows
    square = np.zeros((224, 224, 3), np.uint8)
    assert all(v.shape == (224, 224, 3) for v in views(square, 224, 3))
    b = marker_width(96, 48)
    assert 0 < b < (96 - 48) // 2  # inside the start / end crops, outside the center square


def test_decord_failing_mid_way_continues_with_pyav_without_repeating_a_view(crop_videos, monkeypatch):
    """decord dies after some clips' views were yielded: PyAV goes on from the next view, no view twice, none
    missing, and they are PyAV's views of the same frames."""
    from vmae_fast.video import decord_reader

    real = decord_reader.DecordReader.frames

    def dying(self, indices, crops=1):
        for n, item in enumerate(real(self, indices, crops)):
            if n == 6:  # clip 1's frames are not all in: clip 0's three views were yielded
                raise RuntimeError("decord: simulated failure mid-way")
            yield item

    monkeypatch.setattr(decord_reader.DecordReader, "frames", dying)
    exp = crop_videos["landscape"]
    info = {}
    clips = list(decode_clips(VideoTask(exp.path), CROPS3, S, "decord", info=info))
    assert info["backend"] == "pyav"
    plans = plan_clips(np.array(exp.timestamps), SAMPLING)
    assert [(c.clip_index, c.crop_index) for c in clips] == [(p.clip_index, k) for p in plans for k in (0, 1, 2)]
    pyav = list(decode_clips(VideoTask(exp.path), CROPS3, S, "pyav"))
    assert len(clips) == len(pyav) == 6
    assert all(np.array_equal(a.frames, b.frames) for a, b in zip(clips[3:], pyav[3:], strict=True))


def test_at_s_with_three_crops_gives_the_three_views_of_that_clip(crop_videos):
    exp = crop_videos["portrait"]
    clips = list(decode_clips(VideoTask(exp.path), CROPS3, S, at_s=0.6))
    assert [(c.clip_index, c.crop_index) for c in clips] == [(1, 0), (1, 1), (1, 2)]


# --- torchcodec backend and --decode-device: as far as a CPU box without torchcodec allows ----------------------------
FAKE_TORCHCODEC = '''
"""A stand-in for torchcodec.decoders.VideoDecoder (the calls vmae_fast makes), decoding every frame with PyAV:
it tests vmae_fast's torchcodec glue on a machine where torchcodec itself cannot load, not torchcodec."""
import types

import av
import numpy as np
import torch

SHIFT = 0  # tests set 1 to hand back the next frame: a decoder that gets frame numbers wrong
DEVICES = []  # the device of every decoder made


class VideoDecoder:
    def __init__(self, path, *, stream_index=None, dimension_order="NCHW", num_ffmpeg_threads=1, device="cpu",
                 seek_mode="exact"):
        assert dimension_order == "NHWC" and seek_mode == "exact"
        with av.open(str(path)) as c:
            s = c.streams.video[0] if stream_index is None else c.streams[stream_index]
            frames = list(c.decode(s))
        # like torchcodec versions whose metadata has `rotation`: frames come upright
        self._rgb = [np.ascontiguousarray(np.rot90(f.to_ndarray(format="rgb24"), round((f.rotation or 0) / 90) % 4))
                     for f in frames]
        self._pts = [float(f.pts * f.time_base) for f in frames]
        self.metadata = types.SimpleNamespace(rotation=frames[0].rotation if frames else 0, num_frames=len(frames))
        DEVICES.append(device)
        self.device = "cpu"  # no GPU here: frames stay on the CPU whatever was asked

    def __len__(self):
        return len(self._rgb)

    def get_frames_at(self, indices):
        idx = [min(i + SHIFT, len(self._rgb) - 1) for i in indices]
        data = torch.stack([torch.from_numpy(self._rgb[i]) for i in idx]).to(self.device)
        pts = torch.tensor([self._pts[i] for i in idx], dtype=torch.float64)
        return types.SimpleNamespace(data=data, pts_seconds=pts, duration_seconds=torch.zeros_like(pts))
'''


@pytest.fixture()
def fake_torchcodec(tmp_path, monkeypatch):
    pkg = tmp_path / "fake" / "torchcodec"
    (pkg / "decoders").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "decoders" / "__init__.py").write_text(FAKE_TORCHCODEC)
    monkeypatch.syspath_prepend(str(tmp_path / "fake"))
    for name in [m for m in sys.modules if m == "torchcodec" or m.startswith("torchcodec.")]:
        monkeypatch.delitem(sys.modules, name)
    import torchcodec.decoders

    return torchcodec.decoders


@pytest.mark.parametrize(
    "device,backend,error",
    [
        ("gpu", "auto", ValueError),
        ("cuda:x", "auto", ValueError),
        ("cuda:0", "pyav", ValueError),
        ("cuda", "decord", ValueError),
        (None, "auto", ValueError),
    ],
)
def test_decode_device_bad_arguments(zoo, device, backend, error):
    with pytest.raises(error, match="decod"):
        next(decode_clips(VideoTask(zoo["h264_bframes"][0]), SAMPLING, S, backend, device=device))


def test_decode_device_cuda_without_torchcodec_or_gpu(zoo, fake_torchcodec, monkeypatch):
    """The environment is at fault, not the video: RuntimeError (extract stops with one line), naming what is
    missing; first torchcodec, then the GPU."""
    path = zoo["h264_bframes"][0]
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="no CUDA device"):
        next(decode_clips(VideoTask(path), SAMPLING, S, device="cuda"))
    monkeypatch.setitem(sys.modules, "torchcodec.decoders", None)  # import fails, as with a CPU-only torch
    with pytest.raises(RuntimeError, match="torchcodec") as e:
        next(decode_clips(VideoTask(path), SAMPLING, S, device="cuda"))
    assert "\n" not in str(e.value)
    with pytest.raises(RuntimeError, match="torchcodec"):
        next(decode_clips(VideoTask(path), SAMPLING, S, "torchcodec"))


@pytest.mark.parametrize("name", ["h264_bframes", "vfr", "portrait", "short", "hevc"])
def test_torchcodec_backend_follows_the_shared_plan(zoo, fake_torchcodec, name):
    """Same clips, indices and times as the PyAV backend (one plan for all backends); frames agree up to the two
    bilinear resizers (torch antialiased vs swscale)."""
    path, exp = zoo[name]
    info = {}
    clips = list(decode_clips(VideoTask(path), SAMPLING, S, "torchcodec", info=info))
    assert info["backend"] == "torchcodec"
    check_clips(clips, exp, SAMPLING)
    ref = list(decode_clips(VideoTask(path), SAMPLING, S, "pyav"))
    for a, b in zip(clips, ref, strict=True):
        assert (a.start_s, a.end_s) == (b.start_s, b.end_s)
        assert np.abs(a.frames.astype(np.float64) - b.frames).mean() < 2.0


def test_torchcodec_wrong_frame_is_an_error(zoo, fake_torchcodec, monkeypatch):
    """A decoder handing back another frame than the planned one (by PTS) fails the video, never embeds it."""
    monkeypatch.setattr(fake_torchcodec, "SHIFT", 1)
    with pytest.raises(VideoError, match="planned") as e:
        list(decode_clips(VideoTask(zoo["h264_bframes"][0]), SAMPLING, S, "torchcodec"))
    assert e.value.stage == "decode"


def test_square_resize_matches_swscale(zoo):
    """The torch resize used on the GPU (center square, bilinear, antialiased) vs the PyAV backend's swscale on the
    same decoded 1080p frames: the same crop, within resampling differences."""
    import av
    import torch

    from vmae_fast.video.pyav_reader import _SquareScaler
    from vmae_fast.video.torchcodec_reader import square_resize

    with av.open(str(zoo["hd1080"][0])) as c:
        stream = c.streams.video[0]
        frames = [f for _, f in zip(range(3), c.decode(stream), strict=False)]  # the first 3 frames
        scale = _SquareScaler(224, 1.0, stream.time_base)
        ref = np.stack([scale(f) for f in frames]).astype(np.float64)
    rgb = torch.from_numpy(np.stack([f.to_ndarray(format="rgb24") for f in frames]))
    out = square_resize(rgb, 224)
    assert out.shape == (3, 224, 224, 3) and out.dtype == torch.uint8
    assert np.abs(out.numpy() - ref).mean() < 1.5


def test_extract_with_a_decoder_that_cannot_load_stops_in_one_line(zoo, tmp_path, capsys, monkeypatch):
    """`--decode-backend torchcodec` where torchcodec does not load (not installed, or the PyPI wheel beside a
    CPU-only torch) is the environment's fault: exit 2 with one line naming it, before anything is written, never
    an error row per video."""
    from vmae_fast.cli import main

    monkeypatch.setitem(sys.modules, "torchcodec.decoders", None)  # its import fails, whatever is installed
    out = tmp_path / "out"
    assert main(["extract", str(zoo["short"][0]), "-o", str(out), "--decode-backend", "torchcodec"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "torchcodec" in err[0] and not out.exists(), err


def _nvdec_missing() -> str | None:
    import torch

    from vmae_fast.video.torchcodec_reader import status

    if not torch.cuda.is_available():
        return "needs a CUDA GPU (NVDEC)"
    why = status()
    return f"needs torchcodec: {why}" if why else None


@pytest.mark.skipif(_nvdec_missing() is not None, reason=str(_nvdec_missing()))
@pytest.mark.parametrize("name", ["h264_bframes", "hd1080", "vfr", "hevc"])
def test_nvdec_clips_follow_the_plan(zoo, name):
    """GPU only (owed where there is none): NVDEC through torchcodec gives the clips of the CPU path (same plan,
    frame numbers, times), frames on the GPU, within resampling differences of PyAV's."""
    import torch

    path, exp = zoo[name]
    size = 224 if name == "hd1080" else S
    clips = list(decode_clips(VideoTask(path), SAMPLING, size, device="cuda"))
    ref = list(decode_clips(VideoTask(path), SAMPLING, size, "pyav"))
    assert [c.frame_indices.tolist() for c in clips] == [c.frame_indices.tolist() for c in ref]
    for a, b in zip(clips, ref, strict=True):
        assert isinstance(a.frames, torch.Tensor) and a.frames.is_cuda and a.frames.dtype == torch.uint8
        assert (a.start_s, a.end_s) == (b.start_s, b.end_s)
        assert np.abs(a.frames.cpu().numpy().astype(np.float64) - b.frames).mean() < 3.0
    if size == S:
        check_clips([type(c)(**{**c.__dict__, "frames": c.frames.cpu().numpy()}) for c in clips], exp, SAMPLING)


@pytest.mark.parametrize("device,missing", [("cuda", "torchcodec"), ("gpu0", "cpu"), ("cuda", "no CUDA device")])
def test_extract_decode_device_checks_first(zoo, tmp_path, capsys, monkeypatch, fake_torchcodec, device, missing):
    """`vmae-fast extract --decode-device` validates before anything runs: a malformed device, torchcodec that does
    not load, or no GPU each end the command with one line (exit 2), nothing written."""
    import torch

    from vmae_fast.cli import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    if missing == "torchcodec":
        monkeypatch.setitem(sys.modules, "torchcodec.decoders", None)
    out = tmp_path / "out"
    assert main(["extract", str(zoo["short"][0]), "-o", str(out), "--decode-device", device]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and missing in err[0] and not out.exists(), err


def test_extract_decode_device_runs_decoding_in_process_on_that_device(zoo, tmp_path, fake_torchcodec, monkeypatch):
    """The wiring of --decode-device (a CPU box can test no more): the device check passed, extract decodes in this
    process (no workers: GPU frames must not cross processes) through torchcodec asked for that device, and writes
    the clips PyAV's plan gives."""
    from tests.helpers.hf_checkpoints import make_checkpoint
    from vmae_fast import extract
    from vmae_fast.store import read_clips
    from vmae_fast.video import decode

    monkeypatch.setattr(decode, "check_device", lambda device, backend: None)  # pretend torchcodec + a GPU
    ckpt = make_checkpoint(tmp_path / "tiny", kind="classification", seed=3)
    path = zoo["h264_bframes"][0]
    summary = extract([path], tmp_path / "out", model=ckpt, decode_device="cuda:0", progress=False)
    assert fake_torchcodec.DEVICES == ["cuda:0"] and summary["workers"] == 0 and summary["clips"] > 0
    rows = read_clips(tmp_path / "out").to_pylist()
    assert len(rows) == summary["clips"]
