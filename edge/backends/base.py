"""The one small interface every inference backend implements (like anomalib's base inferencer).

A backend takes a batch of preprocessed frames, uint8 ``[B, H, W, 3]`` BGR, and returns the
model's ``(anomaly_map float32 [B, H, W], score float32 [B])``. It also says what model it runs
(:class:`ModelInfo`), so results name their model and the daemon knows the input size and the
calibrated thresholds. A missing or incompatible model file raises :class:`ModelLoadError` with
one line that says what to do.
"""

from __future__ import annotations

import json
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import numpy as np

from proad.artifacts import INPUT_NAME, OUTPUT_NAMES, OnnxMetadata
from proad.data.geometry import Size, size_hw
from proad.data.tiling import Grid


class ModelLoadError(RuntimeError):
    """The model file is missing, not ours, or does not fit this machine."""


def _model_config(meta: OnnxMetadata) -> dict:
    try:
        cfg = json.loads(meta.model_config_json)
    except json.JSONDecodeError as exc:
        raise ModelLoadError(f"the model's metadata holds no readable model config ({exc})") from exc
    return cfg if isinstance(cfg, dict) else {}


@dataclass(frozen=True)
class ModelInfo:
    model_id: str
    image_size: Size  # a square side or (height, width): proad.data.geometry
    threshold: float
    category_thresholds: dict[str, float] = field(default_factory=dict)
    path: str = ""
    backend: str = ""
    device: str = "cpu"
    resize: str = "stretch"  # how a frame is fitted to image_size (proad.data.folder.fit_image)
    preset: str = ""  # the proad-train preset it was trained from ('' when unknown or older)
    category_tiles: dict[str, Grid] = field(default_factory=dict)  # tiled categories (proad.data.tiling)

    @classmethod
    def from_metadata(cls, meta: OnnxMetadata, path: str, backend: str, device: str) -> ModelInfo:
        """What an exported model says about itself (ONNX metadata, also kept in engine sidecars)."""
        resize = str(_model_config(meta).get("resize", "stretch"))  # models from before letterboxing stretched
        return cls(meta.model_id, meta.image_size, meta.threshold, meta.category_thresholds, path, backend, device,
                   resize, meta.preset, dict(meta.category_tiles))


class Backend(ABC):
    """Inference on batches of uint8 NHWC BGR frames."""

    info: ModelInfo
    #: the largest batch one call accepts (the daemon never gives more)
    max_batch: int = 1
    #: how many calls it runs side by side when they come from several threads at once (OpenVINO's
    #: streams); 1: one at a time is as fast as it gets (the daemon keeps that many batches in flight)
    parallel_calls: int = 1
    #: whether calls may come from several threads at once at all (``backend.in_flight`` above 1)
    thread_safe: bool = True

    @abstractmethod
    def infer(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(maps float32 [B, H, W], scores float32 [B]) for ``images`` uint8 [B, H, W, 3]."""

    def warmup(self) -> None:
        """One inference on a blank frame, so the first real frame is not slow."""
        height, width = size_hw(self.info.image_size)
        self.infer(np.zeros((1, height, width, 3), np.uint8))

    def close(self) -> None:  # noqa: B027 - most backends hold nothing to release explicitly
        pass


def check_plain_graph(meta: OnnxMetadata, path: object, runtime: str, inputs: list[str], outputs: list[str]) -> None:
    """What a runtime of the plain exported graph (ONNX Runtime, OpenVINO) refuses: plugin nodes, other I/O."""
    if meta.plugin:
        raise ModelLoadError(f"{path} holds TensorRT plugin nodes; export without --plugin for {runtime}")
    if inputs != [INPUT_NAME] or outputs != list(OUTPUT_NAMES):
        raise ModelLoadError(f"{path}: expected input 'image' and outputs 'anomaly_map', 'score'")


def pad_batch(images: np.ndarray, fixed_batch: int | None) -> np.ndarray:
    """A fixed-batch graph's input: ``images`` padded with blank frames (the caller cuts the outputs)."""
    n = len(images)
    if not fixed_batch or n == fixed_batch:
        return images
    return np.concatenate([images, np.zeros((fixed_batch - n, *images.shape[1:]), np.uint8)])


W = TypeVar("W")


class WorkerPool(Generic[W]):
    """The runners a backend runs calls on side by side (OpenVINO's infer requests, ONNX Runtime's
    sessions), handed to calls from several threads: a call takes the free ones it can use, at
    least one (waiting for it), and gives them back."""

    def __init__(self, workers: list[W]) -> None:
        self.workers = list(workers)
        self._free = list(workers)
        self._freed = threading.Condition()
        self.peak = 0  # the most workers calls held at once

    def __len__(self) -> int:
        return len(self.workers)

    @contextmanager
    def holding(self, want: int) -> Iterator[list[W]]:
        """Inside: up to ``want`` free workers, at least one (waits for it); given back on leaving."""
        with self._freed:
            while not self._free:
                self._freed.wait()
            held, self._free = self._free[:want], self._free[want:]
            self.peak = max(self.peak, len(self.workers) - len(self._free))
        try:
            yield held
        finally:
            with self._freed:
                self._free.extend(held)
                self._freed.notify_all()
