"""``proad-bridge opcua``: an OPC UA server that shows a PLC each camera's last result.

Why: a PLC decides what happens to the part under the camera; most PLCs speak OPC UA, not ZeroMQ.
The bridge is a separate process that subscribes to the daemon like any client (DESIGN §1), so a
bridge that is slow, down or killed never slows inspection; it only ever shows what it received.

Address space (namespace ``namespace``, default ``urn:proad-edge``; string NodeIds, so a PLC can
type them: ``ns=<index of urn:proad-edge>;s=ProadEdge.line1.Decision``)::

    Objects/ProadEdge
      DaemonAlive       Boolean   the daemon answered its status request, or sent a result, within stale_after_ms
      ResultsReceived   UInt64    results the bridge received (every camera)
      Missed            UInt64    results lost on the way to the bridge (sequence gaps)
      Invalid           UInt64    messages that were not valid results (skipped)
      Ignored           UInt64    results of cameras not in ``cameras``
      <camera>                    one object per configured camera; also an event notifier (see below)
        Decision        String    "OK" or "NG"
        IsNG            Boolean   Decision == "NG"
        Score           Double    the anomaly score; NaN for a fail-safe NG (no score came in time)
        Threshold       Double    the OK/NG threshold the score was compared with
        Seq             UInt64    the result's number, contiguous per camera (the handshake's key)
        FrameIndex      UInt64    the camera's capture counter
        ResultId        String    <run>-<camera>-<seq>, unique across daemon restarts
        CaptureTime     DateTime  when the frame was captured (UTC)
        Reason          String    score (the model decided), or why a fail-safe NG: timeout, queue_full, backend_error
        LatencyMs       Double    capture to publish, in ms
        ModelId         String    the model that decided
        ResultReady     Boolean   handshake: True when a new result is written, False once acknowledged
        Acknowledge(Seq UInt64)   handshake: method the PLC calls with the Seq it has taken over
        AckSeq          UInt64    handshake, for PLCs without method calls: write the Seq here instead
        Acknowledged    UInt64    results acknowledged
        Unacknowledged  UInt64    results replaced by a newer one before they were acknowledged
        AckRejected     UInt64    acknowledgements of a Seq that is not the one shown (too late or wrong)
        ResultsReceived UInt64    results of this camera
        NG              UInt64    NG results of this camera (fail-safe NGs included)
        FailsafeNG      UInt64    NG results without a score (timeout, queue_full, backend_error)
        Missed          UInt64    results of this camera lost on the way to the bridge
        DaemonFramesIn  UInt64    frames the daemon captured from this camera (its status; 0 without one)
        DaemonDropped   UInt64    frames the daemon dropped, all reasons (its status)
        Stale           Boolean   no result of this camera within stale_after_ms (True until the first)
        LastResultAgeMs Double    ms since the bridge received this camera's last result (NaN before the first)

Until the first result of a camera its result variables read with status ``BadWaitingForInitialData``.

**Every result, in order: events.** Variables show the *newest* result; OPC UA data-change
notifications may coalesce fast changes. A client that must see every result subscribes to events
of the camera object: one ``ProadResultEventType`` event per result, in order, never coalesced
(use a monitored-item queue size of a few hundred), with the fields CameraId, Seq, Decision, IsNG,
Score, Threshold, FrameIndex, ResultId, CaptureTime, Reason, LatencyMs, ModelId (``Time`` is the
capture time). The event type is ``Types/EventTypes/BaseEventType/ProadResultEventType`` (browse
name in the bridge's namespace).

**Handshake (result ready / acknowledged).** For each result the bridge writes the result variables,
then ``ResultReady = True``, then fires the event. The PLC reads the result (read ``Seq`` with the
other values in one Read request), acts on it, and acknowledges by calling ``Acknowledge(Seq)``
(or writing ``AckSeq``); that clears ``ResultReady`` and counts ``Acknowledged``. Acknowledging a
Seq that is not the one shown changes nothing and counts ``AckRejected`` (the call answers
``BadInvalidState``); acknowledging the shown result again is harmless. The bridge never waits for
the PLC: when the next result comes before the acknowledgement, the newest result is shown, the
replaced one is counted in ``Unacknowledged``, and ``ResultReady`` stays True. A PLC that must
handle every part compares ``Seq`` with the last one it acknowledged and treats a gap as NG.

**Fail-safe rule.** The daemon gives every frame a result within ``failsafe.window_ms`` of its
capture (its own config): its score, or an NG with ``Reason`` timeout / queue_full / backend_error
(``Score`` NaN). The bridge adds what the daemon cannot say itself: ``Stale`` turns True when a
camera had no result for ``stale_after_ms``, and ``DaemonAlive`` turns False when neither a status
answer nor a result came for ``stale_after_ms`` (a lost daemon connection is also logged).
**A PLC must treat as NG**: a Decision other than "OK", a result variable with a bad status, a
``Stale`` camera, ``DaemonAlive`` False, a lost OPC UA connection, and no new result (``ResultReady``
or ``Seq`` unchanged) within its own cycle time. Set ``stale_after_ms`` above the camera's frame
interval plus ``failsafe.window_ms``.

**Security.** Anonymous access is off unless ``allow_anonymous: true``. Clients log in with a user
name and password (``users``, or ``users_file`` with one ``name:password`` per line, ``#`` comments;
keep it readable by the bridge's user only) or with a client certificate (``user_certificates``:
user name -> certificate file, PEM or DER, for X509 identity tokens; these need a signing policy).
``security`` lists the endpoints offered: ``None`` and/or the asyncua policies
``Basic256Sha256_Sign``, ``Basic256Sha256_SignAndEncrypt``, ``Aes128Sha256RsaOaep_Sign[AndEncrypt]``,
``Aes256Sha256RsaPss_Sign[AndEncrypt]``; any but ``None`` needs ``certificate`` and ``private_key``
(the server's, e.g. made with asyncua's ``cert_gen``). With ``None`` only, passwords cross the
network in plain text: fine on loopback (the default endpoint), not on a plant network. The bridge
binds loopback by default; set ``endpoint`` to ``opc.tcp://0.0.0.0:4840/proad/`` to serve the network.

Example config (YAML)::

    daemon: {endpoint: "tcp://127.0.0.1:5555", status_endpoint: "tcp://127.0.0.1:5556"}
    endpoint: "opc.tcp://0.0.0.0:4840/proad/"
    cameras: [line1, line2]
    users_file: /etc/proad/opcua-users
    security: [Basic256Sha256_SignAndEncrypt]
    certificate: /etc/proad/opcua-server.der
    private_key: /etc/proad/opcua-server.pem
    stale_after_ms: 3000

A bad config is a :class:`~proad.edge.config.ConfigError`; an endpoint that cannot be bound, a
missing certificate or an unreadable users file is a :class:`BridgeStartupError` (exit 2).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlparse

import zmq
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator

from proad.edge.bridges.link import DaemonLink
from proad.edge.messages import FrameResult
from proad.edge.sockets import StartupError
from proad.edge.status import query_status
from proad.edge.subscriber import Subscriber

try:
    from asyncua import Server
    from asyncua import ua as _ua
    from asyncua.crypto import uacrypto
    from asyncua.crypto.permission_rules import User, UserRole
except ImportError:  # the bridges extra is not installed; run_bridge says so
    Server = _ua = uacrypto = User = UserRole = None  # type: ignore[assignment,misc]
ua: Any = _ua  # untyped here: asyncua's annotations want its NewTypes (Int32, UInt32...) where plain values do

log = logging.getLogger(__name__)

#: A bridge that cannot start (cannot bind, certificate or users file unreadable): the CLI exits 2.
BridgeStartupError = StartupError

SecurityMode = Literal[
    "None",
    "Basic256Sha256_Sign",
    "Basic256Sha256_SignAndEncrypt",
    "Aes128Sha256RsaOaep_Sign",
    "Aes128Sha256RsaOaep_SignAndEncrypt",
    "Aes256Sha256RsaPss_Sign",
    "Aes256Sha256RsaPss_SignAndEncrypt",
]
_CameraId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
_UserName = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=r"^[^:\s]+$")]

ROOT = "ProadEdge"
EVENT_TYPE = "ProadResultEventType"
# name -> VariantType name; the result of one frame (variables, and the fields of its event)
RESULT_FIELDS = {
    "Decision": "String", "IsNG": "Boolean", "Score": "Double", "Threshold": "Double", "Seq": "UInt64",
    "FrameIndex": "UInt64", "ResultId": "String", "CaptureTime": "DateTime", "Reason": "String",
    "LatencyMs": "Double", "ModelId": "String",
}  # fmt: skip
# name -> (VariantType name, initial value): handshake, counters and health of one camera
CAMERA_STATE: dict[str, tuple[str, Any]] = {
    "ResultReady": ("Boolean", False), "Acknowledged": ("UInt64", 0), "Unacknowledged": ("UInt64", 0),
    "AckRejected": ("UInt64", 0), "ResultsReceived": ("UInt64", 0), "NG": ("UInt64", 0),
    "FailsafeNG": ("UInt64", 0), "Missed": ("UInt64", 0), "DaemonFramesIn": ("UInt64", 0),
    "DaemonDropped": ("UInt64", 0), "Stale": ("Boolean", True), "LastResultAgeMs": ("Double", math.nan),
}  # fmt: skip
ROOT_STATE: dict[str, tuple[str, Any]] = {
    "DaemonAlive": ("Boolean", False), "ResultsReceived": ("UInt64", 0), "Missed": ("UInt64", 0),
    "Invalid": ("UInt64", 0), "Ignored": ("UInt64", 0),
}  # fmt: skip


class OpcUaBridgeConfig(BaseModel):
    """``proad-bridge opcua``'s config (see the module docstring for what each part means)."""

    model_config = ConfigDict(extra="forbid", frozen=True, str_max_length=4096)

    daemon: DaemonLink = DaemonLink()
    endpoint: str = Field("opc.tcp://127.0.0.1:4840/proad/", description="where the OPC UA server listens")
    namespace: str = Field("urn:proad-edge", min_length=1, description="namespace URI of the ProadEdge nodes")
    application_uri: str = Field("urn:proad-edge:opcua-bridge", min_length=1,
                                 description="the server's ApplicationUri (a server certificate should name it)")
    cameras: list[_CameraId] = Field(min_length=1, max_length=64, description="camera ids shown to OPC UA clients")
    users: dict[_UserName, Annotated[str, StringConstraints(min_length=1, max_length=1024)]] | None = Field(
        None, description="user name -> password for user/password logins"
    )
    users_file: str | None = Field(None, description="more users: one name:password per line, # comments")
    user_certificates: dict[_UserName, str] | None = Field(
        None, description="user name -> client certificate file (PEM/DER) for certificate logins"
    )
    allow_anonymous: bool = Field(False, description="let clients in without credentials")
    security: list[SecurityMode] = Field(
        ["None"], min_length=1, description="the security policies the endpoint offers"
    )
    certificate: str | None = Field(None, description="the server's certificate (DER or PEM), for signed policies")
    private_key: str | None = Field(None, description="the server's private key (PEM), for signed policies")
    stale_after_ms: float = Field(3000.0, gt=0, le=3_600_000,
                                  description="no result (and no status answer) this long: Stale / DaemonAlive False")
    status_interval_ms: float = Field(1000.0, ge=50, le=600_000, description="how often the daemon's status is asked")
    status_timeout_ms: int = Field(1000, ge=10, le=60_000, description="how long a status answer is waited for")
    backlog: int = Field(1000, ge=1, le=1_000_000,
                         description="results received and not yet written to OPC UA; beyond it the bridge stops "
                                     "reading and the daemon drops for it (counted in Missed), never waits")

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, value: str) -> str:
        url = urlparse(value)
        try:
            port = url.port
        except ValueError as exc:
            raise ValueError(f"endpoint {value!r}: {exc}") from exc
        if url.scheme != "opc.tcp" or not url.hostname or port is None:
            raise ValueError(f"endpoint {value!r}: expected opc.tcp://HOST:PORT/PATH")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> OpcUaBridgeConfig:
        dupes = sorted({c for c in self.cameras if self.cameras.count(c) > 1})
        if dupes:
            raise ValueError(f"camera ids must be unique, repeated: {', '.join(dupes)}")
        nested = sorted(f"{a} / {b}" for a in self.cameras for b in self.cameras if b.startswith(a + "."))
        if nested:  # node ids are ProadEdge.<camera>.<name>: "a" and "a.Seq" would be one node
            raise ValueError(f"camera ids whose node ids would collide: {', '.join(nested)}")
        clash = sorted(set(self.cameras) & set(ROOT_STATE))
        if clash:
            raise ValueError(f"camera ids {clash} clash with the variables of {ROOT}")
        if self.daemon.camera is not None and self.daemon.camera not in self.cameras:
            raise ValueError(f"daemon.camera {self.daemon.camera!r} is not one of cameras {self.cameras}")
        if len(set(self.security)) != len(self.security):
            raise ValueError(f"security lists a policy twice: {self.security}")
        signed = [s for s in self.security if s != "None"]
        if signed and (self.certificate is None or self.private_key is None):
            raise ValueError(f"security {signed} needs the server's certificate and private_key")
        if self.user_certificates and not signed:
            raise ValueError("user_certificates needs a signed security policy (e.g. Basic256Sha256_SignAndEncrypt)")
        if not (self.users or self.users_file or self.user_certificates or self.allow_anonymous):
            raise ValueError("nobody could log in: set users, users_file or user_certificates "
                             "(or allow_anonymous: true)")
        return self


