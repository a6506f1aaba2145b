"""``proad-bridge opcua``: an asyncua client reads the bridge's server beside a plain subscriber.

The end-to-end test runs the daemon on the synthetic camera; the handshake test drives the bridge
from a bare XPUB socket, one result at a time, so every step of the handshake is deterministic.
"""

from __future__ import annotations

import asyncio
import json
import math
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq
from pydantic import ValidationError

pytest.importorskip("asyncua", reason="the OPC UA bridge needs asyncua (pip install 'proad-edge[bridges]')")

from asyncua import Client, ua

from proad.edge.bridges.opcua import BridgeStartupError, OpcUaBridgeConfig, run_bridge
from proad.edge.config import PipelineConfig
from proad.edge.daemon import Daemon
from proad.edge.messages import FrameResult, topic
from proad.edge.ports import free_port
from proad.edge.subscriber import Subscriber

NS = "urn:proad-edge"
USERS = {"plc": "s3cret-pw"}
TIMEOUT = 60.0  # generous: a loaded machine is slow; the conditions are waited for, not slept for


class Bridge:
    """run_bridge in a thread; ``url`` is its OPC UA endpoint, ``counters`` what it returned."""

    def __init__(self, **cfg: Any) -> None:
        self.url = f"opc.tcp://127.0.0.1:{free_port()}/proad/"
        self.cfg = OpcUaBridgeConfig.model_validate({"endpoint": self.url, "users": USERS, **cfg})
        self.stop, self.ready = threading.Event(), threading.Event()
        self.counters: dict[str, Any] | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.counters = run_bridge(self.cfg, self.stop, self.ready.set)
        except BaseException as exc:
            self.error = exc
            self.ready.set()

    def __enter__(self) -> Bridge:
        self.thread.start()
        assert self.ready.wait(TIMEOUT), "the bridge did not start"
        if self.error is not None:
            raise self.error
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(TIMEOUT)
        assert not self.thread.is_alive(), "the bridge did not stop"
        if self.error is not None:
            raise self.error


class Events:
    """asyncua subscription handler: every result event, in arrival order."""

    def __init__(self) -> None:
        self.got: list[Any] = []

    def event_notification(self, event: Any) -> None:
        self.got.append(event)


