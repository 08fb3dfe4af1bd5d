"""`vmae-fast extract --engine ray`: the local engine's extraction on a Ray cluster, through Ray Data. A peer of
local_engine.py: both run a RunSpec (spec.py) through the engine-independent core (core.py).

The driver (this process) discovers the inputs, skips what OUT already holds, cuts the rest into groups of
`group_videos` videos and feeds them to `ray.data.from_items(groups).map_batches(_GroupWorker, concurrency=n)`.
A _GroupWorker is one GPU's worth of work (num_gpus=1; num_cpus=C on a CPU-only cluster): a Ray actor that owns
the model, a DecodePool on its own node and a RunWriter, and runs each group exactly as the local engine runs a
shard (core.Extraction: a video is all its clips or one error row; a bad video is an error row, never a
failed Ray task). Frames never leave the actor's node: only group descriptions go out and small report rows
(counts, timings) come back, which drive the tqdm bar and the per-actor time split of the summary.

Part names: a group has a number (`group`), unique to this output: the driver numbers its groups above every
group number OUT holds (store.layout.next_group: `base + 1 ...`; the driver's own discovery errors use `base`), and
the group's parts are `part-g<group>-<seq>` (store/layout.py), seq counting from 0: a part says it is a group's, so
the resume reads it as a mix of shards without looking. Ray Data restarts a killed actor and retries its
unfinished groups (actor max_restarts, max_task_retries); a retried group's writer (store.RunWriter.for_group)
finds the parts its dead attempt committed (`part-g<group>-000000`, `-000001`, ... until the first missing: an
attempt commits them in order), the retry skips the videos they hold and writes on from the first missing number
(the writer removes that number's temporary file and orphan videos part). So two actors never write the same
name, and a retried group never writes a video twice; no listing of the whole output per group. A dead driver's
rerun gets new group numbers (the old ones are taken).

A run token (`OUT/_ray_run.json`) fences off the actors of a dead driver: the driver writes a fresh token, and every
commit of an actor's writer first checks it (the store's before_commit hook, _Fence), so an actor Ray has not yet
reaped stops at its next commit instead of duplicating a video the rerun redoes. After a driver that did not
finish, the rerun waits `ZOMBIE_GRACE_S` before it reads what is committed (covering a write that passed the check
just before the token changed).

Ray is an optional dependency (`pip install "vmae-fast[ray]"`): it is imported inside the functions here only.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from .. import store
from ..faults import InternalError, InvalidOption, MissingDependency, UserError
from ..ids import KeySet, id_keys
from ..store import ShardLock, committed_ids, out_path
from ..store.committed import group_outcomes
from ..store.layout import RAY_RUN_FILE, clean_temp_files, next_group, read_run_token, write_run_token
from ..video import DecodePool, VideoTask
from ..video.decode import require_backend
from .core import CorePlan, Extraction, decode_pool_options, feed
from .inputs import discover_inputs
from .runner import ModelRunner
from .spec import RunSpec
from .summary import RaySummary

RUN_TOKEN = RAY_RUN_FILE  # OUT/_ray_run.json (store/layout.py)
GROUP_VIDEOS = 32  # videos per group: the unit of balancing and of redo after a lost actor
ZOMBIE_GRACE_S = 10.0  # after a driver that did not finish: let its actors' last part writes land or stop
REPORT_EVERY_S = 1.0  # an actor reports (progress, timings) at most this often, and at the end of each group


def _require_ray():
    try:
        import ray
        import ray.data
    except ImportError:
        raise MissingDependency("--engine ray needs Ray Data: pip install \"vmae-fast[ray]\" (or \"ray[data]\")"
                                ) from None
    return ray


def _probe(spec: RunSpec) -> dict:
    """Runs as a Ray task with an actor's resources: the run dict (_run.json) as the actors will build it."""
    return spec.load().run()


