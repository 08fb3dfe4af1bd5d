"""The V-JEPA 2 encoder over packed kept tokens, on the same kernels as VideoMAE (model.py): the tubelet patch
embedding without a position table, pre-LN blocks whose attention rotates q and k by each token's (t, h, w)
(kernels/qkv_rope.py) before the varlen attention, the final LayerNorm, and either the mean of the tokens (the
embedding the V-JEPA 2 frozen evaluations pool) or, for a classifier checkpoint, the attentive pooler + linear head.
Numerics follow transformers' VJEPA2Model / VJEPA2ForVideoClassification (tests/model/test_vjepa2.py).

Because positions are rotary, a kept token's output depends only on the tokens its clip keeps: dropping tokens
(keep="tube:0.5", ...) is exactly V-JEPA 2's masked encoder, and clips of one batch may keep different counts.

Public API (`__all__`): VJEPA2 (built by checkpoint.load_model), token_positions (each kept token's (t, h, w)) and
pooled_attention (the classifier's attentive pooler).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from .config import VJEPA2Config
from .kernels import layer_norm, mean_pool_layernorm, patch_embed, qkv_rope, varlen_attention
from .kernels._dispatch import KERNEL_BACKENDS
from .model import MLP, VideoEncoder, VideoMAEOutput


def token_positions(token_ids: torch.Tensor | None, batch: int, grid: tuple[int, int, int],
                    device: torch.device) -> torch.Tensor:
    """int32 (N_kept, 3): the (t, h, w) of every packed token. token_ids: int64 flat ids b*N + n of the kept tokens
    (None: all N tokens of each of `batch` clips). Device arithmetic only (no host sync)."""
    n_t, n_h, n_w = grid
    N = n_t * n_h * n_w
    if token_ids is None:
        n = torch.arange(N, device=device).repeat(batch)  # (B*N,)
    else:
        n = token_ids % N  # (N_kept,) index in the clip, (t, h, w) order
    t = n // (n_h * n_w)
    h = (n // n_w) % n_h
    w = n % n_w
    return torch.stack((t, h, w), dim=1).to(torch.int32)


class RopeAttention(nn.Module):
    def __init__(self, config: VJEPA2Config):
        super().__init__()
        D = config.hidden_size
        self.num_heads, self.head_dim = config.num_attention_heads, config.head_dim
        self.section, self.theta = config.rope_section, config.rope_theta
        self.wqkv = nn.Linear(D, 3 * D, bias=config.qkv_bias)  # [query; key; value], all with biases
        self.proj = nn.Linear(D, D)

    def forward(self, x, cu_seqlens, max_seqlen, positions, backend):
        N = x.shape[0]
        qkv = self.wqkv(x).view(N, 3, self.num_heads, self.head_dim)  # (N_kept, 3, H, d)
        qk = qkv_rope(qkv, positions, self.section, self.theta, backend=backend)  # (N_kept, 2, H, d) rotated
        q, k = qk.unbind(1)  # each (N_kept, H, d), strided views
        v = qkv.select(1, 2)  # (N_kept, H, d), a strided view of qkv
        out = varlen_attention(q, k, v, cu_seqlens, max_seqlen, backend=backend, check=False)  # (N_kept, H, d)
        return self.proj(out.reshape(N, -1))


class SelfAttention(nn.Module):
    """The pooler's self-attention: the same fused qkv, no rotary positions."""

    def __init__(self, config: VJEPA2Config):
        super().__init__()
        D = config.hidden_size
        self.num_heads, self.head_dim = config.num_attention_heads, config.head_dim
        self.wqkv = nn.Linear(D, 3 * D)
        self.proj = nn.Linear(D, D)

    def forward(self, x, cu_seqlens, max_seqlen, positions, backend):
        N = x.shape[0]
        q, k, v = self.wqkv(x).view(N, 3, self.num_heads, self.head_dim).unbind(1)  # each (N_kept, H, d)
        out = varlen_attention(q, k, v, cu_seqlens, max_seqlen, backend=backend, check=False)
        return self.proj(out.reshape(N, -1))


class Block(nn.Module):
    """Pre-norm transformer block returning (branch, residual) like model.Block, so the next LayerNorm adds them in
    the same pass. attention: RopeAttention (encoder) or SelfAttention (pooler)."""

    def __init__(self, config: VJEPA2Config, attention: type[nn.Module], mlp_size: int | None = None):
        super().__init__()
        self.eps = config.layer_norm_eps
        self.norm1 = nn.LayerNorm(config.hidden_size, eps=self.eps)
        self.attn = attention(config)
        self.norm2 = nn.LayerNorm(config.hidden_size, eps=self.eps)
        self.mlp = MLP(config, mlp_size)

    def forward(self, branch, residual, cu_seqlens, max_seqlen, positions, backend):
        if residual is None:
            y, residual = layer_norm(branch, self.norm1.weight, self.norm1.bias, self.eps, backend=backend), branch
        else:
            y, residual = layer_norm(branch, self.norm1.weight, self.norm1.bias, self.eps, residual, backend=backend)
        attn_out = self.attn(y, cu_seqlens, max_seqlen, positions, backend)
        y, residual = layer_norm(attn_out, self.norm2.weight, self.norm2.bias, self.eps, residual, backend=backend)
        return self.mlp(y), residual


