"""The daemon end to end over loopback: a real model, real sockets, the synthetic camera."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import zmq

from proad.edge.backends import Backend, ModelLoadError, load_backend
from proad.edge.backends.base import WorkerPool
from proad.edge.config import BackendConfig, PipelineConfig, SyntheticSource
from proad.edge.daemon import Daemon
from proad.edge.ports import free_ports
from proad.edge.sources import SourceError, SyntheticCamera
from proad.edge.status import query_status
from proad.edge.subscriber import Subscriber


def config(onnx: Path, cameras: list[dict], **extra: object) -> PipelineConfig:
    data = {
        "cameras": cameras,
        "backend": {"kind": "onnxruntime", "model": str(onnx), "threads": 2, "max_batch": 4},
        "publish": {"endpoint": "tcp://127.0.0.1:*"},
        "status": {"endpoint": "tcp://127.0.0.1:*"},
    }
    data.update(extra)
    return PipelineConfig.model_validate(data)


def camera(cam_id: str, **source: object) -> dict:
    return {"id": cam_id, "reconnect_initial_s": 0.01, "source": {"kind": "synthetic", "category": "board", **source}}


LOSSLESS = {"when_full": "wait"}  # the camera waits for room: tests that count every frame drop none


def connect(daemon: Daemon, **kw: object) -> Subscriber:
    """A subscriber whose subscription has taken effect at the daemon (not yet started), so it gets
    every result: waits for the subscription itself, not for a sleep to be long enough."""
    sub = Subscriber(daemon.publisher.endpoint, **kw)
    assert daemon.publisher.wait_for_subscriptions(daemon.publisher.subscriptions + 1, 60), "no subscription"
    return sub


def run_to_end(daemon: Daemon, subs: list[Subscriber], timeout: float = 60) -> list[list]:
    got: list[list] = [[] for _ in subs]
    daemon.start()
    assert daemon.wait(timeout), "cameras did not finish"
    daemon.stop()
    for i, sub in enumerate(subs):
        while (r := sub.recv(timeout_ms=1500)) is not None:  # generous: a loaded CI machine delivers late
            got[i].append(r)
        sub.close()
    return got


def test_results_are_contiguous_typed_and_right(board_model, backend) -> None:
    # the camera waits for room (lossless): this test is about what is published, on any machine
    cfg = config(board_model[1], [camera("cam0", fps=60, defect_rate=0.3, pool=24, max_frames=48)], queues=LOSSLESS)
    daemon = Daemon(cfg, backend=backend)
    (results,) = run_to_end(daemon, [connect(daemon)])
    assert [r.header.seq for r in results] == list(range(48))
    assert [r.header.frame_index for r in results] == list(range(48))
    for r in results:
        assert r.map.shape == (256, 256) and r.map.dtype == np.float16
        assert r.header.map_shape == (256, 256) and r.header.model_id == backend.info.model_id
        assert (r.frame() is not None) == (r.header.decision == "NG")  # JPEG attached for NG by default
    # the daemon adds nothing to the model: same score and decision as the backend alone on the same frames
    cam = SyntheticCamera(SyntheticSource(category="board", defect_rate=0.3, pool=24, fps=1000))
    cam.open()
    frames = np.stack([img for img, _ in cam.pool])
    _, scores = backend.infer(frames[:4])
    for r in results[:4]:
        assert r.header.score == pytest.approx(float(scores[r.header.frame_index]), abs=1e-4)
    # NG where the camera injected defects, within the model's accuracy
    truth = np.array([r.header.annotations["injected_defect"] != "none" for r in results])
    ng = np.array([r.header.decision == "NG" for r in results])
    assert truth.any() and (~truth).any()
    assert (ng == truth).mean() >= 0.85, f"agreement {(ng == truth).mean():.2f}"


def test_cameras_batch_together_with_their_own_sequences(board_model, backend) -> None:
    cfg = config(board_model[1], [camera("a", fps=30, max_frames=30, seed=1, pool=8),
                                  camera("b", fps=30, max_frames=20, seed=2, pool=8)], queues=LOSSLESS)
    daemon = Daemon(cfg, backend=backend)
    (results,) = run_to_end(daemon, [connect(daemon)])
    snap = daemon.telemetry.snapshot()
    assert snap["published"] == {"a": 30, "b": 20} and not snap["dropped"]
    for cam, n in (("a", 30), ("b", 20)):
        assert [r.header.seq for r in results if r.header.camera_id == cam] == list(range(n))


class OutOfOrder(Backend):
    """The real backend, called by two inference threads at once: the call holding the first frame
    returns only after a later call has, so batches come back out of order; the third call fails."""

    def __init__(self, inner: Backend, first_frame: np.ndarray) -> None:
        self.inner, self.info, self.max_batch, self.parallel_calls = inner, inner.info, 2, 2
        self.first_frame = first_frame
        self.lock = threading.Lock()
        self.calls = self.running = self.most_running = 0
        self.failed = 0  # frames in the failed call
        self.overtaken = False  # the first frame's call returned after a later one
        self.later_returned = threading.Event()

    def infer(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        first = any(np.array_equal(im, self.first_frame) for im in images)
        with self.lock:
            self.calls += 1
            call = self.calls
            self.running += 1
            self.most_running = max(self.most_running, self.running)
        try:
            if first:
                self.overtaken = self.later_returned.wait(60)
            elif call == 3:
                self.failed = len(images)
                raise RuntimeError("device lost (injected)")
            return self.inner.infer(images)
        finally:
            with self.lock:
                self.running -= 1
            if not first:
                self.later_returned.set()


def test_batches_in_flight_are_published_in_capture_order(board_model, backend) -> None:
    """Two batches in inference at once (a backend that runs calls side by side): the first batch
    comes back after the second, and a failed batch's frames are dropped and counted; every other
    frame is published once, each camera's in capture order, with its own score. A backend that runs
    one call at a time (TensorRT's) refuses to be called from two threads."""
    cam = SyntheticCamera(SyntheticSource(category="board", defect_rate=0.3, pool=24, fps=1000))
    cam.open()
    pool = np.stack([img for img, _ in cam.pool])
    cfg = config(board_model[1], [camera("cam0", fps=200, pool=24, max_frames=24, defect_rate=0.3)], queues=LOSSLESS)
    single = load_backend(BackendConfig(model=str(board_model[1]), threads=2))
    single.thread_safe = False  # as the TensorRT backend
    with pytest.raises(ModelLoadError, match="one call at a time"):
        Daemon(cfg.model_copy(update={"backend": cfg.backend.model_copy(update={"in_flight": 2})}), backend=single)
    flaky = OutOfOrder(backend, pool[0])
    daemon = Daemon(cfg, backend=flaky)
    assert daemon.in_flight == 2  # backend.in_flight unset: as many as the backend runs side by side
    (results,) = run_to_end(daemon, [connect(daemon)])
    assert flaky.overtaken and flaky.most_running == 2 and flaky.failed >= 1
    snap = daemon.telemetry.snapshot()
    assert snap["dropped"] == {"backend_error": {"cam0": flaky.failed}}
    assert len(results) == snap["published"]["cam0"] == 24 - flaky.failed
    assert [r.header.seq for r in results] == list(range(len(results)))
    indices = [r.header.frame_index for r in results]
    assert indices[0] == 0 and indices == sorted(indices) and len(set(indices)) == len(indices)
    _, scores = backend.infer(pool)
    for r in results:
        assert r.header.score == pytest.approx(float(scores[r.header.frame_index]), abs=1e-4)


def test_camera_filter_and_ng_only(board_model, backend) -> None:
    cfg = config(board_model[1], [camera("a", fps=30, max_frames=20, pool=8, defect_rate=0.5),
                                  camera("b", fps=30, max_frames=20, pool=8)])
    daemon = Daemon(cfg, backend=backend)
    only_a, ng_a = connect(daemon, camera="a"), connect(daemon, camera="a", decision="NG")
    a, ng = run_to_end(daemon, [only_a, ng_a])
    assert {r.header.camera_id for r in a} == {"a"} and len(a) == daemon.telemetry.snapshot()["published"]["a"]
    assert [r.header.seq for r in ng] == [r.header.seq for r in a if r.header.decision == "NG"]


def test_corrupt_frames_are_counted_not_fatal(board_model, backend) -> None:
    cfg = config(board_model[1], [camera("cam0", fps=100, max_frames=42, corrupt_every=7, pool=8)], queues=LOSSLESS)
    daemon = Daemon(cfg, backend=backend)
    (results,) = run_to_end(daemon, [connect(daemon)])
    snap = daemon.telemetry.snapshot()
    assert snap["dropped"]["corrupt"] == {"cam0": 6} and snap["frames_in"] == {"cam0": 42}
    assert [r.header.seq for r in results] == list(range(36))  # contiguous over what was published
    assert {r.header.frame_index for r in results} == {i for i in range(42) if (i + 1) % 7}


class UnpluggedCamera(SyntheticCamera):
    """Goes away after 10 frames: three failed reads and one failed reopen, then it is back."""

    def __init__(self, cfg: SyntheticSource) -> None:
        super().__init__(cfg)
        self.failures, self.reopen_failures = 3, 1

    def open(self) -> None:
        if self.count >= 10 and self.failures == 0 and self.reopen_failures:
            self.reopen_failures -= 1
            raise SourceError("device not found")
        super().open()

    def read(self) -> np.ndarray | None:
        if self.count >= 10 and self.failures:
            self.failures -= 1
            raise SourceError("camera unplugged")
        return super().read()


def test_a_vanished_camera_is_reopened(board_model, backend, caplog: pytest.LogCaptureFixture) -> None:
    # lossless queue: this test is about reopening, and a loaded machine would drop the oldest frames
    cfg = config(board_model[1], [camera("cam0", fps=100, max_frames=25, pool=8)], queues=LOSSLESS)
    source = UnpluggedCamera(cfg.cameras[0].source)
    daemon = Daemon(cfg, backend=backend, sources={"cam0": source})
    (results,) = run_to_end(daemon, [connect(daemon)])
    snap = daemon.telemetry.snapshot()
    assert snap["reconnects"] == {"cam0": 4}
    assert len(results) == 25 and [r.header.seq for r in results] == list(range(25))
    assert "camera unplugged; reopening" in caplog.text and "device not found" in caplog.text


def test_slow_subscriber_slows_nobody(board_model, backend) -> None:
    # The slow subscriber reads nothing until half the frames are published, then slowly. With a
    # lossless frame queue, a publisher that waited for it would stall inference, then the camera,
    # before that half: the run would never end. So ending at all is the proof, on any machine (how
    # fast the daemon runs beside such a subscriber is bench/pipeline.py's question).
    cfg = config(board_model[1], [camera("cam0", fps=60, max_frames=120, pool=8)],
                 publish={"endpoint": "tcp://127.0.0.1:*", "hwm": 10}, queues=LOSSLESS)
    daemon = Daemon(cfg, backend=backend)
    fast = connect(daemon)
    slow_ctx = zmq.Context()
    slow = Subscriber(daemon.publisher.endpoint, hwm=2, ctx=slow_ctx)
    slow.sock.setsockopt(zmq.RCVBUF, 4096)  # and a small kernel buffer: it really cannot keep up
    assert daemon.publisher.wait_for_subscriptions(2, 60)  # subscribed: the publisher must serve it too
    slow_got: list = []
    stop = threading.Event()

    def read_slowly() -> None:
        while daemon.telemetry.snapshot()["published"].get("cam0", 0) < 60 and not stop.is_set():
            time.sleep(0.01)
        while not stop.is_set():
            r = slow.recv(timeout_ms=100)
            if r is not None:
                slow_got.append(r)
                time.sleep(0.2)

    reader = threading.Thread(target=read_slowly)
    reader.start()
    try:
        (results,) = run_to_end(daemon, [fast], timeout=120)
    finally:
        if not daemon.wait(0):
            stop.set()
    while slow.sock.poll(1500):  # let the slow one read what reached it
        time.sleep(0.2)
    stop.set()
    reader.join()
    slow.close()
    slow_ctx.term()
    snap = daemon.telemetry.snapshot()
    assert len(results) == 120 and fast.missed["cam0"] == 0  # the fast one got everything
    assert snap["published"] == {"cam0": 120} and not snap["dropped"]
    # the slow one lost messages at the high-water marks, and its sequence numbers say how many were
    # lost before the last one it got (a loss after that leaves no gap to see: on a loaded machine
    # it may have read the first half without a gap and lost only the rest)
    assert len(slow_got) < 120
    assert len(slow_got) + slow.missed["cam0"] == slow_got[-1].header.seq + 1
    assert sum(r.missed_before for r in slow_got) == slow.missed["cam0"]


def _cli(*args: str, **kw: object) -> subprocess.Popen:
    """``proad-edge`` in a fresh process where torch cannot be imported: the edge runtime needs none."""
    code = "import sys; sys.modules['torch'] = None\nfrom proad.edge.cli import edge_main; sys.exit(edge_main())"
    return subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, **kw)


