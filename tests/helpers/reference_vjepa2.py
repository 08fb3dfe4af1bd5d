"""The V-JEPA 2 oracle: a deliberately plain PyTorch encoder (+ attentive-pooler classifier), independent of vmae_fast.

Spelled out the slow, obvious way, as reference_videomae.py is: Conv3d patch embedding (no position table), separate
q/k/v projections (all three with biases), the 3D rotary embedding written element by element from its formula
(below), attention as einsum + explicit softmax, LayerNorm and exact GELU from their formulas, the pooler's self- and
cross-attention the same way. Nothing is imported from vmae_fast. It is itself checked against transformers'
VJEPA2Model / VJEPA2ForVideoClassification in tests/model/test_vjepa2_oracle.py.

The rotary embedding, as V-JEPA 2's code computes it (rotate_queries_or_keys): the head dim d holds three sections
of S = 2 * ((d // 3) // 2) columns for the token's t, h and w (the rest passes through). In a section, column j
(0 <= j < S) gets the angle a_j = p * 10000 ** (-(j mod S/2) / (S/2)) with p the token's position on that axis, and
    out[j] = x[j] cos(a_j) - x[j + 1] sin(a_j)   for even j,
    out[j] = x[j] cos(a_j) + x[j - 1] sin(a_j)   for odd j.
A token's (t, h, w) come from its index n in the clip's (t, h, w)-ordered grid: t = n // (n_h n_w),
h = (n // n_w) % n_h, w = n % n_w, so a kept token keeps its own position whatever else is dropped.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from tests.helpers.reference_videomae import gelu, layer_norm


@dataclass
class ReferenceVJEPA2Config:
    crop_size: int = 256
    patch_size: int = 16
    num_channels: int = 3
    tubelet_size: int = 2
    hidden_size: int = 1024
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    mlp_hidden: int = 4096  # int(hidden_size * mlp_ratio)
    layer_norm_eps: float = 1e-6
    num_pooler_layers: int = 3
    num_labels: int = 0  # 0 = no pooler, no classifier

    @classmethod
    def from_hf(cls, config, num_labels: int | None = None) -> ReferenceVJEPA2Config:
        """config: a transformers VJEPA2Config, a config.json dict or its path."""
        if isinstance(config, (str, Path)):
            config = json.loads(Path(config).read_text())
        if not isinstance(config, dict):
            config = config.to_dict()
        return cls(crop_size=config["crop_size"], patch_size=config["patch_size"],
                   num_channels=config.get("in_chans", 3), tubelet_size=config["tubelet_size"],
                   hidden_size=config["hidden_size"], num_hidden_layers=config["num_hidden_layers"],
                   num_attention_heads=config["num_attention_heads"],
                   mlp_hidden=int(config["hidden_size"] * config.get("mlp_ratio", 4.0)),
                   layer_norm_eps=float(config.get("layer_norm_eps", 1e-6)),
                   num_pooler_layers=config.get("num_pooler_layers", 3),
                   num_labels=len(config.get("id2label") or {}) if num_labels is None else num_labels)


def rotary(x: torch.Tensor, positions: torch.Tensor, theta: float = 10000.0) -> torch.Tensor:
    """x (..., n, d) float32, positions int (n, 3) of (t, h, w) -> x with V-JEPA 2's 3D rotary embedding, column by
    column from the formula in the module docstring (angles in float64, rounded to float32 once)."""
    d = x.shape[-1]
    S = 2 * ((d // 3) // 2)
    half = S // 2
    out = x.clone()
    for axis in range(3):
        p = positions[:, axis].to(torch.float64)  # (n,)
        for j in range(S):
            col = axis * S + j
            angle = (p * theta ** (-(j % half) / half)).to(torch.float32)  # (n,)
            if j % 2 == 0:
                out[..., col] = x[..., col] * angle.cos() - x[..., col + 1] * angle.sin()
            else:
                out[..., col] = x[..., col] * angle.cos() + x[..., col - 1] * angle.sin()
    return out


def grid_positions(ids: torch.Tensor, n_h: int, n_w: int) -> torch.Tensor:
    """Token indices (n,) in a clip's (t, h, w)-ordered grid -> (n, 3) of (t, h, w)."""
    return torch.stack((ids // (n_h * n_w), (ids // n_w) % n_h, ids % n_w), dim=1)


def attention(q, k, v) -> torch.Tensor:
    """q (B, H, m, d), k/v (B, H, n, d) -> (B, m, H, d): softmax(q k^T / sqrt(d)) v, softmax written out."""
    scores = torch.einsum("bhqd,bhkd->bhqk", q / math.sqrt(q.shape[-1]), k)
    scores = scores - scores.amax(dim=-1, keepdim=True)  # for exp's range only
    weights = scores.exp()
    weights = weights / weights.sum(dim=-1, keepdim=True)
    return torch.einsum("bhqk,bhkd->bqhd", weights, v)


class Norm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight, self.bias, self.eps = nn.Parameter(torch.ones(dim)), nn.Parameter(torch.zeros(dim)), eps

    def forward(self, x):
        return layer_norm(x, self.weight, self.bias, self.eps)


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(gelu(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm block: x + proj(attention(norm1 x)), then + mlp(norm2 .); rotary q/k when `positions` is given."""

    def __init__(self, cfg: ReferenceVJEPA2Config, mlp_hidden: int):
        super().__init__()
        D = cfg.hidden_size
        self.heads = cfg.num_attention_heads
        self.norm1, self.norm2 = Norm(D, cfg.layer_norm_eps), Norm(D, cfg.layer_norm_eps)
        self.q, self.k, self.v, self.proj = (nn.Linear(D, D) for _ in range(4))
        self.mlp = MLP(D, mlp_hidden)

    def forward(self, x, positions=None):
        B, n, D = x.shape
        H, d = self.heads, D // self.heads
        y = self.norm1(x)
        q, k, v = (lin(y).reshape(B, n, H, d).transpose(1, 2) for lin in (self.q, self.k, self.v))  # (B, H, n, d)
        if positions is not None:
            q, k = rotary(q, positions), rotary(k, positions)
        x = x + self.proj(attention(q, k, v).reshape(B, n, D))
        return x + self.mlp(self.norm2(x))


class CrossBlock(nn.Module):
    """The pooler's cross-attention layer: query + attention(query -> norm1 tokens) (no output projection), then
    + mlp(norm2 .)."""

    def __init__(self, cfg: ReferenceVJEPA2Config):
        super().__init__()
        D = cfg.hidden_size
        self.heads = cfg.num_attention_heads
        self.norm1, self.norm2 = Norm(D, cfg.layer_norm_eps), Norm(D, cfg.layer_norm_eps)
        self.q, self.k, self.v = (nn.Linear(D, D) for _ in range(3))
        self.mlp = MLP(D, 4 * D)  # transformers' pooler MLPs keep the default ratio 4

    def forward(self, query, x):
        B, n, D = x.shape
        H, d = self.heads, D // self.heads
        y = self.norm1(x)
        q = self.q(query).reshape(B, 1, H, d).transpose(1, 2)
        k, v = (lin(y).reshape(B, n, H, d).transpose(1, 2) for lin in (self.k, self.v))
        pooled = query + attention(q, k, v).reshape(B, 1, D)
        return pooled + self.mlp(self.norm2(pooled))


class ReferenceVJEPA2(nn.Module):
    """Plain V-JEPA 2 encoder (+ attentive pooler and classifier when the checkpoint has them), fp32 reference."""

    def __init__(self, cfg: ReferenceVJEPA2Config):
        super().__init__()
        self.cfg = cfg
        D, ts, P = cfg.hidden_size, cfg.tubelet_size, cfg.patch_size
        self.patch_embed = nn.Conv3d(cfg.num_channels, D, kernel_size=(ts, P, P), stride=(ts, P, P))
        self.blocks = nn.ModuleList(Block(cfg, cfg.mlp_hidden) for _ in range(cfg.num_hidden_layers))
        self.norm = Norm(D, cfg.layer_norm_eps)
        if cfg.num_labels:
            self.query = nn.Parameter(torch.zeros(1, 1, D))
            self.pool_blocks = nn.ModuleList(Block(cfg, 4 * D) for _ in range(cfg.num_pooler_layers))
            self.cross = CrossBlock(cfg)
            self.head = nn.Linear(D, cfg.num_labels)

    @torch.no_grad()
    def forward(self, pixel_values: torch.Tensor, kept_ids: torch.Tensor | None = None) -> dict:
        """pixel_values float (B, T, C, H, W) normalized (HF's pixel_values_videos); kept_ids int (B, n): the token
        indices each clip keeps (the same count per row), None = all. Returns tokens (B, n, D) (HF's
        last_hidden_state rows), embedding (B, D) (the mean of the tokens, or the pooler's output with a
        classifier), logits (B, C) or None."""
        B = pixel_values.shape[0]
        x = self.patch_embed(pixel_values.permute(0, 2, 1, 3, 4))  # (B, D, n_t, n_h, n_w)
        n_h, n_w = x.shape[3], x.shape[4]
        x = x.flatten(2).transpose(1, 2)  # (B, N, D), tokens in (t, h, w) order
        if kept_ids is None:
            kept_ids = torch.arange(x.shape[1]).expand(B, -1)
        outs = []
        for b in range(B):  # each clip with its own kept tokens and their own positions
            h = x[b : b + 1, kept_ids[b]]
            positions = grid_positions(kept_ids[b], n_h, n_w)
            for block in self.blocks:
                h = block(h, positions)
            outs.append(self.norm(h))
        tokens = torch.cat(outs)  # (B, n, D)
        if not self.cfg.num_labels:
            return {"tokens": tokens, "embedding": tokens.mean(dim=1), "logits": None}
        h = tokens
        for block in self.pool_blocks:
            h = block(h)  # no rotary positions in the pooler
        pooled = self.cross(self.query.expand(B, -1, -1), h)[:, 0]  # (B, D)
        return {"tokens": tokens, "embedding": pooled, "logits": self.head(pooled)}

    @torch.no_grad()
    def forward_kept(self, pixel_values: torch.Tensor, keep: torch.Tensor | None = None) -> dict:
        """Rows keeping different token counts: each clip alone. keep: bool (B, N), True = kept (vmae_fast's
        convention) or None. Returns tokens packed (N_kept, D), embedding (B, D), logits (B, C) or None, cu_seqlens
        int32 (B+1,)."""
        outs = [self(pixel_values[b : b + 1], None if keep is None else keep[b].nonzero().T)
                for b in range(pixel_values.shape[0])]
        lengths = [o["tokens"].shape[1] for o in outs]
        logits = None if outs[0]["logits"] is None else torch.cat([o["logits"] for o in outs])
        return {"tokens": torch.cat([o["tokens"][0] for o in outs]),
                "embedding": torch.cat([o["embedding"] for o in outs]), "logits": logits,
                "cu_seqlens": torch.tensor([0, *lengths]).cumsum(0).to(torch.int32)}

    # ---- weights -------------------------------------------------------------------------------------------------

    def load_hf_state_dict(self, state_dict: dict) -> ReferenceVJEPA2:
        """transformers' VJEPA2 weights (the `vjepa2.` prefix of classifiers stripped, the predictor ignored); every
        other key used exactly once, with its shape."""
        sd = {k.removeprefix("vjepa2."): v for k, v in state_dict.items()}
        sd = {k: v for k, v in sd.items() if not k.startswith("predictor.")}
        layer = "encoder.layer.{}."
        block_map = {"norm1": "norm1", "q": "attention.query", "k": "attention.key", "v": "attention.value",
                     "proj": "attention.proj", "norm2": "norm2", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"}
        pool_map = {"norm1": "layer_norm1", "q": "self_attn.q_proj", "k": "self_attn.k_proj",
                    "v": "self_attn.v_proj", "proj": "self_attn.out_proj", "norm2": "layer_norm2",
                    "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"}
        cross_map = {"norm1": "layer_norm1", "q": "cross_attn.q_proj", "k": "cross_attn.k_proj",
                     "v": "cross_attn.v_proj", "norm2": "layer_norm2", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"}
        used = set()
        for name, param in self.named_parameters():
            module, _, leaf = name.rpartition(".")
            if name.startswith("blocks."):
                _, i, rest = module.split(".", 2)
                hf_key = f"{layer.format(i)}{block_map[rest]}.{leaf}"
            elif name.startswith("pool_blocks."):
                _, i, rest = module.split(".", 2)
                hf_key = f"pooler.self_attention_layers.{i}.{pool_map[rest]}.{leaf}"
            elif name.startswith("cross."):
                hf_key = f"pooler.cross_attention_layer.{cross_map[module.removeprefix('cross.')]}.{leaf}"
            else:
                hf_key = {"patch_embed.weight": "encoder.embeddings.patch_embeddings.proj.weight",
                          "patch_embed.bias": "encoder.embeddings.patch_embeddings.proj.bias",
                          "norm.weight": "encoder.layernorm.weight", "norm.bias": "encoder.layernorm.bias",
                          "query": "pooler.query_tokens", "head.weight": "classifier.weight",
                          "head.bias": "classifier.bias"}[name]
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
    def from_hf(cls, source) -> ReferenceVJEPA2:
        """source: a transformers VJEPA2 model object, or a folder written by save_pretrained."""
        if isinstance(source, (str, Path)):
            from safetensors.torch import load_file

            config = json.loads((Path(source) / "config.json").read_text())
            state_dict = load_file(Path(source) / "model.safetensors")
        else:
            config, state_dict = source.config.to_dict(), source.state_dict()
        num_labels = state_dict["classifier.weight"].shape[0] if "classifier.weight" in state_dict else 0
        return cls(ReferenceVJEPA2Config.from_hf(config, num_labels)).eval().load_hf_state_dict(state_dict)
