"""`vmae-fast serve` as people run it: the CLI in its own process on 127.0.0.1 and a free port (--port 0; the server
prints the URL it listens on), stopped with SIGTERM. `Served.alive()` tells whether it survived what a test did."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path


class Served:
    def __init__(self, out: Path, *args: str, log: Path, timeout_s: float = 180.0):
        self.log = log
        self._file = open(log, "w")  # noqa: SIM115 - closed by stop(); a file never fills and blocks the server
        self.proc = subprocess.Popen([sys.executable, "-m", "vmae_fast.cli", "serve", str(out), "--port", "0", *args],
                                     stdout=subprocess.PIPE, stderr=self._file, text=True,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.url = None
        lines: list[str] = []

        def read():
            for line in self.proc.stdout:
                lines.append(line)

        threading.Thread(target=read, daemon=True).start()
        deadline = time.monotonic() + timeout_s
        while self.url is None:
            if m := re.search(r"(http://127\.0\.0\.1:\d+)/", "".join(lines)):
                self.url = m.group(1)
            elif self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"vmae-fast serve did not start (exit {self.proc.returncode}): "
                                   f"{''.join(lines)}{log.read_text()[-3000:]}")
            else:
                time.sleep(0.05)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
        self._file.close()
        return self.proc.returncode
