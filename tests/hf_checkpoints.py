"""Tiny Hugging Face VideoMAE checkpoints built offline with every parameter randomized.

Randomizing biases and LayerNorm weights (not just matrices) is the point: a dropped q/v bias, a missing LayerNorm
affine or a wrong eps then changes the output visibly instead of hiding behind default ones/zeros.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

TINY = {"image_size": 32, "patch_size": 16, "num_channels": 3, "num_frames": 4, "tubelet_size": 2, "hidden_size": 64,
        "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128}


def randomize_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every floating parameter ~ N(0, 0.02) (matrices) or N(mean, 0.1) (vectors: biases, LayerNorm weights)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
            elif name.endswith("weight"):  # LayerNorm gains around 1, not exactly 1
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return model


def hf_config(*, classification: bool = True, num_labels: int = 5, **overrides):
    from transformers import VideoMAEConfig

    kwargs = {**TINY, "use_mean_pooling": True, "layer_norm_eps": 1e-12, "qkv_bias": True, **overrides}
    if classification:
        kwargs["id2label"] = {i: f"class_{i}" for i in range(num_labels)}
        kwargs["label2id"] = {f"class_{i}": i for i in range(num_labels)}
    return VideoMAEConfig(**kwargs)


def make_hf_model(*, kind: str = "classification", seed: int = 0, **overrides):
    """kind: 'classification' (VideoMAEForVideoClassification), 'base' (VideoMAEModel), 'pretraining'."""
    import transformers

    cls = {"classification": transformers.VideoMAEForVideoClassification,
           "base": transformers.VideoMAEModel,
           "pretraining": transformers.VideoMAEForPreTraining}[kind]
    config = hf_config(classification=kind == "classification", **overrides)
    model = cls(config).eval()
    return randomize_(model, seed)


def make_hf_checkpoint(path: Path, *, kind: str = "classification", seed: int = 0, safe_serialization: bool = True,
                       preprocessor: dict | None = None, **overrides):
    """Write a checkpoint directory (config.json + weights [+ preprocessor_config.json]); returns (path, hf_model)."""
    path = Path(path)
    model = make_hf_model(kind=kind, seed=seed, **overrides)
    model.save_pretrained(path, safe_serialization=safe_serialization)
    if preprocessor is not None:
        (path / "preprocessor_config.json").write_text(json.dumps(preprocessor))
    return path, model
