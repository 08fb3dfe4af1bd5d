"""CUDAGraphRunner: argument checks and the clear CPU error run everywhere, and so does the proof that the forward
(all tokens, tube:R, motion:R) is capturable: it traces on fake CUDA tensors with no host sync
(tests/helpers/fake_cuda.py).
Capture + replay against the eager model needs a CUDA GPU: plain `pytest tests/model/test_cuda_graphs.py` on a GPU
machine (tools/gpu_check.py runs it; tools/bench_model.py's vmae_fast-cudagraph rows check it again)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import vmae_fast
from tests.helpers.kernel_checks import ON_GPU
from vmae_fast.cuda_graphs import CUDAGraphRunner, check_batch

TINY = {
    "image_size": 32,
    "patch_size": 16,
    "num_frames": 4,
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 128,
    "num_labels": 5,
}
GPU = ON_GPU  # CUDA with compiled Triton (tests/conftest.py decides)


@pytest.fixture(scope="module")
def cpu_model():
    return vmae_fast.load_model("random:small", device="cpu", config=TINY)


def test_cpu_model_is_refused_with_a_clear_message(cpu_model):
    with pytest.raises(ValueError, match=r"CUDA graphs need a model on a CUDA device, got cpu.*device='cuda'"):
        CUDAGraphRunner(cpu_model, batch_size=2)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"batch_size": 0}, ValueError, "batch_size must be an int >= 1, got 0"),
        ({"batch_size": 2.0}, TypeError, "batch_size must be an int >= 1, got float"),
        ({"batch_size": True}, TypeError, "batch_size must be an int >= 1, got bool"),
        (
            {"batch_size": 2, "keep": "motion:t=0.1"},
            ValueError,
            "needs keep=None, 'all' or a policy with a fixed count per clip .* got 'motion:t=0.1'",
        ),
        ({"batch_size": 2, "keep": torch.ones(2, 8, dtype=torch.bool)}, ValueError, "fixed count per clip"),
        ({"batch_size": 2, "keep": "tube:2"}, ValueError, "ratio must be in"),
        ({"batch_size": 2, "input_dtype": torch.float16}, TypeError, "input_dtype must be torch.uint8 or the model's"),
        ({"batch_size": 2, "warmup": 0}, ValueError, "warmup must be an int >= 1"),
    ],
    ids=["batch0", "batch-float", "batch-bool", "keep-threshold", "keep-mask", "keep-bad", "input-dtype", "warmup0"],
)
def test_bad_arguments(cpu_model, kwargs, error, message):
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
        CUDAGraphRunner(cpu_model, **kwargs)


@pytest.mark.parametrize("keep", ["all", "tube:0.5", "tube:0.25:random:1", "motion:0.5"])
def test_fixed_count_policies_pass_the_keep_check(cpu_model, keep):
    """These are capturable: the runner gets past the keep check and stops only at the CPU model."""
    with pytest.raises(ValueError, match="CUDA graphs need a model on a CUDA device"):
        CUDAGraphRunner(cpu_model, batch_size=2, keep=keep)


CAPTURE_CASES = {"none": 8, "tube:0.5": 4, "tube:0.25:random:1": 2, "motion:0.5": 4}  # keep -> tokens per clip


@pytest.fixture(scope="module")
def fake_cuda_traces():
    """tests/helpers/fake_cuda.py over every case in one fresh process (TRITON_INTERPRET=0 must hold before triton is
    imported): {"keep:pooling": result}."""
    cases = [f"{keep}:{pooling}" for keep in [*CAPTURE_CASES, "motion:t=0.1"]
             for pooling in ("pool", "tokenhead", "vjepa2", "vjepa2cls")]
    env = {**os.environ, "TRITON_INTERPRET": "0", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, str(Path(__file__).resolve().parents[1] / "helpers" / "fake_cuda.py"), *cases],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    return {row["case"]: row for row in rows}


@pytest.mark.parametrize("pooling", ["pool", "tokenhead"])
@pytest.mark.parametrize("keep", list(CAPTURE_CASES))
def test_forward_is_capturable_without_host_sync(fake_cuda_traces, keep, pooling):
    """The whole forward on fake CUDA tensors (the GPU route: our Triton ops, not the torch fallback) traces with
    make_fx under the host-sync detector: no value read on the host, static shapes, so torch.cuda.graph can capture
    it."""
    got = fake_cuda_traces[f"{keep}:{pooling}"]
    assert "error" not in got, got["error"]
    assert got["ops"] == [
        "vmae_fast.add_layer_norm.default",
        "vmae_fast.layer_norm.default",
        "vmae_fast.mean_pool_layernorm.default",
        "vmae_fast.patch_embed.default",
        "vmae_fast.varlen_attention.default",
    ]
    kept = CAPTURE_CASES[keep]
    assert got["tokens"] == [3 * kept, 64] and got["embeddings"] == [3, 64] and got["logits"] == [3, 5]
    assert got["cu_seqlens"] == [4] and got["device"] == "cuda:0" and got["aten_ops_seen"] > 50


@pytest.mark.parametrize("classifier", [False, True], ids=["encoder", "classifier"])
@pytest.mark.parametrize("keep", list(CAPTURE_CASES))
def test_vjepa2_forward_is_capturable_without_host_sync(fake_cuda_traces, keep, classifier):
    """The same proof for V-JEPA 2: rotary + attention + norms on our Triton ops, and the classifier's attentive
    pooler (its cross-attention is one batched SDPA when every clip keeps the same count) with no host read."""
    got = fake_cuda_traces[f"{keep}:{'vjepa2cls' if classifier else 'vjepa2'}"]
    assert "error" not in got, got["error"]
    ops = {"vmae_fast.add_layer_norm.default", "vmae_fast.layer_norm.default", "vmae_fast.patch_embed.default",
           "vmae_fast.qkv_rope.default", "vmae_fast.varlen_attention.default"}
    assert set(got["ops"]) == (ops if classifier else ops | {"vmae_fast.mean_pool_layernorm.default"})
    kept = CAPTURE_CASES[keep]
    assert got["tokens"] == [3 * kept, 64] and got["embeddings"] == [3, 64]
    assert got["logits"] == ([3, 5] if classifier else None)


@pytest.mark.parametrize("pooling", ["pool", "tokenhead", "vjepa2", "vjepa2cls"])
def test_threshold_policy_is_not_capturable(fake_cuda_traces, pooling):
    """motion:t=X keeps a data-dependent count: the same trace must fail (the detector or the fake tensors stop it)."""
    assert "error" in fake_cuda_traces[f"motion:t=0.1:{pooling}"]


def test_not_a_model():
    with pytest.raises(TypeError, match="model must be a vmae_fast VideoMAE or VJEPA2"):
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


# the two families at the tiny sizes: VideoMAE, and a V-JEPA 2 classifier (rotary kernel, attentive pooler)
SOURCES = {"videomae": "random:small", "vjepa2": "random:vjepa2-vitl"}


@pytest.mark.skipif(not GPU, reason="capture/replay needs a CUDA GPU with compiled Triton (plain pytest there)")
@pytest.mark.parametrize("family", list(SOURCES))
@pytest.mark.parametrize("keep", [None, "tube:0.5", "motion:0.5"], ids=["all", "tube", "motion"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_replay_matches_eager_on_gpu(dtype, keep, family):
    """At the captured batch the replay runs the very kernels eager runs on the same shapes: bit-equal outputs.
    Padded batches change the GEMM shapes (cuBLAS may pick another algorithm): rounding-level differences."""
    model = vmae_fast.load_model(SOURCES[family], device="cuda", dtype=dtype, config=TINY)
    runner = CUDAGraphRunner(model, batch_size=4, keep=keep, return_tokens=True)
    g = torch.Generator().manual_seed(0)
    for b in (4, 1, 3, 4):  # full, padded, full again; the static buffers are reused each time
        frames = torch.randint(0, 256, (b, 4, 32, 32, 3), dtype=torch.uint8, generator=g)
        got = runner(frames)
        want = model(frames.cuda(), keep=keep, return_tokens=True)
        assert got.embeddings.shape == (b, 64) and got.cu_seqlens.tolist() == want.cu_seqlens.tolist()
        if b == runner.batch_size:
            for field in ("embeddings", "logits", "tokens"):
                a, w = getattr(got, field), getattr(want, field)
                assert torch.equal(a, w), (
                    f"batch {b} keep={keep}: {field} differs from eager by "
                    f"{(a.float() - w.float()).abs().max().item():.3g}"
                )
            continue
        # same kernels; only the GEMM shapes differ when padded (cuBLAS may pick another algorithm): rounding-level
        # differences, fp32 unit roundoff 6e-8 and bf16 4e-3, times a few for accumulation over 2 layers
        tol = 1e-5 if dtype == torch.float32 else 3e-2
        for field in ("embeddings", "logits", "tokens"):
            a, w = getattr(got, field).float(), getattr(want, field).float()
            err = ((a - w).abs().max() / w.abs().max()).item()
            assert err <= tol, f"batch {b}: {field} rel max err {err:.2e} > {tol}"


@pytest.mark.skipif(
    not GPU, reason="torch.cuda.set_sync_debug_mode needs a CUDA GPU (on CPU: the fake-CUDA traces above)"
)
@pytest.mark.parametrize("family", list(SOURCES))
@pytest.mark.parametrize("keep", [None, "tube:0.5", "tube:0.25:random:1", "motion:0.5"], ids=str)
def test_forward_makes_no_host_sync_on_gpu(keep, family):
    """The GPU's own sync detector: after a warm-up (Triton compiles and autotunes there, the tube rows are cached), a
    forward with all tokens or a fixed-count policy raises nothing under set_sync_debug_mode("error"); motion:t=X
    must (it reads the kept counts on the host)."""
    model = vmae_fast.load_model(SOURCES[family], device="cuda", dtype=torch.bfloat16, config=TINY)
    frames = torch.randint(
        0, 256, (3, 4, 32, 32, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(1)
    ).cuda()
    for policy in (keep, "motion:t=0.1"):
        model(frames, keep=policy)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        model(frames, keep=keep)
        with pytest.raises(RuntimeError, match="synchroniz"):
            model(frames, keep="motion:t=0.1")
    finally:
        torch.cuda.set_sync_debug_mode("default")