def test_sigterm_drains_and_loses_nothing_accepted(board_model, tmp_path: Path) -> None:
    pub, status = free_ports(2)
    cfg = {
        "cameras": [camera("cam0", fps=300, pool=8)],
        "backend": {"kind": "onnxruntime", "model": str(board_model[1]), "threads": 1, "max_batch": 1},
        "publish": {"endpoint": f"tcp://127.0.0.1:{pub}", "hwm": 100000},
        "status": {"endpoint": f"tcp://127.0.0.1:{status}"},
        "queues": {"frames_per_camera": 40},
        "log_level": "WARNING",
    }
    path = tmp_path / "edge.json"
    path.write_text(json.dumps(cfg))
    proc = _cli("run", "--config", str(path))
    # Connect only once the daemon answers its status (it binds the publisher before that): a SUB that
    # dials a free local port can connect to itself (Linux's TCP self-connect), and then the daemon
    # could not bind it. ZeroMQ's slow joiner: the daemon publishes before our subscription takes
    # effect. Once its status counts the subscription, every later result reaches us: published by then
    # bounds the first we see (the publisher counts a subscription when it next publishes, so this
    # also waits for the first result)
    deadline, last = time.monotonic() + 120, "no status answer yet"  # a safety net for a loaded machine
    sub: Subscriber | None = None
    while True:
        assert proc.poll() is None, f"the daemon exited: {proc.communicate()[1][-2000:]}"
        assert time.monotonic() < deadline, f"the daemon did not take the subscription; last status: {last}"
        try:
            subscribed = query_status(f"tcp://127.0.0.1:{status}", timeout_ms=1000)
        except TimeoutError:
            continue
        if sub is None:
            sub = Subscriber(f"tcp://127.0.0.1:{pub}", hwm=100000)
        last = str({k: subscribed.get(k) for k in ("published", "events", "frames_in")})[:500]
        if subscribed["events"].get("subscriptions.publish", 0) >= 1:
            break
        time.sleep(0.05)  # poll interval
    got = []
    while len(got) < 30 and time.monotonic() < deadline:  # running, and behind the camera
        if (r := sub.recv(timeout_ms=500)) is not None:
            got.append(r)
    snap = query_status(f"tcp://127.0.0.1:{status}", timeout_ms=30_000)
    assert snap["model"]["model_id"] and snap["frames_in"]["cam0"] >= 30
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    while (r := sub.recv(timeout_ms=1000)) is not None:
        got.append(r)
    sub.close()
    final = json.loads(out.strip().splitlines()[-1])
    dropped = sum(sum(c.values()) for c in final["dropped"].values())
    assert final["published"]["cam0"] == final["frames_in"]["cam0"] - dropped  # every accepted frame published
    # ...and reached the subscriber: everything from the first message it saw (a subscriber that
    # joins as the daemon starts misses the first few: ZeroMQ's slow joiner) to the last
    first = got[0].header.seq
    assert first <= subscribed["published"].get("cam0", 0)
    assert [r.header.seq for r in got] == list(range(first, final["published"]["cam0"]))
    assert sub.missed["cam0"] == 0
    assert "queue_full" in final["dropped"]  # the camera outran inference, so frames were waiting at SIGTERM


