"""Headless Chromium for the page tests: Debian's `chromium` (installed by .ci/run), never a browser build of a test
tool's own (`playwright install` cannot download here), started with flags that keep it off the network."""

from __future__ import annotations

import shutil

import pytest

# Without the background-networking flags Chromium tries Google's hosts at every start (refused here, many at once).
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--autoplay-policy=no-user-gesture-required"]


def chromium() -> str:
    """The chromium executable; a test that needs it fails (it is not skipped) when it is missing."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail("chromium is not installed: apt-get install chromium (.ci/run installs it; the browser tests of "
                    "the results page and of `vmae-fast serve` need it)")
    return path
