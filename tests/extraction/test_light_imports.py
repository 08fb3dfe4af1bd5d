"""The processes that run no model import no torch: the decode workers (DecodePool's forkserver preloads
vmae_fast.video) and the Ray engine's coordinator and admission tasks (Ray imports ray_engine.py in them to find
_Coordinator and _admit, and unpickles what they are given). On a 2-core node each torch import is ~1.5 s of CPU
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


def test_runspec_is_still_reached_through_the_package():
    import vmae_fast.extraction as extraction

    assert extraction.RunSpec is RunSpec
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        extraction.nothing  # noqa: B018 - the lookup is the test