def test_startup_errors_exit_2_with_one_line(board_model, tmp_path: Path) -> None:
    cfg = {"cameras": [camera("cam0", fps=10)], "backend": {"model": str(tmp_path / "missing.onnx")},
           "status": {"endpoint": None}}
    path = tmp_path / "edge.json"
    path.write_text(json.dumps(cfg))
    proc = _cli("run", "--config", str(path))
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "model file not found" in err and "Traceback" not in err
    blocker = zmq.Context.instance().socket(zmq.PUB)
    port = blocker.bind_to_random_port("tcp://127.0.0.1")
    cfg.update(backend={"model": str(board_model[1])}, publish={"endpoint": f"tcp://127.0.0.1:{port}"})
    path.write_text(json.dumps(cfg))
    proc = _cli("run", "--config", str(path))
    _, err = proc.communicate(timeout=60)
    blocker.close(0)
    assert proc.returncode == 2 and "cannot bind the publish socket" in err


def test_torch_backend_agrees_with_onnxruntime(board_model, backend) -> None:
    torch_backend = load_backend(BackendConfig(kind="torch", model=str(board_model[0]), threads=2))
    assert torch_backend.info.model_id == backend.info.model_id
    assert_same_results(torch_backend, backend)


def assert_same_results(a, b) -> None:
    """Two backends give the same maps and scores on the synthetic camera's frames (float error)."""
    cam = SyntheticCamera(SyntheticSource(category="board", defect_rate=0.5, pool=3, fps=1000))
    cam.open()
    frames = np.stack([img for img, _ in cam.pool])
    m1, s1 = a.infer(frames)
    m2, s2 = b.infer(frames)
    np.testing.assert_allclose(s1, s2, atol=1e-4)
    np.testing.assert_allclose(m1, m2, atol=1e-4)


