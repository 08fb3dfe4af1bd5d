"""A host-sync detector for CPU tests: code run inside `no_host_sync()` may not call an op that needs tensor values on
the host, which on CUDA would stall the CPU until the GPU catches up (and is illegal inside a CUDA-graph capture).

Caught: aten._local_scalar_dense (.item(), int(t), float(t), bool(t)), is_nonzero, ops whose output shape depends on
the data (nonzero, masked_select, unique, boolean-mask indexing: torch.Tag.dynamic_output_shape, except integer
gathers), ops tagged data_dependent_output, device-to-host copies, and Tensor.tolist() / .numpy() (which bypass
the dispatcher on CPU tensors). On a GPU, torch.cuda.set_sync_debug_mode("error") is the same check in hardware terms.
"""

from __future__ import annotations

import contextlib

import torch
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten
ALWAYS_SYNC = {aten._local_scalar_dense.default, aten.is_nonzero.default, aten.nonzero.default,
               aten.masked_select.default, aten.item.default}


class HostSync(AssertionError):
    """Raised at the first syncing op, naming it."""


def _syncs(func, args, kwargs) -> str | None:
    if func in ALWAYS_SYNC:
        return "reads values on the host"
    if func is aten.index.Tensor:  # integer gathers have a static shape; a bool mask needs nonzero
        indices = args[1] if len(args) > 1 else []
        if any(i is not None and i.dtype in (torch.bool, torch.uint8) for i in indices):
            return "boolean-mask indexing (nonzero inside)"
        return None
    if torch.Tag.dynamic_output_shape in func.tags:
        return "output shape depends on the data"
    if torch.Tag.data_dependent_output in func.tags:
        return "output depends on values read on the host"
    if func is aten._to_copy.default and "device" in kwargs:
        to_host = torch.device(kwargs["device"]).type == "cpu" and args[0].device.type != "cpu"
        return "device-to-host copy" if to_host else None
    if func is aten.copy_.default and args[0].device.type == "cpu" and args[1].device.type != "cpu":
        return "device-to-host copy"
    return None


class SyncDetector(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops: list[str] = []  # every op seen, for messages and for tests that the detector saw the code at all

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        self.ops.append(str(func))
        why = _syncs(func, args, kwargs)
        if why:
            raise HostSync(f"{func} {why}: a host sync on the hot path")
        return func(*args, **kwargs)


@contextlib.contextmanager
def no_host_sync():
    """Fail (HostSync) at the first syncing op inside the block; yields the detector (its .ops lists what ran)."""
    names = ("tolist", "numpy")
    originals = {name: torch.Tensor.__dict__[name] for name in names if name in torch.Tensor.__dict__}

    def refuse(name):
        def method(self, *args, **kwargs):
            raise HostSync(f"Tensor.{name}() reads values on the host: a host sync on the hot path")
        return method

    detector = SyncDetector()
    try:
        for name in names:
            setattr(torch.Tensor, name, refuse(name))
        with detector:
            yield detector
    finally:
        for name in names:  # back to the inherited methods (or the class's own, when it had them)
            if name in originals:
                setattr(torch.Tensor, name, originals[name])
            else:
                delattr(torch.Tensor, name)
