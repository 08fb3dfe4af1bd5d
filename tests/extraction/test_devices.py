"""Every rank on its own GPU, and CUDA out of memory halving the batch.

What needs a GPU is tested through tests/helpers/fake_cuda_api.py (a torch.cuda that records which device every
call targets); the 2-GPU run it stands in for is owed (docs, "Many GPUs").
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from tests.helpers.fake_cuda_api import FakeCuda
from tests.helpers.rows import ATOL, clip_rows
from vmae_fast import extract, store
from vmae_fast.config import VideoMAEConfig
from vmae_fast.extraction import spec as spec_module
from vmae_fast.model import VideoMAE

REPO = Path(__file__).resolve().parents[2]



# --- 1. every rank on its own GPU ---------------------------------------------------------------------------------
class RecordingModel(torch.nn.Module):
    """The tiny CPU model, presented as loaded on a CUDA device: each forward records the current device (where
    its Triton kernels would launch)."""

    def __init__(self, real, fake: FakeCuda, device: torch.device):
        super().__init__()
        self.real, self.fake, self.device = real, fake, device
        self.config, self.head = real.config, real.head

    def describe(self) -> dict:
        return {**self.real.describe(), "device": str(self.device)}

    def forward(self, frames, keep=None):
        self.fake.calls.append(("forward", self.fake.current))
        return self.real(frames, keep=keep)


def test_a_torchrun_rank_computes_on_its_own_gpu(tmp_path, monkeypatch, ckpt, model, videos):
    fake = FakeCuda(monkeypatch, devices=2)
    monkeypatch.setenv("LOCAL_RANK", "1")  # torchrun's second process on this node
    monkeypatch.setattr(spec_module, "load_run_model", lambda source, dev, *a, **k: RecordingModel(model, fake, dev))
    summary = extract([videos], tmp_path / "out", model=str(ckpt), workers=1, batch_size=2, dtype="fp32",
                               progress=False)
    assert summary["device"] == "cuda:1" and summary["clips"] == 4
    assert fake.devices_of("set_device") == [1]  # once, for the whole process
    for name in ("forward", "to", "pin_memory", "event.record"):  # kernels, H2D copies, staging, readback events
        assert fake.devices_of(name) and set(fake.devices_of(name)) == {1}, (name, fake.calls)
    rows = store.read_clips(tmp_path / "out").to_pylist()
    assert len(rows) == 4 and all(np.isfinite(r["embedding"]).all() for r in rows)


def test_the_runner_keeps_to_its_device_when_another_is_current(monkeypatch, model):
    """Library use: nobody called set_device (current device 0), the runner's device is cuda:1."""
    from vmae_fast.extraction.runner import ModelRunner

    fake = FakeCuda(monkeypatch, devices=2)
    runner = ModelRunner(RecordingModel(model, fake, torch.device("cuda", 1)), 2, None, torch.device("cuda", 1), 4,
                         32)
    clips = [SimpleNamespace(frames=np.full((4, 32, 32, 3), 10 * i, np.uint8), clip_index=i) for i in range(3)]
    done = runner.submit([("v", 0, c) for c in clips[:2]]) + runner.submit([("v", 0, clips[2])]) + runner.collect()
    assert [len(entries) for entries, *_ in done] == [2, 1]
    assert fake.current == 0  # the caller's device is left as it was
    for name in ("forward", "to", "pin_memory", "event.record", "event.synchronize"):
        assert fake.devices_of(name) and set(fake.devices_of(name)) == {1}, (name, fake.calls)


