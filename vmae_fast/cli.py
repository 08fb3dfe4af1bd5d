"""`vmae-fast` command line: one subcommand per section below; each section owns its arguments and its runner.

Exit status (faults.py; every subcommand's --help lists its own, EXIT_STATUSES): 0 done; 2 the user's problem
(bad arguments, missing inputs, a model that cannot load, an output that cannot be written, a held shard lock, a
missing package, CUDA out of memory at one clip per batch): one line; 3 `index` built the index but did not meet
the recall target; 75 the environment's fault (a decode worker killed by the OOM killer, a file system or network
that failed for a moment): one line, finished videos are committed, rerun the same command to resume; 1 anything
else, i.e. our bug: its traceback and a request to report it; 130 Ctrl-C, 143 SIGTERM. VMAE_FAST_DEBUG=1 raises
every error with its traceback.

Public API (`__all__`): main(argv) -> exit status (what the `vmae-fast` command runs) and build_parser().
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from .faults import (
    EXIT_BUG,
    EXIT_ENVIRONMENT,
    EXIT_INTERRUPTED,
    EXIT_RECALL,
    EXIT_TERMINATED,
    EXIT_USER,
    UserError,
    exit_status,
)


# --- info ------------------------------------------------------------------------------------------------------------
def _add_info(sub) -> None:
    p = sub.add_parser("info", help="print a model's config, parameter count, input shape and preprocessing")
    p.add_argument("model", help="HF directory, original .pth, hub id in the local cache, or random:<preset>[:seed]")
    p.add_argument("--device", default="cpu", help="device to load on (default %(default)s)")
    p.add_argument("--json", action="store_true", help="print model.describe() as JSON instead of text")
    p.set_defaults(run=_run_info)


def _run_info(args) -> int:
    import json

    from .checkpoint import load_model

    model = load_model(args.model, device=args.device)
    d = model.describe()
    if args.json:
        print(json.dumps(d, indent=2))
        return 0
    c, pre = model.config, d["preprocessing"]
    n_t, n_h, n_w = c.grid
    head = f"{c.num_labels} labels" if c.num_labels else "none (embeddings only)"
    vjepa2 = d["architecture"] == "vjepa2"
    family = (f"V-JEPA 2 ViT, 3D rotary positions (t/h/w sections of {c.rope_section} columns)" if vjepa2 else
              "VideoMAE ViT, fixed sin/cos positions")
    eps = f"LayerNorm eps {c.layer_norm_eps:g}"
    if not vjepa2 and c.use_mean_pooling and c.has_fc_norm:
        eps += f", fc_norm eps {c.fc_norm_eps:g}"
    if vjepa2 and c.num_labels:
        head += f" (attentive pooler: {c.num_pooler_layers} self-attention layers + 1 cross-attention)"
    lines = [
        f"model           {d['source']}",
        f"weights sha256  {d['weights_sha256']}",
        f"parameters      {d['num_parameters']:,}",
        (f"architecture    {family}: hidden {c.hidden_size}, {c.num_hidden_layers} blocks, {c.num_attention_heads} "
         f"heads (head dim {c.head_dim}), MLP {c.intermediate_size}, qkv bias {c.qkv_bias}"),
        (f"tokens          {c.num_tokens} per clip = {n_t} x {n_h} x {n_w} (tubelet {c.tubelet_size} frames x "
        f"{c.patch_size}x{c.patch_size} px)"),
        f"embedding       {c.hidden_size}-d: {d['embedding']}; {eps}",
        f"head            {head}",
        (f"input           uint8 (B, {c.num_frames}, {c.image_size}, {c.image_size}, {c.num_channels}) RGB, or "
        f"float (B, {c.num_frames}, {c.num_channels}, {c.image_size}, {c.image_size}) normalized"),
        (f"preprocessing   resize shortest edge to {pre.get('resize_shortest_edge', pre['image_size'])} "
         f"({pre['interpolation']}), {pre['crop']} crop {pre['image_size']}x{pre['image_size']}, x/255, "
         f"mean {pre['mean']}, std {pre['std']}"),
        f"loaded as       {d['dtype']} on {d['device']}, backend {d['backend']}",
    ]
    print("\n".join(lines))
    return 0


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
    p.add_argument("--crops", type=int,
                   help="spatial views per clip: 1 = center crop (default), 3 = start, center and end of the long "
                        "side after the short-side resize (the VideoMAE papers' multi-view test)")
    p.add_argument("--views", metavar="CLIPSxCROPS",
                   help="multi-view testing, e.g. 5x3 (Kinetics) or 2x3 (SSv2): --clips-per-video CLIPS --crops "
                        "CROPS; each video also gets a row of OUT/videos (mean softmax, top labels)")
    p.add_argument("--keep", default="all", help="tokens each clip keeps: all, tube:0.5, motion:0.5 (default all)")
    p.add_argument("--batch-size", type=int, help="clips per model batch (default: 32 with CUDA, 8 on CPU)")
    p.add_argument("--workers", type=int,
                   help="decoding processes (default: CPU cores - 1, at most 16, with CUDA; on CPU one, more while "
                        "the model waits for clips)")
    p.add_argument("--device", help="cpu, cuda or cuda:<index> (default: cuda:LOCAL_RANK when available, else cpu)")
    p.add_argument("--dtype", choices=("bf16", "fp16", "fp32"),
                   help="model precision (default: bf16 on CUDA, fp32 CPU)")
    p.add_argument("--shard", help="process only shard i of n (i/n); default from torchrun or SLURM variables")
    p.add_argument("--overwrite", action="store_true", help="discard what OUT holds and start over")
    p.add_argument("--embedding-dtype", choices=("float32", "float16"), default="float32",
                   help="storage type of the embedding column (default %(default)s)")
    p.add_argument("--timeout-s", type=float, default=120.0,
                   help="a decoding worker with no progress for this long is replaced (default %(default)s)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="show a progress bar (default: a bar when stderr is a terminal, else a plain line a minute)")
    p.add_argument("--backend", choices=("auto", "triton", "torch"), default="auto", help="model kernels")
    p.add_argument("--decode-backend", choices=("auto", "pyav", "decord", "torchcodec"), default="auto",
                   help="video decoder: auto (PyAV, measured fastest per core), pyav, decord (PyAV for the files it "
                        "gets wrong), torchcodec (optional package)")
    p.add_argument("--decode-device", default="cpu",
                   help="cpu, or cuda / cuda:<index>: decode with NVDEC through torchcodec, frames stay on the GPU "
                        "(default %(default)s)")
    p.add_argument("--part-rows", type=int, default=100_000, help="rows per Parquet part file (default %(default)s)")
    p.add_argument("--commit-interval-s", type=float, default=60.0,
                   help="write finished videos at least this often, bounding work lost to a crash "
                        "(default %(default)s)")
    p.add_argument("--retry-errors", action="store_true",
                   help="redo the videos that have error rows (the rows are moved to OUT/errors/_retried/; the new "
                        "outcome replaces them)")
    p.add_argument("--break-lock", action="store_true",
                   help="take this shard's lock although another host holds it and renews its lease (only when "
                        "that job is known gone; a lock not renewed for 2 min is taken over without this)")
    ray = p.add_argument_group("Ray engine (--engine ray; pip install \"vmae-fast[ray]\")")
    ray.add_argument("--engine", choices=("local", "ray"), default="local",
                     help="local: this process and its decode workers (static --shard); ray: a Ray Data job, one "
                          "actor per GPU pulling groups of videos (default %(default)s)")
    ray.add_argument("--ray-address", help="Ray cluster address (default: RAY_ADDRESS, else a local cluster)")
    ray.add_argument("--ray-actors", help="actors N, or MIN-MAX to autoscale (default: one per GPU; CPU-only: "
                                          "one per --ray-cpus-per-actor CPUs)")
    ray.add_argument("--ray-cpus-per-actor", type=float,
                     help="CPUs each actor decodes with (default: a GPU node's CPUs / its GPUs; CPU-only: a node's)")
    ray.add_argument("--ray-gpus-per-actor", type=float, help="default 1 with GPUs, else 0; 0.5: two actors a GPU")
    ray.add_argument("--ray-group-videos", type=int,
                     help="videos per group, the unit of balancing and of redo after a lost actor (default 32)")
    p.set_defaults(run=_run_extract)


_EXTRACT_OPTIONS = ("inputs", "out", "model", "clip_frames", "frame_step", "fps", "clip_stride_s", "clips_per_video",
                    "crops", "views", "keep", "batch_size", "workers", "device", "dtype", "shard", "overwrite",
                    "embedding_dtype", "timeout_s", "progress", "backend", "decode_backend", "decode_device",
                    "part_rows", "commit_interval_s", "retry_errors", "break_lock", "engine")


def extract_spec(args):
    """The RunSpec of `vmae-fast extract` arguments (checked there, messages naming the flags)."""
    from .extraction.spec import RunSpec

    options = {name: getattr(args, name) for name in _EXTRACT_OPTIONS}
    ray = {"actors": args.ray_actors, "cpus_per_actor": args.ray_cpus_per_actor,
           "gpus_per_actor": args.ray_gpus_per_actor, "group_videos": args.ray_group_videos}
    ray = {key: value for key, value in ray.items() if value is not None}
    if args.engine == "ray" or ray or args.ray_address is not None:  # --ray-* without --engine ray: the spec refuses
        options.update(ray_address=args.ray_address, ray_options=ray)
    return RunSpec.from_options(options, origin="cli")


def _run_extract(args) -> int:
    from .extraction import run

    spec = extract_spec(args)
    import signal
    import threading

    def _stop(signum, frame):  # SLURM preemption / `kill`: stop like Ctrl-C, so finished videos get written
        raise Terminated

    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _stop) if main_thread else None
    try:
        summary = run(spec)
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
    try:
        print(format_summary(summary))
        if summary.engine == "ray":
            print(format_actors(summary))
        sys.stdout.flush()  # a pipe's reader that left shows here, not after main returned
    except BrokenPipeError:  # `vmae-fast extract ... | head -1`: the run is done and committed, nothing to rerun
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def format_summary(summary) -> str:
    """A few human lines of a RunSummary: counts, throughput, and where the wall time went (is the model
    starved?)."""
    s = summary
    lines = [
        f"vmae-fast extract: {s['videos']} videos in shard {s['shard']}: {s['videos_ok']} ok, "
        f"{s['videos_failed']} errors, {s['videos_skipped']} already done"
        + (f" ({s['videos_other_shards']} in other shards)" if s["videos_other_shards"] else "")
        + (f", {s['errors_retried']} error rows retried" if s.get("errors_retried") else "")
        + f"; {s['clips']} clips -> {s['out']}",
        (f"time {s['wall_s']:.1f} s: model {s['compute_s']:.1f} s"
         + (f" on {s['model_threads']} threads" if s.get("model_threads") else "")
         + f", waiting for decoded clips {s['wait_s']:.1f} s, writing {s['write_s']:.1f} s; decoding took "
         + (f"{s['decode_cpu_s']:.1f} s of worker CPU ({s['decode_s']:.1f} s in the decoder, "
            if s.get("decode_cpu_s") is not None else f"{s['decode_s']:.1f} s of worker time (")
         + f"{s['workers']} workers)"),
        (f"throughput {s['clips_per_s']:.1f} clips/s, {s['video_seconds'] / max(s['wall_s'], 1e-9):.1f} "
         f"video-seconds/s on {s['device']} ({s['dtype']}"
         + (f", batch {s['batch_size']}" if s.get("batch_size") else "")
         + (f", {s['padded_rows']} padding rows in {s['batches']} batches" if s.get("padded_rows") else "")
         + f", keep {s['keep']})"),
    ]
    if s.get("oom_halvings"):
        sizes = [s["oom_halvings"][0][0]] + [after for _, after in s["oom_halvings"]]
        lines.append(f"out of GPU memory: batch {' -> '.join(map(str, sizes))} (next time start with --batch-size "
                     f"{sizes[-1]})")
    busy = s["compute_s"] + s["wait_s"]
    if s["clips"] and busy > 0:
        if s["wait_s"] > 0.25 * busy:
            lines.append(f"decode-bound: the model waited for clips {100 * s['wait_s'] / busy:.0f}% of the time; "
                         "more --workers (or a lower resolution source) would help")
        else:
            lines.append(f"model-bound: the model was busy {100 * s['compute_s'] / busy:.0f}% of the time")
    if not s["videos"] and not s["videos_other_shards"]:  # a mistyped folder, a list of nothing: say so
        lines.append("note: the inputs hold no video (a folder is searched recursively for files with a video "
                     "extension; a list file names its videos): nothing was done")
    if str(s.get("model", "")).startswith("random:"):
        lines.append("note: the model has random weights (--model random:...); pass a checkpoint for real embeddings")
    return "\n".join(lines)


def format_actors(summary) -> str:
    """The per-actor lines of a Ray run's summary (RaySummary): where each actor's time went."""
    ray, ran = summary["ray"], len(summary["actors"])
    pool = ray.get("concurrency")  # the pool's size (N, or (MIN, MAX)); Ray decides which actors get the groups
    pool = f"{pool[0]}-{pool[1]}" if isinstance(pool, (tuple, list)) else pool
    lines = [(f"ray: {summary['groups']} groups run by {ran} {'actor' if ran == 1 else 'actors'}"
              + (f" of a pool of {pool}" if pool is not None else "")
              + f" ({ray['cpus_per_actor']:g} CPU, {ray['gpus_per_actor']:g} GPU each)")]
    for a in summary["actors"]:
        busy = a.get("compute_s", 0) + a.get("wait_s", 0)
        lines.append(f"  actor {a['actor']} on {a['node']}: {a['groups']} groups, {a.get('videos', 0)} videos, "
                     f"{a.get('clips', 0)} clips in {a.get('busy_s', 0):.1f} s: model {a.get('compute_s', 0):.1f} s, "
                     f"waiting for clips {a.get('wait_s', 0):.1f} s, writing {a.get('write_s', 0):.1f} s, decoding "
                     f"{a.get('decode_cpu_s', 0):.1f} s CPU ({a.get('workers', 0)} workers), "
                     f"batch {a.get('batch_size')}"
                     + (f"; model busy {100 * a['compute_s'] / busy:.0f}%" if busy > 0 else ""))
    return "\n".join(lines)


# --- labels ----------------------------------------------------------------------------------------------------------
def format_labels(rows: list[dict[str, Any]]) -> str:
    """Human lines: the video, its views and duration, then one line per label with its probability."""
    lines = []
    for row in rows:
        views = (f"{row['num_views']} views ({row['num_clips']} clips x {row['num_crops']} crops)"
                 if row.get("num_crops", 1) > 1 else f"{row['num_views']} clips")
        lines.append(f"{row['video_id']}  {views}, {row['duration_s']:.1f} s")
        lines += [f"  {100 * item['prob']:6.2f}%  {item['label']}" for item in row["labels"]]
    return "\n".join(lines)


def _add_labels(sub) -> None:
    p = sub.add_parser("labels", help="print each video's most probable labels (softmax averaged over its views)",
                       description="Print the top labels of every video of OUT with their probabilities: the mean "
                                   "over the video's views (clips x crops, see extract --views) of softmax(logits), "
                                   "as the VideoMAE papers evaluate. Needs a model with a classification head.")
    p.add_argument("out", metavar="OUT", help="output folder of `vmae-fast extract`")
    p.add_argument("--top", type=int, default=5, help="labels per video (default %(default)s)")
    p.add_argument("--json", action="store_true", help="one JSON object per video a line (JSON Lines)")
    p.set_defaults(run=_run_labels)


def _run_labels(args) -> int:
    import json

    from .store.layout import has_video_table
    from .store.reader import iter_videos, run_labels
    from .store.videos import video_labels

    if args.top < 1:
        raise FatalError(f"--top must be a positive integer, got {args.top}")
    id2label, _, num_labels = run_labels(args.out)
    if not num_labels:
        raise FatalError(f"{args.out} has no labels: its model has no classification head (embeddings only); "
                         "extract with a fine-tuned checkpoint (e.g. a Kinetics one) to get labels")
    if not has_video_table(args.out):
        print(f"vmae-fast labels: {args.out} has no video table (written before it existed): aggregating its clips",
              file=sys.stderr)
    columns = ["video_id", "path", "num_views", "num_clips", "num_crops", "duration_s", "probs"]
    count = 0
    try:
        for table in iter_videos(args.out, columns):
            rows = video_labels(table, args.top, id2label)
            if rows:
                print("\n".join(json.dumps(row) for row in rows) if args.json else format_labels(rows), flush=True)
            count += len(rows)
    except BrokenPipeError:  # `vmae-fast labels OUT | head`: the reader left, which is not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    if not count:
        print(f"vmae-fast labels: no videos in {args.out} yet", file=sys.stderr)
    return 0


# --- index -----------------------------------------------------------------------------------------------------------
def _add_index(sub) -> None:
    p = sub.add_parser("index", help="build a FAISS index over the clip embeddings of an extract output",
                       description="Build a cosine-similarity index over OUT/clips, saved in OUT/index/ with the "
                                   "row -> clip map and a fingerprint of the data (search refuses a stale index). "
                                   "Recall@10 is measured on held-out clips against exact search and the search "
                                   "parameters tuned to --target-recall. Run it again after extracting more: only "
                                   "the new part files are added.")
    p.add_argument("out", metavar="OUT", help="output folder of `vmae-fast extract`")
    p.add_argument("--level", choices=("clip", "video"), default="clip",
                   help="one vector per clip, or per video (mean of its clips, renormalized) (default %(default)s)")
    p.add_argument("--kind", choices=("auto", "flat", "ivf", "ivfpq", "opq", "hnsw"), default="auto",
                   help="auto: chosen from the row count, dimension and --max-memory; flat: exact; ivf: inverted "
                        "lists of full vectors; ivfpq: PQ codes + 8-bit re-ranking; opq: OPQ + PQ codes only; hnsw: "
                        "graph (default %(default)s)")
    p.add_argument("--target-recall", type=float, default=0.95,
                   help="tune search parameters to the cheapest setting with at least this recall@10 (default "
                        "%(default)s)")
    p.add_argument("--tune-queries", type=int, default=1000, metavar="N",
                   help="held-out clips that measure recall; their exact top 10 costs a scan of every row per "
                        "query batch, 2*N*rows*dim flops (default %(default)s: recall +-0.005)")
    p.add_argument("--max-memory", metavar="SIZE",
                   help="memory the index may take, e.g. 16G or 800M (default: half of this machine's RAM)")
    p.add_argument("--batch-size", type=int, default=65_536, help="rows read at a time (default %(default)s)")
    p.add_argument("--nlist", type=int, help="IVF kinds: inverted lists (default: power of two nearest 4*sqrt(rows))")
    p.add_argument("--m", type=int, help="ivfpq/opq: PQ bytes per vector (default dim/16; opq: the most that fit)")
    p.add_argument("--nprobe", type=int, help="IVF kinds: lists searched per query (default: tuned)")
    p.add_argument("--k-factor", type=int, help="ivfpq: candidates re-ranked per result (default: tuned)")
    p.add_argument("--hnsw-m", type=int, help="hnsw: graph links per node (default 32)")
    p.add_argument("--ef-search", type=int, help="hnsw: search breadth (default: tuned)")
    p.add_argument("--factory", help="a FAISS index_factory string instead of --kind (e.g. 'IVF4096,SQ8')")
    p.add_argument("--rebuild", action="store_true", help="build from scratch even if only new parts were added")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="show a progress bar (default: a bar when stderr is a terminal, else a plain line a minute)")
    p.set_defaults(run=_run_index)


_INDEX_PARAMS = {"nlist": ("ivf", "ivfpq", "opq"), "m": ("ivfpq", "opq"), "nprobe": ("ivf", "ivfpq", "opq"),
                 "k_factor": ("ivfpq",), "hnsw_m": ("hnsw",), "ef_search": ("hnsw",)}


def _run_index(args) -> int:
    from .retrieval.index import Index

    if args.batch_size < 1:
        raise FatalError(f"--batch-size must be a positive integer, got {args.batch_size}")
    if not 0 < args.target_recall <= 1:
        raise FatalError(f"--target-recall must be in (0, 1], got {args.target_recall}")
    if args.tune_queries < 1:
        raise FatalError(f"--tune-queries must be a positive integer, got {args.tune_queries}")
    params = {k: getattr(args, k) for k in _INDEX_PARAMS if getattr(args, k) is not None}
    for name, value in params.items():
        if value < 1:
            raise FatalError(f"--{name.replace('_', '-')} must be a positive integer, got {value}")
        if args.kind not in ("auto", *_INDEX_PARAMS[name]) and not args.factory:
            raise FatalError(f"--{name.replace('_', '-')} applies to --kind {' or '.join(_INDEX_PARAMS[name])}, "
                             f"not {args.kind}")
    if args.factory:
        params["factory"] = args.factory
    try:
        index = Index.build(args.out, level=args.level, kind=args.kind, batch_size=args.batch_size,
                            progress=args.progress, target_recall=args.target_recall, max_memory=args.max_memory,
                            rebuild=args.rebuild, tune_queries=args.tune_queries,
                            log=lambda msg: print(f"vmae-fast index: {msg}", file=sys.stderr),
                            **params)
    except ImportError as e:  # no faiss installed: say so in one line
        raise FatalError(str(e)) from None
    m = index.manifest
    print(f"vmae-fast index: {index.describe()}; built in {m['build_s']:.1f} s -> "
          f"{Index.paths(args.out, args.level)['faiss']}")
    stats = index.stats
    if stats.get("met") is False:
        print(f"vmae-fast index: warning: target recall not met: {stats['suggestion']}", file=sys.stderr)
        return EXIT_RECALL
    return 0


# --- search ----------------------------------------------------------------------------------------------------------
def _add_search(sub) -> None:
    p = sub.add_parser("search", help="find the clips most similar to a video moment, a stored clip or a vector",
                       description="Rank the clips (or videos, --level video) of OUT by cosine similarity to a query.")
    p.add_argument("out", metavar="OUT", help="output folder of `vmae-fast extract` with an index (`vmae-fast index`)")
    q = p.add_mutually_exclusive_group(required=True)
    q.add_argument("--video", metavar="PATH", help="embed the clip of this video at --at seconds (same model/settings)")
    q.add_argument("--clip", metavar="VIDEO_ID:CLIP_INDEX", help="a clip already in OUT")
    q.add_argument("--vector", metavar="FILE.npy", help="query vector(s): float array (D,) or (n, D)")
    p.add_argument("--at", type=float, default=0.0, metavar="SECONDS", help="time of the --video query (default 0)")
    p.add_argument("-k", type=int, default=10, help="matches per query (default %(default)s)")
    p.add_argument("--level", choices=("clip", "video"), default="clip", help="which index to search (default clip)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--show", metavar="PNG", help="also draw a contact sheet of the query and matches to this PNG")
    p.add_argument("--html", metavar="HTML", help="also write a self-contained results page (thumbnails embedded, "
                                                  "each match's video playing its segment)")
    p.add_argument("--media-root", metavar="URL",
                   help="--html: prefix for the videos' paths in the page (e.g. https://host/videos/); default: "
                        "file:// URLs of the paths as stored")
    p.add_argument("--device", help="device for embedding a --video query (default: the run's, else cpu)")
    p.set_defaults(run=_run_search)


def _run_search(args) -> int:
    import json

    from .retrieval.index import Index
    from .retrieval.search import format_results, run_query

    if args.k < 1:
        raise FatalError(f"-k must be a positive integer, got {args.k}")
    if args.media_root and not args.html:
        raise FatalError("--media-root only applies with --html")
    try:
        index = Index.load(args.out, level=args.level)  # first: a missing or stale index fails before any embedding
    except ImportError as e:  # no faiss installed: say so in one line
        raise FatalError(str(e)) from None
    results = run_query(index, args.out, video=args.video, at_s=args.at, clip=args.clip, vector=args.vector,
                        k=args.k, device=args.device)
    if args.show:
        from .retrieval.contact_sheet import draw_results

        draw_results(args.out, results, args.show)
    if args.html:
        from .retrieval.results_page import write_page

        write_page(args.out, results, args.html, index=index, media_root=args.media_root)
    if args.json:
        print(json.dumps({"out": str(args.out), "level": index.level, "kind": index.kind, "rows": len(index),
                          "index": index.stats, "results": results}, indent=1))
    else:
        print(format_results(index, results))
        print(f"index: {index.describe()}")
        if args.show:
            print(f"contact sheet: {args.show}")
        if args.html:
            print(f"results page: {args.html}")
    return 0


# --- serve -----------------------------------------------------------------------------------------------------------
def _add_serve(sub) -> None:
    p = sub.add_parser("serve", help="answer searches over HTTP: a JSON API and a web page playing the matches",
                       description="Load the indexes of OUT once (clip level, and video level when built) and answer "
                                   "a JSON API (search by clip, video, vector or uploaded video; metadata; stats; "
                                   "OpenAPI at /openapi.json) and a web page whose result cards play their segments. "
                                   "Needs the serve extra: pip install 'vmae-fast[serve]'.")
    p.add_argument("out", metavar="OUT", help="output folder of `vmae-fast extract` with an index (`vmae-fast index`)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default %(default)s: this machine only; 0.0.0.0 exposes it to the "
                        "network: anyone reaching it can search, upload and play the output's videos)")
    p.add_argument("--port", type=int, default=8000, help="port (default %(default)s; 0: any free port)")
    p.add_argument("--max-upload-mb", type=float, default=512,
                   help="largest video file a search may upload, MB (default %(default)s)")
    p.add_argument("--upload-timeout-s", type=float, default=60.0,
                   help="seconds an uploaded video may take to decode and embed before its worker is stopped "
                        "(default %(default)s)")
    p.add_argument("--allowed-host", action="append", metavar="NAME",
                   help="answer requests addressed to this host name (repeatable; default: the loopback names when "
                        "bound to loopback, any name otherwise)")
    p.add_argument("--device", help="device for embedding uploaded videos (default: the run's, else cpu)")
    p.set_defaults(run=_run_serve)


def _run_serve(args) -> int:
    if not 0 <= args.port <= 65535:
        raise FatalError(f"--port must be in 0..65535, got {args.port}")
    if not args.max_upload_mb > 0:
        raise FatalError(f"--max-upload-mb must be positive, got {args.max_upload_mb}")
    if not args.upload_timeout_s > 0:
        raise FatalError(f"--upload-timeout-s must be positive, got {args.upload_timeout_s}")
    try:
        from .retrieval.service import serve
    except ImportError as e:
        raise FatalError(f"`vmae-fast serve` needs the serve extra ({e}): pip install 'vmae-fast[serve]'") from None
    import signal
    import threading

    def _stop(signum, frame):  # uvicorn shuts down gracefully on SIGTERM, then raises it again: exit 143
        raise Terminated

    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _stop) if main_thread else None
    try:
        serve(args.out, args.host, args.port, max_upload_bytes=int(args.max_upload_mb * 2 ** 20),
              upload_timeout_s=args.upload_timeout_s, allowed_hosts=args.allowed_host, device=args.device)
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
    return 0


# --- dedup -----------------------------------------------------------------------------------------------------------
def _add_dedup(sub) -> None:
    p = sub.add_parser("dedup", help="find near-duplicate videos (or clips) and write them as groups",
                       description="Group the videos (or clips) of OUT whose embeddings are nearly the same: "
                                   "neighbours from the level's index (`vmae-fast index`) or an exact search for "
                                   "small outputs, groups as connected components, written to OUT/dedup/ "
                                   "(<level>.parquet: video_id, group_id, representative, similarity; "
                                   "<level>.json: the summary). Without --threshold, the threshold is chosen from "
                                   "this output: the valley between the mode of near-duplicates and the mode of "
                                   "distinct videos in the neighbour similarities.")
    p.add_argument("out", metavar="OUT", help="output folder of `vmae-fast extract`")
    p.add_argument("--level", choices=("video", "clip"), default="video",
                   help="compare videos (their mean embedding) or clips (default %(default)s)")
    p.add_argument("--threshold", type=float, metavar="T",
                   help="cosine similarity at or above which two are near-duplicates (default: chosen from the "
                        "output, see above)")
    p.add_argument("--keep-list", metavar="FILE",
                   help="also write the ones to keep, one per group and every one in no group: FILE.txt one "
                        "video id a line (clip level: VIDEO_ID:CLIP_INDEX), .csv/.parquet with path and video_id "
                        "(a list `vmae-fast extract` reads); another extension is refused")
    search = p.add_mutually_exclusive_group()
    search.add_argument("--exact", action="store_true",
                        help="exact search in memory even when an index exists (outputs up to 50,000 rows)")
    search.add_argument("--use-index", action="store_true", help="require the level's index (no exact fallback)")
    p.add_argument("-k", type=int, default=16,
                   help="neighbours searched per row (more are searched where all k are above the threshold; "
                        "default %(default)s)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(run=_run_dedup)


def _run_dedup(args) -> int:
    import json

    from .retrieval.dedup import find_groups, format_summary, keep_list_problem, summary, write_groups, write_keep_list

    if args.threshold is not None and not -1 <= args.threshold <= 1:
        raise FatalError(f"--threshold is a cosine similarity in [-1, 1], got {args.threshold}")
    if args.k < 1:
        raise FatalError(f"-k must be a positive integer, got {args.k}")
    if args.keep_list:  # checked before the search for groups, which may take hours, not after it
        folder = os.path.dirname(os.path.abspath(args.keep_list))
        if not os.path.isdir(folder):
            raise FatalError(f"--keep-list {args.keep_list}: the folder {folder} does not exist")
        if os.path.isdir(args.keep_list):
            raise FatalError(f"--keep-list {args.keep_list} is a folder: name the file to write")
        problem = keep_list_problem(args.keep_list)
        if problem is not None:
            raise FatalError(f"--keep-list {args.keep_list}: {problem}")
    exact = True if args.exact else (False if args.use_index else None)
    result = find_groups(args.out, args.level, args.threshold, exact=exact, k=args.k,
                         log=lambda msg: print(f"vmae-fast dedup: {msg}", file=sys.stderr))
    paths = write_groups(result)
    if args.keep_list:
        write_keep_list(result, args.keep_list)
    if args.json:
        print(json.dumps({**summary(result), "files": {k: str(v) for k, v in paths.items()},
                          "keep_list": args.keep_list}, indent=1))
    else:
        print(format_summary(result, paths, args.keep_list))
    return 0


# --- demo ------------------------------------------------------------------------------------------------------------
def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="extract, index and search the bundled sample videos (a first run, end to end)")
    p.add_argument("--model", help="model for extraction (default: a cached Kinetics checkpoint if the Hugging Face "
                                   "cache has one, else random weights)")
    p.add_argument("--out", default="vmae-fast-demo", help="output folder (default ./%(default)s)")
    p.add_argument("-k", type=int, default=5, help="matches to show (default %(default)s)")
    p.set_defaults(run=_run_demo)


def _run_demo(args) -> int:
    from .demo import run_demo

    return run_demo(model=args.model, out=args.out, k=args.k)


# --- entry point -----------------------------------------------------------------------------------------------------
# What each subcommand's exit status means (faults.exit_status decides 1, 2 and 75): listed in its --help
_EXIT_COMMON = {
    0: "done",
    1: "a bug of vmae-fast: its traceback, and a request to report it",
    EXIT_USER: "a problem to fix on your side (a bad argument, a missing file, a model or output that cannot be "
               "used, a missing package): one line saying what",
    EXIT_ENVIRONMENT: "the environment failed for a moment (a file system, the network, memory): one line; run the "
                      "same command again",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C)",
}
EXIT_STATUSES = {
    "extract": {0: "every input was processed or recorded as an error row (OUT/errors)",
                EXIT_ENVIRONMENT: "the environment failed for a moment (a decode worker killed by the OOM killer, a "
                                  "file system or network error): one line; finished videos are committed: run the "
                                  "same command again to resume",
                EXIT_INTERRUPTED: "interrupted (Ctrl-C): finished videos are committed",
                EXIT_TERMINATED: "terminated (SIGTERM, e.g. a SLURM preemption): finished videos are committed"},
    "index": {EXIT_RECALL: "the index was built and saved, but the measured recall is below --target-recall (the "
                           "warning says what to change)"},
    "serve": {EXIT_TERMINATED: "terminated (SIGTERM), after a graceful shutdown"},
}


class _HelpFormatter(argparse.HelpFormatter):
    """argparse's own wrapping for descriptions; text with line breaks of its own (the exit statuses) as written."""

    def _fill_text(self, text, width, indent):
        if "\n" in text:
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


