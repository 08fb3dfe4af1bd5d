"""The service's view of an output (vmae_fast/retrieval/catalog.py) on synthetic embeddings, for the index kinds the
small served output does not reach: a query's vector is the stored one whatever the kind (read back from IVF lists,
or from the Parquet rows where PQ codes are lossy), and lookups by video answer from the index's own rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.helpers.synthetic_out import write_dataset
from vmae_fast.retrieval import Index
from vmae_fast.retrieval.catalog import Catalog, NotFound
from vmae_fast.store import read_embeddings


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    rng = np.random.default_rng(3)
    n, dim = 4000, 32
    video = np.sort(rng.integers(0, 400, n))
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    out = tmp_path_factory.mktemp("catalog") / "out"
    write_dataset(out, vectors, video, parts=3)
    return out


@pytest.mark.parametrize(("kind", "exact"), [("flat", True), ("ivf", True), ("hnsw", True), ("ivfpq", False)])
def test_a_clip_query_uses_the_stored_vector(synthetic, kind, exact):
    Index.build(synthetic, kind=kind, rebuild=True, tune_queries=200)
    catalog = Catalog(synthetic)
    meta, stored = read_embeddings(synthetic)
    keys = list(zip(meta.column("video_id").to_pylist(), meta.column("clip_index").to_pylist(), strict=True))
    lv = catalog.levels["clip"]
    assert lv.exact is exact and catalog.stats()["levels"]["clip"]["kind"] == kind
    for row in (0, 1234, 3999):
        video_id, clip_index = keys[row]
        vector, info = catalog.clip_vector(video_id, clip_index)
        unit = stored[row] / np.linalg.norm(stored[row])
        got = vector / np.linalg.norm(vector)
        # exact kinds hand back the normalized float32 row itself; PQ kinds read the Parquet row (the same numbers)
        np.testing.assert_allclose(got, unit, atol=1e-6, err_msg=f"{kind} row {row}")
        assert (info["video_id"], info["clip_index"]) == (video_id, clip_index) and "path" not in info
        top = catalog.search_clip(video_id, clip_index, k=1)["matches"][0]
        assert (top["video_id"], top["clip_index"]) == (video_id, clip_index), (kind, row, top)


def test_lookups_by_video(synthetic):
    Index.build(synthetic, kind="flat", rebuild=True)
    catalog = Catalog(synthetic)
    meta, _ = read_embeddings(synthetic)
    ids = meta.column("video_id").to_pylist()
    video_id = ids[2000]
    clips = catalog.clips(video_id)
    assert [c["row"] for c in clips] == [i for i, v in enumerate(ids) if v == video_id]
    assert [c["clip_index"] for c in clips] == list(range(len(clips)))
    assert catalog.videos("V0001", limit=3) == ["clips/v00010.mp4", "clips/v00011.mp4", "clips/v00012.mp4"]
    assert catalog.videos(".mp4", limit=1000) == sorted(set(ids))
    with pytest.raises(NotFound, match="no video-level index"):
        catalog.search_video(video_id)
    with pytest.raises(NotFound, match="no video 'nope'"):
        catalog.clips("nope")
    with pytest.raises(NotFound, match="no row 4000"):
        catalog.metadata([4000])
    with pytest.raises(ValueError, match="k must be an integer in 1..1000"):
        catalog.search(np.ones(32), k=0)
    # a row names a file this machine does not have (/data/...): nothing to serve
    with pytest.raises(NotFound, match="not available on this server"):
        catalog.media_path(video_id)


def test_media_is_checked_on_every_request_and_unknown_ids_are_not_kept(tmp_path):
    """A video served once, then replaced by a symlink to a file that is no video (an attacker with write access to
    the videos folder), is not served any more: the check of the file and where its symlinks lead is made on every
    request, not once per video id. Ids no row names are refused without being remembered (any number of them)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out, videos = tmp_path / "out", tmp_path / "videos"
    write_dataset(out, np.random.default_rng(0).standard_normal((6, 8)).astype(np.float32), np.repeat([0, 1, 2], 2),
                  parts=1)
    videos.mkdir()
    (part,) = (out / "clips").glob("part-*.parquet")
    table = pq.read_table(part)
    paths = [str(videos / name.split("/")[-1]) for name in table.column("video_id").to_pylist()]
    pq.write_table(table.set_column(table.schema.get_field_index("path"), "path", pa.array(paths)), part)
    for path in set(paths):
        Path(path).write_bytes(b"a video")
    Index.build(out, kind="flat")
    catalog = Catalog(out)
    video = videos / "v00000.mp4"
    assert catalog.media_path("clips/v00000.mp4") == video.resolve()
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"not a video")
    video.unlink()
    video.symlink_to(secret)
    with pytest.raises(NotFound, match="not available on this server"):
        catalog.media_path("clips/v00000.mp4")
    video.unlink()
    video.write_bytes(b"a video again")
    assert catalog.media_path("clips/v00000.mp4") == video.resolve()
    for i in range(50):
        with pytest.raises(NotFound, match="not available on this server"):
            catalog.media_path(f"clips/unknown-{i}.mp4")
    assert set(catalog._media) <= {"clips/v00000.mp4", "clips/v00001.mp4", "clips/v00002.mp4"}, len(catalog._media)
