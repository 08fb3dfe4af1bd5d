"""Reading an extract output back: clip rows, embeddings as one matrix, error rows and video rows, committed parts
only, in (shard, seq) order. Outputs of format 1 (before crops and the video table) read alike."""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np
import pyarrow as pa

from .layout import ERRORS_DIR, clip_parts, has_video_table, list_parts, load_run, video_parts
from .schemas import TOP, error_schema, file_metadata, schemas_for_run, video_schema
from .storage import out_path, parquet_file, read_schema, read_table
from .videos import VideoAccumulator


def _read_parts(directory, columns: list[str] | None = None):

    return [read_table(directory / part.name, columns=columns) for part in list_parts(directory)]


def read_clip_part(path: str | os.PathLike, columns: list[str] | None = None):
    """One clips part as a pyarrow Table; a part of format 1 (no crop_index: every row is the center crop) gets
    crop_index = 1 after clip_index, so old and new outputs read alike."""

    names = read_schema(path).names
    if "crop_index" in names:
        return read_table(path, columns=columns)
    wanted = None if columns is None else [c for c in columns if c != "crop_index"]
    table = read_table(path, columns=wanted)
    if columns is not None and "crop_index" not in columns:
        return table
    ones = pa.array(np.ones(table.num_rows, np.int8), pa.int8())
    field = pa.field("crop_index", pa.int8(), nullable=False)
    if columns is not None:
        at = columns.index("crop_index")
    else:
        at = table.column_names.index("clip_index") + 1 if "clip_index" in table.column_names else 0
    return table.add_column(at, field, ones)


def _read_clip_parts(out, columns: list[str] | None = None):
    return [read_clip_part(path, columns) for path in clip_parts(out)]


def _empty(schema, columns: list[str] | None = None):

    if columns is not None:
        schema = pa.schema([schema.field(c) for c in columns], metadata=schema.metadata)
    return schema.empty_table()


def read_clips(out: str | os.PathLike, columns: list[str] | None = None):
    """All committed clip rows of OUT as one pyarrow Table, parts in (shard, seq) order; temp files ignored.

    With no parts yet, an empty table with the run's schema. `columns` selects a subset. Rows are views: key
    (video_id, clip_index, crop_index); parts of format 1 (before crops) read with crop_index 1.
    """

    tables = _read_clip_parts(out_path(out), columns)
    if not tables:
        return _empty(schemas_for_run(load_run(out))[0], columns)
    return pa.concat_tables(tables)


def read_errors(out: str | os.PathLike):
    """All error rows of OUT (path, video_id, stage, error, attempts) as one pyarrow Table; none yet: an empty one
    (a folder that is not an output is MissingFile, as for the other readers: not 'no errors')."""

    tables = _read_parts(out_path(out) / ERRORS_DIR)
    if not tables:
        load_run(out)
        return _empty(error_schema())
    return pa.concat_tables(tables)


def read_embeddings(out: str | os.PathLike):
    """(metadata Table without `embedding`, float32 numpy (n, D)) with rows in the same order as read_clips(out)."""

    out = out_path(out)
    paths = clip_parts(out)
    tables = [read_clip_part(path) for path in paths]
    if not tables:
        schema = schemas_for_run(load_run(out))[0]
        meta = _empty(schema, [n for n in schema.names if n != "embedding"])
        return meta, np.zeros((0, schema.field("embedding").type.list_size), np.float32)
    matrices = []
    for path, table in zip(paths, tables, strict=True):
        column = table.column("embedding")
        dim = column.type.list_size
        flat = pa.concat_arrays([chunk.flatten() for chunk in column.chunks]) if column.num_chunks else None
        if flat is None or len(flat) != table.num_rows * dim:
            raise ValueError(f"{path.name}: embedding column has {0 if flat is None else len(flat)} values, "
                             f"expected {table.num_rows} x {dim}")
        matrices.append(flat.to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(-1, dim))
    meta = pa.concat_tables([t.drop_columns(["embedding"]) for t in tables])
    return meta, np.concatenate(matrices) if len(matrices) > 1 else matrices[0]


def run_labels(out: str | os.PathLike) -> tuple[dict | None, int, int]:
    """(id2label, embedding_dim, num_labels) of the run in OUT (from _run.json)."""

    run = load_run(out)
    config = run["config"]
    return run.get("model", {}).get("id2label"), int(config["embedding_dim"]), int(config.get("num_labels") or 0)


def aggregate_clip_part(path: str | os.PathLike, id2label: dict | None, dim: int, num_labels: int,
                        top: int = TOP, batch_size: int = 16_384):
    """The video rows of one clips part (a video's clips never straddle parts), streamed in batches: for outputs
    without OUT/videos (written before the video table existed). duration_s is then the span of the views."""

    acc = VideoAccumulator(dim, num_labels)
    with parquet_file(path) as f:
        names = set(f.schema_arrow.names)
        wanted = [c for c in ("video_id", "path", "clip_index", "crop_index", "start_s", "end_s", "embedding",
                              "logits") if c in names]
        for batch in f.iter_batches(batch_size=batch_size, columns=wanted):
            cols = {c: batch.column(c) for c in wanted}
            emb = cols["embedding"].flatten().to_numpy(zero_copy_only=False).reshape(batch.num_rows, dim)
            logits = None
            if num_labels:
                logits = cols["logits"].flatten().to_numpy(zero_copy_only=False).reshape(batch.num_rows, num_labels)
            acc.add(cols["video_id"].to_pylist(), emb, logits,
                    **{c: cols[c].to_pylist() for c in ("path", "clip_index", "crop_index", "start_s", "end_s")
                       if c in cols})
    return acc.table(id2label, top)


def iter_videos(out: str | os.PathLike, columns: list[str] | None = None) -> Iterator:
    """pyarrow Tables of video rows, one per committed part, in (shard, seq) order (see read_videos)."""

    out = out_path(out)
    if has_video_table(out):
        for path in video_parts(out):
            yield read_table(path, columns=columns)
        return
    id2label, dim, num_labels = run_labels(out)  # an output from before the video table: aggregate its clips
    for path in clip_parts(out):
        table = aggregate_clip_part(path, id2label, dim, num_labels)
        yield table.select(columns) if columns else table


def read_videos(out: str | os.PathLike, columns: list[str] | None = None):
    """All video rows of an extract output as one pyarrow Table (parts in (shard, seq) order, a video's row next to
    the part holding its clips): video_id, path, num_views, num_clips, num_crops, start_s, end_s, duration_s,
    embedding (mean of the views, not renormalized), and with a classification head probs, top_labels, top_probs.
    With no committed video yet, an empty table with that schema. Outputs written before the video table existed
    are aggregated from their clips on the fly (duration_s = the span of the views). `columns` selects a subset.
    """


    tables = list(iter_videos(out, columns))
    if tables:
        return pa.concat_tables(tables)
    run = load_run(out)
    config = run["config"]
    schema = video_schema(int(config["embedding_dim"]), int(config.get("num_labels") or 0),
                          metadata=file_metadata(run))
    if columns is not None:
        schema = pa.schema([schema.field(c) for c in columns], metadata=schema.metadata)
    return schema.empty_table()
