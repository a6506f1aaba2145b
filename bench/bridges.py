"""What each bridge sustains beside a daemon running one camera at 60 fps, and flat out.

The bridges are measured, not the model: the daemon is the real one (``proad.edge.daemon.Daemon``:
synthetic camera, preprocessing, output thread, PUB socket, NG spool and channel) with a stand-in
backend that answers in microseconds (a fixed blob map scaled by a score drawn from the frame's
pixels, a fifth of the frames NG, each with its JPEG), so the two cores go to the daemon, the
bridge and the measuring client, as on a line where the model runs on an accelerator. Each bridge
runs as its own process, as deployed (``proad-bridge mqtt``, ``proad-bridge opcua``,
``proad-view``), one at a time, and its client is the real thing:

- **mqtt**: mosquitto (Debian's) and a paho client subscribed to ``proad/#`` (OK at QoS 0, NG at
  QoS 1 through the bridge's own NG channel);
- **opcua**: an asyncua client subscribed to the bridge's per-result events;
- **view**: headless Chromium (Selenium) on the page, an ``EventSource`` on its push stream.

Per bridge and camera rate: results the daemon published, results the client received (the view
pushes only the newest state, at most ``push_hz`` times a second: what its receiver took is the
sustained rate there, and the browser's updates are reported beside it), and latency from the
daemon's ``publish_ts`` in the header to the client (one clock: everything runs on this machine).

    python bench/bridges.py [--seconds 15] [--bridges mqtt opcua view]

Writes ``bench/results/bridges.json`` and ``bridges.md``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from datetime import timezone
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from common import machine, write_results
from proad.edge.backends.base import Backend, ModelInfo
from proad.edge.config import PipelineConfig
from proad.edge.daemon import Daemon
from services import MOSQUITTO, Mosquitto, free_port

SIZE = 256


class StandInBackend(Backend):
    """Answers at once: a blob map times a score taken from the frame's pixels (a fifth over 1.0)."""

    max_batch = 8

    def __init__(self) -> None:
        self.info = ModelInfo("stand-in", SIZE, 1.0, backend="stand-in")
        yy, xx = np.mgrid[0:SIZE, 0:SIZE] / SIZE
        self.blob = np.exp(-((yy - 0.4) ** 2 + (xx - 0.6) ** 2) / 0.02).astype(np.float32)

    def infer(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        scores = np.array([(int(im[::32, ::32].sum()) % 1000) / 800.0 for im in images], np.float32)
        return self.blob[None] * scores[:, None, None], scores


def start_daemon(fps: float, tmp: Path, ng_channel: bool) -> Daemon:
    data: dict[str, Any] = {
        "cameras": [{"id": "cam0", "source": {"kind": "synthetic", "category": "board", "fps": fps, "pool": 32}}],
        "backend": {"kind": "onnxruntime", "model": "stand-in"},
        "publish": {"endpoint": "tcp://127.0.0.1:*", "jpeg": "ng"},
        "status": {"endpoint": "tcp://127.0.0.1:*"},
        "log_level": "WARNING",
    }
    if ng_channel:
        data["ng_channel"] = {"name": "mqtt", "endpoint": "tcp://127.0.0.1:*", "spool_dir": str(tmp / "spool"),
                              "fsync": False}
    return Daemon(PipelineConfig.model_validate(data), backend=StandInBackend())


def percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p99": None}
    return {"p50": float(np.percentile(values, 50)), "p99": float(np.percentile(values, 99))}


def process(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def measure(
    fps: float, seconds: float, tmp: Path, ng_channel: bool,
    start_bridge: Callable[[Daemon], subprocess.Popen], client: Callable[[Daemon], Any],
) -> dict[str, Any]:
    """One run: daemon, bridge process, client; count from the first result the client sees."""
    daemon = start_daemon(fps, tmp, ng_channel)
    bridge = start_bridge(daemon)
    try:
        assert daemon.publisher.wait_for_subscriptions(1, 60), "the bridge did not subscribe"
        probe = client(daemon)  # connected and waiting for results
        daemon.start()
        probe.wait_first(60)
        published0, t0 = daemon.telemetry.snapshot()["published"].get("cam0", 0), time.monotonic()
        probe.reset()
        time.sleep(seconds)  # the measured span
        published = daemon.telemetry.snapshot()["published"].get("cam0", 0) - published0
        elapsed = time.monotonic() - t0
        got = probe.collect()
    finally:
        daemon.stop()
        bridge.terminate()
        out, err = bridge.communicate(timeout=60)
        if "probe" in locals():
            probe.close()
    if bridge.returncode not in (0, -15):
        raise RuntimeError(f"bridge exited {bridge.returncode}: {err[-2000:]}")
    return {"camera_fps": fps, "published_per_s": published / elapsed,
            "delivered_per_s": got["delivered"] / elapsed, "delivered_share": got["delivered"] / max(published, 1),
            "latency_ms": percentiles(got["latency_ms"]), **got.get("extra", {})}


class LatencyProbe:
    """A client that records, for every result it receives, the time since the daemon published it."""

    def __init__(self) -> None:
        self.lock, self.first = threading.Lock(), threading.Event()
        self.latency: list[float] = []
        self.error: BaseException | None = None

    def record(self, latency_ms: float) -> None:
        with self.lock:
            self.latency.append(latency_ms)
        self.first.set()

    def wait_first(self, timeout: float) -> None:
        assert self.first.wait(timeout), f"nothing arrived ({self.error})"

    def reset(self) -> None:
        with self.lock:
            self.latency = []

    def collect(self) -> dict[str, Any]:
        with self.lock:
            return {"delivered": len(self.latency), "latency_ms": list(self.latency)}


# -- MQTT ------------------------------------------------------------------------------------------
class MqttProbe(LatencyProbe):
    def __init__(self, port: int) -> None:
        from paho.mqtt.client import Client
        from paho.mqtt.enums import CallbackAPIVersion

        super().__init__()
        self.subscribed = threading.Event()
        self.client = Client(CallbackAPIVersion.VERSION2, client_id="bench-probe")
        self.client.on_connect = lambda c, *_: c.subscribe("proad/#", qos=1)
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert self.subscribed.wait(30), "the probe did not subscribe"

    def _on_message(self, _c: object, _u: object, msg: Any) -> None:
        now = time.time()
        self.record((now - json.loads(msg.payload)["publish_ts"]) * 1000)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def bench_mqtt(fps: float, seconds: float, tmp: Path) -> dict[str, Any]:
    broker = Mosquitto(tmp / f"broker_{fps:g}").start()
    try:
        def start_bridge(daemon: Daemon) -> subprocess.Popen:
            cfg = tmp / "mqtt.json"
            cfg.write_text(json.dumps({
                "daemon": {"endpoint": daemon.publisher.endpoint, "ng_channel": daemon.ng_channels[0].endpoint,
                           "status_endpoint": None}, "broker": {"port": broker.port}}))
            return process("from proad.edge.bridges.cli import main; raise SystemExit(main())", "mqtt",
                           "--config", str(cfg), "--log-level", "WARNING")

        return measure(fps, seconds, tmp, True, start_bridge, lambda d: MqttProbe(broker.port))
    finally:
        broker.stop()


# -- proad-view --------------------------------------------------------------------------------------
BROWSER_PROBE = """
window.__bench = {updates: 0, latency: []};
const source = new EventSource('events');
source.onmessage = (e) => {
  const cam = JSON.parse(e.data).cameras.cam0;
  if (!cam) return;
  if (window.__bench.seq !== cam.seq) {  // a new result shown (not the once-a-second refresh)
    window.__bench.seq = cam.seq;
    window.__bench.updates += 1;
    window.__bench.latency.push(Date.now() - cam.publish_ts * 1000);
  }
};
"""


class ViewProbe:
    """Chromium on the page, with an EventSource of its own recording when each new state arrives;
    the view's receiver counts (``/api/state``) say how many results it took."""

    def __init__(self, url: str, tmp: Path) -> None:
        from services import chromium

        self.url = url
        self.driver = chromium(tmp)
        self.driver.get(url)
        self.driver.execute_script(BROWSER_PROBE)
        self.received0 = 0

    def received(self) -> int:
        with urllib.request.urlopen(self.url + "api/state", timeout=10) as r:
            return int(json.loads(r.read())["received"])

    def wait_first(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.driver.execute_script("return window.__bench.updates") == 0:
            assert time.monotonic() < deadline, "the browser saw no result"
            time.sleep(0.1)  # poll interval

    def reset(self) -> None:
        self.received0 = self.received()
        self.driver.execute_script("window.__bench.updates = 0; window.__bench.latency = [];")

    def collect(self) -> dict[str, Any]:
        got = self.driver.execute_script("return window.__bench")
        return {"delivered": self.received() - self.received0, "latency_ms": [float(x) for x in got["latency"]],
                "extra": {"browser_updates": int(got["updates"])}}

    def close(self) -> None:
        self.driver.quit()


def bench_view(fps: float, seconds: float, tmp: Path) -> dict[str, Any]:
    port = free_port()

    def start_bridge(daemon: Daemon) -> subprocess.Popen:
        status = daemon.status.endpoint if daemon.status is not None else "none"
        return process("from proad.edge.view import main; raise SystemExit(main())", "--endpoint",
                       daemon.publisher.endpoint, "--status-endpoint", status, "--port", str(port))

    def probe(daemon: Daemon) -> ViewProbe:
        deadline = time.monotonic() + 60
        while True:  # the page is served once uvicorn listens
            try:
                return ViewProbe(f"http://127.0.0.1:{port}/", tmp)
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)  # poll interval while the view starts

    row = measure(fps, seconds, tmp, False, start_bridge, probe)
    row["browser_updates_per_s"] = row.pop("browser_updates") / seconds
    return row


# -- OPC UA ----------------------------------------------------------------------------------------
class OpcUaProbe(LatencyProbe):
    """An asyncua client (in its own event loop thread) subscribed to the camera's result events;
    publish time = the event's CaptureTime + LatencyMs (the daemon's capture -> publish)."""

    def __init__(self, url: str) -> None:
        import asyncio

        super().__init__()
        self.connected, self.closing = threading.Event(), threading.Event()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_until_complete, args=(self._run(url),), daemon=True)
        self.thread.start()
        assert self.connected.wait(60), f"the OPC UA probe did not subscribe: {self.error}"

    async def _run(self, url: str) -> None:
        import asyncio

        from asyncua import Client, ua

        try:
            client = Client(url, timeout=30)
            client.set_user("plc")
            client.set_password("bench")
            async with client:
                idx = await client.get_namespace_index("urn:proad-edge")
                sub = await client.create_subscription(10, self)
                etype = await client.nodes.base_event_type.get_child(f"{idx}:ProadResultEventType")
                await sub.subscribe_events(client.get_node(ua.NodeId("ProadEdge.cam0", idx)), etype, queuesize=10000)
                self.connected.set()
                while not self.closing.is_set():
                    await asyncio.sleep(0.05)
        except BaseException as exc:
            self.error = exc
            self.connected.set()

    def event_notification(self, event: Any) -> None:
        now = time.time()
        capture = event.CaptureTime
        if capture.tzinfo is None:
            capture = capture.replace(tzinfo=timezone.utc)
        self.record((now - capture.timestamp()) * 1000 - float(event.LatencyMs))

    def close(self) -> None:
        self.closing.set()
        self.thread.join(30)


def bench_opcua(fps: float, seconds: float, tmp: Path) -> dict[str, Any]:
    url = f"opc.tcp://127.0.0.1:{free_port()}/proad/"

    def start_bridge(daemon: Daemon) -> subprocess.Popen:
        cfg = tmp / "opcua.json"
        cfg.write_text(json.dumps({
            "daemon": {"endpoint": daemon.publisher.endpoint,
                       "status_endpoint": daemon.status.endpoint if daemon.status is not None else None},
            "endpoint": url, "cameras": ["cam0"], "users": {"plc": "bench"}}))
        return process("from proad.edge.bridges.cli import main; raise SystemExit(main())", "opcua",
                       "--config", str(cfg), "--log-level", "WARNING")

    def probe(daemon: Daemon) -> OpcUaProbe:
        deadline = time.monotonic() + 60
        while True:  # the server answers once it listens
            try:
                return OpcUaProbe(url)
            except AssertionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)  # poll interval while the bridge starts

    return measure(fps, seconds, tmp, False, start_bridge, probe)


