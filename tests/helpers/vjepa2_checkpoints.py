"""Tiny V-JEPA 2 checkpoints built offline by transformers itself (VJEPA2Model / VJEPA2ForVideoClassification with
every parameter randomized, written by save_pretrained), so the loader reads the real hub layout: the `vjepa2.` prefix
of classifiers, the pre-training predictor it must ignore, q/k/v as separate projections.

Randomizing biases and LayerNorm weights (not just matrices) is the point, as in hf_checkpoints.py: a dropped key
bias, a missing LayerNorm affine or a wrong eps then changes the output visibly. transformers is in the test extra;
tests that need it skip without it (require_vjepa2_transformers).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.helpers.hf_checkpoints import randomize_

# 32 px, patch 16, 4 frames, tubelet 2: N = 2 x 2 x 2 = 8 tokens; 4 heads of 16 (rotary section 4: 12 of 16 columns)
TINY = {"crop_size": 32, "patch_size": 16, "frames_per_clip": 4, "tubelet_size": 2, "hidden_size": 64,
        "num_hidden_layers": 2, "num_attention_heads": 4, "mlp_ratio": 2.0, "num_pooler_layers": 2,
        "pred_hidden_size": 32, "pred_num_attention_heads": 2, "pred_num_hidden_layers": 1, "pred_num_mask_tokens": 2}
IMAGENET = {"image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}


def require_vjepa2_transformers():
    """transformers with VJEPA2 (>= 4.53), or skip the calling test naming why."""
    transformers = pytest.importorskip("transformers", reason="the V-JEPA 2 parity tests compare with transformers")
    if not hasattr(transformers, "VJEPA2Model"):
        pytest.skip(f"transformers {transformers.__version__} has no VJEPA2Model (added in 4.53)")
    return transformers


def hf_config(*, classification: bool = False, num_labels: int = 5, **overrides):
    transformers = require_vjepa2_transformers()
    kwargs = {**TINY, **overrides}
    if classification:
        kwargs["id2label"] = {i: f"class_{i}" for i in range(num_labels)}
        kwargs["label2id"] = {f"class_{i}": i for i in range(num_labels)}
    return transformers.VJEPA2Config(**kwargs)


def make_hf_model(*, kind: str = "base", seed: int = 0, num_labels: int = 5, **overrides):
    """transformers' own model, every parameter randomized (N(0, 0.02) matrices, N(1, 0.1) gains, N(0, 0.1) biases
    and query token). kind: 'base' (VJEPA2Model) or 'classification' (VJEPA2ForVideoClassification)."""
    transformers = require_vjepa2_transformers()
    if kind not in ("base", "classification"):
        raise ValueError(f"kind must be 'base' or 'classification', got {kind!r}")
    cls = transformers.VJEPA2ForVideoClassification if kind == "classification" else transformers.VJEPA2Model
    model = cls(hf_config(classification=kind == "classification", num_labels=num_labels, **overrides)).eval()
    return randomize_(model, seed)


def make_hf_checkpoint(path: Path, *, kind: str = "base", seed: int = 0, processor: dict | None = None,
                       safe_serialization: bool = True, **overrides):
    """Write transformers' randomized model to `path` (config.json, weights, video_preprocessor_config.json with
    ImageNet mean/std and the crop / resize of VJEPA2VideoProcessor, or `processor` verbatim); returns
    (path, hf_model)."""
    model = make_hf_model(kind=kind, seed=seed, **overrides)
    path = Path(path)
    model.save_pretrained(path)
    if not safe_serialization:  # transformers 5 writes safetensors only: the same tensors as a torch pickle
        from safetensors.torch import load_file

        torch.save(load_file(path / "model.safetensors"), path / "pytorch_model.bin")
        (path / "model.safetensors").unlink()
    crop = model.config.crop_size
    if processor is None:
        processor = {"video_processor_type": "VJEPA2VideoProcessor", **IMAGENET, "do_resize": True,
                     "do_center_crop": True, "size": {"shortest_edge": int(crop * 256 / 224)},
                     "crop_size": {"height": crop, "width": crop}}
    (path / "video_preprocessor_config.json").write_text(json.dumps(processor))
    return path, model


def hf_encoder_tokens(hf, pixel_values: torch.Tensor, kept_ids: torch.Tensor | None = None) -> torch.Tensor:
    """transformers' encoder output (last_hidden_state) for clips keeping `kept_ids` (int64 (B, n), the same count
    per row, token indices in (t, h, w) order) through its own modules and its own position mask: the patch
    embeddings gathered at the kept ids, every layer called with position_mask=kept_ids (VJEPA2RopeAttention then
    takes each token's (t, h, w) from its id), the final LayerNorm. kept_ids=None: the plain forward. (B, n, D)."""
    encoder = (hf.vjepa2 if hasattr(hf, "vjepa2") else hf).encoder
    with torch.no_grad():
        if kept_ids is None:
            return encoder(pixel_values).last_hidden_state
        x = encoder.embeddings(pixel_values)  # (B, N, D)
        x = torch.gather(x, 1, kept_ids.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        for layer in encoder.layer:
            x = layer(x, kept_ids)[0]
        return encoder.layernorm(x)
