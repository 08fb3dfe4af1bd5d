"""CUDAGraphRunner: argument checks and the clear CPU error run everywhere; capture + replay against the eager model
needs a CUDA GPU (TRITON_INTERPRET=0 pytest tests/test_cuda_graphs.py on a GPU machine; also exercised by
tools/bench_model.py's vmae_fast-cudagraph rows)."""

from __future__ import annotations

import os

import pytest
import torch

import vmae_fast
from vmae_fast.cuda_graphs import CUDAGraphRunner, check_batch

TINY = {"image_size": 32, "patch_size": 16, "num_frames": 4, "hidden_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 4, "intermediate_size": 128, "num_labels": 5}
GPU = torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET", "0") in ("", "0")


@pytest.fixture(scope="module")
def cpu_model():
    return vmae_fast.load_model("random:small", device="cpu", config=TINY)


def test_cpu_model_is_refused_with_a_clear_message(cpu_model):
    with pytest.raises(ValueError, match=r"CUDA graphs need a model on a CUDA device, got cpu.*device='cuda'"):
        CUDAGraphRunner(cpu_model, batch_size=2)


@pytest.mark.parametrize("kwargs, error, message", [
    ({"batch_size": 0}, ValueError, "batch_size must be an int >= 1, got 0"),
    ({"batch_size": 2.0}, TypeError, "batch_size must be an int >= 1, got float"),
    ({"batch_size": True}, TypeError, "batch_size must be an int >= 1, got bool"),
    ({"batch_size": 2, "keep": "tube:0.5"}, ValueError, "needs keep=None or 'all', got 'tube:0.5'"),
    ({"batch_size": 2, "keep": torch.ones(2, 8, dtype=torch.bool)}, ValueError, "needs keep=None or 'all'"),
    ({"batch_size": 2, "input_dtype": torch.float16}, TypeError, "input_dtype must be torch.uint8 or the model's"),
    ({"batch_size": 2, "warmup": 0}, ValueError, "warmup must be an int >= 1"),
], ids=["batch0", "batch-float", "batch-bool", "keep-policy", "keep-mask", "input-dtype", "warmup0"])
def test_bad_arguments(cpu_model, kwargs, error, message):
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
        CUDAGraphRunner(cpu_model, **kwargs)


def test_not_a_model():
    with pytest.raises(TypeError, match="model must be a vmae_fast VideoMAE"):
        CUDAGraphRunner(torch.nn.Linear(2, 2), batch_size=1)


def test_check_batch():
    static = (4, 4, 32, 32, 3)
    assert check_batch(torch.zeros(3, 4, 32, 32, 3, dtype=torch.uint8), static, torch.uint8) == 3
    with pytest.raises(TypeError, match="got dtype torch.float32"):
        check_batch(torch.zeros(3, 4, 32, 32, 3), static, torch.uint8)
    with pytest.raises(ValueError, match=r"got shape \(3, 4, 3, 32, 32\)"):
        check_batch(torch.zeros(3, 4, 3, 32, 32, dtype=torch.uint8), static, torch.uint8)
    with pytest.raises(ValueError, match="got 5 clips"):
        check_batch(torch.zeros(5, 4, 32, 32, 3, dtype=torch.uint8), static, torch.uint8)
    with pytest.raises(ValueError, match="got 0 clips"):
        check_batch(torch.zeros(0, 4, 32, 32, 3, dtype=torch.uint8), static, torch.uint8)
    with pytest.raises(TypeError, match="got ndarray"):
        import numpy as np

        check_batch(np.zeros(static, dtype=np.uint8), static, torch.uint8)


@pytest.mark.skipif(not GPU, reason="capture/replay needs a CUDA GPU with compiled Triton (TRITON_INTERPRET=0)")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_replay_matches_eager_on_gpu(dtype):
    model = vmae_fast.load_model("random:small", device="cuda", dtype=dtype, config=TINY)
    runner = CUDAGraphRunner(model, batch_size=4, return_tokens=True)
    g = torch.Generator().manual_seed(0)
    for b in (4, 1, 3):  # full, then padded batches; the static buffers are reused each time
        frames = torch.randint(0, 256, (b, 4, 32, 32, 3), dtype=torch.uint8, generator=g)
        got = runner(frames)
        want = model(frames.cuda(), return_tokens=True)
        assert got.embeddings.shape == (b, 64) and got.cu_seqlens.tolist() == want.cu_seqlens.tolist()
        # same kernels; only the GEMM shapes differ when padded (cuBLAS may pick another algorithm): rounding-level
        # differences, fp32 unit roundoff 6e-8 and bf16 4e-3, times a few for accumulation over 2 layers
        tol = 1e-5 if dtype == torch.float32 else 3e-2
        for field in ("embeddings", "logits", "tokens"):
            a, w = getattr(got, field).float(), getattr(want, field).float()
            err = ((a - w).abs().max() / w.abs().max()).item()
            assert err <= tol, f"batch {b}: {field} rel max err {err:.2e} > {tol}"
