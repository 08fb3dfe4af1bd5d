"""vmae_fast's encoder against transformers' VideoMAEModel / VideoMAEForVideoClassification (fp32, CPU).

Both sides use the same randomized weights (tests/helpers/hf_checkpoints.py), read by load_model from the checkpoint
that transformers wrote. They differ in summation order only (one fused qkv GEMM vs three, a GEMM vs Conv3d for the
patch embedding, packed tokens vs a padded batch), so differences are fp32 rounding: measured worst about 1e-6
relative at ViT-B depth. TOL = 1e-4 is the issue's bar; a dropped q/v bias, a wrong eps or a wrong mask moves the
result far past it (test_wrong_eps_or_bias_is_caught). Run with `-s` to see the per-case worst errors.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.helpers.hf_checkpoints import TINY, load_hf_model, make_checkpoint, make_hf_checkpoint
from vmae_fast import load_model
from vmae_fast.tokens import MotionKeep, TubeKeep, parse_keep

TOL = 1e-4


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    """max |got - want| / max |want|."""
    assert got.shape == want.shape, f"shape {tuple(got.shape)} != {tuple(want.shape)}"
    return ((got.float() - want.float()).abs().max() / want.float().abs().max()).item()


def hf_reference(hf, pixel_values: torch.Tensor, keep: torch.Tensor | None = None, check_forward: bool = True) -> dict:
    """What transformers gives, clip by clip when rows keep different tokens (HF needs equal counts per batch):
    tokens (N_kept, D) packed like ours, embeddings (B, D), logits (B, C) or None. check_forward: also run HF's
    own classification forward (batched) and check our reading of its head against it."""
    core = getattr(hf, "videomae", hf)
    fc_norm, classifier = getattr(hf, "fc_norm", None), getattr(hf, "classifier", None)
    tokens, embeddings, logits = [], [], []
    with torch.no_grad():
        for b in range(pixel_values.shape[0]):
            masked = None if keep is None else ~keep[b:b + 1]  # HF's bool_masked_pos: True = dropped
            h = core(pixel_values[b:b + 1], bool_masked_pos=masked).last_hidden_state[0]  # (n_b, D)
            tokens.append(h)
            pooled = h.mean(0)
            embeddings.append(fc_norm(pooled) if fc_norm is not None else pooled)
            if classifier is not None:
                logits.append(classifier(fc_norm(pooled) if fc_norm is not None else h[0]))
        if classifier is not None and keep is None and check_forward:  # transformers' own batched forward
            batched = hf(pixel_values).logits
            assert rel_err(torch.stack(logits), batched) < 1e-5
    return {"tokens": torch.cat(tokens), "embeddings": torch.stack(embeddings),
            "logits": torch.stack(logits) if logits else None}


def compare(case: str, model, hf, frames, pixel_values, keep=None, hf_keep=None, check_forward=True) -> dict:
    """Run both, print the worst relative errors of the case, assert each <= TOL."""
    out = model(frames, keep=keep, return_tokens=True)
    want = hf_reference(hf, pixel_values, hf_keep, check_forward)
    errs = {"tokens": rel_err(out.tokens, want["tokens"]), "embeddings": rel_err(out.embeddings, want["embeddings"])}
    if want["logits"] is not None:
        errs["logits"] = rel_err(out.logits, want["logits"])
    else:
        assert out.logits is None
    print(f"\nPARITY {case}: " + " ".join(f"{k}={v:.2e}" for k, v in errs.items()))
    assert max(errs.values()) <= TOL, f"{case}: {errs}"
    return errs


def random_pixel_values(config: dict, batch: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    size, frames = config.get("image_size", TINY["image_size"]), config.get("num_frames", TINY["num_frames"])
    return torch.randn(batch, frames, 3, size, size, generator=g)


CASES = {
    "tiny-cls-meanpool-eps1e-12": {"kind": "classification", "use_mean_pooling": True, "layer_norm_eps": 1e-12},
    "tiny-cls-tokenhead-eps1e-6": {"kind": "classification", "use_mean_pooling": False, "layer_norm_eps": 1e-6},
    "tiny-base-meanpool-eps1e-6": {"kind": "base", "use_mean_pooling": True, "layer_norm_eps": 1e-6},
    "tiny-base-layernorm-eps1e-12": {"kind": "base", "use_mean_pooling": False, "layer_norm_eps": 1e-12},
    "hf-small-layout-384x16heads": {"kind": "classification", "hidden_size": 384, "num_attention_heads": 16,
                                        "intermediate_size": 1536, "num_hidden_layers": 2},
    "tiny-64px-3layers-no-qv-bias": {"kind": "classification", "image_size": 64, "num_hidden_layers": 3,
                                     "qkv_bias": False},
}


@pytest.mark.parametrize("case", list(CASES))
def test_parity_with_transformers(case, tmp_path):
    kwargs = dict(CASES[case])
    path, hf = make_hf_checkpoint(tmp_path / case, kind=kwargs.pop("kind"), **kwargs)
    model = load_model(path, device="cpu")
    assert model.config.num_attention_heads == hf.config.num_attention_heads
    x = random_pixel_values(kwargs, batch=2)
    compare(case, model, hf, x, x)


def test_parity_vit_base_full_config(tmp_path):
    """The full ViT-B 16x224 architecture (1568 tokens, 12 blocks), one clip: errors grow with depth and length."""
    vit_b = {"image_size": 224, "patch_size": 16, "num_frames": 16, "hidden_size": 768, "num_hidden_layers": 12,
                 "num_attention_heads": 12, "intermediate_size": 3072}
    path, hf = make_hf_checkpoint(tmp_path / "vit-b", kind="classification", num_labels=10, **vit_b)
    model = load_model(path, device="cpu")
    x = random_pixel_values(vit_b, batch=1)
    compare("vit-b-16x224-cls-meanpool", model, hf, x, x, check_forward=False)  # tiny cases check the head


@pytest.fixture(scope="module")
def keep_models(tmp_path_factory):
    """64x64 tiny models (N = 2 * 4 * 4 = 32 tokens per clip): mean pooling + fc_norm, and final LayerNorm + token
    head: {name: (our model, checkpoint folder)}; parity tests read transformers' model from the folder."""
    root = tmp_path_factory.mktemp("keep")
    models = {}
    for name, pooling in (("meanpool", True), ("tokenhead", False)):
        path = make_checkpoint(root / name, kind="classification", image_size=64, use_mean_pooling=pooling,
                               layer_norm_eps=1e-6)
        models[name] = (load_model(path, device="cpu"), path)
    return models


