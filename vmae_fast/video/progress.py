"""A heartbeat the decoders bump while they work: packets demuxed (the open's index pass, the decoding pass).

DecodePool's watchdog kills a worker that shows no progress for --timeout-s; clips alone are too coarse a sign of
life (opening a two-hour file reads every packet before the first clip exists; a slow network read takes long
between clips). A worker process attaches a shared counter; elsewhere tick() is a no-op. Decoders whose index and
decoding passes run inside C (decord, torchcodec) cannot tick there: their clips are the heartbeat.
"""

from __future__ import annotations

_counter = None  # a multiprocessing RawValue("q") in a decode worker, else None


def attach(counter) -> None:
    """Count this process's ticks in `counter` (anything with an int `.value`); None detaches."""
    global _counter
    _counter = counter


def tick(n: int = 1) -> None:
    """n more units of work done (a packet read): the watchdog sees the process is not stalled."""
    counter = _counter
    if counter is not None:
        counter.value += n
