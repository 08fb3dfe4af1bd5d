"""`vmae-fast dedup` (vmae_fast/retrieval/dedup.py): the threshold rule on similarity samples of known shape, the
groups on synthetic outputs with planted near-duplicates (against the planted sets and a brute-force reference of
every pair), through an index and exactly, in small batches, with groups larger than k, and the CLI's files."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from tests.helpers.synthetic_out import write_dataset
from vmae_fast import cli
from vmae_fast.retrieval import Index
from vmae_fast.retrieval import dedup as dedup_module
from vmae_fast.retrieval.dedup import choose_threshold, find_groups
from vmae_fast.retrieval.index import stream_rows
from vmae_fast.store import read_embeddings, read_errors
from vmae_fast.store.layout import FORMAT, dedup_files, prepare_output


def similarities(rng, n: int, log_distance: float, spread: float) -> np.ndarray:
    """n cosine similarities whose 1 - s is log-normal around 10**log_distance."""
    return 1 - 10 ** rng.normal(log_distance, spread, n)


# --- the threshold rule ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("distinct", "duplicates"), [(4000, 400), (20000, 40), (300, 12)],
                         ids=["10-percent", "0.2-percent", "small"])
def test_threshold_falls_in_the_valley_between_the_modes(distinct, duplicates):
    rng = np.random.default_rng(0)
    far = similarities(rng, distinct, -1.0, 0.2)  # distinct videos: 1 - s ~ 0.1
    near = similarities(rng, duplicates, -3.5, 0.3)  # near-duplicates: 1 - s ~ 0.0003
    info = choose_threshold(np.concatenate([far, near]), far)  # each row's 4th neighbour: another video
    assert info["how"] == "valley", info
    t = info["value"]
    assert near.min() > t > far.max(), (near.min(), t, far.max())
    # in the middle of the gap in log distance, not hugging either side
    gap = np.log10(1 - far.max()) - np.log10(1 - near.min())
    assert abs(np.log10(1 - t) - (np.log10(1 - far.max()) + np.log10(1 - near.min())) / 2) < 0.35 * gap + 0.1, info
    assert info["modes"][0] == pytest.approx(1 - 10 ** -3.5, abs=5e-4) and info["modes"][1] == pytest.approx(
        0.9, abs=0.03), info


def test_no_separate_mode_no_threshold():
    rng = np.random.default_rng(1)
    one = similarities(rng, 5000, -1.0, 0.3)
    info = choose_threshold(one, one)
    assert info["value"] is None and info["how"] == "none" and "one mode" in info["reason"] or \
        "no separate mode" in info["reason"], info
    # two modes that overlap: a dip, not a valley
    overlapping = np.concatenate([similarities(rng, 3000, -1.0, 0.3), similarities(rng, 3000, -1.5, 0.3)])
    info = choose_threshold(overlapping, overlapping)
    assert info["value"] is None, info
    assert choose_threshold(np.array([0.5, 0.6]), np.array([0.5]))["value"] is None
    assert choose_threshold(np.full(100, 0.3), np.full(25, 0.3))["value"] is None
    assert choose_threshold(np.linspace(0, 0.99, 100), np.zeros(0))["value"] is None


def test_identical_vectors_are_the_top_mode():
    rng = np.random.default_rng(2)
    far = similarities(rng, 1000, -1.0, 0.2)
    info = choose_threshold(np.concatenate([far, np.ones(30)]), far)
    assert info["how"] == "valley" and 0.95 < info["value"] < 1.0, info



def test_distinct_videos_in_two_modes_are_not_near_duplicates():
    """Distinct videos need not make one mode: most scenes alike to the model (1 - s ~ 0.15) and a few unlike them all
    (s ~ 0, also the 4th neighbour of a quarter of the rows). The near-duplicate pairs (1 - s ~ 0.003) are the
    separate mode; the alike scenes are not, though a deep valley parts them from the unlike ones (taking the least
    similar mode for the distinct videos grouped every alike scene: 5 of the 7 sample videos, 0.41 here)."""
    rng = np.random.default_rng(3)
    alike, unlike = similarities(rng, 300, -0.8, 0.15), similarities(rng, 100, 0.0, 0.05)
    near = similarities(rng, 12, -2.5, 0.2)
    others = np.concatenate([alike[:75], unlike[:25]])  # each row's 4th neighbour, 100 rows
    info = choose_threshold(np.concatenate([alike, unlike, near]), others)
    assert info["how"] == "valley", info
    assert near.min() > info["value"] > alike.max(), (near.min(), info, alike.max())
    assert info["modes"][1] == pytest.approx(1 - 10 ** -0.8, abs=0.05), info


# --- groups on a planted output ---------------------------------------------------------------------------------------
DIM = 64


def planted_output(out, *, sources: int = 60, copies: tuple = (0, 1, 1, 2, 3), big_group: int = 0, seed: int = 0):
    """Distinct videos (random directions, 3..8 clips of it + noise 0.1) and, for some, near-duplicates: the same
    clips with noise 0.01, some trimmed (fewer clips). Returns the planted groups as sets of video ids (the original
    first) and each video's clip count. big_group: one more source with that many identical, untrimmed copies."""
    rng = np.random.default_rng(seed)
    rows, video, groups, clips_of = [], [], [], {}
    vid = 0

    def add(clips: np.ndarray) -> str:
        nonlocal vid
        rows.append(clips)
        video.extend([vid] * len(clips))
        name = f"clips/v{vid:05d}.mp4"  # write_dataset's naming
        clips_of[name] = len(clips)
        vid += 1
        return name

    for i in range(sources + (1 if big_group else 0)):
        direction = rng.standard_normal(DIM)
        clips = direction + 0.1 * np.linalg.norm(direction) * rng.standard_normal((int(rng.integers(3, 9)), DIM))
        members = [add(clips)]
        count = big_group if i == sources else copies[i % len(copies)]
        for c in range(count):
            noise = 0.0 if i == sources else 0.01 * np.linalg.norm(direction)
            copy = clips + noise * rng.standard_normal(clips.shape)
            trim = c % 2 if i < sources else 0  # every other copy is a trim: one clip fewer (not the identical ones)
            members.append(add(copy[: len(copy) - trim]))
        if len(members) > 1:
            groups.append(members)
    write_dataset(out, np.concatenate(rows).astype(np.float32), np.array(video), parts=3)
    return groups, clips_of


