"""What a run is: RunSpec, every option of `extract` checked once, and what it builds on a machine (LoadedRun: the
model on its device, the sampling, the keep policy and the content of OUT/_run.json), in one place for both engines
and for `search --video`, which must embed a query as the run did.

A RunSpec is made from Python keywords (RunSpec.from_keywords: `vmae_fast.extract`'s keyword API), from the CLI's
arguments (RunSpec.from_options(..., origin="cli")) or from an output's _run.json (RunSpec.from_run). Its checks run
when it is made, before anything is read or written, and their messages name the option as the user gave it:
`--batch-size` from the CLI, `batch_size=` from Python. What needs the machine (the device, the model, the decoder
libraries) is checked when it is loaded (RunSpec.load) or when the engine starts. The checks import neither torch nor
the model's modules (the spellings of keep, dtype and backend are vmae_fast/_options.py's; torch is imported where a
model is loaded or a torch object was given): a Ray driver checks a run and starts it without them.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .. import __version__
from .._options import DTYPE_NAMES, KERNEL_BACKENDS, dtype_short, parse_keep_spelling
from ..faults import InvalidOption, UnsupportedOption, UserError
from ..store import EMBEDDING_DTYPES, FORMAT, config_hash, load_run
from ..video import Sampling
from ..video.crop import CROPS, check_crops
from ..video.decode import DECODE_BACKENDS
from .inputs import parse_shard

if TYPE_CHECKING:
    import torch

_VIEWS_RE = re.compile(r"^\s*(\d+)\s*[xX×]\s*(\d+)\s*$")
_DEVICE_RE = re.compile(r"^(cpu|cuda)(:\d+)?$")  # the usual devices, checked without torch (others: torch.device)
ENGINES = ("local", "ray")
RAY_OPTIONS = ("actors", "cpus_per_actor", "gpus_per_actor", "group_videos", "report_every_s")
ORIGINS = ("python", "cli", "run")


# --- building blocks (used by the spec, and by the callers of 16c2a40's names) ----------------------------------------
def load_run_model(model: Any, device: torch.device, dtype: torch.dtype, backend: str, config: dict | None = None):
    """`model` as given (an already loaded module), or load_model(model, ...) with a local path made absolute
    (_run.json must name it from any working directory). The user's mistake, where load_model knows it (a missing
    file, a checkpoint whose keys or shapes are no model's: a UserError), says which model; anything else (our bug,
    the environment's fault) is raised as it is, with its traceback."""
    if _is_torch(model, "nn", "Module"):
        return model
    from ..checkpoint import load_model  # torch and the model's modules: only where a model is loaded

    source = _model_source(model)
    try:
        return load_model(source, device=device, dtype=dtype, backend=backend, config=config)
    except UserError as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise type(e)(f"cannot load model {str(model)!r}: {first}") from e


def _model_source(model: Any) -> Any:
    if _is_torch(model, "nn", "Module"):
        return model
    source = str(model)
    if os.path.exists(os.path.expanduser(source)):  # every process (and node) must find it: absolute path
        source = os.path.abspath(os.path.expanduser(source))
    return source


def parse_keep_spec(keep: Any):
    """(policy for the model or None for all tokens, canonical spec recorded in the output)."""
    if keep is None or keep == "all":
        return None, "all"
    from ..tokens import parse_keep  # torch: only where the policy is used (keep_spec checks a spelling without)

    policy = parse_keep(keep)
    if policy is None:
        return None, "all"
    return policy, policy.spec


def keep_spec(keep: Any) -> str:
    """The canonical spec of `keep` (a spelling, None, or a policy object), as parse_keep_spec gives it; a
    spelling is checked without importing torch (_options.py)."""
    if keep is None:
        return "all"
    if isinstance(keep, str):
        return parse_keep_spelling(keep).spec
    return parse_keep_spec(keep)[1]


