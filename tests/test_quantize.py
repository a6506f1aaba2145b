"""int8 export: what stays float, the fp32 check that refuses, the artifact the OpenVINO backend runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from proad.checkpoint import load_model
from proad.config import ModelConfig
from proad.export.cli import main as export_main
from proad.export.onnx_export import ExportError, read_metadata, sample_images

nncf = pytest.importorskip("nncf", reason="int8 export needs nncf (pip install 'proad-edge[openvino]')")
pytest.importorskip("openvino", reason="the int8 check runs in OpenVINO (pip install 'proad-edge[openvino]')")

from proad.export.quantize import (  # noqa: E402 - after the skips: nncf is optional
    compare,
    first_feature_block,
    float_nodes,
    int8_forms,
    node_scope,
    quantize,
    runner,
    score_offsets,
)


@pytest.fixture(scope="module")
def fp32(small_export: tuple[Path, Path, dict]) -> tuple[Path, Path]:
    """A small model's checkpoint and its plain fp32 graph (the export tests' own)."""
    return small_export[0], small_export[1]


def test_the_map_tail_and_the_encoder_stem_stay_float(fp32: tuple[Path, Path]) -> None:
    ckpt, path = fp32
    model, _ = load_model(ckpt)
    first = first_feature_block(model)
    assert first == 2  # Lite0: stride 8 comes out of blocks.2
    proto = onnx.load(str(path))
    keep = set(float_nodes(proto, first))
    by_name = {n.name: n for n in proto.graph.node}
    ops = {by_name[name].op_type for name in keep}
    assert {"TopK", "MatMul"} <= ops  # the score, and the map upsampled and smoothed by matrix products
    assert any("model.input_norm" in node_scope(by_name[n]) for n in keep)
    assert any("blocks.1." in node_scope(by_name[n]) for n in keep)
    for node in proto.graph.node:  # what is quantized: the encoder from its first level on, the decoder
        scope = node_scope(node)
        if any(f"blocks.{b}." in scope for b in (2, 3, 4)) or "model.layers." in scope or "model.heads." in scope:
            assert node.name not in keep, (node.name, scope)
    # the faster form, tried first: only the stem and block 0 stay float in the encoder, block 1 is int8 too
    assert int8_forms(first) == [1, 2]
    faster = set(float_nodes(proto, 1))
    assert faster < keep
    assert all("blocks.1." in node_scope(by_name[n]) for n in keep - faster)
    assert any("blocks.0." in node_scope(by_name[n]) for n in faster)
    assert any("model.encoder.body.bn1" in node_scope(by_name[n]) for n in faster)  # the stem (its BN fused)
    assert {"TopK", "MatMul"} <= {by_name[name].op_type for name in faster}


@pytest.fixture(scope="module")
def int8(fp32: tuple[Path, Path], tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """``proad-export onnx --precision int8`` of the small model, calibrated on the generated train/good."""
    ckpt, _ = fp32
    root = tmp_path_factory.mktemp("int8_cli")
    out, report = root / "int8.onnx", root / "report.json"
    code = export_main(["onnx", "--checkpoint", str(ckpt), "--out", str(out), "--precision", "int8",
                        "--calibration", str(tiny_data / "marble" / "train" / "good"),
                        str(tiny_data / "board" / "train" / "good"), "--report", str(report)])  # fmt: skip
    assert code == 0
    return out, json.loads(report.read_text())["int8"]


def test_int8_export_writes_a_checked_qdq_graph_the_openvino_backend_runs(
    fp32: tuple[Path, Path], int8: tuple[Path, dict]
) -> None:
    from proad.edge.backends import ModelLoadError, load_backend
    from proad.edge.config import BackendConfig

    _, fp32_path = fp32
    out, check = int8
    meta = read_metadata(out)
    assert meta.precision == "int8" and meta.model_id.endswith("-int8")
    fp32_meta = read_metadata(fp32_path)  # the int8 graph's thresholds: fp32's plus its measured score shift
    assert meta.threshold == pytest.approx(fp32_meta.threshold + check["score_offset"], abs=1e-6)
    assert set(check["category_score_offsets"]) == set(fp32_meta.category_thresholds) & {"marble", "board"} != set()
    for category, threshold in fp32_meta.category_thresholds.items():
        assert meta.category_thresholds[category] == pytest.approx(
            threshold + check["category_score_offsets"][category], abs=1e-6)
    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert check["calibration_images"] == 18 and check["check_images"] == 6  # 24 train images, every 4th held out
    assert check["score_error_rel"] <= check["tolerance"]["score_error_rel"]
    assert check["score_shift_rel"] <= check["tolerance"]["score_shift_rel"]
    # the form written is the fastest the check accepted; a faster one it refused says why
    assert check["int8_from_block"] in int8_forms(2)
    assert len(check["faster_forms_refused"]) == int8_forms(2).index(check["int8_from_block"])
    graph = onnx.load(str(out))
    written = {p.key: p.value for p in graph.metadata_props}
    assert json.loads(written["quantization"])["int8_from_block"] == check["int8_from_block"]
    fp32_proto = onnx.load(str(fp32_path))
    assert check["float_nodes"] == len(float_nodes(fp32_proto, check["int8_from_block"]))
    assert rounded_convs(graph, fp32_proto, "blocks.1.") == (check["int8_from_block"] == 1)
    assert not rounded_convs(graph, fp32_proto, "blocks.0.") and rounded_convs(graph, fp32_proto, "blocks.2.")

    images = sample_images(meta.image_size, 3)
    reference = runner(onnx.load(str(fp32_path)))(images)
    backend = load_backend(BackendConfig(kind="openvino", model=str(out), threads=2, max_batch=4))
    assert backend.info.model_id == meta.model_id
    amap, score = backend.infer(images)
    assert amap.shape == reference[0].shape and np.isfinite(amap).all()
    assert np.abs(score - reference[1]).max() < 0.25 * meta.threshold  # int8 of this model, not another one
    with pytest.raises(ModelLoadError, match=r"backend\.kind openvino"):
        load_backend(BackendConfig(kind="onnxruntime", model=str(out)))


def rounded_convs(quantized: onnx.ModelProto, fp32_proto: onnx.ModelProto, block: str) -> bool:
    """Whether the convolutions of the encoder's ``block`` (e.g. ``"blocks.1."``) take int8 weights in
    ``quantized`` (through a DequantizeLinear); False when they all take float ones. Asserts it is all or none."""
    names = {n.name for n in fp32_proto.graph.node if n.op_type == "Conv" and f"encoder.body.{block}" in node_scope(n)}
    assert names
    producers = {o: n.op_type for n in quantized.graph.node for o in n.output}
    int8 = {n.name: producers.get(n.input[1]) == "DequantizeLinear" for n in quantized.graph.node if n.name in names}
    assert set(int8) == names and len(set(int8.values())) == 1, int8
    return next(iter(int8.values()))


def test_a_refused_faster_form_falls_back_to_the_next(fp32: tuple[Path, Path], tiny_data: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The check refuses the first form (its measured score error is reported beyond tolerance): the
    export writes the next form, with that form's own thresholds, and says why the first was refused."""
    import proad.export.quantize as quantize_module

    ckpt, fp32_path = fp32
    model, _ = load_model(ckpt)
    measured = quantize_module.compare
    calls: list[dict[str, float]] = []

    def first_form_refused(*args: object, **kwargs: object) -> dict[str, float]:
        found = measured(*args, **kwargs)  # type: ignore[arg-type]
        calls.append(found)
        return {**found, "score_error_rel": 1.0} if len(calls) == 1 else found

    monkeypatch.setattr(quantize_module, "compare", first_form_refused)
    out = tmp_path / "fallback.onnx"
    report = quantize(fp32_path, out, [tiny_data / c / "train" / "good" for c in ("marble", "board")],
                      first_feature_block(model), count=16)
    assert len(calls) == 2 and report.int8_from_block == 2
    assert len(report.faster_forms_refused) == 1 and "blocks.1: score error 100.0%" in report.faster_forms_refused[0]
    fp32_proto, graph = onnx.load(str(fp32_path)), onnx.load(str(out))
    assert report.float_nodes == len(float_nodes(fp32_proto, 2))
    assert not rounded_convs(graph, fp32_proto, "blocks.1.") and rounded_convs(graph, fp32_proto, "blocks.2.")
    fp32_meta, meta = read_metadata(fp32_path), read_metadata(out)
    assert meta.threshold == pytest.approx(fp32_meta.threshold + report.score_offset, abs=1e-6)
    for category, threshold in fp32_meta.category_thresholds.items():
        assert meta.category_thresholds[category] == pytest.approx(
            threshold + report.category_score_offsets.get(category, report.score_offset), abs=1e-6)
    recorded = json.loads({p.key: p.value for p in graph.metadata_props}["quantization"])
    assert recorded["int8_from_block"] == 2 and recorded["faster_forms_refused"] == report.faster_forms_refused


