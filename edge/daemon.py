"""The inspection daemon: cameras -> preprocess -> backend -> postprocess -> ZeroMQ (DESIGN §6).

Threads joined by bounded queues, data flowing one way:

- one **capture** thread per camera reads its source, preprocesses each frame (a corrupt one is
  counted and skipped) and puts it in the camera's frame queue; when the queue is full the oldest
  waiting frame is dropped and counted, so frames never pile up. A camera that fails is reopened
  with exponential backoff, and each reopen is counted and logged;
- one **inference** thread takes up to ``max_batch`` frames across cameras and runs the backend
  (the heavy work releases the GIL);
- one **output** thread thresholds, encodes and publishes each result in order, giving each camera
  contiguous ``seq`` numbers;
- an optional **status** thread answers the REP endpoint.

``stop()`` (SIGTERM / SIGINT in ``run_forever``) stops the cameras, lets inference finish every
frame already queued, publishes all of it, then closes the sockets with a linger, so nothing that
was accepted is lost.
"""

from __future__ import annotations

import logging
import queue
import signal
import threading
import time
from collections import defaultdict

import numpy as np
import zmq

from proad.edge.backends import Backend, ModelLoadError, load_backend
from proad.edge.config import CameraConfig, PipelineConfig
from proad.edge.frames import Frame, FrameQueues
from proad.edge.postprocess import Inferred, postprocess
from proad.edge.preprocess import CorruptFrame, prepare
from proad.edge.publisher import Publisher
from proad.edge.sources import Source, SourceError, make_source
from proad.edge.status import StatusServer
from proad.edge.telemetry import Telemetry

log = logging.getLogger("proad.edge")
_END = object()


