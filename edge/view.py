"""``proad-view``: the line as an operator sees it, live in a browser.

::

    proad-view [--config view.yaml] [--endpoint tcp://127.0.0.1:5555] [--status-endpoint tcp://127.0.0.1:5556]
               [--host 127.0.0.1] [--port 8080] [--token T] [--archive DIR] [--curve-key K --server-key S]

Why a separate process: the view is a subscriber beside the daemon like any other (DESIGN §1), so a
browser that is slow, or a view that is killed, never slows inspection. And why it is built this way:

- **Newest only, bounded.** One receiver thread reads every result (so counts and missed sequence
  numbers are exact) but keeps, per camera, only the newest result, counters, a bounded deque of
  recent scores, and the last few NG results of the line. Nothing is rendered per result: the
  overlay (the frame with its anomaly heatmap) is drawn and JPEG-encoded only when a browser asks
  for it, at most once per result, so a 60 fps camera costs a header parse and a few counters.
- **Pushed, never queued.** ``/events`` is a server-sent event stream of the whole state snapshot,
  sent when it changed and at most ``push_hz`` times a second. A browser that reads slowly blocks its
  own stream, and when it reads again it gets the newest state, not a backlog. The page loads the
  next overlay only once the previous one arrived.
- **Read-only and local by default.** Only GET (anything else is 405), bound to 127.0.0.1, and with
  ``token`` set every request needs ``?token=`` or ``Authorization: Bearer`` (else 401); the page
  passes its token on to its event stream and images. Binding elsewhere without a token is warned about.
- **Honest when things go wrong.** Invalid messages are counted and shown, results lost on the way
  (a gap in ``seq``) are counted as missed, a camera with no result for ``stale_after_s`` is shown as
  stale, and an unreachable status endpoint is shown as such.

HTTP: ``/`` the page, ``/events`` (SSE), ``/api/state`` (the same snapshot as JSON),
``/camera/<id>/overlay.jpg`` (the newest overlay; add ``?v=<seq>`` to bust caches), ``/ng/<result_id>.jpg``
(gallery images), ``/healthz``.

Exit codes: 0 stopped (SIGTERM/SIGINT), 1 failed while running, 2 bad config, keys, or address in use.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import heapq
import hmac
import ipaddress
import json
import logging
import os
import re
import signal
import socket
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from proad.edge.bridges.link import DaemonLink
from proad.edge.config import ConfigError, load_config
from proad.edge.messages import FrameResult, map_to_float
from proad.edge.sockets import StartupError
from proad.edge.subscriber import Received, Subscriber

log = logging.getLogger(__name__)

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2
MAX_SIDE = 960  # overlays are drawn at most this wide/high: a browser card, not the full sensor
_ID = re.compile(r"^[A-Za-z0-9_.-]{1,160}$")


class ViewConfig(BaseModel):
    """What ``proad-view`` reads from ``--config`` (YAML/JSON), ``--set`` and its flags."""

    model_config = ConfigDict(extra="forbid", frozen=True, str_max_length=4096)

    daemon: DaemonLink = DaemonLink()
    host: str = Field("127.0.0.1", description="address to serve on (anything but loopback: set a token)")
    port: int = Field(8080, ge=0, le=65535, description="0: any free port")
    token: str | None = Field(None, pattern=r"^[\x21-\x7e]{1,256}$",
                              description="every request needs ?token= or Authorization: Bearer (printable ASCII)")
    allowed_hosts: list[str] | None = Field(
        None, description="Host headers served (None: the loopback names on loopback, any elsewhere); keeps "
                          "other web pages the operator opens from reading the view through DNS rebinding",
    )
    archive: str | None = Field(None, description="a proad-archive folder: the NG gallery comes from it")
    gallery_size: int = Field(12, ge=1, le=200, description="NG results in the gallery")
    history: int = Field(300, ge=10, le=10_000, description="points in each camera's rolling score plot")
    push_hz: float = Field(10.0, gt=0, le=60, description="state pushed to a browser at most this often")
    status_every_s: float = Field(2.0, gt=0, le=3600, description="how often the daemon's status is asked")
    stale_after_s: float = Field(3.0, gt=0, description="a camera without results this long is shown stale")
    jpeg_quality: int = Field(80, ge=10, le=100)
    max_clients: int = Field(16, ge=1, le=1000, description="event streams served at once (more: 503)")


# ------------------------------------------------------------------------------------------------
# the line's state


@dataclass
class GalleryItem:
    """One NG of the gallery: from the stream (``received``) or from an archive folder (``files``)."""

    result_id: str
    camera: str
    seq: int
    score: float | None
    threshold: float
    reason: str
    capture_ts: float
    received: Received | None = None
    archived: FrameResult | None = None  # the archived header, its files beside it
    files: tuple[Path | None, Path | None, Path | None] = (None, None, None)  # jpg, map.npy, map.png

    def public(self) -> dict[str, Any]:
        return {"result_id": self.result_id, "camera": self.camera, "seq": self.seq, "score": _round(self.score),
                "threshold": _round(self.threshold), "reason": self.reason, "capture_ts": self.capture_ts,
                "image": f"ng/{self.result_id}.jpg"}


@dataclass
class CameraState:
    newest: Received | None = None
    received_at: float = 0.0  # monotonic
    ok: int = 0
    ng: int = 0
    failsafe: Counter[str] = field(default_factory=Counter)
    scores: deque[tuple[int, float | None, bool]] = field(default_factory=deque)  # seq, score, is NG
    overlay: tuple[str, bytes] | None = None  # result_id, JPEG: drawn once per result, on request


def _round(x: float | None) -> float | None:
    return None if x is None else round(float(x), 5)


def render_overlay(amap: np.ndarray, threshold: float, frame: np.ndarray | None, quality: int) -> bytes:
    """The frame with its heatmap (0 .. twice the threshold) blended over it, or the heatmap alone, as JPEG."""
    from proad.viz import heatmap, overlay

    vmax = 2.0 * threshold if threshold > 0 else max(float(amap.max()), 1e-6)
    if frame is not None:
        h, w = frame.shape[:2]
        if max(h, w) > MAX_SIDE:
            s = MAX_SIDE / max(h, w)
            frame = cv2.resize(frame, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
        image = overlay(frame, amap, vmax)
    else:
        image = heatmap(amap, vmax)
        h, w = image.shape[:2]
        if max(h, w) > MAX_SIDE:
            s = MAX_SIDE / max(h, w)
            image = cv2.resize(image, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
    ok, jpg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return jpg.tobytes()


class LineState:
    """The receiver: holds the Subscriber, keeps the newest result per camera and a bounded history.

    ``ingest`` is the whole per-result work (counters and references, no image work), so it keeps up
    with any camera; images are drawn by :meth:`overlay_jpeg` / :meth:`ng_jpeg` when asked for. Every
    method is safe to call from any thread. ``version`` changes whenever the state does.
    """

    def __init__(self, cfg: ViewConfig) -> None:
        self.cfg = cfg
        self.lock = threading.Lock()
        self.cameras: dict[str, CameraState] = {}
        self.gallery: deque[GalleryItem] = deque(maxlen=cfg.gallery_size)
        self._ng_cache: dict[str, bytes] = {}
        self.version = 0
        self.received = 0
        self.invalid = 0
        self.missed: Counter[str] = Counter()
        self.status: dict[str, Any] | None = None
        self.status_at: float | None = None  # monotonic time of the last answer
        self.status_error: str | None = None
        self.archive_error: str | None = None
        self.clients = 0
        self.started_at = time.monotonic()
        self.closing = threading.Event()
        self.threads: list[threading.Thread] = []
        self._archive_dirs: dict[str, tuple[int, list[tuple[float, Path]]]] = {}
        self._archive_headers: dict[Path, FrameResult | None] = {}

    # -- receiving -----------------------------------------------------------------------------
    def start(self) -> None:
        """Connect (a bad key file raises StartupError here) and start the receiver and status threads."""
        link = self.cfg.daemon
        sub = Subscriber(link.endpoint, camera=link.camera, hwm=link.hwm, keys=link.keys())
        self.threads = [threading.Thread(target=self._receive, args=(sub,), name="view-receiver", daemon=True)]
        if link.status_endpoint or self.cfg.archive:
            self.threads.append(threading.Thread(target=self._poll, name="view-status", daemon=True))
        for t in self.threads:
            t.start()

    def close(self, timeout: float = 5.0) -> None:
        self.closing.set()
        for t in self.threads:
            t.join(timeout)

    def _receive(self, sub: Subscriber) -> None:
        try:
            while not self.closing.is_set():
                r = sub.recv(timeout_ms=200)
                n = 0
                while r is not None:  # what is queued is taken in one go, then the counters are published
                    self.ingest(r)
                    n += 1
                    r = sub.recv(timeout_ms=0) if n < 1000 else None
                with self.lock:
                    if sub.invalid != self.invalid or sub.missed != self.missed:
                        self.invalid, self.missed = sub.invalid, Counter(sub.missed)
                        self.version += 1
        except Exception:  # never silently: the page shows the cameras stale, the log says why
            log.exception("the receiver failed; no more results will be shown")
        finally:
            sub.close()

    def ingest(self, r: Received) -> None:
        """Account for one result; keeps only references (the map and JPEG as received)."""
        h = r.header
        with self.lock:
            cam = self.cameras.get(h.camera_id)
            if cam is None:
                cam = self.cameras[h.camera_id] = CameraState(scores=deque(maxlen=self.cfg.history))
            cam.newest, cam.received_at = r, time.monotonic()
            if h.decision == "NG":
                cam.ng += 1
                if h.reason != "score":
                    cam.failsafe[h.reason] += 1
                if self.cfg.archive is None:
                    self.gallery.append(GalleryItem(h.result_id, h.camera_id, h.seq, h.score, h.threshold, h.reason,
                                                    h.capture_ts, received=r))
                    self._prune_ng_cache()
            else:
                cam.ok += 1
            cam.scores.append((h.seq, h.score, h.decision == "NG"))
            self.received += 1
            self.version += 1

    def _prune_ng_cache(self) -> None:
        keep = {g.result_id for g in self.gallery}
        for rid in [k for k in self._ng_cache if k not in keep]:
            del self._ng_cache[rid]

    def _poll(self) -> None:
        """Every ``status_every_s``: the daemon's status (drops by reason, latency percentiles), the archive."""
        from proad.edge.status import query_status

        link = self.cfg.daemon
        keys = link.keys() if link.status_endpoint else None
        while not self.closing.is_set():
            if link.status_endpoint:
                try:
                    status = query_status(link.status_endpoint, int(min(2.0, self.cfg.status_every_s) * 1000), keys)
                    with self.lock:
                        self.status, self.status_at, self.status_error = status, time.monotonic(), None
                        self.version += 1
                except Exception as exc:  # TimeoutError, a refused key, a garbled answer: shown on the page
                    with self.lock:
                        if self.status_error != str(exc):
                            log.warning("status: %s", exc)
                        self.status_error = str(exc)
                        self.version += 1
            if self.cfg.archive:
                try:
                    self.scan_archive()
                    self.archive_error = None
                except OSError as exc:
                    if self.archive_error != str(exc):
                        log.warning("archive %s: %s", self.cfg.archive, exc)
                    self.archive_error = str(exc)
            self.closing.wait(self.cfg.status_every_s)

    # -- the archive's NG gallery --------------------------------------------------------------
    def scan_archive(self) -> None:
        """The newest ``gallery_size`` complete records of a proad-archive folder (``<camera>/<id>.json``).

        A camera folder is listed again only when it changed (its mtime), so a large archive costs a
        ``stat`` per camera per poll."""
        assert self.cfg.archive is not None
        root = Path(self.cfg.archive)
        newest: list[tuple[float, Path]] = []
        for entry in os.scandir(root):
            if not entry.is_dir() or entry.name == "rejected" or not _ID.match(entry.name):
                continue
            mtime = entry.stat().st_mtime_ns
            cached = self._archive_dirs.get(entry.name)
            if cached is None or cached[0] != mtime:
                records = []
                for f in os.scandir(entry.path):
                    if f.name.endswith(".json") and _ID.match(f.name[:-5]):
                        records.append((f.stat().st_mtime, Path(f.path)))
                cached = (mtime, heapq.nlargest(self.cfg.gallery_size, records))
                self._archive_dirs[entry.name] = cached
            newest.extend(cached[1])
        items = []
        for _, path in sorted(heapq.nlargest(self.cfg.gallery_size, newest)):
            if path not in self._archive_headers:
                self._archive_headers[path] = _read_archived_header(path)
            h = self._archive_headers[path]
            if h is None:
                continue
            jpg, npy, png = (path.with_name(h.result_id + suffix) for suffix in (".jpg", "_map.npy", "_map.png"))
            files = (jpg if jpg.is_file() else None, npy if npy.is_file() else None, png if png.is_file() else None)
            items.append(GalleryItem(h.result_id, h.camera_id, h.seq, h.score, h.threshold, h.reason, h.capture_ts,
                                     archived=h, files=files))
        keep = {p for _, p in newest}
        for p in [p for p in self._archive_headers if p not in keep]:
            del self._archive_headers[p]
        with self.lock:
            if [g.result_id for g in items] != [g.result_id for g in self.gallery]:
                self.gallery.clear()
                self.gallery.extend(items)
                self._prune_ng_cache()
                self.version += 1

    # -- images --------------------------------------------------------------------------------
    def overlay_jpeg(self, camera: str) -> tuple[int, bytes] | None:
        """The newest result's overlay of ``camera`` (seq, JPEG), drawn at most once per result."""
        with self.lock:
            cam = self.cameras.get(camera)
            if cam is None or cam.newest is None:
                return None
            r = cam.newest
            if cam.overlay is not None and cam.overlay[0] == r.header.result_id:
                return r.header.seq, cam.overlay[1]
        jpg = render_overlay(r.anomaly_map(), r.header.threshold, r.frame(), self.cfg.jpeg_quality)
        with self.lock:
            cam.overlay = (r.header.result_id, jpg)
        return r.header.seq, jpg

    def ng_jpeg(self, result_id: str) -> bytes | None:
        """A gallery image (only of a result in the gallery now), drawn once."""
        with self.lock:
            if result_id in self._ng_cache:
                return self._ng_cache[result_id]
            item = next((g for g in self.gallery if g.result_id == result_id), None)
        if item is None:
            return None
        if item.received is not None:
            r = item.received
            jpg = render_overlay(r.anomaly_map(), r.header.threshold, r.frame(), self.cfg.jpeg_quality)
        else:
            jpg = _render_archived(item, self.cfg.jpeg_quality)
            if jpg is None:
                return None
        with self.lock:
            if any(g.result_id == result_id for g in self.gallery):
                self._ng_cache[result_id] = jpg
        return jpg

    # -- what the page gets --------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """The page's whole state as JSON-able data: per camera the newest result, counts, scores, latency."""
        now = time.monotonic()
        with self.lock:
            status = self.status or {}
            cams = {}
            for cam_id, cam in sorted(self.cameras.items()):
                h = cam.newest.header if cam.newest is not None else None
                if h is None:
                    continue
                age = now - cam.received_at
                drops = {reason: n[cam_id] for reason, n in (status.get("dropped") or {}).items()
                         if isinstance(n, dict) and n.get(cam_id)}
                cams[cam_id] = {
                    "camera": cam_id, "seq": h.seq, "frame_index": h.frame_index, "result_id": h.result_id,
                    "decision": h.decision, "reason": h.reason, "score": _round(h.score),
                    "threshold": _round(h.threshold), "capture_ts": h.capture_ts, "publish_ts": h.publish_ts,
                    "latency_ms": {k: round(v, 2) for k, v in h.latency_ms.items()}, "has_frame": h.has_frame,
                    "annotations": dict(h.annotations), "model_id": h.model_id,
                    "age_s": round(age, 2), "stale": age > self.cfg.stale_after_s,
                    "overlay": f"camera/{cam_id}/overlay.jpg?v={h.seq}",
                    "counts": {"received": cam.ok + cam.ng, "ok": cam.ok, "ng": cam.ng,
                               "failsafe_ng": dict(cam.failsafe), "missed": self.missed.get(cam_id, 0),
                               "dropped": drops, "frames_in": (status.get("frames_in") or {}).get(cam_id)},
                    "scores": [[s, _round(v), ng] for s, v, ng in cam.scores],
                }
            status_age = None if self.status_at is None else round(now - self.status_at, 1)
            return {
                "version": self.version,
                "time": time.time(),
                "endpoint": self.cfg.daemon.endpoint,
                "cameras": cams,
                "received": self.received,
                "invalid": self.invalid,
                "missed": sum(self.missed.values()),
                "gallery": [g.public() for g in reversed(self.gallery)],
                "gallery_source": "archive" if self.cfg.archive else "stream",
                "archive_error": self.archive_error,
                "daemon": {
                    "status_endpoint": self.cfg.daemon.status_endpoint,
                    "reachable": self.status is not None and self.status_error is None,
                    "error": self.status_error,
                    "age_s": status_age,
                    "uptime_s": status.get("uptime_s"),
                    "model": status.get("model"),
                    "subscribers": status.get("subscribers"),
                    "latency_ms": status.get("latency_ms"),
                },
                "push_hz": self.cfg.push_hz,
                "stale_after_s": self.cfg.stale_after_s,
            }