def reference_groups(out, threshold: float) -> list[set]:
    """Connected components of 'cosine >= threshold' over every pair of video vectors (as dedup reads them)."""
    vectors, ids = [], []
    for _, x, meta in stream_rows(out, "video"):
        vectors.append(x)
        ids += meta.column("video_id").to_pylist()
    x = np.concatenate(vectors)
    linked = (x @ x.T) >= threshold
    seen, groups = set(), []
    for i in range(len(x)):
        if i in seen:
            continue
        stack, group = [i], set()
        while stack:
            j = stack.pop()
            if j not in group:
                group.add(j)
                stack.extend(np.nonzero(linked[j])[0].tolist())
        seen |= group
        if len(group) > 1:
            groups.append({ids[j] for j in group})
    return groups


def found_groups(result) -> list[set]:
    ids = result.metadata.column("video_id").to_pylist()
    groups: dict[int, set] = {}
    for i, g in enumerate(result.group_id.tolist()):
        if g >= 0:
            groups.setdefault(g, set()).add(ids[i])
    return sorted(groups.values(), key=min)


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    out = tmp_path_factory.mktemp("dedup") / "out"
    groups, clips_of = planted_output(out)
    return out, groups, clips_of


@pytest.mark.parametrize("how", ["exact", "flat index", "ivf index", "small batches"])
def test_groups_are_the_planted_near_duplicates(planted, how):
    out, planted_groups, clips_of = planted
    options = {"exact": True} if how == "exact" else {}
    if how == "small batches":
        options = {"exact": True, "batch_size": 7, "k": 2}
    if how.endswith("index"):
        Index.build(out, level="video", kind=how.split()[0], rebuild=True, tune_queries=50, nlist=8)
    result = find_groups(out, "video", **options)
    assert result.threshold_info["how"] == "valley", result.threshold_info
    assert found_groups(result) == sorted((set(g) for g in planted_groups), key=min)
    assert found_groups(result) == sorted(reference_groups(out, result.threshold), key=min)
    ids = result.metadata.column("video_id").to_pylist()
    for group in planted_groups:  # the original (most clips) represents its group
        rows = [ids.index(v) for v in group]
        assert [bool(result.representative[r]) for r in rows] == [True] + [False] * (len(rows) - 1), group
        assert clips_of[group[0]] == max(clips_of[v] for v in group)
    # similarity: each member's highest cosine to another member, as the vectors say
    x = np.concatenate([b for _, b, _ in stream_rows(out, "video")])
    for r in np.nonzero(result.group_id >= 0)[0]:
        mates = np.nonzero((result.group_id == result.group_id[r]) & (np.arange(len(x)) != r))[0]
        assert result.similarity[r] == pytest.approx(float((x[mates] @ x[r]).max()), abs=2e-5)
    assert np.isnan(result.similarity[result.group_id < 0]).all()
    assert result.keep().sum() == result.rows - result.members + result.groups
    if how.endswith("index"):
        assert result.search.startswith(f"video-level {how.split()[0]} index")
        Index.paths(out, "video")["manifest"].unlink()  # the next case searches exactly


