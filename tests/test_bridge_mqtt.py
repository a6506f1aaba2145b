"""proad-bridge mqtt against a real broker (mosquitto): every NG arrives at least once, across a broker
restart and a bridge SIGKILL, and a stopped broker slows neither the daemon nor other subscribers."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

paho = pytest.importorskip("paho.mqtt.client", reason="paho-mqtt is not installed (pip install '.[bridges]')")

from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402

from proad.edge.config import PipelineConfig  # noqa: E402
from proad.edge.daemon import Daemon  # noqa: E402
from proad.edge.subscriber import Subscriber  # noqa: E402
from services import MOSQUITTO, Mosquitto  # noqa: E402

pytestmark = pytest.mark.skipif(MOSQUITTO is None, reason="mosquitto is not installed (apt-get install mosquitto; "
                                "`make test` installs it where it can)")


class Listener:
    """A plant-side MQTT client with a persistent session (clean session off, QoS 1): what a consumer
    that must see every NG does. Its subscription and queue survive the broker's restart."""

    def __init__(self, port: int, topic: str) -> None:
        self.lock = threading.Lock()
        self.ng: list[dict] = []
        self.subscribed = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id="proad-test-listener", clean_session=False)
        self.client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(1, 2)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_message(self, _c: object, _u: object, msg) -> None:
        with self.lock:
            self.ng.append(json.loads(msg.payload))

    def ids(self) -> set[str]:
        with self.lock:
            return {h["result_id"] for h in self.ng}

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _wait(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)  # poll interval


