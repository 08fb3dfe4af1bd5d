"""An upload worker function that misbehaves (UploadEmbedder(..., embed=embed_with_faults)), for the tests that a
hostile upload costs one request, never the server: an uploaded file whose bytes start with one of MARKERS makes the
worker segfault, abort, hang, or raise what our own bug would. Workers import it by name, so it lives in a module."""

from __future__ import annotations

import os
import signal
import time

from vmae_fast.retrieval.upload import embed_upload

MARKERS = (b"vmae-test-segfault", b"vmae-test-abort", b"vmae-test-hang", b"vmae-test-bug")


def embed_with_faults(out, path, at_s, device=None):
    with open(path, "rb") as f:
        head = f.read(64)
    if head.startswith(b"vmae-test-segfault"):
        os.kill(os.getpid(), signal.SIGSEGV)
    if head.startswith(b"vmae-test-abort"):
        os.abort()
    if head.startswith(b"vmae-test-hang"):
        time.sleep(3600)
    if head.startswith(b"vmae-test-bug"):
        raise TypeError("unsupported operand type(s) for +: 'int' and 'NoneType'")
    return embed_upload(out, path, at_s, device)