def load_users(cfg: OpcUaBridgeConfig) -> dict[str, str]:
    """``users`` plus ``users_file`` (``name:password`` per line); raises :class:`BridgeStartupError`."""
    users = dict(cfg.users or {})
    if cfg.users_file is None:
        return users
    path = Path(cfg.users_file)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BridgeStartupError(f"users_file {path}: cannot read it: {exc}") from exc
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, password = line.partition(":")
        if not sep or not name.strip() or not password:
            raise BridgeStartupError(f"users_file {path} line {number}: expected name:password")
        users[name.strip()] = password
    if not users and not cfg.user_certificates and not cfg.allow_anonymous:
        raise BridgeStartupError(f"users_file {path} holds no users: nobody could log in")
    return users


class _Users:
    """asyncua's user manager: a password, a known client certificate, or anonymous when allowed.

    Every admitted user gets the role ``User`` (read, call, write what is writable); nobody gets
    ``Admin`` (which may change the address space)."""

    def __init__(self, passwords: dict[str, str], certificates: dict[bytes, str], allow_anonymous: bool) -> None:
        self.passwords = {name: pw.encode() for name, pw in passwords.items()}
        self.certificates = certificates
        self.allow_anonymous = allow_anonymous
        self.refused = 0

    def get_user(self, iserver: Any, username: str | None = None, password: Any = None, certificate: Any = None):
        if username is not None:
            given = password.encode() if isinstance(password, str) else bytes(password or b"")
            expected = self.passwords.get(username)
            # compare even for an unknown user, so the time taken does not tell which names exist
            ok = hmac.compare_digest(given, expected if expected is not None else b"\0" * 32) and expected is not None
            return self._admit(username if ok else None, f"user {username!r} (wrong user name or password)")
        if certificate is not None and bytes(certificate) in self.certificates:
            return self._admit(self.certificates[bytes(certificate)], "")
        if self.allow_anonymous:
            return User(role=UserRole.User, name="anonymous")
        return self._admit(None, "an anonymous or unknown-certificate client (anonymous access is off)")

    def _admit(self, name: str | None, refused_what: str):
        if name is None:
            self.refused += 1
            log.warning("refused %s", refused_what)
            return None
        return User(role=UserRole.User, name=name)


