#!/usr/bin/env python
"""The GPU check: one command that measures what a GPU run owes, in at most 9 minutes on an H100/H200.

    python tools/gpu_check.py                      # GPU: bench/results/<device>-<date>/{rows.jsonl,summary.md,log.txt}
    python tools/gpu_check.py --copy-to "$OUT"     # also copy the three files there after every stage
    python tools/gpu_check.py --dry-run --out DIR  # CPU: the same stages at tiny sizes (CI runs this)
    python tools/gpu_check.py --only attention,model --budget model=200

Stages, in order, each in its own process with its own time budget (seconds on a GPU):
  env           device, versions, commit, driver (nvidia-smi)                                          10
  kernel-tests  the kernel/model/tokens/CUDA-graph tests compiled on CUDA (fp16, bf16, fp32; lengths
                up to 4096; head dims 24-128; V-JEPA 2's rotary kernel and model backends), one JSON row
                per test, pytest-xdist when installed                                                   125
  attention     TFLOP/s at N=1568, B*H = 384 (d=64) and 512 (d=80, 88), bf16 (and fp16 at d=64), next to
                SDPA's flash / cuDNN / efficient backends; ragged varlen against a per-clip SDPA loop     40
  norms         layer_norm (+ residual) and mean_pool_layernorm GB/s, D = 768..1408                      20
  patch-embed   TFLOP/s vs normalize + Conv3d and gather + GEMM (equal work), runs padded to 16 vs to 2^k,
                patch_embed's share of a ViT-B forward                                                   30
  model         ViT-B 16x224 bf16 clips/s at batch 32 and 64, keep 1.0 and 0.5, vs transformers SDPA;
                bf16 vs fp32 embedding cosine                                                            90
  vjepa2        V-JEPA 2 ViT-L 16x256 (2048 tokens) bf16 clips/s at batch 16, keep 1.0 and 0.5, vs
                transformers' VJEPA2Model SDPA (same random weights); bf16 vs fp32 embedding cosine     45
  cudagraph     batch-1 latency: CUDA-graph replay vs eager (all tokens, tube:0.5), replay bit-equal      40
  profile       share of model time per kind of op (torch profiler), all tokens and keep 0.5            25
  compile       torch.compile(mode="max-autotune") of transformers SDPA at batch 32 and 64 next to
                vmae_fast, compile time reported apart                                                  115
Every row is appended to rows.jsonl as soon as it is measured (device, versions, commit, dtype, shapes with each),
and summary.md is rewritten after every stage, so a stage that overruns its budget (it is stopped) or crashes costs
only its own rows; the next stage still runs. What cannot run says so in a row ("skipped: transformers not
installed"). The whole run stops starting stages after --total-s (540 s). Imports torch and triton; transformers,
pytest and pytest-xdist are used when installed.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

TOOLS = Path(__file__).resolve().parent
ROOT = TOOLS.parent
sys.path.insert(0, str(TOOLS))


@dataclass(frozen=True)
class Stage:
    name: str
    budget_s: float  # on a GPU
    dry_budget_s: float  # --dry-run on CPU
    what: str


STAGES = (
    Stage("env", 10, 60, "device, versions, commit, driver"),
    Stage("kernel-tests", 125, 180, "kernel/model/tokens/CUDA-graph tests, compiled"),
    Stage("attention", 40, 90, "varlen attention TFLOP/s vs SDPA"),
    Stage("norms", 20, 60, "layer_norm and mean_pool_layernorm GB/s"),
    Stage("patch-embed", 30, 90, "patch_embed TFLOP/s, padding A/B, share of model time"),
    Stage("model", 90, 120, "ViT-B clips/s vs transformers SDPA, keep 0.5, bf16 vs fp32 cosine"),
    Stage("vjepa2", 45, 90, "V-JEPA 2 ViT-L clips/s vs transformers SDPA, keep 0.5, bf16 vs fp32 cosine"),
    Stage("cudagraph", 40, 60, "batch-1 CUDA-graph latency vs eager"),
    Stage("profile", 25, 60, "per-op share of model time"),
    Stage("compile", 115, 120, "torch.compile(max-autotune) baseline, compile time apart"),
)
# The GPU budgets add up to the 540 s of --total-s (the vjepa2 stage's 45 s came from compile, kernel-tests and
# norms: estimates, no GPU run has timed a stage yet).
BY_NAME = {s.name: s for s in STAGES}
FILES = ("rows.jsonl", "summary.md", "log.txt")
KERNEL_TESTS = [
    "tests/kernels/test_varlen_attention.py",
    "tests/kernels/test_patch_embed.py",
    "tests/kernels/test_layer_norm.py",
    "tests/kernels/test_mean_pool_layernorm.py",
    "tests/kernels/test_dispatch.py",
    "tests/kernels/test_qkv_rope.py",
    "tests/model/test_model_backends.py",
    "tests/model/test_cuda_graphs.py",
    "tests/model/test_tokens.py",
]
# --dry-run: a handful of quick ones (the interpreter is slow), still through the same plugin and row format
DRY_KERNEL_TESTS = [
    "tests/kernels/test_dispatch.py",
    "tests/kernels/test_layer_norm.py",
    "tests/kernels/test_qkv_rope.py",
    "-k",
    "kernel_target or use_triton or wrap_triton or (matches_reference and float32 and 100)",
]


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


# ---------------------------------------------------------------------------------------------------------------
# The stages (each runs in a child process: python tools/gpu_check.py --stage NAME --dir DIR)


class Context:
    """What a stage needs: the device, the sizes (GPU or --dry-run), and a writer that appends rows at once."""

    def __init__(self, stage: str, directory: Path, dry_run: bool):
        import torch
        from bench_env import environment, import_vmae_fast

        self.stage, self.dir, self.dry_run, self.torch = stage, directory, dry_run, torch
        self.vmae_fast = import_vmae_fast()
        self.device = torch.device("cpu" if dry_run else "cuda")
        if not dry_run and not torch.cuda.is_available():
            raise SystemExit("no CUDA GPU visible to torch: run with --dry-run on a CPU machine")
        self.env = environment(self.device)
        self.dtypes = [torch.float32] if dry_run else [torch.bfloat16, torch.float16]

    def write(self, rows) -> None:
        with open(self.dir / "rows.jsonl", "a") as f:
            f.writelines(json.dumps({"stage": self.stage, **self.env, **row}, default=str) + "\n" for row in rows)

    def skip(self, what: str, reason: str) -> None:
        self.write([{"kind": "skipped", "what": what, "reason": reason}])
        print(f"skipped {what}: {reason}", flush=True)


def stage_env(ctx: Context) -> None:
    torch = ctx.torch
    row = {"kind": "env", "argv": sys.argv, "torch_cuda_available": torch.cuda.is_available()}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        row.update(
            capability=list(torch.cuda.get_device_capability(0)),
            sm_count=props.multi_processor_count,
            memory_gib=round(props.total_memory / 2**30, 1),
            cudnn=torch.backends.cudnn.version(),
            flash_sdp=torch.backends.cuda.flash_sdp_enabled(),
            cudnn_sdp=torch.backends.cuda.cudnn_sdp_enabled(),
        )
    if shutil.which("nvidia-smi"):
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,clocks.sm,clocks.mem,power.limit", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
        row["nvidia_smi"] = out.stdout.strip() or out.stderr.strip()
    else:
        ctx.skip("nvidia-smi", "not on PATH")
    for module in ("transformers", "pytest", "xdist", "matplotlib"):
        with contextlib.suppress(Exception):
            __import__(module)
            row[f"has_{module}"] = True
            continue
        row[f"has_{module}"] = False
    ctx.write([row])
    print(json.dumps({**ctx.env, **row}, indent=1, default=str))


def stage_kernel_tests(ctx: Context) -> None:
    try:
        import pytest  # noqa: F401
    except ImportError:
        ctx.skip("kernel tests", "pytest not installed")
        return
    try:
        import xdist  # noqa: F401

        workers = [] if ctx.dry_run else ["-n", str(min(12, os.cpu_count() or 1)), "--dist", "load"]
    except ImportError:
        workers = []
    args = DRY_KERNEL_TESTS if ctx.dry_run else KERNEL_TESTS
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(TOOLS), os.environ.get("PYTHONPATH", "")]),
        "TRITON_INTERPRET": "1" if ctx.dry_run else "0",
    }
    # the plugin appends one row per test to rows.jsonl as it finishes: a run stopped by the budget keeps them
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "gpu_check_plugin",
        "--gpu-check-rows",
        str(ctx.dir / "rows.jsonl"),
        "-p",
        "no:cacheprovider",
        *workers,
        *args,
    ]
    print(" ".join(cmd), flush=True)
    returncode = subprocess.run(cmd, cwd=ROOT, env=env, check=False).returncode
    counts: dict[str, int] = {}
    for r in read_rows(ctx.dir):
        if r.get("kind") == "test":
            counts[r["outcome"]] = counts.get(r["outcome"], 0) + 1
    ctx.write(
        [{"kind": "test-summary", "counts": counts, "pytest_returncode": returncode, "tests": args, "workers": workers}]
    )
    if returncode not in (0, 5):
        raise SystemExit(f"kernel tests: pytest exited {returncode} ({counts})")


def stage_attention(ctx: Context) -> None:
    import bench_kernels as bk

    shapes = [(2, 24, 2, 16)] if ctx.dry_run else [(32, 1568, 12, 64), (32, 1568, 16, 80), (32, 1568, 16, 88)]
    for dtype in ctx.dtypes:
        for B, n, H, d in shapes:
            if dtype == ctx.torch.float16 and d != 64:
                continue  # fp16: the ViT-B head dim only (budget)
            rows: list[dict] = []
            bk.bench_attention(rows, {}, ctx.device, dtype, 2 if ctx.dry_run else 20, B=B, n=n, H=H, d=d)
            ctx.write(rows)


def stage_norms(ctx: Context) -> None:
    import bench_kernels as bk

    widths = [100] if ctx.dry_run else [768, 1024, 1280, 1408]
    M, B, n = (64, 3, 20) if ctx.dry_run else (32 * 1568, 32, 1568)
    for D in widths:
        rows: list[dict] = []
        bk.bench_layer_norm(rows, {}, ctx.device, ctx.dtypes[0], 2 if ctx.dry_run else 20, M=M, D=D)
        bk.bench_pooling(rows, {}, ctx.device, ctx.dtypes[0], 2 if ctx.dry_run else 20, B=B, n=n, D=D)
        ctx.write(rows)


def stage_patch_embed(ctx: Context) -> None:
    import bench_kernels as bk

    dtype, reps = ctx.dtypes[0], 2 if ctx.dry_run else 20
    shapes = [(1, 2, 32, 16, 2, 64)] if ctx.dry_run else [(32, 16, 224, 16, 2, 768), (16, 16, 224, 14, 2, 1408)]
    for B, T, S, P, ts, D in shapes:
        rows: list[dict] = []
        bk.bench_patch_embed(rows, {}, ctx.device, dtype, reps, B=B, T=T, S=S, P=P, ts=ts, D=D)
        ctx.write(rows)
    rows = []
    if ctx.dry_run:
        bk.bench_model_share(
            rows,
            {},
            ctx.device,
            dtype,
            reps,
            "small",
            1,
            config={"num_hidden_layers": 1, "image_size": 32, "num_frames": 2},
        )
    else:
        bk.bench_model_share(rows, {}, ctx.device, dtype, reps, "base", 32)
    ctx.write(rows)


def _bench_model(ctx: Context, argv: list[str]) -> None:
    """tools/bench_model.py's settings, rows written after each (model, batch) setting."""
    import tempfile

    import bench_model as bm

    args = bm.parse_args(argv)
    if not bm.transformers_available():
        for provider in [p for p in args.providers if not p.startswith("vmae_fast")]:
            ctx.skip(provider, "transformers not installed")
        args.providers = [p for p in args.providers if p.startswith("vmae_fast")]
    elif not bm.transformers_reference_ok():
        ctx.write(
            [
                {
                    "kind": "note",
                    "note": "transformers drops VideoMAE's q/v biases here (5.6-5.17): a speed "
                    "baseline only; vmae_fast's cosine is against vmae_fast fp32",
                }
            ]
        )
    if not args.providers:
        return
    dtype = bm.DTYPES[args.dtype]
    torch = ctx.torch
    torch.backends.cudnn.allow_tf32 = False  # fp32 references in IEEE fp32
    torch.backends.cuda.matmul.allow_tf32 = False
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        for name in args.models:
            setup = bm.Setup(name, args, ctx.device, dtype, ctx.vmae_fast, Path(tmp))
            for batch in args.batches:
                rows = bm.bench_setting(setup, args, batch, {}, ctx.vmae_fast)
                bm.print_rows(rows)
                ctx.write(rows)