def _one_query_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """q (H, d); k, v (..., H, n, d) -> (..., H, d): softmax(k q / sqrt(d)) weighted sum of v, in fp32 (one query:
    two matrix-vector products, no kernel choice to make)."""
    scores = torch.matmul(k.float(), q.float().unsqueeze(-1)).squeeze(-1) * q.shape[-1] ** -0.5  # (..., H, n)
    weights = torch.softmax(scores, dim=-1)
    return torch.matmul(weights.unsqueeze(-2), v.float()).squeeze(-2).to(q.dtype)  # (..., H, d)


def pooled_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor,
                     max_seqlen: int) -> torch.Tensor:
    """One query per clip attending over the clip's tokens: q (H, d) shared by every clip, k and v (N_kept, H, d)
    packed -> (B, H, d). Equal lengths (all tokens, tube:R, motion:R) run batched with no host sync; ragged rows
    (whose counts packing already read on the host) loop over the clips."""
    B = cu_seqlens.shape[0] - 1
    heads, head_dim = q.shape
    if k.shape[0] == B * max_seqlen:  # every clip keeps max_seqlen tokens
        kb, vb = (t.reshape(B, max_seqlen, heads, head_dim).transpose(1, 2) for t in (k, v))  # (B, H, n, d)
        return _one_query_attention(q, kb, vb)
    bounds = cu_seqlens.tolist()
    return torch.stack([_one_query_attention(q, k[a:b].transpose(0, 1), v[a:b].transpose(0, 1))
                        for a, b in zip(bounds[:-1], bounds[1:], strict=True)])


class CrossAttentionBlock(nn.Module):
    """The pooler's last layer: the learned query attends over the clip's (LayerNormed) tokens; no output projection,
    the query itself (not normalized) is the residual; then the MLP block."""

    def __init__(self, config: VJEPA2Config):
        super().__init__()
        D, self.eps = config.hidden_size, config.layer_norm_eps
        self.num_heads, self.head_dim = config.num_attention_heads, config.head_dim
        self.norm1 = nn.LayerNorm(D, eps=self.eps)
        self.wq = nn.Linear(D, D)
        self.wkv = nn.Linear(D, 2 * D)  # [key; value]
        self.norm2 = nn.LayerNorm(D, eps=self.eps)
        self.mlp = MLP(config, config.pooler_intermediate_size)

    def forward(self, query, x, cu_seqlens, max_seqlen, backend):
        """query (1, D); x (N_kept, D) packed -> (B, D)."""
        N, H, d = x.shape[0], self.num_heads, self.head_dim
        y = layer_norm(x, self.norm1.weight, self.norm1.bias, self.eps, backend=backend)
        k, v = self.wkv(y).view(N, 2, H, d).unbind(1)  # each (N_kept, H, d)
        q = self.wq(query).view(H, d)
        pooled = query + pooled_attention(q, k, v, cu_seqlens, max_seqlen).reshape(-1, H * d)  # (B, D)
        return pooled + self.mlp(layer_norm(pooled, self.norm2.weight, self.norm2.bias, self.eps, backend=backend))


class AttentivePooler(nn.Module):
    """V-JEPA 2's attentive probe: self-attention layers over each clip's tokens, then one learned query
    cross-attending to them: (N_kept, D) packed -> (B, D)."""

    def __init__(self, config: VJEPA2Config):
        super().__init__()
        self.query = nn.Parameter(torch.zeros(1, config.hidden_size))
        self.blocks = nn.ModuleList(Block(config, SelfAttention, config.pooler_intermediate_size)
                                    for _ in range(config.num_pooler_layers))
        self.cross = CrossAttentionBlock(config)

    def forward(self, x, cu_seqlens, max_seqlen, backend):
        branch, residual = x, None
        for block in self.blocks:
            branch, residual = block(branch, residual, cu_seqlens, max_seqlen, None, backend)
        x = branch if residual is None else branch + residual
        return self.cross(self.query, x, cu_seqlens, max_seqlen, backend)


