"""vmae_fast's V-JEPA 2 (load_model on a transformers-written folder) against transformers' VJEPA2Model /
VJEPA2ForVideoClassification, fp32 on CPU, and against the plain oracle (tests/helpers/reference_vjepa2.py).

Both sides use the same randomized weights (tests/helpers/vjepa2_checkpoints.py). They differ in summation order only
(one fused qkv GEMM vs three, a GEMM vs Conv3d, packed tokens vs a padded batch), so differences are fp32 rounding:
measured <= 2e-6 relative (`-s` prints every case). TOL = 1e-4 is the issue's bar; a dropped key bias, a wrong eps
or positions that do not follow the kept tokens miss it by far (test_wrong_settings_are_caught).

Kept tokens: transformers' encoder has no token dropping of its own, but its layers take a position mask (the ids of
the tokens present, as its predictor and Meta's masked encoder use them): hf_encoder_tokens gathers the patch
embeddings at the kept ids and runs every layer with position_mask = those ids. Rows keeping different counts are run
one clip at a time on the transformers side (it needs equal counts per batch).
"""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from tests.helpers.reference_vjepa2 import ReferenceVJEPA2
from tests.helpers.vjepa2_checkpoints import IMAGENET, hf_encoder_tokens, make_hf_checkpoint
from vmae_fast import load_model
from vmae_fast.config import VJEPA2Config
from vmae_fast.tokens import parse_keep
from vmae_fast.vjepa2 import VJEPA2, token_positions

TOL = 1e-4


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    assert got.shape == want.shape, f"shape {tuple(got.shape)} != {tuple(want.shape)}"
    return ((got.float() - want.float()).abs().max() / want.float().abs().max()).item()


def hf_reference(hf, pixel_values: torch.Tensor, keep: torch.Tensor | None = None) -> dict:
    """transformers' tokens (packed like ours), embeddings and logits, clip by clip with each clip's kept ids as the
    position mask; without a keep mask also transformers' own batched forward (checked against the clip loop)."""
    tokens, embeddings, logits = [], [], []
    with torch.no_grad():
        for b in range(pixel_values.shape[0]):
            ids = None if keep is None else keep[b].nonzero().T  # (1, n_b)
            h = hf_encoder_tokens(hf, pixel_values[b : b + 1], ids)  # (1, n_b, D)
            tokens.append(h[0])
            if hasattr(hf, "pooler"):
                pooled = hf.pooler(h)  # (1, D)
                embeddings.append(pooled[0])
                logits.append(hf.classifier(pooled)[0])
            else:
                embeddings.append(h[0].mean(0))
        if keep is None:  # transformers' own forward, batched
            if hasattr(hf, "pooler"):
                assert rel_err(torch.stack(logits), hf(pixel_values).logits) < 1e-5
            else:
                batched = hf(pixel_values, skip_predictor=True).last_hidden_state
                assert rel_err(torch.cat(tokens), batched.reshape(-1, batched.shape[-1])) < 1e-5
    return {"tokens": torch.cat(tokens), "embeddings": torch.stack(embeddings),
            "logits": torch.stack(logits) if logits else None}


def compare(case: str, model, hf, frames, pixel_values, keep=None, hf_keep=None) -> dict:
    out = model(frames, keep=keep, return_tokens=True)
    want = hf_reference(hf, pixel_values, hf_keep)
    errs = {"tokens": rel_err(out.tokens, want["tokens"]), "embeddings": rel_err(out.embeddings, want["embeddings"])}
    if want["logits"] is not None:
        errs["logits"] = rel_err(out.logits, want["logits"])
    else:
        assert out.logits is None
    print(f"\nPARITY {case}: " + " ".join(f"{k}={v:.2e}" for k, v in errs.items()))
    assert max(errs.values()) <= TOL, f"{case}: {errs}"
    return errs


def random_pixel_values(model, batch: int, seed: int = 0) -> torch.Tensor:
    c = model.config
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, c.num_frames, 3, c.image_size, c.image_size, generator=g)