@pytest.mark.parametrize("name", ["meanpool", "tokenhead"])
def test_keep_mask_rows_with_different_counts(keep_models, name):
    model, path = keep_models[name]
    hf = load_hf_model(path)
    N = model.config.num_tokens
    g = torch.Generator().manual_seed(1)
    keep = torch.zeros(4, N, dtype=torch.bool)
    for row, count in enumerate((N, 13, 1, 5)):  # all, some, a single token, a few
        keep[row, torch.randperm(N, generator=g)[:count]] = True
    keep[3, 0] = False  # the first token dropped: the token head must read the first *kept* one
    keep[3, N - 1] = True
    x = random_pixel_values({"image_size": 64}, batch=4, seed=2)
    compare(f"keep-mask-varlen-{name}", model, hf, x, x, keep=keep, hf_keep=keep)
    cu = model(x, keep=keep).cu_seqlens
    assert cu.dtype == torch.int32 and cu.tolist() == [0, N, N + 13, N + 14, N + 14 + keep[3].sum().item()]


@pytest.mark.parametrize("policy", [TubeKeep(0.5), TubeKeep(0.3, random=True, seed=3), MotionKeep(ratio=0.4),
                                    "tube:0.25", "motion:t=0.5"], ids=str)
def test_keep_policies_match_transformers_on_the_kept_set(keep_models, policy):
    model, path = keep_models["meanpool"]
    hf = load_hf_model(path)
    g = torch.Generator().manual_seed(4)
    frames = torch.randint(0, 256, (3, 4, 64, 64, 3), dtype=torch.uint8, generator=g)
    frames[1, 2:] = frames[1, :2]  # clip 1 is static after the first slice: motion keeps less of it
    keep = parse_keep(policy).mask(frames, model.config)  # (B, N) the kept set the model will use
    compare(f"keep-policy-{policy}", model, hf, frames, to_pixel_values(frames, model.config), keep=policy,
            hf_keep=keep)


