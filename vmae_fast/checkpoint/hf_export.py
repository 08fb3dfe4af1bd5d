"""save_hf: write a VideoMAE as a Hugging Face checkpoint folder that load_model and transformers both read."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from ..config import VideoMAEConfig
from ..model import VideoMAE
from .videomae_keys import HF_LEGACY_NAMES, HF_WEIGHT_MAP

# transformers builds fc_norm as nn.LayerNorm(D): eps 1e-5, which config.json cannot change
HF_FC_NORM_EPS = 1e-5


def hf_config_dict(config: VideoMAEConfig) -> dict[str, Any]:
    """The config.json a Hugging Face VideoMAE checkpoint of this architecture carries (read back by
    VideoMAEConfig.from_hf). Both spellings of the q/v bias switch are written: `qkv_bias` (transformers 4.x) and
    `qv_bias` (5.x)."""
    c = config
    classification = c.num_labels > 0 or (c.use_mean_pooling and c.has_fc_norm)
    labels = c.id2label or {i: f"LABEL_{i}" for i in range(c.num_labels)}
    return {"model_type": "videomae",
            "architectures": ["VideoMAEForVideoClassification" if classification else "VideoMAEModel"],
            "image_size": c.image_size, "patch_size": c.patch_size, "num_channels": c.num_channels,
            "num_frames": c.num_frames, "tubelet_size": c.tubelet_size, "hidden_size": c.hidden_size,
            "num_hidden_layers": c.num_hidden_layers, "num_attention_heads": c.num_attention_heads,
            "intermediate_size": c.intermediate_size, "hidden_act": "gelu", "qkv_bias": c.qkv_bias,
            "qv_bias": c.qkv_bias, "use_mean_pooling": c.use_mean_pooling, "layer_norm_eps": c.layer_norm_eps,
            "id2label": {str(i): v for i, v in labels.items()}, "label2id": {v: i for i, v in labels.items()}}


def hf_state_dict(config: VideoMAEConfig, state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our state dict -> Hugging Face VideoMAE keys: HF_WEIGHT_MAP read backwards (the fused qkv split into
    query/key/value, its always-zero key bias dropped, the patch weight back to the Conv3d shape), q/v biases under
    the names transformers itself writes (`q_bias`/`v_bias`, read by 4.x and 5.x), and the `videomae.` prefix of a
    classification checkpoint."""
    prefix = "videomae." if "fc_norm.weight" in state_dict or "head.weight" in state_dict else ""
    top_level = {"fc_norm.weight", "fc_norm.bias", "head.weight", "head.bias"}  # outside the `videomae.` prefix
    legacy = {new: old for old, new in HF_LEGACY_NAMES.items()}
    out: dict[str, torch.Tensor] = {}
    for name, tensor in state_dict.items():
        m = re.match(r"^blocks\.(\d+)\.(.*)$", name)
        template, index = (f"blocks.{{}}.{m.group(2)}", m.group(1)) if m else (name, None)
        targets = HF_WEIGHT_MAP[template]
        if name == "patch_embed.weight":  # ours is the Conv3d weight flattened: (D, C*ts*P*P)
            c = config
            tensor = tensor.reshape(c.hidden_size, c.num_channels, c.tubelet_size, c.patch_size, c.patch_size)
        fused = isinstance(targets, tuple)
        parts = zip(targets, tensor.chunk(len(targets)), strict=True) if fused else [(targets, tensor)]
        for target, part in parts:
            if target is None:  # the key projection's bias: not a parameter in VideoMAE
                continue
            key = target.format(index)
            for new, old in legacy.items():
                key = key[: -len(new)] + old if key.endswith(new) else key
            out[("" if name in top_level else prefix) + key] = part.contiguous()
    return out


def save_hf(model: VideoMAE, path: str | os.PathLike, *, dtype: torch.dtype | None = None,
            safe_serialization: bool = True, note: str | None = None) -> Path:
    """Write `model` as a Hugging Face VideoMAE checkpoint folder that load_model and transformers
    (VideoMAEForVideoClassification / VideoMAEModel .from_pretrained) both read: config.json, model.safetensors (or
    pytorch_model.bin with safe_serialization=False) and preprocessor_config.json (the model's mean/std and size).
    dtype: the stored dtype (default: the model's). note: a free-text `vmae_fast_note` in config.json.
    Raises ValueError for what the format cannot express (an fc_norm eps other than transformers' fixed 1e-5, a
    head over mean pooling without fc_norm). Returns the folder."""
    if not isinstance(model, VideoMAE):
        raise TypeError(f"save_hf takes a vmae_fast VideoMAE (from load_model), got {type(model).__name__}")
    c = model.config
    if model.fc_norm is not None and c.fc_norm_eps != HF_FC_NORM_EPS:
        raise ValueError(f"transformers builds fc_norm with eps {HF_FC_NORM_EPS:g} and config.json cannot change it; "
                         f"this model uses fc_norm_eps {c.fc_norm_eps:g}, so a Hugging Face checkpoint of it would "
                         f"compute something else (load it with config={{'fc_norm_eps': {HF_FC_NORM_EPS:g}}} first "
                         f"if that is what you want)")
    if c.use_mean_pooling and not c.has_fc_norm and c.num_labels > 0:
        raise ValueError("a classification head over mean pooling without fc_norm has no Hugging Face equivalent "
                         "(VideoMAEForVideoClassification always has fc_norm with mean pooling)")
    state = {k: v.detach().to("cpu", dtype or v.dtype) for k, v in model.state_dict().items()}
    weights = hf_state_dict(c, state)
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    if safe_serialization:
        save_file(weights, str(path / "model.safetensors"), metadata={"format": "pt"})
    else:
        torch.save(weights, path / "pytorch_model.bin")
    hf_config = hf_config_dict(c)
    hf_config["torch_dtype"] = str(dtype or model.dtype).removeprefix("torch.")
    if note:
        hf_config["vmae_fast_note"] = note
    (path / "config.json").write_text(json.dumps(hf_config, indent=1) + "\n")
    preprocessor = {"image_processor_type": "VideoMAEImageProcessor", "do_resize": True, "do_center_crop": True,
                    "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
                    "image_mean": list(c.image_mean), "image_std": list(c.image_std),
                    "size": {"shortest_edge": c.image_size}, "crop_size": {"height": c.image_size,
                                                                           "width": c.image_size}}
    (path / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=1) + "\n")
    return path