def assert_two_in_flight(two: Backend, pool: WorkerPool, reference: Backend, onnx_path: Path) -> None:
    """``two`` (a backend that runs two calls side by side on ``pool``, one frame a call) in the daemon:
    two batches in flight, each frame published once, in capture order, with the reference's score."""
    assert two.parallel_calls == 2 and two.max_batch == 1
    cfg = config(onnx_path, [camera("cam0", fps=200, pool=24, max_frames=24, defect_rate=0.3)], queues=LOSSLESS)
    daemon = Daemon(cfg, backend=two)
    assert daemon.in_flight == 2
    (results,) = run_to_end(daemon, [connect(daemon)])
    assert pool.peak == 2  # two calls ran at once
    assert [(r.header.seq, r.header.frame_index) for r in results] == [(i, i) for i in range(24)]
    cam = SyntheticCamera(SyntheticSource(category="board", defect_rate=0.3, pool=24, fps=1000))
    cam.open()
    _, scores = reference.infer(np.stack([img for img, _ in cam.pool]))
    np.testing.assert_allclose([r.header.score for r in results], scores, atol=1e-4)


def test_onnxruntime_sessions_run_side_by_side(board_model, backend) -> None:
    """``onnxruntime.sessions: 2``: two one-thread sessions, the same maps and scores, two batches in flight."""
    two = load_backend(BackendConfig(model=str(board_model[1]), threads=2, max_batch=1,
                                     onnxruntime={"sessions": 2}))
    assert [s.get_session_options().intra_op_num_threads for s in two.sessions.workers] == [1, 1]
    for _ in two.sessions.workers:  # each call takes the session that waited longest: both are compared
        assert_same_results(two, backend)
    with pytest.raises(ValueError, match="needs at least as many threads"):
        BackendConfig(model=str(board_model[1]), threads=1, onnxruntime={"sessions": 2})
    assert_two_in_flight(two, two.sessions, backend, board_model[1])


