"""Keep policies: spellings, canonical specs, the tube pattern, motion ranking, and packing into cu_seqlens."""

from __future__ import annotations

import pytest
import torch

from vmae_fast import VideoMAEConfig
from vmae_fast._options import parse_keep_spelling
from vmae_fast.tokens import KeepAll, MotionKeep, TubeKeep, pack, parse_keep

CONFIG = VideoMAEConfig(image_size=64, patch_size=16, num_frames=8)  # grid (4, 4, 4), 64 tokens


@pytest.mark.parametrize("text, spec, policy", [
    ("all", "all", KeepAll()),
    ("tube:0.5", "tube:0.5", TubeKeep(0.5)),
    (" Tube:0.50 ", "tube:0.5", TubeKeep(0.5)),
    ("tube:0.25:random", "tube:0.25:random:0", TubeKeep(0.25, random=True)),
    ("tube:0.25:random:7", "tube:0.25:random:7", TubeKeep(0.25, random=True, seed=7)),
    ("motion:0.5", "motion:0.5", MotionKeep(ratio=0.5)),
    ("motion:t=0.02", "motion:t=0.02", MotionKeep(threshold=0.02)),
])
def test_parse_keep_and_canonical_spec(text, spec, policy):
    parsed = parse_keep(text)
    assert parsed == policy and parsed.spec == spec and str(parsed) == spec
    assert parse_keep(parsed.spec) == parsed  # the recorded spec parses back to the same policy
    assert parse_keep_spelling(text).spec == spec  # the torch-free grammar a Ray driver checks a run's keep with


def test_parse_keep_none_and_objects():
    assert parse_keep(None) is None
    policy = TubeKeep(0.5)
    assert parse_keep(policy) is policy


@pytest.mark.parametrize("text, error, message", [
    ("tube:0", ValueError, r"ratio must be in \(0, 1\]"),
    ("tube:1.5", ValueError, r"ratio must be in \(0, 1\]"),
    ("tube:half", ValueError, "bad keep policy 'tube:half'"),
    ("tube:0.5:grid", ValueError, "unknown keep policy"),
    ("motion:t=-1", ValueError, "threshold must be >= 0"),
    ("motion", ValueError, "unknown keep policy"),
    ("random", ValueError, "expected one of 'all', 'tube:R'"),
    (0.5, TypeError, "got float"),
])
def test_parse_keep_errors(text, error, message):
    with pytest.raises(error, match=message):
        parse_keep(text)
    if isinstance(text, str):  # the torch-free grammar refuses it with the same message
        with pytest.raises(error, match=message):
            parse_keep_spelling(text)


@pytest.mark.parametrize("make, message", [
    (lambda: TubeKeep(0.0), r"tube keep ratio must be in \(0, 1\], got 0.0"),
    (lambda: TubeKeep(1.5), r"tube keep ratio must be in \(0, 1\], got 1.5"),
    (lambda: MotionKeep(ratio=float("nan")), r"motion keep ratio must be in \(0, 1\], got nan"),
    (lambda: MotionKeep(threshold=-1.0), "motion threshold must be >= 0, got -1.0"),
    (lambda: MotionKeep(), "exactly one of ratio or threshold"),
])
def test_policies_made_directly_check_their_numbers(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def frames(batch: int = 2, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, 8, 64, 64, 3), dtype=torch.uint8, generator=g)


def test_tube_grid_is_a_checkerboard_repeated_in_every_time_slice():
    keep = TubeKeep(0.5).mask(frames(), CONFIG)  # (2, 64)
    assert keep.shape == (2, 64) and keep.dtype == torch.bool
    slices = keep.view(2, 4, 4, 4)  # (B, t, h, w)
    h, w = torch.meshgrid(torch.arange(4), torch.arange(4), indexing="ij")
    assert torch.equal(slices[0, 0], (h + w) % 2 == 0)
    assert torch.equal(slices, slices[:1, :1].expand_as(slices))  # same positions in every slice and clip


@pytest.mark.parametrize("ratio, per_slice", [(0.25, 4), (0.3, 5), (0.75, 12), (1.0, 16), (0.01, 1)])
def test_tube_counts(ratio, per_slice):
    for policy in (TubeKeep(ratio), TubeKeep(ratio, random=True, seed=3)):
        keep = policy.mask(frames(), CONFIG)
        assert keep.view(2, 4, 16).sum(-1).eq(per_slice).all(), policy.spec


