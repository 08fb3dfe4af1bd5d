"""Load an encoder, VideoMAE or V-JEPA 2 (picked from config.json's model_type, or from the keys of a bare weights
file), from a Hugging Face directory, an original MCG-NJU / VideoMAE V2 .pth, a .safetensors / .bin file, a hub id
in the local Hugging Face cache, or `random:<preset>[:seed]`. The import is strict: every checkpoint key is used or
deliberately ignored (VideoMAE's pre-training decoder, V-JEPA 2's predictor), every shape is checked, and the fused
qkv is built here.

Public API (`__all__`): load_model and model_class (the encoder class a config builds); save_hf (write a Hugging
Face checkpoint folder) with hf_config_dict and hf_state_dict; random_state_dict; convert_state_dict,
convert_vjepa2_state_dict and the key tables HF_WEIGHT_MAP, ORIGINAL_WEIGHT_MAP, VJEPA2_WEIGHT_MAP.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pickle
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .config import IMAGENET_MEAN, IMAGENET_STD, PRESETS, VJEPA2_PRESETS, VideoMAEConfig, VJEPA2Config
from .faults import InvalidModel, MissingFile
from .model import KERNEL_BACKENDS, VideoEncoder, VideoMAE, sincos_table
from .vjepa2 import VJEPA2

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
# transformers 4.x names of the q/v biases (5.x uses query.bias / value.bias; both are read)
HF_LEGACY_NAMES = {".attention.attention.q_bias": ".attention.attention.query.bias",
                   ".attention.attention.v_bias": ".attention.attention.value.bias"}
PREFIXES = {"hf": ("_orig_mod.", "videomae."), "original": ("_orig_mod.", "module.", "backbone.", "encoder.")}
# the pre-training decoder and its mask token are not part of the encoder: dropped on purpose
IGNORED = re.compile(r"^(decoder\.|decoder_|encoder_to_decoder\.|mask_token$)")
PATCH_KEYS = {"hf": "embeddings.patch_embeddings.projection.weight", "original": "patch_embed.proj.weight"}
HF_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                   "pytorch_model.bin.index.json")
DTYPES = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16, "float16": torch.float16,
          "half": torch.float16, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}


def load_model(source: str | os.PathLike, device=None, dtype=None, backend: str = "auto",
               config: VideoMAEConfig | VJEPA2Config | Mapping[str, Any] | None = None, *,
               allow_download: bool | None = None) -> VideoMAE | VJEPA2:
    """Build an encoder in eval mode from `source`: a VideoMAE, or a V-JEPA 2 when config.json says model_type
    "vjepa2" (or, for a bare weights file, its keys are transformers' VJEPA2 ones). Both take the same inputs and
    return the same VideoMAEOutput, so everything downstream works with either. `source` is
      - a Hugging Face directory: config.json + model.safetensors | pytorch_model.bin | a sharded *.index.json
        (+ optional preprocessor_config.json / video_preprocessor_config.json for mean/std and, for V-JEPA 2, the
        resize before the crop);
      - a weights file: an original MCG-NJU / VideoMAE V2 .pth (state dict under "model" or "module"), or a
        .safetensors / .bin of either VideoMAE layout or of transformers' V-JEPA 2; the architecture is inferred
        from the shapes and the presets (V-JEPA 2: 256 px and 64 frames unless `config` says otherwise);
      - "random:<preset>[:seed]" (seed 0 by default): deterministic random weights for demos and benchmarks
        (VideoMAE presets small, base, large, huge, giant; V-JEPA 2 presets vjepa2-vitl, -vith, -vitg, -vitg-384);
      - a hub id ("MCG-NJU/videomae-base-finetuned-kinetics", "facebook/vjepa2-vitl-fpc64-256") found in the local
        Hugging Face cache (HF_HUB_CACHE); it is downloaded only when allow_download=True or
        VMAE_FAST_ALLOW_DOWNLOAD=1.
    device: None = CUDA when available, else CPU. dtype: None = bf16 on CUDA, fp32 on CPU (or "fp16"/"bf16"/"fp32"/a
    torch dtype). config: a VideoMAEConfig / VJEPA2Config used as is, or a dict of fields overriding the inferred
    ones (e.g. {"num_attention_heads": 16} for an original checkpoint whose head count differs from its preset, or
    {"num_frames": 16} for a V-JEPA 2 encoder published with 64 frames per clip: its rotary positions take any
    count)."""
    if backend not in KERNEL_BACKENDS:
        raise ValueError(f"backend must be one of {KERNEL_BACKENDS}, got {backend!r}")
    device = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available()
                                                                           else "cpu")
    dtype = resolve_dtype(dtype, device)
    text = os.fspath(source)
    if text.startswith("random:"):
        return _load_random(text, device, dtype, backend, config)
    path = Path(text).expanduser()
    hub_id = not path.exists() and re.fullmatch(r"[\w.-]+/[\w.-]+", text) is not None
    if hub_id:
        path = _resolve_hub_id(text, allow_download)
    elif not path.exists():
        raise MissingFile(f"model {text!r} is not a file, a directory, 'random:<preset>' or a hub id")
    state_dict, files, hf_config, preprocessor = _read_source(path)
    if _architecture(state_dict, hf_config) == "vjepa2":
        state_dict = _normalize_vjepa2_keys(state_dict)
        cfg = _build_vjepa2_config(state_dict, hf_config, preprocessor, config)
        weights = convert_vjepa2_state_dict(state_dict, cfg)
    else:
        layout, state_dict = _normalize_keys(state_dict)
        cfg = _build_config(state_dict, layout, hf_config, preprocessor, config)
        weights = convert_state_dict(state_dict, layout, cfg)
    model = _assemble(cfg, weights, device, dtype, backend)
    model.source = text if hub_id else os.fspath(path.resolve())
    model.weights_sha256 = _files_sha256(files)
    return model


# --- sources ---------------------------------------------------------------------------------------------------------
def resolve_dtype(dtype, device: torch.device) -> torch.dtype:
    """None -> bf16 on CUDA, fp32 on CPU; a name ("bf16", "fp16", "fp32", ...) or a torch float dtype -> that dtype."""
    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, str):
        if dtype.lower() not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)} or a torch floating dtype, got {dtype!r}")
        return DTYPES[dtype.lower()]
    if dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"dtype must be torch.float32, torch.float16 or torch.bfloat16, got {dtype!r}")
    return dtype


def _resolve_hub_id(repo_id: str, allow_download: bool | None) -> Path:
    """Local snapshot directory of a hub repo: the Hugging Face cache first, the network only when allowed."""
    if allow_download is None:
        allow_download = os.environ.get("VMAE_FAST_ALLOW_DOWNLOAD", "0") not in ("", "0")
    try:  # here, not at the top: huggingface_hub imports tqdm, and the model loads with torch and triton alone
        from huggingface_hub import snapshot_download
    except ImportError:
        raise ValueError(f"{repo_id!r} looks like a hub id; resolving it needs `pip install huggingface_hub`") from None
    cache_dir = os.environ.get("HF_HUB_CACHE") or None  # read now: huggingface_hub reads it only at import
    try:
        return Path(snapshot_download(repo_id, cache_dir=cache_dir, local_files_only=not allow_download,
                                      allow_patterns=["*.json", "*.safetensors", "*.bin"]))
    except (OSError, ValueError) as e:  # not cached / offline / no such repo (HfHubHTTPError is an OSError)
        hint = ("" if allow_download else
                "; download it once (`huggingface-cli download " + repo_id + "`), or pass allow_download=True / set "
                "VMAE_FAST_ALLOW_DOWNLOAD=1")
        raise MissingFile(f"model {repo_id!r} is not a local path and could not be found in the Hugging Face "
                                f"cache ({cache_dir or 'default location'}): {type(e).__name__}{hint}") from None


def _read_source(path: Path):
    """-> (state_dict, weight files, HF config dict or None, preprocessor dict or None)."""
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise MissingFile(f"{path} is a directory without config.json: not a Hugging Face checkpoint")
        hf_config = _read_json(path / "config.json")
        if hf_config.get("model_type") not in ARCHITECTURES:
            raise InvalidModel(f"{path} holds a {hf_config.get('model_type')!r} model (config.json model_type); "
                             f"supported: {', '.join(repr(a) for a in ARCHITECTURES)} (VideoMAE, V-JEPA 2)")
        name = next((n for n in HF_WEIGHT_FILES if (path / n).is_file()), None)
        if name is None:
            raise MissingFile(f"{path} has no weights: expected one of {list(HF_WEIGHT_FILES)}")
        if name.endswith(".index.json"):
            shards = sorted(set(_read_json(path / name)["weight_map"].values()))
            files = [path / s for s in shards]
        else:
            files = [path / name]
        state_dict = {}
        for f in files:
            state_dict.update(_read_weights_file(f))
        preprocessor = None
        for pre in ("preprocessor_config.json", "video_preprocessor_config.json"):
            if (path / pre).is_file():
                preprocessor = _read_json(path / pre)
                break
        return state_dict, files, hf_config, preprocessor
    return _read_weights_file(path), [path], None, None


def _read_weights_file(path: Path) -> dict[str, torch.Tensor]:
    """A flat {name: tensor} from .safetensors, or from a torch pickle loaded with weights_only=True (the state dict
    may sit under "model", "module" or "state_dict")."""
    if path.suffix == ".safetensors":
        try:
            return load_file(path)
        except SafetensorError as e:  # a truncated download, another format under the name
            raise InvalidModel(f"cannot read {path} as safetensors: {e}") from None
    try:
        # original training checkpoints often carry their argparse.Namespace of arguments: harmless, allow it
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, AttributeError) as e:
        raise InvalidModel(f"cannot read {path} as a weights file with torch.load(weights_only=True): "
                         f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    for wrapper in ("model", "module", "state_dict"):
        if isinstance(obj, Mapping) and isinstance(obj.get(wrapper), Mapping):
            obj = obj[wrapper]
            break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise InvalidModel(f"{path} does not hold a state dict of tensors (looked under 'model', 'module', "
                         f"'state_dict' and the top level)")
    return dict(obj)


def _read_json(path: Path) -> dict:
    """A JSON file of a checkpoint folder; one that is not JSON is the checkpoint's problem (InvalidModel)."""
    try:
        return json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise InvalidModel(f"{path} is not valid JSON: {e}") from None


def _from_hf(config_class, hf_config: dict):
    """config_class.from_hf of a checkpoint's config.json: what it cannot take (another model_type, a non-square
    patch, an activation we do not implement, sizes that do not divide) is the checkpoint's problem (InvalidModel)."""
    try:
        return config_class.from_hf(hf_config)
    except (ValueError, TypeError) as e:
        raise InvalidModel(f"config.json: {e}") from None


def _files_sha256(files: list[Path]) -> str:
    """sha256 of the weight file (the hub's LFS checksum); several shards: sha256 over 'name sha256' lines."""
    digests = []
    for f in files:
        h = hashlib.sha256()
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                h.update(chunk)
        digests.append((f.name, h.hexdigest()))
    if len(digests) == 1:
        return digests[0][1]
    return hashlib.sha256("".join(f"{n} {d}\n" for n, d in sorted(digests)).encode()).hexdigest()


# --- architecture ----------------------------------------------------------------------------------------------------
ARCHITECTURES = ("videomae", "vjepa2")  # config.json model_type values


def _architecture(state_dict: Mapping[str, torch.Tensor], hf_config: dict | None) -> str:
    """"videomae" or "vjepa2": config.json's model_type when there is one (checked by _read_source), else V-JEPA 2
    when a key ends with transformers' VJEPA2 patch embedding name (VideoMAE's errors name what a file lacks)."""
    if hf_config is not None:
        return hf_config["model_type"]
    return "vjepa2" if any(k.endswith(VJEPA2_PATCH_KEY) for k in state_dict) else "videomae"


# --- keys, config and conversion -------------------------------------------------------------------------------------
def _normalize_keys(state_dict: dict[str, torch.Tensor]) -> tuple[str, dict[str, torch.Tensor]]:
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
    for key, tensor in state_dict.items():
        stripped = True
        while stripped:
            stripped = False
            for prefix in PREFIXES[layout]:
                if key.startswith(prefix):
                    key, stripped = key[len(prefix):], True
        if layout == "hf":
            for old, new in HF_LEGACY_NAMES.items():
                if key.endswith(old):
                    key = key[: -len(old)] + new
        out[key] = tensor
    return layout, out


def _build_config(state_dict, layout, hf_config, preprocessor, override) -> VideoMAEConfig:
    """config.json when there is one, else the shapes plus the presets; corrected by what the weights contain
    (head, fc_norm) and by the preprocessor; `override` last."""
    if isinstance(override, VideoMAEConfig):
        return override
    if isinstance(override, VJEPA2Config):
        raise ValueError("config is a VJEPA2Config but the checkpoint is a VideoMAE")
    override = _without_architecture(override, "videomae")
    names = WEIGHT_MAPS[layout]
    has = {ours: (src if isinstance(src, str) else src[0]).format(0) in state_dict for ours, src in names.items()}
    head_key = names["head.weight"]
    num_labels = state_dict[head_key].shape[0] if head_key in state_dict else 0
    if hf_config is not None:
        cfg = _from_hf(VideoMAEConfig, hf_config)
        id2label = cfg.id2label if num_labels and cfg.id2label and len(cfg.id2label) == num_labels else None
        cfg = cfg.replace(num_labels=num_labels, id2label=id2label, has_fc_norm=has["fc_norm.weight"])
    else:
        cfg = _infer_config(state_dict, layout, num_labels, has, override or {})
    if preprocessor is not None:
        mean, std = preprocessor.get("image_mean"), preprocessor.get("image_std")
        if mean is not None and std is not None:
            cfg = cfg.replace(image_mean=tuple(mean), image_std=tuple(std))
        crop = preprocessor.get("crop_size")
        crop = crop.get("height") if isinstance(crop, Mapping) else crop
        if crop is not None and crop != cfg.image_size:
            warnings.warn(f"preprocessor crop_size {crop} differs from the model's image_size {cfg.image_size}; "
                          f"frames are prepared at image_size", stacklevel=3)
    return cfg.replace(**dict(override)) if override else cfg


def _infer_config(state_dict, layout, num_labels, has, override) -> VideoMAEConfig:
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


def _template(key: str) -> tuple[str, str | None]:
    """"blocks.3.attn.wqkv.weight" -> ("blocks.{}.attn.wqkv.weight", "3"); keys without an index -> (key, None)."""
    m = re.match(r"^(.*?)\.(\d+)\.(.*)$", key)
    return (f"{m.group(1)}.{{}}.{m.group(3)}", m.group(2)) if m else (key, None)


def _map_weights(state_dict, table, expected: dict[str, tuple], source_shapes: dict[str, tuple]):
    """Our state dict from the checkpoint's through `table` (our key template -> checkpoint key template, or a tuple
    concatenated along dim 0 with None for a zero block). expected: our key -> shape; source_shapes: our key ->
    the checkpoint tensor's shape where it is not ours (a Conv3d weight, a query token) or a fused part.
    Returns (weights, used checkpoint keys, missing keys, mis-shaped descriptions)."""
    out, used, missing, misshaped = {}, set(), [], []
    for key, shape in expected.items():
        template, index = _template(key)
        sources = table[template]
        parts = sources if isinstance(sources, tuple) else (sources,)
        part_shape = source_shapes.get(template, (shape[0] // len(parts), *shape[1:]))
        tensors = []
        for part in parts:
            if part is None:
                tensors.append(None)
                continue
            name = part.format(index)
            if name not in state_dict:
                missing.append(name)
                continue
            used.add(name)
            if tuple(state_dict[name].shape) != part_shape:
                misshaped.append(f"{name}: expected {part_shape}, got {tuple(state_dict[name].shape)}")
            tensors.append(state_dict[name])
        if len(tensors) != len(parts) or any(t is not None and tuple(t.shape) != part_shape for t in tensors):
            continue
        like = next(t for t in tensors if t is not None)
        tensors = [torch.zeros(part_shape, dtype=like.dtype) if t is None else t for t in tensors]
        out[key] = torch.cat(tensors).reshape(shape) if len(tensors) > 1 else tensors[0].reshape(shape)
    return out, used, missing, misshaped


def _problems(missing, unexpected, misshaped) -> list[str]:
    problems = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)):
        if keys:
            shown = ", ".join(keys[:12]) + (f", ... ({len(keys)} in all)" if len(keys) > 12 else "")
            problems.append(f"{label} keys: {shown}")
    return problems


def _expected_shapes(model_class, config) -> dict[str, tuple]:
    with torch.device("meta"):
        return {k: tuple(v.shape) for k, v in model_class(config).state_dict().items()}


def convert_state_dict(state_dict: dict[str, torch.Tensor], layout: str, config: VideoMAEConfig):
    """Checkpoint tensors (keys already normalized) -> our state dict, through WEIGHT_MAPS[layout]. Raises ValueError
    naming every missing, unexpected and mis-shaped key."""
    c = config
    conv = (c.hidden_size, c.num_channels, c.tubelet_size, c.patch_size, c.patch_size)
    out, used, missing, misshaped = _map_weights(state_dict, WEIGHT_MAPS[layout], _expected_shapes(VideoMAE, config),
                                                 {"patch_embed.weight": conv})
    unexpected = sorted(k for k in state_dict if k not in used and not IGNORED.match(k))
    if layout == "original" and "pos_embed" in unexpected:
        _check_sincos_pos_embed(state_dict["pos_embed"], config)
        unexpected.remove("pos_embed")
    problems = _problems(missing, unexpected, misshaped)
    if problems:
        raise InvalidModel(f"checkpoint does not fit the VideoMAE config (layout {layout}, hidden "
                           f"{config.hidden_size}, {config.num_hidden_layers} blocks, use_mean_pooling="
                           f"{config.use_mean_pooling}): " + "; ".join(problems))
    return out


def _check_sincos_pos_embed(pos_embed: torch.Tensor, config: VideoMAEConfig) -> None:
    """A stored `pos_embed` must be the fixed sin/cos table we rebuild; learnable positions are not supported."""
    table = sincos_table(config.num_tokens, config.hidden_size)
    if tuple(pos_embed.shape[-2:]) != tuple(table.shape):
        raise InvalidModel(f"pos_embed has shape {tuple(pos_embed.shape)} but the config gives {config.num_tokens} "
                         f"tokens of {config.hidden_size}; pass config={{'num_frames': ..., 'image_size': ...}}")
    if not torch.allclose(pos_embed.reshape(table.shape).float(), table, atol=1e-4):
        raise InvalidModel("pos_embed differs from the fixed sin/cos table: learnable position embeddings are not "
                         "supported")


# --- V-JEPA 2 ---------------------------------------------------------------------------------------------------------
def _normalize_vjepa2_keys(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers' VJEPA2 keys with the classifier's `vjepa2.` (and torch.compile's `_orig_mod.`) prefix stripped;
    a patch embedding that is not a Conv3d is a ValueError saying what was found."""
    out = {}
    for key, tensor in state_dict.items():
        stripped = True
        while stripped:
            stripped = False
            for prefix in VJEPA2_PREFIXES:
                if key.startswith(prefix):
                    key, stripped = key[len(prefix):], True
        out[key] = tensor
    if VJEPA2_PATCH_KEY not in out:
        raise InvalidModel(f"not a V-JEPA 2 checkpoint: no patch embedding key {VJEPA2_PATCH_KEY!r} (transformers' "
                         f"VJEPA2Model layout; original Meta .pt files are not read: convert them with "
                         f"transformers' convert_vjepa2_to_hf.py); its keys start with {sorted(out)[:6]}")
    shape = tuple(out[VJEPA2_PATCH_KEY].shape)
    if len(shape) != 5:
        raise InvalidModel(f"not a V-JEPA 2 video checkpoint: {VJEPA2_PATCH_KEY!r} has shape {shape}; V-JEPA 2 embeds "
                         f"tubelets with a Conv3d of shape (hidden, channels, tubelet, patch, patch)")
    return out


def _build_vjepa2_config(state_dict, hf_config, preprocessor, override) -> VJEPA2Config:
    """config.json when there is one, else the shapes plus the presets; the head (and pooler) from the weights; mean,
    std and the resize from the processor config; `override` last (a VJEPA2Config replaces everything)."""
    if isinstance(override, VJEPA2Config):
        return override
    if override is not None and not isinstance(override, Mapping):
        raise TypeError(f"config for a V-JEPA 2 checkpoint must be a VJEPA2Config or a dict of its fields, got "
                        f"{type(override).__name__}")
    override = _without_architecture(override, "vjepa2")
    head = "classifier.weight"
    num_labels = state_dict[head].shape[0] if head in state_dict else 0
    if hf_config is not None:
        cfg = _from_hf(VJEPA2Config, hf_config)
        id2label = cfg.id2label if num_labels and cfg.id2label and len(cfg.id2label) == num_labels else None
        cfg = cfg.replace(num_labels=num_labels, id2label=id2label)
    else:
        cfg = _infer_vjepa2_config(state_dict, num_labels, override)
    if preprocessor is not None:
        mean, std = preprocessor.get("image_mean"), preprocessor.get("image_std")
        if mean is not None and std is not None:
            cfg = cfg.replace(image_mean=tuple(mean), image_std=tuple(std))
        crop = preprocessor.get("crop_size")
        crop = crop.get("height") if isinstance(crop, Mapping) else crop
        if crop is not None and crop != cfg.image_size:
            warnings.warn(f"processor crop_size {crop} differs from the model's crop_size {cfg.image_size} (which "
                          f"sets the rotary position grid); frames are prepared at {cfg.image_size}", stacklevel=3)
        size = preprocessor.get("size")
        short = size.get("shortest_edge") if isinstance(size, Mapping) else None
        if isinstance(short, int) and short >= cfg.image_size and not isinstance(short, bool):
            cfg = cfg.replace(resize_size=short)
    return cfg.replace(**override) if override else cfg


def _without_architecture(override: Mapping | None, architecture: str) -> dict:
    """A dict of config overrides without its `architecture` entry (what VJEPA2Config.to_dict writes and _run.json
    keeps), which must name this checkpoint's family."""
    override = dict(override or {})
    named = override.pop("architecture", architecture)
    if named != architecture:
        raise ValueError(f"config names architecture {named!r} but the checkpoint is a {architecture!r} model")
    return override


def _infer_vjepa2_config(state_dict, num_labels: int, override: Mapping) -> VJEPA2Config:
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
    out, used, missing, misshaped = _map_weights(state_dict, VJEPA2_WEIGHT_MAP, _expected_shapes(VJEPA2, config),
                                                 {"patch_embed.weight": conv, "pooler.query": (1, 1, c.hidden_size)})
    unexpected = sorted(k for k in state_dict if k not in used and not VJEPA2_IGNORED.match(k))
    problems = _problems(missing, unexpected, misshaped)
    if problems:
        raise InvalidModel(f"checkpoint does not fit the V-JEPA 2 config (hidden {c.hidden_size}, "
                         f"{c.num_hidden_layers} blocks, {c.num_labels} labels, {c.num_pooler_layers} pooler layers): "
                         + "; ".join(problems))
    return out


# --- model assembly --------------------------------------------------------------------------------------------------
def model_class(config) -> type[VideoEncoder]:
    """The encoder class a config builds: VJEPA2 for a VJEPA2Config, else VideoMAE."""
    return VJEPA2 if isinstance(config, VJEPA2Config) else VideoMAE


def _assemble(config, weights, device, dtype, backend) -> VideoEncoder:
    with torch.device("meta"):
        model = model_class(config)(config, backend)
    weights = {k: v.to(device=device, dtype=dtype) for k, v in weights.items()}
    model.load_state_dict(weights, strict=True, assign=True)
    model.requires_grad_(False)
    model.init_buffers()
    return model.eval()


def random_state_dict(config: VideoMAEConfig | VJEPA2Config, seed: int = 0) -> dict[str, torch.Tensor]:
    """Deterministic random weights (CPU float32, same on every machine): matrices N(0, 0.02), biases 0, LayerNorm
    gains 1."""
    shapes = _expected_shapes(model_class(config), config)
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, shape in shapes.items():
        if len(shape) >= 2:
            out[name] = torch.randn(shape, generator=g) * 0.02
        elif "norm" in name and name.endswith("weight"):
            out[name] = torch.ones(shape)
        else:
            out[name] = torch.zeros(shape)
    return out


def _load_random(text, device, dtype, backend, override) -> VideoMAE:
    parts = text.split(":")
    if len(parts) not in (2, 3) or (len(parts) == 3 and not parts[2].isdigit()):
        raise InvalidModel(f"random weights are spelled 'random:<preset>[:seed]', got {text!r}")
    preset, seed = parts[1], int(parts[2]) if len(parts) == 3 else 0
    family = "vjepa2" if preset in VJEPA2_PRESETS else "videomae"
    if isinstance(override, (VideoMAEConfig, VJEPA2Config)):
        if override.architecture != family:
            raise ValueError(f"config is a {type(override).__name__} but {text!r} names a {family} preset")
        config = override
    elif preset in VJEPA2_PRESETS:
        config = VJEPA2Config.from_name(preset)
        config = config.replace(**_without_architecture(override, "vjepa2")) if override else config
    else:
        if preset not in PRESETS:
            raise InvalidModel(f"unknown VideoMAE preset {preset!r} in {text!r}; expected one of {sorted(PRESETS)} "
                             f"or a V-JEPA 2 preset {sorted(VJEPA2_PRESETS)}")
        config = VideoMAEConfig.from_name(preset)
        config = config.replace(**_without_architecture(override, "videomae")) if override else config
    model = _assemble(config, random_state_dict(config, seed), device, dtype, backend)
    model.source = f"random:{preset}" + (f":{seed}" if seed else "")
    model.weights_sha256 = hashlib.sha256(f"random:{preset}:seed={seed}".encode()).hexdigest()
    return model


# --- writing ---------------------------------------------------------------------------------------------------------
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


__all__ = ["HF_WEIGHT_MAP", "ORIGINAL_WEIGHT_MAP", "VJEPA2_WEIGHT_MAP", "convert_state_dict",
           "convert_vjepa2_state_dict", "hf_config_dict", "hf_state_dict", "load_model", "model_class",
           "random_state_dict", "save_hf"]
