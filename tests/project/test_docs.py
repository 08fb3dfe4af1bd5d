"""The documentation, checked on every test run: the site in docs/ builds with `mkdocs build --strict` and prints no
warning (a page missing from the nav, a broken link or anchor, a docstring mkdocstrings cannot read all fail it), its
API reference has an entry for every public name, the README's links lead to files that exist, and the pictures are
what tools/figures.py draws from the committed data."""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# each public package and the API page that documents it (docs/api/<page>.md)
API_PAGES = {
    "vmae_fast.kernels": "kernels",
    "vmae_fast.video": "video",
    "vmae_fast.store": "store",
    "vmae_fast.extraction": "extraction",
    "vmae_fast.retrieval": "retrieval",
}


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The site built into a temporary folder: (mkdocs's output, the folder)."""
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}  # Material's banner about its successor, not a build warning
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(REPO / "mkdocs.yml"),
         "--site-dir", str(out)],
        cwd=REPO, capture_output=True, text=True, env=env, timeout=300, check=False)
    return result, out


def _anchors(page: Path) -> set[str]:
    return set(re.findall(r'id="([^"]+)"', page.read_text(encoding="utf-8")))


def test_site_builds_strict_without_warnings(site):
    result, out = site
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-6000:]
    warnings = [line for line in log.splitlines() if re.match(r"\s*(WARNING|ERROR)\b", line)]
    assert not warnings, "\n".join(warnings)
    assert (out / "index.html").is_file() and (out / "api" / "kernels" / "index.html").is_file(), sorted(
        p.name for p in out.iterdir())


@pytest.mark.parametrize("package", sorted(API_PAGES))
def test_every_public_name_of_a_package_is_on_its_api_page(site, package):
    """A name added to a package's `__all__` appears in the reference without anyone remembering to add it (the
    pages render `__all__`), unless it cannot be rendered: this test says which."""
    _, out = site
    page = out / "api" / API_PAGES[package] / "index.html"
    anchors = _anchors(page)
    missing = [name for name in importlib.import_module(package).__all__
               if f"{package}.{name}" not in anchors and not any(a.endswith(f".{name}") for a in anchors)]
    assert not missing, (f"{package}.__all__ names without an entry on docs/api/{API_PAGES[package]}.md: {missing}; "
                         f"add a line `::: {package}.<module>.<name>` there for each (or a docstring mkdocstrings "
                         "can render)")


def test_every_top_level_name_is_in_the_api_reference(site):
    """`import vmae_fast` offers names from the model files and the subpackages: each is documented somewhere in
    the reference (under its home module's path)."""
    _, out = site
    anchors = set().union(*(_anchors(p) for p in (out / "api").rglob("index.html")))
    import vmae_fast

    missing = [name for name in vmae_fast.__all__
               if name != "__version__" and not any(a.endswith(f".{name}") for a in anchors)]
    assert not missing, (f"vmae_fast.__all__ names without an entry in docs/api/: {missing}; add `::: "
                         "vmae_fast.<home module>` (or the name's line) to the right page, e.g. docs/api/model.md")


def test_readme_links_lead_to_files_that_exist():
    """The README is the front door into docs/: its relative links (and their #anchors' files) must exist."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    targets = re.findall(r"\]\(([^)\s]+)\)", text)
    relative = [t.split("#")[0] for t in targets if not re.match(r"[a-z]+:", t) and not t.startswith("#")]
    missing = [t for t in relative if t and not (REPO / t).exists()]
    assert not missing, f"README.md links to files that do not exist: {missing}"


def _figures():
    spec = importlib.util.spec_from_file_location("figures", REPO / "tools" / "figures.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their annotations through it
    spec.loader.exec_module(module)
    return module


def test_pictures_are_what_tools_figures_draws_from_the_committed_data(tmp_path):
    """Regenerated into a temporary folder, each picture is byte for byte the committed one: a picture that no
    longer matches its data (or a data file edited without redrawing) fails here. Redraw: python tools/figures.py"""
    written = _figures().write_figures(tmp_path)
    assert sorted(p.name for p in written) == sorted(p.name for p in (REPO / "docs" / "img").glob("*.svg"))
    for path in written:
        committed = (REPO / "docs" / "img" / path.name).read_text(encoding="utf-8")
        assert path.read_text(encoding="utf-8") == committed, f"docs/img/{path.name} is stale: python tools/figures.py"


def test_each_speed_bar_is_a_figure_of_its_groups_one_run_beside_its_baseline():
    """Every bar of a group is read from the group's one source file (one run, one machine), and the group's first
    bar, and only it per comparison, is the baseline its ratios are taken against."""
    figures = _figures()
    groups = figures.speed_groups()
    assert len(groups) >= 2
    for group in groups:
        data = json.loads((REPO / "bench" / "results" / group.source).read_text())
        for bar in group.bars:
            value = data
            for key in bar.path:
                value = value[key]
            assert bar.value == pytest.approx(float(value), rel=0, abs=0), (group.source, bar.path)
        assert group.bars[0].baseline and not all(bar.baseline for bar in group.bars), group.title
        assert "GPU" not in group.device and "cuda" not in group.device.lower(), group.device  # CPU figures only


def test_text_that_would_not_fit_is_refused():
    figures = _figures()
    stage = figures.Stage("a title far too long for any box of this picture", (), ())
    with pytest.raises(ValueError, match="does not fit"):
        figures._box(figures.Svg(100, 100, "t"), 0, 0, stage, "#fff")
