"""`vmae-fast` command line: one subcommand per section below; each section owns its arguments and its runner.

Fatal problems (bad arguments, a model that cannot load, an output that cannot be written) end with a one-line
message and a non-zero exit; set VMAE_FAST_DEBUG=1 to see the traceback.
"""

from __future__ import annotations

import argparse
import os
import sys


# --- info ------------------------------------------------------------------------------------------------------------
def _add_info(sub) -> None:
    p = sub.add_parser("info", help="print a model's config, parameter count, input shape and preprocessing")
    p.add_argument("model", help="HF directory, original .pth, hub id in the local cache, or random:<preset>")
    p.set_defaults(run=_run_info)


def _run_info(args) -> int:
    raise NotImplementedError  # filled by the foundation work


# --- extract ---------------------------------------------------------------------------------------------------------
def _add_extract(sub) -> None:
    p = sub.add_parser("extract", help="embed every clip of videos/folders/list files into a Parquet dataset",
                       description="Embed every clip of the INPUT videos into OUT (Parquet: clips/, errors/, "
                                   "_run.json). Rerunning the same command resumes where it stopped.")
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="video files, folders (searched recursively) or list files (.txt, .csv/.parquet with a path "
                        "column and optional video_id, start_s, end_s)")
    p.add_argument("-o", "--out", required=True, help="output folder (created; resumed when it exists)")
    p.add_argument("--model", default="random:small",
                   help="HF folder, original .pth, hub id in the local cache, or random:<preset> (default %(default)s)")
    p.add_argument("--clip-frames", type=int, help="frames per clip (must equal the model's num_frames; default it)")
    step = p.add_mutually_exclusive_group()
    step.add_argument("--frame-step", type=int, help="take every S-th frame (default: frames ~1/7.5 s apart)")
    step.add_argument("--fps", type=float, help="sample frames at F frames per second")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--clip-stride-s", type=float, help="sliding clips every X seconds (default: the clip's span)")
    where.add_argument("--clips-per-video", type=int, help="N clips spread uniformly over each video")
    p.add_argument("--keep", default="all", help="tokens each clip keeps: all, tube:0.5, motion:0.5 (default all)")
    p.add_argument("--batch-size", type=int, default=32, help="clips per model batch (default %(default)s)")
    p.add_argument("--workers", type=int, help="decoding processes (default: CPU cores - 1, at most 16)")
    p.add_argument("--device", help="cpu, cuda or cuda:<index> (default: cuda:LOCAL_RANK when available, else cpu)")
    p.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), help="model precision (default: bf16 on CUDA, fp32 CPU)")
    p.add_argument("--shard", help="process only shard i of n (i/n); default from torchrun or SLURM variables")
    p.add_argument("--overwrite", action="store_true", help="discard what OUT holds and start over")
    p.add_argument("--embedding-dtype", choices=("float32", "float16"), default="float32",
                   help="storage type of the embedding column (default %(default)s)")
    p.add_argument("--timeout-s", type=float, default=120.0,
                   help="a decoding worker with no progress for this long is replaced (default %(default)s)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="show a progress bar (default: when stderr is a terminal)")
    p.add_argument("--backend", choices=("auto", "triton", "torch"), default="auto", help="model kernels")
    p.add_argument("--part-rows", type=int, default=100_000, help="rows per Parquet part file (default %(default)s)")
    p.add_argument("--commit-interval-s", type=float, default=60.0,
                   help="write finished videos at least this often, bounding work lost to a crash (default %(default)s)")
    p.set_defaults(run=_run_extract)


def _run_extract(args) -> int:
    from .extract import extract, format_summary

    for name in ("batch_size", "part_rows", "clip_frames", "frame_step", "clips_per_video"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise FatalError(f"--{name.replace('_', '-')} must be a positive integer, got {value}")
    for name in ("fps", "clip_stride_s", "commit_interval_s", "timeout_s"):
        value = getattr(args, name)
        if value is not None and not value > 0:
            raise FatalError(f"--{name.replace('_', '-')} must be positive, got {value}")
    summary = extract(args.inputs, args.out, model=args.model, clip_frames=args.clip_frames,
                      frame_step=args.frame_step, fps=args.fps, clip_stride_s=args.clip_stride_s,
                      clips_per_video=args.clips_per_video, keep=args.keep, batch_size=args.batch_size,
                      workers=args.workers, device=args.device, dtype=args.dtype, shard=args.shard,
                      overwrite=args.overwrite, embedding_dtype=args.embedding_dtype, timeout_s=args.timeout_s,
                      progress=args.progress, backend=args.backend, part_rows=args.part_rows,
                      commit_interval_s=args.commit_interval_s)
    print(format_summary(summary))
    return 0


# --- entry point -----------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vmae-fast", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_info, _add_extract):
        add(sub)
    return parser


class FatalError(Exception):
    """A problem that ends the command with a one-line message and exit status 2."""


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        print("vmae-fast: interrupted", file=sys.stderr)
        return 130
    except (FatalError, ValueError, TypeError, OSError, KeyError) as e:
        if os.environ.get("VMAE_FAST_DEBUG"):
            raise
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"vmae-fast {args.command}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
