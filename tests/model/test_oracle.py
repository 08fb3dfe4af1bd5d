"""The oracle (tests/helpers/reference_videomae.py) against transformers' VideoMAEModel /
VideoMAEForVideoClassification.

Both sides run in fp32 on CPU with the same randomized weights (tests/helpers/hf_checkpoints.py). They differ only in
summation order (einsum + written-out softmax vs SDPA/matmul, LayerNorm from its formula vs the fused op, Conv3d vs
the same conv), so the difference is fp32 rounding: unit roundoff 6e-8, growing roughly with sqrt(reduction length)
per GEMM and with depth. Measured worst case is about 5e-7 (ViT-B, 12 layers, 1568 tokens); TOL = 1e-5 leaves ~20x
headroom while a dropped q or v bias moves the output 100x past it (see test_dropped_qv_bias_is_caught).
"""

from __future__ import annotations

import pytest
import torch

from tests.helpers.hf_checkpoints import make_hf_model
from tests.helpers.reference_videomae import ReferenceVideoMAE, frames_to_pixel_values, sincos_position_table

TOL = 1e-5


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    """max |got - want| / max |want| (a relative max error that stays meaningful where want crosses zero)."""
    assert got.shape == want.shape, f"shape {tuple(got.shape)} != {tuple(want.shape)}"
    return ((got - want).abs().max() / want.abs().max()).item()


def check(name: str, got: torch.Tensor, want: torch.Tensor, tol: float = TOL) -> float:
    err = rel_err(got, want)
    where = torch.unravel_index((got - want).abs().argmax(), got.shape)
    print(f"{name}: rel max err {err:.2e} at {tuple(i.item() for i in where)}")
    assert err <= tol, f"{name}: rel max err {err:.2e} > {tol:.0e} at {tuple(i.item() for i in where)}"
    return err


def hf_outputs(hf, pixel_values, bool_masked_pos=None) -> dict:
    """tokens / embedding / logits as transformers defines them, from its own modules."""
    with torch.no_grad():
        encoder = hf.videomae if hasattr(hf, "videomae") else hf
        tokens = encoder(pixel_values, bool_masked_pos=bool_masked_pos).last_hidden_state
        fc_norm = getattr(hf, "fc_norm", None)
        embedding = fc_norm(tokens.mean(1)) if fc_norm is not None else tokens.mean(1)
        logits = None
        if hasattr(hf, "classifier"):
            logits = hf(pixel_values, bool_masked_pos=bool_masked_pos).logits
    return {"tokens": tokens, "embedding": embedding, "logits": logits}


def compare(hf, pixel_values, bool_masked_pos=None, label=""):
    ref = ReferenceVideoMAE.from_hf(hf)
    want = hf_outputs(hf, pixel_values, bool_masked_pos)
    got = ref(pixel_values, bool_masked_pos)
    errs = {key: check(f"{label} {key}", got[key], want[key]) for key in ("tokens", "embedding")}
    if want["logits"] is not None:
        errs["logits"] = check(f"{label} logits", got["logits"], want["logits"])
    else:
        assert got["logits"] is None
    return errs


TINY_CASES = {
    "cls-meanpool-eps1e-12": {"kind": "classification", "use_mean_pooling": True, "layer_norm_eps": 1e-12},
    "cls-firsttoken-eps1e-6": {"kind": "classification", "use_mean_pooling": False, "layer_norm_eps": 1e-6},
    "base-meanpool-eps1e-6": {"kind": "base", "use_mean_pooling": True, "layer_norm_eps": 1e-6},
    "base-layernorm-eps1e-12": {"kind": "base", "use_mean_pooling": False, "layer_norm_eps": 1e-12},
    "cls-no-qv-bias": {"kind": "classification", "qkv_bias": False},
    "base-tubelet1-48px": {"kind": "base", "image_size": 48, "num_frames": 3, "tubelet_size": 1,
                           "use_mean_pooling": False},
    # HF small checkpoints: 384 wide, 16 heads of 24 (the original ViT-S uses 6 heads of 64)
    "hf-small-layout": {"kind": "classification", "hidden_size": 384, "num_attention_heads": 16,
                        "intermediate_size": 1536, "num_hidden_layers": 2},
}


