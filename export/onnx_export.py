"""ONNX export of a Pro-AD checkpoint, checked before it is trusted (DESIGN §4).

The graph takes what the camera gives and returns what the edge publishes::

    image uint8 [B, H, W, 3] BGR  ->  anomaly_map float32 [B, H, W],  score float32 [B]

- opset 18 via torch's exporter (``torch.export`` based), dynamic batch (or a fixed one), named
  input and outputs, ``metadata_props`` with the model config, thresholds and checkpoint hash;
- ``precision="fp16"`` exports an fp16 graph (TensorRT 11 is strongly typed: fp16 must be in the
  graph, not a builder flag); the map and score stay fp32;
- ``plugin=True`` replaces every attention with a ``proad::ProtoAttention`` node
  (:mod:`proad.export.plugin_graph`).

After writing, :func:`verify` runs ``onnx.checker``, shape inference, and ONNX Runtime against the
torch model on real rendered images, and reports the largest difference of the anomaly map.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
import torch

from proad.artifacts import INPUT_NAME, OUTPUT_NAMES, OnnxMetadata, file_sha256
from proad.checkpoint import Checkpoint, load_model
from proad.config import ModelConfig
from proad.data.geometry import Size
from proad.export.plugin_graph import fuse_attention
from proad.model import ProAD

OPSET = 18
#: Default tolerances on the anomaly map, ONNX Runtime vs torch fp32.
TOLERANCE = {"fp32": 1e-4, "fp16": 5e-2}

Precision = Literal["fp32", "fp16"]


class ExportError(RuntimeError):
    """Export produced a graph that failed a check."""


@dataclass
class ExportReport:
    """What was written and how it compared."""

    path: Path
    precision: str
    plugin: bool
    batch: int | str
    attention_nodes: int = 0
    max_abs_error_map: float | None = None
    max_abs_error_score: float | None = None
    plugin_vs_plain: float | None = None
    tolerance: float | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["path"] = str(self.path)
        return d


class _Fp32Outputs(torch.nn.Module):
    """Wraps the model so the graph's outputs are fp32 whatever the compute precision."""

    def __init__(self, model: ProAD) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        amap, score = self.model(image)
        return amap.float(), score.float()


def sample_images(image_size: Size, count: int = 4) -> np.ndarray:
    """Real rendered images (normal and defective, several categories) for the numeric check."""
    from proad.data.folder import fit_image
    from proad.data.synth import render

    picks = [("board", "missing"), ("weave", "scratch"), ("marble", "good"), ("gravel", "stain")]
    images = []
    for i in range(count):
        category, kind = picks[i % len(picks)]
        img = render(category, kind, seed=7, split="test", index=i).image
        images.append(fit_image(img, image_size))
    return np.stack(images)


def _torch_export(model: torch.nn.Module, example: torch.Tensor, dynamic: bool) -> onnx.ModelProto:
    dynamic_shapes = {"image": {0: torch.export.Dim("batch", min=1, max=1024)}} if dynamic else None
    quiet = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(quiet):
        warnings.simplefilter("ignore")
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        program = torch.onnx.export(
            model,
            (example,),
            input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES),
            dynamic_shapes=dynamic_shapes,
            opset_version=OPSET,
            dynamo=True,
            external_data=False,
            optimize=True,
        )
    return program.model_proto


def attention_count(cfg: ModelConfig) -> int:
    """Attentions in the graph: aggregation and reconstruction per layer, plus each constraint."""
    constrained = 0 if cfg.constraint == "none" else cfg.layers - cfg.constraint_from_layer
    return 2 * cfg.layers + constrained


def build_onnx(
    model: ProAD, ckpt: Checkpoint, precision: Precision = "fp32", batch: int | None = None
) -> onnx.ModelProto:
    """The plain ONNX graph of ``model`` (attention as standard ops) with our metadata.

    ``batch``: a fixed batch size, or None for a dynamic one.
    """
    size = ckpt.model_config.image_size
    net = _Fp32Outputs(model.half() if precision == "fp16" else model.float()).eval()
    # two images: torch.export specialises a dimension of size 1, which would pin the batch
    example = torch.from_numpy(sample_images(size, batch or 2))
    with torch.no_grad():
        proto = _torch_export(net, example, dynamic=batch is None)
    meta = OnnxMetadata(
        model_config_json=ckpt.model_config.model_dump_json(),
        threshold=ckpt.threshold,
        category_thresholds=ckpt.train_info.get("category_thresholds") or {},
        checkpoint_sha256=ckpt.sha256,
        precision=precision,
        plugin=False,
        image_size=size,
        preset=ckpt.train_info.get("preset") or "",
        category_tiles=ckpt.category_tiles,
    )
    onnx.helper.set_model_props(proto, meta.to_props())
    proto.producer_name = "proad-export"
    return proto


