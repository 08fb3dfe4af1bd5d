"""VideoMAE checkpoints: the Hugging Face and original (MCG-NJU / VideoMAE V2) key layouts, the config a checkpoint
implies (config.json, or its shapes plus the presets), and the conversion to our state dict."""

from __future__ import annotations

import re
from typing import Any

import torch

from ..config import IMAGENET_MEAN, IMAGENET_STD, PRESETS, VideoMAEConfig, VJEPA2Config
from ..faults import InvalidModel
from ..model import VideoMAE, sincos_table
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

# Our parameter name -> the checkpoint key(s) it is built from, per layout ("{}" = block index). A tuple is
# concatenated along dim 0 (the fused qkv); None in a tuple is a zero block (the key projection has no bias).
HF_WEIGHT_MAP: dict[str, Any] = {
    "patch_embed.weight": "embeddings.patch_embeddings.projection.weight",  # Conv3d (D, C, ts, P, P), flattened
    "patch_embed.bias": "embeddings.patch_embeddings.projection.bias",
    "blocks.{}.norm1.weight": "encoder.layer.{}.layernorm_before.weight",
    "blocks.{}.norm1.bias": "encoder.layer.{}.layernorm_before.bias",
    "blocks.{}.attn.wqkv.weight": ("encoder.layer.{}.attention.attention.query.weight",
                                   "encoder.layer.{}.attention.attention.key.weight",
                                   "encoder.layer.{}.attention.attention.value.weight"),
    "blocks.{}.attn.wqkv.bias": ("encoder.layer.{}.attention.attention.query.bias", None,
                                 "encoder.layer.{}.attention.attention.value.bias"),
    "blocks.{}.attn.proj.weight": "encoder.layer.{}.attention.output.dense.weight",
    "blocks.{}.attn.proj.bias": "encoder.layer.{}.attention.output.dense.bias",
    "blocks.{}.norm2.weight": "encoder.layer.{}.layernorm_after.weight",
    "blocks.{}.norm2.bias": "encoder.layer.{}.layernorm_after.bias",
    "blocks.{}.mlp.fc1.weight": "encoder.layer.{}.intermediate.dense.weight",
    "blocks.{}.mlp.fc1.bias": "encoder.layer.{}.intermediate.dense.bias",
    "blocks.{}.mlp.fc2.weight": "encoder.layer.{}.output.dense.weight",
    "blocks.{}.mlp.fc2.bias": "encoder.layer.{}.output.dense.bias",
    "norm.weight": "layernorm.weight",
    "norm.bias": "layernorm.bias",
    "fc_norm.weight": "fc_norm.weight",
    "fc_norm.bias": "fc_norm.bias",
    "head.weight": "classifier.weight",
    "head.bias": "classifier.bias",
}
ORIGINAL_WEIGHT_MAP: dict[str, Any] = {
    "patch_embed.weight": "patch_embed.proj.weight",  # Conv3d (D, C, ts, P, P), flattened
    "patch_embed.bias": "patch_embed.proj.bias",
    "blocks.{}.norm1.weight": "blocks.{}.norm1.weight",
    "blocks.{}.norm1.bias": "blocks.{}.norm1.bias",
    "blocks.{}.attn.wqkv.weight": "blocks.{}.attn.qkv.weight",
    "blocks.{}.attn.wqkv.bias": ("blocks.{}.attn.q_bias", None, "blocks.{}.attn.v_bias"),
    "blocks.{}.attn.proj.weight": "blocks.{}.attn.proj.weight",
    "blocks.{}.attn.proj.bias": "blocks.{}.attn.proj.bias",
    "blocks.{}.norm2.weight": "blocks.{}.norm2.weight",
    "blocks.{}.norm2.bias": "blocks.{}.norm2.bias",
    "blocks.{}.mlp.fc1.weight": "blocks.{}.mlp.fc1.weight",
    "blocks.{}.mlp.fc1.bias": "blocks.{}.mlp.fc1.bias",
    "blocks.{}.mlp.fc2.weight": "blocks.{}.mlp.fc2.weight",
    "blocks.{}.mlp.fc2.bias": "blocks.{}.mlp.fc2.bias",
    "norm.weight": "norm.weight",
    "norm.bias": "norm.bias",
    "fc_norm.weight": "fc_norm.weight",
    "fc_norm.bias": "fc_norm.bias",
    "head.weight": "head.weight",
    "head.bias": "head.bias",
}
WEIGHT_MAPS = {"hf": HF_WEIGHT_MAP, "original": ORIGINAL_WEIGHT_MAP}
# transformers 4.x names of the q/v biases (5.x uses query.bias / value.bias; both are read)
HF_LEGACY_NAMES = {".attention.attention.q_bias": ".attention.attention.query.bias",
                   ".attention.attention.v_bias": ".attention.attention.value.bias"}
