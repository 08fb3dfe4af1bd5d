"""Each vmae_fast kernel against its torch baseline on the same device, in one run, as JSON rows.

    python tools/bench_kernels.py                      # GPU: full run -> bench/results/kernels-<device>-<date>.json
    python tools/bench_kernels.py --dtype bf16,fp16    # choose dtypes (default bf16)
    python tools/bench_kernels.py --model-share base   # + patch_embed's share of a ViT-B forward (B=32)
    TRITON_INTERPRET=1 python tools/bench_kernels.py --smoke   # CPU, tiny shapes, seconds (CI runs this)

Ops and baselines: varlen_attention vs SDPA with the flash, cuDNN and efficient backends named (equal lengths,
batched (B, H, n, d)) and a per-segment SDPA loop (ragged lengths); layer_norm vs F.layer_norm (also with the
residual add); mean_pool_layernorm vs torch's segment mean (index_add) + LayerNorm; patch_embed (uint8 frames) vs
normalize + conv3d (all tokens) and normalize + unfold + gather + GEMM (all and half the tokens: equal work), plus
our kernel with its runs padded to a power of two (the layout it replaced). Units: TFLOP/s for attention (4 n^2 d h
summed over segments) and patch embedding
(2 N_kept K D), GB/s for everything (bytes each input read once + each output written once).
GPU timings: triton.testing.do_bench (median, 20th/80th percentiles), after a first call timed apart (compile /
autotune). CPU timings: a wall-clock timer with providers alternating call by call, so a shared machine disturbs
them alike. Imports torch and triton only (plus vmae_fast.kernels, and vmae_fast.testing.kernels for the replaced
layout).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import time
from itertools import pairwise
from pathlib import Path

import torch
import torch.nn.functional as F
import triton

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_env import ROOT, environment, import_vmae_fast

kernels = import_vmae_fast().kernels
layer_norm, mean_pool_layernorm = kernels.layer_norm, kernels.mean_pool_layernorm
patch_embed, prepare_weight, varlen_attention = kernels.patch_embed, kernels.prepare_weight, kernels.varlen_attention

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def triton_runs_on(device: torch.device) -> bool:
    return device.type == "cuda" or os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


# --- timing ----------------------------------------------------------------------------------------------------------
def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(providers: dict, device: torch.device, reps: int, same_output=None) -> dict:
    """{name: fn} -> {name: {"ms", "ms_p20", "ms_p80", "first_call_ms"} or {"error"}}. The first call of each provider
    is timed apart (Triton compile, autotune, cuDNN plan); then GPU: do_bench per provider; CPU: providers alternate
    call by call for `reps` rounds. `same_output(out) -> tensor` puts each provider's first output in one layout;
    the Triton row then records its max abs difference from the first baseline, so a wrong kernel shows."""
    results, live, outputs = {}, {}, {}
    for name, fn in providers.items():
        try:
            _sync(device)
            t0 = time.perf_counter()
            outputs[name] = fn()
            _sync(device)
            results[name] = {"first_call_ms": (time.perf_counter() - t0) * 1e3}
            live[name] = fn
        except Exception as e:  # noqa: BLE001 - a backend that cannot run this shape/dtype: record why, go on
            results[name] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"}
    if device.type == "cuda":
        for name, fn in live.items():
            med, p20, p80 = triton.testing.do_bench(fn, warmup=25, rep=200, quantiles=[0.5, 0.2, 0.8])
            results[name].update(ms=med, ms_p20=p20, ms_p80=p80)
    else:
        times = {name: [] for name in live}
        for _ in range(reps):
            for name, fn in live.items():
                t0 = time.perf_counter()
                fn()
                times[name].append((time.perf_counter() - t0) * 1e3)
        for name, ts in times.items():
            q = statistics.quantiles(ts, n=5) if len(ts) > 1 else [ts[0]] * 4
            results[name].update(ms=statistics.median(ts), ms_p20=q[0], ms_p80=q[3])
    baselines = [name for name in live if not name.startswith("triton")]
    for name in [n for n in live if n.startswith("triton")] if same_output is not None and baselines else []:
        ours, theirs = same_output(outputs[name]).float(), same_output(outputs[baselines[0]]).float()
        results[name]["max_abs_diff"] = (ours - theirs).abs().max().item() if ours.numel() else 0.0
        results[name]["diff_vs"] = baselines[0]
    return results


def emit(rows, env, op, dtype, shape, results, flops=None, bytes_moved=None):
    """Append one row per provider; throughput from the median time."""
    for provider, r in results.items():
        row = {"op": op, "provider": provider, "dtype": str(dtype).replace("torch.", ""), "shape": shape, **env, **r}
        if "ms" in r:
            if flops is not None:
                row["tflops"] = flops / (r["ms"] * 1e-3) / 1e12
            if bytes_moved is not None:
                row["gbps"] = bytes_moved / (r["ms"] * 1e-3) / 1e9
        rows.append(row)


# --- ops -------------------------------------------------------------------------------------------------------------
def ragged_lengths(total: int, num: int, gen: torch.Generator) -> list[int]:
    """`num` lengths summing to `total`, each within 0.5x..1.5x of the mean (kept tokens differ per clip)."""
    mean = total / num
    raw = [mean * (0.5 + torch.rand((), generator=gen).item()) for _ in range(num)]
    lengths = [max(1, round(x * total / sum(raw))) for x in raw]
    lengths[-1] += total - sum(lengths)
    return lengths


def bench_attention(rows, env, device, dtype, reps, B, n, H, d):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    gen = torch.Generator().manual_seed(0)
    total = B * n
    qkv = torch.randn(total, 3, H, d, generator=gen).to(device, dtype)
    q, k, v = qkv.unbind(1)  # (N_total, H, d) strided views of one packed tensor, as the model passes them
    qb, kb, vb = (t.reshape(B, n, H, d).transpose(1, 2).contiguous() for t in (q, k, v))  # SDPA's (B, H, n, d)
    for layout, lengths in (("equal", [n] * B), ("ragged", ragged_lengths(total, B, gen))):
        cu = torch.tensor([0] + lengths, dtype=torch.int64).cumsum(0).to(torch.int32).to(device)
        max_seqlen = max(lengths)
        providers = {}
        if triton_runs_on(device):
            providers["triton"] = lambda cu=cu, m=max_seqlen: varlen_attention(q, k, v, cu, m, backend="triton",
                                                                              check=False)
        if layout == "equal":
            backends = ({"sdpa-flash": SDPBackend.FLASH_ATTENTION, "sdpa-cudnn": SDPBackend.CUDNN_ATTENTION,
                         "sdpa-efficient": SDPBackend.EFFICIENT_ATTENTION} if device.type == "cuda"
                        else {"sdpa-math": SDPBackend.MATH})
            for name, backend in backends.items():
                def run(backend=backend):
                    with sdpa_kernel(backend):
                        return F.scaled_dot_product_attention(qb, kb, vb)
                providers[name] = run
        else:
            bounds = [0, *torch.tensor(lengths).cumsum(0).tolist()]
            segs = [tuple(t[a:b].transpose(0, 1).unsqueeze(0).contiguous() for t in (q, k, v))  # (1, H, n_i, d)
                    for a, b in pairwise(bounds)]

            def loop(segs=segs):
                return [F.scaled_dot_product_attention(*s) for s in segs]
            providers["sdpa-loop"] = loop
        flops = sum(4 * ln * ln * d * H for ln in lengths)
        bytes_moved = 4 * total * H * d * qkv.element_size()  # q, k, v read, out written
        shape = {"B": B, "n": n, "H": H, "d": d, "layout": layout, "N_total": total, "max_seqlen": max_seqlen}
        def same_output(out, B=B, n=n):  # -> (N_total, H, d)
            if isinstance(out, list):  # per-segment loop: (1, H, n_i, d) each
                return torch.cat([o[0].transpose(0, 1) for o in out])
            return out if out.dim() == 3 else out.transpose(1, 2).reshape(B * n, H, d)
        emit(rows, env, "varlen_attention", dtype, shape, measure(providers, device, reps, same_output), flops,
             bytes_moved)


def bench_layer_norm(rows, env, device, dtype, reps, M, D):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(M, D, generator=gen).to(device, dtype)
    r = torch.randn(M, D, generator=gen).to(device, dtype)
    w = torch.randn(D, generator=gen).to(device, dtype)
    b = torch.randn(D, generator=gen).to(device, dtype)
    for residual in (False, True):
        providers = {}
        if triton_runs_on(device):
            providers["triton"] = ((lambda: layer_norm(x, w, b, 1e-6, r, backend="triton")) if residual else
                                   (lambda: layer_norm(x, w, b, 1e-6, backend="triton")))
        if residual:
            def torch_ln():
                s = x + r
                return F.layer_norm(s, (D,), w, b, 1e-6), s
        else:
            def torch_ln():
                return F.layer_norm(x, (D,), w, b, 1e-6)
        providers["torch"] = torch_ln
        bytes_moved = (4 if residual else 2) * M * D * x.element_size()  # x (+ r) read, y (+ x + r) written
        emit(rows, env, "layer_norm", dtype, {"M": M, "D": D, "residual": residual},
             measure(providers, device, reps, lambda out: out[0] if isinstance(out, tuple) else out), None,
             bytes_moved)


def bench_pooling(rows, env, device, dtype, reps, B, n, D):
    gen = torch.Generator().manual_seed(2)
    total = B * n
    tokens = torch.randn(total, D, generator=gen).to(device, dtype)
    w = torch.randn(D, generator=gen).to(device, dtype)
    b = torch.randn(D, generator=gen).to(device, dtype)
    for layout, lengths in (("equal", [n] * B), ("ragged", ragged_lengths(total, B, gen))):
        cu = torch.tensor([0] + lengths, dtype=torch.int64).cumsum(0).to(torch.int32).to(device)
        segment = torch.repeat_interleave(torch.arange(B, device=device), torch.tensor(lengths, device=device))
        counts = torch.tensor(lengths, device=device, dtype=torch.float32).unsqueeze(1)
        providers = {}
        if triton_runs_on(device):
            providers["triton"] = lambda cu=cu: mean_pool_layernorm(tokens, cu, w, b, 1e-5, backend="triton",
                                                                    check=False)

        def torch_pool(segment=segment, counts=counts):  # segment ids prepared once, as a model would
            sums = torch.zeros(B, D, device=device, dtype=torch.float32).index_add_(0, segment, tokens.float())
            return F.layer_norm(sums / counts, (D,), w.float(), b.float(), 1e-5).to(dtype)
        providers["torch"] = torch_pool
        bytes_moved = (total + B) * D * tokens.element_size()
        emit(rows, env, "mean_pool_layernorm", dtype, {"B": B, "n": n, "D": D, "layout": layout},
             measure(providers, device, reps, lambda out: out), None, bytes_moved)


def bench_patch_embed(rows, env, device, dtype, reps, B, T, S, P, ts, D):
    """Equal work for every provider: each embeds the same kept tokens. All tokens: our kernel, its runs-padded-to-2^k
    variant (the layout it replaced: an A/B of the padding), normalize + Conv3d, and the plain unfold + GEMM. Half
    the tokens: the baselines gather the kept tubelets before their GEMM (as our torch path does), never a full
    Conv3d followed by a gather, which would charge them for tokens nobody keeps."""
    from vmae_fast.testing.kernels import patch_embed_pow2pad

    gen = torch.Generator().manual_seed(3)
    K = 3 * ts * P * P
    frames = torch.randint(0, 256, (B, T, S, S, 3), generator=gen, dtype=torch.uint8).to(device)
    weight4 = (torch.randn(D, 3, ts, P, P, generator=gen) * K ** -0.5).to(device, dtype)
    weight = weight4.reshape(D, K)
    bias = torch.randn(D, generator=gen).to(device, dtype)
    N = (T // ts) * (S // P) ** 2
    pos = torch.randn(N, D, generator=gen).to(device)
    mean = torch.tensor([0.485, 0.456, 0.406], device=device)
    std = torch.tensor([0.229, 0.224, 0.225], device=device)
    half = torch.randperm(B * N, generator=gen)[: B * N // 2].sort().values.to(device)
    prepared = prepare_weight(weight, True, P, ts)  # laid out once, as the model does at load
    for keep, ids in (("all", None), ("half", half)):
        M = B * N if ids is None else ids.numel()
        providers = {}
        if triton_runs_on(device):
            providers["triton"] = lambda ids=ids: patch_embed(frames, weight, bias, pos, mean, std, ids, patch_size=P,
                                                              tubelet_size=ts, prepared_weight=prepared,
                                                              backend="triton", check=False)
            providers["triton-pow2pad"] = lambda ids=ids: patch_embed_pow2pad(frames, weight, bias, pos, mean, std,
                                                                              ids, P, ts)
        if ids is None:
            def torch_conv():  # the unfused model: normalize the float frames, Conv3d, flatten, + pos
                x = frames.permute(0, 4, 1, 2, 3).to(dtype).div(255)  # (B, 3, T, H, W)
                x = (x - mean.to(dtype).view(1, 3, 1, 1, 1)) / std.to(dtype).view(1, 3, 1, 1, 1)
                y = F.conv3d(x, weight4, bias, stride=(ts, P, P)).flatten(2).transpose(1, 2) + pos.to(dtype)
                return y.reshape(B * N, D)
            providers["torch-conv3d"] = torch_conv
        # normalize, unfold, gather the kept tubelets, one GEMM (vmae_fast's own torch path)
        providers["torch-gather-gemm"] = lambda ids=ids: patch_embed(frames, weight, bias, pos, mean, std, ids,
                                                                     patch_size=P, tubelet_size=ts, backend="torch",
                                                                     check=False)
        bytes_moved = frames.numel() + weight.numel() * weight.element_size() + M * D * weight.element_size()
        emit(rows, env, "patch_embed", dtype, {"B": B, "T": T, "H": S, "W": S, "P": P, "ts": ts, "D": D,
                                               "keep": keep, "N_kept": M},
             measure(providers, device, reps, lambda out: out), 2 * M * K * D, bytes_moved)


def bench_model_share(rows, env, device, dtype, reps, preset, B, config=None):
    """Share of a whole forward (random weights, all tokens, uint8 frames) taken by patch_embed, both timed with
    the model's own tensors in one run (config: VideoMAEConfig field overrides, for tiny runs). Imports
    vmae_fast.checkpoint (torch only)."""
    from vmae_fast.checkpoint import load_model

    model = load_model(f"random:{preset}", device=device, dtype=dtype, config=config,
                       backend="triton" if triton_runs_on(device) else "torch")
    c = model.config
    gen = torch.Generator().manual_seed(4)
    frames = torch.randint(0, 256, (B, c.num_frames, c.image_size, c.image_size, 3), generator=gen,
                           dtype=torch.uint8).to(device)
    backend = "triton" if triton_runs_on(device) else "torch"
    prepared = prepare_weight(model.patch_embed.weight, True, c.patch_size, c.tubelet_size)  # as the model's, at load

    def forward():
        with torch.inference_mode():
            return model(frames).embeddings

    def embed():
        return patch_embed(frames, model.patch_embed.weight, model.patch_embed.bias, model.pos_table,
                           model.pixel_mean, model.pixel_std, patch_size=c.patch_size, tubelet_size=c.tubelet_size,
                           prepared_weight=prepared, backend=backend, check=False)
    results = measure({"model": forward, "patch_embed": embed}, device, reps)
    shape = {"preset": preset, "B": B, "T": c.num_frames, "H": c.image_size, "P": c.patch_size, "backend": backend}
    if "ms" in results.get("model", {}) and "ms" in results.get("patch_embed", {}):
        results["patch_embed"]["share_of_model"] = results["patch_embed"]["ms"] / results["model"]["ms"]
    emit(rows, env, "model_share", dtype, shape, results)


# --- main ------------------------------------------------------------------------------------------------------------
def run(device: torch.device, dtypes: list[torch.dtype], smoke: bool, model_share: str | None = None,
        batch: int = 32) -> list[dict]:
    env = environment(device)
    rows: list[dict] = []
    reps = 2 if smoke else 20
    for dtype in dtypes:
        if smoke:  # tiny shapes: the Triton interpreter on CPU
            bench_attention(rows, env, device, dtype, reps, B=2, n=24, H=2, d=16)
            bench_layer_norm(rows, env, device, dtype, reps, M=64, D=100)
            bench_pooling(rows, env, device, dtype, reps, B=3, n=20, D=100)
            bench_patch_embed(rows, env, device, dtype, reps, B=1, T=2, S=32, P=16, ts=2, D=64)
            continue
        # ViT-B 16x224: N = 1568 tokens per clip, batch x heads = 384; ViT-H (d 80) and ViT-g (d 88) head dims.
        for H, d in ((12, 64), (16, 80), (16, 88)):
            bench_attention(rows, env, device, dtype, reps, B=32, n=1568, H=H, d=d)
        for D in (768, 1024, 1280, 1408):
            bench_layer_norm(rows, env, device, dtype, reps, M=32 * 1568, D=D)
            bench_pooling(rows, env, device, dtype, reps, B=32, n=1568, D=D)
        bench_patch_embed(rows, env, device, dtype, reps, B=32, T=16, S=224, P=16, ts=2, D=768)
        bench_patch_embed(rows, env, device, dtype, reps, B=16, T=16, S=224, P=14, ts=2, D=1408)
    if model_share:
        for dtype in dtypes:
            bench_model_share(rows, env, device, dtype, reps, model_share, batch)
    return rows


def print_table(rows: list[dict]) -> None:
    print(f"{'op':<20} {'dtype':<9} {'provider':<15} {'shape':<58} {'ms':>9} {'first ms':>9} {'TFLOP/s':>8} "
          f"{'GB/s':>8} {'max diff':>9}")
    for r in rows:
        shape = ",".join(f"{k}={v}" for k, v in r["shape"].items())
        if "error" in r:
            print(f"{r['op']:<20} {r['dtype']:<9} {r['provider']:<15} {shape:<58} {r['error']}")
            continue
        tf = f"{r['tflops']:.1f}" if "tflops" in r else ""
        gb = f"{r['gbps']:.1f}" if "gbps" in r else ""
        diff = f"{r['max_abs_diff']:.2e}" if "max_abs_diff" in r else ""
        if "share_of_model" in r:
            diff = f"{100 * r['share_of_model']:.1f}% model"
        print(f"{r['op']:<20} {r['dtype']:<9} {r['provider']:<15} {shape:<58} {r['ms']:>9.4f} "
              f"{r['first_call_ms']:>9.1f} {tf:>8} {gb:>8} {diff:>9}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny shapes on CPU (Triton via TRITON_INTERPRET=1)")
    p.add_argument("--device", default=None, help="cuda (default when available) or cpu")
    p.add_argument("--dtype", default=None, help="comma-separated: bf16, fp16, fp32 (default bf16; smoke: fp32)")
    p.add_argument("--model-share", default=None, metavar="PRESET",
                   help="also time a whole random-weight model (small|base|large|huge|giant) and patch_embed alone "
                        "on its tensors: the patch embedding's share of model time")
    p.add_argument("--batch", type=int, default=32, help="clips per batch for --model-share (default 32)")
    p.add_argument("--out", default=None, help="JSON path (default bench/results/kernels-<device>-<date>.json; "
                                               "smoke: no file unless given)")
    args = p.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() and not args.smoke else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda but torch sees no GPU")
    names = (args.dtype or ("fp32" if args.smoke else "bf16")).split(",")
    unknown = [n for n in names if n not in DTYPES]
    if unknown:
        p.error(f"unknown dtype(s) {unknown}; choose from {sorted(DTYPES)}")
    if device.type == "cpu" and not args.smoke:
        print("note: full shapes on CPU take long; --smoke runs tiny ones", file=sys.stderr)
    rows = run(device, [DTYPES[n] for n in names], args.smoke, args.model_share, args.batch)
    print_table(rows)
    out = args.out
    if out is None and not args.smoke:
        slug = "".join(c if c.isalnum() else "-" for c in rows[0]["device"]).strip("-").lower() if rows else "none"
        out = ROOT / "bench" / "results" / f"kernels-{slug}-{datetime.date.today().isoformat()}.json"
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(rows, indent=1) + "\n")
        print(f"wrote {len(rows)} rows to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
