"""The batching model runner of `vmae-fast extract`: decoded uint8 clips in, embeddings/logits out, in order.

Beside cuda_graphs.py (batch-1 latency); this one is for throughput: fixed batch shapes, a host staging buffer,
and on CUDA the readback of batch k overlapping the compute of batch k+1.
"""

from __future__ import annotations

import collections
import contextlib
import time

import torch

from ..faults import GPUOutOfMemory


# --- batching -----------------------------------------------------------------------------------------------------
def batch_rows(n: int, batch_size: int) -> int:
    """Rows a batch of n clips runs with: batch_size when full; a short batch is padded to the next power of two up
    to 8, then to the next multiple of 8 (never beyond batch_size). A short last batch costs about its own size,
    and batch shapes stay few (what CUDA graphs and same-shape-same-bits numerics need)."""
    if n >= batch_size:
        return batch_size
    rows = 1 << max(0, n - 1).bit_length() if n <= 8 else -(-n // 8) * 8
    return min(rows, batch_size)


class ModelRunner:
    """Runs batches of uint8 clips through the model; returns results in submission order.

    A batch of n clips runs with batch_rows(n, batch_size) rows (padding rows hold stale frames; their outputs are
    dropped), so a clip's embedding depends only on its batch's shape: bit-identical for the same shape,
    floating-point close otherwise (see README, "Resume"). The clips' frames (shared-memory slot views from the
    DecodePool) are gathered into a host buffer, then handed back with `release` at once: the buffer is what the
    model reads. On CUDA: two pinned host buffers, non-blocking H2D, and results copied back non-blocking with an
    event, so collecting batch k (the one before the newest) does not wait for batch k+1; all of it on `device`,
    whatever the caller's current CUDA device. CUDA out of memory halves batch_size and goes on (submit).
    """

    def __init__(self, model, batch_size: int, keep, device: torch.device, num_frames: int, image_size: int,
                 release=None):
        self.model, self.batch_size, self.keep, self.device = model, batch_size, keep, device
        self.release = release or (lambda clips: None)
        self.cuda = device.type == "cuda"
        shape = (batch_size, num_frames, image_size, image_size, 3)
        with self._on_device():  # pinned memory belongs to the current device's context
            self.host = [torch.zeros(shape, dtype=torch.uint8, pin_memory=self.cuda)
                         for _ in range(2 if self.cuda else 1)]
        self.in_flight: collections.deque = collections.deque()
        self.count = 0
        self.compute_s = 0.0
        self.gather_s = 0.0  # of compute_s: copying the clips into the host buffer
        self.padded_rows = 0  # rows computed for padding (wasted work), for the summary
        self.submits = 0
        self.oom_halvings: list[tuple[int, int]] = []  # (rows that ran out of CUDA memory, batch size after)

    def _on_device(self):
        """The model's CUDA device made current for a moment (whatever the caller's current device is): the
        kernels launch there, and the streams and events below are that device's."""
        return torch.cuda.device(self.device) if self.cuda else contextlib.nullcontext()

    def submit(self, entries: list) -> list:
        """Start a batch of (video_id, generation, clip) entries; returns batches completed meanwhile.

        CUDA out of memory: the batch size is halved (once per size: it never grows back) and the clips run in
        batches of the new size; the halvings are in `oom_halvings` [(rows that failed, new batch size), ...].
        With one clip per batch it is the user's GPUOutOfMemory (one line, with what to change)."""
        t0 = time.perf_counter()
        n = len(entries)
        buf = self.host[self.submits % len(self.host)]  # the other buffer may still be copying to the GPU
        self.submits += 1
        clips = [clip for _, _, clip in entries]
        for i, clip in enumerate(clips):  # torch copies release the GIL; a GPU-decoded frame tensor comes down
            frames = clip.frames if isinstance(clip.frames, torch.Tensor) else torch.from_numpy(clip.frames)
            buf[i].copy_(frames)
        self.release(clips)  # the slots go back to the decoders: everything below reads buf
        self.gather_s += time.perf_counter() - t0
        start = 0
        while start < n:  # one batch; after an out-of-memory halving, batches of the new size
            size = min(self.batch_size, n - start)
            if self._run(buf[start:], entries[start:start + size]):
                start += size
        self.compute_s += time.perf_counter() - t0
        return self.collect(keep_last=1 if self.cuda else 0)

    def _run(self, buf: torch.Tensor, entries: list) -> bool:
        """Run the clips whose frames head `buf` as one batch; False when CUDA ran out of memory (halved)."""
        n = len(entries)
        rows = min(batch_rows(n, self.batch_size), len(buf))
        try:
            with self._on_device():
                frames = buf[:rows].to(self.device, non_blocking=True) if self.cuda else buf[:rows]
                with torch.inference_mode():
                    out = self.model(frames, keep=self.keep)
                embeddings = out.embeddings[:n].float()
                logits = out.logits[:n].float() if out.logits is not None else None
                num_tokens = (out.cu_seqlens[1:n + 1] - out.cu_seqlens[:n]).to(torch.int32)
                if self.cuda:
                    host = [t.to("cpu", non_blocking=True) if t is not None else None
                            for t in (embeddings, logits, num_tokens)]
                    event = torch.cuda.Event()
                    event.record(torch.cuda.current_stream(self.device))  # the stream the copies were queued on
                    self.in_flight.append((entries, *host, event))
                else:
                    self.in_flight.append((entries, embeddings, logits, num_tokens, None))
        except torch.cuda.OutOfMemoryError as e:
            out = frames = None  # drop what the failed batch allocated before the cache is emptied
            if self.cuda:
                torch.cuda.empty_cache()
            if rows == 1:
                first = (str(e).strip().splitlines() or ["out of memory"])[0]
                raise GPUOutOfMemory(f"{self.device} ran out of memory with one clip per batch ({first}); free the "
                                     f"GPU of other processes or need less memory per clip: --dtype bf16 or fp16, "
                                     f"--keep tube:0.5, a smaller model") from None
            self.batch_size = rows // 2
            self.oom_halvings.append((rows, self.batch_size))
            return False
        self.count += 1
        self.padded_rows += rows - n
        return True

    def collect(self, keep_last: int = 0) -> list:
        """Finished batches as (entries, embeddings np (n, D), logits np (n, C) | None, num_tokens np (n,))."""
        done = []
        while len(self.in_flight) > keep_last:
            entries, embeddings, logits, num_tokens, event = self.in_flight.popleft()
            t0 = time.perf_counter()
            if event is not None:
                event.synchronize()
            self.compute_s += time.perf_counter() - t0
            done.append((entries, embeddings.numpy(), None if logits is None else logits.numpy(), num_tokens.numpy()))
        return done