def test_a_group_larger_than_k(tmp_path, monkeypatch):
    out = tmp_path / "out"
    planted_groups, _ = planted_output(out, sources=30, copies=(0, 1), big_group=40)
    result = find_groups(out, "video", exact=True, k=4)
    assert found_groups(result) == sorted((set(g) for g in planted_groups), key=min)
    assert max(len(g) for g in found_groups(result)) == 41 and result.capped == 0
    monkeypatch.setattr(dedup_module, "MAX_NEIGHBOURS", 8)  # rows with more above the threshold: linked to 8, counted
    capped = find_groups(out, "video", exact=True, k=4, threshold=result.threshold)
    assert found_groups(capped) == found_groups(result) and capped.capped == 41


def test_the_histogram_counts_every_row_identical_copies_included(tmp_path):
    """Identical vectors score a float32 rounding above 1 (1.0000001192...), past the histogram's last edge
    (1.0000001): those rows, the exact copies, fell out of the summary ('nearest-neighbour similarity of 61 videos'
    of 86, the top bin missing its 41 copies)."""
    out = tmp_path / "out"
    planted_output(out, sources=30, copies=(0, 1), big_group=40)
    result = find_groups(out, "video", exact=True)
    assert sum(result.histogram["counts"]) == len(result.group_id) == 86, result.histogram
    assert result.histogram["counts"][-1] >= 41, result.histogram  # the 41 identical copies, in the top bin
    above = dedup_module.similarity_histogram(np.array([1.0000001, 0.7], np.float32), None)
    assert above["counts"][-1] == 1 and sum(above["counts"]) == 2, above


def test_clip_level_and_a_given_threshold(planted):
    out, _, _ = planted
    high = find_groups(out, "clip", threshold=0.99, exact=True)
    assert high.threshold_info["how"] == "given"
    meta = high.metadata
    assert {"video_id", "clip_index", "start_s", "end_s"} <= set(meta.column_names)
    # at 0.99 a clip groups only with its copies' same clip (distinct clips of a video differ by noise 0.1)
    ids, clip = meta.column("video_id").to_pylist(), meta.column("clip_index").to_pylist()
    for g in range(high.groups):
        rows = np.nonzero(high.group_id == g)[0]
        assert len({clip[r] for r in rows}) == 1, [(ids[r], clip[r]) for r in rows]
    none = find_groups(out, "clip", threshold=1.0, exact=True)
    assert none.groups == 0 and none.keep().all()


