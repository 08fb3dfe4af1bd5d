"""V-JEPA 2 checkpoints (transformers' VJEPA2Model / VJEPA2ForVideoClassification layout): the key table, the
config a checkpoint implies, and the conversion to our state dict (the pre-training predictor dropped)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch

from ..config import VJEPA2_PRESETS, VJEPA2Config
from ..faults import InvalidModel
from ..vjepa2 import VJEPA2
from .mapping import (
    expected_shapes,
    from_hf,
    key_problems,
    labels_from_hf,
    map_weights,
    strip_prefixes,
    with_processor,
    without_architecture,
)

# V-JEPA 2 (transformers' VJEPA2Model / VJEPA2ForVideoClassification, after the `vjepa2.` prefix is stripped): q, k and
# v all have biases; the classifier's attentive pooler has self-attention layers and one cross-attention layer.
VJEPA2_WEIGHT_MAP: dict[str, Any] = {
    "patch_embed.weight": "encoder.embeddings.patch_embeddings.proj.weight",  # Conv3d (D, C, ts, P, P), flattened
    "patch_embed.bias": "encoder.embeddings.patch_embeddings.proj.bias",
    "blocks.{}.norm1.weight": "encoder.layer.{}.norm1.weight",
    "blocks.{}.norm1.bias": "encoder.layer.{}.norm1.bias",
    "blocks.{}.attn.wqkv.weight": ("encoder.layer.{}.attention.query.weight", "encoder.layer.{}.attention.key.weight",
                                   "encoder.layer.{}.attention.value.weight"),
    "blocks.{}.attn.wqkv.bias": ("encoder.layer.{}.attention.query.bias", "encoder.layer.{}.attention.key.bias",
                                 "encoder.layer.{}.attention.value.bias"),
    "blocks.{}.attn.proj.weight": "encoder.layer.{}.attention.proj.weight",
    "blocks.{}.attn.proj.bias": "encoder.layer.{}.attention.proj.bias",
    "blocks.{}.norm2.weight": "encoder.layer.{}.norm2.weight",
    "blocks.{}.norm2.bias": "encoder.layer.{}.norm2.bias",
    "blocks.{}.mlp.fc1.weight": "encoder.layer.{}.mlp.fc1.weight",
    "blocks.{}.mlp.fc1.bias": "encoder.layer.{}.mlp.fc1.bias",
    "blocks.{}.mlp.fc2.weight": "encoder.layer.{}.mlp.fc2.weight",
    "blocks.{}.mlp.fc2.bias": "encoder.layer.{}.mlp.fc2.bias",
    "norm.weight": "encoder.layernorm.weight",
    "norm.bias": "encoder.layernorm.bias",
    "pooler.query": "pooler.query_tokens",  # (1, 1, D) -> (1, D)
    "pooler.blocks.{}.norm1.weight": "pooler.self_attention_layers.{}.layer_norm1.weight",
    "pooler.blocks.{}.norm1.bias": "pooler.self_attention_layers.{}.layer_norm1.bias",
    "pooler.blocks.{}.attn.wqkv.weight": ("pooler.self_attention_layers.{}.self_attn.q_proj.weight",
                                          "pooler.self_attention_layers.{}.self_attn.k_proj.weight",
                                          "pooler.self_attention_layers.{}.self_attn.v_proj.weight"),
    "pooler.blocks.{}.attn.wqkv.bias": ("pooler.self_attention_layers.{}.self_attn.q_proj.bias",
                                        "pooler.self_attention_layers.{}.self_attn.k_proj.bias",
                                        "pooler.self_attention_layers.{}.self_attn.v_proj.bias"),
    "pooler.blocks.{}.attn.proj.weight": "pooler.self_attention_layers.{}.self_attn.out_proj.weight",
    "pooler.blocks.{}.attn.proj.bias": "pooler.self_attention_layers.{}.self_attn.out_proj.bias",
    "pooler.blocks.{}.norm2.weight": "pooler.self_attention_layers.{}.layer_norm2.weight",
    "pooler.blocks.{}.norm2.bias": "pooler.self_attention_layers.{}.layer_norm2.bias",
    "pooler.blocks.{}.mlp.fc1.weight": "pooler.self_attention_layers.{}.mlp.fc1.weight",
    "pooler.blocks.{}.mlp.fc1.bias": "pooler.self_attention_layers.{}.mlp.fc1.bias",
    "pooler.blocks.{}.mlp.fc2.weight": "pooler.self_attention_layers.{}.mlp.fc2.weight",
    "pooler.blocks.{}.mlp.fc2.bias": "pooler.self_attention_layers.{}.mlp.fc2.bias",
    "pooler.cross.norm1.weight": "pooler.cross_attention_layer.layer_norm1.weight",
    "pooler.cross.norm1.bias": "pooler.cross_attention_layer.layer_norm1.bias",
    "pooler.cross.wq.weight": "pooler.cross_attention_layer.cross_attn.q_proj.weight",
    "pooler.cross.wq.bias": "pooler.cross_attention_layer.cross_attn.q_proj.bias",
    "pooler.cross.wkv.weight": ("pooler.cross_attention_layer.cross_attn.k_proj.weight",
                                "pooler.cross_attention_layer.cross_attn.v_proj.weight"),
    "pooler.cross.wkv.bias": ("pooler.cross_attention_layer.cross_attn.k_proj.bias",
                              "pooler.cross_attention_layer.cross_attn.v_proj.bias"),
    "pooler.cross.norm2.weight": "pooler.cross_attention_layer.layer_norm2.weight",
    "pooler.cross.norm2.bias": "pooler.cross_attention_layer.layer_norm2.bias",
    "pooler.cross.mlp.fc1.weight": "pooler.cross_attention_layer.mlp.fc1.weight",
    "pooler.cross.mlp.fc1.bias": "pooler.cross_attention_layer.mlp.fc1.bias",
    "pooler.cross.mlp.fc2.weight": "pooler.cross_attention_layer.mlp.fc2.weight",
    "pooler.cross.mlp.fc2.bias": "pooler.cross_attention_layer.mlp.fc2.bias",
    "head.weight": "classifier.weight",
    "head.bias": "classifier.bias",
}
VJEPA2_PREFIXES = ("_orig_mod.", "vjepa2.")
# the pre-training predictor (VJEPA2Model carries it, classifiers too): not part of the encoder, dropped on purpose
VJEPA2_IGNORED = re.compile(r"^predictor\.")
VJEPA2_PATCH_KEY = VJEPA2_WEIGHT_MAP["patch_embed.weight"]


def normalize_vjepa2_keys(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers' VJEPA2 keys with the classifier's `vjepa2.` (and torch.compile's `_orig_mod.`) prefix stripped;
    a patch embedding that is not a Conv3d is a ValueError saying what was found."""
    out = strip_prefixes(state_dict, VJEPA2_PREFIXES)
    if VJEPA2_PATCH_KEY not in out:
        raise InvalidModel(f"not a V-JEPA 2 checkpoint: no patch embedding key {VJEPA2_PATCH_KEY!r} (transformers' "
                         f"VJEPA2Model layout; original Meta .pt files are not read: convert them with "
                         f"transformers' convert_vjepa2_to_hf.py); its keys start with {sorted(out)[:6]}")
    shape = tuple(out[VJEPA2_PATCH_KEY].shape)
    if len(shape) != 5:
        raise InvalidModel(f"not a V-JEPA 2 video checkpoint: {VJEPA2_PATCH_KEY!r} has shape {shape}; V-JEPA 2 embeds "
                         f"tubelets with a Conv3d of shape (hidden, channels, tubelet, patch, patch)")
    return out


