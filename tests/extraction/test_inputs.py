"""Streaming discovery (vmae_fast/inputs.py) and the compact committed-id sets (vmae_fast/committed.py).

The shard of every id is the blake2b of before (outputs written by earlier versions keep their shards); lists are
read a batch at a time and only this shard's entries become tasks; duplicates are named with both places even
across batches; a long list yields its first task before it is read to the end; the resume set equals the brute
force over every part, also for parts written under another shard count.
"""

from __future__ import annotations

import hashlib
import os
import random
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vmae_fast import ids as ids_module
from vmae_fast import store
from vmae_fast.extraction import inputs as inputs_module
from vmae_fast.extraction.inputs import Discovery, _ListFile, discover_inputs, split_list
from vmae_fast.extraction.ray_inputs import _ListEntries, normalize, repeat_places
from vmae_fast.ids import KeySet, id_keys, shard_of, shards_of
from vmae_fast.store import committed_ids


def old_shard_of(video_id: str, num_shards: int) -> int:  # the function every existing output was sharded with
    return int.from_bytes(hashlib.blake2b(video_id.encode("utf-8"), digest_size=8).digest(), "big") % num_shards


def test_shards_of_a_batch_are_the_shards_of_before():
    rng = random.Random(1)
    ids = [f"{rng.random()}/vidéo-{i}.mp4" for i in range(3000)] + ["", "a", "日本/x.mp4"]
    for n in (1, 2, 3, 8, 64, 1000, 2**31 - 1):
        assert shards_of(ids, n).tolist() == [old_shard_of(v, n) for v in ids]
        assert [shard_of(v, n) for v in ids[:50]] == [old_shard_of(v, n) for v in ids[:50]]


@pytest.fixture
def small_batches(monkeypatch):
    monkeypatch.setattr(inputs_module, "BATCH_ROWS", 7)
    monkeypatch.setattr(inputs_module, "WALK_BATCH", 3)


def write_lists(d, n: int):
    """The same n entries as .txt, .csv and .parquet (relative paths, a ./ prefix, an URL, time ranges in csv)."""
    paths = [f"sub/v{i}.mp4" if i % 5 else f"./sub/v{i}.mp4" for i in range(n)]
    paths[3] = "https://example.com/videos/v3.mp4?sig=1"
    (d / "l.txt").write_text("# list\n" + "\n".join(paths) + "\n\n")
    (d / "l.csv").write_text("path,start_s,end_s,label\n" + "".join(f"{p},{i % 3},,x\n" for i, p in enumerate(paths)))
    pq.write_table(pa.table({"path": paths, "note": ["n"] * n}), d / "l.parquet", row_group_size=5)
    return paths


def test_every_format_streams_the_same_tasks_and_shards_partition_them(tmp_path, small_batches):
    paths = write_lists(tmp_path, 40)
    expected_ids = [p.removeprefix("./") for p in paths]
    expected_ids[3] = "videos/v3.mp4"
    for name in ("l.txt", "l.csv", "l.parquet"):
        tasks = list(Discovery(tmp_path / name))
        assert [t.video_id for t in tasks] == expected_ids, name
        assert tasks[3].path == paths[3]  # a URL is never made a local path
        assert tasks[1].path == str(tmp_path / "sub" / "v1.mp4")
        if name == "l.csv":
            assert [t.start_s for t in tasks[:4]] == [0.0, 1.0, 2.0, 0.0] and tasks[0].end_s is None
        shards = [list(Discovery(tmp_path / name, (i, 3))) for i in range(3)]
        got = sorted(t.video_id for part in shards for t in part)
        assert got == sorted(expected_ids)  # disjoint and complete
        for i, part in enumerate(shards):
            assert all(old_shard_of(t.video_id, 3) == i for t in part)


def test_a_long_list_yields_its_first_task_before_it_is_read(tmp_path, small_batches):
    write_lists(tmp_path, 200)
    discovery = Discovery(tmp_path / "l.parquet")
    tasks = iter(discovery)
    assert next(tasks).video_id == "sub/v0.mp4"
    assert discovery.entries == 7 and not discovery.finished  # one batch read
    assert len(list(tasks)) == 199 and discovery.finished and discovery.entries == 200
    with pytest.raises(RuntimeError, match="iterated once"):
        iter(discovery).__next__()