def model_argv(ctx: Context, *extra: str) -> list[str]:
    if ctx.dry_run:
        return [
            "--models",
            "tiny",
            "--dtype",
            "fp32",
            "--device",
            "cpu",
            "--rounds",
            "2",
            "--min-time-ms",
            "5",
            "--max-iters",
            "3",
            "--keep-going",
            *extra,
        ]
    return [
        "--models",
        "base",
        "--dtype",
        "bf16",
        "--device",
        "cuda",
        "--rounds",
        "5",
        "--min-time-ms",
        "150",
        "--keep-going",
        *extra,
    ]


def stage_model(ctx: Context) -> None:
    batches = "2" if ctx.dry_run else "32,64"
    _bench_model(
        ctx, model_argv(ctx, "--batches", batches, "--keeps", "1.0,0.5", "--providers", "vmae_fast,transformers-sdpa")
    )


def stage_vjepa2(ctx: Context) -> None:
    """V-JEPA 2 ViT-L (the smallest published encoder) at 16 frames of 256 px: vmae_fast (all tokens and tube:0.5)
    against transformers' VJEPA2Model with SDPA on the same random weights, and the bf16 embedding's cosine to fp32."""
    if ctx.dry_run:
        argv = model_argv(ctx, "--models", "vjepa2-tiny", "--batches", "2", "--keeps", "1.0,0.5", "--providers",
                          "vmae_fast,transformers-sdpa")
    else:
        argv = model_argv(ctx, "--models", "vjepa2-vitl", "--frames", "16", "--batches", "16", "--keeps", "1.0,0.5",
                          "--providers", "vmae_fast,transformers-sdpa", "--rounds", "3", "--reference-chunk", "4")
    _bench_model(ctx, argv)