def test_openvino_backend_agrees_with_onnxruntime(board_model, backend, tmp_path: Path) -> None:
    """The same .onnx on OpenVINO's CPU plugin: same model identity, maps and scores within float error;
    a file without proad's metadata is refused with one line."""
    pytest.importorskip("openvino", reason="the openvino backend needs openvino (pip install '.[openvino]')")
    from proad.edge.backends import ModelLoadError

    for options, requests in (({"hint": "latency"}, 1), ({"hint": "throughput", "streams": 2}, 2)):
        ov_backend = load_backend(BackendConfig(kind="openvino", model=str(board_model[1]), threads=2,
                                                openvino=options))
        assert ov_backend.info.model_id == backend.info.model_id and ov_backend.info.backend == "openvino"
        assert len(ov_backend.requests) == requests  # throughput: three frames run as parts of 2 and 1 at once
        assert_same_results(ov_backend, backend)
        frame = np.zeros((1, 256, 256, 3), np.uint8)
        with pytest.raises(RuntimeError):  # OpenVINO: a frame of the wrong size
            ov_backend.infer(np.zeros((3, 64, 64, 3), np.uint8))
        # no request was left running: the next calls, one frame (fewer than the streams) and a batch, work
        np.testing.assert_allclose(ov_backend.infer(frame)[1], backend.infer(frame)[1], atol=1e-4)
        assert_same_results(ov_backend, backend)
        assert ov_backend.parallel_calls == requests
        ov_backend.close()
    # throughput: the daemon keeps two batches (of one frame) in flight, one per stream, in order
    two = load_backend(BackendConfig(kind="openvino", model=str(board_model[1]), threads=2, max_batch=1,
                                     openvino={"hint": "throughput", "streams": 2}))
    assert_two_in_flight(two, two.requests, backend, board_model[1])
    import onnx

    bare = onnx.load(str(board_model[1]))
    del bare.metadata_props[:]
    onnx.save(bare, str(tmp_path / "bare.onnx"))
    with pytest.raises(ModelLoadError, match="not a proad-export ONNX model"):
        load_backend(BackendConfig(kind="openvino", model=str(tmp_path / "bare.onnx")))