@pytest.mark.parametrize("case", list(TINY_CASES), ids=list(TINY_CASES))
def test_oracle_matches_transformers_tiny(case):
    options = dict(TINY_CASES[case])
    hf = make_hf_model(seed=1, **options)
    cfg = hf.config
    torch.manual_seed(0)
    pixel_values = torch.randn(2, cfg.num_frames, 3, cfg.image_size, cfg.image_size)
    compare(hf, pixel_values, label=case)


@pytest.mark.parametrize("kind", ["base", "classification"])
def test_oracle_matches_transformers_bool_masked_pos(kind):
    hf = make_hf_model(kind=kind, seed=2, num_frames=8)  # N = 4 * 2 * 2 = 16 tokens per clip
    N = 16
    g = torch.Generator().manual_seed(0)
    pixel_values = torch.randn(3, 8, 3, 32, 32, generator=g)
    # every row masks 10 of 16 (HF requires equal counts), each row at different positions
    bool_masked_pos = torch.zeros(3, N, dtype=torch.bool)
    for b in range(3):
        bool_masked_pos[b, torch.randperm(N, generator=g)[:10]] = True
    errs = compare(hf, pixel_values, bool_masked_pos, label=f"masked-{kind}")
    assert ReferenceVideoMAE.from_hf(hf)(pixel_values, bool_masked_pos)["tokens"].shape == (3, 6, 64)
    assert max(errs.values()) <= TOL


def test_forward_kept_ragged_rows_equal_transformers_per_row():
    """forward_kept (the oracle for vmae_fast's ragged keep masks) = transformers run on each row alone."""
    hf = make_hf_model(kind="classification", seed=3, num_frames=8)
    ref = ReferenceVideoMAE.from_hf(hf)
    g = torch.Generator().manual_seed(1)
    pixel_values = torch.randn(3, 8, 3, 32, 32, generator=g)
    keep = torch.zeros(3, 16, dtype=torch.bool)
    keep[0] = True  # all
    keep[1, [0, 5, 9]] = True
    keep[2, 7] = True  # a single token
    got = ref.forward_kept(pixel_values, keep)
    assert got["cu_seqlens"].tolist() == [0, 16, 19, 20]
    for b in range(3):
        want = hf_outputs(hf, pixel_values[b:b + 1], ~keep[b:b + 1])
        a, e = got["cu_seqlens"][b].item(), got["cu_seqlens"][b + 1].item()
        check(f"ragged row {b} tokens", got["tokens"][a:e], want["tokens"][0])
        check(f"ragged row {b} logits", got["logits"][b:b + 1], want["logits"])


def test_oracle_matches_transformers_vit_base_full():
    """The real ViT-B geometry: 16 frames of 224x224, 1568 tokens, 12 layers of 768 (one clip to stay quick)."""
    hf = make_hf_model(kind="base", seed=4, image_size=224, patch_size=16, num_frames=16, tubelet_size=2,
                       hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                       use_mean_pooling=False, layer_norm_eps=1e-6)
    torch.manual_seed(0)
    pixel_values = torch.randn(1, 16, 3, 224, 224)
    compare(hf, pixel_values, label="vit-base")