PREFIXES = {"hf": ("_orig_mod.", "videomae."), "original": ("_orig_mod.", "module.", "backbone.", "encoder.")}
# the pre-training decoder and its mask token are not part of the encoder: dropped on purpose
IGNORED = re.compile(r"^(decoder\.|decoder_|encoder_to_decoder\.|mask_token$)")
PATCH_KEYS = {"hf": "embeddings.patch_embeddings.projection.weight", "original": "patch_embed.proj.weight"}


def normalize_keys(state_dict: dict[str, torch.Tensor]) -> tuple[str, dict[str, torch.Tensor]]:
    """Detect the layout ("hf" or "original"), strip its wrapper prefixes, rename legacy names. Another
    architecture (no Conv3d tubelet embedding) is a ValueError saying what was found."""
    layout = None
    for name, suffix in (("hf", PATCH_KEYS["hf"]), ("original", PATCH_KEYS["original"])):
        found = [k for k in state_dict if k.endswith(suffix)]
        if found:
            layout, patch_key = name, found[0]
            break
    if layout is None:
        sample = sorted(state_dict)[:6]
        raise InvalidModel(f"not a VideoMAE checkpoint: no patch embedding key ('{PATCH_KEYS['original']}' in the "
                         f"original layout or '{PATCH_KEYS['hf']}' in the Hugging Face one); its keys start with "
                         f"{sample}")
    shape = tuple(state_dict[patch_key].shape)
    if len(shape) != 5:
        raise InvalidModel(f"not a VideoMAE checkpoint: {patch_key!r} has shape {shape}, a {len(shape) - 2}-D "
                         f"convolution (an image model?); VideoMAE embeds tubelets with a Conv3d of shape "
                         f"(hidden, channels, tubelet, patch, patch)")
    if layout == "original" and any(k.endswith("attn.qkv.bias") for k in state_dict):
        # VideoMAE originals keep q_bias / v_bias apart; Meta's V-JEPA 2 training files fuse them (and k's)
        raise InvalidModel("this looks like an original (Meta) V-JEPA 2 checkpoint (fused attn.qkv.bias, no position "
                         "table): load its transformers conversion instead (a hub id such as "
                         "facebook/vjepa2-vitl-fpc64-256, or convert it with transformers' convert_vjepa2_to_hf.py)")
    out = {}
    for key, tensor in strip_prefixes(state_dict, PREFIXES[layout]).items():
        if layout == "hf":
            for old, new in HF_LEGACY_NAMES.items():
                if key.endswith(old):
                    key = key[: -len(old)] + new
        out[key] = tensor
    return layout, out


def build_config(state_dict, layout, hf_config, preprocessor, override) -> VideoMAEConfig:
    """config.json when there is one, else the shapes plus the presets; corrected by what the weights contain
    (head, fc_norm) and by the preprocessor; `override` last."""
    if isinstance(override, VideoMAEConfig):
        return override
    if isinstance(override, VJEPA2Config):
        raise ValueError("config is a VJEPA2Config but the checkpoint is a VideoMAE")
    override = without_architecture(override, "videomae")
    names = WEIGHT_MAPS[layout]
    has = {ours: (src if isinstance(src, str) else src[0]).format(0) in state_dict for ours, src in names.items()}
    head_key = names["head.weight"]
    num_labels = state_dict[head_key].shape[0] if head_key in state_dict else 0
    if hf_config is not None:
        cfg = labels_from_hf(from_hf(VideoMAEConfig, hf_config), num_labels).replace(has_fc_norm=has["fc_norm.weight"])
    else:
        cfg = infer_config(state_dict, layout, num_labels, has, override or {})
    if preprocessor is not None:
        cfg = with_processor(cfg, preprocessor, "image_size")
    return cfg.replace(**dict(override)) if override else cfg


