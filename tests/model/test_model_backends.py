"""The whole tiny model through the Triton kernels (backend="triton") against the plain oracle
(tests/helpers/reference_videomae.py, tests/helpers/reference_vjepa2.py), and against the same model on the torch
backend: VideoMAE and V-JEPA 2 (encoder and classifier, whose checkpoints transformers writes).

Where the kernels run is decided once, in tests/conftest.py (kernel_checks.DEVICE): without a GPU the Triton
interpreter runs them on CPU; on a GPU machine plain `pytest` puts the model on CUDA with compiled kernels. The
checkpoints are written by our own writer (no transformers needed).

Tolerance: everything is fp32 with fp32 accumulation (attention's fp32 tl.dot is "tf32x3" on a GPU, within a few
fp32 ulps; the interpreter computes it in plain fp32), so model and oracle differ only in summation order, as in
test_reference.py: measured <= 1.2e-6 relative on CPU; TOL = 1e-5 as there.
"""

from __future__ import annotations

import importlib

import pytest
import torch

from tests.helpers.hf_checkpoints import make_checkpoint
from tests.helpers.kernel_checks import DEVICE, NEEDS_TRITON
from tests.helpers.reference_videomae import ReferenceVideoMAE, frames_to_pixel_values

TOL = 1e-5
pytestmark = NEEDS_TRITON
# distinct per-channel statistics, so a swapped channel or a forgotten mean/std shows
PREPROCESSOR = {"image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225], "size": {"shortest_edge": 32}}
# the plain-torch paths of the ops; with backend="triton" none of them may run
TORCH_PATHS = {"vmae_fast.kernels.patch_embed": "_patch_embed_torch",
               "vmae_fast.kernels.varlen_attention": "_varlen_attention_torch",
               "vmae_fast.kernels.layer_norm": "_layer_norm_torch",
               "vmae_fast.kernels.mean_pool_layernorm": "_mean_pool_layernorm_torch",
               "vmae_fast.kernels.qkv_rope": "_qkv_rope_torch"}


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    assert got.shape == want.shape, f"shape {tuple(got.shape)} != {tuple(want.shape)}"
    return ((got.double() - want.double()).abs().max() / want.double().abs().max()).item()


def check(name: str, got: torch.Tensor, want: torch.Tensor, tol: float = TOL) -> None:
    got, want = got.detach().float().cpu(), want.detach().float().cpu()
    err = rel_err(got, want)
    where = tuple(i.item() for i in torch.unravel_index((got - want).abs().argmax(), got.shape))
    print(f"{name}: rel max err {err:.2e} at {where}")
    assert err <= tol, (f"{name}: rel max err {err:.2e} > {tol:.0e} at {where}: "
                        f"got {got[where]:.6g}, want {want[where]:.6g}")


@pytest.fixture(scope="module", params=["cls-meanpool", "cls-firsttoken-eps1e-6"])
def checkpoint(request, tmp_path_factory):
    """A tiny HF checkpoint on disk (image 32, patch 16, 4 frames, hidden 64, 2 layers, 4 heads: N = 8 tokens)."""
    options = {"cls-meanpool": {"use_mean_pooling": True},
               "cls-firsttoken-eps1e-6": {"use_mean_pooling": False, "layer_norm_eps": 1e-6}}[request.param]
    return make_checkpoint(tmp_path_factory.mktemp(request.param, numbered=False), kind="classification", seed=11,
                           preprocessor=PREPROCESSOR, **options)


@pytest.fixture
def no_torch_fallback(monkeypatch):
    """Make the plain-torch path of every op raise, so a silent fallback cannot pass for the Triton kernels."""
    for module_name, attr in TORCH_PATHS.items():
        module = importlib.import_module(module_name)
        assert hasattr(module, attr), f"{module_name}.{attr} not found: update TORCH_PATHS"

        def refuse(*args, _name=f"{module_name}.{attr}", **kwargs):
            raise AssertionError(f"backend='triton' fell back to the torch path {_name}")
        monkeypatch.setattr(module, attr, refuse)


def inputs():
    g = torch.Generator().manual_seed(0)
    frames = torch.randint(0, 256, (3, 4, 32, 32, 3), dtype=torch.uint8, generator=g)  # (B, T, H, W, 3)
    keep = torch.zeros(3, 8, dtype=torch.bool)  # True = kept; rows keep 8, 3 and 1 tokens
    keep[0] = True
    keep[1, [2, 5, 6]] = True  # token 0 dropped: the first-token head must read token 2
    keep[2, 7] = True
    return frames, keep


@pytest.mark.parametrize("keep_kind", ["all", "ragged"])
def test_triton_model_matches_oracle(checkpoint, keep_kind, no_torch_fallback):
    import vmae_fast

    model = vmae_fast.load_model(checkpoint, device=DEVICE, dtype=torch.float32, backend="triton")
    assert model.backend == "triton"
    oracle = ReferenceVideoMAE.from_hf(checkpoint)
    frames, keep = inputs()
    keep = None if keep_kind == "all" else keep
    out = model(frames.to(DEVICE), keep=None if keep is None else keep.to(DEVICE), return_tokens=True)
    pixel_values = frames_to_pixel_values(frames, PREPROCESSOR["image_mean"], PREPROCESSOR["image_std"])
    want = oracle.forward_kept(pixel_values, keep)
    assert out.cu_seqlens.dtype == torch.int32
    assert out.cu_seqlens.cpu().tolist() == want["cu_seqlens"].tolist()
    label = f"{checkpoint.name} keep={keep_kind}"
    check(f"{label} tokens", out.tokens, want["tokens"])
    check(f"{label} embeddings", out.embeddings, want["embedding"])
    check(f"{label} logits", out.logits, want["logits"])


def test_triton_backend_matches_torch_backend(checkpoint):
    """Same checkpoint, same inputs, the two backends of the model: uint8 frames (fused normalization) with and
    without a ragged keep mask, and float frames already normalized."""
    import vmae_fast

    triton_model = vmae_fast.load_model(checkpoint, device=DEVICE, dtype=torch.float32, backend="triton")
    torch_model = vmae_fast.load_model(checkpoint, device=DEVICE, dtype=torch.float32, backend="torch")
    frames, keep = inputs()
    pixel_values = frames_to_pixel_values(frames, PREPROCESSOR["image_mean"], PREPROCESSOR["image_std"])
    for label, x, k in (("uint8 all", frames, None), ("uint8 ragged", frames, keep), ("float all", pixel_values, None)):
        a = triton_model(x.to(DEVICE), keep=None if k is None else k.to(DEVICE), return_tokens=True)
        b = torch_model(x.to(DEVICE), keep=None if k is None else k.to(DEVICE), return_tokens=True)
        assert torch.equal(a.cu_seqlens, b.cu_seqlens)
        for field in ("tokens", "embeddings", "logits"):
            check(f"{checkpoint.name} {label} triton-vs-torch {field}", getattr(a, field), getattr(b, field))


def test_patch_weight_laid_out_once_and_again_after_a_change(checkpoint):
    """The Triton patch weight layout is built at load and reused by every forward; changing the weight in place (or
    replacing it) lays it out again, so the kernels never read a stale copy."""
    import vmae_fast

    model = vmae_fast.load_model(checkpoint, device=DEVICE, dtype=torch.float32, backend="triton")
    reference = vmae_fast.load_model(checkpoint, device=DEVICE, dtype=torch.float32, backend="torch")
    frames, _ = inputs()
    frames = frames.to(DEVICE)
    prepared = model._patch_weight(True)
    model(frames)
    assert model._patch_weight(True) is prepared  # nothing re-laid by the forward
    with torch.no_grad():
        for m in (model, reference):
            m.patch_embed.weight.mul_(-0.5)
    assert model._patch_weight(True) is not prepared
    check("after an in-place change", model(frames).embeddings, reference(frames).embeddings)


@pytest.fixture(scope="module", params=["base", "classification"])
def vjepa2_checkpoint(request, tmp_path_factory):
    """A tiny V-JEPA 2 folder written by transformers (32 px, 4 frames, 4 heads of 16: N = 8 tokens)."""
    from tests.helpers.vjepa2_checkpoints import make_hf_checkpoint

    path, _ = make_hf_checkpoint(tmp_path_factory.mktemp(f"vjepa2-{request.param}"), kind=request.param, seed=12)
    return path


@pytest.mark.parametrize("keep_kind", ["all", "ragged"])
def test_vjepa2_triton_model_matches_oracle_and_torch_backend(vjepa2_checkpoint, keep_kind, no_torch_fallback):
    """V-JEPA 2 on the Triton kernels (rotary, attention, norms, patch embedding without a table; the pooler's
    attention too) against the oracle, and against the torch backend (run after the fallback guard is lifted)."""
    import vmae_fast
    from tests.helpers.reference_vjepa2 import ReferenceVJEPA2

    model = vmae_fast.load_model(vjepa2_checkpoint, device=DEVICE, dtype=torch.float32, backend="triton")
    oracle = ReferenceVJEPA2.from_hf(vjepa2_checkpoint)
    frames, keep = inputs()
    keep = None if keep_kind == "all" else keep
    out = model(frames.to(DEVICE), keep=None if keep is None else keep.to(DEVICE), return_tokens=True)
    c = model.config
    pixel_values = frames_to_pixel_values(frames, c.image_mean, c.image_std)
    want = oracle.forward_kept(pixel_values, keep)
    assert out.cu_seqlens.cpu().tolist() == want["cu_seqlens"].tolist()
    label = f"vjepa2 {vjepa2_checkpoint.name} keep={keep_kind}"
    check(f"{label} tokens", out.tokens, want["tokens"])
    check(f"{label} embeddings", out.embeddings, want["embedding"])
    if want["logits"] is not None:
        check(f"{label} logits", out.logits, want["logits"])


def test_vjepa2_triton_backend_matches_torch_backend(vjepa2_checkpoint):
    import vmae_fast

    triton_model = vmae_fast.load_model(vjepa2_checkpoint, device=DEVICE, dtype=torch.float32, backend="triton")
    torch_model = vmae_fast.load_model(vjepa2_checkpoint, device=DEVICE, dtype=torch.float32, backend="torch")
    frames, keep = inputs()
    for label, k in (("all", None), ("ragged", keep), ("tube:0.5", "tube:0.5")):
        k = k.to(DEVICE) if isinstance(k, torch.Tensor) else k
        a = triton_model(frames.to(DEVICE), keep=k, return_tokens=True)
        b = torch_model(frames.to(DEVICE), keep=k, return_tokens=True)
        assert torch.equal(a.cu_seqlens, b.cu_seqlens)
        for field in ("tokens", "embeddings") + (("logits",) if a.logits is not None else ()):
            check(f"vjepa2 {vjepa2_checkpoint.name} {label} triton-vs-torch {field}", getattr(a, field),
                  getattr(b, field))
