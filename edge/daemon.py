"""The inspection daemon: cameras -> preprocess -> backend -> postprocess -> ZeroMQ (DESIGN §6).

Threads joined by bounded queues, data flowing one way:

- one **capture** thread per camera reads its source, preprocesses each frame (a corrupt one is
  counted and skipped) and puts it in the camera's frame queue; when the queue is full the oldest
  waiting frame is dropped and counted, so frames never pile up (``queues.when_full: wait`` makes
  the capture thread wait for room instead: nothing dropped, for files and replays). A camera that
  fails is reopened with exponential backoff, and each reopen is counted and logged;
- one **inference** thread takes up to ``max_batch`` frames across cameras and runs the backend
  (the heavy work releases the GIL); a tiled camera's frame (``cameras[].tiles`` or the model's
  tiling of its category, :mod:`proad.data.tiling`) is cut into its tiles there and its map
  stitched back, exactly as the model's training pictures were. A backend that runs calls side by
  side (OpenVINO's streams, ONNX Runtime's sessions) gets one such thread per call it can run
  (``backend.in_flight``): each takes its batch while the others infer, and hands its results on
  in the order the batches were taken, so every camera's results stay in capture order;
- one **output** thread thresholds, encodes and publishes each result in order, giving each camera
  contiguous ``seq`` numbers; an NG is first written to the spool (when the NG channel is on), so
  every NG anyone saw is on disk; with the fail-safe on, it also publishes the fail-safe NG of any
  frame whose window closed without a result;
- an optional **NG delivery** thread sends spooled NG results to archivers until acknowledged; each
  further channel of ``ng_channels`` (e.g. the MQTT bridge's) has its own spool and thread, so
  every NG reaches every kind of consumer, and one that is down holds back only its own spool;
- an optional **status** thread answers the REP endpoint, and a Prometheus endpoint serves metrics.

``stop()`` (SIGTERM / SIGINT in ``run_forever``) stops the cameras, lets inference finish every
frame already queued, publishes all of it, gives a connected archiver ``drain_s`` to take the
spool, then closes the sockets with a linger, so nothing that was accepted is lost.
"""

from __future__ import annotations

import logging
import queue
import secrets
import signal
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import zmq

from proad.data.folder import fitted_hw
from proad.data.geometry import size_text
from proad.data.tiling import NO_TILING, Grid, infer_tiled
from proad.edge.backends import Backend, ModelLoadError, load_backend
from proad.edge.config import CameraConfig, PipelineConfig
from proad.edge.failsafe import InspectionWindows
from proad.edge.frames import Frame, FrameQueues
from proad.edge.messages import FrameResult, topic
from proad.edge.ng_channel import NGChannel
from proad.edge.postprocess import Inferred, failsafe_result, postprocess
from proad.edge.preprocess import CorruptFrame, prepare
from proad.edge.publisher import Publisher
from proad.edge.security import CurveServer
from proad.edge.sockets import StartupError
from proad.edge.sources import Source, SourceError, make_source
from proad.edge.spool import Record, Spool, SpoolError
from proad.edge.status import StatusServer
from proad.edge.telemetry import Telemetry

