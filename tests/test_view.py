"""proad-view: the receiver keeps only the newest, bounded; the page, in a real headless Chromium,
shows the live line of a running daemon (seq advancing, an NG with its overlay, the NG gallery)."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

from proad.edge.bridges.link import DaemonLink
from proad.edge.messages import FrameResult
from proad.edge.subscriber import Received
from proad.edge.view import LineState, ViewConfig, main, run_view
from services import CHROMEDRIVER, CHROMIUM, chromium

REPO = Path(__file__).resolve().parent.parent
TOKEN = "test-token-5f1c"


def result(seq: int, decision: str = "OK", camera: str = "cam0", frame: bool = False) -> Received:
    header = FrameResult(camera_id=camera, seq=seq, frame_index=seq, result_id=f"run-{camera}-{seq}",
                         capture_ts=time.time(), publish_ts=time.time(), latency_ms={"total": 12.5},
                         score=0.3 if decision == "NG" else 0.05, threshold=0.1, decision=decision,
                         model_id="m", map_shape=(32, 32), map_dtype="float16", has_frame=frame)
    amap = np.full((32, 32), header.score, np.float16)
    jpeg = None
    if frame:
        import cv2

        jpeg = cv2.imencode(".jpg", np.full((64, 64, 3), 128, np.uint8))[1].tobytes()
    return Received(header, amap, jpeg, 0)


def test_line_state_keeps_the_newest_only_and_is_bounded() -> None:
    line = LineState(ViewConfig(history=50, gallery_size=4))
    for seq in range(1000):
        line.ingest(result(seq, "NG" if seq % 3 == 0 else "OK", frame=seq % 2 == 0))
    snap = line.snapshot()
    cam = snap["cameras"]["cam0"]
    assert cam["seq"] == 999 and cam["overlay"].endswith("v=999")
    assert cam["counts"]["ok"] + cam["counts"]["ng"] == 1000 and cam["counts"]["ng"] == 334
    assert [s for s, _, _ in cam["scores"]] == list(range(950, 1000))  # the plot's window, no more
    assert [g["seq"] for g in snap["gallery"]] == [999, 996, 993, 990]  # newest first, gallery_size of them
    # images are drawn on request only, once per result: the newest overlay, gallery items still in the gallery
    seq, jpg = line.overlay_jpeg("cam0")
    assert seq == 999 and jpg[:2] == b"\xff\xd8"
    assert line.overlay_jpeg("cam0")[1] is jpg and line.overlay_jpeg("nope") is None
    assert line.ng_jpeg("run-cam0-999")[:2] == b"\xff\xd8" and line.ng_jpeg("run-cam0-3") is None
    line.ingest(result(1002, "NG"))  # the heatmap alone when no frame came with it
    assert line.ng_jpeg("run-cam0-1002")[:2] == b"\xff\xd8"
    assert len(line._ng_cache) <= 4
    json.dumps(line.snapshot())  # what /events sends


def test_a_camera_without_results_is_stale() -> None:
    line = LineState(ViewConfig(stale_after_s=30))
    line.ingest(result(0))
    assert not line.snapshot()["cameras"]["cam0"]["stale"]
    line.cameras["cam0"].received_at -= 31  # its last result came 31 s ago
    assert line.snapshot()["cameras"]["cam0"]["stale"]


def test_gallery_from_an_archive_folder(tmp_path: Path) -> None:
    from proad.edge.archiver import Archiver
    from proad.edge.ng_channel import NG

    archiver = Archiver("tcp://127.0.0.1:9", tmp_path / "archive", fsync=False)  # stores; nothing to reach
    try:
        for seq in range(5):
            r = result(seq, "NG", frame=seq % 2 == 0)
            parts = [NG, r.header.result_id.encode(), r.header.model_dump_json().encode(), r.map.tobytes()]
            assert archiver.handle(parts + ([r.frame_jpeg] if r.frame_jpeg else []))[1] == "stored"
            time.sleep(0.01)  # distinct mtimes: the gallery is the newest records
    finally:
        archiver.close()
    line = LineState(ViewConfig(archive=str(tmp_path / "archive"), gallery_size=3))
    line.ingest(result(7, "NG"))  # with an archive, the stream's NG results are not the gallery
    line.scan_archive()
    snap = line.snapshot()
    assert snap["gallery_source"] == "archive" and [g["seq"] for g in snap["gallery"]] == [4, 3, 2]
    assert all(line.ng_jpeg(g["result_id"])[:2] == b"\xff\xd8" for g in snap["gallery"])
    assert line.ng_jpeg("run-cam0-0") is None  # not in the gallery (any more): not served


def test_cli_bad_input_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--port", "70000"]) == 2
    assert "port" in capsys.readouterr().err
    assert main(["--curve-key", "/nonexistent.key_secret"]) == 2  # half a CURVE pair


def _get(url: str, headers: dict[str, str] | None = None, method: str = "GET") -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}, method=method), timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


# What the page shows, read in the browser: the card's seq and decision, and whether the overlay image
# on screen is loaded and of an NG result.
_CARD = """
const card = document.querySelector('.card[data-camera="cam0"]');
if (!card) return null;
const img = card.querySelector('img.overlay');
return {seq: Number(card.querySelector('.seq').textContent), decision: card.querySelector('.decision').textContent,
        img_loaded: img.complete && img.naturalWidth > 0, img_decision: img.dataset.decision || null,
        img_seq: img.dataset.seq || null};