def test_dropped_qv_bias_is_caught():
    """Zeroing q_bias or v_bias in the oracle must move its output far past TOL, or the parity tests prove nothing.
    The q bias only shifts attention scores by q_bias . k, and k is small with N(0, 0.02) weights: with the N(0, 0.1)
    biases of hf_checkpoints dropping it moves the output by only ~1e-4 (10x TOL, also the tolerance of the model
    parity tests). Scaling the biases by 30 (to N(0, 3)) makes the effect ~3e-3 while parity must still hold."""
    hf = make_hf_model(kind="classification", seed=5)
    with torch.no_grad():
        for layer in hf.videomae.encoder.layer:
            layer.attention.attention.query.bias.mul_(30.0)
            layer.attention.attention.value.bias.mul_(30.0)
    torch.manual_seed(0)
    pixel_values = torch.randn(2, 4, 3, 32, 32)
    want = hf_outputs(hf, pixel_values)
    check("scaled-bias tokens", ReferenceVideoMAE.from_hf(hf)(pixel_values)["tokens"], want["tokens"])
    for name in ("q", "v"):
        ref = ReferenceVideoMAE.from_hf(hf)
        with torch.no_grad():
            for block in ref.blocks:
                getattr(block, name).bias.zero_()
        err = rel_err(ref(pixel_values)["tokens"], want["tokens"])
        print(f"{name}_bias dropped: rel max err {err:.2e}")
        assert err > 100 * TOL, f"dropping {name}_bias changed the output by only {err:.2e}"


def test_loader_accepts_transformers_4x_spelling_and_saved_dirs(tmp_path):
    """q_bias/v_bias (4.x) and query.bias/value.bias (>= 5.18) give identical weights; so do safetensors and .bin."""
    hf = make_hf_model(kind="classification", seed=6)
    torch.manual_seed(0)
    pixel_values = torch.randn(1, 4, 3, 32, 32)
    want = ReferenceVideoMAE.from_hf(hf)(pixel_values)
    old = {k.replace("attention.attention.query.bias", "attention.attention.q_bias")
            .replace("attention.attention.value.bias", "attention.attention.v_bias"): v
           for k, v in hf.state_dict().items()}
    assert any(k.endswith("q_bias") for k in old)
    ref_old = ReferenceVideoMAE.from_hf(hf)
    for p in ref_old.parameters():
        p.data.zero_()
    got = ref_old.load_hf_state_dict(old)(pixel_values)
    assert torch.equal(got["logits"], want["logits"])
    for safe in (True, False):
        hf.save_pretrained(tmp_path / str(safe), safe_serialization=safe)
        got = ReferenceVideoMAE.from_hf(tmp_path / str(safe))(pixel_values)
        assert torch.equal(got["tokens"], want["tokens"]) and torch.equal(got["logits"], want["logits"])


def test_loader_rejects_missing_unexpected_and_misshaped_keys():
    hf = make_hf_model(kind="classification", seed=7)
    sd = hf.state_dict()
    ref = ReferenceVideoMAE.from_hf(hf)
    missing = {k: v for k, v in sd.items() if not k.endswith("layer.1.output.dense.bias")}
    with pytest.raises(KeyError, match="layer.1.output.dense.bias"):
        ref.load_hf_state_dict(missing)
    with pytest.raises(KeyError, match="unexpected"):
        ref.load_hf_state_dict({**sd, "videomae.extra.weight": torch.zeros(1)})
    bad = dict(sd)
    bad["classifier.weight"] = torch.zeros(3, 64)
    with pytest.raises(ValueError, match=r"classifier.weight: expected shape \(5, 64\), got \(3, 64\)"):
        ref.load_hf_state_dict(bad)


def test_position_table_matches_transformers_bit_for_bit():
    from transformers.models.videomae.modeling_videomae import get_sinusoid_encoding_table

    # d = 96, not 768: transformers builds its table in a Python loop (6 s at 1568 x 768)
    assert torch.equal(sincos_position_table(1568, 96), get_sinusoid_encoding_table(1568, 96)[0])


def test_frames_to_pixel_values():
    frames = torch.tensor([0, 255, 51], dtype=torch.uint8).view(1, 1, 1, 1, 3).expand(1, 2, 4, 4, 3)
    x = frames_to_pixel_values(frames, mean=(0.5, 0.5, 0.5), std=(0.5, 0.25, 0.2))
    assert x.shape == (1, 2, 3, 4, 4) and x.dtype == torch.float32
    assert torch.allclose(x[0, 0, :, 0, 0], torch.tensor([-1.0, 2.0, (0.2 - 0.5) / 0.2]))
    with pytest.raises(ValueError, match="expected uint8"):
        frames_to_pixel_values(frames.float(), (0.5,) * 3, (0.5,) * 3)