async def until(what: str, check: Callable[[], Awaitable[bool]], timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


def client(url: str, user: str | None = "plc", password: str | None = USERS["plc"]) -> Client:
    c = Client(url, timeout=TIMEOUT)
    if user is not None:
        c.set_user(user)
    if password is not None:
        c.set_password(password)
    return c


class Camera:
    """The nodes of one camera in the bridge's address space."""

    def __init__(self, c: Client, idx: int, cam: str) -> None:
        self.c, self.idx, self.prefix = c, idx, f"ProadEdge.{cam}"
        self.obj = c.get_node(ua.NodeId(self.prefix, idx))

    def node(self, name: str) -> Any:
        return self.c.get_node(ua.NodeId(f"{self.prefix}.{name}", self.idx))

    async def read(self, name: str) -> Any:
        return await self.node(name).read_value()

    async def ack(self, *args: Any) -> Any:
        return await self.obj.call_method(ua.QualifiedName("Acknowledge", self.idx), *args)

    async def subscribe(self, handler: Events) -> Any:
        sub = await self.c.create_subscription(10, handler)
        etype = await self.c.nodes.base_event_type.get_child(f"{self.idx}:ProadResultEventType")
        await sub.subscribe_events(self.obj, etype, queuesize=1000)
        return sub


async def refused(url: str, user: str | None, password: str | None) -> BaseException:
    """The error a client with these credentials gets (the test fails if it gets in)."""
    try:
        async with client(url, user, password):
            pass
    except (ua.UaError, OSError, asyncio.TimeoutError) as exc:
        return exc
    raise AssertionError(f"{user!r} got in")


# -- end to end: the daemon, the bridge, an OPC UA client and a plain subscriber --------------------


def test_every_result_in_order_with_handshake_and_refusals(board_model, backend) -> None:
    n = 48
    cfg = PipelineConfig.model_validate({
        "cameras": [{"id": "cam0", "source": {"kind": "synthetic", "category": "board", "fps": 60,
                                              "defect_rate": 0.3, "pool": 24, "max_frames": n}}],
        "backend": {"kind": "onnxruntime", "model": str(board_model[1]), "threads": 2, "max_batch": 4},
        "publish": {"endpoint": "tcp://127.0.0.1:*"},
        "status": {"endpoint": "tcp://127.0.0.1:*"},
        "queues": {"when_full": "wait"},  # lossless: the camera waits, every frame is published
    })  # fmt: skip
    daemon = Daemon(cfg, backend=backend)
    try:
        link = {"endpoint": daemon.publisher.endpoint, "status_endpoint": daemon.status.endpoint}
        with Bridge(daemon=link, cameras=["cam0"]) as bridge:
            pub = daemon.publisher
            assert pub.wait_for_subscriptions(1, TIMEOUT), "the bridge's subscription did not arrive"
            plain = Subscriber(pub.endpoint)
            assert pub.wait_for_subscriptions(2, TIMEOUT), "the plain subscription did not arrive"
            events = asyncio.run(_read_results_and_handshake(bridge.url, daemon, n))
            expected = []
            while (r := plain.recv(timeout_ms=1500)) is not None:
                expected.append((r.header.seq, r.header.decision))
            plain.close()
        assert [seq for seq, _ in expected] == list(range(n))
        assert events == expected  # every result, in order, with the decision the daemon published
        assert {"OK", "NG"} <= {d for _, d in events}
        counters = bridge.counters
        assert counters is not None
        assert counters["received"] == counters["published"] == n
        assert counters["missed"] == counters["invalid"] == 0
        assert counters["acknowledged"] == 1 and counters["ack_rejected"] == 1
        assert counters["unacknowledged"] == n - 1  # the stream never waited for the PLC
        assert counters["logins_refused"] == 1  # the wrong password (asyncua itself turns anonymous away)
        assert counters["status_answers"] >= 1
    finally:
        daemon.stop()


async def _read_results_and_handshake(url: str, daemon: Daemon, n: int) -> list[tuple[int, str]]:
    handler = Events()
    async with client(url) as c:
        cam = Camera(c, await c.get_namespace_index(NS), "cam0")
        assert await cam.read("ResultReady") is False
        await cam.subscribe(handler)  # in place before the first frame: no result can be missed
        await asyncio.to_thread(daemon.start)

        async def all_events() -> bool:
            return len(handler.got) >= n

        await until(f"{n} result events", all_events)
        assert await asyncio.to_thread(daemon.wait, TIMEOUT), "the camera did not finish"
        # the variables show the newest result, ready for the PLC
        assert await cam.read("Seq") == n - 1
        assert await cam.read("ResultReady") is True
        assert await cam.read("Decision") == handler.got[-1].Decision
        assert await cam.read("ResultsReceived") == n
        assert await cam.read("Unacknowledged") == n - 1
        root = c.get_node(ua.NodeId("ProadEdge.DaemonAlive", cam.idx))
        assert await root.read_value() is True
        # the handshake: a stale Seq is refused and changes nothing; the shown one clears ResultReady
        with pytest.raises(ua.uaerrors.BadInvalidState):
            await cam.ack(n - 2)
        assert await cam.read("ResultReady") is True
        await cam.ack(n - 1)
        assert await cam.read("ResultReady") is False
        assert await cam.read("Acknowledged") == 1
        assert await cam.read("AckRejected") == 1
        # a wrong password and a client without credentials are refused
        wrong = await refused(url, "plc", "not-the-password")
        assert isinstance(wrong, ua.uaerrors.BadUserAccessDenied), repr(wrong)
        assert isinstance(await refused(url, None, None), ua.uaerrors.BadIdentityTokenRejected)
    return [(int(e.Seq), e.Decision) for e in handler.got]


# -- the handshake step by step, from a bare publisher ----------------------------------------------


def _result(cam: str, seq: int, decision: str = "OK", score: float | None = 0.1, reason: str = "score") -> list:
    header = FrameResult(
        camera_id=cam, seq=seq, frame_index=seq, result_id=f"run-{cam}-{seq}", capture_ts=time.time(),
        publish_ts=time.time(), latency_ms={"total": 12.5}, score=score, threshold=0.5, decision=decision,
        reason=reason, model_id="test", map_shape=(2, 2), map_dtype="float16",
    )  # fmt: skip
    return [topic(cam, decision), header.model_dump_json().encode(), np.zeros((2, 2), np.float16).tobytes()]


def test_handshake_failsafe_and_health_step_by_step() -> None:
    ctx = zmq.Context.instance()
    xpub = ctx.socket(zmq.XPUB)
    xpub.setsockopt(zmq.LINGER, 0)
    xpub.bind("tcp://127.0.0.1:*")
    endpoint = xpub.getsockopt_string(zmq.LAST_ENDPOINT)
    try:
        link = {"endpoint": endpoint, "status_endpoint": None}
        with Bridge(daemon=link, cameras=["line1", "line2"], stale_after_ms=1500) as bridge:
            assert xpub.poll(TIMEOUT * 1000), "the bridge did not subscribe"
            assert xpub.recv() == b"\x01proad/"
            asyncio.run(_handshake_steps(bridge.url, xpub))
        counters = bridge.counters
        assert counters is not None
        assert counters["cameras"]["line1"] == {
            "Acknowledged": 2, "Unacknowledged": 1, "AckRejected": 2, "ResultsReceived": 4, "NG": 1,
            "FailsafeNG": 1, "Missed": 2,
        }  # fmt: skip
        assert counters["invalid"] == 1 and counters["ignored"] == 1
    finally:
        xpub.close(0)


async def _handshake_steps(url: str, xpub: zmq.Socket) -> None:
    handler = Events()
    async with client(url) as c:
        idx = await c.get_namespace_index(NS)
        cam, other = Camera(c, idx, "line1"), Camera(c, idx, "line2")
        root = {name: c.get_node(ua.NodeId(f"ProadEdge.{name}", idx)) for name in ("DaemonAlive", "Invalid", "Ignored")}

        async def is_(node: Any, want: Any) -> bool:
            return await node.read_value() == want

        # before the first result: waiting, stale, not ready; the daemon not seen alive
        with pytest.raises(ua.uaerrors.BadWaitingForInitialData):
            await cam.read("Decision")
        assert await cam.read("Stale") is True and await cam.read("ResultReady") is False
        assert await root["DaemonAlive"].read_value() is False
        with pytest.raises(ua.uaerrors.BadInvalidState):  # nothing to acknowledge yet
            await cam.ack(0)
        await cam.subscribe(handler)

        async def events(k: int) -> Callable[[], Awaitable[bool]]:
            async def check() -> bool:
                return len(handler.got) >= k
            return check

        # result 0: ready; acknowledged by writing AckSeq (for PLCs without method calls)
        xpub.send_multipart(_result("line1", 0))
        await until("result 0", await events(1))
        assert await cam.read("ResultReady") is True and await cam.read("Decision") == "OK"
        assert await cam.read("Score") == pytest.approx(0.1) and await cam.read("IsNG") is False
        assert await cam.read("Stale") is False and await root["DaemonAlive"].read_value() is True
        await cam.node("AckSeq").write_value(ua.Variant(0, ua.VariantType.UInt64))
        await until("AckSeq clears ResultReady", lambda: is_(cam.node("ResultReady"), False))
        assert await cam.read("Acknowledged") == 1
        # bad input is an OPC UA error status, and the server goes on
        with pytest.raises(ua.uaerrors.BadTypeMismatch):
            await cam.node("AckSeq").write_value(ua.Variant("0", ua.VariantType.String))
        with pytest.raises(ua.uaerrors.BadInvalidArgument):
            await cam.ack("zero")
        with pytest.raises(ua.uaerrors.BadArgumentsMissing):
            await cam.ack()
        with pytest.raises(ua.uaerrors.BadUserAccessDenied):  # result variables are read only
            await cam.node("Decision").write_value("OK")

        # a fail-safe NG (no score in time), then the next result before the PLC acknowledged it
        xpub.send_multipart(_result("line1", 1, "NG", None, "timeout"))
        xpub.send_multipart(_result("line1", 2))
        await until("results 1 and 2", await events(3))
        failsafe = handler.got[1]
        assert (failsafe.Seq, failsafe.Decision, failsafe.IsNG, failsafe.Reason) == (1, "NG", True, "timeout")
        assert math.isnan(failsafe.Score)
        assert await cam.read("Seq") == 2 and await cam.read("ResultReady") is True
        assert await cam.read("Unacknowledged") == 1 and await cam.read("FailsafeNG") == 1
        with pytest.raises(ua.uaerrors.BadInvalidState):  # too late: seq 2 is shown
            await cam.ack(1)
        await cam.ack(2)
        await cam.ack(2)  # again: harmless, not counted twice
        assert await cam.read("ResultReady") is False and await cam.read("Acknowledged") == 2

        # an invalid message, a camera the bridge does not show, then a gap of two results
        xpub.send_multipart([topic("line1", "OK"), b"{not json", b"\0\0"])
        xpub.send_multipart(_result("camX", 0))
        xpub.send_multipart(_result("line1", 5))
        await until("result 5", await events(4))
        assert [int(e.Seq) for e in handler.got] == [0, 1, 2, 5]
        assert await cam.read("Missed") == 2 and await cam.read("NG") == 1
        await until("Invalid counted", lambda: is_(root["Invalid"], 1))
        await until("Ignored counted", lambda: is_(root["Ignored"], 1))
        assert await other.read("ResultsReceived") == 0 and await other.read("Stale") is True

        # no result for stale_after_ms: the camera turns Stale, the daemon not alive
        await until("line1 Stale", lambda: is_(cam.node("Stale"), True))
        await until("DaemonAlive False", lambda: is_(root["DaemonAlive"], False))
        assert await cam.read("LastResultAgeMs") > 1500
        assert await cam.read("ResultReady") is True  # the last result stays shown, flagged Stale


# -- configuration and startup errors -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        ({"cameras": ["a"]}, "nobody could log in"),
        ({"cameras": [], "allow_anonymous": True}, "at least 1"),
        ({"cameras": ["a", "a"], "allow_anonymous": True}, "repeated: a"),
        ({"cameras": ["bad id"], "allow_anonymous": True}, "pattern"),
        ({"cameras": ["a"], "allow_anonymous": True, "endpoint": "tcp://x:1"}, "opc.tcp://HOST:PORT"),
        ({"cameras": ["a"], "allow_anonymous": True, "security": ["Basic256Sha256_SignAndEncrypt"]},
         "certificate and private_key"),
        ({"cameras": ["a"], "allow_anonymous": True, "security": ["Basic128"]}, "Basic256Sha256_Sign"),
        ({"cameras": ["a"], "user_certificates": {"plc": "plc.der"}}, "signed security policy"),
        ({"cameras": ["a"], "allow_anonymous": True, "daemon": {"camera": "b"}}, "not one of cameras"),
        ({"cameras": ["a"], "allow_anonymous": True, "colour": "red"}, "Extra inputs"),
    ],
)
def test_bad_config_is_refused_with_the_reason(cfg: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        OpcUaBridgeConfig.model_validate(cfg)


def test_startup_errors(tmp_path: Path) -> None:
    stop = threading.Event()
    stop.set()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cfg = OpcUaBridgeConfig(cameras=["a"], users=USERS, endpoint=f"opc.tcp://127.0.0.1:{port}/proad/")
        with pytest.raises(BridgeStartupError, match="cannot listen on"):
            run_bridge(cfg, stop)
    missing = OpcUaBridgeConfig(cameras=["a"], security=["Basic256Sha256_SignAndEncrypt"], users=USERS,
                                certificate=str(tmp_path / "nope.der"), private_key=str(tmp_path / "nope.pem"))
    with pytest.raises(BridgeStartupError, match=r"server certificate .* not found"):
        run_bridge(missing, stop)
    users = tmp_path / "users"
    users.write_text("# plant users\nplc:pw\nno-password-here\n")
    with pytest.raises(BridgeStartupError, match="line 3: expected name:password"):
        run_bridge(OpcUaBridgeConfig(cameras=["a"], users_file=str(users)), stop)
    with pytest.raises(BridgeStartupError, match="cannot read it"):
        run_bridge(OpcUaBridgeConfig(cameras=["a"], users_file=str(tmp_path / "absent")), stop)


def test_users_file_and_stop_return_counters(tmp_path: Path) -> None:
    """A users_file login works; a bridge stopped at once returns its (zero) counters."""
    users = tmp_path / "users"
    users.write_text("# name:password\noperator:pa:ss\n")
    with Bridge(users=None, users_file=str(users), cameras=["a"], daemon={"endpoint": "tcp://127.0.0.1:1",
                                                                           "status_endpoint": None}) as bridge:

        async def login() -> None:
            async with client(bridge.url, "operator", "pa:ss") as c:
                idx = await c.get_namespace_index(NS)
                assert await c.get_node(ua.NodeId("ProadEdge.a.Stale", idx)).read_value() is True
            wrong = await refused(bridge.url, "plc", USERS["plc"])  # not in the file
            assert isinstance(wrong, ua.uaerrors.BadUserAccessDenied)

        asyncio.run(login())
    assert bridge.counters is not None
    assert json.loads(json.dumps(bridge.counters))["received"] == 0


# -- a signed and encrypted endpoint: passwords and user certificates ----------------------------------


async def _certificate(directory: Path, name: str, app_uri: str, server: bool) -> tuple[Path, Path]:
    from asyncua.crypto.cert_gen import setup_self_signed_certificate
    from cryptography.x509.oid import ExtendedKeyUsageOID

    cert, key = directory / f"{name}.der", directory / f"{name}.pem"
    use = [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
    await setup_self_signed_certificate(key, cert, app_uri, "127.0.0.1", use, {"commonName": name})
    return cert, key


async def _secure_client(url: str, cert: Path, key: Path, user_cert: tuple[Path, Path] | None = None, **kw) -> Client:
    from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256

    c = client(url, **kw)
    c.application_uri = "urn:test:plc"
    await c.set_security(SecurityPolicyBasic256Sha256, str(cert), str(key))
    if user_cert is not None:
        await c.load_client_certificate(str(user_cert[0]))
        await c.load_private_key(user_cert[1])
    return c


def test_signed_and_encrypted_endpoint_with_password_and_certificate_logins(tmp_path: Path) -> None:
    async def certificates() -> list[tuple[Path, Path]]:
        return [await _certificate(tmp_path, "server", "urn:proad-edge:opcua-bridge", True),
                await _certificate(tmp_path, "plc", "urn:test:plc", False),
                await _certificate(tmp_path, "stranger", "urn:test:plc", False)]

    (server_cert, server_key), plc, stranger = asyncio.run(certificates())
    link = {"endpoint": "tcp://127.0.0.1:1", "status_endpoint": None}  # no daemon: the logins are the point
    with Bridge(daemon=link, cameras=["a"], security=["Basic256Sha256_SignAndEncrypt"],
                certificate=str(server_cert), private_key=str(server_key),
                user_certificates={"line-plc": str(plc[0])}) as bridge:

        async def logins() -> None:
            async def reads_stale(c: Client) -> None:
                async with c:
                    idx = await c.get_namespace_index(NS)
                    assert await c.get_node(ua.NodeId("ProadEdge.a.Stale", idx)).read_value() is True

            await reads_stale(await _secure_client(bridge.url, *plc))  # user and password, encrypted
            await reads_stale(await _secure_client(bridge.url, *plc, user_cert=plc, user=None, password=None))
            with pytest.raises(ua.uaerrors.BadUserAccessDenied):  # a certificate nobody listed
                await reads_stale(await _secure_client(bridge.url, *stranger, user_cert=stranger, user=None,
                                                       password=None))
            with pytest.raises(ua.UaError, match="No matching endpoints"):  # no plain endpoint is offered
                await reads_stale(client(bridge.url))

        asyncio.run(logins())
    assert bridge.counters is not None and bridge.counters["logins_refused"] == 1
