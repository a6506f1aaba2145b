"""The line's everyday faults over loopback: a camera unplugged and plugged back, 1 % corrupt
frames, a subscriber that never reads, an unauthorised client with CURVE on, and parts whose result
does not come in time (the fail-safe NG)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
import zmq

from harness import NGRecorder, archive_ledger, daemon_config, wait_for
from proad.edge.archiver import Archiver
from proad.edge.backends import Backend
from proad.edge.config import PipelineConfig
from proad.edge.daemon import Daemon
from proad.edge.security import ClientKeys, create_keypair
from proad.edge.status import query_status
from proad.edge.subscriber import Subscriber


def test_unplugged_camera_corrupt_frames_and_a_subscriber_that_never_reads(board_model, backend, tmp_path) -> None:
    camera = {"fps": 60, "max_frames": 300, "corrupt_every": 100, "unplug_every": 70, "unplug_s": 0.3}
    cfg = PipelineConfig.model_validate(daemon_config(board_model[1], tmp_path, camera, threshold=None,
                                                      publish={"endpoint": "tcp://127.0.0.1:*", "hwm": 50}))
    daemon = Daemon(cfg, backend=backend)
    stalled_ctx = zmq.Context()
    stalled = Subscriber(daemon.publisher.endpoint, hwm=1, ctx=stalled_ctx)  # connects and never reads
    stalled.sock.setsockopt(zmq.RCVBUF, 4096)
    reader = Subscriber(daemon.publisher.endpoint, hwm=100000)
    assert daemon.publisher.wait_for_subscriptions(2, 60)  # both subscribed before the first frame
    got = []
    daemon.start()
    try:
        while daemon.capture_threads[0].is_alive():
            if (r := reader.recv(timeout_ms=100)) is not None:
                got.append(r)
        while (r := reader.recv(timeout_ms=1500)) is not None:
            got.append(r)
    finally:
        daemon.stop()
        reader.close()
        stalled.close()
        stalled_ctx.term()
    snap = daemon.telemetry.snapshot()
    assert snap["reconnects"]["cam0"] >= 4  # unplugged after frames 70, 140, 210, 280, and back each time
    assert snap["dropped"]["corrupt"]["cam0"] == 3  # frames 99, 199, 299: counted, skipped, not fatal
    dropped = sum(sum(c.values()) for c in snap["dropped"].values())
    assert snap["frames_in"]["cam0"] == 300 and snap["published"]["cam0"] == 300 - dropped
    assert [r.header.seq for r in got] == list(range(snap["published"]["cam0"]))  # the reader lost nothing
    assert snap["subscribers"] >= 0 and snap["cameras"]["cam0"] == "ended"


def test_curve_lets_in_only_allowed_clients(board_model, backend, tmp_path: Path) -> None:
    keys, allowed = tmp_path / "keys", tmp_path / "keys" / "allowed"
    create_keypair(keys, "server")
    for name in ("dashboard", "archiver"):
        create_keypair(keys, name, allowed_dir=allowed)
    create_keypair(keys, "stranger")  # a valid keypair nobody allowed
    server_public = keys / "server.key"

    def client(name: str) -> ClientKeys:
        return ClientKeys(keys / f"{name}.key_secret", server_public)

    security = {"curve": True, "server_secret_key": str(keys / "server.key_secret"), "allowed_clients": str(allowed)}
    cfg = PipelineConfig.model_validate(daemon_config(board_model[1], tmp_path, {"fps": 30, "max_frames": 40},
                                                      security=security))
    daemon = Daemon(cfg, backend=backend)
    allowed_sub = NGRecorder(daemon.publisher.endpoint, keys=client("dashboard"))
    stranger_sub = NGRecorder(daemon.publisher.endpoint, keys=client("stranger"))
    plain_sub = NGRecorder(daemon.publisher.endpoint)  # no CURVE at all
    subs = (allowed_sub, stranger_sub, plain_sub)
    good = Archiver(daemon.ng_channel.endpoint, tmp_path / "good", client("archiver"), heartbeat_s=0.2, fsync=False)
    bad = Archiver(daemon.ng_channel.endpoint, tmp_path / "bad", client("stranger"), heartbeat_s=0.2, fsync=False)
    stop = threading.Event()
    archivers = [threading.Thread(target=a.run, args=(stop,)) for a in (good, bad)]
    for t in (*subs, *archivers):
        t.start()

    def refused(names: tuple[str, ...]) -> bool:
        return all(daemon.telemetry.snapshot()["events"].get(n, 0) >= 1 for n in names)

    try:
        # before the first frame: the allowed subscriber's CURVE handshake is done and its subscription
        # has taken effect, and the stranger and the plain client have been refused (and counted)
        assert daemon.publisher.wait_for_subscriptions(1, 60), "the allowed subscriber never subscribed"
        publish_refusals = ("auth_failures.publish", "handshake_failures.publish")
        assert wait_for(lambda: daemon.publisher.poll_events() or refused(publish_refusals), 60)
        daemon.start()
        status = query_status(daemon.status.endpoint, timeout_ms=60_000, keys=client("dashboard"))
        assert status["model"]["model_id"] == backend.info.model_id
        with pytest.raises(TimeoutError):
            query_status(daemon.status.endpoint, timeout_ms=500, keys=client("stranger"))
        assert daemon.wait(60)
        assert wait_for(lambda: daemon.spool.depth() == 0, 60)
        assert wait_for(lambda: len(allowed_sub.seen) == 40, 60)
        assert wait_for(lambda: refused(("auth_failures.ng_channel", "auth_failures.status")), 60)
    finally:
        daemon.stop()
        stop.set()
        for t in archivers:
            t.join()
        for s in subs:
            s.stop()
        good.close()
        bad.close()
    assert len(allowed_sub.seen) == 40 and len(allowed_sub.ng) == 40  # the allowed one received all
    assert stranger_sub.seen == [] and plain_sub.seen == []  # the others received nothing
    assert len(archive_ledger(tmp_path / "good")[0]) == 40 and archive_ledger(tmp_path / "bad")[0] == set()
    events = daemon.telemetry.snapshot()["events"]
    # ...and were counted: the refused key and the client without CURVE, the refused archiver and status query
    assert events["auth_failures.publish"] >= 1 and events["handshake_failures.publish"] >= 1
    assert events["auth_failures.ng_channel"] >= 1 and events["auth_failures.status"] >= 1


class SlowSometimes(Backend):
    """The real backend, but every 6th batch stalls past the inspection window and every 10th fails."""

    def __init__(self, inner: Backend, stall_s: float) -> None:
        self.inner, self.info, self.max_batch, self.stall_s, self.calls = inner, inner.info, 1, stall_s, 0

    def infer(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.calls += 1
        if self.calls % 10 == 0:
            raise RuntimeError("device lost (injected)")
        if self.calls % 6 == 0:
            time.sleep(self.stall_s)
        return self.inner.infer(images)


def test_failsafe_publishes_ng_when_no_result_comes_in_time(board_model, backend, tmp_path: Path) -> None:
    cfg = PipelineConfig.model_validate(daemon_config(
        board_model[1], tmp_path, {"fps": 15, "max_frames": 60, "defect_rate": 0.0},
        threshold=None, failsafe={"window_ms": 250}, queues={"frames_per_camera": 1},
    ))  # fmt: skip
    daemon = Daemon(cfg, backend=SlowSometimes(backend, stall_s=0.5))
    recorder = NGRecorder(daemon.publisher.endpoint)
    sub = Subscriber(daemon.publisher.endpoint, hwm=100000)
    recorder.start()
    assert daemon.publisher.wait_for_subscriptions(2, 60)
    daemon.start()
    assert daemon.wait(60)
    daemon.stop()
    recorder.stop()
    got = []
    while (r := sub.recv(timeout_ms=1000)) is not None:
        got.append(r)
    sub.close()
    snap = daemon.telemetry.snapshot()
    by_frame = {r.header.frame_index: r for r in got}
    assert len(by_frame) == len(got) == 60  # every frame got exactly one verdict, none twice
    assert [r.header.seq for r in got] == list(range(60))
    reasons = {r.header.reason for r in got}
    assert {"score", "timeout", "backend_error"} <= reasons
    for r in got:
        if r.header.reason != "score":  # no result of its own: NG, no score, said why, frame attached
            assert r.header.decision == "NG" and r.header.score is None and r.frame() is not None
    assert sum(snap["failsafe_ng"]["timeout"].values()) == sum(r.header.reason == "timeout" for r in got)
    assert snap["dropped"].get("late_result", {}).get("cam0", 0) >= 1  # the stalled results came late, discarded
    # the fail-safe verdicts are NG results like any other: spooled for the archivers too
    assert all(rid in recorder.ng for rid in (r.header.result_id for r in got if r.header.reason != "score"))
    assert daemon.spool.depth() == len(recorder.ng)  # no archiver in this test: all of them still spooled
