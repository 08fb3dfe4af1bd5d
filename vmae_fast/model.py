"""The VideoMAE encoder over packed kept tokens: every clip of a batch keeps its own set of tokens, the tokens of all
clips are packed into one (N_kept, D) tensor, and attention runs per clip through cu_seqlens (flash-attention's varlen
convention). Numerics follow transformers' VideoMAEModel / VideoMAEForVideoClassification (see DESIGN.md).

Public API (`__all__`): VideoMAE (built by checkpoint.load_model), VideoEncoder (what it shares with vjepa2.VJEPA2),
VideoMAEOutput, and sincos_table (the fixed position table). The blocks (Attention, MLP, Block) are internal.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .config import VideoMAEConfig
from .kernels import layer_norm, mean_pool_layernorm, patch_embed, varlen_attention
from .kernels._dispatch import KERNEL_BACKENDS
from .kernels.patch_embed import prepare_weight
from .tokens import KeepAll, KeepPolicy, pack, parse_keep


@dataclass
class VideoMAEOutput:
    """embeddings (B, D); logits (B, C) or None without a head; tokens (N_kept, D) or None unless asked for (the last
    block output, or the final LayerNorm of it when use_mean_pooling=False, as HF's last_hidden_state);
    cu_seqlens int32 (B+1,): clip b owns tokens[cu_seqlens[b]:cu_seqlens[b+1]]."""

    embeddings: torch.Tensor
    logits: torch.Tensor | None
    tokens: torch.Tensor | None
    cu_seqlens: torch.Tensor


def sincos_table(num_tokens: int, dim: int) -> torch.Tensor:
    """Fixed sin/cos position table (num_tokens, dim) float32 over the flat token index, computed in float64 as the
    reference implementations do: angle(p, j) = p / 10000^(2 * (j // 2) / dim), sin on even j, cos on odd j."""
    position = torch.arange(num_tokens, dtype=torch.float64).unsqueeze(1)  # (N, 1)
    j = torch.arange(dim, dtype=torch.float64)
    angle = position / torch.pow(10000.0, 2 * torch.div(j, 2, rounding_mode="floor") / dim)  # (N, D)
    table = torch.where(j.long() % 2 == 0, torch.sin(angle), torch.cos(angle))
    return table.float()


class Attention(nn.Module):
    def __init__(self, config: VideoMAEConfig):
        super().__init__()
        D = config.hidden_size
        self.num_heads, self.head_dim = config.num_attention_heads, config.head_dim
        # one GEMM for q, k and v; bias = [q_bias, 0, v_bias] (the key projection has no bias in VideoMAE)
        self.wqkv = nn.Linear(D, 3 * D, bias=config.qkv_bias)
        self.proj = nn.Linear(D, D)

    def forward(self, x: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int, backend: str) -> torch.Tensor:
        N = x.shape[0]
        qkv = self.wqkv(x).view(N, 3, self.num_heads, self.head_dim)  # (N_kept, 3, H, d)
        q, k, v = qkv.unbind(1)  # each (N_kept, H, d), strided views of qkv
        # check=False: the model builds cu_seqlens itself; value checks would cost a host sync on CUDA
        out = varlen_attention(q, k, v, cu_seqlens, max_seqlen, backend=backend, check=False)  # (N_kept, H, d)
        return self.proj(out.reshape(N, -1))


class MLP(nn.Module):
    def __init__(self, config: VideoMAEConfig, intermediate_size: int | None = None):
        super().__init__()
        width = intermediate_size or config.intermediate_size
        self.fc1 = nn.Linear(config.hidden_size, width)
        self.fc2 = nn.Linear(width, config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)  # (N_kept, intermediate)
        # exact (erf) GELU, as HF "gelu" and the originals' nn.GELU; in place: the widest activation of the model
        # is not allocated twice (measured 6 % faster MLP on CPU)
        return self.fc2(torch.ops.aten.gelu_(h))


class Block(nn.Module):
    """Pre-norm transformer block. It returns its branch output and the residual stream separately, so the next
    LayerNorm adds them in the same pass (layer_norm with residual)."""

    def __init__(self, config: VideoMAEConfig):
        super().__init__()
        self.eps = config.layer_norm_eps
        self.norm1 = nn.LayerNorm(config.hidden_size, eps=self.eps)
        self.attn = Attention(config)
        self.norm2 = nn.LayerNorm(config.hidden_size, eps=self.eps)
        self.mlp = MLP(config)

    def forward(self, branch, residual, cu_seqlens, max_seqlen, backend):
        """branch: (N_kept, D) output of the previous block's MLP (or the embeddings when residual is None);
        residual: (N_kept, D) residual stream before that branch, or None. Returns (mlp_out, residual)."""
        if residual is None:
            y, residual = layer_norm(branch, self.norm1.weight, self.norm1.bias, self.eps, backend=backend), branch
        else:
            y, residual = layer_norm(branch, self.norm1.weight, self.norm1.bias, self.eps, residual, backend=backend)
        attn_out = self.attn(y, cu_seqlens, max_seqlen, backend)
        y, residual = layer_norm(attn_out, self.norm2.weight, self.norm2.bias, self.eps, residual, backend=backend)
        return self.mlp(y), residual


class VideoEncoder(nn.Module):
    """What the encoders of this package share (VideoMAE here, V-JEPA 2 in vjepa2.py): the input checks, the keep
    policies' packing, the patch weight in the kernel's layout, device/dtype and the description recorded with every
    output. A subclass builds `patch_embed`, `head` (or None) and the pixel buffers, and defines forward()."""

    config: object
    architecture = ""  # "videomae", "vjepa2": recorded with every output

    def preprocessing(self) -> dict:  # pragma: no cover - interface
        raise NotImplementedError

    def embedding_meaning(self) -> str:  # pragma: no cover - interface
        raise NotImplementedError

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def with_num_frames(self, num_frames: int) -> VideoEncoder:
        """This model for clips of `num_frames` frames: a V-JEPA 2 (rotary positions) returns a copy sharing the
        weights; a VideoMAE, whose position table fixes its frame count, raises ValueError."""
        if num_frames == self.config.num_frames:
            return self
        raise ValueError(f"this {self.architecture} model takes {self.config.num_frames} frames per clip (its position "
                         f"table is fixed), not {num_frames}")

    def _patch_weight(self, uint8: bool):
        """The patch weight in the kernel's layout, laid out at load (init_buffers) and again only if the weight was
        replaced, moved, cast or changed in place since (its storage or version counter moved); None (patch_embed
        then lays it out per call) while something traces the model or for inference-mode weights, which carry no
        version counter."""
        w = self.patch_embed.weight
        try:
            key = (w.data_ptr(), w._version, w.device, w.dtype)
        except RuntimeError:  # a fake or functional tensor (no storage), an inference tensor (no version)
            return None
        prepared = getattr(self, "_prepared_patch_weights", None)
        if prepared is None:
            self._prepared_patch_weights = prepared = {}
        if uint8 not in prepared or prepared[uint8][0] != key:
            c = self.config
            prepared[uint8] = key, prepare_weight(w, uint8, c.patch_size, c.tubelet_size)
        return prepared[uint8][1]

    @property
    def device(self) -> torch.device:
        return self.patch_embed.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.patch_embed.weight.dtype

    # --- input checks --------------------------------------------------------------------------------------------
    def _check_frames(self, frames) -> None:
        c = self.config
        expected = (f"uint8 (B, {c.num_frames}, {c.image_size}, {c.image_size}, {c.num_channels}) or normalized float "
                    f"(B, {c.num_frames}, {c.num_channels}, {c.image_size}, {c.image_size})")
        if not isinstance(frames, torch.Tensor):
            raise TypeError(f"frames must be a torch.Tensor, {expected}; got {type(frames).__name__}")
        if frames.dtype == torch.uint8:
            layout = "uint8 (B, T, H, W, C)"
        elif frames.is_floating_point():
            layout = "float (B, T, C, H, W)"
        else:
            raise TypeError(f"frames must be {expected}; got dtype {frames.dtype}")
        if frames.dim() != 5:
            raise ValueError(f"frames must be 5-D, {expected}; got shape {tuple(frames.shape)}")
        B, T = frames.shape[:2]
        C, H, W = frames.shape[4], frames.shape[2], frames.shape[3]
        if frames.dtype != torch.uint8:
            C, H, W = frames.shape[2], frames.shape[3], frames.shape[4]
        got = f"got {layout} shape {tuple(frames.shape)}"
        if B == 0:
            raise ValueError(f"frames must hold at least one clip, {got}")
        if C != c.num_channels:
            raise ValueError(f"frames must have {c.num_channels} channels, {expected}; {got}")
        if (H, W) != (c.image_size, c.image_size):
            raise ValueError(f"frames must be {c.image_size}x{c.image_size} (H x W), {expected}; {got}")
        if T % c.tubelet_size:
            raise ValueError(f"frame count {T} is not divisible by tubelet_size {c.tubelet_size}; {expected}; {got}")
        if T != c.num_frames:
            why = ("its position table is fixed" if self.architecture == "videomae" else
                   "load it with config={'num_frames': T} for another count")
            raise ValueError(f"this model takes {c.num_frames} frames per clip ({why}), {got}")

    def _select(self, keep, frames) -> tuple[torch.Tensor | None, torch.Tensor, int]:
        """keep (None | str | policy | bool (B, N)) -> (token_ids int64 (N_kept,) or None for all tokens, cu_seqlens
        int32 (B+1,), max_seqlen) on the model's device. All tokens and the fixed-count policies (tube:R, motion:R)
        need no host sync; a data-dependent count (motion:t=X, a mask) is read on the host once (pack)."""
        B, N = frames.shape[0], self.config.num_tokens
        if keep is not None and not isinstance(keep, torch.Tensor):
            try:
                keep = parse_keep(keep)
            except TypeError:
                raise TypeError(f"keep must be None, 'all', a policy string such as 'tube:0.5', a keep policy or a "
                                f"bool tensor (B, N) = ({B}, {N}), got {type(keep).__name__}") from None
            if isinstance(keep, KeepAll):
                keep = None
        if keep is None:  # all tokens: offsets known without looking at data
            return None, torch.arange(B + 1, device=self.device, dtype=torch.int32) * N, N
        fixed = isinstance(keep, KeepPolicy) and keep.kept_per_clip(self.config) is not None
        if fixed:  # ids and offsets computed on the device, no sync
            return keep.select(frames, self.config)
        if isinstance(keep, torch.Tensor):
            mask, what = keep, "a keep mask"
        else:
            mask, what = keep.mask(frames, self.config), f"keep policy {keep.spec!r}"
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
            raise TypeError(f"{what} must be a bool tensor (B, N) = ({B}, {N}) with True = kept, got "
                            f"{getattr(mask, 'dtype', type(mask).__name__)}")
        if tuple(mask.shape) != (B, N):
            raise ValueError(f"{what} must have shape (B, N) = ({B}, {N}), got {tuple(mask.shape)}")
        mask = mask.to(self.device)
        empty = (~mask.any(dim=1)).nonzero().flatten().tolist()
        if empty:
            raise ValueError(f"every clip must keep at least one token; rows {empty} of {what} keep none")
        return pack(mask)

    # --- description -------------------------------------------------------------------------------------------------
    def describe(self) -> dict:
        """JSON-serializable description recorded with every output: architecture, source, weights checksum, config,
        preprocessing, what the embedding is, dtype, device, backend, labels."""
        c = self.config
        return {
            "architecture": self.architecture,
            "source": self.source,
            "weights_sha256": self.weights_sha256,
            "config": c.to_dict(),
            "num_parameters": self.num_parameters(),
            "input_shape": {"uint8": ["B", c.num_frames, c.image_size, c.image_size, c.num_channels],
                            "float": ["B", c.num_frames, c.num_channels, c.image_size, c.image_size]},
            "preprocessing": self.preprocessing(),
            "embedding": self.embedding_meaning(),
            "dtype": str(self.dtype).removeprefix("torch."),
            "device": str(self.device),
            "backend": self.backend,
            "id2label": {str(k): v for k, v in c.id2label.items()} if c.id2label else None,
        }


class VideoMAE(VideoEncoder):
    """VideoMAE encoder (+ optional classification head) on packed kept tokens. Build through load_model()."""

    architecture = "videomae"

    def __init__(self, config: VideoMAEConfig, backend: str = "auto"):
        super().__init__()
        if backend not in KERNEL_BACKENDS:
            raise ValueError(f"backend must be one of {KERNEL_BACKENDS}, got {backend!r}")
        self.config, self.backend = config, backend
        D = config.hidden_size
        # the Conv3d patch embedding as a GEMM: weight (D, C*ts*P*P) in the Conv3d's (C, t, y, x) order
        self.patch_embed = nn.Linear(config.patch_dim, D)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.num_hidden_layers))
        pooled_norm = config.use_mean_pooling and config.has_fc_norm
        self.norm = None if config.use_mean_pooling else nn.LayerNorm(D, eps=config.layer_norm_eps)
        self.fc_norm = nn.LayerNorm(D, eps=config.fc_norm_eps) if pooled_norm else None
        self.head = nn.Linear(D, config.num_labels) if config.num_labels > 0 else None
        # fixed tensors, not in the state dict; (re)built by init_buffers() once the parameters live on their device
        self.register_buffer("pos_table", torch.empty(0), persistent=False)  # (N, D) float32
        self.register_buffer("pixel_mean", torch.empty(0), persistent=False)  # (C,) float32
        self.register_buffer("pixel_std", torch.empty(0), persistent=False)  # (C,) float32
        self.source, self.weights_sha256 = None, None  # set by load_model
        if self.patch_embed.weight.device.type != "meta":
            self.init_buffers()

    def init_buffers(self) -> None:
        """Position table and pixel statistics in float32 on the parameters' device (whatever their dtype), and the
        patch embedding weight laid out for the Triton kernel (uint8 and float frames)."""
        device, c = self.patch_embed.weight.device, self.config
        self.pos_table = sincos_table(c.num_tokens, c.hidden_size).to(device)
        self.pixel_mean = torch.tensor(c.image_mean, dtype=torch.float32, device=device)
        self.pixel_std = torch.tensor(c.image_std, dtype=torch.float32, device=device)
        self._prepared_patch_weights = {}
        for uint8 in (True, False):
            self._patch_weight(uint8)

    # --- forward ---------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def forward(self, frames: torch.Tensor, keep=None, return_tokens: bool = False) -> VideoMAEOutput:
        """frames: uint8 (B, T, H, W, C) (normalized here with the checkpoint's mean/std) or float (B, T, C, H, W)
        already normalized; keep: None | "all" | policy string | KeepPolicy | bool (B, N) with True = kept (rows may
        keep different counts). With keep=None, "all", tube:R or motion:R the forward makes no host sync (CUDA-graph
        capturable); motion:t=X and masks read the kept counts on the host once."""
        self._check_frames(frames)
        c, backend = self.config, self.backend
        frames = frames.to(self.device, non_blocking=True).contiguous()  # the Triton patch_embed reads dense frames
        if frames.is_floating_point() and frames.dtype != self.dtype:
            frames = frames.to(self.dtype)
        token_ids, cu_seqlens, max_seqlen = self._select(keep, frames)
        uint8 = frames.dtype == torch.uint8
        x = patch_embed(frames, self.patch_embed.weight, self.patch_embed.bias, self.pos_table,
                        self.pixel_mean if uint8 else None, self.pixel_std if uint8 else None, token_ids,
                        patch_size=c.patch_size, tubelet_size=c.tubelet_size,
                        prepared_weight=self._patch_weight(uint8) if backend != "torch" else None, backend=backend,
                        check=False)  # (N_kept, D)

        branch, residual = x, None
        for block in self.blocks:
            branch, residual = block(branch, residual, cu_seqlens, max_seqlen, backend)

        if c.use_mean_pooling:
            tokens = branch + residual  # (N_kept, D) last block output
            w, b = (self.fc_norm.weight, self.fc_norm.bias) if self.fc_norm is not None else (None, None)
            embeddings = mean_pool_layernorm(tokens, cu_seqlens, w, b, c.fc_norm_eps, backend=backend,
                                             check=False)  # (B, D)
            logits = self.head(embeddings) if self.head is not None else None
        else:
            tokens, _ = layer_norm(branch, self.norm.weight, self.norm.bias, c.layer_norm_eps, residual,
                                   backend=backend)
            embeddings = mean_pool_layernorm(tokens, cu_seqlens, None, None, 0.0, backend=backend, check=False)
            # no CLS token: HF's classifier reads the first kept token of each clip
            first = tokens.index_select(0, cu_seqlens.narrow(0, 0, cu_seqlens.shape[0] - 1).long())  # (B, D)
            logits = self.head(first) if self.head is not None else None
        return VideoMAEOutput(embeddings, logits, tokens if return_tokens else None, cu_seqlens)

    # --- description -------------------------------------------------------------------------------------------------
    def num_parameters(self) -> int:
        """Parameter count as the checkpoint has it: the fused qkv's always-zero key bias is not counted."""
        zero_key_bias = self.config.hidden_size * len(self.blocks) if self.config.qkv_bias else 0
        return sum(p.numel() for p in self.parameters()) - zero_key_bias

    def preprocessing(self) -> dict:
        """How frames are prepared for this model (recorded with every output): the short side resized to
        image_size (bilinear), the center crop, x/255, mean/std."""
        c = self.config
        return {"image_size": c.image_size, "mean": list(c.image_mean), "std": list(c.image_std),
                "resize": "shortest_edge", "crop": "center", "interpolation": "bilinear"}

    def embedding_meaning(self) -> str:
        """What a clip's `embedding` is for this checkpoint (recorded with every output)."""
        c = self.config
        if not c.use_mean_pooling:
            return ("mean of the final LayerNorm's tokens (HF last_hidden_state); logits from the first kept token"
                    if self.head is not None else "mean of the final LayerNorm's tokens (HF last_hidden_state)")
        return "fc_norm(mean of the last block's tokens)" if c.has_fc_norm else "mean of the last block's tokens"

__all__ = ["VideoEncoder", "VideoMAE", "VideoMAEOutput", "sincos_table"]