def to_pixel_values(frames: torch.Tensor, config) -> torch.Tensor:
    """uint8 (B, T, H, W, 3) -> HF pixel_values (B, T, 3, H, W), normalized with the model's mean/std."""
    mean = torch.tensor(config.image_mean).view(1, 1, 3, 1, 1)
    std = torch.tensor(config.image_std).view(1, 1, 3, 1, 1)
    return (frames.permute(0, 1, 4, 2, 3).float() / 255.0 - mean) / std


def test_uint8_frames_use_the_checkpoint_mean_std(tmp_path):
    pre = {"image_mean": [0.45, 0.4, 0.35], "image_std": [0.2, 0.25, 0.3], "crop_size": {"height": 32, "width": 32}}
    path, hf = make_hf_checkpoint(tmp_path / "pre", kind="classification", preprocessor=pre)
    model = load_model(path, device="cpu")
    assert model.config.image_mean == tuple(pre["image_mean"]) and model.config.image_std == tuple(pre["image_std"])
    frames = torch.randint(0, 256, (2, 4, 32, 32, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(5))
    compare("uint8-frames-preprocessor-mean-std", model, hf, frames, to_pixel_values(frames, model.config))


def test_wrong_eps_or_bias_is_caught(tmp_path):
    """The tolerance has teeth: loading the same weights with a wrong eps or without q/v biases misses it by far."""
    path, hf = make_hf_checkpoint(tmp_path / "m", kind="classification", layer_norm_eps=1e-6)
    x = random_pixel_values({}, batch=2)
    want = hf_reference(hf, x)["embeddings"]
    wrong_eps = load_model(path, device="cpu", config={"fc_norm_eps": 1e-1})
    assert rel_err(wrong_eps(x).embeddings, want) > 100 * TOL
    no_bias = load_model(path, device="cpu")
    no_bias.blocks[0].attn.wqkv.bias.zero_()
    assert rel_err(no_bias(x).embeddings, want) > 10 * TOL


def test_outputs_shapes_and_all_equals_none(keep_models):
    model, _ = keep_models["meanpool"]
    x = random_pixel_values({"image_size": 64}, batch=2)
    out = model(x)
    assert out.tokens is None and out.embeddings.shape == (2, 64) and out.logits.shape == (2, 5)
    assert out.cu_seqlens.tolist() == [0, 32, 64]
    same = model(x, keep="all")
    assert torch.equal(same.embeddings, out.embeddings)
    full_mask = model(x, keep=torch.ones(2, 32, dtype=torch.bool))
    assert rel_err(full_mask.embeddings, out.embeddings) < 1e-6


BAD_FRAMES = {
    "rank-4": (torch.zeros(4, 64, 64, 3, dtype=torch.uint8), ValueError, "5-D"),
    "uint8-channels": (torch.zeros(1, 4, 64, 64, 4, dtype=torch.uint8), ValueError, "3 channels"),
    "float-channels": (torch.zeros(1, 4, 1, 64, 64), ValueError, "3 channels"),
    "uint8-in-float-layout": (torch.zeros(1, 4, 3, 64, 64, dtype=torch.uint8), ValueError, "3 channels"),
    "spatial": (torch.zeros(1, 4, 3, 32, 64), ValueError, "64x64"),
    "frames-not-divisible": (torch.zeros(1, 3, 3, 64, 64), ValueError, "not divisible by tubelet_size 2"),
    "frame-count": (torch.zeros(1, 8, 3, 64, 64), ValueError, "takes 4 frames"),
    "int32": (torch.zeros(1, 4, 3, 64, 64, dtype=torch.int32), TypeError, "torch.int32"),
    "empty-batch": (torch.zeros(0, 4, 3, 64, 64), ValueError, "at least one clip"),
    "numpy": (np.zeros((1, 4, 64, 64, 3), dtype=np.uint8), TypeError, "ndarray"),
}


@pytest.mark.parametrize("case", list(BAD_FRAMES))
def test_bad_frames_raise_naming_expected_and_got(keep_models, case):
    model, _ = keep_models["meanpool"]
    frames, error, text = BAD_FRAMES[case]
    with pytest.raises(error, match=text) as info:
        model(frames)
    if isinstance(frames, torch.Tensor) and error is ValueError:
        assert str(tuple(frames.shape)) in str(info.value)  # the message shows what it got


BAD_KEEP = {
    "wrong-shape": (torch.ones(2, 31, dtype=torch.bool), ValueError, r"\(2, 32\), got \(2, 31\)"),
    "wrong-dtype": (torch.ones(2, 32, dtype=torch.int64), TypeError, "bool"),
    "row-keeps-nothing": (torch.ones(2, 32, dtype=torch.bool).index_fill_(0, torch.tensor([1]), False),
                          ValueError, r"rows \[1\]"),
    "bad-string": ("tube:1.5", ValueError, "ratio"),
    "unknown-policy": ("drop-half", ValueError, "unknown keep policy"),
    "bad-type": (0.5, TypeError, r"bool tensor \(B, N\) = \(2, 32\), got float"),
    "numpy-mask": (np.ones((2, 32), dtype=bool), TypeError, "got ndarray"),
    "policy-bad-shape": (type("Half", (), {"spec": "half",
                                           "mask": lambda self, f, c: torch.ones(2, 16, dtype=torch.bool)})(),
                         ValueError, r"keep policy 'half' must have shape \(B, N\) = \(2, 32\), got \(2, 16\)"),
}


def test_user_policy_object(keep_models):
    """Any object with .spec and .mask(frames, config) -> bool (B, N) works as a policy."""

    class FirstHalfInTime:
        spec = "first-half"

        def mask(self, frames, config):
            keep = torch.zeros(frames.shape[0], config.num_tokens, dtype=torch.bool)
            keep[:, : config.num_tokens // 2] = True
            return keep

    model, _ = keep_models["meanpool"]
    x = random_pixel_values({"image_size": 64}, batch=2)
    want = model(x, keep=FirstHalfInTime().mask(x, model.config))
    got = model(x, keep=FirstHalfInTime())
    assert torch.equal(got.embeddings, want.embeddings) and got.cu_seqlens.tolist() == [0, 16, 32]


@pytest.mark.parametrize("case", list(BAD_KEEP))
def test_bad_keep_raises(keep_models, case):
    model, _ = keep_models["meanpool"]
    keep, error, text = BAD_KEEP[case]
    with pytest.raises(error, match=text):
        model(torch.zeros(2, 4, 3, 64, 64), keep=keep)


def test_bf16_on_cpu_stays_close_to_fp32(tmp_path):
    """dtype='bf16' runs the same path in bfloat16 (8-bit mantissa): the DESIGN bar is embedding cosine >= 0.999."""
    path = make_checkpoint(tmp_path / "m", kind="classification", image_size=64, num_hidden_layers=3)
    fp32, bf16 = load_model(path, device="cpu"), load_model(path, device="cpu", dtype="bf16")
    frames = torch.randint(0, 256, (3, 4, 64, 64, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(6))
    for keep in (None, "tube:0.5"):
        a, b = fp32(frames, keep=keep), bf16(frames, keep=keep)
        assert b.embeddings.dtype == torch.bfloat16
        cosine = torch.nn.functional.cosine_similarity(a.embeddings, b.embeddings.float()).min().item()
        print(f"\nbf16 vs fp32 keep={keep}: min embedding cosine {cosine:.6f}")
        assert cosine >= 0.999