def test_duplicates_across_batches_name_both_places(tmp_path, small_batches):
    rows = [f"v{i}.mp4,id{i}" for i in range(30)] + ["other.mp4,id4"]
    (tmp_path / "d.csv").write_text("path,video_id\n" + "\n".join(rows) + "\n")
    with pytest.raises(ValueError, match=r"video_id 'id4' appears twice \(.*d.csv:6 and .*d.csv:32\)"):
        list(Discovery(tmp_path / "d.csv"))
    (tmp_path / "same_batch.txt").write_text("a.mp4\nb.mp4\na.mp4\n")
    with pytest.raises(ValueError, match=r"'a.mp4' appears twice \(.*same_batch.txt:1 and .*same_batch.txt:3\)"):
        list(Discovery(tmp_path / "same_batch.txt"))
    # the shard that owns the id finds it; the others never look at it
    owner = old_shard_of("id4", 4)
    for i in range(4):
        if i == owner:
            with pytest.raises(ValueError, match="appears twice"):
                list(Discovery(tmp_path / "d.csv", (i, 4)))
        else:
            assert len(list(Discovery(tmp_path / "d.csv", (i, 4)))) > 0


def test_prime_meets_the_errors_of_a_short_list_before_iteration(tmp_path):
    (tmp_path / "bad.csv").write_text("path,start_s\na.mp4,1\nb.mp4,abc\n")
    discovery = Discovery(tmp_path / "bad.csv")
    with pytest.raises(ValueError, match=r"bad.csv:3: start_s must be a number of seconds, got 'abc'"):
        discovery.prime()
    pq.write_table(pa.table({"path": ["a.mp4"], "start_s": [-1.0]}), tmp_path / "neg.parquet")
    with pytest.raises(ValueError, match=r"neg.parquet row 0: start_s must be >= 0, got -1.0"):
        Discovery(tmp_path / "neg.parquet").prime()
    pq.write_table(pa.table({"path": ["a.mp4", None]}), tmp_path / "null.parquet")
    with pytest.raises(ValueError, match=r"null.parquet row 1: empty path"):
        Discovery(tmp_path / "null.parquet").prime()
    (tmp_path / "np.csv").write_text("file\nx.mp4\n")
    with pytest.raises(ValueError, match="needs a 'path' column"):
        Discovery(tmp_path / "np.csv")  # the header is read when the Discovery is made


@pytest.mark.parametrize(("rows", "message"), [
    ("a.mp4,1,\nb.mp4,inf,", "start_s must be a finite number of seconds >= 0, got inf"),
    ("a.mp4,1,\nb.mp4,nan,", "start_s must be a number of seconds, got nan (leave it empty"),
    ("a.mp4,1,\nb.mp4, NaN ,", "start_s must be a number of seconds, got nan (leave it empty"),
    ("a.mp4,1,\nb.mp4,1,nan", "end_s must be a number of seconds, got nan (leave it empty"),
    ("a.mp4,1,\nb.mp4,-inf,", "start_s must be >= 0, got -inf"),
    ("a.mp4,1,\nb.mp4,-0.5,", "start_s must be >= 0, got -0.5"),
    ("a.mp4,1,\nb.mp4,5,2", "end_s must be greater than start_s, got start_s=5.0 end_s=2.0"),
    ("a.mp4,1,\nb.mp4,,-1", "end_s must be greater than 0 (the start, when start_s is empty), got -1.0"),
    ("a.mp4,1,\nb.mp4,,0", "end_s must be greater than 0 (the start, when start_s is empty), got 0.0"),
    ("a.mp4,1,\nb.mp4,,-inf", "end_s must be greater than 0"),
], ids=["start-inf", "start-nan", "start-nan-spaced", "end-nan", "start-minus-inf", "start-negative",
        "end-before-start", "end-negative", "end-zero", "end-minus-inf"])
def test_time_ranges_that_select_no_time_are_list_errors_naming_the_line(tmp_path, rows, message):
    # such an entry was a task, and later an error row of its video ("no frame in [inf, None)"); nan was read as empty
    (tmp_path / "t.csv").write_text("path,start_s,end_s\n" + rows + "\n")
    with pytest.raises(ValueError, match=rf"t\.csv:3: {re.escape(message)}"):
        Discovery(tmp_path / "t.csv").prime()
    # the same values as floats in a Parquet list: named by its row; Ray's read tasks apply the same rules
    start, end = (float(v) if v.strip() else None for v in rows.splitlines()[1].split(",")[1:])
    pq.write_table(pa.table({"path": ["a.mp4", "b.mp4"], "start_s": pa.array([1.0, start], pa.float64()),
                             "end_s": pa.array([None, end], pa.float64())}), tmp_path / "t.parquet")
    with pytest.raises(ValueError, match=rf"t\.parquet row 1: {re.escape(message)}"):
        Discovery(tmp_path / "t.parquet").prime()
    rules = _ListEntries(str(tmp_path / "t.parquet"), ["path", "start_s", "end_s"])
    with pytest.raises(ValueError, match=rf"t\.parquet \(entry 'b\.mp4'\): {re.escape(message)}"):
        normalize(pq.read_table(tmp_path / "t.parquet"), source=0, kind="parquet", rules=rules)


