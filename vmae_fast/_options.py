"""The spellings of the model's options, without torch: the kernel backends, the dtype names and the keep-policy
grammar. The modules of the model take their names from here (one list of each), and a run's options are checked
with them where the run starts (RunSpec, extraction/spec.py): under `--engine ray` that process is the driver, which
never loads the model, and importing torch and the kernels there to check a spelling cost ~2.9 s of CPU before the
job could start (docs/ray.md, "What Ray costs on one node"). Internal: the public names are the model's
(vmae_fast.model.KERNEL_BACKENDS, vmae_fast.tokens.parse_keep, load_model's dtype names).
"""

from __future__ import annotations

from dataclasses import dataclass

KERNEL_BACKENDS = ("auto", "triton", "torch")

# dtype name (any case) -> the name of the torch dtype (checkpoint.load.DTYPES maps it to the dtype itself)
DTYPE_NAMES = {"fp32": "float32", "float32": "float32", "fp16": "float16", "float16": "float16",
               "half": "float16", "bf16": "bfloat16", "bfloat16": "bfloat16"}
# torch dtype name -> the name _run.json records
DTYPE_SHORT = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}

KEEP_FORMS = "'all', 'tube:R', 'tube:R:random[:SEED]', 'motion:R', 'motion:t=X' (R in (0, 1])"


def dtype_short(dtype) -> str:
    """A torch float dtype (torch.float32, ...) -> the name _run.json records ("fp32", ...)."""
    return DTYPE_SHORT[str(dtype).removeprefix("torch.")]


def check_keep_ratio(kind: str, ratio: float) -> None:
    if not 0 < ratio <= 1:
        raise ValueError(f"{kind} keep ratio must be in (0, 1], got {ratio}")


def check_motion_threshold(threshold: float) -> None:
    if not threshold >= 0:
        raise ValueError(f"motion threshold must be >= 0, got {threshold}")


@dataclass(frozen=True)
class KeepSpelling:
    """A keep policy as spelled (tokens.py's module docstring): kind "all", "tube" or "motion" and its numbers,
    checked; `spec` is the canonical spelling outputs record. tokens.parse_keep builds the policy from it."""

    kind: str
    ratio: float | None = None
    threshold: float | None = None
    random: bool = False
    seed: int = 0

    @property
    def spec(self) -> str:
        if self.kind == "all":
            return "all"
        if self.kind == "tube":
            return f"tube:{self.ratio:g}" + (f":random:{self.seed}" if self.random else "")
        return f"motion:{self.ratio:g}" if self.ratio is not None else f"motion:t={self.threshold:g}"


def parse_keep_spelling(spec: str) -> KeepSpelling:
    """A keep-policy string -> its KeepSpelling; ValueError on a bad spelling or value, saying which forms are
    accepted."""
    parts = spec.strip().lower().split(":")
    try:
        if parts == ["all"]:
            return KeepSpelling("all")
        if parts[0] == "tube" and len(parts) == 2:
            return _checked(KeepSpelling("tube", ratio=float(parts[1])))
        if parts[0] == "tube" and len(parts) in (3, 4) and parts[2] == "random":
            return _checked(KeepSpelling("tube", ratio=float(parts[1]), random=True,
                                         seed=int(parts[3]) if len(parts) == 4 else 0))
        if parts[0] == "motion" and len(parts) == 2:
            if parts[1].startswith("t="):
                return _checked(KeepSpelling("motion", threshold=float(parts[1][2:])))
            return _checked(KeepSpelling("motion", ratio=float(parts[1])))
    except ValueError as e:
        raise ValueError(f"bad keep policy {spec!r}: {e}; expected one of {KEEP_FORMS}") from None
    raise ValueError(f"unknown keep policy {spec!r}; expected one of {KEEP_FORMS}")


def _checked(spelling: KeepSpelling) -> KeepSpelling:
    if spelling.ratio is not None:
        check_keep_ratio(spelling.kind, spelling.ratio)
    if spelling.threshold is not None:
        check_motion_threshold(spelling.threshold)
    return spelling
