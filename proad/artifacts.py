"""What deployable artifacts carry about themselves (DESIGN §4): ONNX metadata and engine sidecars.

Export writes these and the edge runtime reads them, so they live here, in a module that needs
only pydantic (no torch): the edge may import it without the training stack.

- ONNX ``metadata_props``: the keys of :class:`OnnxMetadata`, each a string (JSON where structured).
- Engine sidecar ``model.engine.json``: :class:`EngineInfo`. A daemon compares it with the running
  TensorRT and GPU and refuses a mismatch with the command that rebuilds the engine.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field

from proad.data.geometry import ImageSize
from proad.kernels.plugin_spec import PLUGIN_NAME, PLUGIN_NAMESPACE, PLUGIN_VERSION

ONNX_FORMAT = "proad-onnx"
ONNX_FORMAT_VERSION = 1
ENGINE_FORMAT = "proad-engine"
ENGINE_FORMAT_VERSION = 1
INPUT_NAME = "image"
OUTPUT_NAMES = ("anomaly_map", "score")


def _is_text(annotation: Any) -> bool:
    """str, or a Literal of strings: stored as plain text, not JSON."""
    if annotation is str:
        return True
    return get_origin(annotation) is Literal and all(isinstance(a, str) for a in get_args(annotation))


def _json_or_raw(raw: str) -> Any:
    """JSON when it parses (numbers, booleans, mappings), else the text for pydantic to reject."""
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


class OnnxMetadata(BaseModel):
    """The model's identity and settings, stored as ONNX ``metadata_props``."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    format: Literal["proad-onnx"] = ONNX_FORMAT
    format_version: int = ONNX_FORMAT_VERSION
    model_config_json: str = Field(description="the ModelConfig as JSON")
    threshold: float
    category_thresholds: dict[str, float] = Field(default_factory=dict)
    checkpoint_sha256: str
    precision: Literal["fp32", "fp16", "int8"] = Field(
        description="int8: a QDQ graph for the CPU backends (proad-export onnx --precision int8)"
    )
    plugin: bool = Field(description="attention as proad::ProtoAttention nodes (TensorRT) or standard ops")
    input_layout: str = "uint8 NHWC BGR"
    image_size: ImageSize = Field(description="a square side, or (height, width)")
    preset: str = Field("", description="the proad-train preset the model was trained from ('' before presets)")
    category_tiles: dict[str, tuple[int, int]] = Field(
        default_factory=dict, description="categories cut into (rows, cols) tiles (proad.data.tiling)"
    )

    def to_props(self) -> dict[str, str]:
        out = {}
        for k, v in self.model_dump().items():
            out[k] = v if isinstance(v, str) else json.dumps(v)
        return out

    @classmethod
    def from_props(cls, props: dict[str, str]) -> OnnxMetadata:
        """Parse ``metadata_props``; raises ``ValueError`` (pydantic) when they are not ours."""
        data: dict[str, Any] = {}
        for name, field in cls.model_fields.items():
            if name in props:
                raw = props[name]
                data[name] = raw if _is_text(field.annotation) else _json_or_raw(raw)
        return cls.model_validate(data)

    @property
    def model_id(self) -> str:
        """Short id that names this model in results and logs."""
        # an int8 graph computes other maps than its checkpoint's fp32 graph: results must say which ran
        return self.checkpoint_sha256[:12] + ("-int8" if self.precision == "int8" else "")


class EngineInfo(BaseModel):
    """The sidecar of a TensorRT engine: what it was built with and for."""

    model_config = ConfigDict(extra="forbid")

    format: Literal["proad-engine"] = ENGINE_FORMAT
    format_version: int = ENGINE_FORMAT_VERSION
    tensorrt_version: str
    gpu_name: str
    compute_capability: str = Field(description="major.minor, e.g. 9.0")
    precision: Literal["fp32", "fp16"]
    strongly_typed: bool
    profile: dict[str, list[int]] = Field(description="min / opt / max shape of the image input")
    plugin_name: str = PLUGIN_NAME
    plugin_namespace: str = PLUGIN_NAMESPACE
    plugin_version: str = PLUGIN_VERSION
    plugin_aot: bool = True
    onnx_sha256: str
    onnx_metadata: dict[str, str] = Field(default_factory=dict)
    build_seconds: float | None = None

    def mismatch(self, tensorrt_version: str, compute_capability: str) -> str | None:
        """Why this engine cannot run here, or None. Engines are tied to the TensorRT version and GPU."""
        problems = []
        if self.tensorrt_version != tensorrt_version:
            problems.append(f"built with TensorRT {self.tensorrt_version}, running {tensorrt_version}")
        if self.compute_capability != compute_capability:
            problems.append(f"built for compute capability {self.compute_capability}, this GPU is {compute_capability}")
        return "; ".join(problems) or None


def sidecar_path(engine: str | Path) -> Path:
    """``model.engine`` -> ``model.engine.json``."""
    engine = Path(engine)
    return engine.with_name(engine.name + ".json")


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def current_gpu(device: int = 0) -> tuple[str, str]:
    """(name, "major.minor") of a CUDA device, through cuda-python; RuntimeError when there is none."""
    from cuda.bindings import runtime as cudart

    err, props = cudart.cudaGetDeviceProperties(device)
    if err != cudart.cudaError_t.cudaSuccess:
        raise RuntimeError(f"no CUDA device {device}: {err}")
    name = props.name.decode(errors="replace").rstrip("\x00") if isinstance(props.name, bytes) else str(props.name)
    return name, f"{props.major}.{props.minor}"