def test_tube_quarter_grid_spreads_evenly():
    keep = TubeKeep(0.25).mask(frames(1), CONFIG).view(4, 4, 4)[0]
    h, w = torch.meshgrid(torch.arange(4), torch.arange(4), indexing="ij")
    assert torch.equal(keep, (h % 2 == 0) & (w % 2 == 0))  # every other row and column


def test_tube_random_is_seeded():
    a = TubeKeep(0.5, random=True, seed=1).mask(frames(), CONFIG)
    b = TubeKeep(0.5, random=True, seed=1).mask(frames(3, seed=9), CONFIG)
    c = TubeKeep(0.5, random=True, seed=2).mask(frames(), CONFIG)
    assert torch.equal(a[0], b[0]) and torch.equal(b[0], b[2]) and not torch.equal(a[0], c[0])


def moving_square_clip() -> torch.Tensor:
    """(1, 8, 64, 64, 3) uint8: a static gray background, a bright 16x16 square in the top-left patch of every
    frame from frame 4 on (time slices 2 and 3), nothing else changes."""
    clip = torch.full((1, 8, 64, 64, 3), 100, dtype=torch.uint8)
    clip[0, 4:, :16, :16] = 250
    return clip


def test_motion_keeps_the_first_slice_then_what_changed():
    clip = moving_square_clip()
    scores = MotionKeep(ratio=0.5).scores(clip, CONFIG).view(4, 4, 4)
    assert torch.isinf(scores[0]).all()  # no predecessor: ranked first
    assert scores[2, 0, 0] == pytest.approx(150 / 255) and scores[3, 0, 0] == 0 and scores[1].eq(0).all()
    keep = MotionKeep(threshold=0.1).mask(clip, CONFIG).view(4, 4, 4)
    assert keep[0].all() and keep[2, 0, 0] and keep.sum() == 17  # first slice + the square's appearance
    ratio_keep = MotionKeep(ratio=17 / 64).mask(clip, CONFIG)
    assert torch.equal(ratio_keep, keep.view(1, 64))


def test_motion_small_ratio_keeps_at_least_one_and_normalized_input_agrees():
    clip = moving_square_clip()
    assert MotionKeep(ratio=0.001).mask(clip, CONFIG).sum() == 1
    mean = torch.tensor(CONFIG.image_mean).view(1, 1, 3, 1, 1)
    std = torch.tensor(CONFIG.image_std).view(1, 1, 3, 1, 1)
    normalized = (clip.permute(0, 1, 4, 2, 3).float() / 255 - mean) / std  # (B, T, 3, H, W)
    a = MotionKeep(ratio=0.3).scores(clip, CONFIG)
    b = MotionKeep(ratio=0.3).scores(normalized, CONFIG)
    assert torch.allclose(a, b, atol=1e-6)  # thresholds mean the same for uint8 and float frames


def test_pack_rows_with_different_counts():
    keep = torch.zeros(3, 6, dtype=torch.bool)
    keep[0, [1, 4]] = True
    keep[1, :] = True
    keep[2, 5] = True
    token_ids, cu_seqlens, max_seqlen = pack(keep)
    assert token_ids.tolist() == [1, 4, 6, 7, 8, 9, 10, 11, 17] and token_ids.dtype == torch.int64
    assert cu_seqlens.tolist() == [0, 2, 8, 9] and cu_seqlens.dtype == torch.int32 and max_seqlen == 6


# --- sync-free selection for fixed-count policies ----------------------------------------------------------------


def float_frames(batch: int = 2, seed: int = 0) -> torch.Tensor:
    """Normalized (B, T, 3, H, W) frames of the same clips as frames()."""
    x = frames(batch, seed).permute(0, 1, 4, 2, 3).float() / 255
    mean = torch.tensor(CONFIG.image_mean).view(1, 1, 3, 1, 1)
    std = torch.tensor(CONFIG.image_std).view(1, 1, 3, 1, 1)
    return (x - mean) / std


POLICIES = ["tube:0.5", "tube:0.3:random:3", "tube:0.01", "tube:1", "motion:0.4", "motion:0.001", "motion:1",
            "motion:t=0.1"]