def stage_cudagraph(ctx: Context) -> None:
    if ctx.device.type != "cuda":
        ctx.skip("vmae_fast-cudagraph", "CUDA graphs need a GPU (the eager batch-1 rows still run)")
    _bench_model(
        ctx,
        model_argv(
            ctx,
            "--batches",
            "1",
            "--graph-batches",
            "1",
            "--keeps",
            "1.0,0.5",
            "--providers",
            "vmae_fast,vmae_fast-cudagraph,transformers-sdpa",
        ),
    )


def stage_profile(ctx: Context) -> None:
    import bench_model as bm

    torch = ctx.torch
    if ctx.dry_run:
        model = ctx.vmae_fast.load_model(
            "random:small", device="cpu", config={"num_hidden_layers": 2, "image_size": 32, "num_frames": 4}
        )
        batch = 2
    else:
        model = ctx.vmae_fast.load_model("random:base", device="cuda", dtype=torch.bfloat16)
        batch = 32
    c = model.config
    frames = torch.randint(
        0,
        256,
        (batch, c.num_frames, c.image_size, c.image_size, 3),
        dtype=torch.uint8,
        generator=torch.Generator().manual_seed(0),
    ).to(ctx.device)
    for keep in (None, "tube:0.5"):
        rows = bm.profile_forward(model, frames, keep=keep, steps=2 if ctx.dry_run else 5)
        shape = {"preset": "small-tiny" if ctx.dry_run else "base", "batch": batch, "keep": keep or "all"}
        ctx.write(
            [{"kind": "profile", "dtype": str(model.dtype).removeprefix("torch."), "shape": shape, **r} for r in rows]
        )
        for r in rows:
            print(f"keep={keep or 'all'} {r['category']:<34} {100 * r['share']:6.1f} %  {r['ms_per_forward']:.3f} ms")


