"""VideoMAE encoder configuration: one dataclass, named presets, and the reader for transformers' config.json."""

from __future__ import annotations

import dataclasses
import json
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
        it; mean/std default to the HF processor's 0.5/0.5 (checkpoint.py overrides them from
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

__all__ = ["HF_DEFAULT_MEAN", "HF_DEFAULT_STD", "IMAGENET_MEAN", "IMAGENET_STD", "PRESETS", "VideoMAEConfig"]