"""
_PAUSE_AT_NG = """
const card = document.querySelector('.card[data-camera="cam0"]');
const img = card.querySelector('img.overlay');
if (card.dataset.decision === 'NG' && img.complete && img.naturalWidth > 0 && img.dataset.seq === card.dataset.seq) {
  document.getElementById('pause').click();
  return true;
}
return false;
"""
_GALLERY = """
return [...document.querySelectorAll('#gallery .ng-item img')].filter(i => i.complete && i.naturalWidth > 0).length;
"""


def test_view_in_headlesschromium(board_model, backend, tmp_path: Path) -> None:
    pytest.importorskip("selenium")
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip("needs Debian's chromium and chromium-driver (/usr/bin/chromium, /usr/bin/chromedriver)")
    from selenium.webdriver.support.ui import WebDriverWait

    from proad.edge.config import PipelineConfig
    from proad.edge.daemon import Daemon

    cfg = PipelineConfig.model_validate({  # the synthetic board camera, about a third NG, every frame attached
        "cameras": [{"id": "cam0", "source": {"kind": "synthetic", "category": "board", "fps": 15,
                                              "defect_rate": 0.3, "pool": 24}}],
        "backend": {"kind": "onnxruntime", "model": str(board_model[1]), "threads": 2},
        "publish": {"endpoint": "tcp://127.0.0.1:*", "jpeg": "always"},
        "status": {"endpoint": "tcp://127.0.0.1:*"},
    })
    daemon = Daemon(cfg, backend=backend)
    view_cfg = ViewConfig(daemon=DaemonLink(endpoint=daemon.publisher.endpoint,
                                            status_endpoint=daemon.status.endpoint),
                          port=0, token=TOKEN, status_every_s=1.0)
    stop, urls, codes = threading.Event(), [], []
    view = threading.Thread(target=lambda: codes.append(run_view(view_cfg, stop, urls.append)), daemon=True)
    view.start()
    driver = None
    try:
        assert daemon.publisher.wait_for_subscriptions(1, 60), "the view did not subscribe"
        deadline = time.monotonic() + 30
        while not urls and time.monotonic() < deadline:
            time.sleep(0.05)
        assert urls, "the view did not start serving"
        url = urls[0]
        daemon.start()

        # the token: none or a wrong one is refused, ?token= and a Bearer header are let in; only GET
        assert _get(url + "api/state")[0] == 401
        assert _get(url + "api/state?token=wrong")[0] == 401
        assert _get(url + "api/state", {"Authorization": f"Bearer {TOKEN}"})[0] == 200
        assert _get(url + f"healthz?token={TOKEN}")[0] == 200
        assert _get(url + f"api/state?token={TOKEN}", method="POST")[0] == 405

        driver = chromium(tmp_path)
        driver.set_window_size(1280, 900)
        driver.get(url + f"?token={TOKEN}")
        wait = WebDriverWait(driver, 60, poll_frequency=0.2)
        first = wait.until(lambda d: d.execute_script(_CARD))
        wait.until(lambda d: d.execute_script(_CARD)["seq"] >= first["seq"] + 5)  # live: seq advances
        wait.until(lambda d: (s := d.execute_script(_CARD))["decision"] == "NG" and s["img_loaded"]
                   and s["img_decision"] == "NG")
        wait.until(lambda d: d.execute_script(_GALLERY) >= 1)
        assert "reconnecting" not in driver.find_element("id", "conn").text

        status, body = _get(url + f"api/state?token={TOKEN}")
        state = json.loads(body)
        counts = state["cameras"]["cam0"]["counts"]
        assert status == 200 and counts["ng"] >= 1 and counts["ok"] + counts["ng"] == counts["received"]
        assert state["invalid"] == 0 and state["daemon"]["reachable"]

        if os.environ.get("PROAD_VIEW_SCREENSHOT"):  # only on purpose: the committed screenshot of the README
            driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                                   {"width": 1280, "height": 900, "deviceScaleFactor": 1, "mobile": False})
            wait.until(lambda d: d.execute_script(_GALLERY) >= 6)
            # pause the page (its own button) at an NG whose overlay is on screen, in one go inside the page
            wait.until(lambda d: d.execute_script(_PAUSE_AT_NG))
            time.sleep(0.5)  # the last gallery images decode
            (REPO / "docs").mkdir(exist_ok=True)
            driver.save_screenshot(str(REPO / "docs" / "proad-view.png"))
    finally:
        if driver is not None:
            driver.quit()
        stop.set()
        view.join(20)
        daemon.stop()
    assert codes == [0]


def _open_stream(url: str) -> tuple[socket.socket, int]:
    """GET /events on a raw socket: the open connection and the response's status code."""
    host, port = url.split("//")[1].rstrip("/").rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=30)
    sock.sendall(f"GET /events?token={TOKEN} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    status = b""
    while b"\r\n" not in status:
        chunk = sock.recv(1)
        assert chunk, "the view closed the connection before its status line"
        status += chunk
    return sock, int(status.split()[1])


def test_event_streams_beyond_max_clients_are_refused_even_when_they_arrive_together() -> None:
    """Twelve clients ask at once, three are served (503 for the rest); a slot comes back when its
    client leaves. The slot is taken at the check: taken when a stream's body starts, requests that
    arrive together all passed it."""
    from concurrent.futures import ThreadPoolExecutor

    view_cfg = ViewConfig(daemon=DaemonLink(endpoint="tcp://127.0.0.1:9", status_endpoint=None),
                          port=0, token=TOKEN, max_clients=3)  # fmt: skip
    stop, urls, codes = threading.Event(), [], []
    view = threading.Thread(target=lambda: codes.append(run_view(view_cfg, stop, urls.append)), daemon=True)
    view.start()
    opened: list[socket.socket] = []
    try:
        deadline = time.monotonic() + 30
        while not urls and time.monotonic() < deadline:
            time.sleep(0.05)
        assert urls, "the view did not start serving"
        barrier = threading.Barrier(12)

        def together(_: int) -> tuple[socket.socket, int]:
            barrier.wait()
            return _open_stream(urls[0])

        with ThreadPoolExecutor(12) as pool:
            answers = list(pool.map(together, range(12)))
        opened = [sock for sock, _ in answers]
        statuses = sorted(code for _, code in answers)
        assert statuses == [200] * 3 + [503] * 9, statuses
        served = [sock for sock, code in answers if code == 200]
        served[0].close()  # one client leaves: its slot comes back (once the server sees it gone)
        deadline = time.monotonic() + 30
        while True:
            sock, code = _open_stream(urls[0])
            opened.append(sock)
            if code == 200:
                break
            assert code == 503 and time.monotonic() < deadline, "the slot of a closed stream never came back"
            time.sleep(0.1)
        sock, code = _open_stream(urls[0])
        opened.append(sock)
        assert code == 503  # and only that one
    finally:
        for sock in opened:
            sock.close()
        stop.set()
        view.join(30)
    assert codes == [0]
