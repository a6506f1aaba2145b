"""bench/probe_memory.py: the timed nearest-neighbour head computes what the memory readings use (the
squared L2 distance to the nearest bank feature), in torch and in ONNX Runtime, and bad arguments
are usage errors."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import probe_memory


def test_the_head_is_the_squared_distance_to_the_nearest_bank_feature(tmp_path: Path) -> None:
    torch.manual_seed(0)
    head = probe_memory.NearestHead(300, 24)
    e = torch.randn(1, 24, 32, 32)
    bank = head.bank_t.t()
    want = torch.cdist(e.flatten(2).transpose(1, 2)[0], bank).min(1).values ** 2
    got = head(e)[0]
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-3)
    path = tmp_path / "head.onnx"
    torch.onnx.export(head, (e,), str(path), input_names=["e"], opset_version=18, dynamo=False)
    (onnx_out,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"e": e.numpy()})
    assert np.allclose(onnx_out[0], want.numpy(), rtol=1e-4, atol=1e-3)


def test_a_border_left_out_is_zero_and_the_inside_untouched() -> None:
    m = torch.rand(2, 64, 64) + 1
    cut = probe_memory.cut_border(m, 16)
    assert cut[:, :16].eq(0).all() and cut[:, -16:].eq(0).all() and cut[:, :, :16].eq(0).all()
    assert torch.equal(cut[:, 16:-16, 16:-16], m[:, 16:-16, 16:-16])


@pytest.mark.parametrize("args", [["--decoder", "/nonexistent/decoder.pt"], ["--onnx", "/nonexistent/model.onnx"],
                                  ["--length-beta", "x"]])  # fmt: skip
def test_bad_arguments_are_usage_errors(args: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        raise SystemExit(probe_memory.main(args))
    assert exc.value.code == 2
