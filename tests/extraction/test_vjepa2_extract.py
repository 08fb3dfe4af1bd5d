"""`vmae-fast extract --model DIR` on tiny V-JEPA 2 checkpoints written by transformers, end to end through the real
extractor (decode worker, runner, writer): every stored row equals transformers' VJEPA2ForVideoClassification /
VJEPA2Model on the same clip, decoded and cropped by the test itself as VJEPA2VideoProcessor's geometry says (short
side resized to int(crop * 256 / 224), the center crop: tests/helpers/videos.py independent_views), normalized with
the processor's ImageNet mean/std. Then what downstream reads: _run.json and Parquet metadata name the architecture,
the preprocessing and what `embedding` is; labels, index and search --video run unchanged; a resume skips everything.

Tolerance rel 1e-4 (fp32, the issue's bar): the rows are the model's fp32 outputs, so the difference is the summation
order measured in tests/model/test_vjepa2.py (~1e-6) plus the batch shape the runner used.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from tests.helpers.videos import independent_views, make_video
from tests.helpers.vjepa2_checkpoints import hf_encoder_tokens, make_hf_checkpoint
from vmae_fast import cli, store
from vmae_fast.tokens import parse_keep

TOL = 1e-4
CLI_OPTIONS = ["--workers", "1", "--batch-size", "4", "--no-progress"]
# name -> (width, height, frames): landscape and portrait (the crop is centered on both axes after the resize to 36),
# and a video shorter than one clip (padded with its last sampled frame)
VIDEOS = {"landscape.mp4": (64, 48, 40), "portrait.mp4": (48, 64, 26), "short.mp4": (64, 40, 7)}


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    d = tmp_path_factory.mktemp("vjepa2-videos")
    return d, {name: make_video(d / name, "h264_bframes", width=w, height=h, frames=n, markers=True)
               for name, (w, h, n) in VIDEOS.items()}


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    path, hf = make_hf_checkpoint(tmp_path_factory.mktemp("vjepa2-cls") / "ckpt", kind="classification", seed=31)
    return path, hf


@pytest.fixture(scope="module")
def run_out(tmp_path_factory, videos, classifier):
    d, _ = videos
    out = tmp_path_factory.mktemp("vjepa2-out") / "out"
    assert cli.main(["extract", str(d), "-o", str(out), "--model", str(classifier[0]), *CLI_OPTIONS]) == 0
    return out


def clip_frames(exp, row, num_frames: int, image_size: int, resize: int) -> np.ndarray:
    """uint8 (T, S, S, 3) of a stored row, from the test's own decode (frame indices from start_frame / end_frame:
    a fixed step, padding repeats the last sampled frame)."""
    ref = independent_views(exp, image_size, 1, resize)
    real = num_frames - row["padded_frames"]
    step = (row["end_frame"] - 1 - row["start_frame"]) // max(real - 1, 1)
    idx = row["start_frame"] + step * np.minimum(np.arange(num_frames), real - 1)
    return np.stack([ref[i][0] for i in idx])


def pixel_values(frames: np.ndarray, config) -> torch.Tensor:
    """VJEPA2VideoProcessor's rescale and normalize of uint8 (B, T, H, W, 3) -> float (B, T, 3, H, W)."""
    mean = torch.tensor(config.image_mean).view(1, 1, 3, 1, 1)
    std = torch.tensor(config.image_std).view(1, 1, 3, 1, 1)
    return (torch.from_numpy(frames).permute(0, 1, 4, 2, 3).float() / 255.0 - mean) / std


def rows(out) -> list[dict]:
    return sorted(store.read_clips(out).to_pylist(), key=lambda r: (r["video_id"], r["clip_index"]))


def rel_err(got, want) -> float:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.abs(got - want).max() / np.abs(want).max())


def test_classifier_rows_equal_transformers_on_the_same_clips(run_out, videos, classifier):
    _, expected = videos
    path, hf = classifier
    from vmae_fast import load_model

    cfg = load_model(path, device="cpu").config
    assert (cfg.image_size, cfg.resize_size, cfg.num_frames) == (32, 36, 4)
    got = rows(run_out)
    assert sorted({r["video_id"] for r in got}) == sorted(VIDEOS)
    assert [r["clip_index"] for r in got if r["video_id"] == "short.mp4"] == [0]
    frames = np.stack([clip_frames(expected[r["video_id"]], r, cfg.num_frames, cfg.image_size, cfg.resize_size)
                       for r in got])
    x = pixel_values(frames, cfg)
    with torch.no_grad():
        logits = hf(x).logits
        pooled = hf.pooler(hf.vjepa2(x, skip_predictor=True).last_hidden_state)
    errs = {"logits": rel_err([r["logits"] for r in got], logits),
            "embedding": rel_err([r["embedding"] for r in got], pooled)}
    print(f"\nV-JEPA 2 extract vs transformers ({len(got)} clips): "
          + " ".join(f"{k}={v:.2e}" for k, v in errs.items()))
    assert max(errs.values()) <= TOL, errs
    assert all(r["num_tokens"] == cfg.num_tokens for r in got)
    # the geometry has teeth: the center square scaled to 32 (VideoMAE's way) is another picture
    square = np.stack([independent_views(expected[r["video_id"]], 32, 1)[r["start_frame"]][0] for r in got])
    assert np.abs(square.astype(np.float64) - frames[:, 0]).mean() > 4.0