def parse_views(spec: str, option: str = "--views") -> tuple[int, int]:
    """'5x3' -> (clips_per_video 5, crops 3); InvalidOption naming the value when it is not CLIPSxCROPS with crops
    1|3 (option: how the message names the option)."""
    m = _VIEWS_RE.match(str(spec))
    if not m:
        raise InvalidOption(f"{option} must look like CLIPSxCROPS, e.g. 5x3 (5 clips per video x 3 crops), got "
                            f"{spec!r}")
    clips, crops = int(m.group(1)), int(m.group(2))
    if clips < 1:
        raise InvalidOption(f"{option} {spec}: the number of clips per video must be >= 1")
    if crops not in CROPS:
        raise InvalidOption(f"{option} {spec}: crops must be 1 or 3, got {crops}")
    return clips, crops


# --- the spec ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunSpec:
    """Every option of one `extract` run, checked when it is made (see the module docstring); engines and search
    trust it. Fields are the options of `vmae_fast.extract` (docs: extract); after the checks, `views` has become
    clips_per_video and crops (views keeps what was given), `model` a path is absolute, `keep` is the canonical
    policy spec, `shard` is (index, count) or None (from torchrun / SLURM variables when the engine starts).
    """

    inputs: tuple[str, ...]
    out: str
    model: Any = "random:small"
    # load_model's config overrides (the random model of a _run.json)
    model_config: Mapping[str, Any] | None = field(default=None, hash=False)
    clip_frames: int | None = None
    frame_step: int | None = None
    fps: float | None = None
    clip_stride_s: float | None = None
    clips_per_video: int | None = None
    crops: int | None = None
    views: str | None = None
    keep: str = "all"
    batch_size: int | None = None
    workers: int | None = None
    device: str | None = None
    dtype: str | None = None
    shard: tuple[int, int] | None = None
    overwrite: bool = False
    embedding_dtype: str = "float32"
    timeout_s: float = 120.0
    progress: bool | None = None
    backend: str = "auto"
    decode_backend: str = "auto"
    decode_device: str = "cpu"
    part_rows: int = 100_000
    commit_interval_s: float = 60.0
    decode_options: Mapping[str, Any] | None = field(default=None, hash=False)
    retry_errors: bool = False
    break_lock: bool = False
    engine: str = "local"
    ray_address: str | None = None
    ray_options: Mapping[str, Any] | None = field(default=None, hash=False)
    origin: str = field(default="python", compare=False)  # how messages name an option: ORIGINS

    # -- constructors -----------------------------------------------------------------------------------------------
    @classmethod
    def from_keywords(cls, inputs: Any, out: Any, model: Any = "random:small", **options) -> RunSpec:
        """`vmae_fast.extract(inputs, out, model, **options)`'s arguments; an unknown keyword is UnsupportedOption
        (a TypeError and a ValueError)."""
        return cls.from_options({"inputs": inputs, "out": out, "model": model, **options}, origin="python")

    @classmethod
    def from_options(cls, options: Mapping[str, Any], origin: str = "python") -> RunSpec:
        """A spec from a mapping of option names to values (the CLI maps its arguments to these names)."""
        known = {f.name for f in dataclasses.fields(cls)} - {"origin"}
        unknown = sorted(set(options) - known)
        if unknown:
            names = ", ".join(_spell(name, origin) for name in unknown)
            raise UnsupportedOption(f"vmae_fast.extract() does not support {names}: not an option (the options: "
                                f"{', '.join(sorted(known - {'inputs', 'out'}))})")
        return cls(**options, origin=origin)

    @classmethod
    def from_run(cls, out: str | os.PathLike, device: str | None = None, inputs: Any = ()) -> RunSpec:
        """The spec of the run that wrote OUT, from its _run.json (model source, sampling, keep policy, dtype,
        embedding dtype): what embedding a query as the run did (`search --video`) needs. device: where to compute
        (default: the run's device type when this machine has it, else cpu); the run's dtype is kept on a device
        of the run's type, else the device's default."""
        run = load_run(out)
        config = run["config"]
        source = run["model"].get("source")
        import torch

        if device is None:
            device = "cuda" if config["device_type"] == "cuda" and torch.cuda.is_available() else "cpu"
        same_type = torch.device(device).type == config["device_type"]
        sampling = dict(config["sampling"])
        sampling.pop("resize", None)  # follows from the model's preprocessing (load)
        return cls(inputs=inputs, out=out, model=source,
                   # random weights may have been built with config overrides (e.g. a smaller image_size)
                   model_config=config["model"]["config"] if str(source).startswith("random:") else None,
                   clip_frames=sampling.pop("num_frames", None), crops=sampling.pop("crops", 1),
                   keep=config["keep"], device=device, dtype=config["dtype"] if same_type else None,
                   embedding_dtype=config["embedding_dtype"], origin="run", **sampling)

    # -- the checks -------------------------------------------------------------------------------------------------
    def option(self, name: str) -> str:
        """How this spec's messages name option `name`: --batch-size (CLI), batch_size= (Python), batch_size
        (_run.json); ray_options' keys as --ray-actors / ray_options['actors']."""
        return _spell(name, self.origin)

    def __post_init__(self):
        if self.origin not in ORIGINS:
            raise ValueError(f"origin must be one of {ORIGINS}, got {self.origin!r}")
        opt = self.option
        inputs = self.inputs
        if isinstance(inputs, (str, os.PathLike)):
            inputs = [inputs]
        self._set("inputs", tuple(os.fspath(i) for i in inputs))
        self._set("out", os.fspath(self.out))
        if not self.out:  # pathlib reads "" as the current folder: an unset "$OUT" must not fill it with parts
            raise InvalidOption(f"{opt('out')} must name an output folder or URL, got {self.out!r}")
        self._set("model", _model_source(self.model))
        for name in ("batch_size", "part_rows", "clip_frames", "frame_step", "clips_per_video"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise InvalidOption(f"{opt(name)} must be a positive integer, got {value!r}")
        for name in ("fps", "clip_stride_s", "commit_interval_s", "timeout_s"):
            value = getattr(self, name)
            if value is not None and not (_number(value) and value > 0 and math.isfinite(value)):
                raise InvalidOption(f"{opt(name)} must be positive, got {value!r}")
        if self.workers is not None and (isinstance(self.workers, bool) or not isinstance(self.workers, int)
                                         or self.workers < 0):
            raise InvalidOption(f"{opt('workers')} must be >= 0, got {self.workers!r}")
        if self.embedding_dtype not in EMBEDDING_DTYPES:
            raise InvalidOption(f"{opt('embedding_dtype')} must be one of {EMBEDDING_DTYPES}, got "
                                f"{self.embedding_dtype!r}")
        for a, b in (("frame_step", "fps"), ("clip_stride_s", "clips_per_video")):
            if getattr(self, a) is not None and getattr(self, b) is not None:
                raise InvalidOption(f"give {opt(a)} or {opt(b)}, not both")
        if self.views is not None:
            given = [opt(name) for name in ("clips_per_video", "crops", "clip_stride_s")
                     if getattr(self, name) is not None]
            if given:
                raise InvalidOption(f"{opt('views')} {self.views} sets {opt('clips_per_video')} and {opt('crops')}: "
                                    f"give {opt('views')} or {' and '.join(given)}, not both")
            clips, crops = parse_views(self.views, opt("views"))
            self._set("clips_per_video", clips)
            self._set("crops", crops)
        if self.crops is not None:
            try:
                check_crops(self.crops)
            except ValueError:
                raise InvalidOption(f"{opt('crops')} must be 1 (the center crop) or 3 (start, center and end of the "
                                    f"long side), got {self.crops!r}") from None
        try:
            self._set("keep", keep_spec(self.keep))
        except (ValueError, TypeError) as e:
            raise InvalidOption(f"{opt('keep')}: {e}") from None
        self._set("shard", parse_shard(self.shard, opt("shard")))
        if self.dtype is not None and not _is_torch(self.dtype, "dtype") and str(self.dtype).lower() not in DTYPE_NAMES:
            raise InvalidOption(f"{opt('dtype')} must be bf16, fp16 or fp32, got {self.dtype!r}")
        if self.device is not None and not _is_torch(self.device, "device") and not _DEVICE_RE.match(str(self.device)):
            import torch  # what torch.device takes beyond cpu / cuda[:N] (e.g. "cuda: 0" is refused, "meta" is not)

            try:
                torch.device(self.device)
            except (RuntimeError, TypeError):
                raise InvalidOption(f"{opt('device')} must be cpu, cuda or cuda:<index>, got {self.device!r}") from None
        for name, allowed in (("backend", KERNEL_BACKENDS), ("decode_backend", DECODE_BACKENDS)):
            if getattr(self, name) not in allowed:
                raise InvalidOption(f"{opt(name)} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.engine not in ENGINES:
            raise InvalidOption(f"{opt('engine')} must be local or ray, got {self.engine!r}")
        if self.engine == "ray":
            self._check_ray()
        elif self.ray_address is not None or self.ray_options is not None:
            if self.origin == "cli":  # the flags given, e.g. --ray-address auto without --engine ray
                given = [opt("ray_address")] * (self.ray_address is not None) + \
                    [opt("ray." + key) for key in self.ray_options or {}]
                raise InvalidOption(f"{' and '.join(given)} {'is' if len(given) == 1 else 'are'} for --engine ray; "
                                    "without it the run is local, on this machine")
            raise InvalidOption(f"{opt('ray_address')} and {opt('ray_options')} are for engine='ray'")

    def _check_ray(self) -> None:
        opt = self.option
        options = dict(self.ray_options or {})
        unknown = sorted(set(options) - set(RAY_OPTIONS))
        if unknown:
            raise InvalidOption(f"unknown ray_options {unknown}; known: {list(RAY_OPTIONS)}")
        ray = "--engine ray" if self.origin == "cli" else "engine='ray'"
        if self.shard is not None:
            raise InvalidOption(f"{opt('shard')} splits the work between static processes; {ray} balances it itself: "
                                "give one of them")
        if _is_torch(self.model, "nn", "Module"):
            raise UnsupportedOption(f"{ray} loads the model on every actor: pass its source (a folder or file every "
                                    "node sees, a hub id, random:<preset>), not a loaded module")
        if self.decode_device != "cpu":
            raise InvalidOption(f"{ray} decodes on the CPUs of each actor's node ({opt('decode_device')} cpu)")
        group_videos = options.get("group_videos")
        if group_videos is not None and (isinstance(group_videos, bool) or not isinstance(group_videos, int)
                                         or group_videos < 1):
            raise InvalidOption(f"{opt('ray.group_videos')} must be a positive integer, got {group_videos!r}")
        for name in ("cpus_per_actor", "report_every_s"):
            value = options.get(name)
            if value is not None and not (_number(value) and value >= 0 and (value > 0 or name != "cpus_per_actor")):
                raise InvalidOption(f"{opt('ray.' + name)} must be positive, got {value!r}")
        self._set("ray_options", options)

    def _set(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)

    # -- what it builds -----------------------------------------------------------------------------------------------
    @property
    def keep_policy(self):
        """The keep policy object for the model (None: every token)."""
        return parse_keep_spec(self.keep)[0]

    def sampling(self, num_frames: int, resize: int | None = None) -> Sampling:
        """The run's Sampling for a model of `num_frames` frames (resize: the short side before the crop, when the
        model's preprocessing resizes to more than its crop size, as V-JEPA 2's does)."""
        return Sampling(num_frames=int(num_frames), frame_step=self.frame_step, fps=self.fps,
                        clip_stride_s=self.clip_stride_s, clips_per_video=self.clips_per_video,
                        crops=1 if self.crops is None else int(self.crops), resize=resize)

    def resolve_device(self) -> torch.device:
        """The device this process computes on: a loaded model's own, else the device option (None: cuda:LOCAL_RANK
        when CUDA is there, else cpu); a CUDA device this machine lacks is an InvalidOption naming the option."""
        if _is_torch(self.model, "nn", "Module"):
            return next(self.model.parameters()).device
        from .devices import resolve_device  # torch

        return resolve_device(self.device, option=self.option("device"))

    def load(self, device: torch.device | None = None) -> LoadedRun:
        """Load the model on `device` (default: resolve_device()) and build what follows from it: the sampling (the
        model's frames), the keep policy and the _run.json content. `clip_frames` other than the model's frames
        is an InvalidOption."""
        dev = self.resolve_device() if device is None else device
        if _is_torch(self.model, "nn", "Module"):
            dtype = next(self.model.parameters()).dtype
        else:
            from ..checkpoint.load import resolve_dtype

            try:
                dtype = resolve_dtype(self.dtype, dev)
            except ValueError as e:
                raise InvalidOption(f"{self.option('dtype')}: {e}") from None
        net = load_run_model(self.model, dev, dtype, self.backend,
                             dict(self.model_config) if self.model_config is not None else None)
        cfg = net.config
        if self.clip_frames is not None and self.clip_frames != cfg.num_frames:
            try:  # V-JEPA 2 takes any count (rotary positions); VideoMAE's position table fixes it
                net = net.with_num_frames(self.clip_frames)
            except ValueError:
                raise InvalidOption(f"{self.option('clip_frames')} {self.clip_frames} does not match the model, "
                                    f"which takes {cfg.num_frames} frames") from None
            cfg = net.config
        resize = cfg.resize_size if cfg.resize_size != cfg.image_size else None
        return LoadedRun(self, net, dev, dtype, self.sampling(int(cfg.num_frames), resize))


@dataclass(frozen=True)
class LoadedRun:
    """What a RunSpec builds on one machine: the model on its device (and dtype), the sampling, the keep policy;
    run(num_shards) is the content of _run.json."""

    spec: RunSpec
    model: Any
    device: torch.device
    dtype: torch.dtype
    sampling: Sampling

    @property
    def keep_policy(self):
        return self.spec.keep_policy

    @property
    def dtype_name(self) -> str:
        return dtype_short(self.dtype)

    def run(self, num_shards: int = 1) -> dict:
        """The content of _run.json; `config` holds everything that changes the rows and is what config_hash
        covers."""
        return build_run(self.model, self.sampling, self.spec.keep, self.dtype, self.device,
                         self.spec.embedding_dtype, (0, num_shards))


def build_run(model, sampling, keep_spec: str, dtype: torch.dtype, device: torch.device, embedding_dtype: str,
              shard: tuple[int, int]) -> dict:
    """The content of _run.json; `config` holds everything that changes the rows and is what config_hash covers."""
    described = model.describe()
    cfg = model.config
    model_part = {key: described.get(key) for key in ("weights_sha256", "config", "preprocessing")}
    if not described.get("weights_sha256"):
        model_part["source"] = described.get("source")  # no checksum: the source is the identity
    config = {
        "model": model_part,
        "sampling": sampling.to_dict(),
        "image_size": int(cfg.image_size),
        "keep": keep_spec,
        "dtype": dtype_short(dtype),
        "device_type": device.type,
        "embedding_dtype": embedding_dtype,
        "embedding_dim": int(cfg.hidden_size),
        "num_labels": int(cfg.num_labels or 0) if _has_head(model) else 0,
    }
    return {
        "format": FORMAT,
        "library_version": __version__,
        "config_hash": config_hash(config),
        "config": config,
        "model": described,
        "device": str(device),
        "num_shards": shard[1],
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _has_head(model) -> bool:
    return getattr(model, "head", None) is not None


def _is_torch(value: Any, *name: str) -> bool:
    """isinstance(value, torch.<name>) without importing torch: a torch object exists only once torch is imported."""
    torch = sys.modules.get("torch")
    if torch is None:
        return False
    cls = torch
    for part in name:
        cls = getattr(cls, part)
    return isinstance(value, cls)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


_CLI_RAY = {"actors": "--ray-actors", "cpus_per_actor": "--ray-cpus-per-actor",
            "gpus_per_actor": "--ray-gpus-per-actor", "group_videos": "--ray-group-videos",
            "report_every_s": "report_every_s"}


def _spell(name: str, origin: str) -> str:
    """An option's name as `origin` spells it; "ray.<key>" is a key of ray_options."""
    if name.startswith("ray."):
        key = name[4:]
        return _CLI_RAY[key] if origin == "cli" else f"ray_options[{key!r}]"
    if origin == "cli":
        return {"inputs": "INPUT", "out": "--out"}.get(name, "--" + name.replace("_", "-"))
    if origin == "run":
        return f"{name} (_run.json)"
    return f"{name}="