def with_plugin(plain: onnx.ModelProto, cfg: ModelConfig) -> tuple[onnx.ModelProto, int]:
    """The plugin graph derived from the plain one, checked to hold every attention of the model."""
    fused, count = fuse_attention(plain)
    expected = attention_count(cfg)
    if count != expected:
        raise ExportError(f"replaced {count} attention subgraphs, the model has {expected}")
    props = {p.key: p.value for p in plain.metadata_props}
    props["plugin"] = "true"
    del fused.metadata_props[:]
    onnx.helper.set_model_props(fused, props)
    fused.producer_name = plain.producer_name
    return fused, count


def check_graph(proto: onnx.ModelProto, plugin: bool) -> onnx.ModelProto:
    """``onnx.checker`` and shape inference (strict for the plain graph; the plugin op has no schema)."""
    onnx.checker.check_model(proto, full_check=not plugin)
    inferred = onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=not plugin)
    outputs = {o.name: o for o in inferred.graph.output}
    for name in OUTPUT_NAMES:
        if name not in outputs:
            raise ExportError(f"graph output {name!r} missing")
        if outputs[name].type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
            raise ExportError(f"graph output {name!r} is not float32")
    return inferred


def _ort_run(proto: onnx.ModelProto, images: np.ndarray, plugin: bool, threads: int = 2) -> tuple[np.ndarray, ...]:
    if plugin:
        from proad.export.ort_plugin import plugin_session

        session = plugin_session(proto, threads)
    else:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.log_severity_level = 3  # fp16 graphs: ORT warns about every op it cannot constant-fold
        session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    amap, score = session.run(list(OUTPUT_NAMES), {INPUT_NAME: images})
    return amap, score


def export_onnx(
    checkpoint: str | Path,
    out: str | Path,
    precision: Precision = "fp32",
    batch: int | None = None,
    plugin: bool = False,
    tolerance: float | None = None,
    verify_count: int = 4,
) -> ExportReport:
    """Export, write, check and compare; raises :class:`ExportError` when a check fails."""
    out = Path(out)
    model, ckpt = load_model(checkpoint)
    plain = build_onnx(model, ckpt, precision, batch)
    proto, count = with_plugin(plain, ckpt.model_config) if plugin else (plain, 0)
    check_graph(proto, plugin)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    onnx.save(proto, tmp)
    tmp.replace(out)

    report = ExportReport(out, precision, plugin, batch or "dynamic", attention_nodes=count)
    report.tolerance = tolerance if tolerance is not None else TOLERANCE[precision]
    images = sample_images(ckpt.model_config.image_size, batch or verify_count)
    reference_model, _ = load_model(checkpoint)  # fp32 torch is the reference for both precisions
    with torch.no_grad():
        ref_map, ref_score = (t.numpy() for t in reference_model(torch.from_numpy(images)))
    if precision == "fp16" and plugin:
        report.notes.append("fp16 plugin graph: checked structurally; ONNX Runtime's Python op runs fp32 only")
        return report
    amap, score = _ort_run(proto, images, plugin)
    report.max_abs_error_map = float(np.abs(amap - ref_map).max())
    report.max_abs_error_score = float(np.abs(score - ref_score).max())
    if plugin:
        plain_map, _ = _ort_run(plain, images, plugin=False)
        report.plugin_vs_plain = float(np.abs(amap - plain_map).max())
    if report.max_abs_error_map > report.tolerance:
        raise ExportError(
            f"ONNX Runtime differs from torch by {report.max_abs_error_map:.2e} on the anomaly map "
            f"(tolerance {report.tolerance:.0e}); the graph was written to {out} for inspection"
        )
    return report


def read_metadata(path: str | Path) -> OnnxMetadata:
    """The proad metadata of an exported graph (raises ValueError when absent or malformed)."""
    model = onnx.load(str(path), load_external_data=False)
    props = {p.key: p.value for p in model.metadata_props}
    return OnnxMetadata.from_props(props)


def describe(report: ExportReport) -> str:
    """One line for the CLI."""
    parts = [f"wrote {report.path} ({report.precision}, batch {report.batch}"]
    parts[0] += f", {report.attention_nodes} ProtoAttention nodes)" if report.plugin else ")"
    if report.max_abs_error_map is not None:
        parts.append(f"ONNX Runtime vs torch: max |map| error {report.max_abs_error_map:.2e} "
                     f"(tolerance {report.tolerance:.0e}), score {report.max_abs_error_score:.2e}")
    if report.plugin_vs_plain is not None:
        parts.append(f"plugin graph vs plain graph: {report.plugin_vs_plain:.2e}")
    parts += report.notes
    parts.append(f"sha256 {file_sha256(report.path)[:16]}")
    return "; ".join(parts)


def dumps(report: ExportReport) -> str:
    return json.dumps(report.to_dict(), indent=2)