class _Fence:
    """The writers' before_commit hook: refuses a commit once OUT's run token is no longer this driver's."""

    def __init__(self, out, token: str):
        self.out, self.token = out_path(out), token

    def __call__(self) -> None:
        if (read_run_token(self.out) or {}).get("token") != self.token:
            path = self.out / RUN_TOKEN
            raise RuntimeError(f"{path} belongs to another run now (a newer driver took over {self.out}); "
                               "this actor stops without writing")


class _GroupWorker:
    """The Ray Data actor: one model, one DecodePool and one part writer; __call__ runs groups of videos."""

    def __init__(self, spec: RunSpec, config_hash: str, token: str, cores: int):
        loaded = spec.load()
        run = loaded.run()
        if run["config_hash"] != config_hash:
            diff = "; ".join(store.diff_configs(store.load_run(spec.out)["config"], run["config"])[:3])
            raise UserError(f"this node builds another configuration than the driver's ({diff or 'hash differs'}): "
                               "install the same vmae-fast and model files on every node")
        net, dev = loaded.model, loaded.device
        cfg = net.config
        self.plan = CorePlan(dev.type, cores, spec.workers, spec.batch_size)
        if self.plan.model_threads and "OMP_NUM_THREADS" not in os.environ:
            torch.set_num_threads(self.plan.model_threads)
        self.runner = ModelRunner(net, self.plan.batch_size, loaded.keep_policy, dev, int(cfg.num_frames),
                                  int(cfg.image_size))
        self.out, self.run = out_path(spec.out), run
        self.writer_options = {"part_rows": spec.part_rows, "commit_interval_s": spec.commit_interval_s,
                               "before_commit": _Fence(out_path(spec.out), token)}
        self.writer: store.RunWriter | None = None  # the current group's
        self.write_s = 0.0  # of the groups' writers before the current one
        self.timeout_s = spec.timeout_s
        pool_options = decode_pool_options(self.plan, self.plan.workers, timeout_s=self.timeout_s,
                                           backend=spec.decode_backend,
                                           decode_options=dict(spec.decode_options or {}))
        self.pool = DecodePool(self.plan.workers, loaded.sampling, int(cfg.image_size), **pool_options)
        self.runner.release = self.pool.release
        import ray

        context = ray.get_runtime_context()
        self.actor = f"{context.get_node_id()[:8]}/{os.getpid()}"
        self.node = ray.util.get_node_ip_address()
        self.wait_s = self.decode_s = self.decode_cpu_s = 0.0
        self.report_every_s = float(spec.ray_options.get("report_every_s", REPORT_EVERY_S))

    def __call__(self, batch: dict):
        for group, tasks in zip(batch["group"], batch["tasks"], strict=True):
            yield from self._group(int(group), [VideoTask(**t) for t in json.loads(str(tasks))])

    def _group(self, group: int, tasks: list):
        t0 = time.perf_counter()
        if self.writer is not None:
            self.write_s += self.writer.write_s
        self.writer = store.RunWriter.for_group(self.out, self.run, group, **self.writer_options)
        todo = [t for t in tasks if t.video_id not in self.writer.committed]
        state = Extraction(self.runner, self.writer)  # no progress callback: the reports carry its counters
        mark = self._totals(state)
        last = time.monotonic()
        if todo:  # the local engine's per-shard loop (core.feed), with a report now and then
            for _ in feed(state, self.pool, todo, timeout_s=self.timeout_s, plan=self.plan):
                self.writer.maybe_flush()
                if time.monotonic() - last >= self.report_every_s:
                    now = self._totals(state)
                    yield self._report(group, now, mark, False, time.perf_counter() - t0)
                    mark, last, t0 = now, time.monotonic(), time.perf_counter()
        state.finish()  # writes what is buffered: the group is committed when this returns
        final = self._totals(state)
        self.wait_s += state.wait_s
        self.decode_s += state.decode_s
        self.decode_cpu_s += state.decode_cpu_s or 0.0
        yield self._report(group, final, mark, True, time.perf_counter() - t0, skipped=len(tasks) - len(todo))

    def _totals(self, state: Extraction) -> dict:
        r = self.runner
        return {"videos": state.ok + state.failed, "videos_ok": state.ok, "videos_failed": state.failed,
                "clips": state.clips, "video_seconds": state.video_seconds, "compute_s": r.compute_s,
                "gather_s": r.gather_s, "batches": r.count, "padded_rows": r.padded_rows,
                "wait_s": self.wait_s + state.wait_s, "write_s": self.write_s + self.writer.write_s,
                "decode_s": self.decode_s + state.decode_s,
                "decode_cpu_s": self.decode_cpu_s + (state.decode_cpu_s or 0.0)}

    def _report(self, group: int, now: dict, mark: dict, final: bool, busy_s: float, skipped: int = 0) -> dict:
        """One row (a batch of one): what changed since the last report."""
        row = {key: [now[key] - mark[key]] for key in now}
        row.update(group=[group], final=[final], busy_s=[busy_s], skipped=[skipped], made=[time.time()],
                   actor=[self.actor],
                   node=[self.node], workers=[self.pool.workers],
                   model_threads=[_torch_threads() if self.runner.device.type == "cpu" else 0])
        return row

    def __del__(self) -> None:
        pool = getattr(self, "pool", None)
        if pool is not None:
            pool.close()