@dataclass
class _Camera:
    """One camera's nodes and handshake state; only the event loop touches it."""

    id: str
    obj: Any  # asyncua Node
    nodes: dict[str, Any] = field(default_factory=dict)
    events: Any = None  # asyncua EventGenerator
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    seq: int | None = None  # the Seq shown
    ready: bool = False
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(
        ("Acknowledged", "Unacknowledged", "AckRejected", "ResultsReceived", "NG", "FailsafeNG", "Missed"), 0))
    last_rx: float | None = None  # monotonic time of the last result
    stale: bool = True


class _Receiver(threading.Thread):
    """Reads the daemon's results (ZeroMQ, blocking) and hands them to the event loop in order.

    When the loop falls ``backlog`` results behind, this thread waits: the daemon's PUB socket then
    drops for this subscriber at its high-water mark (inspection never waits), and the sequence
    gaps are counted as missed."""

    def __init__(self, sub: Subscriber, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue) -> None:
        super().__init__(name="opcua-receiver", daemon=True)
        self.sub, self.loop, self.queue = sub, loop, queue
        self.halt = threading.Event()
        self.invalid = 0

    def run(self) -> None:
        try:
            while not self.halt.is_set():
                r = self.sub.recv(timeout_ms=200)
                self.invalid = self.sub.invalid
                if r is None:
                    continue
                item = (r.header, self.sub.missed[r.header.camera_id])
                done = asyncio.run_coroutine_threadsafe(self.queue.put(item), self.loop)
                while not self.halt.is_set():
                    try:
                        done.result(timeout=0.2)
                        break
                    except FutureTimeout:
                        continue
                else:
                    done.cancel()
        except Exception:
            log.exception("the result receiver failed; results no longer reach OPC UA (cameras turn Stale)")
        finally:
            self.sub.close()


