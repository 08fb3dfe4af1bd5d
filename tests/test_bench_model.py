"""tools/bench_model.py: the CPU smoke run (tiny config) end to end, the row schema and the FLOP count."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REQUIRED = ("device", "torch", "triton", "cuda", "commit", "model", "dtype", "batch", "keep", "provider",
            "clips_per_s", "tflops", "cosine_vs_fp32", "peak_mem_gb")


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
        assert r["model"] == "tiny" and r["dtype"] == "float32" and r["cuda"] is None and r["peak_mem_gb"] is None
        assert r["clips_per_s"] > 0 and r["tflops"] > 0 and r["first_call_s"] > 0
        # fp32 against the fp32 reference: same weights, summation order only (tests/test_model_triton.py: ~1e-6)
        assert r["cosine_vs_fp32"] > 1 - 1e-9, r
    half = next(r for r in rows if r["provider"] == "vmae_fast" and r["keep"] == 0.5)
    assert half["kept_tokens_mean"] == 4 and half["keep_spec"] == "tube:0.5"  # 2 of 4 positions x 2 time slices
    assert next(r for r in rows if r["provider"] == "transformers-sdpa")["sdpa_backend"] != "none recorded"
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return  # the plot is optional (extra "bench"); the run must still succeed without it
    assert out.with_suffix(".png").stat().st_size > 10_000


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
