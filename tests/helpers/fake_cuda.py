"""The model's CUDA route without a GPU: a tiny VideoMAE (or V-JEPA 2) whose weights are fake CUDA tensors (metadata
only), traced
with make_fx inside tests/helpers/sync_detector.py's no_host_sync(). A trace that completes proves the forward launches
our Triton ops (not the torch fallback), reads no tensor value on the host and allocates with static shapes, which is
what CUDA-graph capture needs. Run as a script in a fresh process with TRITON_INTERPRET=0 (triton picks the
interpreter at import):

    TRITON_INTERPRET=0 python tests/helpers/fake_cuda.py KEEP:POOLING ...   # e.g. none:pool tube:0.5:tokenhead
    motion:0.5:pool

POOLING: pool / tokenhead (VideoMAE with mean pooling or the token head), vjepa2 / vjepa2cls (the V-JEPA 2 encoder,
or its classifier with the attentive pooler).

prints one JSON line per case: the vmae_fast ops in the graph and the output shapes, or the error that stopped it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
from torch.fx.experimental.proxy_tensor import make_fx

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script: the repository root
from tests.helpers.sync_detector import no_host_sync

CUDA = torch.device("cuda", 0)


def fake_cuda_model(config, mode: FakeTensorMode, dtype: torch.dtype = torch.bfloat16):
    """The config's model (VideoMAE or VJEPA2) built on the meta device whose parameters and buffers are then fake
    CUDA tensors of `mode`."""
    from vmae_fast.checkpoint import model_class

    def fake(shape, dt):
        return FakeTensor(mode, torch.empty(shape, dtype=dt, device="meta"), CUDA)

    with torch.device("meta"):
        model = model_class(config)(config, backend="auto").eval()
    for module in model.modules():
        for name, p in list(module._parameters.items()):
            if p is not None:
                module._parameters[name] = torch.nn.Parameter(fake(p.shape, dtype), requires_grad=False)
    if hasattr(model, "pos_table"):
        model.pos_table = fake((config.num_tokens, config.hidden_size), torch.float32)
    model.pixel_mean, model.pixel_std = fake((3,), torch.float32), fake((3,), torch.float32)
    return model


def trace_forward(keep: str | None, pooling: str, batch: int = 3) -> dict:
    from vmae_fast.config import VideoMAEConfig, VJEPA2Config

    sizes = {"image_size": 32, "patch_size": 16, "num_frames": 4, "hidden_size": 64, "num_hidden_layers": 2,
             "num_attention_heads": 4, "intermediate_size": 128}
    if pooling.startswith("vjepa2"):
        config = VJEPA2Config(**sizes, num_labels=5 if pooling == "vjepa2cls" else 0, num_pooler_layers=1)
    else:
        config = VideoMAEConfig(**sizes, num_labels=5, use_mean_pooling=pooling == "pool")
    # real inputs allowed: host-side constants (the tube positions, built once) enter the trace as constants
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    model = fake_cuda_model(config, mode)
    frames = FakeTensor(mode, torch.empty(batch, 4, 32, 32, 3, dtype=torch.uint8, device="meta"), CUDA)

    def forward(frames):
        out = model(frames, keep=keep, return_tokens=True)
        return out.embeddings, out.logits, out.tokens, out.cu_seqlens

    with mode:
        with no_host_sync() as detector:
            graph = make_fx(torch.func.functionalize(forward))(frames)
        embeddings, logits, tokens, cu_seqlens = graph(frames)
    return {"ops": sorted({str(n.target) for n in graph.graph.nodes if "vmae_fast" in str(n.target)}),
            "embeddings": list(embeddings.shape), "logits": None if logits is None else list(logits.shape),
            "tokens": list(tokens.shape),
            "cu_seqlens": list(cu_seqlens.shape), "device": str(embeddings.device), "aten_ops_seen": len(detector.ops)}


if __name__ == "__main__":
    for case in sys.argv[1:]:
        keep, pooling = case.rsplit(":", 1)
        try:
            result = trace_forward(None if keep == "none" else keep, pooling=pooling)
        except Exception as e:  # noqa: BLE001 - reported per case; the test decides what was expected
            result = {"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
        print(json.dumps({"case": case, **result}), flush=True)
