"""`vmae-fast demo`: extract -> index -> search on the sample videos shipped in vmae_fast/data, in about a minute
on a laptop CPU.

Model: --model when given; else a VideoMAE checkpoint already in the local Hugging Face cache (nothing is
downloaded); else a small model with deterministic random weights, written to OUT/model as an ordinary Hugging Face
checkpoint (ViT-S/16 width, 6 blocks, 8 frames of 112 px) so that `vmae-fast search OUT --video ...` can reload
exactly it later. Random weights give embeddings that still tell these synthetic scenes apart but mean nothing
semantically; the demo says so.

Public API (`__all__`): run_demo; sample_dir / sample_videos (the bundled videos); write_random_checkpoint (a
Hugging Face checkpoint folder with deterministic random weights, for demos and tests).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from .faults import MissingDependency, UnusableOutput

CACHED_CHECKPOINTS = ("MCG-NJU/videomae-base-finetuned-kinetics", "MCG-NJU/videomae-small-finetuned-kinetics",
                      "MCG-NJU/videomae-base")
# the demo's query: a shifted, resized, brighter, re-encoded copy of orbit_red.mp4, kept out of the index
QUERY_VIDEO, QUERY_AT_S, QUERY_SOURCE = "orbit_red_copy.mp4", 1.5, "orbit_red.mp4"
DEMO_MARKER = "_demo.json"
DEMO_MODEL = {"image_size": 112, "patch_size": 16, "num_frames": 8, "tubelet_size": 2, "hidden_size": 384,
              "num_hidden_layers": 6, "num_attention_heads": 6, "intermediate_size": 1536}


def sample_dir() -> Path:
    """Folder of the bundled sample videos (vmae_fast/data)."""
    return Path(__file__).resolve().parent / "data"


def sample_videos() -> list[Path]:
    return sorted(sample_dir().glob("*.mp4"))


def write_random_checkpoint(path: str | os.PathLike, seed: int = 0, **config) -> Path:
    """A Hugging Face VideoMAE checkpoint folder (config.json + model.safetensors fp16 + preprocessor_config.json,
    written by vmae_fast.checkpoint.save_hf) with deterministic random weights (checkpoint.random_state_dict) for the
    architecture DEMO_MODEL (overridden by `config`), HF conventions: LayerNorm eps 1e-12, mean/std 0.5."""
    import torch

    from .checkpoint import load_model, save_hf
    from .config import HF_DEFAULT_MEAN, HF_DEFAULT_STD, VideoMAEConfig

    cfg = VideoMAEConfig(**{"layer_norm_eps": 1e-12, "fc_norm_eps": 1e-5, "image_mean": HF_DEFAULT_MEAN,
                            "image_std": HF_DEFAULT_STD, **DEMO_MODEL, **config})
    model = load_model(f"random:small:{seed}", device="cpu", dtype=torch.float32, config=cfg)  # cfg as is, not small
    return save_hf(model, path, dtype=torch.float16, note=f"random weights (seed {seed}) written by vmae_fast.demo")


def _cached_checkpoint():
    """A VideoMAE checkpoint already in the local Hugging Face cache (loaded), or None. Never downloads."""
    from .checkpoint import load_model

    for repo_id in CACHED_CHECKPOINTS:
        try:
            return load_model(repo_id, device="cpu", allow_download=False)
        except Exception:  # noqa: BLE001, S110 - not cached, no huggingface_hub, unreadable: next, then random
            pass
    return None


def _prepare_out(out: Path) -> None:
    """The demo overwrites only folders it made itself (or empty ones)."""
    if out.exists() and any(out.iterdir()) and not (out / DEMO_MARKER).is_file():
        raise UnusableOutput(f"{str(out)!r} exists and was not made by `vmae-fast demo`; pass --out NEW_FOLDER")
    out.mkdir(parents=True, exist_ok=True)
    (out / DEMO_MARKER).write_text(json.dumps({"made_by": "vmae-fast demo"}) + "\n")


def run_demo(model: str | None = None, out: str | os.PathLike = "vmae-fast-demo", k: int = 5,
             workers: int | None = None) -> int:
    """Extract the samples (all but the query video) into `out`, index them, search with the query video, print
    the ranked matches and write OUT/results.png. Returns the exit status (0)."""
    from .extraction import extract
    from .retrieval.index import Index
    from .retrieval.search import format_results, run_query

    t0 = time.perf_counter()
    out = Path(out)
    _prepare_out(out)
    videos = sample_videos()
    if not videos:
        raise MissingDependency(f"no sample videos in {sample_dir()}; reinstall vmae-fast (or run "
                                "tools/make_samples.py)")
    query = sample_dir() / QUERY_VIDEO
    indexed = [str(v) for v in videos if v.name != QUERY_VIDEO]

    real = True
    if model is not None:
        source, label = model, str(model)
    else:
        source = _cached_checkpoint()
        if source is not None:
            label = f"{source.source} (found in the Hugging Face cache)"
        else:
            real = False
            source = str(write_random_checkpoint(out / "model").resolve())
            label = "demo model with random weights (ViT-S width, 6 blocks, 8 frames of 112 px)"
    if isinstance(model, str) and model.startswith("random:"):
        real = False
    print(f"vmae-fast demo: {len(indexed)} sample videos from {sample_dir()} -> {out}/")
    print(f"model: {label}")
    if not real:
        print("NOTE: random weights: the embeddings are not meaningful beyond telling these synthetic scenes apart.\n"
              "      For real results pass --model (an HF folder, .pth or cached hub id such as "
              "MCG-NJU/videomae-base-finetuned-kinetics).")

    summary = extract(indexed, out, model=source, overwrite=True, workers=workers, progress=sys.stderr.isatty())
    if summary["videos_failed"]:
        print(f"warning: {summary['videos_failed']} sample videos failed; see {out}/errors/")
    print(f"extract: {summary['clips']} clips of {summary['videos_ok']} videos in {summary['wall_s']:.1f} s "
          f"-> {out}/clips/")
    index = Index.build(out)
    print(f"index: {len(index)} clips, flat (exact cosine) -> {Index.paths(out)['faiss']}")

    results = run_query(index, out, video=str(query), at_s=QUERY_AT_S, k=k)
    print(f"\nsearch: {QUERY_VIDEO} is not in the index; it is {QUERY_SOURCE} shifted by 0.4 s, resized, "
          f"brightened and re-encoded.")
    print(format_results(index, results))
    top = results[0]["matches"][0] if results[0]["matches"] else {}
    if top.get("video_id") == QUERY_SOURCE:
        print(f"-> the best match is {QUERY_SOURCE}, the video it was copied from.")
    else:
        print(f"-> the best match is {top.get('video_id')}, not {QUERY_SOURCE}"
              + (" (random weights: no promise)" if not real else ""))
    png = out / "results.png"
    try:
        from .retrieval.contact_sheet import draw_results

        draw_results(out, results, png)
        print(f"contact sheet (query frames, then each match's frames with its score): {png}")
    except (OSError, ValueError) as e:
        print(f"(no contact sheet: {e})")
    print(f"\ndone in {time.perf_counter() - t0:.0f} s. Outputs in {out}/: clips/*.parquet (one row per clip, "
          f"embedding column), index/, results.png. Try:\n"
          f"  vmae-fast search {out} --clip plasma.mp4:0 -k 5\n"
          f"  vmae-fast search {out} --video {query} --at 3 --show {out}/query.png\n"
          f"  vmae-fast index {out} --level video && vmae-fast search {out} --level video --clip bars_scroll.mp4:0")
    return 0


__all__ = ["run_demo", "sample_dir", "sample_videos", "write_random_checkpoint"]
