"""Edge runtime pieces on their own: config, wire format, preprocess, queues, sources, backends."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest
import zmq

from proad.artifacts import EngineInfo
from proad.edge.backends import ModelLoadError
from proad.edge.backends.tensorrt_backend import TensorSpec, check_engine_info, plan_buffers, read_sidecar
from proad.edge.config import BackendConfig, ConfigError, SyntheticSource, load_pipeline_config
from proad.edge.frames import Frame, FrameQueues
from proad.edge.messages import FrameResult, WireError, decode, encode_map, map_to_float, topic
from proad.edge.ports import ephemeral_range, free_ports, port_free
from proad.edge.preprocess import CorruptFrame, prepare
from proad.edge.sources import ImageFolder, OpenCVCamera, SourceError, SyntheticCamera
from proad.edge.subscriber import Subscriber

GOOD = {
    "cameras": [{"id": "line1", "source": {"kind": "synthetic", "category": "board", "fps": 10}}],
    "backend": {"kind": "onnxruntime", "model": "m.onnx"},
}


def _write(tmp_path: Path, data: object, name: str = "edge.json") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


# -- config ---------------------------------------------------------------------------------------


def test_config_loads_and_overrides(tmp_path: Path) -> None:
    cfg = load_pipeline_config(_write(tmp_path, GOOD), ["backend.threads=3", "cameras.0.source.fps=15",
                                                        "publish.jpeg=always"])
    assert cfg.backend.threads == 3 and cfg.cameras[0].source.fps == 15 and cfg.publish.jpeg == "always"
    yaml_path = _write(tmp_path, "cameras:\n  - id: a\n    source: {kind: opencv, uri: 0}\nbackend: {model: x.onnx}\n",
                       "edge.yaml")
    assert load_pipeline_config(yaml_path).cameras[0].source.uri == 0


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d["cameras"][0].update(idd="x"), "cameras.0.idd: Extra inputs are not permitted"),
        (lambda d: d["cameras"][0]["source"].update(fps=-1), "cameras.0.source.synthetic.fps: Input should be greater"),
        (lambda d: d["cameras"][0].update(id="bad id/with slash"), "cameras.0.id: String should match pattern"),
        (lambda d: d["cameras"].append(dict(d["cameras"][0])), "camera ids must be unique, repeated: line1"),
        (lambda d: d["backend"].update(kind="tflite"), "backend.kind: Input should be 'onnxruntime'"),
        (lambda d: d.pop("backend"), "backend: Field required"),
        (lambda d: d.update(cameras=[]), "cameras: List should have at least 1 item"),
        (lambda d: d.update(ng_channels=[{"name": "mqtt"}]), "ng_channels adds channels beside ng_channel, which"),
        (lambda d: d.update(ng_channel={}, ng_channels=[{"name": "mqtt"}]), "each NG channel needs its own endpoint"),
        (lambda d: d.update(ng_channel={}, ng_channels=[{"endpoint": "tcp://*:5558", "spool_dir": "s2"}]),
         "each NG channel needs its own name, repeated: ['archive', 'archive']"),
        (lambda d: d.update(ng_channel={"spool_dir": "sp"}, ng_channels=[{"name": "mqtt", "spool_dir": "./sp",
                                                                         "endpoint": "tcp://*:5558"}]),
         "each NG channel needs its own spool_dir"),
        (lambda d: d.update(ng_channel={"spool_dir": "sp"}, ng_channels=[{"name": "mqtt", "spool_dir": "sp/mqtt",
                                                                         "endpoint": "tcp://*:5558"}]),
         "NG channel spools must not lie inside each other"),
    ],
)
def test_malformed_config_names_field_and_reason(tmp_path: Path, mutate, message: str) -> None:
    data = json.loads(json.dumps(GOOD))
    mutate(data)
    with pytest.raises(ConfigError) as err:
        load_pipeline_config(_write(tmp_path, data))
    assert message in str(err.value)


def test_config_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_pipeline_config(tmp_path / "none.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_pipeline_config(_write(tmp_path, "cameras: [\n", "bad.yaml"))
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_pipeline_config(_write(tmp_path, "[1, 2]"))
    with pytest.raises(ConfigError, match="key=value"):
        load_pipeline_config(_write(tmp_path, GOOD), ["threads"])


def test_check_config_cli_exits_2_with_one_line(tmp_path: Path) -> None:
    data = json.loads(json.dumps(GOOD))
    data["publish"] = {"map_dtype": "int8"}
    out = subprocess.run([sys.executable, "-c", "from proad.edge.cli import edge_main; raise SystemExit(edge_main())",
                          "check-config", "--config", str(_write(tmp_path, data))],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and "publish.map_dtype" in out.stderr and "Traceback" not in out.stderr


# -- wire format ----------------------------------------------------------------------------------


def _header(**kw: object) -> FrameResult:
    base = dict(camera_id="c1", seq=3, frame_index=5, result_id="r1-c1-3", capture_ts=1.0, publish_ts=1.1, score=0.4,
                threshold=0.3, decision="NG", model_id="abc", map_shape=(4, 4), map_dtype="float16", map_scale=0.6)
    base.update(kw)
    return FrameResult(**base)


def test_wire_round_trip_float16_and_uint8() -> None:
    amap = np.linspace(0, 0.6, 16, dtype=np.float32).reshape(4, 4)
    h = _header()
    got_h, got_map, jpeg = decode([topic("c1", "NG"), h.model_dump_json().encode(), encode_map(amap, "float16", 0.6)])
    assert got_h == h and jpeg is None
    np.testing.assert_allclose(map_to_float(got_h, got_map), amap, atol=1e-3)
    h8 = _header(map_dtype="uint8", has_frame=True)
    _, m8, jpeg = decode([topic("c1", "NG"), h8.model_dump_json().encode(), encode_map(amap, "uint8", 0.6), b"jpg"])
    assert m8.dtype == np.uint8 and m8.max() == 255 and jpeg == b"jpg"
    np.testing.assert_allclose(map_to_float(h8, m8), amap, atol=0.6 / 255)


@pytest.mark.parametrize(
    ("parts", "message"),
    [
        ([b"proad/c1/NG", b"{}"], "expected 3 or 4"),
        ([b"other/c1", b"{}", b""], "not a proad topic"),
        ([b"proad/c1/NG", b"{not json", b""], "header is not JSON"),
        ([b"proad/c1/NG", _header().model_dump_json().replace('"schema_version":1', '"schema_version":9').encode(),
          b"\0" * 32], "unknown schema version '9'"),
        ([b"proad/c1/NG", b"[1, 2]", b""], "not an object"),
        ([b"proad/c2/NG", _header().model_dump_json().encode(), b"\0" * 32], "does not match the header"),
        ([b"proad/c1/NG", _header().model_dump_json().replace('"score":0.4', '"score":NaN').encode(),
          b"\0" * 32], "finite number"),
        ([b"proad/c1/NG", _header().model_dump_json().replace('"annotations":{}', '"annotations":{"k":"' + "v" * 300
                                                               + '"}').encode(), b"\0" * 32], "at most 256"),
        ([b"proad/c1/NG", _header().model_dump_json().encode(), b"\0" * 31], "map has 31 bytes"),
        ([b"proad/c1/NG", _header(has_frame=True).model_dump_json().encode(), b"\0" * 32], "frame part missing"),
        ([b"proad/c1/NG", b"x" * 70000, b""], "exceeds"),
    ],
)
def test_malformed_messages_are_refused(parts: list[bytes], message: str) -> None:
    with pytest.raises(WireError, match=message):
        decode(parts)


def test_free_ports_are_distinct_bindable_and_never_a_source_port() -> None:
    low, high = ephemeral_range()
    ports = free_ports(5)
    assert len(set(ports)) == 5
    assert all(not low <= p <= high for p in ports)  # the kernel never dials out from these
    ctx = zmq.Context()
    socks = [ctx.socket(zmq.PUB) for _ in ports]
    try:
        for sock, port in zip(socks, ports, strict=True):  # each one free for the service that asked
            assert port_free(port)
            sock.bind(f"tcp://127.0.0.1:{port}")
            assert not port_free(port)  # and seen as taken once bound
    finally:
        for sock in socks:
            sock.close(0)
        ctx.term()


def test_subscriber_counts_gaps_and_skips_invalid_messages() -> None:
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    sub = Subscriber(f"tcp://127.0.0.1:{port}", ctx=ctx)
    try:
        amap = encode_map(np.zeros((4, 4), np.float32), "float16", 1.0)
        got = None
        for _ in range(50):  # the slow joiner: publish until the subscription has arrived
            pub.send_multipart([topic("c1", "OK"), _header(seq=0, decision="OK").model_dump_json().encode(), amap])
            got = sub.recv(timeout_ms=100)
            if got is not None:
                break
        assert got is not None
        while sub.recv(timeout_ms=100) is not None:
            pass
        pub.send_multipart([topic("c1", "OK"), b"garbage", amap])
        pub.send_multipart([topic("c1", "NG"), _header(seq=5).model_dump_json().encode(), amap])
        r = sub.recv(timeout_ms=2000)
        assert r is not None and r.header.seq == 5 and r.missed_before == 4
        assert sub.missed["c1"] == 4 and sub.invalid == 1
    finally:
        sub.close()
        pub.close(0)
        ctx.term()


# -- preprocess, queues -----------------------------------------------------------------------------


def test_preprocess_converts_and_refuses() -> None:
    assert prepare(np.zeros((300, 400), np.uint8), 256).shape == (256, 256, 3)
    assert prepare(np.zeros((256, 256, 4), np.uint8), 256).shape == (256, 256, 3)
    wide = prepare(np.full((128, 128, 3), 65535, np.uint16), 256)
    assert wide.dtype == np.uint8 and wide.max() == 255
    for bad, message in [(np.zeros((0, 0, 3), np.uint8), "empty"), (np.zeros((64, 64, 3), np.float32), "pixel type"),
                         (np.zeros((64, 64, 2), np.uint8), "channels"), (None, "not an image"),
                         (np.zeros((4, 300, 3), np.uint8), "truncated")]:
        with pytest.raises(CorruptFrame, match=message):
            prepare(bad, 256)


def _frame(cam: str, i: int) -> Frame:
    return Frame(cam, i, 0.0, 0.0, np.zeros((2, 2, 3), np.uint8))


def test_queues_drop_the_oldest_and_share_batches() -> None:
    q = FrameQueues(["a", "b"], size=2)
    assert q.put(_frame("a", 0)) is None and q.put(_frame("a", 1)) is None
    dropped = q.put(_frame("a", 2))
    assert dropped is not None and dropped.frame_index == 0  # the oldest goes
    q.put(_frame("b", 0))
    batch = q.take(4, timeout=0.1)
    assert [(f.camera_id, f.frame_index) for f in batch] == [("a", 1), ("b", 0), ("a", 2)]
    assert q.take(4, timeout=0.05) == []
    q.put(_frame("b", 1))
    q.close()
    assert [f.frame_index for f in q.take(4, timeout=0.1)] == [1]  # closed: drained first
    assert q.take(4, timeout=0.1) is None


def test_queues_that_wait_drop_nothing_and_let_go_at_stop() -> None:
    q = FrameQueues(["a"], size=1, wait=True)
    assert q.put(_frame("a", 0)) is None
    done: list[Frame | None] = []
    putter = threading.Thread(target=lambda: done.append(q.put(_frame("a", 1))))
    putter.start()
    putter.join(0.2)
    assert putter.is_alive() and not done  # full: it waits, it does not drop the oldest
    assert [f.frame_index for f in q.take(4, timeout=1)] == [0]
    putter.join(30)
    assert done == [None] and [f.frame_index for f in q.take(4, timeout=1)] == [1]
    q.put(_frame("a", 2))
    putter = threading.Thread(target=lambda: done.append(q.put(_frame("a", 3))))
    putter.start()
    q.release()  # the daemon stops: the waiting frame was accepted, so it goes in past the size
    putter.join(30)
    assert not putter.is_alive() and [f.frame_index for f in q.take(4, timeout=1)] == [2, 3]


# -- sources --------------------------------------------------------------------------------------


def test_synthetic_camera_knows_its_defects() -> None:
    cam = SyntheticCamera(SyntheticSource(category="weave", fps=1000, defect_rate=0.5, pool=8, corrupt_every=5,
                                          max_frames=12))
    cam.open()
    seen = []
    while (img := cam.read()) is not None:
        seen.append((img.shape, cam.annotations["injected_defect"]))
    assert len(seen) == 12
    assert seen[4] == ((0, 0, 3), "corrupt") and seen[9] == ((0, 0, 3), "corrupt")
    kinds = {k for _, k in seen}
    assert "none" in kinds and kinds - {"none", "corrupt"}
    again = SyntheticCamera(SyntheticSource(category="weave", fps=1000, defect_rate=0.5, pool=8))
    again.open()
    assert [again.read().shape and again.annotations["injected_defect"] for _ in range(4)] == [k for _, k in seen[:4]]


def test_video_file_source_loops_and_ends(tmp_path: Path) -> None:
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    for i in range(3):
        writer.write(np.full((48, 64, 3), i * 60, np.uint8))
    writer.release()
    from proad.edge.config import OpenCVSource

    once = OpenCVCamera(OpenCVSource(uri=str(path)))
    once.open()
    frames = [once.read() for _ in range(4)]
    assert [f is None for f in frames] == [False, False, False, True]
    looping = OpenCVCamera(OpenCVSource(uri=str(path), loop=True))
    looping.open()
    assert all(looping.read() is not None for _ in range(7))
    with pytest.raises(SourceError, match="cannot open"):
        OpenCVCamera(OpenCVSource(uri=str(tmp_path / "gone.avi"))).open()


def test_image_folder_passes_unreadable_files_as_empty_frames(tmp_path: Path) -> None:
    from proad.edge.config import FolderSource

    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((32, 32, 3), np.uint8))
    (tmp_path / "b.png").write_bytes(b"broken")
    src = ImageFolder(FolderSource(path=str(tmp_path), fps=1000))
    src.open()
    assert src.read().shape == (32, 32, 3)
    assert src.read().size == 0 and src.annotations == {"file": "b.png"}
    assert src.read() is None
    with pytest.raises(SourceError, match="not found"):
        ImageFolder(FolderSource(path=str(tmp_path / "none"))).open()


# -- backends -------------------------------------------------------------------------------------


def test_onnxruntime_backend_refuses_missing_foreign_and_plugin_models(tmp_path: Path) -> None:
    import onnx

    from proad.edge.backends import load_backend

    with pytest.raises(ModelLoadError, match="model file not found"):
        load_backend(BackendConfig(model=str(tmp_path / "none.onnx")))
    foreign = tmp_path / "foreign.onnx"
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["x"], ["y"])], "g", [x],
                                   [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])])
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 18)]), str(foreign))
    with pytest.raises(ModelLoadError, match="not a proad-export ONNX model"):
        load_backend(BackendConfig(model=str(foreign)))
    (tmp_path / "junk.onnx").write_bytes(b"junk")
    with pytest.raises(ModelLoadError, match="ONNX Runtime cannot load it"):
        load_backend(BackendConfig(model=str(tmp_path / "junk.onnx")))


def _info(**kw: object) -> EngineInfo:
    base = dict(tensorrt_version="10.13.0.35", gpu_name="NVIDIA H100", compute_capability="9.0", precision="fp16",
                strongly_typed=True, profile={"min": [1, 256, 256, 3], "opt": [4, 256, 256, 3],
                                              "max": [8, 256, 256, 3]}, onnx_sha256="ab",
                onnx_metadata={"model_config_json": "{}", "threshold": "0.3", "checkpoint_sha256": "c" * 64,
                               "precision": "fp16", "plugin": "true", "image_size": "256"})
    base.update(kw)
    return EngineInfo(**base)


def test_tensorrt_engine_checks_and_buffer_plan(tmp_path: Path) -> None:
    specs = [TensorSpec("image", True, np.dtype(np.uint8), (-1, 256, 256, 3)),
             TensorSpec("anomaly_map", False, np.dtype(np.float32), (-1, 256, 256)),
             TensorSpec("score", False, np.dtype(np.float32), (-1,))]
    assert plan_buffers(specs, 8) == {"image": (8, 256, 256, 3), "anomaly_map": (8, 256, 256), "score": (8,)}
    with pytest.raises(ModelLoadError, match="dynamic non-batch"):
        plan_buffers([TensorSpec("x", True, np.dtype(np.uint8), (-1, -1, 3))], 2)
    engine = tmp_path / "m.engine"
    check_engine_info(_info(), "10.13.0.35", "9.0", engine)
    with pytest.raises(ModelLoadError, match=r"built with TensorRT 10.13.0.35, running 11.4.0.106; rebuild it on this "
                       r"machine: proad-export build-engine"):
        check_engine_info(_info(), "11.4.0.106", "9.0", engine)
    with pytest.raises(ModelLoadError, match=r"compute capability 9\.0, this GPU is 8\.9"):
        check_engine_info(_info(), "10.13.0.35", "8.9", engine)


def test_tensorrt_backend_start_failures_are_one_line(tmp_path: Path) -> None:
    from proad.edge.backends import load_backend
    from proad.kernels.trt_plugin import TensorRTUnavailable, import_tensorrt

    engine = tmp_path / "m.engine"
    cfg = BackendConfig(kind="tensorrt", model=str(engine))
    with pytest.raises(ModelLoadError, match="engine file not found"):
        load_backend(cfg)
    engine.write_bytes(b"plan")
    with pytest.raises(ModelLoadError, match=r"no sidecar m\.engine\.json; rebuild it"):
        load_backend(cfg)
    (tmp_path / "m.engine.json").write_text("{}")
    with pytest.raises(ModelLoadError, match="not a valid engine sidecar"):
        load_backend(cfg)
    (tmp_path / "m.engine.json").write_text(_info().model_dump_json())
    assert read_sidecar(engine)[1].threshold == 0.3
    try:
        import_tensorrt()
    except TensorRTUnavailable:
        with pytest.raises(ModelLoadError, match=r"TensorRT is not installed.*proad-edge\[tensorrt\]"):
            load_backend(cfg)
    else:  # pragma: no cover - machines with TensorRT: the engine bytes are not a real engine
        with pytest.raises(ModelLoadError):
            load_backend(cfg)