def test_cuda_graphs_capture_and_replay_on_the_models_device(monkeypatch):
    from vmae_fast.cuda_graphs import CUDAGraphRunner

    fake = FakeCuda(monkeypatch, devices=2)

    class OnSecondGPU(VideoMAE):
        @property
        def device(self):
            return torch.device("cuda", 1)

        def forward(self, frames, keep=None, return_tokens=False):
            fake.calls.append(("forward", fake.current))
            return cpu_twin(frames, keep=keep, return_tokens=return_tokens)  # its tensors live on the CPU

    config = VideoMAEConfig(image_size=32, patch_size=16, num_frames=4, hidden_size=32, num_hidden_layers=1,
                            num_attention_heads=2, intermediate_size=64, num_labels=3)
    cpu_twin = VideoMAE(config, backend="auto").eval()
    net = OnSecondGPU(config, backend="auto").eval()
    runner = CUDAGraphRunner(net, batch_size=2, warmup=1)
    out = runner(torch.zeros((1, 4, 32, 32, 3), dtype=torch.uint8))
    assert out.embeddings.shape == (1, 32)
    assert fake.current == 0
    for name in ("zeros", "forward", "graph.capture", "graph.replay"):
        assert fake.devices_of(name) and set(fake.devices_of(name)) == {1}, (name, fake.calls)


def test_local_rank_picks_the_device_and_wraps_with_one_gpu_per_task(monkeypatch):
    from vmae_fast.extraction.devices import resolve_device

    FakeCuda(monkeypatch, devices=2)
    assert resolve_device(None, {"LOCAL_RANK": "1"}) == torch.device("cuda", 1)
    assert resolve_device(None, {"SLURM_LOCALID": "3"}) == torch.device("cuda", 1)  # 2 visible GPUs
    assert resolve_device("cuda:0", {"LOCAL_RANK": "1"}) == torch.device("cuda", 0)  # --device wins
    with pytest.raises(ValueError, match="cuda:5.*2 CUDA devices"):
        resolve_device("cuda:5", {})


# --- 7. CUDA out of memory halves the batch ----------------------------------------------------------------------


class OutOfMemoryAbove(torch.nn.Module):
    """The real model, except that a batch of more than `rows` rows fails as the CUDA caching allocator does."""

    def __init__(self, real, rows: int):
        super().__init__()
        self.real, self.rows, self.refused = real, rows, []
        self.config, self.head = real.config, real.head

    def describe(self) -> dict:
        return self.real.describe()

    def forward(self, frames, keep=None):
        if frames.shape[0] > self.rows:
            self.refused.append(frames.shape[0])
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.1 GiB "
                                              "total capacity; 78.9 GiB already allocated)")
        return self.real(frames, keep=keep)


def test_cuda_out_of_memory_halves_the_batch_once_per_size_and_goes_on(tmp_path, model, videos):
    from vmae_fast.cli import format_summary

    options = {"workers": 1, "batch_size": 4, "progress": False}
    extract([videos], tmp_path / "ref", model=model, **options)
    tight = OutOfMemoryAbove(model, rows=1)
    summary = extract([videos], tmp_path / "out", model=tight, **options)
    assert tight.refused == [4, 2]  # each size fails once, then the run stays at the size that fits
    assert summary["oom_halvings"] == [[4, 2], [2, 1]] and summary["videos_ok"] == 3
    assert "out of GPU memory: batch 4 -> 2 -> 1" in format_summary(summary)
    ref, got = clip_rows(tmp_path / "ref"), clip_rows(tmp_path / "out")
    assert [(r["video_id"], r["clip_index"]) for r in got] == [(r["video_id"], r["clip_index"]) for r in ref]
    for a, b in zip(got, ref, strict=True):
        np.testing.assert_allclose(a["embedding"], b["embedding"], atol=ATOL, rtol=0)
        np.testing.assert_allclose(a["logits"], b["logits"], atol=ATOL, rtol=0)


def test_cuda_out_of_memory_with_one_clip_is_the_users_one_line_error(tmp_path, model, videos):
    from vmae_fast.faults import GPUOutOfMemory

    with pytest.raises(GPUOutOfMemory, match=r"one clip per batch.*--dtype.*--keep") as e:
        extract([videos], tmp_path / "out", model=OutOfMemoryAbove(model, rows=0), workers=1,
                         batch_size=2, progress=False)
    assert "\n" not in str(e.value)
