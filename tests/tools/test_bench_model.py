"""tools/bench_model.py: the CPU smoke run (tiny config) end to end, the row schema and the FLOP count."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
REQUIRED = ("device", "torch", "triton", "cuda", "commit", "python", "transformers", "model", "dtype", "batch", "keep",
            "provider", "clips_per_s", "tflops", "cosine_vs_fp32", "cosine_reference", "peak_mem_gb")


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_model", ROOT / "tools" / "bench_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_smoke_run_writes_rows_and_plot(bench, tmp_path):
    out = tmp_path / "model.json"
    rows = bench.main(["--smoke", "--out", str(out)])
    assert json.loads(out.read_text()) == rows
    # tiny config, batches 1 and 2: vmae_fast at keep 1.0 and 0.5, transformers eager and SDPA at 1.0
    assert sorted((r["batch"], r["provider"], r["keep"]) for r in rows) == sorted(
        (b, p, k) for b in (1, 2) for p, k in (("vmae_fast", 1.0), ("vmae_fast", 0.5), ("transformers-eager", 1.0),
                                               ("transformers-sdpa", 1.0)))
    for r in rows:
        missing = [key for key in REQUIRED if key not in r]
        assert not missing, f"row lacks {missing}: {r}"
        assert r["model"] == "tiny" and r["dtype"] == "float32" and r["cuda"] == torch.version.cuda
        assert r["peak_mem_gb"] is None  # CPU run: no CUDA memory statistics
        assert r["clips_per_s"] > 0 and r["tflops"] > 0 and r["first_call_s"] > 0
        # fp32 against the fp32 reference: same weights, summation order only (tests/model/test_model_backends.py:
        # ~1e-6)
        assert r["cosine_vs_fp32"] > 1 - 1e-9, r
    half = next(r for r in rows if r["provider"] == "vmae_fast" and r["keep"] == 0.5)
    assert half["kept_tokens_mean"] == 4 and half["keep_spec"] == "tube:0.5"  # 2 of 4 positions x 2 time slices
    # equal work only: the kept-token row never fills the transformers speed-up columns
    assert half["speedup_vs_sdpa"] is None and half["speedup_vs_eager"] is None and half["speedup_vs_all_tokens"] > 0
    full = next(r for r in rows if r["provider"] == "vmae_fast" and r["keep"] == 1.0 and r["batch"] == half["batch"])
    assert full["speedup_vs_sdpa"] > 0 and "speedup_vs_all_tokens" not in full
    ours = "transformers-fp32" if bench.transformers_reference_ok() else "vmae_fast-fp32"  # 5.6-5.17: our own fp32
    assert {r["cosine_reference"] for r in rows if r["keep"] == 1.0 and r["provider"] == "vmae_fast"} == {ours}
    assert {r["cosine_reference"] for r in rows if r["provider"].startswith("transformers")} == {"transformers-fp32"}
    assert half["cosine_reference"] == "vmae_fast-fp32"  # transformers cannot drop tokens per clip
    assert next(r for r in rows if r["provider"] == "transformers-sdpa")["sdpa_backend"] != "none recorded"
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return  # the plot is optional (extra "bench"); the run must still succeed without it
    assert out.with_suffix(".png").stat().st_size > 10_000


def test_vjepa2_smoke_run(bench, tmp_path, monkeypatch):
    """--models vjepa2-tiny: transformers' own VJEPA2Model (randomized, save_pretrained) read by both sides; vmae_fast's
    embedding (mean of the last-layer tokens) against transformers' fp32 mean of last_hidden_state; without
    transformers the vmae_fast rows still run on random:<preset> weights."""
    rows = bench.main(["--smoke", "--models", "vjepa2-tiny", "--out", str(tmp_path / "vjepa2.json")])
    assert sorted((r["batch"], r["provider"], r["keep"]) for r in rows) == sorted(
        (b, p, k) for b in (1, 2) for p, k in (("vmae_fast", 1.0), ("vmae_fast", 0.5), ("transformers-eager", 1.0),
                                               ("transformers-sdpa", 1.0)))
    assert all(r["model"] == "vjepa2-tiny" and r["cosine_vs_fp32"] > 1 - 1e-9 for r in rows), rows
    assert {r["cosine_reference"] for r in rows if r["keep"] == 1.0} == {"transformers-fp32"}
    assert next(r for r in rows if r["keep"] == 0.5)["kept_tokens_mean"] == 4
    monkeypatch.setattr(bench, "transformers_available", lambda: False)
    alone = bench.main(["--smoke", "--models", "vjepa2-tiny", "--out", str(tmp_path / "alone.json")])
    assert {r["provider"] for r in alone} == {"vmae_fast"} and all(r["cosine_vs_fp32"] > 1 - 1e-9 for r in alone)


def test_flops_match_the_published_vit_base_count(bench):
    """VideoMAE ViT-B 16x224 is quoted at 180 G(multiply-add)s per clip; we count 2 FLOPs per multiply-add."""
    vmae_fast = bench.import_vmae_fast()
    config = vmae_fast.VideoMAEConfig.from_name("base")
    flops = bench.model_flops(config, [config.num_tokens])
    assert config.num_tokens == 1568
    assert abs(flops / 2 / 1e9 - 180) < 2, flops
    # half the tokens: linear layers halve, attention quarters
    assert bench.model_flops(config, [784]) < 0.5 * flops


def test_bad_arguments(bench):
    with pytest.raises(SystemExit):
        bench.parse_args(["--providers", "vmae_fast,nonsense"])
    with pytest.raises(SystemExit):
        bench.parse_args(["--keeps", "0"])


def test_smoke_without_transformers(bench, tmp_path, monkeypatch):
    """The GPU machine may lack transformers: the run then measures vmae_fast alone (random:<preset> weights, cosine
    against vmae_fast fp32) instead of failing."""
    monkeypatch.setattr(bench, "transformers_available", lambda: False)
    rows = bench.main(["--smoke", "--out", str(tmp_path / "model.json")])
    assert {r["provider"] for r in rows} == {"vmae_fast"} and len(rows) == 4
    assert all(r["clips_per_s"] > 0 and r["cosine_vs_fp32"] > 1 - 1e-9 for r in rows)


def test_merge_concatenates_rows_and_plots(bench, tmp_path):
    rows_a = [{"model": "tiny", "dtype": "float32", "batch": 1, "keep": 1.0, "provider": "vmae_fast",
               "clips_per_s": 10.0, "device": "cpu"}]
    rows_b = [{**rows_a[0], "batch": 2, "clips_per_s": 15.0}]
    (tmp_path / "a.json").write_text(json.dumps(rows_a))
    (tmp_path / "b.json").write_text(json.dumps(rows_b))
    out = tmp_path / "merged.json"
    merged = bench.main(["--merge", str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--out", str(out)])
    assert merged == rows_a + rows_b == json.loads(out.read_text())


def test_transformers_that_drop_qv_biases_are_a_speed_baseline_only(bench, tmp_path, monkeypatch):
    """transformers 5.6-5.17 (the GPU box has 5.17): its rows still run (speed), but vmae_fast's cosine is taken
    against vmae_fast fp32, never against a model that ignores the q/v biases."""
    monkeypatch.setattr(bench, "transformers_reference_ok", lambda: False)
    rows = bench.main(["--smoke", "--out", str(tmp_path / "model.json"), "--batches", "2"])
    refs = {(r["provider"], r["keep"]): r["cosine_reference"] for r in rows}
    assert refs == {("vmae_fast", 1.0): "vmae_fast-fp32", ("vmae_fast", 0.5): "vmae_fast-fp32",
                    ("transformers-eager", 1.0): "transformers-fp32", ("transformers-sdpa", 1.0): "transformers-fp32"}


def test_speedups_are_filled_for_equal_work_only(bench):
    rows = [{"provider": "vmae_fast", "keep": 1.0, "clips_per_s": 30.0},
            {"provider": "vmae_fast", "keep": 0.5, "clips_per_s": 60.0},
            {"provider": "vmae_fast-cudagraph", "keep": 0.5, "clips_per_s": 66.0},
            {"provider": "transformers-sdpa", "keep": 1.0, "clips_per_s": 20.0},
            {"provider": "torch-compile", "keep": 1.0, "clips_per_s": None}]  # failed: no column from it
    bench.fill_speedups(rows)
    assert rows[0]["speedup_vs_sdpa"] == 1.5 and rows[0]["speedup_vs_compile"] is None
    assert rows[1]["speedup_vs_sdpa"] is None and rows[1]["speedup_vs_all_tokens"] == 2.0
    assert rows[2]["speedup_vs_sdpa"] is None and rows[2]["speedup_vs_all_tokens"] is None  # no all-token graph row
    assert rows[3]["speedup_vs_sdpa"] == 1.0


def test_profile_shares(bench):
    """The per-op split of model time (torch profiler): categories sum to the whole, GEMMs lead on CPU."""
    vmae_fast = bench.import_vmae_fast()
    model = vmae_fast.load_model("random:small", device="cpu", config={"num_hidden_layers": 2, "image_size": 32,
                                                                      "num_frames": 4})
    frames = torch.randint(0, 256, (2, 4, 32, 32, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    rows = bench.profile_forward(model, frames, steps=2)
    assert abs(sum(r["share"] for r in rows) - 1) < 1e-9 and all(r["ms_per_forward"] > 0 for r in rows)
    names = {r["category"] for r in rows}
    assert {"GEMM (qkv, proj, MLP)", "attention", "layer_norm", "gelu"} <= names
    assert bench.op_category("_varlen_attention_kernel") == "attention"
    assert bench.op_category("_mean_layernorm_kernel") == "mean_pool + LayerNorm"
    assert bench.op_category("nvjet_tst_128x256_64x4_1x2_h_bz_coopA_NTN") == "GEMM (qkv, proj, MLP)"
    assert bench.op_category("_patch_embed_kernel") == "patch_embed"
