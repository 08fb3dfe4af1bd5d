"""The processes that run no model import no torch: the decode workers (DecodePool's forkserver preloads
vmae_fast.video), the Ray engine's coordinator and admission tasks (Ray imports ray_engine.py in them to find
_Coordinator and _admit, and unpickles what they are given) and its driver, which checks the run's options
(RunSpec) and starts the job. On a 2-core node each torch import is ~1.5 s of CPU
taken from the actors' start (docs/ray.md, "What Ray costs on one node"). Each check runs in a fresh interpreter:
this one has torch loaded already."""

from __future__ import annotations

import pickle
import subprocess
import sys

import pytest

from vmae_fast.extraction import ray_engine
from vmae_fast.extraction.spec import RunSpec


def _modules_after(code: str) -> set[str]:
    """The names in sys.modules after `code` runs in a fresh interpreter."""
    done = subprocess.run([sys.executable, "-c", f"{code}\nimport sys\nprint(' '.join(sys.modules))"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return set(done.stdout.split())


def test_the_decode_workers_package_imports_no_torch():
    modules = _modules_after("import vmae_fast.video, vmae_fast.video.pool, vmae_fast.video.decode")
    assert "vmae_fast.video.pool" in modules  # the check ran
    assert "torch" not in modules


def test_the_ray_coordinator_and_admission_import_no_torch(tmp_path):
    spec = ray_engine._CoordinatorSpec(str(tmp_path / "out"), overwrite=False, retry_errors=True)
    data = pickle.dumps((spec, ray_engine._Coordinator, ray_engine._admit))
    modules = _modules_after(f"import pickle\nspec, cls, fn = pickle.loads({data!r})\n"
                             "assert (spec.out, spec.overwrite, spec.retry_errors) == "
                             f"({str(tmp_path / 'out')!r}, False, True), spec")
    assert "vmae_fast.extraction.ray_engine" in modules
    assert "torch" not in modules
    assert "vmae_fast.extraction.spec" not in modules


_RAY_DRIVER = """
from vmae_fast.extraction import ray_engine
from vmae_fast.extraction.spec import RunSpec
from vmae_fast.faults import InvalidOption

spec = RunSpec.from_keywords(["a.mp4"], "out", model="random:small", engine="ray", keep=" Tube:0.50:random:3 ",
                             dtype="BF16", device="cuda:1", backend="triton", views="5x3", embedding_dtype="float16")
assert (spec.keep, spec.clips_per_video, spec.crops, spec.dtype) == ("tube:0.5:random:3", 5, 3, "BF16"), spec
for bad in ({"keep": "tube:1.5"}, {"keep": "motion:t=-1"}, {"keep": "grid"}, {"dtype": "fp8"}, {"backend": "cuda"}):
    try:
        RunSpec.from_keywords(["a.mp4"], "out", engine="ray", **bad)
    except InvalidOption as e:
        print("refused:", e)
    else:
        raise AssertionError(f"{bad} was taken")
"""


def test_a_ray_drivers_option_checks_import_no_torch():
    """The spellings of keep, dtype, device and backend are checked by _options.py and a regex, not by torch and the
    model's modules (they cost the driver ~2.9 s of CPU before the job; docs/ray.md): the good ones are taken, the
    bad ones refused with the model's own messages, and torch is never imported."""
    done = subprocess.run([sys.executable, "-c", _RAY_DRIVER + "import sys\nprint(' '.join(sys.modules))"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    refused = [line for line in done.stdout.splitlines() if line.startswith("refused:")]
    assert len(refused) == 5, done.stdout
    assert "keep=: bad keep policy 'tube:1.5': tube keep ratio must be in (0, 1], got 1.5" in refused[0]
    assert "motion threshold must be >= 0" in refused[1] and "unknown keep policy 'grid'" in refused[2]
    assert "dtype= must be bf16, fp16 or fp32, got 'fp8'" in refused[3] and "backend= must be one of" in refused[4]
    modules = set(done.stdout.splitlines()[-1].split())
    assert "vmae_fast.extraction.spec" in modules and "vmae_fast._options" in modules  # the checks ran here
    assert not {"torch", "vmae_fast.model", "vmae_fast.tokens", "vmae_fast.checkpoint"} & modules


def test_runspec_is_still_reached_through_the_package():
    import vmae_fast.extraction as extraction

    assert extraction.RunSpec is RunSpec
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        extraction.nothing  # noqa: B018 - the lookup is the test
