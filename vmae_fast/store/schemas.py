"""Arrow schemas of the three part tables (clips, videos, errors) and the Parquet key-value metadata every part
carries (model architecture and source, what `embedding` is, preprocessing, sampling, keep policy, dtype, device,
id2label, config hash)."""

from __future__ import annotations

import json

import pyarrow as pa

EMBEDDING_DTYPES = ("float32", "float16")
TOP = 5  # labels kept in a video row's top_labels / top_probs
EMBEDDING_NOTE = "mean of the views' embeddings (clips x crops), not renormalized"
PROBS_NOTE = "mean over the views of softmax(logits)"


def clip_schema(embedding_dim: int, num_labels: int | None, embedding_dtype: str = "float32",
                metadata: dict[str, str] | None = None):
    """Arrow schema of clips parts: the DESIGN.md columns, one row per view (video_id, clip_index, crop_index);
    `logits` only when the model has a head."""
    if embedding_dtype not in EMBEDDING_DTYPES:
        raise ValueError(f"embedding_dtype must be one of {EMBEDDING_DTYPES}, got {embedding_dtype!r}")
    fields = [
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("path", pa.string(), nullable=False),
        pa.field("clip_index", pa.int32(), nullable=False),
        pa.field("crop_index", pa.int8(), nullable=False),  # 0 start, 1 center, 2 end of the long side
        pa.field("start_frame", pa.int64(), nullable=False),
        pa.field("end_frame", pa.int64(), nullable=False),
        pa.field("start_s", pa.float64(), nullable=False),
        pa.field("end_s", pa.float64(), nullable=False),
        pa.field("padded_frames", pa.int16(), nullable=False),
        pa.field("num_tokens", pa.int32(), nullable=False),
        pa.field("embedding", pa.list_(pa.field("element", getattr(pa, embedding_dtype)(), nullable=False),
                                       embedding_dim), nullable=False),
    ]
    if num_labels:
        fields.append(pa.field("logits", pa.list_(pa.field("element", pa.float32(), nullable=False), num_labels),
                               nullable=False))
    return pa.schema(fields, metadata=metadata)


def error_schema(metadata: dict[str, str] | None = None):
    return pa.schema([
        pa.field("path", pa.string(), nullable=False),
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("stage", pa.string(), nullable=False),
        pa.field("error", pa.string(), nullable=False),
        pa.field("attempts", pa.int32(), nullable=False),
    ], metadata=metadata)


def video_schema(embedding_dim: int, num_labels: int, top: int = TOP, metadata: dict[str, str] | None = None):
    """Arrow schema of OUT/videos parts; probs / top_labels / top_probs only when the model has a head."""
    def floats(n: int):
        return pa.list_(pa.field("element", pa.float32(), nullable=False), n)

    fields = [
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("path", pa.string(), nullable=False),
        pa.field("num_views", pa.int32(), nullable=False),
        pa.field("num_clips", pa.int32(), nullable=False),
        pa.field("num_crops", pa.int8(), nullable=False),
        pa.field("start_s", pa.float64(), nullable=False),
        pa.field("end_s", pa.float64(), nullable=False),
        pa.field("duration_s", pa.float64(), nullable=False),
        pa.field("embedding", floats(embedding_dim), nullable=False, metadata={"description": EMBEDDING_NOTE}),
    ]
    if num_labels:
        fields += [
            pa.field("probs", floats(num_labels), nullable=False, metadata={"description": PROBS_NOTE}),
            pa.field("top_labels", pa.list_(pa.field("element", pa.string(), nullable=False)), nullable=False,
                     metadata={"description":
                               f"the {min(top, num_labels)} most probable labels (id2label), best first"}),
            pa.field("top_probs", pa.list_(pa.field("element", pa.float32(), nullable=False)), nullable=False,
                     metadata={"description": "probs of top_labels"}),
        ]
    return pa.schema(fields, metadata=metadata)


def file_metadata(run: dict) -> dict[str, str]:
    """Parquet key-value metadata of every part: each value a JSON string."""
    model = run["model"]
    config = run["config"]
    values = {
        "architecture": model.get("architecture", "videomae"),  # runs written before V-JEPA 2 existed: VideoMAE
        "embedding": model.get("embedding"),  # what a clip's embedding is for this checkpoint (model.describe())
        "model_source": model.get("source"),
        "model_config": model.get("config"),
        "weights_sha256": model.get("weights_sha256"),
        "preprocessing": model.get("preprocessing"),
        "sampling": config["sampling"],
        "keep": config["keep"],
        "dtype": config["dtype"],
        "device": run.get("device"),
        "id2label": model.get("id2label"),
        "embedding_dtype": config["embedding_dtype"],
        "config_hash": run["config_hash"],
        "library_version": run["library_version"],
    }
    return {key: json.dumps(value, sort_keys=True, default=str) for key, value in values.items()}


def schemas_for_run(run: dict):
    """(clip schema, error schema) of the parts of a run, metadata included."""
    config = run["config"]
    metadata = file_metadata(run)
    return (clip_schema(config["embedding_dim"], config["num_labels"], config["embedding_dtype"], metadata),
            error_schema(metadata))


def video_schema_for_run(run: dict):
    """Schema of the run's videos parts (video_schema), metadata included."""
    config = run["config"]
    return video_schema(int(config["embedding_dim"]), int(config["num_labels"] or 0),
                              metadata=file_metadata(run))