def stage_compile(ctx: Context) -> None:
    if ctx.dry_run:  # inductor takes minutes on CPU: dynamo with the eager backend exercises the same path
        argv = model_argv(
            ctx,
            "--batches",
            "2",
            "--keeps",
            "1.0",
            "--providers",
            "vmae_fast,torch-compile",
            "--compile-backend",
            "eager",
        )
    else:
        argv = model_argv(
            ctx,
            "--batches",
            "32,64",
            "--keeps",
            "1.0",
            "--providers",
            "vmae_fast,torch-compile",
            "--compile-mode",
            "max-autotune",
            "--rounds",
            "3",
        )
    _bench_model(ctx, argv)


STAGE_FUNCTIONS = {
    "env": stage_env,
    "kernel-tests": stage_kernel_tests,
    "attention": stage_attention,
    "norms": stage_norms,
    "patch-embed": stage_patch_embed,
    "model": stage_model,
    "vjepa2": stage_vjepa2,
    "cudagraph": stage_cudagraph,
    "profile": stage_profile,
    "compile": stage_compile,
}


# ---------------------------------------------------------------------------------------------------------------
# The orchestrator (parent process)


def run_child(cmd: list[str], timeout_s: float, log_path: Path, env: dict | None = None) -> tuple[str, int | None]:
    """Run `cmd` in its own process group with output appended to log_path; stop the whole group after timeout_s.
    Returns (status "ok" | "failed" | "timeout", returncode)."""
    with open(log_path, "a") as log:
        log.write(f"\n$ {' '.join(cmd)}  (budget {timeout_s:.0f} s)\n")
        log.flush()
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
        try:
            code = proc.wait(timeout=max(1.0, timeout_s))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            log.write(f"\n[gpu_check] stopped after its budget of {timeout_s:.0f} s\n")
            return "timeout", None
    return ("ok" if code == 0 else "failed"), code