def _read_archived_header(path: Path) -> FrameResult | None:
    try:
        record = json.loads(path.read_text())
        return FrameResult.model_validate(record["header"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("archive record %s is unreadable: %s", path, exc)
        return None


def _render_archived(item: GalleryItem, quality: int) -> bytes | None:
    jpg_path, npy_path, png_path = item.files
    frame = None
    if jpg_path is not None:
        frame = cv2.imread(str(jpg_path), cv2.IMREAD_COLOR)
    try:
        if npy_path is not None and item.archived is not None:
            raw = np.load(npy_path, allow_pickle=False)
            return render_overlay(map_to_float(item.archived, raw), item.threshold, frame, quality)
    except (OSError, ValueError) as exc:
        log.warning("archived map %s is unreadable: %s", npy_path, exc)
    image = cv2.imread(str(png_path), cv2.IMREAD_COLOR) if png_path is not None else None
    if image is None:
        image = frame
    if image is None:
        return None
    ok, jpg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    return jpg.tobytes() if ok else None


# ------------------------------------------------------------------------------------------------
# HTTP


def _page() -> tuple[bytes, str]:
    """The page, and the CSP hash of its one inline script (so the policy allows exactly that script)."""
    html = resources.files("proad.edge").joinpath("static/view.html").read_bytes()
    m = re.search(rb"<script>(.*?)</script>", html, re.S)
    digest = base64.b64encode(hashlib.sha256(m.group(1) if m else b"").digest()).decode()
    return html, f"'sha256-{digest}'"


class Guard:
    """ASGI middleware: the token (when set) on every request, and headers that keep the page to itself."""

    def __init__(self, app: Any, token: str | None) -> None:
        self.app, self.token = app, token.encode() if token else None

    def _authorized(self, scope: dict[str, Any]) -> bool:
        if self.token is None:
            return True
        for name, value in scope.get("headers", []):
            if name == b"authorization" and value[:7].lower() == b"bearer ":
                return hmac.compare_digest(value[7:].strip(), self.token)
        given = parse_qs(scope.get("query_string", b"").decode("latin-1"), encoding="latin-1").get("token", [])
        return len(given) == 1 and hmac.compare_digest(given[0].encode("latin-1"), self.token)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-content-type-options", b"nosniff"),
                                      (b"referrer-policy", b"no-referrer"), (b"x-frame-options", b"DENY")]
            await send(message)

        if not self._authorized(scope):
            from starlette.responses import PlainTextResponse

            response = PlainTextResponse("401: this view needs ?token= or an Authorization: Bearer header\n", 401,
                                         headers={"WWW-Authenticate": "Bearer"})
            await response(scope, receive, send_with_headers)
            return
        await self.app(scope, receive, send_with_headers)


def build_app(cfg: ViewConfig, line: LineState | None = None) -> Any:
    """The Starlette app over ``line`` (a new, not started LineState when None; see ``app.state.line``)."""
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.middleware.trustedhost import TrustedHostMiddleware
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
    from starlette.routing import Route
    from starlette.types import Receive, Scope, Send

    line = line if line is not None else LineState(cfg)
    html, script_hash = _page()
    csp = (f"default-src 'none'; script-src {script_hash}; style-src 'unsafe-inline'; img-src 'self'; "
           "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
    no_store = {"Cache-Control": "no-store"}

    def page(request: Request) -> Response:
        return HTMLResponse(html, headers={"Content-Security-Policy": csp, **no_store})

    def state(request: Request) -> Response:
        return JSONResponse(line.snapshot(), headers=no_store)

    def healthz(request: Request) -> Response:
        snap = line.snapshot()
        return JSONResponse({"ok": True, "received": snap["received"], "invalid": snap["invalid"],
                             "cameras": {c: {"seq": s["seq"], "stale": s["stale"]} for c, s in snap["cameras"].items()},
                             "daemon_reachable": snap["daemon"]["reachable"]}, headers=no_store)

    def overlay(request: Request) -> Response:
        got = line.overlay_jpeg(request.path_params["camera"])
        if got is None:
            return Response("no result of this camera yet\n", 404, media_type="text/plain")
        seq, jpg = got
        return Response(jpg, media_type="image/jpeg", headers={"X-Seq": str(seq), **no_store})

    def ng_image(request: Request) -> Response:
        rid = request.path_params["result_id"]
        jpg = line.ng_jpeg(rid) if _ID.match(rid) else None
        if jpg is None:
            return Response("not in the gallery\n", 404, media_type="text/plain")
        return Response(jpg, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})

    class EventStream(StreamingResponse):
        """An event stream that holds one of ``max_clients`` slots from its request's check until the
        response ends (the client gone, a send failed or the server stopping), whether or not its
        body ever started: a slot taken when the body starts would let requests that arrive together
        all pass the check."""

        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            try:
                await super().__call__(scope, receive, send)
            finally:
                line.clients -= 1

    async def events(request: Request) -> Response:
        if line.clients >= cfg.max_clients:
            return Response(f"at most {cfg.max_clients} event streams\n", 503, media_type="text/plain")
        line.clients += 1  # taken before any await; only the event loop's thread touches it

        async def stream() -> AsyncIterator[str]:
            yield "retry: 2000\n\n"
            sent_version, sent_at = -1, 0.0
            while not line.closing.is_set():
                now = time.monotonic()
                if line.version != sent_version or now - sent_at >= 1.0:  # ages move on: once a second
                    sent_version, sent_at = line.version, now
                    yield f"data: {json.dumps(line.snapshot(), separators=(',', ':'))}\n\n"
                await asyncio.sleep(1.0 / cfg.push_hz)

        return EventStream(stream(), media_type="text/event-stream", headers={**no_store, "X-Accel-Buffering": "no"})

    routes = [
        Route("/", page, methods=["GET"]),
        Route("/events", events, methods=["GET"]),
        Route("/api/state", state, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/camera/{camera}/overlay.jpg", overlay, methods=["GET"]),
        Route("/ng/{result_id}.jpg", ng_image, methods=["GET"]),
    ]
    hosts = cfg.allowed_hosts or (["127.0.0.1", "localhost", "[::1]", "::1"] if _is_loopback(cfg.host) else ["*"])
    app = Starlette(routes=routes, middleware=[Middleware(TrustedHostMiddleware, allowed_hosts=hosts),
                                               Middleware(Guard, token=cfg.token)])
    app.state.line = line
    return app


# ------------------------------------------------------------------------------------------------
# serving


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _listen(host: str, port: int) -> socket.socket:
    """Bind before serving, so an address in use is a StartupError (exit 2), and port 0 is resolved."""
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                          flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise StartupError(f"cannot serve on {host}:{port}: {exc}") from exc
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise StartupError(f"cannot serve on {host}:{port}: {exc}") from exc
    return sock


def run_view(cfg: ViewConfig, stop: threading.Event, ready: Callable[[str], None] | None = None) -> int:
    """Serve until ``stop`` is set; ``ready(url)`` once listening. Raises StartupError (keys, address)."""
    import uvicorn

    if not _is_loopback(cfg.host) and cfg.token is None:
        log.warning("serving on %s without a token: anyone who reaches this address sees the line "
                    "(set token, or keep the default host 127.0.0.1)", cfg.host)
    sock = _listen(cfg.host, cfg.port)
    line = LineState(cfg)
    try:
        line.start()
    except BaseException:
        sock.close()
        raise
    app = build_app(cfg, line)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off", http="h11",
                                           ws="none", loop="asyncio", timeout_graceful_shutdown=2))
    failed: list[BaseException] = []

    def serve() -> None:
        try:
            server.run(sockets=[sock])
        except BaseException as exc:  # SystemExit from uvicorn's startup included
            failed.append(exc)

    thread = threading.Thread(target=serve, name="view-http", daemon=True)
    thread.start()
    try:
        while not server.started and thread.is_alive() and not stop.is_set():
            time.sleep(0.02)
        if server.started:
            host, port = sock.getsockname()[:2]
            shown = f"[{host}]" if ":" in host else host
            url = f"http://{shown}:{port}/"
            log.info("proad-view on %s, results from %s", url, cfg.daemon.endpoint)
            if ready is not None:
                ready(url)
        while not stop.wait(0.25) and thread.is_alive():
            pass
    finally:
        line.closing.set()  # event streams end; then the server
        server.should_exit = True
        thread.join(10)
        line.close()
        sock.close()
    if failed or not server.started:
        log.error("the HTTP server stopped: %s", failed[0] if failed else "it did not start")
        return EXIT_FAILED
    return EXIT_OK