def _bridge(config: Path) -> subprocess.Popen:
    code = "import sys; sys.modules['torch'] = None\nfrom proad.edge.bridges.cli import main; sys.exit(main())"
    return subprocess.Popen([sys.executable, "-c", code, "mqtt", "--config", str(config)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture
def broker(tmp_path: Path):  # -> Mosquitto, stopped whatever the test does
    broker = Mosquitto(tmp_path / "broker").start()
    yield broker
    broker.stop()


def test_every_ng_reaches_the_broker_across_restarts_and_kills(board_model, backend, broker, tmp_path: Path) -> None:
    listener = Listener(broker.port, "proad/+/NG")
    frames = 240
    cfg = PipelineConfig.model_validate({
        "cameras": [{"id": "cam0", "source": {"kind": "synthetic", "category": "board", "fps": 30,
                                              "defect_rate": 0.35, "seed": 3, "max_frames": frames}}],
        "backend": {"kind": "onnxruntime", "model": str(board_model[1]), "threads": 1, "max_batch": 4},
        "publish": {"endpoint": "tcp://127.0.0.1:*", "jpeg": "ng"},
        "status": {"endpoint": None},
        "queues": {"when_full": "wait"},
        "ng_channel": {"name": "archive", "endpoint": "tcp://127.0.0.1:*", "spool_dir": str(tmp_path / "spool")},
        "ng_channels": [{"name": "mqtt", "endpoint": "tcp://127.0.0.1:*", "spool_dir": str(tmp_path / "spool_mqtt"),
                         "fsync": False, "ack_timeout_s": 3.0, "archiver_timeout_s": 2.0}],
        "log_level": "WARNING",
    })  # fmt: skip
    daemon = Daemon(cfg, backend=backend)
    bridge_cfg = tmp_path / "mqtt.json"
    bridge_cfg.write_text(json.dumps({
        "daemon": {"endpoint": daemon.publisher.endpoint, "ng_channel": daemon.ng_channels[1].endpoint,
                   "status_endpoint": None},
        "broker": {"port": broker.port, "reconnect_min_s": 0.5, "reconnect_max_s": 1},
        "attach": ["map_png"], "heartbeat_s": 0.2,
    }))  # fmt: skip
    other = Subscriber(daemon.publisher.endpoint)  # another subscriber, which a dead broker must not slow
    bridge = _bridge(bridge_cfg)
    try:
        assert listener.subscribed.wait(30), "the listener's subscription was not acknowledged"
        assert daemon.publisher.wait_for_subscriptions(2, 60), "the bridge and the subscriber did not subscribe"
        got = []

        def take() -> int:
            while (r := other.recv(timeout_ms=0)) is not None:
                got.append(r)
            return len(got)

        def ng_published() -> int:
            return daemon.telemetry.snapshot()["ng"].get("cam0", 0)

        daemon.start()
        _wait(lambda: ng_published() >= 10 and take() > 0, 60, "the first NG results")
        broker.stop()  # the broker goes away mid-run...
        published_then, ng_then = take(), ng_published()
        _wait(lambda: ng_published() >= ng_then + 8 and take() > published_then, 60, "inspection going on")
        broker.start()  # ...and comes back
        ng_then = ng_published()
        _wait(lambda: ng_published() >= ng_then + 5, 60, "NG results after the restart")
        bridge.send_signal(signal.SIGKILL)  # the bridge dies with records in flight...
        bridge.wait(30)
        ng_then = ng_published()
        _wait(lambda: ng_published() >= ng_then + 5, 60, "NG results while the bridge is dead")
        bridge = _bridge(bridge_cfg)  # ...and is started again
        assert daemon.wait(120), "the camera did not finish"
        _wait(lambda: (take(), len(got))[1] >= frames, 60, "every result at the other subscriber")
        expected = {r.header.result_id for r in got if r.header.decision == "NG"}
        _wait(lambda: expected <= listener.ids(), 90, "every NG at the MQTT listener")
        assert other.missed["cam0"] == 0  # the dead broker slowed no other subscriber
        assert [r.header.seq for r in got] == list(range(frames))
        snap = daemon.telemetry.snapshot()
        assert snap["ng"]["cam0"] == len(expected) >= 25
        assert not snap["dropped"], snap["dropped"]
        _wait(lambda: daemon.telemetry.snapshot()["gauges"].get("spool_depth.mqtt", 1) == 0, 30,
              "the bridge's acknowledgements emptying its spool")
        with listener.lock:
            headers = [h for h in listener.ng if h["result_id"] in expected]
        assert all(h["decision"] == "NG" and h["camera_id"] == "cam0" for h in headers)
        # the archive's own spool (no archiver on it) keeps every NG; its gauge follows within a loop turn
        assert set(daemon.spool.pending(set(), frames)) == expected
        _wait(lambda: daemon.telemetry.snapshot()["gauges"].get("spool_depth") == len(expected), 30,
              "the archive's spool gauge counting every NG")
    finally:
        if bridge.poll() is None:
            bridge.terminate()
        out, err = bridge.communicate(timeout=30)
        daemon.stop()
        other.close()
        listener.close()
        broker.stop()
    assert bridge.returncode == 0, err[-2000:]
    counters = json.loads(out.strip().splitlines()[-1])
    assert counters["ng_published"] >= 1 and counters["broker_connects"] >= 1


def test_a_broker_that_is_down_is_counted_not_fatal() -> None:
    """No broker at all: the bridge keeps running, counts every OK result it could not send, stops cleanly,
    and its status socket answers as the daemon's does (a wrong request gets an error and is counted)."""
    import numpy as np
    import zmq

    from proad.edge.bridges.mqtt import MqttBridge, MqttBridgeConfig
    from proad.edge.messages import FrameResult, encode_map, topic
    from proad.edge.status import query_status
    from services import free_port

    pub = zmq.Context.instance().socket(zmq.PUB)
    endpoint = f"tcp://127.0.0.1:{pub.bind_to_random_port('tcp://127.0.0.1')}"
    cfg = MqttBridgeConfig.model_validate({"daemon": {"endpoint": endpoint, "status_endpoint": None},
                                           "broker": {"port": free_port()}, "status_endpoint": "tcp://127.0.0.1:*"})
    bridge, stop = MqttBridge(cfg), threading.Event()
    thread = threading.Thread(target=bridge.run, args=(stop,))
    thread.start()
    try:
        deadline, seq = time.monotonic() + 60, 0
        while bridge.counters["received_ok"] < 50:  # until 50 have arrived (the first ones meet no subscription yet)
            assert time.monotonic() < deadline and thread.is_alive(), "the bridge stopped taking results"
            h = FrameResult(camera_id="cam0", seq=seq, frame_index=seq, result_id=f"r-cam0-{seq}", capture_ts=0,
                            publish_ts=0, score=0.1, threshold=1.0, decision="OK", model_id="m", map_shape=(4, 4),
                            map_dtype="float16")
            pub.send_multipart([topic("cam0", "OK"), h.model_dump_json().encode(),
                                encode_map(np.zeros((4, 4), np.float32), "float16", 1.0).tobytes()])
            seq += 1
            time.sleep(0.01)  # a 100 fps stream
        status = query_status(bridge.status_endpoint, timeout_ms=30_000)
        assert status["bridge"] == "mqtt" and status["broker_connected"] is False and status["received_ok"] >= 50
        req = zmq.Context.instance().socket(zmq.REQ)
        req.setsockopt(zmq.LINGER, 0)
        req.connect(bridge.status_endpoint)
        req.send(b"counters please")
        assert req.poll(30_000), "the bridge did not answer a wrong status request"
        assert "send b'status'" in json.loads(req.recv())["error"]
        req.close(0)
    finally:
        stop.set()
        thread.join(30)
        bridge.close()
        pub.close(0)
    assert not thread.is_alive()
    counters = bridge.snapshot()
    assert counters["broker_connected"] is False
    assert counters["received_ok"] == counters["ok_dropped.broker_down"] >= 50  # every OK that came is counted
    assert counters["invalid_status_requests"] == 1