def read_rows(directory: Path) -> list[dict]:
    path = directory / "rows.jsonl"
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError):  # a line cut by a killed writer
            rows.append(json.loads(line))
    return rows


def _fmt(value, spec: str = ".3g") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return format(value, spec)
    if isinstance(value, dict):
        return " ".join(f"{k}={_fmt(v)}" for k, v in value.items())
    if isinstance(value, list) and value and isinstance(value[0], (list, tuple)):  # [(name, ms), ...]
        return "; ".join(f"{name[:60]} {_fmt(ms)}" for name, ms in value)
    return str(value).replace("|", "/")


# DESIGN.md's GPU targets (H100, bf16, ViT-B 16x224), checked against the rows that measure them
TARGETS = (
    ("attention TFLOP/s, N=1568 d=64 bf16", ">=", 370.0),
    ("vmae_fast clips/s, batch 64, all tokens", ">=", 1300.0),
    ("vmae_fast / transformers SDPA, batch 64", ">=", 1.3),
    ("vmae_fast / torch.compile max-autotune, batch 64", ">=", 1.1),
    ("keep 0.5 / all tokens, batch 64", ">=", 2.0),
    ("bf16 vs fp32 embedding cosine (min over rows)", ">=", 0.999),
)


def measured_targets(rows: list[dict]) -> dict[str, float | None]:
    def pick(pred, key):
        values = [r[key] for r in rows if pred(r) and r.get(key) is not None]
        return max(values) if values else None

    def vmae(stage, batch, keep):
        return lambda r: (
            r.get("stage") == stage
            and r.get("provider") == "vmae_fast"
            and r.get("batch") == batch
            and r.get("keep") == keep
        )

    cosines = [
        r["cosine_vs_fp32"]
        for r in rows
        if str(r.get("provider", "")).startswith("vmae_fast")
        and r.get("dtype") == "bfloat16"
        and r.get("cosine_vs_fp32") is not None
    ]
    return {
        TARGETS[0][0]: pick(
            lambda r: (
                r.get("op") == "varlen_attention"
                and r.get("provider") == "triton"
                and r.get("dtype") == "bfloat16"
                and r.get("shape", {}).get("d") == 64
                and r.get("shape", {}).get("layout") == "equal"
            ),
            "tflops",
        ),
        TARGETS[1][0]: pick(vmae("model", 64, 1.0), "clips_per_s"),
        TARGETS[2][0]: pick(vmae("model", 64, 1.0), "speedup_vs_sdpa"),
        TARGETS[3][0]: pick(vmae("compile", 64, 1.0), "speedup_vs_compile"),
        TARGETS[4][0]: pick(vmae("model", 64, 0.5), "speedup_vs_all_tokens"),
        TARGETS[5][0]: min(cosines) if cosines else None,
    }


def _table(rows: list[dict], columns: list[tuple[str, str]]) -> list[str]:
    """Markdown table: columns are (header, key or key.subkey)."""

    def get(row, key):
        for part in key.split("."):
            row = row.get(part) if isinstance(row, dict) else None
        return row

    lines = ["| " + " | ".join(h for h, _ in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_fmt(get(r, k)) for _, k in columns) + " |" for r in rows]
    return lines


