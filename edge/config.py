"""The daemon's one configuration: a pydantic ``PipelineConfig`` read from YAML or JSON.

Everything is validated before anything starts (a typo in a key is an error, not a silent default),
and command-line overrides use dotted paths: ``--set backend.threads=4 cameras.0.source.fps=15``.

Example::

    cameras:
      - id: line1
        source: {kind: synthetic, category: board, fps: 30, defect_rate: 0.2}
      - id: line2
        source: {kind: opencv, uri: "rtsp://10.0.0.7/stream"}
    backend: {kind: onnxruntime, model: demo/model.onnx}
    publish: {endpoint: "tcp://*:5555", map_dtype: float16, jpeg: ng}
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SyntheticSource(_Strict):
    """Renders the generator's images at a set rate, with defects at a set rate (and knows which)."""

    kind: Literal["synthetic"] = "synthetic"
    category: str = "board"
    fps: float = Field(30.0, gt=0, le=1000)
    defect_rate: float = Field(0.2, ge=0, le=1, description="share of frames with an injected defect")
    seed: int = 0
    pool: int = Field(48, ge=2, le=1024, description="frames rendered ahead and cycled (rendering is slow)")
    corrupt_every: int = Field(0, ge=0, description="every n-th frame is corrupt (0 = never), for fault tests")
    max_frames: int | None = Field(None, ge=1, description="stop after this many frames")


class OpenCVSource(_Strict):
    """A camera index, a video file or a stream URL (RTSP/HTTP), read with cv2.VideoCapture."""

    kind: Literal["opencv"] = "opencv"
    uri: str | int = Field(description="camera index (0), file path, or rtsp:// / http:// URL")
    loop: bool = Field(False, description="restart a video file at its end")
    fps: float | None = Field(None, gt=0, description="pace a file to this rate (live sources pace themselves)")


class FolderSource(_Strict):
    """Images of a folder in name order, at a set rate."""

    kind: Literal["folder"] = "folder"
    path: str
    fps: float = Field(10.0, gt=0, le=1000)
    loop: bool = False


SourceConfig = Annotated[SyntheticSource | OpenCVSource | FolderSource, Field(discriminator="kind")]


class CameraConfig(_Strict):
    id: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="appears in topics: letters, digits, _ . -")
    source: SourceConfig
    category: str | None = Field(None, description="what this camera inspects: use the model's threshold for it")
    threshold: float | None = Field(None, description="this camera's OK/NG threshold (overrides the model's)")
    reconnect_initial_s: float = Field(0.5, gt=0, description="first wait before reopening a lost camera")
    reconnect_max_s: float = Field(10.0, gt=0, description="longest wait between reopen attempts")


class BackendConfig(_Strict):
    kind: Literal["onnxruntime", "torch", "tensorrt"] = "onnxruntime"
    model: str = Field(description=".onnx (onnxruntime), .pt (torch) or .engine (tensorrt)")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int | None = Field(None, ge=1, le=256, description="CPU threads for onnxruntime/torch")
    max_batch: int = Field(4, ge=1, le=256, description="frames of several cameras inferred together")
    cuda_graphs: bool = Field(True, description="tensorrt: replay each batch size as a CUDA graph")


class PublishConfig(_Strict):
    endpoint: str = "tcp://*:5555"
    hwm: int = Field(100, ge=1, description="messages queued per subscriber before PUB drops")
    map_dtype: Literal["float16", "uint8"] = "float16"
    map_scale: float | None = Field(
        None, gt=0, description="uint8 maps: the map value sent as 255 (default: twice the threshold)"
    )
    jpeg: Literal["never", "ng", "always"] = Field("ng", description="attach the frame as JPEG")
    jpeg_quality: int = Field(85, ge=10, le=100)
    linger_ms: int = Field(2000, ge=0, description="time to flush queued messages at shutdown")


class StatusConfig(_Strict):
    endpoint: str | None = Field("tcp://127.0.0.1:5556", description="REP socket answering 'status' (None: off)")


class QueueConfig(_Strict):
    frames_per_camera: int = Field(2, ge=1, le=1000, description="frames waiting per camera; the oldest is dropped")
    results: int = Field(64, ge=1, le=100000, description="inferred frames waiting to be published")


class PipelineConfig(_Strict):
    cameras: list[CameraConfig] = Field(min_length=1)
    backend: BackendConfig
    threshold: float | None = Field(None, description="OK/NG threshold for every camera (overrides the model's)")
    publish: PublishConfig = PublishConfig()
    status: StatusConfig = StatusConfig()
    queues: QueueConfig = QueueConfig()
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @model_validator(mode="after")
    def _unique_ids(self) -> PipelineConfig:
        ids = [c.id for c in self.cameras]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"camera ids must be unique, repeated: {', '.join(dupes)}")
        return self


class ConfigError(ValueError):
    """The configuration file or an override is malformed; the message names the field and the reason."""


def _set_path(data: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node: Any = data
    for i, key in enumerate(keys[:-1]):
        nxt = keys[i + 1]
        if isinstance(node, list):
            try:
                node = node[int(key)]
            except (ValueError, IndexError) as exc:
                raise ConfigError(f"--set {dotted}: no list item {key!r}") from exc
            continue
        if key not in node or node[key] is None:
            node[key] = [] if nxt.isdigit() else {}
        node = node[key]
    last = keys[-1]
    if isinstance(node, list):
        try:
            node[int(last)] = value
        except (ValueError, IndexError) as exc:
            raise ConfigError(f"--set {dotted}: no list item {last!r}") from exc
    else:
        node[last] = value


def parse_override(item: str) -> tuple[str, Any]:
    key, sep, raw = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"--set expects key=value, got {item!r}")
    try:
        return key, json.loads(raw)
    except json.JSONDecodeError:
        return key, raw


def load_pipeline_config(path: str | Path | None, overrides: list[str] | None = None) -> PipelineConfig:
    """Read, apply overrides, validate; raises :class:`ConfigError` with the field and the reason."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        text = p.read_text()
        try:
            if p.suffix.lower() in (".yaml", ".yml"):
                import yaml

                loaded = yaml.safe_load(text)
            else:
                loaded = json.loads(text)
        except Exception as exc:  # yaml.YAMLError / JSONDecodeError
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ConfigError(f"{p}: not valid {'YAML' if p.suffix.lower() in ('.yaml', '.yml') else 'JSON'}: "
                              f"{first}") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"{p}: expected a mapping at the top level, got {type(loaded).__name__}")
        data = loaded
    for item in overrides or []:
        key, value = parse_override(item)
        _set_path(data, key, value)
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as exc:
        problems = []
        for e in exc.errors():
            loc = ".".join(str(x) for x in e["loc"]) or "config"
            problems.append(f"{loc}: {e['msg']}")
        raise ConfigError("invalid config: " + "; ".join(problems)) from exc
