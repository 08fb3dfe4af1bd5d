"""The V-JEPA 2 oracle (tests/helpers/reference_vjepa2.py) against transformers' VJEPA2Model /
VJEPA2ForVideoClassification, fp32 on CPU with the same randomized weights.

The two differ in summation order (einsum + written-out softmax vs SDPA, LayerNorm from its formula, rotary angles in
float64 vs float32), so the difference is fp32 rounding: measured below 2e-6 on these configs (`-s` prints them);
TOL = 1e-5 as for the VideoMAE oracle, while a rotary convention off by one column, a dropped key bias or positions
taken from the packed index instead of the token's own miss it by orders of magnitude (the last tests).
"""

from __future__ import annotations

import pytest
import torch

from tests.helpers.reference_vjepa2 import ReferenceVJEPA2, grid_positions, rotary
from tests.helpers.vjepa2_checkpoints import hf_encoder_tokens, make_hf_model

TOL = 1e-5


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    assert got.shape == want.shape, f"shape {tuple(got.shape)} != {tuple(want.shape)}"
    return ((got - want).abs().max() / want.abs().max()).item()


def check(name: str, got: torch.Tensor, want: torch.Tensor, tol: float = TOL) -> float:
    err = rel_err(got, want)
    where = tuple(i.item() for i in torch.unravel_index((got - want).abs().argmax(), got.shape))
    print(f"{name}: rel max err {err:.2e} at {where}")
    assert err <= tol, f"{name}: rel max err {err:.2e} > {tol:.0e} at {where}"
    return err


def pixel_values(hf, batch: int = 2, seed: int = 0) -> torch.Tensor:
    c = hf.config
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, c.frames_per_clip, 3, c.crop_size, c.crop_size, generator=g)


CASES = {
    # head dim 16: rotary section 4, 12 columns rotated, 4 passed through
    "tiny-d16": {},
    # head dims of the published encoders: 64 (ViT-L/g), 80 (ViT-H), and 88 (awkward: section 28, 4 passed through)
    "d64-grid4x4": {"hidden_size": 128, "num_attention_heads": 2, "crop_size": 64},
    "d80": {"hidden_size": 160, "num_attention_heads": 2, "num_hidden_layers": 1},
    "d88-tubelet1": {"hidden_size": 176, "num_attention_heads": 2, "num_hidden_layers": 1, "tubelet_size": 1,
                     "frames_per_clip": 3},
    "eps1e-5": {"layer_norm_eps": 1e-5},
}


# the encoder on every geometry, the classifier on two
PAIRS = [(case, "base") for case in CASES] + [("tiny-d16", "classification"), ("d64-grid4x4", "classification")]


@pytest.mark.parametrize("case, kind", PAIRS, ids=[f"{c}-{k}" for c, k in PAIRS])
def test_oracle_matches_transformers(case, kind):
    hf = make_hf_model(kind=kind, seed=1, **CASES[case])
    x = pixel_values(hf)
    got = ReferenceVJEPA2.from_hf(hf)(x)
    check(f"{case} {kind} tokens", got["tokens"], hf_encoder_tokens(hf, x))
    if kind == "classification":
        with torch.no_grad():
            check(f"{case} logits", got["logits"], hf(x).logits)
    else:
        with torch.no_grad():
            out = hf(x, skip_predictor=True)
        check(f"{case} embedding = mean of last_hidden_state", got["embedding"], out.last_hidden_state.mean(1))


def test_kept_tokens_match_transformers_position_mask():
    """Clips keeping a subset of tokens: the oracle (each kept token at its own (t, h, w)) equals transformers'
    encoder layers run on the gathered embeddings with position_mask = the kept ids (how its predictor and Meta's
    masked encoder place tokens). Rows keep different subsets of the same size (transformers needs equal counts)."""
    hf = make_hf_model(kind="base", seed=2, crop_size=64, frames_per_clip=4)  # N = 2 x 4 x 4 = 32
    x = pixel_values(hf, batch=3)
    g = torch.Generator().manual_seed(3)
    kept = torch.stack([torch.randperm(32, generator=g)[:11].sort().values for _ in range(3)])  # (3, 11)
    got = ReferenceVJEPA2.from_hf(hf)(x, kept)
    check("kept tokens", got["tokens"], hf_encoder_tokens(hf, x, kept))


def test_rotary_formula_matches_transformers_function():
    """The oracle's column-by-column rotary equals transformers' rotate_queries_or_keys applied per section (TOL:
    transformers rounds angles of up to 31 rad to fp32, ~2e-6 rad; the oracle's are float64 rounded once)."""
    from transformers.models.vjepa2.modeling_vjepa2 import rotate_queries_or_keys

    for d in (16, 64, 80, 88):
        S = 2 * ((d // 3) // 2)
        g = torch.Generator().manual_seed(d)
        x = torch.randn(1, 2, 40, d, generator=g)
        positions = torch.randint(0, 32, (40, 3), generator=g)
        want = torch.cat([rotate_queries_or_keys(x[..., a * S:(a + 1) * S], positions[:, a]) for a in range(3)]
                         + [x[..., 3 * S:]], dim=-1)
        check(f"rotary d={d}", rotary(x, positions), want)


def test_wrong_conventions_are_caught(monkeypatch):
    """The tolerance has teeth: positions taken from the packed order (0..n-1) instead of the kept tokens' own, and
    a dropped key bias (which rotary makes position-dependent, so it matters), both move the tokens far past TOL.
    With the N(0, 0.02) weights k is small and a N(0, 0.1) key bias moves the output by only ~1e-4: the biases are
    scaled by 30 (as test_oracle.py does for VideoMAE's q/v biases) while parity must still hold."""
    import tests.helpers.reference_vjepa2 as oracle

    hf = make_hf_model(kind="base", seed=4, crop_size=64, frames_per_clip=4)
    with torch.no_grad():
        for layer in hf.encoder.layer:
            layer.attention.key.bias.mul_(30.0)
    x = pixel_values(hf, batch=1)
    kept = torch.tensor([[1, 6, 9, 17, 30]])
    want = hf_encoder_tokens(hf, x, kept)
    assert rel_err(ReferenceVJEPA2.from_hf(hf)(x, kept)["tokens"], want) <= TOL
    no_key_bias = ReferenceVJEPA2.from_hf(hf)
    with torch.no_grad():
        for block in no_key_bias.blocks:
            block.k.bias.zero_()
    err = rel_err(no_key_bias(x, kept)["tokens"], want)
    print(f"key bias dropped: rel max err {err:.2e}")
    assert err > 100 * TOL
    real = oracle.grid_positions
    monkeypatch.setattr(oracle, "grid_positions", lambda ids, n_h, n_w: real(torch.arange(len(ids)), n_h, n_w))
    err = rel_err(ReferenceVJEPA2.from_hf(hf)(x, kept)["tokens"], want)
    print(f"positions from the packed order: rel max err {err:.2e}")
    assert err > 100 * TOL


def test_grid_positions():
    assert grid_positions(torch.tensor([0, 5, 17, 31]), 4, 4).tolist() == [[0, 0, 0], [0, 1, 1], [1, 0, 1], [1, 3, 3]]