def test_build_engine_refuses_an_int8_graph(int8: tuple[Path, dict], tmp_path: Path) -> None:
    out, _ = int8
    assert export_main(["build-engine", "--onnx", str(out), "--out", str(tmp_path / "m.engine")]) == 2
    assert not (tmp_path / "m.engine").exists()


def test_int8_beyond_tolerance_is_refused_and_nothing_written(fp32: tuple[Path, Path], tiny_data: Path,
                                                              tmp_path: Path) -> None:
    ckpt, fp32_path = fp32
    model, _ = load_model(ckpt)
    out = tmp_path / "refused.onnx"
    with pytest.raises(ExportError, match="refused") as refused:
        quantize(fp32_path, out, [tiny_data / c / "train" / "good" for c in ("marble", "board")],
                 first_feature_block(model), count=16,
                 tolerance={"score_error_rel": 0.0})
    assert not out.exists() and not list(tmp_path.iterdir())
    # every form was tried, the fastest first, and the message says why each was refused
    message = str(refused.value)
    assert message.index("encoder int8 from blocks.1: score error") < message.index("from blocks.2: score error")


def test_compare_measures_what_moved() -> None:
    images = [np.zeros((4, 4, 3), np.uint8) for _ in range(8)]
    maps = np.linspace(0, 1, 8 * 16, dtype=np.float32).reshape(8, 4, 4)
    scores = np.linspace(0.1, 0.8, 8, dtype=np.float32)
    state = {"i": 0}

    def reference(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        i = state["i"]
        return maps[i : i + len(x)], scores[i : i + len(x)]

    def shifted(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        i = state["i"]
        state["i"] += len(x)
        return maps[i : i + len(x)] + 0.009, scores[::-1][i : i + len(x)].copy()  # every rank reversed

    result = compare(reference, shifted, images, 0.45, batch=4)
    assert result["map_error_rel_max"] == pytest.approx(0.02, rel=1e-3)
    assert result["rank_agreement"] == 0.0  # every pair apart by more than the margin is reversed
    assert result["score_error_rel"] == pytest.approx(0.7 / 0.45, rel=1e-4)
    assert result["decision_flips"] == 8  # 0.1..0.4 and 0.5..0.8 trade sides of 0.45


def test_rank_agreement_counts_the_pairs_a_line_can_tell_apart() -> None:
    from proad.export.quantize import rank_agreement

    reference = np.array([0.10, 0.11, 0.50, 0.90])  # in thresholds; 0.10 and 0.11 are a near-tie
    near_ties_swapped = np.array([0.11, 0.10, 0.50, 0.90])
    assert rank_agreement(reference, near_ties_swapped, margin=0.05) == 1.0
    assert rank_agreement(reference, near_ties_swapped, margin=0.0) == pytest.approx(5 / 6)  # every pair counts
    far_swapped = np.array([0.10, 0.11, 0.90, 0.50])  # 0.50 and 0.90 traded places: 1 of the 5 pairs apart
    assert rank_agreement(reference, far_swapped, margin=0.05) == pytest.approx(4 / 5)
    assert rank_agreement(np.full(3, 0.2), np.array([0.3, 0.1, 0.2]), margin=0.05) == 1.0  # nothing to order


def test_the_check_judges_each_image_by_its_categorys_threshold() -> None:
    """A line decides a bottle at the bottle's threshold: the same error counts more where it is lower."""
    from proad.export.quantize import CalibrationSet

    images = [np.zeros((4, 4, 3), np.uint8) for _ in range(8)]
    inputs = CalibrationSet(images, ["bottle"] * 4 + ["tile"] * 4)
    limits = inputs.thresholds(0.5, {"bottle": 0.1})  # tile has none of its own: the model's threshold
    assert limits == [0.1] * 4 + [0.5] * 4
    ref_scores = np.array([0.095] * 4 + [0.3] * 4, np.float32)

    def reference(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # all eight in one batch
        return np.zeros((len(x), 4, 4), np.float32), ref_scores.copy()

    def moved(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        amap, score = reference(x)
        return amap + 0.01, score + 0.01

    per_category = compare(reference, moved, images, limits, batch=8)
    assert per_category["score_error_rel"] == pytest.approx(0.1, rel=1e-3)  # 0.01 of the bottle's 0.1
    assert per_category["map_error_rel_max"] == pytest.approx(0.1, rel=1e-3)
    assert per_category["decision_flips"] == 4  # the bottles cross 0.1
    one_threshold = compare(reference, moved, images, 0.5, batch=8)
    assert one_threshold["score_error_rel"] == pytest.approx(0.02, rel=1e-3)
    assert one_threshold["decision_flips"] == 0
    held_out = inputs.split()[1]
    assert held_out.categories == ["bottle", "tile"] and len(held_out.images) == 2  # every fourth, with its category


def test_a_shift_of_every_score_moves_the_graphs_thresholds_not_its_verdict() -> None:
    """Rounding raises every normal image's ``1 - cos`` a little: the int8 graph carries thresholds
    moved by that shift (per category, the median over the calibration inputs), and the check judges
    what is left, each image's distance to its own graph's threshold, as the line decides."""
    from proad.export.quantize import CalibrationSet, QuantReport, shift_share, shifted_thresholds

    rng = np.random.default_rng(0)
    images = [np.full((4, 4, 3), i, np.uint8) for i in range(20)]
    inputs = CalibrationSet(images, ["bottle"] * 8 + ["tile"] * 8 + [""] * 2 + ["few"] * 2)
    base = rng.uniform(0.02, 0.04, 20).astype(np.float32)
    shift = np.array([0.004] * 8 + [0.008] * 8 + [0.006] * 4, np.float32)  # bottle +0.004, tile +0.008
    wobble = rng.uniform(-0.0005, 0.0005, 20).astype(np.float32)

    def reference(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        idx = x[:, 0, 0, 0].astype(int)
        return np.repeat(base[idx, None, None], 4, 1).repeat(4, 2), base[idx]

    def rounded(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        amap, score = reference(x)
        idx = x[:, 0, 0, 0].astype(int)
        return amap + shift[idx, None, None], score + shift[idx] + wobble[idx]

    offset, per_category = score_offsets(reference, rounded, inputs)
    assert set(per_category) == {"bottle", "tile"}  # '' is no category; two inputs are too few for their own
    assert per_category["bottle"] == pytest.approx(0.004, abs=5e-4)
    assert per_category["tile"] == pytest.approx(0.008, abs=5e-4)
    assert 0.004 < offset < 0.008
    model_threshold, known = 0.1, {"bottle": 0.05, "tile": 0.1, "few": 0.08, "unseen": 0.2}
    threshold, moved = shifted_thresholds(model_threshold, known, offset, per_category)
    assert threshold == pytest.approx(0.1 + offset)
    assert moved["bottle"] == pytest.approx(0.05 + per_category["bottle"])
    assert moved["few"] == pytest.approx(0.08 + offset) and moved["unseen"] == pytest.approx(0.2 + offset)
    largest = max(per_category["bottle"] / 0.05, per_category["tile"] / 0.1, offset / 0.08, offset / 0.1)
    assert shift_share(model_threshold, known, offset, per_category) == pytest.approx(largest)

    limits = inputs.thresholds(model_threshold, known)
    shifts = inputs.shifts(offset, per_category, known)
    assert shifts[0] == per_category["bottle"] and shifts[8] == per_category["tile"]
    assert shifts[16] == offset and shifts[18] == offset  # '' by the model's threshold, 'few' by the shift of all
    raw = compare(reference, rounded, images, limits, batch=4)
    assert raw["score_error_rel"] > 0.07  # a tile moved by 0.008 of its 0.1 is 8 %: refused at 5 %
    own = compare(reference, rounded, images, limits, batch=4, offsets=shifts)
    assert own["score_error_rel"] < 0.03  # what is left: the wobble, and the median's distance to each shift
    assert own["map_error_rel_max"] < 0.03 and own["decision_flips"] == 0
    accepted = QuantReport(Path("x"), "nncf", "openvino", 16, 4, 0, **own, score_offset=offset,
                           category_score_offsets=per_category,
                           score_shift_rel=shift_share(model_threshold, known, offset, per_category))
    assert not accepted.failures()  # a common shift of 8 % of a threshold, taken off: the graph is accepted

    def uneven(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # half the images moved, the other half not
        amap, score = reference(x)
        idx = x[:, 0, 0, 0].astype(int)
        lift = np.where(idx % 2 == 0, 0.02, 0.0).astype(np.float32)
        return amap + lift[:, None, None], score + lift

    offset, per_category = score_offsets(reference, uneven, inputs)
    left = compare(reference, uneven, images, limits, batch=4, offsets=inputs.shifts(offset, per_category, known))
    refused = QuantReport(Path("x"), "nncf", "openvino", 16, 4, 0, **left, score_offset=offset,
                          category_score_offsets=per_category,
                          score_shift_rel=shift_share(model_threshold, known, offset, per_category))
    assert any("score error" in f for f in refused.failures())  # a median cannot take off what is not common to all

    report = QuantReport(Path("x"), "nncf", "openvino", 16, 4, 0, score_shift_rel=0.12)
    assert any("thresholds moved" in f for f in report.failures())  # a graph whose median score moved far: refused
    assert not QuantReport(Path("x"), "nncf", "openvino", 16, 4, 0, score_shift_rel=0.03).failures()


def test_int8_cli_argument_errors_exit_2(fp32: tuple[Path, Path], tmp_path: Path) -> None:
    ckpt, _ = fp32
    base = ["onnx", "--checkpoint", str(ckpt), "--out", str(tmp_path / "x.onnx")]
    for extra in (["--precision", "int8"], ["--precision", "int8", "--plugin", "--calibration", str(tmp_path)],
                  ["--calibration", str(tmp_path)]):
        with pytest.raises(SystemExit) as exc:
            export_main(base + extra)
        assert exc.value.code == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    assert export_main([*base, "--precision", "int8", "--calibration", str(empty)]) == 2
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "frame.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    assert export_main([*base, "--precision", "int8", "--calibration", str(corrupt)]) == 2
    assert not (tmp_path / "x.onnx").exists()


def test_calibration_takes_each_category_equally_and_tiles_as_the_daemon_does(tmp_path: Path) -> None:
    import cv2

    from proad.export.quantize import calibration_images

    cfg = ModelConfig(image_size=64)
    for name, count, size in (("many", 40, (64, 64)), ("few", 6, (64, 64)), ("wide", 4, (64, 128))):
        folder = tmp_path / name / "train" / "good"
        folder.mkdir(parents=True)
        for i in range(count):
            cv2.imwrite(str(folder / f"{i:03d}.png"), np.full((*size, 3), i, np.uint8))
    folders = [tmp_path / n / "train" / "good" for n in ("many", "few", "wide")]
    found = calibration_images(folders, cfg, limit=30, category_tiles={"wide": (1, 2)}, categories=["few"])
    images = found.images
    assert found.categories == [""] * 10 + ["few"] * 6 + ["wide"] * 8  # "many" is none of the model's categories
    assert all(im.shape == (64, 64, 3) for im in images)
    values = [int(im[0, 0, 0]) for im in images]
    assert len(values) == 10 + 6 + 2 * 4  # 10 of "many" (its share), all of "few", "wide" cut into 2 tiles each
    assert values[:10] == sorted(set(values[:10])) and values[0] == 0 and values[9] == 39  # spread over "many"