def test_empty_and_open_ended_time_ranges_are_kept(tmp_path):
    (tmp_path / "t.csv").write_text("path,start_s,end_s\na.mp4,,\nb.mp4,2,\nc.mp4,,3\nd.mp4,0,inf\n")
    got = [(t.video_id, t.start_s, t.end_s) for t in Discovery(tmp_path / "t.csv")]
    assert got == [("a.mp4", None, None), ("b.mp4", 2.0, None), ("c.mp4", None, 3.0), ("d.mp4", 0.0, float("inf"))]


def test_the_places_of_a_repeated_id_are_found_again_for_the_ray_engine(tmp_path, small_batches):
    """Ray's readers know no line numbers: the driver reads the lists again, a batch at a time, for the two entries
    of the id its coordinator met twice (inputs numbered as given), and names them as the local engine does."""
    (tmp_path / "a.csv").write_text("path,video_id\n" + "".join(f"v{i}.mp4,id{i}\n" for i in range(30)) +
                                    "w.mp4,id7\nx.mp4,id7\n")
    pq.write_table(pa.table({"path": ["p.mp4", "q.mp4", "r.mp4"], "video_id": ["x", "id7", "id7"]}),
                   tmp_path / "b.parquet")
    (tmp_path / "c.txt").write_text("# ids are paths\n\nk.mp4\nid7\n")
    (tmp_path / "videos").mkdir()
    inputs = [str(tmp_path / n) for n in ("a.csv", "b.parquet", "c.txt", "videos")] + ["https://h/l/id7"]
    a, b, c = (str(tmp_path / n) for n in ("a.csv", "b.parquet", "c.txt"))
    assert repeat_places(inputs, "id7", 0, 0) == (f"{a}:9", f"{a}:32")  # 30 rows in batches of 7
    assert repeat_places(inputs, "id7", 0, 1) == (f"{a}:9", f"{b} row 1")
    assert repeat_places(inputs, "id7", 1, 2) == (f"{b} row 1", f"{c}:4")
    assert repeat_places(inputs, "id7", 2, 3) == (f"{c}:4", f"{tmp_path / 'videos'}/id7")  # a folder: its file
    assert repeat_places(inputs, "id7", 4, 1) == ("https://h/l/id7", f"{b} row 1")  # a single input: itself
    assert repeat_places(inputs, "nowhere", 0, 1) is None  # not found again (a list changed): the lists' names
    (tmp_path / "a.csv").unlink()
    assert repeat_places(inputs, "id7", 0, 1) is None  # unreadable now: likewise


def test_folder_walk_streams_with_symlink_loops_and_skip(tmp_path, small_batches):
    root = tmp_path / "videos"
    for rel in ("a/1.mp4", "a/b/2.MKV", "c.mp4", "d/e/3.webm", "note.txt"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"x")
    (root / "folder.mp4").mkdir()  # named like a video: an entry (its error comes at decode)
    os.symlink(root, root / "a" / "loop")  # leads back up: visited once
    ids = [t.video_id for t in Discovery(root)]
    assert ids == ["a/1.mp4", "a/b/2.MKV", "c.mp4", "d/e/3.webm", "folder.mp4"]
    assert [t.video_id for t in discover_inputs(root).tasks] == ids
    discovery = Discovery(root, skip=KeySet(id_keys(["c.mp4", "a/1.mp4"])))
    assert [t.video_id for t in discovery] == ["a/b/2.MKV", "d/e/3.webm", "folder.mp4"]
    assert (discovery.mine, discovery.skipped, discovery.entries) == (5, 2, 5)


