"""Backend dispatch and torch.library registration shared by the kernel ops (kernels/_dispatch.py)."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys

import pytest
import torch

from vmae_fast.kernels import layer_norm, mean_pool_layernorm, patch_embed, qkv_rope
from vmae_fast.kernels._dispatch import interpreter_enabled, use_triton

OPS = ["patch_embed", "layer_norm", "add_layer_norm", "mean_pool_layernorm", "varlen_attention", "qkv_rope"]


def test_use_triton_choices():
    cpu = torch.device("cpu")
    assert use_triton("torch", cpu) is False
    assert use_triton("auto", cpu) is False  # CPU -> torch path, even when the interpreter could run Triton
    if interpreter_enabled():  # CI: conftest sets TRITON_INTERPRET=1
        assert use_triton("triton", cpu) is True
    else:  # GPU runs with TRITON_INTERPRET=0: Triton on CPU tensors is refused, never silently replaced
        with pytest.raises(ValueError, match="cannot run on cpu"):
            use_triton("triton", cpu)
    with pytest.raises(ValueError, match="backend must be one of"):
        use_triton("cuda", cpu)
    with pytest.raises(ValueError, match="cannot run on meta"):
        use_triton("triton", torch.device("meta"))


@pytest.mark.parametrize("name", OPS)
def test_ops_registered_without_mutation(name):
    """torch.ops.vmae_fast.<op> exists (triton_op), its schema mutates nothing and returns fresh tensors."""
    schema = getattr(torch.ops.vmae_fast, name).default._schema
    assert all(arg.alias_info is None for arg in schema.arguments), str(schema)
    assert all(ret.alias_info is None for ret in schema.returns), str(schema)


def test_auto_on_cpu_never_launches_triton(monkeypatch):
    """backend='auto' with CPU tensors takes the plain torch path (the registered ops are not called)."""
    def boom(*args):
        raise AssertionError("the Triton op was called for backend='auto' on CPU")

    modules = {name: importlib.import_module(f"vmae_fast.kernels.{name}")
               for name in ("layer_norm", "mean_pool_layernorm", "patch_embed", "qkv_rope")}
    for mod, attrs in ((modules["layer_norm"], ("layer_norm_op", "add_layer_norm_op")),
                       (modules["mean_pool_layernorm"], ("mean_pool_layernorm_op",)),
                       (modules["patch_embed"], ("patch_embed_op",)),
                       (modules["qkv_rope"], ("qkv_rope_op",))):
        for attr in attrs:
            monkeypatch.setattr(mod, attr, boom)
    x = torch.randn(6, 8)
    layer_norm(x, None, None, 1e-5)
    layer_norm(x, None, None, 1e-5, torch.randn(6, 8))
    mean_pool_layernorm(x, torch.tensor([0, 2, 6], dtype=torch.int32), None, None, 1e-5)
    frames = torch.randint(0, 256, (1, 1, 4, 4, 3), dtype=torch.uint8)
    out = patch_embed(frames, torch.randn(8, 48), torch.zeros(8), torch.zeros(1, 8), torch.full((3,), 0.5),
                      torch.full((3,), 0.5), patch_size=4, tubelet_size=1)
    assert out.shape == (1, 8)
    rotated = qkv_rope(torch.randn(5, 3, 2, 16), torch.zeros(5, 3, dtype=torch.int32))
    assert rotated.shape == (5, 2, 2, 16)


_TRACE_SCRIPT = r"""
import torch
torch.version.cuda = torch.version.cuda or "12.8"  # register as a CUDA build does (triton_op), also on CPU-only torch
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
from torch.fx.experimental.proxy_tensor import make_fx
from vmae_fast.kernels import layer_norm, mean_pool_layernorm, patch_embed

mode = FakeTensorMode()
def fake(shape, dtype):  # a CUDA tensor without a GPU: metadata only
    return FakeTensor(mode, torch.empty(shape, dtype=dtype, device="meta"), torch.device("cuda", 0))

def embed_and_pool(frames, weight, vec, pos, mean, token_ids, cu_seqlens):
    tokens = patch_embed(frames, weight, vec, pos, mean, mean, token_ids, patch_size=16, tubelet_size=2, check=False)
    y, s = layer_norm(tokens, vec, vec, 1e-6, tokens)
    return mean_pool_layernorm(y, cu_seqlens, vec, vec, 1e-5, check=False), s

args = (fake((2, 16, 64, 32, 3), torch.uint8), fake((96, 1536), torch.bfloat16), fake((96,), torch.bfloat16),
        fake((64, 96), torch.float32), fake((3,), torch.float32), fake((100,), torch.int64), fake((3,), torch.int32))
with mode:
    graph = make_fx(torch.func.functionalize(embed_and_pool))(*args)
    out, s = graph(*args)
