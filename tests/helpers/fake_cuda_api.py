"""A fake torch.cuda for CPU tests of device routing: N devices that record which device every call targets.

CUDA semantics that matter for multi-GPU ranks, mimicked here: a process has a current device (0 until
set_device); Triton kernels launch on the current device; torch.cuda.Event().record() with no stream records on
the current device's current stream; torch.cuda.Stream() and torch.cuda.graph's capture stream are created on the
current device; pinned host memory is allocated in the current device's context. A model forward records the
current device (where its Triton kernels would launch). Tensors stay on the CPU: `.to(cuda)` and `.pin_memory()`
are recorded and return CPU tensors, `torch.zeros(device=cuda)` allocates on the CPU.

    fake = FakeCuda(monkeypatch, devices=2)
    ... code under test ...
    fake.calls  # [(name, device index), ...]
"""

from __future__ import annotations

import contextlib

import torch


class FakeStream:
    def __init__(self, device: int):
        self.device = torch.device("cuda", device)

    def wait_stream(self, other) -> None:
        pass

    def synchronize(self) -> None:
        pass


class FakeCuda:
    def __init__(self, monkeypatch, devices: int = 2):
        self.devices, self.current = devices, 0
        self.calls: list[tuple[str, int]] = []
        self._streams = {i: FakeStream(i) for i in range(devices)}
        fake = self

        class Event:
            def record(self, stream=None):
                self.device = (stream or fake.current_stream()).device.index
                fake.calls.append(("event.record", self.device))

            def synchronize(self):
                fake.calls.append(("event.synchronize", self.device))

            def query(self):
                return True

        class Graph:
            def replay(self):
                fake.calls.append(("graph.replay", fake.current))

            def pool(self):
                return ("pool", fake.current)

        @contextlib.contextmanager
        def graph(g, pool=None, stream=None):
            # torch.cuda.graph captures on `stream`, else on a stream it made on the current device
            fake.calls.append(("graph.capture", (stream.device.index if stream is not None else fake.current)))
            yield

        real_to, real_zeros = torch.Tensor.to, torch.zeros

        def to(tensor, *args, **kwargs):
            target = kwargs.pop("device", None)
            rest = []
            for a in args:
                if isinstance(a, (torch.device, str)) and torch.device(a).type == "cuda":
                    target = a
                else:
                    rest.append(a)
            if target is not None and torch.device(target).type == "cuda":
                fake.calls.append(("to", fake._index(target)))
                kwargs.pop("non_blocking", None)
                return real_to(tensor, *rest, **kwargs) if rest or kwargs else tensor
            return real_to(tensor, *args, **({"device": target} if target is not None else {}), **kwargs)

        def zeros(*args, device=None, pin_memory=False, **kwargs):
            if device is not None and torch.device(device).type == "cuda":
                fake.calls.append(("zeros", fake._index(device)))
                device = None
            if pin_memory:
                fake.calls.append(("pin_memory", fake.current))
            return real_zeros(*args, device=device, **kwargs)

        def pin_memory(tensor, *args):
            fake.calls.append(("pin_memory", fake.current))
            return tensor

        c = torch.cuda
        monkeypatch.setattr(c, "is_available", lambda: True)
        monkeypatch.setattr(c, "device_count", lambda: self.devices)
        monkeypatch.setattr(c, "current_device", lambda: self.current)
        monkeypatch.setattr(c, "set_device", self.set_device)
        monkeypatch.setattr(c, "device", self.device)
        monkeypatch.setattr(c, "current_stream", self.current_stream)
        monkeypatch.setattr(c, "Stream", lambda device=None, **kw: FakeStream(self._index(device)))
        monkeypatch.setattr(c, "stream", self.stream)
        monkeypatch.setattr(c, "Event", Event)
        monkeypatch.setattr(c, "CUDAGraph", Graph)
        monkeypatch.setattr(c, "graph", graph)
        monkeypatch.setattr(c, "empty_cache", lambda: self.calls.append(("empty_cache", self.current)))
        monkeypatch.setattr(torch.Tensor, "to", to)
        monkeypatch.setattr(torch.Tensor, "pin_memory", pin_memory)
        monkeypatch.setattr(torch, "zeros", zeros)

    def _index(self, device) -> int:
        if device is None:
            return self.current
        if isinstance(device, int):
            return device
        device = torch.device(device)
        return self.current if device.index is None else device.index

    def set_device(self, device) -> None:
        self.current = self._index(device)
        self.calls.append(("set_device", self.current))

    @contextlib.contextmanager
    def device(self, device):
        previous, self.current = self.current, self._index(device)
        try:
            yield
        finally:
            self.current = previous

    def current_stream(self, device=None) -> FakeStream:
        return self._streams[self._index(device)]

    @contextlib.contextmanager
    def stream(self, stream):
        index = stream.device.index
        previous = self._streams[index]
        self._streams[index] = stream
        with self.device(index):  # torch.cuda.stream also makes the stream's device current
            try:
                yield
            finally:
                self._streams[index] = previous

    def devices_of(self, name: str) -> list[int]:
        return [d for n, d in self.calls if n == name]
