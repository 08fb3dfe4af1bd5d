"""load_model: read a checkpoint from wherever it is (a Hugging Face folder, a weights file, the hub cache,
`random:<preset>`), pick its architecture, convert its keys strictly and assemble the encoder."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from .._options import DTYPE_NAMES
from ..config import PRESETS, VJEPA2_PRESETS, VideoMAEConfig, VJEPA2Config
from ..faults import InvalidModel, MissingFile
from ..model import KERNEL_BACKENDS, VideoEncoder, VideoMAE
from ..vjepa2 import VJEPA2
from .mapping import expected_shapes, without_architecture
from .videomae_keys import build_config, convert_state_dict, normalize_keys
from .vjepa2_keys import VJEPA2_PATCH_KEY, build_vjepa2_config, convert_vjepa2_state_dict, normalize_vjepa2_keys

HF_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                   "pytorch_model.bin.index.json")
DTYPES = {name: getattr(torch, torch_name) for name, torch_name in DTYPE_NAMES.items()}


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
        state_dict = normalize_vjepa2_keys(state_dict)
        cfg = build_vjepa2_config(state_dict, hf_config, preprocessor, config)
        weights = convert_vjepa2_state_dict(state_dict, cfg)
    else:
        layout, state_dict = normalize_keys(state_dict)
        cfg = build_config(state_dict, layout, hf_config, preprocessor, config)
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
    # a file that is no pickle at all (a text file, a video): torch's legacy reader fails with whatever its first
    # bytes lead to, an IndexError or KeyError included
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, AttributeError, IndexError, KeyError) as e:
        if "weights_only" in str(e):  # torch's advice to unpickle it anyway: never ours to give (see _refused)
            raise InvalidModel(_refused(path, str(e))) from None
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


def _refused(path: Path, torch_message: str) -> str:
    """Our message for a file whose pickle torch's weights_only unpickler refused (another kind of file whose bytes
    read as pickle operations, or a checkpoint that holds other Python objects). torch's own message advises
    loading it with weights_only=False, arbitrary code execution for a file of unknown origin: only what it found
    is kept (the object a GLOBAL names, or the operation's number)."""
    named = (re.search(r"Unsupported global: GLOBAL (.+?) was not an allowed global", torch_message, re.S)
             or re.search(r"unsupported GLOBAL (\S+)", torch_message))
    operand = re.search(r"Unsupported operand (\d+)", torch_message)
    if named:
        found = f"it names the Python object {' '.join(named.group(1).split())[:80]!r}"
    elif operand:
        found = f"unsupported pickle operation {operand.group(1)}"
    else:
        found = "objects other than tensors"
    return (f"cannot read {path} as a weights file: torch.load(weights_only=True) refused its pickle ({found}); it "
            "is another kind of file, or a checkpoint holding Python objects besides its tensors, which vmae-fast "
            "does not unpickle: give a .safetensors file, a Hugging Face folder or a .pth of tensors only")


def _read_json(path: Path) -> dict:
    """A JSON file of a checkpoint folder; one that is not JSON is the checkpoint's problem (InvalidModel)."""
    try:
        return json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise InvalidModel(f"{path} is not valid JSON: {e}") from None


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
    shapes = expected_shapes(model_class(config), config)
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
        config = config.replace(**without_architecture(override, "vjepa2")) if override else config
    else:
        if preset not in PRESETS:
            raise InvalidModel(f"unknown VideoMAE preset {preset!r} in {text!r}; expected one of {sorted(PRESETS)} "
                             f"or a V-JEPA 2 preset {sorted(VJEPA2_PRESETS)}")
        config = VideoMAEConfig.from_name(preset)
        config = config.replace(**without_architecture(override, "videomae")) if override else config
    model = _assemble(config, random_state_dict(config, seed), device, dtype, backend)
    model.source = f"random:{preset}" + (f":{seed}" if seed else "")
    model.weights_sha256 = hashlib.sha256(f"random:{preset}:seed={seed}".encode()).hexdigest()
    return model
