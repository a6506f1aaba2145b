"""Property-based fuzzing of everything that parses outside input: the wire decoder, the header,
the config file and overrides, the NG-channel protocol, spool records and the archiver.

The property is the same everywhere: whatever the input, the parser either returns a valid value
or raises its own, named error (WireError, ConfigError, ProtocolError, SpoolError); never anything
else, so a hostile peer or a broken file cannot crash a process.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proad.edge.archiver import Archiver
from proad.edge.config import ConfigError, PipelineConfig, load_pipeline_config
from proad.edge.messages import FrameResult, WireError, decode, decode_header
from proad.edge.ng_channel import NG, ProtocolError, parse_archiver_message
from proad.edge.spool import Record, SpoolError, pack, unpack

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

VALID = FrameResult(camera_id="cam0", seq=1, frame_index=2, result_id="r-cam0-1", capture_ts=1.0, publish_ts=1.5,
                    latency_ms={"total": 3.0}, score=0.7, threshold=0.5, decision="NG", model_id="m",
                    map_shape=(4, 4), map_dtype="float16", has_frame=False).model_dump(mode="json")  # fmt: skip

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=20,
)


@st.composite
def mutated_headers(draw: st.DrawFn) -> bytes:
    """A valid header with some fields removed, replaced by arbitrary JSON, or extra ones added."""
    header = dict(VALID)
    for key in draw(st.lists(st.sampled_from(sorted(VALID)), max_size=4)):
        if draw(st.booleans()):
            header.pop(key, None)
        else:
            header[key] = draw(json_values)
    if draw(st.booleans()):
        header[draw(st.text(max_size=10))] = draw(json_values)
    return json.dumps(header).encode()


@FUZZ
@given(st.lists(st.binary(max_size=300), max_size=6))
def test_decode_arbitrary_parts(parts: list[bytes]) -> None:
    with contextlib.suppress(WireError):
        decode(parts)


@FUZZ
@given(mutated_headers(), st.binary(max_size=64), st.sampled_from([b"proad/cam0/NG", b"proad/cam0/OK"]))
def test_decode_mutated_headers(header: bytes, map_bytes: bytes, topic: bytes) -> None:
    try:
        h, amap, _ = decode([topic, header, map_bytes])
    except WireError:
        return
    assert amap.shape == h.map_shape and amap.nbytes == len(map_bytes)  # accepted only when consistent


@FUZZ
@given(st.text(max_size=400))
def test_decode_header_arbitrary_text(text: str) -> None:
    with contextlib.suppress(WireError):
        decode_header(text.encode())


def _config_dict() -> dict:
    return {"cameras": [{"id": "c", "source": {"kind": "synthetic"}}], "backend": {"model": "m.onnx"},
            "ng_channel": {}, "security": {}, "failsafe": {}}  # fmt: skip


@FUZZ
@given(st.text(max_size=300), st.sampled_from([".yaml", ".json"]))
def test_config_arbitrary_text(text: str, suffix: str) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"c{suffix}"
        path.write_text(text)
        with contextlib.suppress(ConfigError):
            load_pipeline_config(path)


@FUZZ
@given(st.lists(st.tuples(st.lists(st.sampled_from(["cameras", "0", "source", "fps", "backend", "model", "x", "",
                                                     "ng_channel", "window", "security", "curve", "99"]),
                                   min_size=1, max_size=5),
                          st.text(max_size=20)), max_size=4))  # fmt: skip
def test_config_arbitrary_overrides(overrides: list[tuple[list[str], str]]) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "c.json"
        path.write_text(json.dumps(_config_dict()))
        try:
            cfg = load_pipeline_config(path, [f"{'.'.join(keys)}={value}" for keys, value in overrides])
        except ConfigError:
            return
        assert isinstance(cfg, PipelineConfig)


@FUZZ
@given(st.lists(st.binary(max_size=200), max_size=4))
def test_ng_channel_messages(parts: list[bytes]) -> None:
    with contextlib.suppress(ProtocolError):
        parse_archiver_message(parts)


@FUZZ
@given(st.binary(max_size=400), st.integers(0, 399), st.binary(min_size=1, max_size=8))
def test_spool_records(blob: bytes, at: int, patch: bytes) -> None:
    with contextlib.suppress(SpoolError):
        unpack(blob)
    good = pack(Record("r-cam0-1", [b"{}", b"\0" * 8, b"jpeg"]))
    at = at % len(good)
    damaged = good[:at] + patch + good[at + len(patch):]
    try:
        rec = unpack(damaged)
    except SpoolError:
        return
    assert damaged == good or rec == unpack(good)  # a damaged record is refused, never misread


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.binary(max_size=120), min_size=0, max_size=6), mutated_headers())
def test_archiver_survives_anything(parts: list[bytes], header: bytes) -> None:
    with tempfile.TemporaryDirectory() as d:
        archiver = Archiver("tcp://127.0.0.1:1", d, fsync=False)
        try:
            for message in (parts, [NG, b"r-cam0-1", header, np.zeros(16, np.float16).tobytes()]):
                result_id, outcome = archiver.handle(message)
                assert outcome in ("stored", "duplicate", "rejected", "ignored")
                assert (result_id is None) == (outcome == "ignored")
        finally:
            archiver.close()