# ------------------------------------------------------------------------------------------------
# command line


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="proad-view",
        description="A live web page of the line: per camera the newest frame with its heatmap, OK/NG, score "
        "against threshold, a rolling score plot, counts, latency; and a gallery of the last NG results.",
        epilog="Exit codes: 0 stopped (SIGTERM/SIGINT), 1 failed while running, 2 bad config, keys or address. "
        "The token can also come from the environment, PROAD_VIEW_TOKEN (keeps it out of the process list).",
    )
    p.add_argument("--config", type=Path, help="ViewConfig as YAML or JSON (optional)")
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                   help="override fields by dotted path, e.g. push_hz=5 daemon.camera=line1")
    p.add_argument("--endpoint", help="the daemon's PUB endpoint (default tcp://127.0.0.1:5555)")
    p.add_argument("--status-endpoint", help="the daemon's status endpoint (default tcp://127.0.0.1:5556; 'none': off)")
    p.add_argument("--host", help="address to serve on (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port to serve on (default 8080; 0: any free port)")
    p.add_argument("--token", help="require this token on every request (?token= or Authorization: Bearer)")
    p.add_argument("--archive", help="a proad-archive folder: the NG gallery comes from it")
    p.add_argument("--curve-key", metavar="NAME.key_secret", help="CURVE: this client's secret key (with --server-key)")
    p.add_argument("--server-key", metavar="SERVER.key", help="CURVE: the daemon's public key")
    return p


