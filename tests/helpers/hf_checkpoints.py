"""Tiny Hugging Face VideoMAE checkpoints built offline with every parameter randomized.

Randomizing biases and LayerNorm weights (not just matrices) is the point: a dropped q/v bias, a missing LayerNorm
affine or a wrong eps then changes the output visibly instead of hiding behind default ones/zeros.

Checkpoints are written by our own writer (vmae_fast.checkpoint.save_hf), so no test depends on the transformers
installed to produce them; transformers is only needed by the parity tests, which read the very same files with
`from_pretrained` (so the writer is checked against transformers too). transformers 5.6-5.17 drop VideoMAE's q/v
biases: require_reference_transformers() skips a parity test there, naming the version.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

TINY = {"image_size": 32, "patch_size": 16, "num_channels": 3, "num_frames": 4, "tubelet_size": 2, "hidden_size": 64,
        "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128}
# transformers releases whose VideoMAE ignores q_bias / v_bias (not a numerical reference)
BROKEN_TRANSFORMERS = ((5, 6), (5, 17))


def transformers_version_refused(version: str) -> str | None:
    """Why transformers `version` cannot be the numerical reference, or None when it can."""
    m = re.match(r"(\d+)\.(\d+)", version)
    if m and BROKEN_TRANSFORMERS[0] <= (int(m.group(1)), int(m.group(2))) <= BROKEN_TRANSFORMERS[1]:
        return (f"transformers {version} drops VideoMAE's q/v biases (5.6-5.17): not a numerical reference; "
                f"install >= 5.18 or 4.x for the parity tests")
    return None


def require_reference_transformers():
    """The transformers module when it can serve as the numerical reference; otherwise the calling test is skipped
    (not installed, or a release in 5.6-5.17, named in the reason)."""
    transformers = pytest.importorskip("transformers", reason="the parity tests compare with transformers (extra test)")
    why = transformers_version_refused(transformers.__version__)
    if why:
        pytest.skip(why)
    return transformers


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


def tiny_config(*, kind: str = "classification", num_labels: int = 5, preprocessor: dict | None = None, **overrides):
    """A vmae_fast VideoMAEConfig with the conventions of a transformers-made checkpoint (eps 1e-12, fc_norm 1e-5,
    mean/std 0.5 or the preprocessor's). kind: 'classification' (head of `num_labels`, fc_norm with mean pooling) or
    'base' (VideoMAEModel: no head; no fc_norm)."""
    from vmae_fast.config import VideoMAEConfig

    if kind not in ("classification", "base"):
        raise ValueError(
            f"kind must be 'classification' or 'base' (our writer has no pre-training decoder), got {kind}"
        )
    fields = {**TINY, "use_mean_pooling": True, "layer_norm_eps": 1e-12, "qkv_bias": True, **overrides}
    fields["has_fc_norm"] = kind == "classification" and fields["use_mean_pooling"]
    fields["num_labels"] = num_labels if kind == "classification" else 0
    fields["id2label"] = {i: f"class_{i}" for i in range(num_labels)} if kind == "classification" else None
    if preprocessor is not None:
        fields["image_mean"], fields["image_std"] = preprocessor["image_mean"], preprocessor["image_std"]
    else:
        fields["image_mean"], fields["image_std"] = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
    return VideoMAEConfig(fc_norm_eps=1e-5, **fields)


def make_checkpoint(
    path: Path,
    *,
    kind: str = "classification",
    seed: int = 0,
    safe_serialization: bool = True,
    preprocessor: dict | None = None,
    **overrides,
) -> Path:
    """Write a tiny HF-format checkpoint folder with our writer (config.json, weights, preprocessor_config.json,
    replaced by `preprocessor` verbatim when given); every parameter randomized with `seed`. No transformers."""
    from vmae_fast.checkpoint import save_hf
    from vmae_fast.model import VideoMAE

    config = tiny_config(kind=kind, preprocessor=preprocessor, **overrides)
    model = randomize_(VideoMAE(config, backend="torch"), seed).eval()
    if config.qkv_bias:  # VideoMAE has no key bias: keep the fused bias's middle third zero, as the loader builds it
        with torch.no_grad():
            D = config.hidden_size
            for block in model.blocks:
                block.attn.wqkv.bias[D : 2 * D].zero_()
    path = save_hf(model, path, safe_serialization=safe_serialization)
    if preprocessor is not None:
        (path / "preprocessor_config.json").write_text(json.dumps(preprocessor))
    return path


def load_hf_model(path: Path, kind: str = "classification"):
    """transformers' model of a checkpoint folder (fp32, eval); skips the test where transformers is no reference."""
    transformers = require_reference_transformers()
    cls = {
        "classification": transformers.VideoMAEForVideoClassification,
        "base": transformers.VideoMAEModel,
        "pretraining": transformers.VideoMAEForPreTraining,
    }[kind]
    return cls.from_pretrained(path, attn_implementation="sdpa").eval()


def make_hf_checkpoint(
    path: Path,
    *,
    kind: str = "classification",
    seed: int = 0,
    safe_serialization: bool = True,
    preprocessor: dict | None = None,
    **overrides,
):
    """A checkpoint folder (make_checkpoint; for kind='pretraining' the one transformers' VideoMAEForPreTraining
    writes, decoder included) and transformers' model read from it: returns (path, hf_model). Parity tests only."""
    if kind == "pretraining":
        model = make_hf_model(kind=kind, seed=seed, **overrides)
        model.save_pretrained(path, safe_serialization=safe_serialization)
        if preprocessor is not None:
            (Path(path) / "preprocessor_config.json").write_text(json.dumps(preprocessor))
        return Path(path), model
    require_reference_transformers()
    path = make_checkpoint(
        path, kind=kind, seed=seed, safe_serialization=safe_serialization, preprocessor=preprocessor, **overrides
    )
    return path, load_hf_model(path, kind)


def hf_config(*, classification: bool = True, num_labels: int = 5, **overrides):
    transformers = require_reference_transformers()
    kwargs = {**TINY, "use_mean_pooling": True, "layer_norm_eps": 1e-12, "qkv_bias": True, **overrides}
    kwargs["qv_bias"] = kwargs["qkv_bias"]  # the 5.x name of the same switch
    if classification:
        kwargs["id2label"] = {i: f"class_{i}" for i in range(num_labels)}
        kwargs["label2id"] = {f"class_{i}": i for i in range(num_labels)}
    return transformers.VideoMAEConfig(**kwargs)


def make_hf_model(*, kind: str = "classification", seed: int = 0, **overrides):
    """transformers' own model, every parameter randomized. kind: 'classification' (VideoMAEForVideoClassification),
    'base' (VideoMAEModel), 'pretraining'. Parity tests only (skips where transformers is no reference)."""
    transformers = require_reference_transformers()
    cls = {
        "classification": transformers.VideoMAEForVideoClassification,
        "base": transformers.VideoMAEModel,
        "pretraining": transformers.VideoMAEForPreTraining,
    }[kind]
    config = hf_config(classification=kind == "classification", **overrides)
    model = cls(config).eval()
    return randomize_(model, seed)