BENCHES: dict[str, Callable[[float, float, Path], dict[str, Any]]] = {
    "mqtt": bench_mqtt, "opcua": bench_opcua, "view": bench_view,
}


def table(results: dict[str, list[dict[str, Any]]], seconds: float) -> str:
    lines = [
        "# Bridges beside the daemon (`python bench/bridges.py`)",
        "",
        f"Each bridge as its own process beside the real daemon (stand-in backend), {seconds:g} s per row; "
        "latency from the daemon's publish to the bridge's client. The view pushes only the newest state "
        "(at most `push_hz` per second): its receiver's rate is what it sustains.",
        "",
        "| bridge | camera fps | daemon published/s | delivered/s | delivered share | latency p50 ms | p99 ms | "
        "browser updates/s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, rows in results.items():
        for r in rows:
            lat = r["latency_ms"]
            p50 = f"{lat['p50']:.1f}" if lat["p50"] is not None else "-"
            p99 = f"{lat['p99']:.1f}" if lat["p99"] is not None else "-"
            updates = f"{r['browser_updates_per_s']:.1f}" if "browser_updates_per_s" in r else "-"
            lines.append(f"| {name} | {r['camera_fps']:g} | {r['published_per_s']:.1f} | {r['delivered_per_s']:.1f} | "
                         f"{r['delivered_share']:.3f} | {p50} | {p99} | {updates} |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=15.0, help="measured span per row")
    p.add_argument("--bridges", nargs="+", default=list(BENCHES), choices=list(BENCHES))
    p.add_argument("--rates", nargs="+", type=float, default=[60.0, 240.0], help="camera fps per row")
    args = p.parse_args()
    if "mqtt" in args.bridges and MOSQUITTO is None:
        p.error("mosquitto is not installed (apt-get install mosquitto)")
    results: dict[str, list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.bridges:
            for fps in args.rates:
                print(f"{name} at {fps:g} fps ...", flush=True)
                results.setdefault(name, []).append(BENCHES[name](fps, args.seconds, Path(tmp)))
    write_results("bridges", {"machine": machine(), "seconds": args.seconds, "results": results},
                  table(results, args.seconds))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
