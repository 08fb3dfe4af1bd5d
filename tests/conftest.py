"""Shared pytest setup. Each helper owns one section; keep edits to your own section."""

import os

# Kernels: run Triton kernels on CPU through the interpreter; must be set before triton (or vmae_fast.kernels) imports.
os.environ.setdefault("TRITON_INTERPRET", "1")

# Reference / model tests: `python -m pytest` from the repository root puts the root on sys.path, where our kernels/
# folder is importable as a top-level `kernels` package. transformers probes `import kernels` (its hub-kernels
# integration) on first model use; that re-executed kernels/*.py under a second name and re-registered the
# vmae_fast:: torch.library ops, leaving vmae_fast.kernels with dangling op handles (random segfaults, bad_alloc,
# "schema not registered" in later Triton-model tests). Aliasing the name to the one real module prevents it.
import sys

import vmae_fast.kernels  # after TRITON_INTERPRET is set above

sys.modules.setdefault("kernels", vmae_fast.kernels)
