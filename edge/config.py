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
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

MAX_CONFIG_BYTES = 1024 * 1024
MAX_CONFIG_NODES = 10_000  # values in the loaded document; YAML aliases can make a small file huge
MAX_CAMERAS = 64
M = TypeVar("M", bound=BaseModel)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_max_length=4096)


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
    unplug_every: int = Field(0, ge=0, description="after every n-th frame the camera vanishes (0 = never), for faults")
    unplug_s: float = Field(1.0, gt=0, le=3600, description="how long a vanished synthetic camera stays away")


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
    threshold: float | None = Field(
        None, description="this camera's OK/NG threshold (overrides the model's), in the scores of the model the "
        "daemon runs: an int8 graph's sit a measured shift above its fp32 graph's (its metadata's quantization)")
    tiles: tuple[Annotated[int, Field(ge=1, le=8)], Annotated[int, Field(ge=1, le=8)]] | None = Field(
        None,
        description="cut each frame into rows x cols model inputs, maps stitched back (proad.data.tiling); "
                    "default: the model's tiling of the camera's category, else none",
    )  # fmt: skip
    reconnect_initial_s: float = Field(0.5, gt=0, description="first wait before reopening a lost camera")
    reconnect_max_s: float = Field(10.0, gt=0, description="longest wait between reopen attempts")


class OpenVinoOptions(_Strict):
    """OpenVINO's CPU plugin settings (``backend.kind: openvino``)."""

    hint: Literal["latency", "throughput"] = Field(
        "latency",
        description="PERFORMANCE_HINT: latency (one stream, all threads on each request: the lowest latency) or "
                    "throughput (streams of fewer threads: the daemon keeps one batch in flight per stream and a "
                    "call that finds several streams free cuts its batch across them: more frames per second, a "
                    "few ms more per frame; README, Batches in flight in the daemon)",
    )  # fmt: skip
    streams: int | None = Field(None, ge=1, le=64, description="NUM_STREAMS (None: what the hint chooses)")
    precision: Literal["f32", "bf16"] = Field(
        "f32", description="INFERENCE_PRECISION_HINT: f32 keeps the exported maps; bf16 only where the CPU has it"
    )


class OnnxRuntimeOptions(_Strict):
    """ONNX Runtime's settings (``backend.kind: onnxruntime``)."""

    sessions: int = Field(
        1, ge=1, le=16,
        description="independent sessions of the model, backend.threads split among them: with more than one the "
                    "daemon keeps one batch in flight per session (more frames per second where one call does "
                    "not keep every core busy, a few ms more per frame; README, Batches in flight in the daemon)",
    )  # fmt: skip


class BackendConfig(_Strict):
    kind: Literal["onnxruntime", "openvino", "torch", "tensorrt"] = "onnxruntime"
    model: str = Field(description=".onnx (onnxruntime, openvino), .pt (torch) or .engine (tensorrt)")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int | None = Field(None, ge=1, le=256, description="CPU threads for onnxruntime/openvino/torch")
    max_batch: int = Field(4, ge=1, le=256, description="frames of several cameras inferred together")
    in_flight: int | None = Field(
        None, ge=1, le=16,
        description="batches the daemon keeps in inference at once, each taken while the others run and "
                    "published in capture order (None: as many calls as the backend runs side by side: the "
                    "openvino backend's infer requests, one per stream, onnxruntime's sessions, 1 for the others; "
                    "more than that only overlaps taking batches with inference; tensorrt takes only 1)",
    )  # fmt: skip
    cuda_graphs: bool = Field(True, description="tensorrt: replay each batch size as a CUDA graph")
    openvino: OpenVinoOptions = OpenVinoOptions()
    onnxruntime: OnnxRuntimeOptions = OnnxRuntimeOptions()

    @model_validator(mode="after")
    def _threads_for_sessions(self) -> BackendConfig:
        if self.threads is not None and self.threads < self.onnxruntime.sessions:
            raise ValueError(f"onnxruntime.sessions {self.onnxruntime.sessions} needs at least as many threads "
                             f"(threads: {self.threads})")
        return self


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


