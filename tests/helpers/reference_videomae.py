"""The oracle: a deliberately plain PyTorch VideoMAE encoder, independent of vmae_fast.

Everything is spelled out the slow, obvious way: Conv3d patch embedding, a sin/cos table built in float64, separate
q/k/v projections, attention as einsum + explicit softmax, LayerNorm and GELU written from their formulas. Nothing is
fused and nothing is imported from vmae_fast, so a bug shared by the fast model and its tests cannot hide here. The
oracle itself is checked against Hugging Face transformers' VideoMAEModel / VideoMAEForVideoClassification in
tests/model/test_oracle.py.

Numerics follow transformers (>= 5.18, or 4.x): tokens in (t, h, w) order; the sin/cos table is added before masked
tokens are dropped; qkv bias = [q_bias, 0, v_bias]; block and final LayerNorm eps = layer_norm_eps; fc_norm eps 1e-5;
exact (erf) GELU.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

# Keys of a transformers checkpoint that belong to VideoMAEForPreTraining's decoder, not to the encoder.
PRETRAINING_ONLY_PREFIXES = ("decoder.", "encoder_to_decoder.", "mask_token", "position_embeddings")


@dataclass
class ReferenceConfig:
    image_size: int = 224
    patch_size: int = 16
    num_channels: int = 3
    num_frames: int = 16
    tubelet_size: int = 2
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    qkv_bias: bool = True
    use_mean_pooling: bool = True
    layer_norm_eps: float = 1e-12
    fc_norm_eps: float = 1e-5  # nn.LayerNorm default, which transformers uses for fc_norm
    num_labels: int = 0  # 0 = no classifier head

    @property
    def num_tokens(self) -> int:
        return (self.num_frames // self.tubelet_size) * (self.image_size // self.patch_size) ** 2

    @classmethod
    def from_hf(cls, config, num_labels: int | None = None) -> ReferenceConfig:
        """config: a transformers VideoMAEConfig, a config.json dict or its path."""
        if isinstance(config, (str, Path)):
            config = json.loads(Path(config).read_text())
        if not isinstance(config, dict):
            config = config.to_dict()
        qkv_bias = config.get("qv_bias", config.get("qkv_bias", True))
        return cls(
            image_size=config["image_size"], patch_size=config["patch_size"],
            num_channels=config.get("num_channels", 3), num_frames=config["num_frames"],
            tubelet_size=config["tubelet_size"], hidden_size=config["hidden_size"],
            num_hidden_layers=config["num_hidden_layers"], num_attention_heads=config["num_attention_heads"],
            intermediate_size=config["intermediate_size"], qkv_bias=bool(qkv_bias),
            use_mean_pooling=bool(config.get("use_mean_pooling", True)),
            layer_norm_eps=float(config.get("layer_norm_eps", 1e-12)),
            num_labels=len(config.get("id2label") or {}) if num_labels is None else num_labels,
        )


def sincos_position_table(num_tokens: int, dim: int) -> torch.Tensor:
    """(num_tokens, dim) float32: angle(n, j) = n / 10000^(2*(j//2)/dim); sin on even j, cos on odd j.
    Computed in float64 and rounded once to float32, as transformers does (it uses numpy float64)."""
    position = torch.arange(num_tokens, dtype=torch.float64).unsqueeze(1)  # (N, 1)
    j = torch.arange(dim, dtype=torch.float64)
    exponent = 2 * torch.div(j, 2, rounding_mode="floor") / dim
    angle = position / torch.pow(torch.tensor(10000.0, dtype=torch.float64), exponent)
    table = torch.empty(num_tokens, dim, dtype=torch.float64)
    table[:, 0::2] = torch.sin(angle[:, 0::2])
    table[:, 1::2] = torch.cos(angle[:, 1::2])
    return table.to(torch.float32)


def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    """LayerNorm over the last dim from its formula: biased variance, eps inside the square root."""
    mean = x.mean(dim=-1, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * weight + bias


def gelu(x: torch.Tensor) -> torch.Tensor:
    """Exact GELU: x * Phi(x) with the erf form of the normal CDF."""
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


class Norm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.eps = eps

    def forward(self, x):
        return layer_norm(x, self.weight, self.bias, self.eps)


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then + mlp(norm2(.))."""

    def __init__(self, cfg: ReferenceConfig):
        super().__init__()
        D = cfg.hidden_size
        self.num_heads = cfg.num_attention_heads
        self.norm1 = Norm(D, cfg.layer_norm_eps)
        self.q = nn.Linear(D, D, bias=cfg.qkv_bias)
        self.k = nn.Linear(D, D, bias=False)  # VideoMAE has no key bias
        self.v = nn.Linear(D, D, bias=cfg.qkv_bias)
        self.proj = nn.Linear(D, D)
        self.norm2 = Norm(D, cfg.layer_norm_eps)
        self.fc1 = nn.Linear(D, cfg.intermediate_size)
        self.fc2 = nn.Linear(cfg.intermediate_size, D)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, n, D) -> (B, n, D); softmax(q k^T / sqrt(d)) v per head, softmax written out."""
        B, n, D = x.shape
        H = self.num_heads
        d = D // H
        q = self.q(x).reshape(B, n, H, d).transpose(1, 2)  # (B, H, n, d)
        k = self.k(x).reshape(B, n, H, d).transpose(1, 2)
        v = self.v(x).reshape(B, n, H, d).transpose(1, 2)
        # scale q rather than the (n, n) scores: the same product, a pass over n*d instead of n*n numbers
        scores = torch.einsum("bhqd,bhkd->bhqk", q / math.sqrt(d), k)  # (B, H, n, n)
        # softmax over keys, written out; in place only to halve the time of the ViT-B test (1568^2 scores per head)
        scores.sub_(scores.amax(dim=-1, keepdim=True))  # for exp's range only; softmax is shift-invariant
        weights = scores.exp_()
        weights.div_(weights.sum(dim=-1, keepdim=True))
        out = torch.einsum("bhqk,bhkd->bqhd", weights, v)  # (B, n, H, d)
        return self.proj(out.reshape(B, n, D))

    def forward(self, x):
        x = x + self.attention(self.norm1(x))
        return x + self.fc2(gelu(self.fc1(self.norm2(x))))


class ReferenceVideoMAE(nn.Module):
    """Plain VideoMAE encoder (+ optional fc_norm and classifier head), fp32 reference.

    Parts present depend on the checkpoint: `norm` (final LayerNorm) when use_mean_pooling is False, `fc_norm` when
    use_mean_pooling is True and the checkpoint has one (VideoMAEForVideoClassification), `head` when it has a
    classifier.
    """

    def __init__(self, cfg: ReferenceConfig, has_fc_norm: bool = True):
        super().__init__()
        self.cfg = cfg
        D = cfg.hidden_size
        ts, P = cfg.tubelet_size, cfg.patch_size
        self.patch_embed = nn.Conv3d(cfg.num_channels, D, kernel_size=(ts, P, P), stride=(ts, P, P))
        self.register_buffer("pos_table", sincos_position_table(cfg.num_tokens, D), persistent=False)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = None if cfg.use_mean_pooling else Norm(D, cfg.layer_norm_eps)
        self.fc_norm = Norm(D, cfg.fc_norm_eps) if cfg.use_mean_pooling and has_fc_norm else None
        self.head = nn.Linear(D, cfg.num_labels) if cfg.num_labels > 0 else None

    @torch.no_grad()
    def forward(self, pixel_values: torch.Tensor, bool_masked_pos: torch.Tensor | None = None) -> dict:
        """pixel_values: float (B, T, C, H, W), normalized (HF layout). bool_masked_pos: bool (B, N), True = masked
        (dropped), the same count in every row (HF semantics). Returns a dict:
          tokens    (B, n_kept, D): HF last_hidden_state (after the final LayerNorm when use_mean_pooling is False)
          embedding (B, D): fc_norm(mean(tokens)) with mean pooling (plain mean without fc_norm), else mean(tokens)
          logits    (B, num_labels) or None: head(embedding) with mean pooling, else head(tokens[:, 0]) as HF does
        """
        B = pixel_values.shape[0]
        x = self.patch_embed(pixel_values.permute(0, 2, 1, 3, 4))  # (B, D, n_t, n_h, n_w)
        x = x.flatten(2).transpose(1, 2)  # (B, N, D), tokens in (t, h, w) order
        x = x + self.pos_table  # position added before masking, so kept tokens keep their own rows
        if bool_masked_pos is not None:
            counts = (~bool_masked_pos).sum(dim=1)
            if not bool(torch.all(counts == counts[0])):
                raise ValueError(f"bool_masked_pos must keep the same count per row, got {counts.tolist()}")
            x = x[~bool_masked_pos].reshape(B, -1, x.shape[-1])
        for block in self.blocks:
            x = block(x)
        if self.norm is not None:
            x = self.norm(x)
        pooled = x.mean(dim=1)
        embedding = self.fc_norm(pooled) if self.fc_norm is not None else pooled
        logits = None
        if self.head is not None:
            logits = self.head(embedding if self.cfg.use_mean_pooling else x[:, 0])
        return {"tokens": x, "embedding": embedding, "logits": logits}

    @torch.no_grad()
    def forward_kept(self, pixel_values: torch.Tensor, keep: torch.Tensor | None = None) -> dict:
        """Rows that may keep different token counts: runs each clip alone. keep: bool (B, N), True = kept (the
        vmae_fast convention, the opposite of bool_masked_pos) or None. Returns tokens packed (N_kept, D) in row
        order, embedding (B, D), logits (B, C) or None, cu_seqlens int32 (B+1,)."""
        outs = [self(pixel_values[b:b + 1], None if keep is None else ~keep[b:b + 1]) for b in range(len(pixel_values))]
        lengths = [o["tokens"].shape[1] for o in outs]
        cu_seqlens = torch.tensor([0] + lengths, dtype=torch.int64).cumsum(0).to(torch.int32)
        logits = None if outs[0]["logits"] is None else torch.cat([o["logits"] for o in outs])
        return {"tokens": torch.cat([o["tokens"][0] for o in outs]),
                "embedding": torch.cat([o["embedding"] for o in outs]), "logits": logits, "cu_seqlens": cu_seqlens}

    # ---- weights -------------------------------------------------------------------------------------------------

    def load_hf_state_dict(self, state_dict: dict) -> ReferenceVideoMAE:
        """Load transformers VideoMAE weights: VideoMAEModel (no prefix) or VideoMAEForVideoClassification /
        VideoMAEForPreTraining (`videomae.` prefix; decoder keys ignored); q/v biases spelled `query.bias` /
        `value.bias` (transformers >= 5.18) or `q_bias` / `v_bias` (4.x). Every other key must be used exactly once
        and have the right shape."""
        sd = {}
        for key, value in state_dict.items():
            key = key.removeprefix("videomae.")
            if key.startswith(PRETRAINING_ONLY_PREFIXES):
                continue
            key = key.replace(".attention.attention.q_bias", ".attention.attention.query.bias")
            key = key.replace(".attention.attention.v_bias", ".attention.attention.value.bias")
            sd[key] = value
        layer = "encoder.layer.{}."
        block_map = {  # ours -> transformers, per block
            "norm1.weight": "layernorm_before.weight", "norm1.bias": "layernorm_before.bias",
            "q.weight": "attention.attention.query.weight", "q.bias": "attention.attention.query.bias",
            "k.weight": "attention.attention.key.weight",
            "v.weight": "attention.attention.value.weight", "v.bias": "attention.attention.value.bias",
            "proj.weight": "attention.output.dense.weight", "proj.bias": "attention.output.dense.bias",
            "norm2.weight": "layernorm_after.weight", "norm2.bias": "layernorm_after.bias",
            "fc1.weight": "intermediate.dense.weight", "fc1.bias": "intermediate.dense.bias",
            "fc2.weight": "output.dense.weight", "fc2.bias": "output.dense.bias",
        }
        top_map = {
            "patch_embed.weight": "embeddings.patch_embeddings.projection.weight",
            "patch_embed.bias": "embeddings.patch_embeddings.projection.bias",
            "norm.weight": "layernorm.weight", "norm.bias": "layernorm.bias",
            "fc_norm.weight": "fc_norm.weight", "fc_norm.bias": "fc_norm.bias",
            "head.weight": "classifier.weight", "head.bias": "classifier.bias",
        }
        used = set()
        for name, param in self.named_parameters():
            if name.startswith("blocks."):
                _, i, rest = name.split(".", 2)
                hf_key = layer.format(i) + block_map[rest]
            else:
                hf_key = top_map[name]
            if hf_key not in sd:
                raise KeyError(f"missing key {hf_key!r} for reference parameter {name!r}")
            if sd[hf_key].shape != param.shape:
                raise ValueError(f"{hf_key}: expected shape {tuple(param.shape)}, got {tuple(sd[hf_key].shape)}")
            with torch.no_grad():
                param.copy_(sd[hf_key].to(torch.float32))
            used.add(hf_key)
        unused = sorted(set(sd) - used)
        if unused:
            raise KeyError(f"unexpected keys in the checkpoint: {unused}")
        return self

    @classmethod
    def from_hf(cls, source) -> ReferenceVideoMAE:
        """source: a transformers VideoMAE model object, or a directory with config.json and model.safetensors or
        pytorch_model.bin (as written by save_pretrained). Returns the fp32 reference in eval mode."""
        if isinstance(source, (str, Path)):
            path = Path(source)
            config = json.loads((path / "config.json").read_text())
            if (path / "model.safetensors").exists():
                from safetensors.torch import load_file

                state_dict = load_file(path / "model.safetensors")
            else:
                state_dict = torch.load(path / "pytorch_model.bin", map_location="cpu", weights_only=True)
        else:
            config, state_dict = source.config.to_dict(), source.state_dict()
        keys = {k.removeprefix("videomae.") for k in state_dict}
        num_labels = state_dict["classifier.weight"].shape[0] if "classifier.weight" in state_dict else 0
        cfg = ReferenceConfig.from_hf(config, num_labels=num_labels)
        model = cls(cfg, has_fc_norm="fc_norm.weight" in keys).eval()
        return model.load_hf_state_dict(state_dict)


def frames_to_pixel_values(frames: torch.Tensor, mean, std) -> torch.Tensor:
    """uint8 (B, T, H, W, 3) decoder frames -> float32 (B, T, 3, H, W): x / 255, then (x - mean) / std per channel
    (mean/std in [0, 1] pixel units, sequences of 3)."""
    if frames.dtype != torch.uint8 or frames.dim() != 5 or frames.shape[-1] != 3:
        raise ValueError(f"expected uint8 (B, T, H, W, 3), got {frames.dtype} {tuple(frames.shape)}")
    x = frames.permute(0, 1, 4, 2, 3).to(torch.float32) / 255.0
    mean = torch.as_tensor(mean, dtype=torch.float32).view(1, 1, 3, 1, 1)
    std = torch.as_tensor(std, dtype=torch.float32).view(1, 1, 3, 1, 1)
    return ((x - mean) / std).contiguous()
