"""Compile patch_embed / layer_norm / mean_pool_layernorm for sm_90 (H100) without a GPU and report what ptxas and
the SASS say: registers, spill bytes, shared memory, global loads by width (count of each instruction in the SASS),
matrix instructions (HGMMA = Hopper wgmma) and their count.

    python tools/kernel_resources.py                     # needs triton's bundled ptxas/cuobjdump, no GPU
    python tools/kernel_resources.py --only patch_embed --pow2   # patch_embed, runs padded to 16 and to 2^k

Integer arguments that Triton specializes at launch (divisible by 16: strides of 224x224 frames, D = 768, ...) are
marked so here too, so the load widths match what a real launch gets. The kernels and their launch configurations
come from vmae_fast.testing.kernels (the declared internals tools may use).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ["TRITON_INTERPRET"] = "0"  # compile real kernels, not interpreter stand-ins

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
TARGET = GPUTarget("cuda", 90, 64)
BIN = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")


def resources(fn, signature: dict, constants: dict, divisible_by_16: tuple, num_warps: int, num_stages: int = 3):
    sig = {**signature, **{name: "constexpr" for name in constants}}
    names = list(sig)
    attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in divisible_by_16}
    kernel = triton.compile(ASTSource(fn, sig, constants, attrs), target=TARGET,
                            options={"num_warps": num_warps, "num_stages": num_stages})
    with tempfile.TemporaryDirectory() as tmp:
        ptx, cubin = os.path.join(tmp, "k.ptx"), os.path.join(tmp, "k.cubin")
        with open(ptx, "w") as f:
            f.write(kernel.asm["ptx"])
        ptxas = next(p for p in ("ptxas-blackwell", "ptxas") if os.path.exists(os.path.join(BIN, p)))
        report = subprocess.run([os.path.join(BIN, ptxas), "-arch=sm_90a", "-v", ptx, "-o", cubin],
                                capture_output=True, text=True, check=False).stderr
        sass = subprocess.run([os.path.join(BIN, "cuobjdump"), "-sass", cubin], capture_output=True, text=True,
                              check=False).stdout
    regs = re.search(r"Used (\d+) registers", report)
    spills = re.search(r"(\d+) bytes spill stores", report)
    loads = re.findall(r"LDG\.E[.\w]*", sass)
    return {"regs": int(regs.group(1)) if regs else None, "spill_bytes": int(spills.group(1)) if spills else None,
            "smem": kernel.metadata.shared, "loads": {k: loads.count(k) for k in sorted(set(loads))},
            "mma": {k: n for k in ("HGMMA", "HMMA") if (n := len(re.findall(rf"\b{k}\b", sass)))}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", choices=["patch_embed", "norms"], default=None)
    p.add_argument("--pow2", action="store_true", help="patch_embed also with runs padded to a power of two (the "
                                                        "layout RUN_ALIGN replaced), for an A/B of the SASS")
    p.add_argument("--dtypes", default="bf16,fp16,fp32")
    p.add_argument("--json", default=None, help="also write the rows (with triton version and commit) here")
    args = p.parse_args(argv)
    import torch

    from vmae_fast.testing import kernels

    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    rows = []
    for dt in args.dtypes.split(",") if args.only != "norms" else []:
        for uint8, P, ts in ((True, 16, 2), (True, 14, 2), (False, 16, 2), (False, 14, 2)):
            for pow2 in (False, True) if args.pow2 else (False,):
                n_rows, run, run_pad = kernels.run_layout(uint8, P, ts, pow2)
                sig = {"Frames": "*u8" if uint8 else f"*{dt}", "Wp": f"*{dt}", "Bias": f"*{dt}", "Pos": "*fp32",
                       "Mean": "*fp32", "Std": "*fp32", "TokenIds": "*i64", "Out": f"*{dt}", "M": "i32",
                       "num_clips": "i32", "D": "i32", "N": "i32", "n_h": "i32", "n_w": "i32", "stride_b": "i32",
                       "stride_t": "i32", "stride_c": "i32", "stride_h": "i32", "stride_w": "i32",
                       "stride_pos": "i32"}
                div16 = ("Frames", "Wp", "Bias", "Pos", "Out", "TokenIds", "D", "stride_b", "stride_t", "stride_c",
                         "stride_h", "stride_pos")
                for c in kernels.patch_embed_configs(dtypes[dt]):
                    consts = {"P": P, "TS": ts, "ROWS": n_rows, "RUN": run, "RUN_PAD": run_pad,
                              "BLOCK_K": kernels.PATCH_EMBED_K_TILE, "NORMALIZE": uint8, "HAS_IDS": True,
                              "HAS_POS": True,  # VideoMAE's sin/cos table (V-JEPA 2 adds none: HAS_POS False)
                              "DOT_PRECISION": "tf32x3" if dt == "fp32" else "tf32", **c.kwargs}
                    r = resources(kernels.patch_embed_kernel.fn, sig, consts, div16, c.num_warps, c.num_stages)
                    tile = f"{c.kwargs['BLOCK_M']}x{c.kwargs['BLOCK_N']} w{c.num_warps} s{c.num_stages}"
                    rows.append((f"patch_embed {dt} {'uint8' if uint8 else 'float'} P={P} pad{run_pad} {tile}", r))
    for D in (384, 768, 1024, 1408) if args.only != "patch_embed" else []:
        bm, bd, nw = kernels.layer_norm_launch_config(D)
        sig = {"X": "*bf16", "R": "*bf16", "W": "*bf16", "Bias": "*bf16", "Y": "*bf16", "S": "*bf16", "M": "i32",
               "D": "i32", "stride_x": "i32", "stride_r": "i32", "eps": "fp32"}
        consts = {"HAS_RESIDUAL": True, "HAS_WEIGHT": True, "HAS_BIAS": True, "BLOCK_M": bm, "BLOCK_D": bd}
        r = resources(kernels.layer_norm_kernel, sig, consts,
                      ("X", "R", "W", "Bias", "Y", "S", "D", "stride_x", "stride_r"), nw, 1)
        rows.append((f"layer_norm bf16 D={D} residual {bm}x{bd} w{nw}", r))
        sig = {"X": "*bf16", "CU": "*i32", "Partial": "*fp32", "N_total": "i32", "D": "i32", "stride_x": "i32",
               "SPLITS": "i32"}
        block_d = min(bd, kernels.SEGMENT_SUM_BLOCK_D)
        r = resources(kernels.segment_sum_kernel, sig, {"BLOCK_T": 16, "BLOCK_D": block_d},
                      ("X", "Partial", "D", "stride_x"), 4, 3)
        rows.append((f"mean_pool segment_sum bf16 D={D} 16x{block_d} w4", r))
    for name, r in rows:
        mma = " ".join(f"{k}x{n}" for k, n in r["mma"].items()) or "-"
        loads = " ".join(f"{k}x{n}" for k, n in r["loads"].items())
        print(f"{name:<58} regs {r['regs']!s:>4} spill {r['spill_bytes']!s:>5} smem {r['smem']:>7} {mma:<10} {loads}")
    if args.json:
        from bench_env import git_commit

        meta = {"target": "sm_90a (ptxas)", "triton": triton.__version__, "commit": git_commit()}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps([{"kernel": name, **meta, **r} for name, r in rows], indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
