"""Kernel internals for offline compiles and A/B benchmarks (tools/kernel_resources.py, tools/bench_kernels.py).

No compatibility promise (see vmae_fast.testing). Imports torch and triton only.
"""

from __future__ import annotations

import torch

from ..kernels.layer_norm import _launch_config as layer_norm_launch_config
from ..kernels.layer_norm import _layer_norm_kernel as layer_norm_kernel
from ..kernels.mean_pool_layernorm import _SUM_BLOCK_D as SEGMENT_SUM_BLOCK_D
from ..kernels.mean_pool_layernorm import _segment_sum_kernel as segment_sum_kernel
from ..kernels.patch_embed import _CONFIGS as PATCH_EMBED_CONFIGS
from ..kernels.patch_embed import _K_TILE as PATCH_EMBED_K_TILE
from ..kernels.patch_embed import _patch_embed_kernel as patch_embed_kernel
from ..kernels.patch_embed import _patch_embed_triton, _prune_configs, run_layout


def patch_embed_configs(weight_dtype: torch.dtype) -> list:
    """The triton.Configs patch_embed's autotuner tries for a weight of `weight_dtype` (fp32 weights keep fewer)."""
    return _prune_configs(PATCH_EMBED_CONFIGS, {"Wp": torch.empty(0, dtype=weight_dtype)})


def patch_embed_pow2pad(frames, weight, bias, pos_table, mean, std, token_ids, patch_size: int, tubelet_size: int):
    """patch_embed's Triton kernel with each run of the weight padded to a power of two (48 -> 64 values for uint8
    frames at patch 16), the layout RUN_ALIGN replaced: the other side of that A/B. Inputs as patch_embed's (not
    checked here); needs a GPU or TRITON_INTERPRET=1."""
    return _patch_embed_triton(frames, weight, bias, pos_table, mean, std, token_ids, patch_size, tubelet_size,
                               pow2=True)


__all__ = ["PATCH_EMBED_CONFIGS", "PATCH_EMBED_K_TILE", "SEGMENT_SUM_BLOCK_D", "layer_norm_kernel",
           "layer_norm_launch_config", "patch_embed_configs", "patch_embed_kernel", "patch_embed_pow2pad",
           "run_layout", "segment_sum_kernel"]
