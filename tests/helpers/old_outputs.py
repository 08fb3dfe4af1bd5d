"""The outputs of vmae_fast 16c2a40 kept in tests/store/old_outputs (made by its make.py with that commit's CLI):
where they are, what they hold, how to make their inputs again, and the options they were run with."""

from __future__ import annotations

import importlib.util
from pathlib import Path

OLD_OUTPUTS = Path(__file__).resolve().parents[1] / "store" / "old_outputs"
COMMITTED = {"clip1.mp4", "clip2.mp4", "clip4.mp4", "clip5.mp4", "clip7.mp4", "sub/clip0.mp4", "sub/clip3.mp4",
             "sub/clip6.mp4"}  # with their clips (one each); broken.mp4, the ninth input, is not committed
RESUME = {"model": "random:small", "workers": 0, "part_rows": 1, "progress": False}  # as make.py ran them


def make_inputs(directory: Path) -> Path:
    """The videos the old outputs were made from, with the same names (make.py's make_inputs)."""
    spec = importlib.util.spec_from_file_location("old_outputs_make", OLD_OUTPUTS / "make.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.make_inputs(directory)
