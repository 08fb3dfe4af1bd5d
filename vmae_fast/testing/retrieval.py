"""Retrieval internals for benchmarks (tools/bench_dedup.py, tools/bench_serve.py).

No compatibility promise (see vmae_fast.testing).
"""

from __future__ import annotations

from ..retrieval.catalog import Catalog
from ..retrieval.index import stream_rows

__all__ = ["Catalog", "stream_rows"]
