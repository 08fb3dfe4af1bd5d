"""tools/gpu_check.py: the prepared GPU check, run as CI can run it (--dry-run: every stage at tiny sizes on CPU, each
in its own process), and its guarantees: rows written as they are measured, a stage over its budget stopped without
losing the others' rows, a summary that checks the DESIGN targets."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "tools" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def read(directory: Path) -> list[dict]:
    return [json.loads(line) for line in (directory / "rows.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check")
    copy = out / "copied"
    result = subprocess.run([sys.executable, str(ROOT / "tools" / "gpu_check.py"), "--dry-run", "--out", str(out),
                             "--copy-to", str(copy)], capture_output=True, text=True, timeout=900, check=False)
    return out, copy, result


def test_dry_run_runs_every_stage(gpu_check, dry_run):
    out, copy, result = dry_run
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:] + (out / "log.txt").read_text()[-4000:]
    rows = read(out)
    statuses = {r["stage"]: r["status"] for r in rows if r.get("kind") == "status"}
    assert statuses == dict.fromkeys(gpu_check.BY_NAME, "ok")
    for r in rows:
        if r.get("kind") not in ("status", "test", "collected"):  # measured rows carry where they were measured
            for key in ("stage", "device", "torch", "triton", "python", "commit"):
                assert key in r, f"{key} missing from {r}"
    tests = [r for r in rows if r.get("kind") == "test"]
    assert tests and all(r["outcome"] == "passed" for r in tests)
    assert {r["op"] for r in rows if "op" in r} >= {"varlen_attention", "layer_norm", "mean_pool_layernorm",
                                                      "patch_embed", "model_share"}
    model = [r for r in rows if r.get("stage") == "model" and "provider" in r]
    assert {(r["provider"], r["keep"]) for r in model} == {("vmae_fast", 1.0), ("vmae_fast", 0.5),
                                                           ("transformers-sdpa", 1.0)}
    half = next(r for r in model if r["keep"] == 0.5)
    assert half["speedup_vs_sdpa"] is None and half["speedup_vs_all_tokens"] > 0  # equal work only
    vjepa2 = [r for r in rows if r.get("stage") == "vjepa2" and "provider" in r]  # V-JEPA 2 vs transformers' VJEPA2
    assert {(r["model"], r["provider"], r["keep"]) for r in vjepa2} == {
        ("vjepa2-tiny", "vmae_fast", 1.0), ("vjepa2-tiny", "vmae_fast", 0.5), ("vjepa2-tiny", "transformers-sdpa", 1.0)}
    assert all(r["clips_per_s"] > 0 and r["cosine_vs_fp32"] > 1 - 1e-6 for r in vjepa2), vjepa2
    assert next(r for r in vjepa2 if r["provider"] == "vmae_fast" and r["keep"] == 1.0)["cosine_reference"] == \
        "transformers-fp32"
    assert any(r.get("kind") == "profile" for r in rows)
    assert any(r.get("provider") == "torch-compile" and r.get("clips_per_s") for r in rows)
    skipped = [r for r in rows if r.get("kind") == "skipped"]
    assert any(r["what"] == "vmae_fast-cudagraph" and "GPU" in r["reason"] for r in skipped)
    summary = (out / "summary.md").read_text()
    assert "Dry run on CPU" in summary and "## Targets" in summary and "## Kernel tests" in summary
    assert all(f"| {name} | ok |" in summary for name in gpu_check.BY_NAME)
    for name in gpu_check.FILES:  # --copy-to: the same files, after every stage
        assert (copy / name).read_text() == (out / name).read_text()


def test_a_stage_over_budget_is_stopped_and_the_rest_still_run(tmp_path):
    """norms gets 2 s: stopped (its rows so far kept), the next stage runs, the summary and exit status say so."""
    start = time.monotonic()
    result = subprocess.run([sys.executable, str(ROOT / "tools" / "gpu_check.py"), "--dry-run", "--out", str(tmp_path),
                             "--only", "norms,env", "--budget", "norms=2"], capture_output=True, text=True,
                            timeout=300, check=False)
    assert result.returncode == 1
    rows = read(tmp_path)
    statuses = {r["stage"]: r["status"] for r in rows if r.get("kind") == "status"}
    assert statuses == {"norms": "timeout", "env": "ok"}
    assert any(r.get("kind") == "env" for r in rows)
    assert "| norms | timeout |" in (tmp_path / "summary.md").read_text()
    assert "stopped after its budget of 2 s" in (tmp_path / "log.txt").read_text()
    assert time.monotonic() - start < 120


def test_run_child_stops_the_whole_process_group(gpu_check, tmp_path):
    """A budget overrun stops the stage and whatever it started (pytest workers, say)."""
    marker = tmp_path / "grandchild-alive"
    (tmp_path / "grandchild.py").write_text(f"import time\ntime.sleep(3)\nopen({str(marker)!r}, 'w').write('x')\n")
    script = tmp_path / "stage.py"
    script.write_text(f"import subprocess, sys, time\nsubprocess.Popen([sys.executable, "
                      f"{str(tmp_path / 'grandchild.py')!r}])\ntime.sleep(60)\n")
    status, code = gpu_check.run_child([sys.executable, str(script)], 1.5, tmp_path / "log.txt")
    assert (status, code) == ("timeout", None)
    time.sleep(4)
    assert not marker.exists(), "the grandchild outlived the stopped stage"
    assert gpu_check.run_child([sys.executable, "-c", "raise SystemExit(3)"], 30, tmp_path / "log.txt") == ("failed", 3)


def test_targets_read_the_rows_that_measure_them(gpu_check):
    rows = [{"op": "varlen_attention", "provider": "triton", "dtype": "bfloat16", "tflops": 401.0,
             "shape": {"d": 64, "layout": "equal"}},
            {"op": "varlen_attention", "provider": "triton", "dtype": "bfloat16", "tflops": 999.0,
             "shape": {"d": 64, "layout": "ragged"}},  # not the target's shape
            {"stage": "model", "provider": "vmae_fast", "batch": 64, "keep": 1.0, "clips_per_s": 1500.0,
             "speedup_vs_sdpa": 1.4, "dtype": "bfloat16", "cosine_vs_fp32": 0.9995},
            {"stage": "model", "provider": "vmae_fast", "batch": 64, "keep": 0.5, "speedup_vs_all_tokens": 1.9,
             "dtype": "bfloat16", "cosine_vs_fp32": 0.9991}]
    got = gpu_check.measured_targets(rows)
    names = [t[0] for t in gpu_check.TARGETS]
    assert [got[n] for n in names] == [401.0, 1500.0, 1.4, None, 1.9, 0.9991]


def test_bad_arguments(gpu_check):
    with pytest.raises(SystemExit):
        gpu_check.parse_args(["--only", "env,warp-drive"])
    with pytest.raises(SystemExit):
        gpu_check.parse_args(["--budget", "model=soon"])
    args = gpu_check.parse_args(["--only", "model, compile", "--budget", "model=12.5"])
    assert args.names == ["model", "compile"] and args.budgets == {"model": 12.5}
    assert sum(s.budget_s for s in gpu_check.STAGES) <= 540  # the GPU budgets fit the 9 minutes