class NGChannelConfig(_Strict):
    """The reliable NG channel (DESIGN §5): spool to disk, deliver to archivers, delete on acknowledgement."""

    name: str = Field("archive", pattern=r"^[a-z0-9_]{1,32}$",
                      description="who consumes it; names the counters of a channel in ng_channels")
    endpoint: str = Field("tcp://*:5557", max_length=512, description="ROUTER socket archivers connect to")
    spool_dir: str = Field("spool", max_length=4096, description="NG results waiting for an archiver")
    max_records: int = Field(10000, ge=1, le=10_000_000, description="spool cap in records")
    max_mb: float = Field(1024.0, gt=0, description="spool cap in MiB")
    when_full: Literal["reject_new", "drop_oldest"] = Field(
        "reject_new", description="reject_new keeps what was accepted; drop_oldest deletes the oldest undelivered"
    )
    fsync: bool = Field(True, description="fsync each record before the result is published")
    window: int = Field(32, ge=1, le=10000, description="records sent and not yet acknowledged, at most")
    ack_timeout_s: float = Field(5.0, gt=0, description="resend a record not acknowledged within this")
    archiver_timeout_s: float = Field(3.0, gt=0, description="an archiver silent this long is gone")
    drain_s: float = Field(5.0, ge=0, description="at shutdown, keep delivering to a connected archiver this long")


class FailsafeConfig(_Strict):
    window_ms: float | None = Field(
        None, gt=0, le=600_000,
        description="every frame gets a result within this of its capture: its own, or NG with the reason "
                    "(timeout, queue_full, backend_error); None: off",
    )  # fmt: skip


class SecurityConfig(_Strict):
    """CURVE on every socket the daemon binds; only clients whose public key is allowed get in."""

    curve: bool = False
    server_secret_key: str | None = Field(None, max_length=4096, description="the daemon's NAME.key_secret")
    allowed_clients: str | None = Field(None, max_length=4096, description="directory of allowed clients' *.key")

    @model_validator(mode="after")
    def _complete(self) -> SecurityConfig:
        if self.curve and (self.server_secret_key is None or self.allowed_clients is None):
            raise ValueError("curve: true needs server_secret_key and allowed_clients")
        return self


class MetricsConfig(_Strict):
    prometheus_port: int | None = Field(None, ge=0, le=65535, description="serve /metrics here (None: off)")
    address: str = Field("127.0.0.1", max_length=256)


class StatusConfig(_Strict):
    endpoint: str | None = Field("tcp://127.0.0.1:5556", description="REP socket answering 'status' (None: off)")


class QueueConfig(_Strict):
    frames_per_camera: int = Field(2, ge=1, le=1000, description="frames waiting per camera")
    when_full: Literal["drop_oldest", "wait"] = Field(
        "drop_oldest",
        description="drop_oldest: a live line wants the newest picture, the oldest waiting frame is dropped and "
                    "counted; wait: the camera's reader waits for room, nothing is dropped (files, folders, "
                    "replays and tests that count every frame; a live camera then loses frames in its driver)",
    )  # fmt: skip
    results: int = Field(64, ge=1, le=100000, description="inferred frames waiting to be published")