def test_run_and_parquet_metadata_say_what_was_computed(run_out):
    run = store.load_run(run_out)
    model_config = run["config"]["model"]["config"]
    assert model_config["architecture"] == "vjepa2" and model_config["resize_size"] == 36
    assert run["config"]["sampling"]["resize"] == 36
    assert run["model"]["architecture"] == "vjepa2"
    part = next((run_out / "clips").glob("part-*.parquet"))
    kv = {k.decode(): json.loads(v) for k, v in pq.read_schema(part).metadata.items() if not k.startswith(b"ARROW")}
    assert kv["architecture"] == "vjepa2"
    assert kv["embedding"].startswith("the attentive pooler's output")
    assert kv["preprocessing"]["resize_shortest_edge"] == 36 and kv["preprocessing"]["image_size"] == 32
    assert kv["preprocessing"]["mean"] == [0.485, 0.456, 0.406] and kv["sampling"]["resize"] == 36


def test_downstream_labels_index_search_and_resume(run_out, videos, classifier, capsys):
    d, _ = videos
    assert cli.main(["labels", str(run_out), "--top", "2"]) == 0
    assert "class_" in capsys.readouterr().out
    assert cli.main(["index", str(run_out)]) == 0
    capsys.readouterr()
    assert cli.main(["search", str(run_out), "--video", str(d / "landscape.mp4"), "--at", "0.3", "-k", "3",
                     "--json"]) == 0
    (result,) = json.loads(capsys.readouterr().out)["results"]
    top = result["matches"][0]
    assert top["video_id"] == "landscape.mp4" and top["score"] == pytest.approx(1.0, abs=1e-4)
    before = rows(run_out)
    assert cli.main(["extract", str(d), "-o", str(run_out), "--model", str(classifier[0]), *CLI_OPTIONS]) == 0
    assert rows(run_out) == before  # the same configuration resumes: everything was committed, nothing redone


def test_encoder_with_clip_frames_and_kept_tokens_equals_transformers_position_mask(tmp_path, videos, capsys):
    """A base encoder trained with 4 frames, run with --clip-frames 6 and --keep tube:0.5: the rows are the mean of
    transformers' encoder tokens with position_mask = the kept ids, on 6-frame clips; search --video embeds its query
    with the same 6 frames."""
    d, expected = videos
    path, hf = make_hf_checkpoint(tmp_path / "base", kind="base", seed=32)
    out = tmp_path / "out"
    assert cli.main(["extract", str(d), "-o", str(out), "--model", str(path), "--clip-frames", "6", "--keep",
                     "tube:0.5", *CLI_OPTIONS]) == 0
    from vmae_fast import load_model

    cfg = load_model(path, device="cpu", config={"num_frames": 6}).config
    got = rows(out)
    frames = np.stack([clip_frames(expected[r["video_id"]], r, 6, 32, 36) for r in got])
    keep = parse_keep("tube:0.5").mask(torch.from_numpy(frames), cfg)  # (B, N) the kept set
    assert all(r["num_tokens"] == int(keep[0].sum()) == 6 for r in got)  # 3 slices x half of 2 x 2
    ids = torch.stack([k.nonzero()[:, 0] for k in keep])  # (B, 6)
    want = hf_encoder_tokens(hf, pixel_values(frames, cfg), ids).mean(1)
    err = rel_err([r["embedding"] for r in got], want)
    with capsys.disabled():
        print(f"\nV-JEPA 2 encoder --clip-frames 6 --keep tube:0.5 vs transformers: embedding {err:.2e}")
    assert err <= TOL
    run = store.load_run(out)
    assert run["config"]["model"]["config"]["num_frames"] == 6 and run["config"]["sampling"]["num_frames"] == 6
    assert run["model"]["embedding"].startswith("mean of the encoder's last-layer tokens")
    assert cli.main(["index", str(out)]) == 0
    capsys.readouterr()
    assert cli.main(["search", str(out), "--video", str(d / "portrait.mp4"), "--at", "0.2", "-k", "2", "--json"]) == 0
    (result,) = json.loads(capsys.readouterr().out)["results"]
    assert result["matches"][0]["score"] == pytest.approx(1.0, abs=1e-4)


def test_serve_answers_an_upload_through_the_vjepa2_model(run_out, videos, tmp_path):
    """`vmae-fast serve` on a V-JEPA 2 output loads the model the output names (the classifier, its attentive pooler
    making the embedding) for an uploaded file: the clip it was cut from comes first with cosine 1, as search --video
    says (the same frames through the same model; fp32, batch of 1 vs the runner's batch: ~1e-6)."""
    import httpx

    from tests.helpers.server import Served

    d, _ = videos
    assert cli.main(["index", str(run_out)]) == 0  # idempotent when an earlier test built it
    served = Served(run_out, log=tmp_path / "serve.log")
    try:
        body = (d / "landscape.mp4").read_bytes()
        with httpx.Client(base_url=served.url, timeout=180) as client:
            response = client.post("/api/search/upload", params={"at_s": 0.3, "k": 3}, content=body,
                                   headers={"content-type": "application/octet-stream"})
            assert response.status_code == 200, response.text
            result = response.json()
        q, top = result["query"], result["matches"][0]
        assert (top["video_id"], top["clip_index"]) == ("landscape.mp4", q["clip_index"])
        assert top["score"] == pytest.approx(1.0, abs=1e-4)
        assert served.alive()
    finally:
        served.stop()
