"""`vmae-fast extract --engine ray`: the local engine's extraction on a Ray cluster, through Ray Data. A peer of
local_engine.py: both run a RunSpec (spec.py) through the engine-independent core (core.py).

The job is one streaming Ray Data pipeline; the driver (this process) starts it and watches it, and holds nothing
per video:

    inputs (ray_inputs.py: Ray's readers, a streaming folder walk) -> entries with their id keys, in read tasks
      -> _admit: the resume filter and the duplicate check (_Coordinator), groups of `group_videos` cut and numbered
      -> one group a block -> _GroupWorker actors (ActorPoolStrategy): decode, model, write the group's parts

A _GroupWorker is one GPU's worth of work (num_gpus=1; num_cpus=C on a CPU-only cluster): a Ray actor that owns
the model, a DecodePool on its own node and a RunWriter, and runs each group exactly as the local engine runs a
shard (core.Extraction: a video is all its clips or one error row; a bad video is an error row, never a failed Ray
task). Frames never leave the actor's node: only group descriptions go to it; its reports (counts, timings) go to
the coordinator, which the driver polls for its progress (extraction/progress.py) and the per-actor time split of
the summary.

_Coordinator: the run's one stateful place, a threaded Ray actor on the driver's node (no CPU, never restarted:
a worker node's loss cannot take it). The first actor that has loaded the model hands it the run (_run.json's
content): the coordinator prepares OUT with it (store.prepare_output: a different configuration is refused; the
run token; --retry-errors; the temporary files of dead groups) and completes the resume set (an ids.KeySet,
16+8 bytes an id): the coordinator starts reading it from OUT's committed parts as soon as it starts, while the
actors start (up to RESUME_TASKS Ray tasks read the parts and return their ids' keys; a few parts, the
coordinator itself), and adds the parts committed after
that read (a dead driver's actors, until the take-over's grace).
There was a probe task for this before: now no model is loaded twice. _admit tasks (parallel, beside
the readers) send it each batch's id keys; it answers which entries to do (not committed, not seen before: a
video_id named twice stops the run with an InvalidInput naming it) and the first group number of the batch. A task
that Ray re-runs (its node died, or its output was lost) gets the same answer (memo by task id and batch index),
so a group number always names the same videos.

Part names: a group's number is unique to this output: the coordinator numbers groups from store.layout.next_group
(above every group number OUT holds), and the group's parts are `part-g<group>-<seq>` (store/layout.py), seq from 0.
Ray Data restarts a killed actor and retries its unfinished groups (actor max_restarts, max_task_retries); a
retried group's writer (store.RunWriter.for_group) finds the parts its dead attempt committed (`part-g<group>-000000`,
`-000001`, ... until the first missing: an attempt commits them in order), the retry skips the videos they hold and
writes on from the first missing number. So two actors never write the same name, and a retried group never writes
a video twice. A dead driver's rerun gets new group numbers (the old ones are taken).

A run token (`OUT/_ray_run.json`) fences off the actors of a dead driver: the coordinator writes the driver's fresh
token, and every commit of an actor's writer first checks it (the store's before_commit hook, _Fence), so an actor
Ray has not yet reaped stops at its next commit instead of duplicating a video the rerun redoes. After a driver that
did not finish, the rerun waits `ZOMBIE_GRACE_S` before it reads what is committed (covering a write that passed
the check just before the token changed).

However the run ends, the driver kills its actors (each hands the coordinator its handle when it starts) and the
coordinator, before it releases OUT's lock (_stop_actors): a failed job's exception would keep Ray Data's pool,
and the CPUs and GPUs it reserves, alive for as long as the caller holds the exception.

Ray Data's own checkpointing (CheckpointConfig) is not used: it records ids when a Datasink writes a block and needs
an id unique per output row, while our rows are clips, a video's commit is its part (clips + videos) written by the
actor, and a video may also end as one error row: see docs/ray.md.

Ray is an optional dependency (`pip install "vmae-fast[ray]"`): it is imported inside the functions here only.
So are torch and the modules of the model (spec, core, runner): this module is what the coordinator's process and
the admission tasks' import too (Ray finds _Coordinator and _admit here by name), and neither needs them; on one
2-core node those imports cost ~1.5 s of CPU each, taken from the actors' start (docs/ray.md). The coordinator
gets a _CoordinatorSpec (three fields), not the RunSpec. The driver imports spec.py, whose checks need no torch
(vmae_fast/_options.py): only the actors load torch and the model.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import threading
import time
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from .. import store
from ..faults import EnvironmentFault, InternalError, InvalidOption, MissingDependency, UserError
from ..ids import KeySet, id_keys
from ..store import ShardLock, committed_ids, committed_parts, out_path
from ..store.committed import committed_keys
from ..store.layout import (
    CLIPS_DIR,
    ERRORS_DIR,
    RAY_RUN_FILE,
    clean_temp_files,
    list_parts,
    next_group,
    read_run_token,
    write_run_token,
)
from ..store.storage import read_table
from ..video import DecodePool, VideoTask
from ..video.decode import require_backend
from .progress import progress_display
from .ray_inputs import READ_TASKS, RepeatedVideoId, input_dataset, located, repeated_id, task_options
from .summary import RaySummary

if TYPE_CHECKING:
    from .core import Extraction
    from .spec import RunSpec

RUN_TOKEN = RAY_RUN_FILE  # OUT/_ray_run.json (store/layout.py)
GROUP_VIDEOS = 32  # videos per group: the unit of balancing and of redo after a lost actor
ZOMBIE_GRACE_S = 10.0  # after a driver that did not finish: let its actors' last part writes land or stop
REPORT_EVERY_S = 1.0  # an actor reports (progress, timings) at most this often, and at the end of each group
POLL_S = 0.5  # the driver asks the coordinator for reports this often
RESUME_TASKS = 4  # Ray tasks at most that read the committed parts into the resume set (_Coordinator._read_early)
# committed parts per such task at least: fewer parts (an output of a few thousand videos) are read by the
# coordinator's own thread, in well under a second on local disk; a task is a new worker process (Ray, numpy,
# pyarrow: ~1 s of CPU), four of them took ~4 s from the actors' start on a 2-core node to read 40 small parts
RESUME_PARTS_PER_TASK = 64


def _require_ray():
    try:
        import ray
        import ray.data
    except ImportError:
        raise MissingDependency("--engine ray needs Ray Data: pip install \"vmae-fast[ray]\" (or \"ray[data]\")"
                                ) from None
    return ray


class _Fence:
    """The writers' before_commit hook: refuses a commit once OUT's run token is no longer this driver's."""

    def __init__(self, out, token: str):
        self.out, self.token = out_path(out), token

    def __call__(self) -> None:
        if (read_run_token(self.out) or {}).get("token") != self.token:
            path = self.out / RUN_TOKEN
            raise RuntimeError(f"{path} belongs to another run now (a newer driver took over {self.out}); "
                               "this actor stops without writing")


