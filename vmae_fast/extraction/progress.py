"""A run's progress on stderr, for both engines and `vmae-fast index`'s phases: tqdm's bar on a terminal; in a log
(stderr a file or a pipe: a SLURM output file, `ray job logs`, a pod's log, `nohup`) one plain line every
LOG_EVERY_S. A bar redrawn there is one endless line of carriage returns, and a run of hours was silent in its log
until its summary."""

from __future__ import annotations

import sys
import threading
import time
from typing import Any, TextIO

from tqdm import tqdm

LOG_EVERY_S = 60.0  # a log line this often (the first one after this long: a short run prints only its summary)


def progress_display(desc: str, progress: bool | None, total: int | None = None, stream: TextIO | None = None,
                     unit: str = "video"):
    """progress False: None. True: tqdm's bar, wherever stderr goes (asked for). None (the default): the bar on a
    terminal, else LogLines. unit: what is counted (the engines count videos, `vmae-fast index` clips)."""
    stream = sys.stderr if stream is None else stream
    if progress is False:
        return None
    if progress or stream.isatty():
        return tqdm(total=total, unit=unit, file=stream, dynamic_ncols=True, desc=desc)
    return LogLines(desc, total, stream, unit=unit)


class LogLines:
    """The part of tqdm's interface the engines use (n, total, update, set_description, set_postfix, refresh,
    close), written as a line every `every` seconds:

        extract: 1,204/10,000 videos (12%), 0:20:03 elapsed, 1.00 videos/s, about 2:26:30 left; clips=8428, errors=3
    """

    def __init__(self, desc: str, total: int | None, stream: TextIO, every: float | None = None, unit: str = "video"):
        self.desc, self.total, self.n, self.unit = desc, total, 0, unit
        self.stream, self.every = stream, LOG_EVERY_S if every is None else every
        self.started = self.last = time.monotonic()
        self.postfix: dict[str, Any] = {}
        self.lock = threading.Lock()  # the local engine reports from its decode thread too

    def update(self, n: int = 1) -> None:
        self.n += n
        self.refresh()

    def set_description(self, desc: str, refresh: bool = True) -> None:
        self.desc = desc
        if refresh:
            self.refresh()

    def set_postfix(self, refresh: bool = True, **postfix: Any) -> None:
        self.postfix = postfix
        if refresh:
            self.refresh()

    def refresh(self) -> None:
        now = time.monotonic()
        with self.lock:
            if now - self.last < self.every:
                return
            self.last = now
        try:
            self.stream.write(self.line(now) + "\n")
            self.stream.flush()
        except (OSError, ValueError):  # the log went away (a closed pipe): the run goes on without it
            pass

    def line(self, now: float) -> str:
        elapsed = now - self.started
        rate = self.n / elapsed if elapsed > 0 else 0.0
        text = f"{self.desc}: {self.n:,}"
        if self.total:
            text += f"/{self.total:,} {self.unit}s ({100 * self.n / self.total:.0f}%)"
        else:
            text += f" {self.unit}s"
        text += f", {_clock(elapsed)} elapsed, {rate:.2f} {self.unit}s/s"
        if self.total and rate > 0 and self.n < self.total:
            text += f", about {_clock((self.total - self.n) / rate)} left"
        if self.postfix:
            text += "; " + ", ".join(f"{k}={v}" for k, v in self.postfix.items())
        return text

    def close(self) -> None:  # the run's summary follows
        pass


def _clock(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"