def test_a_tiled_camera_publishes_stitched_maps_beside_a_plain_one(board_model, backend) -> None:
    """A camera with ``tiles: [2, 2]`` shares batches with an untiled one: its frames are fitted to
    512 x 512, inferred as four tiles, published with the stitched map and the worst tile's score."""
    from proad.data.tiling import infer_tiled
    from proad.edge.preprocess import prepare

    tiled = {**camera("tiled", fps=60, max_frames=6, pool=6, seed=3, defect_rate=0.5), "tiles": [2, 2]}
    cfg = config(board_model[1], [tiled, camera("plain", fps=60, max_frames=6, pool=6, seed=4)], queues=LOSSLESS)
    daemon = Daemon(cfg, backend=backend)
    assert daemon.grids == {"tiled": (2, 2), "plain": (1, 1)}
    (results,) = run_to_end(daemon, [connect(daemon)])
    by_cam = {cam: [r for r in results if r.header.camera_id == cam] for cam in ("tiled", "plain")}
    assert [r.header.seq for r in by_cam["tiled"]] == list(range(6)) and len(by_cam["plain"]) == 6
    assert all(r.map.shape == (512, 512) and r.header.map_shape == (512, 512) for r in by_cam["tiled"])
    assert all(r.map.shape == (256, 256) for r in by_cam["plain"])
    cam = SyntheticCamera(SyntheticSource(category="board", defect_rate=0.5, pool=6, seed=3, fps=1000))
    cam.open()
    frames = [prepare(img, 256, backend.info.resize, (2, 2)) for img, _ in cam.pool]
    _, scores = infer_tiled(backend.infer, frames, 256, backend.max_batch)
    for r in by_cam["tiled"]:
        assert r.header.score == pytest.approx(float(scores[r.header.frame_index % 6]), abs=1e-4)


def test_a_rectangular_model_publishes_maps_of_its_own_shape(wide_export) -> None:
    """A model with a 128 x 224 input: the daemon fits each camera frame to that rectangle (as
    training did), publishes 128 x 224 maps, and each score is the backend's on the frame prepared
    the same way."""
    from proad.edge.preprocess import prepare

    wide = load_backend(BackendConfig(model=str(wide_export[1]), threads=2, max_batch=4))
    cfg = config(wide_export[1], [camera("wide", fps=60, max_frames=5, pool=5, seed=6, defect_rate=0.4)],
                 queues=LOSSLESS)
    daemon = Daemon(cfg, backend=wide)
    assert daemon.map_shapes == {"wide": (128, 224)}
    (results,) = run_to_end(daemon, [connect(daemon)])
    assert [r.header.seq for r in results] == list(range(5))
    assert all(r.map.shape == (128, 224) and r.header.map_shape == (128, 224) for r in results)
    cam = SyntheticCamera(SyntheticSource(category="board", defect_rate=0.4, pool=5, seed=6, fps=1000))
    cam.open()
    _, scores = wide.infer(np.stack([prepare(img, (128, 224), wide.info.resize) for img, _ in cam.pool]))
    for r in results:
        assert r.header.score == pytest.approx(float(scores[r.header.frame_index % 5]), abs=1e-4)