# --- the CLI and its files --------------------------------------------------------------------------------------------
def test_cli_writes_groups_summary_and_keep_lists(planted, tmp_path, capsys):
    out, planted_groups, _ = planted
    assert cli.main(["dedup", str(out), "--keep-list", str(tmp_path / "keep.txt")]) == 0
    screen = capsys.readouterr().out
    n_members = sum(len(g) for g in planted_groups)
    assert f"{len(planted_groups)} near-duplicate groups holding {n_members} videos" in screen
    assert "chosen from this output: the valley between" in screen and "<- threshold" in screen
    assert len(screen.splitlines()) <= 24  # one screen
    files = dedup_files(out, "video")
    table = pq.read_table(files["groups"])
    assert table.column_names == ["video_id", "group_id", "representative", "similarity", "group_size"]
    assert table.num_rows == n_members and sum(table.column("representative").to_pylist()) == len(planted_groups)
    assert table.column("group_id").to_pylist() == sorted(table.column("group_id").to_pylist())
    summary = json.loads(files["summary"].read_text())
    assert summary["groups"] == len(planted_groups) and summary["threshold_rule"]["how"] == "valley"
    kept = (tmp_path / "keep.txt").read_text().split()
    dropped = {v for g in planted_groups for v in g[1:]}
    all_ids = [m.column("video_id").to_pylist() for _, _, m in stream_rows(out, "video")]
    assert kept == [v for ids in all_ids for v in ids if v not in dropped]
    assert cli.main(["dedup", str(out), "--threshold", "0.5", "--keep-list", str(tmp_path / "keep.csv"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["threshold_rule"]["how"] == "given" and report["groups"] >= len(planted_groups)
    csv = pacsv.read_csv(tmp_path / "keep.csv")
    assert csv.column_names == ["path", "video_id"] and csv.num_rows == report["kept"]


def test_cli_refuses_what_it_cannot_do(planted, tmp_path, monkeypatch, capsys):
    out, _, _ = planted
    assert cli.main(["dedup", str(out), "--threshold", "1.5"]) == 2
    assert "--threshold is a cosine similarity in [-1, 1]" in capsys.readouterr().err
    assert cli.main(["dedup", str(out), "--use-index"]) == 2
    assert "no video-level index" in capsys.readouterr().err
    monkeypatch.setattr(dedup_module, "EXACT_MAX_ROWS", 50)
    assert cli.main(["dedup", str(out)]) == 2
    assert "too many for an exact search in memory; build an index first" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert cli.main(["dedup", str(tmp_path / "empty")]) == 2
    assert "has no clips" in capsys.readouterr().err
    # a keep list that cannot be written is refused before the groups are searched (hours at 10^6 rows), not after
    monkeypatch.setattr(dedup_module, "find_groups", lambda *a, **k: pytest.fail("searched for groups"))
    missing = tmp_path / "no-such-folder" / "keep.txt"
    assert cli.main(["dedup", str(out), "--threshold", "0.9", "--keep-list", str(missing)]) == 2
    err = capsys.readouterr().err
    assert f"error: --keep-list {missing}: the folder {missing.parent} does not exist" in err, err
    assert cli.main(["dedup", str(out), "--threshold", "0.9", "--keep-list", str(tmp_path)]) == 2
    assert f"error: --keep-list {tmp_path} is a folder" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["keep.json", "keep.tsv", "keep"])
def test_cli_refuses_a_keep_list_of_unknown_format_before_searching(planted, tmp_path, monkeypatch, capsys, name):
    # the keep list is written in the format its extension names (.txt, .csv, .parquet: what extract reads as a list);
    # any other name was written as text, which extract would then take for a video: refused up front instead
    out, _, _ = planted
    monkeypatch.setattr(dedup_module, "find_groups", lambda *a, **k: pytest.fail("searched for groups"))
    keep = tmp_path / name
    assert cli.main(["dedup", str(out), "--threshold", "0.9", "--keep-list", str(keep)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"error: --keep-list {keep}: " in err[0], err
    assert ".txt, .csv or .parquet" in err[0], err
    assert not keep.exists()
    with pytest.raises(ValueError, match=r"\.txt, \.csv or \.parquet"):  # the Python function refuses it too
        dedup_module.write_keep_list(None, keep)


def test_overwrite_removes_the_groups(tmp_path):
    out = tmp_path / "out"
    planted_output(out, sources=10)
    files = dedup_files(out, "video")
    files["groups"].parent.mkdir()
    files["groups"].write_bytes(b"old")
    prepare_output(out, {"format": FORMAT, "config_hash": "new"}, shard=0, num_shards=1, overwrite=True)
    assert not files["groups"].parent.exists()


def test_a_clip_level_keep_list_is_a_list_extract_reads(served_out, tmp_path):
    """The clip-level .csv keep list had one row per clip under its video's id, so `vmae-fast extract keep.csv`
    stopped at once ('video_id ... appears twice'). Its ids are VIDEO_ID:CLIP_INDEX now: extract takes each kept clip
    as a time range of its own, and embeds the very clip that was kept."""
    keep = tmp_path / "keep.csv"
    assert cli.main(["dedup", str(served_out), "--level", "clip", "--threshold", "0.999", "--keep-list",
                     str(keep)]) == 0
    listed = pacsv.read_csv(keep)
    assert listed.column_names == ["path", "video_id", "clip_index", "start_s", "end_s"], listed.column_names
    ids = listed.column("video_id").to_pylist()
    assert len(set(ids)) == len(ids) and "orbit_red.mp4:0" in ids, ids
    again = tmp_path / "again"
    model = served_out.parent / "model"
    assert cli.main(["extract", str(keep), "-o", str(again), "--model", str(model), "--workers", "1"]) == 0
    meta, emb = read_embeddings(again)
    assert meta.num_rows + read_errors(again).num_rows >= len(ids)  # bounce_blue.mp4 is a symlink to a text file
    stored_meta, stored = read_embeddings(served_out)
    row = {(v, c): i for i, (v, c) in enumerate(zip(stored_meta.column("video_id").to_pylist(),
                                                    stored_meta.column("clip_index").to_pylist(), strict=True))}
    got = meta.column("video_id").to_pylist()
    assert len(set(got)) == len(got), got  # one clip a kept range
    orbit = [clip_id for clip_id in ids if clip_id.startswith("orbit_red.mp4:")]
    assert orbit and set(orbit) <= set(got), (orbit, got)
    for clip_id in orbit:  # the range embeds the clip that was kept
        video_id, clip_index = clip_id.rsplit(":", 1)
        np.testing.assert_allclose(emb[got.index(clip_id)], stored[row[video_id, int(clip_index)]], atol=1e-5,
                                   err_msg=clip_id)


def test_served_sample_copy_is_found(served_out):
    """On real videos: orbit_red_copy.mp4 (shifted 0.4 s, 256x192, brighter, re-encoded at crf 34) groups with
    orbit_red.mp4, and with nothing else, under the tiny random model of conftest.py; bounce_blue.mp4, unlike every
    other scene to that model (similarity -0.09 to 0.63), is in no group (it was once taken for the distinct videos'
    mode, which put the other four in one group at 0.35). Random weights: this shows the pipeline runs on real
    embeddings, not that the threshold means anything for a real model (the same model finds bars_scroll.mp4 and
    checker_spin.mp4 0.996 alike, and groups them)."""
    result = find_groups(served_out, "video")
    groups = found_groups(result)
    assert {"orbit_red.mp4", "orbit_red_copy.mp4"} in groups, (groups, result.threshold_info)
    assert not any("bounce_blue.mp4" in g for g in groups), (groups, result.threshold_info)