def _exit_help(command: str) -> str:
    """The 'exit status' section of a subcommand's --help."""
    import textwrap

    statuses = {**_EXIT_COMMON, **EXIT_STATUSES.get(command, {})}
    lines = ["exit status:"]
    for code in sorted(statuses):
        lines += textwrap.wrap(statuses[code], width=90, initial_indent=f"  {code:<5}", subsequent_indent=" " * 7)
    return "\n".join(lines) + "\nVMAE_FAST_DEBUG=1 shows every error with its traceback."


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vmae-fast",
        description="VideoMAE embeddings for video collections: extract to Parquet, index with FAISS, search.",
        epilog="Exit status: 0 done, 2 a problem to fix (one line), 3 index: recall target not met, 75 an "
               "environment fault (one line; rerun to resume), 1 a bug (traceback: please report it), 130/143 "
               "interrupted/terminated; each command's --help says what its statuses mean. VMAE_FAST_DEBUG=1 shows "
               "every traceback.")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_info, _add_extract, _add_labels, _add_index, _add_search, _add_serve, _add_dedup, _add_demo):
        add(sub)
    for command, subparser in sub.choices.items():
        subparser.formatter_class = _HelpFormatter
        subparser.epilog = _exit_help(command)
    return parser


class FatalError(UserError):
    """A problem that ends the command with a one-line message and exit status 2."""