class VJEPA2(VideoEncoder):
    """V-JEPA 2 encoder (+ attentive pooler and head for classifier checkpoints) on packed kept tokens. Build
    through load_model()."""

    architecture = "vjepa2"

    def __init__(self, config: VJEPA2Config, backend: str = "auto"):
        super().__init__()
        if backend not in KERNEL_BACKENDS:
            raise ValueError(f"backend must be one of {KERNEL_BACKENDS}, got {backend!r}")
        self.config, self.backend = config, backend
        D = config.hidden_size
        self.patch_embed = nn.Linear(config.patch_dim, D)  # the Conv3d as a GEMM, weight in (C, t, y, x) order
        self.blocks = nn.ModuleList(Block(config, RopeAttention) for _ in range(config.num_hidden_layers))
        self.norm = nn.LayerNorm(D, eps=config.layer_norm_eps)
        self.pooler = AttentivePooler(config) if config.num_labels > 0 else None
        self.head = nn.Linear(D, config.num_labels) if config.num_labels > 0 else None
        self.register_buffer("pixel_mean", torch.empty(0), persistent=False)  # (C,) float32
        self.register_buffer("pixel_std", torch.empty(0), persistent=False)  # (C,) float32
        self.source, self.weights_sha256 = None, None  # set by load_model
        if self.patch_embed.weight.device.type != "meta":
            self.init_buffers()

    def init_buffers(self) -> None:
        """Pixel statistics in float32 on the parameters' device and the patch weight in the kernel's layout."""
        device, c = self.patch_embed.weight.device, self.config
        self.pixel_mean = torch.tensor(c.image_mean, dtype=torch.float32, device=device)
        self.pixel_std = torch.tensor(c.image_std, dtype=torch.float32, device=device)
        self._prepared_patch_weights = {}
        for uint8 in (True, False):
            self._patch_weight(uint8)

    @torch.no_grad()
    def forward(self, frames: torch.Tensor, keep=None, return_tokens: bool = False) -> VideoMAEOutput:
        """frames: uint8 (B, T, H, W, C) (normalized here with the checkpoint's mean/std) or float (B, T, C, H, W)
        already normalized (HF's pixel_values_videos); keep: None | "all" | policy string | KeepPolicy | bool (B, N)
        with True = kept. Returns VideoMAEOutput: embeddings (B, D) = mean of the final-LayerNorm tokens, or the
        attentive pooler's output with a classifier; logits (B, C) or None; tokens (N_kept, D) = HF's
        last_hidden_state rows of the kept tokens (when asked for); cu_seqlens int32 (B+1,). No host sync with
        keep=None, "all", tube:R or motion:R."""
        self._check_frames(frames)
        c, backend = self.config, self.backend
        frames = frames.to(self.device, non_blocking=True).contiguous()
        if frames.is_floating_point() and frames.dtype != self.dtype:
            frames = frames.to(self.dtype)
        token_ids, cu_seqlens, max_seqlen = self._select(keep, frames)
        uint8 = frames.dtype == torch.uint8
        x = patch_embed(frames, self.patch_embed.weight, self.patch_embed.bias, None,
                        self.pixel_mean if uint8 else None, self.pixel_std if uint8 else None, token_ids,
                        patch_size=c.patch_size, tubelet_size=c.tubelet_size,
                        prepared_weight=self._patch_weight(uint8) if backend != "torch" else None, backend=backend,
                        check=False)  # (N_kept, D)
        positions = token_positions(token_ids, frames.shape[0], c.grid, x.device)  # (N_kept, 3) int32

        branch, residual = x, None
        for block in self.blocks:
            branch, residual = block(branch, residual, cu_seqlens, max_seqlen, positions, backend)
        tokens, _ = layer_norm(branch, self.norm.weight, self.norm.bias, c.layer_norm_eps, residual,
                               backend=backend)  # (N_kept, D), HF's last_hidden_state
        if self.pooler is not None:
            embeddings = self.pooler(tokens, cu_seqlens, max_seqlen, backend)  # (B, D)
            logits = self.head(embeddings)
        else:
            embeddings = mean_pool_layernorm(tokens, cu_seqlens, None, None, 0.0, backend=backend, check=False)
            logits = None
        return VideoMAEOutput(embeddings, logits, tokens if return_tokens else None, cu_seqlens)

    def with_num_frames(self, num_frames: int) -> VJEPA2:
        """A copy for clips of `num_frames` frames (divisible by tubelet_size), sharing this model's weights: rotary
        positions need no table, so any count runs (frames_per_clip records what it was trained with)."""
        if num_frames == self.config.num_frames:
            return self
        other = copy.copy(self)  # shares parameters, buffers and submodules
        other.config = self.config.replace(num_frames=num_frames)  # validates the count
        return other

    def preprocessing(self) -> dict:
        """VJEPA2VideoProcessor's: the short side resized to resize_size (bilinear), the center image_size crop,
        x/255, ImageNet mean/std."""
        c = self.config
        return {"image_size": c.image_size, "resize_shortest_edge": c.resize_size, "mean": list(c.image_mean),
                "std": list(c.image_std), "resize": "shortest_edge", "crop": "center", "interpolation": "bilinear",
                "processor": "VJEPA2VideoProcessor"}

    def embedding_meaning(self) -> str:
        if self.pooler is not None:
            return "the attentive pooler's output (the classifier's input); logits = head(embedding)"
        return "mean of the encoder's last-layer tokens (after its final LayerNorm, HF last_hidden_state)"

__all__ = ["VJEPA2", "pooled_attention", "token_positions"]