class Daemon:
    def __init__(
        self,
        cfg: PipelineConfig,
        backend: Backend | None = None,
        ctx: zmq.Context | None = None,
        sources: dict[str, Source] | None = None,
    ) -> None:
        """``backend`` / ``sources``: already built ones (embedding, tests); by default built from ``cfg``."""
        self.cfg = cfg
        self.backend = backend if backend is not None else load_backend(cfg.backend)
        info = self.backend.info
        self.telemetry = Telemetry(
            {"model_id": info.model_id, "backend": info.backend, "device": info.device, "path": info.path}
        )
        self.thresholds = {c.id: self._threshold(c) for c in cfg.cameras}
        self.frames = FrameQueues([c.id for c in cfg.cameras], cfg.queues.frames_per_camera)
        self.results: queue.Queue = queue.Queue(cfg.queues.results)
        self.ctx = ctx or zmq.Context.instance()
        self.publisher = Publisher(cfg.publish, self.ctx, self.telemetry)
        self.status: StatusServer | None = None
        if cfg.status.endpoint:
            try:
                self.status = StatusServer(cfg.status.endpoint, self.ctx, self.telemetry)
            except Exception:
                self.publisher.close()
                raise
        self.stopping = threading.Event()
        given = sources or {}
        self.sources: dict[str, Source] = {c.id: given.get(c.id) or make_source(c.source) for c in cfg.cameras}
        self.capture_threads = [
            threading.Thread(target=self._capture, args=(c,), name=f"capture-{c.id}", daemon=True) for c in cfg.cameras
        ]
        self.infer_thread = threading.Thread(target=self._infer, name="inference", daemon=True)
        self.output_thread = threading.Thread(target=self._output, name="output", daemon=True)
        self.started = False

    def _threshold(self, cam: CameraConfig) -> float:
        """The camera's own > the config's > the model's for the camera's category > the model's."""
        if cam.threshold is not None:
            return cam.threshold
        if self.cfg.threshold is not None:
            return self.cfg.threshold
        if cam.category is not None:
            known = self.backend.info.category_thresholds
            if cam.category not in known:
                raise ModelLoadError(
                    f"camera {cam.id}: the model has no calibrated threshold for category {cam.category!r} "
                    f"(it knows {', '.join(sorted(known)) or 'none'}); set cameras[].threshold"
                )
            return known[cam.category]
        return self.backend.info.threshold

    # -- stages --------------------------------------------------------------------------------
    def _capture(self, cam: CameraConfig) -> None:
        source, size = self.sources[cam.id], self.backend.info.image_size
        backoff, is_open, index = cam.reconnect_initial_s, False, 0
        while not self.stopping.is_set():
            try:
                if not is_open:
                    self.telemetry.set_camera(cam.id, "opening")
                    source.open()
                    is_open = True
                    self.telemetry.set_camera(cam.id, "running")
                raw = source.read()
            except (SourceError, OSError, ValueError) as exc:  # camera gone: reopen with backoff
                self.telemetry.count("reconnects", cam.id)
                self.telemetry.set_camera(cam.id, f"reconnecting: {exc}")
                log.warning("camera %s: %s; reopening in %.1fs", cam.id, exc, backoff)
                source.close()
                is_open = False
                self.stopping.wait(backoff)
                backoff = min(backoff * 2, cam.reconnect_max_s)
                continue
            if raw is None:
                log.info("camera %s: source ended", cam.id)
                self.telemetry.set_camera(cam.id, "ended")
                break
            backoff = cam.reconnect_initial_s
            capture_mono, capture_ts = time.perf_counter(), time.time()
            self.telemetry.count("frames_in", cam.id)
            try:
                image = prepare(raw, size)
            except CorruptFrame as exc:
                self.telemetry.drop(cam.id, "corrupt")
                log.warning("camera %s frame %d: %s (skipped)", cam.id, index, exc)
                index += 1
                continue
            frame = Frame(cam.id, index, capture_ts, capture_mono, image,
                          (time.perf_counter() - capture_mono) * 1000, dict(source.annotations))
            index += 1
            if self.frames.put(frame) is not None:
                self.telemetry.drop(cam.id, "queue_full")
        source.close()

    def _infer(self) -> None:
        max_batch = self.backend.max_batch
        while True:
            batch = self.frames.take(max_batch, timeout=0.2)
            if batch is None:
                break
            if not batch:
                continue
            t0 = time.perf_counter()
            try:
                images = batch[0].image[None] if len(batch) == 1 else np.stack([f.image for f in batch])
                maps, scores = self.backend.infer(images)
            except Exception:
                for f in batch:
                    self.telemetry.drop(f.camera_id, "backend_error")
                log.exception("backend failed on a batch of %d (frames dropped)", len(batch))
                continue
            t1 = time.perf_counter()
            for f, amap, score in zip(batch, maps, scores, strict=True):
                self.results.put(Inferred(f, amap, float(score), t0, t1))
        self.results.put(_END)

    def _output(self) -> None:
        seq: defaultdict[str, int] = defaultdict(int)
        model_id = self.backend.info.model_id
        while True:
            item = self.results.get()
            if item is _END:
                break
            cam = item.frame.camera_id
            try:
                header, amap, jpeg = postprocess(item, seq[cam], self.thresholds[cam], model_id, self.cfg.publish)
                self.publisher.send(header, amap, jpeg)
            except Exception:
                self.telemetry.drop(cam, "publish_error")
                log.exception("camera %s: could not publish frame %d", cam, item.frame.frame_index)
                continue
            seq[cam] += 1
            self.telemetry.count("published", cam)
            if header.decision == "NG":
                self.telemetry.count("ng", cam)
            self.telemetry.observe(header.latency_ms)

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        self.started = True
        self.output_thread.start()
        self.infer_thread.start()
        if self.status is not None:
            self.status.start()
        for t in self.capture_threads:
            t.start()
        log.info("running %d camera(s) with %s (%s) model %s; publishing on %s",
                 len(self.capture_threads), self.backend.info.backend, self.backend.info.device,
                 self.backend.info.model_id, self.publisher.endpoint)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the cameras, finish and publish every queued frame, close the sockets."""
        self.stopping.set()
        deadline = time.monotonic() + timeout
        if self.started:
            for t in self.capture_threads:
                t.join(max(0.0, deadline - time.monotonic()))
            self.frames.close()
            self.infer_thread.join(max(0.0, deadline - time.monotonic()))
            self.output_thread.join(max(0.0, deadline - time.monotonic()))
            if self.output_thread.is_alive():
                log.error("shutdown timed out with %d frames queued", self.frames.pending())
        if self.status is not None:
            self.status.stop()
            if self.status.is_alive():
                self.status.join(2.0)
        self.publisher.close()
        self.backend.close()

    def wait(self, seconds: float | None = None) -> bool:
        """Block until every camera has ended (True) or ``seconds`` passed (False)."""
        deadline = None if seconds is None else time.monotonic() + seconds
        for t in self.capture_threads:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            t.join(left)
            if t.is_alive():
                return False
        return True

    def run_forever(self, seconds: float | None = None) -> None:
        """Run until SIGTERM/SIGINT (or ``seconds``, or every camera ended), then drain and stop."""
        stop_requested = threading.Event()

        def on_signal(signum: int, _frame: object) -> None:
            log.info("%s: draining and stopping", signal.Signals(signum).name)
            stop_requested.set()

        previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            self.start()
            deadline = None if seconds is None else time.monotonic() + seconds
            while not stop_requested.is_set():
                if deadline is not None and time.monotonic() >= deadline:
                    break
                if not any(t.is_alive() for t in self.capture_threads):
                    break
                stop_requested.wait(0.2)
        finally:
            self.stop()
            for s, handler in previous.items():
                signal.signal(s, handler)