class Terminated(KeyboardInterrupt):
    """SIGTERM: stops like Ctrl-C (finished videos are written on the way out); exit 143."""


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    name = f"vmae-fast {args.command}"
    try:
        return int(args.run(args) or 0)
    except KeyboardInterrupt as e:
        terminated = isinstance(e, Terminated)
        print(f"{name}: {'terminated' if terminated else 'interrupted'}", file=sys.stderr)
        return EXIT_TERMINATED if terminated else EXIT_INTERRUPTED
    except Exception as e:
        if os.environ.get("VMAE_FAST_DEBUG"):
            raise
        status = exit_status(e)
        if status == EXIT_BUG:  # not a problem the user can fix from a one-line message: ours
            import traceback

            from . import __version__

            traceback.print_exc()
            print(f"{name}: this is a bug in vmae-fast {__version__} (unexpected {type(e).__name__}): please report "
                  "it with the command line and the traceback above", file=sys.stderr)
            return status
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if status == EXIT_ENVIRONMENT:
            msg += ("; videos finished before it are committed: rerun the same command to resume"
                    if args.command == "extract" else "; rerun when it has passed")
        print(f"{name}: error: {msg}", file=sys.stderr)
        return status


__all__ = ["build_parser", "main"]

if __name__ == "__main__":
    sys.exit(main())