def summarize(directory: Path, statuses: list[dict]) -> str:
    """summary.md from rows.jsonl: the environment, each stage's status and its key figures."""
    rows = read_rows(directory)
    by_stage: dict[str, list[dict]] = {}
    for r in rows:
        by_stage.setdefault(r.get("stage", "?"), []).append(r)
    env = next((r for r in rows if r.get("kind") == "env"), rows[0] if rows else {})
    versions = (
        f"torch {env.get('torch')}, triton {env.get('triton')}, CUDA {env.get('cuda')}, transformers "
        f"{env.get('transformers')}, Python {env.get('python')}, commit {env.get('commit')}"
    )
    versions = (
        f"torch {env.get('torch')}, triton {env.get('triton')}, CUDA {env.get('cuda')}, transformers "
        f"{env.get('transformers')}, Python {env.get('python')}, commit {env.get('commit')}"
    )
    out = [f"# GPU check: {env.get('device', '?')}", "", versions, f"driver: {env.get('nvidia_smi', '-')}", ""]
    if env.get("device_type") == "cpu":
        out += [
            (
                "**Dry run on CPU: tiny sizes, the Triton interpreter; the figures test the code path and mean "
                "nothing about speed.**"
            ),
            "",
        ]
    out += ["## Stages", ""]
    out += _table(
        statuses,
        [("stage", "stage"), ("status", "status"), ("seconds", "seconds"), ("budget s", "budget_s"), ("rows", "rows")],
    )
    for r in rows:
        if r.get("kind") == "skipped":
            out.append(f"- {r['stage']}: skipped {r['what']}: {r['reason']}")
    measured = measured_targets(rows)
    out += ["", "## Targets (DESIGN.md; H100 figures, bf16 ViT-B 16x224)", ""]
    out += ["| what | measured | target | |", "|---|---|---|---|"]
    for what, op, target in TARGETS:
        value = measured[what]
        verdict = "not measured" if value is None else ("met" if value >= target else "MISSED")
        out.append(f"| {what} | {_fmt(value)} | {op} {target:g} | {verdict} |")
    tests = [r for r in by_stage.get("kernel-tests", []) if r.get("kind") == "test"]
    if tests or by_stage.get("kernel-tests"):
        counts: dict[str, int] = {}
        for t in tests:
            counts[t["outcome"]] = counts.get(t["outcome"], 0) + 1
        collected = max(
            (r["count"] for r in by_stage.get("kernel-tests", []) if r.get("kind") == "collected"), default=None
        )
        not_reached = f", not reached {collected - len(tests)}" if collected and collected > len(tests) else ""
        out += [
            "",
            "## Kernel tests (compiled)",
            "",
            (", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "no test finished")
            + (f" of {collected} collected" if collected else "")
            + not_reached,
        ]
        out += [f"- FAILED {t['test']}: {t.get('error', '')}" for t in tests if t["outcome"].startswith("failed")][:30]
    measured = [r for r in rows if "ms" in r and r.get("stage") in ("attention", "norms", "patch-embed")]
    if measured:
        out += ["", "## Kernels", ""]
        out += _table(
            measured,
            [
                ("op", "op"),
                ("dtype", "dtype"),
                ("shape", "shape"),
                ("provider", "provider"),
                ("ms", "ms"),
                ("TFLOP/s", "tflops"),
                ("GB/s", "gbps"),
                ("max diff", "max_abs_diff"),
                ("share of model", "share_of_model"),
            ],
        )
    models = [r for r in rows if r.get("stage") in ("model", "vjepa2", "cudagraph", "compile") and "provider" in r]
    if models:
        out += ["", "## Model (speed-ups only at equal work; kept-token rows: vs all tokens of the same provider)", ""]
        out += _table(
            models,
            [
                ("stage", "stage"),
                ("model", "model"),
                ("batch", "batch"),
                ("keep", "keep"),
                ("provider", "provider"),
                ("clips/s", "clips_per_s"),
                ("ms", "ms_per_batch"),
                ("x SDPA", "speedup_vs_sdpa"),
                ("x compile", "speedup_vs_compile"),
                ("x all tokens", "speedup_vs_all_tokens"),
                ("cos vs fp32", "cosine_vs_fp32"),
                ("ref", "cosine_reference"),
                ("first call s", "first_call_s"),
                ("bit-equal", "bit_equal_to_eager"),
                ("error", "error"),
            ],
        )
    profile = [r for r in rows if r.get("kind") == "profile"]
    if profile:
        out += ["", "## Where model time goes (torch profiler)", ""]
        out += _table(
            profile,
            [
                ("keep", "shape.keep"),
                ("category", "category"),
                ("share", "share"),
                ("ms/forward", "ms_per_forward"),
                ("top", "top"),
            ],
        )
    return "\n".join(out) + "\n"


def default_dir(dry_run: bool) -> Path:
    import torch
    from bench_env import device_name

    device = torch.device("cuda" if torch.cuda.is_available() and not dry_run else "cpu")
    name = "dryrun-cpu" if dry_run else slug(device_name(device))
    return ROOT / "bench" / "results" / f"{name}-{datetime.datetime.now(datetime.UTC).date()}"


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__
    )
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes, the same stages (CI)")
    p.add_argument("--out", type=Path, default=None, help="results folder (default bench/results/<device>-<date>)")
    p.add_argument(
        "--copy-to", type=Path, default=None, help="also copy rows.jsonl, summary.md, log.txt here after every stage"
    )
    p.add_argument("--only", default=None, help="comma-separated stages (default: all, in order)")
    p.add_argument("--budget", action="append", default=[], metavar="STAGE=SECONDS", help="override a budget")
    p.add_argument("--total-s", type=float, default=540.0, help="no stage starts after this many seconds")
    p.add_argument("--stage", default=None, help=argparse.SUPPRESS)  # the child's entry point
    p.add_argument("--dir", type=Path, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    names = [s.name for s in STAGES] if args.only is None else [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in BY_NAME] + (
        [args.stage] if args.stage and args.stage not in BY_NAME else []
    )
    if unknown:
        p.error(f"unknown stage(s) {unknown}; stages: {', '.join(BY_NAME)}")
    budgets = {}
    for item in args.budget:
        name, _, seconds = item.partition("=")
        if name not in BY_NAME or not re.fullmatch(r"\d+(\.\d*)?", seconds):
            p.error(f"--budget takes STAGE=SECONDS with a stage of {', '.join(BY_NAME)}, got {item!r}")
        budgets[name] = float(seconds)
    args.names, args.budgets = names, budgets
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.stage:  # child: run one stage, rows appended to DIR/rows.jsonl
        STAGE_FUNCTIONS[args.stage](Context(args.stage, args.dir, args.dry_run))
        return 0
    directory = args.out or default_dir(args.dry_run)
    directory.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        (directory / name).unlink(missing_ok=True)
    env = {**os.environ}
    if args.dry_run:
        env["TRITON_INTERPRET"] = "1"  # the Triton rows run in the interpreter on CPU
    else:
        env.pop("TRITON_INTERPRET", None)  # compiled kernels
    start, statuses = time.monotonic(), []
    print(f"gpu_check: {len(args.names)} stages -> {directory}", flush=True)
    for name in args.names:
        stage = BY_NAME[name]
        budget = args.budgets.get(name, stage.dry_budget_s if args.dry_run else stage.budget_s)
        left = args.total_s - (time.monotonic() - start)
        before = len(read_rows(directory))
        if left < 5:
            status, code, seconds = "skipped: out of time", None, 0.0
        else:
            cmd = [sys.executable, str(Path(__file__).resolve()), "--stage", name, "--dir", str(directory)]
            cmd += ["--dry-run"] if args.dry_run else []
            t0 = time.monotonic()
            status, code = run_child(cmd, min(budget, left), directory / "log.txt", env)
            seconds = time.monotonic() - t0
        statuses.append(
            {
                "stage": name,
                "status": status,
                "returncode": code,
                "seconds": round(seconds, 1),
                "budget_s": budget,
                "rows": len(read_rows(directory)) - before,
            }
        )
        with open(directory / "rows.jsonl", "a") as f:
            f.write(json.dumps({"stage": name, "kind": "status", **statuses[-1]}) + "\n")
        (directory / "summary.md").write_text(summarize(directory, statuses))
        print(
            f"  {name:<13} {status:<8} {seconds:6.1f} s (budget {budget:.0f} s), {statuses[-1]['rows']} rows",
            flush=True,
        )
        if args.copy_to is not None:
            args.copy_to.mkdir(parents=True, exist_ok=True)
            for file in FILES:
                if (directory / file).exists():
                    shutil.copy2(directory / file, args.copy_to / file)
    total = time.monotonic() - start
    print(f"gpu_check: done in {total:.0f} s; summary {directory / 'summary.md'}", flush=True)
    print((directory / "summary.md").read_text())
    return 0 if all(s["status"] == "ok" for s in statuses) else 1


if __name__ == "__main__":
    sys.exit(main())
