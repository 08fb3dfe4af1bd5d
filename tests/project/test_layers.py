"""The house's rules, checked on every test run: the import-linter contracts of pyproject.toml (the layer order, no
import cycles at any depth, the two engines apart, the model and kernels free of pipeline dependencies) and ruff's
rules. A cycle, an upward import or a lint error fails the README's test command, not a later review."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _tool(name: str) -> str:
    """The console script installed beside this interpreter (the test extra installs both tools)."""
    path = Path(sys.executable).parent / name
    found = str(path) if path.exists() else shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: pip install -e '.[test]'")
    return found


def test_import_contracts_are_kept():
    result = subprocess.run([_tool("lint-imports"), "--no-cache"], cwd=REPO, capture_output=True, text=True,
                            timeout=300, check=False)
    report = result.stdout[result.stdout.find("Contracts"):] or result.stdout
    assert result.returncode == 0, report + result.stderr
    assert "0 broken" in report and "BROKEN" not in report, report


def test_ruff_is_clean():
    result = subprocess.run([_tool("ruff"), "check", "--no-cache", "."], cwd=REPO, capture_output=True, text=True,
                            timeout=300, check=False)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]


def test_no_folder_at_the_root_shadows_an_installable_package():
    """Run from the repository root, a folder with an __init__.py there is importable under its own name and hides an
    installed package of that name (the root kernels/ once hid Hugging Face's `kernels`, which transformers
    imports): importable code lives under vmae_fast/ only."""
    packages = sorted(p.name for p in REPO.iterdir() if p.is_dir() and (p / "__init__.py").exists())
    assert packages == ["vmae_fast"], packages
