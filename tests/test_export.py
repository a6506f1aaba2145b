"""ONNX export (plain, plugin, fp16, fixed batch), its checks, and the proad-export CLI."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from proad.artifacts import EngineInfo, OnnxMetadata, sidecar_path
from proad.checkpoint import Checkpoint, load_model, save_checkpoint
from proad.config import ModelConfig
from proad.export.cli import main as export_main
from proad.export.onnx_export import attention_count, export_onnx, read_metadata, sample_images
from proad.export.ort_plugin import plugin_session
from proad.kernels.plugin_spec import PLUGIN_NAME, PLUGIN_NAMESPACE
from proad.model import ProAD


@pytest.fixture(scope="module")
def ckpt_path(small_export: tuple[Path, Path, dict]) -> Path:
    return small_export[0]


@pytest.fixture(scope="module")
def plain(small_export: tuple[Path, Path, dict]) -> tuple[Path, dict]:
    """The graph ``proad-export onnx --report`` wrote (exit 0), and its report."""
    return small_export[1], small_export[2]


def _ort(path: Path, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"image": images})


def test_plain_export_contract(plain, ckpt_path: Path) -> None:
    path, report = plain
    assert report["max_abs_error_map"] <= 1e-4 and report["max_abs_error_score"] <= 1e-4
    model = onnx.load(str(path))
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    (inp,) = model.graph.input
    assert inp.name == "image" and inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    dims = inp.type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [256, 256, 3]  # dynamic batch, NHWC
    assert [o.name for o in model.graph.output] == ["anomaly_map", "score"]
    meta = read_metadata(path)
    _, ckpt = load_model(ckpt_path)
    assert meta.checkpoint_sha256 == ckpt.sha256 and meta.threshold == 0.3 and not meta.plugin
    assert meta.category_thresholds == {"board": 0.31}
    assert ModelConfig.model_validate_json(meta.model_config_json) == ckpt.model_config
    assert not any(n.op_type == PLUGIN_NAME for n in model.graph.node)


def test_onnx_runtime_matches_torch_on_a_batch_of_three(plain, ckpt_path: Path) -> None:
    path, _ = plain
    images = sample_images(256, 3)
    amap, score = _ort(path, images)
    model, _ = load_model(ckpt_path)
    with torch.no_grad():
        ref_map, ref_score = model(torch.from_numpy(images))
    assert amap.shape == (3, 256, 256) and amap.dtype == np.float32 and score.shape == (3,)
    np.testing.assert_allclose(amap, ref_map.numpy(), atol=1e-4)
    np.testing.assert_allclose(score, ref_score.numpy(), atol=1e-4)


def test_plugin_graph_runs_in_onnx_runtime_and_equals_the_plain_graph(plain, ckpt_path: Path) -> None:
    out = ckpt_path.with_name("plugin.onnx")
    report = export_onnx(ckpt_path, out, plugin=True)
    model = onnx.load(str(out))
    nodes = [n for n in model.graph.node if n.op_type == PLUGIN_NAME]
    assert len(nodes) == report.attention_nodes == attention_count(ModelConfig.model_validate_json(
        read_metadata(out).model_config_json)) == 6
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in nodes[0].attribute}
    assert nodes[0].domain == PLUGIN_NAMESPACE
    assert attrs["plugin_namespace"] == b"proad" and attrs["plugin_version"] == b"1" and attrs["aot"] == 1
    assert not any(n.op_type == "Softmax" for n in model.graph.node)  # every attention was replaced
    assert read_metadata(out).plugin
    images = sample_images(256, 2)
    fused_map, _ = plugin_session(model).run(None, {"image": images})
    plain_map, _ = _ort(plain[0], images)
    np.testing.assert_allclose(fused_map, plain_map, atol=1e-5)
    assert report.plugin_vs_plain is not None and report.plugin_vs_plain <= 1e-5


def test_fp16_export_keeps_fp32_outputs_and_a_missed_tolerance_exits_1(
    ckpt_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """fp16 is not bit-exact: under ``--tolerance 0`` the check fails (exit 1) and the graph is left
    for inspection; the difference it reports is within fp16's own tolerance."""
    out = ckpt_path.with_name("fp16.onnx")
    code = export_main(["onnx", "--checkpoint", str(ckpt_path), "--out", str(out), "--precision", "fp16",
                        "--batch", "2", "--tolerance", "0"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1, err
    found = re.search(r"differs from torch by (\S+) on the anomaly map \(tolerance 0e\+00\)", err)
    assert found and 0 < float(found.group(1)) <= 5e-2, err
    assert f"written to {out} for inspection" in err
    model = onnx.load(str(out))
    floats = {i.data_type for i in model.graph.initializer}
    assert onnx.TensorProto.FLOAT16 in floats
    assert all(o.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for o in model.graph.output)
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 2  # fixed batch
    assert read_metadata(out).precision == "fp16"


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from proad.export.cli import main; raise SystemExit(main())", *args],
                          capture_output=True, text=True, timeout=600)


def test_onnx_cli_argument_errors_exit_2(ckpt_path: Path, tmp_path: Path) -> None:
    """Exit 0 is the ``plain`` fixture's export, exit 1 the fp16 test's; here what is refused up front."""
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    bad = _cli("onnx", "--checkpoint", str(tmp_path / "bad.pt"), "--out", str(tmp_path / "x.onnx"))
    assert bad.returncode == 2 and "not a readable Pro-AD checkpoint" in bad.stderr and "Traceback" not in bad.stderr
    assert _cli("onnx", "--checkpoint", str(ckpt_path), "--out", "x.onnx", "--batch", "0").returncode == 2


def test_build_engine_help_documents_every_option() -> None:
    out = _cli("build-engine", "--help")
    assert out.returncode == 0
    for option in ("--onnx", "--out", "--fp16", "--min-batch", "--opt-batch", "--max-batch", "--workspace-mb",
                   "--timing-cache", "--verbose"):
        assert option in out.stdout, option


def test_build_engine_argument_errors_exit_2(plain, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, _ = plain
    cases = {
        "ONNX file not found": ["--onnx", str(tmp_path / "none.onnx"), "--out", str(tmp_path / "m.engine")],
        "min <= opt <= max": ["--onnx", str(path), "--out", str(tmp_path / "m.engine"), "--min-batch", "8",
                              "--opt-batch", "4"],
        "should end in .engine": ["--onnx", str(path), "--out", str(tmp_path / "m.plan")],
        "at least 16": ["--onnx", str(path), "--out", str(tmp_path / "m.engine"), "--workspace-mb", "1"],
    }
    foreign = tmp_path / "foreign.onnx"
    onnx.save(onnx.helper.make_model(onnx.helper.make_graph([], "g", [], [])), str(foreign))
    cases["not a proad-export ONNX graph"] = ["--onnx", str(foreign), "--out", str(tmp_path / "m.engine")]
    for message, args in cases.items():  # in-process: a subprocess per case took 15 s (the exit-3 test runs one)
        try:
            code = export_main(["build-engine", *args])
        except SystemExit as exc:  # argparse's own refusals
            code = exc.code
        err = capsys.readouterr().err
        assert code == 2, (message, err)
        assert message in err


def test_build_engine_without_tensorrt_exits_3(plain, tmp_path: Path) -> None:
    from proad.kernels.trt_plugin import TensorRTUnavailable, import_tensorrt

    try:
        import_tensorrt()
        pytest.skip("TensorRT is installed here: the engine would be built")
    except TensorRTUnavailable:
        pass
    out = _cli("build-engine", "--onnx", str(plain[0]), "--out", str(tmp_path / "m.engine"))
    assert out.returncode == 3
    assert "TensorRT" in out.stderr and "proad-edge[tensorrt]" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "m.engine").exists()


def test_engine_sidecar_names_what_must_match() -> None:
    info = EngineInfo(tensorrt_version="10.13.0.35", gpu_name="NVIDIA H100", compute_capability="9.0",
                      precision="fp16", strongly_typed=True, profile={"min": [1, 256, 256, 3]}, onnx_sha256="ab")
    assert info.mismatch("10.13.0.35", "9.0") is None
    assert "built with TensorRT 10.13.0.35, running 11.4.0.106" in info.mismatch("11.4.0.106", "9.0")
    assert "compute capability 9.0, this GPU is 8.9" in info.mismatch("10.13.0.35", "8.9")
    assert sidecar_path("a/model.engine") == Path("a/model.engine.json")
    again = EngineInfo.model_validate_json(info.model_dump_json())
    assert again == info and again.plugin_name == "ProtoAttention" and again.plugin_version == "1"


def test_metadata_round_trip_and_refusal() -> None:
    meta = OnnxMetadata(model_config_json="{}", threshold=0.5, checkpoint_sha256="f" * 64, precision="fp32",
                        plugin=True, image_size=256)
    assert OnnxMetadata.from_props(meta.to_props()) == meta
    with pytest.raises(ValueError):
        OnnxMetadata.from_props({"format": "other"})


def _tensorrt_real() -> bool:
    from proad.kernels.trt_plugin import TensorRTUnavailable, import_tensorrt

    try:
        import_tensorrt()
    except TensorRTUnavailable:
        return False
    return torch.cuda.is_available()


@pytest.mark.skipif(not _tensorrt_real(), reason="building an engine needs TensorRT with its libraries and an NVIDIA "
                    "GPU; neither is here")
def test_build_engine_on_gpu(ckpt_path: Path, tmp_path: Path) -> None:  # pragma: no cover - GPU machines only
    from proad.export.engine import BuildRequest, build_engine

    graph = tmp_path / "plugin.onnx"
    export_onnx(ckpt_path, graph, plugin=True)
    engine = tmp_path / "m.engine"
    info = build_engine(BuildRequest(graph, engine, max_batch=4, timing_cache=tmp_path / "cache.bin"))
    assert engine.stat().st_size > 0 and (tmp_path / "cache.bin").is_file()
    assert EngineInfo.model_validate_json(sidecar_path(engine).read_text()) == info
    assert info.profile["max"] == [4, 256, 256, 3]


@pytest.fixture(scope="module")
def geometry(tmp_path_factory: pytest.TempPathFactory, small_cfg: ModelConfig) -> tuple[ProAD, Path, Path, object]:
    """A letterboxing, feature-pooling model with a preset's name and one tiled category, exported
    once (each export takes ~15 s): its torch model, checkpoint, graph and export report."""
    cfg = small_cfg.model_copy(update={"resize": "letterbox", "feature_pool": 3})
    torch.manual_seed(5)
    model = ProAD(cfg).eval()
    root = tmp_path_factory.mktemp("geometry")
    ckpt = root / "lb.pt"
    info = {"preset": "accurate", "category_tiles": {"marble": [2, 2], "board": [1, 1]}}
    save_checkpoint(Checkpoint(cfg, model.trainable_state_dict(), 0.4, train_info=info), ckpt)
    report = export_onnx(ckpt, root / "lb.onnx")
    return model, ckpt, root / "lb.onnx", report


def test_a_letterboxing_pooled_model_carries_its_geometry_to_the_edge(geometry) -> None:
    """The input rule and the preset's name travel with the model: ONNX metadata -> the backend's
    ModelInfo -> the daemon's prepare, and the feature pooling exports and matches torch."""
    from proad.data.folder import fit_image
    from proad.edge.backends import load_backend
    from proad.edge.config import BackendConfig

    model, _, graph, report = geometry
    assert report.max_abs_error_map <= 1e-4 and report.max_abs_error_score <= 1e-4
    backend = load_backend(BackendConfig(model=str(graph), threads=2))
    assert backend.info.resize == "letterbox" and backend.info.image_size == 256
    assert backend.info.preset == "accurate"  # the preset's name reaches the daemon's log and telemetry
    wide = np.random.default_rng(0).integers(0, 256, (120, 300, 3), dtype=np.uint8)
    frame = fit_image(wide, 256, backend.info.resize)
    amap, score = backend.infer(frame[None])
    with torch.no_grad():
        ref_map, ref_score = model(torch.from_numpy(frame[None]))
    assert np.allclose(amap, ref_map.numpy(), atol=1e-4) and np.allclose(score, ref_score.numpy(), atol=1e-4)


def test_a_tiled_category_reaches_the_edge_and_infers_as_in_evaluation(geometry) -> None:
    """A category's tiling travels checkpoint -> ONNX metadata -> ModelInfo; the daemon's
    preprocessing of a large frame is the evaluation's pixel for pixel, and its tiled inference
    through ONNX Runtime gives evaluation's stitched map and score."""
    from proad.data.folder import fit_image
    from proad.data.tiling import infer_tiled
    from proad.edge.backends import load_backend
    from proad.edge.config import BackendConfig
    from proad.edge.preprocess import prepare
    from proad.evaluate import predict

    model, ckpt, graph, _ = geometry
    assert read_metadata(graph).category_tiles == {"marble": (2, 2)}  # untiled ones left out
    backend = load_backend(BackendConfig(model=str(graph), threads=2, max_batch=3))
    assert backend.info.category_tiles == {"marble": (2, 2)}
    torch_backend = load_backend(BackendConfig(kind="torch", model=str(ckpt), threads=2))
    assert torch_backend.info.category_tiles == {"marble": (2, 2)}

    raw = np.random.default_rng(3).integers(0, 256, (700, 900, 3), dtype=np.uint8)
    frame = prepare(raw, 256, backend.info.resize, (2, 2))
    assert np.array_equal(frame, fit_image(raw, 256, backend.info.resize, grid=(2, 2)))  # what evaluation reads
    maps, scores = infer_tiled(backend.infer, [frame], 256, backend.max_batch)
    ref_maps, ref_scores, _ = predict(model, [frame])
    assert maps[0].shape == (512, 512)
    assert np.allclose(maps[0], ref_maps[0], atol=1e-4) and np.allclose(scores, ref_scores, atol=1e-4)


def test_a_rectangular_model_reaches_every_cpu_backend_at_its_own_shape(wide_export: tuple[Path, Path]) -> None:
    """``image_size: [128, 224]`` travels checkpoint -> ONNX metadata -> ModelInfo; ONNX Runtime,
    OpenVINO and torch run a 16:9 frame prepared as the daemon prepares it (pixel for pixel what
    training reads) to the same 128 x 224 map; the plugin graph (TensorRT's form) runs the
    rectangle's tokens as the plain one does, and a TensorRT profile is built for that shape."""
    from proad.data.folder import fit_image
    from proad.edge.backends import load_backend
    from proad.edge.config import BackendConfig
    from proad.edge.preprocess import prepare
    from proad.export.engine import BuildRequest, profile_shapes

    ckpt, graph = wide_export
    assert read_metadata(graph).image_size == (128, 224)
    frame = np.random.default_rng(7).integers(0, 256, (720, 1280, 3), dtype=np.uint8)
    image = prepare(frame, (128, 224))
    assert image.shape == (128, 224, 3) and np.array_equal(image, fit_image(frame, (128, 224)))
    model, _ = load_model(ckpt)
    with torch.no_grad():
        ref_map, ref_score = model(torch.from_numpy(image[None]))
    assert float(ref_map.std()) > 1e-3  # a map with structure, so the comparison can fail
    kinds = ["onnxruntime", "torch"] + (["openvino"] if _has("openvino") else [])
    for kind in kinds:
        backend = load_backend(BackendConfig(kind=kind, model=str(ckpt if kind == "torch" else graph), threads=2))
        assert backend.info.image_size == (128, 224), kind
        backend.warmup()  # a blank frame of the model's own shape
        amap, score = backend.infer(image[None])
        assert amap.shape == (1, 128, 224), kind
        np.testing.assert_allclose(amap, ref_map.numpy(), atol=1e-4, err_msg=kind)
        np.testing.assert_allclose(score, ref_score.numpy(), atol=1e-4, err_msg=kind)
        backend.close()
    assert profile_shapes(BuildRequest(graph, graph.with_suffix(".engine"), max_batch=4), (128, 224))["max"] == [
        4, 128, 224, 3]
    # the TensorRT form: every attention as the plugin node, over the 8 x 14 = 112 tokens of the rectangle
    report = export_onnx(ckpt, graph.with_name("wide_plugin.onnx"), plugin=True, verify_count=1)
    assert report.plugin_vs_plain is not None and report.plugin_vs_plain <= 1e-5


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None
