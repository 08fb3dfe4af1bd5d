"""Encoder configurations: one dataclass per architecture (VideoMAEConfig, VJEPA2Config), named presets, and the
readers for transformers' config.json.

Public API (`__all__`): VideoMAEConfig and its PRESETS, VJEPA2Config with VJEPA2_PRESETS and VJEPA2_HUB_IDS, and the
two mean/std pairs, IMAGENET_MEAN/IMAGENET_STD and HF_DEFAULT_MEAN/HF_DEFAULT_STD.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # the original MCG-NJU / VideoMAE V2 training statistics
IMAGENET_STD = (0.229, 0.224, 0.225)
HF_DEFAULT_MEAN = (0.5, 0.5, 0.5)  # transformers' VideoMAE image processor defaults (IMAGENET_STANDARD_*)
HF_DEFAULT_STD = (0.5, 0.5, 0.5)


@dataclass
class VideoMAEConfig:
    """Architecture of a VideoMAE encoder plus the preprocessing its weights expect.

    Tokens per clip: num_tokens = (num_frames // tubelet_size) * (image_size // patch_size) ** 2, in (t, h, w) order.
    use_mean_pooling=True (fine-tuned checkpoints): embedding = fc_norm(mean of the last block output).
    use_mean_pooling=False (pre-trained checkpoints): tokens = final LayerNorm(last block output), embedding = mean.
    """

    image_size: int = 224
    patch_size: int = 16
    num_channels: int = 3
    num_frames: int = 16
    tubelet_size: int = 2
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    qkv_bias: bool = True  # q and v biases (k never has one)
    use_mean_pooling: bool = True
    layer_norm_eps: float = 1e-6  # block and final LayerNorm; HF config.json files say 1e-12
    fc_norm_eps: float = 1e-6  # LayerNorm after mean pooling; transformers builds it with the torch default 1e-5
    has_fc_norm: bool = True  # False for a headless HF VideoMAEModel with use_mean_pooling (plain mean embedding)
    num_labels: int = 0  # 0 = no classification head
    id2label: dict[int, str] | None = None
    image_mean: tuple[float, float, float] = IMAGENET_MEAN  # preprocessing, in [0, 1] pixel units
    image_std: tuple[float, float, float] = IMAGENET_STD

    architecture = "videomae"  # class attribute, not a field (to_dict and the outputs' config hash are unchanged)

    @property
    def resize_size(self) -> int:
        """Short side before the center crop: the crop size itself (VideoMAE's processors resize to it)."""
        return self.image_size

    def __post_init__(self) -> None:
        self.image_mean = tuple(float(v) for v in self.image_mean)
        self.image_std = tuple(float(v) for v in self.image_std)
        if self.id2label is not None:
            self.id2label = {int(k): str(v) for k, v in self.id2label.items()}
        self.validate()

    # --- derived sizes -----------------------------------------------------------------------------------------------
    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def grid(self) -> tuple[int, int, int]:
        """(n_t, n_h, n_w): tubelets along time, height and width."""
        n = self.image_size // self.patch_size
        return self.num_frames // self.tubelet_size, n, n

    @property
    def num_tokens(self) -> int:
        n_t, n_h, n_w = self.grid
        return n_t * n_h * n_w

    @property
    def patch_dim(self) -> int:
        """Length of one flattened tubelet: num_channels * tubelet_size * patch_size**2."""
        return self.num_channels * self.tubelet_size * self.patch_size**2

    def validate(self) -> None:
        """Raise ValueError naming the field and its value when the sizes do not fit together."""
        positive = ("image_size", "patch_size", "num_channels", "num_frames", "tubelet_size", "hidden_size",
                    "num_hidden_layers", "num_attention_heads", "intermediate_size")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"VideoMAEConfig.{name} must be a positive int, got {value!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_attention_heads "
                             f"{self.num_attention_heads}")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not divisible by patch_size {self.patch_size}")
        if self.num_frames % self.tubelet_size:
            raise ValueError(f"num_frames {self.num_frames} is not divisible by tubelet_size {self.tubelet_size}")
        if not isinstance(self.num_labels, int) or self.num_labels < 0:
            raise ValueError(f"num_labels must be an int >= 0, got {self.num_labels!r}")
        for name in ("layer_norm_eps", "fc_norm_eps"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        for name in ("image_mean", "image_std"):
            if len(getattr(self, name)) != self.num_channels:
                raise ValueError(f"{name} needs {self.num_channels} values (one per channel), "
                                 f"got {getattr(self, name)}")
        if any(s <= 0 for s in self.image_std):
            raise ValueError(f"image_std must be > 0, got {self.image_std}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-serializable copy (id2label keys become strings, as in config.json)."""
        d = dataclasses.asdict(self)
        d["image_mean"], d["image_std"] = list(self.image_mean), list(self.image_std)
        if self.id2label is not None:
            d["id2label"] = {str(k): v for k, v in self.id2label.items()}
        return d

    def replace(self, **changes: Any) -> VideoMAEConfig:
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            known = [f.name for f in dataclasses.fields(self)]
            raise ValueError(f"unknown VideoMAEConfig field(s) {unknown}; known: {known}")
        return dataclasses.replace(self, **changes)

    # --- constructors ------------------------------------------------------------------------------------------------
    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> VideoMAEConfig:
        """A preset ("small", "base", "large", "huge", "giant"): 16 frames of 224x224, tubelet 2, ImageNet mean/std,
        mean pooling with fc_norm, no head."""
        if name not in PRESETS:
            raise ValueError(f"unknown VideoMAE preset {name!r}; expected one of {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    @classmethod
    def from_hf(cls, source: str | Path | dict[str, Any]) -> VideoMAEConfig:
        """From transformers' VideoMAE config.json (a path to the file or its directory, or the parsed dict).
        Accepts both bias spellings (`qkv_bias` of 4.x, `qv_bias` of 5.x). fc_norm eps is 1e-5 as transformers builds
        it; mean/std default to the HF processor's 0.5/0.5 (the checkpoint loader overrides them from
        preprocessor_config.json). num_labels is taken from id2label; the loader corrects it from the weights."""
        if isinstance(source, dict):
            hf = source
        else:
            path = Path(source)
            if path.is_dir():
                path = path / "config.json"
            hf = json.loads(path.read_text())
        if hf.get("model_type", "videomae") != "videomae":
            raise ValueError(f"config.json describes model_type {hf['model_type']!r}, not 'videomae'")
        if hf.get("hidden_act", "gelu") != "gelu":
            raise ValueError(f"only hidden_act 'gelu' (exact, erf) is supported, got {hf['hidden_act']!r}")
        sizes = {}
        for name in ("image_size", "patch_size"):
            value = hf.get(name, 224 if name == "image_size" else 16)
            if isinstance(value, (list, tuple)):
                if len(set(value)) != 1:
                    raise ValueError(f"only square {name} is supported, got {value}")
                value = value[0]
            sizes[name] = value
        id2label = hf.get("id2label")
        id2label = {int(k): v for k, v in id2label.items()} if id2label else None
        return cls(
            **sizes,
            num_channels=hf.get("num_channels", 3),
            num_frames=hf.get("num_frames", 16),
            tubelet_size=hf.get("tubelet_size", 2),
            hidden_size=hf.get("hidden_size", 768),
            num_hidden_layers=hf.get("num_hidden_layers", 12),
            num_attention_heads=hf.get("num_attention_heads", 12),
            intermediate_size=hf.get("intermediate_size", 3072),
            qkv_bias=bool(hf.get("qv_bias", hf.get("qkv_bias", True))),
            use_mean_pooling=bool(hf.get("use_mean_pooling", True)),
            layer_norm_eps=float(hf.get("layer_norm_eps", 1e-12)),
            fc_norm_eps=1e-5,
            num_labels=len(id2label) if id2label else 0,
            id2label=id2label,
            image_mean=HF_DEFAULT_MEAN,
            image_std=HF_DEFAULT_STD,
        )


# Standard VideoMAE sizes (ViT-S/B/L/H with patch 16) and VideoMAE V2's ViT-g/14.
PRESETS: dict[str, dict[str, Any]] = {
    "small": {"hidden_size": 384, "num_hidden_layers": 12, "num_attention_heads": 6, "intermediate_size": 1536},
    "base": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072},
    "large": {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16, "intermediate_size": 4096},
    "huge": {"hidden_size": 1280, "num_hidden_layers": 32, "num_attention_heads": 16, "intermediate_size": 5120},
    "giant": {"hidden_size": 1408, "num_hidden_layers": 40, "num_attention_heads": 16, "intermediate_size": 6144,
                  "patch_size": 14},
}



@dataclass
class VJEPA2Config:
    """Architecture of a V-JEPA 2 encoder (+ the attentive-pooler classifier when num_labels > 0) plus the
    preprocessing its weights expect (transformers' VJEPA2VideoProcessor).

    Tokens per clip: num_tokens = (num_frames // tubelet_size) * (image_size // patch_size) ** 2, in (t, h, w) order,
    with no position table: attention rotates q and k by each token's (t, h, w) (kernels/qkv_rope.py), so any
    num_frames divisible by tubelet_size runs with the same weights (frames_per_clip is what it was trained with).
    embedding: the mean of the last-layer tokens (after the encoder's final LayerNorm, HF's last_hidden_state), as
    the V-JEPA 2 frozen evaluations pool; with a classifier, the attentive pooler's output, and logits = head(it).
    Preprocessing: the short side resized to resize_size (int(image_size * 256 / 224), bilinear), the center
    image_size crop, ImageNet mean/std.
    """

    image_size: int = 256  # HF crop_size
    patch_size: int = 16
    num_channels: int = 3
    num_frames: int = 64  # frames per clip at inference; HF's frames_per_clip unless overridden
    tubelet_size: int = 2
    hidden_size: int = 1024
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    intermediate_size: int = 4096  # int(hidden_size * mlp_ratio), as HF builds its MLP
    qkv_bias: bool = True  # q, k and v biases (all three, unlike VideoMAE)
    layer_norm_eps: float = 1e-6  # every LayerNorm: blocks, the encoder's final one, the pooler's
    rope_theta: float = 10000.0
    frames_per_clip: int = 64  # what the encoder was trained with (recorded; does not change the computation)
    num_pooler_layers: int = 3  # self-attention layers of the attentive pooler (used when num_labels > 0)
    pooler_intermediate_size: int | None = None  # the pooler's MLP width; None = 4 * hidden_size (HF's fixed ratio)
    num_labels: int = 0  # 0 = no classifier (and no pooler)
    id2label: dict[int, str] | None = None
    image_mean: tuple[float, float, float] = IMAGENET_MEAN
    image_std: tuple[float, float, float] = IMAGENET_STD
    resize_size: int | None = None  # short side before the crop; None = int(image_size * 256 / 224)

    architecture = "vjepa2"  # class attribute, not a field: what load_model and the outputs call this family

    def __post_init__(self) -> None:
        self.image_mean = tuple(float(v) for v in self.image_mean)
        self.image_std = tuple(float(v) for v in self.image_std)
        if self.id2label is not None:
            self.id2label = {int(k): str(v) for k, v in self.id2label.items()}
        if self.resize_size is None:
            self.resize_size = int(self.image_size * 256 / 224)  # VJEPA2VideoProcessor's rule
        if self.pooler_intermediate_size is None:
            self.pooler_intermediate_size = int(self.hidden_size * 4.0)  # transformers' VJEPA2MLP default ratio
        self.validate()

    # --- derived sizes (the same names as VideoMAEConfig: tokens.py and the pipeline read them) ---------------------
    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def rope_section(self) -> int:
        """Columns of the head dim rotated by each of t, h, w: 2 * ((head_dim // 3) // 2)."""
        return 2 * ((self.head_dim // 3) // 2)

    @property
    def grid(self) -> tuple[int, int, int]:
        """(n_t, n_h, n_w): tubelets along time, height and width."""
        n = self.image_size // self.patch_size
        return self.num_frames // self.tubelet_size, n, n

    @property
    def num_tokens(self) -> int:
        n_t, n_h, n_w = self.grid
        return n_t * n_h * n_w

    @property
    def patch_dim(self) -> int:
        return self.num_channels * self.tubelet_size * self.patch_size**2

    def validate(self) -> None:
        """Raise ValueError naming the field and its value when the sizes do not fit together."""
        positive = ("image_size", "patch_size", "num_channels", "num_frames", "tubelet_size", "hidden_size",
                    "num_hidden_layers", "num_attention_heads", "intermediate_size", "frames_per_clip",
                    "resize_size", "pooler_intermediate_size")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"VJEPA2Config.{name} must be a positive int, got {value!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_attention_heads "
                             f"{self.num_attention_heads}")
        if self.head_dim % 2 or self.rope_section < 2:
            raise ValueError(f"head dim {self.head_dim} (hidden_size / num_attention_heads) must be even and >= 6 "
                             f"for the 3D rotary embedding")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not divisible by patch_size {self.patch_size}")
        if self.num_frames % self.tubelet_size:
            raise ValueError(f"num_frames {self.num_frames} is not divisible by tubelet_size {self.tubelet_size}")
        if self.resize_size < self.image_size:
            raise ValueError(f"resize_size {self.resize_size} (the short side before the crop) must be >= image_size "
                             f"{self.image_size}")
        if not isinstance(self.num_labels, int) or self.num_labels < 0:
            raise ValueError(f"num_labels must be an int >= 0, got {self.num_labels!r}")
        if not isinstance(self.num_pooler_layers, int) or self.num_pooler_layers < 0:
            raise ValueError(f"num_pooler_layers must be an int >= 0, got {self.num_pooler_layers!r}")
        if not self.layer_norm_eps > 0:
            raise ValueError(f"layer_norm_eps must be > 0, got {self.layer_norm_eps!r}")
        if not (math.isfinite(self.rope_theta) and self.rope_theta > 1):
            raise ValueError(f"rope_theta must be a finite number > 1, got {self.rope_theta!r}")
        for name in ("image_mean", "image_std"):
            if len(getattr(self, name)) != self.num_channels:
                raise ValueError(f"{name} needs {self.num_channels} values (one per channel), "
                                 f"got {getattr(self, name)}")
        if any(s <= 0 for s in self.image_std):
            raise ValueError(f"image_std must be > 0, got {self.image_std}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-serializable copy with `architecture` (id2label keys become strings, as in config.json)."""
        d = {"architecture": self.architecture, **dataclasses.asdict(self)}
        d["image_mean"], d["image_std"] = list(self.image_mean), list(self.image_std)
        if self.id2label is not None:
            d["id2label"] = {str(k): v for k, v in self.id2label.items()}
        return d

    def replace(self, **changes: Any) -> VJEPA2Config:
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            known = [f.name for f in dataclasses.fields(self)]
            raise ValueError(f"unknown VJEPA2Config field(s) {unknown}; known: {known}")
        if "image_size" in changes and "resize_size" not in changes:
            changes["resize_size"] = None  # follow the new crop size by the processor's rule
        if "hidden_size" in changes and "pooler_intermediate_size" not in changes:
            changes["pooler_intermediate_size"] = None
        return dataclasses.replace(self, **changes)

    # --- constructors ------------------------------------------------------------------------------------------------
    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> VJEPA2Config:
        """A preset of the published encoders ("vjepa2-vitl", "vjepa2-vith", "vjepa2-vitg", "vjepa2-vitg-384"):
        64 frames (their frames_per_clip) of 256 px (384 for vitg-384), ImageNet mean/std, no classifier."""
        if name not in VJEPA2_PRESETS:
            raise ValueError(f"unknown V-JEPA 2 preset {name!r}; expected one of {sorted(VJEPA2_PRESETS)}")
        return cls(**{**VJEPA2_PRESETS[name], **overrides})

    @classmethod
    def from_hf(cls, source: str | Path | dict[str, Any]) -> VJEPA2Config:
        """From transformers' VJEPA2 config.json (a path to the file or its directory, or the parsed dict).
        intermediate_size = int(hidden_size * mlp_ratio) as HF builds the MLP; num_frames = frames_per_clip;
        mean/std and the resize default to VJEPA2VideoProcessor's (the checkpoint loader reads the folder's processor
        config). The predictor's fields (pred_*) describe the pre-training predictor, which is not loaded."""
        if isinstance(source, dict):
            hf = source
        else:
            path = Path(source)
            if path.is_dir():
                path = path / "config.json"
            hf = json.loads(path.read_text())
        if hf.get("model_type") != "vjepa2":
            raise ValueError(f"config.json describes model_type {hf.get('model_type')!r}, not 'vjepa2'")
        if hf.get("hidden_act", "gelu") != "gelu":
            raise ValueError(f"only hidden_act 'gelu' (exact, erf) is supported, got {hf['hidden_act']!r}")
        patch = hf.get("patch_size", 16)
        if isinstance(patch, (list, tuple)):
            if len(set(patch)) != 1:
                raise ValueError(f"only square patch_size is supported, got {patch}")
            patch = patch[0]
        hidden = hf.get("hidden_size", 1024)
        frames = hf.get("frames_per_clip", 64)
        id2label = hf.get("id2label")
        id2label = {int(k): v for k, v in id2label.items()} if id2label else None
        return cls(
            image_size=hf.get("crop_size", 256), patch_size=patch, num_channels=hf.get("in_chans", 3),
            num_frames=frames, tubelet_size=hf.get("tubelet_size", 2), hidden_size=hidden,
            num_hidden_layers=hf.get("num_hidden_layers", 24), num_attention_heads=hf.get("num_attention_heads", 16),
            intermediate_size=int(hidden * hf.get("mlp_ratio", 4.0)), qkv_bias=bool(hf.get("qkv_bias", True)),
            layer_norm_eps=float(hf.get("layer_norm_eps", 1e-6)), frames_per_clip=frames,
            num_pooler_layers=hf.get("num_pooler_layers", 3), num_labels=len(id2label) if id2label else 0,
            id2label=id2label)


# The published V-JEPA 2 encoders (transformers' convert_vjepa2_to_hf.py): ViT-L/H with 16 heads, ViT-g with 22 heads
# of 64 and mlp_ratio 48/11 (intermediate 6144); patch 16, tubelet 2, 64 frames per clip.
VJEPA2_PRESETS: dict[str, dict[str, Any]] = {
    "vjepa2-vitl": {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16,
                    "intermediate_size": 4096},
    "vjepa2-vith": {"hidden_size": 1280, "num_hidden_layers": 32, "num_attention_heads": 16,
                    "intermediate_size": 5120},
    "vjepa2-vitg": {"hidden_size": 1408, "num_hidden_layers": 40, "num_attention_heads": 22,
                    "intermediate_size": 6144},
    "vjepa2-vitg-384": {"hidden_size": 1408, "num_hidden_layers": 40, "num_attention_heads": 22,
                        "intermediate_size": 6144, "image_size": 384},
}
# Their hub ids (encoders; classifiers add the attentive pooler: -vitl-fpc16-256-ssv2, -vitg-fpc64-384-ssv2,
# -vitl-fpc32-256-diving48, -vitg-fpc32-384-diving48)
VJEPA2_HUB_IDS = {"vjepa2-vitl": "facebook/vjepa2-vitl-fpc64-256", "vjepa2-vith": "facebook/vjepa2-vith-fpc64-256",
                  "vjepa2-vitg": "facebook/vjepa2-vitg-fpc64-256", "vjepa2-vitg-384": "facebook/vjepa2-vitg-fpc64-384"}

__all__ = ["HF_DEFAULT_MEAN", "HF_DEFAULT_STD", "IMAGENET_MEAN", "IMAGENET_STD", "PRESETS", "VJEPA2_HUB_IDS",
           "VJEPA2_PRESETS", "VJEPA2Config", "VideoMAEConfig"]