def infer_config(state_dict, layout, num_labels, has, override) -> VideoMAEConfig:
    """Architecture of a checkpoint without config.json: sizes from the shapes, the head count from the preset of
    the same width (or `override`), 16 frames of 224x224 unless overridden, eps 1e-6 as the originals use."""
    names = WEIGHT_MAPS[layout]
    D, C, ts, P, _ = state_dict[names["patch_embed.weight"]].shape
    block = re.compile(r"^" + re.escape(names["blocks.{}.norm1.weight"]).replace(r"\{\}", r"(\d+)") + "$")
    depth = 1 + max((int(m.group(1)) for k in state_dict if (m := block.match(k))), default=-1)
    fc1 = names["blocks.{}.mlp.fc1.weight"].format(0)
    if depth == 0 or fc1 not in state_dict:
        raise InvalidModel(f"not a VideoMAE checkpoint: no transformer blocks (expected keys like {fc1!r})")
    heads = override.get("num_attention_heads")
    if heads is None:
        preset = next((p for p in PRESETS.values() if p["hidden_size"] == D), None)
        if preset is None:
            raise InvalidModel(f"cannot infer the number of attention heads for hidden size {D} (no preset of that "
                             f"width); pass config={{'num_attention_heads': H}}")
        heads = preset["num_attention_heads"]
    use_mean_pooling = has["fc_norm.weight"] or not has["norm.weight"]
    return VideoMAEConfig(
        image_size=224, patch_size=P, num_channels=C, num_frames=16, tubelet_size=ts, hidden_size=D,
        num_hidden_layers=depth, num_attention_heads=heads, intermediate_size=state_dict[fc1].shape[0],
        qkv_bias=has["blocks.{}.attn.wqkv.bias"], use_mean_pooling=use_mean_pooling,
        layer_norm_eps=1e-6, fc_norm_eps=1e-6, has_fc_norm=has["fc_norm.weight"], num_labels=num_labels,
        image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD)


def convert_state_dict(state_dict: dict[str, torch.Tensor], layout: str, config: VideoMAEConfig):
    """Checkpoint tensors (keys already normalized) -> our state dict, through WEIGHT_MAPS[layout]. Raises ValueError
    naming every missing, unexpected and mis-shaped key."""
    c = config
    conv = (c.hidden_size, c.num_channels, c.tubelet_size, c.patch_size, c.patch_size)
    out, used, missing, misshaped = map_weights(state_dict, WEIGHT_MAPS[layout], expected_shapes(VideoMAE, config),
                                                 {"patch_embed.weight": conv})
    unexpected = sorted(k for k in state_dict if k not in used and not IGNORED.match(k))
    if layout == "original" and "pos_embed" in unexpected:
        check_sincos_pos_embed(state_dict["pos_embed"], config)
        unexpected.remove("pos_embed")
    problems = key_problems(missing, unexpected, misshaped)
    if problems:
        raise InvalidModel(f"checkpoint does not fit the VideoMAE config (layout {layout}, hidden "
                           f"{config.hidden_size}, {config.num_hidden_layers} blocks, use_mean_pooling="
                           f"{config.use_mean_pooling}): " + "; ".join(problems))
    return out


def check_sincos_pos_embed(pos_embed: torch.Tensor, config: VideoMAEConfig) -> None:
    """A stored `pos_embed` must be the fixed sin/cos table we rebuild; learnable positions are not supported."""
    table = sincos_table(config.num_tokens, config.hidden_size)
    if tuple(pos_embed.shape[-2:]) != tuple(table.shape):
        raise InvalidModel(f"pos_embed has shape {tuple(pos_embed.shape)} but the config gives {config.num_tokens} "
                         f"tokens of {config.hidden_size}; pass config={{'num_frames': ..., 'image_size': ...}}")
    if not torch.allclose(pos_embed.reshape(table.shape).float(), table, atol=1e-4):
        raise InvalidModel("pos_embed differs from the fixed sin/cos table: learnable position embeddings are not "
                         "supported")