def _torch_threads() -> int:
    return torch.get_num_threads()


# --- the driver ------------------------------------------------------------------------------------------------------
def _resources(ray, actors, cpus_per_actor, gpus_per_actor) -> tuple[Any, float, float]:
    """(concurrency for map_batches, CPUs per actor, GPUs per actor) from the cluster and the options."""
    total = ray.cluster_resources()
    gpus = float(total.get("GPU", 0))
    if gpus_per_actor is None:
        gpus_per_actor = 1.0 if gpus else 0.0
    if gpus_per_actor < 0 or (gpus_per_actor > 0 and not gpus):
        raise InvalidOption(f"--ray-gpus-per-actor {gpus_per_actor}: the cluster has {gpus:g} GPUs")
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    if cpus_per_actor is None:
        if gpus_per_actor:  # the CPUs of the poorest GPU node, shared by its actors
            per_node = [r.get("CPU", 0) / (r["GPU"] / gpus_per_actor) for r in nodes if r.get("GPU")]
            cpus_per_actor = max(1.0, math.floor(min(per_node, default=1.0)))
        else:  # CPU-only: one actor per node, with every core of the smallest node (as the local engine's plan)
            cpus_per_actor = max(1.0, min((r.get("CPU", 1) for r in nodes if r.get("CPU")), default=1.0))
    if cpus_per_actor <= 0:
        raise InvalidOption(f"--ray-cpus-per-actor must be positive, got {cpus_per_actor}")
    if actors is None:
        actors = int(gpus // gpus_per_actor) if gpus_per_actor else int(total.get("CPU", 1) // cpus_per_actor)
        actors = max(1, actors)
    elif isinstance(actors, str):
        low, _, high = actors.partition("-")
        actors = (int(low), int(high)) if high else int(low)
    bad = actors < 1 if isinstance(actors, int) else not 1 <= actors[0] <= actors[1]
    if bad:
        raise InvalidOption(f"--ray-actors must be N or MIN-MAX with 1 <= MIN <= MAX, got {actors!r}")
    return actors, float(cpus_per_actor), float(gpus_per_actor)


def run_ray(spec: RunSpec) -> RaySummary:
    """Run `spec` (engine "ray") as a Ray Data job: the same rows in spec.out (shared storage every node sees),
    computed by Ray actors; returns its summary.

    spec.ray_address: the cluster (None: RAY_ADDRESS, else a local one started here; "auto": the running one).
    spec.ray_options: actors (N, or (MIN, MAX) / "MIN-MAX" to autoscale; default one per GPU, or on a CPU-only
    cluster one per `cpus_per_actor` CPUs), cpus_per_actor (default: a GPU node's CPUs / its GPUs; CPU-only: a
    node's CPUs), gpus_per_actor (default 1 with GPUs, else 0; 0.5 puts two actors on a GPU), group_videos (default
    GROUP_VIDEOS), report_every_s (default REPORT_EVERY_S). The other options are the local engine's (batch_size
    and workers are per actor); RunSpec has refused those the Ray engine cannot take (shard, a loaded model,
    decode_device other than cpu).
    """
    if spec.engine != "ray":
        raise ValueError(f"run_ray runs specs of engine 'ray', got {spec.engine!r}")
    ray = _require_ray()

    t_start = time.perf_counter()
    ray_options = dict(spec.ray_options or {})
    group_videos = int(ray_options.get("group_videos", GROUP_VIDEOS))
    require_backend(spec.decode_backend)
    found = discover_inputs(spec.inputs)
    out = spec.out

    lock = None
    timing: dict = {"probe_s": None, "first_report_s": None}  # setup costs: the probe task, the first actor report
    started_ray = not ray.is_initialized()
    if started_ray:
        ray.init(address=spec.ray_address, logging_level=logging.WARNING, log_to_driver=True)
    try:
        concurrency, cpus, gpus = _resources(ray, ray_options.get("actors"), ray_options.get("cpus_per_actor"),
                                             ray_options.get("gpus_per_actor"))
        try:
            t_probe = time.perf_counter()
            run = ray.get(ray.remote(_probe).options(num_cpus=cpus, num_gpus=gpus, max_retries=0).remote(spec))
            timing["probe_s"] = time.perf_counter() - t_probe
        except ray.exceptions.RayTaskError as e:  # the probe's own error (bad model, bad arguments): raise it here
            raise e.cause if isinstance(e.cause, Exception) else e from None
        # shard 0's lock: what prepare_output(shard=0) acts for; a second driver, or a local shard 0, is refused
        lock = ShardLock(out, 0, break_lock=spec.break_lock).acquire()
        out = store.prepare_output(out, run, shard=0, num_shards=1, overwrite=spec.overwrite)
        token = _take_over(out)
        clean_temp_files(out, None, groups=True)  # of the groups of earlier runs: none of their actors is left
        retried = 0
        if spec.retry_errors and not spec.overwrite:  # every error part, whoever wrote it: redone
            retried = store.retire_errors(out, None)
        done = KeySet() if spec.overwrite else committed_ids(out)  # compact, as the local engine's resume set
        skip, _ = done.lookup(id_keys([t.video_id for t in found.tasks]))
        todo = [t for t, skipped in zip(found.tasks, skip, strict=True) if not skipped]
        discovery_errors = [e for e in found.errors if e["video_id"] not in done]
        base = next_group(out)
        groups = [{"group": base + 1 + i,
                   "tasks": json.dumps([{"path": str(t.path), "video_id": t.video_id, "start_s": t.start_s,
                                         "end_s": t.end_s} for t in todo[k:k + group_videos]])}
                  for i, k in enumerate(range(0, len(todo), group_videos))]
        bar = None
        if spec.progress or (spec.progress is None and sys.stderr.isatty()):
            bar = tqdm(total=len(todo) + len(discovery_errors), unit="video", file=sys.stderr, dynamic_ncols=True,
                       desc="extract (ray)")
        if discovery_errors:  # the driver's own part: group number `base`
            writer = store.RunWriter.for_group(out, run, base)
            for error in discovery_errors:
                writer.add_error(**error)
            writer.flush()
            if bar is not None:
                bar.update(len(discovery_errors))
        per_actor: dict[str, dict] = {}
        if groups:
            t_job = time.perf_counter()
            try:
                _run_groups(ray, spec, run, token, groups, concurrency, cpus, gpus, bar, per_actor, timing)
            except Exception as e:  # an actor's own error (e.g. faults.EnvironmentFault) as itself, not Ray's wrap
                raise _cause(e) from e
            timing["job_s"] = time.perf_counter() - t_job
        parts, clips, failed = group_outcomes(out, base)
        if bar is not None:  # reports of a retried group can be lost (see _consume): the parts are the truth
            bar.update(max(0, len(parts) - bar.n))
            bar.close()
        wanted = {t.video_id for t in todo} | {e["video_id"] for e in discovery_errors}
        missing, twice = wanted - set(parts), sorted(v for v, n in parts.items() if n > 1)
        if missing or twice:  # cannot happen with correct retries; never report a lost or doubled video as done
            raise InternalError(f"ray run ended with {len(missing)} videos missing (e.g. {sorted(missing)[:3]}) and "
                               f"{len(twice)} in two parts (e.g. {twice[:3]}); rerun to redo the missing ones")
        _finish(out, token)
    finally:
        if lock is not None:
            lock.release()
        if started_ray:
            ray.shutdown()
    return _summary(out, run, spec, found, todo, discovery_errors, parts, clips, failed, per_actor,
                    {"concurrency": concurrency, "cpus_per_actor": cpus, "gpus_per_actor": gpus, **timing},
                    len(groups), time.perf_counter() - t_start, retried)


def extract_ray(inputs, out, model: Any = "random:small", **options) -> RaySummary:
    """`vmae_fast.extract(inputs, out, model, engine="ray", **options)`: run_ray(RunSpec.from_keywords(...))."""
    return run_ray(RunSpec.from_keywords(inputs, out, model, **{"engine": "ray", **options}))


def _cause(error: BaseException) -> BaseException:
    """The first exception in `error`'s chain that is not Ray's (RayTaskError.cause, __cause__), else `error`."""
    seen = error
    for _ in range(16):
        inner = getattr(seen, "cause", None) or seen.__cause__
        if inner is None:
            break
        seen = inner
        if not type(seen).__module__.startswith("ray"):
            return seen
    return error


def _take_over(out: Path) -> str:
    """Write a fresh run token; after a driver that did not finish, give its actors ZOMBIE_GRACE_S to stop."""
    previous = read_run_token(out)
    token = uuid.uuid4().hex
    write_run_token(out, {"token": token, "finished": False,
                          "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    if previous is not None and not previous.get("finished"):
        time.sleep(ZOMBIE_GRACE_S)
    return token


def _finish(out: Path, token: str) -> None:
    data = read_run_token(out)
    if data is not None and data.get("token") == token:
        write_run_token(out, {**data, "finished": True})


def _run_groups(ray, spec, run, token, groups, concurrency, cpus, gpus, bar, per_actor, timing) -> None:
    """The Ray Data job: groups -> actors; consumes the report rows (progress, per-actor totals)."""
    from ray.data import DataContext

    ctx = DataContext.get_current()
    # every report row its own block, so the driver gets it while the group runs: Ray Data would otherwise gather
    # a task's small outputs into one block until the task (the group) ends. A row still reaches the driver only
    # when the actor makes its next one (Ray Data hands a generator's output on at its next step): progress lags
    # by about one report interval, longer while one video holds up its actor. Restored after the job.
    settings = {"enable_progress_bars": False, "print_on_execution_start": False, "target_max_block_size": 1}
    saved = {key: getattr(ctx, key) for key in settings}
    for key, value in settings.items():
        setattr(ctx, key, value)
    try:
        _consume(ray, spec, run, token, groups, concurrency, cpus, gpus, bar, per_actor, timing)
    finally:
        for key, value in saved.items():
            setattr(ctx, key, value)


def _consume(ray, spec, run, token, groups, concurrency, cpus, gpus, bar, per_actor, timing) -> None:
    cores = max(1, int(cpus))
    if isinstance(concurrency, tuple):
        compute = ray.data.ActorPoolStrategy(min_size=concurrency[0], max_size=concurrency[1],
                                             max_tasks_in_flight_per_actor=2)
    else:
        compute = ray.data.ActorPoolStrategy(size=concurrency, max_tasks_in_flight_per_actor=2)
    # actors are restarted and their groups retried without limit (Ray Data's defaults for actor pools): a
    # group's retry skips what its dead attempt committed (see the module docstring)
    ds = ray.data.from_items(groups, override_num_blocks=len(groups)).map_batches(
        _GroupWorker, batch_size=1, batch_format="numpy", compute=compute, num_cpus=cpus, num_gpus=gpus,
        fn_constructor_kwargs={"spec": spec, "config_hash": run["config_hash"], "token": token, "cores": cores})
    # Report rows are progress and timings only, never the record: after an actor died, some reports of its
    # retried group were observed not to arrive (the retry's final row with it; consistent with Ray deduplicating
    # a retried streaming task's outputs by index, the dead attempt's having come first). Counts in the summary
    # come from the committed parts.
    t0 = time.perf_counter()
    first_seen: dict[int, float] = {}
    for row in ds.iter_rows():
        if timing["first_report_s"] is None:  # the actors' start: process, imports, model, decode pool, 1 s of work
            timing["first_report_s"] = time.perf_counter() - t0
        timing["reports"] = timing.get("reports", 0) + 1
        # how late a report arrives (clocks of other nodes may differ: a diagnostic, exact on one node)
        timing["report_lag_max_s"] = max(timing.get("report_lag_max_s", 0.0), time.time() - float(row["made"]))
        first_seen.setdefault(int(row["group"]), time.perf_counter())
        if row["final"]:  # how long before its end a group's first report came: > 0 when progress streams
            lead = time.perf_counter() - first_seen[int(row["group"])]
            timing["report_lead_max_s"] = max(timing.get("report_lead_max_s", 0.0), lead)
        totals = per_actor.setdefault(row["actor"], {"actor": row["actor"], "node": row["node"], "groups": 0})
        for key in ("videos", "videos_ok", "videos_failed", "clips", "skipped", "video_seconds", "compute_s",
                    "gather_s", "batches", "padded_rows", "wait_s", "write_s", "decode_s", "decode_cpu_s", "busy_s"):
            totals[key] = totals.get(key, 0) + _plain(row[key])
        totals["groups"] += int(bool(row["final"]))
        totals["workers"], totals["model_threads"] = int(row["workers"]), int(row["model_threads"])
        if bar is not None:
            bar.update(min(int(row["videos"]), bar.total - bar.n))
            clips = sum(a.get("clips", 0) for a in per_actor.values())
            bar.set_postfix(clips=clips, actors=len(per_actor), refresh=False)


def _plain(value):
    return value.item() if hasattr(value, "item") else value


def _summary(out, run, spec, found, todo, discovery_errors, parts, clips, failed, per_actor, ray_info,
             groups, wall, retried) -> RaySummary:
    actors = sorted(per_actor.values(), key=lambda a: a["actor"])

    def total(key):
        return sum(a.get(key, 0) for a in actors)

    config = run["config"]
    return RaySummary(
        out=str(out),
        shard="ray",
        shard_source="ray",
        model=run["model"].get("source"),
        device=run["device"],
        dtype=config["dtype"],
        keep=config["keep"],
        workers=total("workers"),
        model_threads=None,
        batch_size=spec.batch_size,
        videos=len(found.tasks) + len(found.errors),
        videos_ok=len(parts) - len(failed),
        videos_failed=len(failed),
        videos_skipped=len(found.tasks) - len(todo) + len(found.errors) - len(discovery_errors),
        videos_other_shards=0,
        clips=clips,
        video_seconds=total("video_seconds"),
        wall_s=wall,
        compute_s=total("compute_s"),
        gather_s=total("gather_s"),
        batches=total("batches"),
        padded_rows=total("padded_rows"),
        wait_s=total("wait_s"),
        write_s=total("write_s"),
        decode_s=total("decode_s"),
        decode_cpu_s=total("decode_cpu_s"),
        clips_per_s=clips / wall if wall > 0 else 0.0,
        parts_written=None,
        errors_retried=retried,
        groups=groups,
        actors=actors,
        ray=ray_info,
    )