CONFIGS = {"64px-8f": CONFIG, "48px-t1": VideoMAEConfig(image_size=48, patch_size=16, num_frames=3, tubelet_size=1),
           "56px-p14": VideoMAEConfig(image_size=56, patch_size=14, num_frames=4)}


@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("spec", POLICIES)
def test_select_equals_packing_the_mask(spec, config):
    """policy.select (device arithmetic for tube:R / motion:R) gives exactly what pack(policy.mask(...)) gives, so the
    model's kept tokens, and its embeddings, are the same as before; a static clip exercises motion's ties."""
    cfg = CONFIGS[config]
    g = torch.Generator().manual_seed(5)
    clips = torch.randint(0, 256, (3, cfg.num_frames, cfg.image_size, cfg.image_size, 3), dtype=torch.uint8,
                          generator=g)
    clips[1] = clips[1, :1]  # a static clip: every motion score but the first slice's ties at 0
    policy = parse_keep(spec)
    token_ids, cu_seqlens, max_seqlen = policy.select(clips, cfg)
    want_ids, want_cu, want_max = pack(policy.mask(clips, cfg))
    assert torch.equal(token_ids, want_ids) and token_ids.dtype == torch.int64
    assert torch.equal(cu_seqlens, want_cu) and cu_seqlens.dtype == torch.int32
    assert max_seqlen == want_max
    k = policy.kept_per_clip(cfg)
    if spec.startswith("motion:t="):
        assert k is None  # the count depends on the data
    else:
        assert cu_seqlens.tolist() == [0, k, 2 * k, 3 * k] and max_seqlen == k


@pytest.mark.parametrize("spec", ["tube:0.5", "tube:0.3:random:3", "motion:0.4", "motion:1"])
@pytest.mark.parametrize("kind", ["uint8", "float"])
def test_fixed_count_select_makes_no_host_sync(spec, kind):
    """tube:R and motion:R build token ids and cu_seqlens with device arithmetic only: no .item()/int(), .tolist(),
    nonzero, boolean-mask indexing or device-to-host copy (tests/helpers/sync_detector.py), so on a GPU they cost no
    sync and a CUDA graph can capture them."""
    from tests.helpers.sync_detector import no_host_sync

    x = frames(3) if kind == "uint8" else float_frames(3)
    policy = parse_keep(spec)
    with no_host_sync() as detector:
        token_ids, cu_seqlens, max_seqlen = policy.select(x, CONFIG)
    assert detector.ops, "the detector saw no op: it checked nothing"
    assert token_ids.shape == (3 * max_seqlen,) and cu_seqlens.shape == (4,)


def test_sync_detector_has_teeth():
    """What the detector must catch: packing a mask (nonzero, a count read on the host), the threshold policy (a
    data-dependent count), .tolist(), int(tensor), boolean-mask indexing."""
    from tests.helpers.sync_detector import HostSync, no_host_sync

    x = frames(2)
    mask = TubeKeep(0.5).mask(x, CONFIG)
    cases = {"pack(mask)": lambda: pack(mask), "motion:t=X": lambda: parse_keep("motion:t=0.1").select(x, CONFIG),
             "tolist": lambda: mask.sum(1).tolist(), "int": lambda: int(mask.sum()),
             "bool indexing": lambda: x.flatten(1)[mask]}
    for what, run in cases.items():
        with pytest.raises(HostSync), no_host_sync():
            run()
        assert mask.sum().tolist() == 64, what  # Tensor.tolist works again afterwards


def test_tube_row_is_built_once_per_shape_and_device():
    policy = TubeKeep(0.5)
    a_mask, a_ids = policy.row(CONFIG.grid, "cpu")
    b_mask, b_ids = policy.row(CONFIG.grid, torch.device("cpu"))
    assert a_ids is b_ids and a_mask is b_mask  # cached: nothing rebuilt or copied
    assert policy.row((2, 4, 4), "cpu")[1] is not a_ids and TubeKeep(0.25).row(CONFIG.grid, "cpu")[1] is not a_ids
    assert torch.equal(a_mask.nonzero().squeeze(1), a_ids)
    keep = policy.mask(frames(2), CONFIG)
    keep[0, 0] = not keep[0, 0]  # a caller changing its mask does not change the cached row
    assert torch.equal(policy.mask(frames(2), CONFIG)[0], a_mask)