def build_vjepa2_config(state_dict, hf_config, preprocessor, override) -> VJEPA2Config:
    """config.json when there is one, else the shapes plus the presets; the head (and pooler) from the weights; mean,
    std and the resize from the processor config; `override` last (a VJEPA2Config replaces everything)."""
    if isinstance(override, VJEPA2Config):
        return override
    if override is not None and not isinstance(override, Mapping):
        raise TypeError(f"config for a V-JEPA 2 checkpoint must be a VJEPA2Config or a dict of its fields, got "
                        f"{type(override).__name__}")
    override = without_architecture(override, "vjepa2")
    head = "classifier.weight"
    num_labels = state_dict[head].shape[0] if head in state_dict else 0
    if hf_config is not None:
        cfg = labels_from_hf(from_hf(VJEPA2Config, hf_config), num_labels)
    else:
        cfg = infer_vjepa2_config(state_dict, num_labels, override)
    if preprocessor is not None:
        cfg = with_processor(cfg, preprocessor, "crop_size", " (which sets the rotary position grid)")
        size = preprocessor.get("size")
        short = size.get("shortest_edge") if isinstance(size, Mapping) else None
        if isinstance(short, int) and short >= cfg.image_size and not isinstance(short, bool):
            cfg = cfg.replace(resize_size=short)
    return cfg.replace(**override) if override else cfg