print(sorted({str(n.target) for n in graph.graph.nodes if "vmae_fast" in str(n.target)}))
print(tuple(out.shape), out.dtype, out.device, tuple(s.shape))
"""


def test_triton_route_traces_without_a_gpu():
    """The CUDA route (real Triton JIT kernels, TRITON_INTERPRET=0, the ops registered as a CUDA build of torch
    registers them: triton_op) traces on fake CUDA tensors into a graph of our custom ops: the launchers read shapes
    only (no sync, no data-dependent branch), which torch.compile and CUDA graph capture need. Run in a subprocess
    because the interpreter choice is made at import."""
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    result = subprocess.run([sys.executable, "-c", _TRACE_SCRIPT], capture_output=True, text=True, env=env,
                            timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    ops, shapes = result.stdout.strip().splitlines()[-2:]
    assert ops == str(["vmae_fast.add_layer_norm.default", "vmae_fast.mean_pool_layernorm.default",
                       "vmae_fast.patch_embed.default"])
    assert shapes == "(2, 96) torch.bfloat16 cuda:0 (100, 96)"


@pytest.mark.parametrize("cuda, env, want", [
    (True, None, ("cuda", "0")),  # plain `pytest` on a GPU machine: compiled kernels on CUDA
    (False, None, ("cpu", "1")),  # CI: the interpreter on CPU
    (True, "", ("cuda", "0")),
    (False, "", ("cpu", "1")),
    (True, "0", ("cuda", "0")),
    (False, "0", ("cpu", "0")),  # nowhere to run Triton: the kernel tests skip (kernel_checks.NEEDS_TRITON)
    (True, "1", ("cpu", "1")),  # an explicit interpreter request wins, also on a GPU machine
    (False, "1", ("cpu", "1")),
    (True, "true", ("cpu", "1")),
], ids=lambda v: repr(v))
def test_kernel_target_decision(cuda, env, want):
    """tests/helpers/kernel_target.py: the one place that decides where kernel tests run; applying its answer and asking
    again gives the same answer (conftest sets TRITON_INTERPRET, kernel_checks reads it back)."""
    from tests.helpers.kernel_target import kernel_target

    assert kernel_target(cuda, env) == want
    assert kernel_target(cuda, want[1]) == want


def test_kernel_checks_device_agrees_with_conftest():
    from tests.helpers import kernel_checks
    from tests.helpers.kernel_target import kernel_target

    device, interpret = kernel_target(torch.cuda.is_available(), os.environ["TRITON_INTERPRET"])
    assert os.environ["TRITON_INTERPRET"] == interpret  # conftest applied the decision before triton was imported
    assert kernel_checks.DEVICE.type == device and kernel_checks.INTERPRETED == (interpret == "1")
    assert interpreter_enabled() == (interpret == "1")


def test_wrap_triton_under_the_interpreter_is_the_kernel_itself():
    """torch < 2.13 rejects interpreted kernels in torch.library.wrap_triton; ours hands them back unchanged (they
    launch eagerly and cannot be traced), and wraps compiled ones for tracing."""
    from vmae_fast.kernels import _dispatch
    from vmae_fast.kernels.layer_norm import _layer_norm_kernel
    from vmae_fast.kernels.varlen_attention import _varlen_attention_kernel

    for kernel in (_layer_norm_kernel, _varlen_attention_kernel):  # triton.jit and triton.autotune
        wrapped = _dispatch.wrap_triton(kernel)
        if _dispatch._INTERPRETED_AT_IMPORT:
            assert wrapped is kernel
        else:
            assert wrapped is not kernel and callable(getattr(wrapped, "__getitem__", None))


_REGISTRATION_SCRIPT = r"""
import json, sys
import torch
if sys.argv[1] == "cuda":
    torch.version.cuda = torch.version.cuda or "12.8"  # register as a CUDA build of torch does
import torch.nn.functional as F
from torch._library.triton import get_triton_kernels_for_op
from vmae_fast.checkpoint import load_model
from vmae_fast.kernels._dispatch import cuda_build

OPS = json.loads(sys.argv[2])
net = load_model("random:small", device="cpu", config={"image_size": 32, "num_frames": 4})
with torch.inference_mode():
    out = net(torch.randint(0, 256, (2, 4, 32, 32, 3), dtype=torch.uint8))
facts = {"cuda_build": cuda_build(), "dynamo": "torch._dynamo" in sys.modules,
         "inductor": "torch._inductor" in sys.modules, "out": list(out.embeddings.shape),
         "kernels": {op: len(get_triton_kernels_for_op(f"vmae_fast::{op}")) for op in OPS},
         "schemas": {op: str(getattr(torch.ops.vmae_fast, op).default._schema) for op in OPS}}
x, w, b = torch.randn(5, 8), torch.randn(8), torch.randn(8)
y = torch.ops.vmae_fast.layer_norm(x, w, b, 1e-5)  # its CPU kernel: the torch path, bit for bit
facts["cpu_kernel_is_torch"] = torch.equal(y, F.layer_norm(x, (8,), w, b, 1e-5))
print(json.dumps(facts))
"""


def _registration(kind: str) -> dict:
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    result = subprocess.run([sys.executable, "-c", _REGISTRATION_SCRIPT, kind, json.dumps(OPS)], capture_output=True,
                            text=True, env=env, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_cpu_only_torch_registers_the_ops_without_importing_dynamo():
    """A CPU-only torch build (no interpreter) registers the same ops, schemas and CPU kernels as a CUDA build, as
    plain custom ops: triton_op's kernel search imports torch._inductor and torch._dynamo (~1.3 s of every CPU
    process's start, the local engine's and each Ray actor's), and the model's CPU forward never calls the ops, so
    such a process (CI's, this machine's) loads and runs a model without importing them. On a CUDA build the ops are
    triton_ops (the kernel search found each op's Triton kernels)."""
    here, cuda = _registration("as-is"), _registration("cuda")
    assert cuda["cuda_build"] and all(n >= 1 for n in cuda["kernels"].values()), cuda["kernels"]
    assert here["schemas"] == cuda["schemas"]
    assert here["out"] == cuda["out"] and here["cpu_kernel_is_torch"] and cuda["cpu_kernel_is_torch"]
    if here["cuda_build"]:  # a CUDA build of torch (a GPU machine): the triton_op route, as above
        assert here["kernels"] == cuda["kernels"]
    else:
        assert not here["dynamo"] and not here["inductor"]
        assert all(n == 0 for n in here["kernels"].values()), here["kernels"]