def view_config(args: argparse.Namespace) -> ViewConfig:
    """The config file, then ``--set``, then the flags (and PROAD_VIEW_TOKEN), validated."""
    cfg = load_config(ViewConfig, args.config, args.set)
    data = cfg.model_dump()
    link = data["daemon"]
    flags = {"endpoint": args.endpoint, "curve_secret_key": args.curve_key, "server_public_key": args.server_key}
    link.update({k: v for k, v in flags.items() if v is not None})
    if args.status_endpoint is not None:
        link["status_endpoint"] = None if args.status_endpoint.lower() in ("", "none", "off") else args.status_endpoint
    token = args.token if args.token is not None else (data["token"] or os.environ.get("PROAD_VIEW_TOKEN") or None)
    data.update({k: v for k, v in {"host": args.host, "port": args.port, "archive": args.archive}.items()
                 if v is not None})
    data["token"] = token
    try:
        return ViewConfig.model_validate(data)
    except ValidationError as exc:
        problems = [f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:5]]
        raise ConfigError("invalid config: " + "; ".join(problems)) from exc


def _view(args: argparse.Namespace) -> int:
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    cfg = view_config(args)
    stop = threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGTERM, signal.SIGINT)}

    def ready(url: str) -> None:
        print(f"proad-view: serving {url}{'?token=...' if cfg.token else ''} (results from {cfg.daemon.endpoint})",
              flush=True)

    try:
        return run_view(cfg, stop, ready)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def main(argv: Sequence[str] | None = None) -> int:
    from proad.clikit import run_command, say

    args = parser().parse_args(argv)
    failures = [(kind, EXIT_BAD_INPUT, say("error: ")) for kind in (ConfigError, StartupError)]
    return run_command("proad-view", _view, args, failures)


if __name__ == "__main__":
    sys.exit(main())
