"""tools/bench_kernels.py --smoke: every op and baseline runs on CPU (Triton under TRITON_INTERPRET=1) and each JSON
row carries what a result needs to be read later."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_kernels_smoke(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("bench_kernels", ROOT / "tools" / "bench_kernels.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "kernels.json"
    assert bench.main(["--smoke", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert "wrote" in capsys.readouterr().out
    by_op = {}
    for row in rows:
        by_op.setdefault(row["op"], set()).add(row["provider"])
        for key in ("device", "torch", "triton", "cuda", "commit", "python", "dtype", "shape", "provider"):
            assert key in row, f"row lacks {key}: {row}"
        assert "error" not in row, row
        assert row["ms"] > 0 and row["first_call_ms"] > 0 and row["gbps"] > 0
    triton = {"triton"} if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0") else set()  # CPU: interpreter
    assert by_op == {
        "varlen_attention": {"sdpa-math", "sdpa-loop"} | triton,
        "layer_norm": {"torch"} | triton,
        "mean_pool_layernorm": {"torch"} | triton,
        "patch_embed": {"torch-conv3d", "torch-gather-gemm"} | triton | {"triton-pow2pad" for _ in triton},
    }
    # equal work: a keep-half row's baseline embeds the kept tokens only (no full Conv3d then a gather)
    half = {r["provider"] for r in rows if r["op"] == "patch_embed" and r["shape"]["keep"] == "half"}
    assert half == {"torch-gather-gemm"} | triton | {"triton-pow2pad" for _ in triton}
    assert all("tflops" in r for r in rows if r["op"] in ("varlen_attention", "patch_embed"))
    for r in rows:  # fp32 smoke: the Triton output agrees with the baseline it was timed against
        if r["provider"] == "triton":
            assert r["max_abs_diff"] < 1e-4, r