def to_pixel_values(frames: torch.Tensor, config) -> torch.Tensor:
    mean = torch.tensor(config.image_mean).view(1, 1, 3, 1, 1)
    std = torch.tensor(config.image_std).view(1, 1, 3, 1, 1)
    return (frames.permute(0, 1, 4, 2, 3).float() / 255.0 - mean) / std


CASES = {
    "tiny-d16": {"kind": "base"},
    "tiny-d16-classifier": {"kind": "classification"},
    "d64-grid4x4-classifier-3-pooler-layers": {"kind": "classification", "hidden_size": 128, "num_attention_heads": 2,
                                               "crop_size": 64, "num_pooler_layers": 3},
    "d80-eps1e-5": {"kind": "base", "hidden_size": 160, "num_attention_heads": 2, "layer_norm_eps": 1e-5},
    "d88-tubelet1-3frames": {"kind": "base", "hidden_size": 176, "num_attention_heads": 2, "tubelet_size": 1,
                             "frames_per_clip": 3, "num_hidden_layers": 1},
    "no-qkv-bias-mlp-ratio-3": {"kind": "base", "qkv_bias": False, "mlp_ratio": 3.0},
}


@pytest.mark.parametrize("case", list(CASES))
def test_parity_with_transformers(case, tmp_path):
    kwargs = dict(CASES[case])
    path, hf = make_hf_checkpoint(tmp_path / case, seed=3, **kwargs)
    model = load_model(path, device="cpu")
    assert isinstance(model, VJEPA2) and model.config.num_attention_heads == hf.config.num_attention_heads
    x = random_pixel_values(model, batch=2)
    compare(case, model, hf, x, x)


def test_parity_vit_l_width_at_256px(tmp_path):
    """The published ViT-L block (1024 wide, 16 heads of 64: rotary section 20) at the real 256 px grid (16 x 16),
    two blocks, 4 frames (512 tokens): the geometry the tiny cases cannot show."""
    path, hf = make_hf_checkpoint(tmp_path / "vitl", kind="classification", seed=4, hidden_size=1024,
                                  num_attention_heads=16, num_hidden_layers=2, mlp_ratio=4.0, crop_size=256,
                                  num_pooler_layers=1)
    model = load_model(path, device="cpu")
    assert model.config.rope_section == 20 and model.config.grid == (2, 16, 16)
    x = random_pixel_values(model, batch=1)
    compare("vit-l-width-256px-2-blocks", model, hf, x, x)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """64 px tiny checkpoints (N = 2 x 4 x 4 = 32 tokens): an encoder and a classifier, {kind: (model, hf)}."""
    root = tmp_path_factory.mktemp("vjepa2")
    out = {}
    for kind in ("base", "classification"):
        path, hf = make_hf_checkpoint(root / kind, kind=kind, seed=5, crop_size=64)
        out[kind] = (load_model(path, device="cpu"), hf)
    return out


@pytest.mark.parametrize("kind", ["base", "classification"])
def test_keep_mask_rows_with_different_counts(checkpoints, kind):
    """Ragged keep masks: every row at its own kept tokens' positions, equal to transformers' position mask."""
    model, hf = checkpoints[kind]
    N = model.config.num_tokens
    g = torch.Generator().manual_seed(1)
    keep = torch.zeros(4, N, dtype=torch.bool)
    for row, count in enumerate((N, 13, 1, 5)):
        keep[row, torch.randperm(N, generator=g)[:count]] = True
    x = random_pixel_values(model, batch=4, seed=2)
    compare(f"keep-mask-varlen-{kind}", model, hf, x, x, keep=keep, hf_keep=keep)
    assert model(x, keep=keep).cu_seqlens.tolist() == [0, N, N + 13, N + 14, N + 19]


@pytest.mark.parametrize("policy", ["tube:0.5", "tube:0.3:random:3", "motion:0.4", "motion:t=0.5"])
@pytest.mark.parametrize("kind", ["base", "classification"])
def test_keep_policies_match_transformers_on_the_kept_set(checkpoints, kind, policy):
    model, hf = checkpoints[kind]
    g = torch.Generator().manual_seed(4)
    frames = torch.randint(0, 256, (3, 4, 64, 64, 3), dtype=torch.uint8, generator=g)
    frames[1, 2:] = frames[1, :2]  # clip 1 is static after the first slice: motion keeps less of it
    keep = parse_keep(policy).mask(frames, model.config)
    compare(f"keep-policy-{policy}-{kind}", model, hf, frames, to_pixel_values(frames, model.config), keep=policy,
            hf_keep=keep)


