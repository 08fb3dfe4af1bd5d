"""What both encoders' weight imports share: checkpoint tensors mapped onto our parameter names through a key
table (fused parts concatenated, every missing, unexpected and mis-shaped key collected), the expected shapes, and
what a checkpoint folder's config.json and processor config say, and the config overrides a caller passes."""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping

import torch

from ..faults import InvalidModel


def key_template(key: str) -> tuple[str, str | None]:
    """"blocks.3.attn.wqkv.weight" -> ("blocks.{}.attn.wqkv.weight", "3"); keys without an index -> (key, None)."""
    m = re.match(r"^(.*?)\.(\d+)\.(.*)$", key)
    return (f"{m.group(1)}.{{}}.{m.group(3)}", m.group(2)) if m else (key, None)


def map_weights(state_dict, table, expected: dict[str, tuple], source_shapes: dict[str, tuple]):
    """Our state dict from the checkpoint's through `table` (our key template -> checkpoint key template, or a tuple
    concatenated along dim 0 with None for a zero block). expected: our key -> shape; source_shapes: our key ->
    the checkpoint tensor's shape where it is not ours (a Conv3d weight, a query token) or a fused part.
    Returns (weights, used checkpoint keys, missing keys, mis-shaped descriptions)."""
    out, used, missing, misshaped = {}, set(), [], []
    for key, shape in expected.items():
        template, index = key_template(key)
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


def key_problems(missing, unexpected, misshaped) -> list[str]:
    problems = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)):
        if keys:
            shown = ", ".join(keys[:12]) + (f", ... ({len(keys)} in all)" if len(keys) > 12 else "")
            problems.append(f"{label} keys: {shown}")
    return problems


def expected_shapes(model_class, config) -> dict[str, tuple]:
    with torch.device("meta"):
        return {k: tuple(v.shape) for k, v in model_class(config).state_dict().items()}


def from_hf(config_class, hf_config: dict):
    """config_class.from_hf of a checkpoint's config.json: what it cannot take (another model_type, a non-square
    patch, an activation we do not implement, sizes that do not divide) is the checkpoint's problem (InvalidModel)."""
    try:
        return config_class.from_hf(hf_config)
    except (ValueError, TypeError) as e:
        raise InvalidModel(f"config.json: {e}") from None


def without_architecture(override: Mapping | None, architecture: str) -> dict:
    """A dict of config overrides without its `architecture` entry (what VJEPA2Config.to_dict writes and _run.json
    keeps), which must name this checkpoint's family."""
    override = dict(override or {})
    named = override.pop("architecture", architecture)
    if named != architecture:
        raise ValueError(f"config names architecture {named!r} but the checkpoint is a {architecture!r} model")
    return override


def strip_prefixes(state_dict: Mapping[str, torch.Tensor], prefixes: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """The state dict with every leading wrapper prefix (`_orig_mod.`, `module.`, a model's own name, ...) removed,
    in any order and repeated."""
    out = {}
    for key, tensor in state_dict.items():
        stripped = True
        while stripped:
            stripped = False
            for prefix in prefixes:
                if key.startswith(prefix):
                    key, stripped = key[len(prefix):], True
        out[key] = tensor
    return out


def labels_from_hf(cfg, num_labels: int):
    """The config of config.json with the head the weights have: num_labels from the weights, id2label kept only
    when it names exactly that many classes."""
    id2label = cfg.id2label if num_labels and cfg.id2label and len(cfg.id2label) == num_labels else None
    return cfg.replace(num_labels=num_labels, id2label=id2label)


def with_processor(cfg, preprocessor: Mapping, size_name: str, why: str = ""):
    """mean/std from a checkpoint folder's processor config; a crop size other than the model's is warned about
    (frames are prepared at the model's size). size_name and why word the warning for the family."""
    mean, std = preprocessor.get("image_mean"), preprocessor.get("image_std")
    if mean is not None and std is not None:
        cfg = cfg.replace(image_mean=tuple(mean), image_std=tuple(std))
    crop = preprocessor.get("crop_size")
    crop = crop.get("height") if isinstance(crop, Mapping) else crop
    if crop is not None and crop != cfg.image_size:
        warnings.warn(f"processor crop_size {crop} differs from the model's {size_name} {cfg.image_size}{why}; frames "
                      f"are prepared at {cfg.image_size}", stacklevel=4)  # the caller of load_model
    return cfg