class _StatusPoller(threading.Thread):
    """Asks the daemon for its status every ``status_interval_ms``; keeps the last answer."""

    def __init__(self, cfg: OpcUaBridgeConfig) -> None:
        super().__init__(name="opcua-status", daemon=True)
        self.endpoint = cfg.daemon.status_endpoint or ""
        self.keys = cfg.daemon.keys()
        self.interval = cfg.status_interval_ms / 1000
        self.timeout_ms = cfg.status_timeout_ms
        self.halt = threading.Event()
        self.last_ok: float | None = None  # monotonic time of the last answer
        self.snapshot: dict[str, Any] = {}
        self.answers = self.failures = 0

    def run(self) -> None:
        answering = None
        while True:
            try:
                snap = query_status(self.endpoint, self.timeout_ms, self.keys)
                if not isinstance(snap, dict) or "error" in snap:
                    raise ValueError(f"unexpected status answer {str(snap)[:120]}")
                self.snapshot, self.last_ok = snap, time.monotonic()
                self.answers += 1
                if answering is not True:
                    log.info("the daemon answers its status at %s", self.endpoint)
                answering = True
            except (TimeoutError, zmq.ZMQError, ValueError, StartupError) as exc:
                self.failures += 1
                if answering is not False:
                    log.warning("no status from the daemon at %s: %s", self.endpoint, exc)
                answering = False
            if self.halt.wait(self.interval):
                return


