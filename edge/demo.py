"""``proad-edge demo``: the whole job on the embedded default, as a new user first sees it.

A synthetic camera (a circuit board at 30 fps with defects injected in a fifth of the frames) feeds
the daemon, which runs the demo model exported to ONNX on ONNX Runtime and publishes over ZeroMQ;
this process subscribes, prints the live stream of OK/NG results, saves NG overlays, and ends with a
summary: frames, FPS, latency, and NG found against the defects the camera injected. Every NG also
goes through the reliable NG channel to a reference archiver (``proad-archive``), and the summary
says how many of the NG results it stored.

The daemon runs as its own process (``proad-edge run``), exactly as on a line; the model must
already exist (``make demo`` trains and exports it first).

``--line`` (``make demo-line``) adds what sits beside the daemon on a factory line, each as its own
process: the operator's page (``proad-view``, http://127.0.0.1:8080/), the PLC's OPC UA server
(``proad-bridge opcua`` on opc.tcp://127.0.0.1:4840/proad/, user ``plc``, password ``demo``) and the
MQTT bridge into a local mosquitto broker (port 1883, or a free one when that is taken; topics
``proad/cam0/OK|NG``; every NG through an NG channel of its own), and runs the camera long enough
to look (``--seconds``).
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from proad.edge.backends import ModelLoadError
from proad.edge.config import SyntheticSource


@dataclass(frozen=True)
class DemoPorts:
    """The loopback ports the demo's processes meet on: the ones the README names by default;
    :meth:`free` picks free ones (tests, or a machine where those are taken)."""

    publish: int = 5555
    status: int = 5556
    ng_channel: int = 5557
    mqtt_ng_channel: int = 5558
    view: int = 8080
    opcua: int = 4840
    mqtt: int = 1883

    @classmethod
    def free(cls) -> DemoPorts:
        from proad.edge.ports import free_ports

        return cls(*free_ports(7))

    def tcp(self, port: int) -> str:
        return f"tcp://127.0.0.1:{port}"

    @property
    def view_url(self) -> str:
        return f"http://127.0.0.1:{self.view}/"

    @property
    def opcua_endpoint(self) -> str:
        return f"opc.tcp://127.0.0.1:{self.opcua}/proad/"


#: frames the demo's synthetic camera renders at start and cycles (rendering is slow; the source's
#: default): its summary's counts are of these frames, each judged many times
CAMERA_POOL: int = SyntheticSource.model_fields["pool"].default


def demo_config(model: Path, category: str, fps: float, defect_rate: float, seconds: float, spool: Path,
                ports: DemoPorts = DemoPorts()) -> dict:  # fmt: skip
    return {
        "cameras": [{
            "id": "cam0",
            "category": category,
            "source": {"kind": "synthetic", "category": category, "fps": fps, "defect_rate": defect_rate,
                       "seed": 1, "max_frames": int(seconds * fps), "pool": CAMERA_POOL},
        }],
        "backend": {"kind": "onnxruntime", "model": str(model), "device": "cpu", "threads": 2},
        "publish": {"endpoint": ports.tcp(ports.publish), "map_dtype": "float16", "jpeg": "ng"},
        "ng_channel": {"endpoint": ports.tcp(ports.ng_channel), "spool_dir": str(spool)},
        "status": {"endpoint": ports.tcp(ports.status)},
        "log_level": "INFO",
    }  # fmt: skip


class LineServices:
    """The line demo's neighbours of the daemon: broker, MQTT and OPC UA bridges, the operator's page."""

    def __init__(self, workdir: Path, ports: DemoPorts = DemoPorts()) -> None:
        from proad.edge.bridges.broker import MOSQUITTO, Mosquitto
        from proad.edge.ports import free_port, port_free

        self.workdir = workdir
        self.ports = ports
        self.procs: dict[str, subprocess.Popen] = {}
        self.logs: list = []
        port = ports.mqtt if port_free(ports.mqtt) else free_port()  # a broker of the machine's may hold 1883
        self.broker = Mosquitto(workdir / "broker", port) if MOSQUITTO is not None else None
        if self.broker is None:
            print("mosquitto is not installed (apt-get install mosquitto): the MQTT bridge is left out")

    def daemon_config(self, config: dict) -> dict:
        config["publish"]["jpeg"] = "always"  # the operator's page shows every frame
        if self.broker is not None:
            config["ng_channels"] = [{"name": "mqtt", "endpoint": self.ports.tcp(self.ports.mqtt_ng_channel),
                                      "spool_dir": str(self.workdir / "spool_mqtt")}]
        return config

    def _start(self, name: str, module_main: str, *args: str) -> None:
        log = open(self.workdir / f"{name}.log", "w")  # noqa: SIM115 - closed in stop()
        self.logs.append(log)
        module, main = module_main.split(":")
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-c", f"from {module} import {main}; raise SystemExit({main}())", *args],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip

    def start(self) -> None:
        ports = self.ports
        daemon = {"endpoint": ports.tcp(ports.publish), "status_endpoint": ports.tcp(ports.status)}
        if self.broker is not None:
            self.broker.start()
            mqtt = self.workdir / "mqtt.json"
            mqtt.write_text(json.dumps({"daemon": {**daemon, "ng_channel": ports.tcp(ports.mqtt_ng_channel)},
                                        "broker": {"port": self.broker.port}, "attach": ["map_png"]}, indent=2))
            self._start("bridge_mqtt", "proad.edge.bridges.cli:main", "mqtt", "--config", str(mqtt))
        opcua = self.workdir / "opcua.json"
        opcua.write_text(json.dumps({"daemon": daemon, "cameras": ["cam0"], "endpoint": ports.opcua_endpoint,
                                     "users": {"plc": "demo"}}, indent=2))
        self._start("bridge_opcua", "proad.edge.bridges.cli:main", "opcua", "--config", str(opcua))
        self._start("view", "proad.edge.view:main", "--port", str(ports.view), "--archive",
                    str(self.workdir / "archive"), "--endpoint", ports.tcp(ports.publish),
                    "--status-endpoint", ports.tcp(ports.status))
        self._wait_ready({"bridge_mqtt": "running", "bridge_opcua": "running", "view": "serving"})
        print(f"operator's page: {ports.view_url}  |  OPC UA: {ports.opcua_endpoint} (user plc, password demo)"
              + (f"  |  MQTT: 127.0.0.1:{self.broker.port}, topics proad/cam0/OK|NG" if self.broker else ""))

    def _wait_ready(self, says: dict[str, str], timeout_s: float = 60.0) -> None:
        """Until each one has said it runs (so it sees the first frame), or has exited, or the time is up."""
        deadline = time.monotonic() + timeout_s
        waiting = {name: word for name, word in says.items() if name in self.procs}
        while waiting and time.monotonic() < deadline:
            for name, word in list(waiting.items()):
                if self.procs[name].poll() is not None:
                    print(f"{name} exited with {self.procs[name].returncode}: see {self.workdir / (name + '.log')}")
                    del waiting[name]
                elif word in (self.workdir / f"{name}.log").read_text():
                    del waiting[name]
            time.sleep(0.1)  # poll interval while they start

    def stop(self) -> None:
        for name, proc in self.procs.items():
            proc.terminate()
            try:
                code = proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                code = proc.wait()
            print(f"{name}: exited {code}{_bridge_summary(self.workdir / (name + '.log'))}, "
                  f"log {self.workdir / (name + '.log')}")
        for log in self.logs:
            log.close()
        if self.broker is not None:
            self.broker.stop()


def run_demo(workdir: Path, seconds: float, fps: float, category: str, defect_rate: float, line: bool = False,
             ports: DemoPorts = DemoPorts()) -> int:  # fmt: skip
    """The demo; with ``line``, the view and the bridges beside it, stopped whatever happens."""
    services = LineServices(workdir, ports) if line else None
    try:
        return _demo(workdir, seconds, fps, category, defect_rate, services, ports)
    finally:
        if services is not None:
            services.stop()


def _demo(workdir: Path, seconds: float, fps: float, category: str, defect_rate: float,
          services: LineServices | None, ports: DemoPorts) -> int:
    from proad.edge.cli import format_line, save_overlay
    from proad.edge.status import query_status
    from proad.edge.subscriber import Subscriber

    model = workdir / "model.onnx"
    if not model.is_file():
        raise ModelLoadError(f"{model} not found: `make demo` trains and exports it first")
    config = workdir / "edge.json"
    daemon_config = demo_config(model, category, fps, defect_rate, seconds, workdir / "spool", ports)
    if services is not None:
        daemon_config = services.daemon_config(daemon_config)
        services.start()
    config.write_text(json.dumps(daemon_config, indent=2))
    overlays = workdir / "ng_overlays"
    log_path = workdir / "daemon.log"
    archive = workdir / "archive"
    archiver = subprocess.Popen(
        [sys.executable, "-c", "from proad.edge.cli import archive_main; raise SystemExit(archive_main())",
         "--out", str(archive), "--endpoint", ports.tcp(ports.ng_channel), "--no-fsync"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    print(f"starting the daemon (log: {log_path}): synthetic '{category}' camera at {fps:g} fps for {seconds:g} s, "
          f"ONNX Runtime on {model}")
    sub = Subscriber(ports.tcp(ports.publish))  # before the daemon binds: ZeroMQ connects when it appears
    with open(log_path, "w") as log:
        daemon = subprocess.Popen(
            [sys.executable, "-c", "from proad.edge.cli import edge_main; raise SystemExit(edge_main())",
             "run", "--config", str(config)],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        truth: Counter[str] = Counter()
        latencies, first, last, status, status_seq = [], None, None, None, 0
        try:
            while True:
                r = sub.recv(timeout_ms=3000)
                if r is None:
                    if daemon.poll() is not None:
                        break
                    continue
                first = first or time.monotonic()
                last = time.monotonic()
                h = r.header
                injected = h.annotations.get("injected_defect", "none") != "none"
                truth[("defect" if injected else "normal", h.decision)] += 1
                latencies.append(h.latency_ms.get("total", 0.0))
                print(format_line(r), flush=True)
                if h.decision == "NG":
                    save_overlay(r, overlays)
                if h.seq % 50 == 0:
                    with contextlib.suppress(TimeoutError):
                        status, status_seq = query_status(ports.tcp(ports.status), 500), h.seq
        finally:
            if daemon.poll() is None:
                daemon.terminate()
            code = daemon.wait(30)
            sub.close()
            archiver.terminate()  # the daemon gave it the spool before it exited
            archived = _archived(archiver.communicate(timeout=30)[0])
    received = sum(truth.values())
    if code != 0 or received == 0:
        print(f"the daemon exited with {code} after {received} results; see {log_path}", file=sys.stderr)
        return 1
    span = (last - first) if first and last and last > first else 1.0
    tp, fn = truth[("defect", "NG")], truth[("defect", "OK")]
    fp, tn = truth[("normal", "NG")], truth[("normal", "OK")]
    lat = np.array(latencies)
    print("\n=== summary ===")
    print(f"results received: {received} in {span:.1f} s ({received / span:.1f} FPS), missed on the wire: "
          f"{sum(sub.missed.values())}")
    if status:
        print(f"daemon, asked after result {status_seq}: frames in {sum(status['frames_in'].values())}, "
              f"dropped {status['dropped'] or 'none'}")
    print(f"latency capture->publish: p50 {np.percentile(lat, 50):.1f} ms, p99 {np.percentile(lat, 99):.1f} ms")
    print(f"defects injected: {tp + fn}; found (NG): {tp}; missed: {fn}")
    print(f"normal frames: {fp + tn}; false alarms (NG): {fp}")
    if received > CAMERA_POOL:
        print(f"(the camera cycles {CAMERA_POOL} rendered frames: each was judged about {received / CAMERA_POOL:.0f} "
              "times, so one misjudged frame repeats in these counts)")
    print(f"NG results archived through the NG channel: {archived} of {tp + fp} (in {archive}/)")
    print(f"NG overlays: {overlays}/")
    return 0


def _archived(archiver_stdout: str) -> int:
    """How many NG results the archiver stored (its last line is a JSON summary)."""
    lines = archiver_stdout.strip().splitlines()
    try:
        return int(json.loads(lines[-1])["stored"]) if lines else 0
    except (ValueError, KeyError):
        return 0


def _bridge_summary(log: Path) -> str:
    """A bridge's counters (the JSON line it prints when it stops), in words."""
    try:
        counters = json.loads(log.read_text().strip().splitlines()[-1])
    except (OSError, ValueError, IndexError):
        return ""
    if counters.get("bridge") == "mqtt":
        return (f"; {counters.get('ng_published', 0)} NG acknowledged by the broker, "
                f"{counters.get('ok_published', 0)} OK published")
    if "published" in counters:
        return f"; {counters['published']} results written to OPC UA, {counters.get('acknowledged', 0)} acknowledged"
    return ""
