"""The parts of reliable delivery, security and health one at a time: spool, fail-safe windows,
NG-channel protocol, archiver storage, CURVE keys, Prometheus metrics, hardened config."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import zmq

from proad.edge.archiver import Archiver
from proad.edge.config import ConfigError, PipelineConfig, load_pipeline_config
from proad.edge.failsafe import InspectionWindows
from proad.edge.frames import Frame
from proad.edge.messages import FrameResult
from proad.edge.metrics import MetricsServer
from proad.edge.ng_channel import ACK, HELLO, NG, ProtocolError, parse_archiver_message
from proad.edge.security import CurveServer, client_keys, create_keypair
from proad.edge.sockets import StartupError
from proad.edge.spool import Record, Spool, SpoolError, pack, unpack
from proad.edge.telemetry import Telemetry


def _record(i: int, camera: str = "cam0", jpeg: bool = True) -> Record:
    header = FrameResult(camera_id=camera, seq=i, frame_index=i, result_id=f"run1-{camera}-{i}", capture_ts=1.0,
                         publish_ts=1.1, score=0.9, threshold=0.5, decision="NG", model_id="m", map_shape=(8, 8),
                         map_dtype="float16", has_frame=jpeg)  # fmt: skip
    amap = np.full((8, 8), i, np.float16).tobytes()
    return Record(header.result_id, [header.model_dump_json().encode(), amap] + ([b"\xff\xd8jpeg"] if jpeg else []))


# -- spool ----------------------------------------------------------------------------------------


def test_spool_round_trip_order_and_restart(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s", fsync=False)
    for i in range(5):
        assert spool.add(_record(i))
    assert spool.pending(set(), 10) == [f"run1-cam0-{i}" for i in range(5)]
    assert spool.pending({"run1-cam0-0", "run1-cam0-2"}, 2) == ["run1-cam0-1", "run1-cam0-3"]
    loaded = spool.load("run1-cam0-3")
    assert loaded == _record(3)
    assert spool.remove("run1-cam0-0") and not spool.remove("run1-cam0-0")  # a second ACK finds nothing
    (tmp_path / "s" / "000000000099-half.tmp").write_bytes(b"cut short")  # a write a crash interrupted
    again = Spool(tmp_path / "s", fsync=False)  # a restart reads back what is left, in order
    assert again.recovered == 4 and again.pending(set(), 10) == [f"run1-cam0-{i}" for i in range(1, 5)]
    assert not list((tmp_path / "s").glob("*.tmp"))
    assert again.add(_record(7)) and again.pending(set(), 10)[-1] == "run1-cam0-7"  # order continues after restart


def test_spool_full_policies_are_counted(tmp_path: Path) -> None:
    keep = Spool(tmp_path / "a", max_records=3, fsync=False)
    assert [keep.add(_record(i)) for i in range(5)] == [True, True, True, False, False]
    assert keep.pending(set(), 10) == ["run1-cam0-0", "run1-cam0-1", "run1-cam0-2"]
    assert keep.stats()["rejected_full"] == 2
    roll = Spool(tmp_path / "b", max_records=3, when_full="drop_oldest", fsync=False)
    assert all(roll.add(_record(i)) for i in range(5))
    assert roll.pending(set(), 10) == ["run1-cam0-2", "run1-cam0-3", "run1-cam0-4"]
    assert roll.stats()["evicted_full"] == 2 and len(list((tmp_path / "b").glob("*.ng"))) == 3
    small = Spool(tmp_path / "c", max_mb=1.5 * len(pack(_record(0))) / 2**20, fsync=False)
    assert small.add(_record(0)) and not small.add(_record(1))  # the byte cap counts too


def test_spool_damaged_record_is_moved_aside(tmp_path: Path) -> None:
    spool = Spool(tmp_path, fsync=False)
    spool.add(_record(0))
    spool.add(_record(1))
    path = next(tmp_path.glob("*-run1-cam0-0.ng"))
    path.write_bytes(path.read_bytes()[:-10])  # a disk fault truncates it
    assert spool.load("run1-cam0-0") is None
    assert (tmp_path / "corrupt" / path.name).exists() and spool.stats()["corrupt"] == 1
    assert spool.pending(set(), 10) == ["run1-cam0-1"]


@pytest.mark.parametrize(
    ("blob", "message"),
    [(b"", "not a proad spool"), (b"PROADNG1" + b"\0" * 20, "checksum"), (b"XXXXXXXX" + b"\0" * 20, "not a proad")],
)
def test_spool_unpack_refuses(blob: bytes, message: str) -> None:
    with pytest.raises(SpoolError, match=message):
        unpack(blob)


def test_spool_directory_that_cannot_exist(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(SpoolError, match="cannot create the spool directory"):
        Spool(tmp_path / "file" / "spool")


# -- fail-safe windows ----------------------------------------------------------------------------


def _frame(i: int, t: float) -> Frame:
    return Frame("cam0", i, 0.0, t, np.zeros((4, 4, 3), np.uint8))


def test_inspection_windows() -> None:
    w = InspectionWindows(100.0)
    a, b, c = _frame(0, 10.0), _frame(1, 10.05), _frame(2, 10.06)
    for f in (a, b, c):
        w.accept(f)
    assert w.due(now=10.09) == []
    assert w.next_due_in(now=10.09) == pytest.approx(0.01)
    w.give_up(c, "queue_full")  # dropped from the queue: due at once
    assert w.due(now=10.09) == [(c, "queue_full")]
    assert w.due(now=10.11) == [(a, "timeout")]
    assert not w.resolve(a)  # its result came late: the fail-safe NG already went out
    assert w.resolve(b)  # in time
    assert w.due(now=99.0) == []
    off = InspectionWindows(None)
    off.accept(a)
    off.give_up(a, "queue_full")
    assert off.resolve(a) and off.due(now=1e9) == [] and not off.enabled


# -- NG channel protocol and archiver -------------------------------------------------------------


def test_archiver_messages_parse_or_refuse() -> None:
    assert parse_archiver_message([HELLO]) == (HELLO, None)
    assert parse_archiver_message([ACK, b"run1-cam0-3"]) == (ACK, "run1-cam0-3")
    for bad in ([], [b"HELLO", b"x"], [ACK], [ACK, b""], [ACK, b"x" * 161], [ACK, b"\xff\xfe"], [b"NOPE"]):
        with pytest.raises(ProtocolError):
            parse_archiver_message(bad)


def test_archiver_stores_once_and_keeps_what_it_cannot_parse(tmp_path: Path) -> None:
    archiver = Archiver("tcp://127.0.0.1:1", tmp_path, fsync=False)  # nothing listens: handle() is offline
    try:
        rec = _record(4)
        parts = [NG, rec.result_id.encode(), *rec.parts]
        assert archiver.handle(parts) == ("run1-cam0-4", "stored")
        assert archiver.handle(parts) == ("run1-cam0-4", "duplicate")
        meta = json.loads((tmp_path / "cam0" / "run1-cam0-4.json").read_text())
        assert meta["header"]["score"] == 0.9 and meta["header"]["result_id"] == "run1-cam0-4"
        assert (tmp_path / "cam0" / "run1-cam0-4.jpg").read_bytes() == b"\xff\xd8jpeg"
        assert np.array_equal(np.load(tmp_path / "cam0" / "run1-cam0-4_map.npy"), np.full((8, 8), 4, np.float16))
        assert (tmp_path / "cam0" / "run1-cam0-4_map.png").stat().st_size > 0
        bad = [NG, b"run1-cam0-5", b"{broken", b"\0"]
        assert archiver.handle(bad) == ("run1-cam0-5", "rejected")  # acknowledged, kept raw, not looping
        assert (tmp_path / "rejected" / "run1-cam0-5.bin").exists()
        assert archiver.handle([b"HELLO"]) == (None, "ignored")
        assert archiver.handle([NG, b"../../etc/passwd", b"{}", b""]) == (None, "ignored")
        assert (archiver.stored, archiver.duplicates, archiver.rejected) == (1, 1, 1)
    finally:
        archiver.close()


# -- CURVE keys -----------------------------------------------------------------------------------


def test_keys_and_their_errors(tmp_path: Path) -> None:
    public, secret = create_keypair(tmp_path, "server")
    create_keypair(tmp_path, "archiver", allowed_dir=tmp_path / "allowed")
    assert (tmp_path / "allowed" / "archiver.key").exists() and secret.stat().st_mode & 0o077 == 0
    with pytest.raises(FileExistsError):
        create_keypair(tmp_path, "server")
    with pytest.raises(StartupError, match="both"):
        client_keys(tmp_path / "archiver.key_secret", None)
    ctx = zmq.Context()
    try:
        with pytest.raises(StartupError, match="holds no secret key"):
            CurveServer(str(public), str(tmp_path / "allowed"), ctx)
        with pytest.raises(StartupError, match="no client public keys"):
            (tmp_path / "empty").mkdir()
            CurveServer(str(secret), str(tmp_path / "empty"), ctx)
        (tmp_path / "junk.key_secret").write_text("not a certificate")
        with pytest.raises(StartupError, match="not a ZeroMQ certificate"):
            CurveServer(str(tmp_path / "junk.key_secret"), str(tmp_path / "allowed"), ctx)
    finally:
        ctx.term()


# -- health ---------------------------------------------------------------------------------------


def test_prometheus_metrics_read_the_telemetry() -> None:
    t = Telemetry({"model_id": "m"})
    t.count("frames_in", "cam0", 7)
    t.count("ng", "cam0", 2)
    t.drop("cam0", "queue_full", 3)
    t.failsafe_ng("cam0", "timeout")
    t.event("ng_delivered", 5)
    t.event("auth_failures.publish")
    t.gauge("spool_depth", 4)
    t.gauge("spool_depth.mqtt", 6)  # a further NG channel's (ng_channels), named mqtt
    t.add_connection("publish", 2)
    for ms in (3.0, 30.0, 300.0):
        t.observe({"total": ms})
    server = MetricsServer(t, 0)
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=5).read().decode()
    finally:
        server.close()
    expected = [
        'proad_frames_in_total{camera="cam0"} 7.0',
        'proad_ng_total{camera="cam0"} 2.0',
        'proad_dropped_total{camera="cam0",reason="queue_full"} 3.0',
        'proad_failsafe_ng_total{camera="cam0",reason="timeout"} 1.0',
        'proad_events_total{event="ng_delivered"} 5.0',
        'proad_events_total{event="auth_failures.publish"} 1.0',
        "proad_spool_depth 4.0",
        'proad_channel_spool_depth{channel="mqtt"} 6.0',
        'proad_connections{socket="publish"} 2.0',
        # cumulative buckets: 3 ms falls in le=5, 30 in le=35, 300 in le=500
        'proad_latency_ms_bucket{le="5",stage="total"} 1.0',
        'proad_latency_ms_bucket{le="35",stage="total"} 2.0',
        'proad_latency_ms_bucket{le="250",stage="total"} 2.0',
        'proad_latency_ms_bucket{le="+Inf",stage="total"} 3.0',
        'proad_latency_ms_count{stage="total"} 3.0',
        'proad_latency_ms_sum{stage="total"} 333.0',
    ]
    for line in expected:
        assert line in text, line


def test_metrics_port_in_use_is_a_startup_error() -> None:
    first = MetricsServer(Telemetry(), 0)
    try:
        with pytest.raises(StartupError, match="cannot serve Prometheus metrics"):
            MetricsServer(Telemetry(), first.port)
    finally:
        first.close()


# -- hardened config ------------------------------------------------------------------------------


def _minimal() -> dict:
    return {"cameras": [{"id": "c", "source": {"kind": "synthetic"}}], "backend": {"model": "m.onnx"}}


def test_config_sections_and_hostile_documents(tmp_path: Path) -> None:
    cfg = PipelineConfig.model_validate({**_minimal(), "ng_channel": {}, "failsafe": {"window_ms": 500}})
    assert cfg.ng_channel is not None and cfg.ng_channel.when_full == "reject_new" and cfg.failsafe.window_ms == 500
    with pytest.raises(ValueError, match="curve: true needs"):
        PipelineConfig.model_validate({**_minimal(), "security": {"curve": True}})
    path = tmp_path / "c.yaml"
    # a "billion laughs": ten levels of ten aliases, a few hundred bytes that expand to 10^10 values
    lines = ['a0: &a0 ["x"]'] + [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 10)]
    path.write_text("\n".join(lines) + "\ncameras: *a9\n")
    t0 = time.monotonic()
    with pytest.raises(ConfigError, match="more than 10000 values"):
        load_pipeline_config(path)
    assert time.monotonic() - t0 < 5
    path.write_text("x: " + "y" * (1024 * 1024 + 1))
    with pytest.raises(ConfigError, match="a config is at most"):
        load_pipeline_config(path)
    path.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(ConfigError, match="cannot read it as text"):
        load_pipeline_config(path)
    path.write_text(json.dumps(_minimal()))
    path = path.rename(tmp_path / "c.json")
    with pytest.raises(ConfigError, match="is a value, not a section"):
        load_pipeline_config(path, ["backend.model.deeper=1"])
    with pytest.raises(ConfigError, match="not a dotted path"):
        load_pipeline_config(path, ["backend..model=1"])
    with pytest.raises(ConfigError, match="at most 4096 characters"):
        load_pipeline_config(path, ["backend.model=" + "m" * 5000])


def test_keys_and_archive_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from proad.edge.cli import archive_main, edge_main

    assert edge_main(["keys", "--out", str(tmp_path), "server", "archiver1", "--allowed-dir",
                      str(tmp_path / "allowed")]) == 0  # fmt: skip
    assert {p.name for p in (tmp_path / "allowed").iterdir()} == {"server.key", "archiver1.key"}
    assert edge_main(["keys", "--out", str(tmp_path), "server"]) == 2  # never overwrites a key
    assert "refusing to overwrite" in capsys.readouterr().err
    # an archiver with half its CURVE arguments is refused with one line, exit 2
    code = archive_main(["--out", str(tmp_path / "a"), "--curve-key", str(tmp_path / "archiver1.key_secret")])
    assert code == 2 and "needs both" in capsys.readouterr().err
    # and runs, stores nothing, exits 0 when nothing comes
    assert archive_main(["--out", str(tmp_path / "a"), "--endpoint", "tcp://127.0.0.1:1", "--seconds", "0.3"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == {"stored": 0, "duplicates": 0,
                                                                             "rejected": 0}