TRICKY_ENTRIES = ["/abs/v.mp4", "rel/v.mp4", "v.mp4", ".hidden/v.mp4", "a/.b/c..mp4", "/a/./b.mp4", "/a/../b.mp4",
                  "a/./b.mp4", "../up/v.mp4", "./v.mp4", "a//b.mp4", "//net/v.mp4", "///x/v.mp4", "/a/b/", "/",
                  " /padded/v.mp4 ", "\t/tab/v.mp4", "/trail/v.mp4\x1c", "\u3000/ideo/v.mp4", "~/home/v.mp4",
                  "~user/v.mp4", "x~/v.mp4", "/é/v.mp4", "é/v.mp4", "/a/vidé", "https://h/v.mp4", "s3://b/k.mp4",
                  "file:///f/v.mp4", "C:/win/v.mp4", "a:b/v.mp4", "/a/b.mp4/.", "/a/b/..", "..", ".", "..v/x.mp4",
                  "/x\ny/v.mp4", "a/ b .mp4", "/a/{b}/[c]!$&'()*+,;=@.mp4", "a|b/v.mp4", "/a/\x7f.mp4"]


@pytest.mark.parametrize("where", ["relative", "absolute", "root", "url"])
def test_plain_entries_shortcut_gives_the_task_path_of_each_entry(tmp_path, monkeypatch, where):
    """_task_paths (arrow kernels for the plain entries) equals _task_path one entry at a time, for lists read by
    the local engine (_ListFile) and by Ray (_ListEntries), wherever the list lies."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "lists").mkdir()
    raw = {"relative": "lists/l.txt", "absolute": str(tmp_path / "lists" / "l.txt"), "root": "/l.txt",
           "url": "https://host/lists/l.txt"}[where]
    sources = [_ListEntries(raw, [])]
    if where != "url":
        (tmp_path / "lists" / "l.txt").write_text("x\n")
        sources.append(_ListFile(str(tmp_path / "lists" / "l.txt") if where == "absolute" else raw))
        if where == "root":
            sources[-1].path = inputs_module.Path("/l.txt")
    entries = TRICKY_ENTRIES + [f"/{i}/{i}.mp4" for i in range(50)] + [f"r{i}/{i}.mp4" for i in range(50)]
    for source in sources:
        want = [source._task_path(e) for e in entries]
        one_by_one: list[str] = []
        monkeypatch.setattr(source, "_task_path",
                            lambda e, rule=source._task_path, seen=one_by_one: seen.append(e) or rule(e))
        assert source._task_paths(pa.array(entries)) == want
        assert source._task_paths(pa.array(entries, pa.large_string())) == want
        plain = 50 + (14 + 50 if where != "url" else 4)  # of TRICKY_ENTRIES: 14 plain, 4 of them absolute
        assert len(one_by_one) == 2 * (len(entries) - plain)
    assert want[:3] == ["/abs/v.mp4", *(os.path.join(os.path.abspath(os.path.dirname(raw)), e)
                                        for e in ("rel/v.mp4", "v.mp4"))] or where == "url"


def test_id_keys_are_the_blake2b_digests_of_before():
    ids = [f"{i}/vidéo.mp4" for i in range(500)] + ["", "日本/x.mp4"]
    want = [hashlib.blake2b(v.encode("utf-8"), digest_size=16).digest() for v in ids]
    assert [row.tobytes() for row in id_keys(ids)] == want


@pytest.mark.parametrize("n", [1, 2, 3, 1000, 5000])
def test_key_order_is_a_stable_sort_by_both_halves(n):
    """ids._order packs a position into the low bits of each first half: keys that differ only there, that share a
    first half, or repeat, must still come out in (first, second, position) order."""
    rng = np.random.default_rng(n)
    keys = rng.integers(0, 2**64, (n, 2), dtype=np.uint64)
    if n > 3:
        keys[: n // 4, 0] = keys[0, 0] ^ rng.integers(0, 2**12, n // 4, dtype=np.uint64)  # ties in the high bits
        keys[n // 4: n // 2, 0] = 7  # one first half, several second halves
        keys[n // 4: n // 2, 1] = rng.integers(0, 3, n // 2 - n // 4, dtype=np.uint64)  # and repeated keys
    want = np.lexsort((np.arange(n), keys[:, 1], keys[:, 0]))
    assert ids_module._order(keys).tolist() == want.tolist()
    assert np.array_equal(ids_module._take(keys, want), keys[want])
    ks = KeySet()
    ks.add(keys, np.arange(n), unique=False)  # repeats: the first one's code stays
    found, codes = ks.lookup(keys)
    first_at = {}
    for i, row in enumerate(map(tuple, keys.tolist())):
        first_at.setdefault(row, i)
    assert found.all() and codes.tolist() == [first_at[tuple(row)] for row in keys.tolist()]
    assert len(ks) == len(first_at)


def test_keyset_equals_a_python_set():
    rng = random.Random(7)
    ks, ref = KeySet(), {}
    for b in range(30):
        new = [v for v in dict.fromkeys(f"id{rng.randrange(4000)}" for _ in range(rng.randrange(1, 200)))
               if v not in ref]
        keys = id_keys(new)
        assert ks.first_repeat(keys) is None
        ks.add(keys, np.arange(len(new)) + 1000 * b)
        ref.update({v: j + 1000 * b for j, v in enumerate(new)})
    query = [f"id{i}" for i in range(5000)]
    found, codes = ks.lookup(id_keys(query))
    assert found.tolist() == [v in ref for v in query]
    assert all(codes[i] == ref[v] for i, v in enumerate(query) if v in ref)
    old = next(iter(ref))
    assert ks.first_repeat(id_keys(["fresh", old])) == (1, ref[old], None)
    assert ks.first_repeat(id_keys(["x", "y", "x"])) == (2, None, 0)
    tie = KeySet(np.array([[5, 1], [5, 2], [3, 9]], np.uint64))  # two keys sharing their first half
    assert tie.lookup(np.array([[5, 2], [5, 3], [3, 9]], np.uint64))[0].tolist() == [True, False, True]
    assert len(ks) == len(ref) and ks.nbytes == 24 * len(ref)


def _part(folder, shard: int, seq: int, ids: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"video_id": pa.array(ids, pa.string()), "path": ids}),
                   folder / f"part-{shard:05d}-{seq:06d}.parquet", use_dictionary=["video_id"], row_group_size=50)


def test_committed_ids_equal_the_brute_force_for_any_shard_count(tmp_path):
    out = tmp_path / "out"
    ids = [f"videos/{i:05d}.mp4" for i in range(2400)]
    by_shard = {s: [v for v in ids[:1600] if old_shard_of(v, 4) == s] for s in range(4)}
    for s, mine in by_shard.items():  # written by 4 shards, two parts each
        _part(out / "clips", s, 0, mine[: len(mine) // 2])
        _part(out / "clips", s, 1, mine[len(mine) // 2:])
    _part(out / "clips", 1, 2, ids[1600:2000])  # a rerun with another shard count wrote this part: mixed ids
    _part(out / "errors", 0, 0, ids[2000:2100])
    everything = store.committed_video_ids(out)
    assert len(everything) == 2100
    for n in (1, 3, 4, 7):
        for s in range(n):
            got = committed_ids(out, s, n)
            want = {v for v in everything if old_shard_of(v, n) == s}
            assert len(got) == len(want), (n, s)
            assert all(v in got for v in want)
            assert not any(v in got for v in everything - want)
            without = committed_ids(out, s, n, include_errors=False)
            assert len(without) == len({v for v in want if v not in ids[2000:2100]})


def test_split_list_gives_each_shard_exactly_its_entries(tmp_path, small_batches):
    paths = write_lists(tmp_path, 40)
    whole = list(Discovery(tmp_path / "l.csv"))
    parts = split_list(tmp_path / "l.csv", 3, tmp_path / "lists")
    for i, part in enumerate(parts):
        own = list(Discovery(part, (i, 3)))
        assert own == [t for t in whole if old_shard_of(t.video_id, 3) == i]  # same ids, paths, time ranges
        assert len(own) == pq.read_metadata(part).num_rows  # nothing of another shard in it
    assert sum(pq.read_metadata(p).num_rows for p in parts) == len(paths)
    (tmp_path / "dup.txt").write_text("a.mp4\nb.mp4\na.mp4\n")
    with pytest.raises(ValueError, match="'a.mp4' appears twice"):
        split_list(tmp_path / "dup.txt", 2, tmp_path / "dup")


def test_progress_reports_while_a_long_list_is_read(tmp_path, small_batches, monkeypatch):
    monkeypatch.setattr(inputs_module, "PROGRESS_EVERY_S", 0.0)
    write_lists(tmp_path, 40)
    seen = []
    discovery = Discovery(tmp_path / "l.parquet", (1, 4), progress=lambda d: seen.append((d.entries, d.finished)))
    tasks = list(discovery)
    assert [e for e, done in seen if not done] == [7, 14, 21, 28, 35, 40]  # after every batch while listing
    assert seen[-1] == (40, True) and len(tasks) == discovery.mine - discovery.skipped
