"""The service's view of an output (vmae_fast/retrieval/catalog.py) on synthetic embeddings, for the index kinds the
small served output does not reach: a query's vector is the stored one whatever the kind (read back from IVF lists,
or from the Parquet rows where PQ codes are lossy), and lookups by video answer from the index's own rows."""

from __future__ import annotations

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
