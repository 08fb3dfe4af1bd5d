"""Shared pytest setup."""

import os

# Kernels: run Triton kernels on CPU through the interpreter; must be set before triton (or vmae_fast.kernels) imports.
os.environ.setdefault("TRITON_INTERPRET", "1")
