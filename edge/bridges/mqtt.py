"""``proad-bridge mqtt``: every result into the plant's MQTT broker, every NG at least once.

Plants collect from an MQTT broker (MES, dashboards, historians); DeepStream ships broker adapters
for the same reason. This bridge is a client of the daemon like any other, so a broker that is down
or slow never slows inspection:

- **OK results** come from the daemon's PUB stream and go out at ``qos_ok`` (0 by default). When the
  broker is down, or more than ``max_pending_ok`` of them wait in the client, the newest is dropped
  and counted (``ok_dropped`` by reason): an overloaded line loses OK messages, never NG ones.
- **NG results** come from the daemon's reliable NG channel (``daemon.ng_channel``; give the bridge a
  channel of its own with the daemon's ``ng_channels: [{name: mqtt, ...}]``, so the archivers keep
  theirs). Each goes out at ``qos_ng`` (1) and the record is acknowledged to the daemon only when
  the broker has acknowledged it (PUBACK), so an NG reaches the broker at least once across a broker
  restart, a bridge SIGKILL and a daemon restart: until then it stays in the daemon's spool. While
  the broker is away the bridge stops its heartbeat, so the daemon keeps the records instead of
  sending them to a bridge that cannot deliver. Without an NG channel, NG results are taken from
  the PUB stream at ``qos_ng``, best effort (a warning says so at start).

Topics: ``<topic_prefix>/<camera>/<OK|NG>`` carry the result header as JSON, the same fields as on
the ZeroMQ wire (:class:`~proad.edge.messages.FrameResult`); with ``attach`` also
``.../<OK|NG>/map.png`` (the anomaly map as a heatmap, 0 .. twice the threshold) and
``.../<OK|NG>/frame.jpg`` (the frame, when the daemon sent one). A record is acknowledged once all
its messages are. The broker's own durability is the broker's: a subscriber that must see every NG
uses a persistent session (clean session off, QoS 1), and the broker persists its queue (mosquitto:
``persistence true``) to keep it over a restart.

The broker is reconnected with exponential backoff (``reconnect_min_s`` .. ``reconnect_max_s``),
counted and logged. Counters answer on ``status_endpoint`` like the daemon's
(``proad-edge status --endpoint ...``), and are printed as JSON when the bridge stops.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, Literal

import cv2
import numpy as np
import zmq
from paho.mqtt.client import Client, MQTTErrorCode
from paho.mqtt.enums import CallbackAPIVersion
from pydantic import BaseModel, ConfigDict, Field, model_validator

from proad.edge.bridges.link import DaemonLink
from proad.edge.messages import FrameResult, WireError, as_bytes, map_to_float
from proad.edge.ng_channel import ACK, HELLO, NG, decode_record
from proad.edge.sockets import StartupError
from proad.edge.status import answer
from proad.edge.subscriber import Subscriber
from proad.viz import heatmap

log = logging.getLogger(__name__)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_max_length=4096)


class BrokerConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(1883, ge=1, le=65535)
    client_id: str | None = Field(None, max_length=128, description="None: proad-bridge-<hostname>")
    username: str | None = None
    password: str | None = None
    tls_ca: str | None = Field(None, description="CA file: connect with TLS (None: plain TCP)")
    keepalive_s: int = Field(30, ge=5, le=3600)
    reconnect_min_s: float = Field(0.5, gt=0)
    reconnect_max_s: float = Field(30.0, gt=0)

    @model_validator(mode="after")
    def _backoff(self) -> BrokerConfig:
        if self.reconnect_min_s > self.reconnect_max_s:
            raise ValueError(f"reconnect_min_s {self.reconnect_min_s} exceeds reconnect_max_s {self.reconnect_max_s}")
        return self


class MqttBridgeConfig(_Strict):
    daemon: DaemonLink = DaemonLink()
    broker: BrokerConfig = BrokerConfig()
    topic_prefix: str = Field("proad", pattern=r"^[A-Za-z0-9_./-]{1,128}$")
    qos_ok: Literal[0, 1] = 0
    qos_ng: Literal[1, 2] = 1
    retain: bool = Field(False, description="retain each camera's last OK and last NG on the broker")
    ok_results: bool = Field(True, description="publish OK results too (False: NG only)")
    attach: list[Literal["map_png", "jpeg"]] = Field(default_factory=list, description="extra messages per result")
    max_pending_ok: int = Field(200, ge=1, le=1_000_000, description="OK messages waiting in the client, at most")
    heartbeat_s: float = Field(1.0, gt=0, description="HELLO to the NG channel this often (while the broker is up)")
    status_endpoint: str | None = Field(None, description="REP endpoint answering 'status' with the counters")


class MqttBridge:
    """One loop owns the ZeroMQ sockets; paho's network thread reports connects and PUBACKs to it."""

    def __init__(self, cfg: MqttBridgeConfig, ctx: zmq.Context | None = None) -> None:
        self.cfg = cfg
        self.counters: Counter[str] = Counter()
        self.connected = threading.Event()
        self.published: queue.SimpleQueue[int] = queue.SimpleQueue()  # mids the broker took (paho's thread)
        self.ng_waiting: dict[str, set[int]] = {}  # result_id -> mids not yet acknowledged by the broker
        self.mid_record: dict[int, str] = {}
        # stream messages: id -> (the result's decision, None for an attachment; QoS; the connection it went on)
        self.ok_waiting: dict[int, tuple[str | None, int, int]] = {}
        self.closing = False
        self.connections = 0  # paho's thread counts connects; the loop compares to forget lost QoS 0 messages
        self.connections_seen = 0
        self.last_hello = 0.0
        ctx = ctx or zmq.Context.instance()
        keys = cfg.daemon.keys()
        self.stream = Subscriber(cfg.daemon.endpoint, cfg.daemon.camera, None, cfg.daemon.hwm, ctx, keys)
        self.dealer: zmq.Socket | None = None
        if cfg.daemon.ng_channel is not None:
            self.dealer = ctx.socket(zmq.DEALER)
            self.dealer.setsockopt(zmq.LINGER, 2000)  # let the last ACKs leave
            self.dealer.setsockopt(zmq.MAXMSGSIZE, 256 * 1024 * 1024)
            if keys is not None:
                keys.apply(self.dealer)
            self.dealer.connect(cfg.daemon.ng_channel)
        else:
            log.warning("no daemon.ng_channel: NG results come from the PUB stream, best effort (not at least once)")
        self.status: zmq.Socket | None = None
        if cfg.status_endpoint is not None:
            self.status = ctx.socket(zmq.REP)
            self.status.setsockopt(zmq.LINGER, 0)
            self.status.setsockopt(zmq.MAXMSGSIZE, 4096)
            try:
                self.status.bind(cfg.status_endpoint)
            except zmq.ZMQError as exc:
                self.close()
                raise StartupError(f"cannot bind the status socket to {cfg.status_endpoint}: {exc}") from exc
            self.status_endpoint = self.status.getsockopt_string(zmq.LAST_ENDPOINT)
        try:
            self.mqtt = self._client()
        except (OSError, ValueError) as exc:  # e.g. an unreadable TLS CA file
            self.close()
            raise StartupError(f"cannot set up the MQTT client: {exc}") from exc

    # -- MQTT ----------------------------------------------------------------------------------
    def _client(self) -> Client:
        b = self.cfg.broker
        client_id = b.client_id or f"proad-bridge-{socket.gethostname()}-{os.getpid()}"  # two bridges never clash
        client = Client(CallbackAPIVersion.VERSION2, client_id=client_id)
        if b.username is not None:
            client.username_pw_set(b.username, b.password)
        if b.tls_ca is not None:
            client.tls_set(ca_certs=b.tls_ca)
        client.reconnect_delay_set(b.reconnect_min_s, b.reconnect_max_s)  # type: ignore[arg-type] # floats work
        client.max_queued_messages_set(0)  # NG messages are bounded by the daemon's window; OK ones by us
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_connect_fail = self._on_connect_fail
        client.on_publish = lambda _c, _u, mid, _rc, _p: self.published.put(mid)
        client.connect_async(b.host, b.port, b.keepalive_s)
        client.loop_start()  # connects, and reconnects with backoff, in paho's own thread
        return client

    def _on_connect(self, _client: Client, _userdata: object, _flags: object, reason: Any, _props: object) -> None:
        if reason.is_failure:
            self.counters["broker_refused"] += 1
            log.error("MQTT broker %s:%d refused the connection: %s", self.cfg.broker.host, self.cfg.broker.port,
                      reason)
            return
        self.counters["broker_connects"] += 1
        self.connections += 1
        log.info("connected to the MQTT broker %s:%d", self.cfg.broker.host, self.cfg.broker.port)
        self.connected.set()

    def _on_connect_fail(self, _client: Client, _userdata: object) -> None:
        self.counters["broker_connect_failures"] += 1
        n = self.counters["broker_connect_failures"]
        if n in (1, 10, 100) or n % 1000 == 0:  # logged, but not once per backoff step forever
            log.error("cannot reach the MQTT broker %s:%d (%d attempts so far); retrying with backoff",
                      self.cfg.broker.host, self.cfg.broker.port, n)

    def _on_disconnect(self, _client: Client, _userdata: object, _flags: object, reason: Any, _props: object) -> None:
        if self.connected.is_set() and not self.closing:
            self.counters["broker_disconnects"] += 1
            log.warning("lost the MQTT broker (%s); reconnecting with backoff", reason)
        self.connected.clear()

    def _publish(self, header: FrameResult, amap: np.ndarray, jpeg: bytes | None, qos: int) -> list[int]:
        """The header (and attachments); returns the message ids, or [] if the client refused them."""
        topic = f"{self.cfg.topic_prefix}/{header.camera_id}/{header.decision}"
        messages: list[tuple[str, bytes]] = [(topic, header.model_dump_json().encode())]
        if "map_png" in self.cfg.attach:
            values = map_to_float(header, amap)
            vmax = 2.0 * header.threshold if header.threshold > 0 else max(float(values.max()), 1e-6)
            messages.append((f"{topic}/map.png", cv2.imencode(".png", heatmap(values, vmax))[1].tobytes()))
        if "jpeg" in self.cfg.attach and jpeg is not None:
            messages.append((f"{topic}/frame.jpg", jpeg))
        mids = []
        for name, payload in messages:
            info = self.mqtt.publish(name, payload, qos, self.cfg.retain)
            if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN) or (
                qos == 0 and info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS
            ):  # QoS > 0 without a connection is queued by paho and sent on reconnect
                return []
            mids.append(info.mid)
        return mids

    # -- the loop ------------------------------------------------------------------------------
    def run(self, stop: threading.Event, ready: Callable[[], None] | None = None) -> None:
        poller = zmq.Poller()
        for sock in (self.stream.sock, self.dealer, self.status):
            if sock is not None:
                poller.register(sock, zmq.POLLIN)
        if ready is not None:
            ready()
        while not stop.is_set():
            self._heartbeat()
            events = dict(poller.poll(100))
            if self.stream.sock in events:
                self._take_stream()
            if self.dealer is not None and self.dealer in events:
                self._take_records()
            if self.status is not None and self.status in events:
                self._answer_status()
            self._settle()
        deadline = time.monotonic() + 5.0  # what the broker has not acknowledged yet stays in the daemon's spool
        while self.ng_waiting and self.connected.is_set() and time.monotonic() < deadline:
            self._settle()
            time.sleep(0.05)  # waiting for paho's thread to report PUBACKs

    def _heartbeat(self) -> None:
        """HELLO only while the broker is up: a bridge that cannot deliver gets no records."""
        now = time.monotonic()
        if self.dealer is not None and self.connected.is_set() and now - self.last_hello >= self.cfg.heartbeat_s:
            self._send([HELLO])
            self.last_hello = now

    def _send(self, parts: list[bytes]) -> None:
        assert self.dealer is not None
        try:  # never block: with no daemon there the daemon resends, or the next heartbeat says hello
            self.dealer.send_multipart(parts, zmq.NOBLOCK)
        except zmq.Again:
            self.counters["daemon_unreachable"] += 1

    def _take_stream(self) -> None:
        while (r := self.stream.recv(timeout_ms=0)) is not None:
            h = r.header
            self.counters[f"received_{h.decision.lower()}"] += 1
            if h.decision == "NG" and self.dealer is not None:
                continue  # the NG channel delivers it, at least once
            if h.decision == "OK" and not self.cfg.ok_results:
                continue
            qos = self.cfg.qos_ok if h.decision == "OK" else self.cfg.qos_ng
            if not self.connected.is_set():
                self._drop(h.decision, "broker_down")
            elif len(self.ok_waiting) >= self.cfg.max_pending_ok:
                self._drop(h.decision, "backlog")
            elif mids := self._publish(h, r.map, r.frame_jpeg, qos):
                gen = self.connections
                self.ok_waiting.update({mid: (h.decision if i == 0 else None, qos, gen) for i, mid in enumerate(mids)})
            else:
                self._drop(h.decision, "client_refused")

    def _drop(self, decision: str, reason: str) -> None:
        self.counters[f"{decision.lower()}_dropped.{reason}"] += 1
        if self.counters[f"{decision.lower()}_dropped.{reason}"] in (1, 10, 100, 1000, 10000):
            log.warning("%s results dropped (%s): %d so far", decision, reason,
                        self.counters[f"{decision.lower()}_dropped.{reason}"])

    def _take_records(self) -> None:
        assert self.dealer is not None
        while True:
            try:
                parts = [as_bytes(f) for f in self.dealer.recv_multipart(zmq.NOBLOCK, copy=False)]
            except zmq.Again:
                return
            if len(parts) < 2 or parts[0] != NG:
                self.counters["invalid_records"] += 1
                continue
            result_id = parts[1].decode("ascii", errors="replace")
            self.counters["ng_records"] += 1
            if result_id in self.ng_waiting:
                continue  # sent again by the daemon while the broker still has it: it gets its ACK
            if not self.connected.is_set():
                self.counters["ng_deferred"] += 1  # not acknowledged: the daemon keeps it and sends it again
                continue
            try:
                header, amap, jpeg = decode_record(result_id, parts[2:])
            except WireError as exc:  # acknowledged, so it cannot loop forever; logged and counted
                log.error("NG record %s does not parse (%s); acknowledged and not published", result_id, exc)
                self.counters["ng_rejected"] += 1
                self._send([ACK, parts[1]])
                continue
            mids = self._publish(header, amap, jpeg, self.cfg.qos_ng)
            if not mids:
                self.counters["ng_deferred"] += 1
                continue
            self.ng_waiting[result_id] = set(mids)
            for mid in mids:
                self.mid_record[mid] = result_id

    def _settle(self) -> None:
        """Turn the broker's acknowledgements into the daemon's: an NG record is done when all its are."""
        self._take_acks()
        if self.connections != self.connections_seen:  # reconnected: QoS 0 messages sent before were lost
            self.connections_seen = self.connections
            for mid, (decision, qos, gen) in list(self.ok_waiting.items()):
                if qos == 0 and gen < self.connections:  # QoS 1 ones paho sends again itself
                    del self.ok_waiting[mid]
                    if decision is not None:
                        self._drop(decision, "broker_lost")

    def _take_acks(self) -> None:
        while True:
            try:
                mid = self.published.get_nowait()
            except queue.Empty:
                return
            if mid in self.ok_waiting:
                decision = self.ok_waiting.pop(mid)[0]
                if decision is not None:  # NG here only without an NG channel: best effort
                    self.counters["ok_published" if decision == "OK" else "ng_published_best_effort"] += 1
                continue
            result_id = self.mid_record.pop(mid, None)
            if result_id is None:
                continue
            waiting = self.ng_waiting.get(result_id)
            if waiting is None:
                continue
            waiting.discard(mid)
            if not waiting:
                del self.ng_waiting[result_id]
                self.counters["ng_published"] += 1
                self._send([ACK, result_id.encode()])

    def _answer_status(self) -> None:
        assert self.status is not None
        request = b"".join(self.status.recv_multipart())
        reply = answer(request, self.snapshot, lambda: self.counters.update(["invalid_status_requests"]))
        self.status.send(json.dumps(reply).encode())

    def snapshot(self) -> dict[str, Any]:
        return {"bridge": "mqtt", "broker_connected": self.connected.is_set(), "missed": dict(self.stream.missed),
                "invalid": self.stream.invalid, "ng_waiting_for_broker": len(self.ng_waiting),
                "ok_waiting_for_broker": len(self.ok_waiting), **dict(sorted(self.counters.items()))}

    def close(self) -> None:
        self.closing = True
        if hasattr(self, "mqtt"):
            self.mqtt.disconnect()
            self.mqtt.loop_stop()
        self.stream.close()
        for sock in (self.dealer, self.status):
            if sock is not None:
                sock.close()


def run_bridge(cfg: MqttBridgeConfig, stop: threading.Event, ready: Callable[[], None] | None = None) -> dict[str, Any]:
    """Bridge until ``stop`` is set; ``ready`` is called once the sockets are set up. Returns the counters."""
    bridge = MqttBridge(cfg)
    try:
        bridge.run(stop, ready)
    finally:
        bridge.close()
    return bridge.snapshot()