def test_kept_tokens_match_the_oracle(checkpoints):
    """The independent oracle agrees too (its rotary written from the formula), ragged rows included."""
    model, hf = checkpoints["classification"]
    oracle = ReferenceVJEPA2.from_hf(hf)
    keep = torch.zeros(3, 32, dtype=torch.bool)
    keep[0] = True
    keep[1, [3, 8, 30]] = True
    keep[2, 17] = True
    x = random_pixel_values(model, batch=3, seed=6)
    out = model(x, keep=keep, return_tokens=True)
    want = oracle.forward_kept(x, keep)
    assert out.cu_seqlens.tolist() == want["cu_seqlens"].tolist()
    for field, ours in (("tokens", out.tokens), ("embedding", out.embeddings), ("logits", out.logits)):
        err = rel_err(ours, want[field])
        print(f"oracle {field}: {err:.2e}")
        assert err <= TOL


def test_uint8_frames_use_the_processor_mean_std_and_resize(tmp_path):
    path, hf = make_hf_checkpoint(tmp_path / "pre", kind="classification", seed=7)
    model = load_model(path, device="cpu")
    assert model.config.image_mean == tuple(IMAGENET["image_mean"]) and model.config.resize_size == 36
    frames = torch.randint(0, 256, (2, 4, 32, 32, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(5))
    compare("uint8-frames-imagenet-mean-std", model, hf, frames, to_pixel_values(frames, model.config))


def test_other_frame_counts_run_with_the_same_weights(tmp_path):
    """Rotary positions take any frame count: a checkpoint trained with 4 frames per clip, loaded with
    config={"num_frames": 8}, equals transformers fed 8 frames."""
    path, hf = make_hf_checkpoint(tmp_path / "frames", kind="base", seed=8)
    model = load_model(path, device="cpu", config={"num_frames": 8})
    assert model.config.num_frames == 8 and model.config.frames_per_clip == 4 and model.config.num_tokens == 16
    x = random_pixel_values(model, batch=2)
    compare("8-frames-of-a-4-frame-checkpoint", model, hf, x, x)


def test_wrong_settings_are_caught(tmp_path):
    """The tolerance has teeth: a wrong eps, zeroed key biases and positions taken from the packed order each miss
    transformers by far more than TOL (key biases scaled by 30 first, as in test_vjepa2_oracle.py). With N(0, 0.02)
    weights attention is nearly uniform, so position and key-bias mistakes move the tokens by ~5e-3, 40-50x TOL."""
    path, hf = make_hf_checkpoint(tmp_path / "m", kind="base", seed=9, crop_size=64)
    with torch.no_grad():
        for layer in hf.encoder.layer:
            layer.attention.key.bias.mul_(30.0)
    hf.save_pretrained(path)
    x = random_pixel_values(load_model(path, device="cpu"), batch=2)
    keep = torch.zeros(2, 32, dtype=torch.bool)
    keep[:, [2, 7, 11, 19, 31]] = True
    want = hf_reference(hf, x, keep)["tokens"]
    assert rel_err(load_model(path, device="cpu")(x, keep=keep, return_tokens=True).tokens, want) <= TOL
    wrong_eps = load_model(path, device="cpu", config={"layer_norm_eps": 1e-1})
    assert rel_err(wrong_eps(x, keep=keep, return_tokens=True).tokens, want) > 100 * TOL
    no_key_bias = load_model(path, device="cpu")
    D = no_key_bias.config.hidden_size
    with torch.no_grad():
        for block in no_key_bias.blocks:
            block.attn.wqkv.bias[D : 2 * D].zero_()
    assert rel_err(no_key_bias(x, keep=keep, return_tokens=True).tokens, want) > 10 * TOL  # measured 4e-3
    packed_order = load_model(path, device="cpu")
    import vmae_fast.vjepa2 as vjepa2_module

    real = vjepa2_module.token_positions
    try:
        vjepa2_module.token_positions = lambda ids, batch, grid, device: real(
            None if ids is None else ids % 5, batch, grid, device)
        assert rel_err(packed_order(x, keep=keep, return_tokens=True).tokens, want) > 10 * TOL  # measured 5e-3
    finally:
        vjepa2_module.token_positions = real


def test_token_positions():
    grid = (2, 2, 3)  # N = 12
    all_tokens = token_positions(None, 2, grid, torch.device("cpu"))
    assert all_tokens.dtype == torch.int32 and all_tokens.shape == (24, 3)
    assert all_tokens[:12].tolist() == [[t, h, w] for t in range(2) for h in range(2) for w in range(3)]
    assert torch.equal(all_tokens[12:], all_tokens[:12])
    kept = token_positions(torch.tensor([0, 5, 7, 12 + 11]), 2, grid, torch.device("cpu"))
    assert kept.tolist() == [[0, 0, 0], [0, 1, 2], [1, 0, 1], [1, 1, 2]]


def test_outputs_description_and_shapes(checkpoints):
    model, _ = checkpoints["base"]
    x = random_pixel_values(model, batch=2)
    out = model(x)
    assert out.tokens is None and out.embeddings.shape == (2, 64) and out.logits is None
    assert out.cu_seqlens.tolist() == [0, 32, 64]
    assert torch.equal(model(x, keep="all").embeddings, out.embeddings)
    d = model.describe()
    assert d["architecture"] == "vjepa2" and d["config"]["architecture"] == "vjepa2"
    assert d["preprocessing"] == {"image_size": 64, "resize_shortest_edge": 73, "mean": IMAGENET["image_mean"],
                                  "std": IMAGENET["image_std"], "resize": "shortest_edge", "crop": "center",
                                  "interpolation": "bilinear", "processor": "VJEPA2VideoProcessor"}
    assert d["embedding"].startswith("mean of the encoder's last-layer tokens")
    json.dumps(d)
    classifier, _ = checkpoints["classification"]
    assert classifier.describe()["embedding"].startswith("the attentive pooler's output")
    assert classifier.describe()["id2label"] == {str(i): f"class_{i}" for i in range(5)}


def test_vjepa2_config_override_object_and_processor_crop_warning(tmp_path):
    path, hf = make_hf_checkpoint(tmp_path / "w", kind="base", seed=10, processor={
        "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "crop_size": 40, "size": {"shortest_edge": 44}})
    with pytest.warns(UserWarning, match="processor crop_size 40 differs from the model's crop_size 32"):
        model = load_model(path, device="cpu")
    assert model.config.image_mean == (0.5, 0.5, 0.5) and model.config.resize_size == 44
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        own = load_model(path, device="cpu", config=model.config.replace(layer_norm_eps=1e-3))
    assert own.config.layer_norm_eps == 1e-3
    with pytest.raises(ValueError, match="config names architecture 'videomae' but the checkpoint is a 'vjepa2'"):
        load_model(path, device="cpu", config={"architecture": "videomae"})
    with pytest.raises(TypeError, match="must be a VJEPA2Config or a dict"):
        load_model(path, device="cpu", config=[("num_frames", 8)])


def test_config_presets_and_from_hf():
    transformers = pytest.importorskip("transformers")
    g = VJEPA2Config.from_name("vjepa2-vitg-384")
    assert (g.hidden_size, g.num_attention_heads, g.head_dim, g.intermediate_size, g.image_size, g.resize_size) == \
        (1408, 22, 64, 6144, 384, 438)
    assert g.rope_section == 20 and g.num_tokens == 32 * 24 * 24
    h = VJEPA2Config.from_name("vjepa2-vith")
    assert (h.head_dim, h.rope_section, h.pooler_intermediate_size) == (80, 26, 5120)
    # transformers' own ViT-g config (mlp_ratio 48/11, crop 384) read through config.json's dict
    hf = transformers.VJEPA2Config(hidden_size=1408, num_attention_heads=22, num_hidden_layers=40, mlp_ratio=48 / 11,
                                   crop_size=384, frames_per_clip=64).to_dict()
    ours = VJEPA2Config.from_hf(hf).replace(num_labels=0, id2label=None)  # (HF's default id2label: 2 labels)
    assert ours.intermediate_size == 6144 and ours.pooler_intermediate_size == 5632 and ours.num_frames == 64
    assert ours == VJEPA2Config.from_name("vjepa2-vitg-384", pooler_intermediate_size=5632)
    with pytest.raises(ValueError, match="model_type 'videomae', not 'vjepa2'"):
        VJEPA2Config.from_hf({"model_type": "videomae"})
    with pytest.raises(ValueError, match="unknown V-JEPA 2 preset 'vjepa2-vitb'"):
        VJEPA2Config.from_name("vjepa2-vitb")


@pytest.mark.parametrize("kwargs, message", [
    ({"num_frames": 5}, "num_frames 5 is not divisible by tubelet_size 2"),
    ({"hidden_size": 60, "num_attention_heads": 4, "intermediate_size": 8}, "head dim 15 .* must be even"),
    ({"image_size": 40}, "image_size 40 is not divisible by patch_size 16"),
    ({"resize_size": 20}, "resize_size 20 .* must be >= image_size 32"),
    ({"num_labels": -1}, "num_labels must be an int >= 0"),
    ({"rope_theta": 0.5}, "rope_theta must be a finite number > 1"),
    ({"image_std": (0.5, 0.0, 0.5)}, "image_std must be > 0"),
])
def test_config_validation(kwargs, message):
    base = {"image_size": 32, "hidden_size": 64, "num_attention_heads": 4, "intermediate_size": 128}
    with pytest.raises(ValueError, match=message):
        VJEPA2Config(**{**base, **kwargs})


def test_random_presets_are_deterministic_and_described():
    tiny = {"image_size": 32, "num_frames": 4, "num_hidden_layers": 1}
    a = load_model("random:vjepa2-vitl", device="cpu", config=tiny)
    b = load_model("random:vjepa2-vitl:0", device="cpu", config={**tiny, "architecture": "vjepa2"})
    assert isinstance(a, VJEPA2) and a.config.hidden_size == 1024 and a.source == "random:vjepa2-vitl"
    x = torch.randn(1, 4, 3, 32, 32)
    assert torch.equal(a(x).embeddings, b(x).embeddings)
    c = load_model("random:vjepa2-vitl:1", device="cpu", config=tiny)
    assert not torch.equal(a(x).embeddings, c(x).embeddings)
    assert a.describe()["weights_sha256"] != c.describe()["weights_sha256"]
    with pytest.raises(ValueError, match="unknown VideoMAE preset 'vjepa2-vitb'.*V-JEPA 2 preset"):
        load_model("random:vjepa2-vitb", device="cpu")


def test_with_num_frames_shares_the_weights(checkpoints):
    """What `extract --clip-frames` uses: a V-JEPA 2 copy for another frame count, same parameters, same results
    as loading with config={"num_frames": ...}; the original is untouched; VideoMAE refuses (fixed table)."""
    model, _ = checkpoints["base"]
    eight = model.with_num_frames(8)
    assert eight.config.num_frames == 8 and model.config.num_frames == 4 and model.with_num_frames(4) is model
    assert eight.blocks[0].attn.wqkv.weight is model.blocks[0].attn.wqkv.weight
    x = torch.randn(1, 8, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    assert eight(x).embeddings.shape == (1, 64) and eight(x).cu_seqlens.tolist() == [0, 64]
    with pytest.raises(ValueError, match="num_frames 5 is not divisible by tubelet_size 2"):
        model.with_num_frames(5)
    videomae = load_model("random:small", device="cpu", config={"image_size": 32, "num_frames": 4,
                                                                "num_hidden_layers": 1})
    with pytest.raises(ValueError, match="takes 4 frames per clip \\(its position table is fixed\\), not 8"):
        videomae.with_num_frames(8)
