"""vmae_fast.kernels: the fused ops of the VideoMAE and V-JEPA 2 encoders (inference, forward only).

Each op takes `backend="auto"|"triton"|"torch"`: CUDA tensors run the Triton kernel, CPU tensors the plain-torch
path, and TRITON_INTERPRET=1 (set before import) runs the Triton path on CPU. The Triton paths are also registered as
custom ops (torch.ops.vmae_fast.patch_embed / varlen_attention / mean_pool_layernorm / layer_norm / add_layer_norm /
qkv_rope, torch.library.triton_op) so torch.compile and CUDA graphs capture them. Ops whose checks read tensor values
(cu_seqlens, token ids) take `check=True`: free on CPU, one sync on CUDA, so hot paths pass check=False.
prepare_weight lays patch_embed's weight out for its kernel once (a PreparedWeight, passed as prepared_weight=).
Depends on torch and triton only.
"""

from .layer_norm import layer_norm
from .mean_pool_layernorm import mean_pool_layernorm
from .patch_embed import PreparedWeight, patch_embed, prepare_weight
from .qkv_rope import qkv_rope
from .varlen_attention import varlen_attention

__all__ = ["PreparedWeight", "layer_norm", "mean_pool_layernorm", "patch_embed", "prepare_weight", "qkv_rope",
           "varlen_attention"]