if TYPE_CHECKING:
    from proad.edge.metrics import MetricsServer

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
        """``backend`` / ``sources``: already built ones (embedding, tests); by default built from ``cfg``.

        Every socket, key and file is set up here, before anything runs, so a bad endpoint, key or
        spool directory fails at start with one line (and what was already opened is closed)."""
        self.cfg = cfg
        self.backend = backend if backend is not None else load_backend(cfg.backend)
        self.in_flight = cfg.backend.in_flight or self.backend.parallel_calls
        if self.in_flight > 1 and not self.backend.thread_safe:
            if backend is None:
                self.backend.close()
            raise ModelLoadError(f"backend.in_flight {self.in_flight}: the {self.backend.info.backend} backend "
                                 "runs one call at a time; set backend.in_flight to 1")
        info = self.backend.info
        self.run_id = secrets.token_hex(4)
        self.telemetry = Telemetry({"model_id": info.model_id, "backend": info.backend, "device": info.device,
                                    "path": info.path, "preset": info.preset, "run_id": self.run_id})  # fmt: skip
        self.thresholds = {c.id: self._threshold(c) for c in cfg.cameras}
        self.grids = {c.id: self._grid(c) for c in cfg.cameras}
        self.map_shapes = {cam: fitted_hw(info.image_size, grid) for cam, grid in self.grids.items()}
        self.frames = FrameQueues([c.id for c in cfg.cameras], cfg.queues.frames_per_camera,
                                  wait=cfg.queues.when_full == "wait")
        self.results: queue.Queue = queue.Queue(cfg.queues.results)
        self.windows = InspectionWindows(cfg.failsafe.window_ms)
        self.own_ctx = ctx is None
        self.ctx = ctx or zmq.Context()
        self.curve: CurveServer | None = None
        self.status: StatusServer | None = None
        self.spool: Spool | None = None
        self.ng_channel: NGChannel | None = None  # the archivers' channel (the first of ng_channels)
        self.ng_channels: list[NGChannel] = []
        self.metrics: MetricsServer | None = None
        self._closers: list[Callable[[], None]] = []
        try:
            self._open_endpoints(cfg)
        except Exception:
            self._close_endpoints()
            raise
        self.stopping = threading.Event()
        given = sources or {}
        self.sources: dict[str, Source] = {c.id: given.get(c.id) or make_source(c.source) for c in cfg.cameras}
        self.capture_threads = [
            threading.Thread(target=self._capture, args=(c,), name=f"capture-{c.id}", daemon=True) for c in cfg.cameras
        ]
        self.infer_threads = [threading.Thread(target=self._infer, name=f"inference-{i}", daemon=True)
                              for i in range(self.in_flight)]
        self._taking = threading.Lock()  # one thread takes a batch at a time and numbers it
        self._handing = threading.Condition()  # batches hand their results on in the order they were taken
        self._taken = self._handed = 0
        self._inferring = self.in_flight  # inference threads not yet ended; the last one ends the results
        self.output_thread = threading.Thread(target=self._output, name="output", daemon=True)
        self.started = False

    def _open_endpoints(self, cfg: PipelineConfig) -> None:
        if cfg.security.curve:
            assert cfg.security.server_secret_key and cfg.security.allowed_clients  # the config checked
            self.curve = CurveServer(cfg.security.server_secret_key, cfg.security.allowed_clients, self.ctx)
            self._closers.append(self.curve.close)
        self.publisher = Publisher(cfg.publish, self.ctx, self.telemetry, self.curve)
        self._closers.append(self.publisher.close)
        for i, ng in enumerate(cfg.all_ng_channels()):  # each channel its own spool: every NG goes to each
            try:
                spool = Spool(ng.spool_dir, ng.max_records, ng.max_mb, ng.when_full, ng.fsync)
            except SpoolError as exc:
                raise StartupError(str(exc)) from exc
            channel = NGChannel(ng, spool, self.ctx, self.telemetry, self.curve, primary=i == 0)
            if not self.ng_channels:
                self._closers.append(self._close_ng_channels)
            self.ng_channels.append(channel)
        if self.ng_channels:
            self.spool, self.ng_channel = self.ng_channels[0].spool, self.ng_channels[0]
        if cfg.status.endpoint:
            status = self.status = StatusServer(cfg.status.endpoint, self.ctx, self.telemetry, self.curve)
            self._closers.append(lambda: status.shutdown(2.0))
        if cfg.metrics.prometheus_port is not None:
            from proad.edge.metrics import MetricsServer

            self.metrics = MetricsServer(self.telemetry, cfg.metrics.prometheus_port, cfg.metrics.address)
            self._closers.append(self.metrics.close)

    def _close_ng_channels(self) -> None:
        """Every channel drains at once (each for its own ``drain_s``), so stopping takes the longest one."""
        for channel in self.ng_channels:
            if channel.is_alive():
                channel.stop()
        deadline = time.monotonic() + max(c.cfg.drain_s for c in self.ng_channels) + 5.0
        for channel in self.ng_channels:
            channel.shutdown(max(0.0, deadline - time.monotonic()))

    def _close_endpoints(self) -> None:
        while self._closers:
            close = self._closers.pop()
            try:
                close()
            except Exception:
                log.exception("while closing")
        if self.own_ctx:
            owners = [*self.ng_channels, self.status, self.output_thread if hasattr(self, "output_thread") else None]
            stuck = [t.name for t in owners if t is not None and t.is_alive() and t is not threading.current_thread()]
            if stuck:  # term() would wait for their sockets forever
                log.error("threads still running at shutdown: %s", ", ".join(stuck))
            else:
                self.ctx.term()

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

    def _grid(self, cam: CameraConfig) -> Grid:
        """How the camera's frames are cut into model inputs: the camera's own tiles > the model's
        for the camera's category > none."""
        if cam.tiles is not None:
            return cam.tiles
        if cam.category is not None:
            return self.backend.info.category_tiles.get(cam.category, NO_TILING)
        return NO_TILING

    # -- stages --------------------------------------------------------------------------------
    def _capture(self, cam: CameraConfig) -> None:
        source, size, resize = self.sources[cam.id], self.backend.info.image_size, self.backend.info.resize
        grid = self.grids[cam.id]
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
                image = prepare(raw, size, resize, grid)
            except CorruptFrame as exc:
                self.telemetry.drop(cam.id, "corrupt")
                log.warning("camera %s frame %d: %s (skipped)", cam.id, index, exc)
                index += 1
                continue
            frame = Frame(cam.id, index, capture_ts, capture_mono, image,
                          (time.perf_counter() - capture_mono) * 1000, dict(source.annotations))
            index += 1
            self.windows.accept(frame)
            dropped = self.frames.put(frame)
            if dropped is not None:
                self.telemetry.drop(cam.id, "queue_full")
                self.windows.give_up(dropped, "queue_full")
        source.close()

    def _infer(self) -> None:
        max_batch, size = self.backend.max_batch, self.backend.info.image_size
        while True:
            with self._taking:
                batch = self.frames.take(max_batch, timeout=0.2)
                turn = self._taken
                self._taken += bool(batch)
            if batch is None:
                break
            if not batch:
                continue
            inferred: list[Inferred] | None = None
            try:
                t0 = time.perf_counter()
                # a tiled camera's frame is several inputs; its map comes back stitched
                maps, scores = infer_tiled(self.backend.infer, [f.image for f in batch], size, max_batch)
                t1 = time.perf_counter()
                inferred = [Inferred(f, amap, float(score), t0, t1)
                            for f, amap, score in zip(batch, maps, scores, strict=True)]
            except Exception:
                self.telemetry.event("backend_errors")
                log.exception("backend failed on a batch of %d (frames dropped)", len(batch))
            finally:
                self._hand_on(turn, batch, inferred)
        with self._handing:
            self._inferring -= 1
            if self._inferring == 0:  # every batch is handed on
                self.results.put(_END)

    def _hand_on(self, turn: int, batch: list[Frame], inferred: list[Inferred] | None) -> None:
        """Once every batch taken before it is handed on: queue the batch's results for the output
        thread, or (``None``: the backend failed) drop its frames, counted, and let the fail-safe
        publish them, so frames of a later batch never overtake them."""
        with self._handing:
            while self._handed != turn:
                self._handing.wait()
            if inferred is None:
                for f in batch:
                    self.telemetry.drop(f.camera_id, "backend_error")
                    self.windows.give_up(f, "backend_error")
            else:
                for item in inferred:
                    self.results.put(item)
            self._handed += 1
            self._handing.notify_all()

    def _output(self) -> None:
        seq: defaultdict[str, int] = defaultdict(int)
        while True:
            try:
                item = self.results.get(timeout=self.windows.next_due_in())
            except queue.Empty:
                item = None
            for frame, reason in self.windows.due():
                self._publish_failsafe(frame, reason, seq)
            if item is _END:
                break
            if item is None:
                continue
            if not self.windows.resolve(item.frame):  # its fail-safe NG already went out
                self.telemetry.drop(item.frame.camera_id, "late_result")
                continue
            cam = item.frame.camera_id
            try:
                header, amap, jpeg = postprocess(item, seq[cam], self._result_id(cam, seq[cam]),
                                                 self.thresholds[cam], self.backend.info.model_id, self.cfg.publish)
            except Exception:
                self.telemetry.drop(cam, "publish_error")
                log.exception("camera %s: could not encode frame %d", cam, item.frame.frame_index)
                continue
            self._emit(header, amap, jpeg, seq)
        for frame, reason in self.windows.due(now=float("inf")):
            self._publish_failsafe(frame, reason, seq)

    def _result_id(self, camera: str, seq: int) -> str:
        return f"{self.run_id}-{camera}-{seq}"

    def _publish_failsafe(self, frame: Frame, reason: str, seq: defaultdict[str, int]) -> None:
        cam = frame.camera_id
        header, amap, jpeg = failsafe_result(frame, reason, seq[cam], self._result_id(cam, seq[cam]),
                                             self.thresholds[cam], self.backend.info.model_id, self.map_shapes[cam],
                                             self.cfg.publish)  # fmt: skip
        log.warning("camera %s frame %d: no result in time (%s): published NG", cam, frame.frame_index, reason)
        self.telemetry.failsafe_ng(cam, reason)
        self._emit(header, amap, jpeg, seq)

    def _emit(self, header: FrameResult, amap: np.ndarray, jpeg: bytes | None, seq: defaultdict[str, int]) -> None:
        """Spool (NG), then publish: an NG a subscriber saw is always on disk for the archivers."""
        cam = header.camera_id
        header_b = header.model_dump_json().encode()
        if header.decision == "NG":
            for channel in self.ng_channels:
                self._spool(channel, header, header_b, amap, jpeg)
        try:
            self.publisher.send(topic(cam, header.decision), header_b, amap, jpeg)
        except Exception:
            self.telemetry.drop(cam, "publish_error")
            log.exception("camera %s: could not publish frame %d", cam, header.frame_index)
            return
        seq[cam] += 1
        self.telemetry.count("published", cam)
        if header.decision == "NG":
            self.telemetry.count("ng", cam)
        self.telemetry.observe(header.latency_ms)

    def _spool(self, channel: NGChannel, header: FrameResult, header_b: bytes, amap: np.ndarray,
               jpeg: bytes | None) -> None:
        parts = [header_b, amap.tobytes()] + ([jpeg] if jpeg is not None else [])
        try:
            accepted = channel.spool.add(Record(header.result_id, parts))
        except SpoolError as exc:
            self.telemetry.drop(header.camera_id, "spool_error" + channel.suffix)
            log.error("NG %s not spooled in %s (%s); it is still published", header.result_id, channel.spool.dir, exc)
            return
        if not accepted:
            self.telemetry.drop(header.camera_id, "spool_full" + channel.suffix)
            log.error("spool %s full (%d records): NG %s refused; it is still published",
                      channel.spool.dir, channel.spool.depth(), header.result_id)

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        self.started = True
        self.output_thread.start()
        for t in self.infer_threads:
            t.start()
        for channel in self.ng_channels:
            channel.start()
        if self.status is not None:
            self.status.start()
        for t in self.capture_threads:
            t.start()
        info = self.backend.info
        log.info("running %d camera(s) with %s (%s) model %s (preset %s, %s px, %s; %d batch(es) in flight); "
                 "publishing on %s", len(self.capture_threads), info.backend, info.device, info.model_id,
                 info.preset or "unnamed", size_text(info.image_size), info.resize, self.in_flight,
                 self.publisher.endpoint)
        for cam, (rows, cols) in self.grids.items():
            if (rows, cols) != NO_TILING:
                log.info("camera %s: each frame cut into %dx%d tiles (%d inferences)", cam, rows, cols, rows * cols)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the cameras, finish and publish every queued frame, close the sockets."""
        self.stopping.set()
        self.frames.release()  # a camera waiting for room (when_full: wait) queues its accepted frame and ends
        deadline = time.monotonic() + timeout
        if self.started:
            for t in self.capture_threads:
                t.join(max(0.0, deadline - time.monotonic()))
            self.frames.close()
            for t in self.infer_threads:
                t.join(max(0.0, deadline - time.monotonic()))
            self.output_thread.join(max(0.0, deadline - time.monotonic()))
            if self.output_thread.is_alive():
                log.error("shutdown timed out with %d frames queued", self.frames.pending())
        self._close_endpoints()
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