# --- the coordinator ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _CoordinatorSpec:
    """What the coordinator reads of the RunSpec: three fields (a RunSpec would bring spec.py and its checks into
    the coordinator's process, which needs none of them)."""

    out: Any
    overwrite: bool
    retry_errors: bool


class _Coordinator:
    """The run's state on the cluster (a threaded actor on the driver's node, see the module docstring): OUT's
    preparation, the resume set, the ids seen, group numbers, the actors' reports, the final count."""

    def __init__(self, spec: _CoordinatorSpec, token: str, group_videos: int):
        self.spec, self.token, self.group_videos = spec, token, group_videos
        self.out = out_path(spec.out)  # a Path, or an ObjectPath for a URL OUT
        self.lock = threading.Lock()
        self.ready = threading.Event()  # OUT prepared (or failed): admit() waits for it
        self.run: dict | None = None
        self.failure: BaseException | None = None  # the first error of an actor's start or of the preparation
        self.done = KeySet()  # committed ids (the resume set)
        self.seen = KeySet()  # every id met, its code the input it came from (the duplicate check)
        self.base = self.next = 0  # group numbers: this run's first, the next free
        self.memo: dict[tuple[str, int], tuple[str, int, np.ndarray, int]] = {}
        self.counts = {"entries": 0, "skipped": 0, "admitted": 0, "groups": 0, "errors_retried": 0}
        self.reports: list[dict] = []
        self.started = time.time()
        self.ready_s: float | None = None
        self.actors: dict[str, Any] = {}  # every _GroupWorker that started, by actor id: the driver stops them
        self.early: dict = {}  # the resume set read while the actors start (_read_early)
        self.resume_s: float | None = None  # how long building the resume set took, from the coordinator's start
        self.early_thread: threading.Thread | None = None
        if not spec.overwrite:
            self.early_thread = threading.Thread(target=self._read_early, daemon=True, name="vmae-fast-resume-set")
            self.early_thread.start()

    def _read_early(self) -> None:
        """Read the resume set of OUT as it is now, while the actors start: prepare() adds the parts committed since
        (a dead driver's actors may commit until its take-over's grace ends) instead of reading everything after
        the model loaded. The parts are read by up to RESUME_TASKS Ray tasks, RESUME_PARTS_PER_TASK parts each at
        least (no CPU asked, like the readers: the actors may hold every CPU) wherever the cluster has room, each
        returning its parts' keys (16 bytes an id);
        the coordinator only makes them a set (10M ids: ~9 s of reading and hashing, ~1 s for the set, here).
        Outside a Ray worker (a test's coordinator) the thread reads them itself. Read-only: OUT is checked
        (configuration, format) by prepare() as before; an error here is left for prepare() to meet again."""
        import ray

        try:
            parts = committed_parts(self.out, include_errors=not self.spec.retry_errors)
            n = min(RESUME_TASKS, len(parts) // RESUME_PARTS_PER_TASK)
            chunks = [parts[i::n] for i in range(n)]
            if len(chunks) > 1 and ray.is_initialized():
                task = ray.remote(num_cpus=0)(_committed_keys)
                keys = ray.get([task.remote(self.spec.out, chunk) for chunk in chunks])
                tasks = len(chunks)
            else:
                keys, tasks = [committed_keys(self.out, parts=parts)], 0
            self.early = {"parts": set(parts), "done": KeySet(np.concatenate(keys)),
                          "tasks": tasks}
        except Exception:  # noqa: BLE001 - nothing read early: prepare() reads OUT again and raises its own error
            pass

    # preparation: the first actor's run
    def prepare(self, run: dict) -> dict:
        """Called by every actor once its model is loaded; the first prepares OUT with its run. Returns the run the
        actors write with; raises for a run of another configuration, or the preparation's own error."""
        with self.lock:
            if self.failure is not None:
                raise self.failure
            if self.run is not None:
                if run["config_hash"] != self.run["config_hash"]:
                    diff = "; ".join(store.diff_configs(self.run["config"], run["config"])[:3])
                    raise UserError(f"this node builds another configuration than the first actor's "
                                       f"({diff or 'hash differs'}): install the same vmae-fast and model files on "
                                       "every node")
                return self.run
            spec = self.spec
            try:
                out = store.prepare_output(self.out, run, shard=0, num_shards=1, overwrite=spec.overwrite)
                _take_over(out, self.token)
                clean_temp_files(out, None, groups=True)  # of the groups of earlier runs: none of their actors is left
                if spec.retry_errors and not spec.overwrite:  # every error part, whoever wrote it: redone
                    self.counts["errors_retried"] = store.retire_errors(out, None)
                self.done = KeySet() if spec.overwrite else self._resume_set(out)
                self.resume_s = time.time() - self.started
                self.base = self.next = next_group(out)
            except BaseException as e:
                self.failure = e
                self.ready.set()
                raise
            self.run = run
            self.ready_s = time.time() - self.started
            self.ready.set()
            return run

    def _resume_set(self, out) -> KeySet:
        """The ids committed in OUT now (after the take-over's grace and --retry-errors): the early read plus the
        parts that appeared since; read whole again if a part it read is gone (nothing but --retry-errors removes
        one, and then the early read skipped the errors parts)."""
        include_errors = not self.spec.retry_errors  # retry_errors: every errors part was just retired
        if self.early_thread is not None:
            self.early_thread.join()
        now = committed_parts(out, include_errors=include_errors)
        read = self.early.get("parts")
        if read is None or not read <= set(now):
            return committed_ids(out, include_errors=include_errors)
        done = self.early["done"]
        new = [part for part in now if part not in read]
        if new:
            done.add(committed_keys(out, parts=new), unique=False)
        return done

    def fail(self, error: BaseException) -> None:
        """An actor could not start (its model did not load, say): the driver raises this error."""
        with self.lock:
            if self.failure is None:
                self.failure = error
        self.ready.set()

    def hello(self, actor_id: str, actor) -> None:
        """A _GroupWorker starting (again, after a restart: the same id) hands its own handle: see _stop_actors."""
        with self.lock:
            self.actors[actor_id] = actor

    def started_actors(self) -> list:
        with self.lock:
            return list(self.actors.values())

    # admission
    def admit(self, key: tuple[str, int], digest: str, keys: np.ndarray, sources: np.ndarray):
        """One batch of entries (their (n, 2) id keys and input numbers): ("ok", first group, bool mask of the
        entries to do), ("repeat", i, input number where entry i's id was met first), or ("failed",) once the run
        has failed. The same `key` (a task Ray re-runs) gets the same answer."""
        while not self.ready.wait(1.0):
            pass
        if self.failure is not None:  # the driver raises it; the admission stops quietly (no task error to log)
            return ("failed",)
        with self.lock:
            known = self.memo.get(key)
            if known is not None:
                if known[0] != digest:
                    raise InternalError(f"batch {key} came back with other entries: an input changed during the run")
                return "ok", known[1], np.unpackbits(known[2], count=known[3]).astype(bool)
            repeat = self.seen.first_repeat(keys)
            if repeat is not None:
                i, code, j = repeat
                return "repeat", i, int(code if code is not None else sources[j])
            self.seen.add(keys, sources.astype(np.int64))
            done = self.done.lookup(keys)[0] if len(self.done) else np.zeros(len(keys), bool)
            todo = ~done
            n_todo = int(todo.sum())
            groups = math.ceil(n_todo / self.group_videos)
            first = self.next
            self.next += groups
            self.counts["entries"] += len(keys)
            self.counts["skipped"] += len(keys) - n_todo
            self.counts["admitted"] += n_todo
            self.counts["groups"] += groups
            self.memo[key] = (digest, first, np.packbits(todo), len(keys))
            return "ok", first, todo

    # progress
    def report(self, row: dict) -> None:
        with self.lock:
            self.reports.append(row)

    def take(self) -> dict:
        """What happened since the last take(): the actors' reports, the counters, the failure if any."""
        with self.lock:
            reports, self.reports = self.reports, []
            return {"reports": reports, "counts": dict(self.counts), "ready_s": self.ready_s, "run": self.run,
                    "resume_s": self.resume_s,
                    "failure": self.failure, "seen_bytes": self.seen.nbytes, "done_bytes": self.done.nbytes}

    def outcome(self) -> dict:
        """What this run's groups committed (every part of a group number >= base): videos (distinct), clips,
        failed videos, and the videos found in two parts (a few, for the message); read here, not in the driver."""
        out = self.out
        keys, clips, failed = [], 0, 0
        for folder in (CLIPS_DIR, ERRORS_DIR):
            for part in list_parts(out / folder):
                if not part.group or part.number < self.base:
                    continue
                ids = read_table(out / folder / part.name, columns=["video_id"]).column("video_id")
                unique = ids.unique().to_pylist()
                keys.append(id_keys(unique))
                if folder == CLIPS_DIR:
                    clips += len(ids)
                else:
                    failed += len(unique)
        every = np.concatenate(keys) if keys else np.zeros((0, 2), np.uint64)
        distinct = np.unique(every, axis=0) if len(every) else every
        twice = len(every) - len(distinct)
        return {"videos": len(distinct), "clips": clips, "failed": failed, "twice": twice,
                "admitted": self.counts["admitted"]}


def _committed_keys(out, parts: list) -> np.ndarray:
    """The Ray task of _Coordinator._read_early: the id keys of OUT's committed `parts` (store.committed_keys)."""
    return committed_keys(out_path(out), parts=parts)


# --- admission: a Ray Data task beside the readers --------------------------------------------------------------
_CALLS: dict[str, int] = {}  # batches seen per task id in this worker process: a re-run task counts them again
GROUP_SCHEMA = pa.schema([("group", pa.int64()), ("tasks", pa.string())])
_TASK_FIELDS = ("path", "video_id", "start_s", "end_s", "stage", "error")


def _admit(table: pa.Table, *, coordinator, group_videos: int, inputs: tuple[str, ...]) -> pa.Table:
    """A batch of entries (ray_inputs.ENTRY_SCHEMA) -> its groups to do (GROUP_SCHEMA: one row per group, the
    group's tasks as JSON), as the coordinator numbers them."""
    import ray

    task = ray.get_runtime_context().get_task_id() or "driver"
    call = _CALLS[task] = _CALLS.get(task, -1) + 1
    keys = np.stack([table.column("key0").to_numpy(), table.column("key1").to_numpy()], axis=1).astype(np.uint64)
    sources = table.column("source").to_numpy().astype(np.int32)
    digest = hashlib.blake2b(keys.tobytes() + sources.tobytes(), digest_size=16).hexdigest()
    answer = ray.get(coordinator.admit.remote((task, call), digest, keys, sources))
    if answer[0] == "repeat":  # the run's failure: the driver raises it (a task's error would be logged by Ray)
        _, i, first = answer
        video_id = table.column("video_id")[i].as_py()
        ray.get(coordinator.fail.remote(repeated_id(inputs, video_id, first, int(sources[i]))))
    if answer[0] != "ok":
        return GROUP_SCHEMA.empty_table()
    _, first_group, todo = answer
    rows = table.select(list(_TASK_FIELDS)).filter(pa.array(todo)).to_pylist()
    groups = [first_group + k for k in range(math.ceil(len(rows) / group_videos))]
    tasks = [json.dumps(rows[k * group_videos:(k + 1) * group_videos]) for k in range(len(groups))]
    return pa.table({"group": pa.array(groups, pa.int64()), "tasks": pa.array(tasks, pa.string())},
                    schema=GROUP_SCHEMA)


# --- the actors -----------------------------------------------------------------------------------------------------
class _GroupWorker:
    """The Ray Data actor: one model, one DecodePool and one part writer; __call__ runs groups of videos."""

    def __init__(self, spec: RunSpec, token: str, cores: int, coordinator):
        import ray
        import torch

        from .core import CorePlan, decode_pool_options
        from .runner import ModelRunner

        self.coordinator = coordinator
        context = ray.get_runtime_context()
        coordinator.hello.remote(context.get_actor_id(), context.current_actor)  # the driver stops it at the end
        try:
            loaded = spec.load()
            run = ray.get(coordinator.prepare.remote(loaded.run()))  # the first actor's run prepares OUT
        except Exception as e:
            error = _cause(e)
            try:
                ray.get(coordinator.fail.remote(error))  # the driver raises it as itself (Ray wraps an actor's)
            except Exception:  # noqa: BLE001 - the coordinator is gone: the run is over, raise as it is
                raise e from None
            if isinstance(error, (UserError, EnvironmentFault)):
                _park(error)
            raise
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
        self.actor = f"{context.get_node_id()[:8]}/{os.getpid()}"
        self.node = ray.util.get_node_ip_address()
        self.wait_s = self.decode_s = self.decode_cpu_s = 0.0
        self.report_every_s = float(spec.ray_options.get("report_every_s", REPORT_EVERY_S))

    def __call__(self, batch: dict):
        for group, tasks in zip(batch["group"], batch["tasks"], strict=True):
            self._group(int(group), json.loads(str(tasks)))
            yield {"group": np.asarray([int(group)], np.int64)}  # the driver's stream: one tiny row a group

    def _group(self, group: int, entries: list[dict]) -> None:
        from .core import Extraction, feed

        t0 = time.perf_counter()
        if self.writer is not None:
            self.write_s += self.writer.write_s
        self.writer = store.RunWriter.for_group(self.out, self.run, group, **self.writer_options)
        given = len(entries)
        entries = [e for e in entries if e["video_id"] not in self.writer.committed]  # its dead attempt's
        skipped = given - len(entries)
        state = Extraction(self.runner, self.writer)  # no progress callback: the reports carry its counters
        for e in entries:  # inputs that failed at discovery (an unreadable folder): their error rows
            if e.get("error") is not None:
                state.add_error(e["path"], e["video_id"], e.get("stage") or "discover", e["error"], 1)
        todo = [VideoTask(path=e["path"], video_id=e["video_id"], start_s=e.get("start_s"), end_s=e.get("end_s"))
                for e in entries if e.get("error") is None]
        mark = self._totals(state)
        last = time.monotonic()
        if todo:  # the local engine's per-shard loop (core.feed), with a report now and then
            for _ in feed(state, self.pool, todo, timeout_s=self.timeout_s, plan=self.plan):
                self.writer.maybe_flush()
                if time.monotonic() - last >= self.report_every_s:
                    now = self._totals(state)
                    self._report(group, now, mark, False, time.perf_counter() - t0)
                    mark, last, t0 = now, time.monotonic(), time.perf_counter()
        state.finish()  # writes what is buffered: the group is committed when this returns
        final = self._totals(state)
        self.wait_s += state.wait_s
        self.decode_s += state.decode_s
        self.decode_cpu_s += state.decode_cpu_s or 0.0
        self._report(group, final, mark, True, time.perf_counter() - t0, skipped=skipped)

    def _totals(self, state: Extraction) -> dict:
        r = self.runner
        return {"videos": state.ok + state.failed, "videos_ok": state.ok, "videos_failed": state.failed,
                "clips": state.clips, "video_seconds": state.video_seconds, "compute_s": r.compute_s,
                "gather_s": r.gather_s, "batches": r.count, "padded_rows": r.padded_rows,
                "wait_s": self.wait_s + state.wait_s, "write_s": self.write_s + self.writer.write_s,
                "decode_s": self.decode_s + state.decode_s,
                "decode_cpu_s": self.decode_cpu_s + (state.decode_cpu_s or 0.0)}

    def _report(self, group: int, now: dict, mark: dict, final: bool, busy_s: float, skipped: int = 0) -> None:
        """What changed since the last report, to the coordinator (fire and forget)."""
        row = {key: now[key] - mark[key] for key in now}
        row.update(group=group, final=final, busy_s=busy_s, skipped=skipped, made=time.time(), actor=self.actor,
                   node=self.node, workers=self.pool.workers, batch_size=self.plan.batch_size,
                   model_threads=_torch_threads() if self.runner.device.type == "cpu" else 0)
        self.coordinator.report.remote(row)

    def __del__(self) -> None:
        pool = getattr(self, "pool", None)
        if pool is not None:
            pool.close()


def _torch_threads() -> int:
    import torch

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

    spec.ray_address: the cluster (None: RAY_ADDRESS, else a local one started here, without the dashboard;
    "auto": the running one). spec.ray_options: actors (N, or (MIN, MAX) / "MIN-MAX" to autoscale; default one per
    GPU, or on a CPU-only cluster one per `cpus_per_actor` CPUs), cpus_per_actor (default: a GPU node's CPUs / its
    GPUs; CPU-only: a node's CPUs), gpus_per_actor (default 1 with GPUs, else 0; 0.5 puts two actors on a GPU),
    group_videos (default GROUP_VIDEOS), report_every_s (default REPORT_EVERY_S). The other options are the local
    engine's (batch_size and workers are per actor); RunSpec has refused those the Ray engine cannot take (shard, a
    loaded model, decode_device other than cpu).
    """
    if spec.engine != "ray":
        raise ValueError(f"run_ray runs specs of engine 'ray', got {spec.engine!r}")
    try:
        return _run(spec)
    except RepeatedVideoId as e:  # the run has stopped (actors killed, lock released): now find both entries' lines
        raise located(e, spec.inputs) from None


def _run(spec: RunSpec) -> RaySummary:
    """run_ray's run (a repeated video_id raises RepeatedVideoId naming the two inputs only)."""
    ray = _require_ray()

    t_start = time.perf_counter()
    ray_options = dict(spec.ray_options or {})
    group_videos = int(ray_options.get("group_videos", GROUP_VIDEOS))
    require_backend(spec.decode_backend)
    out = out_path(spec.out)

    lock = coordinator = None
    timing: dict = {"ready_s": None, "first_report_s": None}  # setup costs: OUT prepared, the first actor report
    started_ray = not ray.is_initialized()
    if started_ray:
        local = spec.ray_address is None and not os.environ.get("RAY_ADDRESS")
        # "local": a cluster of this run's own, as documented (address=None would join whatever cluster was started
        # last on this machine, another user's or job's, and then refuse include_dashboard)
        handler = _sigterm_handler()
        ray.init(address="local" if local else spec.ray_address, logging_level=logging.WARNING, log_to_driver=True,
                 **({"include_dashboard": False} if local else {}))
        if callable(handler):  # ray.init put its own in (sys.exit(15)): the CLI's says "terminated", exit 143
            _sigterm_handler(handler)
    context, saved = _data_context(ray)
    try:
        inputs = input_dataset(spec.inputs)  # checks the INPUTs (missing, a list without `path`) before OUT
        concurrency, cpus, gpus = _resources(ray, ray_options.get("actors"), ray_options.get("cpus_per_actor"),
                                             ray_options.get("gpus_per_actor"))
        # shard 0's lock: what prepare_output(shard=0) acts for; a second driver, or a local shard 0, is refused
        lock = ShardLock(out, 0, break_lock=spec.break_lock).acquire()
        token = uuid.uuid4().hex
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        coordinator = ray.remote(_Coordinator).options(
            num_cpus=0, max_concurrency=64, max_restarts=0, scheduling_strategy=here).remote(
            _CoordinatorSpec(spec.out, spec.overwrite, spec.retry_errors), token, group_videos)
        bar = progress_display("extract (ray)", spec.progress, total=0)  # a bar on a terminal, a line a minute in a log
        per_actor: dict[str, dict] = {}
        t_job = time.perf_counter()
        with warnings.catch_warnings():
            # Ray Data's advice for a job that reads fewer inputs than READ_TASKS tasks could (every small job)
            warnings.filterwarnings("ignore", "The maximum number of concurrent tasks for", UserWarning)
            state = _run_job(ray, spec, inputs, coordinator, token, group_videos, concurrency, cpus, gpus, bar,
                             per_actor, timing, lock.check_lease)
        timing["job_s"] = time.perf_counter() - t_job
        result = ray.get(coordinator.outcome.remote())
        if bar is not None:  # reports of a retried group can be lost (see _consume): the parts are the truth
            bar.total = state["counts"]["admitted"]
            bar.update(max(0, result["videos"] - bar.n))
            bar.close()
        missing = result["admitted"] - result["videos"]
        if missing or result["twice"]:  # cannot happen with correct retries; never report them as done
            raise InternalError(f"ray run ended with {missing} videos missing and {result['twice']} in two parts; "
                               "rerun to redo the missing ones")
        _finish(out, token)
    finally:
        for key, value in saved.items():
            setattr(context, key, value)
        if coordinator is not None:
            _stop_actors(ray, coordinator)  # before the lock goes: no actor of this run writes after it
        if lock is not None:
            lock.release()
        if started_ray:
            ray.shutdown()
            _sigterm_handler(handler)  # as the process had it before ray.init
    counts = state["counts"]
    timing["ready_s"] = state.get("ready_s")
    timing["resume_set_s"] = state.get("resume_s")
    timing["coordinator_keys_mb"] = round((state["seen_bytes"] + state["done_bytes"]) / 1e6, 1)
    return _summary(out, state["run"], spec, counts, result, per_actor,
                    {"concurrency": concurrency, "cpus_per_actor": cpus, "gpus_per_actor": gpus, **timing},
                    time.perf_counter() - t_start)


def extract_ray(inputs, out, model: Any = "random:small", **options) -> RaySummary:
    """`vmae_fast.extract(inputs, out, model, engine="ray", **options)`: run_ray(RunSpec.from_keywords(...))."""
    from .spec import RunSpec

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


PARK_S = 600.0  # an actor whose start failed waits this long for the driver to stop it before it raises
QUIET_S = 60.0  # Ray Data's logs of a failed run's job winding down are kept out of the terminal this long at most
STOP_JOB_S = 10.0  # an interrupted driver waits this long at most for Ray Data's job to end after its shutdown


def _park(error: BaseException) -> None:
    """An actor whose start failed for a reason the driver reports in one line (the user's, or the environment's)
    waits to be stopped instead of raising: Ray would print the failed start's traceback, and Ray Data its retries
    and the job's failure, in the driver's terminal around the one line that matters. The driver sees the failure
    at its next poll of the coordinator (POLL_S) and kills the actors. Raises `error` after PARK_S (a driver that
    stopped polling: the failure is not hidden for ever)."""
    threading.Event().wait(PARK_S)
    raise error


class _QuietJob(logging.Filter):
    """Drops Ray Data's log records while the job of a run that has failed winds down (see _quiet_ray_data)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return False


def _quiet_ray_data(ended: threading.Event) -> None:
    """A run failed with its own one-line error (or was interrupted): its job, still running, ends when the driver
    kills the actors, and Ray Data then logs the job's failure with tracebacks that are not news. Silence the
    `ray.data` logger until the job has `ended`, QUIET_S at most (a thread of its own waits for it): never for good in
    a long-lived process such as a notebook's."""
    quiet, logger = _QuietJob(), logging.getLogger("ray.data")
    logger.addFilter(quiet)
    for handler in logger.handlers:
        handler.addFilter(quiet)

    def restore() -> None:
        ended.wait(QUIET_S)
        logger.removeFilter(quiet)
        for handler in logger.handlers:
            handler.removeFilter(quiet)

    threading.Thread(target=restore, daemon=True, name="vmae-fast-ray-quiet").start()


def _sigterm_handler(handler: Any = None) -> Any:
    """SIGTERM's handler (and with `handler`, set it first) where the main thread can: None elsewhere."""
    import signal

    if threading.current_thread() is not threading.main_thread():
        return None
    if handler is not None:
        signal.signal(signal.SIGTERM, handler)
    return signal.getsignal(signal.SIGTERM)


def _stop_job(ds, ended: threading.Event) -> None:
    """The driver was interrupted while its thread iterating `ds` runs: shut down Ray Data's executor of `ds` (its
    scheduling thread, its tasks and actor pool) and wait until the iteration has `ended`, before the caller kills
    the actors and disconnects. Left running, the executor kept scheduling through the teardown: Ray's retry
    notices for the killed actors and a traceback on the terminal, and once the driver had disconnected it called
    Ray again, which connected this process to whichever cluster was started last on the machine. The executor is
    found among the process's threads by the dataset's id (Ray 2.60 keeps it nowhere public before the first group
    is done)."""
    _quiet_ray_data(ended)  # what the executor logs on the way down is not news
    from ray.data._internal.execution.streaming_executor import StreamingExecutor

    for thread in threading.enumerate():
        if isinstance(thread, StreamingExecutor) and getattr(thread, "_dataset_id", None) == ds.get_dataset_id():
            try:
                thread.shutdown(force=True)
            except Exception:  # noqa: BLE001 - stopping anyway: the caller kills the actors next
                pass
    ended.wait(STOP_JOB_S)


def _take_over(out: Path, token: str) -> None:
    """Write this driver's run token; after a driver that did not finish, give its actors ZOMBIE_GRACE_S to stop."""
    previous = read_run_token(out)
    write_run_token(out, {"token": token, "finished": False,
                          "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    if previous is not None and not previous.get("finished"):
        time.sleep(ZOMBIE_GRACE_S)


def _stop_actors(ray, coordinator) -> None:
    """Kill this run's actors and its coordinator, however the run ended. Ray Data drops its actor pool when a job
    ends, but the handles live on while anything references the pool: a failed job's exception does (its traceback
    holds the executor), so the actors, and every CPU and GPU they reserve, stayed for as long as the caller kept the
    exception (a notebook keeps the last one; pytest until the garbage collector ran): the next run on the cluster
    waited forever for resources. A driver stopped by Ctrl-C stops its actors the same way."""
    try:
        actors = ray.get(coordinator.started_actors.remote(), timeout=60)
    except Exception:  # noqa: BLE001 - the coordinator is gone (it died with its node): its actors are Ray Data's
        actors = []
    for actor in [*actors, coordinator]:
        try:
            ray.kill(actor)
        except Exception:  # noqa: BLE001 - already dead
            pass


def _finish(out: Path, token: str) -> None:
    data = read_run_token(out)
    if data is not None and data.get("token") == token:
        write_run_token(out, {**data, "finished": True})


def _run_job(ray, spec, inputs, coordinator, token, group_videos, concurrency, cpus, gpus, bar, per_actor,
             timing, check_lease) -> dict:
    """The Ray Data job: entries -> admission -> one group a block -> actors, consumed in a thread while this one
    polls the coordinator (progress, per-actor totals) and checks the lease of OUT's lock (check_lease raises
    ShardLocked once it could not be renewed: the job is stopped before another host may take OUT over). Returns
    the coordinator's last state."""
    cores = max(1, int(cpus))
    if isinstance(concurrency, tuple):
        compute = ray.data.ActorPoolStrategy(min_size=concurrency[0], max_size=concurrency[1],
                                             max_tasks_in_flight_per_actor=2)
    else:
        compute = ray.data.ActorPoolStrategy(size=concurrency, max_tasks_in_flight_per_actor=2)
    # actors are restarted and their groups retried without limit (Ray Data's defaults for actor pools): a
    # group's retry skips what its dead attempt committed (see the module docstring)
    groups = _one_group_a_block(inputs.map_batches(
        _admit, batch_format="pyarrow", batch_size=None, zero_copy_batch=True, **task_options(),
        fn_kwargs={"coordinator": coordinator, "group_videos": group_videos, "inputs": tuple(spec.inputs)}))
    ds = (groups
          .map_batches(_GroupWorker, batch_size=1, batch_format="numpy", compute=compute, num_cpus=cpus,
                       num_gpus=gpus, fn_constructor_kwargs={"spec": spec, "token": token, "cores": cores,
                                                             "coordinator": coordinator}))
    return _consume(ray, ds, coordinator, bar, per_actor, timing, check_lease)


def _data_context(ray) -> tuple[Any, dict]:
    """Ray Data settings for the job (a dataset keeps a copy of the context it was made with: set before the inputs
    are read): no progress bars of its own (the driver's bar), and a UDF's exception raised as itself (an InvalidInput
    from the admission or a reader, not Ray's UserCodeException around it, whose cause does not reach the driver).
    Returns (the context, what to restore)."""
    context = ray.data.DataContext.get_current()
    settings = {"enable_progress_bars": False, "print_on_execution_start": False,
                "raise_original_map_exception": True}
    saved = {key: getattr(context, key) for key in settings}
    for key, value in settings.items():
        setattr(context, key, value)
    from ray.util.debug import log_once

    # Ray Data's advice to turn its bars back on, on every job: the driver shows its own bar (Ray 2.60 gives it once
    # a process under this key)
    log_once("ray_data_progress_manager_disabled")
    return context, saved


def _one_group_a_block(ds):
    """ds (one row per group) split into one-row blocks, so that each group goes to whichever actor is free (Ray
    Data would hand a block of many groups to one actor), by a streaming repartition fused into the admission
    tasks. Like them it must ask for no CPU (an actor pool holding every CPU would starve it: the job would wait
    forever), which repartition() has no argument for: its logical operator's ray_remote_args are set here
    (Ray 2.60's layout; tests/extraction/test_ray_engine.py runs it on a cluster whose actors hold every CPU)."""
    ds = ds.repartition(target_num_rows_per_block=1)
    op = getattr(getattr(ds, "_logical_plan", None), "dag", None)
    if op is None or not isinstance(getattr(op, "ray_remote_args", None), dict):
        raise MissingDependency("this Ray version lays out Dataset.repartition differently from Ray 2.60: the Ray "
                                f"engine cannot run its admission without a CPU (ray {_ray_version()}); "
                                "install ray[data]==2.60.*")
    object.__setattr__(op, "ray_remote_args", {**op.ray_remote_args, "num_cpus": 0})
    from ray.data._internal.compute import TaskPoolStrategy

    object.__setattr__(op, "compute", TaskPoolStrategy(size=READ_TASKS))  # fused with the readers
    return ds


def _ray_version() -> str:
    import ray

    return ray.__version__


def _consume(ray, ds, coordinator, bar, per_actor, timing, check_lease) -> dict:
    """Iterate the job in a thread (one tiny row per group reaches the driver); meanwhile take the actors'
    reports from the coordinator every POLL_S. An actor's report is progress and timings, never the record: some
    reports of a group whose actor died are lost, so the summary's counts come from the parts."""
    failure: list[BaseException] = []
    # the job's end, as an event: a Thread.join() that Ctrl-C or SIGTERM interrupts can leave the thread marked as
    # ended while it runs on (CPython 3.11), and the driver then stopped waiting for it
    ended = threading.Event()

    def drain() -> None:
        try:
            for _ in ds.iter_internal_ref_bundles():
                pass
        except BaseException as e:  # noqa: BLE001 - raised in the driver's thread below
            failure.append(e)
        finally:
            ended.set()

    thread = threading.Thread(target=drain, daemon=True, name="vmae-fast-ray-job")
    t0 = time.perf_counter()
    thread.start()
    state: dict = {}
    first_seen: dict[int, float] = {}
    try:
        while True:
            alive = not ended.wait(POLL_S)
            check_lease()  # a driver cut off from OUT's store stops its job (then its actors) before its lease ends
            state = ray.get(coordinator.take.remote())
            for row in state["reports"]:
                _tally(row, per_actor, timing, first_seen, t0)
            if bar is not None:
                counts = state["counts"]
                bar.total = max(counts["admitted"], bar.n)
                bar.update(min(sum(int(r["videos"]) for r in state["reports"]), bar.total - bar.n))
                clips = sum(a.get("clips", 0) for a in per_actor.values())
                bar.set_postfix(clips=clips, actors=len(per_actor), done_before=counts["skipped"], refresh=False)
                bar.refresh()
            if not alive or state.get("failure") is not None:  # a failed run stops now, not when Ray's job gives up
                break
    except BaseException:  # Ctrl-C, SIGTERM (`ray job stop`, a preemption), the lease lost: stop Ray Data's job
        # before Ray goes
        _stop_job(ds, ended)
        raise
    if state.get("failure") is not None:  # an actor's start, OUT's preparation, the admission: its own error
        _quiet_ray_data(ended)
        raise state["failure"]
    if failure:  # an actor's own error (e.g. faults.EnvironmentFault) as itself, not Ray's wrap
        raise _cause(failure[0]) from failure[0]
    return state


def _tally(row: dict, per_actor: dict, timing: dict, first_seen: dict, t0: float) -> None:
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
        totals[key] = totals.get(key, 0) + row[key]
    totals["groups"] += int(bool(row["final"]))
    totals["workers"], totals["model_threads"] = int(row["workers"]), int(row["model_threads"])
    totals["batch_size"] = int(row["batch_size"])


def _one(values: set):
    """The one value of a set, else None."""
    return next(iter(values)) if len(values) == 1 else None


def _summary(out, run, spec, counts, result, per_actor, ray_info, wall) -> RaySummary:
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
        # --batch-size, else the actors' own default (the local engine's: 8 on a CPU, 32 on a GPU); None when actors on
        # different devices chose different ones (each actor's line says its own) or none ran
        batch_size=spec.batch_size or _one({a["batch_size"] for a in actors}),
        videos=counts["entries"],
        videos_ok=result["videos"] - result["failed"],
        videos_failed=result["failed"],
        videos_skipped=counts["skipped"],
        videos_other_shards=0,
        clips=result["clips"],
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
        clips_per_s=result["clips"] / wall if wall > 0 else 0.0,
        parts_written=None,
        errors_retried=counts["errors_retried"],
        groups=counts["groups"],
        actors=actors,
        ray=ray_info,
    )
