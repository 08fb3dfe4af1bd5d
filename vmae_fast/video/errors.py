"""The one error a bad video raises: VideoError(stage, message), stage "open", "decode" or "sample"."""

from __future__ import annotations

STAGES = ("open", "decode", "sample")


class VideoError(Exception):
    """A video that cannot become clips. stage: "open" (file/container/stream), "decode" (frames), "sample" (plan)."""

    def __init__(self, stage: str, message: str):
        if stage not in STAGES:
            raise ValueError(f"VideoError stage must be one of {STAGES}, got {stage!r}")
        super().__init__(message)
        self.stage = stage
        self.message = message

    def __reduce__(self):  # picklable across processes despite the two-argument constructor
        return (VideoError, (self.stage, self.message))

    def __str__(self) -> str:
        return f"{self.stage}: {self.message}"

