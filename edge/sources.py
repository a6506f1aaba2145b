"""Frame sources: OpenCV cameras, files and streams, image folders, and a synthetic demo camera.

A source is opened, read until it ends, and closed. ``read`` returns an image (BGR uint8, any size:
the preprocess stage checks and resizes it), ``None`` when the source has ended for good (a file
without looping), or raises :class:`SourceError` when the camera is gone (the capture loop then
reopens it with backoff). A frame that arrives broken is still returned: preprocess counts it.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from pathlib import Path

import cv2
import numpy as np

from proad.edge.config import FolderSource, OpenCVSource, SourceConfig, SyntheticSource

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


class SourceError(RuntimeError):
    """The source cannot deliver frames now (unplugged, stream down, file unreadable)."""


class Pacer:
    """Sleeps so that successive ``wait`` calls return ``fps`` times a second (no drift, no catch-up bursts)."""

    def __init__(self, fps: float | None) -> None:
        self.period = 1.0 / fps if fps else 0.0
        self.next = time.monotonic()

    def wait(self) -> None:
        if not self.period:
            return
        now = time.monotonic()
        if self.next > now:
            time.sleep(self.next - now)
            self.next += self.period
        else:  # late: start counting again from now rather than bursting to catch up
            self.next = now + self.period


class Source(ABC):
    """One camera's frames."""

    #: facts about the last frame read (e.g. the synthetic camera's injected defect)
    annotations: dict[str, str]

    def __init__(self) -> None:
        self.annotations = {}

    @abstractmethod
    def open(self) -> None: ...

    @abstractmethod
    def read(self) -> np.ndarray | None: ...

    def close(self) -> None:  # noqa: B027 - most sources hold nothing to release
        pass


class SyntheticCamera(Source):
    """Renders the generator's images at ``fps`` with a defect in ``defect_rate`` of the frames.

    Rendering is slow (about 10 ms a frame), so ``pool`` frames are rendered at open and cycled;
    which frames carry which defect is a pure function of the seed, and each frame's annotations say
    so (``injected_defect``), which is how tests and the demo check the daemon's decisions.

    For fault tests it can also send corrupt frames (``corrupt_every``) and vanish like an unplugged
    cable (``unplug_every`` frames, for ``unplug_s``: reads and reopens fail until it is back).
    """

    def __init__(self, cfg: SyntheticSource) -> None:
        super().__init__()
        self.cfg = cfg
        self.pool: list[tuple[np.ndarray, str]] = []
        self.count = 0
        self.pacer = Pacer(cfg.fps)
        self.back_at = 0.0
        self.unplugged_at = -1

    def open(self) -> None:
        from proad.data.synth import DEFECTS, render

        if time.monotonic() < self.back_at:
            raise SourceError("synthetic camera: unplugged")
        if self.pool:
            self.pacer = Pacer(self.cfg.fps)
            return
        try:
            kinds = DEFECTS[self.cfg.category]
        except KeyError as exc:
            raise SourceError(f"synthetic camera: unknown category {self.cfg.category!r}") from exc
        rng = np.random.default_rng(self.cfg.seed)
        for i in range(self.cfg.pool):
            kind = kinds[i % len(kinds)] if rng.random() < self.cfg.defect_rate else "good"
            sample = render(self.cfg.category, kind, seed=self.cfg.seed, split="camera", index=i)
            sample.image.setflags(write=False)
            self.pool.append((sample.image, kind))
        self.pacer = Pacer(self.cfg.fps)

    def read(self) -> np.ndarray | None:
        if self.cfg.max_frames is not None and self.count >= self.cfg.max_frames:
            return None
        every = self.cfg.unplug_every
        if every and self.count and self.count % every == 0 and self.unplugged_at != self.count:
            self.unplugged_at = self.count
            self.back_at = time.monotonic() + self.cfg.unplug_s
            raise SourceError("synthetic camera: cable pulled")
        self.pacer.wait()
        i = self.count
        self.count += 1
        if self.cfg.corrupt_every and (i + 1) % self.cfg.corrupt_every == 0:
            self.annotations = {"injected_defect": "corrupt"}
            return np.zeros((0, 0, 3), np.uint8)  # what a broken transfer looks like: no pixels
        image, kind = self.pool[i % len(self.pool)]
        self.annotations = {"injected_defect": "none" if kind == "good" else kind}
        return image  # read-only from here on: preprocess and inference never write into frames


class OpenCVCamera(Source):
    """``cv2.VideoCapture`` on a camera index, a file or a stream URL."""

    def __init__(self, cfg: OpenCVSource) -> None:
        super().__init__()
        self.cfg = cfg
        self.cap: cv2.VideoCapture | None = None
        self.is_file = isinstance(cfg.uri, str) and Path(cfg.uri).is_file()
        self.pacer = Pacer(cfg.fps if self.is_file else None)

    def open(self) -> None:
        self.close()
        uri = self.cfg.uri
        cap = cv2.VideoCapture(int(uri) if isinstance(uri, int) or str(uri).isdigit() else str(uri))
        if not cap.isOpened():
            cap.release()
            raise SourceError(f"cannot open {uri!r}")
        self.cap = cap

    def read(self) -> np.ndarray | None:
        if self.cap is None:
            raise SourceError("not open")
        self.pacer.wait()
        ok, frame = self.cap.read()
        if ok and frame is not None:
            return frame
        if self.is_file:
            if not self.cfg.loop:
                return None
            self.cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
            ok, frame = self.cap.read()
            if ok and frame is not None:
                return frame
        raise SourceError(f"{self.cfg.uri!r} stopped delivering frames")

    def close(self) -> None:
        if self.cap is not None:
            self.cap.release()
            self.cap = None


class ImageFolder(Source):
    """Images of a folder in name order; an unreadable file is passed on as an empty (corrupt) frame."""

    def __init__(self, cfg: FolderSource) -> None:
        super().__init__()
        self.cfg = cfg
        self.files: list[Path] = []
        self.index = 0
        self.pacer = Pacer(cfg.fps)

    def open(self) -> None:
        folder = Path(self.cfg.path)
        if not folder.is_dir():
            raise SourceError(f"image folder not found: {folder}")
        self.files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.files:
            raise SourceError(f"no images in {folder}")

    def read(self) -> np.ndarray | None:
        if self.index >= len(self.files):
            if not self.cfg.loop:
                return None
            self.index = 0
        self.pacer.wait()
        path = self.files[self.index]
        self.index += 1
        self.annotations = {"file": path.name}
        image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        return image if image is not None else np.zeros((0, 0, 3), np.uint8)


def make_source(cfg: SourceConfig) -> Source:
    if isinstance(cfg, SyntheticSource):
        return SyntheticCamera(cfg)
    if isinstance(cfg, OpenCVSource):
        return OpenCVCamera(cfg)
    return ImageFolder(cfg)