class PipelineConfig(_Strict):
    cameras: list[CameraConfig] = Field(min_length=1, max_length=MAX_CAMERAS)
    backend: BackendConfig
    threshold: float | None = Field(
        None, description="OK/NG threshold for every camera (overrides the model's), in the scores of the model "
        "the daemon runs (see cameras[].threshold)")
    publish: PublishConfig = PublishConfig()
    ng_channel: NGChannelConfig | None = Field(None, description="the reliable NG channel (None: off)")
    ng_channels: list[NGChannelConfig] = Field(
        default_factory=list, max_length=8,
        description="more reliable NG channels, each with its own endpoint and spool, for another kind of consumer "
                    "(e.g. name: mqtt for proad-bridge mqtt beside the archivers): every NG goes to every channel, "
                    "and each channel's consumers share its records",
    )  # fmt: skip
    failsafe: FailsafeConfig = FailsafeConfig()
    security: SecurityConfig = SecurityConfig()
    metrics: MetricsConfig = MetricsConfig()
    status: StatusConfig = StatusConfig()
    queues: QueueConfig = QueueConfig()
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @model_validator(mode="after")
    def _unique_ids(self) -> PipelineConfig:
        ids = [c.id for c in self.cameras]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"camera ids must be unique, repeated: {', '.join(dupes)}")
        channels = self.all_ng_channels()
        if self.ng_channels and self.ng_channel is None:
            raise ValueError("ng_channels adds channels beside ng_channel, which is off")
        for what in ("name", "endpoint", "spool_dir"):
            values = [getattr(c, what) for c in channels]
            if what == "endpoint":  # any free port ("tcp://...:*") is a different one each time
                values = [v for v in values if not v.endswith((":*", ":0"))]
            if what == "spool_dir":  # "spool" and "./spool" are one folder; one inside another would mix too
                folders = [Path(v).expanduser().resolve() for v in values]
                values = [str(f) for f in folders]
                nested = [(a, b) for a in folders for b in folders if a != b and a in b.parents]
                if nested:
                    raise ValueError(f"NG channel spools must not lie inside each other: {nested[0][1]} is in "
                                     f"{nested[0][0]}")
            if len(set(values)) != len(values):
                raise ValueError(f"each NG channel needs its own {what}, repeated: {values}")
        return self

    def all_ng_channels(self) -> list[NGChannelConfig]:
        """``ng_channel`` (the archivers'), then ``ng_channels``."""
        return ([self.ng_channel] if self.ng_channel is not None else []) + list(self.ng_channels)


class ConfigError(ValueError):
    """The configuration file or an override is malformed; the message names the field and the reason."""


def _set_path(data: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    if len(keys) > 16 or not all(keys):
        raise ConfigError(f"--set {dotted[:80]}: not a dotted path to a field")
    node: Any = data
    for i, key in enumerate(keys):
        last = i == len(keys) - 1
        if isinstance(node, list):
            try:
                index = int(key)
                if last:
                    node[index] = value
                else:
                    node = node[index]
            except (ValueError, IndexError) as exc:
                raise ConfigError(f"--set {dotted}: no list item {key!r}") from exc
        elif isinstance(node, dict):
            if last:
                node[key] = value
            else:
                if node.get(key) is None:
                    node[key] = [] if keys[i + 1].isdigit() else {}
                node = node[key]
        else:
            raise ConfigError(f"--set {dotted}: {'.'.join(keys[:i])} is a value, not a section")


def _check_size(data: Any) -> None:
    """Refuse documents with more than MAX_CONFIG_NODES values before pydantic walks them."""
    stack, seen = [data], 0
    while stack:
        node = stack.pop()
        seen += 1
        if seen > MAX_CONFIG_NODES:
            raise ConfigError(f"config has more than {MAX_CONFIG_NODES} values; refusing it")
        if isinstance(node, dict):
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)


def parse_override(item: str) -> tuple[str, Any]:
    key, sep, raw = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"--set expects key=value, got {item!r}")
    try:
        return key, json.loads(raw)
    except (json.JSONDecodeError, RecursionError):
        return key, raw


def load_pipeline_config(path: str | Path | None, overrides: list[str] | None = None) -> PipelineConfig:
    """Read, apply overrides, validate; raises :class:`ConfigError` with the field and the reason."""
    return load_config(PipelineConfig, path, overrides)


def load_config(model: type[M], path: str | Path | None, overrides: list[str] | None = None) -> M:
    """Any of the edge's configs (the daemon's, a bridge's, the viewer's) read from YAML or JSON, with
    ``--set`` overrides, validated; raises :class:`ConfigError` with the field and the reason."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        if p.stat().st_size > MAX_CONFIG_BYTES:
            raise ConfigError(f"{p}: {p.stat().st_size} bytes; a config is at most {MAX_CONFIG_BYTES}")
        try:
            text = p.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{p}: cannot read it as text: {exc}") from exc
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
    _check_size(data)
    for item in overrides or []:
        key, value = parse_override(item)
        _set_path(data, key, value)
    _check_size(data)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        problems = [f"{'.'.join(str(x)[:64] for x in e['loc']) or 'config'}: {e['msg'][:200]}" for e in errors[:5]]
        more = f"; and {len(errors) - 5} more" if len(errors) > 5 else ""
        raise ConfigError("invalid config: " + "; ".join(problems) + more) from exc