def infer_vjepa2_config(state_dict, num_labels: int, override: Mapping) -> VJEPA2Config:
    """Architecture of a V-JEPA 2 weights file without config.json: sizes from the shapes, the head count from the
    preset of the same width (or `override`); 256 px, 64 frames, ImageNet mean/std unless overridden."""
    D, C, ts, P, _ = state_dict[VJEPA2_PATCH_KEY].shape
    layer = re.compile(r"^encoder\.layer\.(\d+)\.norm1\.weight$")
    depth = 1 + max((int(m.group(1)) for k in state_dict if (m := layer.match(k))), default=-1)
    fc1 = "encoder.layer.0.mlp.fc1.weight"
    if depth == 0 or fc1 not in state_dict:
        raise InvalidModel(f"not a V-JEPA 2 checkpoint: no transformer blocks (expected keys like {fc1!r})")
    heads = override.get("num_attention_heads")
    if heads is None:
        preset = next((p for p in VJEPA2_PRESETS.values() if p["hidden_size"] == D), None)
        if preset is None:
            raise InvalidModel(f"cannot infer the number of attention heads for hidden size {D} (no V-JEPA 2 preset of "
                             f"that width); pass config={{'num_attention_heads': H}}")
        heads = preset["num_attention_heads"]
    pooler = re.compile(r"^pooler\.self_attention_layers\.(\d+)\.layer_norm1\.weight$")
    pooler_layers = 1 + max((int(m.group(1)) for k in state_dict if (m := pooler.match(k))), default=-1)
    pooler_fc1 = state_dict.get("pooler.cross_attention_layer.mlp.fc1.weight")
    return VJEPA2Config(
        patch_size=P, num_channels=C, tubelet_size=ts, hidden_size=D, num_hidden_layers=depth,
        num_attention_heads=heads, intermediate_size=state_dict[fc1].shape[0],
        qkv_bias="encoder.layer.0.attention.query.bias" in state_dict, num_pooler_layers=pooler_layers,
        pooler_intermediate_size=pooler_fc1.shape[0] if pooler_fc1 is not None else None, num_labels=num_labels)


def convert_vjepa2_state_dict(state_dict: dict[str, torch.Tensor], config: VJEPA2Config) -> dict[str, torch.Tensor]:
    """transformers' V-JEPA 2 tensors (prefix stripped) -> our state dict, through VJEPA2_WEIGHT_MAP; the predictor
    is dropped. Raises ValueError naming every missing, unexpected and mis-shaped key."""
    c = config
    conv = (c.hidden_size, c.num_channels, c.tubelet_size, c.patch_size, c.patch_size)
    out, used, missing, misshaped = map_weights(state_dict, VJEPA2_WEIGHT_MAP, expected_shapes(VJEPA2, config),
                                                 {"patch_embed.weight": conv, "pooler.query": (1, 1, c.hidden_size)})
    unexpected = sorted(k for k in state_dict if k not in used and not VJEPA2_IGNORED.match(k))
    problems = key_problems(missing, unexpected, misshaped)
    if problems:
        raise InvalidModel(f"checkpoint does not fit the V-JEPA 2 config (hidden {c.hidden_size}, "
                         f"{c.num_hidden_layers} blocks, {c.num_labels} labels, {c.num_pooler_layers} pooler layers): "
                         + "; ".join(problems))
    return out