def _count(snapshot: dict[str, Any], key: str, camera: str) -> int:
    """A per-camera counter of the daemon's status, 0 when absent or malformed."""
    value = snapshot.get(key, {})
    if key == "dropped":  # {reason: {camera: n}}; spool_full/spool_error count NGs not spooled (still published)
        total = 0
        reasons = value if isinstance(value, dict) else {}
        for per_camera in (n for r, n in reasons.items() if not str(r).startswith("spool_")):
            n = per_camera.get(camera, 0) if isinstance(per_camera, dict) else 0
            total += n if isinstance(n, int) and n >= 0 else 0
        return total
    n = value.get(camera, 0) if isinstance(value, dict) else 0
    return n if isinstance(n, int) and n >= 0 else 0


class _Bridge:
    def __init__(self, cfg: OpcUaBridgeConfig, passwords: dict[str, str]) -> None:
        self.cfg = cfg
        self.passwords = passwords
        self.cameras: dict[str, _Camera] = {}
        self.by_object: dict[Any, _Camera] = {}
        self.root_nodes: dict[str, Any] = {}
        self.counts = {"received": 0, "published": 0, "ignored": 0}
        self.ignored_cameras: set[str] = set()
        self.alive = False
        self.tasks: set[asyncio.Task] = set()
        self.users: _Users | None = None
        self.server: Any = None

    # -- the server and its address space --------------------------------------------------------

    async def start_server(self) -> None:
        cfg = self.cfg
        certificates: dict[bytes, str] = {}
        for name, path in (cfg.user_certificates or {}).items():
            cert = await _load(uacrypto.load_certificate, path, "user certificate")
            certificates[uacrypto.der_from_x509(cert)] = name
        self.users = _Users(self.passwords, certificates, cfg.allow_anonymous)
        server = Server(user_manager=self.users)  # type: ignore[arg-type]  # duck-typed, as asyncua's own are
        await server.init()
        server.set_endpoint(cfg.endpoint)
        server.set_server_name("proad-edge OPC UA bridge")
        await server.set_application_uri(cfg.application_uri)
        if cfg.certificate is not None and cfg.private_key is not None:
            await _load(server.load_certificate, cfg.certificate, "server certificate")
            await _load(server.load_private_key, cfg.private_key, "server private key")
        server.set_security_policy([
            ua.SecurityPolicyType.NoSecurity if s == "None" else ua.SecurityPolicyType[s] for s in cfg.security
        ])
        tokens: list[type] = []
        if cfg.allow_anonymous:
            tokens.append(ua.AnonymousIdentityToken)
        if self.passwords:
            tokens.append(ua.UserNameIdentityToken)
            loopback = urlparse(cfg.endpoint).hostname in ("127.0.0.1", "localhost", "::1")
            if cfg.security == ["None"] and cfg.certificate is None and not loopback:
                log.warning("passwords cross the network in plain text (security: [None], no certificate); "
                            "use a SignAndEncrypt policy beyond loopback")
        if certificates:
            tokens.append(ua.X509IdentityToken)
        server.set_identity_tokens(tokens)
        await self.build(server)
        try:
            await server.start()
        except OSError as exc:
            raise BridgeStartupError(f"cannot listen on {cfg.endpoint}: {exc}") from exc
        self.server = server
        log.info("OPC UA server listening at %s (cameras %s, security %s, anonymous %s)", cfg.endpoint,
                 ", ".join(cfg.cameras), ", ".join(cfg.security), "on" if cfg.allow_anonymous else "off")

    async def build(self, server: Any) -> None:
        idx = await server.register_namespace(self.cfg.namespace)
        etype = await server.create_custom_event_type(
            idx, EVENT_TYPE, ua.ObjectIds.BaseEventType,
            [("CameraId", ua.VariantType.String)] + [(n, ua.VariantType[t]) for n, t in RESULT_FIELDS.items()],
        )
        root = await server.nodes.objects.add_object(ua.NodeId(ROOT, idx), ua.QualifiedName(ROOT, idx))
        for name, (vtype, initial) in ROOT_STATE.items():
            self.root_nodes[name] = await _variable(root, idx, f"{ROOT}.{name}", name, vtype, initial)
        waiting = ua.DataValue(StatusCode=ua.StatusCode(ua.StatusCodes.BadWaitingForInitialData))
        for cam_id in self.cfg.cameras:
            obj = await root.add_object(ua.NodeId(f"{ROOT}.{cam_id}", idx), ua.QualifiedName(cam_id, idx))
            await obj.set_event_notifier([ua.EventNotifier.SubscribeToEvents])
            cam = _Camera(cam_id, obj)
            prefix = f"{ROOT}.{cam_id}."
            for name, vtype in RESULT_FIELDS.items():
                node = await _variable(obj, idx, prefix + name, name, vtype, _default(vtype))
                await server.write_attribute_value(node.nodeid, waiting)
                cam.nodes[name] = node
            for name, (vtype, initial) in CAMERA_STATE.items():
                cam.nodes[name] = await _variable(obj, idx, prefix + name, name, vtype, initial)
            ack_seq = await _variable(obj, idx, prefix + "AckSeq", "AckSeq", "UInt64", 0)
            await ack_seq.set_writable()
            server.set_attribute_value_setter(ack_seq.nodeid, self._ack_seq_setter(cam))
            seq_arg = ua.Argument(Name="Seq", DataType=ua.NodeId(ua.ObjectIds.UInt64), ValueRank=-1,
                                  Description=ua.LocalizedText("the Seq of the result the PLC has taken over"))
            await obj.add_method(ua.NodeId(prefix + "Acknowledge", idx), ua.QualifiedName("Acknowledge", idx),
                                 self._acknowledge_call, [seq_arg], [])
            cam.events = await server.get_event_generator(etype, obj)
            self.cameras[cam_id] = cam
            self.by_object[obj.nodeid] = cam

    async def write(self, node: Any, value: Any, vtype: str) -> None:
        now = datetime.now(timezone.utc)
        dv = ua.DataValue(ua.Variant(value, ua.VariantType[vtype]), SourceTimestamp=now, ServerTimestamp=now)
        await self.server.write_attribute_value(node.nodeid, dv)

    async def write_state(self, cam: _Camera, *names: str) -> None:
        for name in names:
            vtype = CAMERA_STATE[name][0]
            value = cam.ready if name == "ResultReady" else cam.stale if name == "Stale" else cam.counts[name]
            await self.write(cam.nodes[name], value, vtype)

    # -- results ---------------------------------------------------------------------------------

    async def publish_results(self, queue: asyncio.Queue) -> None:
        """Writes each result to OPC UA, in the order received (one task: order per camera holds)."""
        while True:
            header, missed = await queue.get()
            try:
                await self.publish(header, missed)
            except Exception:
                log.exception("could not write result %s to OPC UA; skipped it", header.result_id)

    async def publish(self, h: FrameResult, missed: int) -> None:
        self.counts["received"] += 1
        cam = self.cameras.get(h.camera_id)
        if cam is None:
            self.counts["ignored"] += 1
            if h.camera_id not in self.ignored_cameras:
                self.ignored_cameras.add(h.camera_id)
                log.warning("results of camera %r are not shown (not in cameras %s)", h.camera_id, self.cfg.cameras)
            return
        capture = datetime.fromtimestamp(h.capture_ts, timezone.utc)
        values = {
            "Decision": h.decision, "IsNG": h.decision == "NG",
            "Score": math.nan if h.score is None else h.score, "Threshold": h.threshold, "Seq": h.seq,
            "FrameIndex": h.frame_index, "ResultId": h.result_id, "CaptureTime": capture, "Reason": h.reason,
            "LatencyMs": h.latency_ms.get("total", math.nan), "ModelId": h.model_id,
        }  # fmt: skip
        async with cam.lock:
            if cam.ready:
                cam.counts["Unacknowledged"] += 1
            cam.seq, cam.ready, cam.last_rx = h.seq, True, time.monotonic()
            cam.counts["ResultsReceived"] += 1
            cam.counts["NG"] += h.decision == "NG"
            cam.counts["FailsafeNG"] += h.score is None
            cam.counts["Missed"] = missed
            for name, value in values.items():
                await self.write(cam.nodes[name], value, RESULT_FIELDS[name])
            if cam.stale:
                cam.stale = False
                log.info("camera %s: results arrive", cam.id)
            if not self.alive:
                await self.set_alive(True)
            await self.write_state(cam, "Unacknowledged", "ResultsReceived", "NG", "FailsafeNG", "Missed", "Stale",
                                   "ResultReady")
            event = cam.events.event
            event.CameraId = cam.id
            for name, value in values.items():
                setattr(event, name, value)
            await cam.events.trigger(time_attr=capture, message=f"{cam.id} #{h.seq} {h.decision}")
        self.counts["published"] += 1

    # -- the handshake ---------------------------------------------------------------------------

    async def acknowledge(self, cam: _Camera, seq: int, via: str) -> Any:
        """Clear ResultReady when ``seq`` is the result shown; BadInvalidState otherwise."""
        async with cam.lock:
            if cam.seq is None or seq != cam.seq:
                cam.counts["AckRejected"] += 1
                await self.write_state(cam, "AckRejected")
                log.info("camera %s: %s of seq %d refused, the result shown is %s", cam.id, via, seq, cam.seq)
                return ua.StatusCode(ua.StatusCodes.BadInvalidState)
            if cam.ready:
                cam.ready = False
                cam.counts["Acknowledged"] += 1
                await self.write_state(cam, "Acknowledged", "ResultReady")
            return ua.StatusCode()

    async def _acknowledge_call(self, parent: Any, *args: Any) -> Any:
        """The Acknowledge(Seq) method; bad input is a bad status, never an exception."""
        cam = self.by_object.get(parent)
        if cam is None:
            return ua.StatusCode(ua.StatusCodes.BadNodeIdInvalid)
        if len(args) != 1:
            return ua.StatusCode(ua.StatusCodes.BadArgumentsMissing if not args else ua.StatusCodes.BadTooManyArguments)
        seq = getattr(args[0], "Value", None)
        if isinstance(seq, bool) or not isinstance(seq, int) or not 0 <= seq < 2**63:
            return ua.StatusCode(ua.StatusCodes.BadInvalidArgument)
        status = await self.acknowledge(cam, seq, "Acknowledge")
        return status if not status.is_good() else []

    def _ack_seq_setter(self, cam: _Camera) -> Callable[[Any, Any, Any], None]:
        """AckSeq: keep what the PLC wrote (asyncua already refused a type other than UInt64), then acknowledge."""

        def setter(node: Any, attr: Any, value: Any) -> None:
            node.attributes[attr].value = value
            seq = value.Value.Value if value.Value is not None else None
            if isinstance(seq, int) and not isinstance(seq, bool):
                task = asyncio.get_running_loop().create_task(self.acknowledge(cam, seq, "AckSeq write"))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)

        return setter

    # -- health ----------------------------------------------------------------------------------

    async def watch_health(self, receiver: _Receiver, status: _StatusPoller | None) -> None:
        stale_s = self.cfg.stale_after_ms / 1000
        period = min(stale_s / 4, 0.25)
        while True:
            try:
                await self.update_health(receiver, status, stale_s)
            except Exception:
                log.exception("could not update the health variables")
            await asyncio.sleep(period)

    async def set_alive(self, alive: bool) -> None:
        if alive != self.alive:
            (log.info if alive else log.warning)(
                "the daemon is %s", "alive" if alive else f"silent (nothing for {self.cfg.stale_after_ms:g} ms)")
            self.alive = alive
        await self.write(self.root_nodes["DaemonAlive"], alive, "Boolean")

    async def update_health(self, receiver: _Receiver, status: _StatusPoller | None, stale_s: float) -> None:
        now = time.monotonic()
        recent = [c.last_rx for c in self.cameras.values() if c.last_rx is not None]
        if status is not None and status.last_ok is not None:
            recent.append(status.last_ok)
        await self.set_alive(bool(recent) and now - max(recent) <= stale_s)
        snapshot = status.snapshot if status is not None else {}
        for cam in self.cameras.values():
            age = math.nan if cam.last_rx is None else (now - cam.last_rx) * 1000
            async with cam.lock:
                stale = cam.last_rx is None or now - cam.last_rx > stale_s
                if stale and not cam.stale and cam.last_rx is not None:
                    log.warning("camera %s: no result for %.0f ms: Stale", cam.id, age)
                cam.stale = stale
                await self.write_state(cam, "Stale")
            await self.write(cam.nodes["LastResultAgeMs"], age, "Double")
            await self.write(cam.nodes["DaemonFramesIn"], _count(snapshot, "frames_in", cam.id), "UInt64")
            await self.write(cam.nodes["DaemonDropped"], _count(snapshot, "dropped", cam.id), "UInt64")
        root = {"ResultsReceived": self.counts["received"],
                "Missed": sum(c.counts["Missed"] for c in self.cameras.values()),
                "Invalid": receiver.invalid, "Ignored": self.counts["ignored"]}
        for name, value in root.items():
            await self.write(self.root_nodes[name], value, ROOT_STATE[name][0])

    # -- the whole run ---------------------------------------------------------------------------

    async def serve(self, stop: threading.Event, ready: Callable[[], None] | None) -> dict[str, Any]:
        cfg = self.cfg
        await self.start_server()
        receiver = status = None
        try:
            status = _StatusPoller(cfg) if cfg.daemon.status_endpoint else None
            try:
                sub = Subscriber(cfg.daemon.endpoint, camera=cfg.daemon.camera, hwm=cfg.daemon.hwm,
                                 keys=cfg.daemon.keys())
            except zmq.ZMQError as exc:
                raise BridgeStartupError(f"cannot subscribe to the daemon at {cfg.daemon.endpoint}: {exc}") from exc
            queue: asyncio.Queue = asyncio.Queue(maxsize=cfg.backlog)
            receiver = _Receiver(sub, asyncio.get_running_loop(), queue)
            receiver.start()
            if status is not None:
                status.start()
            for job in (self.publish_results(queue), self.watch_health(receiver, status)):
                task = asyncio.create_task(job)
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)
            log.info("subscribed to the daemon at %s", cfg.daemon.endpoint)
            if ready is not None:
                ready()
            while not stop.is_set():
                await asyncio.sleep(0.1)
        finally:
            for thread in (receiver, status):
                if thread is not None:
                    thread.halt.set()
            for task in list(self.tasks):
                task.cancel()
            await asyncio.gather(*self.tasks, return_exceptions=True)
            for thread in (receiver, status):
                if thread is not None and thread.ident is not None:
                    await asyncio.to_thread(thread.join, 5.0)
            with contextlib.suppress(Exception):
                await self.server.stop()
        return self.final_counts(receiver, status)

    def final_counts(self, receiver: _Receiver | None, status: _StatusPoller | None) -> dict[str, Any]:
        per_camera = {c.id: dict(c.counts) for c in self.cameras.values()}
        return {
            "received": self.counts["received"],
            "published": self.counts["published"],
            "missed": sum(c["Missed"] for c in per_camera.values()),
            "invalid": receiver.invalid if receiver is not None else 0,
            "ignored": self.counts["ignored"],
            "acknowledged": sum(c["Acknowledged"] for c in per_camera.values()),
            "unacknowledged": sum(c["Unacknowledged"] for c in per_camera.values()),
            "ack_rejected": sum(c["AckRejected"] for c in per_camera.values()),
            "logins_refused": self.users.refused if self.users is not None else 0,
            "status_answers": status.answers if status is not None else 0,
            "status_failures": status.failures if status is not None else 0,
            "cameras": per_camera,
        }


def _default(vtype: str) -> Any:
    return {"String": "", "Boolean": False, "Double": math.nan, "UInt64": 0,
            "DateTime": datetime(1970, 1, 1, tzinfo=timezone.utc)}[vtype]


async def _variable(parent: Any, idx: int, nodeid: str, name: str, vtype: str, value: Any) -> Any:
    return await parent.add_variable(ua.NodeId(nodeid, idx), ua.QualifiedName(name, idx),
                                     ua.Variant(value, ua.VariantType[vtype]))


async def _load(loader: Callable[..., Any], path: str, what: str) -> Any:
    if not Path(path).is_file():
        raise BridgeStartupError(f"{what} {path} not found")
    try:
        return await loader(path)
    except Exception as exc:  # cryptography raises several kinds for a file that is not a key/certificate
        raise BridgeStartupError(f"{what} {path} cannot be loaded: {type(exc).__name__}: {exc}") from exc


def run_bridge(
    cfg: OpcUaBridgeConfig, stop: threading.Event, ready: Callable[[], None] | None = None
) -> dict[str, Any]:
    """Serve until ``stop`` is set; call ``ready()`` once the OPC UA server listens and the subscriber
    is connected. Returns the final counters: received, published (written to OPC UA), missed,
    invalid, ignored (other cameras), acknowledged, unacknowledged, ack_rejected, logins_refused
    (wrong password or unknown certificate), status_answers, status_failures, and per camera the
    counters of its variables. Raises :class:`BridgeStartupError` when it cannot start."""
    if Server is None:
        raise BridgeStartupError("asyncua is not installed: pip install 'proad-edge[bridges]'")
    passwords = load_users(cfg)
    return asyncio.run(_Bridge(cfg, passwords).serve(stop, ready))
